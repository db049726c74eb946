//! The control plane's address and the tonic channel to it.
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the ADS server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdsTarget {
    /// An `http://host:port` URI (plaintext HTTP/2, as Envoy's `envoy_grpc` to a static
    /// cluster without a transport socket).
    Tcp(Uri),
    /// A Unix socket path, relative to the working directory or absolute, as Envoy's `pipe`
    /// address (Istio: `./etc/istio/proxy/XDS`). A leading `@` names a Linux abstract socket.
    Unix(PathBuf),
}

/// A control-plane address that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid xDS target {target:?}: {reason}")]
pub struct InvalidTarget {
    /// The text given.
    pub target: String,
    /// Why it was refused.
    pub reason: String,
}

/// How long to wait for a TCP or Unix connect. Envoy's default cluster `connect_timeout` is
/// 5 s; the xDS cluster of a bootstrap usually keeps it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP keepalive on the xDS connection, so a control plane that vanished without a FIN
/// (node loss, partition) is noticed and the stream reopened. Istio's bootstrap sets the
/// same 300 s on its `xds-grpc` cluster. HTTP/2 PINGs are avoided on purpose: gRPC servers
/// enforce a minimum ping interval and answer faster pings with GOAWAY.
const TCP_KEEPALIVE: Duration = Duration::from_secs(300);

// === impl XdsTarget ===

impl XdsTarget {
    /// Parses `unix:PATH`, `unix://PATH`, `http://host:port` or a bare `host:port`.
    pub fn parse(s: &str) -> Result<Self, InvalidTarget> {
        let invalid = |reason: &str| InvalidTarget {
            target: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(invalid("empty socket path"));
            }
            return Ok(XdsTarget::Unix(PathBuf::from(path)));
        }
        let text = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let uri = text.parse::<Uri>().map_err(|e| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            _ => return Err(invalid("only http:// (plaintext) and unix: are supported")),
        }
        if uri.host().is_none() {
            return Err(invalid("missing host"));
        }
        Ok(XdsTarget::Tcp(uri))
    }
}

impl std::fmt::Display for XdsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdsTarget::Tcp(uri) => write!(f, "{uri}"),
            XdsTarget::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Builds a lazily connecting channel: nothing is dialled until the ADS client opens its
/// stream, and a broken connection is re-dialled on the next stream. Startup therefore
/// never fails because the control plane is down, matching Envoy.
pub fn connect_channel(target: &XdsTarget) -> Result<Channel, InvalidTarget> {
    match target {
        XdsTarget::Tcp(uri) => Ok(Endpoint::from(uri.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE))
            .connect_lazy()),
        XdsTarget::Unix(path) => {
            // The URI only feeds the `:authority` header; Istio's agent ignores it.
            let endpoint =
                Endpoint::from_static("http://localhost").connect_timeout(CONNECT_TIMEOUT);
            let path = path.clone();
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { connect_unix(&path).await.map(TokioIo::new) }
                })),
            )
        }
    }
}

async fn connect_unix(path: &std::path::Path) -> io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        // Connecting a Unix socket does not block on the network; the blocking std call
        // returns at once (or with ECONNREFUSED).
        let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        std.set_nonblocking(true)?;
        return UnixStream::from_std(std);
    }
    UnixStream::connect(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_unix_socket_and_tcp() {
        assert_eq!(
            XdsTarget::parse("unix:./etc/istio/proxy/XDS").unwrap(),
            XdsTarget::Unix(PathBuf::from("./etc/istio/proxy/XDS"))
        );
        assert_eq!(
            XdsTarget::parse("unix:///var/run/xds.sock").unwrap(),
            XdsTarget::Unix(PathBuf::from("/var/run/xds.sock"))
        );
        assert_eq!(
            XdsTarget::parse("127.0.0.1:15010").unwrap().to_string(),
            "http://127.0.0.1:15010/"
        );
        assert!(XdsTarget::parse("https://istiod:15012").is_err());
        assert!(XdsTarget::parse("unix:").is_err());
    }
}

//! `envoy.config.core.v3.Address` → socket addresses.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};

use super::ConfigError;

/// Where a listener binds or an endpoint lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// TCP on an IP address and port.
    Tcp(SocketAddr),
    /// A Unix domain socket (`pipe`), with optional file mode.
    Pipe(PathBuf, u32),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Pipe(p, _) => write!(f, "{}", p.display()),
        }
    }
}

/// A socket address whose host may need DNS resolution (STRICT_DNS/LOGICAL_DNS endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostAddr {
    /// A literal IP.
    Ip(SocketAddr),
    /// A name to resolve, with its port.
    Name(String, u16),
    /// A Unix socket.
    Pipe(PathBuf),
}

/// Parses an address that must be a literal IP (listeners, STATIC endpoints) or a pipe.
pub(crate) fn listen_addr(addr: &Address, path: &str) -> Result<ListenAddr, ConfigError> {
    match host_addr(addr, path)? {
        HostAddr::Ip(a) => Ok(ListenAddr::Tcp(a)),
        HostAddr::Pipe(p) => {
            let mode = match &addr.address {
                Some(address::Address::Pipe(pipe)) => pipe.mode,
                _ => 0,
            };
            Ok(ListenAddr::Pipe(p, mode))
        }
        HostAddr::Name(name, _) => Err(ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("{name:?} is not an IP address"),
        )),
    }
}

/// Parses an address that may carry a DNS name.
pub(crate) fn host_addr(addr: &Address, path: &str) -> Result<HostAddr, ConfigError> {
    match &addr.address {
        Some(address::Address::SocketAddress(sa)) => {
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) if p <= u16::MAX as u32 => {
                    p as u16
                }
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    return Err(ConfigError::new(
                        format!("{path}.socket_address.port_value"),
                        format!("{p} is not a port"),
                    ))
                }
                Some(socket_address::PortSpecifier::NamedPort(_)) => {
                    return Err(ConfigError::new(
                        format!("{path}.socket_address.named_port"),
                        "not supported",
                    ))
                }
                None => 0,
            };
            if sa.protocol != socket_address::Protocol::Tcp as i32 {
                return Err(ConfigError::new(
                    format!("{path}.socket_address.protocol"),
                    "only TCP is supported",
                ));
            }
            let host = sa.address.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(ip) => Ok(HostAddr::Ip(SocketAddr::new(ip, port))),
                Err(_) if host.is_empty() => Err(ConfigError::new(
                    format!("{path}.socket_address.address"),
                    "missing address",
                )),
                Err(_) => Ok(HostAddr::Name(host.to_string(), port)),
            }
        }
        Some(address::Address::Pipe(pipe)) => {
            if pipe.path.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.pipe.path"),
                    "missing path",
                ));
            }
            if pipe.path.starts_with('@') {
                return Err(ConfigError::new(
                    format!("{path}.pipe.path"),
                    "abstract Unix sockets are not supported",
                ));
            }
            Ok(HostAddr::Pipe(PathBuf::from(&pipe.path)))
        }
        Some(address::Address::EnvoyInternalAddress(_)) => Err(ConfigError::new(
            format!("{path}.envoy_internal_address"),
            "not supported",
        )),
        None => Err(ConfigError::new(path, "missing address")),
    }
}

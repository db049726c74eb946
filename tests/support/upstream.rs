//! An HTTP/1.1 + h2c echo upstream.
//!
//! Every response names the instance that served it (`x-upstream-name` header and the `upstream`
//! field of the JSON body) and echoes what arrived: method, path, version, host and every header
//! in arrival order, plus the request body. Request headers steer the response:
//!
//! | header | effect |
//! |---|---|
//! | `x-echo-status: 503` | respond with that status |
//! | `x-echo-delay-ms: 2000` | wait that long before responding |
//! | `x-echo-reset: 1` | no response: close the connection (h1) or reset the stream (h2) |
//! | `x-echo-chunks: 4` | send the body in that many frames with no content-length (chunked on h1) |
//! | `x-echo-response-header: name=value` | add a response header (repeatable) |
//! | `x-echo-body-error: 1` | send headers and part of the body, then fail the stream |
//! | `x-echo-hold: 1` | send headers and `first\n` at once, `rest\n` only after [`Upstream::release`] |
//! | `x-echo-duplex: 1` | answer at once and stream the request body back frame by frame |

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::client::Body;

/// Response body of the echo server: may fail mid-stream (`x-echo-body-error`).
type EchoBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Response header naming the instance that answered.
pub const UPSTREAM_NAME_HEADER: &str = "x-upstream-name";

/// A running echo upstream; stops when dropped.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

/// What the echo server saw, as returned in its JSON body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Echo {
    /// Name of the instance that served the request.
    pub upstream: String,
    /// Request method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// `Host` header, else the `:authority`.
    pub host: Option<String>,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Request body (lossy UTF-8).
    pub body: String,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Releases held responses (`x-echo-hold`); a permit is stored if nobody waits yet.
    release: tokio::sync::Notify,
    /// Steering for the next requests, one entry each (see [`Upstream::script`]).
    script: std::sync::Mutex<std::collections::VecDeque<Vec<(String, String)>>>,
    /// Steering for every request without a script entry (see [`Upstream::always`]).
    always: std::sync::Mutex<Vec<(String, String)>>,
    /// What the last plain echo request looked like (see [`Upstream::last`]).
    last: std::sync::Mutex<Option<Echo>>,
}

// === impl Upstream ===

impl Upstream {
    /// Starts an echo server named `name` on a fresh loopback port.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_on(name, Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts an echo server named `name` on a fresh port of `ip` (e.g. `::1`).
    pub async fn start_on(name: &str, ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let name_owned: Arc<str> = name.into();
        let task = tokio::spawn(accept_loop(listener, name_owned, counters.clone()));
        tracing::debug!(%addr, name, "echo upstream listening");
        Ok(Self {
            name: name.to_owned(),
            addr,
            counters,
            task,
        })
    }

    /// Instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Steers the next requests as if each carried the given `x-echo-*` headers, one entry per
    /// request in arrival order (e.g. the first two answer 503: `[&[("x-echo-status", "503")];
    /// 2]`). Request headers of the same name are overridden.
    pub fn script(&self, entries: &[&[(&str, &str)]]) {
        let mut q = self
            .counters
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for e in entries {
            q.push_back(
                e.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
    }

    /// Steers every request without a script entry as if it carried these `x-echo-*` headers
    /// (an always-failing host: `&[("x-echo-status", "503")]`); empty to stop.
    pub fn always(&self, headers: &[(&str, &str)]) {
        *self
            .counters
            .always
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// The last request this upstream echoed (for requests whose response the test never
    /// sees, such as mirrors).
    pub fn last(&self) -> Option<Echo> {
        self.counters
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets one held (`x-echo-hold`) response send its remaining body.
    pub fn release(&self) {
        self.counters.release.notify_one();
    }

    /// Requests received so far (counted on arrival, before any delay).
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, counters: Arc<Counters>) {
    // Connections live in the set, so aborting the accept loop closes them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                counters.connections.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                let counters = counters.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(req, name.clone(), counters.clone()));
                    let res = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    if let Err(e) = res {
                        tracing::debug!(%e, "echo connection ended");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The error returned to hyper to abort a response (`x-echo-reset`).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by x-echo-reset")
    }
}

impl std::error::Error for Reset {}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    counters: Arc<Counters>,
) -> Result<Response<EchoBody>, Reset> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let steer = counters
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front()
        .unwrap_or_else(|| {
            counters
                .always
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
    let h = |n: &str| {
        steer
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .or_else(|| parts.headers.get(n).and_then(|v| v.to_str().ok()))
    };
    if h("x-echo-hold").is_some() {
        let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"first\n")))]);
        let rest = futures_util::stream::once(async move {
            counters.release.notified().await;
            Ok(Frame::data(Bytes::from_static(b"rest\n")))
        });
        let body = StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed();
        return Ok(Response::builder()
            .header(UPSTREAM_NAME_HEADER, &*name)
            .body(body)
            .expect("valid response"));
    }
    if h("x-echo-duplex").is_some() {
        // Forward each request frame as it arrives; the response starts before the request ends.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let mut body = body;
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    if tx.send(data).await.is_err() {
                        return;
                    }
                }
            }
        });
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|d| (Ok(Frame::data(d)), rx))
        });
        return Ok(Response::builder()
            .header(UPSTREAM_NAME_HEADER, &*name)
            .body(StreamBody::new(frames).boxed())
            .expect("valid response"));
    }
    let status = h("x-echo-status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let delay = h("x-echo-delay-ms").and_then(|s| s.parse::<u64>().ok());
    let reset = h("x-echo-reset").is_some();
    let body_error = h("x-echo-body-error").is_some();
    let chunks = h("x-echo-chunks")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);

    // Read the request body before anything else, as a real server would.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Reset),
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if reset {
        return Err(Reset);
    }

    let echo = Echo {
        upstream: name.to_string(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        version: format!("{:?}", parts.version),
        host: h("host")
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string())),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let json = Bytes::from(serde_json::to_vec(&echo).expect("Echo serializes"));
    *counters.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(echo);

    let body: EchoBody = if body_error {
        // Pause after the first half so hyper flushes the head and that half before failing:
        // the proxy must see a failure *after* the response started.
        let first = futures_util::stream::iter([Ok(Frame::data(json.slice(..json.len() / 2)))]);
        let fail = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(std::io::Error::other("x-echo-body-error"))
        });
        StreamBody::new(futures_util::StreamExt::chain(first, fail)).boxed()
    } else if chunks > 0 {
        let step = json.len().div_ceil(chunks).max(1);
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..json.len())
            .step_by(step)
            .map(|i| Ok(Frame::data(json.slice(i..(i + step).min(json.len())))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
            .map_err(|never| match never {})
            .boxed()
    } else {
        let body: Body = crate::client::full(json);
        body.map_err(|never| match never {}).boxed()
    };
    let mut resp = Response::builder()
        .status(status)
        .header(UPSTREAM_NAME_HEADER, &*name)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response");
    let scripted = steer
        .iter()
        .filter(|(k, _)| k == "x-echo-response-header")
        .map(|(_, v)| v.as_str());
    let sent = parts
        .headers
        .get_all("x-echo-response-header")
        .iter()
        .filter_map(|v| v.to_str().ok());
    for v in scripted.chain(sent) {
        if let Some((k, v)) = v.split_once('=') {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                resp.headers_mut().append(k, v);
            }
        }
    }
    Ok(resp)
}

// === impl Echo ===

impl Echo {
    /// First value of a request header as the upstream saw it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of a request header, in arrival order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Sorted, de-duplicated header names.
    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.headers.iter().map(|(k, _)| k.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// A minimal HTTP/1.1 upstream that records each request head byte-for-byte (header case and
/// order as on the wire) and answers `200` with a fixed mixed-case header. For wire-transparency
/// checks that hyper's normalising parser would hide. A request with an `Upgrade` header gets
/// `101 Switching Protocols` instead, after which the connection echoes raw bytes.
pub struct RawHttpUpstream {
    addr: SocketAddr,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The response [`RawHttpUpstream`] sends.
pub const RAW_UPSTREAM_RESPONSE: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mixed-Case-Response: Yes\r\n\r\nok";

/// The answer [`RawHttpUpstream`] gives to an upgrade request.
pub const UPGRADE_RESPONSE: &str =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

// === impl RawHttpUpstream ===

impl RawHttpUpstream {
    /// Starts the server on a fresh loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let heads2 = heads.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else { continue };
                        let heads = heads2.clone();
                        conns.spawn(async move {
                            let mut buf = Vec::new();
                            let mut chunk = [0u8; 4096];
                            loop {
                                // Requests through a proxy here have no body.
                                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                                    buf.drain(..end + 4);
                                    let upgrade = head.to_ascii_lowercase().contains("\r\nupgrade:");
                                    heads.lock().expect("not poisoned").push(head);
                                    if upgrade {
                                        let _ = stream.write_all(UPGRADE_RESPONSE.as_bytes()).await;
                                        let _ = stream.write_all(&buf).await;
                                        let (mut r, mut w) = stream.split();
                                        let _ = tokio::io::copy(&mut r, &mut w).await;
                                        return;
                                    }
                                    if stream.write_all(RAW_UPSTREAM_RESPONSE.as_bytes()).await.is_err() {
                                        return;
                                    }
                                }
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, heads, task })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request heads received so far (request line and headers, CRLF-separated).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("not poisoned").clone()
    }
}

impl Drop for RawHttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

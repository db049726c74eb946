//! HTTP clients for driving a proxy.
//!
//! [`HttpClient`] holds exactly one connection, so a test controls connection reuse (keep-alive,
//! h2 multiplexing) and the proxy's `downstream_cx_total` is predictable. [`raw`] speaks bytes for
//! requests no well-behaved client would send.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::upstream::Echo;

pub mod raw;

/// Request body type used by the clients.
pub type Body = BoxBody<Bytes, Infallible>;

/// How long a single exchange may take before the test fails instead of hanging.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Wire protocol towards the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// One client connection.
pub struct HttpClient {
    proto: Proto,
    sender: Sender,
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Response status.
    pub status: StatusCode,
    /// HTTP version of the response.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers, if the response carried any.
    pub trailers: Option<HeaderMap>,
}

// === impl HttpClient ===

impl HttpClient {
    /// Opens one connection to `addr`.
    pub async fn connect(addr: SocketAddr, proto: Proto) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let sender = match proto {
            Proto::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .preserve_header_case(true)
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%e, "client h1 connection ended");
                    }
                });
                Sender::H1(sender)
            }
            Proto::H2c => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%e, "client h2 connection ended");
                    }
                });
                Sender::H2(sender)
            }
        };
        Ok(Self { proto, sender })
    }

    /// Another handle on the same HTTP/2 connection, for concurrent streams; `None` on HTTP/1.1.
    pub fn fork(&self) -> Option<HttpClient> {
        match &self.sender {
            Sender::H2(s) => Some(HttpClient {
                proto: self.proto,
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => None,
        }
    }

    /// The protocol of this connection.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// A request builder with the target set correctly for this protocol: origin-form plus a
    /// `host` header for HTTP/1.1, an absolute URI (`:authority`) for h2.
    pub fn request(
        &self,
        method: Method,
        host: &str,
        path_and_query: &str,
    ) -> http::request::Builder {
        match self.proto {
            Proto::Http1 => Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(http::header::HOST, host),
            Proto::H2c => Request::builder()
                .method(method)
                .version(Version::HTTP_2)
                .uri(format!("http://{host}{path_and_query}")),
        }
    }

    /// Sends `req` and reads the whole response, trailers included.
    pub async fn send(&mut self, req: Request<Body>) -> anyhow::Result<Reply> {
        let what = format!("{} {}", req.method(), req.uri());
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.send_inner(req))
            .await
            .with_context(|| format!("{what}: no response within {EXCHANGE_TIMEOUT:?}"))?
            .with_context(|| what)
    }

    async fn send_inner(&mut self, req: Request<Body>) -> anyhow::Result<Reply> {
        let resp = self.send_streaming(req).await?;
        Reply::read(resp).await
    }

    /// Sends `req` and returns as soon as the response head arrives; the body is read by the
    /// caller frame by frame (`http_body_util::BodyExt::frame`). For streaming checks.
    pub async fn send_streaming(
        &mut self,
        req: Request<Body>,
    ) -> anyhow::Result<Response<Incoming>> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        Ok(resp)
    }

    /// `GET host path` with no body.
    pub async fn get(&mut self, host: &str, path_and_query: &str) -> anyhow::Result<Reply> {
        let req = self
            .request(Method::GET, host, path_and_query)
            .body(empty())?;
        self.send(req).await
    }

    /// `GET host path` with extra request headers.
    pub async fn get_with(
        &mut self,
        host: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut b = self.request(Method::GET, host, path_and_query);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(empty())?).await
    }
}

/// One request on a fresh connection: `GET http://host{path}` via `addr`.
pub async fn get(
    addr: SocketAddr,
    proto: Proto,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    HttpClient::connect(addr, proto)
        .await?
        .get_with(host, path_and_query, headers)
        .await
}

// === impl Reply ===

impl Reply {
    /// Reads a whole response.
    pub async fn read(resp: Response<Incoming>) -> anyhow::Result<Self> {
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.context("reading response body")?;
        let trailers = collected.trailers().cloned();
        Ok(Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Which upstream instance served this (the echo server's `x-upstream-name`).
    pub fn upstream(&self) -> Option<&str> {
        self.header(crate::upstream::UPSTREAM_NAME_HEADER)
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the echo server's JSON body.
    pub fn echo(&self) -> anyhow::Result<Echo> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response is not an upstream echo: {:?}", self.text()))
    }

    /// Sorted, de-duplicated, lower-case response header names (for comparing what two proxies
    /// send).
    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().boxed()
}

/// A body with a known length (sent with `content-length`).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// A request body fed frame by frame through the returned sender; it ends when the sender is
/// dropped. No known length (chunked over HTTP/1.1).
pub fn channel() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|d| (Ok(Frame::data(d)), rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

/// A body of several frames with no known length (sent chunked over HTTP/1.1).
pub fn chunked(chunks: Vec<Bytes>) -> Body {
    let frames = chunks.into_iter().map(|c| Ok(Frame::data(c)));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

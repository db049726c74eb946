//! The fast upstream every scenario ends at.
//!
//! One single-threaded tokio runtime serves four ports:
//! - HTTP: HTTP/1.1 and h2c (prior knowledge) on the same port, detected per connection by
//!   hyper-util's `auto` builder. Any request gets `200` with a fixed 20-byte body, except gRPC
//!   requests (`content-type: application/grpc*`), which are echoed: the request's
//!   length-prefixed message is already a valid response message for an echo method, so the body
//!   is returned as is, followed by the `grpc-status: 0` trailer.
//! - TCP echo: every byte read is written back.
//! - bulk sink: everything read is discarded.
//! - bulk source: 64 KiB writes of zeros until the peer goes away.
//!
//! It runs on one thread because the harness pins it to the load generator's core: the proxy
//! under test gets the other core to itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The body of every non-gRPC response: small and fixed, so that the proxy, not the payload, is
/// what the benchmark measures.
pub const HELLO: &[u8] = b"hello from upstream\n";

/// Size of the reads and writes of the TCP servers; also the bulk scenario's write size.
pub const CHUNK: usize = 64 * 1024;

/// h2 streams the upstream accepts on one connection. A proxy may multiplex every downstream
/// stream on one upstream connection, and 256 connections is the largest closed-loop level.
const MAX_H2_STREAMS: u32 = 10_000;

/// Where the upstream listens.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamAddrs {
    /// HTTP/1.1 + h2c + gRPC echo.
    pub http: SocketAddr,
    /// TCP echo.
    pub echo: SocketAddr,
    /// Bulk sink (reads and discards).
    pub sink: SocketAddr,
    /// Bulk source (writes until the peer closes).
    pub source: SocketAddr,
}

/// A response body: either fixed bytes, or gRPC data followed by trailers.
pub enum ResBody {
    /// Fixed bytes with an exact size hint, so HTTP/1.1 gets `content-length`.
    Data(Option<Bytes>),
    /// gRPC message(s), then trailers.
    Grpc {
        /// The length-prefixed message(s), taken when sent.
        data: Option<Bytes>,
        /// `grpc-status`, taken when sent.
        trailers: Option<HeaderMap>,
    },
}

// === impl ResBody ===

impl Body for ResBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            ResBody::Data(data) => data.take().map(Frame::data),
            ResBody::Grpc { data, trailers } => match data.take() {
                Some(d) => Some(Frame::data(d)),
                None => trailers.take().map(Frame::trailers),
            },
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Data(d) => d.is_none(),
            ResBody::Grpc { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Data(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            ResBody::Grpc { .. } => SizeHint::default(),
        }
    }
}

/// Serves all four ports until an accept loop fails.
pub async fn serve(addrs: UpstreamAddrs) -> anyhow::Result<()> {
    let http = TcpListener::bind(addrs.http).await?;
    let echo = TcpListener::bind(addrs.echo).await?;
    let sink = TcpListener::bind(addrs.sink).await?;
    let source = TcpListener::bind(addrs.source).await?;
    let http = tokio::spawn(accept_loop(http, serve_http));
    let echo = tokio::spawn(accept_loop(echo, serve_echo));
    let sink = tokio::spawn(accept_loop(sink, serve_sink));
    let source = tokio::spawn(accept_loop(source, serve_source));
    let (a, b, c, d) = tokio::try_join!(http, echo, sink, source)?;
    a.and(b).and(c).and(d)
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of descriptors or similar: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
    }
}

async fn serve_http(stream: TcpStream) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(MAX_H2_STREAMS);
    let _ = builder
        .serve_connection(TokioIo::new(stream), service_fn(handle))
        .await;
}

async fn handle(req: Request<Incoming>) -> Result<Response<ResBody>, Infallible> {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = req.into_body();
    let data = if body.is_end_stream() {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    };
    let mut res = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut res = Response::new(ResBody::Grpc {
            data: Some(data),
            trailers: Some(trailers),
        });
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        res
    } else {
        let mut res = Response::new(ResBody::Data(Some(Bytes::from_static(HELLO))));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        res
    };
    *res.status_mut() = http::StatusCode::OK;
    Ok(res)
}

async fn serve_echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn serve_sink(mut stream: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

async fn serve_source(mut stream: TcpStream) {
    let buf = vec![0u8; CHUNK];
    while stream.write_all(&buf).await.is_ok() {}
}

/// Runs [`serve`] on a current-thread runtime (see the module docs for why one thread).
///
/// With `exit_with_parent`, it also exits once its parent process is gone, so a harness killed
/// with SIGKILL does not leave the upstream holding its ports.
pub fn run(addrs: UpstreamAddrs, exit_with_parent: bool) -> anyhow::Result<()> {
    if exit_with_parent {
        let parent = std::os::unix::process::parent_id();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        });
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(addrs))
}

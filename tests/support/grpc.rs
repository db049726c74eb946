//! A unary gRPC server and client over h2c, with real trailers.
//!
//! gRPC framing needs no protobuf: each message is a 1-byte compression flag, a 4-byte big-endian
//! length and the bytes. The server answers any path with one message — the request message
//! prefixed by `<instance name>:` — and trailers `grpc-status` (from the request's
//! `x-grpc-status`, default 0), `grpc-message` and `x-upstream-name`. A proxy that drops trailers
//! or buffers them wrongly shows up as a missing `grpc-status`.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::client::{full, Body, HttpClient, Proto, Reply};
use crate::upstream::UPSTREAM_NAME_HEADER;

/// A running gRPC server; stops when dropped.
pub struct GrpcServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The outcome of one unary call.
#[derive(Debug, Clone)]
pub struct GrpcReply {
    /// The HTTP response, including headers and trailers.
    pub http: Reply,
    /// The decoded response message, if exactly one was sent.
    pub message: Option<Bytes>,
}

// === impl GrpcServer ===

impl GrpcServer {
    /// Starts a server named `name` on a fresh loopback port.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = name.into();
        let task = tokio::spawn(accept_loop(listener, name, calls.clone()));
        Ok(Self { addr, calls, task })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Calls served so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, calls: Arc<AtomicUsize>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let name = name.clone();
                let calls = calls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| serve(req, name.clone(), calls.clone()));
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(
    req: Request<Incoming>,
    name: Arc<str>,
    calls: Arc<AtomicUsize>,
) -> Result<Response<Body>, Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let grpc_status = req
        .headers()
        .get("x-grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request_msg = decode_frames(&body)
        .ok()
        .and_then(|m| m.into_iter().next())
        .unwrap_or_default();

    let mut reply_msg = BytesMut::from(format!("{name}:").as_bytes());
    reply_msg.extend_from_slice(&request_msg);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", header_value(&grpc_status));
    trailers.insert("grpc-message", header_value(&format!("served-by-{name}")));
    trailers.insert(UPSTREAM_NAME_HEADER, header_value(&name));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(encode_frame(&reply_msg))),
        Ok(Frame::trailers(trailers)),
    ];
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(UPSTREAM_NAME_HEADER, &*name)
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .expect("valid response");
    Ok(resp)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Frames one gRPC message (uncompressed).
pub fn encode_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(msg.len()).expect("test messages are small"));
    b.extend_from_slice(msg);
    b.freeze()
}

/// Splits a body into gRPC messages.
pub fn decode_frames(mut body: &[u8]) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        anyhow::ensure!(body.len() >= 5, "truncated gRPC frame header");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        anyhow::ensure!(body.len() >= 5 + len, "truncated gRPC message");
        out.push(Bytes::copy_from_slice(&body[5..5 + len]));
        body = &body[5 + len..];
    }
    Ok(out)
}

/// One unary call over a fresh h2c connection to `addr`, as `POST http://authority/path`.
pub async fn unary(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    message: &[u8],
    metadata: &[(&str, &str)],
) -> anyhow::Result<GrpcReply> {
    let mut client = HttpClient::connect(addr, Proto::H2c).await?;
    let mut b = client
        .request(Method::POST, authority, path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    for (k, v) in metadata {
        b = b.header(*k, *v);
    }
    let http = client.send(b.body(full(encode_frame(message)))?).await?;
    let messages = decode_frames(&http.body).context("decoding gRPC response")?;
    let message = (messages.len() == 1).then(|| messages[0].clone());
    Ok(GrpcReply { http, message })
}

// === impl GrpcReply ===

impl GrpcReply {
    /// `grpc-status` from the trailers (or from headers, for a trailers-only response).
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailer("grpc-status")
            .or_else(|| self.http.header("grpc-status"))
    }

    /// A trailer as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.http
            .trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    }
}

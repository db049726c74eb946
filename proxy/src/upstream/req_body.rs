//! The request body sent upstream: the downstream body streamed through, or a replay of it.
//!
//! A request that may be retried (or mirrored) keeps a copy of its body as it streams to the
//! first attempt, up to a buffer limit (Envoy's per-connection buffer limit, 1 MiB by
//! default): each retry replays the copy and then continues with whatever has not arrived
//! yet. Past the limit the copy is dropped and the request can no longer be retried
//! (`retry_or_shadow_abandoned`), but the attempt in flight keeps streaming. Only the newest
//! reader may pull from the downstream body, so a discarded attempt that hyper has not
//! dropped yet cannot steal frames from its successor.
//!
//! Both kinds report when the downstream body has been read to its end: Envoy starts the
//! route timeout only once the whole request has been received.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::stats::Counter;

/// Envoy's default `per_connection_buffer_limit_bytes`, which bounds retry/shadow buffering.
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// A request body on its way upstream.
#[derive(Debug)]
pub struct UpstreamBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// No body.
    Empty,
    /// The downstream body, streamed; `done` fires at its end.
    Stream {
        body: Incoming,
        done: Option<oneshot::Sender<()>>,
    },
    /// One reader of a shared, buffered body.
    Replay {
        shared: Arc<Replay>,
        pos: usize,
        generation: u64,
    },
}

/// Why a request body could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ReqBodyError {
    /// Reading the downstream body failed (client reset, malformed chunking, ...).
    #[error("downstream body: {0}")]
    Downstream(#[from] hyper::Error),
    /// This attempt was superseded by a retry.
    #[error("request attempt superseded")]
    Superseded,
    /// The body outgrew the buffer limit and this attempt needed the dropped part.
    #[error("request body exceeded the retry buffer limit")]
    Overflowed,
}

/// A buffered request body shared by the attempts (and mirrors) of one request.
#[derive(Debug)]
pub struct Replay {
    state: Mutex<ReplayState>,
    limit: usize,
    /// `cluster.<c>.retry_or_shadow_abandoned`, counted when the limit is passed.
    abandoned: Counter,
    /// Woken when the downstream body ends (mirrors wait for it).
    complete: tokio::sync::Notify,
}

#[derive(Debug)]
struct ReplayState {
    /// The downstream body, until it ends or fails.
    source: Option<Incoming>,
    /// Everything read so far (empty once overflowed).
    frames: Vec<Buffered>,
    /// Frames read so far, whether kept or not.
    read: usize,
    bytes: usize,
    ended: bool,
    overflowed: bool,
    /// The downstream body's length, when it declared one.
    exact_len: Option<u64>,
    /// The reader allowed to pull from `source`.
    generation: u64,
    done: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Clone)]
enum Buffered {
    Data(Bytes),
    Trailers(HeaderMap),
}

// === impl UpstreamBody ===

impl UpstreamBody {
    /// An empty body.
    pub fn empty() -> Self {
        UpstreamBody { kind: Kind::Empty }
    }

    /// Streams `body` through; the receiver (if any) resolves when it has been read to its
    /// end. A body that is already complete needs no signal and gets none.
    pub fn stream(body: Incoming) -> (Self, Option<oneshot::Receiver<()>>) {
        if body.is_end_stream() {
            return (UpstreamBody::empty(), None);
        }
        let (tx, rx) = oneshot::channel();
        (
            UpstreamBody {
                kind: Kind::Stream {
                    body,
                    done: Some(tx),
                },
            },
            Some(rx),
        )
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Stream { body, done } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                // hyper stops polling a body once it reports its end (a Content-Length body
                // after its last byte), so the end is noticed on the last frame too.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended {
                    if let Some(tx) = done.take() {
                        let _ = tx.send(());
                    }
                }
                polled.map(|f| f.map(|r| r.map_err(ReqBodyError::from)))
            }
            Kind::Replay {
                shared,
                pos,
                generation,
            } => shared.poll_reader(pos, *generation, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Stream { body, .. } => body.is_end_stream(),
            Kind::Replay { shared, pos, .. } => {
                let st = shared.lock();
                st.ended && *pos >= st.read
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Stream { body, .. } => body.size_hint(),
            Kind::Replay { shared, pos, .. } => match shared.lock().exact_len {
                // A replay from the start sends what the client declared, so an HTTP/1
                // upstream sees the same Content-Length framing on every attempt.
                Some(n) if *pos == 0 => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

// === impl Replay ===

impl Replay {
    /// Buffers `body` for replays, up to `limit` bytes. The receiver resolves when the
    /// downstream body has been read to its end (`None`: it already had).
    pub fn new(
        body: Incoming,
        limit: usize,
        abandoned: Counter,
    ) -> (Arc<Self>, Option<oneshot::Receiver<()>>) {
        let ended = body.is_end_stream();
        let exact_len = body.size_hint().exact();
        let (done, rx) = if ended {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let shared = Arc::new(Replay {
            state: Mutex::new(ReplayState {
                source: (!ended).then_some(body),
                frames: Vec::new(),
                read: 0,
                bytes: 0,
                ended,
                overflowed: false,
                exact_len,
                generation: 0,
                done,
            }),
            limit,
            abandoned,
            complete: tokio::sync::Notify::new(),
        });
        (shared, rx)
    }

    /// A reader from the start of the body; it becomes the one allowed to pull new frames.
    pub fn reader(self: &Arc<Self>) -> UpstreamBody {
        let mut st = self.lock();
        st.generation += 1;
        UpstreamBody {
            kind: Kind::Replay {
                shared: self.clone(),
                pos: 0,
                generation: st.generation,
            },
        }
    }

    /// Whether the whole body read so far is still buffered (a retry can resend it).
    pub fn replayable(&self) -> bool {
        !self.lock().overflowed
    }

    /// The complete body, once it has been read to its end and fit in the buffer (mirrors).
    pub fn complete_body(&self) -> Option<(Vec<Bytes>, Option<HeaderMap>)> {
        let st = self.lock();
        if !st.ended || st.overflowed {
            return None;
        }
        let mut data = Vec::new();
        let mut trailers = None;
        for f in &st.frames {
            match f {
                Buffered::Data(b) => data.push(b.clone()),
                Buffered::Trailers(t) => trailers = Some(t.clone()),
            }
        }
        Some((data, trailers))
    }

    /// Waits until the downstream body has been read to its end; true if it is complete in
    /// the buffer (false: it outgrew the limit or failed).
    pub async fn wait_complete(&self) -> bool {
        loop {
            // Created before the check, so a completion in between is not missed.
            let notified = self.complete.notified();
            {
                let st = self.lock();
                if st.ended {
                    return !st.overflowed;
                }
            }
            notified.await;
        }
    }

    fn poll_reader(
        &self,
        pos: &mut usize,
        generation: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        let mut st = self.lock();
        if *pos < st.read {
            if st.overflowed {
                return Poll::Ready(Some(Err(ReqBodyError::Overflowed)));
            }
            let f = st.frames[*pos].clone();
            *pos += 1;
            return Poll::Ready(Some(Ok(match f {
                Buffered::Data(b) => Frame::data(b),
                Buffered::Trailers(t) => Frame::trailers(t),
            })));
        }
        if st.ended {
            return Poll::Ready(None);
        }
        if generation != st.generation {
            return Poll::Ready(Some(Err(ReqBodyError::Superseded)));
        }
        let Some(source) = st.source.as_mut() else {
            return Poll::Ready(None);
        };
        // The lock is held only for this synchronous poll; no await happens under it.
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.ended = true;
                st.source = None;
                if let Some(tx) = st.done.take() {
                    let _ = tx.send(());
                }
                self.complete.notify_waiters();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.source = None;
                st.ended = true;
                st.overflowed = true;
                self.complete.notify_waiters();
                Poll::Ready(Some(Err(ReqBodyError::Downstream(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let kept = match frame.into_data() {
                    Ok(data) => {
                        st.bytes += data.len();
                        Buffered::Data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => Buffered::Trailers(t),
                        // http-body frames are data or trailers; anything else passes as is.
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    },
                };
                st.read += 1;
                *pos = st.read;
                // The last frame of a body with a declared length: hyper will not poll for
                // the end, so it is recorded now.
                if st.source.as_ref().is_some_and(|b| b.is_end_stream()) {
                    st.ended = true;
                    st.source = None;
                    if let Some(tx) = st.done.take() {
                        let _ = tx.send(());
                    }
                    self.complete.notify_waiters();
                }
                if !st.overflowed {
                    if st.bytes > self.limit {
                        st.overflowed = true;
                        st.frames = Vec::new();
                        self.abandoned.inc();
                    } else {
                        st.frames.push(kept.clone());
                    }
                }
                Poll::Ready(Some(Ok(match kept {
                    Buffered::Data(b) => Frame::data(b),
                    Buffered::Trailers(t) => Frame::trailers(t),
                })))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        // Every change to the state completes before the lock is released.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! The response body sent downstream: an upstream body streamed through, or a local reply.
//!
//! It carries what must happen when the exchange ends: an HTTP/1 upstream connection goes
//! back to its pool (only if the body was read to the end), the route timeout keeps running
//! until the body is complete (Envoy's route timeout covers the whole response), and the
//! completion hook records stats and the access log.
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::pool::Lease;
use crate::stats::Counter;

/// Called once when the response ends (`complete` true if the body reached its end).
pub trait OnComplete: Send + 'static {
    /// The exchange ended after `bytes` body bytes were sent.
    fn complete(self: Box<Self>, complete: bool, bytes: u64);
}

pin_project! {
    /// The body of every response Petrel sends downstream.
    pub struct ProxyBody {
        inner: Inner,
        #[pin]
        deadline: Option<Sleep>,
        // The route/per-try timeout once the request completes (it had not when the response
        // headers arrived): the receiver fires then, and the timeout counts from there.
        pending_deadline: Option<(tokio::sync::oneshot::Receiver<()>, Option<std::time::Duration>)>,
        #[pin]
        idle: Option<Sleep>,
        idle_for: Option<std::time::Duration>,
        // Counted when a deadline ends the body (`upstream_rq_timeout`), and when the idle
        // timeout does.
        timeout_counter: Option<Counter>,
        idle_counter: Option<Counter>,
        lease: Option<Lease>,
        on_complete: Option<Box<dyn OnComplete>>,
        bytes: u64,
    }

    impl PinnedDrop for ProxyBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // hyper does not poll a body that reports its end up front (e.g. an empty
            // upstream body), so "ended" is judged here too.
            let ended = match this.inner {
                Inner::Empty | Inner::Full(None) => true,
                Inner::Full(Some(_)) => false,
                Inner::Upstream(b) => b.is_end_stream(),
            };
            if let Some(mut lease) = this.lease.take() {
                if ended {
                    lease.set_reusable();
                }
            }
            if let Some(hook) = this.on_complete.take() {
                hook.complete(ended, *this.bytes);
            }
        }
    }
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// When a response body must be complete.
#[derive(Debug)]
pub enum BodyDeadline {
    /// At this instant (`None`: no deadline).
    At(Option<tokio::time::Instant>),
    /// `after` the request completes (signalled by `complete`), and at `hard` regardless.
    AfterRequest {
        /// Fires when the downstream request has been received in full.
        complete: tokio::sync::oneshot::Receiver<()>,
        /// Route/per-try timeout, counted from then.
        after: Option<std::time::Duration>,
        /// `max_stream_duration`'s deadline.
        hard: Option<tokio::time::Instant>,
    },
}

/// The error of a `ProxyBody`: the upstream failed, or a timeout fired mid-body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream body failed.
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The route (or per-try, or max stream duration) timeout elapsed before the body ended.
    #[error("route timeout elapsed while streaming the response")]
    Timeout,
    /// No response data moved for the idle timeout.
    #[error("stream idle timeout while streaming the response")]
    Idle,
}

// === impl ProxyBody ===

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::new(Inner::Empty)
    }

    /// A body of fixed bytes.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Self::empty()
        } else {
            Self::new(Inner::Full(Some(b)))
        }
    }

    /// An upstream body, streamed.
    pub fn upstream(body: Incoming) -> Self {
        Self::new(Inner::Upstream(body))
    }

    fn new(inner: Inner) -> Self {
        ProxyBody {
            inner,
            deadline: None,
            pending_deadline: None,
            idle: None,
            idle_for: None,
            timeout_counter: None,
            idle_counter: None,
            lease: None,
            on_complete: None,
            bytes: 0,
        }
    }

    /// Ends the body with an error at `deadline` if it has not completed by then.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline.map(tokio::time::sleep_until);
        self
    }

    /// Ends the body with an error when `deadline` passes (counting `timeout_counter`), and
    /// when no data moved for `idle` (counting its counter).
    pub fn with_timers(
        mut self,
        deadline: BodyDeadline,
        idle: Option<(std::time::Duration, Counter)>,
        timeout_counter: Counter,
    ) -> Self {
        match deadline {
            BodyDeadline::At(d) => self.deadline = d.map(tokio::time::sleep_until),
            BodyDeadline::AfterRequest {
                complete,
                after,
                hard,
            } => {
                self.deadline = hard.map(tokio::time::sleep_until);
                self.pending_deadline = Some((complete, after));
            }
        }
        if let Some((d, c)) = idle {
            self.idle_for = Some(d);
            self.idle = Some(tokio::time::sleep(d));
            self.idle_counter = Some(c);
        }
        self.timeout_counter = Some(timeout_counter);
        self
    }

    /// Holds `lease` until the body ends; an HTTP/1 connection goes back to its pool only if
    /// the body was read to its end.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Runs `hook` when the exchange ends.
    pub fn with_on_complete(mut self, hook: Box<dyn OnComplete>) -> Self {
        self.on_complete = Some(hook);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        if let Some((rx, after)) = this.pending_deadline.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(after) = *after {
                        let at = tokio::time::Instant::now() + after;
                        let sooner = this
                            .deadline
                            .as_ref()
                            .as_pin_ref()
                            .is_none_or(|d| at < d.deadline());
                        if sooner {
                            this.deadline.set(Some(tokio::time::sleep_until(at)));
                        }
                    }
                    *this.pending_deadline = None;
                }
                Poll::Ready(Err(_)) => *this.pending_deadline = None,
                Poll::Pending => {}
            }
        }
        let polled = match this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
        };
        let frame = match polled {
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut().as_pin_mut() {
                    if deadline.poll(cx).is_ready() {
                        this.lease.take();
                        if let Some(c) = this.timeout_counter.as_ref() {
                            c.inc();
                        }
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                }
                if let Some(idle) = this.idle.as_mut().as_pin_mut() {
                    ready!(idle.poll(cx));
                    this.lease.take();
                    if let Some(c) = this.idle_counter.as_ref() {
                        c.inc();
                    }
                    return Poll::Ready(Some(Err(BodyError::Idle)));
                }
                return Poll::Pending;
            }
            Poll::Ready(f) => f,
        };
        if let (Some(idle), Some(d)) = (this.idle.as_mut().as_pin_mut(), *this.idle_for) {
            idle.reset(tokio::time::Instant::now() + d);
        }
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                }
            }
            Some(Err(_)) => {
                this.lease.take();
            }
            None => {
                if let Some(mut lease) = this.lease.take() {
                    lease.set_reusable();
                }
                if let Some(hook) = this.on_complete.take() {
                    hook.complete(true, *this.bytes);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

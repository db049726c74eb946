//! The response body sent downstream: an upstream body streamed through, or a local reply.
//!
//! It carries what must happen when the exchange ends: an HTTP/1 upstream connection goes
//! back to its pool (only if the body was read to the end), the route timeout keeps running
//! until the body is complete (Envoy's route timeout covers the whole response), and the
//! completion hook records stats and the access log.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::pool::ReqBody;
use super::Host;

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
        pool_return: Option<(Arc<Host>, http1::SendRequest<ReqBody>)>,
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
            if let Some((host, sender)) = this.pool_return.take() {
                if ended {
                    host.pool.put_h1(sender);
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

/// The error of a `ProxyBody`: the upstream failed, or the route timeout fired mid-body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream body failed.
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The route timeout elapsed before the body ended.
    #[error("route timeout elapsed while streaming the response")]
    Timeout,
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
            pool_return: None,
            on_complete: None,
            bytes: 0,
        }
    }

    /// Ends the body with an error at `deadline` if it has not completed by then.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline.map(tokio::time::sleep_until);
        self
    }

    /// Returns `sender` to `host`'s pool once the body has been read to the end.
    pub fn with_pool_return(
        mut self,
        host: Arc<Host>,
        sender: http1::SendRequest<ReqBody>,
    ) -> Self {
        self.pool_return = Some((host, sender));
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
        let polled = match this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
        };
        let frame = match polled {
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut().as_pin_mut() {
                    ready!(deadline.poll(cx));
                    return Poll::Ready(Some(Err(BodyError::Timeout)));
                }
                return Poll::Pending;
            }
            Poll::Ready(f) => f,
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                }
            }
            Some(Err(_)) => {
                this.pool_return.take();
            }
            None => {
                if let Some((host, sender)) = this.pool_return.take() {
                    host.pool.put_h1(sender);
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

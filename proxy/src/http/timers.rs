//! The timers of one routed request, as Envoy's router arms them.
//!
//! - The route (global) timeout starts when the downstream request has been received in full
//!   (Envoy's `onRequestComplete`) and covers every attempt, back-off and the whole response.
//! - A per-try timeout starts when its attempt starts, or when the request is complete if
//!   that is later; it covers the attempt's response too.
//! - The route's `max_stream_duration` bounds the downstream stream from its start (Envoy's
//!   connection manager enforces it: `downstream duration timeout`).
//! - The stream idle timeout (route `idle_timeout`, else the connection manager's
//!   `stream_idle_timeout`) and `per_try_idle_timeout` restart whenever response data moves.
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

pub use crate::upstream::body::BodyDeadline;

/// Which timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fired {
    /// The route timeout.
    Global,
    /// The attempt's `per_try_timeout`.
    PerTry,
    /// The attempt's `per_try_idle_timeout`.
    PerTryIdle,
    /// The stream idle timeout.
    StreamIdle,
    /// The route's `max_stream_duration` (the downstream stream's).
    MaxStreamDuration,
}

/// When the downstream request was received in full.
#[derive(Debug)]
enum Complete {
    At(Instant),
    Pending(oneshot::Receiver<()>),
    /// The request body failed: it never completes, so the timers that wait for it never run.
    Never,
}

/// The request's timers.
#[derive(Debug)]
pub(super) struct Timers {
    complete: Complete,
    /// The route timeout (`None`: disabled).
    pub global: Option<Duration>,
    /// The per-try timeout.
    pub per_try: Option<Duration>,
    /// The per-try idle timeout.
    pub per_try_idle: Option<Duration>,
    /// The stream idle timeout.
    pub stream_idle: Option<Duration>,
    /// The downstream stream's maximum duration, counted from `stream_start`.
    pub max_stream_duration: Option<Duration>,
    /// When the downstream request arrived.
    pub stream_start: Instant,
}

/// The deadlines of one attempt, fixed when it starts (those waiting for the request to
/// complete are filled in by [`Timers::fired`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    /// When the attempt started.
    pub start: Instant,
}

// === impl Timers ===

impl Timers {
    /// Timers for a request whose body completes when `complete` fires (`None`: it already
    /// has).
    pub fn new(complete: Option<oneshot::Receiver<()>>) -> Self {
        Timers {
            complete: match complete {
                Some(rx) => Complete::Pending(rx),
                None => Complete::At(Instant::now()),
            },
            global: None,
            per_try: None,
            per_try_idle: None,
            stream_idle: None,
            max_stream_duration: None,
            stream_start: Instant::now(),
        }
    }

    /// When the request was complete, if it is.
    pub fn completed_at(&mut self) -> Option<Instant> {
        if let Complete::Pending(rx) = &mut self.complete {
            match rx.try_recv() {
                Ok(()) => self.complete = Complete::At(Instant::now()),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => self.complete = Complete::Never,
            }
        }
        match self.complete {
            Complete::At(t) => Some(t),
            _ => None,
        }
    }

    /// The route timeout's deadline, once the request is complete.
    pub fn global_deadline(&mut self) -> Option<Instant> {
        let done = self.completed_at()?;
        self.global.map(|g| done + g)
    }

    /// The per-try deadline of `attempt`, once the request is complete.
    fn per_try_deadline(&mut self, attempt: &Attempt) -> Option<Instant> {
        let done = self.completed_at()?;
        self.per_try.map(|p| attempt.start.max(done) + p)
    }

    /// The deadline the response body of `attempt` must end by (route or per-try timeout,
    /// whichever is first), and whether it still depends on the request completing.
    pub fn body_deadline(&mut self, attempt: &Attempt) -> BodyDeadline {
        let msd = self.max_stream_duration.map(|d| self.stream_start + d);
        if self.completed_at().is_some() {
            let d = [self.global_deadline(), self.per_try_deadline(attempt), msd]
                .into_iter()
                .flatten()
                .min();
            return BodyDeadline::At(d);
        }
        match std::mem::replace(&mut self.complete, Complete::Never) {
            Complete::Pending(rx) => {
                let after = [self.global, self.per_try].into_iter().flatten().min();
                BodyDeadline::AfterRequest {
                    complete: rx,
                    after,
                    hard: msd,
                }
            }
            other => {
                self.complete = other;
                BodyDeadline::At(msd)
            }
        }
    }

    /// Resolves when one of `attempt`'s timers (or the route timeout) fires; pending forever
    /// if none is set. `idle_since` is when response data last moved (the attempt's start
    /// while waiting for headers).
    pub async fn fired(&mut self, attempt: &Attempt) -> Fired {
        let msd = self
            .max_stream_duration
            .map(|d| (attempt.start + d, Fired::MaxStreamDuration));
        let idle = [
            self.per_try_idle
                .map(|d| (attempt.start + d, Fired::PerTryIdle)),
            self.stream_idle
                .map(|d| (attempt.start + d, Fired::StreamIdle)),
        ];
        // Timers that do not wait for the request body.
        let early = idle
            .into_iter()
            .chain([msd])
            .flatten()
            .min_by_key(|(t, _)| *t);
        if let Complete::Pending(rx) = &mut self.complete {
            let waited = match early {
                Some((t, which)) => tokio::select! {
                    r = rx => Some(r),
                    _ = tokio::time::sleep_until(t) => return which,
                },
                None => Some(rx.await),
            };
            self.complete = match waited {
                Some(Ok(())) => Complete::At(Instant::now()),
                _ => Complete::Never,
            };
        }
        let late = [
            self.global_deadline().map(|t| (t, Fired::Global)),
            self.per_try_deadline(attempt).map(|t| (t, Fired::PerTry)),
        ];
        match late
            .into_iter()
            .flatten()
            .chain(early)
            .min_by_key(|(t, _)| *t)
        {
            Some((t, which)) => {
                tokio::time::sleep_until(t).await;
                which
            }
            None => std::future::pending().await,
        }
    }

    /// Resolves when the route timeout fires (during a retry back-off).
    pub async fn global_fired(&mut self) {
        if let Complete::Pending(rx) = &mut self.complete {
            self.complete = match rx.await {
                Ok(()) => Complete::At(Instant::now()),
                Err(_) => Complete::Never,
            };
        }
        match self.global_deadline() {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    }

    /// Milliseconds left of the route timeout for the upstream (`x-envoy-expected-rq-timeout-ms`):
    /// the per-try timeout if set, capped by what is left of the route timeout.
    pub fn expected_ms(&mut self) -> Option<u64> {
        let expected = self.per_try.or(self.global)?;
        let mut ms = expected.as_millis() as u64;
        if let (Some(global), Some(done)) = (self.global, self.completed_at()) {
            // Whole milliseconds elapsed since the request completed, as Envoy counts them.
            let elapsed = done.elapsed().as_millis() as u64;
            let global = global.as_millis() as u64;
            ms = if elapsed >= global {
                1
            } else {
                ms.min(global - elapsed)
            };
        }
        Some(ms)
    }
}

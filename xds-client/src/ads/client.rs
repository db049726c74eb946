//! The task that owns the ADS stream: opens it, feeds the engine, reconnects with backoff.
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tonic::transport::Channel;
use tracing::Instrument;

use super::config::{AdsConfig, AdsMode, Backoff, Interest};
use super::delta::Delta;
use super::engine::{AdsGrpc, Command, Engine, Protocol};
use super::sink::ResourceSink;
use super::sotw::Sotw;
use super::stats::AdsStats;

/// The ADS client. Build it with [`AdsClient::new`], then spawn [`AdsClient::run`] (Envoy
/// runs xDS on the main thread; Petrel runs it on the admin/xDS runtime).
pub struct AdsClient {
    channel: Channel,
    mode: AdsMode,
    backoff: Backoff,
    max_message_size: usize,
    engine: Engine,
}

/// Changes subscriptions and reads stats of a running [`AdsClient`]. Cheap to clone; usable
/// from any thread, including from inside [`ResourceSink::apply`].
#[derive(Clone, Debug)]
pub struct AdsHandle {
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<AdsStats>,
}

/// [`AdsHandle::set_subscriptions`] was called with a type URL missing from
/// [`AdsConfig::types`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type URL {0} is not configured on this ADS client")]
pub struct UndeclaredType(pub String);

/// Requests queued towards the server before we give up on it. Each response causes at
/// most one ACK plus the subscription changes it triggers, so a full queue means the
/// control plane stopped reading its stream; the stream is then dropped and reopened.
const REQUEST_QUEUE: usize = 1024;

/// Why a stream ended.
enum StreamEnd {
    Shutdown,
    /// The stream failed or closed; `delivered` says whether any response arrived.
    Lost {
        reason: String,
        delivered: bool,
    },
}

// === impl AdsClient ===

impl AdsClient {
    /// A client over `channel` (see [`connect_channel`](super::connect_channel)) feeding
    /// `sink`. Nothing happens until [`run`](Self::run) is polled.
    pub fn new(
        channel: Channel,
        config: AdsConfig,
        sink: Arc<dyn ResourceSink>,
    ) -> (AdsClient, AdsHandle) {
        let stats = Arc::new(AdsStats::new(
            config.types.iter().map(|t| t.type_url.as_str()),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine::new(&config, sink, stats.clone(), rx);
        let client = AdsClient {
            channel,
            mode: config.mode,
            backoff: config.backoff,
            max_message_size: config.max_message_size,
            engine,
        };
        (
            client,
            AdsHandle {
                commands: tx,
                stats,
            },
        )
    }

    /// Follows the control plane until [`AdsHandle::shutdown`] is called. Never fails:
    /// every stream error leads to a backoff and a new stream. Dropping every handle does
    /// not stop the client.
    pub async fn run(self) {
        let span = tracing::info_span!("ads", mode = ?self.mode);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) {
        let mut attempt = 0u32;
        loop {
            let end = match self.mode {
                AdsMode::StateOfTheWorld => self.stream::<Sotw>().await,
                AdsMode::Delta => self.stream::<Delta>().await,
            };
            let (reason, delivered) = match end {
                StreamEnd::Shutdown => break,
                StreamEnd::Lost { reason, delivered } => (reason, delivered),
            };
            self.engine.end_stream();
            self.engine
                .stats
                .stream_failures
                .fetch_add(1, Ordering::Relaxed);
            if self.engine.stats.connected_state.swap(0, Ordering::Relaxed) == 1 {
                self.engine.sink.on_connection_state(false);
            }
            // Like Envoy's GrpcStream: a stream that delivered something restarts the backoff.
            if delivered {
                attempt = 0;
            }
            let delay = self.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(%reason, ?delay, "ADS stream closed; reconnecting");
            // `Backoff::max` is caller-chosen; saturate rather than overflow.
            let until = Instant::now()
                .checked_add(delay)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            if !self.idle_until(until).await {
                break;
            }
        }
        if self.engine.stats.connected_state.swap(0, Ordering::Relaxed) == 1 {
            self.engine.sink.on_connection_state(false);
        }
        tracing::debug!("ADS client stopped");
    }

    /// Waits out a backoff while still taking subscription changes and firing timers.
    /// Returns false on shutdown.
    async fn idle_until(&mut self, deadline: Instant) -> bool {
        loop {
            let timer = self.engine.next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return true,
                cmd = self.engine.next_command() => {
                    // Off-stream: the engine only records the new interest.
                    let _ = self.engine.command::<Sotw>(cmd);
                    if self.engine.shutdown {
                        return false;
                    }
                }
                _ = sleep_until_opt(timer) => {
                    self.engine.fire_timeouts(Instant::now());
                }
            }
        }
    }

    /// One stream, from the opening requests to its end.
    async fn stream<P: Protocol>(&mut self) -> StreamEnd {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let opening = self.engine.begin_stream::<P>();
        if let Err(end) = send_all(&tx, opening, false) {
            return end;
        }
        let grpc = AdsGrpc::new(self.channel.clone())
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        let open = P::open(grpc, rx);
        tokio::pin!(open);

        // Until the server answers with headers, keep handling commands and timers; a
        // server that accepts the connection and then hangs must not freeze the handle.
        let mut responses = loop {
            let timer = self.engine.next_deadline();
            tokio::select! {
                res = &mut open => match res {
                    Ok(s) => break s,
                    Err(status) => return lost(format!("opening stream: {status}"), false),
                },
                cmd = self.engine.next_command() => {
                    let reqs = self.engine.command::<P>(cmd);
                    if self.engine.shutdown {
                        return StreamEnd::Shutdown;
                    }
                    if let Err(end) = send_all(&tx, reqs, false) {
                        return end;
                    }
                }
                _ = sleep_until_opt(timer) => {
                    self.engine.fire_timeouts(Instant::now());
                }
            }
        };
        tracing::info!("ADS stream established");
        self.engine
            .stats
            .connected_state
            .store(1, Ordering::Relaxed);
        self.engine.sink.on_connection_state(true);

        let mut delivered = false;
        loop {
            let timer = self.engine.next_deadline();
            tokio::select! {
                msg = responses.message() => match msg {
                    Ok(Some(response)) => {
                        delivered = true;
                        let reqs = P::response(&mut self.engine, response);
                        if self.engine.shutdown {
                            return StreamEnd::Shutdown;
                        }
                        if let Err(end) = send_all(&tx, reqs, delivered) {
                            return end;
                        }
                    }
                    Ok(None) => return lost("closed by the control plane".into(), delivered),
                    Err(status) => return lost(status.to_string(), delivered),
                },
                cmd = self.engine.next_command() => {
                    let reqs = self.engine.command::<P>(cmd);
                    if self.engine.shutdown {
                        return StreamEnd::Shutdown;
                    }
                    if let Err(end) = send_all(&tx, reqs, delivered) {
                        return end;
                    }
                }
                _ = sleep_until_opt(timer) => {
                    self.engine.fire_timeouts(Instant::now());
                }
            }
        }
    }
}

fn lost(reason: String, delivered: bool) -> StreamEnd {
    StreamEnd::Lost { reason, delivered }
}

fn send_all<T>(tx: &mpsc::Sender<T>, reqs: Vec<T>, delivered: bool) -> Result<(), StreamEnd> {
    for req in reqs {
        match tx.try_send(req) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(lost(
                    "control plane is not reading requests".into(),
                    delivered,
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(lost("request stream closed".into(), delivered))
            }
        }
    }
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

// === impl AdsHandle ===

impl AdsHandle {
    /// Subscribes `type_url` to exactly `names` (RDS route names, EDS cluster names, SDS
    /// secret names). A request goes out only if the set differs from the current one.
    pub fn set_subscriptions(
        &self,
        type_url: &str,
        names: BTreeSet<String>,
    ) -> Result<(), UndeclaredType> {
        self.set_interest(type_url, Interest::Names(names))
    }

    /// Like [`set_subscriptions`](Self::set_subscriptions), also allowing a switch to or
    /// from wildcard.
    pub fn set_interest(&self, type_url: &str, interest: Interest) -> Result<(), UndeclaredType> {
        if self.stats.for_type(type_url).is_none() {
            return Err(UndeclaredType(type_url.to_string()));
        }
        // A send error means the client has stopped; there is nothing left to update.
        let _ = self.commands.send(Command::SetInterest {
            type_url: type_url.to_string(),
            interest,
        });
        Ok(())
    }

    /// Stops the client: `run` returns after closing the stream.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// The client's counters.
    pub fn stats(&self) -> &Arc<AdsStats> {
        &self.stats
    }
}

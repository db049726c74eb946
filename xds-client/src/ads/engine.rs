//! Protocol state shared by the SotW and delta variants: one [`TypeState`] per type URL,
//! subscription changes, initial-fetch timers and NACK messages.
//!
//! The engine is synchronous: the client's task feeds it responses and commands and sends
//! whatever requests it returns. That keeps every protocol decision testable without a
//! network, and no lock exists to be held across an `.await`.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Streaming;

use super::config::{rank, AdsConfig, Interest, UnknownTypePolicy};
use super::sink::{Rejection, ResourceSink};
use super::stats::{AdsStats, TypeStats};
use super::type_url;

/// The generated gRPC client over our channel.
pub(crate) type AdsGrpc = AggregatedDiscoveryServiceClient<Channel>;

/// One wire variant of ADS.
pub(crate) trait Protocol {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The first request for type `idx` on a fresh stream.
    fn initial(engine: &mut Engine, idx: usize) -> Self::Request;

    /// The request (if any) announcing that type `idx`'s interest changed from `old`.
    /// Only called while a stream is up.
    fn interest_changed(engine: &mut Engine, idx: usize, old: &Interest) -> Option<Self::Request>;

    /// Handles one response, returning the requests to send in order (the ACK/NACK last).
    fn response(engine: &mut Engine, response: Self::Response) -> Vec<Self::Request>;

    /// Opens the bidirectional stream; requests are read from `requests`.
    fn open(
        grpc: AdsGrpc,
        requests: mpsc::Receiver<Self::Request>,
    ) -> impl Future<Output = Result<Streaming<Self::Response>, tonic::Status>> + Send;
}

/// A message from an [`AdsHandle`](super::AdsHandle) to the client task.
#[derive(Debug)]
pub(crate) enum Command {
    SetInterest {
        type_url: String,
        interest: Interest,
    },
    Shutdown,
}

/// All protocol state of one client. It outlives streams: versions and interest survive
/// reconnects; nonces do not.
pub(crate) struct Engine {
    node: Node,
    node_first_only: bool,
    nack_code: tonic::Code,
    pub(crate) unknown_type: UnknownTypePolicy,
    /// In subscription order (see `config::rank`).
    pub(crate) types: Vec<TypeState>,
    pub(crate) sink: Arc<dyn ResourceSink>,
    pub(crate) stats: Arc<AdsStats>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_closed: bool,
    /// Set by [`Command::Shutdown`].
    pub(crate) shutdown: bool,
    /// A stream is open (requests can be sent).
    on_stream: bool,
    /// The node went out on the current stream (for `set_node_on_first_message_only`).
    node_sent: bool,
}

/// Per-type-URL protocol state.
#[derive(Debug)]
pub(crate) struct TypeState {
    pub(crate) type_url: String,
    pub(crate) interest: Interest,
    pub(crate) stats: Arc<TypeStats>,
    /// SotW: the last accepted `version_info`. Delta: the last accepted
    /// `system_version_info` (informational only).
    pub(crate) version_info: String,
    /// The nonce of the last response on the current stream; cleared on reconnect.
    pub(crate) nonce: String,
    /// SotW wildcard: the names the sink holds, to turn omissions into removals.
    pub(crate) known: BTreeSet<String>,
    /// Delta: name → version of each resource accepted, for `initial_resource_versions`.
    pub(crate) versions: BTreeMap<String, String>,
    /// A request for this type went out on the current stream.
    pub(crate) sent_on_stream: bool,
    initial_fetch_timeout: Option<Duration>,
    /// Armed by the first request ever sent for this type, cleared by the first response.
    fetch_deadline: Option<Instant>,
    fetch_started: bool,
}

/// Envoy truncates `error_detail.message` to this many bytes (`truncateGrpcStatusMessage`).
const MAX_NACK_MESSAGE: usize = 4096;

// === impl Engine ===

impl Engine {
    pub(crate) fn new(
        config: &AdsConfig,
        sink: Arc<dyn ResourceSink>,
        stats: Arc<AdsStats>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let mut types: Vec<TypeState> = Vec::new();
        for t in &config.types {
            if types.iter().any(|s| s.type_url == t.type_url) {
                continue;
            }
            types.push(TypeState {
                type_url: t.type_url.clone(),
                interest: t.interest.clone(),
                // `AdsStats` is built from the same list, so the handle exists.
                stats: stats.handle(&t.type_url).unwrap_or_default(),
                version_info: String::new(),
                nonce: String::new(),
                known: BTreeSet::new(),
                versions: BTreeMap::new(),
                sent_on_stream: false,
                initial_fetch_timeout: t.initial_fetch_timeout,
                fetch_deadline: None,
                fetch_started: false,
            });
        }
        // Stable: types of equal rank keep configuration order.
        types.sort_by_key(|t| rank(&t.type_url));
        Engine {
            node: config.node.clone(),
            node_first_only: config.set_node_on_first_message_only,
            nack_code: config.nack_code,
            unknown_type: config.unknown_type,
            types,
            sink,
            stats,
            commands,
            commands_closed: false,
            shutdown: false,
            on_stream: false,
            node_sent: false,
        }
    }

    pub(crate) fn index(&self, type_url: &str) -> Option<usize> {
        self.types.iter().position(|t| t.type_url == type_url)
    }

    /// The node for the next request.
    pub(crate) fn node(&mut self) -> Option<Node> {
        if self.node_first_only && self.node_sent {
            return None;
        }
        self.node_sent = true;
        Some(self.node.clone())
    }

    /// A new stream: forget nonces, and return the opening requests in order.
    pub(crate) fn begin_stream<P: Protocol>(&mut self) -> Vec<P::Request> {
        self.on_stream = true;
        self.node_sent = false;
        for t in &mut self.types {
            t.nonce.clear();
            t.sent_on_stream = false;
        }
        let mut out = Vec::new();
        for idx in 0..self.types.len() {
            if self.types[idx].interest.wants_anything() {
                out.push(P::initial(self, idx));
                self.mark_sent(idx);
            }
        }
        out
    }

    pub(crate) fn end_stream(&mut self) {
        self.on_stream = false;
        for t in &self.types {
            if t.sent_on_stream {
                TypeStats::inc(&t.stats.update_failure);
            }
        }
    }

    /// Records that a request for `idx` went out; starts its initial-fetch timer.
    pub(crate) fn mark_sent(&mut self, idx: usize) {
        let t = &mut self.types[idx];
        t.sent_on_stream = true;
        if !t.fetch_started {
            t.fetch_started = true;
            // A timeout too large to represent never fires.
            t.fetch_deadline = t
                .initial_fetch_timeout
                .and_then(|d| Instant::now().checked_add(d));
        }
    }

    /// Records that a response for `idx` arrived.
    pub(crate) fn note_response(&mut self, idx: usize) {
        let t = &mut self.types[idx];
        TypeStats::inc(&t.stats.update_attempt);
        // The initial fetch is over, even if the type was never requested.
        t.fetch_started = true;
        t.fetch_deadline = None;
    }

    /// Waits for the next command. Once every handle is gone this never completes, so the
    /// client keeps following the control plane until told to shut down.
    pub(crate) async fn next_command(&mut self) -> Command {
        if !self.commands_closed {
            match self.commands.recv().await {
                Some(cmd) => return cmd,
                None => self.commands_closed = true,
            }
        }
        std::future::pending().await
    }

    /// Applies one command, returning the requests it causes.
    pub(crate) fn command<P: Protocol>(&mut self, cmd: Command) -> Vec<P::Request> {
        match cmd {
            Command::Shutdown => {
                self.shutdown = true;
                Vec::new()
            }
            Command::SetInterest { type_url, interest } => {
                let Some(idx) = self.index(&type_url) else {
                    // `AdsHandle` checks against the same list, so this cannot happen.
                    tracing::warn!(%type_url, "subscription change for an undeclared type");
                    return Vec::new();
                };
                self.set_interest::<P>(idx, interest).into_iter().collect()
            }
        }
    }

    /// Applies every command already queued (e.g. by the sink during `apply`).
    pub(crate) fn drain_commands<P: Protocol>(&mut self) -> Vec<P::Request> {
        let mut out = Vec::new();
        while let Ok(cmd) = self.commands.try_recv() {
            out.extend(self.command::<P>(cmd));
        }
        out
    }

    fn set_interest<P: Protocol>(&mut self, idx: usize, interest: Interest) -> Option<P::Request> {
        let t = &mut self.types[idx];
        if t.interest == interest {
            return None;
        }
        tracing::debug!(type_url = %t.type_url, ?interest, "subscription changed");
        let old = std::mem::replace(&mut t.interest, interest);
        // Resources no longer wanted are forgotten: they must not be reported in
        // `initial_resource_versions`, and their owner has already dropped them.
        if let Interest::Names(names) = &t.interest {
            t.versions.retain(|n, _| names.contains(n));
            t.known.retain(|n| names.contains(n));
        }
        if !self.on_stream {
            // The next stream's opening request carries the new interest.
            return None;
        }
        let req = if self.types[idx].sent_on_stream {
            P::interest_changed(self, idx, &old)
        } else if self.types[idx].interest.wants_anything() {
            Some(P::initial(self, idx))
        } else {
            None
        };
        if req.is_some() {
            self.mark_sent(idx);
        }
        req
    }

    /// The earliest pending initial-fetch deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.types.iter().filter_map(|t| t.fetch_deadline).min()
    }

    /// Tells the sink about every initial fetch that has timed out by `now`.
    pub(crate) fn fire_timeouts(&mut self, now: Instant) {
        for t in &mut self.types {
            if t.fetch_deadline.is_some_and(|d| d <= now) {
                t.fetch_deadline = None;
                TypeStats::inc(&t.stats.init_fetch_timeout);
                tracing::warn!(type_url = %t.type_url, "initial fetch timed out");
                self.sink.on_initial_fetch_timeout(&t.type_url);
            }
        }
    }

    /// The `error_detail` of a NACK.
    pub(crate) fn nack_status(&self, message: String) -> RpcStatus {
        RpcStatus {
            code: self.nack_code as i32,
            message: truncate(message),
            details: Vec::new(),
        }
    }
}

/// Envoy's wording for a partially rejected update (`CdsApiImpl`, `LdsApiImpl`).
pub(crate) fn nack_message(type_url: &str, rejections: &[Rejection]) -> String {
    let pairs = || {
        rejections
            .iter()
            .map(|r| format!("{}: {}", r.name, r.reason))
    };
    match type_url {
        type_url::CLUSTER => format!(
            "Error adding/updating cluster(s) {}",
            pairs().collect::<Vec<_>>().join(", ")
        ),
        type_url::LISTENER => {
            let mut msg = String::from("Error adding/updating listener(s) ");
            for p in pairs() {
                msg.push_str(&p);
                msg.push('\n');
            }
            msg
        }
        _ => pairs().collect::<Vec<_>>().join(", "),
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_NACK_MESSAGE {
        let mut end = MAX_NACK_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...(truncated)");
    }
    message
}

/// The name of an encoded xDS resource: field 1 (a string) of every resource type Envoy
/// fetches (`Listener.name`, `Cluster.name`, `RouteConfiguration.name`,
/// `ClusterLoadAssignment.cluster_name`, `Secret.name`, …). Scanning the wire format keeps
/// decoding (and the knowledge of types) in the sink.
pub(crate) fn resource_name(mut buf: &[u8]) -> Result<String, &'static str> {
    fn varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }
    fn skip(buf: &mut &[u8], n: u64) -> Result<(), &'static str> {
        let n = usize::try_from(n).map_err(|_| "length overflows")?;
        if n > buf.len() {
            return Err("truncated field");
        }
        *buf = &buf[n..];
        Ok(())
    }
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match (key >> 3, key & 7) {
            (0, _) => return Err("field number 0"),
            (_, 0) => {
                varint(&mut buf)?;
            }
            (_, 1) => skip(&mut buf, 8)?,
            (1, 2) => {
                let len = varint(&mut buf)?;
                let len = usize::try_from(len).map_err(|_| "length overflows")?;
                if len > buf.len() {
                    return Err("truncated field");
                }
                return String::from_utf8(buf[..len].to_vec()).map_err(|_| "name is not UTF-8");
            }
            (_, 2) => {
                let len = varint(&mut buf)?;
                skip(&mut buf, len)?;
            }
            (_, 5) => skip(&mut buf, 4)?,
            _ => return Err("unsupported wire type"),
        }
    }
    Err("resource has no name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;

    #[test]
    fn resource_name_reads_field_one() {
        let c = Cluster {
            name: "outbound|80||svc".into(),
            connect_timeout: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            resource_name(&c.encode_to_vec()).unwrap(),
            "outbound|80||svc"
        );
        let cla = ClusterLoadAssignment {
            cluster_name: "eds".into(),
            ..Default::default()
        };
        assert_eq!(resource_name(&cla.encode_to_vec()).unwrap(), "eds");
        assert!(resource_name(&[]).is_err());
        assert!(resource_name(&[0x0a, 0x05, b'a']).is_err());
        assert!(resource_name(&[0xff; 12]).is_err());
    }

    #[test]
    fn nack_messages_follow_envoy_wording() {
        let r = [
            Rejection::new("a", "bad lb"),
            Rejection::new("b", "no name"),
        ];
        assert_eq!(
            nack_message(type_url::CLUSTER, &r),
            "Error adding/updating cluster(s) a: bad lb, b: no name"
        );
        assert_eq!(
            nack_message(type_url::LISTENER, &r),
            "Error adding/updating listener(s) a: bad lb\nb: no name\n"
        );
        assert_eq!(nack_message(type_url::ROUTE, &r[..1]), "a: bad lb");
        let long = truncate("x".repeat(5000));
        assert!(long.ends_with("...(truncated)") && long.len() == 4096 + 14);
    }
}

//! A scriptable ADS control plane for tests: a real tonic server implementing
//! `AggregatedDiscoveryService` (SotW and delta) on loopback TCP or a Unix socket.
//!
//! Two ways to drive it, which can be mixed:
//! - **scripted**: push exact responses with [`TestControlPlane::push_sotw`] /
//!   [`TestControlPlane::push_delta`] (to every open stream of that kind);
//! - **snapshot**: [`TestControlPlane::set_resources`] sets a type's resources at a version;
//!   the server then answers requests like go-control-plane's cache does (SotW: send when
//!   the client's version or names differ; delta: send what the client lacks, honouring
//!   `initial_resource_versions`, and removals), including after reconnects.
//!
//! Every request received is recorded: [`TestControlPlane::requests`] and the `wait_*`
//! helpers inspect them.
//!
//! Helpers panic with a description of what was received instead of returning errors:
//! they are meant for test bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::XdsTarget;

mod sink;
mod snapshot;

pub use sink::{AppliedUpdate, RecordingSink};
use snapshot::{DeltaStream, Snapshot, SotwStream};

/// How long the `wait_*` helpers wait before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running test control plane.
pub struct TestControlPlane {
    shared: Arc<Shared>,
    target: XdsTarget,
    local_addr: Option<SocketAddr>,
    socket_path: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub enum Recorded {
    /// On a `StreamAggregatedResources` stream (numbered from 0 in opening order).
    Sotw {
        /// Stream number.
        stream: u64,
        /// The request.
        request: DiscoveryRequest,
    },
    /// On a `DeltaAggregatedResources` stream.
    Delta {
        /// Stream number.
        stream: u64,
        /// The request.
        request: DeltaDiscoveryRequest,
    },
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every request and stream event; waiters re-check on change.
    events: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    streams_opened: u64,
    sotw: BTreeMap<u64, SotwStream>,
    delta: BTreeMap<u64, DeltaStream>,
    next_nonce: u64,
    /// Served automatically (see [`TestControlPlane::set_resources`]).
    snapshots: BTreeMap<String, Snapshot>,
}

#[derive(Clone)]
struct Service(Arc<Shared>);

// === impl TestControlPlane ===

impl TestControlPlane {
    /// Starts on `127.0.0.1` with an ephemeral port.
    pub async fn tcp() -> std::io::Result<Self> {
        Self::tcp_at("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Starts on `addr` (e.g. the address of a stopped instance, to simulate a restart).
    pub async fn tcp_at(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let target = XdsTarget::parse(&format!("http://{local}")).expect("valid loopback URI");
        let incoming = TcpListenerStream::new(listener);
        Ok(Self::serve(incoming, target, Some(local), None))
    }

    /// Starts on a Unix socket at `path` (removed first if it exists, and on shutdown).
    pub async fn unix(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let incoming = UnixListenerStream::new(listener);
        Ok(Self::serve(
            incoming,
            XdsTarget::Unix(path.clone()),
            None,
            Some(path),
        ))
    }

    fn serve<S, IO>(
        incoming: S,
        target: XdsTarget,
        local_addr: Option<SocketAddr>,
        socket_path: Option<PathBuf>,
    ) -> Self
    where
        S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events: watch::channel(0).0,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(Service(shared.clone()))
            .max_decoding_message_size(64 << 20);
        let server = tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = res {
                tracing::warn!(%e, "test control plane stopped with an error");
            }
        });
        TestControlPlane {
            shared,
            target,
            local_addr,
            socket_path,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Where clients should connect.
    pub fn target(&self) -> &XdsTarget {
        &self.target
    }

    /// The TCP address, if listening on TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Streams opened so far.
    pub fn streams_opened(&self) -> u64 {
        self.shared.lock().streams_opened
    }

    /// Sends `response` on every open SotW stream, filling in a fresh nonce if it has none.
    /// Returns the nonce.
    pub fn push_sotw(&self, mut response: DiscoveryResponse) -> String {
        let mut st = self.shared.lock();
        if response.nonce.is_empty() {
            response.nonce = st.nonce();
        }
        st.sotw
            .retain(|_, s| s.tx.send(Ok(response.clone())).is_ok());
        response.nonce
    }

    /// Sends `response` on every open delta stream, filling in a fresh nonce if it has none.
    /// Returns the nonce.
    pub fn push_delta(&self, mut response: DeltaDiscoveryResponse) -> String {
        let mut st = self.shared.lock();
        if response.nonce.is_empty() {
            response.nonce = st.nonce();
        }
        st.delta
            .retain(|_, s| s.tx.send(Ok(response.clone())).is_ok());
        response.nonce
    }

    /// Snapshot mode: `type_url` now has exactly `resources` at `version`. Every stream that
    /// asked for the type gets the change (SotW: the full set, filtered by its names;
    /// delta: what it lacks plus removals), and later requests are answered from it.
    /// In delta, a resource's version is the snapshot version at which its bytes last changed.
    pub fn set_resources(&self, type_url: &str, version: &str, resources: Vec<Any>) {
        let named = resources
            .into_iter()
            .map(|any| {
                let name =
                    crate::ads::engine::resource_name(&any.value).expect("resource has a name");
                (name, any)
            })
            .collect();
        self.shared.lock().set_resources(type_url, version, named);
    }

    /// Ends every open stream: with `status` as the gRPC error, or cleanly (`None`).
    pub fn close_streams(&self, status: Option<Status>) {
        let mut st = self.shared.lock();
        if let Some(status) = status {
            for s in st.sotw.values() {
                let _ = s.tx.send(Err(status.clone()));
            }
            for s in st.delta.values() {
                let _ = s.tx.send(Err(status.clone()));
            }
        }
        st.sotw.clear();
        st.delta.clear();
    }

    /// Stops the server: ends every stream with UNAVAILABLE, stops accepting, closes
    /// connections (GOAWAY), and removes the Unix socket.
    pub async fn shutdown(mut self) {
        self.close_streams(Some(Status::unavailable("control plane shutting down")));
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Waits until a request at index ≥ `from` satisfies `pred`; returns its index and the
    /// request. Panics after [`WAIT`], listing what arrived.
    pub async fn wait_request(
        &self,
        from: usize,
        pred: impl Fn(&Recorded) -> bool,
    ) -> (usize, Recorded) {
        let mut events = self.shared.events.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let st = self.shared.lock();
                if let Some((i, r)) = st
                    .requests
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, r)| pred(r))
                {
                    return (i, r.clone());
                }
            }
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                panic!(
                    "no matching request from index {from} within {WAIT:?}; received:\n{:#?}",
                    self.requests()
                );
            }
        }
    }

    /// [`wait_request`](Self::wait_request) for SotW requests.
    pub async fn wait_sotw(
        &self,
        from: usize,
        pred: impl Fn(&DiscoveryRequest) -> bool,
    ) -> (usize, DiscoveryRequest) {
        let (i, r) = self
            .wait_request(
                from,
                |r| matches!(r, Recorded::Sotw { request, .. } if pred(request)),
            )
            .await;
        match r {
            Recorded::Sotw { request, .. } => (i, request),
            Recorded::Delta { .. } => unreachable!("filtered above"),
        }
    }

    /// [`wait_request`](Self::wait_request) for delta requests.
    pub async fn wait_delta(
        &self,
        from: usize,
        pred: impl Fn(&DeltaDiscoveryRequest) -> bool,
    ) -> (usize, DeltaDiscoveryRequest) {
        let (i, r) = self
            .wait_request(
                from,
                |r| matches!(r, Recorded::Delta { request, .. } if pred(request)),
            )
            .await;
        match r {
            Recorded::Delta { request, .. } => (i, request),
            Recorded::Sotw { .. } => unreachable!("filtered above"),
        }
    }

    /// Waits until at least `n` streams have been opened in total.
    pub async fn wait_streams(&self, n: u64) {
        let mut events = self.shared.events.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.streams_opened() < n {
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                panic!(
                    "only {} of {n} streams opened within {WAIT:?}",
                    self.streams_opened()
                );
            }
        }
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

// === impl Recorded ===

impl Recorded {
    /// The stream the request came on.
    pub fn stream(&self) -> u64 {
        match self {
            Recorded::Sotw { stream, .. } | Recorded::Delta { stream, .. } => *stream,
        }
    }

    /// The request's type URL.
    pub fn type_url(&self) -> &str {
        match self {
            Recorded::Sotw { request, .. } => &request.type_url,
            Recorded::Delta { request, .. } => &request.type_url,
        }
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a failing test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, r: Recorded) {
        self.lock().requests.push(r);
        self.events.send_modify(|n| *n += 1);
    }

    fn open_stream(&self) -> u64 {
        let mut st = self.lock();
        let id = st.streams_opened;
        st.streams_opened += 1;
        drop(st);
        self.events.send_modify(|n| *n += 1);
        id
    }
}

impl State {
    pub(super) fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        format!("nonce-{}", self.next_nonce)
    }
}

// === impl Service ===

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let stream = self.0.open_stream();
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.lock().sotw.insert(stream, SotwStream::new(tx));
        let shared = self.0.clone();
        let mut requests = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                shared.lock().on_sotw_request(stream, &request);
                shared.record(Recorded::Sotw { stream, request });
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let stream = self.0.open_stream();
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.lock().delta.insert(stream, DeltaStream::new(tx));
        let shared = self.0.clone();
        let mut requests = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                shared.lock().on_delta_request(stream, &request);
                shared.record(Recorded::Delta { stream, request });
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

// === response builders ===

/// Packs `msg` into an `Any`.
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// A SotW response of `type_url` at `version` (nonce filled in by `push_sotw`).
pub fn sotw_response(type_url: &str, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: type_url.to_string(),
        ..Default::default()
    }
}

/// A delta resource entry.
pub fn delta_resource<M: Message + Name>(name: &str, version: &str, msg: &M) -> XdsResource {
    XdsResource {
        name: name.to_string(),
        version: version.to_string(),
        resource: Some(any(msg)),
        ..Default::default()
    }
}

/// A delta response of `type_url` (nonce filled in by `push_delta`).
pub fn delta_response(
    type_url: &str,
    system_version: &str,
    resources: Vec<XdsResource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: system_version.to_string(),
        resources,
        type_url: type_url.to_string(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

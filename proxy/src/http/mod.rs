//! `envoy.filters.network.http_connection_manager`: serve HTTP/1.1 and h2c downstream
//! connections with hyper and route each request (see `router`).
pub mod access_log;
mod date;
pub mod flags;
mod forward;
mod rewrite;
mod router;
mod timers;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::listener::Accepted;
use crate::server::Shared;
use crate::stats::{Counter, Gauge, GaugeGuard, Stats};

/// `codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Detect from the first bytes (h2 preface or HTTP/1).
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (prior knowledge).
    Http2,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    /// Always set `server` to `server_name` (Envoy's default).
    Overwrite,
    /// Set it only when the upstream sent none.
    AppendIfAbsent,
    /// Leave the upstream's value (or none).
    PassThrough,
}

/// A compiled HTTP connection manager.
#[derive(Debug)]
pub struct HttpConnMgr {
    /// `stat_prefix`.
    pub stat_prefix: Arc<str>,
    /// Codec.
    pub codec: Codec,
    /// Routes: inline, or shared with other connection managers by RDS name.
    pub routes: Arc<crate::route::RouteSlot>,
    /// `server` header value (`server_name`, default `envoy` for drop-in compatibility).
    pub server_name: HeaderValue,
    /// How the `server` header is set.
    pub server_header: ServerHeader,
    /// Access logs.
    pub access_logs: Vec<Arc<access_log::AccessLog>>,
    /// Add `x-request-id` when absent.
    pub generate_request_id: bool,
    /// Append the peer to `x-forwarded-for`.
    pub use_remote_address: bool,
    /// Upgrade types enabled on this connection manager (lower-case).
    pub upgrades: Vec<String>,
    /// Whether the routes were given inline (`route_config`) rather than by RDS.
    pub inline_routes: bool,
    /// How HTTP/1 header names are read (Preserve records the client's case).
    pub header_case: crate::config::HeaderCase,
    /// `accept_http_10`.
    pub accept_http_10: bool,
    /// Router's `suppress_envoy_headers`.
    pub suppress_envoy_headers: bool,
    /// Router's `dynamic_stats` (default true): per-response-code cluster stats.
    pub dynamic_stats: bool,
    /// `common_http_protocol_options.idle_timeout`: a downstream connection with no request
    /// in flight for this long is closed (Envoy's default 1 h; `None` disables it).
    pub idle_timeout: Option<std::time::Duration>,
    /// `stream_idle_timeout` (Envoy's default 5 min; `None` disables it).
    pub stream_idle_timeout: Option<std::time::Duration>,
    /// `internal_address_config.cidr_ranges`: downstream addresses whose requests are
    /// internal (their `x-envoy-*` control headers are honoured). Empty by default, as in
    /// Envoy 1.40: no request is internal unless configured.
    pub internal_cidrs: Vec<crate::listener::Cidr>,
    /// Stats.
    pub stats: HttpStats,
}

/// `http.<stat_prefix>.` stats.
#[derive(Debug, Clone)]
pub struct HttpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_ws_on_non_ws_route: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_max_duration_reached: Counter,
    pub downstream_rq_class: [Counter; 5],
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
    pub rq_redirect: Counter,
    pub rq_total: Counter,
}

impl HttpStats {
    /// Registers `http.<prefix>.` stats.
    pub fn new(stats: &Stats, prefix: &str) -> Self {
        let c = |s: &str| stats.counter(&format!("http.{prefix}.{s}"));
        let g = |s: &str| stats.gauge(&format!("http.{prefix}.{s}"));
        HttpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_class: [
                c("downstream_rq_1xx"),
                c("downstream_rq_2xx"),
                c("downstream_rq_3xx"),
                c("downstream_rq_4xx"),
                c("downstream_rq_5xx"),
            ],
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            rq_total: c("rq_total"),
        }
    }

    /// Counts a response status sent downstream.
    pub fn charge(&self, status: http::StatusCode) {
        if let Some(c) = (status.as_u16() / 100)
            .checked_sub(1)
            .and_then(|i| self.downstream_rq_class.get(i as usize))
        {
            c.inc();
        }
    }
}

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    pub hcm: Arc<HttpConnMgr>,
    pub shared: Arc<Shared>,
    pub conn: Accepted,
    counted_protocol: AtomicBool,
    /// Requests in flight on this connection (until their response body ends).
    in_flight: std::sync::atomic::AtomicUsize,
    /// Notified when a request starts or the last one in flight ends.
    activity: tokio::sync::Notify,
    /// Set (and `first_request` notified) when the first request arrives.
    saw_request: AtomicBool,
    first_request: tokio::sync::Notify,
}

// === impl HttpConnMgr ===

impl HttpConnMgr {
    /// Serves one downstream connection until it closes or the proxy drains.
    pub async fn serve<S>(self: Arc<Self>, shared: Arc<Shared>, stream: S, conn: Accepted)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        let mut drain = shared.drain_signal();
        let mut listener_drain = conn.listener_drain.clone();
        let ctx = Arc::new(ConnCtx {
            hcm: self.clone(),
            shared,
            conn,
            counted_protocol: AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            activity: tokio::sync::Notify::new(),
            saw_request: AtomicBool::new(false),
            first_request: tokio::sync::Notify::new(),
        });
        let conn_ctx = ctx.clone();
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(router::handle(ctx, req).await) }
        });
        let io = TokioIo::new(stream);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .preserve_header_case(self.header_case == crate::config::HeaderCase::Preserve)
            .title_case_headers(self.header_case == crate::config::HeaderCase::Title)
            .keep_alive(true)
            // Envoy's max_request_headers_kb default (60 KiB): larger heads get 431.
            .max_buf_size(60 * 1024);
        builder
            .http2()
            .initial_stream_window_size(16 * 1024 * 1024)
            .initial_connection_window_size(64 * 1024 * 1024);
        let builder = match self.codec {
            Codec::Auto => builder,
            Codec::Http1 => builder.http1_only(),
            Codec::Http2 => builder.http2_only(),
        };
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            res = conn.as_mut() => res,
            _ = idle(&conn_ctx, self.idle_timeout) => {
                // Idle: close as Envoy does (HTTP/1 closes, HTTP/2 sends GOAWAY).
                self.stats.downstream_cx_idle_timeout.inc();
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = either_drained(&mut drain, &mut listener_drain) => 'drain: {
                // A connection accepted during the drain window still has its first request
                // served (answered with `connection: close`, as Envoy does); shutting it down
                // before that would reset a client that did nothing wrong.
                let first = conn_ctx.first_request.notified();
                if !conn_ctx.saw_request.load(Ordering::Acquire) {
                    tokio::select! {
                        res = conn.as_mut() => break 'drain res,
                        _ = first => {}
                    }
                }
                // Draining: finish in-flight requests, close keep-alive connections (HTTP/1
                // `connection: close`, HTTP/2 GOAWAY).
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            let malformed = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_parse() || h.is_parse_status() || h.is_parse_too_large());
            if malformed {
                self.stats.downstream_cx_protocol_error.inc();
            }
            // hyper answered an unparsable request itself (400, or 431 for an oversized
            // head); Envoy counts that local reply as a request.
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_parse_too_large() {
                    self.stats.downstream_rq_total.inc();
                    self.stats
                        .charge(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                } else if h.is_parse() {
                    self.stats.downstream_rq_total.inc();
                    self.stats.charge(http::StatusCode::BAD_REQUEST);
                }
            }
            tracing::debug!("downstream connection ended with error: {e}");
        }
        self.stats.downstream_cx_destroy.inc();
    }
}

impl ConnCtx {
    fn count_protocol(&self, h2: bool) {
        if !self.saw_request.swap(true, Ordering::AcqRel) {
            self.first_request.notify_waiters();
        }
        if !self.counted_protocol.swap(true, Ordering::Relaxed) {
            if h2 {
                self.hcm.stats.downstream_cx_http2_total.inc();
            } else {
                self.hcm.stats.downstream_cx_http1_total.inc();
            }
        }
    }
}

/// A request in flight on its connection, and in `downstream_rq_active`; dropped when its
/// response ends.
#[derive(Debug)]
pub struct ActiveRequest {
    ctx: Arc<ConnCtx>,
    _gauge: GaugeGuard,
}

impl ActiveRequest {
    /// Counts a new request on `ctx`'s connection.
    pub fn new(ctx: &Arc<ConnCtx>) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::AcqRel);
        ctx.activity.notify_waiters();
        ActiveRequest {
            ctx: ctx.clone(),
            _gauge: GaugeGuard::new(&ctx.hcm.stats.downstream_rq_active),
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if self.ctx.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ctx.activity.notify_waiters();
        }
    }
}

/// Resolves once the connection has had no request in flight for `timeout` (never without
/// one).
async fn idle(ctx: &ConnCtx, timeout: Option<std::time::Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        // Registered before the check, so a change in between is not missed.
        let changed = ctx.activity.notified();
        if ctx.in_flight.load(Ordering::Acquire) > 0 {
            changed.await;
            continue;
        }
        tokio::select! {
            _ = changed => continue,
            _ = tokio::time::sleep(timeout) => {
                if ctx.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
            }
        }
    }
}

/// Resolves once the process or the connection's listener starts draining.
async fn either_drained(
    a: &mut tokio::sync::watch::Receiver<bool>,
    b: &mut tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = drained(a) => {}
        _ = drained(b) => {}
    }
}

/// Resolves once draining starts (a `()` future, so no watch guard lives across awaits).
pub(crate) async fn drained(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

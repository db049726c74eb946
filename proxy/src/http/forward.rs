//! The upstream half of the router: the attempts of one request at its cluster.
//!
//! Each attempt picks a host, takes a connection from the host's pool (where the circuit
//! breakers apply), sends the request and waits for the response headers under the
//! attempt's timers. Then Envoy's router decides, in its order: report the result to outlier
//! detection; retry if the retry policy says so (a breaker retry slot, back-off, optionally
//! another host); or pass the response — or a local reply with Envoy's body, flag and stats
//! — downstream. Mirrors go out fire-and-forget once the request body is complete.
use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::access_log::LogEntry;
use super::flags::{local_reply, local_reply_text, Flags};
use super::rewrite::{self, Prepared};
use super::timers::{Attempt, Fired, Timers};
use super::ConnCtx;
use crate::policy::breaker::Permit;
use crate::policy::outlier::{self, Outcome as Health};
use crate::policy::retry::{Outcome, ResetReason, RetryDecision, RetryState, Timeouts};
use crate::route::WeightedCluster;
use crate::route::{ForwardAction, MirrorPolicy, MirrorTarget, Route, RouteTable, VirtualHost};
use crate::upstream::body::ProxyBody;
use crate::upstream::lb::hash::HashInput;
use crate::upstream::pool::{ConnectError, Lease, Sender};
use crate::upstream::req_body::{Replay, UpstreamBody, DEFAULT_BUFFER_LIMIT};
use crate::upstream::{Cluster, Discovery, Host, PickCtx, UpstreamProtocol};

static X_ENVOY_EXPECTED_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_ENVOY_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static X_ENVOY_TIMEOUT_ALT: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Request headers the router consumes: they steer retries and timeouts and never reach the
/// upstream (Envoy's `RetryStateImpl::create` and `finalTimeout`).
const CONSUMED: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

/// The chosen cluster and host of the final attempt (for the access log).
pub(super) type Upstream = (Arc<Cluster>, Arc<Host>);

/// What the router resolved for a request it forwards.
pub(super) struct Target<'a> {
    pub fwd: &'a ForwardAction,
    pub route: &'a Route,
    pub vhost: &'a VirtualHost,
    pub table: &'a RouteTable,
    pub weighted: Option<&'a WeightedCluster>,
    pub cluster: Arc<Cluster>,
    /// Lower-cased request host.
    pub host: &'a str,
    /// Path with query, as received.
    pub path: &'a str,
    pub grpc: bool,
    /// An upgrade (WebSocket) the route allows.
    pub upgrade: bool,
    /// The request is internal (see the router's `sanitize`).
    pub internal: bool,
}

/// How an attempt ended without a usable response.
#[derive(Debug)]
enum Failure {
    /// A circuit breaker refused (`max_pending_requests`, `max_requests`).
    Overflow,
    /// No connection could be made.
    Connect(ConnectError),
    /// The stream failed before the response headers.
    Reset(hyper::Error),
    /// A timer fired first.
    Timer(Fired),
}

/// Where the request body of each attempt comes from.
enum BodySource {
    /// Streamed once: there is exactly one attempt.
    Once(Option<UpstreamBody>),
    /// Buffered for retries and mirrors.
    Replay(Arc<Replay>),
}

/// Forwards the request to `t.cluster`, retrying per the route's policy. `Err` is a local
/// reply.
pub(super) async fn forward(
    ctx: &ConnCtx,
    ctx_start: tokio::time::Instant,
    t: Target<'_>,
    mut req: Request<Incoming>,
    flags: &mut Flags,
    log: &mut Option<LogEntry>,
) -> Result<(Response<ProxyBody>, Option<Upstream>), Response<ProxyBody>> {
    let hcm = &ctx.hcm;
    let fwd = t.fwd;
    let cluster = t.cluster.clone();
    let upstream_h2 = match cluster.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::UseDownstream => req.version() == Version::HTTP_2,
    };
    let upgrade_conn = t.upgrade.then(|| hyper::upgrade::on(&mut req));

    // Timeouts and retries: the route's, adjusted by the request's x-envoy-* headers.
    let timeouts = Timeouts::compute(&fwd.timeouts, req.headers(), t.grpc);
    let headers = req.headers_mut();
    let timeout_code = match headers.remove(&X_ENVOY_TIMEOUT_ALT) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::GATEWAY_TIMEOUT,
    };
    headers.remove(&X_ENVOY_TIMEOUT_MS);
    let mut retry = if t.upgrade {
        None
    } else {
        RetryState::new(&fwd.retry, headers)
    };
    for h in CONSUMED {
        headers.remove(h);
    }

    let prepared = rewrite::prepare_request(
        ctx,
        &mut req,
        fwd,
        t.route,
        t.vhost,
        t.table,
        t.weighted,
        t.host,
        t.path,
        upstream_h2,
        t.upgrade,
        t.internal,
    );
    let mirrors: Vec<&MirrorPolicy> = if t.upgrade {
        Vec::new()
    } else {
        let mut rng = rand::rng();
        fwd.mirrors
            .iter()
            .filter(|m| m.fraction.roll(&mut rng))
            .collect()
    };
    let (mut parts, body) = req.into_parts();
    let (mut bodies, complete) = if retry.is_some() || !mirrors.is_empty() {
        let (replay, complete) = Replay::new(
            body,
            DEFAULT_BUFFER_LIMIT,
            cluster.stats.retry_or_shadow_abandoned.clone(),
        );
        (BodySource::Replay(replay), complete)
    } else {
        let (body, complete) = UpstreamBody::stream(body);
        (BodySource::Once(Some(body)), complete)
    };
    let mut timers = Timers::new(complete);
    timers.global = timeouts.global;
    timers.per_try = timeouts.per_try;
    timers.per_try_idle = fwd.retry.per_try_idle_timeout;
    timers.stream_idle = fwd.idle_timeout.or(hcm.stream_idle_timeout);
    timers.max_stream_duration = fwd.max_stream_duration;
    timers.stream_start = ctx_start;

    if let (false, BodySource::Replay(replay)) = (mirrors.is_empty(), &bodies) {
        for m in &mirrors {
            spawn_mirror(ctx, m, &parts, replay.clone(), timeouts.global);
        }
    }

    let stats = &cluster.stats;
    let rstats = &cluster.retry_stats;
    // The route's hash policy, only for consistent-hash balancers (Envoy computes it on
    // demand); a generated cookie goes back with the response.
    let hashed = if cluster.wants_hash() {
        let input = HashInput::new(
            &parts.headers,
            &parts.uri,
            &parts.method,
            ctx.conn.remote,
            ctx.conn.local,
        );
        fwd.hash_policy.compute(&input)
    } else {
        Default::default()
    };
    // Hosts already tried, for `previous_hosts` (empty without the predicate).
    let mut tried: Vec<Arc<Host>> = Vec::new();
    let mut retries_done = 0u32;
    // The breaker's retry slot, held from a retry decision to the next decision (Envoy's
    // `RetryStateImpl` callback lifetime).
    let mut retry_slot: Option<Permit> = None;
    let mut attempts = 1u32;
    loop {
        let avoid = retry
            .as_ref()
            .filter(|r| r.previous_hosts)
            .map_or(&[][..], |_| tried.as_slice());
        let max_host_attempts = retry
            .as_ref()
            .filter(|r| r.previous_hosts)
            .map_or(0, |r| r.host_selection_retry_max_attempts);
        let pick = PickCtx {
            hash: hashed.hash,
            avoid,
            max_host_attempts,
        };
        let Some(host) = pick_host(ctx, &cluster, &parts.headers, &pick) else {
            if let Some(l) = log.as_mut() {
                l.set_upstream(cluster.name.clone(), String::new());
            }
            stats.upstream_cx_none_healthy.inc();
            flags.insert(Flags::NO_HEALTHY_UPSTREAM);
            charge(ctx, &cluster, None, 503);
            return Err(finish_reply(
                ctx,
                &t,
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    t.grpc,
                ),
                attempts,
            ));
        };
        if retry.as_ref().is_some_and(|r| r.previous_hosts) {
            tried.push(host.clone());
        }
        // The access log names the chosen upstream even when the exchange then fails.
        if let Some(l) = log.as_mut() {
            l.set_upstream(cluster.name.clone(), host.addr.to_string());
        }

        // This attempt's request.
        let mut rq_parts = match &bodies {
            BodySource::Once(_) => std::mem::replace(&mut parts, empty_parts()),
            BodySource::Replay(_) => clone_parts(&parts),
        };
        let body = match &mut bodies {
            BodySource::Once(b) => b.take().unwrap_or_else(UpstreamBody::empty),
            BodySource::Replay(r) => r.reader(),
        };
        attempt_headers(
            ctx,
            &t,
            &prepared,
            &mut rq_parts,
            &host,
            &mut timers,
            attempts,
        );
        let rq = Request::from_parts(rq_parts, body);
        let attempt = Attempt {
            start: tokio::time::Instant::now(),
        };
        let result = tokio::select! {
            r = exchange(&host, &cluster, fwd.priority, upstream_h2, rq) => r,
            f = timers.fired(&attempt) => Err(Failure::Timer(f)),
        };
        let replayable = match &bodies {
            BodySource::Replay(r) => r.replayable(),
            BodySource::Once(_) => false,
        };
        if !replayable && retry.take().is_some() {
            tracing::debug!(cluster = %cluster.name, "request body too large to retry");
        }

        let (resp, lease) = match result {
            Ok(ok) => ok,
            Err(failure) => {
                let (outcome, health) = match &failure {
                    Failure::Overflow => (Outcome::Reset(ResetReason::Overflow), None),
                    Failure::Connect(_) => (
                        Outcome::Reset(ResetReason::ConnectFailure),
                        Some(Health::ConnectFailed),
                    ),
                    // Envoy's router reports every reset as a local-origin connect failure.
                    Failure::Reset(e) => (
                        Outcome::Reset(match reset_kind(e) {
                            Reset::Refused => ResetReason::RefusedStream,
                            _ => ResetReason::Other,
                        }),
                        Some(Health::ConnectFailed),
                    ),
                    Failure::Timer(Fired::PerTry | Fired::PerTryIdle | Fired::Global) => {
                        (Outcome::PerTryTimeout, Some(Health::Timeout))
                    }
                    Failure::Timer(Fired::MaxStreamDuration) => {
                        (Outcome::Reset(ResetReason::Other), None)
                    }
                    Failure::Timer(Fired::StreamIdle) => (Outcome::Reset(ResetReason::Other), None),
                };
                match &failure {
                    Failure::Connect(_) => stats.upstream_rq_pending_failure_eject.inc(),
                    Failure::Reset(_) => stats.upstream_rq_rx_reset.inc(),
                    Failure::Timer(Fired::PerTry) => {
                        rstats.per_try_timeout.inc();
                        host_timeout(&host);
                    }
                    Failure::Timer(Fired::PerTryIdle) => {
                        rstats.per_try_idle_timeout.inc();
                        host_timeout(&host);
                    }
                    Failure::Timer(Fired::Global) => {
                        stats.upstream_rq_timeout.inc();
                        host_timeout(&host);
                    }
                    _ => {}
                }
                if let Some(h) = health {
                    cluster.record_outcome(&host, h);
                }
                // The route timeout and the stream idle timeout end the request outright.
                let final_timer =
                    matches!(failure, Failure::Timer(Fired::Global | Fired::StreamIdle));
                if !final_timer {
                    if let Some(rs) = retry.as_ref() {
                        if decide(
                            rs,
                            &mut retry_slot,
                            retries_done,
                            &outcome,
                            &cluster,
                            fwd,
                            flags,
                        ) {
                            host_error(&host);
                            if !back_off(rs, &mut retries_done, &mut timers).await {
                                return Err(timeout_reply(ctx, &t, flags, timeout_code, attempts));
                            }
                            attempts += 1;
                            continue;
                        }
                    }
                }
                tracing::debug!(cluster = %cluster.name, host = %host.addr, "upstream failure: {failure:?}");
                return Err(failure_reply(
                    ctx,
                    &t,
                    &cluster,
                    &host,
                    failure,
                    &mut timers,
                    timeout_code,
                    attempts,
                    flags,
                ));
            }
        };

        // Response headers arrived.
        let status = resp.status().as_u16();
        cluster.record_outcome(
            &host,
            outlier::response_outcome(resp.status(), resp.headers(), t.grpc),
        );
        if let Some(rs) = retry.as_ref() {
            let outcome = Outcome::Response {
                status,
                headers: resp.headers(),
            };
            if decide(
                rs,
                &mut retry_slot,
                retries_done,
                &outcome,
                &cluster,
                fwd,
                flags,
            ) {
                host_error(&host);
                cluster.retry_codes.charge(status);
                // The discarded response's connection is not reused (Envoy resets the stream).
                drop(resp);
                drop(lease);
                if !back_off(rs, &mut retries_done, &mut timers).await {
                    return Err(timeout_reply(ctx, &t, flags, timeout_code, attempts));
                }
                attempts += 1;
                continue;
            }
        }
        let (mut resp, up) = pass_through(
            ctx,
            &t,
            &cluster,
            host,
            resp,
            lease,
            &mut timers,
            &attempt,
            upgrade_conn,
            attempts,
        );
        if let Some(c) = hashed.set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        return Ok((resp, up));
    }
}

/// One attempt: a connection from the pool, then the request; resolves with the response
/// headers.
async fn exchange(
    host: &Arc<Host>,
    cluster: &Arc<Cluster>,
    priority: crate::policy::breaker::Priority,
    h2: bool,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease), Failure> {
    let mut lease = host
        .pool
        .checkout(host, cluster, priority, h2)
        .await
        .map_err(|e| match e {
            ConnectError::Overflow(_) => Failure::Overflow,
            e => Failure::Connect(e),
        })?;
    cluster.record_outcome(host, Health::ConnectSuccess);
    let sent = match lease.sender.as_mut() {
        Some(Sender::H1(s)) => s.send_request(req).await,
        Some(Sender::H2(s)) => s.send_request(req).await,
        None => return Err(Failure::Overflow),
    };
    let resp = sent.map_err(Failure::Reset)?;
    Ok((resp, lease))
}

/// Envoy's retry bookkeeping around one decision: returns whether to retry now.
fn decide(
    rs: &RetryState,
    slot: &mut Option<Permit>,
    retries_done: u32,
    outcome: &Outcome<'_>,
    cluster: &Cluster,
    fwd: &ForwardAction,
    flags: &mut Flags,
) -> bool {
    let rstats = &cluster.retry_stats;
    // A slot still held means the previous try was a retry.
    let was_retry = slot.take().is_some();
    match rs.should_retry(retries_done, outcome) {
        RetryDecision::NotRetriable => {
            if was_retry {
                rstats.retry_success.inc();
            }
            false
        }
        RetryDecision::LimitExceeded => {
            rstats.retry_limit_exceeded.inc();
            flags.insert(Flags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
            false
        }
        RetryDecision::Retry => match cluster.breakers.priority(fwd.priority).try_acquire_retry() {
            Ok(p) => {
                *slot = Some(p);
                rstats.retry.inc();
                rstats.retry_backoff_exponential.inc();
                true
            }
            // `upstream_rq_retry_overflow` is counted by the breaker.
            Err(_) => {
                flags.insert(Flags::UPSTREAM_OVERFLOW);
                false
            }
        },
    }
}

/// Waits the retry back-off; false if the route timeout fired meanwhile.
async fn back_off(rs: &RetryState, retries_done: &mut u32, timers: &mut Timers) -> bool {
    let delay = rs.backoff(*retries_done, &mut rand::rng());
    *retries_done += 1;
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = timers.global_fired() => false,
    }
}

/// The host for this attempt: ORIGINAL_DST takes the destination from a header or the
/// connection; other clusters ask their load balancer (which avoids `pick.avoid` for up to
/// `pick.max_host_attempts` extra picks, Envoy's host-selection retries).
fn pick_host(
    ctx: &ConnCtx,
    cluster: &Cluster,
    headers: &http::HeaderMap,
    pick: &PickCtx<'_>,
) -> Option<Arc<Host>> {
    if let Discovery::OriginalDst { header } = &cluster.discovery {
        let from_header = header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        return from_header
            .or(ctx.conn.orig_dst)
            .map(|d| cluster.orig_dst_host(d));
    }
    cluster.pick(pick)
}

/// Per-attempt request headers: the expected timeout, the attempt count, auto host rewrite.
fn attempt_headers(
    ctx: &ConnCtx,
    t: &Target<'_>,
    prepared: &Prepared,
    parts: &mut http::request::Parts,
    host: &Host,
    timers: &mut Timers,
    attempts: u32,
) {
    let hcm = &ctx.hcm;
    if let Some(ms) = timers.expected_ms() {
        if !hcm.suppress_envoy_headers {
            parts
                .headers
                .insert(&X_ENVOY_EXPECTED_TIMEOUT, HeaderValue::from(ms));
        }
        // With max_grpc_timeout, the upstream learns the real deadline through grpc-timeout.
        if t.grpc && t.fwd.timeouts.max_grpc_timeout.is_some() {
            if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
                parts.headers.insert(&GRPC_TIMEOUT, v);
            }
        }
    }
    if t.vhost.attempt_count_in_request {
        parts
            .headers
            .insert(&X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempts));
    }
    // Envoy rewrites only to a non-empty hostname (static endpoints have none unless set).
    if matches!(t.fwd.host_rewrite, crate::route::HostRewrite::Auto)
        && t.weighted.is_none_or(|w| w.host_rewrite.is_none())
        && !host.hostname.is_empty()
    {
        rewrite::set_authority(parts, prepared, &host.hostname, hcm.suppress_envoy_headers);
    }
}

/// The response of the final attempt, on its way downstream.
#[allow(clippy::too_many_arguments)]
fn pass_through(
    ctx: &ConnCtx,
    t: &Target<'_>,
    cluster: &Arc<Cluster>,
    host: Arc<Host>,
    resp: Response<Incoming>,
    lease: Lease,
    timers: &mut Timers,
    attempt: &Attempt,
    upgrade_conn: Option<hyper::upgrade::OnUpgrade>,
    attempts: u32,
) -> (Response<ProxyBody>, Option<Upstream>) {
    let hcm = &ctx.hcm;
    let status = resp.status().as_u16();
    charge(ctx, cluster, Some(&host), status);
    if !resp.status().is_server_error() {
        host.stats
            .rq_success
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    // A successful upgrade: splice the two upgraded connections together.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = upgrade_conn {
            let mut up_resp = resp;
            let up = hyper::upgrade::on(&mut up_resp);
            tokio::spawn(async move {
                let _lease = lease;
                if let (Ok(d), Ok(u)) = (down.await, up.await) {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
            });
            let (mut parts, _) = up_resp.into_parts();
            rewrite::apply_response_headers(
                &mut parts.headers,
                t.route,
                t.vhost,
                t.table,
                t.weighted,
            );
            return (
                Response::from_parts(parts, ProxyBody::empty()),
                Some((cluster.clone(), host)),
            );
        }
    }

    let (mut parts, body) = resp.into_parts();
    rewrite::strip_hop_by_hop(&mut parts.headers, false);
    if !hcm.suppress_envoy_headers {
        // Envoy reports the time since the request was received in full.
        if let Some(done) = timers.completed_at() {
            let ms = done.elapsed().as_millis() as u64;
            parts
                .headers
                .insert(&X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(ms));
        }
    }
    rewrite::apply_response_headers(&mut parts.headers, t.route, t.vhost, t.table, t.weighted);
    if t.vhost.attempt_count_in_response {
        parts
            .headers
            .insert(&X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempts));
    }
    let idle = match (timers.per_try_idle, timers.stream_idle) {
        (Some(p), s) if s.is_none_or(|s| p < s) => {
            Some((p, cluster.retry_stats.per_try_idle_timeout.clone()))
        }
        (_, Some(s)) => Some((s, hcm.stats.downstream_rq_idle_timeout.clone())),
        _ => None,
    };
    let body = ProxyBody::upstream(body)
        .with_timers(
            timers.body_deadline(attempt),
            idle,
            cluster.stats.upstream_rq_timeout.clone(),
        )
        .with_lease(lease);
    (
        Response::from_parts(parts, body),
        Some((cluster.clone(), host)),
    )
}

/// The local reply for a final failure, with Envoy's body, flag and stats.
#[allow(clippy::too_many_arguments)]
fn failure_reply(
    ctx: &ConnCtx,
    t: &Target<'_>,
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    failure: Failure,
    timers: &mut Timers,
    timeout_code: StatusCode,
    attempts: u32,
    flags: &mut Flags,
) -> Response<ProxyBody> {
    let retried = if attempts > 1 {
        "retried and the latest "
    } else {
        ""
    };
    let reset = |reason: &str| -> Cow<'static, str> {
        Cow::Owned(format!(
            "upstream connect error or disconnect/reset before headers. {retried}reset reason: {reason}"
        ))
    };
    let resp = match failure {
        Failure::Overflow => {
            flags.insert(Flags::UPSTREAM_OVERFLOW);
            charge(ctx, cluster, Some(host), 503);
            let mut r =
                local_reply_text(StatusCode::SERVICE_UNAVAILABLE, reset("overflow"), t.grpc);
            if !ctx.hcm.suppress_envoy_headers {
                r.headers_mut()
                    .insert(&X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
            }
            r
        }
        Failure::Connect(e) => {
            flags.insert(Flags::UPSTREAM_CONNECTION_FAILURE);
            charge(ctx, cluster, Some(host), 503);
            let reason = match e {
                ConnectError::Timeout => "connection timeout",
                _ => "remote connection failure",
            };
            local_reply_text(StatusCode::SERVICE_UNAVAILABLE, reset(reason), t.grpc)
        }
        Failure::Reset(e) => {
            let (flag, reason) = match reset_kind(&e) {
                Reset::Refused => (Flags::UPSTREAM_REMOTE_RESET, "remote refused stream reset"),
                Reset::Remote => (Flags::UPSTREAM_REMOTE_RESET, "remote reset"),
                Reset::Termination => (
                    Flags::UPSTREAM_CONNECTION_TERMINATION,
                    "connection termination",
                ),
            };
            flags.insert(flag);
            charge(ctx, cluster, Some(host), 503);
            local_reply_text(StatusCode::SERVICE_UNAVAILABLE, reset(reason), t.grpc)
        }
        Failure::Timer(Fired::Global | Fired::PerTry | Fired::PerTryIdle) => {
            flags.insert(Flags::UPSTREAM_REQUEST_TIMEOUT);
            charge(ctx, cluster, Some(host), timeout_code.as_u16());
            timeout_body(timeout_code, t.grpc)
        }
        // The connection manager's timers: its local replies skip the router's headers.
        Failure::Timer(Fired::MaxStreamDuration) => {
            flags.insert(Flags::DURATION_TIMEOUT);
            ctx.hcm.stats.downstream_rq_max_duration_reached.inc();
            return local_reply(
                request_timeout_code(timers),
                "downstream duration timeout",
                t.grpc,
            );
        }
        Failure::Timer(Fired::StreamIdle) => {
            flags.insert(Flags::STREAM_IDLE_TIMEOUT);
            ctx.hcm.stats.downstream_rq_idle_timeout.inc();
            return local_reply(request_timeout_code(timers), "stream timeout", t.grpc);
        }
    };
    finish_reply(ctx, t, resp, attempts)
}

/// The reply when the route timeout fires with no attempt in flight (during a back-off):
/// Envoy counts no upstream stats then.
fn timeout_reply(
    ctx: &ConnCtx,
    t: &Target<'_>,
    flags: &mut Flags,
    timeout_code: StatusCode,
    attempts: u32,
) -> Response<ProxyBody> {
    flags.insert(Flags::UPSTREAM_REQUEST_TIMEOUT);
    finish_reply(ctx, t, timeout_body(timeout_code, t.grpc), attempts)
}

fn timeout_body(code: StatusCode, grpc: bool) -> Response<ProxyBody> {
    if code == StatusCode::GATEWAY_TIMEOUT {
        local_reply(code, "upstream request timeout", grpc)
    } else {
        local_reply(code, "", grpc)
    }
}

/// 408 while the request is still being received, else 504 (Envoy's
/// `maybeRequestTimeoutCode`).
fn request_timeout_code(timers: &mut Timers) -> StatusCode {
    if timers.completed_at().is_some() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::REQUEST_TIMEOUT
    }
}

/// Headers every reply of a forwarded request gets from its route (Envoy's
/// `modify_headers`).
fn finish_reply(
    _ctx: &ConnCtx,
    t: &Target<'_>,
    mut resp: Response<ProxyBody>,
    attempts: u32,
) -> Response<ProxyBody> {
    if t.vhost.attempt_count_in_response {
        resp.headers_mut()
            .insert(&X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempts));
    }
    resp
}

/// Envoy's `chargeUpstreamCode`: the cluster's response-code stats (only with the router's
/// dynamic stats, as Envoy) and the host's error count for 5xx.
fn charge(ctx: &ConnCtx, cluster: &Cluster, host: Option<&Arc<Host>>, status: u16) {
    if !ctx.hcm.dynamic_stats {
        return;
    }
    cluster.stats.charge_code(status);
    if (500..600).contains(&status) {
        if let Some(h) = host {
            host_error(h);
        }
    }
}

fn host_error(host: &Host) {
    host.stats
        .rq_error
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn host_timeout(host: &Host) {
    host.stats
        .rq_timeout
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How a stream was reset, from hyper's error.
enum Reset {
    /// HTTP/2 `REFUSED_STREAM`.
    Refused,
    /// Another HTTP/2 `RST_STREAM` from the upstream.
    Remote,
    /// The connection closed.
    Termination,
}

fn reset_kind(e: &hyper::Error) -> Reset {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            if h2e.is_reset() && h2e.is_remote() {
                return if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    Reset::Refused
                } else {
                    Reset::Remote
                };
            }
        }
        src = s.source();
    }
    Reset::Termination
}

fn empty_parts() -> http::request::Parts {
    Request::new(()).into_parts().0
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut out = empty_parts();
    out.method = p.method.clone();
    out.uri = p.uri.clone();
    out.version = p.version;
    out.headers = p.headers.clone();
    out.extensions = p.extensions.clone();
    out
}

/// Sends a copy of the request to the mirror's cluster once the request body is complete;
/// the response is read and dropped. The mirror's host gets `-shadow` appended (before any
/// port) unless the policy keeps it.
fn spawn_mirror(
    ctx: &ConnCtx,
    m: &MirrorPolicy,
    parts: &http::request::Parts,
    replay: Arc<Replay>,
    timeout: Option<std::time::Duration>,
) {
    let name: Arc<str> = match &m.target {
        MirrorTarget::Named(n) => n.clone(),
        MirrorTarget::Header(h) => match parts.headers.get(h).and_then(|v| v.to_str().ok()) {
            Some(v) if !v.is_empty() => Arc::from(v),
            _ => return,
        },
    };
    let Some(cluster) = ctx.shared.cluster(&name) else {
        tracing::debug!(cluster = %name, "mirror cluster not found");
        return;
    };
    let mut p = clone_parts(parts);
    let h2 = match cluster.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::UseDownstream => p.version == Version::HTTP_2,
    };
    if !m.keep_host {
        shadow_host(&mut p);
    }
    if h2 {
        p.version = Version::HTTP_2;
    }
    let wait = timeout.unwrap_or(std::time::Duration::from_secs(60));
    tokio::spawn(async move {
        let exchange = async {
            if !replay.wait_complete().await {
                return;
            }
            let Some(host) = cluster.pick(&PickCtx::default()) else {
                cluster.stats.upstream_cx_none_healthy.inc();
                return;
            };
            let rq = Request::from_parts(p, replay.reader());
            if let Ok((resp, lease)) = exchange(&host, &cluster, Default::default(), h2, rq).await {
                cluster.stats.charge_code(resp.status().as_u16());
                let mut body = resp.into_body();
                while let Some(f) = http_body_util::BodyExt::frame(&mut body).await {
                    if f.is_err() {
                        return;
                    }
                }
                let mut lease = lease;
                lease.set_reusable();
            }
        };
        let _ = tokio::time::timeout(wait, exchange).await;
    });
}

/// Appends `-shadow` to the request's host, before the port (Envoy's `shadowAppendedHost`).
fn shadow_host(p: &mut http::request::Parts) {
    let authority = match p.uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => match p.headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
            Some(h) => h.to_string(),
            None => return,
        },
    };
    let shadow = match authority.rfind(':') {
        Some(i)
            if !authority.ends_with(']')
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{}-shadow{}", &authority[..i], &authority[i..])
        }
        _ => format!("{authority}-shadow"),
    };
    if p.uri.authority().is_some() {
        let pq = p.uri.path_and_query().map_or("/", |x| x.as_str());
        if let Ok(u) = format!("http://{shadow}{pq}").parse() {
            p.uri = u;
        }
    } else if let Ok(v) = HeaderValue::from_str(&shadow) {
        p.headers.insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_goes_before_the_port() {
        let mut p = empty_parts();
        p.headers
            .insert(header::HOST, HeaderValue::from_static("svc.test:8080"));
        shadow_host(&mut p);
        assert_eq!(p.headers[header::HOST], "svc.test-shadow:8080");
        let mut p = empty_parts();
        p.headers
            .insert(header::HOST, HeaderValue::from_static("svc.test"));
        shadow_host(&mut p);
        assert_eq!(p.headers[header::HOST], "svc.test-shadow");
        let mut p = empty_parts();
        p.uri = "http://[::1]:80/x".parse().unwrap_or_default();
        shadow_host(&mut p);
        assert_eq!(p.uri.to_string(), "http://[::1]-shadow:80/x");
    }
}

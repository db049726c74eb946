//! The router: per-request route selection, request rewriting, upstream exchange and the
//! mapping of failures to Envoy's local replies and response flags.
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use rand::Rng;

use super::access_log::{LogEntry, LogHook};
use super::flags::{local_reply, Flags};
use super::ConnCtx;
use crate::policy::outlier::{self, Outcome};
use crate::route::{
    Action, ClusterTarget, ForwardAction, HostRewrite, Redirect, RedirectPath, RequestView, Route,
    VirtualHost,
};
use crate::stats::GaugeGuard;
use crate::upstream::body::ProxyBody;
use crate::upstream::lb::hash::HashInput;
use crate::upstream::pool::{ConnectError, Sender};
use crate::upstream::{Cluster, Discovery, Host, PickCtx, UpstreamProtocol};

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ENVOY_EXPECTED_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Handles one downstream request. Never fails: every error becomes a local reply.
pub async fn handle(ctx: Arc<ConnCtx>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let hcm = &ctx.hcm;
    let stats = &hcm.stats;
    let start = Instant::now();
    let h2 = req.version() == Version::HTTP_2;
    ctx.count_protocol(h2);
    stats.downstream_rq_total.inc();
    if h2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    let active = GaugeGuard::new(&stats.downstream_rq_active);
    // The connection manager assigns the request id before anything else sees the request
    // (routing, access logs), as Envoy does.
    if hcm.generate_request_id && !req.headers().contains_key(&X_REQUEST_ID) {
        req.headers_mut().insert(&X_REQUEST_ID, request_id());
    }
    let mut log = (!hcm.access_logs.is_empty()).then(|| LogEntry::from_request(&req, &ctx.conn));

    let mut flags = Flags::default();
    let outcome = route_and_forward(&ctx, req, &mut flags, start, &mut log).await;
    let (mut resp, upstream) = match outcome {
        Ok(r) => r,
        Err(reply) => (reply, None),
    };

    // Response headers every reply gets: Envoy sets `date` itself (overwriting the
    // upstream's), then `server`.
    resp.headers_mut().insert(header::DATE, super::date::now());
    match hcm.server_header {
        super::ServerHeader::Overwrite => {
            resp.headers_mut()
                .insert(header::SERVER, hcm.server_name.clone());
        }
        super::ServerHeader::AppendIfAbsent => {
            if !resp.headers().contains_key(header::SERVER) {
                resp.headers_mut()
                    .insert(header::SERVER, hcm.server_name.clone());
            }
        }
        super::ServerHeader::PassThrough => {}
    }
    // While draining, ask HTTP/1 clients to close after this response (Envoy does the same).
    if !h2 && (ctx.shared.draining() || *ctx.conn.listener_drain.borrow()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    stats.charge(resp.status());
    stats.downstream_rq_completed.inc();

    let hook = LogHook {
        hcm: hcm.clone(),
        entry: log.map(|mut e| {
            e.finish_headers(
                &resp,
                flags,
                upstream
                    .as_ref()
                    .map(|(c, h)| (c.name.clone(), h.addr.to_string())),
            );
            Box::new(e)
        }),
        start,
        _active: active,
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.with_on_complete(Box::new(hook)))
}

type Upstream = (Arc<Cluster>, Arc<Host>);

async fn route_and_forward(
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    flags: &mut Flags,
    start: Instant,
    log: &mut Option<LogEntry>,
) -> Result<(Response<ProxyBody>, Option<Upstream>), Response<ProxyBody>> {
    let hcm = &ctx.hcm;
    let stats = &hcm.stats;
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));

    // HTTP/1.0 is refused as Envoy does by default (accept_http_10: false).
    if (req.version() == Version::HTTP_10 && !hcm.accept_http_10)
        || req.version() == Version::HTTP_09
    {
        flags.insert(Flags::DOWNSTREAM_PROTOCOL_ERROR);
        return Err(local_reply(
            StatusCode::UPGRADE_REQUIRED,
            "Upgrade Required",
            false,
        ));
    }
    let host = match request_host(&req) {
        Some(h) => h,
        None => {
            flags.insert(Flags::DOWNSTREAM_PROTOCOL_ERROR);
            return Err(local_reply(
                StatusCode::BAD_REQUEST,
                "missing host header",
                grpc,
            ));
        }
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let routes = hcm.routes.table.load();
    let view = RequestView {
        host: &host,
        path: &path,
        method: req.method().as_str(),
        scheme: "http",
        headers: req.headers(),
    };
    let Some((vhost, route)) = routes.select(&view) else {
        stats.no_route.inc();
        flags.insert(Flags::NO_ROUTE_FOUND);
        return Err(local_reply(StatusCode::NOT_FOUND, "", grpc));
    };
    if let Some(l) = log.as_mut() {
        l.route_name = route.name.clone();
    }

    let fwd = match &route.action {
        Action::Direct { status, body } => {
            stats.rq_direct_response.inc();
            let mut resp = Response::new(ProxyBody::full(body.clone()));
            *resp.status_mut() = *status;
            if !body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            apply_response_headers(resp.headers_mut(), route, vhost, &routes, None);
            return Ok((resp, None));
        }
        Action::Redirect(r) => {
            stats.rq_redirect.inc();
            let mut resp = redirect(r, &view, route);
            apply_response_headers(resp.headers_mut(), route, vhost, &routes, None);
            return Ok((resp, None));
        }
        Action::Forward(f) => f,
    };

    // Choose the cluster.
    let mut weighted = None;
    let cluster_name: Arc<str> = match &fwd.target {
        ClusterTarget::Named(n) => n.clone(),
        ClusterTarget::Header(h) => match req.headers().get(h).and_then(|v| v.to_str().ok()) {
            Some(v) => Arc::from(v),
            None => Arc::from(""),
        },
        ClusterTarget::Weighted(w) => {
            let v = w
                .header
                .as_ref()
                .and_then(|h| req.headers().get(h))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| rand::rng().random_range(0..w.total));
            let c = w.pick(v);
            weighted = Some(c);
            c.name.clone()
        }
    };
    let Some(cluster) = ctx.shared.cluster(&cluster_name) else {
        stats.no_cluster.inc();
        flags.insert(Flags::NO_CLUSTER_FOUND);
        return Err(local_reply(fwd.cluster_not_found, "", grpc));
    };

    // Upgrades (WebSocket): allowed by the route or the connection manager.
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_ascii_lowercase());
    if let Some(u) = &upgrade {
        let allowed = fwd
            .upgrades
            .iter()
            .chain(hcm.upgrades.iter())
            .any(|a| a == u);
        if !allowed {
            stats.downstream_rq_ws_on_non_ws_route.inc();
            return Err(local_reply(StatusCode::FORBIDDEN, "", grpc));
        }
    }

    // Pick the host.
    let mut set_cookie = None;
    let host_pick = match &cluster.discovery {
        Discovery::OriginalDst { header } => {
            let from_header = header
                .as_ref()
                .and_then(|h| req.headers().get(h))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            from_header
                .or(ctx.conn.orig_dst)
                .map(|d| cluster.orig_dst_host(d))
        }
        _ => {
            let h = if cluster.wants_hash() {
                let (r, l) = (ctx.conn.remote, ctx.conn.local);
                let input = HashInput::new(req.headers(), req.uri(), req.method(), r, l);
                fwd.hash_policy.compute(&input)
            } else {
                Default::default()
            };
            set_cookie = h.set_cookie;
            cluster.pick(&PickCtx {
                hash: h.hash,
                ..PickCtx::default()
            })
        }
    };
    let Some(upstream_host) = host_pick else {
        if let Some(l) = log.as_mut() {
            l.set_upstream(cluster.name.clone(), String::new());
        }
        cluster.stats.upstream_cx_none_healthy.inc();
        flags.insert(Flags::NO_HEALTHY_UPSTREAM);
        cluster.stats.charge_code(503);
        return Err(local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            grpc,
        ));
    };

    // The access log names the chosen upstream even when the exchange then fails (UF/UT/UC).
    if let Some(l) = log.as_mut() {
        l.set_upstream(cluster.name.clone(), upstream_host.addr.to_string());
    }

    // Rewrite the request.
    let upstream_h2 = match cluster.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::UseDownstream => req.version() == Version::HTTP_2,
    };
    let upgrade_conn = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    prepare_request(
        ctx,
        &mut req,
        fwd,
        route,
        vhost,
        &routes,
        weighted,
        &upstream_host,
        &host,
        &path,
        upstream_h2,
        upgrade.is_some(),
    );

    let deadline = fwd
        .timeout
        .map(|t| tokio::time::Instant::from_std(start) + t);
    // Envoy counts a pending request, and counts upstream_rq_total only once a stream is
    // attached to a connection (a failed connect leaves it at zero).
    cluster.stats.upstream_rq_pending_total.inc();
    let _rq_active = GaugeGuard::new(&cluster.stats.upstream_rq_active);
    upstream_host
        .active_rq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _host_active = HostActive(upstream_host.clone());

    let exchange = async {
        let sender = upstream_host
            .pool
            .checkout(&upstream_host, &cluster, upstream_h2)
            .await;
        let sender = sender.map_err(Failure::Connect)?;
        cluster.record_outcome(&upstream_host, Outcome::ConnectSuccess);
        cluster.stats.upstream_rq_total.inc();
        upstream_host
            .stats
            .rq_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent_at = Instant::now();
        match sender {
            Sender::H1(mut s) => {
                let resp = s.send_request(req).await.map_err(Failure::Reset)?;
                Ok((resp, Some(s), sent_at))
            }
            Sender::H2(mut s) => {
                let resp = s.send_request(req).await.map_err(Failure::Reset)?;
                Ok((resp, None, sent_at))
            }
        }
    };
    let result = match deadline {
        Some(d) => match tokio::time::timeout_at(d, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        },
        None => exchange.await,
    };
    let (resp, h1_sender, sent_at) = match result {
        Ok(r) => r,
        Err(failure) => {
            let (status, body, flag) = match &failure {
                Failure::Connect(ConnectError::Timeout) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
                    Flags::UPSTREAM_CONNECTION_FAILURE,
                ),
                Failure::Connect(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
                    Flags::UPSTREAM_CONNECTION_FAILURE,
                ),
                Failure::Reset(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    Flags::UPSTREAM_CONNECTION_TERMINATION,
                ),
                Failure::Timeout => {
                    cluster.stats.upstream_rq_timeout.inc();
                    upstream_host.stats.rq_timeout.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout", Flags::UPSTREAM_REQUEST_TIMEOUT)
                }
            };
            if matches!(failure, Failure::Reset(_)) {
                cluster.stats.upstream_rq_rx_reset.inc();
            }
            if matches!(failure, Failure::Connect(_)) {
                cluster.stats.upstream_rq_pending_failure_eject.inc();
            }
            tracing::debug!(cluster = %cluster.name, host = %upstream_host.addr, "upstream failure: {failure:?}");
            cluster.record_outcome(
                &upstream_host,
                if matches!(failure, Failure::Timeout) {
                    Outcome::Timeout
                } else {
                    Outcome::ConnectFailed
                },
            );
            flags.insert(flag);
            cluster.stats.charge_code(status.as_u16());
            return Err(local_reply(status, body, grpc));
        }
    };

    cluster.stats.charge_code(resp.status().as_u16());
    cluster.record_outcome(
        &upstream_host,
        outlier::response_outcome(resp.status(), resp.headers(), grpc),
    );
    let hs = &upstream_host.stats;
    if resp.status().is_server_error() {
        hs.rq_error
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else {
        hs.rq_success
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    // A successful upgrade: splice the two upgraded connections together.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = upgrade_conn {
            let mut up_resp = resp;
            let up = hyper::upgrade::on(&mut up_resp);
            tokio::spawn(async move {
                if let (Ok(d), Ok(u)) = (down.await, up.await) {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
            });
            let (mut parts, _) = up_resp.into_parts();
            apply_response_headers(&mut parts.headers, route, vhost, &routes, weighted);
            return Ok((
                Response::from_parts(parts, ProxyBody::empty()),
                Some((cluster, upstream_host)),
            ));
        }
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if !hcm.suppress_envoy_headers {
        let ms = sent_at.elapsed().as_millis() as u64;
        parts
            .headers
            .insert(&X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(ms));
    }
    apply_response_headers(&mut parts.headers, route, vhost, &routes, weighted);
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
    let mut body = ProxyBody::upstream(body).with_deadline(deadline);
    if let Some(s) = h1_sender {
        body = body.with_pool_return(upstream_host.clone(), s);
    }
    Ok((
        Response::from_parts(parts, body),
        Some((cluster, upstream_host)),
    ))
}

#[derive(Debug)]
enum Failure {
    Connect(ConnectError),
    Reset(#[allow(dead_code)] hyper::Error),
    Timeout,
}

/// Decrements a host's active request count when the exchange ends.
struct HostActive(Arc<Host>);

impl Drop for HostActive {
    fn drop(&mut self) {
        self.0
            .active_rq
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The request's host, lower-cased: `:authority` (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    if raw.is_empty() {
        return None;
    }
    Some(raw.to_ascii_lowercase())
}

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    h.remove(&KEEP_ALIVE);
    // hyper answers `Expect: 100-continue` downstream itself; like Envoy, the upstream does
    // not see the expectation.
    h.remove(header::EXPECT);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare_request(
    ctx: &ConnCtx,
    req: &mut Request<Incoming>,
    fwd: &ForwardAction,
    route: &Route,
    vhost: &VirtualHost,
    table: &crate::route::RouteTable,
    weighted: Option<&crate::route::WeightedCluster>,
    upstream: &Host,
    host: &str,
    path: &str,
    upstream_h2: bool,
    upgrading: bool,
) {
    let hcm = &ctx.hcm;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrading && !upstream_h2);
    if upgrading && !upstream_h2 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if hcm.use_remote_address {
        let ip = ctx.conn.remote.ip().to_string();
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
            _ => ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(&X_FORWARDED_FOR, v);
        }
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, v);
        }
    }
    if !hcm.suppress_envoy_headers {
        if let Some(t) = fwd.timeout {
            headers.insert(
                &X_ENVOY_EXPECTED_TIMEOUT,
                HeaderValue::from(t.as_millis() as u64),
            );
        }
    }
    // Header mutations: most specific level first, so the more general levels are applied
    // last (Envoy's default, most_specific_header_mutations_wins: false).
    if let Some(w) = weighted {
        w.request_headers.apply(headers);
    }
    route.request_headers.apply(headers);
    vhost.request_headers.apply(headers);
    table.request_headers.apply(headers);

    // Host rewrite.
    let mut new_host: Option<HeaderValue> = match &fwd.host_rewrite {
        HostRewrite::None => None,
        HostRewrite::Literal(v) => Some(v.clone()),
        HostRewrite::Auto if upstream.hostname.is_empty() => None,
        HostRewrite::Auto => HeaderValue::from_str(&upstream.hostname).ok(),
        HostRewrite::Header(h) => headers.get(h).cloned(),
    };
    if let Some(w) = weighted.and_then(|w| w.host_rewrite.clone()) {
        new_host = Some(w);
    }

    // Path rewrite.
    let mut new_path: Option<String> = None;
    if let Some(prefix) = &fwd.prefix_rewrite {
        if let crate::route::PathMatch::Prefix(p) | crate::route::PathMatch::SeparatedPrefix(p) =
            &route.matcher.path
        {
            let rest = path.get(p.len()..).unwrap_or("");
            new_path = Some(format!("{prefix}{rest}"));
        }
    } else if let Some((re, sub)) = &fwd.regex_rewrite {
        let (p, q) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let rewritten = re.replace_all(p, sub.as_str());
        new_path = Some(match q {
            Some(q) => format!("{rewritten}?{q}"),
            None => rewritten.into_owned(),
        });
    }
    if new_path.is_some() {
        if let Ok(v) = HeaderValue::from_str(path) {
            headers.insert(&X_ENVOY_ORIGINAL_PATH, v);
        }
    }

    if new_host.is_some() && !hcm.suppress_envoy_headers {
        let original = original_authority(req, host);
        if let Ok(v) = HeaderValue::from_str(&original) {
            req.headers_mut().insert(&X_ENVOY_ORIGINAL_HOST, v);
        }
    }
    let authority = new_host
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| original_authority(req, host));
    let path_and_query = new_path.as_deref().unwrap_or(path);
    if upstream_h2 {
        req.headers_mut().remove(header::HOST);
        let uri = format!("http://{authority}{path_and_query}");
        if let Ok(u) = uri.parse::<Uri>() {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            // Keep the original Host header's bytes when unchanged.
            if new_host.is_some() || !req.headers().contains_key(header::HOST) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        if let Ok(u) = path_and_query.parse::<Uri>() {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_11;
    }
}

/// The authority as the client sent it (case preserved), for forwarding.
fn original_authority(req: &Request<Incoming>, lowered: &str) -> String {
    match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(lowered)
            .to_string(),
    }
}

fn apply_response_headers(
    h: &mut HeaderMap,
    route: &Route,
    vhost: &VirtualHost,
    table: &crate::route::RouteTable,
    weighted: Option<&crate::route::WeightedCluster>,
) {
    if let Some(w) = weighted {
        w.response_headers.apply(h);
    }
    route.response_headers.apply(h);
    vhost.response_headers.apply(h);
    table.response_headers.apply(h);
}

/// A random UUID v4, as Envoy's request id.
fn request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = |x: &[u8]| x.iter().map(|v| format!("{v:02x}")).collect::<String>();
    let s = format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn redirect(r: &Redirect, view: &RequestView<'_>, route: &Route) -> Response<ProxyBody> {
    let scheme = r.scheme.as_deref().unwrap_or(view.scheme);
    let (orig_host, orig_port) = match view.host.rsplit_once(':') {
        Some((h, p))
            if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(']')
                || view.host.starts_with('[') && view.host.contains("]:") =>
        {
            (h, Some(p))
        }
        _ => (view.host, None),
    };
    let host = r.host.as_deref().unwrap_or(orig_host);
    let port = if r.port != 0 {
        Some(r.port.to_string())
    } else if r.host.is_some() || r.scheme.is_some() {
        // A new host or scheme drops the original port, as Envoy does.
        None
    } else {
        orig_port.map(str::to_string)
    };
    let path_only = view.path_only();
    let query = view.query();
    let mut path = match &r.path {
        RedirectPath::Keep => path_only.to_string(),
        RedirectPath::Replace(p) => p.clone(),
        RedirectPath::PrefixRewrite(new) => match &route.matcher.path {
            crate::route::PathMatch::Prefix(p) | crate::route::PathMatch::SeparatedPrefix(p) => {
                format!("{new}{}", path_only.get(p.len()..).unwrap_or(""))
            }
            _ => path_only.to_string(),
        },
    };
    if !r.strip_query && !query.is_empty() && !path.contains('?') {
        path.push('?');
        path.push_str(query);
    }
    let default_port = (scheme == "http" && port.as_deref() == Some("80"))
        || (scheme == "https" && port.as_deref() == Some("443"));
    let location = match port {
        Some(p) if !default_port => format!("{scheme}://{host}:{p}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

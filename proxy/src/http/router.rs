//! The router: per-request route selection, request rewriting, upstream exchange and the
//! mapping of failures to Envoy's local replies and response flags.
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rand::Rng;

use super::access_log::{LogEntry, LogHook};
use super::flags::{local_reply, Flags};
use super::ConnCtx;
use crate::route::{Action, ClusterTarget, Redirect, RedirectPath, RequestView, Route};
use crate::upstream::body::ProxyBody;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

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
    let active = super::ActiveRequest::new(&ctx);
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

use super::forward::Upstream;

async fn route_and_forward(
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    flags: &mut Flags,
    start: Instant,
    log: &mut Option<LogEntry>,
) -> Result<(Response<ProxyBody>, Option<Upstream>), Response<ProxyBody>> {
    let hcm = &ctx.hcm;
    let stats = &hcm.stats;
    let internal = sanitize(ctx, req.headers_mut());
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
        random: rand::rng().random(),
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
            super::rewrite::apply_response_headers(resp.headers_mut(), route, vhost, &routes, None);
            return Ok((resp, None));
        }
        Action::Redirect(r) => {
            stats.rq_redirect.inc();
            let mut resp = redirect(r, &view, route);
            super::rewrite::apply_response_headers(resp.headers_mut(), route, vhost, &routes, None);
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

    super::forward::forward(
        ctx,
        tokio::time::Instant::from_std(start),
        super::forward::Target {
            fwd,
            route,
            vhost,
            table: &routes,
            weighted,
            cluster,
            host: &host,
            path: &path,
            grpc,
            upgrade: upgrade.is_some(),
            internal,
        },
        req,
        flags,
        log,
    )
    .await
}

/// Headers only internal requests may set (Envoy's `cleanInternalHeaders`).
const INTERNAL_ONLY: [&str; 10] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
];

/// Envoy's internal-request rule (`mutateRequestHeaders`): a request is internal when, after
/// `x-forwarded-for` handling, XFF holds exactly one address and it is in
/// `internal_address_config` (empty by default, so nothing is internal). Internal requests
/// get `x-envoy-internal: true`; the others lose the `x-envoy-*` headers that steer retries
/// and timeouts, so clients cannot override the route's policy.
fn sanitize(ctx: &ConnCtx, headers: &mut HeaderMap) -> bool {
    let hcm = &ctx.hcm;
    let xff: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let (addr, single) = if hcm.use_remote_address {
        // The connection's peer is appended to XFF: single when there was none before.
        (Some(ctx.conn.remote.ip()), xff.is_empty())
    } else {
        (
            xff.last().and_then(|a| a.parse::<std::net::IpAddr>().ok()),
            xff.len() == 1,
        )
    };
    let internal =
        single && addr.is_some_and(|ip| hcm.internal_cidrs.iter().any(|c| c.contains(ip)));
    if internal {
        headers.insert(&X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    } else {
        for h in INTERNAL_ONLY {
            headers.remove(h);
        }
    }
    internal
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

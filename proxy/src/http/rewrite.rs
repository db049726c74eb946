//! Request and response header rewriting on the way through the router: hop-by-hop headers,
//! `x-forwarded-*`, route header mutations, host and path rewrites.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use super::ConnCtx;
use crate::route::{ForwardAction, HostRewrite, Route, RouteTable, VirtualHost, WeightedCluster};

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The route-independent parts of a prepared upstream request.
#[derive(Debug)]
pub(super) struct Prepared {
    /// The request goes upstream as HTTP/2.
    pub upstream_h2: bool,
    /// The authority as the client sent it (case preserved).
    pub original_authority: String,
    /// The host was rewritten by a literal or header rewrite.
    pub host_rewritten: bool,
}

/// Removes hop-by-hop headers (those named in `Connection` too); `keep_upgrade` keeps the
/// `Upgrade`/`Connection: upgrade` pair of an HTTP/1 upgrade.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in `Connection` are hop-by-hop too. Most requests have no such header:
    // look before collecting anything.
    if h.contains_key(header::CONNECTION) {
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

/// Rewrites the request for the upstream: hop-by-hop headers, `x-forwarded-*`, header
/// mutations (most specific level first), path rewrites and literal/header host rewrites.
/// Auto host rewrite depends on the host picked for each attempt: see [`set_authority`].
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare_request<B>(
    ctx: &ConnCtx,
    req: &mut Request<B>,
    fwd: &ForwardAction,
    route: &Route,
    vhost: &VirtualHost,
    table: &RouteTable,
    weighted: Option<&WeightedCluster>,
    host: &str,
    path: &str,
    upstream_h2: bool,
    upgrading: bool,
    internal: bool,
) -> Prepared {
    let hcm = &ctx.hcm;
    let original = original_authority(req, host);
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
        // Only edge requests (external, with use_remote_address) name their client.
        if !internal {
            if let Ok(v) = HeaderValue::from_str(&ip) {
                headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, v);
            }
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

    // Host rewrite (auto rewrite waits for the host).
    let mut new_host: Option<HeaderValue> = match &fwd.host_rewrite {
        HostRewrite::None | HostRewrite::Auto => None,
        HostRewrite::Literal(v) => Some(v.clone()),
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
    let host_rewritten = new_host.is_some();
    if host_rewritten && !hcm.suppress_envoy_headers {
        if let Ok(v) = HeaderValue::from_str(&original) {
            headers.insert(&X_ENVOY_ORIGINAL_HOST, v);
        }
    }
    let authority = new_host
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or(original.as_str())
        .to_string();
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
            if host_rewritten || !req.headers().contains_key(header::HOST) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        if let Ok(u) = path_and_query.parse::<Uri>() {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_11;
    }
    Prepared {
        upstream_h2,
        original_authority: original,
        host_rewritten,
    }
}

/// Auto host rewrite for one attempt: the authority becomes the picked host's hostname.
pub(super) fn set_authority(
    parts: &mut http::request::Parts,
    prepared: &Prepared,
    hostname: &str,
    suppress_envoy_headers: bool,
) {
    let Ok(v) = HeaderValue::from_str(hostname) else {
        return;
    };
    if !prepared.host_rewritten && !suppress_envoy_headers {
        if let Ok(o) = HeaderValue::from_str(&prepared.original_authority) {
            parts.headers.insert(&X_ENVOY_ORIGINAL_HOST, o);
        }
    }
    if prepared.upstream_h2 {
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if let Ok(u) = format!("http://{hostname}{pq}").parse::<Uri>() {
            parts.uri = u;
        }
    } else {
        parts.headers.insert(header::HOST, v);
    }
}

/// The authority as the client sent it (case preserved), for forwarding.
pub(super) fn original_authority<B>(req: &Request<B>, lowered: &str) -> String {
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

/// Route response header mutations, most specific level first.
pub(super) fn apply_response_headers(
    h: &mut HeaderMap,
    route: &Route,
    vhost: &VirtualHost,
    table: &RouteTable,
    weighted: Option<&WeightedCluster>,
) {
    if let Some(w) = weighted {
        w.response_headers.apply(h);
    }
    route.response_headers.apply(h);
    vhost.response_headers.apply(h);
    table.response_headers.apply(h);
}

//! Envoy-compatible admin endpoints, served on their own runtime so a stats scrape cannot
//! take time from the data plane.
mod prometheus;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::server::Shared;

/// What the admin server can do to the process.
pub struct AdminCtx {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Asks the process to shut down (`/quitquitquit`).
    pub quit: tokio::sync::mpsc::UnboundedSender<()>,
    /// Stops listeners (`/drain_listeners`): (inbound only, graceful).
    pub drain_listeners: tokio::sync::mpsc::UnboundedSender<(bool, bool)>,
    /// Changes the log level (`/logging?level=`).
    pub set_log_level: SetLogLevel,
    /// The current log level for `/logging`.
    pub log_level: std::sync::Mutex<String>,
    /// Command line for `/server_info`.
    pub command_line: serde_json::Value,
    /// `server.state`: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING, 3 INITIALIZING.
    pub state: crate::stats::Gauge,
    /// VM mode's mesh names (shown in `/config_dump`).
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// The application's spec.yaml (shown in `/config_dump`).
    pub spec: Option<serde_json::Value>,
    /// The xDS manager, once a control plane is configured (dynamic `/config_dump`).
    pub xds: Arc<std::sync::OnceLock<Arc<crate::xds::XdsManager>>>,
}

type Resp = Response<Full<Bytes>>;

/// Changes the process log level; returns a message for a bad level.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Serves admin connections from `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<AdminCtx>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn json_resp(v: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Envoy's server state: a failed health check reports DRAINING (as Envoy's
/// `Utility::serverState` does) without changing the underlying lifecycle state.
fn server_state(ctx: &AdminCtx) -> i64 {
    let s = ctx.state.get();
    if s == 0 && ctx.shared.health_failed.load(Ordering::Relaxed) {
        1
    } else {
        s
    }
}

fn state_name(v: i64) -> &'static str {
    match v {
        0 => "LIVE",
        1 => "DRAINING",
        2 => "PRE_INITIALIZING",
        _ => "INITIALIZING",
    }
}

fn handle(ctx: &AdminCtx, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let post_only = [
        "/quitquitquit",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/drain_listeners",
        "/reset_counters",
        "/logging",
    ];
    if post_only.contains(&path.as_str())
        && req.method() != Method::POST
        && !(path == "/logging" && q.is_empty())
    {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST\n",
        );
    }
    let shared = &ctx.shared;
    match path.as_str() {
        "/ready" => {
            let state = server_state(ctx);
            let status = if state == 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, format!("{}\n", state_name(state)))
        }
        "/server_info" => json_resp(json!({
            "version": format!("petrel/{}/Clean/RELEASE", env!("CARGO_PKG_VERSION")),
            "state": state_name(server_state(ctx)),
            "hot_restart_version": "disabled",
            "hot_restart_initializing": false,
            "command_line_options": ctx.command_line,
            "node": {"id": shared.node.0, "cluster": shared.node.1},
            "uptime_current_epoch": format!("{}s", shared.started.elapsed().as_secs()),
            "uptime_all_epochs": format!("{}s", shared.started.elapsed().as_secs()),
        })),
        "/stats" => stats(ctx, &q),
        "/stats/prometheus" => {
            refresh_server_gauges(ctx);
            text(StatusCode::OK, prometheus::render(&shared.stats.snapshot(), q.contains_key("usedonly")))
        }
        "/config_dump" => json_resp(config_dump(ctx, &q)),
        "/clusters" => clusters(shared, &q),
        "/init_dump" => {
            // Envoy lists the init targets still waiting; once initialized the dump is empty.
            let unready = ctx.xds.get().map(|x| x.unready()).unwrap_or_default();
            if unready.is_empty() {
                json_resp(json!({}))
            } else {
                json_resp(json!({"unready_targets_dumps": [{
                    "name": "Server",
                    "target_names": unready,
                }]}))
            }
        }
        "/listeners" => listeners(shared, &q),
        "/quitquitquit" => {
            let _ = ctx.quit.send(());
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/fail" => {
            shared.health_failed.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            shared.health_failed.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            let _ = ctx
                .drain_listeners
                .send((q.contains_key("inboundonly"), q.contains_key("graceful")));
            text(StatusCode::OK, "OK\n")
        }
        "/reset_counters" => {
            shared.stats.reset_counters();
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => {
            if let Some(level) = q.get("level") {
                if let Err(e) = (ctx.set_log_level)(level) {
                    return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
                }
                if let Ok(mut l) = ctx.log_level.lock() {
                    *l = level.clone();
                }
            } else if !q.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "usage: /logging?level=<trace|debug|info|warning|error|critical|off>\n",
                );
            }
            let level = ctx.log_level.lock().map(|l| l.clone()).unwrap_or_default();
            text(StatusCode::OK, format!("active loggers:\n  petrel: {level}\n"))
        }
        "/" | "/help" => text(
            StatusCode::OK,
            "admin commands are:\n  /clusters\n  /config_dump\n  /init_dump\n  /drain_listeners (POST)\n  /healthcheck/fail (POST)\n  /healthcheck/ok (POST)\n  /listeners\n  /logging\n  /quitquitquit (POST)\n  /ready\n  /reset_counters (POST)\n  /server_info\n  /stats\n  /stats/prometheus\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "invalid path. admin commands are listed at /help\n"),
    }
}

/// `server.state` reflects the health-check override; it is computed when stats are read.
fn refresh_server_gauges(ctx: &AdminCtx) {
    ctx.shared
        .stats
        .gauge("server.state")
        .set(server_state(ctx));
}

fn stats(ctx: &AdminCtx, q: &HashMap<String, String>) -> Resp {
    let shared = &ctx.shared;
    refresh_server_gauges(ctx);
    shared
        .stats
        .gauge("server.uptime")
        .set(shared.started.elapsed().as_secs() as i64);
    let filter = match q.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => match regex::Regex::new(f) {
            Ok(re) => Some(re),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n")),
        },
        None => None,
    };
    let used_only = q.contains_key("usedonly");
    let all = shared.stats.snapshot();
    let selected = all
        .iter()
        .filter(|s| !used_only || s.used)
        .filter(|s| filter.as_ref().is_none_or(|re| re.is_match(&s.name)));
    match q.get("format").map(String::as_str) {
        Some("json") => json_resp(json!({
            "stats": selected.map(|s| json!({"name": s.name, "value": s.value})).collect::<Vec<_>>()
        })),
        Some("prometheus") => text(StatusCode::OK, prometheus::render(&all, used_only)),
        Some(other) if other != "text" => text(
            StatusCode::BAD_REQUEST,
            format!("usage: unknown format {other}\n"),
        ),
        _ => {
            let mut out = String::new();
            for s in selected {
                out.push_str(&format!("{}: {}\n", s.name, s.value));
            }
            text(StatusCode::OK, out)
        }
    }
}

fn config_dump(ctx: &AdminCtx, q: &HashMap<String, String>) -> serde_json::Value {
    let shared = &ctx.shared;
    let dynamic = ctx.xds.get().map(|x| x.dump()).unwrap_or_default();
    let b = &shared.bootstrap_json;
    let sr = &b["static_resources"];
    let now = crate::http::access_log::rfc3339_millis(std::time::SystemTime::now());
    let clusters: Vec<_> = sr["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if let Some(o) = c.as_object_mut() {
                o.insert(
                    "@type".into(),
                    json!("type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                );
            }
            json!({"cluster": c, "last_updated": now})
        })
        .collect();
    let listeners: Vec<_> = sr["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut l| {
            if let Some(o) = l.as_object_mut() {
                o.insert(
                    "@type".into(),
                    json!("type.googleapis.com/envoy.config.listener.v3.Listener"),
                );
            }
            json!({"listener": l, "last_updated": now})
        })
        .collect();
    let mut routes = Vec::new();
    for l in sr["listeners"].as_array().into_iter().flatten() {
        for fc in l["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(l.get("default_filter_chain"))
        {
            for f in fc["filters"].as_array().into_iter().flatten() {
                if let Some(rc) = f["typed_config"].get("route_config") {
                    let mut rc = rc.clone();
                    if let Some(o) = rc.as_object_mut() {
                        o.insert(
                            "@type".into(),
                            json!("type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
                        );
                    }
                    routes.push(json!({"route_config": rc, "last_updated": now}));
                }
            }
        }
    }
    let mut configs = vec![
        json!({"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": b, "last_updated": now}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "static_clusters": clusters,
            "dynamic_active_clusters": dynamic.active_clusters,
            "dynamic_warming_clusters": dynamic.warming_clusters}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "static_listeners": listeners,
            "dynamic_listeners": dynamic.listeners}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump"}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "static_route_configs": routes,
            "dynamic_route_configs": dynamic.routes}),
        json!({"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"}),
    ];
    if ctx.mesh.is_some() || ctx.spec.is_some() {
        // Petrel's own section (Envoy has no equivalent): the app spec and the mesh names
        // the DNS answers.
        configs.push(json!({
            "@type": "type.googleapis.com/petrel.admin.v1.MeshConfigDump",
            "application_spec": ctx.spec,
            "mesh_names": ctx.mesh.as_ref().map(|m| serde_json::to_value(m.names.load().dump()).unwrap_or_default()),
        }));
    }
    if q.contains_key("include_eds") {
        configs.push(
            json!({"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": dynamic.endpoints}),
        );
    }
    if let Some(resource) = q.get("resource") {
        // `?resource=static_clusters`: the named repeated field of the matching dumps.
        configs = configs
            .into_iter()
            .flat_map(|c| {
                c.get(resource)
                    .and_then(|r| r.as_array().cloned())
                    .unwrap_or_default()
            })
            .collect();
    }
    if let Some(mask) = q.get("mask").filter(|m| !m.is_empty()) {
        let paths: Vec<Vec<&str>> = mask
            .split(',')
            .map(|p| p.trim().split('.').collect())
            .collect();
        configs = configs
            .into_iter()
            .map(|c| apply_mask(&c, &paths))
            .collect();
    }
    json!({ "configs": configs })
}

/// Applies a protobuf FieldMask (`a.b,c`) to a JSON object: only the named paths (and
/// `@type`) are kept; arrays on the way apply the rest of the path to each element.
fn apply_mask(v: &serde_json::Value, paths: &[Vec<&str>]) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|i| apply_mask(i, paths)).collect()),
        Value::Object(obj) => {
            let mut out = serde_json::Map::new();
            if let Some(t) = obj.get("@type") {
                out.insert("@type".into(), t.clone());
            }
            for (key, val) in obj {
                let rests: Vec<Vec<&str>> = paths
                    .iter()
                    .filter(|p| p.first() == Some(&key.as_str()))
                    .map(|p| p[1..].to_vec())
                    .collect();
                if rests.is_empty() {
                    continue;
                }
                if rests.iter().any(|r| r.is_empty()) {
                    out.insert(key.clone(), val.clone());
                } else {
                    out.insert(key.clone(), apply_mask(val, &rests));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn clusters(shared: &Shared, q: &HashMap<String, String>) -> Resp {
    let table = shared.clusters.load();
    let mut names: Vec<_> = table.keys().cloned().collect();
    names.sort();
    // Last interval's success rate of a host (`-1` when not computed or without outlier
    // detection), external (`false`) or local origin.
    let success_rate = |c: &crate::upstream::Cluster, h: &crate::upstream::Host, local: bool| {
        c.lb.outlier()
            .and_then(|od| od.monitor(&h.addr))
            .map_or(-1.0, |m| m.success_rate(local))
    };
    if q.get("format").map(String::as_str) == Some("json") {
        let statuses: Vec<_> = names
            .iter()
            .map(|n| {
                let c = &table[n];
                let set = c.hosts.load();
                let hosts: Vec<_> = set
                    .hosts
                    .iter()
                    .zip(&set.info)
                    .map(|(h, info)| {
                        let mut health = json!({"eds_health_status": info.eds_health_status()});
                        if info.ejected {
                            health["failed_outlier_check"] = json!(true);
                        }
                        let mut locality = serde_json::Map::new();
                        for (k, v) in [
                            ("region", &info.locality.region),
                            ("zone", &info.locality.zone),
                            ("sub_zone", &info.locality.sub_zone),
                        ] {
                            if !v.is_empty() {
                                locality.insert(k.to_string(), json!(v));
                            }
                        }
                        let mut host = json!({
                            "address": {"socket_address": {"address": h.addr.to_string()}},
                            "stats": h.stats.render(h.active_rq.load(Ordering::Relaxed)).iter()
                                .map(|(k, v)| json!({"name": k, "value": v}))
                                .collect::<Vec<_>>(),
                            "health_status": health,
                            "weight": h.weight(),
                            "locality": locality,
                        });
                        if !h.hostname.is_empty() {
                            host["hostname"] = json!(&*h.hostname);
                        }
                        if info.priority != 0 {
                            host["priority"] = json!(info.priority);
                        }
                        for (field, local) in
                            [("success_rate", false), ("local_origin_success_rate", true)]
                        {
                            let r = success_rate(c, h, local);
                            if r >= 0.0 {
                                host[field] = json!({"value": r});
                            }
                        }
                        host
                    })
                    .collect();
                let mut status = json!({
                    "name": &**n,
                    "observability_name": &*c.stat_name,
                    "host_statuses": hosts,
                });
                if let Some(od) = c.lb.outlier() {
                    for (field, local) in [
                        ("success_rate_ejection_threshold", false),
                        ("local_origin_success_rate_ejection_threshold", true),
                    ] {
                        let (_, threshold) = od.success_rate_numbers(local);
                        if threshold > 0.0 {
                            status[field] = json!({"value": threshold});
                        }
                    }
                }
                status
            })
            .collect();
        return json_resp(json!({ "cluster_statuses": statuses }));
    }
    let mut out = String::new();
    for n in &names {
        let c = &table[n];
        out.push_str(&format!("{n}::observability_name::{}\n", c.stat_name));
        if let Some(od) = c.lb.outlier() {
            // Envoy prints these with `{:g}`.
            let (avg, threshold) = od.success_rate_numbers(false);
            let (lavg, lthreshold) = od.success_rate_numbers(true);
            for (k, v) in [
                ("success_rate_average", avg),
                ("success_rate_ejection_threshold", threshold),
                ("local_origin_success_rate_average", lavg),
                ("local_origin_success_rate_ejection_threshold", lthreshold),
            ] {
                out.push_str(&format!("{n}::outlier::{k}::{}\n", fmt_g(v)));
            }
        }
        for (k, v) in [
            ("max_connections", 1024),
            ("max_pending_requests", 1024),
            ("max_requests", 1024),
            ("max_retries", 3),
        ] {
            out.push_str(&format!("{n}::default_priority::{k}::{v}\n"));
        }
        out.push_str(&format!("{n}::added_via_api::false\n"));
        let set = c.hosts.load();
        for (h, info) in set.hosts.iter().zip(&set.info) {
            let a = h.addr.to_string();
            for (k, v) in h.stats.render(h.active_rq.load(Ordering::Relaxed)) {
                out.push_str(&format!("{n}::{a}::{k}::{v}\n"));
            }
            out.push_str(&format!("{n}::{a}::hostname::{}\n", h.hostname));
            out.push_str(&format!(
                "{n}::{a}::health_flags::{}\n",
                info.health_flags()
            ));
            out.push_str(&format!("{n}::{a}::weight::{}\n", h.weight()));
            out.push_str(&format!("{n}::{a}::region::{}\n", info.locality.region));
            out.push_str(&format!("{n}::{a}::zone::{}\n", info.locality.zone));
            out.push_str(&format!("{n}::{a}::sub_zone::{}\n", info.locality.sub_zone));
            out.push_str(&format!("{n}::{a}::canary::false\n"));
            out.push_str(&format!("{n}::{a}::priority::{}\n", info.priority));
            out.push_str(&format!(
                "{n}::{a}::success_rate::{}\n",
                success_rate(c, h, false)
            ));
            out.push_str(&format!(
                "{n}::{a}::local_origin_success_rate::{}\n",
                success_rate(c, h, true)
            ));
        }
    }
    text(StatusCode::OK, out)
}

/// C's `%g` for the values `/clusters` prints: six significant digits, no trailing zeros.
fn fmt_g(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e6 {
        return format!("{}", v as i64);
    }
    let digits = 6 - (v.abs().log10().floor() as i32 + 1);
    let s = format!("{:.*}", digits.max(0) as usize, v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn listeners(shared: &Shared, q: &HashMap<String, String>) -> Resp {
    let list = shared.listener_list.load();
    if q.get("format").map(String::as_str) == Some("json") {
        let statuses: Vec<_> = list
            .iter()
            .map(|l| json!({"name": &*l.name, "local_address": {"socket_address": {"address": l.addr.to_string()}}}))
            .collect();
        return json_resp(json!({ "listener_statuses": statuses }));
    }
    let mut out = String::new();
    for l in list.iter() {
        out.push_str(&format!("{}::{}\n", l.name, l.addr));
    }
    text(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_mask_keeps_named_paths_through_arrays() {
        let v = json!({
            "@type": "t",
            "static_clusters": [{"cluster": {"name": "a", "type": "STATIC"}, "last_updated": "x"}],
            "dynamic_active_clusters": [],
        });
        let masked = apply_mask(&v, &[vec!["static_clusters", "cluster", "name"]]);
        assert_eq!(
            masked,
            json!({"@type": "t", "static_clusters": [{"cluster": {"name": "a"}}]})
        );
    }

    #[test]
    fn g_format_as_envoy_prints_success_rates() {
        assert_eq!(fmt_g(-1.0), "-1");
        assert_eq!(fmt_g(100.0), "100");
        assert_eq!(fmt_g(52.5), "52.5");
        assert_eq!(fmt_g(99.123456789), "99.1235");
    }

    #[test]
    fn percent_decoding_of_query_values() {
        assert_eq!(percent_decode("cluster%2Eup+x"), "cluster.up x");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }
}

//! Process lifecycle: parse flags, load and compile the bootstrap, run the data plane and
//! admin, drain on SIGTERM or `/quitquitquit`, exit 0.
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::{reload, EnvFilter};

use crate::admin::AdminCtx;
use crate::cli::{Args, Mode};
use crate::config::address::ListenAddr;
use crate::runtime::ListenerManager;
use crate::server::Shared;
use crate::stats::Stats;
use crate::upstream::dns;

/// Entry point of the `petrel` binary.
pub fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "redirect") {
        // `petrel redirect ...`: istio-iptables' flags, so Petrel can replace it in an init
        // container (see the redirect crate).
        let args = std::iter::once(std::ffi::OsString::from("petrel redirect"))
            .chain(argv.into_iter().skip(2));
        let args = match <redirect::RedirectArgs as clap::Parser>::try_parse_from(args) {
            Ok(a) => a,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
        };
        return match redirect::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("petrel redirect: {e}");
                ExitCode::from(1)
            }
        };
    }
    if argv.get(1).is_some_and(|a| a == "run") {
        return crate::run_capture::main(argv, run);
    }
    let args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the proxy; `capture` (from `petrel run --capture`) installs the capture rules just
/// before serving and returns the guard that removes them.
pub(crate) fn run(
    args: Args,
    capture: Option<crate::run_capture::CaptureHook>,
) -> anyhow::Result<()> {
    let filter = args.log_filter().map_err(anyhow::Error::msg)?;
    let (filter_layer, reload_handle) = reload::Layer::new(EnvFilter::new(&filter));
    {
        use tracing_subscriber::prelude::*;
        let fmt = tracing_subscriber::fmt::layer().with_target(false);
        match &args.log_path {
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                tracing_subscriber::registry()
                    .with(filter_layer)
                    .with(
                        fmt.with_writer(std::sync::Mutex::new(file))
                            .with_ansi(false),
                    )
                    .init();
            }
            None => tracing_subscriber::registry()
                .with(filter_layer)
                .with(fmt.with_writer(std::io::stderr))
                .init(),
        }
    }
    // One explicit rustls provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let loaded = xds_client::bootstrap::load(
        args.config_path.as_deref(),
        args.config_yaml.as_deref(),
        xds_client::decode::DecodeOptions {
            allow_unknown_fields: args.allow_unknown_static_fields,
        },
    )?;
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let mut bootstrap = loaded.bootstrap;
    let node = bootstrap.node.get_or_insert_with(Default::default);
    if let Some(n) = &args.service_node {
        node.id = n.clone();
    }
    if let Some(c) = &args.service_cluster {
        node.cluster = c.clone();
    }
    if let Some(z) = &args.service_zone {
        node.locality.get_or_insert_with(Default::default).zone = z.clone();
    }
    let spec = match &args.spec {
        Some(path) => Some(crate::spec::AppSpec::load(path)?),
        None => None,
    };
    if let Some(spec) = &spec {
        // The control plane learns the application's services and ports from the node
        // metadata (the TSF Mesh design); keep whatever else the bootstrap put there.
        let md = node.metadata.get_or_insert_with(Default::default);
        md.fields.insert(
            crate::spec::NODE_METADATA_KEY.to_string(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(
                    spec.to_node_metadata_struct(),
                )),
            },
        );
    }
    let node_ids = (node.id.clone(), node.cluster.clone());

    let stats = Stats::default();
    let route_store = Arc::new(crate::route::RouteStore::default());
    let has_xds = bootstrap.dynamic_resources.is_some();
    let ctx = crate::config::BuildCtx {
        stats: &stats,
        routes: has_xds.then_some(&*route_store),
        xds: has_xds,
    };
    let config = crate::config::build_static(&bootstrap, &ctx)?;
    if args.mode == Mode::Validate {
        // A closed stdout (`| head`) is not worth a panic.
        let _ = writeln!(
            std::io::stdout(),
            "configuration '{}' OK",
            args.config_path
                .as_ref()
                .map_or("--config-yaml".to_string(), |p| p.display().to_string())
        );
        return Ok(());
    }

    let workers = args
        .concurrency
        .filter(|c| *c > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bootstrap_json =
        xds_client::decode::to_json(&bootstrap, "envoy.config.bootstrap.v3.Bootstrap");
    let shared = Arc::new(Shared::new(stats.clone(), bootstrap_json, node_ids));
    // VM mode: the mesh DNS answers mesh names with capture addresses.
    let mesh = match args.mesh_dns {
        Some(_) => {
            let cidr: crate::dns::CaptureCidr = args
                .capture_cidr
                .parse()
                .map_err(|e| anyhow::anyhow!("--capture-cidr: {e}"))?;
            let rc = crate::dns::ResolvConf::system()
                .map_err(|e| anyhow::anyhow!("reading /etc/resolv.conf: {e}"))?;
            let ns = bootstrap
                .node
                .as_ref()
                .and_then(|n| n.metadata.as_ref())
                .and_then(|m| m.fields.get("NAMESPACE"))
                .and_then(|v| match &v.kind {
                    Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                        Some(s.clone())
                    }
                    _ => None,
                });
            Some((
                Arc::new(crate::mesh::Mesh::new(
                    cidr,
                    rc.name_context(ns),
                    &bootstrap,
                )),
                rc,
            ))
        }
        None => None,
    };
    if let Some((m, _)) = &mesh {
        // Connections to the capture addresses the mesh DNS hands out route by service name.
        let routes = crate::listener::CaptureRoutes::new(m.names.clone(), stats.clone());
        let _ = shared.capture.set(routes);
    }
    // Lifecycle state; the `server.state` stat is derived from it (and from
    // /healthcheck/fail) when read.
    let state = crate::stats::Gauge::detached();
    stats.gauge("server.state").set(2);
    state.set(2); // PRE_INITIALIZING
    stats.gauge("server.live").set(0);
    stats.gauge("server.concurrency").set(workers as i64);
    stats.gauge("server.uptime").set(0);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("petrel-worker")
        .enable_all()
        .build()?;

    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::unbounded_channel();
    let (drain_tx, mut drain_rx) = tokio::sync::mpsc::unbounded_channel::<(bool, bool)>();

    let xds_slot: Arc<std::sync::OnceLock<Arc<crate::xds::XdsManager>>> = Arc::default();
    let ads = crate::xds::bootstrap::ads_settings(&bootstrap, &config.clusters)?;

    // Admin first, on its own runtime, so /ready answers while the data plane starts.
    if let Some(addr) = &config.admin {
        let ListenAddr::Tcp(sa) = addr else {
            anyhow::bail!("admin.address: only TCP admin addresses are supported");
        };
        let std_listener = std::net::TcpListener::bind(sa)
            .map_err(|e| anyhow::anyhow!("admin.address {sa}: {e}"))?;
        std_listener.set_nonblocking(true)?;
        let level = args.log_level.clone();
        let ctx = Arc::new(AdminCtx {
            shared: shared.clone(),
            quit: quit_tx.clone(),
            drain_listeners: drain_tx,
            set_log_level: Box::new(move |lvl: &str| {
                let l = match lvl {
                    "trace" | "debug" | "info" | "error" | "off" => lvl,
                    "warning" | "warn" => "warn",
                    "critical" => "error",
                    other => return Err(format!("invalid log level {other:?}")),
                };
                reload_handle
                    .modify(|f| *f = EnvFilter::new(format!("{l},h2=warn,hyper=warn")))
                    .map_err(|e| e.to_string())
            }),
            log_level: std::sync::Mutex::new(level),
            command_line: serde_json::json!({
                "concurrency": workers,
                "drain_time": format!("{}s", args.drain_time_s),
                "config_path": args.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                "service_node": args.service_node.clone().unwrap_or_default(),
                "service_cluster": args.service_cluster.clone().unwrap_or_default(),
                "log_level": args.log_level,
                "mode": "Serve",
            }),
            state: state.clone(),
            xds: xds_slot.clone(),
            mesh: mesh.as_ref().map(|(m, _)| m.clone()),
            spec: spec.as_ref().map(|s| s.to_node_metadata()),
        });
        std::thread::Builder::new()
            .name("petrel-admin".into())
            .spawn(move || {
                let admin_rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match admin_rt {
                    Ok(admin_rt) => admin_rt.block_on(async move {
                        match tokio::net::TcpListener::from_std(std_listener) {
                            Ok(l) => crate::admin::serve(l, ctx).await,
                            Err(e) => error!("admin listener: {e}"),
                        }
                    }),
                    Err(e) => error!("admin runtime: {e}"),
                }
            })?;
        info!("admin address: {sa}");
    }

    rt.block_on(async move {
        // SIGTERM is handled from here on, also during the (possibly long) wait for the control
        // plane: it ends the process through the normal return path. `petrel run --capture`
        // installs its rules only now, so no signal can end the process between installing
        // and removing them (the guard drops when this block returns, whichever way).
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let _capture = match capture {
            Some(install) => Some(install()?),
            None => None,
        };
        if let (Some(addr), Some((mesh, rc))) = (args.mesh_dns, &mesh) {
            let cfg = crate::dns::DnsConfig {
                listen: addr,
                ..crate::dns::DnsConfig::new(rc.nameservers.clone())
            };
            let server = crate::dns::DnsServer::bind(cfg, mesh.names.clone(), &stats)
                .await
                .map_err(|e| anyhow::anyhow!("--mesh-dns {addr}: {e}"))?;
            let mut drain = shared.drain_signal();
            tokio::spawn(server.run(async move { crate::http::drained(&mut drain).await }));
            info!("mesh DNS on {addr}");
        }
        // Clusters: resolve DNS clusters before listeners open (Envoy's init manager waits
        // for the first resolution of each cluster).
        state.set(3); // INITIALIZING
        for c in config.clusters.values() {
            if let Err(e) = dns::resolve(c).await {
                warn!(cluster = %c.name, "initial DNS resolution failed: {e}");
            }
            dns::spawn_refresh(c.clone());
            if matches!(c.discovery, crate::upstream::Discovery::OriginalDst { .. }) {
                let c = c.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        c.cleanup_orig_dst();
                    }
                });
            }
        }
        stats
            .gauge("cluster_manager.active_clusters")
            .set(config.clusters.len() as i64);
        shared.clusters.store(Arc::new(config.clusters));

        let listeners = Arc::new(ListenerManager::new(shared.clone(), tokio::runtime::Handle::current()));
        for l in &config.listeners {
            listeners
                .upsert(l.clone(), false)
                .map_err(|e| anyhow::anyhow!("listener {}: {e}", l.name))?;
        }
        // Dynamic configuration: the ADS client runs on this runtime; its sink publishes
        // clusters and listeners with pointer swaps. The server turns LIVE once the first
        // CDS/EDS/LDS/RDS round is applied (or each type's initial fetch timed out).
        if let Some(settings) = ads {
            let manager = crate::xds::XdsManager::new(
                shared.clone(),
                listeners.clone(),
                route_store.clone(),
                (**shared.clusters.load()).clone(),
            );
            let _ = xds_slot.set(manager.clone());
            if let Some((m, _)) = &mesh {
                manager.set_mesh(m.clone());
            }
            let channel = xds_client::ads::connect_channel(&settings.target)
                .map_err(|e| anyhow::anyhow!("dynamic_resources.ads_config: {e}"))?;
            let (client, handle) = xds_client::ads::AdsClient::new(channel, settings.config, manager.clone());
            manager.set_handle(handle);
            tokio::spawn(client.run());
            let mut init = manager.initialized();
            info!("waiting for the initial xDS configuration");
            tokio::select! {
                _ = init.wait_for(|done| *done) => {}
                _ = sigterm.recv() => {
                    info!("SIGTERM before the initial xDS configuration arrived; exiting");
                    return Ok(());
                }
            }
        }
        stats.gauge("listener_manager.workers_started").set(1);
        stats.gauge("server.live").set(1);
        state.set(0); // LIVE

        // Run until SIGTERM/SIGINT or /quitquitquit; /drain_listeners stops listeners only.
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = quit_rx.recv() => break,
                Some((inbound_only, graceful)) = drain_rx.recv() => {
                    // Envoy's /drain_listeners: listeners stop accepting and their existing
                    // connections are asked to close (HTTP/1 `connection: close`, HTTP/2 GOAWAY)
                    // as requests finish. The drain signal is process-wide, so with
                    // `inboundonly` outbound connections are encouraged to close too.
                    // With `graceful`, listeners keep accepting for the drain time (every
                    // response asking the client to close), then stop.
                    state.set(1);
                    shared.start_drain();
                    let delay = if graceful { Duration::from_secs(args.drain_time_s) } else { Duration::ZERO };
                    listeners.stop_accepting_after(inbound_only, delay);
                }
            }
        }

        // Drain: stop accepting, let connection managers close keep-alive connections and
        // finish in-flight requests, then exit once nothing is active or drain time passes.
        info!("draining (up to {}s)", args.drain_time_s);
        state.set(1);
        listeners.stop_accepting(false);
        shared.start_drain();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.drain_time_s);
        loop {
            let active: i64 = shared
                .listener_list
                .load()
                .iter()
                .map(|l| l.stats.downstream_cx_active.get())
                .sum();
            if active == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!("shutdown complete");
        Ok::<_, anyhow::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

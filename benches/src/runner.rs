//! Interleaved rounds: start the target, prove it forwards, warm up, measure, kill.
//!
//! Fairness on a 2-core machine: the proxy runs alone on [`PROXY_CPU`] with one worker
//! (`--concurrency 1`); the load generator and the upstream share [`LOAD_CPU`]. Each measured run
//! gets a fresh proxy process, so every run's idle RSS, peak RSS (VmHWM) and CPU time belong to
//! that run only. For one scenario and load, the targets run back to back in each round (direct,
//! Envoy, Petrel), and the rounds repeat, so slow drifts of a noisy machine hit all targets alike;
//! the report takes medians over rounds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::loadgen::LoadResult;
use crate::procs::{cpu_busy_seconds, pinned, wait_until, Proc};
use crate::scenario::{
    echo_once, http1_get, read_some, Load, Scenario, Target, FIXED_RATE_CONNS, UPSTREAM_HTTP,
};
use crate::tools::{Tools, GRPC_PATH, LOAD_CPU, PROXY_CPU};

/// How long a proxy may take to forward its first request.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the 5,000-cluster bootstrap may take to come up.
const BIG_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything a run needs.
pub struct Ctx {
    /// The external tools.
    pub tools: Tools,
    /// The Petrel binary, if there is one to test.
    pub petrel: Option<PathBuf>,
    /// Why there is no Petrel binary (failed build), reported on every Petrel run.
    pub petrel_missing: Option<String>,
    /// `benches/configs/`.
    pub configs: PathBuf,
    /// Scratch directory for logs and generated files.
    pub out: PathBuf,
    /// Measured seconds per run.
    pub secs: u64,
    /// Warm-up seconds before each measured run (0: none).
    pub warmup: u64,
}

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Closed-loop connection counts.
    pub levels: Vec<u32>,
    /// Fixed rates, req/s.
    pub rates: Vec<u32>,
    /// Rounds of every (scenario, load).
    pub rounds: u32,
    /// Targets, in the order they run within a round.
    pub targets: Vec<Target>,
    /// Idle downstream connections for the memory figure (0: skip).
    pub idle_conns: u32,
    /// Clusters and routes of the generated big bootstrap (0: skip).
    pub clusters: u32,
    /// A successful run whose proxy core was busy with other processes more than this
    /// percentage of the time is run again (see [`Plan::noise_retries`]).
    #[serde(default)]
    pub max_noise: Option<f64>,
    /// How many times a noisy run is repeated; the least noisy attempt is kept.
    #[serde(default)]
    pub noise_retries: u32,
}

/// Figures of one measured run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    /// What the load generator saw.
    #[serde(flatten)]
    pub load: LoadResult,
    /// Proxy CPU (user + system) during the measured run.
    pub cpu_s: Option<f64>,
    /// Proxy CPU-seconds per 10,000 requests.
    pub cpu_per_10k: Option<f64>,
    /// Proxy RSS after start-up and the readiness probe, before any load.
    pub idle_rss_kib: Option<u64>,
    /// Proxy peak RSS over its life (one run).
    pub peak_rss_kib: Option<u64>,
    /// Busy time of the proxy's core not spent in the proxy (or, for direct, at all), as a
    /// percentage of the run: other processes competing for the core the proxy should own.
    pub foreign_pct: Option<f64>,
}

/// One run of one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Scenario.
    pub scenario: Scenario,
    /// Load shape.
    pub load: Load,
    /// Target.
    pub target: Target,
    /// Round, from 1.
    pub round: u32,
    /// Figures, when the run succeeded.
    pub figures: Option<Figures>,
    /// Why it failed otherwise.
    pub error: Option<String>,
}

/// The memory and start-up figures beside the scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Extra {
    /// RSS with this many idle downstream connections on the HTTP/1.1 listener.
    IdleConns(u32),
    /// RSS and start-up time with this many clusters and routes.
    Clusters(u32),
}

/// One extra measurement of one proxy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtraRecord {
    /// Which.
    pub extra: Extra,
    /// Proxy.
    pub target: Target,
    /// Round, from 1.
    pub round: u32,
    /// RSS under the condition, KiB.
    pub rss_kib: Option<u64>,
    /// RSS of the same process before it (idle connections only), KiB.
    pub base_rss_kib: Option<u64>,
    /// Spawn to first routed 200 (clusters only), ms.
    pub startup_ms: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a run failed: a proxy that cannot start is not retried for the same bootstrap.
enum Failure {
    Start(String),
    Run(String),
}

// === impl Ctx ===

impl Ctx {
    fn logs(&self) -> PathBuf {
        self.out.join("logs")
    }

    /// Starts a proxy on `config`, pinned to the proxy core, refusing if `addr` is taken.
    fn start_proxy(
        &self,
        target: Target,
        config: &Path,
        tag: &str,
        addr: SocketAddr,
    ) -> anyhow::Result<Proc> {
        let (bin, extra): (&Path, &[&str]) = match target {
            // Hot restart shares memory between Envoys of one base id: another Envoy on this
            // machine (an e2e test) would clash with ours. It is off the data path.
            Target::Envoy => (&self.tools.envoy, &["--disable-hot-restart"]),
            Target::Petrel => match &self.petrel {
                Some(p) => (p, &[]),
                None => bail!(
                    "no petrel binary: {}",
                    self.petrel_missing.as_deref().unwrap_or("not built")
                ),
            },
            Target::Direct => bail!("direct has no proxy"),
        };
        if std::net::TcpListener::bind(addr).is_err() {
            bail!("{addr} is already in use by a process we did not start");
        }
        let mut args = vec![
            "-c".to_string(),
            config.display().to_string(),
            "--concurrency".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(tag, &mut pinned(PROXY_CPU, bin, &args), &self.logs())
    }

    /// One request through `addr` that must succeed: the target is up and forwards.
    fn probe(&self, sc: Scenario, addr: SocketAddr) -> anyhow::Result<()> {
        match sc {
            Scenario::Http1 | Scenario::TcpHttp | Scenario::Churn => http1_get(addr, "/"),
            Scenario::H2c | Scenario::Grpc => self.h2_probe(addr, sc == Scenario::Grpc),
            Scenario::TcpEcho => echo_once(addr),
            Scenario::BulkUp => std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map(drop)
                .map_err(Into::into),
            Scenario::BulkDown => read_some(addr),
        }
    }

    fn h2_probe(&self, addr: SocketAddr, grpc: bool) -> anyhow::Result<()> {
        let mut args = vec!["-n1".to_string(), "-c1".into()];
        if grpc {
            args.extend([
                "-d".into(),
                self.tools.grpc_body.display().to_string(),
                "-H".into(),
                "content-type: application/grpc".into(),
            ]);
        }
        args.push(url(addr, grpc));
        let out = crate::procs::run(
            "h2-probe",
            std::process::Command::new(&self.tools.h2load).args(&args),
            &self.logs(),
            Duration::from_secs(5),
        )?;
        let r = crate::tools::parse_h2load(&out, "")?;
        if r.requests != 1 {
            bail!("h2c probe via {addr} got no 2xx");
        }
        Ok(())
    }

    /// Applies `load` of scenario `sc` to `addr` for `secs`.
    fn apply(
        &self,
        sc: Scenario,
        load: Load,
        addr: SocketAddr,
        secs: u64,
    ) -> anyhow::Result<LoadResult> {
        let dir = self.logs();
        let t = &self.tools;
        let own = |args: &[&str]| {
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            v.extend([
                "--addr".into(),
                addr.to_string(),
                "--secs".into(),
                secs.to_string(),
            ]);
            t.loadgen(&dir, &v, secs)
        };
        match (sc, load) {
            (Scenario::Http1 | Scenario::TcpHttp, Load::Closed(c)) => {
                t.wrk(&dir, &url(addr, false), c, secs)
            }
            (Scenario::H2c, Load::Closed(c)) => t.h2load(&dir, &url(addr, false), c, secs, false),
            (Scenario::Grpc, Load::Closed(c)) => t.h2load(&dir, &url(addr, true), c, secs, true),
            (Scenario::TcpEcho, Load::Closed(c)) => own(&["echo", "--conns", &c.to_string()]),
            (Scenario::Churn, Load::Closed(c)) => own(&["churn", "--conns", &c.to_string()]),
            (Scenario::BulkUp, _) => own(&["bulk-up"]),
            (Scenario::BulkDown, _) => own(&["bulk-down"]),
            (Scenario::Http1 | Scenario::TcpHttp, Load::Rate(r)) => {
                t.oha(&dir, &url(addr, false), FIXED_RATE_CONNS, r, secs, false)
            }
            (Scenario::H2c, Load::Rate(r)) => {
                t.oha(&dir, &url(addr, false), FIXED_RATE_CONNS, r, secs, true)
            }
            (sc, load) => bail!("no {} run for {}", load.label(), sc.name()),
        }
    }

    /// [`Ctx::apply`], once more if the load tool hung: h2load occasionally never finishes a
    /// timed run when a connection was slow to establish; a second hang fails the run.
    fn apply_retry(
        &self,
        sc: Scenario,
        load: Load,
        addr: SocketAddr,
        secs: u64,
    ) -> anyhow::Result<LoadResult> {
        match self.apply(sc, load, addr, secs) {
            Err(e) if format!("{e:#}").contains("timed out after") => {
                eprintln!("  load tool hung ({e:#}); retrying once");
                self.apply(sc, load, addr, secs)
            }
            other => other,
        }
    }

    /// One measured run of one target.
    fn run_one(
        &self,
        sc: Scenario,
        load: Load,
        target: Target,
        round: u32,
    ) -> Result<Figures, Failure> {
        let tag = format!("{}-{}-{}-r{round}", target.name(), sc.name(), load.label());
        let addr = sc.addr(target);
        let mut proxy = match target {
            Target::Direct => None,
            _ => Some(
                self.start_proxy(target, &self.configs.join(sc.config()), &tag, addr)
                    .map_err(|e| Failure::Start(format!("{e:#}")))?,
            ),
        };
        wait_until(proxy.as_mut(), START_TIMEOUT, || self.probe(sc, addr))
            .map_err(|e| Failure::Start(format!("not forwarding: {e:#}")))?;
        std::thread::sleep(Duration::from_millis(200));
        let idle_rss_kib = proxy.as_ref().and_then(Proc::rss_kib);
        let run = || -> anyhow::Result<Figures> {
            if self.warmup > 0 {
                self.apply_retry(sc, load, addr, self.warmup)
                    .context("warm-up")?;
            }
            let cpu0 = proxy.as_ref().and_then(Proc::cpu_seconds);
            let core0 = cpu_busy_seconds(PROXY_CPU);
            let load = self.apply_retry(sc, load, addr, self.secs)?;
            let core1 = cpu_busy_seconds(PROXY_CPU);
            let cpu1 = proxy.as_ref().and_then(Proc::cpu_seconds);
            let peak_rss_kib = proxy.as_ref().and_then(Proc::hwm_kib);
            let cpu_s = cpu0.zip(cpu1).map(|(a, b)| b - a);
            // Whatever else ran on the proxy's core (other builds, tests): the noise of this run.
            let core_s = core0.zip(core1).map(|(a, b)| b - a);
            let foreign_pct = core_s
                .map(|c| (c - cpu_s.unwrap_or(0.0)).max(0.0) * 100.0 / load.seconds.max(1e-9));
            Ok(Figures {
                foreign_pct,
                cpu_per_10k: cpu_s
                    .filter(|_| load.requests > 0)
                    .map(|c| c * 10_000.0 / load.requests as f64),
                cpu_s,
                idle_rss_kib,
                peak_rss_kib,
                load,
            })
        };
        let figures = run().map_err(|e| Failure::Run(format!("{e:#}")))?;
        if let Some(p) = proxy.as_mut() {
            if let Some(status) = p.exited() {
                return Err(Failure::Run(format!(
                    "proxy exited during the run with {status}: {}",
                    p.stderr_tail()
                )));
            }
        }
        let l = &figures.load;
        if l.requests == 0 {
            return Err(Failure::Run(format!(
                "no successful requests ({} errors)",
                l.errors
            )));
        }
        if l.errors * 100 > l.requests + l.errors {
            return Err(Failure::Run(format!(
                "{} errors out of {} requests",
                l.errors,
                l.requests + l.errors
            )));
        }
        Ok(figures)
    }

    /// RSS of the proxy before and with `count` idle downstream connections.
    fn idle_conns(&self, target: Target, count: u32, round: u32) -> anyhow::Result<(u64, u64)> {
        let sc = Scenario::Http1;
        let addr = sc.addr(target);
        let tag = format!("{}-idle{count}-r{round}", target.name());
        let mut proxy = self.start_proxy(target, &self.configs.join(sc.config()), &tag, addr)?;
        wait_until(Some(&mut proxy), START_TIMEOUT, || self.probe(sc, addr))?;
        std::thread::sleep(Duration::from_millis(300));
        let base = proxy.rss_kib().ok_or_else(|| anyhow!("no VmRSS"))?;
        let args = [
            "loadgen",
            "hold",
            "--addr",
            &addr.to_string(),
            "--conns",
            &count.to_string(),
            "--secs",
            "300",
        ]
        .map(String::from);
        let mut holder = Proc::spawn(
            &format!("{tag}-holder"),
            &mut pinned(LOAD_CPU, &self.tools.this, &args),
            &self.logs(),
        )?;
        let stdout = holder.stdout.clone();
        let opened: serde_json::Value =
            wait_until(Some(&mut holder), Duration::from_secs(120), || {
                let text = std::fs::read_to_string(&stdout)?;
                Ok(serde_json::from_str(
                    text.lines().next().context("not yet")?,
                )?)
            })?;
        let opened = opened["opened"].as_u64().unwrap_or(0);
        if opened < u64::from(count) * 99 / 100 {
            bail!("only {opened} of {count} connections opened");
        }
        std::thread::sleep(Duration::from_secs(1));
        if let Some(status) = proxy.exited() {
            bail!("proxy exited with {status}: {}", proxy.stderr_tail());
        }
        let rss = proxy.rss_kib().ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok((base, rss))
    }

    /// Start-up time and RSS with the generated big bootstrap.
    fn clusters(&self, target: Target, count: u32, round: u32) -> anyhow::Result<(f64, u64)> {
        let config = self.out.join(format!("clusters-{count}.yaml"));
        if !config.exists() {
            std::fs::write(&config, big_bootstrap(count))?;
        }
        let addr = Scenario::Http1.addr(target);
        let tag = format!("{}-clusters{count}-r{round}", target.name());
        let t0 = Instant::now();
        let mut proxy = self.start_proxy(target, &config, &tag, addr)?;
        let last = format!("/svc{}/", count - 1);
        wait_until(Some(&mut proxy), BIG_START_TIMEOUT, || {
            http1_get(addr, &last)
        })?;
        let startup_ms = t0.elapsed().as_secs_f64() * 1e3;
        std::thread::sleep(Duration::from_secs(1));
        let rss = proxy.rss_kib().ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok((startup_ms, rss))
    }
}

/// `http://addr/` (or the gRPC method's path).
fn url(addr: SocketAddr, grpc: bool) -> String {
    format!("http://{addr}{}", if grpc { GRPC_PATH } else { "/" })
}

/// Runs the plan; `upstream` is checked after every run, and its death ends the plan.
pub fn run_plan(
    ctx: &Ctx,
    plan: &Plan,
    upstream: &mut Proc,
) -> anyhow::Result<(Vec<Record>, Vec<ExtraRecord>)> {
    let mut jobs = Vec::new();
    for &sc in &plan.scenarios {
        let mut loads: Vec<Load> = sc
            .closed_levels(&plan.levels)
            .into_iter()
            .map(Load::Closed)
            .collect();
        if sc.fixed_rate() {
            loads.extend(plan.rates.iter().map(|&r| Load::Rate(r)));
        }
        for load in loads {
            for round in 1..=plan.rounds {
                for &target in &plan.targets {
                    jobs.push((sc, load, target, round));
                }
            }
        }
    }
    let started = Instant::now();
    let mut cannot_start: HashMap<(&'static str, Target), String> = HashMap::new();
    let mut records = Vec::new();
    for (i, &(sc, load, target, round)) in jobs.iter().enumerate() {
        let key = (sc.config(), target);
        let result = match cannot_start.get(&key) {
            Some(why) => Err(format!("skipped, could not start earlier: {why}")),
            None => {
                let mut result = ctx.run_one(sc, load, target, round);
                for _ in 0..plan.noise_retries {
                    let noise = match (&result, plan.max_noise) {
                        (Ok(f), Some(max)) => f.foreign_pct.filter(|n| *n > max),
                        _ => None,
                    };
                    let Some(noise) = noise else { break };
                    eprintln!(
                        "  {} {} {}: proxy core {noise:.0}% busy with other work; again",
                        sc.name(),
                        load.label(),
                        target.name()
                    );
                    if let Ok(f) = ctx.run_one(sc, load, target, round) {
                        if f.foreign_pct.unwrap_or(0.0) < noise {
                            result = Ok(f);
                        }
                    }
                }
                result.map_err(|f| match f {
                    Failure::Start(why) => {
                        cannot_start.insert(key, why.clone());
                        why
                    }
                    Failure::Run(why) => why,
                })
            }
        };
        if let Some(status) = upstream.exited() {
            bail!(
                "the upstream exited with {status}: {}",
                upstream.stderr_tail()
            );
        }
        let mut line = format!(
            "[{}/{} {:>4.0}s] {:<9} {:<6} {:<6} round {round}: ",
            i + 1,
            jobs.len(),
            started.elapsed().as_secs_f64(),
            sc.name(),
            load.label(),
            target.name()
        );
        match &result {
            Ok(f) => {
                let _ = write!(line, "{:.0} req/s", f.load.rps);
                if let Some(g) = f.load.gbps {
                    let _ = write!(line, " {g:.2} Gbit/s");
                }
                let _ = write!(
                    line,
                    " p50 {:.0}µs p99 {:.0}µs",
                    f.load.p50_us, f.load.p99_us
                );
                if let Some(c) = f.cpu_per_10k {
                    let _ = write!(line, " cpu {c:.3}s/10k");
                }
                if let Some(n) = f.foreign_pct {
                    let _ = write!(line, " noise {n:.0}%");
                }
            }
            Err(e) => {
                let _ = write!(line, "FAILED: {}", first_chars(e, 200));
            }
        }
        eprintln!("{line}");
        let (figures, error) = match result {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        records.push(Record {
            scenario: sc,
            load,
            target,
            round,
            figures,
            error,
        });
    }
    let mut extras = Vec::new();
    let proxies: Vec<Target> = plan
        .targets
        .iter()
        .copied()
        .filter(|t| *t != Target::Direct)
        .collect();
    for round in 1..=plan.rounds {
        for &target in &proxies {
            if plan.idle_conns > 0 {
                let extra = Extra::IdleConns(plan.idle_conns);
                let r = ctx.idle_conns(target, plan.idle_conns, round);
                eprintln!(
                    "{target:?} {extra:?} round {round}: {:?}",
                    r.as_ref().map_err(|e| format!("{e:#}"))
                );
                extras.push(match r {
                    Ok((base, rss)) => ExtraRecord {
                        extra,
                        target,
                        round,
                        rss_kib: Some(rss),
                        base_rss_kib: Some(base),
                        startup_ms: None,
                        error: None,
                    },
                    Err(e) => ExtraRecord {
                        extra,
                        target,
                        round,
                        rss_kib: None,
                        base_rss_kib: None,
                        startup_ms: None,
                        error: Some(format!("{e:#}")),
                    },
                });
            }
            if plan.clusters > 0 {
                let extra = Extra::Clusters(plan.clusters);
                let r = ctx.clusters(target, plan.clusters, round);
                eprintln!(
                    "{target:?} {extra:?} round {round}: {:?}",
                    r.as_ref().map_err(|e| format!("{e:#}"))
                );
                extras.push(match r {
                    Ok((ms, rss)) => ExtraRecord {
                        extra,
                        target,
                        round,
                        rss_kib: Some(rss),
                        base_rss_kib: None,
                        startup_ms: Some(ms),
                        error: None,
                    },
                    Err(e) => ExtraRecord {
                        extra,
                        target,
                        round,
                        rss_kib: None,
                        base_rss_kib: None,
                        startup_ms: None,
                        error: Some(format!("{e:#}")),
                    },
                });
            }
        }
    }
    Ok((records, extras))
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A bootstrap with `count` static clusters and `count` routes (`/svcN/` → `svcN`), all to the
/// upstream, on the HTTP/1.1 router's listener; otherwise like `configs/http1.yaml`.
pub fn big_bootstrap(count: u32) -> String {
    let mut y = String::from(
        "# Generated by benches (compare): many clusters and routes.\n\
         static_resources:\n  listeners:\n  - name: http1\n    address:\n      socket_address: { address: 127.0.0.1, port_value: 31000 }\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: http1\n          generate_request_id: false\n          route_config:\n            name: big\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n",
    );
    for i in 0..count {
        let _ = writeln!(
            y,
            "              - {{ match: {{ prefix: \"/svc{i}/\" }}, route: {{ cluster: svc{i} }} }}"
        );
    }
    y.push_str(
        "          http_filters:\n          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n              dynamic_stats: false\n  clusters:\n",
    );
    for i in 0..count {
        let _ = writeln!(
            y,
            "  - {{ name: svc{i}, type: STATIC, connect_timeout: 1s, load_assignment: {{ cluster_name: svc{i}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_HTTP} }} }} }} }} ] }} ] }} }}"
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_bootstrap_routes_every_cluster() {
        let y = big_bootstrap(3);
        for i in 0..3 {
            assert!(y.contains(&format!(
                "prefix: \"/svc{i}/\" }}, route: {{ cluster: svc{i} }}"
            )));
            assert!(y.contains(&format!("- {{ name: svc{i}, type: STATIC")));
        }
        assert!(!y.contains("svc3"));
    }
}

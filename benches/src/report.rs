//! Medians over rounds, ratios, `RESULTS.md`, and the JSON the plot script reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::runner::{Extra, ExtraRecord, Plan, Record};
use crate::scenario::{Load, Scenario, Target, FIXED_RATE_CONNS};

/// Where and how the figures were taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// UTC date and time of the run.
    pub date: String,
    /// The command line, as typed.
    pub command: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub nproc: usize,
    /// Kernel release.
    pub kernel: String,
    /// `envoy --version`.
    pub envoy_version: String,
    /// Git revision of the workspace.
    pub petrel_rev: String,
    /// quick, full or smoke.
    pub mode: String,
    /// Measured seconds per run.
    pub secs: u64,
    /// Warm-up seconds per run.
    pub warmup: u64,
    /// The plan.
    pub plan: Plan,
}

/// Medians of one (scenario, load, target) over its successful rounds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    /// Successful rounds.
    pub ok: usize,
    /// All rounds.
    pub runs: usize,
    /// req/s.
    pub rps: Option<f64>,
    /// Gbit/s (bulk).
    pub gbps: Option<f64>,
    /// Latency percentiles, µs.
    pub p50_us: Option<f64>,
    /// p90, µs.
    pub p90_us: Option<f64>,
    /// p99, µs.
    pub p99_us: Option<f64>,
    /// p99.9, µs.
    pub p999_us: Option<f64>,
    /// Proxy CPU-s per 10,000 requests.
    pub cpu_per_10k: Option<f64>,
    /// Proxy idle RSS, KiB.
    pub idle_rss_kib: Option<f64>,
    /// Proxy peak RSS, KiB.
    pub peak_rss_kib: Option<f64>,
    /// Foreign load on the proxy core, % of the run.
    pub foreign_pct: Option<f64>,
    /// First error, when no round succeeded.
    pub error: Option<String>,
}

/// Medians of one extra figure of one proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExtraRow {
    /// RSS under the condition, KiB.
    pub rss_kib: Option<f64>,
    /// RSS before it, KiB.
    pub base_rss_kib: Option<f64>,
    /// Start-up, ms.
    pub startup_ms: Option<f64>,
    /// First error, when no round succeeded.
    pub error: Option<String>,
}

/// Everything a report is made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// Context.
    pub meta: Meta,
    /// Every run.
    pub records: Vec<Record>,
    /// Every extra measurement.
    pub extras: Vec<ExtraRecord>,
}

/// Medians, keyed for the plot script: `"scenario/load/target"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Context.
    pub meta: Meta,
    /// Scenario runs.
    pub rows: BTreeMap<String, Row>,
    /// Extras: `"extra/target"`.
    pub extras: BTreeMap<String, ExtraRow>,
}

/// Median of the present values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `scenario/load/target`.
pub fn key(sc: Scenario, load: Load, target: Target) -> String {
    format!("{}/{}/{}", sc.name(), load.label(), target.name())
}

fn extra_key(extra: Extra, target: Target) -> String {
    match extra {
        Extra::IdleConns(n) => format!("idle-conns-{n}/{}", target.name()),
        Extra::Clusters(n) => format!("clusters-{n}/{}", target.name()),
    }
}

// === impl Results ===

impl Results {
    /// Medians per (scenario, load, target) and per extra.
    pub fn summarize(&self) -> Summary {
        let mut groups: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
        for r in &self.records {
            groups
                .entry(key(r.scenario, r.load, r.target))
                .or_default()
                .push(r);
        }
        let rows = groups
            .into_iter()
            .map(|(k, recs)| {
                let ok: Vec<_> = recs.iter().filter_map(|r| r.figures.as_ref()).collect();
                let m = |f: &dyn Fn(&crate::runner::Figures) -> Option<f64>| {
                    median(ok.iter().filter_map(|x| f(x)).collect())
                };
                let row = Row {
                    ok: ok.len(),
                    runs: recs.len(),
                    rps: m(&|f| Some(f.load.rps)),
                    gbps: m(&|f| f.load.gbps),
                    p50_us: m(&|f| Some(f.load.p50_us).filter(|v| *v > 0.0)),
                    p90_us: m(&|f| Some(f.load.p90_us).filter(|v| *v > 0.0)),
                    p99_us: m(&|f| Some(f.load.p99_us).filter(|v| *v > 0.0)),
                    p999_us: m(&|f| Some(f.load.p999_us).filter(|v| *v > 0.0)),
                    cpu_per_10k: m(&|f| f.cpu_per_10k),
                    idle_rss_kib: m(&|f| f.idle_rss_kib.map(|v| v as f64)),
                    peak_rss_kib: m(&|f| f.peak_rss_kib.map(|v| v as f64)),
                    foreign_pct: m(&|f| f.foreign_pct),
                    error: if ok.is_empty() {
                        recs.iter().find_map(|r| r.error.clone())
                    } else {
                        None
                    },
                };
                (k, row)
            })
            .collect();
        let mut egroups: BTreeMap<String, Vec<&ExtraRecord>> = BTreeMap::new();
        for e in &self.extras {
            egroups
                .entry(extra_key(e.extra, e.target))
                .or_default()
                .push(e);
        }
        let extras = egroups
            .into_iter()
            .map(|(k, recs)| {
                let m = |f: &dyn Fn(&ExtraRecord) -> Option<f64>| {
                    median(recs.iter().filter_map(|r| f(r)).collect())
                };
                let row = ExtraRow {
                    rss_kib: m(&|r| r.rss_kib.map(|v| v as f64)),
                    base_rss_kib: m(&|r| r.base_rss_kib.map(|v| v as f64)),
                    startup_ms: m(&|r| r.startup_ms),
                    error: if recs.iter().all(|r| r.error.is_some()) {
                        recs.iter().find_map(|r| r.error.clone())
                    } else {
                        None
                    },
                };
                (k, row)
            })
            .collect();
        Summary {
            meta: self.meta.clone(),
            rows,
            extras,
        }
    }

    /// Scenario/load/target groups (and extras) without any successful round.
    pub fn missing(&self) -> Vec<String> {
        let s = self.summarize();
        let mut out: Vec<String> = s
            .rows
            .iter()
            .filter(|(_, r)| r.ok == 0)
            .map(|(k, r)| format!("{k}: {}", r.error.as_deref().unwrap_or("no figures")))
            .collect();
        out.extend(
            s.extras
                .iter()
                .filter(|(_, r)| r.error.is_some())
                .map(|(k, r)| format!("{k}: {}", r.error.as_deref().unwrap_or(""))),
        );
        out
    }
}

// === impl Summary ===

impl Summary {
    fn row(&self, sc: Scenario, load: Load, t: Target) -> Option<&Row> {
        self.rows.get(&key(sc, load, t))
    }

    fn targets(&self) -> Vec<Target> {
        self.meta.plan.targets.clone()
    }

    fn proxies(&self) -> Vec<Target> {
        self.targets()
            .into_iter()
            .filter(|t| *t != Target::Direct)
            .collect()
    }

    /// The loads of a scenario present in the results, in plan order.
    fn loads(&self, sc: Scenario, closed: bool) -> Vec<Load> {
        let plan = &self.meta.plan;
        if closed {
            sc.closed_levels(&plan.levels)
                .into_iter()
                .map(Load::Closed)
                .collect()
        } else if sc.fixed_rate() {
            plan.rates.iter().map(|&r| Load::Rate(r)).collect()
        } else {
            Vec::new()
        }
    }

    /// RESULTS.md.
    pub fn markdown(&self) -> String {
        let m = &self.meta;
        let mut md = String::new();
        let _ = writeln!(md, "# Petrel vs Envoy: benchmark results\n");
        let _ = writeln!(
            md,
            "Generated by the harness in `benches/` ({} mode) on {}. Reproduce with:\n\n```\n{}\n```\n",
            m.mode, m.date, m.command
        );
        let _ = writeln!(md, "## Machine and settings\n");
        let _ = writeln!(md, "- CPU: {} ({} online CPUs)", m.cpu_model, m.nproc);
        let _ = writeln!(md, "- Kernel: {}", m.kernel);
        let _ = writeln!(md, "- Envoy: `{}`", m.envoy_version);
        let _ = writeln!(md, "- Petrel: workspace revision `{}`", m.petrel_rev);
        let _ = writeln!(
            md,
            "- Each run: fresh proxy process, {} s warm-up, then {} s measured; {} round(s), \
             targets interleaved within each round; figures are medians over rounds.",
            m.warmup, m.secs, m.plan.rounds
        );
        let _ = writeln!(
            md,
            "- Proxy alone on CPU 1 with one worker (`--concurrency 1`); load generator and \
             upstream (one thread) on CPU 0. Loopback only."
        );
        let noise = |all: bool| -> Vec<f64> {
            self.rows
                .iter()
                .filter(|(k, _)| !k.ends_with("/direct"))
                .filter(|(_, r)| all || r.ok > 0)
                .filter_map(|(_, r)| r.foreign_pct)
                .collect()
        };
        if let Some(med) = median(noise(false)) {
            let worst = noise(true).into_iter().fold(0.0, f64::max);
            let _ = writeln!(
                md,
                "- Noise: other processes kept the proxy's core busy {med:.1}% of the time in the \
                 median proxy run, {worst:.1}% in the worst (from /proc/stat; the `noise %` column). \
                 Figures from runs above a few percent are suspect: rerun on a quiet machine."
            );
        }
        if let Some(max) = m.plan.max_noise {
            let _ = writeln!(
                md,
                "- Runs with more than {max}% noise were repeated up to {} times; the least noisy \
                 attempt was kept.",
                m.plan.noise_retries
            );
        }
        md.push('\n');
        self.closed_tables(&mut md);
        self.rate_table(&mut md);
        self.extras_table(&mut md);
        self.failures(&mut md);
        md.push_str(METHOD);
        md
    }

    fn closed_tables(&self, md: &mut String) {
        let targets = self.targets();
        let proxies = self.proxies();
        let has = |t: Target| targets.contains(&t);
        let _ = writeln!(md, "## Closed-loop throughput\n");
        let _ = writeln!(md, "req/s (bulk: Gbit/s). Ratios compare medians.\n");
        let mut head = String::from("| scenario | conns |");
        for t in &targets {
            let _ = write!(head, " {} |", t.title());
        }
        let ratios: Vec<(Target, Target)> = [
            (Target::Petrel, Target::Envoy),
            (Target::Envoy, Target::Direct),
            (Target::Petrel, Target::Direct),
        ]
        .into_iter()
        .filter(|(a, b)| has(*a) && has(*b))
        .collect();
        for (a, b) in &ratios {
            let _ = write!(head, " {}/{} |", a.title(), b.title());
        }
        head.push_str(" noise % |");
        let _ = writeln!(md, "{head}");
        let _ = writeln!(md, "|{}", "---|".repeat(3 + targets.len() + ratios.len()));
        let tput = |r: Option<&Row>, bulk: bool| -> Option<f64> {
            r.and_then(|r| if bulk { r.gbps } else { r.rps })
        };
        for sc in Scenario::ALL {
            for load in self.loads(sc, true) {
                if targets.iter().all(|t| self.row(sc, load, *t).is_none()) {
                    continue;
                }
                let Load::Closed(c) = load else { continue };
                let mut line = format!("| {} | {c} |", sc.title());
                for t in &targets {
                    let r = self.row(sc, load, *t);
                    let _ = write!(line, " {} |", cell(r, tput(r, sc.is_bulk()), sc.is_bulk()));
                }
                for (a, b) in &ratios {
                    let x = tput(self.row(sc, load, *a), sc.is_bulk());
                    let y = tput(self.row(sc, load, *b), sc.is_bulk());
                    let _ = write!(line, " {} |", ratio(x, y));
                }
                // A direct run leaves CPU 1 idle, so others' work there costs it nothing:
                // only the proxies' noise matters (direct's when there is no proxy).
                let noisy: Vec<Target> = if proxies.is_empty() {
                    targets.clone()
                } else {
                    proxies.clone()
                };
                let noise = noisy
                    .iter()
                    .filter_map(|t| self.row(sc, load, *t)?.foreign_pct)
                    .reduce(f64::max);
                let _ = write!(
                    line,
                    " {} |",
                    noise.map_or("—".into(), |n| format!("{n:.0}"))
                );
                let _ = writeln!(md, "{line}");
            }
        }
        let _ = writeln!(md, "\n## Closed-loop latency\n");
        let _ = writeln!(md, "µs, p50 / p99 / p99.9 (bulk: none).\n");
        let mut head = String::from("| scenario | conns |");
        for t in &targets {
            let _ = write!(head, " {} |", t.title());
        }
        let _ = writeln!(md, "{head}\n|{}", "---|".repeat(2 + targets.len()));
        for sc in Scenario::ALL.into_iter().filter(|s| !s.is_bulk()) {
            for load in self.loads(sc, true) {
                let Load::Closed(c) = load else { continue };
                if targets.iter().all(|t| self.row(sc, load, *t).is_none()) {
                    continue;
                }
                let mut line = format!("| {} | {c} |", sc.title());
                for t in &targets {
                    let _ = write!(line, " {} |", pcts(self.row(sc, load, *t)));
                }
                let _ = writeln!(md, "{line}");
            }
        }
        if proxies.is_empty() {
            return;
        }
        let _ = writeln!(md, "\n## Proxy CPU and memory per run\n");
        let _ = writeln!(
            md,
            "CPU-seconds (user + system, /proc/PID/stat) per 10,000 requests (bulk: per 10,000 \
             64 KiB chunks); RSS in MiB, idle after start-up / peak (VmHWM) at the end of the run.\n"
        );
        let mut head = String::from("| scenario | load |");
        for t in &proxies {
            let _ = write!(head, " {} CPU-s/10k |", t.title());
        }
        let cpu_ratio = has(Target::Petrel) && has(Target::Envoy);
        if cpu_ratio {
            head.push_str(" Petrel/Envoy CPU |");
        }
        for t in &proxies {
            let _ = write!(head, " {} RSS idle / peak |", t.title());
        }
        let cols = 2 + proxies.len() * 2 + usize::from(cpu_ratio);
        let _ = writeln!(md, "{head}\n|{}", "---|".repeat(cols));
        for sc in Scenario::ALL {
            let loads = self
                .loads(sc, true)
                .into_iter()
                .chain(self.loads(sc, false));
            for load in loads {
                if proxies.iter().all(|t| self.row(sc, load, *t).is_none()) {
                    continue;
                }
                let mut line = format!("| {} | {} |", sc.title(), load_title(load));
                for t in &proxies {
                    let r = self.row(sc, load, *t);
                    let _ = write!(line, " {} |", cell(r, r.and_then(|r| r.cpu_per_10k), true));
                }
                if cpu_ratio {
                    let c = |t| self.row(sc, load, t).and_then(|r| r.cpu_per_10k);
                    let _ = write!(line, " {} |", ratio(c(Target::Petrel), c(Target::Envoy)));
                }
                for t in &proxies {
                    let r = self.row(sc, load, *t);
                    let v = r.and_then(|r| Some((r.idle_rss_kib?, r.peak_rss_kib?)));
                    let _ = write!(
                        line,
                        " {} |",
                        match (r, v) {
                            (Some(r), _) if r.ok == 0 => "failed".to_string(),
                            (_, Some((i, p))) => format!("{:.1} / {:.1}", i / 1024.0, p / 1024.0),
                            _ => "—".to_string(),
                        }
                    );
                }
                let _ = writeln!(md, "{line}");
            }
        }
        md.push('\n');
    }

    fn rate_table(&self, md: &mut String) {
        let targets = self.targets();
        if self.meta.plan.rates.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Fixed-rate latency\n");
        let _ = writeln!(
            md,
            "oha at a fixed rate over {FIXED_RATE_CONNS} connections, latency corrected for \
             coordinated omission; µs, p50 / p99 / p99.9. \"added p50\" is the proxy's p50 minus \
             direct's.\n"
        );
        let mut head = String::from("| scenario | rate |");
        for t in &targets {
            let _ = write!(head, " {} |", t.title());
        }
        let proxies = self.proxies();
        let with_direct = targets.contains(&Target::Direct);
        if with_direct {
            for t in &proxies {
                let _ = write!(head, " {} added p50 |", t.title());
            }
        }
        let both = proxies.len() == 2;
        if both {
            head.push_str(" Petrel/Envoy p99 |");
        }
        let cols =
            2 + targets.len() + if with_direct { proxies.len() } else { 0 } + usize::from(both);
        let _ = writeln!(md, "{head}\n|{}", "---|".repeat(cols));
        for sc in Scenario::ALL {
            for load in self.loads(sc, false) {
                if targets.iter().all(|t| self.row(sc, load, *t).is_none()) {
                    continue;
                }
                let mut line = format!("| {} | {} |", sc.title(), load_title(load));
                for t in &targets {
                    let _ = write!(line, " {} |", pcts(self.row(sc, load, *t)));
                }
                let p50 = |t| self.row(sc, load, t).and_then(|r| r.p50_us);
                if with_direct {
                    for t in &proxies {
                        let added = p50(*t).zip(p50(Target::Direct)).map(|(a, b)| a - b);
                        let _ = write!(
                            line,
                            " {} |",
                            added.map_or("—".into(), |v| format!("{v:.0}"))
                        );
                    }
                }
                if both {
                    let p99 = |t| self.row(sc, load, t).and_then(|r| r.p99_us);
                    let _ = write!(
                        line,
                        " {} |",
                        ratio(p99(Target::Petrel), p99(Target::Envoy))
                    );
                }
                let _ = writeln!(md, "{line}");
            }
        }
        md.push('\n');
    }

    fn extras_table(&self, md: &mut String) {
        let proxies = self.proxies();
        if proxies.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Memory and start-up\n");
        let mut head = String::from("| figure |");
        for t in &proxies {
            let _ = write!(head, " {} |", t.title());
        }
        let both = proxies.len() == 2;
        if both {
            head.push_str(" Petrel/Envoy |");
        }
        let _ = writeln!(
            md,
            "{head}\n|{}",
            "---|".repeat(1 + proxies.len() + usize::from(both))
        );
        let mut line = |name: String, vals: Vec<Option<f64>>, digits: usize| {
            let mut l = format!("| {name} |");
            for v in &vals {
                let _ = write!(
                    l,
                    " {} |",
                    v.map_or("—".into(), |v| format!("{v:.digits$}"))
                );
            }
            if both {
                let _ = write!(l, " {} |", ratio(vals[1], vals[0]));
            }
            let _ = writeln!(md, "{l}");
        };
        // Idle RSS: median over every run's idle figure for that proxy.
        let idle: Vec<Option<f64>> = proxies
            .iter()
            .map(|t| {
                median(
                    self.rows
                        .iter()
                        .filter(|(k, _)| k.ends_with(&format!("/{}", t.name())))
                        .filter_map(|(_, r)| r.idle_rss_kib)
                        .collect(),
                )
                .map(|k| k / 1024.0)
            })
            .collect();
        line("idle RSS, MiB (median over all runs)".into(), idle, 1);
        let plan = &self.meta.plan;
        let extra = |e: Extra, f: &dyn Fn(&ExtraRow) -> Option<f64>| -> Vec<Option<f64>> {
            proxies
                .iter()
                .map(|t| self.extras.get(&extra_key(e, *t)).and_then(f))
                .collect()
        };
        if plan.idle_conns > 0 {
            let e = Extra::IdleConns(plan.idle_conns);
            line(
                format!(
                    "RSS with {} idle downstream connections, MiB",
                    plan.idle_conns
                ),
                extra(e, &|r| r.rss_kib.map(|k| k / 1024.0)),
                1,
            );
            line(
                format!(
                    "added by {} idle connections, KiB per connection",
                    plan.idle_conns
                ),
                extra(e, &|r| {
                    Some((r.rss_kib? - r.base_rss_kib?) / f64::from(plan.idle_conns))
                }),
                2,
            );
        }
        if plan.clusters > 0 {
            let e = Extra::Clusters(plan.clusters);
            line(
                format!("RSS with {0} clusters / {0} routes, MiB", plan.clusters),
                extra(e, &|r| r.rss_kib.map(|k| k / 1024.0)),
                1,
            );
            line(
                format!(
                    "start-up to first routed 200 with {} clusters, ms",
                    plan.clusters
                ),
                extra(e, &|r| r.startup_ms),
                0,
            );
        }
        md.push('\n');
    }

    fn failures(&self, md: &mut String) {
        let failed: Vec<String> =
            self.rows
                .iter()
                .filter(|(_, r)| r.ok < r.runs)
                .map(|(k, r)| {
                    format!(
                        "- `{k}`: {} of {} rounds failed{}",
                        r.runs - r.ok,
                        r.runs,
                        r.error
                            .as_deref()
                            .map(|e| format!(": {}", one_line(e)))
                            .unwrap_or_default()
                    )
                })
                .chain(self.extras.iter().filter_map(|(k, r)| {
                    Some(format!("- `{k}`: {}", one_line(r.error.as_deref()?)))
                }))
                .collect();
        if failed.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Failures\n");
        for f in failed {
            let _ = writeln!(md, "{f}");
        }
        md.push('\n');
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace(['\n', '|'], " ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

fn load_title(load: Load) -> String {
    match load {
        Load::Closed(c) => format!("{c} conns"),
        Load::Rate(r) => format!("{r} req/s"),
    }
}

/// A figure, "failed" when no round succeeded, "—" when not run.
fn cell(r: Option<&Row>, v: Option<f64>, precise: bool) -> String {
    match (r, v) {
        (Some(r), _) if r.ok == 0 => "failed".into(),
        (_, Some(v)) if precise => format!("{v:.3}"),
        (_, Some(v)) => format!("{v:.0}"),
        _ => "—".into(),
    }
}

fn pcts(r: Option<&Row>) -> String {
    match r {
        Some(r) if r.ok == 0 => "failed".into(),
        Some(r) => match (r.p50_us, r.p99_us, r.p999_us) {
            (Some(a), Some(b), Some(c)) => format!("{a:.0} / {b:.0} / {c:.0}"),
            _ => "—".into(),
        },
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

const METHOD: &str = r#"## Method

- **Same bootstrap.** Both proxies run the files in `benches/configs/` with `-c FILE --concurrency 1`
  (Envoy also gets `--disable-hot-restart`, which only avoids shared-memory clashes with other
  Envoys on the machine). Configured per Envoy's "best practices for benchmarking" FAQ: circuit
  breakers lifted, `generate_request_id: false`, router `dynamic_stats: false`, no access log.
  Stats stay on (no `reject_all`): both proxies keep doing the accounting they do in production.
- **Upstream.** `benches/src/upstream.rs`: hyper 1 on one thread, HTTP/1.1 and h2c on one port
  (20-byte body), gRPC unary echo with `grpc-status` trailers, TCP echo, bulk sink and source.
- **Load.** HTTP/1.1: wrk (1 thread; percentiles from a Lua `done` hook). h2c and gRPC: h2load
  (1 thread, one stream in flight per connection; percentiles from `--log-file`). Fixed rate: oha
  `-q RATE --latency-correction`. TCP echo (64 B ping-pong), bulk (one connection, 64 KiB
  writes/reads) and churn (new connection per request, `Connection: close`): the harness's own
  single-threaded generator (`compare loadgen`).
- **Runs.** Per run: start the proxy, prove it forwards (one request), record idle RSS, warm up,
  then measure while reading `/proc/PID/stat` before and after. A run with no success or more than
  1% errors (non-2xx, resets, timeouts) counts as failed.
- **Reading the figures.** At 1 connection, and at low fixed rates, every request crosses
  between the two cores four times and waits for an idle vCPU to wake each time; on the VM this
  harness was written on that costs ~190 µs per request (Envoy at 1 connection: 4,400 req/s pinned
  to the other core, 17,400 req/s on the load core), for any proxy. Connection churn through a
  proxy can beat direct: the proxy takes connection set-up off the upstream's core and reuses
  pooled upstream connections.
- **Plots** (`benches/plots/`): throughput per scenario, fixed-rate latency percentiles, CPU per
  request, memory; drawn by `benches/plot.py` with matplotlib from `summary.json`.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn ratio_needs_both_sides() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(None, Some(2.0)), "—");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "—");
    }
}

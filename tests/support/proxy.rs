//! Running a proxy (Envoy or Petrel) on a bootstrap.
//!
//! A bootstrap is a template: the support library fills `{{admin_port}}`, every
//! `{{port:NAME}}` (one fresh loopback port per distinct NAME) and `{{dir}}` (the proxy's private
//! temp dir, for access logs and unix sockets) before writing it to that dir, so each test gets its own ports and tests can run in parallel. Fill test-owned values
//! such as upstream ports first with [`render`]. Both kinds get the same command line:
//! `-c <file> --concurrency 1 --disable-hot-restart --use-dynamic-base-id [-l $E2E_LOG_LEVEL]
//! <extra>` — Petrel must accept Envoy's flags as a drop-in.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::StatusCode;

use crate::admin::{Admin, Stats};
use crate::bins::ProxyKind;
use crate::ports::free_port;

/// How long a proxy may take to report `/ready` 200. Long on purpose: a debug build on a loaded
/// 2-core CI machine, next to other test binaries, can take many seconds.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// How many log lines to print when a test fails.
const LOG_TAIL_LINES: usize = 200;

/// Where a proxy runs: by default on the host's loopback.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Run inside this named network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// The IP the bootstrap binds the admin listener to (`{{admin_port}}` is still filled).
    pub admin_ip: Ipv4Addr,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            netns: None,
            admin_ip: Ipv4Addr::LOCALHOST,
        }
    }
}

/// A running proxy process. Killed (by its own PID) when dropped; on a failing test its log
/// tail is printed and its temp dir kept.
pub struct Proxy {
    kind: ProxyKind,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    config: PathBuf,
    admin: Admin,
    ports: BTreeMap<String, u16>,
}

// === impl Proxy ===

impl Proxy {
    /// Writes `bootstrap` (after filling `{{admin_port}}` and `{{port:NAME}}`), starts `kind` on
    /// it with `extra_args`, and waits for admin `/ready` to answer 200.
    pub async fn start(
        kind: ProxyKind,
        bootstrap: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(kind, bootstrap, extra_args, &Placement::default()).await
    }

    /// Like [`start`](Self::start), but inside a network namespace and/or with the admin
    /// listener on another IP (the bootstrap must bind it there).
    pub async fn start_with(
        kind: ProxyKind,
        bootstrap: &str,
        extra_args: &[&str],
        placement: &Placement,
    ) -> anyhow::Result<Self> {
        Self::start_in(kind, bootstrap, &[], &[], extra_args, placement).await
    }

    /// Like [`start_with`](Self::start_with), with `wrapper` (a command that execs the binary
    /// in place, e.g. `["setpriv", "--reuid", "1337", ...]`) before the binary and
    /// `before_config` between the binary and `-c <file>` (e.g. `["run", "--capture", ...,
    /// "--"]` for `petrel run`). The child PID stays the proxy's.
    pub async fn start_in(
        kind: ProxyKind,
        bootstrap: &str,
        wrapper: &[&str],
        before_config: &[&str],
        extra_args: &[&str],
        placement: &Placement,
    ) -> anyhow::Result<Self> {
        let bin = kind.binary().map_err(anyhow::Error::msg)?;
        let dir = temp_dir(kind)?;
        let admin_port = free_port();
        let mut ports = BTreeMap::new();
        let yaml = fill_ports(bootstrap, admin_port, &dir, &mut ports)?;
        let config = dir.join("bootstrap.yaml");
        fs::write(&config, &yaml)?;
        let log = dir.join("proxy.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;

        let mut cmd = match &placement.netns {
            // `ip netns exec` execs the proxy in place, so the child PID is the proxy's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(wrapper).arg(&bin);
                c
            }
            None => match wrapper.split_first() {
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg(&bin);
                    c
                }
                None => Command::new(&bin),
            },
        };
        cmd.args(before_config)
            .arg("-c")
            .arg(&config)
            .args(base_args());
        // E2E_LOG_LEVEL=debug turns up both proxies' logs for a failing run.
        if let Ok(level) = std::env::var("E2E_LOG_LEVEL") {
            cmd.args(["-l", &level]);
        }
        cmd.args(extra_args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        tracing::info!(%kind, bin = %bin.display(), config = %config.display(), ?ports, admin_port, "starting proxy");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut proxy = Proxy {
            kind,
            child: Some(child),
            dir,
            log,
            config,
            admin: Admin::new(SocketAddr::from((placement.admin_ip, admin_port))),
            ports,
        };
        proxy.wait_ready().await?;
        tracing::info!(%kind, pid = proxy.pid(), "proxy ready");
        Ok(proxy)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(status) = self.try_wait()? {
                anyhow::bail!(
                    "{} exited with {status} before becoming ready\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            let last = match self.admin.ready().await {
                Ok(StatusCode::OK) => return Ok(()),
                Ok(s) => format!("/ready answered {s}"),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > START_DEADLINE {
                anyhow::bail!(
                    "{} not ready after {START_DEADLINE:?} ({last})\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Which proxy this is.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The admin client.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The port chosen for `{{port:NAME}}`. Panics on an unknown name (a test bug).
    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("bootstrap has no {{{{port:{name}}}}}"))
    }

    /// `127.0.0.1:<port(name)>`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port(name)))
    }

    /// Envoy's stat prefix for the listener on `{{port:NAME}}` bound to 127.0.0.1:
    /// `listener.127.0.0.1_<port>`.
    pub fn listener_stat_prefix(&self, name: &str) -> String {
        format!("listener.127.0.0.1_{}", self.port(name))
    }

    /// Child PID (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The proxy's private temp dir (`{{dir}}` in the bootstrap).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bootstrap file as written.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "----- {} log ({}), last {} lines -----\n{}\n----- end of {} log -----",
            self.kind,
            self.log.display(),
            lines.len() - from,
            lines[from..].join("\n"),
            self.kind
        )
    }

    /// Shortcut for `admin().stats()`.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.admin.stats().await
    }

    /// Shortcut for `admin().stat(name)`.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        self.admin.stat(name).await
    }

    /// Shortcut for `admin().wait_for_stat(name, pred)`.
    pub async fn wait_for_stat(
        &self,
        name: &str,
        pred: impl Fn(u64) -> bool + Sync,
    ) -> anyhow::Result<u64> {
        self.admin.wait_for_stat(name, pred).await
    }

    /// Sends a signal (`"TERM"`, `"INT"`, ...) to this proxy's own PID.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("proxy already reaped")?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{sig} {pid} failed: {status}");
        Ok(())
    }

    /// Non-blocking check whether the process has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => anyhow::bail!("proxy already reaped"),
        }
    }

    /// Waits (polling) up to `deadline` for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= until {
                anyhow::bail!("{} still running after {deadline:?}", self.kind);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Kill our own child by PID; never by name.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
            eprintln!("kept {} for inspection", self.dir.display());
        } else {
            // The scenario may still fail with an `Err` after this drop; keep the tail so the
            // runner can show it (see `take_recent_logs`).
            let tail = self.log_tail();
            RECENT_LOGS.with(|r| r.borrow_mut().push(tail));
            if std::env::var_os("E2E_KEEP_TMP").is_none() {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }
}

thread_local! {
    /// Log tails of proxies dropped on this (test) thread without a panic.
    static RECENT_LOGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Takes the log tails of proxies that were dropped on this thread since the last call. A
/// scenario that fails by returning `Err` has already dropped its proxy; the runner prints these.
pub fn take_recent_logs() -> Vec<String> {
    RECENT_LOGS.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Flags passed to both proxies before the test's own.
fn base_args() -> [&'static str; 4] {
    [
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--use-dynamic-base-id",
    ]
}

/// Runs `kind --mode validate -c <bootstrap>` and returns its output (status, stdout, stderr).
pub async fn validate(kind: ProxyKind, bootstrap: &str) -> anyhow::Result<Output> {
    let bin = kind.binary().map_err(anyhow::Error::msg)?;
    let dir = temp_dir(kind)?;
    let mut ports = BTreeMap::new();
    let yaml = fill_ports(bootstrap, free_port(), &dir, &mut ports)?;
    let config = dir.join("bootstrap.yaml");
    fs::write(&config, yaml)?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["--mode", "validate", "-c"])
        .arg(&config)
        .args(base_args())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(START_DEADLINE, cmd.output())
        .await
        .context("--mode validate did not finish")??;
    let _ = fs::remove_dir_all(&dir);
    Ok(out)
}

/// Runs `kind` with exactly `args` (no base flags, no bootstrap) until it exits, e.g.
/// `["--version"]` or an unknown flag. Fails if it is still running after [`START_DEADLINE`].
pub async fn run_cli(kind: ProxyKind, args: &[&str]) -> anyhow::Result<Output> {
    let bin = kind.binary().map_err(anyhow::Error::msg)?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(START_DEADLINE, cmd.output())
        .await
        .with_context(|| format!("{kind} {args:?} did not exit"))?
        .with_context(|| format!("running {}", bin.display()))
}

/// Replaces each `{{key}}` in `template` with its value; other placeholders stay.
pub fn render(template: &str, vars: &[(&str, &dyn Display)]) -> String {
    vars.iter().fold(template.to_owned(), |acc, (k, v)| {
        acc.replace(&format!("{{{{{k}}}}}"), &v.to_string())
    })
}

/// Fills `{{admin_port}}`, `{{port:NAME}}` and `{{dir}}`; any other placeholder is a test bug.
fn fill_ports(
    template: &str,
    admin_port: u16,
    dir: &Path,
    ports: &mut BTreeMap<String, u16>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("unterminated placeholder at {:?}", &rest[start..]))?;
        let key = rest[start + 2..start + end].trim();
        if key == "dir" {
            out.push_str(&dir.display().to_string());
        } else if key == "admin_port" {
            out.push_str(&admin_port.to_string());
        } else if let Some(name) = key.strip_prefix("port:") {
            let port = *ports.entry(name.to_owned()).or_insert_with(free_port);
            out.push_str(&port.to_string());
        } else {
            anyhow::bail!("unfilled placeholder {{{{{key}}}}} in bootstrap (use render() first)");
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A fresh directory under `$TMPDIR/petrel-e2e`, named after the running test.
fn temp_dir(kind: ProxyKind) -> anyhow::Result<PathBuf> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let test = std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-")
        .replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_",
        );
    let dir = std::env::temp_dir().join("petrel-e2e").join(format!(
        "{test}-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

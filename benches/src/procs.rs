//! Child processes that cannot outlive their owner, and the /proc figures read from them.
//!
//! Every child writes stdout and stderr to files (never to pipes, so a chatty child cannot block
//! on a full pipe while we wait for it), is waited for with a deadline, and is killed by its PID
//! when its [`Proc`] is dropped: on success, on error and on panic alike.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// PIDs of the children alive now, for [`kill_all`] on a signal.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Clock ticks per second of /proc/PID/stat's utime and stime (`getconf CLK_TCK`; 100 on every
/// Linux architecture we run on).
pub const CLK_TCK: f64 = 100.0;

/// A running child process.
pub struct Proc {
    /// What the logs and errors call it.
    pub name: String,
    /// Its PID (after `exec` chains such as `sh -c 'exec taskset … prog'`, still the same PID).
    pub pid: u32,
    /// File receiving its stdout.
    pub stdout: PathBuf,
    /// File receiving its stderr.
    pub stderr: PathBuf,
    child: Child,
}

// === impl Proc ===

impl Proc {
    /// Spawns `cmd` with stdin closed and output to `<dir>/<name>.{out,err}`.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> anyhow::Result<Self> {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        live().push(child.id());
        Ok(Self {
            name: name.to_string(),
            pid: child.id(),
            stdout,
            stderr,
            child,
        })
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for exit; past `timeout` the child is killed and this fails.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} timed out after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a successful exit and returns stdout; fails with the stderr tail otherwise.
    pub fn output(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let status = self.wait(timeout)?;
        if !status.success() {
            bail!("{} exited with {status}: {}", self.name, self.stderr_tail());
        }
        Ok(std::fs::read_to_string(&self.stdout)?)
    }

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr, 400)
    }

    /// Kills the child by PID and reaps it.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        live().retain(|&p| p != self.pid);
    }

    /// utime + stime of the whole process (all threads), in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmRSS:")
    }

    /// Peak resident set size over the process's life, KiB.
    pub fn hwm_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    // A panic while holding the lock leaves a valid Vec: keep using it.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every child still alive (SIGKILL, by PID). For signal handlers: the normal path
/// kills each child when its [`Proc`] is dropped.
pub fn kill_all() {
    for pid in live().drain(..) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// On SIGINT or SIGTERM: kill every child, then exit with 130.
pub fn kill_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("signal: killing children");
        kill_all();
        std::process::exit(130);
    });
}

/// The last `max` bytes of a file, on one line.
pub fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().replace('\n', " | ")
}

/// utime + stime from /proc/PID/stat, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fixed fields follow its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

/// Busy time (everything but idle and iowait) of one CPU since boot, from /proc/stat, seconds.
pub fn cpu_busy_seconds(cpu: u32) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let prefix = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&prefix))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / CLK_TCK)
}

/// A `Vm*:` line of /proc/PID/status, KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a command to completion within `timeout`, returning stdout.
pub fn run(name: &str, cmd: &mut Command, dir: &Path, timeout: Duration) -> anyhow::Result<String> {
    Proc::spawn(name, cmd, dir)?.output(timeout)
}

/// `cmd` wrapped so that it runs on `cpu` with a raised descriptor limit:
/// `sh -c 'ulimit -n …; exec taskset -c CPU prog args…'`. Both `sh` and `taskset` exec, so the
/// PID of the returned command is the PID of `prog`.
pub fn pinned(cpu: u32, prog: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(concat!(
            "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; ",
            "cpu=$1; shift; exec taskset -c \"$cpu\" \"$@\""
        ))
        .arg("sh")
        .arg(cpu.to_string())
        .arg(prog)
        .args(args);
    cmd
}

/// Waits until `check` succeeds, failing early if `proc` exits.
pub fn wait_until<T>(
    proc: Option<&mut Proc>,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut proc = proc;
    loop {
        let err = match check() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Some(p) = proc.as_deref_mut() {
            if let Some(status) = p.exited() {
                return Err(anyhow!(
                    "{} exited with {status}: {}",
                    p.name,
                    p.stderr_tail()
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(err.context(format!("not ready after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

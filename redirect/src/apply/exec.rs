//! Running the firewall tools: finding binaries, feeding scripts on stdin, mapping failures.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::RedirectError;

/// Where firewall tools live even when `PATH` lacks the sbin directories (non-login shells,
/// minimal containers).
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"];

/// Finds `name` on `PATH` or in the sbin directories.
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `program args`, with `stdin` fed in if given, and returns stdout.
pub(crate) fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, RedirectError> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let io_err = |source| RedirectError::Io {
        context: format!("running `{command}`"),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(io_err)?;
    }
    let out = child.wait_with_output().map_err(io_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("_tables_names") && lower.contains("permission denied") {
        return Err(RedirectError::LegacyNeedsRoot { command, stderr });
    }
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        return Err(RedirectError::MissingPrivileges {
            action: format!("run `{command}` ({stderr})"),
        });
    }
    Err(RedirectError::CommandFailed {
        command,
        status: out.status.to_string(),
        stderr,
    })
}

/// Whether this process has `CAP_NET_ADMIN` in its effective set (root normally has it).
/// Read from `/proc/self/status`, so no `unsafe` is needed; `None` if that cannot be read.
pub(crate) fn has_net_admin() -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

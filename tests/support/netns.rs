//! Network namespaces for privileged tests (iptables REDIRECT + `SO_ORIGINAL_DST`).
//!
//! [`NetNs::create`] makes a fresh named namespace joined to the host by a veth pair with a /30:
//! the host end is `x.x.x.1`, the namespace end `x.x.x.2`. Traffic the test sends from the host to
//! the namespace end crosses the veth and so passes the namespace's `PREROUTING` chain, where
//! tests install REDIRECT rules; the proxy's own connections inside the namespace use `OUTPUT` and
//! are left alone. Needs root (CI has it); without it `create` returns the reason to skip.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;

/// A named network namespace plus veth pair; deleted on drop.
pub struct NetNs {
    name: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    ns_if: String,
}

// === impl NetNs ===

impl NetNs {
    /// Creates the namespace, or explains why it cannot (not root, no `ip`, ...).
    pub fn create() -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("petrel-e2e-{pid}-{n}");
        // Interface names are limited to 15 bytes.
        let tag = format!("{:x}", (pid % 0xffff) * 16 + (n % 16));
        let (host_if, ns_if) = (format!("pe{tag}h"), format!("pe{tag}n"));
        // A /30 per namespace in 10.201.0.0/16, spread by pid and counter.
        let idx = (pid.wrapping_mul(31).wrapping_add(n)) % 16384;
        let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + idx * 4;
        let (host_ip, ns_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));

        run(&["ip", "netns", "add", &name])
            .map_err(|e| format!("cannot create a network namespace ({e:#}); needs root"))?;
        let ns = NetNs {
            name,
            host_ip,
            ns_ip,
            ns_if: ns_if.clone(),
        };
        let setup = || -> anyhow::Result<()> {
            run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns",
                &ns.name,
            ])?;
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_if,
            ])?;
            run(&["ip", "link", "set", &host_if, "up"])?;
            run(&[
                "ip",
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_if,
            ])?;
            run(&["ip", "-n", &ns.name, "link", "set", &ns_if, "up"])?;
            Ok(())
        };
        setup().map_err(|e| format!("cannot set up veth for {}: {e:#}", ns.name))?;
        Ok(ns)
    }

    /// Namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end of the veth.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace end of the veth.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// The namespace's veth interface name (for `iptables -i`).
    pub fn ns_if(&self) -> &str {
        &self.ns_if
    }

    /// Runs a command inside the namespace to completion; fails on a non-zero exit.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts a long-running command inside the namespace (output discarded). The caller owns
    /// the child and must kill it.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the host end.
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// A child process killed (by its own PID) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

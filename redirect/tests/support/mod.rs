//! Helpers of the privileged namespace tests (`tests/netns.rs`): namespaces, the child
//! process roles, servers and clients.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redirect::original_dst;
use socket2::{Domain, Socket, Type};

pub const ROLE: &str = "PETREL_NETNS_ROLE";
pub const ARGS: &str = "PETREL_NETNS_ARGS";
pub const LISTEN: &str = "PETREL_NETNS_LISTEN";
pub const EXPECT: &str = "PETREL_NETNS_EXPECT";

/// The tests share the xtables lock and two cores: run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

// === child side ===

/// Listens on every address of `PETREL_NETNS_LISTEN`, prints `LISTENING`, then for each of
/// `PETREL_NETNS_EXPECT` connections prints `ACCEPT <listener> <original dst or none>`.
pub fn serve() {
    let listeners: Vec<(bool, Socket)> = std::env::var(LISTEN)
        .unwrap_or_default()
        .split(',')
        .map(|a| {
            let (udp, a) = match a.strip_prefix("udp:") {
                Some(rest) => (true, rest),
                None => (false, a),
            };
            let (transparent, a) = match a.strip_prefix("tproxy:") {
                Some(rest) => (true, rest),
                None => (false, a),
            };
            let addr: SocketAddr = a.parse().expect("listen address");
            let ty = if udp { Type::DGRAM } else { Type::STREAM };
            let sock = Socket::new(Domain::for_address(addr), ty, None).expect("socket");
            if addr.is_ipv6() {
                // Separate v4 and v6 listeners on the same port.
                sock.set_only_v6(true).expect("IPV6_V6ONLY");
            }
            if transparent {
                // A TPROXY listener accepts connections to addresses that are not its own.
                let r = if addr.is_ipv6() {
                    sock.set_ip_transparent_v6(true)
                } else {
                    sock.set_ip_transparent_v4(true)
                };
                r.expect("IP_TRANSPARENT");
            }
            sock.set_reuse_address(true).expect("SO_REUSEADDR");
            sock.bind(&addr.into()).expect("bind");
            if !udp {
                sock.listen(16).expect("listen");
            }
            sock.set_nonblocking(true).expect("nonblocking");
            (udp, sock)
        })
        .collect();
    let expect: usize = std::env::var(EXPECT)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    println!("LISTENING");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut accepted = 0;
    while accepted < expect && Instant::now() < deadline {
        for (udp, sock) in &listeners {
            let local = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .expect("local addr");
            if *udp {
                let mut buf = [std::mem::MaybeUninit::new(0u8); 512];
                if sock.recv_from(&mut buf).is_ok() {
                    println!("UDP {local}");
                    accepted += 1;
                }
            } else if let Ok((stream, _)) = sock.accept() {
                let stream = TcpStream::from(stream);
                // REDIRECT: conntrack knows the original destination. TPROXY: nothing was
                // rewritten, the accepted socket's local address is the destination.
                let orig = original_dst(&stream)
                    .map(|o| o.0)
                    .or_else(|_| stream.local_addr())
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "none".into());
                println!("ACCEPT {local} {orig}");
                accepted += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("SERVE_DONE {accepted}");
}

// === parent side ===

/// A network namespace owned by a test, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("petrel-{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(cmd);
        sh(&full)
    }

    pub fn try_exec_env(&self, cmd: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .envs(env.iter().copied())
            .output()
            .expect("spawn ip netns exec")
    }

    pub fn try_exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .expect("spawn ip netns exec")
    }

    /// Runs `petrel redirect FLAGS` inside the namespace.
    pub fn redirect(&self, flags: &[&str]) {
        self.run_role(self.child("redirect"), flags);
    }

    pub fn run_role(&self, mut child: Command, flags: &[&str]) {
        let out = child
            .env(ARGS, flags.join("\x1f"))
            .output()
            .expect("spawn child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("REDIRECT_OK"),
            "petrel redirect {flags:?} failed in {}:\n{stdout}\n{}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn child(&self, role: &str) -> Command {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0])
            .arg(exe)
            .args([
                "netns_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn has(bin: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {bin} || test -x /usr/sbin/{bin}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `None` if the tests can run; otherwise the reason to skip.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    // CAP_NET_ADMIN (12) for the rules, CAP_SYS_ADMIN (21) for `ip netns add`.
    if caps & (1 << 12) == 0 || caps & (1 << 21) == 0 {
        return Some(
            "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces".into(),
        );
    }
    for t in ["ip", "setpriv", "timeout", "bash"].iter().chain(tools) {
        if !has(t) {
            return Some(format!("`{t}` is not installed"));
        }
    }
    let probe = format!("petrel-probe-{}", std::process::id());
    if !Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("`ip netns add` failed (no namespace support in this sandbox)".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

#[macro_export]
macro_rules! require {
    ($($tool:expr),*) => {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        if let Some(reason) = $crate::support::skip_reason(&[$($tool),*]) {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

/// `iptables-save` of both families, without comments and counters.
pub fn saved(ns: &Netns, variant: &str) -> String {
    let mut out = String::new();
    for base in ["iptables", "ip6tables"] {
        let text = ns.exec(&[&format!("{base}-{variant}-save")]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.find(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Rules that are not ours, present before Petrel runs: they must survive untouched.
pub fn add_foreign_rules(ns: &Netns, variant: &str) {
    for base in ["iptables", "ip6tables"] {
        let bin = format!("{base}-{variant}");
        ns.exec(&[
            &bin, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN",
        ]);
        ns.exec(&[
            &bin,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "9998",
            "-j",
            "ACCEPT",
        ]);
        ns.exec(&[
            &bin,
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "9997",
            "-j",
            "RETURN",
        ]);
        ns.exec(&[
            &bin, "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9997", "-j", "RETURN",
        ]);
        ns.exec(&[
            &bin, "-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "9996", "-j", "RETURN",
        ]);
        ns.exec(&[
            &bin,
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "9996",
            "-j",
            "RETURN",
        ]);
        ns.exec(&[&bin, "-t", "nat", "-N", "FOREIGN"]);
    }
}

/// Two namespaces joined by a veth pair: `app` (10.77.0.1, fd77::1) where the rules and the
/// proxy's listeners are, and `peer` (10.77.0.2, fd77::2).
pub fn topology(tag: &str) -> (Netns, Netns) {
    let app = Netns::new(&format!("{tag}-app"));
    let peer = Netns::new(&format!("{tag}-peer"));
    app.exec(&[
        "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &peer.0,
    ]);
    for (ns, dev, v4, v6) in [
        (&app, "va", "10.77.0.1/24", "fd77::1/64"),
        (&peer, "vb", "10.77.0.2/24", "fd77::2/64"),
    ] {
        ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
        ns.exec(&["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
    (app, peer)
}

/// Starts `serve` in `ns`, returns once it listens; `finish` collects its `ACCEPT` lines.
pub struct Server {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Server {
    pub fn start(ns: &Netns, listen: &str, expect: usize) -> Self {
        let mut child = ns
            .child("serve")
            .env(LISTEN, listen)
            .env(EXPECT, expect.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.ends_with("LISTENING"));
        assert!(
            listening,
            "server in {} did not start listening on {listen}",
            ns.0
        );
        Self { child, lines }
    }

    pub fn finish(mut self) -> Vec<String> {
        let accepted: Vec<String> = self
            .lines
            .by_ref()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("ACCEPT ") || l.starts_with("UDP "))
            .collect();
        let _ = self.child.wait();
        accepted
    }
}

/// Connects from `ns` (optionally as `uid`) to `addr` with bash's /dev/tcp, bounded by 5s.
pub fn connect(ns: &Netns, host: &str, port: u16, uid: Option<u32>) -> bool {
    send(ns, "tcp", host, port, uid)
}

/// Connects from `ns` as `uid` to `host:port` from source address `src` (the system python3:
/// bash cannot bind a source), bounded by 5s.
pub fn connect_from(ns: &Netns, src: &str, host: &str, port: u16, uid: u32) -> bool {
    let script = format!(
        "import socket; a = socket.getaddrinfo({host:?}, {port})[0]; \
         s = socket.socket(a[0], socket.SOCK_STREAM); s.bind(({src:?}, 0)); \
         s.settimeout(5); s.connect(a[4]); s.sendall(b'hi')"
    );
    let uid = uid.to_string();
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = ns.try_exec(&[
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &uid,
        "--clear-groups",
        python,
        "-c",
        &script,
    ]);
    if !out.status.success() {
        eprintln!("connect_from: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// Sends one datagram from `ns` (optionally as `uid`) to `host:port`.
pub fn send_udp(ns: &Netns, host: &str, port: u16, uid: Option<u32>) -> bool {
    send(ns, "udp", host, port, uid)
}

fn send(ns: &Netns, proto: &str, host: &str, port: u16, uid: Option<u32>) -> bool {
    let script = format!("exec 3<>/dev/{proto}/{host}/{port} && echo hi >&3");
    let uid_s = uid.map(|u| u.to_string()).unwrap_or_default();
    let mut cmd: Vec<&str> = Vec::new();
    if uid.is_some() {
        cmd.extend([
            "setpriv",
            "--reuid",
            &uid_s,
            "--regid",
            &uid_s,
            "--clear-groups",
        ]);
    }
    cmd.extend(["timeout", "5", "bash", "-c", &script]);
    ns.try_exec(&cmd).status.success()
}

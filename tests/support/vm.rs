//! Capture scenarios across several network namespaces: a "VM" (or pod) where the proxy runs
//! and a "service" namespace joined to it by a veth, with servers, a fake DNS resolver and
//! clients that run as processes inside them.
//!
//! The test process itself stays in the host namespace: it reaches the proxy's admin listener
//! over the [`NetNs`](crate::netns::NetNs) host veth and observes everything else through files
//! the helper processes write (request logs, DNS query logs, readiness markers), so it needs no
//! `setns` and no `unsafe`.
//!
//! - [`Topology`]: the proxy's namespace (a [`NetNs`], host veth for admin) plus a service
//!   [`PeerNs`], with a default route into it and a private capture state directory.
//! - [`PeerNs`]: a namespace joined to an existing one by a veth /30 (no host end); deleted on
//!   drop.
//! - [`ResolvConf`]: `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` bind-mounts.
//! - [`HttpServer`]: a Python HTTP/1.1 server that names itself and logs every request.
//! - [`DnsServer`]: a Python UDP+TCP DNS server answering a fixed A record, logging queries.
//! - [`TcpLineServer`], [`tcp_line_as`]: a raw TCP line protocol (no HTTP), server and an
//!   unmodified client that resolves names through the system resolver.
//! - [`curl_as`], [`run_as`]: an unmodified `curl` (or any command) inside a namespace as
//!   [`CLIENT_UID`].
//! - [`ruleset`], [`host_state`]: a namespace's `iptables-save`/`ip6tables-save`/`nft list
//!   ruleset`, and its `lo` addresses and policy routing, for before/after comparisons.
//! - [`skip_reason`]: why a privileged scenario cannot run here (not root, a tool missing).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{KillOnDrop, NetNs};
use crate::proxy::Placement;
use crate::wait;

/// The UID/GID test clients run as: anything but the proxy's (root), so capture applies.
pub const CLIENT_UID: u32 = 65534;

/// How long one client command may take (connect + DNS + response) before it counts as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why privileged capture scenarios cannot run here, or `None` if they can.
pub fn skip_reason() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "needs root for namespaces and iptables (running as uid {})",
            uid.as_deref().unwrap_or("unknown")
        ));
    }
    for tool in [
        "ip",
        "iptables",
        "iptables-save",
        "nft",
        "curl",
        "dig",
        "getent",
        "setpriv",
        "python3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The /30 between the proxy's namespace (`.1`) and the service namespace (`.2`) of a
/// [`Topology`]. Both ends live in namespaces the test creates, so it cannot collide.
const SVC_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);

/// An unprivileged proxy user (Istio's 1337): scenarios run `petrel run` as this user with
/// `CAP_NET_ADMIN`/`CAP_NET_RAW` as ambient capabilities, as a systemd unit with `User=` and
/// `AmbientCapabilities=` would.
pub const PROXY_USER: u32 = 1337;

/// The proxy's namespace (host veth for admin only) plus the service namespace, with a default
/// route from the proxy's namespace into the service namespace (so VIPs and capture addresses
/// are routable, as on a real host).
pub struct Topology {
    // Field order is drop order: the service namespace's veth peer lives in `app`.
    /// The service namespace (upstreams, the resolver).
    pub svc: PeerNs,
    /// The proxy's namespace ("app" or "VM").
    pub app: NetNs,
}

// === impl Topology ===

impl Topology {
    /// Creates both namespaces, or says why this host cannot (`Err`, a skip reason); the inner
    /// result is a setup failure.
    pub fn create() -> Result<anyhow::Result<Self>, String> {
        if let Some(why) = skip_reason() {
            return Err(why);
        }
        let app = NetNs::create()?;
        Ok((|| {
            let svc = PeerNs::create(app.name(), SVC_SUBNET)?;
            app.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &svc.ip().to_string(),
            ])?;
            let topo = Topology { svc, app };
            std::fs::create_dir_all(topo.state_dir())?;
            std::os::unix::fs::chown(topo.state_dir(), Some(PROXY_USER), Some(PROXY_USER))?;
            Ok(topo)
        })())
    }

    /// Runs a proxy in the proxy's namespace, admin on its host-veth address.
    pub fn placement(&self) -> Placement {
        Placement {
            netns: Some(self.app.name().to_owned()),
            admin_ip: self.app.ns_ip(),
        }
    }

    /// The proxy namespace's address on the service link.
    pub fn app_ip(&self) -> Ipv4Addr {
        self.svc.peer_ip()
    }

    /// A private directory for the state file, writable by [`PROXY_USER`] too.
    pub fn state_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
            .join("petrel-e2e")
            .join(format!("{}-capture-state", self.app.name()))
    }

    /// A private state file for `petrel redirect`/`run` (never the shared default path).
    pub fn state_file(&self) -> String {
        self.state_dir().join("capture.state").display().to_string()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.state_dir());
    }
}

/// A namespace joined to `peer` (an existing namespace) by a veth /30: `peer_ip` on the peer's
/// end, `ip` on ours. Deleted on drop, with its `/etc/netns/<name>` directory.
pub struct PeerNs {
    name: String,
    ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
    peer_if: String,
    etc_dir: PathBuf,
}

// === impl PeerNs ===

impl PeerNs {
    /// Creates the namespace and the veth to `peer`. Both ends get `subnet.1` (peer) and
    /// `subnet.2` (ours) of the /30 starting at `subnet`.
    pub fn create(peer: &str, subnet: Ipv4Addr) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("petrel-svc-{pid}-{n}");
        // Interface names are limited to 15 bytes; these live only inside our namespaces.
        let (peer_if, our_if) = (format!("ps{n}p"), format!("ps{n}s"));
        let base = u32::from(subnet);
        let (peer_ip, ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        run(&["ip", "netns", "add", &name])?;
        let ns = PeerNs {
            etc_dir: Path::new("/etc/netns").join(&name),
            name,
            ip,
            peer_ip,
            peer_if: peer_if.clone(),
        };
        let n = ns.name.as_str();
        run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "-n", n, "link", "add", &our_if, "type", "veth", "peer", "name", &peer_if,
            "netns", peer,
        ])?;
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            &our_if,
        ])?;
        run(&["ip", "-n", n, "link", "set", &our_if, "up"])?;
        run(&[
            "ip",
            "-n",
            peer,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &peer_if,
        ])?;
        run(&["ip", "-n", peer, "link", "set", &peer_if, "up"])?;
        Ok(ns)
    }

    /// Namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Our end of the veth.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The peer namespace's end of the veth.
    pub fn peer_ip(&self) -> Ipv4Addr {
        self.peer_ip
    }

    /// The peer namespace's veth interface.
    pub fn peer_if(&self) -> &str {
        &self.peer_if
    }

    /// Runs a command inside this namespace to completion; fails on a non-zero exit.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        exec_in(&self.name, args)
    }
}

impl Drop for PeerNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys both ends of the veth.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.etc_dir);
    }
}

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec <ns>` bind-mounts over
/// `/etc/resolv.conf`; removed (with the directory) on drop.
pub struct ResolvConf {
    dir: PathBuf,
}

// === impl ResolvConf ===

impl ResolvConf {
    /// Writes `contents` as the namespace's resolv.conf.
    pub fn write(ns: &str, contents: &str) -> anyhow::Result<Self> {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let guard = ResolvConf { dir };
        std::fs::write(guard.dir.join("resolv.conf"), contents)?;
        Ok(guard)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A helper process (Python) in a namespace with a private directory for its files; killed by
/// its own PID and its directory removed on drop.
struct Helper {
    child: KillOnDrop,
    dir: PathBuf,
}

impl Helper {
    /// Starts `python3 -c script args...` in `ns` and waits until it created `<dir>/ready`.
    async fn start(ns: &str, tag: &str, script: &str, args: &[&str]) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir()
            .join("petrel-e2e")
            .join(format!("{ns}-{tag}-{}", N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let err = std::fs::File::create(dir.join("stderr"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", script])
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {tag} in {ns}"))?;
        let mut helper = Helper {
            child: KillOnDrop(child),
            dir,
        };
        let ready = helper.dir.join("ready");
        let stderr = helper.dir.join("stderr");
        let child = &mut helper.child.0;
        wait::wait_until(&format!("{tag} in {ns} to start"), wait::DEADLINE, || {
            let done = ready.exists() || child.try_wait().ok().flatten().is_some();
            async move { done }
        })
        .await?;
        anyhow::ensure!(
            ready.exists(),
            "{tag} in {ns} exited: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        Ok(helper)
    }

    /// Lines of `<dir>/log`.
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Serves every GET with a JSON body naming the server, the path, the Host and the peer
/// address, and logs that body as one line per request. argv: dir name ip port.
const HTTP_SERVER_PY: &str = r#"
import http.server, json, os, socketserver, sys
d, name, ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"upstream": name, "path": self.path, "host": self.headers.get("Host"),
                           "peer": self.client_address[0]}).encode()
        with open(os.path.join(d, "log"), "a") as f:
            f.write(body.decode() + "\n")
        self.send_response(200)
        self.send_header("x-upstream-name", name)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
srv = S((ip, port), H)
open(os.path.join(d, "ready"), "w").close()
srv.serve_forever()
"#;

/// A Python HTTP/1.1 server in a namespace that names itself and logs each request.
pub struct HttpServer {
    helper: Helper,
    name: String,
}

/// One request as the [`HttpServer`] saw it (also the JSON body it answered with).
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// The server's name.
    pub upstream: String,
    /// Request path.
    pub path: String,
    /// `Host` header.
    pub host: Option<String>,
    /// The peer's IP address.
    pub peer: String,
}

// === impl HttpServer ===

impl HttpServer {
    /// Starts a server named `name` on `ip:port` inside `ns` and waits until it listens.
    pub async fn start(ns: &str, name: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let helper = Helper::start(
            ns,
            &format!("http-{name}"),
            HTTP_SERVER_PY,
            &[name, &ip.to_string(), &port.to_string()],
        )
        .await?;
        Ok(Self {
            helper,
            name: name.to_owned(),
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every request served so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.helper
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A line protocol over raw TCP (no HTTP anywhere): for each connection, reads one line and
/// answers `<name> <line> <peer address>`, logging `<peer> <line>`. argv: dir name ip port.
const TCP_LINE_SERVER_PY: &str = r#"
import os, socketserver, sys, threading
d, name, ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lock = threading.Lock()
class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode("utf-8", "replace").strip()
        peer = self.client_address[0]
        with lock, open(os.path.join(d, "log"), "a") as f:
            f.write("%s %s\n" % (peer, line))
        self.wfile.write(("%s %s %s\n" % (name, line, peer)).encode())
class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
srv = S((ip, port), H)
open(os.path.join(d, "ready"), "w").close()
srv.serve_forever()
"#;

/// A raw TCP server in a namespace speaking [`TCP_LINE_SERVER_PY`]'s line protocol.
pub struct TcpLineServer {
    helper: Helper,
}

// === impl TcpLineServer ===

impl TcpLineServer {
    /// Starts a server named `name` on `ip:port` inside `ns` and waits until it listens.
    pub async fn start(ns: &str, name: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let helper = Helper::start(
            ns,
            &format!("tcp-{name}"),
            TCP_LINE_SERVER_PY,
            &[name, &ip.to_string(), &port.to_string()],
        )
        .await?;
        Ok(Self { helper })
    }

    /// Every connection served so far as `(peer address, line)`.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.helper
            .log_lines()
            .iter()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, l)| (p.to_owned(), l.to_owned()))
            .collect()
    }
}

/// The client side of the line protocol, as an unmodified program would do it: resolve the
/// name with the system resolver (`getaddrinfo`, so `/etc/resolv.conf`), connect, send one
/// line, print `<address connected to>\t<reply line>` (the reply empty if the connection was
/// closed or reset without one). argv: host port line.
const TCP_LINE_CLIENT_PY: &str = r#"
import socket, sys
host, port, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=20)
peer = s.getpeername()[0]
s.sendall(line.encode() + b"\n")
buf = b""
try:
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
except ConnectionResetError:
    pass
print("%s\t%s" % (peer, buf.decode("utf-8", "replace").strip()))
"#;

/// A Python interpreter [`CLIENT_UID`] may run: the system one, not a per-user shim (pyenv
/// puts `python3` under `/root`, which `nobody` cannot enter).
fn client_python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
}

/// What [`tcp_line_as`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLineReply {
    /// The address the client connected to (what the name resolved to).
    pub remote_ip: String,
    /// The server's reply line (`<name> <line> <peer>`), empty if the connection closed first.
    pub reply: String,
}

/// Connects to `host:port` from inside `ns` as [`CLIENT_UID`] with a Python client resolving
/// `host` through the namespace's resolver, sends `line` and returns the reply.
pub async fn tcp_line_as(
    ns: &str,
    host: &str,
    port: u16,
    line: &str,
) -> anyhow::Result<TcpLineReply> {
    let port = port.to_string();
    let out = run_as(
        ns,
        &[client_python(), "-c", TCP_LINE_CLIENT_PY, host, &port, line],
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "tcp client {host}:{port} in {ns}: {}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let (remote_ip, reply) = stdout
        .trim_end_matches('\n')
        .split_once('\t')
        .with_context(|| format!("tcp client output {stdout:?}"))?;
    Ok(TcpLineReply {
        remote_ip: remote_ip.to_owned(),
        reply: reply.to_owned(),
    })
}

/// A minimal authoritative DNS server over UDP and TCP: `A <name>` → the fixed address, any
/// other type for that name → NOERROR without answers, `A big.example.` → [`BIG_ANSWERS`]
/// addresses `10.99.0.k` (too large for 512-byte UDP, sent whole anyway, as a resolver answering
/// an EDNS query would), every other name → NXDOMAIN. Logs `<name> <qtype>` per query.
/// argv: dir ip name address.
const DNS_SERVER_PY: &str = r#"
import os, socket, struct, sys, threading
d, ip, owned, addr = sys.argv[1], sys.argv[2], sys.argv[3].lower(), sys.argv[4]
lock = threading.Lock()
BIG = %BIG%
def answer(q):
    tid, flags = struct.unpack(">HH", q[:4])
    i, labels = 12, []
    while q[i] != 0:
        n = q[i]; labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace")); i += 1 + n
    qtype, _ = struct.unpack(">HH", q[i + 1:i + 5])
    question = q[12:i + 5]
    name = ".".join(labels).lower() + "."
    with lock, open(os.path.join(d, "log"), "a") as f:
        f.write("%s %d\n" % (name, qtype))
    hdr = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080
    if name == "big.example." and qtype == 1:
        rrs = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + bytes([10, 99, 0, k])
                       for k in range(1, BIG + 1))
        return struct.pack(">HHHHHH", tid, hdr, 1, BIG, 0, 0) + question + rrs
    if name != owned:
        return struct.pack(">HHHHHH", tid, hdr | 3, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack(">HHHHHH", tid, hdr, 1, 0, 0, 0) + question
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(addr)
    return struct.pack(">HHHHHH", tid, hdr, 1, 1, 0, 0) + question + rr
def recv_exact(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b
def tcp_conn(c):
    try:
        while True:
            (n,) = struct.unpack(">H", recv_exact(c, 2))
            r = answer(recv_exact(c, n))
            c.sendall(struct.pack(">H", len(r)) + r)
    except Exception:
        pass
    finally:
        c.close()
def tcp_loop(t):
    while True:
        c, _ = t.accept()
        threading.Thread(target=tcp_conn, args=(c,), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, 53))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, 53)); t.listen(16)
threading.Thread(target=tcp_loop, args=(t,), daemon=True).start()
open(os.path.join(d, "ready"), "w").close()
while True:
    q, peer = u.recvfrom(4096)
    try:
        u.sendto(answer(q), peer)
    except Exception:
        pass
"#;

/// How many A records [`DnsServer`] answers for `big.example.`: 60 × 16 bytes > 512.
pub const BIG_ANSWERS: u8 = 60;

/// A fake upstream resolver in a namespace (see [`DNS_SERVER_PY`]).
pub struct DnsServer {
    helper: Helper,
}

// === impl DnsServer ===

impl DnsServer {
    /// Serves `ip:53` in `ns`, answering `A owned` (a FQDN with the trailing dot) with `addr`.
    pub async fn start(
        ns: &str,
        ip: Ipv4Addr,
        owned: &str,
        addr: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let helper = Helper::start(
            ns,
            "dns",
            &DNS_SERVER_PY.replace("%BIG%", &BIG_ANSWERS.to_string()),
            &[&ip.to_string(), owned, &addr.to_string()],
        )
        .await?;
        Ok(Self { helper })
    }

    /// Every query received so far as `(name, qtype)`, names lower-case with a trailing dot.
    pub fn queries(&self) -> Vec<(String, u16)> {
        self.helper
            .log_lines()
            .iter()
            .filter_map(|l| {
                let (name, t) = l.split_once(' ')?;
                Some((name.to_owned(), t.parse().ok()?))
            })
            .collect()
    }
}

/// What `curl` got: status, headers (names lower-case) and body.
#[derive(Clone, Debug)]
pub struct CurlReply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers in order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
    /// The address curl connected to (`%{remote_ip}`).
    pub remote_ip: String,
}

// === impl CurlReply ===

impl CurlReply {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as the [`HttpServer`]'s JSON.
    pub fn seen(&self) -> anyhow::Result<Seen> {
        serde_json::from_str(&self.body).with_context(|| format!("body {:?}", self.body))
    }
}

/// Runs `args` inside `ns` as [`CLIENT_UID`] to completion and returns its output, whatever
/// the exit status.
pub async fn run_as(ns: &str, args: &[&str]) -> anyhow::Result<Output> {
    let uid = CLIENT_UID.to_string();
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args([
        "netns", "exec", ns, "setpriv", "--reuid", &uid, "--regid", &uid,
    ])
    .arg("--clear-groups")
    .args(args)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    tokio::time::timeout(CLIENT_TIMEOUT + Duration::from_secs(10), cmd.output())
        .await
        .with_context(|| format!("{args:?} in {ns} did not finish"))?
        .with_context(|| format!("running {args:?} in {ns}"))
}

/// Runs an unmodified `curl <url>` inside `ns` as [`CLIENT_UID`] (resolving names through the
/// namespace's `/etc/resolv.conf`) and parses the response. An error carries curl's message.
pub async fn curl_as(ns: &str, url: &str) -> anyhow::Result<CurlReply> {
    let uid = CLIENT_UID.to_string();
    let secs = CLIENT_TIMEOUT.as_secs().to_string();
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args([
        "netns", "exec", ns, "setpriv", "--reuid", &uid, "--regid", &uid,
    ])
    .args(["--clear-groups", "curl", "-sS", "--max-time", &secs])
    // `-i`, not `-D /dev/stderr`: curl 7.88 segfaults opening /dev/stderr after setpriv.
    .args(["-i", "-w", "\n%{remote_ip}", url])
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_TIMEOUT + Duration::from_secs(10), cmd.output())
        .await
        .with_context(|| format!("curl {url} in {ns} did not finish"))??;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "curl {url} in {ns} as uid {uid}: {}: {}",
        out.status,
        stderr.trim()
    );
    // Status line and headers, a blank line, the body, then `-w`'s remote IP.
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, rest) = stdout
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header block in {stdout:?}"))?;
    let (body, remote_ip) = rest.rsplit_once('\n').unwrap_or((rest, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {stdout:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(CurlReply {
        status,
        headers,
        body: body.to_owned(),
        remote_ip: remote_ip.trim().to_owned(),
    })
}

/// The namespace's firewall state as text: `iptables-save`, `ip6tables-save` (comment lines
/// with dates and versions dropped) and `nft list ruleset`, with packet counters zeroed.
pub fn ruleset(ns: &str) -> anyhow::Result<String> {
    // nft prints a counter on every iptables-nft rule: `counter packets 4 bytes 240`.
    let nft_counter = regex::Regex::new(r"counter packets \d+ bytes \d+").expect("valid regex");
    let mut out = String::new();
    for (label, args) in [
        ("iptables-save", &["iptables-save"][..]),
        ("ip6tables-save", &["ip6tables-save"][..]),
        ("nft", &["nft", "list", "ruleset"][..]),
    ] {
        let o = exec_in(ns, args)?;
        out.push_str(&format!("### {label}\n"));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if line.starts_with('#') {
                continue;
            }
            // Chain policies carry packet counters: `:OUTPUT ACCEPT [12:720]`.
            let line = match line.rsplit_once(" [") {
                Some((head, _)) if line.starts_with(':') => format!("{head} [0:0]"),
                _ => nft_counter
                    .replace_all(line, "counter packets 0 bytes 0")
                    .into_owned(),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The namespace's host state capture may change besides rules: addresses on `lo` (`::6`,
/// `127.0.0.6`), policy routing rules and routes of every table (TPROXY); link-local lines
/// left out.
pub fn host_state(ns: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    for args in [
        &["ip", "-o", "addr", "show", "dev", "lo"][..],
        &["ip", "rule"][..],
        &["ip", "-6", "rule"][..],
        &["ip", "route", "show", "table", "all"][..],
        &["ip", "-6", "route", "show", "table", "all"][..],
    ] {
        let o = exec_in(ns, args)?;
        out.push_str(&format!("### {}\n", args.join(" ")));
        // Link-local addresses appear whenever the veths finish DAD: not ours to compare.
        for line in String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains("fe80:"))
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Runs `args` inside namespace `ns` to completion; fails on a non-zero exit.
pub fn exec_in(ns: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
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

/// The `Key=Value` assignments of a systemd unit file by section, as systemd reads them:
/// comment lines (`#`, `;`) dropped, lines ending in `\` joined with the next.
#[derive(Debug, Default)]
pub struct UnitFile {
    entries: Vec<(String, String, String)>,
}

// === impl UnitFile ===

impl UnitFile {
    /// Parses the unit's text.
    pub fn parse(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let full = std::mem::take(&mut pending) + line;
            if let Some(name) = full.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((k, v)) = full.split_once('=') {
                entries.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Self { entries }
    }

    /// Every value of `key` in `section`, in file order.
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }
}

/// systemd's `EnvironmentFile=` syntax: `KEY=VALUE` lines, `#`/`;` comments, one pair of
/// surrounding quotes removed from the value.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
                .unwrap_or(v);
            (k.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// An `Exec*=` command line as systemd runs it (systemd.service(5), "Command lines"): the
/// `@ - : + !` prefixes stripped, words split at whitespace with `"…"`/`'…'` quoting, `$VAR`
/// standing alone expanded to the value split at whitespace (zero or more words), `${VAR}`
/// replaced in place within a word, `$$` a literal `$`. Unknown variables expand to nothing.
pub fn exec_argv(line: &str, env: &[(String, String)]) -> anyhow::Result<Vec<String>> {
    let var = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let line = line.trim_start_matches(['@', '-', ':', '+', '!']);
    // Words with quoting; a word that was a bare `$NAME` is marked for splitting.
    let mut words: Vec<(String, bool)> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let (mut word, mut quoted) = (String::new(), false);
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '"' | '\'' => {
                    quoted = true;
                    loop {
                        match chars.next() {
                            Some(q) if q == c => break,
                            Some(x) => word.push(x),
                            None => anyhow::bail!("unterminated quote in {line:?}"),
                        }
                    }
                }
                _ => word.push(c),
            }
        }
        words.push((word, quoted));
    }
    let mut argv = Vec::new();
    for (word, quoted) in words {
        let bare = word.strip_prefix('$').filter(|n| {
            !quoted && !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if let Some(name) = bare {
            argv.extend(var(name).split_whitespace().map(str::to_owned));
            continue;
        }
        let mut out = String::new();
        let mut rest = word.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .with_context(|| format!("unterminated ${{ in {word:?}"))?;
                out.push_str(&var(&r[..end]));
                rest = &r[end + 1..];
            } else {
                out.push('$');
            }
        }
        out.push_str(rest);
        argv.push(out);
    }
    Ok(argv)
}

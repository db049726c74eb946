//! The mesh DNS against a real client and a fake upstream resolver, both on loopback.
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::info;

use super::*;
use crate::stats::Stats;

/// How long to wait before deciding a packet got no answer.
const DROPPED: Duration = Duration::from_millis(300);

fn init() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug")
        .try_init();
}

/// What the fake upstream saw and how it behaves.
#[derive(Default)]
struct Upstream {
    /// Raw queries received (UDP and TCP).
    seen: Mutex<Vec<Vec<u8>>>,
}

/// Starts a fake resolver on loopback (UDP and TCP, same port). Names:
/// `example.com` A 93.184.216.34; `big.example.com` 40 TXT records (~2.4 KB); `stingy.example.com`
/// like `big` but truncated over UDP whatever the client's buffer; `slow.example.com` never
/// answered; `fail.example.com` SERVFAIL; anything else NXDOMAIN.
async fn fake_upstream() -> (SocketAddr, Arc<Upstream>) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let state = Arc::new(Upstream::default());
    let st = state.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            st.seen.lock().unwrap().push(buf[..n].to_vec());
            let Some((resp, stingy)) = upstream_answer(&buf[..n]) else {
                continue;
            };
            let limit = if stingy {
                512
            } else {
                Message::from_vec(&buf[..n]).unwrap().max_payload() as usize
            };
            let bytes = resp.to_vec().unwrap();
            let bytes = if bytes.len() > limit {
                resp.truncate().to_vec().unwrap()
            } else {
                bytes
            };
            udp.send_to(&bytes, peer).await.unwrap();
        }
    });
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let st = st.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut q).await.unwrap();
                st.seen.lock().unwrap().push(q.clone());
                if let Some((resp, _)) = upstream_answer(&q) {
                    let b = resp.to_vec().unwrap();
                    s.write_all(&(b.len() as u16).to_be_bytes()).await.unwrap();
                    s.write_all(&b).await.unwrap();
                }
            });
        }
    });
    (addr, state)
}

fn upstream_answer(q: &[u8]) -> Option<(Message, bool)> {
    let q = Message::from_vec(q).ok()?;
    let query = q.queries().first()?.clone();
    let name = query.name().to_lowercase().to_ascii();
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true);
    r.add_query(query.clone());
    if let Some(e) = q.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload());
        r.set_edns(edns);
    }
    let mut stingy = false;
    match name.as_str() {
        "example.com." => {
            r.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::A(A::new(93, 184, 216, 34)),
            ));
        }
        "stingy.example.com." | "big.example.com." => {
            stingy = name.starts_with("stingy");
            for i in 0..40 {
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::TXT(TXT::new(vec![format!("{i:02}-{}", "x".repeat(40))])),
                ));
            }
        }
        "slow.example.com." => return None,
        "fail.example.com." => {
            r.set_response_code(ResponseCode::ServFail);
        }
        _ => {
            r.set_response_code(ResponseCode::NXDomain);
        }
    }
    Some((r, stingy))
}

struct Harness {
    addr: SocketAddr,
    stats: Stats,
    names: Arc<ArcSwap<MeshNames>>,
}

async fn start(upstreams: Vec<SocketAddr>) -> Harness {
    let ctx = NameContext {
        namespace: Some("default".into()),
        search: vec!["vm.example.com".into()],
        ndots: 1,
    };
    let entries = [
        MeshName::from_cluster("outbound|9080||reviews.default.svc.cluster.local", &ctx).unwrap(),
        MeshName::new("v6only.mesh", NameSource::Static)
            .unwrap()
            .with_addrs(["fd00::7".parse().unwrap()]),
    ];
    let names = Arc::new(ArcSwap::from_pointee(MeshNames::build(
        entries,
        CaptureCidr::default(),
    )));
    let stats = Stats::default();
    let cfg = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams,
        upstream_timeout: Duration::from_millis(300),
        ttl: DEFAULT_LOCAL_TTL,
    };
    let server = DnsServer::bind(cfg, names.clone(), &stats).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    Harness { addr, stats, names }
}

fn query(name: &str, ty: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new();
    m.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

async fn udp(server: SocketAddr, q: &Message) -> (Message, usize) {
    let raw = udp_raw(server, &q.to_vec().unwrap(), Duration::from_secs(3))
        .await
        .expect("an answer");
    (Message::from_vec(&raw).unwrap(), raw.len())
}

async fn tcp(server: SocketAddr, q: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let b = q.to_vec().unwrap();
    s.write_all(&(b.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&b).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut r).await.unwrap();
    Message::from_vec(&r).unwrap()
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn counter(h: &Harness, name: &str) -> u64 {
    h.stats.counter(name).get()
}

#[tokio::test]
async fn mesh_names_are_answered_locally_over_udp_and_tcp() {
    init();
    let (up, seen) = fake_upstream().await;
    let h = start(vec![up]).await;
    let ip = h
        .names
        .load()
        .resolve("reviews.default.svc.cluster.local")
        .unwrap();

    for name in [
        "reviews.default.svc.cluster.local.",
        "REVIEWS.default.",
        "reviews.",
        "reviews.vm.example.com.",
    ] {
        info!(name, "A over UDP");
        let q = query(name, RecordType::A, None);
        let (r, _) = udp(h.addr, &q).await;
        assert_eq!(r.id(), q.id());
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative());
        assert_eq!(addrs(&r), vec![ip], "{name}");
        assert_eq!(r.answers()[0].ttl(), DEFAULT_LOCAL_TTL);
        assert_eq!(
            r.answers()[0].name().to_ascii(),
            name,
            "the client's spelling is kept"
        );
    }
    info!("A over TCP, with EDNS");
    let q = query(
        "reviews.default.svc.cluster.local.",
        RecordType::A,
        Some(1232),
    );
    let r = tcp(h.addr, &q).await;
    assert_eq!((r.id(), addrs(&r)), (q.id(), vec![ip]));
    assert!(r.extensions().is_some(), "EDNS answered with EDNS");

    info!("AAAA of a v4-only name: NOERROR, no answers");
    let (r, _) = udp(h.addr, &query("reviews.", RecordType::AAAA, None)).await;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.answers().is_empty());
    info!("AAAA and A of a v6-only name");
    let (r, _) = udp(h.addr, &query("v6only.mesh.", RecordType::AAAA, None)).await;
    assert_eq!(addrs(&r), vec!["fd00::7".parse::<IpAddr>().unwrap()]);
    let (r, _) = udp(h.addr, &query("v6only.mesh.", RecordType::A, None)).await;
    assert_eq!(
        (r.response_code(), r.answers().len()),
        (ResponseCode::NoError, 0)
    );
    info!("other types of an owned name: no data, not NXDOMAIN");
    let (r, _) = udp(h.addr, &query("reviews.", RecordType::MX, None)).await;
    assert_eq!(
        (r.response_code(), r.answers().len()),
        (ResponseCode::NoError, 0)
    );

    info!("PTR of a capture address");
    let IpAddr::V4(v4) = ip else { panic!() };
    let o = v4.octets();
    let rev = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
    let (r, _) = udp(h.addr, &query(&rev, RecordType::PTR, None)).await;
    match r.answers().first().map(|a| a.data()) {
        Some(RData::PTR(p)) => assert_eq!(p.0.to_ascii(), "reviews.default.svc.cluster.local."),
        other => panic!("{other:?}"),
    }

    assert!(
        seen.seen.lock().unwrap().is_empty(),
        "nothing owned reaches the upstream"
    );
    assert_eq!(counter(&h, "dns.local_answers"), 10);
    assert_eq!(counter(&h, "dns.forwarded"), 0);

    info!("a new table is used at once");
    h.names.store(Arc::new(MeshNames::build(
        [MeshName::new("new.mesh", NameSource::Static).unwrap()],
        CaptureCidr::default(),
    )));
    let (r, _) = udp(h.addr, &query("new.mesh.", RecordType::A, None)).await;
    assert_eq!(addrs(&r).len(), 1);
}

#[tokio::test]
async fn other_names_are_forwarded_byte_for_byte() {
    init();
    let (up, seen) = fake_upstream().await;
    let h = start(vec![up]).await;

    let mut q = query("example.com.", RecordType::A, Some(4096));
    q.extensions_mut().as_mut().unwrap().set_dnssec_ok(true);
    let sent = q.to_vec().unwrap();
    let raw = udp_raw(h.addr, &sent, Duration::from_secs(3))
        .await
        .unwrap();
    let r = Message::from_vec(&raw).unwrap();
    assert_eq!(r.id(), q.id(), "the client's query id is kept");
    assert_eq!(addrs(&r), vec!["93.184.216.34".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        seen.seen.lock().unwrap().as_slice(),
        std::slice::from_ref(&sent),
        "EDNS and all, unchanged"
    );

    info!("a short name is not expanded with search domains: the stub already did that");
    let (r, _) = udp(h.addr, &query("ratings.", RecordType::A, None)).await;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    let last = Message::from_vec(seen.seen.lock().unwrap().last().unwrap()).unwrap();
    assert_eq!(last.queries()[0].name().to_ascii(), "ratings.");

    info!("over TCP");
    let r = tcp(h.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(addrs(&r).len(), 1);
    assert_eq!(counter(&h, "dns.forwarded"), 3);
    assert_eq!(counter(&h, "dns.local_answers"), 0);
}

#[tokio::test]
async fn forwarded_answers_are_not_cached() {
    init();
    let (up, seen) = fake_upstream().await;
    let h = start(vec![up]).await;
    info!("the same forwarded name three times: three upstream queries");
    for _ in 0..3 {
        let (r, _) = udp(h.addr, &query("example.com.", RecordType::A, None)).await;
        assert_eq!(addrs(&r).len(), 1);
    }
    let upstream = seen.seen.lock().unwrap().len();
    assert_eq!(upstream, 3, "a forwarded answer was served from memory");
    assert_eq!(counter(&h, "dns.forwarded"), 3);
}

#[tokio::test]
async fn large_answers_fall_back_to_tcp_and_are_truncated_for_small_clients() {
    init();
    let (up, _) = fake_upstream().await;
    let h = start(vec![up]).await;

    info!("no EDNS: the client gets TC within 512 bytes");
    let q = query("big.example.com.", RecordType::TXT, None);
    let (r, len) = udp(h.addr, &q).await;
    assert!(r.truncated());
    assert!(len <= 512, "{len}");
    assert_eq!(r.id(), q.id());
    assert_eq!(r.queries(), q.queries());
    info!("the client retries over TCP and gets everything");
    let r = tcp(h.addr, &q).await;
    assert!(!r.truncated());
    assert_eq!(r.answers().len(), 40);

    info!("EDNS 4096: the whole answer over UDP");
    let (r, len) = udp(
        h.addr,
        &query("big.example.com.", RecordType::TXT, Some(4096)),
    )
    .await;
    assert!(!r.truncated());
    assert_eq!(r.answers().len(), 40);
    assert!(len > 512);

    info!("an upstream that truncates anyway: fetched again over TCP");
    let before = counter(&h, "dns.tcp_fallback");
    let (r, _) = udp(
        h.addr,
        &query("stingy.example.com.", RecordType::TXT, Some(4096)),
    )
    .await;
    assert!(!r.truncated());
    assert_eq!(r.answers().len(), 40);
    assert_eq!(counter(&h, "dns.tcp_fallback"), before + 1);

    info!("EDNS 1232 but a 2.4 KB answer: truncated to the client's size");
    let (r, len) = udp(
        h.addr,
        &query("big.example.com.", RecordType::TXT, Some(1232)),
    )
    .await;
    assert!(r.truncated() && len <= 1232);
    assert!(r.extensions().is_some(), "OPT kept in the truncated answer");
    assert!(counter(&h, "dns.truncated") >= 2);
}

#[tokio::test]
async fn upstream_failures_are_servfail_and_the_next_upstream_is_tried() {
    init();
    let (up, _) = fake_upstream().await;
    // A port nothing listens on (bound then closed).
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };

    let h = start(vec![up]).await;
    info!("timeout");
    let q = query("slow.example.com.", RecordType::A, Some(1232));
    let (r, _) = udp(h.addr, &q).await;
    assert_eq!(
        (r.id(), r.response_code()),
        (q.id(), ResponseCode::ServFail)
    );
    assert_eq!(r.queries(), q.queries());
    assert_eq!(counter(&h, "dns.upstream_failures"), 1);
    info!("timeout over TCP");
    let r = tcp(h.addr, &q).await;
    assert_eq!(r.response_code(), ResponseCode::ServFail);
    info!("an upstream's own SERVFAIL is passed on when it is the only one");
    let (r, _) = udp(h.addr, &query("fail.example.com.", RecordType::A, None)).await;
    assert_eq!(r.response_code(), ResponseCode::ServFail);

    info!("unreachable first upstream, working second");
    let h = start(vec![dead, up]).await;
    let (r, _) = udp(h.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(addrs(&r).len(), 1);
    assert_eq!(counter(&h, "dns.upstream_failures"), 0);

    info!("no upstream at all");
    let h = start(vec![]).await;
    let (r, _) = udp(h.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(r.response_code(), ResponseCode::ServFail);
    let (r, _) = udp(h.addr, &query("reviews.", RecordType::A, None)).await;
    assert_eq!(addrs(&r).len(), 1, "owned names need no upstream");
}

#[tokio::test]
async fn malformed_packets_are_dropped_and_counted() {
    init();
    let (up, _) = fake_upstream().await;
    let h = start(vec![up]).await;
    for bad in [&b""[..], b"\x00", b"hello world, not DNS", &[0xff; 12][..]] {
        assert_eq!(udp_raw(h.addr, bad, DROPPED).await, None);
    }
    info!("a response sent to us is dropped too (no reflection loops)");
    let mut resp = query("example.com.", RecordType::A, None);
    resp.set_message_type(MessageType::Response);
    assert_eq!(
        udp_raw(h.addr, &resp.to_vec().unwrap(), DROPPED).await,
        None
    );
    assert_eq!(counter(&h, "dns.malformed"), 5);

    info!("TCP: the connection is closed");
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(counter(&h, "dns.malformed"), 6);

    let (r, _) = udp(h.addr, &query("reviews.", RecordType::A, None)).await;
    assert_eq!(addrs(&r).len(), 1, "still serving");
}

#[tokio::test]
async fn dns_wire_fuzz_random_and_mutated_packets_never_panic() {
    init();
    let (up, _) = fake_upstream().await;
    let h = start(vec![up]).await;
    let names = h.names.load_full();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let seeds: Vec<Vec<u8>> = [
        query("reviews.", RecordType::A, None),
        query("example.com.", RecordType::A, Some(4096)),
        query("1.0.240.240.in-addr.arpa.", RecordType::PTR, None),
        query("big.example.com.", RecordType::TXT, None),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..4000 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut p = seeds[i % seeds.len()].clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..p.len());
                match rng.random_range(0..3) {
                    0 => p[at] = rng.random(),
                    1 => p.truncate(at.max(1)),
                    _ => p.insert(at, rng.random()),
                }
            }
            p
        };
        // The pure parts, directly.
        let _ = wire::header_and_question(&packet);
        if let Ok(m) = Message::from_vec(&packet) {
            if let Some(a) = wire::local_answer(&m, &names, 30) {
                let bytes = a.to_vec().unwrap_or_default();
                let _ = wire::fit_udp(bytes, &m, 512);
            }
            let _ = wire::servfail(&m);
            for q in m.queries() {
                let _ = wire::reverse_name_ip(&q.name().to_ascii());
            }
        }
        // And through the server; yield now and then so its receive buffer never overflows
        // (the test runtime has one thread).
        sock.send_to(&packet, h.addr).await.unwrap();
        if i % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Let the server drain its socket, then check it still answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (r, _) = udp(h.addr, &query("reviews.", RecordType::A, None)).await;
    assert_eq!(addrs(&r).len(), 1);
    assert!(counter(&h, "dns.malformed") > 500);
    info!(
        requests = counter(&h, "dns.requests"),
        malformed = counter(&h, "dns.malformed"),
        "fuzzed"
    );
}

#[test]
fn reverse_names_parse() {
    assert_eq!(
        wire::reverse_name_ip("4.3.240.240.in-addr.arpa."),
        Some("240.240.3.4".parse().unwrap())
    );
    assert_eq!(
        wire::reverse_name_ip("4.3.240.240.IN-ADDR.ARPA"),
        Some("240.240.3.4".parse().unwrap())
    );
    for bad in [
        "3.240.240.in-addr.arpa.",
        "256.3.240.240.in-addr.arpa.",
        "04.3.240.240.in-addr.arpa.",
        "x.in-addr.arpa.",
    ] {
        assert_eq!(wire::reverse_name_ip(bad), None, "{bad}");
    }
    let v6 = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    assert_eq!(wire::reverse_name_ip(v6), Some("fd00::7".parse().unwrap()));
}

//! Listener filters that look at the first bytes without consuming them:
//! `tls_inspector` (SNI and ALPN from a ClientHello) and `http_inspector` (HTTP/1 or h2c).
//!
//! They decide on one read as soon as they can (linkerd's detection "biases towards
//! availability"): a connection that sends too little within the timeout is passed on as
//! plain TCP rather than held.
use std::time::Duration;

use tokio::net::TcpStream;

/// What the inspectors learned.
#[derive(Debug, Default, Clone)]
pub struct Inspected {
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'static str,
    /// SNI from the ClientHello.
    pub sni: Option<String>,
    /// ALPN protocols offered by the client, or `http/1.1` / `h2c` from http_inspector.
    pub alpn: Vec<String>,
}

/// Peeks at `stream` as the configured inspectors would.
pub async fn inspect(stream: &TcpStream, tls: bool, http: bool, timeout: Duration) -> Inspected {
    let mut out = Inspected {
        transport_protocol: "raw_buffer",
        ..Default::default()
    };
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return out,
        };
        let data = &buf[..n];
        if n == 0 {
            return out;
        }
        if tls {
            match parse_client_hello(data) {
                Hello::Tls { sni, alpn } => {
                    out.transport_protocol = "tls";
                    out.sni = sni;
                    out.alpn = alpn;
                    return out;
                }
                Hello::NeedMore if n < buf.len() => {}
                Hello::NeedMore | Hello::NotTls => {
                    if !http {
                        return out;
                    }
                }
            }
        }
        if http && !(tls && data[0] == 0x16) {
            match detect_http(data) {
                Some(proto) => {
                    out.alpn = vec![proto.to_string()];
                    return out;
                }
                None if n >= 24 || data.len() == last => return out,
                None => {}
            }
        }
        if n == last || n >= buf.len() {
            return out;
        }
        last = n;
        // peek returns what is buffered now; wait for more before peeking again.
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return out;
        }
        tokio::task::yield_now().await;
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `h2c` for the HTTP/2 preface, `http/1.1`/`http/1.0` for a request line, `None` if unsure.
pub fn detect_http(data: &[u8]) -> Option<&'static str> {
    if data.len() >= H2_PREFACE.len() && data.starts_with(H2_PREFACE) {
        return Some("h2c");
    }
    if H2_PREFACE.starts_with(&data[..data.len().min(H2_PREFACE.len())]) {
        return None;
    }
    let line_end = data.windows(2).position(|w| w == b"\r\n")?;
    let line = &data[..line_end];
    if line.ends_with(b" HTTP/1.1") {
        Some("http/1.1")
    } else if line.ends_with(b" HTTP/1.0") {
        Some("http/1.0")
    } else {
        None
    }
}

enum Hello {
    Tls {
        sni: Option<String>,
        alpn: Vec<String>,
    },
    NeedMore,
    NotTls,
}

/// Parses a TLS ClientHello record far enough for SNI and ALPN. Every length is checked
/// before it is used, so truncated or hostile input yields `NeedMore`/`NotTls`, never a panic.
fn parse_client_hello(data: &[u8]) -> Hello {
    if data.is_empty() {
        return Hello::NeedMore;
    }
    if data[0] != 0x16 {
        return Hello::NotTls;
    }
    if data.len() < 5 {
        return Hello::NeedMore;
    }
    if data[1] != 3 {
        return Hello::NotTls;
    }
    let rec_len = u16::from_be_bytes([data[3], data[4]]) as usize;
    if data.len() < 5 + rec_len.min(16 * 1024 - 5) {
        return Hello::NeedMore;
    }
    let rec = &data[5..(5 + rec_len).min(data.len())];
    let mut r = Reader(rec);
    let parsed = (|| {
        if r.u8()? != 1 {
            return None; // not a ClientHello
        }
        let hs_len = r.u24()? as usize;
        let mut hs = Reader(r.take(hs_len.min(r.0.len()))?);
        hs.take(2)?; // version
        hs.take(32)?; // random
        let sid = hs.u8()? as usize;
        hs.take(sid)?;
        let cs = hs.u16()? as usize;
        hs.take(cs)?;
        let comp = hs.u8()? as usize;
        hs.take(comp)?;
        let mut sni = None;
        let mut alpn = Vec::new();
        if hs.0.is_empty() {
            return Some((sni, alpn));
        }
        let ext_len = hs.u16()? as usize;
        let mut exts = Reader(hs.take(ext_len)?);
        while !exts.0.is_empty() {
            let ty = exts.u16()?;
            let len = exts.u16()? as usize;
            let mut body = Reader(exts.take(len)?);
            match ty {
                0 => {
                    let list_len = body.u16()? as usize;
                    let mut list = Reader(body.take(list_len)?);
                    while !list.0.is_empty() {
                        let kind = list.u8()?;
                        let n = list.u16()? as usize;
                        let name = list.take(n)?;
                        if kind == 0 {
                            sni = std::str::from_utf8(name)
                                .ok()
                                .map(|s| s.to_ascii_lowercase());
                        }
                    }
                }
                16 => {
                    let list_len = body.u16()? as usize;
                    let mut list = Reader(body.take(list_len)?);
                    while !list.0.is_empty() {
                        let n = list.u8()? as usize;
                        if let Ok(p) = std::str::from_utf8(list.take(n)?) {
                            alpn.push(p.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        Some((sni, alpn))
    })();
    match parsed {
        Some((sni, alpn)) => Hello::Tls { sni, alpn },
        None if rec_len + 5 > data.len() => Hello::NeedMore,
        None => Hello::NotTls,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http_versions() {
        assert_eq!(
            detect_http(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some("http/1.1")
        );
        assert_eq!(detect_http(H2_PREFACE), Some("h2c"));
        assert_eq!(detect_http(b"PRI * HT"), None);
        assert_eq!(detect_http(b"\x00\x01garbage\r\n"), None);
    }

    #[test]
    fn client_hello_parser_survives_garbage() {
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 0x16) as u8).collect();
            let _ = parse_client_hello(&data);
        }
        let mut d = vec![0x16, 3, 1, 0xff, 0xff, 1, 0xff, 0xff, 0xff];
        d.extend(std::iter::repeat_n(0xffu8, 200));
        let _ = parse_client_hello(&d);
    }

    #[test]
    fn parses_sni_and_alpn_from_a_real_client_hello() {
        // Build a ClientHello with rustls and parse it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        match parse_client_hello(&hello) {
            Hello::Tls { sni, alpn } => {
                assert_eq!(sni.as_deref(), Some("api.example.com"));
                assert_eq!(alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
            }
            _ => panic!("ClientHello not recognised"),
        }
        assert!(matches!(parse_client_hello(&hello[..20]), Hello::NeedMore));
    }
}

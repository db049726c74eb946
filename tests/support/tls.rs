//! Hand-built TLS ClientHello records, for exercising `tls_inspector` filter-chain matching
//! (SNI, ALPN) without a TLS stack. The handshake never completes; only the first record matters.

/// A TLS 1.2-compatible ClientHello record with an optional SNI and ALPN list.
pub fn client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let mut list = vec![0u8]; // host_name
        list.extend(u16_be(name.len()));
        list.extend_from_slice(name);
        let mut body = u16_be(list.len()).to_vec();
        body.extend(list);
        push_ext(&mut ext, 0x0000, &body);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(u8::try_from(p.len()).expect("short protocol name"));
            list.extend_from_slice(p.as_bytes());
        }
        let mut body = u16_be(list.len()).to_vec();
        body.extend(list);
        push_ext(&mut ext, 0x0010, &body);
    }
    // supported_groups and signature_algorithms, which real parsers expect to see.
    push_ext(&mut ext, 0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    push_ext(&mut ext, 0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);

    let mut hello = vec![0x03, 0x03]; // client_version TLS 1.2
    hello.extend([0x42u8; 32]); // random
    hello.push(0); // session id
    hello.extend([0x00, 0x04, 0xc0, 0x2f, 0x00, 0x9c]); // two cipher suites
    hello.extend([0x01, 0x00]); // compression: null
    hello.extend(u16_be(ext.len()));
    hello.extend(ext);

    let mut handshake = vec![0x01]; // client_hello
    let len = hello.len();
    handshake.extend([(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    handshake.extend(hello);

    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16_be(handshake.len()));
    record.extend(handshake);
    record
}

fn u16_be(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("fits in u16").to_be_bytes()
}

fn push_ext(out: &mut Vec<u8>, ty: u16, body: &[u8]) {
    out.extend(ty.to_be_bytes());
    out.extend(u16_be(body.len()));
    out.extend_from_slice(body);
}

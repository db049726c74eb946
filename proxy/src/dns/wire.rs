//! DNS messages the mesh DNS builds itself: local answers, SERVFAIL, truncated replies.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::names::MeshNames;

/// UDP payload size we advertise in our own answers (the DNS flag day 2020 value: avoids IP
/// fragmentation on every common path).
pub(crate) const OUR_UDP_PAYLOAD: u16 = 1232;

/// Largest UDP answer we send to a client without EDNS (RFC 1035).
pub(crate) const CLASSIC_UDP_PAYLOAD: usize = 512;

/// The local answer for `query` when its question is a name (or a reverse name) we own;
/// `None` when it must be forwarded.
pub(crate) fn local_answer(query: &Message, names: &MeshNames, ttl: u32) -> Option<Message> {
    if query.op_code() != OpCode::Query || query.queries().len() != 1 {
        return None;
    }
    let q = &query.queries()[0];
    if q.query_class() != DNSClass::IN {
        return None;
    }
    let qname = q.name().to_ascii();
    let mut resp = response_to(query, ResponseCode::NoError);
    resp.set_authoritative(true);
    if q.query_type() == RecordType::PTR {
        let ip = reverse_name_ip(&qname)?;
        if !names.cidr().contains(ip) {
            return None;
        }
        let service = names.name_for(ip)?;
        let target = Name::from_ascii(format!("{service}.")).ok()?;
        resp.add_answer(Record::from_rdata(
            q.name().clone(),
            ttl,
            RData::PTR(PTR(target)),
        ));
        return Some(resp);
    }
    let addrs = names.lookup(&qname)?;
    // A name we own answers every type: A and AAAA with the addresses of that family (none:
    // NOERROR with no answers, not NXDOMAIN, which would deny the other family too), other
    // types with no data. Forwarding them would get NXDOMAIN for a name that exists.
    for ip in addrs {
        let rdata = match (q.query_type(), ip) {
            (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
            (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        resp.add_answer(Record::from_rdata(q.name().clone(), ttl, rdata));
    }
    Some(resp)
}

/// A response header for `query`: same id, opcode, RD and CD, the question echoed, and an
/// OPT record when the client sent one.
pub(crate) fn response_to(query: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(rcode);
    resp.add_queries(query.queries().iter().cloned());
    if let Some(client) = query.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_UDP_PAYLOAD)
            .set_version(0)
            .set_dnssec_ok(client.flags().dnssec_ok);
        resp.set_edns(edns);
    }
    resp
}

/// SERVFAIL for `query` (upstream failure or timeout).
pub(crate) fn servfail(query: &Message) -> Option<Vec<u8>> {
    response_to(query, ResponseCode::ServFail).to_vec().ok()
}

/// The largest UDP answer `query`'s client accepts: its EDNS buffer size (at least 512), or
/// 512 without EDNS.
pub(crate) fn client_udp_limit(query: &Message) -> usize {
    match query.extensions() {
        Some(e) => usize::from(e.max_payload()).max(CLASSIC_UDP_PAYLOAD),
        None => CLASSIC_UDP_PAYLOAD,
    }
}

/// `answer` cut for a UDP client whose limit is `limit`: unchanged when it fits; otherwise
/// the header with TC set, the question and the OPT record, nothing else, which tells the
/// client to ask again over TCP (RFC 1035 §4.2.1, RFC 2181 §9: no partial RRsets).
pub(crate) fn fit_udp(answer: Vec<u8>, query: &Message, limit: usize) -> Option<Vec<u8>> {
    if answer.len() <= limit {
        return Some(answer);
    }
    let cut = match Message::from_vec(&answer) {
        Ok(resp) => resp.truncate(),
        // An answer we cannot parse: build the truncated reply from the question.
        Err(_) => {
            let mut m = response_to(query, ResponseCode::NoError);
            m.set_truncated(true);
            m
        }
    };
    let bytes = cut.to_vec().ok()?;
    (bytes.len() <= limit).then_some(bytes)
}

/// Id, QR bit and question of a raw message, without parsing its records: checks an
/// upstream answer belongs to the query we sent.
pub(crate) fn header_and_question(bytes: &[u8]) -> Option<(Header, Vec<Query>)> {
    let mut d = BinDecoder::new(bytes);
    let header = Header::read(&mut d).ok()?;
    let qs = Message::read_queries(&mut d, usize::from(header.query_count())).ok()?;
    Some((header, qs))
}

/// The address of a reverse name (`4.3.2.1.in-addr.arpa.`, nibbles `.ip6.arpa.`).
pub(crate) fn reverse_name_ip(name: &str) -> Option<IpAddr> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if let Some(rest) = n.strip_suffix(".in-addr.arpa") {
        let mut o = [0u8; 4];
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        for (i, p) in parts.iter().rev().enumerate() {
            if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            o[i] = p.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    let rest = n.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for nib in nibbles.iter().rev() {
        if nib.len() != 1 {
            return None;
        }
        v = (v << 4) | u128::from(u8::from_str_radix(nib, 16).ok()?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

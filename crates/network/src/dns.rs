//! DNS for sandboxes: reading a sandbox's query, writing the stub's answer, and asking the
//! upstream resolver. The stub never passes a sandbox's packet upstream in `allowlist` mode: it
//! asks its own question (A records for one allowed name), so nothing the sandbox encodes in a
//! query leaves the host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use simple_dns::rdata::{A, RData};
use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
};

/// What a sandbox asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub kind: QueryKind,
    recursion_desired: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKind {
    A,
    Aaaa,
    /// Any other type, by number (TXT 16, NULL 10, ANY 255, ...).
    Other(u16),
}

impl std::fmt::Display for QueryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryKind::A => f.write_str("A"),
            QueryKind::Aaaa => f.write_str("AAAA"),
            QueryKind::Other(16) => f.write_str("TXT"),
            QueryKind::Other(10) => f.write_str("NULL"),
            QueryKind::Other(255) => f.write_str("ANY"),
            QueryKind::Other(n) => write!(f, "TYPE{n}"),
        }
    }
}

/// Reads a query of exactly one question. A packet too broken to answer is `Err(None)` (dropped);
/// one that can be answered with an error is `Err(Some(reply))`.
pub fn parse_query(bytes: &[u8]) -> Result<Query, Option<Vec<u8>>> {
    let packet = match Packet::parse(bytes) {
        Ok(packet) => packet,
        Err(_) => {
            // An id is enough to say FORMERR.
            return Err((bytes.len() >= 12).then(|| {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                error_reply(id, None, RCODE::FormatError)
            }));
        }
    };
    if packet.has_flags(PacketFlag::RESPONSE) {
        return Err(None);
    }
    let id = packet.id();
    if packet.questions.len() != 1 || packet.opcode() != simple_dns::OPCODE::StandardQuery {
        return Err(Some(error_reply(id, None, RCODE::FormatError)));
    }
    let question = &packet.questions[0];
    let name = crate::allow::normalize(&question.qname.to_string());
    let kind = match question.qtype {
        QTYPE::TYPE(TYPE::A) => QueryKind::A,
        QTYPE::TYPE(TYPE::AAAA) => QueryKind::Aaaa,
        other => QueryKind::Other(u16::from(other)),
    };
    if question.qclass != QCLASS::CLASS(CLASS::IN) {
        return Err(Some(error_reply(id, None, RCODE::Refused)));
    }
    Ok(Query {
        id,
        name,
        kind,
        recursion_desired: packet.has_flags(PacketFlag::RECURSION_DESIRED),
    })
}

fn error_reply(id: u16, query: Option<&Query>, rcode: RCODE) -> Vec<u8> {
    let mut reply = Packet::new_reply(id);
    *reply.rcode_mut() = rcode;
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if let Some(query) = query {
        if query.recursion_desired {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        if let Ok(name) = Name::new(&query.name) {
            reply.questions.push(Question::new(
                name,
                question_type(query.kind),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
    }
    reply.build_bytes_vec().unwrap_or_default()
}

fn question_type(kind: QueryKind) -> QTYPE {
    match kind {
        QueryKind::A => QTYPE::TYPE(TYPE::A),
        QueryKind::Aaaa => QTYPE::TYPE(TYPE::AAAA),
        QueryKind::Other(n) => QTYPE::TYPE(TYPE::from(n)),
    }
}

/// REFUSED: the name or type is not served to this sandbox.
pub fn refused(query: &Query) -> Vec<u8> {
    error_reply(query.id, Some(query), RCODE::Refused)
}

/// SERVFAIL: the upstream did not answer.
pub fn servfail(query: &Query) -> Vec<u8> {
    error_reply(query.id, Some(query), RCODE::ServerFailure)
}

/// NXDOMAIN: the upstream says the name does not exist.
pub fn nxdomain(query: &Query) -> Vec<u8> {
    error_reply(query.id, Some(query), RCODE::NameError)
}

/// An answer of A records (none: NODATA, which makes a client asking AAAA fall back to A).
pub fn answer(query: &Query, addrs: &[(Ipv4Addr, u32)]) -> Vec<u8> {
    let mut reply = Packet::new_reply(query.id);
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if query.recursion_desired {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    let Ok(name) = Name::new(&query.name) else {
        return refused(query);
    };
    reply.questions.push(Question::new(
        name.clone(),
        question_type(query.kind),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    if query.kind == QueryKind::A {
        for (addr, ttl) in addrs {
            reply.answers.push(ResourceRecord::new(
                name.clone(),
                CLASS::IN,
                *ttl,
                RData::A(A::from(*addr)),
            ));
        }
    }
    reply.build_bytes_vec().unwrap_or_default()
}

/// What the upstream said about a name's A records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Addresses(Vec<(Ipv4Addr, u32)>),
    NoSuchName,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("the upstream resolver did not answer in time")]
    Timeout,
    #[error("the upstream resolver failed: {0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The resolvers the host uses (Caged's own questions only).
#[derive(Clone, Debug)]
pub struct Upstream {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Upstream {
    /// The `nameserver` lines of a resolv.conf, on port 53.
    pub fn from_resolv_conf(text: &str) -> Upstream {
        let servers = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("nameserver"))
            .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Upstream {
            servers,
            timeout: Duration::from_secs(2),
        }
    }

    /// A records of `name`, following the CNAMEs the upstream put in its answer.
    pub async fn resolve_a(&self, name: &str) -> Result<Resolved, ResolveError> {
        let mut last = ResolveError::NoUpstream;
        for server in &self.servers {
            match self.ask(*server, name).await {
                Ok(resolved) => return Ok(resolved),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    async fn ask(&self, server: SocketAddr, name: &str) -> Result<Resolved, ResolveError> {
        let qname = Name::new(name).map_err(|err| ResolveError::Failed(err.to_string()))?;
        let mut id = [0u8; 2];
        fill_random(&mut id);
        let id = u16::from_be_bytes(id);
        let mut packet = Packet::new_query(id);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        packet.questions.push(Question::new(
            qname,
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let bytes = packet
            .build_bytes_vec()
            .map_err(|err| ResolveError::Failed(err.to_string()))?;
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = tokio::net::UdpSocket::bind(bind).await?;
        socket.connect(server).await?;
        socket.send(&bytes).await?;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .map_err(|_| ResolveError::Timeout)??;
            let Ok(reply) = Packet::parse(&buf[..len]) else {
                continue;
            };
            let same_question = reply.questions.len() == 1
                && crate::allow::normalize(&reply.questions[0].qname.to_string())
                    == crate::allow::normalize(name);
            if reply.id() != id || !reply.has_flags(PacketFlag::RESPONSE) || !same_question {
                continue; // not ours: ignore, keep waiting
            }
            return match reply.rcode() {
                RCODE::NoError => Ok(Resolved::Addresses(
                    reply
                        .answers
                        .iter()
                        .filter_map(|record| match &record.rdata {
                            RData::A(a) => Some((Ipv4Addr::from(a.address), record.ttl)),
                            _ => None,
                        })
                        .collect(),
                )),
                RCODE::NameError => Ok(Resolved::NoSuchName),
                other => Err(ResolveError::Failed(format!("{other:?}"))),
            };
        }
    }
}

fn fill_random(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into a valid buffer.
    let _ = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut packet = Packet::new_query(0x1234);
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
        packet.questions.push(Question::new(
            Name::new(name).unwrap(),
            QTYPE::TYPE(qtype),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        packet.build_bytes_vec().unwrap()
    }

    #[test]
    fn reads_queries_and_writes_answers() {
        let parsed = parse_query(&query("Allowed.Test.", TYPE::A)).unwrap();
        assert_eq!(parsed.name, "allowed.test");
        assert_eq!(parsed.kind, QueryKind::A);
        let reply = answer(&parsed, &[("203.0.113.10".parse().unwrap(), 60)]);
        let reply = Packet::parse(&reply).unwrap();
        assert_eq!(reply.id(), 0x1234);
        assert_eq!(reply.answers.len(), 1);
        assert!(
            matches!(reply.answers[0].rdata, RData::A(A { address }) if Ipv4Addr::from(address) == Ipv4Addr::new(203, 0, 113, 10))
        );

        let txt = parse_query(&query("x.evil.test", TYPE::TXT)).unwrap();
        assert_eq!(txt.kind.to_string(), "TXT");
        let refused = Packet::parse(&refused(&txt)).unwrap().rcode();
        assert_eq!(refused, RCODE::Refused);

        assert_eq!(parse_query(b"short"), Err(None));
        assert!(matches!(parse_query(&[0u8; 12]), Err(Some(_))));
    }

    #[test]
    fn reads_the_hosts_resolvers() {
        let upstream =
            Upstream::from_resolv_conf("# x\nnameserver 10.255.255.53\nsearch a\nnameserver ::1\n");
        assert_eq!(
            upstream.servers,
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}

//! Ended connections with their byte counts, from the kernel's connection tracking (the
//! `NFNLGRP_CONNTRACK_DESTROY` multicast group over `NETLINK_NETFILTER`). Counters need
//! `net.netfilter.nf_conntrack_acct=1`, which [`Listener::bind`] sets.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use crate::nfnetlink::{self, Receiver, attrs, messages};
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_BYTES: u16 = 2;

/// One connection that ended, as its originator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: u8,
    pub port: Option<u16>,
    /// Bytes from the originator (IP lengths, as the kernel counts).
    pub bytes_out: u64,
    pub bytes_in: u64,
}

pub struct Listener {
    receiver: Receiver,
}

impl Listener {
    pub fn bind() -> io::Result<Listener> {
        // Without accounting the counters are absent; turning it on is host-wide and cheap.
        let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1");
        let fd = nfnetlink::socket(1 << (NFNLGRP_CONNTRACK_DESTROY - 1))?;
        // A busy host ends many connections; a large buffer loses fewer events.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt on an open socket with a valid int.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Listener {
            receiver: Receiver::new(fd, 256 * 1024)?,
        })
    }

    /// The next batch of ended connections (IPv4 only).
    pub async fn next(&mut self) -> io::Result<Vec<Ended>> {
        Ok(parse_datagram(self.receiver.recv().await?))
    }
}

fn find(list: &[(u16, &[u8])], kind: u16) -> Option<Vec<(u16, Vec<u8>)>> {
    list.iter().find(|(k, _)| *k == kind).map(|(_, value)| {
        attrs(value)
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect()
    })
}

fn value(list: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    list.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

pub fn parse_datagram(data: &[u8]) -> Vec<Ended> {
    messages(data)
        .into_iter()
        .filter(|(kind, _)| *kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE)
        .filter_map(|(_, body)| parse_entry(body))
        .collect()
}

fn parse_entry(data: &[u8]) -> Option<Ended> {
    let top = attrs(data);
    let tuple = find(&top, CTA_TUPLE_ORIG)?;
    let ip = attrs(value(&tuple, CTA_TUPLE_IP)?);
    let proto = attrs(value(&tuple, CTA_TUPLE_PROTO)?);
    let addr = |kind| -> Option<Ipv4Addr> {
        let (_, v) = ip.iter().find(|(k, _)| *k == kind)?;
        (v.len() == 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
    };
    let protocol = proto
        .iter()
        .find(|(k, _)| *k == CTA_PROTO_NUM)
        .and_then(|(_, v)| v.first().copied())?;
    let port = proto
        .iter()
        .find(|(k, _)| *k == CTA_PROTO_DST_PORT)
        .filter(|(_, v)| v.len() == 2)
        .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]));
    let bytes = |kind| -> u64 {
        find(&top, kind)
            .and_then(|counters| {
                value(&counters, CTA_COUNTERS_BYTES)
                    .filter(|v| v.len() == 8)
                    .map(|v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])))
            })
            .unwrap_or(0)
    };
    Some(Ended {
        source: addr(CTA_IP_V4_SRC)?,
        destination: addr(CTA_IP_V4_DST)?,
        protocol,
        port,
        bytes_out: bytes(CTA_COUNTERS_ORIG),
        bytes_in: bytes(CTA_COUNTERS_REPLY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::nfnetlink::push_attr(&mut out, kind, payload);
        out
    }

    #[test]
    fn reads_an_ended_connection() {
        let ip = [
            attr(CTA_IP_V4_SRC, &[10, 213, 0, 2]),
            attr(CTA_IP_V4_DST, &[203, 0, 113, 10]),
        ]
        .concat();
        let proto = [
            attr(CTA_PROTO_NUM, &[6]),
            attr(CTA_PROTO_DST_PORT, &80u16.to_be_bytes()),
        ]
        .concat();
        let tuple = [
            attr(CTA_TUPLE_IP | 0x8000, &ip),
            attr(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat();
        let orig = attr(CTA_COUNTERS_BYTES, &1234u64.to_be_bytes());
        let reply = attr(CTA_COUNTERS_BYTES, &99999u64.to_be_bytes());
        let body = [
            attr(CTA_TUPLE_ORIG | 0x8000, &tuple),
            attr(CTA_COUNTERS_ORIG | 0x8000, &orig),
            attr(CTA_COUNTERS_REPLY | 0x8000, &reply),
        ]
        .concat();
        let len = 20 + body.len();
        let mut msg = Vec::new();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[2, 0, 0, 0]);
        msg.extend_from_slice(&body);
        assert_eq!(
            parse_datagram(&msg),
            vec![Ended {
                source: Ipv4Addr::new(10, 213, 0, 2),
                destination: Ipv4Addr::new(203, 0, 113, 10),
                protocol: 6,
                port: Some(80),
                bytes_out: 1234,
                bytes_in: 99999,
            }]
        );
        for cut in 0..msg.len() {
            let _ = parse_datagram(&msg[..cut]);
        }
    }
}

//! Reading the firewall's refusals from the kernel (NFLOG over `NETLINK_NETFILTER`): the
//! interface a refused packet came in on, the rule's prefix, and the packet's header. This is
//! what makes a refusal an event nobody inside the sandbox can forge or suppress.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::nfnetlink::{self, Receiver, attrs, messages, push_attr};
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// Bytes of each packet copied: enough for the IPv4 and transport headers.
const COPY_RANGE: u32 = 64;

/// One refused packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub in_ifindex: u32,
    pub prefix: String,
    pub destination: Ipv4Addr,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// Destination port for TCP and UDP.
    pub port: Option<u16>,
}

/// A subscription to one NFLOG group.
pub struct Listener {
    receiver: Receiver,
}

impl Listener {
    /// Binds NFLOG group `group` (only one listener per group on a host).
    pub fn bind(group: u16) -> io::Result<Listener> {
        let fd = nfnetlink::socket(0)?;
        let mut bind = Vec::new();
        push_attr(&mut bind, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        config(&fd, group, &bind)?;
        let mut mode = Vec::new();
        let mut value = COPY_RANGE.to_be_bytes().to_vec();
        value.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        push_attr(&mut mode, NFULA_CFG_MODE, &value);
        config(&fd, group, &mode)?;
        Ok(Listener {
            receiver: Receiver::new(fd, 64 * 1024)?,
        })
    }

    /// The next batch of refusals (a datagram may carry several).
    pub async fn next(&mut self) -> io::Result<Vec<Refusal>> {
        Ok(parse_datagram(self.receiver.recv().await?))
    }
}

/// Sends one NFLOG config message for `group` and reads its acknowledgement.
fn config(fd: &OwnedFd, group: u16, attrs: &[u8]) -> io::Result<()> {
    let len = 16 + 4 + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    msg.extend_from_slice(&group.to_be_bytes());
    msg.extend_from_slice(attrs);
    // SAFETY: send a buffer we own.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The acknowledgement (an NLMSG_ERROR with code 0) or the error; the socket is
    // non-blocking, so wait for it briefly.
    let mut buf = [0u8; 1024];
    for _ in 0..100 {
        // SAFETY: recv into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
            return Err(err);
        }
        let n = n as usize;
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-code))
            };
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no answer to the NFLOG bind",
    ))
}

/// Refusals in one datagram of NFLOG messages.
pub fn parse_datagram(data: &[u8]) -> Vec<Refusal> {
    messages(data)
        .into_iter()
        .filter(|(kind, _)| *kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
        .filter_map(|(_, body)| parse_packet(body))
        .collect()
}

fn parse_packet(body: &[u8]) -> Option<Refusal> {
    let (mut ifindex, mut prefix, mut payload) = (None, String::new(), None);
    for (kind, value) in attrs(body) {
        match kind {
            NFULA_IFINDEX_INDEV if value.len() == 4 => {
                ifindex = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
            }
            NFULA_PREFIX => {
                prefix = String::from_utf8_lossy(value)
                    .trim_end_matches('\0')
                    .to_string();
            }
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
    }
    let packet = payload?;
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let (protocol, port) = match packet[9] {
        6 | 17 if packet.len() >= header_len + 4 => (
            if packet[9] == 6 { "tcp" } else { "udp" }.to_string(),
            Some(u16::from_be_bytes([
                packet[header_len + 2],
                packet[header_len + 3],
            ])),
        ),
        1 => ("icmp".to_string(), None),
        other => (other.to_string(), None),
    };
    Some(Refusal {
        in_ifindex: ifindex?,
        prefix,
        destination,
        protocol,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_packet_message() {
        let mut ip = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 169, 254, 169, 254,
        ];
        ip.extend_from_slice(&[0x30, 0x39, 0, 80]); // ports 12345 → 80
        let mut attrs = Vec::new();
        push_attr(&mut attrs, NFULA_PREFIX, b"caged-range\0");
        push_attr(&mut attrs, NFULA_IFINDEX_INDEV, &7u32.to_be_bytes());
        push_attr(&mut attrs, NFULA_PAYLOAD, &ip);
        let len = 20 + attrs.len();
        let mut msg = Vec::new();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]); // flags, sequence, port id
        msg.extend_from_slice(&[2, 0, 0, 9]);
        msg.extend_from_slice(&attrs);
        let refusals = parse_datagram(&msg);
        assert_eq!(
            refusals,
            vec![Refusal {
                in_ifindex: 7,
                prefix: "caged-range".into(),
                destination: Ipv4Addr::new(169, 254, 169, 254),
                protocol: "tcp".into(),
                port: Some(80),
            }]
        );
        // Truncated input never panics.
        for cut in 0..msg.len() {
            let _ = parse_datagram(&msg[..cut]);
        }
    }
}

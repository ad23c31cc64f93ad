//! The netfilter netlink socket (`NETLINK_NETFILTER`) that NFLOG and connection tracking speak
//! over: opening it, reading datagrams of messages, walking their attributes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const NETLINK_NETFILTER: libc::c_int = 12;

/// A non-blocking netfilter netlink socket, bound to the multicast `groups` (a bit mask).
pub(crate) fn socket(groups: u32) -> io::Result<OwnedFd> {
    crate::netlink::bound(NETLINK_NETFILTER, groups, None)
}

/// Datagrams from a socket made by [`socket`], on the runtime's reactor.
pub(crate) struct Receiver {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl Receiver {
    pub(crate) fn new(fd: OwnedFd, buffer: usize) -> io::Result<Receiver> {
        // SAFETY: the descriptor is an open socket this value owns for its whole life; nothing
        // else reads from or closes it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|err| io::Error::other(err.to_string()))?;
        Ok(Receiver {
            fd,
            buf: vec![0u8; buffer],
        })
    }

    /// The next datagram. Messages the kernel dropped because we were slow (ENOBUFS) are
    /// skipped over: what follows is still worth reading.
    pub(crate) async fn recv(&mut self) -> io::Result<&[u8]> {
        loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            match guard.try_io(|fd| {
                // SAFETY: recv into a buffer we own, of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => return Ok(&self.buf[..n]),
                Ok(Err(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

/// (kind, value) pairs of a netlink attribute list (the nested and byte-order flags masked off).
pub(crate) fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    out
}

/// The messages of a datagram, as (type, body after the 16-byte header and the 4-byte
/// `nfgenmsg`).
pub(crate) fn messages(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len >= 20 {
            out.push((kind, &data[20..len]));
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    out
}

/// Appends one attribute, padded to 4 bytes.
pub(crate) fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

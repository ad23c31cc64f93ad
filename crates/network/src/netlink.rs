//! Netlink sockets, as both the firewall's log and connection tracking (netfilter) and the
//! kernel's process events (the connector) are read: non-blocking, bound to multicast groups,
//! with a larger receive buffer where falling behind loses events.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking netlink socket of `protocol`, bound to the multicast `groups` (a bit mask).
/// `receive_buffer` asks for that many bytes of buffer (beyond the host's default limit, which
/// needs `CAP_NET_ADMIN`; without it the default stays).
pub fn bound(
    protocol: libc::c_int,
    groups: u32,
    receive_buffer: Option<libc::c_int>,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked. (Netlink does not tell raw and
    // datagram sockets apart.)
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(bytes) = receive_buffer {
        // SAFETY: setsockopt with a pointer to an int of the stated size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    // SAFETY: sockaddr_nl is plain old data.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: bind with a valid address of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

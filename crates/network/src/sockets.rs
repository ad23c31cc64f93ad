//! Sockets of Caged's services on a link's host address: bound to the host end's interface as
//! well as its address, so only packets that arrived on that link reach them, whatever the
//! routing says.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

fn bound(ifname: &str, addr: SocketAddrV4, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(ifname.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    Ok(socket)
}

/// A UDP socket for the DNS stub on `addr`, taking only what arrives on `ifname`.
pub fn udp_on_link(ifname: &str, addr: SocketAddrV4) -> io::Result<tokio::net::UdpSocket> {
    let socket = bound(ifname, addr, Type::DGRAM, Protocol::UDP)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// A TCP listener on `addr`, accepting only connections that arrived on `ifname`.
pub fn tcp_on_link(ifname: &str, addr: SocketAddrV4) -> io::Result<tokio::net::TcpListener> {
    let socket = bound(ifname, addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// The next connection on `listener`, with Nagle off (our services relay small frames). A
/// failed accept (out of descriptors and the like) is logged and retried after a pause rather
/// than spun on; `what` names the service in that log line.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(err) => {
                tracing::warn!("{what}: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Where a connection redirected by the firewall was going (`SO_ORIGINAL_DST`).
pub fn original_destination(stream: &tokio::net::TcpStream) -> io::Result<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in is plain old data; getsockopt writes at most `len` bytes into it.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the descriptor is an open socket; the pointers are valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Closes a connection with a reset rather than a clean close: the client learns at once that
/// nothing is there, as it would from the firewall.
pub fn reset(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

//! Relaying between two TCP connections with `splice(2)` through a pipe: the bytes move inside
//! the kernel, never through user space, so a relayed connection costs little more than a routed
//! one. Driven by Tokio's readiness, so thousands of relays share the runtime's threads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes a pipe holds between the two splices.
const PIPE_BYTES: usize = 1 << 20;

/// Relays both directions until each has ended; answers (bytes a→b, bytes b→a).
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (there, back) = tokio::join!(one_way(a, b), one_way(b, a));
    Ok((there?, back?))
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

fn pipe() -> io::Result<Pipe> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe means fewer wake-ups; the kernel may refuse (then the default 64 KiB stays).
    // SAFETY: fcntl on a descriptor we own.
    let size = unsafe {
        libc::fcntl(
            write.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            PIPE_BYTES as libc::c_int,
        )
    };
    let size = if size > 0 { size as usize } else { 64 * 1024 };
    Ok(Pipe { read, write, size })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on open descriptors; null offsets mean "current position".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let pipe = pipe()?;
    let mut in_pipe = 0usize;
    let mut total = 0u64;
    let mut eof = false;
    loop {
        if eof && in_pipe == 0 {
            // Pass the end on, as a half-close: the other direction may still be busy.
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        if !eof && in_pipe < pipe.size {
            let room = pipe.size - in_pipe;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), room)
            }) {
                Ok(0) => eof = true,
                Ok(n) => in_pipe += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if in_pipe == 0 {
                        from.readable().await?;
                        continue;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        if in_pipe > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    total += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Full downstream: wait for it, unless there is room to read ahead meanwhile.
                    if eof || in_pipe >= pipe.size {
                        to.writable().await?;
                    } else {
                        tokio::select! {
                            ready = to.writable() => ready?,
                            ready = from.readable() => ready?,
                        }
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        // client <-> (a | relay | b) <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let relay = tokio::spawn(async move { super::relay(&a, &b).await.unwrap() });
        let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = payload.clone();
        let upload = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, payload);
        server.write_all(b"thanks").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(upload.await.unwrap(), b"thanks");
        assert_eq!(relay.await.unwrap(), (5_000_000, 6));
    }
}

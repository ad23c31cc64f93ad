//! Relaying between two TCP connections with `splice(2)` through a pipe: the bytes move inside
//! the kernel, never through user space, so a relayed connection costs little more than a routed
//! one. Driven by Tokio's readiness, so thousands of relays share the runtime's threads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes a pipe holds between the two splices.
const PIPE_BYTES: usize = 1 << 20;

/// How long the other direction may carry nothing once one has ended, before the relay gives
/// up on it: a client that went away must not leave its upstream (two sockets, two pipes)
/// held until the upstream closes.
pub const AFTER_HALF_CLOSE: Duration = Duration::from_secs(60);

/// Relays both directions until each has ended, or one failed (a reset: the other is dropped
/// at once), or one ended and the other then carried nothing for `after_half_close`; answers
/// (bytes a→b, bytes b→a).
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    after_half_close: Duration,
) -> io::Result<(u64, u64)> {
    let (moved_there, moved_back) = (AtomicU64::new(0), AtomicU64::new(0));
    let there = one_way(a, b, &moved_there);
    let back = one_way(b, a, &moved_back);
    tokio::pin!(there, back);
    let (ended, rest, rest_moved) = tokio::select! {
        ended = &mut there => (ended, back.as_mut().left_future(), &moved_back),
        ended = &mut back => (ended, there.as_mut().right_future(), &moved_there),
    };
    ended?;
    let mut rest = rest;
    loop {
        let before = rest_moved.load(Ordering::Relaxed);
        tokio::select! {
            done = &mut rest => {
                done?;
                break;
            }
            () = tokio::time::sleep(after_half_close) => {
                if rest_moved.load(Ordering::Relaxed) == before {
                    break;
                }
            }
        }
    }
    Ok((
        moved_there.load(Ordering::Relaxed),
        moved_back.load(Ordering::Relaxed),
    ))
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

async fn one_way(from: &TcpStream, to: &TcpStream, moved: &AtomicU64) -> io::Result<u64> {
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
                    moved.fetch_add(n as u64, Ordering::Relaxed);
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
        let relay =
            tokio::spawn(
                async move { super::relay(&a, &b, super::AFTER_HALF_CLOSE).await.unwrap() },
            );
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

    #[tokio::test]
    async fn a_client_gone_releases_an_upstream_that_never_closes() {
        let (client, a) = pair().await;
        let (b, mut server) = pair().await;
        let relay = tokio::spawn(async move {
            super::relay(&a, &b, std::time::Duration::from_millis(100)).await
        });
        let mut client = client;
        client.write_all(b"request").await.unwrap();
        drop(client); // the client goes away; the server never answers nor closes
        let mut request = [0u8; 7];
        server.read_exact(&mut request).await.unwrap();
        // Bounded only so a regression fails instead of hanging the suite.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), relay)
            .await
            .expect("the relay let go of the upstream")
            .unwrap()
            .unwrap();
        assert_eq!(ended, (7, 0));
        // And the server sees its side closed.
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions_at_once() {
        let (client, a) = pair().await;
        let (b, _server) = pair().await;
        let relay =
            tokio::spawn(async move { super::relay(&a, &b, super::AFTER_HALF_CLOSE).await });
        // A reset (SO_LINGER 0) rather than a close.
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), relay)
            .await
            .expect("the relay ended with the reset")
            .unwrap();
        assert!(ended.is_err(), "{ended:?}");
    }
}

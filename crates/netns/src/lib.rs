//! Linux network namespaces, held by an open file descriptor so that the namespace meant is the
//! one acted on, however long ago it was looked up (a PID could have been recycled since; a
//! descriptor cannot change what it points to).
//!
//! The host reaches into a sandbox's namespace only for two things: to create a socket there
//! (the preview proxy dials the sandbox's own loopback) and to open its `/proc/net` tables (port
//! detection). Both happen on the calling thread, which enters the namespace for a few
//! microseconds and always returns to where it was; the socket or file keeps pointing into the
//! sandbox afterwards.

pub mod proc_net;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `NSFS_MAGIC` from `linux/magic.h`: the filesystem namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// One network namespace, kept alive for as long as this value lives.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetNs {
    /// Opens a namespace file (`/proc/<pid>/ns/net`, or a bind mount of one such as the
    /// engine's `/var/run/docker/netns/<key>`). Anything else is refused.
    pub fn open(path: &Path) -> io::Result<NetNs> {
        let file = File::open(path)?;
        let fd = OwnedFd::from(file);
        // SAFETY: `stat` is plain old data and fstatfs fills it; the descriptor is open.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if stat.f_type as i64 != NSFS_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a namespace file", path.display()),
            ));
        }
        Ok(NetNs { fd })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The namespace's identity (its inode on nsfs), as `ip netns identify` and
    /// `/proc/<pid>/ns/net` show it.
    pub fn inode(&self) -> io::Result<u64> {
        // SAFETY: plain old data filled by fstat on an open descriptor.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stat.st_ino)
    }

    /// Runs `step` with the calling thread inside this namespace, then puts the thread back.
    /// `step` must be short and must not block or yield: the thread is shared (a Tokio worker).
    pub fn enter<T>(&self, step: impl FnOnce() -> T) -> io::Result<T> {
        let home = NetNs::current()?;
        setns(&self.fd)?;
        // Returns the thread home even if `step` panics.
        let _back = Return { home };
        Ok(step())
    }

    /// A TCP connection to `addr` as seen from inside this namespace: `127.0.0.1` is the
    /// namespace's own loopback, not the host's.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let family = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        let socket = self.enter(|| {
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })
        })??;
        tokio::net::TcpSocket::from_std_stream(socket)
            .connect(addr)
            .await
    }

    /// Opens a file with the calling thread inside this namespace; for `/proc/thread-self/net/*`
    /// the file then shows this namespace for as long as it stays open.
    pub fn open_file(&self, path: &Path) -> io::Result<File> {
        self.enter(|| File::open(path))?
    }
}

fn setns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on an open namespace descriptor.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Return {
    home: NetNs,
}

impl Drop for Return {
    fn drop(&mut self) {
        if let Err(err) = setns(&self.home.fd) {
            // A shared thread left in a sandbox's namespace would act for the host from inside
            // it: stopping is the only safe thing left.
            eprintln!("caged: cannot return a thread to its network namespace: {err}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh namespace, made on a throwaway thread so no shared thread ever moves.
    pub(crate) fn scratch() -> NetNs {
        std::thread::spawn(|| {
            // SAFETY: plain syscall; this thread ends right after.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(unshared, 0, "needs root");
            NetNs::current().unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn enter_returns_home() {
        let ns = scratch();
        let home = NetNs::current().unwrap().inode().unwrap();
        let inside = ns
            .enter(|| NetNs::current().unwrap().inode().unwrap())
            .unwrap();
        assert_eq!(inside, ns.inode().unwrap());
        assert_ne!(inside, home);
        assert_eq!(NetNs::current().unwrap().inode().unwrap(), home);
    }

    #[test]
    fn refuses_files_that_are_not_namespaces() {
        let err = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn connects_to_the_namespace_loopback_not_the_hosts() {
        // A listener on the host's loopback is not reachable from the namespace at its port.
        let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = host.local_addr().unwrap().port();
        let ns = scratch();
        let refused = ns.connect(([127, 0, 0, 1], port).into()).await;
        assert!(refused.is_err(), "reached the host's loopback from inside");

        // Loopback is down in a fresh namespace; bring it up and listen there.
        let inner = ns
            .enter(|| {
                std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .unwrap();
                std::net::TcpListener::bind("127.0.0.1:0").unwrap()
            })
            .unwrap();
        let inner_port = inner.local_addr().unwrap().port();
        let stream = ns.connect(([127, 0, 0, 1], inner_port).into()).await;
        assert!(stream.is_ok(), "{stream:?}");
        let (_accepted, _) = inner.accept().unwrap();
    }
}

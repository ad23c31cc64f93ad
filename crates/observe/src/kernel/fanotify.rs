//! File changes on the engine's filesystem, from fanotify.
//!
//! [`FsWatch`] marks the whole filesystem the engine keeps container root filesystems on and
//! reports every create, delete, move and close-after-write with the writer's pid, the directory
//! (as a file handle, turned back into a host path) and the entry's name. One mark covers every
//! sandbox, present and future; the caller tells sandboxes apart by path prefix.
//!
//! [`OpenWatch`] reports opens of single files (inode marks): `/etc/shadow` of one sandbox,
//! holding the opener until it is answered.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const EVENT_METADATA_LEN: usize = 24;
/// Handles resolved to paths, kept; cleared when it grows past this.
const MAX_CACHED_DIRS: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsChange {
    Created,
    Deleted,
    /// Closed after being opened for writing.
    Written,
    MovedFrom,
    MovedTo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsEvent {
    Change {
        change: FsChange,
        is_dir: bool,
        pid: i32,
        /// The directory holding the entry, as a host path; `None` when it could no longer be
        /// resolved (it was deleted before the event was read, and never seen before).
        dir: Option<PathBuf>,
        name: String,
    },
    /// The kernel's queue overflowed; events were lost.
    Overflow,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn init(flags: libc::c_uint, event_flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: fanotify_init takes flags only; the result is checked.
    let raw = check(unsafe {
        libc::fanotify_init(
            flags | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            event_flags as libc::c_uint,
        )
    })?;
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Reads whatever is queued on a non-blocking fanotify descriptor into `buf`; 0 when empty.
fn read_queue(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into a buffer we own, of its own length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(0),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

struct Metadata {
    len: usize,
    metadata_len: usize,
    mask: u64,
    fd: i32,
    pid: i32,
}

fn metadata_at(buf: &[u8]) -> Option<Metadata> {
    if buf.len() < EVENT_METADATA_LEN {
        return None;
    }
    let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
    let metadata_len = u16::from_ne_bytes(buf[6..8].try_into().ok()?) as usize;
    if len < EVENT_METADATA_LEN || len > buf.len() || metadata_len > len {
        return None;
    }
    Some(Metadata {
        len,
        metadata_len,
        mask: u64::from_ne_bytes(buf[8..16].try_into().ok()?),
        fd: i32::from_ne_bytes(buf[16..20].try_into().ok()?),
        pid: i32::from_ne_bytes(buf[20..24].try_into().ok()?),
    })
}

/// Every namespace-changing event on one filesystem.
pub struct FsWatch {
    fd: OwnedFd,
    /// Any directory on the watched filesystem, to open file handles against.
    mount: File,
    dirs: HashMap<Vec<u8>, PathBuf>,
    buf: Vec<u8>,
}

impl FsWatch {
    /// Watches the filesystem that holds `path`. Needs `CAP_SYS_ADMIN` (and
    /// `CAP_DAC_READ_SEARCH` to turn handles back into paths).
    pub fn new(path: &Path) -> io::Result<FsWatch> {
        let fd = init(
            libc::FAN_CLASS_NOTIF | libc::FAN_REPORT_DFID_NAME,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )?;
        let mask = libc::FAN_CREATE
            | libc::FAN_DELETE
            | libc::FAN_MOVED_FROM
            | libc::FAN_MOVED_TO
            | libc::FAN_CLOSE_WRITE
            | libc::FAN_ONDIR;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: a valid fanotify descriptor and NUL-terminated path; the result is checked.
        check(unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                mask,
                libc::AT_FDCWD,
                c_path.as_ptr(),
            )
        })?;
        Ok(FsWatch {
            fd,
            mount: File::open(path)?,
            dirs: HashMap::new(),
            buf: vec![0u8; 256 << 10],
        })
    }

    /// Reads what is queued without blocking, appending to `out`; false when nothing was.
    pub fn read(&mut self, out: &mut Vec<FsEvent>) -> io::Result<bool> {
        let n = read_queue(&self.fd, &mut self.buf)?;
        if n == 0 {
            return Ok(false);
        }
        let buf = std::mem::take(&mut self.buf);
        let mut at = 0;
        while let Some(meta) = metadata_at(&buf[at..n]) {
            let event = &buf[at..at + meta.len];
            at += meta.len;
            if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
                out.push(FsEvent::Overflow);
                continue;
            }
            let Some((handle, name)) = dir_handle_and_name(&event[meta.metadata_len..]) else {
                continue;
            };
            let change = if meta.mask & libc::FAN_CREATE != 0 {
                FsChange::Created
            } else if meta.mask & libc::FAN_DELETE != 0 {
                FsChange::Deleted
            } else if meta.mask & libc::FAN_MOVED_FROM != 0 {
                FsChange::MovedFrom
            } else if meta.mask & libc::FAN_MOVED_TO != 0 {
                FsChange::MovedTo
            } else {
                FsChange::Written
            };
            let is_dir = meta.mask & libc::FAN_ONDIR != 0;
            let dir = self.resolve(handle);
            if is_dir && change == FsChange::MovedFrom {
                // Paths cached under a moved directory are stale now; only those go (the cache
                // is what names the directories of files deleted with their directory, and
                // another sandbox's `mv` must not empty it).
                match &dir {
                    Some(parent) => {
                        let old = parent.join(&name);
                        self.dirs.retain(|_, path| !path.starts_with(&old));
                    }
                    None => self.dirs.clear(),
                }
            }
            out.push(FsEvent::Change {
                change,
                is_dir,
                pid: meta.pid,
                dir,
                name,
            });
        }
        self.buf = buf;
        Ok(true)
    }

    /// The host path of the directory a file handle names (cached; handles are stable).
    fn resolve(&mut self, handle: &[u8]) -> Option<PathBuf> {
        if let Some(path) = self.dirs.get(handle) {
            return Some(path.clone());
        }
        let path = open_handle(&self.mount, handle)?;
        if self.dirs.len() >= MAX_CACHED_DIRS {
            self.dirs.clear();
        }
        self.dirs.insert(handle.to_vec(), path.clone());
        Some(path)
    }
}

impl AsFd for FsWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The first `DFID_NAME` record of an event: the directory's `struct file_handle` bytes (type,
/// size and the handle itself, as open_by_handle_at wants them) and the entry's name.
fn dir_handle_and_name(mut info: &[u8]) -> Option<(&[u8], String)> {
    while info.len() >= 4 {
        let info_type = info[0];
        let len = u16::from_ne_bytes(info[2..4].try_into().ok()?) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let record = &info[..len];
        info = &info[len..];
        if info_type != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
            continue;
        }
        // header (4) + fsid (8), then struct file_handle { u32 bytes; i32 type; u8 f_handle[] }.
        let handle_at = 12;
        let bytes = u32::from_ne_bytes(record.get(handle_at..handle_at + 4)?.try_into().ok()?);
        let handle_end = handle_at + 8 + bytes as usize;
        let handle = record.get(handle_at..handle_end)?;
        let name = record.get(handle_end..)?;
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        return Some((handle, String::from_utf8_lossy(name).into_owned()));
    }
    None
}

fn open_handle(mount: &File, handle: &[u8]) -> Option<PathBuf> {
    // struct file_handle must be aligned for its u32/i32 header; copy into u32 storage.
    let mut storage = vec![0u32; handle.len().div_ceil(4)];
    // SAFETY: storage has at least handle.len() bytes, and the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            storage.as_mut_ptr().cast::<u8>(),
            handle.len(),
        );
    }
    // SAFETY: storage holds a file_handle as the kernel wrote it; the result is checked.
    let raw = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            storage.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Opens of chosen files (inode marks), as permission events: the opener waits until the
/// event is answered, so what it is (its command line, its working directory) can be read while
/// it certainly still exists. Every open is allowed; the answer is given when the [`Opened`] is
/// dropped, and the kernel allows whatever is pending if this watch goes away.
pub struct OpenWatch {
    fd: Arc<OwnedFd>,
    buf: Vec<u8>,
}

/// An open held until this is dropped.
pub struct Opened {
    pub pid: i32,
    pub dev: u64,
    pub ino: u64,
    file: File,
    group: Arc<OwnedFd>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        let response = libc::fanotify_response {
            fd: self.file.as_raw_fd(),
            response: libc::FAN_ALLOW,
        };
        // SAFETY: writing a fanotify_response, of its own size, to the group's descriptor.
        unsafe {
            libc::write(
                self.group.as_raw_fd(),
                (&response as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            );
        }
    }
}

impl OpenWatch {
    pub fn new() -> io::Result<OpenWatch> {
        Ok(OpenWatch {
            fd: Arc::new(init(
                libc::FAN_CLASS_CONTENT,
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE,
            )?),
            buf: vec![0u8; 64 << 10],
        })
    }

    /// Reports every open of the entry `name` in directory `dir` (never following it if it is a
    /// symlink); returns its (device, inode). Nothing is opened, so no event is raised by this.
    pub fn watch(&self, dir: &File, name: &str) -> io::Result<(u64, u64)> {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
        // SAFETY: a valid fanotify descriptor, directory descriptor and NUL-terminated name.
        check(unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_DONT_FOLLOW,
                libc::FAN_OPEN_PERM,
                dir.as_raw_fd(),
                c_name.as_ptr(),
            )
        })?;
        // SAFETY: stat is plain old data, filled by fstatat on success.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, NUL-terminated name and stat buffer.
        check(unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c_name.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok((stat.st_dev, stat.st_ino))
    }

    /// Reads queued opens; each is held until its [`Opened`] is dropped. Overflows are counted
    /// in the returned number.
    pub fn read(&mut self, out: &mut Vec<Opened>) -> io::Result<usize> {
        let n = read_queue(&self.fd, &mut self.buf)?;
        let mut overflows = 0;
        let mut at = 0;
        while let Some(meta) = metadata_at(&self.buf[at..n]) {
            at += meta.len;
            if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
                overflows += 1;
                continue;
            }
            if meta.fd < 0 {
                continue;
            }
            // SAFETY: the kernel opened this descriptor for us with the event; we own it now.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(meta.fd) });
            let (dev, ino) = file
                .metadata()
                .map(|stat| (stat.dev(), stat.ino()))
                .unwrap_or((0, 0));
            out.push(Opened {
                pid: meta.pid,
                dev,
                ino,
                file,
                group: self.fd.clone(),
            });
        }
        Ok(overflows)
    }
}

impl AsFd for OpenWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dfid_name_records_are_split() {
        let mut record = vec![libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 0, 0];
        record.extend_from_slice(&[7u8; 8]); // fsid
        record.extend_from_slice(&4u32.to_ne_bytes()); // handle bytes
        record.extend_from_slice(&77i32.to_ne_bytes()); // handle type
        record.extend_from_slice(&[1, 2, 3, 4]);
        record.extend_from_slice(b"motd\0\0\0");
        let len = record.len() as u16;
        record[2..4].copy_from_slice(&len.to_ne_bytes());
        let (handle, name) = dir_handle_and_name(&record).unwrap();
        assert_eq!(handle.len(), 12);
        assert_eq!(&handle[8..], &[1, 2, 3, 4]);
        assert_eq!(name, "motd");
        // A record that claims more than there is is refused.
        record[2..4].copy_from_slice(&(len + 40).to_ne_bytes());
        assert!(dir_handle_and_name(&record).is_none());
    }
}

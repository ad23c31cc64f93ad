//! Paths inside a sandbox's root, opened from the host without ever leaving that root: a
//! sandbox controls every symlink in its tree, and `/etc/passwd -> /../../host/etc/shadow` must
//! resolve to the sandbox's own file or fail. `openat2(RESOLVE_IN_ROOT)` makes the kernel treat
//! the root as `/` for every component and every symlink.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Largest program file hashed to tell what it is; bigger ones are not curl or a shell.
const MAX_DIGEST_BYTES: u64 = 64 << 20;

/// Opens `path` (absolute, as the sandbox sees it) inside the directory `root` as an `O_PATH`
/// handle, following symlinks only within `root`. An `O_PATH` open reads nothing, so it raises no
/// fanotify open event (the observer must never wait on its own permission events).
pub fn open_path_in(root: &File, path: &str) -> io::Result<File> {
    let path = std::ffi::CString::new(path.trim_start_matches('/'))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open_how is plain old data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a correctly sized open_how.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw as i32) }))
}

/// Opens for reading the regular file an `O_PATH` handle refers to (the same inode, whatever the
/// path now names), unless `refuse` says no for its (device, inode). Never blocks on a FIFO.
pub fn reopen_for_reading(handle: &File, refuse: impl Fn((u64, u64)) -> bool) -> io::Result<File> {
    let meta = handle.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if refuse((meta.dev(), meta.ino())) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a watched file",
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// Opens a sandbox's root directory (a host path) to resolve paths under.
pub fn open_root(root: &Path) -> io::Result<File> {
    File::open(root)
}

/// (device, inode) of the regular file `path` names inside `root`, following the sandbox's own
/// symlinks.
pub fn identity_in(root: &File, path: &str) -> Option<(u64, u64)> {
    let meta = open_path_in(root, path).ok()?.metadata().ok()?;
    meta.is_file().then(|| (meta.dev(), meta.ino()))
}

/// The directory holding `path` inside `root` (an `O_PATH` handle) and the last component.
pub fn parent_in(root: &File, path: &str) -> Option<(File, String)> {
    let (dir, name) = path.rsplit_once('/')?;
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    let dir = open_path_in(root, if dir.is_empty() { "/" } else { dir }).ok()?;
    dir.metadata()
        .ok()?
        .is_dir()
        .then(|| (dir, name.to_string()))
}

/// SHA-256 of a file's contents (a program's identity, whatever it is named).
pub fn digest(mut file: File) -> Option<[u8; 32]> {
    if file.metadata().ok()?.len() > MAX_DIGEST_BYTES {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("caged-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        // Absolute and climbing links stay in the root.
        std::os::unix::fs::symlink("/etc/passwd", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", dir.join("etc/climb")).unwrap();
        let root = open_root(&dir).unwrap();
        let inside = identity_in(&root, "/etc/passwd").unwrap();
        let (parent, name) = parent_in(&root, "/etc/passwd").unwrap();
        assert_eq!(name, "passwd");
        assert!(parent.metadata().unwrap().is_dir());
        assert_eq!(identity_in(&root, "/abs"), Some(inside));
        assert_eq!(identity_in(&root, "/etc/climb"), Some(inside));
        assert_eq!(
            identity_in(&root, "/etc"),
            None,
            "a directory is not a file"
        );
        assert_eq!(identity_in(&root, "/missing"), None);
        let text = std::fs::read(dir.join("etc/passwd")).unwrap();
        let expected: [u8; 32] = Sha256::digest(&text).into();
        let handle = open_path_in(&root, "/abs").unwrap();
        assert_eq!(
            digest(reopen_for_reading(&handle, |_| false).unwrap()),
            Some(expected)
        );
        assert!(
            reopen_for_reading(&handle, |id| id == inside).is_err(),
            "refused by identity"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

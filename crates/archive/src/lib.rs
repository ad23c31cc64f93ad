//! Every archive that crosses a trust boundary goes through here. Archives from users are
//! rewritten entry by entry before the container engine sees them (the engine's own extraction
//! has had escapes, and it must never be handed a compressed stream); archives from sandboxes are
//! extracted on a user's machine without writing outside the destination.
//!
//! The `tar` crate parses; the decisions about which paths, links and file types are acceptable
//! are made here, not left to its unpack helpers.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use tar::{EntryType, Header};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("more than {limit} bytes unpacked")]
    TooLarge { limit: u64 },
    #[error("entry {path:?}: deeper than {limit} directories")]
    TooDeep { path: String, limit: usize },
    #[error("unsupported compression ({kind}); send a plain tar or a gzip-compressed one")]
    UnsupportedCompression { kind: &'static str },
    #[error("not a readable tar archive")]
    Read(#[source] io::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn entry_error(path: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Entry {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Bounds on what one archive may contain.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: u64,
    /// Bytes of file content once unpacked (what lands on the disk, whatever the compression).
    pub max_bytes: u64,
    /// Path components of one entry.
    pub max_depth: usize,
}

impl Limits {
    /// What may be unpacked onto a disk of `disk_bytes`: no more than it holds.
    pub fn for_disk(disk_bytes: u64) -> Self {
        Limits {
            max_bytes: disk_bytes,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
            // Linux's PATH_MAX of 4096 bytes allows about 2,000 one-letter levels; no real tree
            // is near this, and a deeper one is a way to make every later walk of it slow.
            max_depth: 256,
        }
    }
}

/// Wraps `input` in a gzip decoder when it starts with gzip's magic; refuses other compressions.
pub fn decompressed<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let mut reader = BufReader::new(input);
    let head = reader.fill_buf().map_err(ArchiveError::Read)?;
    let kind = match head {
        [0x1f, 0x8b, ..] => return Ok(Box::new(flate2::read::MultiGzDecoder::new(reader))),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0xfd, b'7', b'z', b'X', b'Z', ..] => "xz",
        [b'B', b'Z', b'h', ..] => "bzip2",
        _ => return Ok(Box::new(reader)),
    };
    Err(ArchiveError::UnsupportedCompression { kind })
}

/// A relative path made only of normal components, or why not.
fn clean_relative(raw: &Path) -> Result<Option<PathBuf>, String> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed".into());
            }
            Component::ParentDir => return Err("`..` is not allowed".into()),
        }
    }
    Ok(if clean.as_os_str().is_empty() {
        None
    } else {
        Some(clean)
    })
}

/// Who owns what a sanitized archive writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Every entry owned by this uid and gid (an upload: the sandbox's user).
    Fixed { uid: u32, gid: u32 },
    /// As the archive says (a snapshot: what the sandbox had).
    Kept,
}

impl Owner {
    pub const ROOT: Owner = Owner::Fixed { uid: 0, gid: 0 };
}

/// Rewrites an uploaded tar into a plain one the engine can extract safely: relative paths
/// without `..`, only files, directories, symlinks and hard links to earlier entries, no device
/// nodes or FIFOs, no setuid/setgid bits, no extended attributes, owned by root. Returns the
/// number of entries written.
pub fn sanitize(input: impl Read, output: impl Write, limits: Limits) -> Result<u64, ArchiveError> {
    sanitize_owned(input, output, limits, Owner::ROOT)
}

/// [`sanitize`], with every entry owned by `owner`.
pub fn sanitize_owned(
    input: impl Read,
    output: impl Write,
    limits: Limits,
    owner: Owner,
) -> Result<u64, ArchiveError> {
    sanitize_with(input, output, limits, owner, |_| None)
}

/// [`sanitize_owned`], offering each regular file's clean path to `divert` first: when it
/// answers `Some`, the entry is taken out of the output (snapshots use this for whiteouts).
pub fn sanitize_with(
    input: impl Read,
    output: impl Write,
    limits: Limits,
    owner: Owner,
    mut divert: impl FnMut(&Path) -> Option<()>,
) -> Result<u64, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut seen = HashSet::new();
    // Symlinks this archive made: an extractor would write anything below one through it, out
    // of the destination, so no later entry may be below one.
    let mut links = HashSet::new();
    let mut entries_written = 0u64;
    let mut bytes = 0u64;
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw_path = entry.path().map_err(ArchiveError::Read)?.into_owned();
        let shown = raw_path.display().to_string();
        let Some(path) = clean_relative(&raw_path).map_err(|reason| entry_error(&shown, reason))?
        else {
            continue; // "./": the destination itself, whose mode is not the archive's to change
        };
        if path.components().count() > limits.max_depth {
            return Err(ArchiveError::TooDeep {
                path: shown,
                limit: limits.max_depth,
            });
        }
        if let Some(link) = path.ancestors().skip(1).find(|dir| links.contains(*dir)) {
            return Err(entry_error(
                &shown,
                format!(
                    "lies below {}, a symlink earlier in the archive",
                    link.display()
                ),
            ));
        }
        entries_written += 1;
        if entries_written > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o1777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let mut header = Header::new_gnu();
        header.set_mode(mode);
        header.set_mtime(mtime);
        let (uid, gid) = match owner {
            Owner::Fixed { uid, gid } => (u64::from(uid), u64::from(gid)),
            Owner::Kept => (
                entry.header().uid().unwrap_or(0),
                entry.header().gid().unwrap_or(0),
            ),
        };
        header.set_uid(uid);
        header.set_gid(gid);
        let kind = entry.header().entry_type();
        let write_err = |source| ArchiveError::Write {
            path: path.clone(),
            source,
        };
        match kind {
            EntryType::Regular | EntryType::Continuous if divert(&path).is_some() => {
                entries_written -= 1;
                continue;
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                bytes = bytes.saturating_add(size);
                if bytes > limits.max_bytes {
                    return Err(ArchiveError::TooLarge {
                        limit: limits.max_bytes,
                    });
                }
                header.set_entry_type(EntryType::Regular);
                header.set_size(size);
                builder
                    .append_data(&mut header, &path, &mut entry)
                    .map_err(write_err)?;
            }
            EntryType::Directory => {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, &path, io::empty())
                    .map_err(write_err)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ArchiveError::Read)?
                    .ok_or_else(|| entry_error(&shown, "symlink without a target"))?
                    .into_owned();
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, &path, &target)
                    .map_err(write_err)?;
                links.insert(path.clone());
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(ArchiveError::Read)?
                    .ok_or_else(|| entry_error(&shown, "hard link without a target"))?;
                let target = clean_relative(&target)
                    .map_err(|reason| entry_error(&shown, format!("hard link target: {reason}")))?
                    .filter(|target| seen.contains(target))
                    .ok_or_else(|| {
                        entry_error(&shown, "hard link to a file not earlier in the archive")
                    })?;
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                builder
                    .append_link(&mut header, &path, &target)
                    .map_err(write_err)?;
            }
            // Metadata records the tar crate folds into the entries that follow.
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {
                continue;
            }
            other => {
                return Err(entry_error(
                    &shown,
                    format!("{} entries are not allowed", type_name(other)),
                ));
            }
        }
        seen.insert(path);
    }
    builder.finish().map_err(|source| ArchiveError::Write {
        path: PathBuf::new(),
        source,
    })?;
    Ok(entries_written)
}

fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        _ => "unknown-type",
    }
}

/// Writes a one-entry tar to `out`: `name` (relative) with `size` bytes read from `data`,
/// preceded by directory entries for `dirs`, all owned by `uid` and `gid`.
pub fn single_file_tar(
    out: impl Write,
    dirs: &[PathBuf],
    name: &Path,
    data: impl Read,
    size: u64,
    mode: u32,
    (uid, gid): (u32, u32),
) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    for dir in dirs {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        builder.append_data(&mut header, dir, io::empty())?;
    }
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(mode & 0o1777);
    header.set_size(size);
    header.set_uid(uid.into());
    header.set_gid(gid.into());
    builder.append_data(&mut header, name, data)?;
    builder.into_inner()?.flush()
}

/// Extracts an archive that came out of a sandbox into `dest`, dropping its first path
/// component (the engine names entries after the copied directory). Nothing is written outside
/// `dest`: paths are cleaned, no write goes through a symlink, links may not point out, and
/// device nodes and FIFOs are skipped. Returns the number of entries written.
pub fn extract_into(
    input: impl Read,
    dest: &Path,
    strip_first: bool,
    limits: Limits,
) -> Result<u64, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    let mut written = 0u64;
    let mut bytes = 0u64;
    fs::create_dir_all(dest).map_err(|source| ArchiveError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw_path = entry.path().map_err(ArchiveError::Read)?.into_owned();
        let shown = raw_path.display().to_string();
        let Some(mut path) =
            clean_relative(&raw_path).map_err(|reason| entry_error(&shown, reason))?
        else {
            continue;
        };
        if strip_first {
            let rest: PathBuf = path.components().skip(1).collect();
            if rest.as_os_str().is_empty() {
                continue;
            }
            path = rest;
        }
        written += 1;
        if written > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let target = dest.join(&path);
        let write_err = |source| ArchiveError::Write {
            path: target.clone(),
            source,
        };
        // Every directory between dest and the entry must be a real directory, not a link a
        // previous entry planted.
        let mut current = dest.to_path_buf();
        if let Some(parent) = path.parent() {
            for part in parent.components() {
                current.push(part);
                match fs::symlink_metadata(&current) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(entry_error(
                            &shown,
                            "a parent directory is a link or a file",
                        ));
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir(&current).map_err(write_err)?;
                    }
                    Err(source) => return Err(write_err(source)),
                }
            }
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                bytes = bytes.saturating_add(entry.size());
                if bytes > limits.max_bytes {
                    return Err(ArchiveError::TooLarge {
                        limit: limits.max_bytes,
                    });
                }
                remove_non_dir(&target).map_err(write_err)?;
                let mut file = create_new_file(&target, mode).map_err(write_err)?;
                io::copy(&mut entry, &mut file).map_err(write_err)?;
            }
            EntryType::Directory => match fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(entry_error(
                        &shown,
                        "a directory entry over a link or a file",
                    ));
                }
                Err(_) => fs::create_dir(&target).map_err(write_err)?,
            },
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Read)?
                    .ok_or_else(|| entry_error(&shown, "symlink without a target"))?;
                remove_non_dir(&target).map_err(write_err)?;
                std::os::unix::fs::symlink(&*link, &target).map_err(write_err)?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Read)?
                    .ok_or_else(|| entry_error(&shown, "hard link without a target"))?;
                let mut link = clean_relative(&link)
                    .map_err(|reason| entry_error(&shown, format!("hard link target: {reason}")))?
                    .ok_or_else(|| entry_error(&shown, "hard link to nothing"))?;
                if strip_first {
                    link = link.components().skip(1).collect();
                }
                let source = dest.join(&link);
                let meta = fs::symlink_metadata(&source).map_err(write_err)?;
                if !meta.is_file() {
                    return Err(entry_error(
                        &shown,
                        "hard link to something other than an extracted file",
                    ));
                }
                remove_non_dir(&target).map_err(write_err)?;
                fs::hard_link(&source, &target).map_err(write_err)?;
            }
            _ => {
                written -= 1; // devices, FIFOs and metadata records are not recreated
                continue;
            }
        }
    }
    Ok(written)
}

fn remove_non_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        )),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

fn create_new_file(path: &Path, mode: u32) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_tar(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let mut header = Header::new_old();
            // Write the name bytes raw, bypassing the builder's own path checks, as an attacker would.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o4755);
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn sanitize_err(tar: &[u8]) -> String {
        sanitize(tar, Vec::new(), Limits::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn sanitize_refuses_escapes_and_special_files() {
        let cases = [
            (
                "/etc/passwd",
                EntryType::Regular,
                None,
                "entry \"/etc/passwd\": absolute paths are not allowed",
            ),
            (
                "a/../../x",
                EntryType::Regular,
                None,
                "entry \"a/../../x\": `..` is not allowed",
            ),
            (
                "dev",
                EntryType::Char,
                None,
                "entry \"dev\": character device entries are not allowed",
            ),
            (
                "fifo",
                EntryType::Fifo,
                None,
                "entry \"fifo\": FIFO entries are not allowed",
            ),
            (
                "h",
                EntryType::Link,
                Some("/etc/shadow"),
                "entry \"h\": hard link target: absolute paths are not allowed",
            ),
            (
                "h",
                EntryType::Link,
                Some("missing"),
                "entry \"h\": hard link to a file not earlier in the archive",
            ),
        ];
        for (name, kind, link, expected) in cases {
            assert_eq!(sanitize_err(&raw_tar(&[(name, kind, b"", link)])), expected);
        }
    }

    #[test]
    fn entries_are_owned_as_asked() {
        // As a sandbox's own file would be: owned by 1000:1000.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_uid(1000);
        header.set_gid(1000);
        builder.append_data(&mut header, "f", &b"x"[..]).unwrap();
        let input = builder.into_inner().unwrap();
        let owners = |owner: Owner| {
            let mut out = Vec::new();
            sanitize_owned(&input[..], &mut out, Limits::default(), owner).unwrap();
            let mut archive = tar::Archive::new(&out[..]);
            let entry = archive.entries().unwrap().next().unwrap().unwrap();
            (entry.header().uid().unwrap(), entry.header().gid().unwrap())
        };
        assert_eq!(owners(Owner::ROOT), (0, 0));
        assert_eq!(
            owners(Owner::Fixed {
                uid: 1000,
                gid: 100
            }),
            (1000, 100)
        );
        assert_eq!(owners(Owner::Kept), (1000, 1000));
    }

    #[test]
    fn sanitize_strips_privilege_bits_and_keeps_content() {
        let input = raw_tar(&[
            ("./dir/", EntryType::Directory, b"", None),
            ("dir/run", EntryType::Regular, b"#!/bin/sh\n", None),
            ("dir/link", EntryType::Symlink, b"", Some("/etc/shadow")),
        ]);
        let mut out = Vec::new();
        assert_eq!(
            sanitize(&input[..], &mut out, Limits::default()).unwrap(),
            3
        );
        let mut archive = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            seen.push((
                entry.path().unwrap().display().to_string(),
                entry.header().mode().unwrap(),
                data,
            ));
        }
        assert_eq!(
            seen,
            vec![
                ("dir".to_string(), 0o755, String::new()),
                ("dir/run".to_string(), 0o755, "#!/bin/sh\n".to_string()),
                ("dir/link".to_string(), 0o755, String::new()),
            ]
        );
    }

    #[test]
    fn sanitize_refuses_entries_below_a_link_it_made() {
        for below in ["up/etc/passwd", "up/etc", "up/x/y"] {
            let input = raw_tar(&[
                ("ok", EntryType::Regular, b"1", None),
                ("up", EntryType::Symlink, b"", Some("/")),
                (below, EntryType::Regular, b"x", None),
            ]);
            let err = sanitize(&input[..], Vec::new(), Limits::default()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("entry {below:?}: lies below up, a symlink earlier in the archive")
            );
        }
        // A link beside other entries, or a sibling whose name starts like it, is fine.
        let input = raw_tar(&[
            ("up", EntryType::Symlink, b"", Some("/")),
            ("upper/file", EntryType::Regular, b"x", None),
        ]);
        assert_eq!(
            sanitize(&input[..], Vec::new(), Limits::default()).unwrap(),
            2
        );
    }

    #[test]
    fn sanitize_refuses_deep_paths() {
        let deep = ["d"; 5].join("/");
        let input = raw_tar(&[(&deep, EntryType::Regular, b"x", None)]);
        let limits = Limits {
            max_depth: 4,
            ..Limits::default()
        };
        let err = sanitize(&input[..], Vec::new(), limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry \"d/d/d/d/d\": deeper than 4 directories"
        );
        let limits = Limits {
            max_depth: 5,
            ..Limits::default()
        };
        assert_eq!(sanitize(&input[..], Vec::new(), limits).unwrap(), 1);
    }

    #[test]
    fn sanitize_enforces_limits() {
        let input = raw_tar(&[
            ("a", EntryType::Regular, b"12345", None),
            ("b", EntryType::Regular, b"", None),
        ]);
        let err = sanitize(
            &input[..],
            Vec::new(),
            Limits {
                max_entries: 1,
                max_bytes: 100,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "more than 1 entries");
        let err = sanitize(
            &input[..],
            Vec::new(),
            Limits {
                max_entries: 10,
                max_bytes: 4,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "more than 4 bytes unpacked");
    }

    #[test]
    fn extract_never_writes_through_a_planted_link() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let link_target = outside.path().to_str().unwrap().to_string();
        let input = raw_tar(&[
            ("top/", EntryType::Directory, b"", None),
            ("top/esc", EntryType::Symlink, b"", Some(&link_target)),
            ("top/esc/pwned", EntryType::Regular, b"x", None),
        ]);
        let err = extract_into(&input[..], dest.path(), true, Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry \"top/esc/pwned\": a parent directory is a link or a file"
        );
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());

        // Replacing a planted link with a file writes a new file, not through the link.
        let victim = outside.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let victim_str = victim.to_str().unwrap().to_string();
        let input = raw_tar(&[
            ("top/f", EntryType::Symlink, b"", Some(&victim_str)),
            ("top/f", EntryType::Regular, b"new", None),
        ]);
        extract_into(&input[..], dest.path(), true, Limits::default()).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_to_string(dest.path().join("f")).unwrap(), "new");
    }

    #[test]
    fn gzip_is_decoded_and_other_compressions_are_named() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        let mut text = String::new();
        decompressed(io::Cursor::new(gz))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");
        let err = decompressed(io::Cursor::new(vec![0x28, 0xb5, 0x2f, 0xfd, 0]))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "unsupported compression (zstd); send a plain tar or a gzip-compressed one"
        );
    }
}

//! Snapshots: what changed in a sandbox's filesystem since its template, captured as a tar of the
//! added and changed paths plus OCI-style whiteouts (`dir/.wh.name`) for deletions, kept
//! zstd-compressed (fast at both ends, within a few percent of gzip's size) behind a small
//! [`Storage`] trait, and turned into a plain `.tar.gz` only for download.
//!
//! Everything here reads content that came out of a sandbox, so it is treated as hostile:
//! capture never follows links (the engine's export stores them as links), and applying a
//! snapshot goes through `caged_archive`'s sanitizer with size and entry limits.

mod storage;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use caged_archive::{ArchiveError, Limits};
use sha2::{Digest, Sha256};

pub use storage::{LocalStorage, PendingBlob, Storage};

/// Prefix of a whiteout entry's file name: `a/b/.wh.c` records that `a/b/c` was deleted.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// zstd level for snapshots at rest: level 1 runs ~10x faster than gzip -6 for about its size.
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot archive rejected: {0}")]
    Archive(#[from] ArchiveError),
    #[error("snapshot storage failed")]
    Io(#[from] io::Error),
    #[error("deleted path {path:?} is not a clean absolute path")]
    BadDeletion { path: String },
}

/// How a path differs from the template, as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(String),
    Modified(String),
    Deleted(String),
}

/// What a capture wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub entries: u64,
    pub deletions: u64,
    /// Bytes of the uncompressed diff tar.
    pub raw_bytes: u64,
    /// SHA-256 of the uncompressed diff tar: equal diffs have equal checksums.
    pub sha256: String,
}

/// Normalizes a path to its relative form without leading `/` or `./` or trailing `/`.
fn relative(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// Writes the diff of a sandbox: from `export` (the engine's tar of the whole filesystem) the
/// entries `changes` names as added or modified, then whiteouts for the deleted ones; compressed
/// with zstd into `out`.
pub fn capture(
    export: impl Read,
    changes: &[Change],
    out: impl Write,
) -> Result<Captured, SnapshotError> {
    let mut keep = HashSet::new();
    let mut deleted = Vec::new();
    for change in changes {
        match change {
            Change::Added(path) | Change::Modified(path) => {
                keep.insert(relative(path));
            }
            Change::Deleted(path) => deleted.push(relative(path)),
        }
    }
    let encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    let mut hashing = HashingWriter {
        inner: encoder,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut entries = 0;
    {
        let mut builder = tar::Builder::new(&mut hashing);
        builder.mode(tar::HeaderMode::Complete);
        let mut archive = tar::Archive::new(export);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = relative(&entry.path()?.to_string_lossy());
            if path.is_empty() || !keep.contains(&path) {
                continue;
            }
            copy_entry(&mut builder, &mut entry, Path::new(&path))?;
            entries += 1;
        }
        deleted.sort();
        for path in &deleted {
            let path = Path::new(path);
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let whiteout = path.with_file_name(format!("{WHITEOUT_PREFIX}{name}"));
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            header.set_mode(0o600);
            builder.append_data(&mut header, &whiteout, io::empty())?;
        }
        builder.finish()?;
    }
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = hashing;
    inner.finish()?;
    Ok(Captured {
        entries,
        deletions: deleted.len() as u64,
        raw_bytes: bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Copies one entry under `path`. Links stay links: the archive records their target, never
/// what it points to.
fn copy_entry<W: Write, R: Read>(
    builder: &mut tar::Builder<W>,
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
) -> io::Result<()> {
    let mut header = entry.header().clone();
    match header.entry_type() {
        tar::EntryType::Symlink | tar::EntryType::Link => {
            let target = entry
                .link_name()?
                .map(|target| target.into_owned())
                .unwrap_or_default();
            builder.append_link(&mut header, path, target)
        }
        _ => builder.append_data(&mut header, path, entry),
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A snapshot made ready to apply: the paths to delete first, then a sanitized plain tar.
#[derive(Debug)]
pub struct Plan {
    /// Absolute paths, clean (no `..`), deepest last.
    pub deletions: Vec<String>,
    pub entries: u64,
}

/// Reads a stored snapshot (zstd) and writes the sanitized tar to extract at `/` into `out`,
/// returning the deletions to make before it. Refuses the whole snapshot on the first bad entry;
/// call it with [`io::sink`] first to validate without touching anything.
pub fn plan(blob: impl Read, out: impl Write, limits: Limits) -> Result<Plan, SnapshotError> {
    let decoder = zstd::stream::read::Decoder::new(blob)?;
    let mut deletions = Vec::new();
    // The sandbox's files keep their owners (its user's stay its user's).
    let entries =
        caged_archive::sanitize_with(decoder, out, limits, caged_archive::Owner::Kept, |path| {
            let name = path.file_name()?.to_str()?;
            let deleted = name.strip_prefix(WHITEOUT_PREFIX)?;
            deletions.push(path.with_file_name(deleted));
            Some(())
        })?;
    let mut absolute = Vec::with_capacity(deletions.len());
    for path in deletions {
        let clean = path
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        let text = format!("/{}", path.display());
        if !clean || path.as_os_str().is_empty() {
            return Err(SnapshotError::BadDeletion { path: text });
        }
        absolute.push(text);
    }
    Ok(Plan {
        deletions: absolute,
        entries,
    })
}

/// Converts a stored snapshot into a standard `.tar.gz` of its files (whiteouts left out; they
/// are listed in `.caged-snapshot-deleted.txt` at the top when there are any).
pub fn to_tar_gz(blob: impl Read, out: impl Write) -> Result<(), SnapshotError> {
    let decoder = zstd::stream::read::Decoder::new(blob)?;
    let gzip = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gzip);
    let mut archive = tar::Archive::new(decoder);
    let mut deleted = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry.path()?.into_owned();
        if let Some(name) = path.file_name().and_then(|name| name.to_str())
            && let Some(original) = name.strip_prefix(WHITEOUT_PREFIX)
        {
            deleted.push(format!("/{}", path.with_file_name(original).display()));
            continue;
        }
        copy_entry(&mut builder, &mut entry, &path)?;
    }
    if !deleted.is_empty() {
        let list = deleted.join("\n") + "\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(list.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, ".caged-snapshot-deleted.txt", list.as_bytes())?;
    }
    builder.into_inner()?.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, path, data).unwrap();
        };
        add("etc/hostname", b"template\n");
        add("workspace/new.txt", b"new\n");
        add("etc/motd", b"changed\n");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "workspace/evil", "/etc/shadow")
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn capture_keeps_only_the_diff_and_plan_gives_it_back() {
        let changes = vec![
            Change::Added("/workspace/new.txt".into()),
            Change::Added("/workspace/evil".into()),
            Change::Modified("/etc/motd".into()),
            Change::Deleted("/usr/share/doc".into()),
        ];
        let mut blob = Vec::new();
        let captured = capture(&export_tar()[..], &changes, &mut blob).unwrap();
        assert_eq!((captured.entries, captured.deletions), (3, 1));
        // The same diff twice has the same checksum.
        let again = capture(&export_tar()[..], &changes, Vec::new()).unwrap();
        assert_eq!(captured.sha256, again.sha256);

        let mut clean = Vec::new();
        let plan = plan(&blob[..], &mut clean, Limits::default()).unwrap();
        assert_eq!(plan.deletions, vec!["/usr/share/doc".to_string()]);
        let mut archive = tar::Archive::new(&clean[..]);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let link = entry
                    .link_name()
                    .unwrap()
                    .map(|l| format!(" -> {}", l.display()))
                    .unwrap_or_default();
                format!("{}{link}", entry.path().unwrap().display())
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "etc/motd",
                "workspace/evil -> /etc/shadow",
                "workspace/new.txt"
            ]
        );

        let mut gz = Vec::new();
        to_tar_gz(&blob[..], &mut gz).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn a_hostile_blob_is_refused_whole() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        builder.append_data(&mut header, "ok", &b"1"[..]).unwrap();
        let mut raw = builder.into_inner().unwrap();
        // Append an entry with an absolute path, as a tampered blob would.
        let mut evil = tar::Header::new_old();
        evil.as_old_mut().name[..9].copy_from_slice(b"/etc/evil");
        evil.set_size(0);
        evil.set_cksum();
        let end = raw.len() - 1024;
        raw.truncate(end);
        raw.extend_from_slice(evil.as_bytes());
        raw.extend_from_slice(&[0; 1024]);
        let blob = zstd::encode_all(&raw[..], 1).unwrap();
        let err = plan(&blob[..], io::sink(), Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot archive rejected: entry \"/etc/evil\": absolute paths are not allowed"
        );
        // Not zstd at all.
        assert!(plan(&b"garbage"[..], io::sink(), Limits::default()).is_err());
    }
}

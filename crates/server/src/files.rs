//! Files in and out of a sandbox, whatever door asked: a file's bytes or a directory as a tar
//! out; a file, or a tar extracted into a directory, in. Paths are resolved inside the sandbox
//! only; uploaded archives are rewritten by `caged_archive::sanitize` and decompressed here, so
//! the engine only ever sees a plain, clean tar.
//!
//! An upload is read as it arrives into an unlinked file in the data folder (gone with the
//! process, whatever kills it), checked whole against the sandbox's disk and the archive
//! limits, and only then streamed to the engine: memory stays bounded whatever the compression
//! ratio, and a refused upload changes nothing in the sandbox.

use caged_domain::EventKind;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use caged_archive::{ArchiveError, Limits};
use caged_domain::SandboxId;
use caged_runtime::{ByteStream, RuntimeError};
use caged_store::SandboxRecord;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde_json::json;

use crate::error::{Error, Result};
use crate::paths::{sandbox_path, split};
use crate::state::AppState;
use crate::{blocking, sandboxes};

const MAX_LINK_HOPS: usize = 8;

fn checked_path(raw: &str) -> Result<String> {
    sandbox_path(raw).map_err(|err| Error::invalid("bad_path", err.to_string()))
}

/// What a read found.
pub(crate) enum Read {
    /// A directory, as an uncompressed tar.
    Directory(ByteStream),
    /// A file's bytes, and its permission bits.
    File {
        content: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
        mode: u32,
    },
}

/// Reads `raw_path`, following links within the sandbox.
pub(crate) async fn read(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    raw_path: &str,
) -> Result<Read> {
    let mut path = checked_path(raw_path)?;
    let (record, _busy) = sandboxes::active(state, account_id, id, "file read").await?;
    let handle = sandboxes::container_of(&record)?;
    let mut stat = state.node.stat(handle, &path).await?;
    // The engine reports a link's target resolved within the sandbox's root; follow it there.
    let mut hops = 0;
    while let Some(target) = stat.link_target.clone() {
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return Err(Error::invalid(
                "bad_path",
                format!("{raw_path} : too many levels of symbolic links"),
            ));
        }
        path = checked_path(&target)?;
        stat = state.node.stat(handle, &path).await?;
    }
    let tar = state.node.read_tar(handle, &path).await?;
    let kind = if stat.is_dir { "directory" } else { "file" };
    let payload = json!({ "op": "read", "path": raw_path, "resolved": path, "kind": kind, "size": stat.size });
    sandboxes::record_activity(state, &record, EventKind::File, payload).await;
    if stat.is_dir {
        return Ok(Read::Directory(tar));
    }
    // A single file: stream the one entry's bytes out of the engine's tar.
    let content = blocking::pipe(tar, |reader, writer| {
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries()?;
        let mut entry = entries.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "empty archive from the engine",
            )
        })??;
        // The path may have been swapped (for a link, a directory) since it was looked at: a
        // read that cannot deliver the whole file fails the stream, which aborts the response,
        // rather than ending it cleanly as a short file.
        let kind = entry.header().entry_type();
        if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            return Err(std::io::Error::other(
                "the path stopped being a regular file while it was read",
            ));
        }
        let expected = entry.size();
        let copied = std::io::copy(&mut entry, writer)?;
        if copied != expected {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the engine sent {copied} of the file's {expected} bytes"),
            ));
        }
        Ok(())
    });
    Ok(Read::File {
        content: Box::pin(content),
        mode: stat.mode & 0o777,
    })
}

/// An upload's body, read as it arrives.
pub(crate) type Upload = BoxStream<'static, std::io::Result<Bytes>>;

/// `body`, cut off with an error once it passes the server's upload limit; the flag says
/// whether that is why it ended.
pub(crate) fn capped(body: Upload, limit: usize) -> (Upload, Arc<AtomicBool>) {
    let over = Arc::new(AtomicBool::new(false));
    let flag = over.clone();
    let mut seen = 0usize;
    let capped = body.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(
                "upload larger than the server's limit",
            ));
        }
        Ok(chunk)
    });
    (capped.boxed(), over)
}

pub(crate) fn too_large(state: &AppState) -> Error {
    Error::TooLarge(format!(
        "upload refused: larger than the server's limit of {} MB (--max-upload-mb)",
        state.config.max_upload_bytes >> 20
    ))
}

/// What an upload into `record` may unpack to: no more than its disk holds.
fn upload_limits(record: &SandboxRecord) -> Limits {
    Limits::for_disk(record.config.resources.disk << 30)
}

/// A spooled upload, rewound and ready to stream to the engine.
pub(crate) fn spooled(file: std::fs::File) -> ByteStream {
    let file = tokio::fs::File::from_std(file);
    tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
        .map(|chunk| chunk.map_err(RuntimeError::from))
        .boxed()
}

/// An unlinked file in the data folder: its blocks are freed when it is closed, or when the
/// process dies.
pub(crate) fn spool_file(state: &AppState) -> std::io::Result<std::fs::File> {
    tempfile::tempfile_in(&state.config.data_dir)
}

/// Extracts a tar (plain or gzip) into directory `raw_path`, making it and its parents if
/// missing; returns the path and how many entries it held.
pub(crate) async fn write_tar(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    raw_path: &str,
    body: Upload,
) -> Result<(String, u64)> {
    let path = checked_path(raw_path)?;
    let (record, _busy) = sandboxes::active(state, account_id, id, "file write").await?;
    let handle = sandboxes::container_of(&record)?;
    let limits = upload_limits(&record);
    let (uid, gid) = owner(state, handle, &record).await?;
    let spool = spool_file(state).map_err(|err| Error::Internal(format!("spooling: {err}")))?;
    let (body, over) = capped(body, state.config.max_upload_bytes);
    let checked = blocking::consume(body, move |reader| {
        let mut spool = spool;
        let input = caged_archive::decompressed(reader)?;
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, &mut spool);
        let owner = caged_archive::Owner::Fixed { uid, gid };
        let entries = caged_archive::sanitize_owned(input, &mut out, limits, owner)?;
        let spool_err = |source| ArchiveError::Write {
            path: PathBuf::from("(spool)"),
            source,
        };
        out.flush().map_err(spool_err)?;
        drop(out);
        spool.rewind().map_err(spool_err)?;
        Ok::<_, ArchiveError>((spool, entries))
    })
    .await;
    let (clean, entries) = match checked {
        Ok(done) => done,
        Err(_) if over.load(Ordering::Relaxed) => return Err(too_large(state)),
        Err(ArchiveError::TooLarge { limit }) => {
            return Err(Error::TooLarge(format!(
                "archive refused: it unpacks to more than the sandbox's {} GB disk ({limit} bytes)",
                record.config.resources.disk
            )));
        }
        Err(ArchiveError::Write { source, .. }) => {
            return Err(Error::Internal(format!("spooling the upload: {source}")));
        }
        Err(err) => {
            return Err(Error::invalid(
                "bad_archive",
                format!("archive rejected: {err}"),
            ));
        }
    };
    let (base, missing) = missing_dirs(state, handle, &path).await?;
    if !missing.is_empty() {
        let dirs_only =
            dirs_tar(&missing, (uid, gid)).map_err(|err| Error::Internal(err.to_string()))?;
        state
            .node
            .write_tar(handle, &base, dirs_only.into())
            .await?;
    }
    state
        .node
        .write_tar_stream(handle, &path, spooled(clean))
        .await?;
    let payload = json!({ "op": "write", "path": path, "kind": "directory", "entries": entries });
    sandboxes::record_activity(state, &record, EventKind::File, payload).await;
    Ok((path, entries))
}

/// Writes `body` as the file `raw_path` with permission bits `mode`, making its parents if
/// missing; returns the path.
pub(crate) async fn write_file(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    raw_path: &str,
    body: Upload,
    mode: u32,
) -> Result<(String, u64)> {
    let path = checked_path(raw_path)?;
    let (record, _busy) = sandboxes::active(state, account_id, id, "file write").await?;
    let handle = sandboxes::container_of(&record)?;
    let Some((parent, name)) = split(&path) else {
        return Err(Error::invalid("bad_path", "a file cannot be written at /"));
    };
    match state.node.stat(handle, &path).await {
        Ok(stat) if stat.is_dir => {
            return Err(Error::IsDirectory(format!(
                "{path} is a directory; send a tar to write into it"
            )));
        }
        Ok(_) | Err(caged_node::Error::Runtime(RuntimeError::PathNotFound { .. })) => {}
        Err(err) => return Err(err.into()),
    }
    let disk = record.config.resources.disk << 30;
    let spool = spool_file(state).map_err(|err| Error::Internal(format!("spooling: {err}")))?;
    let (body, over) = capped(body, state.config.max_upload_bytes);
    let received = blocking::consume(body, move |reader| {
        let mut spool = spool;
        // One byte past the disk is enough to know it does not fit.
        let size = std::io::copy(&mut std::io::Read::take(reader, disk + 1), &mut spool)?;
        spool.rewind()?;
        Ok::<_, std::io::Error>((spool, size))
    })
    .await;
    let (content, size) = match received {
        Ok(done) => done,
        Err(_) if over.load(Ordering::Relaxed) => return Err(too_large(state)),
        Err(err) => return Err(Error::Internal(format!("reading the upload: {err}"))),
    };
    if size > disk {
        return Err(Error::TooLarge(format!(
            "file refused: larger than the sandbox's {} GB disk",
            record.config.resources.disk
        )));
    }
    let owner = owner(state, handle, &record).await?;
    let (base, missing) = missing_dirs(state, handle, parent).await?;
    let relative: PathBuf = missing.last().cloned().unwrap_or_default().join(name);
    let tar = blocking::produce(move |out| {
        caged_archive::single_file_tar(out, &missing, &relative, content, size, mode, owner)
    })
    .map(|chunk| chunk.map_err(RuntimeError::from))
    .boxed();
    state.node.write_tar_stream(handle, &base, tar).await?;
    let payload = json!({ "op": "write", "path": path, "kind": "file", "bytes": size });
    sandboxes::record_activity(state, &record, EventKind::File, payload).await;
    Ok((path, size))
}

/// The deepest existing ancestor of `dir` (which must be a directory) and the directories to
/// create below it, as relative paths from shallowest to deepest.
async fn missing_dirs(state: &AppState, handle: &str, dir: &str) -> Result<(String, Vec<PathBuf>)> {
    let mut missing_names = Vec::new();
    let mut current = dir.to_string();
    loop {
        match state.node.stat(handle, &current).await {
            Ok(stat) if stat.is_dir || stat.link_target.is_some() => break,
            Ok(_) => {
                return Err(Error::NotADirectory(format!(
                    "{current} is not a directory"
                )));
            }
            Err(caged_node::Error::Runtime(RuntimeError::PathNotFound { .. })) => {
                let Some((parent, name)) = split(&current) else {
                    break;
                };
                missing_names.push(name.to_string());
                current = parent.to_string();
            }
            Err(err) => return Err(err.into()),
        }
    }
    missing_names.reverse();
    let mut missing = Vec::new();
    let mut relative = PathBuf::new();
    for name in missing_names {
        relative.push(name);
        missing.push(relative.clone());
    }
    Ok((current, missing))
}

/// Who owns what the files API writes into the sandbox: its user, as its own `/etc/passwd`
/// says (root for a sandbox that runs as root).
async fn owner(state: &AppState, handle: &str, record: &SandboxRecord) -> Result<(u32, u32)> {
    let user = match record.config.user.as_deref() {
        None | Some("root") => return Ok((0, 0)),
        Some(user) => user,
    };
    let mut tar = Vec::new();
    let mut stream = state.node.read_tar(handle, "/etc/passwd").await?;
    while let Some(chunk) = stream.next().await {
        tar.extend_from_slice(&chunk.map_err(caged_node::Error::from)?);
        if tar.len() as u64 > PASSWD_LIMIT + 4096 {
            break;
        }
    }
    let passwd = caged_runtime::file_in_tar(&tar, PASSWD_LIMIT).unwrap_or_default();
    caged_runtime::parse_passwd(&String::from_utf8_lossy(&passwd))
        .into_iter()
        .find(|account| account.name == user)
        .map(|account| (account.uid, account.gid))
        .ok_or_else(|| {
            Error::UnknownUser(format!(
                "the sandbox's user {user:?} is no longer in its /etc/passwd, so its files have no owner"
            ))
        })
}

/// An `/etc/passwd` is a few kilobytes.
const PASSWD_LIMIT: u64 = 1 << 20;

fn dirs_tar(dirs: &[PathBuf], (uid, gid): (u32, u32)) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        builder.append_data(&mut header, dir, std::io::empty())?;
    }
    builder.into_inner()
}

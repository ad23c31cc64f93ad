//! Files in and out of a sandbox, whatever door asked: a file's bytes or a directory as a tar
//! out; a file, or a tar extracted into a directory, in. Paths are resolved inside the sandbox
//! only; uploaded archives are rewritten by `caged_archive::sanitize` and decompressed here, so
//! the engine only ever sees a plain, clean tar.

use caged_domain::EventKind;
use std::path::PathBuf;

use bytes::Bytes;
use caged_archive::Limits;
use caged_domain::SandboxId;
use caged_runtime::{ByteStream, RuntimeError};
use futures_util::Stream;
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
        std::io::copy(&mut entry, writer)?;
        Ok(())
    });
    Ok(Read::File {
        content: Box::pin(content),
        mode: stat.mode & 0o777,
    })
}

/// Extracts a tar (plain or gzip) into directory `raw_path`, making it and its parents if
/// missing; returns the path and how many entries it held.
pub(crate) async fn write_tar(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    raw_path: &str,
    body: Bytes,
) -> Result<(String, u64)> {
    let path = checked_path(raw_path)?;
    let (record, _busy) = sandboxes::active(state, account_id, id, "file write").await?;
    let handle = sandboxes::container_of(&record)?;
    let body_len = body.len();
    let (clean, entries) = blocking::run(
        move || -> std::result::Result<(Vec<u8>, u64), caged_archive::ArchiveError> {
            let reader = caged_archive::decompressed(std::io::Cursor::new(body))?;
            let mut clean = Vec::with_capacity(body_len + 1024);
            let entries = caged_archive::sanitize(reader, &mut clean, Limits::default())?;
            Ok((clean, entries))
        },
    )
    .await
    .map_err(|err| Error::invalid("bad_archive", format!("archive rejected: {err}")))?;
    let (base, missing) = missing_dirs(state, handle, &path).await?;
    if !missing.is_empty() {
        let dirs_only = dirs_tar(&missing).map_err(|err| Error::Internal(err.to_string()))?;
        state
            .node
            .write_tar(handle, &base, dirs_only.into())
            .await?;
    }
    state.node.write_tar(handle, &path, clean.into()).await?;
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
    body: Bytes,
    mode: u32,
) -> Result<String> {
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
    let (base, missing) = missing_dirs(state, handle, parent).await?;
    let relative: PathBuf = missing.last().cloned().unwrap_or_default().join(name);
    let size = body.len();
    let tar = caged_archive::single_file_tar(&missing, &relative, &body, mode)
        .map_err(|err| Error::Internal(err.to_string()))?;
    state.node.write_tar(handle, &base, tar.into()).await?;
    let payload = json!({ "op": "write", "path": path, "kind": "file", "bytes": size });
    sandboxes::record_activity(state, &record, EventKind::File, payload).await;
    Ok(path)
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

fn dirs_tar(dirs: &[PathBuf]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder.append_data(&mut header, dir, std::io::empty())?;
    }
    builder.into_inner()
}

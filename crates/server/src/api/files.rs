//! Files in and out of a sandbox. `GET ?path=` answers a file's bytes, or a directory as a tar;
//! `PUT ?path=` writes a file from the body, or extracts a tar body (`Content-Type:
//! application/x-tar`, optionally gzip-compressed) into a directory. Paths are resolved inside the
//! sandbox only; uploaded archives are rewritten by `caged_archive::sanitize` and decompressed
//! here, so the engine only ever sees a plain, clean tar.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caged_archive::Limits;
use caged_runtime::RuntimeError;
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use super::sandboxes::parse_id;
use crate::auth::Caller;
use crate::paths::{sandbox_path, split};
use crate::sandboxes::{self, container_of};
use crate::{AppState, blocking};

pub(crate) const KIND_HEADER: &str = "x-caged-kind";
pub(crate) const MODE_HEADER: &str = "x-caged-mode";
const MAX_LINK_HOPS: usize = 8;

#[derive(Deserialize)]
pub(crate) struct PathQuery {
    path: String,
}

fn checked_path(raw: &str) -> Result<String, ApiError> {
    sandbox_path(raw).map_err(|err| ApiError::bad_request("bad_path", err.to_string()))
}

pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let mut path = checked_path(&query.path)?;
    let (record, _busy) =
        sandboxes::active(&state, &account.id, parse_id(&id)?, "file read").await?;
    let handle = container_of(&record)?;
    let mut stat = state.runtime.stat_path(handle, &path).await?;
    // The engine reports a link's target resolved within the sandbox's root; follow it there.
    let mut hops = 0;
    while let Some(target) = stat.link_target.clone() {
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return Err(ApiError::bad_request(
                "bad_path",
                format!("{} : too many levels of symbolic links", query.path),
            ));
        }
        path = checked_path(&target)?;
        stat = state.runtime.stat_path(handle, &path).await?;
    }
    let tar = state.runtime.read_tar(handle, &path).await?;
    let kind = if stat.is_dir { "directory" } else { "file" };
    let payload = json!({ "op": "read", "path": query.path, "resolved": path, "kind": kind, "size": stat.size });
    sandboxes::record_activity(&state, &record, "file", payload).await;
    if stat.is_dir {
        let mut response = Body::from_stream(tar).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-tar"),
        );
        headers.insert(KIND_HEADER, HeaderValue::from_static("directory"));
        return Ok(response);
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
    let mut response = Body::from_stream(content).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(KIND_HEADER, HeaderValue::from_static("file"));
    if let Ok(mode) = HeaderValue::from_str(&format!("{:o}", stat.mode & 0o777)) {
        headers.insert(MODE_HEADER, mode);
    }
    Ok(response)
}

pub(crate) async fn write(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let mut refused = ApiError::new(
                rejection.status(),
                "too_large",
                format!(
                    "upload refused: {} (the server's limit is --max-upload-mb)",
                    rejection.body_text()
                ),
            )
            .into_response();
            // The rest of the upload is never read, so this connection cannot carry another
            // request: say so, or the client may send its next one on it and lose it.
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(refused);
        }
    };
    let path = checked_path(&query.path)?;
    let (record, _busy) =
        sandboxes::active(&state, &account.id, parse_id(&id)?, "file write").await?;
    let handle = container_of(&record)?;
    let is_tar = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/x-tar") || value.starts_with("application/gzip")
        });
    if is_tar {
        let body_len = body.len();
        let (clean, entries) = blocking::run(
            move || -> Result<(Vec<u8>, u64), caged_archive::ArchiveError> {
                let reader = caged_archive::decompressed(std::io::Cursor::new(body))?;
                let mut clean = Vec::with_capacity(body_len + 1024);
                let entries = caged_archive::sanitize(reader, &mut clean, Limits::default())?;
                Ok((clean, entries))
            },
        )
        .await
        .map_err(|err| ApiError::bad_request("bad_archive", format!("archive rejected: {err}")))?;
        let (base, missing) = missing_dirs(&state, handle, &path).await?;
        if !missing.is_empty() {
            let dirs_only =
                dirs_tar(&missing).map_err(|err| ApiError::internal(err.to_string()))?;
            state
                .runtime
                .write_tar(handle, &base, dirs_only.into())
                .await?;
        }
        state.runtime.write_tar(handle, &path, clean.into()).await?;
        let payload =
            json!({ "op": "write", "path": path, "kind": "directory", "entries": entries });
        sandboxes::record_activity(&state, &record, "file", payload).await;
        return Ok((
            StatusCode::OK,
            axum::Json(json!({ "path": path, "kind": "directory", "entries": entries })),
        )
            .into_response());
    }

    let Some((parent, name)) = split(&path) else {
        return Err(ApiError::bad_request(
            "bad_path",
            "a file cannot be written at /",
        ));
    };
    let mode = match headers
        .get(MODE_HEADER)
        .and_then(|value| value.to_str().ok())
    {
        None => 0o644,
        Some(text) => u32::from_str_radix(text, 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_mode",
                    format!("{MODE_HEADER}: {text:?} is not an octal mode like 644"),
                )
            })?,
    };
    match state.runtime.stat_path(handle, &path).await {
        Ok(stat) if stat.is_dir => {
            return Err(ApiError::conflict(
                "is_directory",
                format!("{path} is a directory; send a tar to write into it"),
            ));
        }
        Ok(_) | Err(RuntimeError::PathNotFound { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    let (base, missing) = missing_dirs(&state, handle, parent).await?;
    let relative: PathBuf = missing.last().cloned().unwrap_or_default().join(name);
    let size = body.len();
    let tar = caged_archive::single_file_tar(&missing, &relative, &body, mode)
        .map_err(|err| ApiError::internal(err.to_string()))?;
    state.runtime.write_tar(handle, &base, tar.into()).await?;
    let payload = json!({ "op": "write", "path": path, "kind": "file", "bytes": size });
    sandboxes::record_activity(&state, &record, "file", payload).await;
    Ok((
        StatusCode::OK,
        axum::Json(json!({ "path": path, "kind": "file", "bytes": size })),
    )
        .into_response())
}

/// The deepest existing ancestor of `dir` (which must be a directory) and the directories to
/// create below it, as relative paths from shallowest to deepest.
async fn missing_dirs(
    state: &AppState,
    handle: &str,
    dir: &str,
) -> Result<(String, Vec<PathBuf>), ApiError> {
    let mut missing_names = Vec::new();
    let mut current = dir.to_string();
    loop {
        match state.runtime.stat_path(handle, &current).await {
            Ok(stat) if stat.is_dir || stat.link_target.is_some() => break,
            Ok(_) => {
                return Err(ApiError::conflict(
                    "not_a_directory",
                    format!("{current} is not a directory"),
                ));
            }
            Err(RuntimeError::PathNotFound { .. }) => {
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

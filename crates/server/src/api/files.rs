//! File routes. `GET ?path=` answers a file's bytes, or a directory as a tar; `PUT ?path=`
//! writes a file from the body, or extracts a tar body (`Content-Type: application/x-tar`,
//! optionally gzip-compressed) into a directory. The work is `crate::files`'.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caged_wire as wire;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;

use super::auth::Caller;
use super::body::parse_id;
use super::docs::{Binary, Failures, SandboxPath};
use super::error::ApiError;
use crate::files::{self, Read};
use crate::state::AppState;

pub(crate) const KIND_HEADER: &str = "x-caged-kind";
pub(crate) const MODE_HEADER: &str = "x-caged-mode";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PathQuery {
    /// An absolute path in the sandbox.
    path: String,
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files",
    operation_id = "read_file",
    summary = "Read a file, or a directory as a tar",
    description = "A file answers its bytes (`application/octet-stream`) with its mode in \
                   `x-caged-mode` (octal); a directory answers a tar of it \
                   (`application/x-tar`). `x-caged-kind` says which.",
    params(SandboxPath, PathQuery),
    responses(
        (status = 200, description = "The file's bytes, or the directory as a tar",
         headers(
            ("x-caged-kind" = String, description = "`file` or `directory`"),
            ("x-caged-mode" = String, description = "A file's mode, in octal (`644`)"),
         ),
         content(
            (Binary = "application/octet-stream"),
            (Binary = "application/x-tar"),
         )),
        Failures,
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (body, content_type, kind, mode) =
        match files::read(&state, &account.id, id, &query.path).await? {
            Read::Directory(tar) => (
                Body::from_stream(tar),
                "application/x-tar",
                "directory",
                None,
            ),
            Read::File { content, mode } => (
                Body::from_stream(content),
                "application/octet-stream",
                "file",
                Some(mode),
            ),
        };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(KIND_HEADER, HeaderValue::from_static(kind));
    if let Some(mode) = mode
        && let Ok(mode) = HeaderValue::from_str(&format!("{mode:o}"))
    {
        headers.insert(MODE_HEADER, mode);
    }
    Ok(response)
}

#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files",
    operation_id = "write_file",
    summary = "Write a file, or extract a tar into a directory",
    description = "The body is the file's bytes (its mode from `x-caged-mode`, octal, 644 by \
                   default), or with `Content-Type: application/x-tar` (or `application/gzip`) a \
                   tar, plain or gzip-compressed, extracted into the directory at `path`, which \
                   is made if missing. Uploads are limited by the server's `--max-upload-mb` \
                   and, once unpacked, by the sandbox's disk (413 `too_large` beyond either); \
                   an archive is checked whole before anything is written, so a refused one \
                   changes nothing. No entry may lie below a symlink the archive itself made.",
    params(
        SandboxPath,
        PathQuery,
        ("x-caged-mode" = Option<String>, Header, description = "A file's mode, in octal (`755`)"),
    ),
    request_body(
        description = "The file's bytes, or a tar",
        content(
            (Binary = "application/octet-stream"),
            (Binary = "application/x-tar"),
            (Binary = "application/gzip"),
        ),
    ),
    responses((status = 200, description = "Written", body = wire::FileWritten), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn write(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = write_body(&state, &account.id, &id, &query.path, &headers, body).await;
    match outcome {
        Ok(written) => (StatusCode::OK, axum::Json(written)).into_response(),
        Err(err) => {
            let mut refused = err.into_response();
            // The rest of a refused upload may never be read, so this connection cannot carry
            // another request: say so, or the client may send its next one on it and lose it.
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            refused
        }
    }
}

async fn write_body(
    state: &AppState,
    account_id: &str,
    id: &str,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<wire::FileWritten, ApiError> {
    let id = parse_id(id)?;
    // A declared length past the limit is refused before a byte is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let limit = state.config.max_upload_bytes;
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "upload refused: larger than the server's limit of {} MB (--max-upload-mb)",
                limit >> 20
            ),
        ));
    }
    let is_tar = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/x-tar") || value.starts_with("application/gzip")
        });
    let mode = match headers.get(MODE_HEADER).map(|value| value.to_str()) {
        None => 0o644,
        Some(text) => text
            .ok()
            .and_then(|text| u32::from_str_radix(text, 8).ok())
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_mode",
                    format!(
                        "{MODE_HEADER}: {:?} is not an octal mode like 644",
                        String::from_utf8_lossy(headers[MODE_HEADER].as_bytes())
                    ),
                )
            })?,
    };
    let upload: files::Upload = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    if is_tar {
        let (path, entries) = files::write_tar(state, account_id, id, path, upload).await?;
        return Ok(wire::FileWritten::Directory { entries, path });
    }
    let (path, bytes) = files::write_file(state, account_id, id, path, upload, mode).await?;
    Ok(wire::FileWritten::File { bytes, path })
}

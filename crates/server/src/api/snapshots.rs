//! Snapshot routes: create and list per sandbox, restore into a sandbox, and per snapshot:
//! inspect, download (`.tar.gz`), fork, delete.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caged_wire as wire;
use serde_json::Value;

use super::auth::Caller;
use super::body::{json_body, parse_id};
use super::docs::{Binary, Failures, SandboxPath, SnapshotPath};
use super::error::ApiError;
use super::view;
use crate::state::AppState;
use crate::{blocking, sandboxes, snapshots};

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/snapshots",
    operation_id = "create_snapshot",
    summary = "Snapshot a sandbox's files",
    params(SandboxPath),
    request_body(content = Option<wire::CreateSnapshot>, description = "Optional: a name"),
    responses((status = 201, description = "Taken", body = wire::Snapshot), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<wire::Snapshot>), ApiError> {
    let id = parse_id(&id)?;
    let body = json_body(&body)?;
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => {
            caged_domain::config::check_name("name", name)
                .map_err(|err| ApiError::bad_request("invalid_snapshot", err.to_string()))?;
            Some(name.clone())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_snapshot",
                "name: must be a string",
            ));
        }
    };
    let snapshot = snapshots::create(&state, &account.id, id, name).await?;
    Ok((StatusCode::CREATED, Json(view::snapshot(&snapshot))))
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/snapshots",
    operation_id = "list_snapshots",
    summary = "A sandbox's snapshots",
    params(SandboxPath),
    responses((status = 200, description = "OK", body = wire::SnapshotList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::SnapshotList>, ApiError> {
    let id = parse_id(&id)?;
    sandboxes::get(&state, &account.id, id).await?;
    let account_id = account.id.clone();
    let list = state
        .db
        .run(move |store| store.snapshots_of(&account_id, id))
        .await?;
    Ok(Json(wire::SnapshotList {
        snapshots: list.iter().map(view::snapshot).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/snapshots/{sid}",
    operation_id = "inspect_snapshot",
    summary = "Inspect a snapshot",
    params(SnapshotPath),
    responses((status = 200, description = "OK", body = wire::Snapshot), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
) -> Result<Json<wire::Snapshot>, ApiError> {
    Ok(Json(view::snapshot(
        &snapshots::snapshot(&state, &account.id, &sid).await?,
    )))
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/restore",
    operation_id = "restore_snapshot",
    summary = "Restore a snapshot into a sandbox",
    description = "The sandbox's files become the snapshot's, and it runs again from them.",
    params(SandboxPath),
    request_body = wire::Restore,
    responses((status = 200, description = "Restored", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn restore(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::Sandbox>, ApiError> {
    let id = parse_id(&id)?;
    let body = json_body(&body)?;
    let snapshot_id = body["snapshot_id"].as_str().ok_or_else(|| {
        ApiError::bad_request("invalid_restore", "snapshot_id: required, a string")
    })?;
    let record = snapshots::restore(&state, &account.id, id, snapshot_id).await?;
    Ok(Json(view::sandbox(&state, &record)))
}

#[utoipa::path(
    post,
    path = "/v1/snapshots/{sid}/fork",
    operation_id = "fork_snapshot",
    summary = "A new sandbox from a snapshot",
    description = "Made from the config of the sandbox the snapshot was taken from, with the \
                   body's settings (a partial .caged.yaml as JSON, optional) over it.",
    params(SnapshotPath),
    request_body(content = ref("#/components/schemas/SandboxConfig"), description = "Optional overrides"),
    responses((status = 201, description = "Created and running", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn fork(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<wire::Sandbox>), ApiError> {
    let overrides = if body.is_empty() {
        Value::Null
    } else {
        json_body(&body)?
    };
    let record = snapshots::fork(&state, &account.id, &sid, overrides).await?;
    Ok((StatusCode::CREATED, Json(view::sandbox(&state, &record))))
}

#[utoipa::path(
    delete,
    path = "/v1/snapshots/{sid}",
    operation_id = "delete_snapshot",
    summary = "Delete a snapshot",
    params(SnapshotPath),
    responses((status = 200, description = "Deleted", body = wire::SnapshotDeleted), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
) -> Result<Json<wire::SnapshotDeleted>, ApiError> {
    let snapshot = snapshots::delete(&state, &account.id, &sid).await?;
    Ok(Json(wire::SnapshotDeleted {
        deleted: view::snapshot(&snapshot),
    }))
}

/// The snapshot as a standard `.tar.gz`, converted while it streams.
#[utoipa::path(
    get,
    path = "/v1/snapshots/{sid}/download",
    operation_id = "download_snapshot",
    summary = "Download a snapshot as a .tar.gz",
    description = "A standard gzip-compressed tar of the sandbox's files, converted while it \
                   streams (so no length is known in advance).",
    params(SnapshotPath),
    responses(
        (status = 200, description = "The files as a .tar.gz",
         headers(
            ("content-disposition" = String, description = "`attachment; filename=\"<id>.tar.gz\"`"),
            ("x-caged-raw-bytes" = i64, description = "Bytes of the files, uncompressed"),
         ),
         content((Binary = "application/gzip"))),
        Failures,
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn download(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = snapshots::snapshot(&state, &account.id, &sid).await?;
    let storage = state.snapshots.clone();
    let id = snapshot.id.clone();
    let body = blocking::produce(move |out| {
        let blob = storage.open(&id)?;
        caged_snapshot::to_tar_gz(blob, out).map_err(std::io::Error::other)
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(disposition) =
        HeaderValue::from_str(&format!("attachment; filename=\"{}.tar.gz\"", snapshot.id))
    {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if let Ok(raw) = HeaderValue::from_str(&snapshot.raw_bytes.to_string()) {
        headers.insert("x-caged-raw-bytes", raw);
    }
    Ok(response)
}

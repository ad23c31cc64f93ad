//! Snapshot routes: create and list per sandbox, restore into a sandbox, and per snapshot:
//! inspect, download (`.tar.gz`), fork, delete.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caged_domain::time::rfc3339_from_ms;
use caged_store::SnapshotRecord;
use serde_json::{Value, json};

use super::sandboxes::{json_body, parse_id};
use super::{ApiError, view};
use crate::auth::Caller;
use crate::{AppState, blocking, sandboxes, snapshots};

pub(crate) fn snapshot_view(snapshot: &SnapshotRecord) -> Value {
    json!({
        "id": snapshot.id,
        "name": snapshot.name,
        "sandbox_id": snapshot.sandbox_id,
        "kind": snapshot.kind,
        "template": snapshot.template,
        "created_at": rfc3339_from_ms(snapshot.created_at_ms),
        "size_bytes": snapshot.size_bytes,
        "raw_bytes": snapshot.raw_bytes,
        "entries": snapshot.entries,
        "sha256": snapshot.sha256,
    })
}

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(snapshot_view(&snapshot))))
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    sandboxes::get(&state, &account.id, id).await?;
    let account_id = account.id.clone();
    let list = state
        .db
        .run(move |store| store.snapshots_of(&account_id, id))
        .await?;
    Ok(Json(
        json!({ "snapshots": list.iter().map(snapshot_view).collect::<Vec<_>>() }),
    ))
}

pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(snapshot_view(
        &snapshots::snapshot(&state, &account.id, &sid).await?,
    )))
}

pub(crate) async fn restore(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let body = json_body(&body)?;
    let snapshot_id = body["snapshot_id"].as_str().ok_or_else(|| {
        ApiError::bad_request("invalid_restore", "snapshot_id: required, a string")
    })?;
    let record = snapshots::restore(&state, &account.id, id, snapshot_id).await?;
    Ok(Json(view::sandbox(&state, &record)))
}

pub(crate) async fn fork(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let overrides = if body.is_empty() {
        Value::Null
    } else {
        json_body(&body)?
    };
    let record = snapshots::fork(&state, &account.id, &sid, overrides).await?;
    Ok((StatusCode::CREATED, Json(view::sandbox(&state, &record))))
}

pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = snapshots::delete(&state, &account.id, &sid).await?;
    Ok(Json(json!({ "deleted": snapshot_view(&snapshot) })))
}

/// The snapshot as a standard `.tar.gz`, converted while it streams.
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

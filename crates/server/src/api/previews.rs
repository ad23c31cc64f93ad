//! Preview routes: the ports a sandbox serves (with their URLs) and per-port passwords.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use caged_wire as wire;
use serde_json::Value;

use super::auth::Caller;
use super::body::{json_body, parse_id};
use super::docs::{Failures, SandboxPath};
use super::error::ApiError;
use super::view;
use crate::error::Error;
use crate::sandboxes;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/previews",
    operation_id = "list_previews",
    summary = "The ports a sandbox listens on, with their preview URLs, and the protected ones",
    params(SandboxPath),
    responses((status = 200, description = "OK", body = wire::PreviewList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::PreviewList>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let previews = state.node.previews(&record).await.map_err(Error::from)?;
    Ok(Json(wire::PreviewList {
        previews: view::previews(previews),
    }))
}

/// Body: `{"password": "..."}` to protect the port, `{"password": null}` to open it again.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/previews/{port}",
    operation_id = "protect_preview",
    summary = "Protect a preview with a password, or open it again",
    params(SandboxPath, ("port" = u16, Path, description = "The port, 1 to 65535", minimum = 1)),
    request_body = wire::ProtectPreview,
    responses((status = 200, description = "The port now", body = wire::Preview), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn protect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path((id, port)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<wire::Preview>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let port = parse_port(&port)?;
    let body = json_body(&body)?;
    let password = match body.get("password") {
        Some(Value::String(password)) => Some(password.clone()),
        Some(Value::Null) => None,
        None => {
            return Err(ApiError::bad_request(
                "invalid_preview",
                "password: required (a string, or null to remove the password)",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_preview",
                "password: must be a string or null",
            ));
        }
    };
    if let Some(unknown) = body
        .as_object()
        .and_then(|fields| fields.keys().find(|key| *key != "password"))
    {
        return Err(ApiError::bad_request(
            "invalid_preview",
            format!("{unknown}: unknown field (only password is accepted)"),
        ));
    }
    if record.state == caged_domain::SandboxState::Destroyed {
        return Err(ApiError::conflict(
            "illegal_state",
            format!("sandbox {} is destroyed", record.id),
        ));
    }
    let preview = state
        .node
        .protect(&record, port, password)
        .await
        .map_err(Error::from)?;
    Ok(Json(view::preview(preview)))
}

fn parse_port(raw: &str) -> Result<u16, ApiError> {
    raw.parse::<u16>()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_preview",
                format!("port {raw:?}: must be a number from 1 to 65535"),
            )
        })
}

//! Preview routes: the ports a sandbox serves (with their URLs) and per-port passwords.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::ApiError;
use super::sandboxes::{json_body, parse_id};
use crate::auth::Caller;
use crate::{AppState, blocking, preview, sandboxes};

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let previews = preview::list(&state, &record).await?;
    Ok(Json(json!({ "previews": previews })))
}

/// Body: `{"password": "..."}` to protect the port, `{"password": null}` to open it again.
pub(crate) async fn protect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path((id, port)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    let hash = match password {
        Some(password) => {
            preview::check_password(&password).map_err(|err| {
                ApiError::bad_request("invalid_preview", format!("password: {err}"))
            })?;
            Some(
                blocking::run(move || preview::hash_password(&password))
                    .await
                    .map_err(ApiError::internal)?,
            )
        }
        None => None,
    };
    let (id, account_id) = (record.id, record.account_id.clone());
    let at = caged_domain::time::now_ms();
    let stored = hash.clone();
    let event = state
        .db
        .run(move |store| store.set_preview_password(id, &account_id, port, stored.as_deref(), at))
        .await?;
    state.db.publish(event);
    preview::password_changed(
        &state,
        id,
        port,
        hash.map(|hash| caged_store::PreviewPassword {
            port,
            hash,
            set_at_ms: at,
        }),
    );
    let previews = preview::list(&state, &record).await?;
    let this = previews
        .as_array()
        .and_then(|all| all.iter().find(|preview| preview["port"] == port))
        .cloned()
        .unwrap_or_else(|| json!({ "port": port, "url": state.previews.url(id, port), "protected": false, "listening": false }));
    Ok(Json(this))
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

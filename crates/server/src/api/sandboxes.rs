//! Sandbox lifecycle routes: create, list, inspect, pause, resume, destroy.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use caged_domain::{SandboxConfig, SandboxId, SandboxState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, view};
use crate::AppState;
use crate::auth::Caller;
use crate::error::Error;
use crate::sandboxes::{self, CreateOptions};
use caged_node::EngineStatus;

pub(crate) fn parse_id(raw: &str) -> Result<SandboxId, ApiError> {
    // A malformed id cannot name any sandbox: answer as for one that does not exist.
    raw.parse().map_err(|_| {
        ApiError::not_found(format!(
            "sandbox {raw:?} not found (ids are 8 hex characters)"
        ))
    })
}

/// Parses a JSON body, answering in the API's error shape rather than the framework's.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request("bad_json", format!("request body is not valid JSON: {err}"))
    })
}

/// A JSON body of one field and nothing else; another field is a `code` error naming it.
pub(crate) fn one_field_body(
    body: &[u8],
    field: &str,
    code: &'static str,
) -> Result<Value, ApiError> {
    let body = json_body(body)?;
    if let Some(unknown) = body
        .as_object()
        .and_then(|fields| fields.keys().find(|key| *key != field))
    {
        return Err(ApiError::bad_request(
            code,
            format!("{unknown}: unknown field (only {field} is accepted)"),
        ));
    }
    Ok(body)
}

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut body = json_body(&body)?;
    let defer_init = match body
        .as_object_mut()
        .and_then(|object| object.remove("defer_init"))
    {
        None => false,
        Some(Value::Bool(value)) => value,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_config",
                "defer_init: must be true or false",
            ));
        }
    };
    let config = SandboxConfig::from_json_value(body)
        .map_err(|err| ApiError::bad_request("invalid_config", err.to_string()))?;
    let record =
        sandboxes::create(&state, &account.id, config, CreateOptions { defer_init }).await?;
    Ok((StatusCode::CREATED, Json(view::sandbox(&state, &record))))
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    // Each sandbox's worst session and open ports come along (the dashboard's list shows them),
    // read in the same trip to the database.
    let listed = state
        .db
        .run(move |store| -> Result<_, caged_store::StoreError> {
            let records = store.list_sandboxes(&account.id, query.all)?;
            let mut listed = Vec::with_capacity(records.len());
            for record in records {
                let worst = store
                    .charged_by_session(record.id)?
                    .iter()
                    .map(|charged| charged.points)
                    .max()
                    .unwrap_or(0);
                let ports = if record.state == SandboxState::Destroyed {
                    Vec::new()
                } else {
                    store.preview_ports(record.id)?
                };
                listed.push((record, worst, ports));
            }
            Ok(listed)
        })
        .await?;
    let views = listed
        .iter()
        .map(|(record, worst, ports)| {
            let mut view = view::sandbox(&state, record);
            let score = caged_trust::score(*worst);
            view["trust_score"] = json!(score);
            view["trust_rating"] = json!(caged_trust::Rating::of(score).as_str());
            view["preview_urls"] = ports
                .iter()
                .map(|port| json!({ "port": port.port, "url": state.node.preview_url(record.id, port.port) }))
                .collect();
            view
        })
        .collect::<Vec<_>>();
    Ok(Json(json!({ "sandboxes": views })))
}

pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let mut view = view::sandbox(&state, &record);
    view["previews"] = json!(state.node.previews(&record).await.map_err(Error::from)?);
    let trust = view::sandbox_trust(&state, record.id).await?;
    view["trust_score"] = trust["score"].clone();
    view["trust"] = trust;
    // The config it was made from, as the `.caged.yaml` that makes it again.
    view["caged_yaml"] = json!(record.config.to_yaml());
    Ok(Json(view))
}

/// The handlers of `DELETE /sandboxes/{id}`, `/pause` and `/resume`: one state change each.
async fn change(
    state: &AppState,
    account_id: &str,
    id: &str,
    to: SandboxState,
    reason: &str,
) -> Result<Json<Value>, ApiError> {
    let record = sandboxes::change_state(state, account_id, parse_id(id)?, to, reason).await?;
    Ok(Json(view::sandbox(state, &record)))
}

pub(crate) async fn destroy(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(
        &state,
        &account.id,
        &id,
        SandboxState::Destroyed,
        "destroyed on request",
    )
    .await
}

pub(crate) async fn pause(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(&state, &account.id, &id, SandboxState::Paused, "").await
}

pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(&state, &account.id, &id, SandboxState::Running, "").await
}

/// Starts a deferred `init_script` (see `defer_init` on create).
pub(crate) async fn init(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = sandboxes::start_deferred_init(&state, &account.id, parse_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(view::sandbox(&state, &record))))
}

/// What this server and its engine can do.
pub(crate) async fn system(State(state): State<Arc<AppState>>, Caller(_): Caller) -> Json<Value> {
    let engine = match &*state.engine.borrow() {
        EngineStatus::Up(info) => json!({ "status": "up", "info": **info }),
        EngineStatus::Starting => json!({ "status": "starting" }),
        EngineStatus::Down { reason } => json!({ "status": "down", "reason": reason }),
    };
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "installation_id": state.installation_id,
        "engine": engine,
        "observation": json!(state.node.observation()),
    }))
}

//! Sandbox lifecycle routes: create, list, inspect, pause, resume, destroy, a deferred init; and
//! what the server itself can do (`/v1/system`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use caged_domain::{SandboxConfig, SandboxState};
use caged_wire as wire;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Caller;
use super::body::{json_body, parse_id};
use super::docs::{Failures, SandboxPath};
use super::error::ApiError;
use super::view;
use crate::error::Error;
use crate::sandboxes::{self, CreateOptions};
use crate::state::AppState;

#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    operation_id = "create_sandbox",
    summary = "Create a sandbox",
    description = "The body is a .caged.yaml document as JSON, plus `defer_init` to leave \
                   `init_script` for `POST /v1/sandboxes/{id}/init`. An empty body makes a \
                   sandbox of the defaults.",
    request_body(content = ref("#/components/schemas/CreateSandbox"), content_type = "application/json"),
    responses((status = 201, description = "Created and running", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<wire::Sandbox>), ApiError> {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Include destroyed sandboxes.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    operation_id = "list_sandboxes",
    summary = "List sandboxes",
    description = "The caller's sandboxes, each with its worst session's trust and its open \
                   ports' preview URLs.",
    params(ListQuery),
    responses((status = 200, description = "OK", body = wire::SandboxList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<wire::SandboxList>, ApiError> {
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
    let sandboxes = listed
        .iter()
        .map(|(record, worst, ports)| {
            let trust = view::trust_summary(*worst);
            wire::SandboxListItem {
                preview_urls: ports
                    .iter()
                    .map(|port| wire::PreviewUrl {
                        port: port.port,
                        url: state.node.preview_url(record.id, port.port),
                    })
                    .collect(),
                sandbox: view::sandbox(&state, record),
                trust_rating: trust.trust_rating,
                trust_score: trust.trust_score,
            }
        })
        .collect();
    Ok(Json(wire::SandboxList { sandboxes }))
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    operation_id = "inspect_sandbox",
    summary = "Inspect a sandbox",
    description = "The sandbox with its previews, its trust and the .caged.yaml that makes it \
                   again.",
    params(SandboxPath),
    responses((status = 200, description = "OK", body = wire::SandboxDetail), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::SandboxDetail>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let sandbox = view::sandbox(&state, &record);
    let previews = state.node.previews(&record).await.map_err(Error::from)?;
    let trust = view::sandbox_trust(&state, record.id).await?;
    Ok(Json(wire::SandboxDetail {
        // The config it was made from, as the `.caged.yaml` that makes it again.
        caged_yaml: record.config.to_yaml(),
        previews: view::previews(previews),
        sandbox,
        trust_score: trust.score,
        trust,
    }))
}

/// The handlers of `DELETE /sandboxes/{id}`, `/pause` and `/resume`: one state change each.
async fn change(
    state: &AppState,
    account_id: &str,
    id: &str,
    to: SandboxState,
    reason: &str,
) -> Result<Json<wire::Sandbox>, ApiError> {
    let record = sandboxes::change_state(state, account_id, parse_id(id)?, to, reason).await?;
    Ok(Json(view::sandbox(state, &record)))
}

#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    operation_id = "destroy_sandbox",
    summary = "Destroy a sandbox",
    description = "Idempotent: destroying a destroyed sandbox answers it as it is.",
    params(SandboxPath),
    responses((status = 200, description = "Destroyed", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn destroy(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::Sandbox>, ApiError> {
    change(
        &state,
        &account.id,
        &id,
        SandboxState::Destroyed,
        "destroyed on request",
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/pause",
    operation_id = "pause_sandbox",
    summary = "Freeze a running sandbox in memory",
    params(SandboxPath),
    responses((status = 200, description = "Paused", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn pause(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::Sandbox>, ApiError> {
    change(&state, &account.id, &id, SandboxState::Paused, "").await
}

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/resume",
    operation_id = "resume_sandbox",
    summary = "Resume a paused sandbox",
    params(SandboxPath),
    responses((status = 200, description = "Running", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::Sandbox>, ApiError> {
    change(&state, &account.id, &id, SandboxState::Running, "").await
}

/// Starts a deferred `init_script` (see `defer_init` on create).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/init",
    operation_id = "start_init",
    summary = "Start a deferred init_script",
    description = "For a sandbox created with `defer_init: true`. The script runs in the \
                   background; the sandbox's `init` says how it is going.",
    params(SandboxPath),
    responses((status = 202, description = "Started", body = wire::Sandbox), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn init(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<wire::Sandbox>), ApiError> {
    let record = sandboxes::start_deferred_init(&state, &account.id, parse_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(view::sandbox(&state, &record))))
}

/// What this server and its engine can do.
#[utoipa::path(
    get,
    path = "/v1/system",
    operation_id = "system",
    summary = "Server version and container engine capabilities",
    responses((status = 200, description = "OK", body = wire::System), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn system(
    State(state): State<Arc<AppState>>,
    Caller(_): Caller,
) -> Json<wire::System> {
    Json(view::system(&state))
}

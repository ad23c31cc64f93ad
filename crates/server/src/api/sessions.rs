//! Session routes: a sandbox's sessions, one session, and the events that came through it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use caged_store::SessionRecord;
use caged_wire as wire;

use super::auth::Caller;
use super::body::parse_id;
use super::docs::{Failures, SandboxPath, SessionPath};
use super::error::ApiError;
use super::events::{EventsQuery, MAX_PAGE};
use super::view;
use crate::sandboxes;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/sessions",
    operation_id = "list_sessions",
    summary = "A sandbox's sessions, with their trust",
    description = "One session per streaming exec, shell or agent, oldest first.",
    params(SandboxPath, InspectQuery),
    responses((status = 200, description = "OK", body = wire::SessionList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<InspectQuery>,
) -> Result<Json<wire::SessionList>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    if query.settle {
        state.node.settle(std::time::Duration::from_secs(5)).await;
    }
    let id = record.id;
    let (sessions, charged) = state
        .db
        .run(move |store| {
            Ok::<_, caged_store::StoreError>((
                store.sessions_of(&record.account_id, id)?,
                store.charged_by_session(id)?,
            ))
        })
        .await?;
    let sessions = sessions
        .iter()
        .map(|session| {
            let points = charged
                .iter()
                .find(|c| c.session_id.as_deref() == Some(session.id.as_str()))
                .map_or(0, |c| c.points);
            wire::SessionListItem {
                session: view::session(session),
                trust: view::trust_summary(points),
            }
        })
        .collect();
    Ok(Json(wire::SessionList { sessions }))
}

async fn get(state: &AppState, account_id: &str, sid: &str) -> Result<SessionRecord, ApiError> {
    let (account, id) = (account_id.to_string(), sid.to_string());
    state
        .db
        .run(move |store| store.session(&account, &id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("session {sid:?} not found")))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InspectQuery {
    /// Wait (briefly) until what the host saw so far is recorded and scored.
    #[serde(default)]
    settle: bool,
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}",
    operation_id = "inspect_session",
    summary = "One session: agent type, start, end and why it ended, and its trust",
    params(SessionPath, InspectQuery),
    responses((status = 200, description = "OK", body = wire::SessionDetail), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
    Query(query): Query<InspectQuery>,
) -> Result<Json<wire::SessionDetail>, ApiError> {
    let session = get(&state, &account.id, &sid).await?;
    if query.settle {
        state.node.settle(std::time::Duration::from_secs(5)).await;
    }
    let view = view::session(&session);
    let (trust, penalties) = view::session_trust(&state, &session.account_id, &session.id).await?;
    Ok(Json(wire::SessionDetail {
        penalties,
        session: view,
        trust,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/events",
    operation_id = "list_session_events",
    summary = "The events that came through a session",
    description = "Oldest first; `follow` is not supported here.",
    params(SessionPath, EventsQuery),
    responses((status = 200, description = "OK", body = wire::EventList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn session_events(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<wire::EventList>, ApiError> {
    let session = get(&state, &account.id, &sid).await?;
    let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let after = query.after;
    let list = state
        .db
        .run(move |store| store.session_events(&session.account_id, &session.id, after, limit))
        .await?;
    Ok(Json(wire::EventList {
        events: list.iter().map(view::event).collect(),
    }))
}

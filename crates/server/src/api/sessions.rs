//! Session routes: a sandbox's sessions, one session, and the events that came through it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use caged_domain::time::rfc3339_from_ms;
use caged_store::SessionRecord;
use serde_json::{Value, json};

use super::events::{EventsQuery, MAX_PAGE};
use super::sandboxes::parse_id;
use super::{ApiError, events};
use crate::auth::Caller;
use crate::{AppState, sandboxes};

pub(crate) fn view(session: &SessionRecord) -> Value {
    let now = caged_domain::time::now_ms();
    let end = session.ended_at_ms.unwrap_or(now);
    json!({
        "id": session.id,
        "sandbox_id": session.sandbox_id,
        "agent_type": session.agent_type,
        "channel": session.channel,
        "command": session.command,
        "state": if session.ended_at_ms.is_some() { "ended" } else { "open" },
        "started_at": rfc3339_from_ms(session.started_at_ms),
        "ended_at": session.ended_at_ms.map(rfc3339_from_ms),
        "end_reason": session.end_reason,
        "duration_seconds": (end - session.started_at_ms).max(0) as f64 / 1000.0,
        "tokens_in": session.tokens_in,
        "tokens_out": session.tokens_out,
        "llm_cost_micros": session.llm_cost_micros,
    })
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<InspectQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let views = sessions
        .iter()
        .map(|session| {
            let points = charged
                .iter()
                .find(|c| c.session_id.as_deref() == Some(session.id.as_str()))
                .map_or(0, |c| c.points);
            let score = caged_trust::score(points);
            let mut view = view(session);
            view["trust_score"] = json!(score);
            view["trust_rating"] = json!(caged_trust::Rating::of(score).as_str());
            view
        })
        .collect::<Vec<_>>();
    Ok(Json(json!({ "sessions": views })))
}

async fn get(state: &AppState, account_id: &str, sid: &str) -> Result<SessionRecord, ApiError> {
    let (account, id) = (account_id.to_string(), sid.to_string());
    state
        .db
        .run(move |store| store.session(&account, &id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("session {sid:?} not found")))
}

#[derive(serde::Deserialize)]
pub(crate) struct InspectQuery {
    /// Wait (briefly) until what the host saw so far is recorded and scored.
    #[serde(default)]
    settle: bool,
}

pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
    Query(query): Query<InspectQuery>,
) -> Result<Json<Value>, ApiError> {
    let session = get(&state, &account.id, &sid).await?;
    if query.settle {
        state.node.settle(std::time::Duration::from_secs(5)).await;
    }
    let mut view = view(&session);
    let trust = super::view::session_trust(&state, &session.account_id, &session.id).await?;
    view["trust_score"] = trust["score"].clone();
    view["trust_rating"] = trust["rating"].clone();
    view["penalties"] = trust["penalties"].clone();
    Ok(Json(view))
}

pub(crate) async fn session_events(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(sid): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let session = get(&state, &account.id, &sid).await?;
    let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let after = query.after;
    let list = state
        .db
        .run(move |store| store.session_events(&session.account_id, &session.id, after, limit))
        .await?;
    Ok(Json(
        json!({ "events": list.iter().map(events::view).collect::<Vec<_>>() }),
    ))
}

//! A sandbox's event log: `GET /events` lists it (`?after=SEQ&limit=N`), and with `?follow=true`
//! streams it as Server-Sent Events, backlog first, then live, without gaps or repeats.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use caged_domain::SandboxId;
use caged_store::Event;
use caged_wire as wire;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::auth::Caller;
use super::body::parse_id;
use super::docs::{Failures, SandboxPath};
use super::error::ApiError;
use super::view;
use crate::sandboxes;
use crate::state::AppState;

pub(crate) const MAX_PAGE: i64 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    pub(crate) after: i64,
    /// At most this many (1 to 1000, the default).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
    /// Stream as Server-Sent Events (`text/event-stream`): the backlog after `after`, then live.
    /// Ignored for a session's events.
    #[serde(default)]
    follow: bool,
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/events",
    operation_id = "list_events",
    summary = "A sandbox's event log",
    description = "Oldest first. With `follow=true` the answer is a Server-Sent Events stream \
                   instead: each message's `id` is the event's `seq`, its `event` the kind and \
                   its `data` the event as JSON (an `Event`); the backlog after `after` comes \
                   first, then events as they happen, without gaps or repeats, with a comment \
                   every 15 seconds to keep the connection open. Reconnect with `after` set to \
                   the last `id` seen.",
    params(SandboxPath, EventsQuery),
    responses(
        (status = 200, description = "The events; a stream of them with `follow=true`",
         content(
            (wire::EventList = "application/json"),
            (String = "text/event-stream"),
         )),
        Failures,
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    sandboxes::get(&state, &account.id, id).await?; // 404 for someone else's
    if query.follow {
        return Ok(follow(state, account.id, id, query.after).into_response());
    }
    let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let events = page(&state, &account.id, id, query.after, limit).await?;
    let events = events.iter().map(view::event).collect();
    Ok(Json(wire::EventList { events }).into_response())
}

async fn page(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>, ApiError> {
    let account_id = account_id.to_string();
    Ok(state
        .db
        .run(move |store| store.events(&account_id, id, after, limit))
        .await?)
}

fn follow(
    state: Arc<AppState>,
    account_id: String,
    id: SandboxId,
    after: i64,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    // Subscribe before reading the backlog, so an event written in between is not missed; the
    // sequence number drops any that arrive twice.
    let mut live = state.db.subscribe();
    tokio::spawn(async move {
        let mut last = after;
        // Backlog, page by page; then whatever the live feed skipped if it lagged.
        let mut catch_up = true;
        loop {
            if catch_up {
                loop {
                    let Ok(events) = page(&state, &account_id, id, last, MAX_PAGE).await else {
                        return;
                    };
                    let done = (events.len() as i64) < MAX_PAGE;
                    for event in events {
                        last = event.seq;
                        if tx.send(sse(&event)).await.is_err() {
                            return;
                        }
                    }
                    if done {
                        break;
                    }
                }
                catch_up = false;
            }
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.sandbox_id == id && event.seq > last => {
                        last = event.seq;
                        if tx.send(sse(&event)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = state.stop.cancelled() => return,
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.clone())
        .data(sse_data(event))
}

/// An event as one line of JSON, the `data` of its SSE message.
fn sse_data(event: &Event) -> String {
    // An event is strings, numbers and JSON already parsed: nothing in it fails to serialize.
    serde_json::to_string(&view::event(event)).unwrap_or_default()
}

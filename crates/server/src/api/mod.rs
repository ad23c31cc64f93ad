//! The HTTP API under `/v1`: JSON in and out, `Authorization: Bearer <key>`, errors as
//! `{"error": {"code", "message"}}`. Handlers are thin: they parse, authorize and call the
//! lifecycle in `crate::sandboxes`.

mod accounts;
mod error;
mod events;
mod exec;
mod files;
mod network;
mod openapi;
mod previews;
mod sandboxes;
mod sessions;
mod snapshots;
mod templates;
mod usage;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub(crate) use error::ApiError;

use crate::AppState;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let upload_limit = state.config.max_upload_bytes;
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/system", get(sandboxes::system))
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::inspect).delete(sandboxes::destroy),
        )
        .route("/v1/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/v1/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/v1/sandboxes/{id}/init", post(sandboxes::init))
        .route("/v1/sandboxes/{id}/events", get(events::list))
        .route("/v1/sandboxes/{id}/exec", post(exec::run))
        .route("/v1/sandboxes/{id}/exec/ws", get(exec::websocket))
        .route(
            "/v1/sandboxes/{id}/files",
            get(files::read)
                .put(files::write)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/v1/sandboxes/{id}/snapshots",
            post(snapshots::create).get(snapshots::list),
        )
        .route("/v1/sandboxes/{id}/restore", post(snapshots::restore))
        .route("/v1/sandboxes/{id}/sessions", get(sessions::list))
        .route("/v1/sessions/{sid}", get(sessions::inspect))
        .route("/v1/sessions/{sid}/events", get(sessions::session_events))
        .route("/v1/sandboxes/{id}/network", get(network::inspect))
        .route("/v1/sandboxes/{id}/network/learn", get(network::learn))
        .route(
            "/v1/sandboxes/{id}/network/allowed-hosts",
            axum::routing::put(network::set_allowed_hosts),
        )
        .route("/v1/sandboxes/{id}/previews", get(previews::list))
        .route(
            "/v1/sandboxes/{id}/previews/{port}",
            axum::routing::put(previews::protect),
        )
        .route(
            "/v1/snapshots/{sid}",
            get(snapshots::inspect).delete(snapshots::delete),
        )
        .route("/v1/snapshots/{sid}/download", get(snapshots::download))
        .route("/v1/snapshots/{sid}/fork", post(snapshots::fork))
        .route("/v1/templates", get(templates::list))
        .route(
            "/v1/templates/{name}",
            post(templates::import).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/sandboxes/{id}/usage", get(usage::usage))
        .route(
            "/v1/sandboxes/{id}/budget",
            axum::routing::put(usage::set_budget),
        )
        .route(
            "/v1/account/webhook",
            get(usage::get_webhook)
                .put(usage::set_webhook)
                .delete(usage::delete_webhook),
        )
        .route("/v1/account/usage", get(usage::account_usage))
        .route("/v1/accounts", post(accounts::create).get(accounts::list))
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::map_response(error::log_failures))
        .with_state(state)
}

//! One error type for every handler: a status, a stable machine-readable code and a message for
//! people. Causes from the store or the engine are logged here and summarized for the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caged_runtime::RuntimeError;
use caged_store::StoreError;
use serde_json::json;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn engine_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            message,
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::StateChanged {
                id,
                expected,
                actual,
            } => ApiError::conflict(
                "illegal_transition",
                format!(
                    "sandbox {id} changed state meanwhile (now {actual}, was {expected}); try again"
                ),
            ),
            StoreError::NotFound { id } => ApiError::not_found(format!("sandbox {id} not found")),
            StoreError::AccountExists { name } => ApiError::conflict(
                "account_exists",
                format!("an account named {name:?} already exists"),
            ),
            other => {
                tracing::error!("store: {:#}", anyhowish(&other));
                ApiError::internal("the database failed; see the server log")
            }
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        match &err {
            RuntimeError::EngineUnreachable { .. } => ApiError::engine_unavailable(err.to_string()),
            RuntimeError::TemplateMissing { .. } => {
                ApiError::bad_request("unknown_template", err.to_string())
            }
            RuntimeError::IsolationUnavailable { .. } => {
                ApiError::bad_request("isolation_unavailable", err.to_string())
            }
            RuntimeError::PathNotFound { .. } => ApiError::not_found(err.to_string()),
            RuntimeError::ContainerGone => ApiError::conflict("gone", err.to_string()),
            RuntimeError::BadArchive { .. } => {
                ApiError::bad_request("bad_archive", err.to_string())
            }
            RuntimeError::Engine { status, message } if (400..500).contains(status) => {
                tracing::warn!("engine refused: {message}");
                ApiError::bad_request("engine_refused", err.to_string())
            }
            _ => {
                tracing::error!("runtime: {}", anyhowish(&err));
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "engine_error",
                    format!("{err}; see the server log"),
                )
            }
        }
    }
}

/// The error and its sources on one line, for the log.
fn anyhowish(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

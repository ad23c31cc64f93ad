//! One error type for every answer: a status, a stable machine-readable code and a message for
//! people. What failed below the API ([`Error`]) becomes one of these here and nowhere else;
//! causes worth the operator's attention ride along to [`log_failures`], which logs them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caged_runtime::RuntimeError;
use caged_store::StoreError;
use caged_wire::ErrorBody;

use crate::error::Error;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds the client should wait before trying again (`Retry-After`).
    retry_after: Option<u64>,
    cause: Option<Cause>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }
    /// 429 with `Retry-After`: a limit that refills with time (rounded up to whole seconds).
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .retrying_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    }
    /// The same error, telling the client to wait `seconds` before trying again.
    pub fn retrying_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
    /// Puts this error's `Retry-After` (if any) on `response`, which may be another shape's
    /// (the dashboard's login page).
    pub fn set_retry_after(&self, response: &mut Response) {
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
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
        let mut response =
            (self.status, Json(ErrorBody::new(self.code, &self.message))).into_response();
        self.set_retry_after(&mut response);
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// What the log should say about a failed request, beyond its answer; written by
/// [`log_failures`], never while converting.
#[derive(Clone, Debug)]
pub(crate) struct Cause {
    warning: bool,
    text: String,
}

impl ApiError {
    fn logged(mut self, warning: bool, text: String) -> Self {
        self.cause = Some(Cause { warning, text });
        self
    }

    /// Logs the cause of an answer that goes out other than through the router (a WebSocket's
    /// error message).
    pub fn log(&self) {
        if let Some(cause) = &self.cause {
            cause.write();
        }
    }
}

impl Cause {
    fn write(&self) {
        if self.warning {
            tracing::warn!("{}", self.text);
        } else {
            tracing::error!("{}", self.text);
        }
    }
}

/// The middleware that puts the framework's own refusals (a body past its limit, a method a
/// route does not take, a header it cannot read) in the API's error shape: every `/v1` answer
/// that is an error is `{"error": {"code", "message"}}`, whichever layer produced it.
pub(crate) async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_api = request.uri().path().starts_with("/v1/");
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !is_api || is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        status if status.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match (status, text.is_empty()) {
        // Uploads answer their own limit; what reaches here is a JSON body past its own.
        (StatusCode::PAYLOAD_TOO_LARGE, _) => {
            format!(
                "request body too large: a JSON body may be at most {} MB",
                super::JSON_BODY_LIMIT >> 20
            )
        }
        (_, true) => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
        (_, false) => text,
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    // Keep what the framework said beside the body (`Allow` on a 405, for one).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

/// The middleware that logs what failed behind an answer.
pub(crate) async fn log_failures(response: Response) -> Response {
    if let Some(cause) = response.extensions().get::<Cause>() {
        cause.write();
    }
    response
}

/// What a create over the per-account limit is told to wait.
const SANDBOX_LIMIT_RETRY_SECS: u64 = 30;

/// The one mapping from what failed to what the client is told.
impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::EngineUnavailable(_) => ApiError::engine_unavailable(message),
            Error::NotFound(_) => ApiError::not_found(message),
            Error::Invalid { code, .. } => ApiError::bad_request(code, message),
            Error::NameTaken(_) => ApiError::conflict("name_taken", message),
            Error::NotReady(_) => ApiError::conflict("not_ready", message),
            Error::WrongState(_) => ApiError::conflict("illegal_state", message),
            Error::IllegalTransition(_) => ApiError::conflict("illegal_transition", message),
            Error::Gone(_) => ApiError::conflict("gone", message),
            Error::TemplateMismatch(_) => ApiError::conflict("template_mismatch", message),
            Error::UnknownUser(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_user", message)
            }
            Error::NoInitScript(_) => ApiError::conflict("no_init_script", message),
            Error::InitStarted(_) => ApiError::conflict("init_started", message),
            Error::NotAllowlist(_) => ApiError::conflict("not_allowlist", message),
            Error::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            Error::IsDirectory(_) => ApiError::conflict("is_directory", message),
            Error::NotADirectory(_) => ApiError::conflict("not_a_directory", message),
            // Freed by a destroy or a timeout, not by the clock; Retry-After says when looking
            // again is reasonable.
            Error::SandboxLimit(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "sandbox_limit", message)
                    .retrying_after(SANDBOX_LIMIT_RETRY_SECS)
            }
            Error::SnapshotLimit(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "snapshot_limit", message)
            }
            Error::SnapshotQuota(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "snapshot_quota", message)
            }
            Error::BadSnapshot(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_snapshot", message)
            }
            Error::NetworkFull(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "network_full", message)
            }
            Error::NetworkUnreachable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "network_unreachable", message)
            }
            Error::Runtime(err) => err.into(),
            Error::Store(err) => err.into(),
            Error::Internal(_) => ApiError::internal(message),
        }
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
            other => ApiError::internal("the database failed; see the server log")
                .logged(false, format!("store: {}", chain(&other))),
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
            RuntimeError::BadDockerfile { .. } => {
                ApiError::bad_request("bad_dockerfile", err.to_string())
            }
            RuntimeError::BuildFailed { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "build_failed",
                err.to_string(),
            ),
            RuntimeError::Engine { status, message } if (400..500).contains(status) => {
                let logged = format!("engine refused: {message}");
                ApiError::bad_request("engine_refused", err.to_string()).logged(true, logged)
            }
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "engine_error",
                format!("{err}; see the server log"),
            )
            .logged(false, format!("runtime: {}", chain(&err))),
        }
    }
}

/// The error and its sources on one line, for the log.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! Templates: local images made from root filesystem tarballs (no registry is assumed).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures_util::TryStreamExt;
use serde_json::{Value, json};

use super::ApiError;
use crate::auth::{Admin, Caller};
use crate::error::Error;
use crate::sandboxes::engine_ready;
use crate::{AppState, blocking};

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(_): Caller,
) -> Result<Json<Value>, ApiError> {
    engine_ready(&state)?;
    let templates = state.node.templates().await.map_err(Error::from)?;
    Ok(Json(json!({ "templates": templates })))
}

/// Body: a root filesystem as a tar, plain or gzip-compressed (decompressed here, never by the
/// engine).
pub(crate) async fn import(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caged_domain::config::check_template_name("template", &name)
        .map_err(|err| ApiError::bad_request("invalid_template", err.to_string()))?;
    engine_ready(&state)?;
    let input = body.into_data_stream();
    let rootfs = blocking::pipe(input, |reader, writer| {
        let mut reader = caged_archive::decompressed(reader).map_err(std::io::Error::other)?;
        std::io::copy(&mut reader, writer)?;
        Ok(())
    })
    .map_err(|err| caged_runtime::RuntimeError::BadArchive {
        reason: err.to_string(),
    });
    let template = state
        .node
        .import_template(&name, Box::pin(rootfs))
        .await
        .map_err(Error::from)?;
    tracing::info!(template = %template.name, bytes = template.size_bytes, "template imported");
    Ok((StatusCode::CREATED, Json(json!(template))))
}

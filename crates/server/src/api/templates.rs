//! Templates: local images made from root filesystem tarballs (no registry is assumed).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use caged_wire as wire;
use futures_util::TryStreamExt;

use super::auth::{Admin, Caller};
use super::docs::{Binary, Failures};
use super::error::ApiError;
use super::view;
use crate::blocking;
use crate::error::Error;
use crate::sandboxes::engine_ready;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/templates",
    operation_id = "list_templates",
    summary = "List templates",
    responses((status = 200, description = "OK", body = wire::TemplateList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(_): Caller,
) -> Result<Json<wire::TemplateList>, ApiError> {
    engine_ready(&state)?;
    let templates = state.node.templates().await.map_err(Error::from)?;
    Ok(Json(wire::TemplateList {
        templates: templates.into_iter().map(view::template).collect(),
    }))
}

/// Body: a root filesystem as a tar, plain or gzip-compressed (decompressed here, never by the
/// engine).
#[utoipa::path(
    post,
    path = "/v1/templates/{name}",
    operation_id = "import_template",
    summary = "Import a root filesystem tar as a template (admin)",
    description = "The body is a root filesystem as a tar, plain or gzip-compressed, of any \
                   size; an existing template of the name is replaced.",
    params(("name" = String, Path, description = "The template's name (lowercase letters, digits, `.`, `_`, `-`)")),
    request_body(
        description = "A root filesystem",
        content((Binary = "application/x-tar"), (Binary = "application/gzip")),
    ),
    responses((status = 201, description = "Imported", body = wire::Template), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn import(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<wire::Template>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(view::template(template))))
}

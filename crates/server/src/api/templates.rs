//! Templates: local images made from root filesystem tarballs (no registry is assumed).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use caged_wire as wire;
use futures_util::{StreamExt, TryStreamExt};

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

#[utoipa::path(
    get,
    path = "/v1/templates/{name}",
    operation_id = "inspect_template",
    summary = "One template: its size, what it was built from, its tools' versions",
    params(("name" = String, Path, description = "The template's name")),
    responses((status = 200, description = "OK", body = wire::Template), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(_): Caller,
    Path(name): Path<String>,
) -> Result<Json<wire::Template>, ApiError> {
    engine_ready(&state)?;
    let templates = state.node.templates().await.map_err(Error::from)?;
    let known: Vec<String> = templates.iter().map(|t| t.name.clone()).collect();
    let template = templates
        .into_iter()
        .find(|template| template.name == name)
        .ok_or_else(|| missing(&name, known))?;
    Ok(Json(view::template(template)))
}

/// Refused while a sandbox that is not destroyed was made from it; snapshots of it need it
/// back (imported again under the same name) to be restored.
#[utoipa::path(
    delete,
    path = "/v1/templates/{name}",
    operation_id = "remove_template",
    summary = "Remove a template (admin)",
    params(("name" = String, Path, description = "The template's name")),
    responses((status = 204, description = "Removed"), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caged_domain::config::check_template_name("template", &name)
        .map_err(|err| ApiError::bad_request("invalid_template", err.to_string()))?;
    engine_ready(&state)?;
    let users: Vec<String> = {
        let name = name.clone();
        state
            .db
            .run(move |store| store.live_sandboxes())
            .await?
            .into_iter()
            .filter(|sandbox| sandbox.config.template == name)
            .map(|sandbox| sandbox.id.to_string())
            .collect()
    };
    if !users.is_empty() {
        return Err(ApiError::conflict(
            "template_in_use",
            format!(
                "template {name} is in use by {} sandbox(es) ({}); destroy them first",
                users.len(),
                users.join(", ")
            ),
        ));
    }
    match state.node.remove_template(&name).await {
        Ok(()) => {}
        Err(caged_node::Error::Runtime(caged_runtime::RuntimeError::TemplateMissing {
            known,
            ..
        })) => return Err(missing(&name, known)),
        // A container the store does not know of (a leftover) still holds the image.
        Err(caged_node::Error::Runtime(caged_runtime::RuntimeError::Engine {
            status: 409,
            message,
        })) => {
            return Err(ApiError::conflict(
                "template_in_use",
                format!("template {name} is still used by a container on the engine: {message}"),
            ));
        }
        Err(err) => return Err(Error::from(err).into()),
    }
    tracing::info!(template = %name, "template removed");
    Ok(StatusCode::NO_CONTENT)
}

/// A template asked for by name that this installation does not have: 404, as for any
/// missing resource, with the names it has.
fn missing(name: &str, known: Vec<String>) -> ApiError {
    let err = caged_runtime::RuntimeError::TemplateMissing {
        template: name.to_string(),
        known,
    };
    ApiError::new(StatusCode::NOT_FOUND, "unknown_template", err.to_string())
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BuildQuery {
    /// The Dockerfile's path in the context (default `Dockerfile`).
    dockerfile: Option<String>,
}

/// The body is the build context, a tar (plain or gzip) holding the Dockerfile. Every `FROM`
/// names a template of this installation; steps run without network. The answer streams:
/// one JSON object a line, `{"progress": "..."}` as the build runs, then `{"template": ...}`
/// or `{"error": {"code", "message"}}`. What is wrong with the input (the context, the
/// Dockerfile, a `FROM`) is answered before any progress, with its status.
#[utoipa::path(
    post,
    path = "/v1/templates/{name}/build",
    operation_id = "build_template",
    summary = "Build a template from a Dockerfile (admin)",
    params(("name" = String, Path, description = "The template's name"), BuildQuery),
    request_body(
        description = "The build context",
        content((Binary = "application/x-tar"), (Binary = "application/gzip")),
    ),
    responses((status = 200, description = "The build's progress, then its template or error, as JSON lines", content_type = "application/x-ndjson"), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn build(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<BuildQuery>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    engine_ready(&state)?;
    let dockerfile = query.dockerfile.unwrap_or_else(|| "Dockerfile".to_string());
    let upload = body.into_data_stream().map_err(std::io::Error::other);
    let mut build = crate::templates::build(&state, &name, &dockerfile, Box::pin(upload)).await?;
    // A refusal before the first line of output is an ordinary error answer.
    // A refusal before the first line of output is an ordinary error answer; so is any
    // outcome that comes without output.
    let first = tokio::select! {
        biased;
        done = &mut build.done => return answer_without_output(done),
        line = build.progress.recv() => match line {
            Some(line) => line,
            None => return answer_without_output((&mut build.done).await),
        },
    };
    let lines = futures_util::stream::unfold(
        (Some(Some(first)), build, false),
        |(pending, mut build, ended)| async move {
            if ended {
                return None;
            }
            if let Some(Some(line)) = pending {
                return Some((progress_line(&line), (None, build, false)));
            }
            match build.progress.recv().await {
                Some(line) => Some((progress_line(&line), (None, build, false))),
                None => {
                    let last = match (&mut build.done).await {
                        Ok(Ok(template)) => json_line(&json_line_template(template)),
                        Ok(Err(err)) => {
                            let err = ApiError::from(err);
                            json_line(&serde_json::json!({ "error": { "code": err.code, "message": err.message } }))
                        }
                        Err(err) => json_line(&serde_json::json!({ "error": { "code": "internal", "message": format!("the build stopped: {err}") } })),
                    };
                    Some((last, (None, build, true)))
                }
            }
        },
    )
    .map(Ok::<_, std::convert::Infallible>);
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

fn answer_without_output(
    done: Result<crate::error::Result<caged_runtime::TemplateInfo>, tokio::task::JoinError>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    match done {
        Ok(Ok(template)) => {
            let mut response = Body::from(json_line(&json_line_template(template))).into_response();
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/x-ndjson"),
            );
            Ok(response)
        }
        Ok(Err(err)) => Err(err.into()),
        Err(err) => Err(ApiError::internal(format!("the build stopped: {err}"))),
    }
}

fn json_line_template(template: caged_runtime::TemplateInfo) -> serde_json::Value {
    serde_json::json!({ "template": view::template(template) })
}

fn progress_line(line: &str) -> bytes::Bytes {
    json_line(&serde_json::json!({ "progress": line }))
}

fn json_line(value: &serde_json::Value) -> bytes::Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

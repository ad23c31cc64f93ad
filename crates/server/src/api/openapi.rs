//! The OpenAPI document served at `/v1/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` attributes and the `caged_wire` types they answer with, so that it cannot
//! describe answers the server does not give.

use std::sync::LazyLock;

use axum::Json;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, InfoBuilder};

use super::{accounts, events, exec, files, network, previews, sandboxes, sessions};
use super::{snapshots, templates, usage};

#[derive(OpenApi)]
#[openapi(
    paths(
        document,
        sandboxes::system,
        sandboxes::create,
        sandboxes::list,
        sandboxes::inspect,
        sandboxes::destroy,
        sandboxes::pause,
        sandboxes::resume,
        sandboxes::init,
        events::list,
        exec::run,
        exec::websocket,
        files::read,
        files::write,
        snapshots::create,
        snapshots::list,
        snapshots::restore,
        snapshots::inspect,
        snapshots::delete,
        snapshots::download,
        snapshots::fork,
        sessions::list,
        sessions::inspect,
        sessions::session_events,
        network::inspect,
        network::learn,
        network::set_allowed_hosts,
        previews::list,
        previews::protect,
        templates::list,
        templates::import,
        templates::inspect,
        templates::build,
        templates::remove,
        usage::usage,
        usage::set_budget,
        usage::get_webhook,
        usage::set_webhook,
        usage::delete_webhook,
        usage::account_usage,
        accounts::create,
        accounts::list,
    ),
    components(schemas(
        // Every failure's body; the responses name it, but only schemas of bodies are
        // collected on their own.
        caged_wire::ErrorBody,
        // Only sent on the WebSocket, so no route names them.
        caged_wire::ExecClientMessage,
        caged_wire::ExecServerMessage,
    )),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The document, as served.
pub(crate) fn build() -> Value {
    let mut api = ApiDoc::openapi();
    // Set here rather than read by utoipa from the build's CARGO_PKG_* (which may be empty).
    api.info = InfoBuilder::new()
        .title("Caged API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Caged's HTTP API. Every route but this document needs `Authorization: Bearer \
             <api key>`; every failure answers `{\"error\": {\"code\", \"message\"}}`.",
        ))
        .build();
    let components = api.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let mut document = serde_json::to_value(&api).unwrap_or_default();
    // JSON Schema the domain writes by hand, which utoipa's types would not carry whole.
    let schemas = &mut document["components"]["schemas"];
    schemas[caged_wire::sandbox::CONFIG_SCHEMA] = caged_wire::sandbox::config_schema();
    schemas[caged_wire::sandbox::CREATE_SCHEMA] = caged_wire::sandbox::create_schema();
    document
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
    // No key needed.
    security(()),
)]
pub(crate) async fn document() -> Json<&'static Value> {
    Json(&DOCUMENT)
}

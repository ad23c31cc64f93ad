//! The OpenAPI document served at `/v1/openapi.json`: the routes this server answers.

use axum::Json;
use serde_json::{Value, json};

pub(crate) async fn document() -> Json<Value> {
    let error = json!({ "$ref": "#/components/schemas/Error" });
    let op = |summary: &str| json!({ "summary": summary, "responses": { "default": { "description": "error", "content": { "application/json": { "schema": error } } } } });
    Json(json!({
        "openapi": "3.1.0",
        "info": { "title": "Caged API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "object",
                    "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "SandboxConfig": caged_domain::config::json_schema(),
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/v1/system": { "get": op("Server version and container engine capabilities") },
            "/v1/sandboxes": {
                "post": op("Create a sandbox from a .caged.yaml document given as JSON (plus name, isolation, defer_init)"),
                "get": op("List sandboxes (?all=true includes destroyed ones)"),
            },
            "/v1/sandboxes/{id}": { "get": op("Inspect a sandbox"), "delete": op("Destroy a sandbox (idempotent)") },
            "/v1/sandboxes/{id}/pause": { "post": op("Freeze a running sandbox in memory") },
            "/v1/sandboxes/{id}/resume": { "post": op("Resume a paused sandbox") },
            "/v1/sandboxes/{id}/init": { "post": op("Run a deferred init_script") },
            "/v1/sandboxes/{id}/exec": { "post": op("Run a command to completion: {cmd: [argv], env, cwd, timeout}") },
            "/v1/sandboxes/{id}/exec/ws": { "get": op("Run a command with streamed output, stdin and a PTY over a WebSocket") },
            "/v1/sandboxes/{id}/files": {
                "get": op("Read a file (bytes) or a directory (tar) at ?path="),
                "put": op("Write a file (body) or extract a tar (Content-Type: application/x-tar) at ?path="),
            },
            "/v1/sandboxes/{id}/previews": { "get": op("Ports the sandbox listens on, with their preview URLs and whether a password protects them") },
            "/v1/sandboxes/{id}/previews/{port}": { "put": op("Protect a preview with a password ({password: \"...\"}) or open it again ({password: null})") },
            "/v1/sandboxes/{id}/sessions": { "get": op("The sandbox's sessions (one per streaming exec, shell or agent)") },
            "/v1/sessions/{sid}": { "get": op("One session: agent type, start, end and why it ended") },
            "/v1/sessions/{sid}/events": { "get": op("Events that came through the session (?after=SEQ&limit=N)") },
            "/v1/sandboxes/{id}/usage": { "get": op("What the sandbox spent (integer micro-dollars): running time, compute, tokens, LLM cost, budget and alerts, each session's share") },
            "/v1/sandboxes/{id}/budget": { "put": op("Set a live sandbox's budget ({budget_usd: 10.0}) or remove it ({budget_usd: null})") },
            "/v1/account/usage": { "get": op("The account's spend (compute, LLM) and sandboxes running per UTC day, oldest first (?days=N, 1 to 366, default 30)") },
            "/v1/account/webhook": {
                "get": op("The account's webhook for budget alerts (URL, signing secret) and its latest deliveries"),
                "put": op("Send budget alerts to {url: \"https://...\"}; answers the new signing secret"),
                "delete": op("Stop sending webhooks"),
            },
            "/v1/templates": { "get": op("List templates") },
            "/v1/templates/{name}": { "post": op("Import a root filesystem tar (plain or gzip) as a template (admin)") },
            "/v1/accounts": { "post": op("Create an account and its API key (admin)"), "get": op("List accounts (admin)") },
        }
    }))
}

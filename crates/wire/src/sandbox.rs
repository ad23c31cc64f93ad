//! A sandbox as the API shows it: the view every lifecycle route answers with, the list's and
//! inspect's richer views of it, and the schemas of the bodies that make one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::previews::{Preview, PreviewUrl};
use crate::usage::Cost;
use crate::values::{Isolation, NetworkMode, SandboxState, TrustRating};

/// A sandbox: what create, pause, resume, destroy, init, restore and fork answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub allowed_hosts: Vec<String>,
    /// The budget now, in USD (it may have been changed since the sandbox was made); `null`: no
    /// limit.
    #[schema(required = true)]
    pub budget_usd: Option<f64>,
    /// What it spent. The server always sends it; an `Option` so that the client also reads
    /// servers from before cost tracking.
    #[schema(value_type = Cost, required = true)]
    pub cost: Option<Cost>,
    pub created_at: String,
    #[schema(required = true)]
    pub destroyed_reason: Option<String>,
    pub env: BTreeMap<String, String>,
    pub id: String,
    /// What `init_script` did (`status`: `running`, `succeeded` or `failed`, with its output once
    /// it ended); `null` before it started or without one.
    #[schema(required = true)]
    pub init: Option<Value>,
    #[schema(required = true)]
    pub init_script: Option<String>,
    #[schema(value_type = Isolation)]
    pub isolation: String,
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(value_type = NetworkMode)]
    pub network_mode: String,
    pub resources: Resources,
    /// Time spent running, to the millisecond; a destroyed sandbox's clock stopped at its end.
    pub running_seconds: f64,
    #[schema(value_type = SandboxState)]
    pub state: String,
    pub template: String,
    /// Seconds of inactivity before it is put to sleep.
    pub timeout_seconds: u64,
    /// Every state it entered, oldest first.
    pub transitions: Vec<TransitionView>,
    /// Who its commands run as (`user`, `root`, ...); `null` for a sandbox made before `user:`
    /// existed, which runs as root.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    pub cpu: f64,
    /// Whether the engine enforces `disk_gb` for this sandbox.
    pub disk_enforced: bool,
    pub disk_gb: u64,
    pub memory_mb: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransitionView {
    pub at: String,
    #[schema(value_type = SandboxState)]
    pub state: String,
}

/// `GET /v1/sandboxes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxListItem>,
}

/// A sandbox in the list, with what the dashboard's list shows beside it: its worst session's
/// trust and its open ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxListItem {
    /// Empty for a destroyed sandbox.
    pub preview_urls: Vec<PreviewUrl>,
    #[serde(flatten)]
    pub sandbox: Sandbox,
    #[schema(value_type = TrustRating)]
    pub trust_rating: String,
    pub trust_score: u32,
}

/// `GET /v1/sandboxes/{id}`: the sandbox with its previews, its trust and its config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxDetail {
    /// The config it was made from, as the `.caged.yaml` that makes it again.
    pub caged_yaml: String,
    pub previews: Vec<Preview>,
    #[serde(flatten)]
    pub sandbox: Sandbox,
    pub trust: SandboxTrust,
    /// `trust.score`, beside the list's.
    pub trust_score: u32,
}

/// A sandbox's trust: its worst session (or its activity outside sessions), and each charged
/// session's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxTrust {
    pub charged: Vec<ChargedSession>,
    #[schema(value_type = TrustRating)]
    pub rating: String,
    pub score: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChargedSession {
    pub score: u32,
    /// `null`: what happened outside any session.
    #[schema(required = true)]
    pub session_id: Option<String>,
}

/// The name of the schema of a `.caged.yaml` document (as JSON) in the OpenAPI document.
pub const CONFIG_SCHEMA: &str = "SandboxConfig";
/// The name of the schema of `POST /v1/sandboxes`'s body.
pub const CREATE_SCHEMA: &str = "CreateSandbox";

/// A `.caged.yaml` document's schema. It is JSON Schema written by the domain, which owns the
/// settings, so the OpenAPI document takes it as it is rather than deriving a second one.
pub fn config_schema() -> Value {
    caged_domain::config::json_schema()
}

/// `POST /v1/sandboxes`'s body: a `.caged.yaml` document as JSON, plus `defer_init`.
pub fn create_schema() -> Value {
    let mut schema = config_schema();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.insert("title".into(), "CreateSandbox".into());
        object.insert(
            "description".into(),
            "A .caged.yaml document as JSON, plus defer_init".into(),
        );
    }
    if let Some(properties) = schema["properties"].as_object_mut() {
        properties.insert(
            "defer_init".into(),
            serde_json::json!({
                "type": "boolean",
                "default": false,
                "description": "Leave init_script for POST /v1/sandboxes/{id}/init to start",
            }),
        );
    }
    schema
}

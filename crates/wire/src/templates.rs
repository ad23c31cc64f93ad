//! Templates: local images made from root filesystem tarballs, which sandboxes start from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    /// Unix seconds, as the engine reports it: when this installation's image was made.
    pub created_at: i64,
    pub image_id: String,
    pub name: String,
    pub size_bytes: i64,
    /// What the template says of itself (its `/etc/caged/template.json`); empty for a template
    /// that says nothing.
    #[serde(default)]
    pub description: Option<String>,
    /// What it was built from, in words (a Debian suite and packages, a Dockerfile).
    #[serde(default)]
    pub built_from: Option<String>,
    /// Versions of its main tools, by tool (`node`, `npm`, `python`, ...).
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// Unix seconds: when its root filesystem was built.
    #[serde(default)]
    pub built_at: Option<i64>,
    /// Digest of the recipe it was built from (`scripts/build-templates` re-imports a template
    /// whose recipe changed).
    #[serde(default)]
    pub recipe: Option<String>,
}

/// `GET /v1/templates`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

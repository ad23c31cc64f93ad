//! Templates: local images made from root filesystem tarballs, which sandboxes start from.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    /// Unix seconds, as the engine reports it.
    pub created_at: i64,
    pub image_id: String,
    pub name: String,
    pub size_bytes: i64,
}

/// `GET /v1/templates`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

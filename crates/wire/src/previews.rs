//! Previews: the ports a sandbox serves over HTTP, their URLs, and the passwords that close them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A port of a sandbox: listening, protected, or both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    /// Where in the sandbox it listens; absent when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub address: Option<String>,
    pub listening: bool,
    /// When it was first seen listening; absent when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub opened_at: Option<String>,
    pub port: u16,
    /// Whether a password guards it.
    pub protected: bool,
    pub url: String,
}

/// `GET /v1/sandboxes/{id}/previews`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviewList {
    pub previews: Vec<Preview>,
}

/// An open port and its URL, as the sandbox list shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviewUrl {
    pub port: u16,
    pub url: String,
}

/// Body of `PUT /v1/sandboxes/{id}/previews/{port}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProtectPreview {
    /// The password that protects the port, or `null` to open it again.
    #[schema(required = true)]
    pub password: Option<String>,
}

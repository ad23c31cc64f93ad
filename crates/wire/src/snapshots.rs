//! Snapshots of a sandbox's files: their records, and the bodies that take and restore them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::values::SnapshotKind;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub created_at: String,
    pub entries: i64,
    pub id: String,
    #[schema(value_type = SnapshotKind)]
    pub kind: String,
    #[schema(required = true)]
    pub name: Option<String>,
    /// Bytes of the files, uncompressed.
    pub raw_bytes: i64,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    pub sha256: String,
    /// Compressed bytes in storage (what quotas count).
    pub size_bytes: i64,
    pub template: String,
}

/// `GET /v1/sandboxes/{id}/snapshots`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `DELETE /v1/snapshots/{sid}`'s answer: what was deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotDeleted {
    pub deleted: Snapshot,
}

/// Body of `POST /v1/sandboxes/{id}/snapshots` (optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    /// `null` or absent for none.
    #[serde(default)]
    pub name: Option<String>,
}

/// Body of `POST /v1/sandboxes/{id}/restore`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Restore {
    /// A snapshot of the same template.
    pub snapshot_id: String,
}

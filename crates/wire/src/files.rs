//! What a file write answers; reads answer the bytes themselves (or a tar), which need no type.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `PUT /v1/sandboxes/{id}/files`'s answer: a file written from the body, or a tar body
/// extracted into a directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FileWritten {
    File {
        /// Bytes written.
        bytes: u64,
        path: String,
    },
    Directory {
        /// Entries extracted.
        entries: u64,
        path: String,
    },
}

impl FileWritten {
    /// How many entries it wrote: a file is one.
    pub fn entries(&self) -> u64 {
        match self {
            FileWritten::File { .. } => 1,
            FileWritten::Directory { entries, .. } => *entries,
        }
    }
}

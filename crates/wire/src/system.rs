//! `GET /v1/system`: this server, its container engine and what the engine can do, and whether
//! the host's observation of sandboxes runs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct System {
    pub engine: EngineStatus,
    pub installation_id: String,
    pub observation: ObservationStatus,
    /// The operator's CA certificates every sandbox trusts (`--sandbox-ca`), if any.
    #[serde(default)]
    #[schema(required = true)]
    pub sandbox_ca: Option<SandboxCa>,
    /// The server's version.
    pub version: String,
}

/// What the engine is doing; the API is up even while the engine is not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum EngineStatus {
    Up {
        info: EngineInfo,
    },
    /// Not probed yet.
    Starting,
    Down {
        reason: String,
    },
}

/// What the engine can do, found when it was reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EngineInfo {
    pub api_version: String,
    /// Whether per-sandbox disk limits are enforced, and if not, why.
    pub disk_limits: Support,
    /// Whether `isolation: gvisor` works here, and its limits.
    pub gvisor: Support,
    /// Where this host keeps sandboxes' root filesystems, when it can watch them.
    #[schema(required = true)]
    pub sandbox_filesystems: Option<String>,
    pub storage_driver: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Support {
    pub available: bool,
    pub detail: String,
}

/// The CA file given with `--sandbox-ca`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxCa {
    /// How many certificates it holds.
    pub certificates: usize,
    /// The file on the server's host.
    pub file: String,
}

/// Whether the host watches what sandboxes do, and its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ObservationStatus {
    pub detail: String,
    pub enabled: bool,
    pub file_events: u64,
    pub lost: u64,
    pub processes: u64,
    pub unread_processes: u64,
}

impl System {
    /// Whether the engine answered its last probe.
    pub fn engine_up(&self) -> bool {
        matches!(self.engine, EngineStatus::Up { .. })
    }
}

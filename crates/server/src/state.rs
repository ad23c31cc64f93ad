//! What the control plane's parts share: the store, the node, the lifecycle's locks and clocks,
//! and the server's stop. Built once in `start()`.

use std::net::IpAddr;
use std::sync::Arc;

use caged_domain::rate::Buckets;

use caged_node::{EngineStatus, Node};
use caged_store::Db;
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::locks::Locks;

/// What the API, the lifecycle and the controllers share.
pub(crate) struct AppState {
    /// The database, and the live feed of the events written to it.
    pub db: Db,
    /// The host that runs the sandboxes: every engine, network, preview and observation call
    /// goes through it.
    pub node: Arc<dyn Node>,
    /// What the node's engine is doing.
    pub engine: watch::Receiver<EngineStatus>,
    pub installation_id: String,
    pub config: ServerConfig,
    pub locks: Locks,
    pub activity: Arc<caged_activity::Activity>,
    pub snapshots: Arc<dyn caged_snapshot::Storage>,
    /// Sandboxes that just paused, for the auto-snapshot worker.
    pub auto_snapshots: tokio::sync::mpsc::UnboundedSender<caged_domain::SandboxId>,
    /// Cancelled when the server is stopping; loops and long-lived streams end on it.
    pub stop: tokio_util::sync::CancellationToken,
    /// Tells the budget guard to look now (an LLM call was charged, a budget changed).
    pub budget_checks: Arc<tokio::sync::Notify>,
    /// Tells the webhook sender a delivery was queued.
    pub webhook_sends: tokio::sync::Notify,
    /// Wrong credentials per client address (IPv6 by /64), for the failed-authentication limit.
    pub auth_failures: parking_lot::Mutex<Buckets<IpAddr>>,
}

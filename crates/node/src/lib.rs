//! The node: everything that happens on the host that runs a sandbox. Its container or VM (the
//! runtime), its link and network policy, the observation of what it does, the preview proxy
//! that dials into it and the LLM gateway on its link are all node-local; the control plane
//! (`caged-server`: API, store, lifecycle, controllers) decides what should happen and asks the
//! node through [`Node`], never the runtime or a capability directly.
//!
//! [`LocalNode`] is the node in the same process as the control plane, as `caged server` runs
//! today; a node on another host would implement the same trait over a protocol.

mod ca;
mod capability;
mod engine;
mod local;

use std::sync::Arc;

use async_trait::async_trait;
use caged_domain::{SandboxId, SandboxState};
use caged_netpolicy::LearnedHost;
use caged_network::LinkSpec;
use caged_preview::Preview;
use caged_runtime::{
    ByteStream, Capabilities, ContainerSummary, Description, Exec, ExecSpec, FsChange, PathStat,
    RuntimeError, TemplateInfo,
};
use caged_store::{SandboxRecord, StoreError};
use tokio::sync::watch;

pub use ca::SandboxCa;
pub use engine::EngineStatus;
pub use local::{LocalNode, NodeConfig, StartError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Network(#[from] caged_netpolicy::Error),
    #[error(transparent)]
    Preview(#[from] caged_preview::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a sandbox's container came to run, for what the node takes charge of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Just created.
    Created,
    /// Started again after the engine lost its processes: a new namespace, a new link.
    Restarted,
    /// Replaced by a restored copy: a new container.
    Restored,
}

/// What the control plane asks of the host that runs its sandboxes. Sandboxes are named by the
/// engine's handle where only the engine is involved, and by their record where the node's own
/// parts (link, previews, observation) need to know more.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    // The engine.

    /// What the engine is doing now; changes as it comes and goes.
    fn engine(&self) -> watch::Receiver<EngineStatus>;
    /// What the runtime can do.
    fn capabilities(&self) -> Capabilities;
    async fn templates(&self) -> Result<Vec<TemplateInfo>>;
    async fn template(&self, name: &str) -> Result<Option<TemplateInfo>>;
    /// Imports an uncompressed root filesystem tar as template `name`.
    async fn import_template(&self, name: &str, rootfs: ByteStream) -> Result<TemplateInfo>;
    async fn remove_template(&self, name: &str) -> Result<()>;
    /// See [`caged_runtime::Runtime::build_template`].
    async fn build_template(
        &self,
        name: &str,
        dockerfile: &str,
        context: ByteStream,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<TemplateInfo>;

    // Sandboxes.

    /// Makes and starts the sandbox's container (its link in the firewall first, the gateway's
    /// environment in it); returns its handle. On error nothing of the container is left, and
    /// the caller records the sandbox destroyed.
    async fn create(&self, record: &SandboxRecord) -> Result<String>;
    /// Takes charge of a sandbox whose container runs: its previews, its observation, its
    /// link's services. Failures are logged; the node's healers retry.
    async fn started(&self, record: &SandboxRecord, how: Start);
    /// Its state changed (as the control plane recorded it).
    fn transitioned(&self, id: SandboxId, to: SandboxState);
    async fn pause(&self, handle: &str) -> Result<()>;
    async fn resume(&self, handle: &str) -> Result<()>;
    /// Removes the container and everything it holds; succeeds when it is already gone.
    async fn destroy(&self, handle: &str) -> Result<()>;
    /// Starts a container whose processes the engine lost.
    async fn restart(&self, handle: &str) -> Result<()>;
    /// The sandboxes the engine holds for this installation.
    async fn list(&self) -> Result<Vec<ContainerSummary>>;
    /// One sandbox as the engine sees it; [`RuntimeError::ContainerGone`] when it is gone.
    async fn describe(&self, handle: &str) -> Result<Description>;

    // Work in a sandbox.

    async fn exec(&self, handle: &str, spec: &ExecSpec) -> Result<Exec>;
    async fn stat(&self, handle: &str, path: &str) -> Result<PathStat>;
    /// A path as an uncompressed tar, named by its last component.
    async fn read_tar(&self, handle: &str, path: &str) -> Result<ByteStream>;
    /// Extracts a sanitized tar into directory `dir`.
    async fn write_tar(&self, handle: &str, dir: &str, tar: bytes::Bytes) -> Result<()>;
    /// [`Node::write_tar`] for an archive too large to hold in memory.
    async fn write_tar_stream(&self, handle: &str, dir: &str, tar: ByteStream) -> Result<()>;

    // Snapshots.

    /// Paths changed since the template, and the whole filesystem as a tar.
    async fn capture(&self, handle: &str) -> Result<(Vec<FsChange>, ByteStream)>;
    /// A new container for the sandbox beside its current one (for a restore that must not
    /// touch the original until it succeeded); returns its handle.
    async fn stage(&self, record: &SandboxRecord) -> Result<String>;
    /// The staged container holds the snapshot now: the node writes back what it keeps in a
    /// sandbox's filesystem (the operator's CA certificates), over the snapshot's old copy.
    async fn finish_stage(&self, staged: &str, record: &SandboxRecord) -> Result<()>;
    /// Gives a staged container the sandbox's name and link, once the original is gone.
    async fn promote(&self, staged: &str, record: &SandboxRecord) -> Result<()>;

    // Network.

    /// The sandbox's link, if it has one.
    async fn link(&self, record: &SandboxRecord) -> Result<Option<LinkSpec>>;
    /// Changes a live `allowlist` sandbox's allowed hosts; the caller holds its lock.
    async fn set_allowed_hosts(&self, record: &SandboxRecord, hosts: Vec<String>) -> Result<()>;
    /// Hosts the sandbox tried to reach.
    async fn learned_hosts(&self, id: SandboxId) -> Result<Vec<LearnedHost>>;

    // Observation.

    /// The command whose first process is `pid` (on this host) belongs to `session`.
    fn bind(&self, pid: i32, session: Option<String>);
    /// Waits (at most `limit`) until what the host saw so far is recorded and scored.
    async fn settle(&self, limit: std::time::Duration);
    fn observation(&self) -> caged_observe::Status;
    /// The operator's CA certificates every sandbox trusts, if any.
    fn sandbox_ca(&self) -> Option<Arc<SandboxCa>>;

    // Previews and the gateway.

    async fn previews(&self, record: &SandboxRecord) -> Result<Vec<Preview>>;
    /// Protects a port with a password (`None` opens it again).
    async fn protect(
        &self,
        record: &SandboxRecord,
        port: u16,
        password: Option<String>,
    ) -> Result<Preview>;
    fn preview_url(&self, id: SandboxId, port: u16) -> String;
    /// What a session's command adds to its environment: its own gateway credential, so the
    /// LLM calls it makes are charged to it (empty for a sandbox without a link).
    fn session_env(&self, record: &SandboxRecord, session: &str) -> Vec<(String, String)>;
}

/// A node shared by the control plane's parts.
pub type SharedNode = Arc<dyn Node>;

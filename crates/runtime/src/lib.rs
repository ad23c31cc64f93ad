//! The runtime a sandbox runs on, behind one trait so the server does not care whether it is a
//! container (runc), a gVisor sandbox (runsc) or, later, a microVM. The Docker driver lives in
//! [`docker`]; `tests/conformance.rs` says what any driver must do.
//!
//! What differs between drivers is said by [`Capabilities`], not found out by trying: whether a
//! sandbox can be frozen, whether the host can see its processes and files from outside
//! ([`HostView`]), which isolations it offers.

pub mod docker;
mod proctree;
mod seccomp;
mod syscalls;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use caged_domain::{Isolation, NetworkMode, Resources, SandboxId};
use futures_util::Stream;
use tokio::io::AsyncWrite;

pub use docker::DockerRuntime;

/// Capabilities a sandbox keeps; everything else is dropped. These are what package managers
/// and ordinary root-in-a-box work needs (file ownership, switching users, signalling own
/// processes, binding low ports); none reaches beyond the sandbox's own namespaces.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// Default cap on processes (and threads) per sandbox, so a fork bomb stays inside.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container engine is unreachable: {reason}")]
    EngineUnreachable { reason: String },
    #[error(
        "unknown template {template:?}; known templates: {}",
        list_or_none(known)
    )]
    TemplateMissing {
        template: String,
        known: Vec<String>,
    },
    #[error("gVisor isolation is unavailable: {reason}")]
    IsolationUnavailable { reason: String },
    #[error("no such path in the sandbox: {path}")]
    PathNotFound { path: String },
    #[error("the sandbox's container is gone")]
    ContainerGone,
    #[error("archive rejected: {reason}")]
    BadArchive { reason: String },
    #[error("the engine refused: {message}")]
    Engine { status: u16, message: String },
    #[error("could not stop the command: {reason}")]
    KillFailed { reason: String },
    #[error("engine I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the sandbox's network cannot be reached from this host: {reason}")]
    NetworkUnreachable { reason: String },
    #[error("cannot give the sandbox its network link: {reason}")]
    Link { reason: String },
    /// A Dockerfile that cannot be built here (a `FROM` that is not a template, ...).
    #[error("Dockerfile refused: {reason}")]
    BadDockerfile { reason: String },
    /// A build step failed; `step` is the engine's own words for it (`Step 2/3 : RUN ...`).
    #[error("the build failed at {step}: {reason}")]
    BuildFailed { step: String, reason: String },
}

fn list_or_none(known: &[String]) -> String {
    if known.is_empty() {
        "none (import one with `caged template import`)".to_string()
    } else {
        known.join(", ")
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Everything a driver needs to bring up one sandbox.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub id: SandboxId,
    pub account_id: String,
    pub installation_id: String,
    pub template: String,
    pub isolation: Isolation,
    pub resources: Resources,
    pub network_mode: NetworkMode,
    pub env: BTreeMap<String, String>,
    /// Apply `resources.disk` as a hard limit (only where the engine can).
    pub enforce_disk: bool,
    pub pids_limit: i64,
    /// The sandbox's own link (none for `network_mode: none`): the driver creates it when the
    /// sandbox starts, and points the sandbox's resolver at its host address.
    pub link: Option<caged_network::LinkSpec>,
}

/// What the engine can do, found at start-up and reported to operators.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
    pub storage_driver: String,
    /// Whether per-sandbox disk limits are enforced, and if not, why.
    pub disk_limits: Support,
    /// Whether `isolation: gvisor` works here, and its limits.
    pub gvisor: Support,
    /// Where this host keeps sandboxes' root filesystems, when it can watch them (see
    /// [`Runtime::host_view`]); `None` otherwise.
    pub sandbox_filesystems: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Support {
    pub available: bool,
    pub detail: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub image_id: String,
    pub size_bytes: i64,
    pub created_at: i64,
    /// What the template says of itself, where it says it ([`TEMPLATE_MANIFEST`]).
    pub manifest: Option<TemplateManifest>,
    /// The accounts in the template's `/etc/passwd`.
    pub accounts: Vec<Account>,
}

/// Root by number, for [`ExecSpec::user`]: it needs no `/etc/passwd`, which the sandbox could
/// have changed.
pub const ROOT_USER: &str = "0";

/// A line of an `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The file in a tar that [`Runtime::read_tar`] gave for one path: its bytes when it is a
/// regular file of at most `limit` bytes, `None` otherwise (a folder, a link, too large, not a
/// tar).
pub fn file_in_tar(tar: &[u8], limit: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(tar);
    let mut entry = archive.entries().ok()?.next()?.ok()?;
    if !entry.header().entry_type().is_file() || entry.size() > limit {
        return None;
    }
    let mut data = Vec::new();
    entry.by_ref().take(limit).read_to_end(&mut data).ok()?;
    Some(data)
}

/// The accounts of an `/etc/passwd` (lines that do not parse are skipped: the file may come
/// from a sandbox).
pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?.to_string();
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            let _gecos = fields.next()?;
            let home = fields.next()?.to_string();
            (!name.is_empty()).then_some(Account {
                name,
                uid,
                gid,
                home,
            })
        })
        .collect()
}

/// Where a template describes itself: written by `scripts/build-templates`, read from the
/// template's files, never from a sandbox.
pub const TEMPLATE_MANIFEST: &str = "/etc/caged/template.json";

/// A template's description of itself. Every field may be missing from a hand-made template.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TemplateManifest {
    pub description: Option<String>,
    /// What it was built from, in words (the Debian suite and packages, a Dockerfile).
    pub built_from: Option<String>,
    /// Versions of its main tools, by tool.
    pub tools: std::collections::BTreeMap<String, String>,
    /// Unix seconds.
    pub built_at: Option<i64>,
    /// Digest of the recipe it was built from: a tarball from another recipe is another build.
    pub recipe: Option<String>,
}

/// A sandbox as the engine lists it, for reconciling with the store.
#[derive(Clone, Debug)]
pub struct ContainerSummary {
    pub container_id: String,
    pub sandbox_id: Option<SandboxId>,
    pub state: EngineState,
}

/// What the engine says a sandbox's processes are doing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    Running,
    /// Frozen in memory.
    Paused,
    /// Its processes are gone (exited, killed, or the engine restarted); its files are kept.
    Stopped,
    /// Anything else the engine may say (created, restarting, dead, ...), as it said it.
    Other(String),
}

impl std::fmt::Display for EngineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineState::Running => f.write_str("running"),
            EngineState::Paused => f.write_str("paused"),
            EngineState::Stopped => f.write_str("exited"),
            EngineState::Other(state) => f.write_str(state),
        }
    }
}

/// Driver facts about one sandbox, for `inspect` and for making sure it still exists.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Description {
    /// `docker`, or another driver's name.
    pub engine: &'static str,
    pub handle: String,
    /// The engine's runtime (runc, runsc) when it says.
    pub runtime: Option<String>,
    pub state: EngineState,
    /// The host pid of its first process, where the host sees one.
    pub pid: Option<i64>,
}

/// What a driver can do. Callers ask this rather than trying and failing.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Capabilities {
    /// The isolations it can run (each still subject to [`Runtime::isolation_support`]).
    pub isolations: Vec<Isolation>,
    /// A sandbox can be frozen with its memory kept, and thawed.
    pub pause: bool,
    /// A paused sandbox's memory can be saved and brought back (not only its files).
    pub memory_snapshot: bool,
    /// Snapshots are of the filesystem's changes from the template ([`Runtime::changes`],
    /// [`Runtime::export`]).
    pub filesystem_snapshot: bool,
    /// The host sees the sandbox's processes (their pids, cgroups, /proc) under `container`
    /// isolation; under gVisor or a VM it sees only the sandbox's own processes, not those
    /// inside.
    pub host_processes: bool,
    /// The host can read the sandbox's files from outside it ([`Runtime::host_view`]).
    pub host_files: bool,
    /// The sandbox's network namespace can be opened from the host
    /// ([`Runtime::network_namespace`]).
    pub network_namespace: bool,
}

/// How the host sees sandboxes' files from outside them, when the driver can say (a local
/// engine whose storage it knows; a VM's disk has no such view). The observer watches
/// [`HostView::roots`] and asks the view where each change it sees belongs.
pub trait HostView: Send + Sync + std::fmt::Debug + 'static {
    /// The directory under which every sandbox's root filesystem lies, on one filesystem.
    fn roots(&self) -> &std::path::Path;
    /// Which root a directory under [`HostView::roots`] is in (its name among the roots) and
    /// the path inside that root; `None` for what is not a sandbox's root.
    fn locate(&self, dir: &std::path::Path) -> Option<(String, std::path::PathBuf)>;
    /// The sandbox (by handle) whose root is the one named `root`, if any (it may look through
    /// the engine's records: callers cache the answer).
    fn handle_of(&self, root: &str) -> Option<String>;
    /// A sandbox's root: its name among the roots and where it is on the host.
    fn root_of(&self, handle: &str) -> Option<(String, std::path::PathBuf)>;
}

#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    /// argv, never a shell string.
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub tty: bool,
    pub stdin: bool,
    /// The sandbox's isolation; drivers may need it to reach the command's processes.
    pub isolation: Isolation,
    /// Who it runs as (a name in the sandbox's `/etc/passwd`, or a uid); `None` is root. The
    /// sandbox itself runs as root, with its bounded capabilities, so that a command of root
    /// (the platform's own, `--user root`) has them: an engine drops every capability of a
    /// container whose own user is not root, root's commands in it included.
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A started command: its output as it comes, its stdin, and what can be done to it while it
/// runs. Dropping `input` closes the command's stdin.
pub struct Exec {
    pub output: Pin<Box<dyn Stream<Item = Result<ExecOutput>> + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    pub control: Arc<dyn ExecControl>,
}

/// What can be done to a running command.
#[async_trait]
pub trait ExecControl: Send + Sync + 'static {
    /// The host pid of the command's first process, when the host can see it (not under
    /// gVisor, not inside a VM).
    async fn host_pid(&self) -> Result<Option<i32>>;
    /// Changes the size of the command's terminal (`tty` commands).
    async fn resize(&self, cols: u16, rows: u16) -> Result<()>;
    /// Kills the command and everything it started; a command that already ended is not an
    /// error.
    async fn kill(&self) -> Result<()>;
    /// The exit status, once the output has ended; `None` if the command is still running or
    /// its status never became known.
    async fn wait(&self) -> Result<Option<i64>>;
}

/// How a path of a sandbox differs from its template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsChange {
    Added(String),
    Modified(String),
    Deleted(String),
}

/// What a path inside a sandbox is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStat {
    pub is_dir: bool,
    pub size: i64,
    pub mode: u32,
    pub link_target: Option<String>,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// What this driver can do.
    fn capabilities(&self) -> Capabilities;
    /// Connects, learns the engine's capabilities and prepares shared resources. Cheap enough
    /// to call again when the engine comes back. `gvisor` is as last found by
    /// [`Runtime::isolation_support`], which is slower and asked separately.
    async fn probe(&self) -> Result<EngineInfo>;
    /// Whether an isolation really works here: a definite answer is found once (by running a
    /// test sandbox, where that is what it takes) and remembered.
    async fn isolation_support(&self, isolation: Isolation) -> Support;
    /// How the host sees sandboxes' files, once [`Runtime::probe`] has found out; `None` where
    /// it cannot.
    fn host_view(&self) -> Option<Arc<dyn HostView>>;
    /// Quick liveness check.
    async fn ping(&self) -> Result<()>;

    async fn templates(&self) -> Result<Vec<TemplateInfo>>;
    /// Template `name` of this installation, if it has one.
    async fn template(&self, name: &str) -> Result<Option<TemplateInfo>>;
    /// Imports an uncompressed root filesystem tar as template `name`.
    async fn import_template(&self, name: &str, rootfs_tar: ByteStream) -> Result<TemplateInfo>;
    /// Builds template `name` from `dockerfile`, whose `FROM`s name this installation's
    /// templates (never a registry's image), with `context` (an uncompressed tar that
    /// `caged_archive::sanitize` produced) as its build context and no network. The build's
    /// output goes to `progress` line by line. Whole or nothing: a failed build leaves neither a
    /// template nor images of its own, and an existing template of the name is replaced only
    /// by a build that succeeded.
    async fn build_template(
        &self,
        name: &str,
        dockerfile: &str,
        context: ByteStream,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<TemplateInfo>;
    /// Removes template `name` from this installation ([`RuntimeError::TemplateMissing`] when it
    /// has none of the name); what the engine still needs of it for a sandbox stays.
    async fn remove_template(&self, name: &str) -> Result<()>;

    /// Creates and starts the sandbox, with its link; returns the engine's handle for it. On
    /// error nothing of it is left on the engine.
    async fn create(&self, spec: &SandboxSpec) -> Result<String>;
    /// Starts a sandbox whose processes the engine lost (after an engine restart).
    async fn start(&self, handle: &str) -> Result<()>;
    async fn pause(&self, handle: &str) -> Result<()>;
    async fn resume(&self, handle: &str) -> Result<()>;
    /// Removes the sandbox and all it holds; succeeds when it is already gone.
    async fn destroy(&self, handle: &str) -> Result<()>;
    /// Sandboxes of this installation that the engine holds.
    async fn list(&self, installation_id: &str) -> Result<Vec<ContainerSummary>>;

    /// Starts a command in the sandbox.
    async fn exec(&self, handle: &str, spec: &ExecSpec) -> Result<Exec>;

    async fn stat_path(&self, handle: &str, path: &str) -> Result<PathStat>;
    /// The path as an uncompressed tar stream, named by its last component.
    async fn read_tar(&self, handle: &str, path: &str) -> Result<ByteStream>;
    /// Extracts an uncompressed tar that `caged_archive::sanitize` produced into directory `dir`,
    /// which must exist.
    async fn write_tar(&self, handle: &str, dir: &str, tar: Bytes) -> Result<()>;
    /// [`Runtime::write_tar`] for an archive too large to hold in memory.
    async fn write_tar_stream(&self, handle: &str, dir: &str, tar: ByteStream) -> Result<()>;

    /// Paths added, modified or deleted since the template.
    async fn changes(&self, handle: &str) -> Result<Vec<FsChange>>;
    /// The sandbox's whole filesystem as an uncompressed tar (links stored as links).
    async fn export(&self, handle: &str) -> Result<ByteStream>;
    /// Creates and starts a sandbox beside an existing one of the same id (for a restore that
    /// must not touch the original until it has succeeded).
    async fn create_staged(&self, spec: &SandboxSpec) -> Result<String>;
    /// Gives a staged sandbox the sandbox's own name and link, once the original is gone (a
    /// staged sandbox has no link: its name is the original's until then).
    async fn promote(&self, staged: &str, spec: &SandboxSpec) -> Result<()>;

    /// Driver facts about one sandbox; [`RuntimeError::ContainerGone`] when it no longer
    /// exists.
    async fn describe(&self, handle: &str) -> Result<Description>;

    /// The running sandbox's network namespace, opened (not looked up by PID) so it stays the
    /// same namespace for as long as the caller holds it. The preview proxy dials and the port
    /// detector reads through it.
    async fn network_namespace(&self, handle: &str) -> Result<caged_netns::NetNs>;

    /// (Re)creates the running sandbox's link: after an engine restart started it again, or when
    /// its host end went missing.
    async fn attach_link(&self, handle: &str, link: &caged_network::LinkSpec) -> Result<()>;
}

//! Caged's control plane. [`start`] opens the data folder, makes sure an admin key exists,
//! connects to the engine (in the background, so the API is up even while the engine is not)
//! and serves the HTTP API.

mod api;
mod blocking;
mod collect;
mod config;
mod controllers;
mod dashboard;
mod error;
mod exec;
mod failpoint;
mod files;
mod keys;
mod locks;
mod paths;
mod sandboxes;
mod sessions;
mod snapshots;
mod state;
mod tasks;
mod templates;

use state::AppState;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use caged_domain::rate::{Buckets, Rate};
use caged_domain::time::now_ms;
use caged_node::{LocalNode, Node, NodeConfig};
use caged_store::{Db, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use caged_gateway::Upstream;
pub use caged_netpolicy::NetworkConfig;
pub use caged_node::EngineStatus;
pub use caged_preview::{PreviewConfig, PreviewTls, SELF_SIGNED_DIR, check_domain};
pub use caged_runtime::DEFAULT_PIDS_LIMIT;
pub use config::{CostConfig, ServerConfig};

/// How long a stopping server waits for its loops to end before it aborts them.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Name of the file in the data folder that holds the admin's API key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Node(#[from] caged_node::StartError),
    #[error("cannot use data folder {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database")]
    Store(#[from] caged_store::StoreError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server that is listening. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where the preview proxy listens.
    pub preview_addr: SocketAddr,
    pub installation_id: String,
    pub admin_key_path: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    engine: watch::Receiver<EngineStatus>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, then returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the engine has been probed (successfully or not).
    pub async fn engine_status(&mut self) -> EngineStatus {
        let _ = self
            .engine
            .wait_for(|status| !matches!(status, EngineStatus::Starting))
            .await;
        self.engine.borrow().clone()
    }

    /// Runs until the task ends (it never does on its own, short of an error).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    pub fn shutdown_handle(&mut self) -> Option<tokio::sync::oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let data_dir = config.data_dir.clone();
    let dir_err = |source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&data_dir).map_err(dir_err)?;
    restrict_permissions(&data_dir, 0o700).map_err(dir_err)?;

    let db = Db::new(
        blocking::run({
            let path = data_dir.join("caged.db");
            move || Store::open(&path)
        })
        .await?,
    );
    let (installation_id, new_installation) = db
        .run(|store| {
            let mut new = false;
            let id = store.meta_get_or_insert("installation_id", || {
                new = true;
                caged_domain::random_hex(6)
            })?;
            Ok::<_, caged_store::StoreError>((id, new))
        })
        .await?;
    let admin_key_path = data_dir.join(ADMIN_KEY_FILE);
    keys::ensure_admin(&db, &admin_key_path)
        .await
        .map_err(|err| match err {
            keys::AdminKeyError::Write { path, source } => StartError::DataDir { path, source },
            keys::AdminKeyError::Store(err) => StartError::Store(err),
        })?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let tasks = tasks::Tasks::new();
    let activity = Arc::new(caged_activity::Activity::default());
    let budget_checks = Arc::new(tokio::sync::Notify::new());
    let node = Arc::new(
        LocalNode::new(
            NodeConfig {
                installation_id: installation_id.clone(),
                data_dir: data_dir.clone(),
                docker_host: config.docker_host.clone(),
                probe_gvisor_at_start: config.probe_gvisor_at_start,
                pids_limit: config.pids_limit,
                preview: config.preview.clone(),
                network: config.network.clone(),
                observe: config.observe,
                trust_policy: config.trust_policy.clone(),
                gateway: caged_gateway::Config {
                    prices: config.cost.prices.clone(),
                    openai: config.cost.openai.clone(),
                    anthropic: config.cost.anthropic.clone(),
                    port: config.network.gateway_port,
                },
                sandbox_ca: config.sandbox_ca.clone(),
                // Only an installation that existed before templates were its own had any.
                adopt_legacy_templates: !new_installation,
            },
            db.clone(),
            activity.clone(),
            budget_checks.clone(),
            tasks.stopping(),
        )
        .await?,
    );
    let preview_addr = node.preview_addr();

    let snapshots: Arc<dyn caged_snapshot::Storage> =
        Arc::new(caged_snapshot::LocalStorage::new(data_dir.join("snapshots")).map_err(dir_err)?);
    let (auto_snapshots, paused) = tokio::sync::mpsc::unbounded_channel();
    let engine = node.engine();
    let config_auth_failures = config.auth_failures_per_minute.max(1);
    let state = Arc::new(AppState {
        db,
        node: node.clone(),
        engine: engine.clone(),
        installation_id: installation_id.clone(),
        config,
        locks: locks::Locks::default(),
        activity,
        snapshots,
        auto_snapshots,
        stop: tasks.stopping(),
        budget_checks,
        webhook_sends: tokio::sync::Notify::new(),
        auth_failures: parking_lot::Mutex::new(Buckets::new(Rate::per_minute(
            config_auth_failures,
        ))),
    });
    snapshots::remove_orphans(&state).await;
    sessions::end_orphans(&state).await;
    let lifecycle: Arc<dyn caged_preview::Lifecycle> =
        Arc::new(sandboxes::ForPreviews(state.clone()));
    for (name, task) in node.loops(lifecycle, &tasks.stopping()) {
        tasks.spawn(name, task);
    }
    controllers::budget::before_serving(&state).await;
    tasks.spawn(
        "auto_snapshot",
        controllers::auto_snapshot::run(state.clone(), paused),
    );
    tasks.spawn("idle", controllers::idle::run(state.clone()));
    tasks.spawn("reconcile", controllers::reconcile::run(state.clone()));
    tasks.spawn("budget", controllers::budget::run(state.clone()));
    tasks.spawn("webhooks", controllers::webhooks::run(state.clone()));
    let domain = state.config.preview.domain.clone();
    let header_timeout = state.config.header_timeout;
    let router = api::router(state);
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = tasks.stopping();
    let task = tokio::spawn(async move {
        api::serve::serve(listener, router, header_timeout, async move {
            let _ = shutdown_rx.await;
            // Followers of the event stream end on it; otherwise they would hold the
            // shutdown open forever.
            stopping.cancel();
        })
        .await;
        tasks.stop(STOP_DEADLINE).await;
        // Stopped means the firewall is no longer being written either.
        node.quiesce().await;
    });
    tracing::info!(%addr, installation = %installation_id, started_at = now_ms(), "caged API listening");
    tracing::info!(addr = %preview_addr, "previews at cage-<id>-<port>.{domain}");
    tracing::info!("dashboard at http://{addr}/");
    Ok(RunningServer {
        addr,
        preview_addr,
        installation_id,
        admin_key_path,
        shutdown: Some(shutdown_tx),
        task,
        engine,
    })
}

fn restrict_permissions(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

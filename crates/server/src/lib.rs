//! Caged's control plane. [`start`] opens the data folder, makes sure an admin key exists,
//! connects to the engine (in the background, so the API is up even while the engine is not)
//! and serves the HTTP API.

mod api;
mod auth;
mod blocking;
mod config;
mod controllers;
mod dashboard;
mod engine;
mod error;
mod exec;
mod failpoint;
mod files;
mod paths;
mod sandboxes;
mod sessions;
mod snapshots;
mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use caged_domain::time::now_ms;
use caged_runtime::{DockerRuntime, Runtime};
use caged_store::{Db, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use caged_gateway::Upstream;
pub use caged_netpolicy::NetworkConfig;
pub use caged_preview::{PreviewConfig, PreviewTls, SELF_SIGNED_DIR, check_domain};
pub use caged_runtime::DEFAULT_PIDS_LIMIT;
pub use config::{CostConfig, ServerConfig};
pub use engine::EngineStatus;

/// How long a stopping server waits for its loops to end before it aborts them.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Name of the file in the data folder that holds the admin's API key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data folder {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database")]
    Store(#[from] caged_store::StoreError),
    #[error("preview setup failed: {reason}")]
    Preview { reason: String },
    #[error("network setup failed: {reason}")]
    Network { reason: String },
    #[error("LLM gateway setup failed: {reason}")]
    Gateway { reason: String },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What handlers share.
pub(crate) struct AppState {
    /// The database, and the live feed of the events written to it.
    pub db: Db,
    pub runtime: Arc<dyn Runtime>,
    pub engine: Arc<watch::Sender<EngineStatus>>,
    pub installation_id: String,
    pub config: ServerConfig,
    pub locks: sandboxes::Locks,
    pub activity: Arc<caged_activity::Activity>,
    pub snapshots: Arc<dyn caged_snapshot::Storage>,
    /// Sandboxes that just paused, for the auto-snapshot worker.
    pub auto_snapshots: tokio::sync::mpsc::UnboundedSender<caged_domain::SandboxId>,
    /// Cancelled when the server is stopping; loops and long-lived streams end on it.
    pub stop: tokio_util::sync::CancellationToken,
    pub previews: Arc<caged_preview::Previews>,
    pub network: Arc<caged_netpolicy::Network>,
    pub observer: Arc<caged_observe::Observer>,
    pub gateway: caged_gateway::Gateway,
    /// Tells the budget guard to look now (an LLM call was charged, a budget changed).
    pub budget_checks: Arc<tokio::sync::Notify>,
    /// Tells the webhook sender a delivery was queued.
    pub webhook_sends: tokio::sync::Notify,
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
    let installation_id = db
        .run(|store| store.meta_get_or_insert("installation_id", || caged_domain::random_hex(6)))
        .await?;
    let admin_key_path = data_dir.join(ADMIN_KEY_FILE);
    auth::ensure_admin(&db, &admin_key_path).await?;

    let runtime: Arc<dyn Runtime> = Arc::new(DockerRuntime::connect(
        config.docker_host.as_deref(),
        &installation_id,
    ));
    let tasks = tasks::Tasks::new();
    let engine = engine::watch(runtime.clone(), config.probe_gvisor_at_start, &tasks);

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

    let domain = caged_preview::check_domain(&config.preview.domain)
        .map_err(|reason| StartError::Preview { reason })?;
    let tls = caged_preview::tls_acceptor(&config.preview.tls, &data_dir, &domain)
        .map_err(|reason| StartError::Preview { reason })?;
    let preview_listener = TcpListener::bind(config.preview.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.preview.listen,
            source,
        })?;
    let preview_addr = preview_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: config.preview.listen,
            source,
        })?;
    let cookie_key = db
        .run(|store| {
            store.meta_get_or_insert("preview_cookie_key", || caged_domain::random_hex(32))
        })
        .await?;
    let activity = Arc::new(caged_activity::Activity::default());
    let previews = Arc::new(caged_preview::Previews::new(
        &caged_preview::PreviewConfig {
            domain: domain.clone(),
            ..config.preview.clone()
        },
        preview_addr.port(),
        tls.is_some(),
        &cookie_key,
        db.clone(),
        runtime.clone(),
        activity.clone(),
    ));
    caged_preview::warn_if_detection_is_costly();

    caged_netpolicy::Network::check_pool(&config.network.pool, &installation_id)
        .await
        .map_err(|reason| StartError::Network { reason })?;
    let gateway_key = db
        .run(|store| store.meta_get_or_insert("llm_gateway_key", || caged_domain::random_hex(32)))
        .await?;

    let snapshots: Arc<dyn caged_snapshot::Storage> =
        Arc::new(caged_snapshot::LocalStorage::new(data_dir.join("snapshots")).map_err(dir_err)?);
    let (auto_snapshots, paused) = tokio::sync::mpsc::unbounded_channel();
    let observer = Arc::new(caged_observe::Observer::new(
        config.trust_policy.clone(),
        config.observe,
        db.clone(),
    ));
    let budget_checks = Arc::new(tokio::sync::Notify::new());
    let gateway = caged_gateway::Gateway::new(
        caged_gateway::Config {
            prices: config.cost.prices.clone(),
            openai: config.cost.openai.clone(),
            anthropic: config.cost.anthropic.clone(),
            port: config.network.gateway_port,
        },
        &gateway_key,
        db.clone(),
        activity.clone(),
        budget_checks.clone(),
    )
    .map_err(|reason| StartError::Gateway { reason })?;
    let network = Arc::new(caged_netpolicy::Network::new(
        config.network.clone(),
        &installation_id,
        db.clone(),
        runtime.clone(),
        Some(Arc::new(gateway.clone())),
        Some(Arc::new(NetworkToObserver(observer.clone()))),
        tasks.stopping(),
    ));
    let state = Arc::new(AppState {
        db,
        runtime,
        engine: engine.clone(),
        installation_id: installation_id.clone(),
        config,
        locks: sandboxes::Locks::default(),
        activity,
        snapshots,
        auto_snapshots,
        stop: tasks.stopping(),
        previews,
        network,
        observer,
        gateway,
        budget_checks,
        webhook_sends: tokio::sync::Notify::new(),
    });
    snapshots::remove_orphans(&state).await;
    sessions::end_orphans(&state).await;
    tasks.spawn(
        "auto_snapshot",
        controllers::auto_snapshot::run(state.clone(), paused),
    );
    tasks.spawn("idle", controllers::idle::run(state.clone()));
    tasks.spawn("reconcile", controllers::reconcile::run(state.clone()));
    let lifecycle: Arc<dyn caged_preview::Lifecycle> =
        Arc::new(sandboxes::ForPreviews(state.clone()));
    tasks.spawn(
        "preview.detect",
        state
            .previews
            .clone()
            .detect(lifecycle.clone(), tasks.stopping()),
    );
    tasks.spawn(
        "preview.serve",
        state
            .previews
            .clone()
            .serve(preview_listener, tls, lifecycle, tasks.stopping()),
    );
    tasks.spawn("network.heal", state.network.clone().heal(tasks.stopping()));
    tasks.spawn(
        "network.refusals",
        state.network.clone().refusals(tasks.stopping()),
    );
    tasks.spawn(
        "network.traffic",
        state.network.clone().traffic(tasks.stopping()),
    );
    tasks.spawn("observe.record", state.observer.start(tasks.stopping()));
    tasks.spawn("observe.files", follow_host_view(state.clone()));
    tasks.spawn("budget", controllers::budget::run(state.clone()));
    tasks.spawn("webhooks", controllers::webhooks::run(state.clone()));
    let network = state.network.clone();
    let router = api::router(state);
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = tasks.stopping();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.await;
                // Followers of the event stream end on it; otherwise they would hold the
                // shutdown open forever.
                stopping.cancel();
            })
            .await;
        if let Err(err) = served {
            tracing::error!("server stopped: {err}");
        }
        tasks.stop(STOP_DEADLINE).await;
        // Stopped means the firewall is no longer being written either.
        network.quiesce().await;
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
        engine: engine.subscribe(),
    })
}

/// The observer hears of each network event as it is written.
struct NetworkToObserver(Arc<caged_observe::Observer>);

impl caged_netpolicy::Watcher for NetworkToObserver {
    fn network_event(&self, event: &caged_store::Event) {
        self.0.network_event(event);
    }
}

/// Tells the observer where sandboxes' files are each time the engine comes up.
async fn follow_host_view(state: Arc<AppState>) {
    let mut engine = state.engine.subscribe();
    loop {
        if matches!(&*engine.borrow_and_update(), EngineStatus::Up(_)) {
            state.observer.files(state.runtime.host_view());
        }
        tokio::select! {
            changed = engine.changed() => if changed.is_err() { return },
            () = state.stop.cancelled() => return,
        }
    }
}

fn restrict_permissions(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

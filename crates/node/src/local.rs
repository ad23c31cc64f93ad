//! The node in the control plane's own process: the Docker runtime, and the capabilities
//! (link, gateway, previews, observation) composed over it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use caged_activity::Activity;
use caged_domain::{SandboxId, SandboxState};
use caged_netpolicy::{LearnedHost, Network, NetworkConfig};
use caged_network::LinkSpec;
use caged_observe::Observer;
use caged_preview::{Preview, PreviewConfig, Previews};
use caged_runtime::{
    ByteStream, Capabilities, ContainerSummary, Description, DockerRuntime, Exec, ExecSpec,
    FsChange, PathStat, Runtime, SandboxSpec, TemplateInfo,
};
use caged_store::{Db, SandboxRecord};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ca::{Ca, SandboxCa};
use crate::capability::{self, Capability};
use crate::engine::{self, EngineStatus};
use crate::{Node, Result, Start};

/// What a node is given.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Labels everything the node makes on the engine.
    pub installation_id: String,
    /// The data folder (the previews' self-signed certificates are kept there).
    pub data_dir: PathBuf,
    /// `DOCKER_HOST`-style engine address; `None` for the local socket.
    pub docker_host: Option<String>,
    /// Check at start-up (with a test sandbox) whether gVisor works, rather than on first use.
    pub probe_gvisor_at_start: bool,
    pub pids_limit: i64,
    pub preview: PreviewConfig,
    pub network: NetworkConfig,
    /// Watch sandboxes from the host and score sessions.
    pub observe: bool,
    pub trust_policy: caged_trust::Policy,
    /// The gateway's providers and prices (its port is `network.gateway_port`).
    pub gateway: caged_gateway::Config,
    /// A PEM file of CA certificates every sandbox trusts (`--sandbox-ca`).
    pub sandbox_ca: Option<PathBuf>,
    /// Give this installation the engine-wide templates of versions before templates were each
    /// installation's own (an upgraded installation; never a new one).
    pub adopt_legacy_templates: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    #[error("--sandbox-ca: {reason}")]
    SandboxCa { reason: String },
    #[error("cannot read the node's keys")]
    Store(#[from] caged_store::StoreError),
}

type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct LocalNode {
    runtime: Arc<dyn Runtime>,
    engine: Arc<watch::Sender<EngineStatus>>,
    probe_gvisor: bool,
    installation_id: String,
    pids_limit: i64,
    network: Arc<Network>,
    previews: Arc<Previews>,
    observer: Arc<Observer>,
    gateway: caged_gateway::Gateway,
    sandbox_ca: Option<Arc<SandboxCa>>,
    /// In the order a sandbox's parts are set up.
    capabilities: Vec<Box<dyn Capability>>,
    preview_listener: parking_lot::Mutex<Option<(TcpListener, Option<TlsAcceptor>)>>,
    preview_addr: SocketAddr,
}

impl LocalNode {
    /// Connects to the engine (lazily: the node starts whether or not it answers), binds the
    /// preview listener and sets up the capabilities. `activity` is the control plane's clock
    /// (previews and gateway calls are activity); `charged` is told after each LLM charge.
    /// `stopping` is the server's: once cancelled, the firewall is left as it is.
    pub async fn new(
        config: NodeConfig,
        db: Db,
        activity: Arc<Activity>,
        charged: Arc<Notify>,
        stopping: CancellationToken,
    ) -> Result<LocalNode, StartError> {
        let sandbox_ca = match &config.sandbox_ca {
            Some(file) => Some(Arc::new(
                SandboxCa::load(file).map_err(|reason| StartError::SandboxCa { reason })?,
            )),
            None => None,
        };
        let mut docker =
            DockerRuntime::connect(config.docker_host.as_deref(), &config.installation_id);
        if config.adopt_legacy_templates {
            docker = docker.adopting_legacy_templates();
        }
        let runtime: Arc<dyn Runtime> = Arc::new(docker);

        let domain = caged_preview::check_domain(&config.preview.domain)
            .map_err(|reason| StartError::Preview { reason })?;
        let tls = caged_preview::tls_acceptor(&config.preview.tls, &config.data_dir, &domain)
            .map_err(|reason| StartError::Preview { reason })?;
        let listen = config.preview.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: listen,
                source,
            })?;
        let preview_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
        let cookie_key = db
            .run(|store| {
                store.meta_get_or_insert("preview_cookie_key", || caged_domain::random_hex(32))
            })
            .await?;
        let previews = Arc::new(Previews::new(
            &PreviewConfig {
                domain,
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

        Network::check_pool(&config.network.pool, &config.installation_id)
            .await
            .map_err(|reason| StartError::Network { reason })?;
        let gateway_key = db
            .run(|store| {
                store.meta_get_or_insert("llm_gateway_key", || caged_domain::random_hex(32))
            })
            .await?;
        let observer = Arc::new(Observer::new(
            config.trust_policy.clone(),
            config.observe,
            db.clone(),
        ));
        let gateway = caged_gateway::Gateway::new(
            config.gateway.clone(),
            &gateway_key,
            db.clone(),
            activity,
            charged,
        )
        .map_err(|reason| StartError::Gateway { reason })?;
        let network = Arc::new(Network::new(
            config.network.clone(),
            &config.installation_id,
            db,
            runtime.clone(),
            Some(Arc::new(gateway.clone())),
            Some(Arc::new(NetworkToObserver(observer.clone()))),
            stopping,
        ));

        // Observation first (a sandbox's sensitive files are marked before its processes get
        // far), the link before the gateway's environment that points at it.
        let mut capabilities: Vec<Box<dyn Capability>> = Vec::new();
        if config.observe {
            capabilities.push(Box::new(capability::Observe(observer.clone())));
        }
        capabilities.push(Box::new(capability::Previews(previews.clone())));
        capabilities.push(Box::new(capability::Link(network.clone())));
        capabilities.push(Box::new(capability::Gateway(gateway.clone())));
        if let Some(ca) = &sandbox_ca {
            capabilities.push(Box::new(Ca {
                runtime: runtime.clone(),
                ca: ca.clone(),
            }));
        }

        Ok(LocalNode {
            runtime,
            engine: Arc::new(watch::Sender::new(EngineStatus::Starting)),
            probe_gvisor: config.probe_gvisor_at_start,
            installation_id: config.installation_id,
            pids_limit: config.pids_limit,
            network,
            previews,
            observer,
            gateway,
            sandbox_ca,
            capabilities,
            preview_listener: parking_lot::Mutex::new(Some((listener, tls))),
            preview_addr,
        })
    }

    /// Where the preview proxy listens.
    pub fn preview_addr(&self) -> SocketAddr {
        self.preview_addr
    }

    /// The node's background loops, named, each running until `stop`: the engine watcher, the
    /// preview proxy and port detector, the network healer and the kernel's refusals and
    /// traffic, the observer's recorder. `lifecycle` is what previews may ask of the control
    /// plane. Called once; a second call has no preview proxy to run.
    pub fn loops(
        &self,
        lifecycle: Arc<dyn caged_preview::Lifecycle>,
        stop: &CancellationToken,
    ) -> Vec<(&'static str, Loop)> {
        let mut loops: Vec<(&'static str, Loop)> = vec![
            (
                "engine.watch",
                Box::pin(engine::watch(
                    self.runtime.clone(),
                    self.probe_gvisor,
                    self.engine.clone(),
                    stop.clone(),
                )),
            ),
            (
                "observe.files",
                Box::pin(follow_host_view(
                    self.runtime.clone(),
                    self.engine.subscribe(),
                    self.observer.clone(),
                    stop.clone(),
                )),
            ),
            (
                "observe.record",
                Box::pin(self.observer.start(stop.clone())),
            ),
            (
                "preview.detect",
                Box::pin(
                    self.previews
                        .clone()
                        .detect(lifecycle.clone(), stop.clone()),
                ),
            ),
            (
                "network.heal",
                Box::pin(self.network.clone().heal(stop.clone())),
            ),
            (
                "network.refusals",
                Box::pin(self.network.clone().refusals(stop.clone())),
            ),
            (
                "network.traffic",
                Box::pin(self.network.clone().traffic(stop.clone())),
            ),
        ];
        let listener = self.preview_listener.lock().take();
        if let Some((listener, tls)) = listener {
            loops.push((
                "preview.serve",
                Box::pin(
                    self.previews
                        .clone()
                        .serve(listener, tls, lifecycle, stop.clone()),
                ),
            ));
        }
        loops
    }

    /// Waits for a firewall write in progress; once the node is stopping, none starts after.
    pub async fn quiesce(&self) {
        self.network.quiesce().await;
    }

    /// The spec a sandbox's container is made from: its record's config, then each
    /// capability's part.
    /// Each capability's files into a container that was just made.
    async fn fill(&self, record: &SandboxRecord, handle: &str) -> Result<()> {
        for capability in &self.capabilities {
            capability.created(record, handle).await?;
        }
        Ok(())
    }

    async fn spec(&self, record: &SandboxRecord) -> Result<SandboxSpec> {
        let config = &record.config;
        let mut spec = SandboxSpec {
            id: record.id,
            account_id: record.account_id.clone(),
            installation_id: self.installation_id.clone(),
            template: config.template.clone(),
            isolation: config.isolation,
            resources: config.resources,
            network_mode: config.network_mode,
            env: config.env.clone(),
            enforce_disk: record.disk_enforced,
            pids_limit: self.pids_limit,
            link: None,
        };
        for capability in &self.capabilities {
            capability.prepare(record, &mut spec).await?;
        }
        Ok(spec)
    }
}

#[async_trait]
impl Node for LocalNode {
    fn engine(&self) -> watch::Receiver<EngineStatus> {
        self.engine.subscribe()
    }

    fn capabilities(&self) -> Capabilities {
        self.runtime.capabilities()
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        Ok(self.runtime.templates().await?)
    }

    async fn template(&self, name: &str) -> Result<Option<TemplateInfo>> {
        Ok(self.runtime.template(name).await?)
    }

    async fn import_template(&self, name: &str, rootfs: ByteStream) -> Result<TemplateInfo> {
        let template = self.runtime.import_template(name, rootfs).await?;
        // gVisor can only be tested once some template exists.
        let gvisor_unknown =
            matches!(&*self.engine.borrow(), EngineStatus::Up(info) if !info.gvisor.available);
        if gvisor_unknown {
            engine::refresh_gvisor(self.runtime.clone(), self.engine.clone());
        }
        Ok(template)
    }

    async fn build_template(
        &self,
        name: &str,
        dockerfile: &str,
        context: ByteStream,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<TemplateInfo> {
        Ok(self
            .runtime
            .build_template(name, dockerfile, context, progress)
            .await?)
    }

    async fn remove_template(&self, name: &str) -> Result<()> {
        Ok(self.runtime.remove_template(name).await?)
    }

    async fn create(&self, record: &SandboxRecord) -> Result<String> {
        let spec = self.spec(record).await?;
        let handle = self.runtime.create(&spec).await?;
        if let Err(err) = self.fill(record, &handle).await {
            let _ = self.runtime.destroy(&handle).await;
            return Err(err);
        }
        Ok(handle)
    }

    async fn started(&self, record: &SandboxRecord, how: Start) {
        for capability in &self.capabilities {
            capability.started(record, how).await;
        }
    }

    fn transitioned(&self, id: SandboxId, to: SandboxState) {
        for capability in &self.capabilities {
            capability.transitioned(id, to);
        }
    }

    async fn pause(&self, handle: &str) -> Result<()> {
        Ok(self.runtime.pause(handle).await?)
    }

    async fn resume(&self, handle: &str) -> Result<()> {
        Ok(self.runtime.resume(handle).await?)
    }

    async fn destroy(&self, handle: &str) -> Result<()> {
        Ok(self.runtime.destroy(handle).await?)
    }

    async fn restart(&self, handle: &str) -> Result<()> {
        Ok(self.runtime.start(handle).await?)
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>> {
        Ok(self.runtime.list(&self.installation_id).await?)
    }

    async fn describe(&self, handle: &str) -> Result<Description> {
        Ok(self.runtime.describe(handle).await?)
    }

    async fn exec(&self, handle: &str, spec: &ExecSpec) -> Result<Exec> {
        Ok(self.runtime.exec(handle, spec).await?)
    }

    async fn stat(&self, handle: &str, path: &str) -> Result<PathStat> {
        Ok(self.runtime.stat_path(handle, path).await?)
    }

    async fn read_tar(&self, handle: &str, path: &str) -> Result<ByteStream> {
        Ok(self.runtime.read_tar(handle, path).await?)
    }

    async fn write_tar(&self, handle: &str, dir: &str, tar: bytes::Bytes) -> Result<()> {
        Ok(self.runtime.write_tar(handle, dir, tar).await?)
    }

    async fn write_tar_stream(&self, handle: &str, dir: &str, tar: ByteStream) -> Result<()> {
        Ok(self.runtime.write_tar_stream(handle, dir, tar).await?)
    }

    async fn capture(&self, handle: &str) -> Result<(Vec<FsChange>, ByteStream)> {
        let changes = self.runtime.changes(handle).await?;
        let export = self.runtime.export(handle).await?;
        Ok((changes, export))
    }

    async fn stage(&self, record: &SandboxRecord) -> Result<String> {
        let spec = self.spec(record).await?;
        Ok(self.runtime.create_staged(&spec).await?)
    }

    async fn finish_stage(&self, staged: &str, record: &SandboxRecord) -> Result<()> {
        self.fill(record, staged).await
    }

    async fn promote(&self, staged: &str, record: &SandboxRecord) -> Result<()> {
        let spec = self.spec(record).await?;
        Ok(self.runtime.promote(staged, &spec).await?)
    }

    async fn link(&self, record: &SandboxRecord) -> Result<Option<LinkSpec>> {
        Ok(self.network.link_of(record).await?)
    }

    async fn set_allowed_hosts(&self, record: &SandboxRecord, hosts: Vec<String>) -> Result<()> {
        Ok(self.network.set_allowed_hosts(record, hosts).await?)
    }

    async fn learned_hosts(&self, id: SandboxId) -> Result<Vec<LearnedHost>> {
        Ok(self.network.learned_hosts(id).await?)
    }

    fn bind(&self, pid: i32, session: Option<String>) {
        self.observer.bind(pid, session);
    }

    async fn settle(&self, limit: Duration) {
        self.observer.settle(limit).await;
    }

    fn sandbox_ca(&self) -> Option<Arc<SandboxCa>> {
        self.sandbox_ca.clone()
    }

    fn observation(&self) -> caged_observe::Status {
        self.observer.status()
    }

    async fn previews(&self, record: &SandboxRecord) -> Result<Vec<Preview>> {
        Ok(self.previews.list(record).await?)
    }

    async fn protect(
        &self,
        record: &SandboxRecord,
        port: u16,
        password: Option<String>,
    ) -> Result<Preview> {
        Ok(self.previews.protect(record, port, password).await?)
    }

    fn preview_url(&self, id: SandboxId, port: u16) -> String {
        self.previews.url(id, port)
    }

    fn session_env(&self, record: &SandboxRecord, session: &str) -> Vec<(String, String)> {
        if record.config.network_mode == caged_domain::NetworkMode::None {
            return Vec::new();
        }
        let credential = self.gateway.credential(record.id, Some(session));
        caged_gateway::keys::key_env(&credential)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    }
}

/// The observer hears of each network event as it is written.
struct NetworkToObserver(Arc<Observer>);

impl caged_netpolicy::Watcher for NetworkToObserver {
    fn network_event(&self, event: &caged_store::Event, what: &caged_domain::event::NetworkAction) {
        self.0.network_event(event, what);
    }
}

/// Tells the observer where sandboxes' files are each time the engine comes up.
async fn follow_host_view(
    runtime: Arc<dyn Runtime>,
    mut engine: watch::Receiver<EngineStatus>,
    observer: Arc<Observer>,
    stop: CancellationToken,
) {
    loop {
        if matches!(&*engine.borrow_and_update(), EngineStatus::Up(_)) {
            observer.files(runtime.host_view());
        }
        tokio::select! {
            changed = engine.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

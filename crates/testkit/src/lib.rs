//! Starts the real Caged server on 127.0.0.1:0 with a temporary data folder, against the real
//! container engine, and hands back a client. Everything the server created on the engine is
//! removed when the [`TestServer`] is dropped, so tests leak nothing even when they fail.

pub mod http;
pub mod internet;
pub mod llm;
pub mod stats;
pub mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use caged_client::Client;
use caged_server::{EngineStatus, RunningServer, ServerConfig};
use serde_json::Value;

/// Where `scripts/build-templates` leaves its tarballs.
pub fn template_dir() -> PathBuf {
    std::env::var_os("CAGED_TEMPLATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/caged/templates"))
}

pub struct TestServer {
    pub client: Client,
    config: ServerConfig,
    pub url: String,
    pub addr: SocketAddr,
    /// Where the preview proxy listens (a new port after a restart).
    pub preview_addr: SocketAddr,
    pub installation_id: String,
    pub data_dir: tempfile::TempDir,
    pub admin_key: String,
    server: Option<RunningServer>,
}

/// A sandbox network (`--sandbox-network`) of its own for a test server on `data_dir`: the
/// same one each time it is asked for the same folder (a restarted server keeps its links'
/// addresses), and different for every folder of this process, so servers running side by side
/// never number links alike. /23s of 10.200.0.0/13, 128 sandboxes each.
pub fn sandbox_network(data_dir: &std::path::Path) -> String {
    use parking_lot::Mutex;
    use std::sync::OnceLock;
    static GIVEN: OnceLock<Mutex<HashMap<PathBuf, u32>>> = OnceLock::new();
    let mut given = GIVEN.get_or_init(Default::default).lock();
    // Processes start at different places, so two test binaries rarely meet either.
    let start = (std::process::id() % 16) * 64;
    let next = given.len() as u32;
    let index = *given
        .entry(data_dir.to_path_buf())
        .or_insert((start + next) % 1024);
    let base = (10u32 << 24) | (200 << 16) | (index << 9);
    format!("{}/23", std::net::Ipv4Addr::from(base))
}

/// A server with default settings.
pub async fn spawn() -> TestServer {
    spawn_with(|_| {}).await
}

/// A server whose config `adjust` may change first (e.g. a lower pids limit).
pub async fn spawn_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let data_dir = tempfile::tempdir().expect("temp data folder");
    let mut config = ServerConfig::new(
        data_dir.path().to_path_buf(),
        "127.0.0.1:0".parse().expect("loopback address"),
    );
    config.preview.listen = "127.0.0.1:0".parse().expect("loopback address");
    // Dozens of test servers start per run; gVisor is checked when a test first asks for it.
    config.probe_gvisor_at_start = false;
    config.network.pool =
        caged_network::Pool::parse(&sandbox_network(data_dir.path())).expect("a test pool");
    // Nothing beyond this machine: a sandbox's lookups fail fast unless a test brings its own
    // resolver.
    config.network.upstream = Some(vec![SocketAddr::from(([127, 0, 0, 1], 9))]);
    adjust(&mut config);
    let expects_engine = config.docker_host.is_none();
    let mut server = caged_server::start(config.clone())
        .await
        .expect("server starts");
    if expects_engine && let EngineStatus::Down { reason } = server.engine_status().await {
        panic!(
            "the container engine is not reachable ({reason}).\n\
             Start it with: sudo scripts/engine-up   (or run the whole suite with .ci/run)"
        );
    }
    let admin_key = std::fs::read_to_string(&server.admin_key_path)
        .expect("admin key written")
        .trim()
        .to_string();
    let url = format!("http://{}", server.addr);
    let client = Client::new(&url, Some(admin_key.clone()));
    if expects_engine {
        provide_templates(&server.installation_id).await;
    }
    TestServer {
        client,
        config,
        url,
        addr: server.addr,
        preview_addr: server.preview_addr,
        installation_id: server.installation_id.clone(),
        data_dir,
        admin_key,
        server: Some(server),
    }
}

/// Test templates, imported into the engine once under the `testkit` installation and tagged
/// into each test server's own: a tag costs nothing, an import of `base` seconds. By name, the
/// shared image's reference.
static TEMPLATES: tokio::sync::Mutex<Vec<(String, String)>> =
    tokio::sync::Mutex::const_new(Vec::new());
const TEST_TEMPLATES: [&str; 2] = ["busybox", "base"];

/// Gives `installation` the test templates (`busybox`, `base`), from the tarballs
/// `scripts/build-templates` makes: for servers the testkit did not start itself.
pub async fn provide_templates(installation: &str) {
    for name in TEST_TEMPLATES {
        provide_template(installation, name).await;
    }
}

/// Gives `installation` template `name` (any of the catalogue's), built by
/// `scripts/build-templates NAME`.
pub async fn provide_template(installation: &str, name: &str) {
    let image = shared_template(name).await;
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    let options = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo(&format!("caged/{installation}/{name}"))
        .tag("latest")
        .build();
    docker
        .tag_image(&image, Some(options))
        .await
        .unwrap_or_else(|err| panic!("tagging template {name} for the test server: {err}"));
}

/// The shared image of template `name`, imported when the engine has not seen its tarball (by
/// size and time) as `caged/testkit/<name>:<stamp>`, dropping older stamps.
async fn shared_template(name: &str) -> String {
    let mut known = TEMPLATES.lock().await;
    if let Some((_, image)) = known.iter().find(|(known, _)| known == name) {
        return image.clone();
    }
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    let path = template_dir().join(format!("{name}.tar"));
    let meta = std::fs::metadata(&path).unwrap_or_else(|err| {
        panic!(
            "template tarball {} is missing ({err}); build it with: sudo scripts/build-templates {name}",
            path.display()
        )
    });
    let modified = meta
        .modified()
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |at| at.as_nanos());
    let stamp = format!("{:x}-{:x}", meta.len(), modified);
    let repo = format!("caged/testkit/{name}");
    let image = format!("{repo}:{stamp}");
    if docker.inspect_image(&image).await.is_err() {
        let runtime = caged_runtime::DockerRuntime::connect(None, "testkit");
        let file = tokio::fs::File::open(&path)
            .await
            .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
        let body: caged_runtime::ByteStream =
            Box::pin(futures_util::stream::unfold(file, |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut chunk = vec![0u8; 1 << 20];
                match file.read(&mut chunk).await {
                    Ok(0) => None,
                    Ok(n) => {
                        chunk.truncate(n);
                        Some((Ok(bytes::Bytes::from(chunk)), file))
                    }
                    Err(err) => Some((Err(caged_runtime::RuntimeError::Io(err)), file)),
                }
            }));
        caged_runtime::Runtime::import_template(&runtime, name, body)
            .await
            .unwrap_or_else(|err| panic!("importing {}: {err}", path.display()));
        let options = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(&repo)
            .tag(&stamp)
            .build();
        docker
            .tag_image(&format!("{repo}:latest"), Some(options))
            .await
            .expect("tag the test template");
    }
    remove_tags(&docker, &repo, |tag| {
        tag != image && !tag.ends_with(":latest")
    })
    .await;
    known.push((name.to_string(), image.clone()));
    image
}

/// Removes the tags of repositories matching `reference` (a filter pattern) that `doomed`
/// picks; an image goes with its last tag.
async fn remove_tags(docker: &bollard::Docker, reference: &str, doomed: impl Fn(&str) -> bool) {
    let filters = HashMap::from([("reference".to_string(), vec![reference.to_string()])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let Ok(images) = docker.list_images(Some(options)).await else {
        return;
    };
    for tag in images.into_iter().flat_map(|image| image.repo_tags) {
        if doomed(&tag) {
            let _ = docker
                .remove_image(
                    &tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
    }
}

impl TestServer {
    /// A client for a new, non-admin account.
    pub async fn new_account(&self, name: &str) -> Client {
        let account = self
            .client
            .create_account(name)
            .await
            .expect("account created");
        Client::new(&self.url, Some(account.api_key))
    }

    /// A running sandbox from `config` (a `.caged.yaml` document as JSON).
    pub async fn sandbox(&self, config: Value) -> String {
        self.client
            .create_sandbox(&config)
            .await
            .expect("sandbox created")
            .id
    }

    /// A sandbox's network namespace, opened as the server opens it: from the engine's
    /// sandbox key (benchmarks dial into it the way the sandbox's own processes would).
    pub async fn sandbox_namespace(&self, id: &str) -> caged_netns::NetNs {
        let docker = bollard::Docker::connect_with_local_defaults()
            .expect("docker")
            .negotiate_version()
            .await
            .expect("engine");
        let containers = engine_sandboxes(&self.installation_id).await;
        let container = containers
            .iter()
            .find(|container| container.sandbox_id == id)
            .expect("the sandbox's container");
        let key = docker
            .inspect_container(&container.container_id, None)
            .await
            .expect("inspect container")
            .network_settings
            .and_then(|settings| settings.sandbox_key)
            .expect("sandbox key");
        caged_netns::NetNs::open(std::path::Path::new(&key)).expect("open namespace")
    }

    /// Environment for running the `caged` binary against this server.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CAGED_URL", self.url.clone()),
            ("CAGED_API_KEY", self.admin_key.clone()),
            ("CAGED_DATA_DIR", self.data_dir.path().display().to_string()),
        ]
    }

    /// Stops the server gracefully (in-flight requests finish).
    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Stops the server and starts a new one on the same data folder (a new port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`TestServer::restart`] with its configuration changed by `adjust` (kept for later
    /// restarts).
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut ServerConfig)) {
        self.shutdown().await;
        adjust(&mut self.config);
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().expect("loopback address");
        config.preview.listen = "127.0.0.1:0".parse().expect("loopback address");
        let mut server = caged_server::start(config).await.expect("server restarts");
        server.engine_status().await;
        self.url = format!("http://{}", server.addr);
        self.addr = server.addr;
        self.preview_addr = server.preview_addr;
        self.client = Client::new(&self.url, Some(self.admin_key.clone()));
        self.server = Some(server);
    }

    /// Sandbox containers on the engine that belong to this server's installation (the
    /// short-lived gVisor probe, labelled with no sandbox, is not one).
    pub async fn engine_containers(&self) -> Vec<String> {
        engine_sandboxes(&self.installation_id)
            .await
            .into_iter()
            .filter(|container| !container.sandbox_id.is_empty())
            .map(|container| container.container_id)
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Stop the server first: until it knows it is stopping it writes its firewall (a heal
        // round, a destroy it sees), and would put back the tables the clean-up below deletes.
        // A multi-threaded runtime can run the stop while this thread waits for it; elsewhere
        // the runtime's tasks stand still until this returns anyway.
        if let Some(server) = self.server.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(|| {
                        handle.block_on(async {
                            let stopped = server.shutdown();
                            let _ =
                                tokio::time::timeout(std::time::Duration::from_secs(10), stopped)
                                    .await;
                        })
                    });
                }
                _ => drop(server),
            }
        }
        // Cleans up on a thread of its own: Drop may run inside an async runtime.
        drop(InstallationGuard(self.installation_id.clone()));
    }
}

/// Removes every container and network labelled with `installation`.
pub async fn remove_installation(installation: &str) {
    let Ok(docker) = bollard::Docker::connect_with_local_defaults() else {
        return;
    };
    let label = format!("dev.caged.installation={installation}");
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    if let Ok(containers) = docker.list_containers(Some(options)).await {
        for id in containers.into_iter().filter_map(|container| container.id) {
            let remove = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(&id, Some(remove)).await;
        }
    }
    let _ = docker
        .remove_network(&format!("caged-{installation}"))
        .await;
    // Its templates (tags of shared test images, or its own imports).
    remove_tags(&docker, &format!("caged/{installation}/*"), |_| true).await;
    // The installation's firewall table (its links went with the containers' namespaces).
    for table in [
        format!("caged_{installation}"),
        format!("caged_{installation}_guard"),
    ] {
        let _ = tokio::process::Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// A container of an installation, as the engine itself reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineContainer {
    pub container_id: String,
    /// The `dev.caged.sandbox` label; empty when absent.
    pub sandbox_id: String,
    pub state: String,
}

/// Every container on the engine labelled with `installation`, asked of the engine directly.
pub async fn engine_sandboxes(installation: &str) -> Vec<EngineContainer> {
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker client");
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("dev.caged.installation={installation}")],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .into_iter()
        .map(|container| EngineContainer {
            container_id: container.id.unwrap_or_default(),
            sandbox_id: container
                .labels
                .unwrap_or_default()
                .get("dev.caged.sandbox")
                .cloned()
                .unwrap_or_default(),
            state: container
                .state
                .map(|state| state.to_string())
                .unwrap_or_default(),
        })
        .collect()
}

/// A bare relay: each connection accepted on `listener` is dialled on to `to` from inside `ns`
/// and passed both ways with `splice(2)`, nothing parsed or checked. Benchmarks run one beside a
/// proxy: what one more TCP hop through a process costs on this machine, so the most any proxy
/// in that place could reach.
pub async fn bare_relay(
    listener: tokio::net::TcpListener,
    ns: std::sync::Arc<caged_netns::NetNs>,
    to: SocketAddr,
) {
    while let Ok((client, _)) = listener.accept().await {
        let ns = ns.clone();
        tokio::spawn(async move {
            let Ok(upstream) = ns.connect(to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = caged_network::splice::relay(
                &client,
                &upstream,
                caged_network::splice::AFTER_HALF_CLOSE,
            )
            .await;
        });
    }
}

/// Removes an installation's containers and network when dropped, for tests that run the
/// server as a separate process.
pub struct InstallationGuard(pub String);

impl Drop for InstallationGuard {
    fn drop(&mut self) {
        let installation = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(remove_installation(&installation));
        });
        let _ = cleanup.join();
    }
}

/// The raw-Docker side of benchmarks: the very container Caged would create, and one exec, made
/// with the engine's own API calls and nothing else.
pub mod raw {
    use std::time::Duration;

    use bollard::Docker;
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures_util::StreamExt;

    /// Name and configuration of a busybox sandbox on `installation`'s network, exactly as Caged
    /// makes it but for its installation label.
    pub fn sandbox_container(installation: &str) -> (String, bollard::models::ContainerCreateBody) {
        let spec = caged_runtime::SandboxSpec {
            id: caged_domain::SandboxId::random(),
            account_id: "bench".into(),
            // Labelled as another installation: the server's reconciler owns only containers
            // of its own, and would rightly remove these.
            installation_id: format!("{installation}-raw"),
            template: "busybox".into(),
            isolation: caged_domain::Isolation::Container,
            resources: caged_domain::Resources::default(),
            network_mode: caged_domain::NetworkMode::Full,
            env: Default::default(),
            enforce_disk: true,
            pids_limit: caged_runtime::DEFAULT_PIDS_LIMIT,
            // The raw side has no link: the benchmarks compare the engine's part of the work.
            link: None,
        };
        caged_runtime::DockerRuntime::connect(None, installation).container_config(&spec)
    }

    /// Runs `argv` in a container and waits for its exit, as Caged's exec does.
    pub async fn exec(docker: &Docker, container: &str, argv: &[&str]) {
        let options = CreateExecOptions::<String> {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv.iter().map(|arg| arg.to_string()).collect()),
            ..Default::default()
        };
        let exec = docker
            .create_exec(container, options)
            .await
            .expect("raw exec");
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&exec.id, None).await.expect("raw start")
        {
            while output.next().await.is_some() {}
        }
        while docker
            .inspect_exec(&exec.id)
            .await
            .expect("raw inspect")
            .running
            == Some(true)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A small dev server for preview tests and benchmarks (see the file for its routes); run it in
/// a `base` sandbox with `python3 FILE PORT [BIND]`.
pub const PREVIEW_SERVER_PY: &str = include_str!("../assets/preview_server.py");

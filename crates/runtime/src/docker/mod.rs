//! The Docker driver: a sandbox is one hardened container, talked to through the engine's API.
//!
//! Every container carries labels naming its installation and sandbox; the driver only ever
//! lists or removes containers carrying this installation's label, so two Caged installations
//! can share one engine.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    ContainerArchiveInfoOptionsBuilder, CreateContainerOptionsBuilder,
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use caged_domain::{Isolation, SandboxId};
use futures_util::{StreamExt, TryStreamExt};

use crate::{
    ByteStream, Capabilities, ContainerSummary, Description, EngineInfo, EngineState, Exec,
    ExecSpec, FsChange, HostView, KEPT_CAPABILITIES, PathStat, Result, Runtime, RuntimeError,
    SandboxSpec, Support, TemplateInfo, seccomp,
};

mod build;
mod exec;
mod layout;
mod templates;

pub const LABEL_INSTALLATION: &str = "dev.caged.installation";
pub const LABEL_SANDBOX: &str = "dev.caged.sandbox";
pub const LABEL_ACCOUNT: &str = "dev.caged.account";
pub const LABEL_TEMPLATE: &str = "dev.caged.template";
const GVISOR_RUNTIME: &str = "runsc";
/// PID 1 of every sandbox: a shell that sleeps forever. The engine's own init (tini) sits above
/// it to reap orphans.
const KEEPALIVE: &[&str] = &["/bin/sh", "-c", "while :; do sleep 3600; done"];
pub struct DockerRuntime {
    host: Option<String>,
    /// Connected on first use: the client library refuses to build a client for a socket that
    /// does not exist yet, and the engine may start after the server.
    client: parking_lot::Mutex<Option<Docker>>,
    installation_id: String,
    gvisor: OnceLock<Support>,
    /// Where the engine keeps sandboxes' files, as the last probe found.
    host_view: parking_lot::Mutex<Option<Arc<dyn HostView>>>,
    seccomp_profile: String,
    /// Whether earlier versions' engine-wide templates are still to be given to this
    /// installation (see [`DockerRuntime::adopting_legacy_templates`]).
    adopt_legacy: std::sync::atomic::AtomicBool,
    /// What templates say of themselves, by image id, read once each.
    described: parking_lot::Mutex<HashMap<String, templates::Described>>,
}

impl DockerRuntime {
    async fn create_named(
        &self,
        spec: &SandboxSpec,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String> {
        let name = name.to_string();
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self.docker()?.create_container(Some(options), body).await;
        let container_id = match created {
            Ok(response) => response.id,
            // Asking the engine for the list only when the image is missing keeps a lookup off
            // every create.
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.contains("No such image") => {
                return Err(RuntimeError::TemplateMissing {
                    template: spec.template.clone(),
                    known: self.template_names().await?,
                });
            }
            Err(err) => {
                // A create that failed on the engine's side may still have left a container.
                let _ = self.remove(&name).await;
                return Err(engine_error(err));
            }
        };
        if let Err(err) = self.docker()?.start_container(&container_id, None).await {
            let _ = self.remove(&container_id).await;
            return Err(engine_error(err));
        }
        Ok(container_id)
    }

    /// Connects lazily: nothing is sent until the first call, so a server can start while the
    /// engine is down. `host` is a `DOCKER_HOST`-style address; `None` is the local socket.
    pub fn connect(host: Option<&str>, installation_id: &str) -> DockerRuntime {
        DockerRuntime {
            host: host.map(str::to_string),
            client: parking_lot::Mutex::new(None),
            installation_id: installation_id.to_string(),
            gvisor: OnceLock::new(),
            host_view: parking_lot::Mutex::new(None),
            seccomp_profile: seccomp::profile().to_string(),
            adopt_legacy: std::sync::atomic::AtomicBool::new(false),
            described: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Copies the engine-wide templates of earlier versions (`caged/<name>:latest`) into this
    /// installation, once, the first time it looks at its templates: for an installation that
    /// upgraded, whose sandboxes and snapshots name them. The old tags stay, for other
    /// installations of those versions on the same engine; a new installation never takes them.
    pub fn adopting_legacy_templates(self) -> Self {
        self.adopt_legacy
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    fn docker(&self) -> Result<Docker> {
        let mut client = self.client.lock();
        if let Some(docker) = client.as_ref() {
            return Ok(docker.clone());
        }
        let docker = match &self.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|err| RuntimeError::EngineUnreachable {
            reason: err.to_string(),
        })?;
        *client = Some(docker.clone());
        Ok(docker)
    }

    fn container_name(&self, id: SandboxId) -> String {
        format!("caged-{}-{id}", self.installation_id)
    }

    /// Earlier versions put sandboxes on a per-installation bridge; links replaced it.
    async fn remove_old_network(&self) {
        let name = format!("caged-{}", self.installation_id);
        if let Ok(docker) = self.docker() {
            let _ = docker.remove_network(&name).await;
        }
    }

    async fn template_names(&self) -> Result<Vec<String>> {
        Ok(self
            .templates()
            .await?
            .into_iter()
            .map(|template| template.name)
            .collect())
    }

    /// Runs a throwaway container under runsc to learn whether gVisor really works here.
    async fn probe_gvisor(&self, runtimes: &[String]) -> Support {
        if !runtimes.iter().any(|name| name == GVISOR_RUNTIME) {
            return Support {
                available: false,
                detail:
                    "the engine has no `runsc` runtime registered (scripts/engine-up registers it)"
                        .into(),
            };
        }
        let templates = match self.templates().await {
            Ok(templates) if !templates.is_empty() => templates,
            _ => {
                return Support {
                    available: false,
                    detail: "runsc is registered but unverified: no template to test it with yet"
                        .into(),
                };
            }
        };
        let image = self.template_image(&templates[0].name);
        let name = format!(
            "caged-{}-gvisor-probe-{}",
            self.installation_id,
            caged_domain::random_hex(3)
        );
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), "echo ok".into()]),
            labels: Some(HashMap::from([(
                LABEL_INSTALLATION.to_string(),
                self.installation_id.clone(),
            )])),
            host_config: Some(HostConfig {
                runtime: Some(GVISOR_RUNTIME.into()),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let docker = match self.docker() {
            Ok(docker) => docker,
            Err(err) => {
                return Support {
                    available: false,
                    detail: err.to_string(),
                };
            }
        };
        let outcome = async {
            docker.create_container(Some(options), body).await?;
            docker.start_container(&name, None).await?;
            let mut wait = docker.wait_container(&name, None);
            match wait.next().await {
                Some(Ok(response)) if response.status_code == 0 => Ok(()),
                Some(Ok(response)) => Err(DockerError::DockerContainerWaitError {
                    error: format!("probe exited {}", response.status_code),
                    code: response.status_code,
                }),
                Some(Err(err)) => Err(err),
                None => Ok(()),
            }
        }
        .await;
        let _ = self.remove(&name).await;
        match outcome {
            Ok(()) => Support {
                available: true,
                detail: "runsc works. Limits of this host's runsc: it runs with --network=host (gVisor's \
                         own network stack cannot start on this kernel), so sandbox network syscalls go \
                         to the host kernel inside the container's own network namespace; the rest of \
                         the syscall surface is gVisor's"
                    .into(),
            },
            Err(err) => Support { available: false, detail: format!("a runsc test container failed: {err}") },
        }
    }

    async fn remove(&self, handle: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker()?.remove_container(handle, Some(options)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Removal already under way (another destroy, or the engine's own cleanup).
            Err(DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(err) => Err(engine_error(err)),
        }
    }

    async fn disk_limit_support(&self, driver: &str, backing: Option<&str>) -> Support {
        match (driver, backing) {
            ("btrfs" | "zfs", _) => Support {
                available: true,
                detail: format!("enforced by the {driver} storage driver"),
            },
            ("overlay2", Some("xfs")) => Support {
                available: true,
                detail: "overlay2 on xfs: enforced when the filesystem is mounted with pquota"
                    .into(),
            },
            _ => Support {
                available: false,
                detail: format!(
                    "NOT enforced: storage driver {driver} on {} cannot limit a container's disk \
                     (use btrfs, as scripts/engine-up does, or overlay2 on xfs with pquota)",
                    backing.unwrap_or("an unknown filesystem")
                ),
            },
        }
    }

    /// The engine's description of a sandbox's container: its name and every setting, hardening
    /// included. Public so benchmarks can create the very same container with raw API calls.
    pub fn container_config(&self, spec: &SandboxSpec) -> (String, ContainerCreateBody) {
        let name = self.container_name(spec.id);
        let labels = HashMap::from([
            (LABEL_INSTALLATION.to_string(), spec.installation_id.clone()),
            (LABEL_SANDBOX.to_string(), spec.id.to_string()),
            (LABEL_ACCOUNT.to_string(), spec.account_id.clone()),
        ]);
        let mut env: Vec<String> = spec
            .env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        env.push(format!("CAGED_SANDBOX_ID={}", spec.id));
        // What an agent expects of a terminal session; a sandbox's own `env:` wins.
        if !spec.env.contains_key("LANG") {
            env.push("LANG=C.UTF-8".into());
        }

        let memory = (spec.resources.memory as i64) << 20;
        // The engine gives every sandbox a namespace with loopback only; Caged adds the link
        // itself (see caged_network::link), so the engine's own networking is never involved.
        // Without a link (`network_mode: none`) the engine would copy the host's resolvers and
        // search domains in: name a loopback resolver that nothing answers instead.
        let (dns, dns_search) = match &spec.link {
            Some(link) => (Some(vec![link.host_addr.to_string()]), None),
            None => (
                Some(vec!["127.0.0.1".to_string()]),
                Some(vec![".".to_string()]),
            ),
        };
        let host_config = HostConfig {
            init: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(
                KEPT_CAPABILITIES
                    .iter()
                    .map(|cap| cap.to_string())
                    .collect(),
            ),
            security_opt: Some(vec![
                "no-new-privileges:true".into(),
                format!("seccomp={}", self.seccomp_profile),
            ]),
            privileged: Some(false),
            pids_limit: Some(spec.pids_limit),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.resources.cpu * 1e9) as i64),
            storage_opt: spec.enforce_disk.then(|| {
                HashMap::from([("size".to_string(), format!("{}G", spec.resources.disk))])
            }),
            network_mode: Some("none".into()),
            dns,
            dns_search,
            runtime: (spec.isolation == Isolation::Gvisor).then(|| GVISOR_RUNTIME.to_string()),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(self.template_image(&spec.template)),
            cmd: Some(KEEPALIVE.iter().map(|part| part.to_string()).collect()),
            hostname: Some(format!("cage-{}", spec.id)),
            working_dir: Some("/workspace".into()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        (name, body)
    }
}

/// The engine's word for a container's state, as an [`EngineState`].
fn engine_state(state: Option<String>) -> EngineState {
    match state.as_deref() {
        Some("running") => EngineState::Running,
        Some("paused") => EngineState::Paused,
        Some("exited") => EngineState::Stopped,
        other => EngineState::Other(other.unwrap_or_default().to_string()),
    }
}

pub(crate) fn engine_error(err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Engine {
            status: status_code,
            message,
        },
        DockerError::DockerStreamError { error } => RuntimeError::Engine {
            status: 500,
            message: error,
        },
        DockerError::DockerContainerWaitError { error, .. } => RuntimeError::Engine {
            status: 500,
            message: error,
        },
        other => RuntimeError::EngineUnreachable {
            reason: other.to_string(),
        },
    }
}

/// Errors about one container: a 404 means the container is gone, not that the path is missing.
pub(crate) fn container_error(err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("No such container") => RuntimeError::ContainerGone,
        other => engine_error(other),
    }
}

fn path_error(path: &str, err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if !message.contains("No such container") => RuntimeError::PathNotFound {
            path: path.to_string(),
        },
        other => container_error(other),
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn probe(&self) -> Result<EngineInfo> {
        // Use the engine's API version when it is older than ours (Debian 12 ships 20.10).
        let docker = self
            .docker()?
            .clone()
            .negotiate_version()
            .await
            .map_err(engine_error)?;
        let version = docker.version().await.map_err(engine_error)?;
        let info = docker.info().await.map_err(engine_error)?;
        self.remove_old_network().await;
        let driver = info.driver.clone().unwrap_or_default();
        let backing = info.driver_status.as_ref().and_then(|status| {
            status
                .iter()
                .find(|pair| pair.first().is_some_and(|key| key == "Backing Filesystem"))
                .and_then(|pair| pair.get(1).cloned())
        });
        let gvisor = self.gvisor.get().cloned().unwrap_or_else(|| Support {
            available: false,
            detail: "not checked yet".into(),
        });
        let sandbox_filesystems = info
            .docker_root_dir
            .as_deref()
            .map(std::path::PathBuf::from)
            .filter(|root| layout::watchable(&driver, root));
        *self.host_view.lock() = sandbox_filesystems
            .clone()
            .map(|root| Arc::new(layout::Btrfs::new(root)) as Arc<dyn HostView>);
        Ok(EngineInfo {
            sandbox_filesystems,
            version: version.version.unwrap_or_default(),
            api_version: docker.client_version().to_string(),
            disk_limits: self.disk_limit_support(&driver, backing.as_deref()).await,
            storage_driver: driver,
            gvisor,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolations: vec![Isolation::Container, Isolation::Gvisor],
            pause: true,
            memory_snapshot: false,
            filesystem_snapshot: true,
            host_processes: true,
            host_files: self.host_view().is_some(),
            network_namespace: true,
        }
    }

    fn host_view(&self) -> Option<Arc<dyn HostView>> {
        self.host_view.lock().clone()
    }

    async fn isolation_support(&self, isolation: Isolation) -> Support {
        if isolation == Isolation::Container {
            return Support {
                available: true,
                detail: "runc".into(),
            };
        }
        if let Some(support) = self.gvisor.get() {
            return support.clone();
        }
        let runtimes: Vec<String> = match self.docker() {
            Ok(docker) => match docker.info().await {
                Ok(info) => info.runtimes.unwrap_or_default().into_keys().collect(),
                Err(err) => {
                    return Support {
                        available: false,
                        detail: format!("engine info failed: {err}"),
                    };
                }
            },
            Err(err) => {
                return Support {
                    available: false,
                    detail: err.to_string(),
                };
            }
        };
        let support = self.probe_gvisor(&runtimes).await;
        // Only a definite answer is kept; "no template yet" is asked again next time.
        if support.available || !support.detail.contains("unverified") {
            let _ = self.gvisor.set(support.clone());
        }
        support
    }

    async fn ping(&self) -> Result<()> {
        self.docker()?
            .ping()
            .await
            .map(|_| ())
            .map_err(|err| RuntimeError::EngineUnreachable {
                reason: err.to_string(),
            })
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        self.list_templates().await
    }

    async fn template(&self, name: &str) -> Result<Option<TemplateInfo>> {
        self.one_template(name).await
    }

    async fn import_template(&self, name: &str, rootfs_tar: ByteStream) -> Result<TemplateInfo> {
        self.import(name, rootfs_tar).await
    }

    async fn build_template(
        &self,
        name: &str,
        dockerfile: &str,
        context: ByteStream,
        progress: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<TemplateInfo> {
        self.build(name, dockerfile, context, progress).await
    }

    async fn remove_template(&self, name: &str) -> Result<()> {
        self.remove_named_template(name).await
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String> {
        if spec.isolation == Isolation::Gvisor {
            let support = self.isolation_support(Isolation::Gvisor).await;
            if !support.available {
                return Err(RuntimeError::IsolationUnavailable {
                    reason: support.detail,
                });
            }
        }
        let (name, body) = self.container_config(spec);
        let container_id = self.create_named(spec, &name, body).await?;
        if let Some(link) = &spec.link
            && let Err(err) = self.attach_link(&container_id, link).await
        {
            let _ = self.remove(&container_id).await;
            return Err(err);
        }
        Ok(container_id)
    }

    async fn create_staged(&self, spec: &SandboxSpec) -> Result<String> {
        let (name, body) = self.container_config(spec);
        let staged = format!("{name}-staged-{}", caged_domain::random_hex(3));
        self.create_named(spec, &staged, body).await
    }

    async fn promote(&self, staged: &str, spec: &SandboxSpec) -> Result<()> {
        let (name, _) = self.container_config(spec);
        let options = bollard::query_parameters::RenameContainerOptionsBuilder::default()
            .name(&name)
            .build();
        self.docker()?
            .rename_container(staged, options)
            .await
            .map_err(container_error)?;
        match &spec.link {
            Some(link) => self.attach_link(staged, link).await,
            None => Ok(()),
        }
    }

    async fn changes(&self, handle: &str) -> Result<Vec<FsChange>> {
        let changes = self
            .docker()?
            .container_changes(handle)
            .await
            .map_err(container_error)?;
        Ok(changes
            .unwrap_or_default()
            .into_iter()
            .map(|change| match change.kind {
                bollard::models::ChangeType::_1 => FsChange::Added(change.path),
                bollard::models::ChangeType::_2 => FsChange::Deleted(change.path),
                bollard::models::ChangeType::_0 => FsChange::Modified(change.path),
            })
            .collect())
    }

    async fn export(&self, handle: &str) -> Result<ByteStream> {
        let stream = self
            .docker()?
            .export_container(handle)
            .map_err(container_error);
        Ok(Box::pin(stream))
    }

    async fn start(&self, handle: &str) -> Result<()> {
        self.docker()?
            .start_container(handle, None)
            .await
            .map_err(container_error)
    }

    async fn pause(&self, handle: &str) -> Result<()> {
        // The cgroup freezer gives up ("unable to freeze") when a busy task does not reach the
        // freezer soon enough, as happens on a loaded host; runc thaws the cgroup again, so
        // asking once more is safe.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.docker()?.pause_container(handle).await {
                Err(err) if attempt < 5 && err.to_string().contains("unable to freeze") => {
                    tracing::debug!(
                        container = handle,
                        attempt,
                        "freeze failed; retrying: {err}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                other => return other.map_err(container_error),
            }
        }
    }

    async fn resume(&self, handle: &str) -> Result<()> {
        self.docker()?
            .unpause_container(handle)
            .await
            .map_err(container_error)
    }

    async fn destroy(&self, handle: &str) -> Result<()> {
        self.remove(handle).await
    }

    async fn list(&self, installation_id: &str) -> Result<Vec<ContainerSummary>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_INSTALLATION}={installation_id}")],
        )]);
        let containers = self
            .docker()?
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(engine_error)?;
        Ok(containers
            .into_iter()
            .map(|container| ContainerSummary {
                container_id: container.id.unwrap_or_default(),
                sandbox_id: container
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(LABEL_SANDBOX))
                    .and_then(|id| id.parse().ok()),
                state: engine_state(container.state.map(|state| state.to_string())),
            })
            .collect())
    }

    async fn exec(&self, handle: &str, spec: &ExecSpec) -> Result<Exec> {
        exec::start(self.docker()?, handle, spec).await
    }

    async fn stat_path(&self, handle: &str, path: &str) -> Result<PathStat> {
        let options = ContainerArchiveInfoOptionsBuilder::default()
            .path(path)
            .build();
        let stat = self
            .docker()?
            .get_container_archive_info(handle, Some(options))
            .await
            .map_err(|err| path_error(path, err))?;
        // Go's os.FileMode: the directory bit is the top bit; permission bits are the low 9.
        let mode = stat.file_mode;
        let is_dir = mode & (1 << 31) != 0;
        let link_target = Some(stat.link_target).filter(|target| !target.is_empty());
        Ok(PathStat {
            is_dir,
            size: stat.size,
            mode: mode & 0o7777,
            link_target,
        })
    }

    async fn read_tar(&self, handle: &str, path: &str) -> Result<ByteStream> {
        // Fail early with a clear error rather than partway through a response body.
        self.stat_path(handle, path).await?;
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let owned_path = path.to_string();
        let stream = self
            .docker()?
            .download_from_container(handle, Some(options))
            .map_err(move |err| path_error(&owned_path, err));
        Ok(Box::pin(stream))
    }

    async fn write_tar(&self, handle: &str, dir: &str, tar: Bytes) -> Result<()> {
        let options = UploadToContainerOptionsBuilder::default()
            .path(dir)
            .no_overwrite_dir_non_dir("true")
            .build();
        self.docker()?
            .upload_to_container(handle, Some(options), bollard::body_full(tar))
            .await
            .map_err(|err| path_error(dir, err))
    }

    async fn write_tar_stream(&self, handle: &str, dir: &str, tar: ByteStream) -> Result<()> {
        let options = UploadToContainerOptionsBuilder::default()
            .path(dir)
            .no_overwrite_dir_non_dir("true")
            .build();
        let body =
            bollard::body_try_stream(tar.map_err(|err| std::io::Error::other(err.to_string())));
        self.docker()?
            .upload_to_container(handle, Some(options), body)
            .await
            .map_err(|err| path_error(dir, err))
    }

    async fn describe(&self, handle: &str) -> Result<Description> {
        let inspect = self
            .docker()?
            .inspect_container(handle, None)
            .await
            .map_err(container_error)?;
        let state = inspect.state.unwrap_or_default();
        Ok(Description {
            engine: "docker",
            handle: inspect.id.unwrap_or_else(|| handle.to_string()),
            runtime: inspect.host_config.and_then(|host| host.runtime),
            state: engine_state(state.status.map(|status| status.to_string())),
            pid: state.pid,
        })
    }

    async fn network_namespace(&self, handle: &str) -> Result<caged_netns::NetNs> {
        // The engine keeps each container's namespace bind-mounted at its "sandbox key"; the
        // second look makes sure the file opened is still that container's.
        let key = self.sandbox_key(handle).await?;
        let ns = caged_netns::NetNs::open(std::path::Path::new(&key)).map_err(|err| {
            RuntimeError::NetworkUnreachable {
                reason: format!("cannot open {key} (is the engine on this host?): {err}"),
            }
        })?;
        if self.sandbox_key(handle).await? != key {
            return Err(RuntimeError::NetworkUnreachable {
                reason: "the sandbox restarted while its network was being opened".into(),
            });
        }
        Ok(ns)
    }

    async fn attach_link(&self, handle: &str, link: &caged_network::LinkSpec) -> Result<()> {
        let ns = self.network_namespace(handle).await?;
        caged_network::link::attach_veth(&ns, link)
            .await
            .map_err(|err| RuntimeError::Link {
                reason: err.to_string(),
            })
    }
}

impl DockerRuntime {
    async fn sandbox_key(&self, handle: &str) -> Result<String> {
        let inspect = self
            .docker()?
            .inspect_container(handle, None)
            .await
            .map_err(container_error)?;
        let running = inspect.state.and_then(|state| state.running) == Some(true);
        let key = inspect
            .network_settings
            .and_then(|settings| settings.sandbox_key)
            .filter(|key| !key.is_empty());
        match key {
            Some(key) if running => Ok(key),
            _ => Err(RuntimeError::NetworkUnreachable {
                reason: "the sandbox is not running".into(),
            }),
        }
    }
}

//! Network policy: each sandbox's network mode, enforced on the host side of its own link.
//!
//! A sandbox in `full` or `allowlist` mode gets a link (a veth pair, see
//! [`caged_network::link`]) numbered from the pool; `none` gets none. [`Network`] keeps, per
//! link, Caged's services on its host address (the DNS stub for both modes, the egress proxy for
//! `allowlist`, and the [`LinkService`] the server adds: the LLM gateway), writes the
//! installation's firewall table whenever the set of links changes, and heals: every
//! [`HEAL_EVERY`] it puts back a table someone deleted or changed, host-end settings a global
//! `ip_forward` toggle reset, links that vanished and services that died. What it sees and
//! refuses are `network` events; a [`Watcher`] hears of each as it is written.
//!
//! The mechanisms (links, nftables, DNS and TLS parsing) are `caged_network`'s; this crate is the
//! policy and the services that hold state.

mod dns;
mod egress;
mod refusals;
mod traffic;

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caged_domain::event::{NetworkAction, NetworkEvent};
use caged_domain::time::now_ms;
use caged_domain::{EventKind, NetworkMode, SandboxConfig, SandboxId, SandboxState};
use caged_network::firewall::{Firewall, LinkRule, Mode};
use caged_network::ranges::Net4;
use caged_network::{Allowlist, LinkSpec, Pool};
use caged_runtime::Runtime;
use caged_store::{Db, NewEvent, SandboxRecord};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use dns::Resolver;

/// Network settings of the server.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Sandbox links are numbered from this pool.
    pub pool: Pool,
    /// Resolvers the DNS stub and the egress proxy ask; `None`: the host's `/etc/resolv.conf`.
    pub upstream: Option<Vec<SocketAddr>>,
    /// Denied ranges a `full` sandbox may reach anyway (e.g. a company network).
    pub open_ranges: Vec<Net4>,
    /// Port of the egress proxy on each `allowlist` link's host address.
    pub proxy_port: u16,
    /// Port of the [`LinkService`] (the LLM gateway) on each link's host address.
    pub gateway_port: u16,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            pool: Pool::parse("10.213.0.0/16").expect("a valid default pool"),
            upstream: None,
            open_ranges: Vec::new(),
            proxy_port: 15001,
            gateway_port: 15002,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "all {capacity} sandbox links of the pool {pool} are in use; destroy a sandbox or give the server a larger --sandbox-network"
    )]
    PoolFull { capacity: u32, pool: Pool },
    #[error("cannot write the firewall: {0}")]
    Firewall(String),
    /// A link, its settings or a service on it could not be set up.
    #[error("{0}")]
    Link(String),
    #[error(transparent)]
    Store(#[from] caged_store::StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The server's own service on every link's host address, at [`NetworkConfig::gateway_port`]:
/// started with the link's other services, and again whenever they are.
pub trait LinkService: Send + Sync + 'static {
    /// What it is, for errors (`the LLM gateway`).
    fn name(&self) -> &'static str;
    /// Serves `sandbox`'s link on `listener` (bound to the link's host end) until aborted.
    fn serve(&self, sandbox: SandboxId, listener: tokio::net::TcpListener) -> AbortHandle;
}

/// Hears of every `network` event as it is written (the observer charges refusals to sessions).
pub trait Watcher: Send + Sync + 'static {
    /// `event` as stored (its sequence number is the evidence), `what` it says.
    fn network_event(&self, event: &caged_store::Event, what: &NetworkAction);
}

/// What a sandbox tried to reach, for `caged network learn`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LearnedHost {
    pub host: String,
    /// Whether it was let through at least once.
    pub allowed: bool,
    pub attempts: u64,
}

/// How often the firewall, links and services are checked and put back.
pub const HEAL_EVERY: Duration = Duration::from_secs(2);

/// The same refusal (or connection) is recorded at most once per this long per sandbox; the
/// event says how many were folded into it.
const EVENT_EVERY: Duration = Duration::from_secs(10);

/// All links of this server.
pub struct Network {
    pub config: NetworkConfig,
    firewall: Firewall,
    installation_id: String,
    db: Db,
    runtime: Arc<dyn Runtime>,
    gateway: Option<Arc<dyn LinkService>>,
    watcher: Option<Arc<dyn Watcher>>,
    links: Mutex<HashMap<SandboxId, Arc<Link>>>,
    resolver: Arc<Resolver>,
    /// The host's own networks, denied to every sandbox.
    host_nets: RwLock<Vec<Net4>>,
    /// What Caged last wrote, and the tables as the kernel listed them after.
    written: tokio::sync::Mutex<Option<Written>>,
    /// Cancelled once the server is stopping: from then on the firewall is left as it is (its
    /// tables keep enforcing until the server is back, and whoever stops it may be removing
    /// them).
    stopping: CancellationToken,
}

struct Written {
    script_hash: u64,
    /// `None` until the healer's first look after the write.
    listing: Option<String>,
}

/// One sandbox's link and the services on it.
struct Link {
    id: SandboxId,
    account_id: String,
    spec: LinkSpec,
    mode: Mode,
    allowlist: RwLock<Allowlist>,
    /// Addresses the stub handed out, with the name and until when: a connection that carries
    /// no name (not TLS, not HTTP) may go to one of these while it is fresh.
    handed_out: Mutex<HashMap<Ipv4Addr, (String, Instant)>>,
    /// Open egress connections, by number, with the host they were allowed for.
    connections: Mutex<HashMap<u64, (String, AbortHandle)>>,
    services: Mutex<Vec<AbortHandle>>,
    /// The host end's interface index the services are bound to (0: not bound).
    bound_ifindex: std::sync::atomic::AtomicU32,
    /// Ended connections since the last `traffic` events (`full` mode).
    traffic: Mutex<traffic::Totals>,
    /// Last time each event key was recorded, and how many were folded since.
    recorded: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in self.services.lock().drain(..) {
            task.abort();
        }
        for (_, (_, task)) in self.connections.lock().drain() {
            task.abort();
        }
    }
}

impl Network {
    /// `stopping` is the server's: once cancelled, the firewall is left as it is.
    pub fn new(
        config: NetworkConfig,
        installation_id: &str,
        db: Db,
        runtime: Arc<dyn Runtime>,
        gateway: Option<Arc<dyn LinkService>>,
        watcher: Option<Arc<dyn Watcher>>,
        stopping: CancellationToken,
    ) -> Network {
        let upstream = caged_network::dns::Upstream {
            servers: config.upstream.clone().unwrap_or_else(|| {
                caged_network::dns::Upstream::from_resolv_conf(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                )
                .servers
            }),
            timeout: Duration::from_secs(2),
        };
        Network {
            firewall: Firewall::new(
                installation_id,
                config.proxy_port,
                config.gateway_port,
                log_group(installation_id),
            ),
            config,
            installation_id: installation_id.to_string(),
            db,
            runtime,
            gateway,
            watcher,
            links: Mutex::new(HashMap::new()),
            resolver: Arc::new(Resolver::new(upstream)),
            host_nets: RwLock::new(Vec::new()),
            written: tokio::sync::Mutex::new(None),
            stopping,
        }
    }

    /// Waits for a firewall write in progress; once the server is stopping, none starts after.
    pub async fn quiesce(&self) {
        drop(self.written.lock().await);
    }

    fn link(&self, id: SandboxId) -> Option<Arc<Link>> {
        self.links.lock().get(&id).cloned()
    }

    fn links(&self) -> Vec<Arc<Link>> {
        self.links.lock().values().cloned().collect()
    }

    /// What a destination is denied as, for a sandbox (`None`: it may be reached).
    pub fn denied(&self, ip: std::net::IpAddr) -> Option<&'static str> {
        let host_nets = self.host_nets.read();
        caged_network::ranges::denied(ip, &self.config.open_ranges, &host_nets)
    }

    /// Writes the firewall table for the links known now, if it differs from what the kernel
    /// holds (or always, with `force`).
    async fn write_firewall(&self, force: bool) -> std::result::Result<(), String> {
        let mut written = self.written.lock().await;
        if self.stopping.is_cancelled() {
            return Err("the server is stopping".into());
        }
        let rules: Vec<LinkRule> = {
            let mut links = self.links();
            links.sort_by_key(|link| link.spec.host_ifname.clone());
            links
                .iter()
                .map(|link| LinkRule {
                    ifname: link.spec.host_ifname.clone(),
                    host_addr: link.spec.host_addr,
                    sandbox_addr: link.spec.sandbox_addr,
                    mode: link.mode,
                })
                .collect()
        };
        let denied = self.denied_ranges();
        let script = self.firewall.script(&rules, &denied);
        let script_hash = hash(&script);
        if !force
            && let Some(last) = written.as_mut()
            && last.script_hash == script_hash
        {
            let current = self.firewall.listing().await.map_err(|e| e.to_string())?;
            match (&last.listing, current) {
                // The first look after a write: this is what the kernel made of the script.
                (None, Some(current)) => {
                    last.listing = Some(current);
                    return Ok(());
                }
                (Some(expected), Some(current)) if *expected == current => return Ok(()),
                _ => tracing::warn!(
                    table = %self.firewall.table,
                    "the firewall was deleted or changed; writing it again"
                ),
            }
        }
        self.firewall
            .apply(&script)
            .await
            .map_err(|e| e.to_string())?;
        *written = Some(Written {
            script_hash,
            listing: None,
        });
        Ok(())
    }

    fn denied_ranges(&self) -> Vec<Net4> {
        let host_nets = self.host_nets.read().clone();
        let mut denied: Vec<Net4> = caged_network::ranges::DENIED
            .iter()
            .map(|(net, _)| *net)
            .filter(|net| {
                !self
                    .config
                    .open_ranges
                    .iter()
                    .any(|open| open.contains(net.addr) && open.prefix_len <= net.prefix_len)
            })
            .collect();
        denied.extend(host_nets);
        denied
    }

    /// Refuses a pool that overlaps an address some other interface of the host has (another
    /// installation's links, or a real network): two owners of one address would misroute.
    pub async fn check_pool(pool: &Pool, installation_id: &str) -> std::result::Result<(), String> {
        let prefix = caged_network::link_prefix(installation_id);
        let first = pool
            .addresses(0)
            .map_or(Ipv4Addr::UNSPECIFIED, |(host, _)| host);
        for (ifname, net) in host_addresses().await? {
            let overlaps = pool.contains(net.addr) || net.contains(first);
            if overlaps && !ifname.starts_with(&prefix) {
                return Err(format!(
                    "the sandbox network {pool} overlaps {net} on {ifname}; give this server another --sandbox-network"
                ));
            }
        }
        Ok(())
    }

    /// The link a sandbox has (`None` for `network_mode: none`), its slot reserved if it had
    /// none, and registered with the firewall before it exists: from the moment it comes up,
    /// what arrives on it is judged by its own rules. Fails (and the sandbox must not start)
    /// when the firewall cannot be written. A sandbox that has its link keeps it as it is.
    pub async fn prepare(
        &self,
        id: SandboxId,
        account_id: &str,
        config: &SandboxConfig,
    ) -> Result<Option<LinkSpec>> {
        let Some(spec) = self.spec_of(id, config.network_mode).await? else {
            return Ok(None);
        };
        if self.link(id).is_none() {
            self.register(id, account_id, config, &spec).await?;
        }
        Ok(Some(spec))
    }

    /// The link of a sandbox from its stored slot, reserving one if it had none.
    async fn spec_of(&self, id: SandboxId, mode: NetworkMode) -> Result<Option<LinkSpec>> {
        if mode == NetworkMode::None {
            return Ok(None);
        }
        let capacity = self.config.pool.capacity();
        let slot = self
            .db
            .run(move |store| store.allocate_link_slot(id, capacity))
            .await?
            .ok_or_else(|| Error::PoolFull {
                capacity,
                pool: self.config.pool,
            })?;
        Ok(self.spec_for_slot(id, mode, slot))
    }

    fn spec_for_slot(&self, id: SandboxId, mode: NetworkMode, slot: u32) -> Option<LinkSpec> {
        let (host_addr, sandbox_addr) = self.config.pool.addresses(slot)?;
        Some(LinkSpec {
            host_ifname: caged_network::host_ifname(&self.installation_id, id.as_str()),
            host_addr,
            sandbox_addr,
            prefix_len: caged_network::LINK_PREFIX_LEN,
            forwarding: mode == NetworkMode::Full,
        })
    }

    /// Puts a sandbox's link into the registry and the firewall.
    async fn register(
        &self,
        id: SandboxId,
        account_id: &str,
        config: &SandboxConfig,
        spec: &LinkSpec,
    ) -> Result<Arc<Link>> {
        let mode = match config.network_mode {
            NetworkMode::Allowlist => Mode::Allowlist,
            _ => Mode::Full,
        };
        let link = Arc::new(Link {
            id,
            account_id: account_id.to_string(),
            spec: spec.clone(),
            mode,
            allowlist: RwLock::new(Allowlist::new(&config.allowed_hosts)),
            handed_out: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            services: Mutex::new(Vec::new()),
            bound_ifindex: std::sync::atomic::AtomicU32::new(0),
            traffic: Mutex::new(HashMap::new()),
            recorded: Mutex::new(HashMap::new()),
        });
        let old = self.links.lock().insert(id, link.clone());
        drop(old);
        if let Err(err) = self.write_firewall(false).await {
            self.links.lock().remove(&id);
            return Err(Error::Firewall(err));
        }
        Ok(link)
    }

    /// The link an existing sandbox has (without reserving one), for `caged network show`.
    pub async fn link_of(&self, record: &SandboxRecord) -> Result<Option<LinkSpec>> {
        if record.config.network_mode == NetworkMode::None {
            return Ok(None);
        }
        let id = record.id;
        Ok(self
            .db
            .run(move |store| store.link_slot(id))
            .await?
            .and_then(|slot| self.spec_for_slot(id, record.config.network_mode, slot)))
    }

    /// Takes charge of a started sandbox's link: its place in the firewall and its services.
    /// The link itself is made by the runtime; if it is missing (the engine restarted the
    /// container), it is made again here.
    pub async fn started(self: &Arc<Self>, record: &SandboxRecord) -> Result<()> {
        if record.config.network_mode == NetworkMode::None {
            return Ok(());
        }
        let link = match self.link(record.id) {
            Some(link) => link,
            None => {
                let spec = self
                    .spec_of(record.id, record.config.network_mode)
                    .await?
                    .ok_or_else(|| {
                        Error::Link("the sandbox's link slot is outside the pool".into())
                    })?;
                self.register(record.id, &record.account_id, &record.config, &spec)
                    .await?
            }
        };
        self.ensure_link(record, &link).await
    }

    /// Gives a sandbox whose container started again (a new namespace) its link at once: the
    /// old link may still exist, in a namespace something still holds.
    pub async fn restarted(self: &Arc<Self>, record: &SandboxRecord) -> Result<()> {
        if record.config.network_mode == NetworkMode::None {
            return Ok(());
        }
        let Some(link) = self.link(record.id) else {
            return self.started(record).await;
        };
        let handle = record
            .container_id
            .as_deref()
            .ok_or_else(|| Error::Link("the sandbox has no container".into()))?;
        self.runtime
            .attach_link(handle, &link.spec)
            .await
            .map_err(|e| Error::Link(e.to_string()))?;
        self.ensure_link(record, &link).await
    }

    /// Makes sure the host end exists with its settings and the services listen on it (bound
    /// to the interface as it is now: a link made again is a new interface).
    async fn ensure_link(self: &Arc<Self>, record: &SandboxRecord, link: &Arc<Link>) -> Result<()> {
        use std::sync::atomic::Ordering;
        let failed = |e: &dyn std::fmt::Display| Error::Link(e.to_string());
        let ifname = &link.spec.host_ifname;
        let ifindex = match ifindex(ifname) {
            Some(index) => index,
            None => {
                let handle = record
                    .container_id
                    .as_deref()
                    .ok_or_else(|| Error::Link("the sandbox has no container".into()))?;
                tracing::warn!(sandbox = %link.id, link = %ifname, "the sandbox's link is missing; making it again");
                self.runtime
                    .attach_link(handle, &link.spec)
                    .await
                    .map_err(|e| failed(&e))?;
                ifindex(ifname).ok_or_else(|| Error::Link("the link vanished again".into()))?
            }
        };
        if !caged_network::link::host_sysctls_hold(&link.spec).map_err(|e| failed(&e))? {
            tracing::warn!(sandbox = %link.id, link = %ifname, "the link's settings were changed; putting them back");
            caged_network::link::set_host_sysctls(&link.spec).map_err(|e| failed(&e))?;
        }
        let services_up = {
            let services = link.services.lock();
            !services.is_empty() && services.iter().all(|task| !task.is_finished())
        };
        if !services_up || link.bound_ifindex.load(Ordering::Acquire) != ifindex {
            self.start_services(link).map_err(Error::Link)?;
            link.bound_ifindex.store(ifindex, Ordering::Release);
        }
        Ok(())
    }

    fn start_services(self: &Arc<Self>, link: &Arc<Link>) -> std::result::Result<(), String> {
        let mut services = link.services.lock();
        for task in services.drain(..) {
            task.abort();
        }
        let ifname = &link.spec.host_ifname;
        let dns_addr = SocketAddrV4::new(link.spec.host_addr, 53);
        let udp = caged_network::sockets::udp_on_link(ifname, dns_addr)
            .map_err(|err| format!("cannot serve DNS on {dns_addr} ({ifname}): {err}"))?;
        services.push(dns::serve(self.clone(), link.clone(), udp).abort_handle());
        if let Some(gateway) = &self.gateway {
            let addr = SocketAddrV4::new(link.spec.host_addr, self.config.gateway_port);
            let listener = caged_network::sockets::tcp_on_link(ifname, addr).map_err(|err| {
                format!(
                    "cannot serve {} on {addr} ({ifname}): {err}",
                    gateway.name()
                )
            })?;
            services.push(gateway.serve(link.id, listener));
        }
        if link.mode == Mode::Allowlist {
            let proxy_addr = SocketAddrV4::new(link.spec.host_addr, self.config.proxy_port);
            let listener =
                caged_network::sockets::tcp_on_link(ifname, proxy_addr).map_err(|err| {
                    format!("cannot serve the egress proxy on {proxy_addr} ({ifname}): {err}")
                })?;
            services.push(egress::serve(self.clone(), link.clone(), listener).abort_handle());
        }
        Ok(())
    }

    /// Keeps the registry in step with the lifecycle: a destroyed sandbox's link goes.
    pub fn transitioned(self: &Arc<Self>, id: SandboxId, to: SandboxState) {
        if to != SandboxState::Destroyed {
            return;
        }
        let removed = self.links.lock().remove(&id);
        if let Some(link) = removed {
            let network = self.clone();
            tokio::spawn(async move {
                let ifname = link.spec.host_ifname.clone();
                drop(link);
                let _ = caged_network::link::detach(&ifname).await;
                if network.stopping.is_cancelled() {
                    return;
                }
                if let Err(err) = network.write_firewall(false).await {
                    tracing::error!("could not update the firewall: {err}");
                }
            });
        }
    }

    /// Changes a live `allowlist` sandbox's allowlist: new connections follow at once; open
    /// connections to hosts no longer allowed are closed at once. The caller holds the
    /// sandbox's lock.
    pub async fn set_allowed_hosts(
        &self,
        sandbox: &SandboxRecord,
        hosts: Vec<String>,
    ) -> Result<()> {
        let (id, account) = (sandbox.id, sandbox.account_id.clone());
        let stored = hosts.clone();
        self.db
            .write(move |store| store.set_allowed_hosts(id, &account, &stored, now_ms()))
            .await?;
        if let Some(link) = self.link(sandbox.id) {
            let list = Allowlist::new(&hosts);
            let cut: Vec<(String, AbortHandle)> = {
                let mut connections = link.connections.lock();
                let gone: Vec<u64> = connections
                    .iter()
                    .filter(|(_, (host, _))| !host.is_empty() && !list.allows(host))
                    .map(|(number, _)| *number)
                    .collect();
                gone.iter()
                    .filter_map(|number| connections.remove(number))
                    .collect()
            };
            *link.allowlist.write() = list;
            link.handed_out
                .lock()
                .retain(|_, (name, _)| Allowlist::new(&hosts).allows(name));
            for (host, task) in cut {
                task.abort();
                self.record(
                    &link,
                    &format!("closed {host}"),
                    NetworkAction::Closed {
                        host: host.clone(),
                        reason: "no longer in allowed_hosts".into(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Hosts a sandbox tried to reach (allowed or not), for `caged network learn`.
    pub async fn learned_hosts(&self, id: SandboxId) -> Result<Vec<LearnedHost>> {
        let payloads = self
            .db
            .run(move |store| store.event_payloads(id, EventKind::Network, 100_000))
            .await?;
        let mut hosts: std::collections::BTreeMap<String, (bool, u64)> = Default::default();
        for payload in payloads {
            let Some(host) = payload["host"].as_str() else {
                continue;
            };
            if !caged_network::allow::is_host_name(host) {
                continue;
            }
            let allowed = payload["action"] == "connect" || payload["action"] == "traffic";
            let count = match payload["connections"].as_u64() {
                Some(connections) => connections,
                None => 1 + payload["repeats"].as_u64().unwrap_or(0),
            };
            let entry = hosts.entry(host.to_string()).or_default();
            entry.0 |= allowed;
            entry.1 += count;
        }
        Ok(hosts
            .into_iter()
            .map(|(host, (allowed, attempts))| LearnedHost {
                host,
                allowed,
                attempts,
            })
            .collect())
    }

    /// The healer: at once (taking charge of the links of sandboxes already running), then
    /// every [`HEAL_EVERY`], until `stop`.
    pub async fn heal(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.heal_once().await;
            tokio::select! {
                _ = tokio::time::sleep(HEAL_EVERY) => {}
                () = stop.cancelled() => break,
            }
        }
    }

    /// Reads the firewall's refusals from the kernel's log until `stop`.
    pub async fn refusals(self: Arc<Self>, stop: CancellationToken) {
        refusals::run(self, stop).await
    }

    /// Follows `full` sandboxes' connections in the kernel's connection tracking until `stop`.
    pub async fn traffic(self: Arc<Self>, stop: CancellationToken) {
        traffic::run(self, stop).await
    }

    async fn heal_once(self: &Arc<Self>) {
        if let Ok(nets) = host_networks(&self.config.pool).await {
            *self.host_nets.write() = nets;
        }
        let Ok(live) = self.db.run(|store| store.live_sandboxes()).await else {
            return;
        };
        // Sandboxes running (or paused) whose link this server does not hold yet: after a
        // restart. No sandbox lock is taken here (the reconciler and idle sleep skip a locked
        // sandbox, and must not be kept waiting); a sandbox destroyed meanwhile is dropped again
        // below.
        for record in &live {
            if record.state == SandboxState::Pending || record.container_id.is_none() {
                continue;
            }
            if record.config.network_mode != NetworkMode::None && self.link(record.id).is_none() {
                if let Err(err) = self.started(record).await {
                    tracing::warn!(sandbox = %record.id, "cannot take charge of its link: {err}");
                }
                let id = record.id;
                let now = self.db.run(move |store| store.sandbox_by_id(id)).await;
                if matches!(now, Ok(Some(ref r)) if r.state == SandboxState::Destroyed) {
                    self.transitioned(id, SandboxState::Destroyed);
                }
            }
        }
        if self.stopping.is_cancelled() {
            return;
        }
        if let Err(err) = self.write_firewall(false).await {
            tracing::error!("cannot write the firewall: {err}");
        }
        for record in live
            .iter()
            .filter(|record| record.state == SandboxState::Running)
        {
            let Some(link) = self.link(record.id) else {
                continue;
            };
            if let Err(err) = self.ensure_link(record, &link).await {
                tracing::warn!(sandbox = %record.id, "cannot restore its link: {err}");
            }
        }
    }

    /// Records a network event, at most once per [`EVENT_EVERY`] per `key`; a folded event carries
    /// how many it stands for (`repeats`).
    fn record(&self, link: &Link, key: &str, what: NetworkAction) {
        let now = Instant::now();
        let repeats = {
            let mut recorded = link.recorded.lock();
            if recorded.len() > 4096 {
                recorded.retain(|_, (at, _)| now.duration_since(*at) < EVENT_EVERY);
            }
            match recorded.get_mut(key) {
                Some((at, folded)) if now.duration_since(*at) < EVENT_EVERY => {
                    *folded += 1;
                    return;
                }
                Some((at, folded)) => {
                    *at = now;
                    std::mem::take(folded)
                }
                None => {
                    recorded.insert(key.to_string(), (now, 0));
                    0
                }
            }
        };
        let event = NetworkEvent {
            what,
            repeats: (repeats > 0).then_some(repeats),
        };
        self.write_event(link.id, link.account_id.clone(), event);
    }

    /// Writes a `network` event in the background and tells the watcher.
    fn write_event(&self, id: SandboxId, account: String, what: NetworkEvent) {
        let (db, watcher) = (self.db.clone(), self.watcher.clone());
        let payload = match serde_json::to_value(&what) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(sandbox = %id, "a network event could not be written down: {err}");
                return;
            }
        };
        tokio::spawn(async move {
            let written = db
                .run(move |store| {
                    let new = NewEvent::new(id, account, now_ms(), EventKind::Network, payload);
                    store.record_event(&new, false)
                })
                .await;
            match written {
                Ok(event) => {
                    if let Some(watcher) = &watcher {
                        watcher.network_event(&event, &what.what);
                    }
                    db.publish(event);
                }
                Err(err) => {
                    tracing::error!(sandbox = %id, "could not record a network event: {err}")
                }
            }
        });
    }
}

fn ifindex(ifname: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An NFLOG group of this installation's own (1..=65535, from its id).
fn log_group(installation_id: &str) -> u16 {
    (hash(installation_id) % 65_535) as u16 + 1
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The host's own IPv4 networks (not sandbox links), from its interface addresses.
/// The host's IPv4 addresses, with the interface each is on (`ip -4 -o addr show`).
async fn host_addresses() -> std::result::Result<Vec<(String, Net4)>, String> {
    let output = tokio::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .await
        .map_err(|err| format!("cannot run ip (install iproute2): {err}"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let ifname = words.nth(1)?.trim_end_matches(':').to_string();
            let cidr = words.skip_while(|word| *word != "inet").nth(1)?;
            Some((ifname, Net4::parse(cidr).ok()?))
        })
        .collect())
}

/// The host's own IPv4 networks (not sandbox links, not loopback).
async fn host_networks(pool: &Pool) -> std::result::Result<Vec<Net4>, String> {
    Ok(host_addresses()
        .await?
        .into_iter()
        .map(|(_, net)| net)
        .filter(|net| !pool.contains(net.addr) && net.prefix_len < 32 && !net.addr.is_loopback())
        .map(|net| net.network())
        .collect())
}

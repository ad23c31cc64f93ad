//! Preview URLs: `cage-<id>-<port>.<domain>` reaches whatever a sandbox serves on that port.
//!
//! Each live sandbox is a [`Cage`] here: its network namespace, held open from the moment it is
//! first seen running, through which the detector reads the sandbox's listening ports and the
//! proxy dials its loopback. Nothing is published on the host, so a preview works in every
//! network mode (`none` included) and reaches servers bound to 127.0.0.1 only.
//!
//! What it needs of the lifecycle (waking a sleeping sandbox for a request, whether one is
//! settled) it asks through [`Lifecycle`].

mod detect;
mod gate;
mod host;
mod proxy;
mod tls;

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use caged_activity::{Activity, Busy};
use caged_domain::{SandboxId, SandboxState};
use caged_runtime::{Runtime, RuntimeError};
use caged_store::{Db, PreviewPassword, SandboxHead, StoreError};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use tls::{PreviewTls, SELF_SIGNED_DIR, acceptor as tls_acceptor};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A password that cannot be used, and why.
    #[error("{0}")]
    BadPassword(String),
    #[error("{0}")]
    Internal(String),
    #[error("sandbox {0} has no container yet")]
    NotReady(SandboxId),
    #[error("{0}")]
    NetworkUnreachable(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What previews need of the lifecycle.
#[async_trait::async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    /// Makes the sandbox run (resuming it if it sleeps, as any work arriving for it does) and
    /// keeps idle sleep away from it while the guard lives; the error says why it cannot.
    async fn wake(
        &self,
        account_id: &str,
        id: SandboxId,
        why: &'static str,
    ) -> Result<Busy, String>;
    /// Whether nothing is changing the sandbox's state right now (its lock is free).
    fn settled(&self, id: SandboxId) -> bool;
    /// Whether the engine answers (the bookkeeping that opens namespaces needs it).
    fn engine_up(&self) -> bool;
}

/// A port of a sandbox as the API shows it: listening, protected, or both.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Preview {
    pub port: u16,
    pub url: String,
    pub listening: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    pub protected: bool,
}

/// Where previews are served and how.
#[derive(Clone, Debug)]
pub struct PreviewConfig {
    pub listen: SocketAddr,
    /// Previews are `cage-<id>-<port>.<domain>`.
    pub domain: String,
    pub tls: PreviewTls,
    /// Requests per minute per preview URL; 0 for no limit.
    pub rate_limit_per_minute: u32,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            domain: "preview.localhost".into(),
            tls: PreviewTls::Off,
            rate_limit_per_minute: 100,
        }
    }
}

/// Checks a preview domain and returns it normalized.
pub fn check_domain(domain: &str) -> Result<String, String> {
    host::check_domain(domain)
}

/// All previews of this server.
pub struct Previews {
    domain: String,
    db: Db,
    runtime: Arc<dyn Runtime>,
    activity: Arc<Activity>,
    scheme: &'static str,
    /// Shown in URLs unless it is the scheme's default.
    port: u16,
    cages: Mutex<HashMap<SandboxId, Arc<Cage>>>,
    /// Containers whose namespace could not be opened, and until when not to try again (an
    /// engine on another host has no namespace here; asking it every round would cost an
    /// inspect per sandbox every two seconds).
    unreachable: Mutex<HashMap<String, i64>>,
    limit: gate::RateLimit,
    cookie_key: gate::CookieKey,
    /// Basic-auth passwords already verified (hash of password → when the password was set),
    /// so scripts do not pay for a password hash on every request.
    verified: Mutex<HashMap<(host::Route, [u8; 32]), i64>>,
}

/// One live sandbox as the preview side knows it.
pub struct Cage {
    pub id: SandboxId,
    pub account_id: String,
    pub timeout: u64,
    pub container_id: String,
    ns: caged_netns::NetNs,
    tables: Mutex<Option<caged_netns::proc_net::TcpTables>>,
    /// Listening ports as last detected, with the address to dial.
    ports: Mutex<BTreeMap<u16, IpAddr>>,
    passwords: Mutex<HashMap<u16, PreviewPassword>>,
    running: AtomicBool,
    /// When traffic last reached the database's activity clock.
    last_marked_ms: AtomicI64,
    /// When traffic on an open connection last asked to wake the sandbox.
    last_wake_ms: AtomicI64,
}

impl Previews {
    /// `port` is where the proxy listens (shown in URLs), `tls` whether it speaks HTTPS.
    pub fn new(
        config: &PreviewConfig,
        port: u16,
        tls: bool,
        cookie_key_hex: &str,
        db: Db,
        runtime: Arc<dyn Runtime>,
        activity: Arc<Activity>,
    ) -> Previews {
        Previews {
            db,
            runtime,
            activity,
            domain: config.domain.clone(),
            scheme: if tls { "https" } else { "http" },
            port,
            cages: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            limit: gate::RateLimit::new(config.rate_limit_per_minute),
            cookie_key: gate::CookieKey::from_hex(cookie_key_hex)
                .expect("the cookie key is 32 random bytes in hex"),
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn url(&self, id: SandboxId, port: u16) -> String {
        let default = matches!((self.scheme, self.port), ("http", 80) | ("https", 443));
        let suffix = if default {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!("{}://cage-{id}-{port}.{}{suffix}", self.scheme, self.domain)
    }

    fn cage(&self, id: SandboxId) -> Option<Arc<Cage>> {
        self.cages.lock().get(&id).cloned()
    }

    /// Drops what is held of a sandbox whose container or namespace changed (restored,
    /// restarted); the next request or bookkeeping round opens the new one.
    pub fn forget(&self, id: SandboxId) {
        self.cages.lock().remove(&id);
    }

    fn cages(&self) -> Vec<Arc<Cage>> {
        self.cages.lock().values().cloned().collect()
    }

    /// Keeps the flag the proxy's fast path reads in step with the lifecycle; a destroyed
    /// sandbox's ports are forgotten.
    pub fn transitioned(&self, id: SandboxId, to: SandboxState) {
        match to {
            SandboxState::Destroyed => {
                self.cages.lock().remove(&id);
                let db = self.db.clone();
                tokio::spawn(async move {
                    if let Err(err) = db.run(move |store| store.clear_preview_ports(id)).await {
                        tracing::warn!(sandbox = %id, "could not forget its preview ports: {err}");
                    }
                });
            }
            // A sandbox not watched yet is picked up by whoever started it, or the detector's
            // next bookkeeping round.
            _ => {
                if let Some(cage) = self.cage(id) {
                    cage.running
                        .store(to == SandboxState::Running, Ordering::Release);
                }
            }
        }
    }

    /// (Re-)opens a sandbox's namespace in the background: after it started, restarted or was
    /// restored into a new container.
    pub fn refresh(self: &Arc<Self>, id: SandboxId) {
        let previews = self.clone();
        tokio::spawn(async move {
            let head = previews
                .db
                .run(move |store| store.live_heads())
                .await
                .ok()
                .and_then(|heads| heads.into_iter().find(|head| head.id == id));
            if let Some(head) = head {
                let _ = previews.attach(&head).await;
            }
        });
    }

    /// Accepts preview connections until `stop`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        lifecycle: Arc<dyn Lifecycle>,
        stop: CancellationToken,
    ) {
        proxy::serve(self, listener, tls, lifecycle, stop).await
    }

    /// Detects the ports of running sandboxes until `stop`.
    pub async fn detect(self: Arc<Self>, lifecycle: Arc<dyn Lifecycle>, stop: CancellationToken) {
        detect::run(self, lifecycle, stop).await
    }

    /// Opens the namespace of a running sandbox and starts watching it.
    async fn attach(&self, head: &SandboxHead) -> Result<Arc<Cage>> {
        let Some(container_id) = head.container_id.clone() else {
            return Err(Error::NotReady(head.id));
        };
        let now = caged_domain::time::now_ms();
        if self
            .unreachable
            .lock()
            .get(&container_id)
            .is_some_and(|until| *until > now)
        {
            return Err(Error::NetworkUnreachable(format!(
                "sandbox {}'s network could not be opened recently",
                head.id
            )));
        }
        let ns = match self.runtime.network_namespace(&container_id).await {
            Ok(ns) => ns,
            Err(err) => {
                let mut unreachable = self.unreachable.lock();
                unreachable.retain(|_, until| *until > now);
                unreachable.insert(container_id, now + UNREACHABLE_RETRY_MS);
                return Err(err.into());
            }
        };
        let tables = match caged_netns::proc_net::TcpTables::open(&ns) {
            Ok(tables) => Some(tables),
            Err(err) => {
                tracing::warn!(sandbox = %head.id, "cannot read its listening ports: {err}");
                None
            }
        };
        let id = head.id;
        let (ports, passwords) = self.stored(id).await?;
        let cage = Arc::new(Cage {
            id,
            account_id: head.account_id.clone(),
            timeout: head.timeout,
            container_id,
            ns,
            tables: Mutex::new(tables),
            ports: Mutex::new(
                ports
                    .into_iter()
                    .filter_map(|port| Some((port.port, port.address.parse().ok()?)))
                    .collect(),
            ),
            passwords: Mutex::new(
                passwords
                    .into_iter()
                    .map(|password| (password.port, password))
                    .collect(),
            ),
            running: AtomicBool::new(head.state == SandboxState::Running),
            last_marked_ms: AtomicI64::new(0),
            last_wake_ms: AtomicI64::new(0),
        });
        self.cages.lock().insert(id, cage.clone());
        Ok(cage)
    }

    /// A port's password changed.
    /// The ports seen listening and the passwords set, as stored.
    async fn stored(
        &self,
        id: SandboxId,
    ) -> Result<(
        Vec<caged_store::PreviewPort>,
        Vec<caged_store::PreviewPassword>,
    )> {
        let stored = self
            .db
            .run(move |store| {
                Ok::<_, caged_store::StoreError>((
                    store.preview_ports(id)?,
                    store.preview_passwords(id)?,
                ))
            })
            .await?;
        Ok(stored)
    }

    fn password_changed(&self, id: SandboxId, port: u16, password: Option<PreviewPassword>) {
        if let Some(cage) = self.cage(id) {
            let mut passwords = cage.passwords.lock();
            match password {
                Some(password) => passwords.insert(port, password),
                None => passwords.remove(&port),
            };
        }
        self.verified
            .lock()
            .retain(|(route, _), _| route.id != id || route.port != port);
    }

    /// Protects a sandbox's port with a password (`None` opens it again); requests follow at
    /// once. The port need not be listening yet.
    pub async fn protect(
        &self,
        record: &caged_store::SandboxRecord,
        port: u16,
        password: Option<String>,
    ) -> Result<Preview> {
        let hash = match password {
            Some(password) => {
                gate::check_password(&password).map_err(Error::BadPassword)?;
                let hashed = tokio::task::spawn_blocking(move || gate::hash_password(&password))
                    .await
                    .map_err(|err| Error::Internal(err.to_string()))?;
                Some(hashed.map_err(Error::Internal)?)
            }
            None => None,
        };
        let (id, account_id) = (record.id, record.account_id.clone());
        let at = caged_domain::time::now_ms();
        let stored = hash.clone();
        self.db
            .write(move |store| {
                store.set_preview_password(id, &account_id, port, stored.as_deref(), at)
            })
            .await?;
        self.password_changed(
            id,
            port,
            hash.map(|hash| PreviewPassword {
                port,
                hash,
                set_at_ms: at,
            }),
        );
        let previews = self.list(record).await?;
        Ok(previews
            .into_iter()
            .find(|preview| preview.port == port)
            .unwrap_or_else(|| Preview {
                port,
                url: self.url(id, port),
                listening: false,
                address: None,
                opened_at: None,
                protected: false,
            }))
    }

    /// The previews of one sandbox for the API: listening ports and protected ones.
    pub async fn list(&self, record: &caged_store::SandboxRecord) -> Result<Vec<Preview>> {
        if record.state == SandboxState::Destroyed {
            // Its ports are forgotten as it goes; a crash in between must not bring them back.
            return Ok(Vec::new());
        }
        let id = record.id;
        let (ports, passwords) = self.stored(id).await?;
        let mut previews: BTreeMap<u16, Preview> = BTreeMap::new();
        for port in ports {
            previews.insert(
                port.port,
                Preview {
                    port: port.port,
                    url: self.url(id, port.port),
                    listening: true,
                    address: Some(port.address),
                    opened_at: Some(caged_domain::time::rfc3339_from_ms(port.opened_at_ms)),
                    protected: false,
                },
            );
        }
        for password in passwords {
            previews
                .entry(password.port)
                .or_insert_with(|| Preview {
                    port: password.port,
                    url: self.url(id, password.port),
                    listening: false,
                    address: None,
                    opened_at: None,
                    protected: false,
                })
                .protected = true;
        }
        Ok(previews.into_values().collect())
    }
}

/// How long a sandbox whose namespace could not be opened is left alone.
const UNREACHABLE_RETRY_MS: i64 = 5_000;

/// Where the kernel's per-namespace TCP hash size is set; see [`warn_if_detection_is_costly`].
const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";

/// Reading a namespace's `/proc/net/tcp` walks its whole TCP hash table. Namespaces share the
/// host's (hundreds of thousands of buckets, about a millisecond a read) unless the host gives
/// new namespaces their own with `net.ipv4.tcp_child_ehash_entries` (scripts/engine-up does).
pub fn warn_if_detection_is_costly() {
    match std::fs::read_to_string(CHILD_EHASH) {
        Ok(value) if value.trim() == "0" => tracing::warn!(
            "net.ipv4.tcp_child_ehash_entries is 0: sandboxes share the host's TCP hash table and \
             port detection costs ~1 ms per sandbox per scan; set it (e.g. 1024) before the engine \
             creates sandboxes, as scripts/engine-up does"
        ),
        _ => {}
    }
}

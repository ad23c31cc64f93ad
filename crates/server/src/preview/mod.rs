//! Preview URLs: `cage-<id>-<port>.<domain>` reaches whatever a sandbox serves on that port.
//!
//! Each live sandbox is a [`Cage`] here: its network namespace, held open from the moment it is
//! first seen running, through which the detector reads the sandbox's listening ports and the
//! proxy dials its loopback. Nothing is published on the host, so a preview works in every
//! network mode (`none` included) and reaches servers bound to 127.0.0.1 only.

pub(crate) mod detect;
mod gate;
mod host;
mod proxy;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use caged_domain::{SandboxId, SandboxState};
use caged_store::{PreviewPassword, SandboxHead};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{Error, Result};

pub use tls::{PreviewTls, SELF_SIGNED_DIR};

pub(crate) use gate::{check_password, hash_password};
pub(crate) use proxy::serve;

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
pub(crate) struct Previews {
    domain: String,
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
pub(crate) struct Cage {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Previews {
    pub(crate) fn new(
        config: &PreviewConfig,
        port: u16,
        tls: bool,
        cookie_key_hex: &str,
    ) -> Previews {
        Previews {
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

    pub(crate) fn url(&self, id: SandboxId, port: u16) -> String {
        let default = matches!((self.scheme, self.port), ("http", 80) | ("https", 443));
        let suffix = if default {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!("{}://cage-{id}-{port}.{}{suffix}", self.scheme, self.domain)
    }

    pub(crate) fn cage(&self, id: SandboxId) -> Option<Arc<Cage>> {
        lock(&self.cages).get(&id).cloned()
    }

    /// Drops what is held of a sandbox whose container or namespace changed (restored,
    /// restarted); the next request or bookkeeping round opens the new one.
    pub(crate) fn forget(&self, id: SandboxId) {
        lock(&self.cages).remove(&id);
    }

    fn cages(&self) -> Vec<Arc<Cage>> {
        lock(&self.cages).values().cloned().collect()
    }

    /// Keeps the flag the proxy's fast path reads in step with the lifecycle.
    pub(crate) fn on_transition(state: &AppState, id: SandboxId, to: SandboxState) {
        let previews = &state.previews;
        match to {
            SandboxState::Destroyed => {
                lock(&previews.cages).remove(&id);
                let db = state.db.clone();
                tokio::spawn(async move {
                    if let Err(err) = db.run(move |store| store.clear_preview_ports(id)).await {
                        tracing::warn!(sandbox = %id, "could not forget its preview ports: {err}");
                    }
                });
            }
            // A sandbox not watched yet is picked up by whoever started it, or the detector's
            // next bookkeeping round.
            _ => {
                if let Some(cage) = previews.cage(id) {
                    cage.running
                        .store(to == SandboxState::Running, Ordering::Release);
                }
            }
        }
    }
}

/// How long a sandbox whose namespace could not be opened is left alone.
const UNREACHABLE_RETRY_MS: i64 = 5_000;

/// (Re-)opens a sandbox's namespace in the background: after it started, restarted or was
/// restored into a new container.
pub(crate) fn refresh(state: Arc<AppState>, id: SandboxId) {
    tokio::spawn(async move {
        let head = state
            .db
            .run(move |store| store.live_heads())
            .await
            .ok()
            .and_then(|heads| heads.into_iter().find(|head| head.id == id));
        if let Some(head) = head {
            let _ = attach(&state, &head).await;
        }
    });
}

/// Opens the namespace of a running sandbox and starts watching it.
pub(crate) async fn attach(state: &AppState, head: &SandboxHead) -> Result<Arc<Cage>> {
    let Some(container_id) = head.container_id.clone() else {
        return Err(Error::NotReady(head.id));
    };
    let now = caged_domain::time::now_ms();
    if lock(&state.previews.unreachable)
        .get(&container_id)
        .is_some_and(|until| *until > now)
    {
        return Err(Error::NetworkUnreachable(format!(
            "sandbox {}'s network could not be opened recently",
            head.id
        )));
    }
    let ns = match state.runtime.network_namespace(&container_id).await {
        Ok(ns) => ns,
        Err(err) => {
            let mut unreachable = lock(&state.previews.unreachable);
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
    let (ports, passwords) = state
        .db
        .run(move |store| {
            Ok::<_, caged_store::StoreError>((
                store.preview_ports(id)?,
                store.preview_passwords(id)?,
            ))
        })
        .await?;
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
    lock(&state.previews.cages).insert(id, cage.clone());
    Ok(cage)
}

/// A port's password changed (through the API).
pub(crate) fn password_changed(
    state: &AppState,
    id: SandboxId,
    port: u16,
    password: Option<PreviewPassword>,
) {
    if let Some(cage) = state.previews.cage(id) {
        let mut passwords = lock(&cage.passwords);
        match password {
            Some(password) => passwords.insert(port, password),
            None => passwords.remove(&port),
        };
    }
    lock(&state.previews.verified).retain(|(route, _), _| route.id != id || route.port != port);
}

/// The previews of one sandbox for the API: listening ports and protected ones.
pub(crate) async fn list(state: &AppState, record: &caged_store::SandboxRecord) -> Result<Value> {
    if record.state == SandboxState::Destroyed {
        // Its ports are forgotten as it goes; a crash in between must not bring them back.
        return Ok(Value::Array(Vec::new()));
    }
    let id = record.id;
    let (ports, passwords) = state
        .db
        .run(move |store| {
            Ok::<_, caged_store::StoreError>((
                store.preview_ports(id)?,
                store.preview_passwords(id)?,
            ))
        })
        .await?;
    let mut previews: BTreeMap<u16, Value> = BTreeMap::new();
    for port in ports {
        previews.insert(
            port.port,
            json!({
                "port": port.port,
                "url": state.previews.url(id, port.port),
                "listening": true,
                "address": port.address,
                "opened_at": caged_domain::time::rfc3339_from_ms(port.opened_at_ms),
                "protected": false,
            }),
        );
    }
    for password in passwords {
        let entry = previews.entry(password.port).or_insert_with(|| {
            json!({
                "port": password.port,
                "url": state.previews.url(id, password.port),
                "listening": false,
            })
        });
        entry["protected"] = json!(true);
    }
    Ok(Value::Array(previews.into_values().collect()))
}

pub(crate) use tls::acceptor as tls_acceptor;

/// Where the kernel's per-namespace TCP hash size is set; see [`warn_if_detection_is_costly`].
const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";

/// Reading a namespace's `/proc/net/tcp` walks its whole TCP hash table. Namespaces share the
/// host's (hundreds of thousands of buckets, about a millisecond a read) unless the host gives
/// new namespaces their own with `net.ipv4.tcp_child_ehash_entries` (scripts/engine-up does).
pub(crate) fn warn_if_detection_is_costly() {
    match std::fs::read_to_string(CHILD_EHASH) {
        Ok(value) if value.trim() == "0" => tracing::warn!(
            "net.ipv4.tcp_child_ehash_entries is 0: sandboxes share the host's TCP hash table and \
             port detection costs ~1 ms per sandbox per scan; set it (e.g. 1024) before the engine \
             creates sandboxes, as scripts/engine-up does"
        ),
        _ => {}
    }
}

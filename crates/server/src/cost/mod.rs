//! Cost: what sandboxes spend and the guards on it.
//!
//! - Compute is billed from the lifecycle: the exact milliseconds a sandbox spent `running`,
//!   times its vCPUs and memory at the price table's rates (pending, paused, destroyed: free).
//! - LLM calls go through the [`gateway`] on each sandbox's link, which forwards them to the
//!   real provider with the operator's key and meters the tokens the provider reports.
//! - The [`guard`] watches spend against budgets: 80% and 95% alert once each, 100% takes a
//!   final snapshot and destroys the sandbox. Alerts also go out as signed [`webhooks`].
//!
//! Money is integer micro-dollars ([`caged_cost::Micros`]) from end to end.

pub(crate) mod gateway;
pub(crate) mod guard;
pub(crate) mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use caged_cost::{Micros, Prices};
use caged_domain::time::now_ms;
use caged_domain::{SandboxId, SandboxState, running_millis, running_millis_between};
use caged_store::{SandboxRecord, SessionRecord};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One LLM provider the gateway forwards to.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    /// `https://api.openai.com`; a path is kept (`https://host/prefix`).
    pub base_url: String,
    /// The operator's key, added to every forwarded call; `None` forwards without one (a
    /// local model server).
    pub api_key: Option<String>,
}

/// Cost settings of the server.
#[derive(Clone, Debug)]
pub struct CostConfig {
    pub prices: Prices,
    pub openai: Upstream,
    pub anthropic: Upstream,
    /// Let webhooks go to loopback and private addresses (a receiver on this host or network).
    pub webhooks_to_private: bool,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            prices: Prices::default(),
            openai: Upstream {
                base_url: "https://api.openai.com".into(),
                api_key: None,
            },
            anthropic: Upstream {
                base_url: "https://api.anthropic.com".into(),
                api_key: None,
            },
            webhooks_to_private: false,
        }
    }
}

/// What the cost services share.
pub(crate) struct Costs {
    pub config: CostConfig,
    /// Where the gateway listens on each link.
    gateway_port: u16,
    /// Derives the gateway credentials (kept in the database, never in a sandbox).
    credential_key: Vec<u8>,
    pub client: gateway::UpstreamClient,
    /// Wakes the guard (an LLM call was charged, a budget changed).
    pub guard_wake: tokio::sync::Notify,
    /// Wakes the webhook sender (a delivery was queued).
    pub webhook_wake: tokio::sync::Notify,
    /// LLM charges of calls that ended but are not in the database yet: the gateway counts
    /// them, so a call that starts the instant the one before it ended sees its cost.
    pending: std::sync::Mutex<std::collections::HashMap<SandboxId, Arc<std::sync::Mutex<i64>>>>,
}

impl Costs {
    pub(crate) fn new(
        config: CostConfig,
        gateway_port: u16,
        credential_key: &str,
    ) -> Result<Costs, String> {
        Ok(Costs {
            client: gateway::upstream_client()?,
            config,
            gateway_port,
            credential_key: credential_key.as_bytes().to_vec(),
            guard_wake: tokio::sync::Notify::new(),
            webhook_wake: tokio::sync::Notify::new(),
            pending: Default::default(),
        })
    }

    /// The sandbox's pending charges, behind a lock of its own.
    fn slot(&self, sandbox: SandboxId) -> Arc<std::sync::Mutex<i64>> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sandbox)
            .or_default()
            .clone()
    }

    /// A call's charge, known before it is stored.
    pub(crate) fn charge_pending(&self, sandbox: SandboxId, micros: i64) {
        *self.slot(sandbox).lock().unwrap_or_else(|p| p.into_inner()) += micros;
    }

    /// Stores a pending charge with `store` (a blocking database write): the stored totals
    /// and the pending amount change together, as [`Costs::spent_with`] sees them.
    pub(crate) fn store_charge<T>(
        &self,
        sandbox: SandboxId,
        micros: i64,
        store: impl FnOnce() -> T,
    ) -> T {
        let slot = self.slot(sandbox);
        let mut pending = slot.lock().unwrap_or_else(|p| p.into_inner());
        let stored = store();
        *pending -= micros;
        stored
    }

    /// Reads the stored totals with `read` (a blocking database read) and the charges not
    /// stored yet, consistently: each charge is counted exactly once.
    pub(crate) fn spent_with<T>(&self, sandbox: SandboxId, read: impl FnOnce() -> T) -> (i64, T) {
        let slot = self.slot(sandbox);
        let pending = slot.lock().unwrap_or_else(|p| p.into_inner());
        let read = read();
        (*pending, read)
    }

    /// Forgets the slots nobody is using that hold nothing.
    pub(crate) fn prune_pending(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, slot| {
                Arc::strong_count(slot) > 1 || *slot.lock().unwrap_or_else(|p| p.into_inner()) != 0
            });
    }

    /// The gateway credential of a sandbox (`session: None`) or of one of its sessions:
    /// `cgk-<sandbox>-<scope>-<mac>`. Derived, not stored, so a sandbox made again from its
    /// record (a restore) gets the same one back.
    pub(crate) fn credential(&self, sandbox: SandboxId, session: Option<&str>) -> String {
        let scope = session.unwrap_or("sandbox");
        format!("cgk-{sandbox}-{scope}-{}", self.mac(sandbox, scope))
    }

    fn mac(&self, sandbox: SandboxId, scope: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.credential_key)
            .expect("HMAC takes a key of any length");
        mac.update(b"caged-llm-gateway\0");
        mac.update(sandbox.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(scope.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..20])
    }

    /// Whose a credential is: `(sandbox, session)`, if it is one this server made.
    pub(crate) fn check_credential(&self, credential: &str) -> Option<(SandboxId, Option<String>)> {
        let rest = credential.strip_prefix("cgk-")?;
        let (sandbox, rest) = rest.split_once('-')?;
        let (scope, mac) = rest.rsplit_once('-')?;
        let sandbox: SandboxId = sandbox.parse().ok()?;
        let ok: bool =
            subtle::ConstantTimeEq::ct_eq(self.mac(sandbox, scope).as_bytes(), mac.as_bytes())
                .into();
        if !ok {
            return None;
        }
        Some((sandbox, (scope != "sandbox").then(|| scope.to_string())))
    }

    /// The environment a sandbox with a link gets: the gateway's base URLs and the sandbox's
    /// credential under the names the SDKs and agents read.
    pub(crate) fn sandbox_env(
        &self,
        sandbox: SandboxId,
        link: &caged_network::LinkSpec,
    ) -> BTreeMap<String, String> {
        let base = format!("http://{}:{}", link.host_addr, self.gateway_port);
        let credential = self.credential(sandbox, None);
        let mut env = BTreeMap::new();
        env.insert("OPENAI_BASE_URL".into(), format!("{base}/openai/v1"));
        env.insert("ANTHROPIC_BASE_URL".into(), format!("{base}/anthropic"));
        env.insert("CAGED_LLM_GATEWAY".into(), base);
        for (name, value) in key_env(&credential) {
            env.insert(name.into(), value);
        }
        env
    }
}

/// The key variables, all holding `credential`.
pub(crate) fn key_env(credential: &str) -> [(&'static str, String); 2] {
    [
        ("OPENAI_API_KEY", credential.to_string()),
        ("ANTHROPIC_API_KEY", credential.to_string()),
    ]
}

/// A sandbox's environment: the gateway's variables under the user's own `env` (what the user
/// set explicitly wins).
pub(crate) fn environment(
    state: &crate::AppState,
    sandbox: SandboxId,
    config: &caged_domain::SandboxConfig,
    link: Option<&caged_network::LinkSpec>,
) -> BTreeMap<String, String> {
    let mut env = link
        .map(|link| state.costs.sandbox_env(sandbox, link))
        .unwrap_or_default();
    env.extend(config.env.clone());
    env
}

/// Where a sandbox's clock stands: now, or (destroyed) its last transition.
pub(crate) fn clock_ms(record: &SandboxRecord) -> i64 {
    if record.state == SandboxState::Destroyed {
        record
            .transitions
            .last()
            .map_or(record.created_at_ms, |last| last.at_ms)
    } else {
        now_ms()
    }
}

/// What a sandbox has spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spend {
    pub running_ms: i64,
    pub compute: Micros,
    pub llm: Micros,
}

impl Spend {
    pub fn total(&self) -> Micros {
        self.compute + self.llm
    }
}

pub(crate) fn compute_cost(prices: &Prices, record: &SandboxRecord, running_ms: i64) -> Micros {
    let resources = &record.config.resources;
    prices.compute_cost(
        running_ms,
        caged_cost::prices::milli_cpus(resources.cpu),
        resources.memory as i64,
    )
}

pub(crate) fn spend(prices: &Prices, record: &SandboxRecord) -> Spend {
    let running_ms = running_millis(&record.transitions, clock_ms(record));
    Spend {
        running_ms,
        compute: compute_cost(prices, record, running_ms),
        llm: Micros(record.llm.cost_micros),
    }
}

/// A session's share: the sandbox's running time while the session was open.
pub(crate) fn session_running_ms(record: &SandboxRecord, session: &SessionRecord) -> i64 {
    let end = session
        .ended_at_ms
        .unwrap_or_else(|| clock_ms(record))
        .min(clock_ms(record));
    running_millis_between(&record.transitions, session.started_at_ms, end)
}

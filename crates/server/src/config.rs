//! What `caged server` is told: where it keeps its data and listens, and the settings of each
//! part (previews, network, observation, cost).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use caged_cost::Prices;
use caged_gateway::Upstream;
use caged_netpolicy::NetworkConfig;

use caged_preview::PreviewConfig;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `DOCKER_HOST`-style engine address; `None` for the local socket.
    pub docker_host: Option<String>,
    /// Largest request body accepted for file uploads and template imports.
    pub max_upload_bytes: usize,
    pub pids_limit: i64,
    /// Snapshots one sandbox may keep.
    pub max_snapshots_per_sandbox: usize,
    /// Compressed snapshot bytes one account may keep.
    pub snapshot_quota_bytes: u64,
    /// Check at start-up (with a test sandbox) whether gVisor works, rather than on first use.
    pub probe_gvisor_at_start: bool,
    pub preview: PreviewConfig,
    pub network: NetworkConfig,
    /// Watch sandboxes from the host (process events, file changes) and score sessions.
    pub observe: bool,
    /// What risky behaviour costs; the product's rules by default.
    pub trust_policy: caged_trust::Policy,
    /// Prices, the LLM gateway's providers, webhooks.
    pub cost: CostConfig,
    /// How long a client has to send a request's headers before its connection is closed.
    pub header_timeout: Duration,
    /// Wrong API keys or session cookies one address may present a minute (all at once, if it
    /// likes); past that, every credential from it is refused with 429 until the bucket refills.
    pub auth_failures_per_minute: u32,
    /// Sandboxes (not yet destroyed) one account may have; 0 for no limit.
    pub max_sandboxes_per_account: usize,
    /// A PEM file of CA certificates every sandbox trusts (networks that inspect TLS).
    pub sandbox_ca: Option<PathBuf>,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ServerConfig {
            data_dir,
            listen,
            docker_host: None,
            max_upload_bytes: 1 << 30,
            pids_limit: caged_runtime::DEFAULT_PIDS_LIMIT,
            max_snapshots_per_sandbox: 20,
            snapshot_quota_bytes: 10_000_000_000,
            probe_gvisor_at_start: true,
            preview: PreviewConfig::default(),
            network: NetworkConfig::default(),
            observe: true,
            trust_policy: caged_trust::Policy::default(),
            cost: CostConfig::default(),
            header_timeout: Duration::from_secs(30),
            auth_failures_per_minute: 30,
            max_sandboxes_per_account: 100,
            sandbox_ca: None,
        }
    }
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

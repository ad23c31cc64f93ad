//! What `caged server` is told: where it keeps its data and listens, and the settings of each
//! part (previews, network, observation, cost).

use std::net::SocketAddr;
use std::path::PathBuf;

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

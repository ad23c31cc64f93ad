//! `caged server`: runs the control plane until SIGINT or SIGTERM, then shuts down gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use std::path::PathBuf;

use caged_server::{PreviewConfig, PreviewTls, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::Cli;

/// How long in-flight requests get to finish on SIGTERM.
const GRACE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// API listen address.
    #[arg(long, env = "CAGED_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Docker engine address (default: the local socket).
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// Largest upload (file write or template import) in MiB.
    #[arg(long, default_value_t = 1024)]
    max_upload_mb: usize,
    /// Check gVisor on its first use instead of with a test sandbox at start-up.
    #[arg(long)]
    no_gvisor_probe: bool,
    /// Most processes (and threads) one sandbox may have.
    #[arg(long, default_value_t = caged_server::DEFAULT_PIDS_LIMIT)]
    pids_limit: i64,
    /// Most sandboxes (not yet destroyed) one account may have; 0 for no limit.
    #[arg(long, default_value_t = 100)]
    max_sandboxes_per_account: usize,
    /// Wrong API keys or session cookies one client address may present a minute before it is
    /// refused with 429.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    auth_failures_per_minute: u32,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_secs: u64,
    /// CA certificates (a PEM file) every sandbox trusts, for networks that put a
    /// TLS-inspecting proxy in front of the internet; added to each sandbox's trust store when it
    /// is created, with SSL_CERT_FILE, NODE_EXTRA_CA_CERTS and the like pointing at them.
    #[arg(long, env = "CAGED_SANDBOX_CA")]
    sandbox_ca: Option<PathBuf>,
    /// Preview proxy listen address.
    #[arg(long, env = "CAGED_PREVIEW_LISTEN", default_value = "127.0.0.1:7701")]
    preview_listen: SocketAddr,
    /// Previews are served at cage-<id>-<port>.<this domain>.
    #[arg(
        long,
        env = "CAGED_PREVIEW_DOMAIN",
        default_value = "preview.localhost"
    )]
    preview_domain: String,
    /// Serve previews over HTTPS with this certificate chain (PEM, for *.<preview domain>).
    #[arg(
        long,
        requires = "preview_tls_key",
        conflicts_with = "preview_tls_self_signed"
    )]
    preview_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --preview-tls-cert.
    #[arg(long, requires = "preview_tls_cert")]
    preview_tls_key: Option<PathBuf>,
    /// Serve previews over HTTPS with a self-signed wildcard certificate, generated once into
    /// <data-dir>/preview-tls/ (for local use: trust cert.pem there).
    #[arg(long)]
    preview_tls_self_signed: bool,
    /// Requests a minute per preview URL before 429 (0: no limit).
    #[arg(long, default_value_t = 100)]
    preview_rate_limit: u32,
    /// Sandbox links are numbered from this IPv4 network (a /30 each); it must not overlap any
    /// network of the host.
    #[arg(long, env = "CAGED_SANDBOX_NETWORK", default_value = "10.213.0.0/16", value_parser = parse_pool)]
    sandbox_network: caged_network::Pool,
    /// Resolver the sandboxes' DNS stub and the egress proxy ask (IP or IP:PORT; repeat for
    /// more). Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream", value_parser = parse_resolver)]
    dns_upstream: Vec<SocketAddr>,
    /// A range denied by default (private, CGNAT, link-local, ...) that `full` sandboxes may
    /// reach anyway, e.g. 10.20.0.0/16 for a company network. Repeat for more.
    #[arg(long = "network-open", value_parser = parse_net)]
    network_open: Vec<caged_network::ranges::Net4>,
    /// Trust policy (YAML): what each risky behaviour costs and which hosts and packages are
    /// known. Default: the product's rules (see docs/trust.md).
    #[arg(long, env = "CAGED_TRUST_POLICY")]
    trust_policy: Option<PathBuf>,
    /// Watch sandboxes from the host (process events, file changes, sensitive opens) and score
    /// sessions; `off` stops observing (scores then stay at 100).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    observe: String,
    /// Price table (YAML): compute per vCPU-hour and GiB-hour, tokens per model. Default: the
    /// prices in docs/cost.md.
    #[arg(long, env = "CAGED_PRICES")]
    prices: Option<PathBuf>,
    /// Where the LLM gateway sends OpenAI-format calls.
    #[arg(
        long,
        env = "CAGED_OPENAI_UPSTREAM",
        default_value = "https://api.openai.com"
    )]
    openai_upstream: String,
    /// The OpenAI key the gateway adds to forwarded calls (prefer the environment variable:
    /// a flag shows in the process list). Never enters a sandbox.
    #[arg(long, env = "CAGED_OPENAI_API_KEY", hide_env_values = true)]
    openai_api_key: Option<String>,
    /// Where the LLM gateway sends Anthropic-format calls.
    #[arg(
        long,
        env = "CAGED_ANTHROPIC_UPSTREAM",
        default_value = "https://api.anthropic.com"
    )]
    anthropic_upstream: String,
    /// The Anthropic key the gateway adds to forwarded calls (prefer the environment variable).
    #[arg(long, env = "CAGED_ANTHROPIC_API_KEY", hide_env_values = true)]
    anthropic_api_key: Option<String>,
    /// Port of the LLM gateway on each sandbox link's host address.
    #[arg(long, default_value_t = 15002)]
    gateway_port: u16,
    /// Let account webhooks go to loopback and private addresses (a receiver on this host or
    /// network); refused by default so a webhook cannot reach the server's own neighbours.
    #[arg(long)]
    webhook_allow_private: bool,
}

fn parse_upstream(name: &str, url: &str) -> anyhow::Result<String> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("--{name}: {url:?} is not a URL"))?;
    match (parsed.scheme(), parsed.host_str()) {
        ("http" | "https", Some(_)) if parsed.query().is_none() => {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => anyhow::bail!("--{name}: {url:?} must be an http:// or https:// URL with a host"),
    }
}

fn parse_pool(text: &str) -> Result<caged_network::Pool, String> {
    caged_network::Pool::parse(text)
}

fn parse_net(text: &str) -> Result<caged_network::ranges::Net4, String> {
    caged_network::ranges::Net4::parse(text)
}

fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{text:?} is not an IP address or IP:PORT"))
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAGED_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = ServerConfig::new(cli.data_dir(), args.listen);
    config.docker_host = args.docker_host.clone();
    config.max_upload_bytes = args.max_upload_mb << 20;
    config.pids_limit = args.pids_limit;
    config.max_sandboxes_per_account = args.max_sandboxes_per_account;
    config.auth_failures_per_minute = args.auth_failures_per_minute;
    config.header_timeout = std::time::Duration::from_secs(args.header_timeout_secs);
    config.probe_gvisor_at_start = !args.no_gvisor_probe;
    config.sandbox_ca = args.sandbox_ca.clone();
    config.preview = PreviewConfig {
        listen: args.preview_listen,
        domain: args.preview_domain.clone(),
        tls: match (&args.preview_tls_cert, &args.preview_tls_key) {
            (Some(cert), Some(key)) => PreviewTls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if args.preview_tls_self_signed => PreviewTls::SelfSigned,
            _ => PreviewTls::Off,
        },
        rate_limit_per_minute: args.preview_rate_limit,
    };
    config.network = caged_server::NetworkConfig {
        pool: args.sandbox_network,
        upstream: (!args.dns_upstream.is_empty()).then(|| args.dns_upstream.clone()),
        open_ranges: args.network_open.clone(),
        ..caged_server::NetworkConfig::default()
    };
    if let Some(path) = &args.trust_policy {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the trust policy {}", path.display()))?;
        config.trust_policy = caged_trust::Policy::from_yaml(&text)
            .with_context(|| format!("in {}", path.display()))?;
    }
    config.observe = args.observe == "on";
    let mut cost = caged_server::CostConfig::default();
    if let Some(path) = &args.prices {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the price table {}", path.display()))?;
        cost.prices = caged_cost::Prices::from_yaml(&text)
            .with_context(|| format!("in {}", path.display()))?;
    }
    let key = |key: &Option<String>| key.clone().filter(|key| !key.trim().is_empty());
    cost.openai = caged_server::Upstream {
        base_url: parse_upstream("openai-upstream", &args.openai_upstream)?,
        api_key: key(&args.openai_api_key),
    };
    cost.anthropic = caged_server::Upstream {
        base_url: parse_upstream("anthropic-upstream", &args.anthropic_upstream)?,
        api_key: key(&args.anthropic_api_key),
    };
    cost.webhooks_to_private = args.webhook_allow_private;
    config.cost = cost;
    config.network.gateway_port = args.gateway_port;
    let mut server = caged_server::start(config)
        .await
        .context("cannot start the server")?;
    eprintln!(
        "caged server listening on http://{} (data: {}, admin key: {})",
        server.addr,
        cli.data_dir().display(),
        server.admin_key_path.display()
    );
    eprintln!(
        "previews on {} as cage-<id>-<port>.{}",
        server.preview_addr, args.preview_domain
    );
    let shutdown = server.shutdown_handle();
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    if let Some(shutdown) = shutdown {
        let _ = shutdown.send(());
    }
    if tokio::time::timeout(GRACE, server.wait()).await.is_err() {
        tracing::warn!(
            "requests still running after {}s; stopping anyway",
            GRACE.as_secs()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `caged`: the server and the CLI in one binary. Each verb lives in its own file under `cli/`.

mod cli;
mod output;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "caged",
    version,
    about = "Isolated, observable, budgeted Linux sandboxes for AI coding agents"
)]
pub struct Cli {
    /// Data folder (database, keys); also where the CLI finds the admin key.
    #[arg(long, global = true, env = "CAGED_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API address the CLI talks to.
    #[arg(
        long,
        global = true,
        env = "CAGED_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    url: String,
    /// API key for the CLI (default: the admin key file in the data folder, when readable).
    #[arg(long, global = true, env = "CAGED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Boxed: its flags outweigh every other verb's.
    /// Run the Caged server (API on --listen).
    Server(Box<cli::server::Args>),
    /// Create a sandbox.
    Create(cli::create::Args),
    /// Create a sandbox from DIR/.caged.yaml, copy DIR to /workspace and run init_script.
    Up(cli::up::Args),
    /// List sandboxes.
    Ls(cli::ls::Args),
    /// Show a sandbox.
    Inspect(cli::inspect::Args),
    /// Run a command in a sandbox; exits with the command's status.
    Exec(cli::exec::Args),
    /// Open an interactive shell in a sandbox.
    Shell(cli::shell::Args),
    /// Copy files between this machine and a sandbox (either side may be ID:/path).
    Cp(cli::cp::Args),
    /// Freeze a sandbox in memory.
    Pause(cli::lifecycle::Args),
    /// Resume a paused sandbox.
    Resume(cli::lifecycle::Args),
    /// Destroy a sandbox.
    Rm(cli::lifecycle::Args),
    /// Manage templates.
    #[command(subcommand)]
    Template(cli::template::Command),
    /// Validate .caged.yaml files or print their JSON Schema.
    #[command(subcommand)]
    Config(cli::config::Command),
    /// Manage accounts and their API keys (admin).
    #[command(subcommand)]
    Account(cli::account::Command),
    /// Show the server's version and what its container engine supports.
    System(cli::system::Args),
    /// Show a sandbox's event log (transitions, execs, files, sleep and wake).
    Events(cli::events::Args),
    /// Capture, list, restore, fork and download snapshots of sandboxes.
    #[command(subcommand)]
    Snapshot(cli::snapshot::Command),
    /// Run an agent in a sandbox on a PTY, as one session.
    Agent(cli::agent::Args),
    /// List a sandbox's sessions.
    Sessions(cli::sessions::ListArgs),
    /// Show one session and its events.
    Session(cli::sessions::ShowArgs),
    /// See what a sandbox reached or tried to, and change its allowlist while it runs.
    #[command(subcommand)]
    Network(cli::network::Command),
    /// List a sandbox's preview URLs and protect them with passwords.
    #[command(subcommand)]
    Preview(cli::preview::Command),
    /// Show what a sandbox spent (running time, compute, tokens, LLM cost, budget); without a
    /// sandbox, the account's spend and running sandboxes per day.
    Usage(cli::usage::UsageArgs),
    /// Set, raise or remove a live sandbox's budget (USD).
    Budget(cli::usage::BudgetArgs),
    /// Set where the account's budget alerts are sent (a signed POST).
    #[command(subcommand)]
    Webhook(cli::usage::WebhookCommand),
}

impl Cli {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".local/share/caged")
        })
    }

    /// A client for the API, with the key from the flag, the environment or the admin key file.
    pub fn client(&self) -> caged_client::Client {
        let key = self.api_key.clone().or_else(|| {
            let path = self.data_dir().join(caged_server::ADMIN_KEY_FILE);
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_string())
        });
        caged_client::Client::new(&self.url, key)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("caged: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli::run(&cli));
    // A read of the terminal may still be parked on a blocking thread; do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("caged: {err:#}");
            ExitCode::FAILURE
        }
    }
}

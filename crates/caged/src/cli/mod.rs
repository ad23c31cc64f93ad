//! One module per verb; `run` dispatches.

pub mod account;
pub mod agent;
pub mod config;
pub mod cp;
pub mod create;
pub mod events;
pub mod exec;
pub mod inspect;
pub mod lifecycle;
pub mod ls;
pub mod network;
pub mod preview;
pub mod server;
pub mod sessions;
pub mod shell;
pub mod snapshot;
pub mod system;
pub mod template;
pub mod up;
pub mod usage;

use std::process::ExitCode;

use crate::{Cli, Command};

pub async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Server(args) => server::run(cli, args).await,
        Command::Create(args) => create::run(cli, args).await,
        Command::Up(args) => up::run(cli, args).await,
        Command::Ls(args) => ls::run(cli, args).await,
        Command::Inspect(args) => inspect::run(cli, args).await,
        Command::Exec(args) => exec::run(cli, args).await,
        Command::Shell(args) => shell::run(cli, args).await,
        Command::Cp(args) => cp::run(cli, args).await,
        Command::Pause(args) => lifecycle::pause(cli, args).await,
        Command::Resume(args) => lifecycle::resume(cli, args).await,
        Command::Rm(args) => lifecycle::rm(cli, args).await,
        Command::Template(command) => template::run(cli, command).await,
        Command::Config(command) => config::run(command),
        Command::Account(command) => account::run(cli, command).await,
        Command::System(args) => system::run(cli, args).await,
        Command::Events(args) => events::run(cli, args).await,
        Command::Snapshot(command) => snapshot::run(cli, command).await,
        Command::Preview(command) => preview::run(cli, command).await,
        Command::Network(command) => network::run(cli, command).await,
        Command::Usage(args) => usage::usage(cli, args).await,
        Command::Budget(args) => usage::budget(cli, args).await,
        Command::Webhook(command) => usage::webhook(cli, command).await,
        Command::Agent(args) => agent::run(cli, args).await,
        Command::Sessions(args) => sessions::list(cli, args).await,
        Command::Session(args) => sessions::show(cli, args).await,
    }
}

//! `caged agent ID [--type T] -- CMD...`: runs an agent inside the sandbox on a PTY, wired to
//! this terminal, as one session that ends when the agent exits or this process goes away.

use std::process::ExitCode;

use crate::Cli;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// The agent (claude-code, cursor, aider, ...); inferred from the program's name if left out.
    #[arg(long = "type")]
    agent_type: Option<String>,
    /// Run as this user (`root`, or an account of the template) instead of the sandbox's own.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The agent's command line.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    super::shell::interactive(
        cli,
        &args.id,
        args.cmd.clone(),
        args.agent_type.as_deref(),
        args.user.as_deref(),
    )
    .await
}

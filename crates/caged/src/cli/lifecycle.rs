//! `caged pause | resume | rm ID`.

use std::process::ExitCode;

use crate::Cli;

#[derive(clap::Args)]
pub struct Args {
    id: String,
}

pub async fn pause(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let sandbox = cli.client().pause(&args.id).await?;
    eprintln!("sandbox {} is {}", sandbox.id, sandbox.state);
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let sandbox = cli.client().resume(&args.id).await?;
    eprintln!("sandbox {} is {}", sandbox.id, sandbox.state);
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let sandbox = cli.client().destroy(&args.id).await?;
    eprintln!("sandbox {} is {}", sandbox.id, sandbox.state);
    Ok(ExitCode::SUCCESS)
}

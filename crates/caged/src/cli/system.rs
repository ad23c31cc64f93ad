//! `caged system`: the server's version and its engine's capabilities.

use std::process::ExitCode;

use caged_client::wire::EngineStatus;

use crate::{Cli, output};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let system = cli.client().system().await?;
    if args.json {
        output::json(&system);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "server       caged {} (installation {})",
        system.version, system.installation_id
    );
    match &system.engine {
        EngineStatus::Up { info } => {
            println!(
                "engine       up: Docker {} (API {}), storage {}",
                info.version, info.api_version, info.storage_driver
            );
            println!("disk limits  {}", info.disk_limits.detail);
            println!(
                "gvisor       {}: {}",
                if info.gvisor.available {
                    "available"
                } else {
                    "unavailable"
                },
                info.gvisor.detail
            );
        }
        EngineStatus::Starting => println!("engine       starting: not probed yet"),
        EngineStatus::Down { reason } => println!("engine       down: {reason}"),
    }
    match &system.sandbox_ca {
        Some(ca) => println!(
            "sandbox CA   {} ({} certificate{}, trusted in every sandbox)",
            ca.file,
            ca.certificates,
            if ca.certificates == 1 { "" } else { "s" }
        ),
        None => println!("sandbox CA   none (sandboxes trust their template's own CA bundle)"),
    }
    Ok(ExitCode::SUCCESS)
}

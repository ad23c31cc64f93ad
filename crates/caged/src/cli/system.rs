//! `caged system`: the server's version and its engine's capabilities.

use std::process::ExitCode;

use crate::{Cli, output};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let value = cli.client().system().await?;
    if args.json {
        output::json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "server       caged {} (installation {})",
        value["version"].as_str().unwrap_or("?"),
        value["installation_id"].as_str().unwrap_or("?")
    );
    let engine = &value["engine"];
    match engine["status"].as_str() {
        Some("up") => {
            let info = &engine["info"];
            println!(
                "engine       up: Docker {} (API {}), storage {}",
                info["version"].as_str().unwrap_or("?"),
                info["api_version"].as_str().unwrap_or("?"),
                info["storage_driver"].as_str().unwrap_or("?")
            );
            println!(
                "disk limits  {}",
                info["disk_limits"]["detail"].as_str().unwrap_or("?")
            );
            let gvisor = &info["gvisor"];
            println!(
                "gvisor       {}: {}",
                if gvisor["available"] == true {
                    "available"
                } else {
                    "unavailable"
                },
                gvisor["detail"].as_str().unwrap_or("?")
            );
        }
        Some(status) => println!(
            "engine       {status}: {}",
            engine["reason"].as_str().unwrap_or("")
        ),
        None => println!("engine       unknown"),
    }
    Ok(ExitCode::SUCCESS)
}

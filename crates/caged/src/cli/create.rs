//! `caged create`: a sandbox from flags and/or a `.caged.yaml` file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use caged_domain::{Isolation, NetworkMode, SandboxConfig};
use serde_json::Value;

use crate::{Cli, output};

#[derive(clap::Args)]
pub struct Args {
    /// A .caged.yaml file; flags override its values.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Virtual CPUs.
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory in MB.
    #[arg(long)]
    memory: Option<u64>,
    /// Disk in GB.
    #[arg(long)]
    disk: Option<u64>,
    /// Seconds of inactivity before the sandbox sleeps.
    #[arg(long)]
    timeout: Option<u64>,
    /// Spending limit in USD.
    #[arg(long)]
    budget: Option<f64>,
    #[arg(long, value_parser = ["full", "allowlist", "none"])]
    network: Option<String>,
    /// A host the sandbox may reach (network allowlist); repeatable.
    #[arg(long = "allow")]
    allow: Vec<String>,
    #[arg(long, value_parser = ["container", "gvisor"])]
    isolation: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Reads and validates a `.caged.yaml`, naming the file in errors.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<SandboxConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    SandboxConfig::from_yaml(&text).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.file {
        Some(path) => load_config(path)?,
        None => SandboxConfig::default(),
    };
    if let Some(template) = &args.template {
        config.template = template.clone();
    }
    if args.name.is_some() {
        config.name = args.name.clone();
    }
    if let Some(cpu) = args.cpu {
        config.resources.cpu = cpu;
    }
    if let Some(memory) = args.memory {
        config.resources.memory = memory;
    }
    if let Some(disk) = args.disk {
        config.resources.disk = disk;
    }
    if let Some(timeout) = args.timeout {
        config.timeout = timeout;
    }
    if args.budget.is_some() {
        config.budget = args.budget;
    }
    if let Some(network) = &args.network {
        config.network_mode = match network.as_str() {
            "allowlist" => NetworkMode::Allowlist,
            "none" => NetworkMode::None,
            _ => NetworkMode::Full,
        };
    }
    if !args.allow.is_empty() {
        if args.network.is_none() {
            config.network_mode = NetworkMode::Allowlist;
        }
        config.allowed_hosts.extend(args.allow.iter().cloned());
    }
    if let Some(isolation) = &args.isolation {
        config.isolation = if isolation == "gvisor" {
            Isolation::Gvisor
        } else {
            Isolation::Container
        };
    }
    if let Err(err) = config.validate() {
        bail!("{err}");
    }
    let body = serde_json::to_value(&config)?;
    let sandbox = cli.client().create_sandbox(&body).await?;
    if args.json {
        output::json(&serde_json::to_value(raw_fields(&sandbox))?);
    } else {
        println!("{}", sandbox.id);
        eprintln!(
            "created sandbox {} ({}, template {}, {})",
            sandbox.id, sandbox.state, sandbox.template, sandbox.isolation
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn raw_fields(sandbox: &caged_client::Sandbox) -> Value {
    serde_json::json!({
        "id": sandbox.id, "name": sandbox.name, "state": sandbox.state, "template": sandbox.template,
        "isolation": sandbox.isolation, "created_at": sandbox.created_at,
    })
}

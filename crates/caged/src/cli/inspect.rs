//! `caged inspect ID`: everything known about one sandbox.

use std::process::ExitCode;

use crate::{Cli, output};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    #[arg(long)]
    json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let detail = cli.client().sandbox_detail(&args.id).await?;
    if args.json {
        output::json(&detail);
        return Ok(ExitCode::SUCCESS);
    }
    let sandbox = &detail.sandbox;
    for (key, value) in [
        ("id", sandbox.id.clone()),
        ("name", output::cell(sandbox.name.as_deref())),
        ("state", sandbox.state.clone()),
        ("template", sandbox.template.clone()),
        ("user", output::cell(sandbox.user.as_deref())),
        ("isolation", sandbox.isolation.clone()),
        ("network_mode", sandbox.network_mode.clone()),
        ("timeout_seconds", sandbox.timeout_seconds.to_string()),
        (
            "budget_usd",
            sandbox
                .budget_usd
                .map_or_else(|| "-".into(), |usd| usd.to_string()),
        ),
        ("created_at", sandbox.created_at.clone()),
    ] {
        println!("{key:<16} {value}");
    }
    let resources = &sandbox.resources;
    println!(
        "{:<16} cpu {}, memory {} MB, disk {} GB{}",
        "resources",
        resources.cpu,
        resources.memory_mb,
        resources.disk_gb,
        if resources.disk_enforced {
            ""
        } else {
            " (disk not enforced by this engine)"
        }
    );
    println!(
        "{:<16} {}",
        "running",
        output::duration(sandbox.running_seconds)
    );
    if let Some(cost) = &sandbox.cost {
        println!(
            "{:<16} {} (compute {}, LLM {}){}",
            "cost",
            output::money(cost.total_micros),
            output::money(cost.compute_micros),
            output::money(cost.llm_micros),
            match (cost.budget_percent, cost.budget_micros) {
                (Some(percent), Some(budget)) =>
                    format!(", {percent:.2}% of {}", output::money(budget)),
                _ => String::new(),
            }
        );
    }
    if let Some(init) = sandbox.init.as_ref().and_then(|init| init.as_object()) {
        println!(
            "{:<16} {} (exit {})",
            "init_script",
            init.get("status").and_then(|s| s.as_str()).unwrap_or("?"),
            init.get("exit_code").unwrap_or(&serde_json::Value::Null)
        );
    }
    for preview in &detail.previews {
        println!(
            "{:<16} {}{}{}",
            "preview",
            preview.url,
            if preview.protected { " (password)" } else { "" },
            if preview.listening {
                ""
            } else {
                " (not listening)"
            }
        );
    }
    if let Some(reason) = &sandbox.destroyed_reason {
        println!("{:<16} {reason}", "destroyed");
    }
    Ok(ExitCode::SUCCESS)
}

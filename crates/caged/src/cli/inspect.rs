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
    let value = cli.client().sandbox_json(&args.id).await?;
    if args.json {
        output::json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let field = |key: &str| match &value[key] {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    for key in [
        "id",
        "name",
        "state",
        "template",
        "isolation",
        "network_mode",
        "timeout_seconds",
        "budget_usd",
        "created_at",
    ] {
        println!("{key:<16} {}", field(key));
    }
    let resources = &value["resources"];
    println!(
        "{:<16} cpu {}, memory {} MB, disk {} GB{}",
        "resources",
        resources["cpu"],
        resources["memory_mb"],
        resources["disk_gb"],
        if resources["disk_enforced"] == true {
            ""
        } else {
            " (disk not enforced by this engine)"
        }
    );
    println!(
        "{:<16} {}",
        "running",
        output::duration(value["running_seconds"].as_f64().unwrap_or(0.0))
    );
    let cost = &value["cost"];
    let money = |key: &str| output::money(&cost[key]);
    println!(
        "{:<16} {} (compute {}, LLM {}){}",
        "cost",
        money("total_micros"),
        money("compute_micros"),
        money("llm_micros"),
        match cost["budget_percent"].as_f64() {
            Some(percent) => format!(", {percent:.2}% of {}", money("budget_micros")),
            None => String::new(),
        }
    );
    if let Some(init) = value["init"].as_object() {
        println!(
            "{:<16} {} (exit {})",
            "init_script",
            init.get("status").and_then(|s| s.as_str()).unwrap_or("?"),
            init.get("exit_code").unwrap_or(&serde_json::Value::Null)
        );
    }
    for preview in value["previews"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {}{}{}",
            "preview",
            preview["url"].as_str().unwrap_or("?"),
            if preview["protected"] == true {
                " (password)"
            } else {
                ""
            },
            if preview["listening"] == true {
                ""
            } else {
                " (not listening)"
            }
        );
    }
    if let Some(reason) = value["destroyed_reason"].as_str() {
        println!("{:<16} {reason}", "destroyed");
    }
    Ok(ExitCode::SUCCESS)
}

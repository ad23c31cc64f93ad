//! `caged sessions ID [--json]` and `caged session SID --json`.

use std::process::ExitCode;

use serde_json::Value;

use crate::output::cell as text;
use crate::{Cli, output};

#[derive(clap::Args)]
pub struct ListArgs {
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    session: String,
    #[arg(long)]
    json: bool,
}

pub async fn list(cli: &Cli, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let sessions = cli.client().sessions(&args.id).await?;
    if args.json {
        output::json(&Value::Array(sessions));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|session| {
            vec![
                text(&session["id"]),
                text(&session["agent_type"]),
                text(&session["state"]),
                text(&session["started_at"]),
                output::duration(session["duration_seconds"].as_f64().unwrap_or(0.0)),
                format!(
                    "{} {}",
                    text(&session["trust_score"]),
                    text(&session["trust_rating"])
                ),
                format!(
                    "{}/{}",
                    text(&session["tokens_in"]),
                    text(&session["tokens_out"])
                ),
                output::money(&session["llm_cost_micros"]),
                text(&session["end_reason"]),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "AGENT",
            "STATE",
            "STARTED",
            "DURATION",
            "TRUST",
            "TOKENS IN/OUT",
            "LLM",
            "ENDED BECAUSE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn show(cli: &Cli, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    let mut session = client.session(&args.session).await?;
    session["events"] = Value::Array(client.session_events(&args.session).await?);
    if args.json {
        output::json(&session);
        return Ok(ExitCode::SUCCESS);
    }
    for key in [
        "id",
        "sandbox_id",
        "agent_type",
        "state",
        "started_at",
        "ended_at",
        "end_reason",
    ] {
        println!("{key:<14} {}", text(&session[key]));
    }
    println!(
        "{:<14} {}",
        "duration",
        output::duration(session["duration_seconds"].as_f64().unwrap_or(0.0))
    );
    println!(
        "{:<14} {}",
        "events",
        session["events"].as_array().map_or(0, Vec::len)
    );
    println!(
        "{:<14} {} ({})",
        "trust",
        text(&session["trust_score"]),
        text(&session["trust_rating"])
    );
    for penalty in session["penalties"].as_array().into_iter().flatten() {
        println!(
            "  -{:<3} {:<16} {}",
            penalty["points"].as_u64().unwrap_or(0),
            text(&penalty["rule"]),
            text(&penalty["reason"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `caged sessions ID [--json]` and `caged session SID --json`.

use std::process::ExitCode;

use caged_client::wire::{Event, SessionDetail};
use serde::Serialize;

use crate::output::cell;
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

/// `caged session --json`: the session with its events.
#[derive(Serialize)]
struct Shown {
    events: Vec<Event>,
    #[serde(flatten)]
    detail: SessionDetail,
}

pub async fn list(cli: &Cli, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let sessions = cli.client().sessions(&args.id).await?;
    if args.json {
        output::json(&sessions);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = sessions
        .into_iter()
        .map(|item| {
            let (session, trust) = (item.session, item.trust);
            vec![
                session.id,
                session.agent_type,
                state(&session.state),
                session.started_at,
                output::duration(session.duration_seconds),
                format!("{} {}", trust.trust_score, trust.trust_rating),
                format!("{}/{}", session.tokens_in, session.tokens_out),
                output::money(session.llm_cost_micros),
                cell(session.end_reason.as_deref()),
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
    let detail = client.session(&args.session).await?;
    let events = client.session_events(&args.session).await?;
    if args.json {
        output::json(&Shown { events, detail });
        return Ok(ExitCode::SUCCESS);
    }
    let session = &detail.session;
    for (key, value) in [
        ("id", Some(session.id.as_str())),
        ("sandbox_id", Some(session.sandbox_id.as_str())),
        ("agent_type", Some(session.agent_type.as_str())),
        ("state", Some(state(&session.state).as_str())),
        ("started_at", Some(session.started_at.as_str())),
        ("ended_at", session.ended_at.as_deref()),
        ("end_reason", session.end_reason.as_deref()),
    ] {
        println!("{key:<14} {}", cell(value));
    }
    println!(
        "{:<14} {}",
        "duration",
        output::duration(session.duration_seconds)
    );
    println!("{:<14} {}", "events", events.len());
    println!(
        "{:<14} {} ({})",
        "trust", detail.trust.trust_score, detail.trust.trust_rating
    );
    for penalty in &detail.penalties {
        println!(
            "  -{:<3} {:<16} {}",
            penalty.points, penalty.rule, penalty.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn state(state: &caged_client::wire::SessionState) -> String {
    match state {
        caged_client::wire::SessionState::Open => "open",
        caged_client::wire::SessionState::Ended => "ended",
    }
    .to_string()
}

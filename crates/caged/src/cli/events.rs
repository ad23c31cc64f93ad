//! `caged events ID [--follow] [--json]`: a sandbox's event log, or the live feed of it.

use std::process::ExitCode;

use caged_client::wire::Event;
use serde_json::Value;

use crate::Cli;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    let mut last = 0;
    if !args.follow {
        let events = client.events(&args.id, 0).await?;
        for event in &events {
            print(event, args.json);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut feed = client.follow_events(&args.id, last).await?;
    while let Some(event) = feed.next().await {
        let event = event?;
        last = event.seq;
        print(&event, args.json);
    }
    eprintln!("caged: the server ended the event stream (after event {last})");
    Ok(ExitCode::FAILURE)
}

fn print(event: &Event, json: bool) {
    if json {
        // Strings, numbers and parsed JSON: nothing in it fails to serialize.
        println!("{}", serde_json::to_string(event).unwrap_or_default());
        return;
    }
    let payload = &event.payload;
    let detail = match event.kind.as_str() {
        "state" => format!(
            "{} → {}{}",
            payload["from"].as_str().unwrap_or("-"),
            payload["to"].as_str().unwrap_or("?"),
            payload["reason"]
                .as_str()
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        ),
        "exec" => format!(
            "{} → exit {}{}",
            payload["cmd"]
                .as_array()
                .map(|argv| argv
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default(),
            payload["exit_code"],
            if payload["timed_out"] == true {
                " (timed out)"
            } else {
                ""
            }
        ),
        "file" => format!(
            "{} {}",
            payload["op"].as_str().unwrap_or("?"),
            payload["path"].as_str().unwrap_or("?")
        ),
        _ => payload.to_string(),
    };
    println!("{}  {:<6} {detail}", event.at, event.kind);
}

//! `caged ls`: the caller's sandboxes.

use std::process::ExitCode;

use crate::{Cli, output};

#[derive(clap::Args)]
pub struct Args {
    /// Include destroyed sandboxes.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    if args.json {
        let (_, value) = client
            .raw(
                reqwest::Method::GET,
                &format!("/v1/sandboxes?all={}", args.all),
                None,
            )
            .await?;
        output::json(&value["sandboxes"]);
        return Ok(ExitCode::SUCCESS);
    }
    let sandboxes = client.list_sandboxes(args.all).await?;
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|sandbox| {
            vec![
                sandbox.id.clone(),
                sandbox.name.clone().unwrap_or_else(|| "-".into()),
                sandbox.state.clone(),
                sandbox.template.clone(),
                sandbox.isolation.clone(),
                format!("{}", sandbox.resources.cpu),
                format!("{}M", sandbox.resources.memory_mb),
                output::duration(sandbox.running_seconds),
                match &sandbox.cost {
                    Some(cost) => match cost.budget_percent {
                        Some(percent) => {
                            format!("{} ({percent:.0}%)", caged_cost::Micros(cost.total_micros))
                        }
                        None => caged_cost::Micros(cost.total_micros).to_string(),
                    },
                    None => "-".into(),
                },
                sandbox.created_at.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "NAME",
            "STATE",
            "TEMPLATE",
            "ISOLATION",
            "CPU",
            "MEMORY",
            "RUNNING",
            "COST",
            "CREATED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

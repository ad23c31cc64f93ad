//! `caged usage [ID]`, `caged budget ID USD|none` and `caged webhook set|show|rm`.

use std::process::ExitCode;

use caged_cost::Micros;

use crate::output::{cell, money};
use crate::{Cli, output};

#[derive(clap::Args)]
pub struct UsageArgs {
    /// A sandbox; without one, the account's spend per day.
    id: Option<String>,
    /// Days of the account's history (1 to 366; with no sandbox named).
    #[arg(long, default_value_t = 30, conflicts_with = "id")]
    days: u32,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct BudgetArgs {
    id: String,
    /// The new budget in USD (e.g. 10 or 2.50), or `none` for no limit.
    budget: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum WebhookCommand {
    /// Send budget alerts to URL (prints the new signing secret).
    Set {
        /// (Not named `url`: that is the global `--url` of the API.)
        #[arg(value_name = "URL")]
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the webhook, its secret and its latest deliveries.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Stop sending webhooks.
    Rm,
}

pub async fn usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let Some(id) = &args.id else {
        return account_usage(cli, args).await;
    };
    let usage = cli.client().usage(id).await?;
    if args.json {
        output::json(&usage);
        return Ok(ExitCode::SUCCESS);
    }
    let cost = &usage.cost;
    let budget = match (cost.budget_micros, cost.budget_percent) {
        (Some(budget), Some(percent)) => format!("{} ({percent:.2}% spent)", Micros(budget)),
        _ => "none".into(),
    };
    let lines = [
        ("sandbox", usage.sandbox_id.clone()),
        ("state", usage.state.clone()),
        ("running", output::duration(usage.running_seconds)),
        (
            "resources",
            format!(
                "{} vCPU, {} MB",
                usage.resources.cpu, usage.resources.memory_mb
            ),
        ),
        ("compute", money(cost.compute_micros)),
        (
            "tokens",
            format!("{} in, {} out", usage.tokens_in, usage.tokens_out),
        ),
        ("llm", money(cost.llm_micros)),
        ("total", money(cost.total_micros)),
        ("budget", budget),
    ];
    for (key, value) in lines {
        println!("{key:<10} {value}");
    }
    if !usage.alerts.is_empty() {
        println!();
        for alert in &usage.alerts {
            println!(
                "alert      {} at {}% of {} ({} spent) {}",
                cell(alert.level.as_deref()),
                alert.percent,
                money(alert.budget_micros),
                money(alert.spend_micros),
                alert.at
            );
        }
    }
    if !usage.sessions.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = usage
            .sessions
            .iter()
            .map(|session| {
                vec![
                    session.id.clone(),
                    session.agent_type.clone(),
                    output::duration(session.running_seconds),
                    money(session.compute_micros),
                    format!("{}/{}", session.tokens_in, session.tokens_out),
                    money(session.llm_micros),
                    money(session.total_micros),
                ]
            })
            .collect();
        output::table(
            &[
                "SESSION",
                "AGENT",
                "RUNNING",
                "COMPUTE",
                "TOKENS IN/OUT",
                "LLM",
                "TOTAL",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The account's days, oldest first, and the total.
async fn account_usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let usage = cli.client().account_usage(args.days).await?;
    if args.json {
        output::json(&usage);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = usage
        .days
        .iter()
        .map(|day| {
            vec![
                day.date.clone(),
                day.sandboxes_running.to_string(),
                output::duration(day.running_seconds),
                money(day.compute_micros),
                day.llm_calls.to_string(),
                money(day.llm_micros),
                money(day.total_micros),
            ]
        })
        .collect();
    output::table(
        &[
            "DAY",
            "SANDBOXES",
            "RUNNING",
            "COMPUTE",
            "LLM CALLS",
            "LLM",
            "TOTAL",
        ],
        &rows,
    );
    println!(
        "\ntotal {} (compute {}, LLM {})",
        money(usage.total_micros),
        money(usage.compute_micros),
        money(usage.llm_micros)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn budget(cli: &Cli, args: &BudgetArgs) -> anyhow::Result<ExitCode> {
    let budget = match args.budget.trim().trim_start_matches('$') {
        "none" | "off" => None,
        amount => Some(amount.parse::<f64>().map_err(|_| {
            anyhow::anyhow!(
                "budget: {:?} is not an amount of USD (e.g. 10 or 2.50) or none",
                args.budget
            )
        })?),
    };
    let answer = cli.client().set_budget(&args.id, budget).await?;
    if args.json {
        output::json(&answer);
    } else {
        let cost = &answer.cost;
        match cost.budget_micros {
            Some(budget) => println!(
                "sandbox {} budget {} ({:.2}% spent)",
                args.id,
                Micros(budget),
                cost.budget_percent.unwrap_or(0.0)
            ),
            None => println!("sandbox {} has no budget (no limit)", args.id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn webhook(cli: &Cli, command: &WebhookCommand) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match command {
        WebhookCommand::Set { target, json } => {
            let answer = client.set_webhook(target).await?;
            if *json {
                output::json(&answer);
            } else {
                println!("url     {}", cell(answer.url.as_deref()));
                println!("secret  {}", cell(answer.secret.as_deref()));
                println!(
                    "Each POST carries Caged-Signature: t=<unix time>,v1=<HMAC-SHA256 of \"<t>.<body>\" with the secret>."
                );
            }
        }
        WebhookCommand::Show { json } => {
            let answer = client.webhook().await?;
            if *json {
                output::json(&answer);
                return Ok(ExitCode::SUCCESS);
            }
            println!("url     {}", cell(answer.webhook.url.as_deref()));
            println!("secret  {}", cell(answer.webhook.secret.as_deref()));
            let rows: Vec<Vec<String>> = answer
                .deliveries
                .iter()
                .map(|delivery| {
                    vec![
                        delivery.id.to_string(),
                        delivery.event_type.clone(),
                        delivery.created_at.clone(),
                        delivery.attempts.to_string(),
                        cell(delivery.delivered_at.as_deref()),
                        cell(delivery.last_error.as_deref()),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                println!();
                output::table(
                    &[
                        "ID",
                        "TYPE",
                        "CREATED",
                        "ATTEMPTS",
                        "DELIVERED",
                        "LAST ERROR",
                    ],
                    &rows,
                );
            }
        }
        WebhookCommand::Rm => {
            client.delete_webhook().await?;
            println!("webhook removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

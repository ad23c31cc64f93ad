//! `caged usage [ID]`, `caged budget ID USD|none` and `caged webhook set|show|rm`.

use std::process::ExitCode;

use caged_cost::Micros;

use crate::output::{cell as text, money};
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
    let cost = &usage["cost"];
    let budget = match (
        cost["budget_micros"].as_i64(),
        cost["budget_percent"].as_f64(),
    ) {
        (Some(budget), Some(percent)) => format!("{} ({percent:.2}% spent)", Micros(budget)),
        _ => "none".into(),
    };
    let lines = [
        ("sandbox", text(&usage["sandbox_id"])),
        ("state", text(&usage["state"])),
        (
            "running",
            output::duration(usage["running_seconds"].as_f64().unwrap_or(0.0)),
        ),
        (
            "resources",
            format!(
                "{} vCPU, {} MB",
                text(&usage["resources"]["cpu"]),
                text(&usage["resources"]["memory_mb"])
            ),
        ),
        ("compute", money(&cost["compute_micros"])),
        (
            "tokens",
            format!(
                "{} in, {} out",
                text(&usage["tokens_in"]),
                text(&usage["tokens_out"])
            ),
        ),
        ("llm", money(&cost["llm_micros"])),
        ("total", money(&cost["total_micros"])),
        ("budget", budget),
    ];
    for (key, value) in lines {
        println!("{key:<10} {value}");
    }
    if let Some(alerts) = usage["alerts"].as_array().filter(|a| !a.is_empty()) {
        println!();
        for alert in alerts {
            println!(
                "alert      {} at {}% of {} ({} spent) {}",
                text(&alert["level"]),
                text(&alert["percent"]),
                money(&alert["budget_micros"]),
                money(&alert["spend_micros"]),
                text(&alert["at"])
            );
        }
    }
    let sessions = usage["sessions"].as_array().cloned().unwrap_or_default();
    if !sessions.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = sessions
            .iter()
            .map(|session| {
                vec![
                    text(&session["id"]),
                    text(&session["agent_type"]),
                    output::duration(session["running_seconds"].as_f64().unwrap_or(0.0)),
                    money(&session["compute_micros"]),
                    format!(
                        "{}/{}",
                        text(&session["tokens_in"]),
                        text(&session["tokens_out"])
                    ),
                    money(&session["llm_micros"]),
                    money(&session["total_micros"]),
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
    let rows: Vec<Vec<String>> = usage["days"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|day| {
            vec![
                text(&day["date"]),
                text(&day["sandboxes_running"]),
                output::duration(day["running_seconds"].as_f64().unwrap_or(0.0)),
                money(&day["compute_micros"]),
                text(&day["llm_calls"]),
                money(&day["llm_micros"]),
                money(&day["total_micros"]),
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
        money(&usage["total_micros"]),
        money(&usage["compute_micros"]),
        money(&usage["llm_micros"])
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
        let cost = &answer["cost"];
        match cost["budget_micros"].as_i64() {
            Some(budget) => println!(
                "sandbox {} budget {} ({:.2}% spent)",
                args.id,
                Micros(budget),
                cost["budget_percent"].as_f64().unwrap_or(0.0)
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
                println!("url     {}", text(&answer["url"]));
                println!("secret  {}", text(&answer["secret"]));
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
            println!("url     {}", text(&answer["url"]));
            println!("secret  {}", text(&answer["secret"]));
            let rows: Vec<Vec<String>> = answer["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|delivery| {
                    vec![
                        text(&delivery["id"]),
                        text(&delivery["type"]),
                        text(&delivery["created_at"]),
                        text(&delivery["attempts"]),
                        text(&delivery["delivered_at"]),
                        text(&delivery["last_error"]),
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

//! `caged account create NAME | ls` (admin).

use std::process::ExitCode;

use crate::{Cli, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create an account; prints its API key (shown once).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List accounts.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, command: &Command) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match command {
        Command::Create { name, json } => {
            let account = client.create_account(name).await?;
            if *json {
                output::json(&account);
            } else {
                println!("{}", account["api_key"].as_str().unwrap_or_default());
                eprintln!("created account {name}; the key above is shown only once");
            }
        }
        Command::Ls { json } => {
            let value = client.accounts().await?;
            if *json {
                output::json(&value["accounts"]);
            } else {
                let rows: Vec<Vec<String>> = value["accounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|account| {
                        vec![
                            account["id"].as_str().unwrap_or_default().to_string(),
                            account["name"].as_str().unwrap_or_default().to_string(),
                            if account["admin"] == true {
                                "yes"
                            } else {
                                "no"
                            }
                            .to_string(),
                            account["created_at"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "ADMIN", "CREATED"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

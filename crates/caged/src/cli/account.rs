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
                println!("{}", account.api_key);
                eprintln!("created account {name}; the key above is shown only once");
            }
        }
        Command::Ls { json } => {
            let accounts = client.accounts().await?;
            if *json {
                output::json(&accounts);
            } else {
                let rows: Vec<Vec<String>> = accounts
                    .into_iter()
                    .map(|account| {
                        vec![
                            account.id,
                            account.name,
                            output::yes_no(account.admin),
                            account.created_at,
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "ADMIN", "CREATED"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `caged preview ls | protect`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::{Cli, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List the ports a sandbox listens on, with their preview URLs.
    Ls {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Protect a preview with a password (or remove it with --off).
    Protect {
        id: String,
        port: u16,
        /// The password (at least 8 characters). Prefer --password-stdin: arguments are
        /// visible to other users of this machine.
        #[arg(long, conflicts_with_all = ["password_stdin", "off"])]
        password: Option<String>,
        /// Read the password from standard input (one line).
        #[arg(long, conflicts_with = "off")]
        password_stdin: bool,
        /// Remove the password: the preview is open to anyone with its URL.
        #[arg(long)]
        off: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, command: &Command) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match command {
        Command::Ls { id, json } => {
            let previews = client.previews(id).await?;
            if *json {
                output::json(&previews);
            } else if previews.is_empty() {
                eprintln!("sandbox {id} listens on no TCP port yet");
            } else {
                let rows: Vec<Vec<String>> = previews
                    .iter()
                    .map(|preview| {
                        vec![
                            preview.port.to_string(),
                            preview.url.clone(),
                            preview
                                .address
                                .clone()
                                .unwrap_or_else(|| "(closed)".to_string()),
                            output::yes_no(preview.protected),
                        ]
                    })
                    .collect();
                output::table(&["PORT", "URL", "LISTENING ON", "PASSWORD"], &rows);
            }
        }
        Command::Protect {
            id,
            port,
            password,
            password_stdin,
            off,
            json,
        } => {
            let password = match (password, password_stdin, off) {
                (_, _, true) => None,
                (Some(password), _, _) => Some(password.clone()),
                (None, true, _) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_to_string(&mut line)
                        .context("cannot read the password from standard input")?;
                    Some(line.trim_end_matches(['\r', '\n']).to_string())
                }
                (None, false, false) => {
                    bail!("give --password P, --password-stdin, or --off to remove the password")
                }
            };
            let preview = client
                .protect_preview(id, *port, password.as_deref())
                .await?;
            if *json {
                output::json(&preview);
            } else if preview.protected {
                eprintln!("{} is now password protected", preview.url);
            } else {
                eprintln!("{} is open to anyone with its URL", preview.url);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

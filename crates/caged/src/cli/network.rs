//! `caged network show | learn | allow | revoke`.

use std::process::ExitCode;

use anyhow::bail;
use caged_client::wire::{AllowedHosts, LearnedHost, NetworkView};

use crate::{Cli, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// A sandbox's network mode, link and allowlist, and every host it tried.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The hosts a sandbox tried to reach, as a ready `allowed_hosts` block for .caged.yaml.
    Learn {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Add hosts to a running allowlist sandbox's allowed_hosts (new connections follow at once).
    Allow {
        id: String,
        #[arg(required = true)]
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove hosts from allowed_hosts; open connections to them are closed at once.
    Revoke {
        id: String,
        #[arg(required = true)]
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, command: &Command) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match command {
        Command::Show { id, json } => {
            let network = client.network(id).await?;
            if *json {
                output::json(&network);
                return Ok(ExitCode::SUCCESS);
            }
            println!("mode:          {}", network.network_mode);
            if let Some(link) = &network.link {
                println!(
                    "link:          {} (sandbox {}, host {}, resolver {})",
                    link.host_interface, link.sandbox_address, link.host_address, link.resolver
                );
            } else {
                println!("link:          none (loopback only)");
            }
            if network.network_mode == "allowlist" {
                println!("allowed hosts: {}", hosts(&network.allowed_hosts));
            }
            let rows = host_rows(&network.hosts);
            if !rows.is_empty() {
                println!();
                output::table(&["HOST", "REACHED", "ATTEMPTS"], &rows);
            }
        }
        Command::Learn { id, json } => {
            let learned = client.network_learn(id).await?;
            if *json {
                output::json(&learned);
            } else {
                print!("{}", learned.caged_yaml);
            }
        }
        Command::Allow {
            id,
            hosts: add,
            json,
        } => {
            let current = allowed(&client.network(id).await?)?;
            let mut next = current.clone();
            for host in add {
                let host = host.to_ascii_lowercase();
                if !next.contains(&host) {
                    next.push(host);
                }
            }
            report(&client.set_allowed_hosts(id, &next).await?, *json);
        }
        Command::Revoke {
            id,
            hosts: remove,
            json,
        } => {
            let current = allowed(&client.network(id).await?)?;
            let remove: Vec<String> = remove.iter().map(|h| h.to_ascii_lowercase()).collect();
            if let Some(missing) = remove.iter().find(|host| !current.contains(host)) {
                bail!(
                    "{missing} is not in sandbox {id}'s allowed_hosts ({})",
                    current.join(", ")
                );
            }
            let next: Vec<String> = current
                .into_iter()
                .filter(|h| !remove.contains(h))
                .collect();
            report(&client.set_allowed_hosts(id, &next).await?, *json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn allowed(network: &NetworkView) -> anyhow::Result<Vec<String>> {
    if network.network_mode != "allowlist" {
        bail!(
            "the sandbox's network_mode is {}; allowed_hosts applies only to allowlist sandboxes",
            network.network_mode
        );
    }
    Ok(network.allowed_hosts.clone())
}

fn report(result: &AllowedHosts, json: bool) {
    if json {
        output::json(result);
    } else {
        eprintln!("allowed hosts now: {}", hosts(&result.allowed_hosts));
    }
}

fn hosts(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

fn host_rows(hosts: &[LearnedHost]) -> Vec<Vec<String>> {
    hosts
        .iter()
        .map(|host| {
            vec![
                host.host.clone(),
                output::yes_no(host.allowed),
                host.attempts.to_string(),
            ]
        })
        .collect()
}

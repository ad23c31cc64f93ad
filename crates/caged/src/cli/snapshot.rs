//! `caged snapshot create | ls | rm | restore | fork | download`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{Cli, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Capture a sandbox's filesystem.
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a sandbox's snapshots.
    Ls {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot.
    Rm { snapshot: String },
    /// Replace a sandbox's filesystem with a snapshot's (its processes restart).
    Restore {
        snapshot: String,
        #[arg(long)]
        into: String,
    },
    /// Create a new sandbox from a snapshot.
    Fork {
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Save a snapshot as a .tar.gz.
    Download {
        snapshot: String,
        /// Output file (default: SNAPSHOT.tar.gz).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub async fn run(cli: &Cli, command: &Command) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match command {
        Command::Create { id, name, json } => {
            eprint!("snapshotting {id}… ");
            let snapshot = client.create_snapshot(id, name.as_deref()).await?;
            eprintln!(
                "{} entries, {} compressed",
                snapshot.entries,
                output::megabytes(snapshot.size_bytes)
            );
            if *json {
                output::json(&snapshot);
            } else {
                println!("{}", snapshot.id);
            }
        }
        Command::Ls { id, json } => {
            let snapshots = client.snapshots(id).await?;
            if *json {
                output::json(&snapshots);
            } else {
                let rows: Vec<Vec<String>> = snapshots
                    .iter()
                    .map(|snapshot| {
                        vec![
                            snapshot.id.clone(),
                            output::cell(snapshot.name.as_deref()),
                            snapshot.kind.clone(),
                            output::megabytes(snapshot.size_bytes),
                            snapshot.entries.to_string(),
                            snapshot.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "KIND", "SIZE", "ENTRIES", "CREATED"], &rows);
            }
        }
        Command::Rm { snapshot } => {
            client.delete_snapshot(snapshot).await?;
            eprintln!("snapshot {snapshot} deleted");
        }
        Command::Restore { snapshot, into } => {
            eprint!("restoring {snapshot} into {into}… ");
            let sandbox = client.restore(into, snapshot).await?;
            eprintln!(
                "done; sandbox {} is {} (its processes were restarted)",
                sandbox.id, sandbox.state
            );
        }
        Command::Fork { snapshot, json } => {
            let sandbox = client.fork(snapshot, &()).await?;
            if *json {
                output::json(&client.sandbox_detail(&sandbox.id).await?);
            } else {
                println!("{}", sandbox.id);
                eprintln!(
                    "forked {snapshot} into sandbox {} ({})",
                    sandbox.id, sandbox.state
                );
            }
        }
        Command::Download { snapshot, output } => {
            let path = output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{snapshot}.tar.gz")));
            let response = client.download_snapshot(snapshot).await?;
            let expected: Option<u64> = response
                .headers()
                .get("x-caged-raw-bytes")
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.parse().ok());
            let mut file = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut body = response.bytes_stream();
            let mut written = 0u64;
            let show = crate::terminal::is_terminal(2);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("download interrupted")?;
                file.write_all(&chunk)
                    .await
                    .with_context(|| format!("writing {}", path.display()))?;
                written += chunk.len() as u64;
                if show {
                    let of = expected
                        .map(|raw| format!(" (of {:.1} MB uncompressed)", raw as f64 / 1e6))
                        .unwrap_or_default();
                    eprint!(
                        "\rdownloading {snapshot}: {:.1} MB{of}",
                        written as f64 / 1e6
                    );
                }
            }
            file.flush().await?;
            if show {
                eprintln!();
            }
            eprintln!("saved {} ({:.1} MB)", path.display(), written as f64 / 1e6);
        }
    }
    Ok(ExitCode::SUCCESS)
}

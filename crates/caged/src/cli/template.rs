//! `caged template ls | import NAME ROOTFS.tar`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::{Cli, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List templates.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Import a root filesystem tarball (plain or .tar.gz) as template NAME.
    Import { name: String, rootfs: PathBuf },
}

pub async fn run(cli: &Cli, command: &Command) -> anyhow::Result<ExitCode> {
    let client = cli.client();
    match command {
        Command::Ls { json } => {
            let value = client.templates().await?;
            if *json {
                output::json(&value["templates"]);
            } else {
                let rows: Vec<Vec<String>> = value["templates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|template| {
                        vec![
                            template["name"].as_str().unwrap_or_default().to_string(),
                            format!(
                                "{:.1} MB",
                                template["size_bytes"].as_f64().unwrap_or(0.0) / 1e6
                            ),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "SIZE"], &rows);
            }
        }
        Command::Import { name, rootfs } => {
            let file = tokio::fs::File::open(rootfs)
                .await
                .with_context(|| format!("cannot open {}", rootfs.display()))?;
            let size = file.metadata().await.map(|meta| meta.len()).unwrap_or(0);
            eprintln!(
                "importing {} ({:.1} MB) as template {name}…",
                rootfs.display(),
                size as f64 / 1e6
            );
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let template = client.import_template(name, body).await?;
            eprintln!(
                "template {} imported ({:.1} MB)",
                name,
                template["size_bytes"].as_f64().unwrap_or(0.0) / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

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
            let templates = client.templates().await?;
            if *json {
                output::json(&templates);
            } else {
                let rows: Vec<Vec<String>> = templates
                    .into_iter()
                    .map(|template| vec![template.name, output::megabytes(template.size_bytes)])
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
                "template {name} imported ({})",
                output::megabytes(template.size_bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

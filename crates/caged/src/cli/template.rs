//! `caged template ls | inspect NAME | import NAME ROOTFS.tar | rm NAME`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use caged_client::wire;

use crate::{Cli, output};

#[derive(clap::Subcommand)]
pub enum Command {
    /// List templates: the catalogue this installation has.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// One template: what it was built from, its tools' versions, its size.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Import a root filesystem tarball (plain or .tar.gz) as template NAME.
    Import { name: String, rootfs: PathBuf },
    /// Remove template NAME (refused while a sandbox made from it is not destroyed).
    Rm { name: String },
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
                    .iter()
                    .map(|template| {
                        vec![
                            template.name.clone(),
                            output::megabytes(template.size_bytes),
                            tools(template),
                            output::cell(template.description.as_deref()),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "SIZE", "TOOLS", "DESCRIPTION"], &rows);
            }
        }
        Command::Inspect { name, json } => {
            let template = client.template(name).await?;
            if *json {
                output::json(&template);
                return Ok(ExitCode::SUCCESS);
            }
            for (key, value) in [
                ("name", template.name.clone()),
                ("description", output::cell(template.description.as_deref())),
                ("built_from", output::cell(template.built_from.as_deref())),
                ("tools", tools(&template)),
                ("size", output::megabytes(template.size_bytes)),
                (
                    "built_at",
                    output::cell(template.built_at.map(unix_time).as_deref()),
                ),
                ("imported_at", unix_time(template.created_at)),
                ("recipe", output::cell(template.recipe.as_deref())),
                ("image_id", template.image_id.clone()),
            ] {
                println!("{key:<12} {value}");
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
        Command::Rm { name } => {
            client.remove_template(name).await?;
            eprintln!("template {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `node 20.19.2, npm 9.2.0`, or `-`.
fn tools(template: &wire::Template) -> String {
    if template.tools.is_empty() {
        return "-".into();
    }
    template
        .tools
        .iter()
        .map(|(tool, version)| format!("{tool} {version}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_time(seconds: i64) -> String {
    caged_domain::time::rfc3339_from_ms(seconds.saturating_mul(1000))
}

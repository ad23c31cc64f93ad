//! `caged template ls | inspect NAME | import NAME ROOTFS.tar | build NAME [-f F] [CONTEXT] |
//! rm NAME`.

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
    /// Build template NAME from a Dockerfile whose FROM names a template (`FROM base`): the
    /// context folder goes to the server, steps run without network.
    Build {
        name: String,
        /// The Dockerfile (default: CONTEXT/Dockerfile); it must be inside the context.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The build context (default: the current folder).
        #[arg(default_value = ".")]
        context: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
        Command::Build {
            name,
            file,
            context,
            json,
        } => return build(&client, name, file.as_deref(), context, *json).await,
        Command::Rm { name } => {
            client.remove_template(name).await?;
            eprintln!("template {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends the context, prints the build's output as it comes; fails naming the failed step.
async fn build(
    client: &caged_client::Client,
    name: &str,
    file: Option<&std::path::Path>,
    context: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use futures_util::StreamExt;
    let context = context
        .canonicalize()
        .with_context(|| format!("cannot open the build context {}", context.display()))?;
    let dockerfile = match file {
        None => "Dockerfile".to_string(),
        Some(file) => {
            let file = file
                .canonicalize()
                .with_context(|| format!("cannot open {}", file.display()))?;
            file.strip_prefix(&context)
                .map(|relative| relative.display().to_string())
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{} is not inside the build context {}",
                        file.display(),
                        context.display()
                    )
                })?
        }
    };
    let source = context.clone();
    let tar = tokio::task::spawn_blocking(move || super::cp::tar_directory(&source)).await??;
    eprintln!(
        "sending the build context {} ({:.1} MB)…",
        context.display(),
        tar.len() as f64 / 1e6
    );
    let response = client.build_template(name, &dockerfile, tar).await?;
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    let mut outcome: Option<serde_json::Value> = None;
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("the build's answer was cut off")?);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(progress) = value["progress"].as_str() {
                eprintln!("{progress}");
            } else {
                outcome = Some(value);
            }
        }
    }
    let Some(outcome) = outcome else {
        anyhow::bail!("the server ended the build without saying how it went");
    };
    if let Some(error) = outcome.get("error") {
        anyhow::bail!(
            "{} ({})",
            error["message"].as_str().unwrap_or("the build failed"),
            error["code"].as_str().unwrap_or("error")
        );
    }
    let template: wire::Template = serde_json::from_value(outcome["template"].clone())
        .context("the build's answer holds no template")?;
    if json {
        output::json(&template);
    } else {
        eprintln!(
            "template {name} built ({})",
            output::megabytes(template.size_bytes)
        );
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

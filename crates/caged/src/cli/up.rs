//! `caged up [DIR]`: a sandbox from DIR/.caged.yaml, with DIR copied to /workspace and
//! `init_script` run there, showing progress along the way.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use caged_domain::SandboxConfig;

use crate::Cli;

#[derive(clap::Args)]
pub struct Args {
    /// Project folder (default: the current one).
    #[arg(default_value = ".")]
    dir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", args.dir.display()))?;
    let config_path = dir.join(".caged.yaml");
    let config = if config_path.exists() {
        super::create::load_config(&config_path)?
    } else {
        eprintln!("no .caged.yaml in {}; using defaults", dir.display());
        SandboxConfig::default()
    };
    let client = cli.client();
    let started = Instant::now();
    eprint!(
        "creating sandbox (template {}, {})… ",
        config.template,
        config.isolation.as_str()
    );
    let mut body = serde_json::to_value(&config)?;
    body["defer_init"] = true.into();
    let sandbox = client.create_sandbox(&body).await?;
    eprintln!(
        "{} {} in {:.1}s",
        sandbox.id,
        sandbox.state,
        started.elapsed().as_secs_f64()
    );

    let copy_started = Instant::now();
    let source = dir.clone();
    let tar = tokio::task::spawn_blocking(move || super::cp::tar_directory(&source)).await??;
    eprint!(
        "copying {} ({:.1} MB) to /workspace… ",
        dir.display(),
        tar.len() as f64 / 1e6
    );
    let copied = client.write_tar(&sandbox.id, "/workspace", tar).await?;
    eprintln!(
        "{} entries in {:.1}s",
        copied.entries(),
        copy_started.elapsed().as_secs_f64()
    );

    let mut exit = ExitCode::SUCCESS;
    if config.init_script.is_some() {
        eprintln!("running init_script in /workspace…");
        client.start_init(&sandbox.id).await?;
        let init = loop {
            // `init` is the server's report of the script: null until it started.
            if let Some(init) = client.sandbox(&sandbox.id).await?.init
                && init["status"] != "running"
            {
                break init;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if let Some(stdout) = init["stdout"].as_str() {
            eprint!("{stdout}");
        }
        if let Some(stderr) = init["stderr"].as_str() {
            eprint!("{stderr}");
        }
        if init["status"] == "succeeded" {
            eprintln!(
                "init_script succeeded in {:.1}s",
                init["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
            );
        } else {
            eprintln!(
                "init_script FAILED (exit {}{}); sandbox {} is still running: inspect it with `caged shell {}`",
                init["exit_code"],
                init["error"]
                    .as_str()
                    .map(|err| format!(", {err}"))
                    .unwrap_or_default(),
                sandbox.id,
                sandbox.id
            );
            exit = ExitCode::FAILURE;
        }
    }
    if args.json {
        crate::output::json(&client.sandbox_detail(&sandbox.id).await?);
    } else {
        println!("{}", sandbox.id);
    }
    Ok(exit)
}

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

/// What an init script's output shows when TLS fails because a proxy's CA is not trusted:
/// OpenSSL's, Node's, Python's and curl's words for it.
const TLS_FAILURES: &[&str] = &[
    "self-signed certificate",
    "self signed certificate",
    "unable to get local issuer certificate",
    "UNABLE_TO_GET_ISSUER_CERT",
    "SELF_SIGNED_CERT_IN_CHAIN",
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "SSL certificate problem",
];

/// What an init script's output shows when it needed root.
const PERMISSION_FAILURES: &[&str] = &[
    "Permission denied",
    "are you root?",
    "Operation not permitted",
    "EACCES",
];

/// Why a failed init script may have failed, as far as the platform can tell: hosts the
/// allowlist refused, and TLS that a proxy's unknown CA broke. Best effort: a question that
/// fails adds nothing.
async fn failure_hints(client: &caged_client::Client, id: &str, output: &str) -> Vec<String> {
    let mut hints = Vec::new();
    if let Ok(network) = client.network(id).await {
        let refused: Vec<_> = network.hosts.iter().filter(|host| !host.allowed).collect();
        if !refused.is_empty() {
            let names: Vec<&str> = refused.iter().map(|host| host.host.as_str()).collect();
            hints.push(format!(
                "the allowlist refused {} (network_mode: {}); allow {} for this sandbox with `caged network allow {id} {}`, \
                 or for every sandbox of the project by adding to .caged.yaml's allowed_hosts:\n{}",
                names.join(", "),
                network.network_mode,
                if names.len() == 1 { "it" } else { "them" },
                names.join(" "),
                names
                    .iter()
                    .map(|name| format!("  - {name}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    let runs_as = client
        .sandbox(id)
        .await
        .ok()
        .and_then(|sandbox| sandbox.user);
    if runs_as.as_deref().is_some_and(|user| user != "root")
        && PERMISSION_FAILURES
            .iter()
            .any(|needle| output.contains(needle))
    {
        hints.push(format!(
            "the init script runs as {}, not root (this version's default); for steps that need \
             root (apt-get install, writing under /usr or /etc) add `user: root` to .caged.yaml",
            runs_as.unwrap_or_default()
        ));
    }
    if TLS_FAILURES.iter().any(|needle| output.contains(needle)) {
        let trusted = client
            .system()
            .await
            .ok()
            .and_then(|system| system.sandbox_ca);
        hints.push(match trusted {
            None => "TLS certificate verification failed in the sandbox. If this network inspects TLS \
                     (a proxy or company CA), start the server with --sandbox-ca FILE (the CA's PEM \
                     certificates; scripts/up passes this host's own extra CAs) so sandboxes trust it"
                .to_string(),
            Some(ca) => format!(
                "TLS certificate verification failed in the sandbox, which trusts the system's CAs \
                 and the {} certificate(s) of --sandbox-ca {}: the failing certificate is issued \
                 by none of them",
                ca.certificates, ca.file
            ),
        });
    }
    hints
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
            let output = format!(
                "{}{}",
                init["stdout"].as_str().unwrap_or_default(),
                init["stderr"].as_str().unwrap_or_default()
            );
            for hint in failure_hints(&client, &sandbox.id, &output).await {
                eprintln!("{hint}");
            }
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

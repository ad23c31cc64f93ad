//! `caged exec ID -- CMD...`: output streams as it comes; the exit status is the command's.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use caged_client::{ExecEvent, ExecStream};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cli;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Environment variable for the command, K=V; repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    cwd: Option<String>,
    /// Kill the command (and all it started) after this many seconds; exit status 124.
    #[arg(long)]
    timeout: Option<f64>,
    /// Pass this process's stdin to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run as this user (`root`, or an account of the template) instead of the sandbox's own.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// Exit status for a timed-out command, as timeout(1) uses.
pub const TIMEOUT_STATUS: u8 = 124;

pub fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair:?}: expected KEY=VALUE")
        };
        env.insert(key.to_string(), value.to_string());
    }
    Ok(env)
}

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let request = json!({
        "cmd": args.cmd,
        "env": parse_env(&args.env)?,
        "cwd": args.cwd,
        "timeout": args.timeout,
        "stdin": args.interactive,
        "user": args.user,
    });
    let stream = cli.client().exec_stream(&args.id, &request).await?;
    pump(stream, args.interactive, args.timeout).await
}

/// Copies output to this process's stdout/stderr (and stdin in), returns the command's status.
pub async fn pump(
    stream: ExecStream,
    forward_stdin: bool,
    timeout: Option<f64>,
) -> anyhow::Result<ExitCode> {
    let ExecStream {
        mut sink,
        mut output,
    } = stream;
    let stdin_task = forward_stdin.then(|| {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        let _ = sink.eof().await;
                        break;
                    }
                    Ok(n) => {
                        if sink.stdin(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            sink
        })
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut status = None;
    while let Some(event) = output.next_event().await {
        match event? {
            ExecEvent::Stdout(bytes) => {
                stdout.write_all(&bytes).await.context("writing stdout")?;
                stdout.flush().await.ok();
            }
            ExecEvent::Stderr(bytes) => {
                stderr.write_all(&bytes).await.context("writing stderr")?;
                stderr.flush().await.ok();
            }
            ExecEvent::Exit {
                exit_code,
                timed_out,
            } => {
                status = Some((exit_code, timed_out));
                break;
            }
        }
    }
    if let Some(task) = stdin_task {
        task.abort();
    }
    match status {
        Some((_, true)) => {
            eprintln!(
                "caged: the command timed out after {}s and was killed",
                timeout.unwrap_or_default()
            );
            Ok(ExitCode::from(TIMEOUT_STATUS))
        }
        Some((Some(code), false)) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Some((None, false)) => bail!("the command's exit status is unknown"),
        None => bail!("the connection to the server ended before the command did"),
    }
}

//! `caged shell ID`: an interactive shell on a PTY inside the sandbox, with window resizes.

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::Context;
use caged_client::{ExecEvent, ExecStream};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use crate::{Cli, terminal};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Run as this user (`root`, or an account of the template) instead of the sandbox's own.
    #[arg(long, short = 'u')]
    user: Option<String>,
}

/// Prefers bash when the template has it.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

pub async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), SHELL.to_string()];
    interactive(cli, &args.id, cmd, None, args.user.as_deref()).await
}

/// Runs `cmd` on a PTY in the sandbox, wired to this terminal, as one session (of `agent` when
/// given); exits with the command's status.
pub async fn interactive(
    cli: &Cli,
    id: &str,
    cmd: Vec<String>,
    agent: Option<&str>,
    user: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let stdin_fd = std::io::stdin().as_raw_fd();
    let (cols, rows) = terminal::size(std::io::stdout().as_raw_fd()).unwrap_or((80, 24));
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let mut request = json!({
        "cmd": cmd,
        "env": { "TERM": term },
        "tty": true,
        "cols": cols,
        "rows": rows,
    });
    if let Some(agent) = agent {
        request["agent"] = json!(agent);
    }
    if let Some(user) = user {
        request["user"] = json!(user);
    }
    let ExecStream {
        mut sink,
        mut output,
    } = cli.client().exec_stream(id, &request).await?;
    let _raw = if terminal::is_terminal(stdin_fd) {
        Some(terminal::RawMode::enable(stdin_fd).context("cannot put the terminal in raw mode")?)
    } else {
        None
    };
    let mut winch =
        signal(SignalKind::window_change()).context("cannot watch window size changes")?;
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buffer = vec![0u8; 8192];
        loop {
            tokio::select! {
                read = stdin.read(&mut buffer) => match read {
                    // On a terminal, end of input is a ^D the program reads, not a closed
                    // PTY (which would hang it up and lose what it still writes).
                    Ok(0) | Err(_) => break,
                    Ok(n) => if sink.stdin(&buffer[..n]).await.is_err() { break },
                },
                _ = winch.recv() => {
                    if let Some((cols, rows)) = terminal::size(std::io::stdout().as_raw_fd()) {
                        let _ = sink.resize(cols, rows).await;
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut code = 0;
    while let Some(event) = output.next_event().await {
        match event? {
            ExecEvent::Stdout(bytes) | ExecEvent::Stderr(bytes) => {
                stdout.write_all(&bytes).await?;
                stdout.flush().await?;
            }
            ExecEvent::Exit { exit_code, .. } => {
                code = exit_code.unwrap_or(1);
                break;
            }
        }
    }
    input.abort();
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

//! A command run to completion with its output kept (up to a limit per stream), killed with
//! everything it started if it outlives its timeout: for `POST /exec`, `init_script` and the
//! platform's own commands in a sandbox.

use std::time::{Duration, Instant};

use caged_node::Node;
use caged_runtime::{ExecOutput, ExecSpec};
use futures_util::StreamExt;

use crate::error::Result;

/// A command run to completion.
pub(crate) struct Collected {
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// Runs a command to completion, keeping up to `limit` bytes of each stream; after `timeout`
/// the command and everything it started are killed.
pub(crate) async fn collect(
    node: &dyn Node,
    handle: &str,
    spec: &ExecSpec,
    limit: usize,
    timeout: Option<Duration>,
) -> Result<Collected> {
    let started = Instant::now();
    let exec = node.exec(handle, spec).await?;
    drop(exec.input);
    let mut output = exec.output;
    let mut collected = Collected {
        exit_code: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
        timed_out: false,
        duration_ms: 0,
    };
    let mut deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    loop {
        let next = match deadline {
            None => output.next().await,
            Some(at) => match tokio::time::timeout_at(at, output.next()).await {
                Ok(next) => next,
                // Killed already and the output still has not ended: stop waiting for it.
                Err(_) if collected.timed_out => None,
                Err(_) => {
                    collected.timed_out = true;
                    exec.control.kill().await?;
                    // What it wrote before dying still arrives; a short grace period collects it.
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    continue;
                }
            },
        };
        let Some(chunk) = next else { break };
        let (buffer, bytes) = match chunk? {
            ExecOutput::Stdout(bytes) => (&mut collected.stdout, bytes),
            ExecOutput::Stderr(bytes) => (&mut collected.stderr, bytes),
        };
        let room = limit.saturating_sub(buffer.len());
        collected.truncated |= bytes.len() > room;
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    collected.exit_code = exec.control.wait().await?;
    collected.duration_ms = started.elapsed().as_millis() as u64;
    Ok(collected)
}

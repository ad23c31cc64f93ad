//! Running commands in a sandbox, whatever door the request came through: to completion, with
//! the output collected ([`run`], [`collect`]), or interactively over a channel that lasts
//! ([`Interactive`]), which is a session: it opens when the command runs and ends with the
//! channel, however that ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caged_domain::{EventKind, SandboxId};
use caged_runtime::{ExecControl, ExecOutput, ExecSpec};
use caged_store::SandboxRecord;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::collect::{Collected, collect};
use crate::error::{Error, Result};
use crate::sandboxes;
use crate::sessions::Session;
use crate::state::AppState;
use caged_activity::Busy;

/// A command to run, as every door asks for it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecRequest {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds; the command and everything it started are killed after it.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
    /// The agent this command is (`claude-code`, `aider`, ...); interactive only. Without it the
    /// session's agent type is inferred from the program's name.
    #[serde(default)]
    pub agent: Option<String>,
    /// Who the command runs as (`root`, or an account of the template); the sandbox's own
    /// `user` without it.
    #[serde(default)]
    pub user: Option<String>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid("invalid_exec", message)
}

impl ExecRequest {
    pub(crate) fn parse(value: serde_json::Value) -> Result<ExecRequest> {
        let request: ExecRequest =
            serde_json::from_value(value).map_err(|err| invalid(format!("exec request: {err}")))?;
        use caged_domain::config::{MAX_EXEC_ARGS_BYTES, check_argv, check_env};
        let argv_bytes = check_argv(&request.cmd).map_err(invalid)?;
        if argv_bytes > MAX_EXEC_ARGS_BYTES {
            return Err(invalid(format!(
                "cmd: its arguments take {argv_bytes} bytes; at most {MAX_EXEC_ARGS_BYTES}"
            )));
        }
        let left = MAX_EXEC_ARGS_BYTES.saturating_sub(argv_bytes);
        check_env(&request.env, left).map_err(|(key, msg)| {
            invalid(format!("env.{key}: {msg} (with the command's arguments)"))
        })?;
        if let Some(timeout) = request.timeout
            && !(timeout.is_finite() && timeout > 0.0 && timeout <= 7.0 * 86_400.0)
        {
            return Err(invalid("timeout: must be between 0 and 604800 seconds"));
        }
        if let Some(agent) = &request.agent {
            crate::sessions::check_agent_type(agent)?;
        }
        if let Some(user) = &request.user {
            caged_domain::config::check_user_name("user", user)
                .map_err(|err| invalid(err.to_string()))?;
        }
        if let Some(cwd) = &request.cwd {
            crate::paths::sandbox_path(cwd).map_err(|err| invalid(format!("cwd: {err}")))?;
        }
        Ok(request)
    }

    fn spec(&self, record: &SandboxRecord) -> ExecSpec {
        ExecSpec {
            cmd: self.cmd.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            tty: self.tty,
            stdin: self.stdin || self.tty,
            isolation: record.config.isolation,
            user: sandboxes::run_as(self.user.as_deref().or(record.config.user.as_deref())),
        }
    }
}

/// Output kept per stream by a command run to completion; use an interactive exec for more.
const COLLECT_LIMIT: usize = 16 << 20;

/// Runs a command to completion for a caller (`POST /exec`), as activity of the sandbox.
pub(crate) async fn run(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    request: ExecRequest,
) -> Result<Collected> {
    if request.agent.is_some() {
        return Err(invalid(
            "agent: sessions need a connection that lasts; use the WebSocket exec",
        ));
    }
    let (record, _busy) = sandboxes::active(state, account_id, id, "exec").await?;
    if let Some(user) = &request.user {
        sandboxes::check_user(state, &record, user).await?;
    }
    let timeout = request.timeout.map(Duration::from_secs_f64);
    let spec = request.spec(&record);
    let handle = sandboxes::container_of(&record)?;
    let collected = collect(state.node.as_ref(), handle, &spec, COLLECT_LIMIT, timeout).await?;
    let payload = json!({ "cmd": request.cmd, "exit_code": collected.exit_code, "timed_out": collected.timed_out,
                          "duration_ms": collected.duration_ms });
    sandboxes::record_activity(state, &record, EventKind::Exec, payload).await;
    Ok(collected)
}

/// What the client side of an interactive command sends.
pub(crate) enum Input {
    Stdin(Bytes),
    /// No more stdin.
    Eof,
    Resize {
        cols: u16,
        rows: u16,
    },
    /// Something the channel carries that is not for the command.
    Ignored,
    /// The client went away.
    Gone,
}

/// The client side of an interactive command, as a door carries it.
pub(crate) trait Channel: Send {
    fn next(&mut self) -> impl Future<Output = Input> + Send;
    /// Passes output on; an error means the client is gone.
    fn send(&mut self, output: ExecOutput) -> impl Future<Output = Result<(), ()>> + Send;
}

/// How an interactive command ended.
pub(crate) enum Ended {
    Exited {
        exit_code: Option<i64>,
        timed_out: bool,
    },
    /// The client went away; the command was killed.
    Disconnected,
}

/// A command running in a session.
pub(crate) struct Interactive {
    state: Arc<AppState>,
    record: SandboxRecord,
    request: ExecRequest,
    session: Session,
    control: Arc<dyn ExecControl>,
    output: futures_util::stream::BoxStream<'static, caged_runtime::Result<ExecOutput>>,
    input: Option<std::pin::Pin<Box<dyn AsyncWrite + Send>>>,
    started: Instant,
    _busy: Busy,
}

impl Interactive {
    /// Starts the command and opens its session.
    pub(crate) async fn start(
        state: &Arc<AppState>,
        account_id: &str,
        id: SandboxId,
        request: ExecRequest,
    ) -> Result<Interactive> {
        let (record, busy) = sandboxes::active(state, account_id, id, "exec").await?;
        if let Some(user) = &request.user {
            sandboxes::check_user(state, &record, user).await?;
        }
        let started = Instant::now();
        let started_at_ms = caged_domain::time::now_ms();
        let handle = sandboxes::container_of(&record)?.to_string();
        // The session's id is drawn first: its LLM calls carry it in their gateway key.
        let session_id = crate::sessions::new_id();
        let mut spec = request.spec(&record);
        for (name, value) in state.node.session_env(&record, &session_id) {
            spec.env.entry(name).or_insert(value);
        }
        let exec = state.node.exec(&handle, &spec).await?;
        if let (true, Some(cols), Some(rows)) = (request.tty, request.cols, request.rows) {
            let _ = exec.control.resize(cols, rows).await;
        }
        // The command runs: the agent is connected, its session opens.
        let (agent_type, channel) = match &request.agent {
            Some(agent) => (agent.as_str(), "agent"),
            None => (
                crate::sessions::infer_agent(&request.cmd, request.tty),
                "exec",
            ),
        };
        let session = match crate::sessions::open(
            state,
            session_id,
            &record,
            agent_type,
            channel,
            &request.cmd,
            started_at_ms,
        )
        .await
        {
            Ok(session) => session,
            Err(err) => {
                let _ = exec.control.kill().await;
                return Err(err);
            }
        };
        // What the command's processes do is the session's (the observer holds it until told);
        // asked aside, so the command's output is not kept waiting for the engine's answer.
        {
            let (state, control, session) =
                (state.clone(), exec.control.clone(), session.id.clone());
            tokio::spawn(async move {
                if let Ok(Some(pid)) = control.host_pid().await {
                    state.node.bind(pid, Some(session));
                }
            });
        }
        // Without stdin, the command's is closed at once.
        let input = (request.stdin || request.tty).then_some(exec.input);
        Ok(Interactive {
            state: state.clone(),
            record,
            request,
            session,
            control: exec.control,
            output: exec.output,
            input,
            started,
            _busy: busy,
        })
    }

    /// Carries the command's streams over `channel` until it ends, the client goes away, or
    /// its timeout kills it; then records it and ends the session.
    pub(crate) async fn drive<C: Channel>(mut self, channel: &mut C) -> Result<Ended> {
        let deadline = self
            .request
            .timeout
            .map(|seconds| tokio::time::Instant::now() + Duration::from_secs_f64(seconds));
        let mut timed_out = false;
        loop {
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                chunk = self.output.next() => match chunk {
                    Some(Ok(output)) => {
                        if channel.send(output).await.is_err() {
                            return Err(Error::Internal("client went away".into()));
                        }
                    }
                    Some(Err(err)) => return Err(err.into()),
                    None => break,
                },
                input = channel.next() => match input {
                    Input::Stdin(data) => {
                        if let Some(writer) = self.input.as_mut()
                            && writer.write_all(&data).await.is_err()
                        {
                            self.input = None;
                        }
                    }
                    Input::Resize { cols, rows } => {
                        let _ = self.control.resize(cols, rows).await;
                    }
                    Input::Eof => {
                        if let Some(mut writer) = self.input.take() {
                            let _ = writer.shutdown().await;
                        }
                    }
                    Input::Ignored => {}
                    // Stop the command rather than leave it running unseen.
                    Input::Gone => {
                        let _ = self.control.kill().await;
                        let payload = json!({ "cmd": self.request.cmd, "exit_code": null, "disconnected": true,
                                              "duration_ms": self.started.elapsed().as_millis() as u64 });
                        record_exec(&self.state, &self.record, &self.session, payload).await;
                        self.session.end("the client disconnected").await;
                        return Ok(Ended::Disconnected);
                    }
                },
                () = sleep => {
                    timed_out = true;
                    if let Err(err) = self.control.kill().await {
                        tracing::warn!(sandbox = %self.record.id, "could not kill timed-out command: {err}");
                    }
                    // Pass on what the command wrote before it died.
                    while let Ok(Some(Ok(output))) =
                        tokio::time::timeout(Duration::from_secs(2), self.output.next()).await
                    {
                        if channel.send(output).await.is_err() {
                            return Err(Error::Internal("client went away".into()));
                        }
                    }
                    break;
                }
            }
        }
        let exit_code = self.control.wait().await.ok().flatten();
        let payload = json!({ "cmd": self.request.cmd, "exit_code": exit_code, "timed_out": timed_out, "tty": self.request.tty,
                              "duration_ms": self.started.elapsed().as_millis() as u64 });
        record_exec(&self.state, &self.record, &self.session, payload).await;
        let reason = match (timed_out, exit_code) {
            (true, _) => "timed out".to_string(),
            (false, Some(code)) => format!("exited (status {code})"),
            (false, None) => "ended".to_string(),
        };
        self.session.end(&reason).await;
        Ok(Ended::Exited {
            exit_code,
            timed_out,
        })
    }
}

/// An interactive command's `exec` event, in its session.
async fn record_exec(
    state: &AppState,
    record: &SandboxRecord,
    session: &Session,
    payload: serde_json::Value,
) {
    sandboxes::record_activity_in(
        state,
        record,
        EventKind::Exec,
        payload,
        Some(session.id.clone()),
    )
    .await;
}

//! Running commands: `POST /exec` runs to completion and returns the output; `GET /exec/ws`
//! streams it (and stdin, and terminal resizes) over a WebSocket.
//!
//! WebSocket protocol: the client's first message is a JSON text frame with the request (as for
//! `POST /exec`, plus `tty`, `stdin`, `cols`, `rows`). Then binary frames carry data, their first
//! byte naming the stream (0 stdin, 1 stdout, 2 stderr); text frames carry control messages:
//! `{"type":"resize","cols":N,"rows":N}` and `{"type":"eof"}` from the client, and
//! `{"type":"exit","exit_code":N,"timed_out":bool}` from the server, which then closes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use caged_domain::SandboxId;
use caged_runtime::{ExecOutput, ExecSpec};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::ApiError;
use super::sandboxes::{json_body, parse_id};
use crate::AppState;
use crate::auth::Caller;
use crate::sandboxes::{self, container_of};

/// Output kept per stream by the non-streaming form; use the WebSocket for more.
const COLLECT_LIMIT: usize = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecRequest {
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    /// Seconds; the command and everything it started are killed after it.
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
    /// The agent this command is (`claude-code`, `aider`, ...); streaming only. Without it the
    /// session's agent type is inferred from the program's name.
    #[serde(default)]
    agent: Option<String>,
}

impl ExecRequest {
    fn parse(value: Value) -> Result<ExecRequest, ApiError> {
        let request: ExecRequest = serde_json::from_value(value)
            .map_err(|err| ApiError::bad_request("invalid_exec", format!("exec request: {err}")))?;
        if request.cmd.is_empty() || request.cmd[0].is_empty() {
            return Err(ApiError::bad_request(
                "invalid_exec",
                "cmd: must name a program (an argv array, not a shell string)",
            ));
        }
        if request.cmd.iter().any(|arg| arg.contains('\0')) {
            return Err(ApiError::bad_request(
                "invalid_exec",
                "cmd: arguments may not contain NUL bytes",
            ));
        }
        if let Some(timeout) = request.timeout
            && !(timeout.is_finite() && timeout > 0.0 && timeout <= 7.0 * 86_400.0)
        {
            return Err(ApiError::bad_request(
                "invalid_exec",
                "timeout: must be between 0 and 604800 seconds",
            ));
        }
        for key in request.env.keys() {
            if !caged_domain::config::is_env_name(key) {
                return Err(ApiError::bad_request(
                    "invalid_exec",
                    format!("env: {key:?} is not a valid variable name"),
                ));
            }
        }
        if let Some(agent) = &request.agent {
            crate::sessions::check_agent_type(agent)?;
        }
        if let Some(cwd) = &request.cwd {
            crate::paths::sandbox_path(cwd)
                .map_err(|err| ApiError::bad_request("invalid_exec", format!("cwd: {err}")))?;
        }
        Ok(request)
    }

    fn spec(&self, isolation: caged_domain::Isolation) -> ExecSpec {
        ExecSpec {
            cmd: self.cmd.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            tty: self.tty,
            stdin: self.stdin || self.tty,
            isolation,
        }
    }
}

pub(crate) async fn run(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let request = ExecRequest::parse(json_body(&body)?)?;
    if request.agent.is_some() {
        return Err(ApiError::bad_request(
            "invalid_exec",
            "agent: sessions need a connection that lasts; use the WebSocket exec",
        ));
    }
    let (record, _busy) = sandboxes::active(&state, &account.id, id, "exec").await?;
    let started = Instant::now();
    let timeout = request.timeout.map(Duration::from_secs_f64);
    let collected = sandboxes::exec_collect(
        &state,
        &record,
        &request.spec(record.config.isolation),
        COLLECT_LIMIT,
        timeout,
    )
    .await?;
    let duration_ms = started.elapsed().as_millis() as u64;
    let payload = json!({ "cmd": request.cmd, "exit_code": collected.exit_code, "timed_out": collected.timed_out,
                          "duration_ms": duration_ms });
    sandboxes::record_activity(&state, &record, "exec", payload).await;
    Ok(Json(json!({
        "exit_code": collected.exit_code,
        "stdout": String::from_utf8_lossy(&collected.stdout),
        "stderr": String::from_utf8_lossy(&collected.stderr),
        "truncated": collected.truncated,
        "timed_out": collected.timed_out,
        "duration_ms": duration_ms,
    })))
}

pub(crate) async fn websocket(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // Check before upgrading, so a bad id or state is an ordinary HTTP error.
    let record = sandboxes::get(&state, &account.id, id).await?;
    if record.state == caged_domain::SandboxState::Destroyed {
        return Err(ApiError::conflict(
            "illegal_state",
            format!("sandbox {id} is destroyed"),
        ));
    }
    Ok(upgrade.on_upgrade(move |socket| async move {
        if let Err(err) = stream_exec(state, account.id, id, socket).await {
            tracing::debug!(sandbox = %id, "exec stream ended: {}", err.message);
        }
    }))
}

async fn stream_exec(
    state: Arc<AppState>,
    account_id: String,
    id: SandboxId,
    mut socket: WebSocket,
) -> Result<(), ApiError> {
    let first = match socket.recv().await {
        Some(Ok(Message::Text(text))) => text,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_exec",
                "the first message must be the JSON exec request",
            ));
        }
    };
    let parsed = serde_json::from_str(&first)
        .map_err(|err| {
            ApiError::bad_request("invalid_exec", format!("exec request is not JSON: {err}"))
        })
        .and_then(ExecRequest::parse);
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return send_error(socket, err).await,
    };
    let (record, _busy) = match sandboxes::active(&state, &account_id, id, "exec").await {
        Ok(active) => active,
        Err(err) => return send_error(socket, err).await,
    };
    let started = Instant::now();
    let started_at_ms = caged_domain::time::now_ms();
    let handle = container_of(&record)?.to_string();
    // The session's id is drawn first: its LLM calls carry it in their gateway key.
    let session_id = crate::sessions::new_id();
    let mut spec = request.spec(record.config.isolation);
    if record.config.network_mode != caged_domain::NetworkMode::None {
        let credential = state.costs.credential(record.id, Some(&session_id));
        for (name, value) in crate::cost::key_env(&credential) {
            spec.env.entry(name.to_string()).or_insert(value);
        }
    }
    let exec = match state.runtime.exec(&handle, &spec).await {
        Ok(exec) => exec,
        Err(err) => return send_error(socket, err.into()).await,
    };
    if let (true, Some(cols), Some(rows)) = (request.tty, request.cols, request.rows) {
        let _ = state.runtime.exec_resize(&exec.exec_id, cols, rows).await;
    }
    // The command runs: the agent is connected, its session opens.
    let (agent_type, channel) = match &request.agent {
        Some(agent) => (agent.as_str(), "agent"),
        None => (
            crate::sessions::infer_agent(&request.cmd, request.tty),
            "exec",
        ),
    };
    let session = crate::sessions::open(
        &state,
        session_id,
        &record,
        agent_type,
        channel,
        &request.cmd,
        started_at_ms,
    )
    .await?;
    let session_id = Some(session.id.clone());
    // What the command's processes do is the session's (the observer holds it until told);
    // asked aside, so the command's output is not kept waiting for the engine's answer.
    {
        let (state, exec_id, session) = (state.clone(), exec.exec_id.clone(), session_id.clone());
        tokio::spawn(async move {
            if let Ok(Some(pid)) = state.runtime.exec_pid(&exec_id).await {
                state.observer.bind(pid, session);
            }
        });
    }
    let exec_id = exec.exec_id.clone();
    let mut output = exec.output;
    let mut input = Some(exec.input);
    if !(request.stdin || request.tty) {
        input = None; // closes the command's stdin
    }
    let deadline = request
        .timeout
        .map(|seconds| tokio::time::Instant::now() + Duration::from_secs_f64(seconds));
    let mut timed_out = false;
    let (mut sink, mut incoming) = socket.split();
    loop {
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(ExecOutput::Stdout(bytes))) => send_data(&mut sink, 1, &bytes).await?,
                Some(Ok(ExecOutput::Stderr(bytes))) => send_data(&mut sink, 2, &bytes).await?,
                Some(Err(err)) => return Err(err.into()),
                None => break,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                    if let Some(writer) = input.as_mut() && writer.write_all(&data[1..]).await.is_err() {
                        input = None;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let control: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match control["type"].as_str() {
                        Some("resize") => {
                            let cols = control["cols"].as_u64().unwrap_or(80).clamp(1, 1000) as u16;
                            let rows = control["rows"].as_u64().unwrap_or(24).clamp(1, 1000) as u16;
                            let _ = state.runtime.exec_resize(&exec_id, cols, rows).await;
                        }
                        Some("eof") => {
                            if let Some(mut writer) = input.take() {
                                let _ = writer.shutdown().await;
                            }
                        }
                        _ => {}
                    }
                }
                // The client went away: stop the command rather than leave it running unseen.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = state.runtime.exec_kill(&handle, &exec_id).await;
                    let payload = json!({ "cmd": request.cmd, "exit_code": null, "disconnected": true,
                                          "duration_ms": started.elapsed().as_millis() as u64 });
                    sandboxes::record_activity_in(&state, &record, "exec", payload, session_id).await;
                    session.end("the client disconnected").await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
            },
            () = sleep => {
                timed_out = true;
                if let Err(err) = state.runtime.exec_kill(&handle, &exec_id).await {
                    tracing::warn!(sandbox = %id, "could not kill timed-out command: {err}");
                }
                // Drain what the command wrote before it died.
                while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(2), output.next()).await {
                    match chunk {
                        ExecOutput::Stdout(bytes) => send_data(&mut sink, 1, &bytes).await?,
                        ExecOutput::Stderr(bytes) => send_data(&mut sink, 2, &bytes).await?,
                    }
                }
                break;
            }
        }
    }
    let exit_code = state.runtime.exec_status(&exec_id).await.ok().flatten();
    let payload = json!({ "cmd": request.cmd, "exit_code": exit_code, "timed_out": timed_out, "tty": request.tty,
                          "duration_ms": started.elapsed().as_millis() as u64 });
    sandboxes::record_activity_in(&state, &record, "exec", payload, session_id).await;
    let reason = match (timed_out, exit_code) {
        (true, _) => "timed out".to_string(),
        (false, Some(code)) => format!("exited (status {code})"),
        (false, None) => "ended".to_string(),
    };
    session.end(&reason).await;
    let exit = json!({ "type": "exit", "exit_code": exit_code, "timed_out": timed_out });
    let _ = sink.send(Message::Text(exit.to_string().into())).await;
    let _ = sink.close().await;
    Ok(())
}

async fn send_data(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    channel: u8,
    bytes: &[u8],
) -> Result<(), ApiError> {
    let mut frame = Vec::with_capacity(bytes.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(bytes);
    sink.send(Message::Binary(frame.into()))
        .await
        .map_err(|_| ApiError::internal("client went away"))
}

async fn send_error(mut socket: WebSocket, err: ApiError) -> Result<(), ApiError> {
    let message = json!({ "type": "error", "code": err.code, "message": err.message });
    let _ = socket.send(Message::Text(message.to_string().into())).await;
    let _ = socket.close().await;
    Err(err)
}

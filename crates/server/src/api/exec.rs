//! Running commands: `POST /exec` runs to completion and returns the output; `GET /exec/ws`
//! streams it (and stdin, and terminal resizes) over a WebSocket.
//!
//! WebSocket protocol: the client's first message is a JSON text frame with the request (as for
//! `POST /exec`, plus `tty`, `stdin`, `cols`, `rows`). Then binary frames carry data, their first
//! byte naming the stream (0 stdin, 1 stdout, 2 stderr); text frames carry control messages:
//! `{"type":"resize","cols":N,"rows":N}` and `{"type":"eof"}` from the client, and
//! `{"type":"exit","exit_code":N,"timed_out":bool}` from the server, which then closes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use caged_domain::SandboxId;
use caged_runtime::ExecOutput;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use super::ApiError;
use super::sandboxes::{json_body, parse_id};
use crate::AppState;
use crate::auth::Caller;
use crate::exec::{Channel, Ended, ExecRequest, Input, Interactive};
use crate::sandboxes;

pub(crate) async fn run(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let request = ExecRequest::parse(json_body(&body)?)?;
    let collected = crate::exec::run(&state, &account.id, id, request).await?;
    Ok(Json(json!({
        "exit_code": collected.exit_code,
        "stdout": String::from_utf8_lossy(&collected.stdout),
        "stderr": String::from_utf8_lossy(&collected.stderr),
        "truncated": collected.truncated,
        "timed_out": collected.timed_out,
        "duration_ms": collected.duration_ms,
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
        .and_then(|value| ExecRequest::parse(value).map_err(ApiError::from));
    let request = match parsed {
        Ok(request) => request,
        Err(err) => return send_error(socket, err).await,
    };
    let interactive = match Interactive::start(&state, &account_id, id, request).await {
        Ok(interactive) => interactive,
        Err(err) => return send_error(socket, err.into()).await,
    };
    let (sink, incoming) = socket.split();
    let mut channel = Socket { sink, incoming };
    let ended = interactive.drive(&mut channel).await?;
    if let Ended::Exited {
        exit_code,
        timed_out,
    } = ended
    {
        let exit = json!({ "type": "exit", "exit_code": exit_code, "timed_out": timed_out });
        let _ = channel
            .sink
            .send(Message::Text(exit.to_string().into()))
            .await;
        let _ = channel.sink.close().await;
    }
    Ok(())
}

/// The WebSocket as an interactive command's channel.
struct Socket {
    sink: SplitSink<WebSocket, Message>,
    incoming: SplitStream<WebSocket>,
}

impl Channel for Socket {
    async fn next(&mut self) -> Input {
        match self.incoming.next().await {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                Input::Stdin(data.slice(1..))
            }
            Some(Ok(Message::Text(text))) => {
                let control: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match control["type"].as_str() {
                    Some("resize") => Input::Resize {
                        cols: control["cols"].as_u64().unwrap_or(80).clamp(1, 1000) as u16,
                        rows: control["rows"].as_u64().unwrap_or(24).clamp(1, 1000) as u16,
                    },
                    Some("eof") => Input::Eof,
                    _ => Input::Ignored,
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Input::Gone,
            Some(Ok(_)) => Input::Ignored,
        }
    }

    async fn send(&mut self, output: ExecOutput) -> Result<(), ()> {
        let (channel, bytes) = match output {
            ExecOutput::Stdout(bytes) => (1, bytes),
            ExecOutput::Stderr(bytes) => (2, bytes),
        };
        let mut frame = Vec::with_capacity(bytes.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(&bytes);
        self.sink
            .send(Message::Binary(frame.into()))
            .await
            .map_err(|_| ())
    }
}

async fn send_error(mut socket: WebSocket, err: ApiError) -> Result<(), ApiError> {
    err.log();
    let message = json!({ "type": "error", "code": err.code, "message": err.message });
    let _ = socket.send(Message::Text(message.to_string().into())).await;
    let _ = socket.close().await;
    Err(err)
}

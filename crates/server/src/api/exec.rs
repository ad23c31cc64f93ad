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
use caged_wire as wire;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

use super::auth::Caller;
use super::body::{json_body, parse_id};
use super::docs::{Failures, SandboxPath};
use super::error::ApiError;
use crate::exec::{Channel, Ended, ExecRequest, Input, Interactive};
use crate::sandboxes;
use crate::state::AppState;

#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/exec",
    operation_id = "exec",
    summary = "Run a command to completion",
    description = "Waits for the command and answers its output, each stream kept up to 16 MiB \
                   (`truncated` says whether more was dropped). `tty`, `stdin` and `agent` need \
                   the WebSocket exec.",
    params(SandboxPath),
    request_body = wire::ExecRequest,
    responses((status = 200, description = "It ended (or was killed)", body = wire::ExecResult), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn run(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::ExecResult>, ApiError> {
    let id = parse_id(&id)?;
    let request = ExecRequest::parse(json_body(&body)?)?;
    let collected = crate::exec::run(&state, &account.id, id, request).await?;
    Ok(Json(wire::ExecResult {
        duration_ms: collected.duration_ms,
        exit_code: collected.exit_code,
        stderr: String::from_utf8_lossy(&collected.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&collected.stdout).into_owned(),
        timed_out: collected.timed_out,
        truncated: collected.truncated,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/exec/ws",
    operation_id = "exec_websocket",
    summary = "Run a command over a WebSocket: streamed output, stdin, a terminal",
    description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`). The \
                   client's first message is a text frame with the `ExecRequest` as JSON. Then \
                   binary frames carry data, their first byte naming the stream (0 stdin from \
                   the client; 1 stdout, 2 stderr from the server); text frames carry control \
                   messages: an `ExecClientMessage` (`resize`, `eof`) from the client, and one \
                   `ExecServerMessage` from the server (`exit`, or `error` if the request was \
                   refused), after which it closes. A bad id or a destroyed sandbox is refused \
                   before the upgrade, as an ordinary HTTP error.",
    params(SandboxPath),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; the messages are \
                                      `ExecClientMessage` and `ExecServerMessage`"),
        Failures,
    ),
    security(("bearer" = [])),
)]
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
    let parsed = caged_domain::json::from_slice_strict(first.as_bytes())
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
        let exit = wire::ExecServerMessage::Exit {
            exit_code,
            timed_out,
        };
        let _ = channel.sink.send(text(&exit)).await;
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
    let message = wire::ExecServerMessage::Error {
        code: err.code.to_string(),
        message: err.message.clone(),
    };
    let _ = socket.send(text(&message)).await;
    let _ = socket.close().await;
    Err(err)
}

/// A control message as a text frame.
fn text(message: &wire::ExecServerMessage) -> Message {
    // Strings, numbers and booleans: nothing in it fails to serialize.
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

//! A typed client for Caged's HTTP API. The CLI is built on it and the tests drive the server
//! through it, so what users run is what is tested.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the caged server at {url} (is `caged server` running?)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to the caged server failed")]
    Http(#[from] reqwest::Error),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("websocket to the caged server failed")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The API's types: every method answers one of them.
pub use caged_wire as wire;
/// The answers the typed methods return, under the names they have always had here.
pub use caged_wire::{Cost, ExecResult, Resources, Sandbox, TransitionView};

/// A file read from a sandbox: its kind (`file` or `directory`, the latter as a tar) and bytes.
pub struct Download {
    pub is_dir: bool,
    pub mode: Option<u32>,
    pub body: Response,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: &str, api_key: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            api_key,
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Result<Response> {
        let response = builder.send().await.map_err(|source| {
            if source.is_connect() {
                ClientError::Unreachable {
                    url: self.base.clone(),
                    source,
                }
            } else {
                ClientError::Http(source)
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T> {
        let response = self.send(builder).await?;
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|err| ClientError::Protocol(err.to_string()))
    }

    pub async fn system(&self) -> Result<wire::System> {
        self.json(self.request(Method::GET, "/v1/system")).await
    }

    /// `config` is a `.caged.yaml` document as JSON, plus optionally `defer_init`.
    pub async fn create_sandbox(&self, config: &impl Serialize) -> Result<Sandbox> {
        self.json(self.request(Method::POST, "/v1/sandboxes").json(config))
            .await
    }

    pub async fn list_sandboxes(&self, all: bool) -> Result<Vec<Sandbox>> {
        let list: wire::SandboxList = self
            .json(self.request(Method::GET, &format!("/v1/sandboxes?all={all}")))
            .await?;
        Ok(list
            .sandboxes
            .into_iter()
            .map(|item| item.sandbox)
            .collect())
    }

    pub async fn sandbox(&self, id: &str) -> Result<Sandbox> {
        let detail: wire::SandboxDetail = self
            .json(self.request(Method::GET, &format!("/v1/sandboxes/{id}")))
            .await?;
        Ok(detail.sandbox)
    }

    /// The sandbox with what `GET /v1/sandboxes/{id}` adds: its previews, trust and config.
    pub async fn sandbox_detail(&self, id: &str) -> Result<wire::SandboxDetail> {
        self.json(self.request(Method::GET, &format!("/v1/sandboxes/{id}")))
            .await
    }

    pub async fn destroy(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::DELETE, &format!("/v1/sandboxes/{id}")))
            .await
    }

    pub async fn pause(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &format!("/v1/sandboxes/{id}/pause")))
            .await
    }

    pub async fn resume(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &format!("/v1/sandboxes/{id}/resume")))
            .await
    }

    pub async fn start_init(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &format!("/v1/sandboxes/{id}/init")))
            .await
    }

    /// Runs a command to completion. `request` is a [`wire::ExecRequest`], or its JSON.
    pub async fn exec(&self, id: &str, request: &impl Serialize) -> Result<ExecResult> {
        self.json(
            self.request(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
                .json(request),
        )
        .await
    }

    /// Shorthand: run `argv` and collect its output.
    pub async fn run(&self, id: &str, argv: &[&str]) -> Result<ExecResult> {
        let request = wire::ExecRequest {
            cmd: argv.iter().map(|arg| arg.to_string()).collect(),
            ..Default::default()
        };
        self.json(
            self.request(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
                .json(&request),
        )
        .await
    }

    /// Starts a streaming exec over a WebSocket. `request` is a [`wire::ExecRequest`], or its
    /// JSON.
    pub async fn exec_stream(&self, id: &str, request: &impl Serialize) -> Result<ExecStream> {
        let request = serde_json::to_string(request)
            .map_err(|err| ClientError::Protocol(format!("the exec request: {err}")))?;
        let ws_base = self
            .base
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let mut ws_request =
            format!("{ws_base}/v1/sandboxes/{id}/exec/ws").into_client_request()?;
        if let Some(key) = &self.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| ClientError::Protocol("API key is not a valid header value".into()))?;
            ws_request.headers_mut().insert("authorization", value);
        }
        let (socket, _) = match tokio_tungstenite::connect_async(ws_request).await {
            Ok(connected) => connected,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().clone().unwrap_or_default();
                return Err(error_from_body(status, &body));
            }
            Err(err) => return Err(err.into()),
        };
        let (mut sink, stream) = socket.split();
        sink.send(Message::Text(request.into())).await?;
        Ok(ExecStream {
            sink: ExecInput { sink },
            output: ExecOutputStream { stream },
        })
    }

    pub async fn read_file(&self, id: &str, path: &str) -> Result<Download> {
        let response = self
            .send(
                self.request(Method::GET, &format!("/v1/sandboxes/{id}/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        let headers = response.headers();
        let is_dir = headers
            .get("x-caged-kind")
            .is_some_and(|kind| kind == "directory");
        let mode = headers
            .get("x-caged-mode")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| u32::from_str_radix(text, 8).ok());
        Ok(Download {
            is_dir,
            mode,
            body: response,
        })
    }

    /// Reads a whole file into memory.
    pub async fn read_file_bytes(&self, id: &str, path: &str) -> Result<Bytes> {
        Ok(self.read_file(id, path).await?.body.bytes().await?)
    }

    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: impl Into<reqwest::Body>,
        mode: Option<u32>,
    ) -> Result<wire::FileWritten> {
        let mut builder = self
            .request(Method::PUT, &format!("/v1/sandboxes/{id}/files"))
            .query(&[("path", path)])
            .body(data);
        if let Some(mode) = mode {
            builder = builder.header("x-caged-mode", format!("{:o}", mode & 0o777));
        }
        self.json(builder).await
    }

    /// Extracts a tar (plain or gzip) into directory `path`, creating it if needed.
    pub async fn write_tar(
        &self,
        id: &str,
        path: &str,
        tar: impl Into<reqwest::Body>,
    ) -> Result<wire::FileWritten> {
        let builder = self
            .request(Method::PUT, &format!("/v1/sandboxes/{id}/files"))
            .query(&[("path", path)])
            .header("content-type", "application/x-tar")
            .body(tar);
        self.json(builder).await
    }

    /// A sandbox's events after sequence number `after`, oldest first.
    pub async fn events(&self, id: &str, after: i64) -> Result<Vec<wire::Event>> {
        let list: wire::EventList = self
            .json(self.request(
                Method::GET,
                &format!("/v1/sandboxes/{id}/events?after={after}"),
            ))
            .await?;
        Ok(list.events)
    }

    /// Follows a sandbox's events live (Server-Sent Events), from after `after`.
    pub async fn follow_events(&self, id: &str, after: i64) -> Result<EventFeed> {
        let response = self
            .send(self.request(
                Method::GET,
                &format!("/v1/sandboxes/{id}/events?follow=true&after={after}"),
            ))
            .await?;
        Ok(EventFeed {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        })
    }

    pub async fn create_snapshot(&self, id: &str, name: Option<&str>) -> Result<wire::Snapshot> {
        let body = wire::CreateSnapshot {
            name: name.map(str::to_string),
        };
        self.json(
            self.request(Method::POST, &format!("/v1/sandboxes/{id}/snapshots"))
                .json(&body),
        )
        .await
    }

    /// A sandbox's sessions with their trust scores, once what the host saw until now is
    /// scored.
    pub async fn sessions(&self, id: &str) -> Result<Vec<wire::SessionListItem>> {
        let list: wire::SessionList = self
            .json(self.request(
                Method::GET,
                &format!("/v1/sandboxes/{id}/sessions?settle=true"),
            ))
            .await?;
        Ok(list.sessions)
    }

    /// A session with its trust score, once what the host saw until now is scored.
    pub async fn session(&self, session: &str) -> Result<wire::SessionDetail> {
        self.json(self.request(Method::GET, &format!("/v1/sessions/{session}?settle=true")))
            .await
    }

    pub async fn session_events(&self, session: &str) -> Result<Vec<wire::Event>> {
        let list: wire::EventList = self
            .json(self.request(Method::GET, &format!("/v1/sessions/{session}/events")))
            .await?;
        Ok(list.events)
    }

    /// The sandbox's previews: listening ports with their URLs, and protected ports.
    pub async fn previews(&self, id: &str) -> Result<Vec<wire::Preview>> {
        let list: wire::PreviewList = self
            .json(self.request(Method::GET, &format!("/v1/sandboxes/{id}/previews")))
            .await?;
        Ok(list.previews)
    }

    /// Protects a preview with `password`, or opens it again with `None`.
    pub async fn protect_preview(
        &self,
        id: &str,
        port: u16,
        password: Option<&str>,
    ) -> Result<wire::Preview> {
        let body = wire::ProtectPreview {
            password: password.map(str::to_string),
        };
        self.json(
            self.request(Method::PUT, &format!("/v1/sandboxes/{id}/previews/{port}"))
                .json(&body),
        )
        .await
    }

    /// The sandbox's network: mode, link, allowlist and the hosts it tried.
    pub async fn network(&self, id: &str) -> Result<wire::NetworkView> {
        self.json(self.request(Method::GET, &format!("/v1/sandboxes/{id}/network")))
            .await
    }

    /// The hosts the sandbox tried, with a ready `allowed_hosts` block.
    pub async fn network_learn(&self, id: &str) -> Result<wire::NetworkLearn> {
        self.json(self.request(Method::GET, &format!("/v1/sandboxes/{id}/network/learn")))
            .await
    }

    /// Replaces a live `allowlist` sandbox's allowed hosts.
    pub async fn set_allowed_hosts(
        &self,
        id: &str,
        hosts: &[String],
    ) -> Result<wire::AllowedHosts> {
        self.json(
            self.request(
                Method::PUT,
                &format!("/v1/sandboxes/{id}/network/allowed-hosts"),
            )
            .json(&wire::SetAllowedHosts {
                allowed_hosts: hosts.to_vec(),
            }),
        )
        .await
    }

    /// What a sandbox spent: running time, compute, tokens, LLM cost, budget, per session.
    pub async fn usage(&self, id: &str) -> Result<wire::Usage> {
        self.json(self.request(Method::GET, &format!("/v1/sandboxes/{id}/usage")))
            .await
    }

    /// Sets (or with `None` removes) a live sandbox's budget.
    pub async fn set_budget(&self, id: &str, budget_usd: Option<f64>) -> Result<wire::Budget> {
        self.json(
            self.request(Method::PUT, &format!("/v1/sandboxes/{id}/budget"))
                .json(&wire::SetBudget { budget_usd }),
        )
        .await
    }

    /// The account's spend and running sandboxes per UTC day, the last `days` days.
    pub async fn account_usage(&self, days: u32) -> Result<wire::AccountUsage> {
        self.json(self.request(Method::GET, &format!("/v1/account/usage?days={days}")))
            .await
    }

    /// The account's webhook (URL, signing secret) and its latest deliveries.
    pub async fn webhook(&self) -> Result<wire::WebhookStatus> {
        self.json(self.request(Method::GET, "/v1/account/webhook"))
            .await
    }

    /// Sets the account's webhook; the answer holds the new signing secret.
    pub async fn set_webhook(&self, url: &str) -> Result<wire::Webhook> {
        self.json(
            self.request(Method::PUT, "/v1/account/webhook")
                .json(&wire::SetWebhook {
                    url: url.to_string(),
                }),
        )
        .await
    }

    pub async fn delete_webhook(&self) -> Result<wire::Webhook> {
        self.json(self.request(Method::DELETE, "/v1/account/webhook"))
            .await
    }

    pub async fn snapshots(&self, id: &str) -> Result<Vec<wire::Snapshot>> {
        let list: wire::SnapshotList = self
            .json(self.request(Method::GET, &format!("/v1/sandboxes/{id}/snapshots")))
            .await?;
        Ok(list.snapshots)
    }

    pub async fn delete_snapshot(&self, snapshot: &str) -> Result<wire::SnapshotDeleted> {
        self.json(self.request(Method::DELETE, &format!("/v1/snapshots/{snapshot}")))
            .await
    }

    pub async fn restore(&self, id: &str, snapshot: &str) -> Result<Sandbox> {
        let body = wire::Restore {
            snapshot_id: snapshot.to_string(),
        };
        self.json(
            self.request(Method::POST, &format!("/v1/sandboxes/{id}/restore"))
                .json(&body),
        )
        .await
    }

    /// A new sandbox from a snapshot; `overrides` is a partial `.caged.yaml` as JSON (or null).
    pub async fn fork(&self, snapshot: &str, overrides: &impl Serialize) -> Result<Sandbox> {
        self.json(
            self.request(Method::POST, &format!("/v1/snapshots/{snapshot}/fork"))
                .json(overrides),
        )
        .await
    }

    /// The snapshot as a `.tar.gz` stream.
    pub async fn download_snapshot(&self, snapshot: &str) -> Result<Response> {
        self.send(self.request(Method::GET, &format!("/v1/snapshots/{snapshot}/download")))
            .await
    }

    pub async fn templates(&self) -> Result<Vec<wire::Template>> {
        let list: wire::TemplateList = self
            .json(self.request(Method::GET, "/v1/templates"))
            .await?;
        Ok(list.templates)
    }

    pub async fn template(&self, name: &str) -> Result<wire::Template> {
        self.json(self.request(Method::GET, &format!("/v1/templates/{name}")))
            .await
    }

    /// Builds template `name` from the Dockerfile at `dockerfile` in the tar `context`; the
    /// answer streams JSON lines (`progress`, then `template` or `error`).
    pub async fn build_template(
        &self,
        name: &str,
        dockerfile: &str,
        context: impl Into<reqwest::Body>,
    ) -> Result<Response> {
        let builder = self
            .request(Method::POST, &format!("/v1/templates/{name}/build"))
            .query(&[("dockerfile", dockerfile)])
            .header("content-type", "application/x-tar")
            .body(context);
        self.send(builder).await
    }

    pub async fn remove_template(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/templates/{name}")))
            .await
            .map(|_| ())
    }

    pub async fn import_template(
        &self,
        name: &str,
        rootfs: impl Into<reqwest::Body>,
    ) -> Result<wire::Template> {
        let builder = self
            .request(Method::POST, &format!("/v1/templates/{name}"))
            .header("content-type", "application/x-tar")
            .body(rootfs);
        self.json(builder).await
    }

    pub async fn create_account(&self, name: &str) -> Result<wire::NewAccount> {
        self.json(
            self.request(Method::POST, "/v1/accounts")
                .json(&wire::CreateAccount {
                    name: name.to_string(),
                }),
        )
        .await
    }

    pub async fn accounts(&self) -> Result<Vec<wire::AccountView>> {
        let list: wire::AccountList = self.json(self.request(Method::GET, "/v1/accounts")).await?;
        Ok(list.accounts)
    }

    /// A raw request, for routes without a typed method and for tests of the API's edges.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

async fn api_error(response: Response) -> ClientError {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    error_from_body(status, &body)
}

fn error_from_body(status: u16, body: &[u8]) -> ClientError {
    // Not every failure comes from Caged (a proxy in between, a server too old or too new):
    // what is not an error body is said as its status.
    match serde_json::from_slice::<wire::ErrorBody>(body) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http_error".into(),
            message: format!("the server answered HTTP {status}"),
        },
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running streamed command; split it to write stdin while reading output.
pub struct ExecStream {
    pub sink: ExecInput,
    pub output: ExecOutputStream,
}

pub struct ExecInput {
    sink: SplitSink<Socket, Message>,
}

pub struct ExecOutputStream {
    stream: SplitStream<Socket>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit {
        exit_code: Option<i64>,
        timed_out: bool,
    },
}

impl ExecInput {
    pub async fn stdin(&mut self, data: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(0);
        frame.extend_from_slice(data);
        self.sink.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    pub async fn eof(&mut self) -> Result<()> {
        self.sink
            .send(control(&wire::ExecClientMessage::Eof))
            .await?;
        Ok(())
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        self.sink
            .send(control(&wire::ExecClientMessage::Resize { cols, rows }))
            .await?;
        Ok(())
    }

    pub async fn close(&mut self) -> Result<()> {
        self.sink.close().await?;
        Ok(())
    }
}

/// A control message as a text frame.
fn control(message: &wire::ExecClientMessage) -> Message {
    // A tag and two numbers: nothing in it fails to serialize.
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

impl ExecOutputStream {
    /// The next piece of output, or the exit; `None` when the stream ended without an exit
    /// (the server went away).
    pub async fn next_event(&mut self) -> Option<Result<ExecEvent>> {
        loop {
            let message = match self.stream.next().await? {
                Ok(message) => message,
                Err(err) => return Some(Err(err.into())),
            };
            match message {
                Message::Binary(data) => match data.first() {
                    Some(1) => return Some(Ok(ExecEvent::Stdout(data.slice(1..)))),
                    Some(2) => return Some(Ok(ExecEvent::Stderr(data.slice(1..)))),
                    _ => continue,
                },
                Message::Text(text) => {
                    // A message of a kind this client does not know is skipped, not fatal.
                    let Ok(message) = serde_json::from_str::<wire::ExecServerMessage>(&text) else {
                        continue;
                    };
                    return Some(match message {
                        wire::ExecServerMessage::Exit {
                            exit_code,
                            timed_out,
                        } => Ok(ExecEvent::Exit {
                            exit_code,
                            timed_out,
                        }),
                        wire::ExecServerMessage::Error { code, message } => Err(ClientError::Api {
                            status: 0,
                            code,
                            message,
                        }),
                    });
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Collects everything until the exit: (stdout, stderr, exit code, timed out).
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>, Option<i64>, bool)> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = self.next_event().await {
            match event? {
                ExecEvent::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                ExecEvent::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                ExecEvent::Exit {
                    exit_code,
                    timed_out,
                } => return Ok((stdout, stderr, exit_code, timed_out)),
            }
        }
        Err(ClientError::Protocol(
            "the exec stream ended without an exit status".into(),
        ))
    }
}

/// A live event stream; each call to [`EventFeed::next`] gives the next event.
pub struct EventFeed {
    body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl EventFeed {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<wire::Event>> {
        loop {
            // One SSE message ends with a blank line; keep-alive comments carry no data.
            if let Some(end) = self.buffer.windows(2).position(|window| window == b"\n\n") {
                let message: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&message);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_str(&data.join("\n"))
                        .map_err(|err| ClientError::Protocol(err.to_string())),
                );
            }
            match self.body.next().await? {
                Ok(chunk) => self.buffer.extend_from_slice(&chunk),
                Err(err) => return Some(Err(err.into())),
            }
        }
    }
}

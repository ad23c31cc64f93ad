//! A fake LLM provider for tests and benchmarks: a real HTTP server on loopback that answers
//! OpenAI Chat Completions (`POST /v1/chat/completions`) and Anthropic Messages
//! (`POST /v1/messages`) in their formats, whole or streamed (server-sent events), with the
//! token usage it is told to report. It keeps every request it got, so a test can check what
//! reached "the provider" (the operator's key, never the sandbox's).

use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// One request as the provider saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub api_key: Option<String>,
    pub body: Value,
}

struct Shared {
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    /// Content pieces in a streamed answer.
    chunks: AtomicU64,
    /// Pause between two pieces, in microseconds.
    gap_us: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// The running fake provider.
pub struct FakeLlm {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLlm {
    /// Starts on 127.0.0.1 reporting `tokens_in` and `tokens_out` for every call.
    pub async fn start(tokens_in: u64, tokens_out: u64) -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake provider");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared {
            tokens_in: AtomicU64::new(tokens_in),
            tokens_out: AtomicU64::new(tokens_out),
            chunks: AtomicU64::new(5),
            gap_us: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let served = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&shared, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeLlm { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What later calls report.
    pub fn set_usage(&self, tokens_in: u64, tokens_out: u64) {
        self.shared.tokens_in.store(tokens_in, Ordering::SeqCst);
        self.shared.tokens_out.store(tokens_out, Ordering::SeqCst);
    }

    /// Streamed answers: `chunks` content pieces, `gap` apart.
    pub fn set_stream(&self, chunks: u64, gap: Duration) {
        self.shared.chunks.store(chunks, Ordering::SeqCst);
        self.shared
            .gap_us
            .store(gap.as_micros() as u64, Ordering::SeqCst);
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().clone()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (authorization, api_key) = (header("authorization"), header("x-api-key"));
    let path = request.uri().path().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.seen.lock().push(Seen {
        path: path.clone(),
        authorization,
        api_key,
        body: body.clone(),
    });
    let (tokens_in, tokens_out) = (
        shared.tokens_in.load(Ordering::SeqCst),
        shared.tokens_out.load(Ordering::SeqCst),
    );
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let streamed = body["stream"] == true;
    let chunks = shared.chunks.load(Ordering::SeqCst);
    let gap = Duration::from_micros(shared.gap_us.load(Ordering::SeqCst));
    match path.as_str() {
        "/v1/chat/completions" if streamed => {
            let mut events: Vec<String> = (0..chunks)
                .map(|i| {
                    json!({ "id": "c1", "object": "chat.completion.chunk", "model": model,
                            "choices": [{ "index": 0, "delta": { "content": format!("piece {i} ") } }] })
                    .to_string()
                })
                .collect();
            if body["stream_options"]["include_usage"] == true {
                events.push(
                    json!({ "id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [],
                            "usage": { "prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                                       "total_tokens": tokens_in + tokens_out } })
                    .to_string(),
                );
            }
            events.push("[DONE]".into());
            sse(
                events
                    .into_iter()
                    .map(|data| format!("data: {data}\n\n"))
                    .collect(),
                gap,
            )
        }
        "/v1/chat/completions" => json_reply(json!({
            "id": "c1", "object": "chat.completion", "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "hello" }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out },
        })),
        "/v1/messages" if streamed => {
            let mut events = vec![(
                "message_start",
                json!({ "type": "message_start", "message": { "id": "m1", "type": "message", "role": "assistant",
                        "model": model, "content": [], "usage": { "input_tokens": tokens_in, "output_tokens": 1 } } }),
            )];
            events.push((
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
            ));
            for i in 0..chunks {
                events.push((
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                            "delta": { "type": "text_delta", "text": format!("piece {i} ") } }),
                ));
            }
            events.push((
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": 0 }),
            ));
            events.push((
                "message_delta",
                json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" },
                        "usage": { "output_tokens": tokens_out } }),
            ));
            events.push(("message_stop", json!({ "type": "message_stop" })));
            sse(
                events
                    .into_iter()
                    .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
                    .collect(),
                gap,
            )
        }
        "/v1/messages" => json_reply(json!({
            "id": "m1", "type": "message", "role": "assistant", "model": model,
            "content": [{ "type": "text", "text": "hello" }], "stop_reason": "end_turn",
            "usage": { "input_tokens": tokens_in, "output_tokens": tokens_out },
        })),
        _ => {
            let mut response = json_reply(json!({ "error": { "message": "no such route" } }));
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            response
        }
    }
}

fn json_reply(value: Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("a valid response")
}

/// Server-sent events, each its own write, `gap` apart (the first at once).
fn sse(events: Vec<String>, gap: Duration) -> Response<Body> {
    let frames = stream::unfold(
        (events.into_iter(), true),
        move |(mut events, first)| async move {
            let event = events.next()?;
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(event))),
                (events, false),
            ))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(frames).boxed())
        .expect("a valid response")
}

//! The LLM gateway: an OpenAI- and Anthropic-compatible endpoint on each sandbox link's host
//! address (`http://<link>:15002/openai/v1`, `…/anthropic`). It takes the sandbox's own
//! credential, forwards the call to the configured provider with the operator's key (which never
//! enters a sandbox), and passes the answer back untouched as it arrives, reading the token usage
//! from it on the way (streamed or not). Each call becomes an `llm` event and a charge.
//!
//! A call is refused before it reaches the provider when the credential is not this link's
//! sandbox's, the sandbox is destroyed, or its spend has reached its budget.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caged_cost::{Micros, Protocol, Usage, UsageMeter};
use caged_domain::time::now_ms;
use caged_domain::{SandboxId, SandboxState};
use caged_store::NewLlmCall;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use super::Costs;
use caged_activity::{Activity, Busy};

pub(crate) type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

type GatewayBody = BoxBody<Bytes, hyper::Error>;

/// The largest request body forwarded (the providers' own limit is of this order).
const MAX_REQUEST: usize = 32 << 20;

/// A refused call is logged as an event at most this often per sandbox.
const REFUSAL_EVENT_EVERY_MS: i64 = 10_000;

/// The TLS settings for calling providers and webhooks: the host's trusted roots.
pub(crate) fn tls_client_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted root certificates found (install ca-certificates); HTTPS providers and webhooks will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub(crate) fn upstream_client() -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

/// What the gateway needs of the server.
pub(crate) struct Ctx {
    pub db: caged_store::Db,
    pub costs: Arc<Costs>,
    pub activity: Arc<Activity>,
    /// Last refusal event per sandbox.
    refused: Mutex<HashMap<SandboxId, i64>>,
}

/// The gateway as the service on every sandbox's link.
pub(crate) struct Service(Arc<Ctx>);

impl Service {
    pub(crate) fn new(db: caged_store::Db, costs: Arc<Costs>, activity: Arc<Activity>) -> Service {
        Service(Arc::new(Ctx {
            db,
            costs,
            activity,
            refused: Mutex::new(HashMap::new()),
        }))
    }
}

impl caged_netpolicy::LinkService for Service {
    fn name(&self) -> &'static str {
        "the LLM gateway"
    }

    fn serve(
        &self,
        sandbox: SandboxId,
        listener: tokio::net::TcpListener,
    ) -> tokio::task::AbortHandle {
        serve(self.0.clone(), sandbox, listener).abort_handle()
    }
}

/// Serves the gateway on a link's listener.
fn serve(ctx: Arc<Ctx>, link: SandboxId, listener: tokio::net::TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(sandbox = %link, "gateway accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(&ctx, link, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A call refused by the gateway itself, in the caller's API's error format.
struct Refusal {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn refuse(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        kind,
        message: message.into(),
    }
}

fn error_response(protocol: Option<Protocol>, refusal: &Refusal) -> Response<GatewayBody> {
    let body = match protocol {
        Some(Protocol::Anthropic) => json!({
            "type": "error",
            "error": { "type": refusal.kind, "message": refusal.message },
        }),
        _ => json!({
            "error": { "message": refusal.message, "type": refusal.kind, "code": refusal.kind },
        }),
    };
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = refusal.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("x-caged-error", HeaderValue::from_static(refusal.kind));
    response
}

fn full(bytes: Bytes) -> GatewayBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The API a path belongs to and the rest of it (`v1/chat/completions`).
fn route(path: &str) -> Option<(Protocol, &str)> {
    if let Some(rest) = path.strip_prefix("/openai/") {
        Some((Protocol::OpenAi, rest))
    } else {
        path.strip_prefix("/anthropic/")
            .map(|rest| (Protocol::Anthropic, rest))
    }
}

fn provider_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::OpenAi => "openai",
        Protocol::Anthropic => "anthropic",
    }
}

/// The credential a call carries: `Authorization: Bearer …` (OpenAI SDKs, Claude Code's
/// auth token) or `x-api-key` (Anthropic SDKs).
fn presented_credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn handle(
    ctx: &Arc<Ctx>,
    link: SandboxId,
    request: Request<Incoming>,
) -> Response<GatewayBody> {
    let Some((protocol, _)) = route(request.uri().path()) else {
        return error_response(
            None,
            &refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "the LLM gateway serves /openai/… and /anthropic/…; use $OPENAI_BASE_URL or $ANTHROPIC_BASE_URL",
            ),
        );
    };
    match forward(ctx, link, protocol, request).await {
        Ok(response) => response,
        Err(refusal) => error_response(Some(protocol), &refusal),
    }
}

/// What a call asked for, read from its body.
struct Asked {
    model: Option<String>,
    body: Bytes,
}

/// Reads the request body; for a streamed Chat Completion, asks the provider to include the
/// usage in the stream (without it a stream carries no token counts).
fn read_request(protocol: Protocol, rest: &str, body: Bytes) -> Asked {
    let Ok(mut json) = serde_json::from_slice::<Value>(&body) else {
        return Asked { model: None, body };
    };
    let model = json["model"].as_str().map(str::to_string);
    let wants_usage = protocol == Protocol::OpenAi
        && json["stream"] == Value::Bool(true)
        && rest.ends_with("chat/completions")
        && json["stream_options"]["include_usage"] != Value::Bool(true);
    if wants_usage && let Some(object) = json.as_object_mut() {
        let options = object.entry("stream_options").or_insert_with(|| json!({}));
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), Value::Bool(true));
            return Asked {
                model,
                body: Bytes::from(json.to_string()),
            };
        }
    }
    Asked { model, body }
}

/// Headers that belong to one connection, not to the call.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

async fn forward(
    ctx: &Arc<Ctx>,
    link: SandboxId,
    protocol: Protocol,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, Refusal> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let (_, rest) = route(&path).expect("routed before");
    if rest
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the path has dot segments",
        ));
    }

    // Whose call: the credential must be this link's sandbox's.
    let credential = presented_credential(&parts.headers).ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "no API key; use the sandbox's $OPENAI_API_KEY or $ANTHROPIC_API_KEY",
        )
    })?;
    let session = match ctx.costs.check_credential(credential) {
        Some((sandbox, session)) if sandbox == link => session,
        _ => {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "this API key is not this sandbox's gateway key",
            ));
        }
    };
    let id = link;
    let costs = ctx.costs.clone();
    let (pending, record) = ctx
        .db
        .run(move |store| {
            let (pending, record) = costs.spent_with(id, || store.sandbox_by_id(id));
            record.map(|record| (pending, record))
        })
        .await
        .ok()
        .unwrap_or((0, None));
    let record = record.ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unknown sandbox",
        )
    })?;
    if record.state == SandboxState::Destroyed {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            format!("sandbox {id} was destroyed; its gateway key is void"),
        ));
    }
    let spend = super::spend(&ctx.costs.config.prices, &record).total() + Micros(pending);
    if let Some(budget) = record.budget_micros
        && spend.0 >= budget
    {
        let refusal = refuse(
            StatusCode::PAYMENT_REQUIRED,
            "budget_exceeded",
            format!(
                "sandbox {id} has spent {} of its {} budget; raise it with `caged budget {id} USD`",
                spend,
                Micros(budget)
            ),
        );
        note_refusal(ctx, &record, session.as_deref(), protocol, &refusal);
        return Err(refusal);
    }

    let upstream = match protocol {
        Protocol::OpenAi => &ctx.costs.config.openai,
        Protocol::Anthropic => &ctx.costs.config.anthropic,
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri: Uri = format!("{}/{rest}{query}", upstream.base_url.trim_end_matches('/'))
        .parse()
        .map_err(|err| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("cannot form the provider's URL: {err}"),
            )
        })?;
    let body = Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|err| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!(
                    "the request body could not be read whole (at most {MAX_REQUEST} bytes): {err}"
                ),
            )
        })?
        .to_bytes();
    let asked = read_request(protocol, rest, body);

    let mut outgoing = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(Full::new(asked.body))
        .map_err(|err| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                err.to_string(),
            )
        })?;
    let headers = outgoing.headers_mut();
    for (name, value) in parts.headers.iter() {
        let dropped = hop_by_hop(name)
            || name == header::HOST
            || name == header::AUTHORIZATION
            || name == "x-api-key"
            // Identity encoding, so the usage can be read on the way.
            || name == header::ACCEPT_ENCODING
            || name == header::CONTENT_LENGTH;
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(key) = &upstream.api_key {
        let (name, value) = match protocol {
            Protocol::OpenAi => (header::AUTHORIZATION, format!("Bearer {key}")),
            Protocol::Anthropic => (HeaderName::from_static("x-api-key"), key.clone()),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }

    let call = Call {
        ctx: ctx.clone(),
        sandbox: id,
        account_id: record.account_id.clone(),
        timeout: record.config.timeout,
        session,
        protocol,
        path: format!("/{rest}"),
        asked_model: asked.model,
        started: Instant::now(),
        started_at_ms: now_ms(),
        _busy: ctx.activity.busy(id),
    };
    let response = match ctx.costs.client.request(outgoing).await {
        Ok(response) => response,
        Err(err) => {
            let message = format!("the provider could not be reached: {err}");
            call.finish(None, None, 0, None, false, "unreachable");
            return Err(refuse(StatusCode::BAD_GATEWAY, "api_error", message));
        }
    };
    let ttfb = call.started.elapsed();
    let (mut parts, body) = response.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    parts.headers.retain_hop_by_hop();
    let metered = MeteredBody {
        inner: body,
        meter: Some(UsageMeter::new(protocol, streamed)),
        held: None,
        finish: Some(Finish {
            call,
            status: parts.status.as_u16(),
            ttfb,
            streamed,
        }),
    };
    Ok(Response::from_parts(parts, metered.boxed()))
}

trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for HeaderMap {
    /// Drops the connection's own headers from an answer passed on.
    fn retain_hop_by_hop(&mut self) {
        let names: Vec<HeaderName> = self
            .keys()
            .filter(|name| hop_by_hop(name))
            .cloned()
            .collect();
        for name in names {
            self.remove(name);
        }
    }
}

/// Records a refused call, at most once per [`REFUSAL_EVENT_EVERY_MS`] per sandbox.
fn note_refusal(
    ctx: &Arc<Ctx>,
    record: &caged_store::SandboxRecord,
    session: Option<&str>,
    protocol: Protocol,
    refusal: &Refusal,
) {
    let now = now_ms();
    {
        let mut refused = ctx.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refused.get(&record.id) {
            Some(last) if now - last < REFUSAL_EVENT_EVERY_MS => return,
            _ => refused.insert(record.id, now),
        };
    }
    let payload = json!({
        "provider": provider_name(protocol),
        "status": refusal.status.as_u16(),
        "refused": refusal.kind,
        "message": refusal.message,
    });
    let (ctx, id, account, session) = (
        ctx.clone(),
        record.id,
        record.account_id.clone(),
        session.map(str::to_string),
    );
    tokio::spawn(async move {
        let recorded = ctx
            .db
            .run(move |store| {
                store.record_event_in(
                    id,
                    &account,
                    now,
                    "llm",
                    &payload,
                    false,
                    session.as_deref(),
                )
            })
            .await;
        if let Ok(event) = recorded {
            ctx.db.publish(event);
        }
    });
}

/// One call in flight; it is charged once, however it ends.
struct Call {
    ctx: Arc<Ctx>,
    sandbox: SandboxId,
    account_id: String,
    timeout: u64,
    session: Option<String>,
    protocol: Protocol,
    path: String,
    asked_model: Option<String>,
    started: Instant,
    started_at_ms: i64,
    /// The sandbox does not fall asleep while its agent waits on a model.
    _busy: Busy,
}

impl Call {
    fn finish(
        self,
        usage: Option<Usage>,
        answered_model: Option<String>,
        status: u16,
        ttfb: Option<Duration>,
        streamed: bool,
        outcome: &'static str,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the server is going away
        };
        let model = answered_model
            .or(self.asked_model.clone())
            .unwrap_or_else(|| "unknown".into());
        let prices = &self.ctx.costs.config.prices;
        let (priced_as, price) = prices.model(&model);
        let usage = usage.unwrap_or_default();
        let cost = price.cost(&usage);
        let latency = self.started.elapsed();
        let now = now_ms();
        let payload = json!({
            "provider": provider_name(self.protocol),
            "path": self.path,
            "model": model,
            "priced_as": priced_as.unwrap_or("default"),
            "tokens_in": usage.tokens_in(),
            "tokens_out": usage.output,
            "cache_read_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
            "cost_micros": cost.0,
            "status": status,
            "streamed": streamed,
            "outcome": outcome,
            "ttfb_ms": ttfb.map(|t| t.as_secs_f64() * 1000.0),
            "latency_ms": latency.as_secs_f64() * 1000.0,
        });
        self.ctx.activity.touch(self.sandbox, now, self.timeout);
        self.ctx.costs.charge_pending(self.sandbox, cost.0);
        runtime.spawn(async move {
            let (id, account, session) =
                (self.sandbox, self.account_id.clone(), self.session.clone());
            let provider = provider_name(self.protocol);
            let costs = self.ctx.costs.clone();
            let recorded = self
                .ctx
                .db
                .run(move |store| {
                    costs.store_charge(id, cost.0, || {
                        store.record_llm_call(NewLlmCall {
                            sandbox_id: id,
                            account_id: &account,
                            session_id: session.as_deref(),
                            at_ms: self.started_at_ms,
                            provider,
                            model: &model,
                            tokens_in: usage.tokens_in() as i64,
                            tokens_out: usage.output as i64,
                            cost_micros: cost.0,
                            status,
                            payload: &payload,
                        })
                    })
                })
                .await;
            match recorded {
                Ok(event) => self.ctx.db.publish(event),
                Err(err) => tracing::error!(sandbox = %id, "could not record an LLM call: {err}"),
            }
            self.ctx.costs.guard_wake.notify_one();
        });
    }
}

struct Finish {
    call: Call,
    status: u16,
    ttfb: Duration,
    streamed: bool,
}

/// The provider's answer on its way back: every piece is passed on as it comes and shown to
/// the usage meter; when the body ends (or the caller goes away) the call is charged.
struct MeteredBody {
    inner: Incoming,
    meter: Option<UsageMeter>,
    finish: Option<Finish>,
    /// What the provider sent after the data gathered into the last frame: its end, an
    /// error or trailers, handed on at the next poll.
    held: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
}

/// Pieces already waiting are sent on together, up to this much (a provider that streams
/// faster than the caller reads is relayed in fewer, larger writes; nothing waits for more).
const GATHER: usize = 64 << 10;

impl MeteredBody {
    fn complete(&mut self, outcome: &'static str) {
        let (Some(meter), Some(finish)) = (self.meter.take(), self.finish.take()) else {
            return;
        };
        let (usage, model) = meter.finish();
        finish.call.finish(
            usage,
            model,
            finish.status,
            Some(finish.ttfb),
            finish.streamed,
            outcome,
        );
    }

    /// Hands on what followed the data: the end (the call is charged), an error, trailers.
    fn pass(
        &mut self,
        held: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        match &held {
            None => self.complete("completed"),
            Some(Err(_)) => self.complete("upstream_error"),
            Some(Ok(_)) => {}
        }
        held
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(this.pass(held));
        }
        let mut gathered: Option<bytes::BytesMut> = None;
        let mut first: Option<Bytes> = None;
        loop {
            let next = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(next) => next,
            };
            let data = match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(other) => {
                        this.held = Some(Some(Ok(other)));
                        break;
                    }
                },
                other => {
                    this.held = Some(other);
                    break;
                }
            };
            if let Some(meter) = this.meter.as_mut() {
                meter.feed(&data);
            }
            match (&mut gathered, first.take()) {
                (Some(buffer), _) => buffer.extend_from_slice(&data),
                (None, None) => first = Some(data),
                (None, Some(earlier)) => {
                    let mut buffer = bytes::BytesMut::with_capacity(earlier.len() + data.len());
                    buffer.extend_from_slice(&earlier);
                    buffer.extend_from_slice(&data);
                    gathered = Some(buffer);
                }
            }
            let size =
                gathered.as_ref().map_or(0, |b| b.len()) + first.as_ref().map_or(0, |b| b.len());
            if size >= GATHER || this.inner.is_end_stream() {
                break;
            }
        }
        let data = gathered.map(bytes::BytesMut::freeze).or(first);
        // The last piece of a sized body: charge before the caller has it, so its next call
        // already sees this one's cost.
        if this.inner.is_end_stream() && this.held.is_none() {
            this.held = Some(None);
        }
        if matches!(this.held, Some(None)) {
            this.complete("completed");
        }
        match data {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => match this.held.take() {
                Some(held) => Poll::Ready(this.pass(held)),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.held, Some(None)) || (self.held.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // An empty body may be dropped without being polled to its end.
        let outcome = if self.inner.is_end_stream() || matches!(self.held, Some(None)) {
            "completed"
        } else {
            "client_closed"
        };
        self.complete(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_chat_completions_ask_for_usage() {
        let asked = read_request(
            Protocol::OpenAi,
            "v1/chat/completions",
            Bytes::from_static(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#),
        );
        let body: Value = serde_json::from_slice(&asked.body).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(asked.model.as_deref(), Some("gpt-4o"));
        // Unstreamed, or already asked: the body is passed as it came.
        let original = Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#);
        assert_eq!(
            read_request(Protocol::OpenAi, "v1/chat/completions", original.clone()).body,
            original
        );
        let anthropic = Bytes::from_static(br#"{"model":"claude-sonnet-4-5","stream":true}"#);
        assert_eq!(
            read_request(Protocol::Anthropic, "v1/messages", anthropic.clone()).body,
            anthropic
        );
    }

    #[test]
    fn credentials_come_from_either_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer cgk-x"),
        );
        assert_eq!(presented_credential(&headers), Some("cgk-x"));
        headers.insert("x-api-key", HeaderValue::from_static("cgk-y"));
        assert_eq!(presented_credential(&headers), Some("cgk-y"));
        assert_eq!(presented_credential(&HeaderMap::new()), None);
    }
}

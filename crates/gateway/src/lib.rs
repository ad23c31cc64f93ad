//! The LLM gateway: an OpenAI- and Anthropic-compatible endpoint on each sandbox link's host
//! address (`http://<link>:15002/openai/v1`, `…/anthropic`). It takes the sandbox's own
//! credential, forwards the call to the configured provider with the operator's key (which never
//! enters a sandbox), and passes the answer back untouched as it arrives, reading the token usage
//! from it on the way (streamed or not). Each call becomes an `llm` event and a charge.
//!
//! A call is refused before it reaches the provider when the credential is not this link's
//! sandbox's, the sandbox is destroyed, or its spend has reached its budget.
//!
//! - [`keys`]: the sandbox's and sessions' gateway credentials, derived, never stored.
//! - `forward`: one call, from its credential to the provider's answer.
//! - `meter`: the answer on its way back, and the charge once it ends.

mod forward;
pub mod keys;
mod meter;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use caged_activity::Activity;
use caged_cost::{Prices, Protocol};
use caged_domain::SandboxId;
use caged_store::Db;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

type GatewayBody = BoxBody<Bytes, hyper::Error>;

/// One LLM provider the gateway forwards to.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    /// `https://api.openai.com`; a path is kept (`https://host/prefix`).
    pub base_url: String,
    /// The operator's key, added to every forwarded call; `None` forwards without one (a
    /// local model server).
    pub api_key: Option<String>,
}

/// Where calls go and what they cost.
#[derive(Clone, Debug)]
pub struct Config {
    pub prices: Prices,
    pub openai: Upstream,
    pub anthropic: Upstream,
    /// Where the gateway listens on each link.
    pub port: u16,
}

/// The gateway of one server: its providers, its credential key, and the charges of calls
/// that ended but are not in the database yet. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// Derives the gateway credentials (kept in the database, never in a sandbox).
    credential_key: Vec<u8>,
    client: UpstreamClient,
    db: Db,
    activity: Arc<Activity>,
    /// Told after each charge, so the budget guard looks at once.
    charged: Arc<Notify>,
    /// LLM charges of calls that ended but are not in the database yet: counted here, so a
    /// call that starts the instant the one before it ended sees its cost.
    pending: Mutex<HashMap<SandboxId, Arc<Mutex<i64>>>>,
    /// Last refusal event per sandbox.
    refused: Mutex<HashMap<SandboxId, i64>>,
}

impl Gateway {
    pub fn new(
        config: Config,
        credential_key: &str,
        db: Db,
        activity: Arc<Activity>,
        charged: Arc<Notify>,
    ) -> Result<Gateway, String> {
        Ok(Gateway {
            inner: Arc::new(Inner {
                client: upstream_client()?,
                config,
                credential_key: credential_key.as_bytes().to_vec(),
                db,
                activity,
                charged,
                pending: Mutex::new(HashMap::new()),
                refused: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn prices(&self) -> &Prices {
        &self.inner.config.prices
    }
}

impl caged_netpolicy::LinkService for Gateway {
    fn name(&self) -> &'static str {
        "the LLM gateway"
    }

    fn serve(
        &self,
        sandbox: SandboxId,
        listener: tokio::net::TcpListener,
    ) -> tokio::task::AbortHandle {
        serve(self.inner.clone(), sandbox, listener).abort_handle()
    }
}

impl Inner {
    /// Forgets the pending-charge slots nobody is using that hold nothing.
    fn prune_pending(&self) {
        self.pending
            .lock()
            .retain(|_, slot| Arc::strong_count(slot) > 1 || *slot.lock() != 0);
    }

    /// The sandbox's pending charges, behind a lock of its own.
    fn slot(&self, sandbox: SandboxId) -> Arc<Mutex<i64>> {
        self.pending.lock().entry(sandbox).or_default().clone()
    }

    /// A call's charge, known before it is stored.
    fn charge_pending(&self, sandbox: SandboxId, micros: i64) {
        *self.slot(sandbox).lock() += micros;
    }

    /// Stores a pending charge with `store` (a blocking database write): the stored totals
    /// and the pending amount change together, as [`Inner::spent_with`] sees them.
    fn store_charge<T>(&self, sandbox: SandboxId, micros: i64, store: impl FnOnce() -> T) -> T {
        let slot = self.slot(sandbox);
        let mut pending = slot.lock();
        let stored = store();
        *pending -= micros;
        stored
    }

    /// Reads the stored totals with `read` (a blocking database read) and the charges not
    /// stored yet, consistently: each charge is counted exactly once.
    fn spent_with<T>(&self, sandbox: SandboxId, read: impl FnOnce() -> T) -> (i64, T) {
        let slot = self.slot(sandbox);
        let pending = slot.lock();
        let read = read();
        (*pending, read)
    }
}

/// The TLS settings for calling providers and webhooks: the host's trusted roots.
pub fn tls_client_config() -> Result<rustls::ClientConfig, String> {
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

fn upstream_client() -> Result<UpstreamClient, String> {
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

/// Serves the gateway on a link's listener.
fn serve(ctx: Arc<Inner>, link: SandboxId, listener: tokio::net::TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let what = format!("gateway of sandbox {link}");
        loop {
            let (stream, _) = caged_network::sockets::accept(&listener, &what).await;
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
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub kind: &'static str,
    message: String,
}

pub(crate) fn refuse(
    status: StatusCode,
    kind: &'static str,
    message: impl Into<String>,
) -> Refusal {
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

pub(crate) fn full(bytes: Bytes) -> GatewayBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The API a path belongs to and the rest of it (`v1/chat/completions`).
pub(crate) fn route(path: &str) -> Option<(Protocol, &str)> {
    if let Some(rest) = path.strip_prefix("/openai/") {
        Some((Protocol::OpenAi, rest))
    } else {
        path.strip_prefix("/anthropic/")
            .map(|rest| (Protocol::Anthropic, rest))
    }
}

pub(crate) fn provider_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::OpenAi => "openai",
        Protocol::Anthropic => "anthropic",
    }
}

/// The credential a call carries: `Authorization: Bearer …` (OpenAI SDKs, Claude Code's
/// auth token) or `x-api-key` (Anthropic SDKs).
pub(crate) fn presented_credential(headers: &HeaderMap) -> Option<&str> {
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
    ctx: &Arc<Inner>,
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
    match forward::forward(ctx, link, protocol, request).await {
        Ok(response) => response,
        Err(refusal) => error_response(Some(protocol), &refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

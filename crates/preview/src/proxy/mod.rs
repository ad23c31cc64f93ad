//! The preview proxy. Every request is routed by its Host (exactly `cage-<id>-<port>.<domain>`),
//! checked (TLS name, rate limit, password) and only then forwarded: over a connection dialled
//! from inside the sandbox's own network namespace, so it reaches the sandbox's loopback and
//! nothing else. HTTP/1.1 and HTTP/2 from clients, upgrades (WebSocket) and streaming bodies pass
//! through; the preview's own credentials never reach the sandbox.
//!
//! - `route`: from a request's Host to a sandbox's cage, waking it if it sleeps.
//! - `login`: passwords, the login form and its cookie.
//! - `forward`: the request on to the sandbox and its answer back, as activity.
//! - `dial`: connections made inside the sandbox's namespace, and upgraded ones metered.

mod dial;
mod forward;
mod login;
mod route;

use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{Lifecycle, Previews};
use dial::Dialer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// The path on every preview host where the login form posts.
const LOGIN_PATH: &str = "/__caged/login";
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Client connections open at once, at most (each holds a descriptor, and a task).
const MAX_CONNECTIONS: usize = 10_000;

/// What every connection shares.
struct Proxy {
    previews: Arc<Previews>,
    lifecycle: Arc<dyn Lifecycle>,
    client: Client<Dialer, Body>,
}

/// Accepts preview connections until `stop`.
pub(crate) async fn serve(
    previews: Arc<Previews>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    lifecycle: Arc<dyn Lifecycle>,
    stop: CancellationToken,
) {
    let client: Client<Dialer, Body> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .set_host(false)
        .build(Dialer {
            previews: previews.clone(),
        });
    let proxy = Arc::new(Proxy {
        previews,
        lifecycle,
        client,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = caged_network::sockets::accept(&listener, "preview listener") => accepted,
            () = stop.cancelled() => return,
        };
        // Past the cap a new connection is closed at once rather than starving the others.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "preview connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let (proxy, tls) = (proxy.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let ctx = Arc::new(Ctx {
                        proxy,
                        peer,
                        sni: None,
                        tls: false,
                        slot: Mutex::new(Some(slot)),
                    });
                    serve_connection(stream, ctx).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            _ => return,
                        };
                    let sni = stream.get_ref().1.server_name().map(str::to_string);
                    let ctx = Arc::new(Ctx {
                        proxy,
                        peer,
                        sni,
                        tls: true,
                        slot: Mutex::new(Some(slot)),
                    });
                    serve_connection(stream, ctx).await;
                }
            }
        });
    }
}

/// What every request on one client connection shares.
struct Ctx {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    /// The name the client asked for in its TLS handshake.
    sni: Option<String>,
    tls: bool,
    /// This connection's place among the `MAX_CONNECTIONS`; an upgraded connection takes it
    /// along, since it outlives the HTTP connection it came from.
    slot: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

async fn serve_connection<S>(stream: S, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    // Errors here are the client's (gone away, malformed); there is no one to tell.
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let route = match route::route_of(&ctx, &req) {
        Ok(route) => route,
        Err(refusal) => return refusal.into(),
    };
    let previews = &ctx.proxy.previews;
    if let Err(wait) = previews.limit.take(route, Instant::now()) {
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
            "This preview allows a limited number of requests a minute. Try again shortly.",
        );
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return response;
    }
    let cage = match route::cage_of(&ctx.proxy, route).await {
        Ok(cage) => cage,
        Err(refusal) => return refusal.into(),
    };
    let password = cage.passwords.lock().get(&route.port).cloned();
    let mut req = req;
    if let Some(password) = password {
        if req.uri().path() == LOGIN_PATH && req.method() == Method::POST {
            return login::login(&ctx, route, &password, req).await;
        }
        if !login::authorized(&ctx, route, &password, &mut req).await {
            return login::login_page(&req, None);
        }
    }
    forward::forward(&ctx, route, &cage, req).await
}

fn unavailable(message: &str) -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Sandbox unavailable",
        message,
    )
}

/// Why a request is not forwarded; becomes a [`page`].
struct Refusal {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    message: String,
}

fn refuse(status: StatusCode, code: &'static str, title: &'static str, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        title,
        message: message.to_string(),
    }
}

impl From<Refusal> for Response<Body> {
    fn from(refusal: Refusal) -> Self {
        page(
            refusal.status,
            refusal.code,
            refusal.title,
            &refusal.message,
        )
    }
}

/// A small HTML page; `code` also goes in `x-caged-error` for scripts.
fn page(status: StatusCode, code: &'static str, title: &str, message: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{0}</title>\
<style>body{{font:16px system-ui,sans-serif;max-width:36em;margin:15vh auto;padding:0 1em}}</style></head>\
<body><h1>{0}</h1><p>{1}</p><p><small>Caged preview · {2}</small></p></body></html>\n",
        html_escape::encode_quoted_attribute(title),
        html_escape::encode_quoted_attribute(message),
        status
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    html_headers(response.headers_mut(), code);
    response
}

fn html_headers(headers: &mut HeaderMap, code: &'static str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-caged-error", HeaderValue::from_static(code));
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_escape_what_they_show() {
        let page = page(
            StatusCode::NOT_FOUND,
            "x",
            "<b>",
            "<script>alert('x')</script> & \"more\"",
        );
        let (_, body) = page.into_parts();
        let text = body
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains("<script>") && !text.contains("<b>"),
            "{text}"
        );
        assert!(
            text.contains("&lt;script&gt;") && text.contains("&amp;"),
            "{text}"
        );
    }
}

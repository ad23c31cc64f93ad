//! The preview proxy. Every request is routed by its Host (exactly `cage-<id>-<port>.<domain>`),
//! checked (TLS name, rate limit, password) and only then forwarded: over a connection dialled
//! from inside the sandbox's own network namespace, so it reaches the sandbox's loopback and
//! nothing else. HTTP/1.1 and HTTP/2 from clients, upgrades (WebSocket) and streaming bodies pass
//! through; the preview's own credentials never reach the sandbox.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::gate::{self, COOKIE};
use super::host::{self, HostError, Route};
use super::{Cage, Previews, attach, lock};
use crate::html::escape;
use crate::{AppState, blocking, sandboxes};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// The path on every preview host where the login form posts.
const LOGIN_PATH: &str = "/__caged/login";
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Client connections open at once, at most (each holds a descriptor, and a task).
const MAX_CONNECTIONS: usize = 10_000;

/// Accepts preview connections until the server stops.
pub(crate) async fn serve(state: Arc<AppState>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let client: Client<Dialer, Body> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .set_host(false)
        .build(Dialer {
            previews: state.previews.clone(),
        });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!("preview listener: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = state.stop.cancelled() => return,
        };
        // Past the cap a new connection is closed at once rather than starving the others.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "preview connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (state, client, tls) = (state.clone(), client.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let ctx = Arc::new(Ctx {
                        state,
                        client,
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
                        state,
                        client,
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
    state: Arc<AppState>,
    client: Client<Dialer, Body>,
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
    let route = match route_of(&ctx, &req) {
        Ok(route) => route,
        Err(refusal) => return refusal.into(),
    };
    let state = &ctx.state;
    if let Err(wait) = state.previews.limit.take(route, Instant::now()) {
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
    let cage = match cage_of(state, route).await {
        Ok(cage) => cage,
        Err(refusal) => return refusal.into(),
    };
    let password = lock(&cage.passwords).get(&route.port).cloned();
    let mut req = req;
    if let Some(password) = password {
        if req.uri().path() == LOGIN_PATH && req.method() == Method::POST {
            return login(&ctx, route, &password, req).await;
        }
        if !authorized(&ctx, route, &password, &mut req).await {
            return login_page(&req, None);
        }
    }
    forward(&ctx, route, &cage, req).await
}

/// The route a request is for, or the refusal to send; nothing has been looked up yet.
fn route_of(ctx: &Ctx, req: &Request<Incoming>) -> Result<Route, Refusal> {
    let bad = |message: &str| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Bad request",
            message,
        )
    };
    if req.method() == Method::CONNECT {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Not a proxy",
            "CONNECT is not served here.",
        ));
    }
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(bad("More than one Host header."));
    }
    let host_header = match hosts.first() {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| bad("The Host header is not text."))?,
        ),
        None => None,
    };
    let authority = if req.version() == Version::HTTP_2 {
        let authority = req.uri().authority().map(|authority| authority.as_str());
        match (authority, host_header) {
            (Some(authority), Some(host))
                if host::normalize(authority).ok() != host::normalize(host).ok() =>
            {
                return Err(bad(":authority and Host disagree."));
            }
            (Some(authority), _) => authority,
            (None, Some(host)) => host,
            (None, None) => return Err(bad("No :authority or Host.")),
        }
    } else {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            return Err(bad("Absolute-form request targets are not accepted here."));
        }
        host_header.ok_or_else(|| bad("No Host header."))?
    };
    let route = host::route(authority, &ctx.state.previews.domain).map_err(|err| match err {
        HostError::Malformed => bad("The Host header is not a valid host name."),
        HostError::NotAPreview => refuse(
            StatusCode::NOT_FOUND,
            "not_a_preview",
            "Not a preview address",
            &format!(
                "Preview addresses look like cage-<sandbox>-<port>.{}.",
                ctx.state.previews.domain
            ),
        ),
    })?;
    if ctx.tls {
        let asked = ctx.sni.as_deref().and_then(|sni| host::normalize(sni).ok());
        if asked.is_none() || asked != host::normalize(authority).ok() {
            return Err(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                "Misdirected request",
                "The TLS server name does not match the Host of the request.",
            ));
        }
    }
    Ok(route)
}

/// The cage a route leads to: from memory when the sandbox is watched, otherwise from the
/// database (and watched from then on).
async fn cage_of(state: &Arc<AppState>, route: Route) -> Result<Arc<Cage>, Refusal> {
    if let Some(cage) = state.previews.cage(route.id) {
        return Ok(cage);
    }
    let gone = || {
        refuse(
            StatusCode::NOT_FOUND,
            "no_sandbox",
            "No such sandbox",
            &format!("There is no live sandbox {}.", route.id),
        )
    };
    let heads = state
        .db
        .run(move |store| store.live_heads())
        .await
        .map_err(|err| unavailable(&format!("database: {err}")))?;
    let head = heads
        .into_iter()
        .find(|head| head.id == route.id)
        .ok_or_else(gone)?;
    if head.state == caged_domain::SandboxState::Paused {
        // Its namespace is opened once it runs again.
        wake(state, &head.account_id, route.id).await?;
        return match state.previews.cage(route.id) {
            Some(cage) => Ok(cage),
            None => {
                let head = state
                    .db
                    .run(move |store| store.live_heads())
                    .await
                    .ok()
                    .and_then(|heads| heads.into_iter().find(|head| head.id == route.id))
                    .ok_or_else(gone)?;
                attach(state, &head)
                    .await
                    .map_err(|err| unavailable(&err.to_string()))
            }
        };
    }
    attach(state, &head)
        .await
        .map_err(|err| unavailable(&err.to_string()))
}

async fn wake(
    state: &AppState,
    account_id: &str,
    id: caged_domain::SandboxId,
) -> Result<caged_activity::Busy, Refusal> {
    sandboxes::active(state, account_id, id, "a preview request")
        .await
        .map(|(_, busy)| busy)
        .map_err(|err| unavailable(&err.to_string()))
}

/// Whether the request carries this port's credential; removes it from the request if so.
async fn authorized(
    ctx: &Ctx,
    route: Route,
    password: &caged_store::PreviewPassword,
    req: &mut Request<Incoming>,
) -> bool {
    let previews = &ctx.state.previews;
    let now_secs = caged_domain::time::now_ms() / 1000;
    let cookies: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok().map(str::to_string))
        .collect();
    let mut ok = false;
    let mut kept = Vec::new();
    for header in &cookies {
        let (own, rest) = gate::strip_own_cookie(header);
        if let Some(value) = own {
            ok |= previews
                .cookie_key
                .accepts(&value, route, password.set_at_ms, now_secs);
        }
        kept.extend(rest);
    }
    if ok {
        set_cookies(req.headers_mut(), kept);
        return true;
    }
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(gate::basic_password);
    let Some(given) = basic else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let known = lock(&previews.verified).get(&(route, digest)).copied();
    let ok = if known == Some(password.set_at_ms) {
        true
    } else {
        let phc = password.hash.clone();
        let verified = blocking::run(move || gate::verify_password(&given, &phc)).await;
        if verified {
            let mut cache = lock(&previews.verified);
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert((route, digest), password.set_at_ms);
        }
        verified
    };
    if ok {
        // The header carried the preview's password: it is not the sandbox's business.
        req.headers_mut().remove(header::AUTHORIZATION);
        set_cookies(req.headers_mut(), kept);
    }
    ok
}

fn set_cookies(headers: &mut HeaderMap, kept: Vec<String>) {
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

async fn login(
    ctx: &Ctx,
    route: Route,
    password: &caged_store::PreviewPassword,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match http_body_util::Limited::new(req.into_body(), 8 * 1024)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "Too large",
                "The login form is too large.",
            );
        }
    };
    let mut given = String::new();
    let mut next = String::from("/");
    for (key, value) in form_urlencoded::parse(&body) {
        match &*key {
            "password" => given = value.into_owned(),
            "next" => next = value.into_owned(),
            _ => {}
        }
    }
    let phc = password.hash.clone();
    let verified = blocking::run(move || gate::verify_password(&given, &phc)).await;
    if !verified {
        return login_form(StatusCode::UNAUTHORIZED, &next, Some("Wrong password."));
    }
    let now_secs = caged_domain::time::now_ms() / 1000;
    let value = ctx
        .state
        .previews
        .cookie_key
        .issue(route, password.set_at_ms, now_secs);
    let secure = if ctx.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        gate::LOGIN_SECONDS
    );
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(safe_next(&next)).unwrap_or(HeaderValue::from_static("/")),
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A redirect target after login: a path on this same host, nothing else.
fn safe_next(next: &str) -> &str {
    let same_host = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.bytes().all(|b| b.is_ascii_graphic());
    if same_host { next } else { "/" }
}

/// 401 for a protected preview: a login form for browsers, a basic-auth challenge otherwise.
fn login_page(req: &Request<Incoming>, error: Option<&str>) -> Response<Body> {
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html && req.method() == Method::GET {
        let next = req.uri().path_and_query().map_or("/", |path| path.as_str());
        return login_form(StatusCode::UNAUTHORIZED, next, error);
    }
    let mut response = page(
        StatusCode::UNAUTHORIZED,
        "password_required",
        "Password required",
        "This preview is protected. Log in, or send the password with HTTP basic auth.",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"caged preview\", charset=\"UTF-8\""),
    );
    response
}

fn login_form(status: StatusCode, next: &str, error: Option<&str>) -> Response<Body> {
    let error = error
        .map(|error| format!("<p class=\"error\">{}</p>", escape(error)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Password required</title><style>body{{font:16px system-ui,sans-serif;max-width:22em;margin:15vh auto;padding:0 1em}}\
input{{font:inherit;width:100%;box-sizing:border-box;margin:.4em 0;padding:.5em}}.error{{color:#b00}}</style></head>\
<body><h1>Password required</h1><p>This preview is protected by its owner.</p>{error}\
<form method=\"post\" action=\"{LOGIN_PATH}\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
<input type=\"password\" name=\"password\" autofocus autocomplete=\"current-password\" aria-label=\"Password\">\
<input type=\"submit\" value=\"Open preview\"></form></body></html>",
        escape(safe_next(next))
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    html_headers(response.headers_mut(), "password_required");
    response
}

async fn forward(
    ctx: &Ctx,
    route: Route,
    cage: &Arc<Cage>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let state = &ctx.state;
    let id = route.id;
    // Busy first, then check: a sandbox seen running with its lock free cannot be put to
    // sleep under this request any more.
    let mut busy = state.activity.busy(id);
    let settled = cage.running.load(Ordering::Acquire) && state.locks.try_lock(id).is_some();
    if !settled {
        match wake(state, &cage.account_id, id).await {
            Ok(woken) => busy = woken,
            Err(refusal) => return refusal.into(),
        }
    }
    note_activity(state, cage, route.port);

    let upgrade = wants_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|authority| authority.as_str().to_string());
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_string();
    let mut headers = std::mem::take(&mut parts.headers);
    caged_network::http::strip_hop_by_hop(&mut headers, upgrade);
    if !headers.contains_key(header::HOST)
        && let Some(value) = authority.and_then(|authority| HeaderValue::from_str(&authority).ok())
    {
        headers.insert(header::HOST, value);
    }
    append_forwarded(&mut headers, ctx);
    let uri = match format!("http://{id}:{}{path}", route.port).parse() {
        Ok(uri) => uri,
        Err(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Bad request",
                "The request path is not valid.",
            );
        }
    };
    let mut upstream = Request::new(body.map_err(BoxError::from).boxed());
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = headers;

    let mut response = match ctx.client.request(upstream).await {
        Ok(response) => response,
        Err(err) => return unreachable_port(route, &err),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (state, cage, port) = (state.clone(), cage.clone(), route.port);
        let slot = lock(&ctx.slot).take();
        tokio::spawn(async move {
            let _slot = slot;
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let mut client = Metered::new(TokioIo::new(client), state, cage, port);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        drop(busy); // an open socket is not work; traffic on it is (see Metered)
        let (mut parts, _) = response.into_parts();
        clean_response_headers(&mut parts.headers, true);
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = response.into_parts();
    clean_response_headers(&mut parts.headers, false);
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|length| length <= PIPELINE_ABOVE);
    let body = if small {
        // The sandbox stays busy until the whole body has been passed on.
        body.map_err(move |err| {
            let _busy = &busy;
            BoxError::from(err)
        })
        .boxed()
    } else {
        pipelined(body, busy)
    };
    Response::from_parts(parts, body)
}

/// Bodies larger than this are read ahead of the client (see [`pipelined`]).
const PIPELINE_ABOVE: u64 = 64 * 1024;
/// Frames read ahead of the client at most.
const READ_AHEAD_FRAMES: usize = 8;

/// A body relayed by its own task, which keeps reading from the sandbox while the previous
/// frames are still being written to the client. Passed through directly, hyper reads the next
/// frame only once the last one is written, so reading and writing never overlap and a large
/// response takes twice as long. The read-ahead is bounded, so a slow client still slows the
/// sandbox down rather than filling memory.
fn pipelined(mut body: Incoming, busy: caged_activity::Busy) -> Body {
    let (frames, mut ahead) = tokio::sync::mpsc::channel(READ_AHEAD_FRAMES);
    tokio::spawn(async move {
        let _busy = busy; // busy until the last frame has been read
        while let Some(frame) = body.frame().await {
            let failed = frame.is_err();
            if frames.send(frame.map_err(BoxError::from)).await.is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| ahead.poll_recv(cx));
    http_body_util::StreamBody::new(stream).boxed()
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && caged_network::http::connection_tokens(req.headers())
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
}

fn append_forwarded(headers: &mut HeaderMap, ctx: &Ctx) {
    let peer = ctx.peer.ip().to_string();
    let forwarded_for = match headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => peer,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    let proto = if ctx.tls { "https" } else { "http" };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
}

/// The sandbox's response made safe to pass on: no hop-by-hop headers, cookies host-only.
fn clean_response_headers(headers: &mut HeaderMap, upgrade: bool) {
    caged_network::http::strip_hop_by_hop(headers, upgrade);
    let cookies: Vec<String> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(gate::host_only_set_cookie)
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// Traffic is activity: restarts the idle clock (in memory every time, in the database at
/// most once a second, and as a logged `http` event at most once a minute).
fn note_activity(state: &Arc<AppState>, cage: &Cage, port: u16) {
    let now = caged_domain::time::now_ms();
    state.activity.touch(cage.id, now, cage.timeout);
    let Some(last) = claim_second(&cage.last_marked_ms, now) else {
        return;
    };
    let log = now / 60_000 != last / 60_000;
    let (state, id, account) = (state.clone(), cage.id, cage.account_id.clone());
    tokio::spawn(async move {
        let payload = serde_json::json!({ "port": port });
        let result = state
            .db
            .run(move |store| {
                if log {
                    store
                        .record_event(id, &account, now, "http", &payload, true)
                        .map(Some)
                } else {
                    store.mark_active(id, now).map(|()| None)
                }
            })
            .await;
        match result {
            Ok(Some(event)) => state.db.publish(event),
            Ok(None) => {}
            Err(err) => tracing::warn!(sandbox = %id, "could not record preview traffic: {err}"),
        }
    });
}

/// For work done at most once a second whoever asks: `Some(previous time)` to the one caller
/// that moved `last` to `now`, `None` to everyone else.
fn claim_second(last: &std::sync::atomic::AtomicI64, now: i64) -> Option<i64> {
    let previous = last.load(Ordering::Relaxed);
    let due = now - previous >= 1_000;
    (due && last
        .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok())
    .then_some(previous)
}

/// A sandbox fell asleep under an open connection (a WebSocket left open) and the client
/// spoke: wake it in the background, at most once a second.
fn wake_for_traffic(state: &Arc<AppState>, cage: &Cage) {
    if claim_second(&cage.last_wake_ms, caged_domain::time::now_ms()).is_none() {
        return;
    }
    let (state, id, account) = (state.clone(), cage.id, cage.account_id.clone());
    tokio::spawn(async move {
        if let Err(err) = sandboxes::active(&state, &account, id, "preview traffic").await {
            tracing::debug!(sandbox = %id, "could not wake for preview traffic: {err}");
        }
    });
}

fn unreachable_port(route: Route, err: &hyper_util::client::legacy::Error) -> Response<Body> {
    let cause = std::error::Error::source(err)
        .map(ToString::to_string)
        .unwrap_or_else(|| err.to_string());
    tracing::debug!(sandbox = %route.id, port = route.port, "preview upstream failed: {cause}");
    let message = if err.is_connect() {
        format!(
            "Nothing answers on port {} in sandbox {}. Start a server there and reload.",
            route.port, route.id
        )
    } else {
        format!(
            "The server on port {} in sandbox {} failed to answer: {cause}.",
            route.port, route.id
        )
    };
    page(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        "Nothing to preview",
        &message,
    )
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
        escape(title),
        escape(message),
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

/// Dials `http://<sandbox-id>:<port>` from inside that sandbox's network namespace, at the
/// address the port was detected listening on (its loopback when listening on all addresses).
#[derive(Clone)]
struct Dialer {
    previews: Arc<Previews>,
}

impl tower_service::Service<hyper::Uri> for Dialer {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let previews = self.previews.clone();
        Box::pin(async move {
            let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such sandbox");
            let id: caged_domain::SandboxId = uri
                .host()
                .and_then(|host| host.parse().ok())
                .ok_or_else(not_found)?;
            let port = uri.port_u16().ok_or_else(not_found)?;
            let cage = previews.cage(id).ok_or_else(not_found)?;
            let listening = lock(&cage.ports).get(&port).copied();
            let mut last_error = None;
            for addr in dial_candidates(listening) {
                match cage.ns.connect(SocketAddr::new(addr, port)).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Err(err) => last_error = Some(err),
                }
            }
            Err(last_error.unwrap_or_else(not_found))
        })
    }
}

/// Where to dial for a port listening on `addr` (all addresses means loopback).
fn dial_candidates(addr: Option<IpAddr>) -> Vec<IpAddr> {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    match addr {
        Some(IpAddr::V4(addr)) if addr.is_unspecified() => vec![v4],
        Some(IpAddr::V6(addr)) if addr.is_unspecified() => vec![v4, v6],
        Some(addr) => vec![addr],
        None => vec![v4, v6],
    }
}

/// An upgraded client connection whose reads count as activity on the sandbox.
struct Metered<S> {
    inner: S,
    state: Arc<AppState>,
    cage: Arc<Cage>,
    port: u16,
}

impl<S> Metered<S> {
    fn new(inner: S, state: Arc<AppState>, cage: Arc<Cage>, port: u16) -> Self {
        Metered {
            inner,
            state,
            cage,
            port,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            note_activity(&self.state, &self.cage, self.port);
            if !self.cage.running.load(Ordering::Acquire) {
                wake_for_traffic(&self.state, &self.cage);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_redirects_stay_on_the_host() {
        assert_eq!(safe_next("/app?x=1"), "/app?x=1");
        for bad in [
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "",
            "/a b",
            "/\r\nx",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }
}

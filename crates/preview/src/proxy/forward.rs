//! A request on to the sandbox and its answer back: hop-by-hop headers and the sandbox's
//! cookies for other hosts removed, large bodies read ahead, upgrades (WebSocket) relayed and
//! metered; the traffic is the sandbox's activity, and wakes it if it fell asleep under an open
//! connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use caged_domain::EventKind;
use caged_store::NewEvent;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::route::wake;
use super::{Body, BoxError, Ctx, Proxy, empty, page};
use crate::host::Route;
use crate::{Cage, Previews, gate};

pub(super) async fn forward(
    ctx: &Ctx,
    route: Route,
    cage: &Arc<Cage>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let proxy = &ctx.proxy;
    let id = route.id;
    // Busy first, then check: a sandbox seen running with its lock free cannot be put to
    // sleep under this request any more.
    let mut busy = proxy.previews.activity.busy(id);
    let settled = cage.running.load(Ordering::Acquire) && proxy.lifecycle.settled(id);
    if !settled {
        match wake(proxy, &cage.account_id, id).await {
            Ok(woken) => busy = woken,
            Err(refusal) => return refusal.into(),
        }
    }
    note_activity(&proxy.previews, cage, route.port);

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

    let mut response = match proxy.client.request(upstream).await {
        Ok(response) => response,
        Err(err) => return unreachable_port(route, &err),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (proxy, cage, port) = (proxy.clone(), cage.clone(), route.port);
        let slot = ctx.slot.lock().take();
        tokio::spawn(async move {
            let _slot = slot;
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let mut client = Metered::new(TokioIo::new(client), proxy, cage, port);
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
fn note_activity(previews: &Arc<Previews>, cage: &Cage, port: u16) {
    let now = caged_domain::time::now_ms();
    previews.activity.touch(cage.id, now, cage.timeout);
    let Some(last) = claim_second(&cage.last_marked_ms, now) else {
        return;
    };
    let log = now / 60_000 != last / 60_000;
    let (db, id, account) = (previews.db.clone(), cage.id, cage.account_id.clone());
    tokio::spawn(async move {
        let payload = serde_json::json!({ "port": port });
        let result = db
            .write(move |store| {
                if log {
                    let new = NewEvent::new(id, account, now, EventKind::Http, payload);
                    store.record_event(&new, true).map(Some)
                } else {
                    store.mark_active(id, now).map(|()| None)
                }
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(sandbox = %id, "could not record preview traffic: {err}");
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
fn wake_for_traffic(proxy: &Arc<Proxy>, cage: &Cage) {
    if claim_second(&cage.last_wake_ms, caged_domain::time::now_ms()).is_none() {
        return;
    }
    let (proxy, id, account) = (proxy.clone(), cage.id, cage.account_id.clone());
    tokio::spawn(async move {
        if let Err(err) = proxy.lifecycle.wake(&account, id, "preview traffic").await {
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

/// An upgraded client connection whose reads count as activity on the sandbox.
struct Metered<S> {
    inner: S,
    proxy: Arc<Proxy>,
    cage: Arc<Cage>,
    port: u16,
}

impl<S> Metered<S> {
    fn new(inner: S, proxy: Arc<Proxy>, cage: Arc<Cage>, port: u16) -> Self {
        Metered {
            inner,
            proxy,
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
            note_activity(&self.proxy.previews, &self.cage, self.port);
            if !self.cage.running.load(Ordering::Acquire) {
                wake_for_traffic(&self.proxy, &self.cage);
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

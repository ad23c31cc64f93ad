//! From a request to the sandbox it is for: its Host says which sandbox and port, the cage is
//! found (or opened, waking a sleeping sandbox first); nothing is looked up before the Host is
//! known to be one of ours.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};

use super::{Ctx, Proxy, Refusal, refuse, unavailable};
use crate::Cage;
use crate::host::{self, HostError, Route};

/// The route a request is for, or the refusal to send; nothing has been looked up yet.
pub(super) fn route_of(ctx: &Ctx, req: &Request<Incoming>) -> Result<Route, Refusal> {
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
    let route = host::route(authority, &ctx.proxy.previews.domain).map_err(|err| match err {
        HostError::Malformed => bad("The Host header is not a valid host name."),
        HostError::NotAPreview => refuse(
            StatusCode::NOT_FOUND,
            "not_a_preview",
            "Not a preview address",
            &format!(
                "Preview addresses look like cage-<sandbox>-<port>.{}.",
                ctx.proxy.previews.domain
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
pub(super) async fn cage_of(proxy: &Arc<Proxy>, route: Route) -> Result<Arc<Cage>, Refusal> {
    if let Some(cage) = proxy.previews.cage(route.id) {
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
    let heads = proxy
        .previews
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
        wake(proxy, &head.account_id, route.id).await?;
        return match proxy.previews.cage(route.id) {
            Some(cage) => Ok(cage),
            None => {
                let head = proxy
                    .previews
                    .db
                    .run(move |store| store.live_heads())
                    .await
                    .ok()
                    .and_then(|heads| heads.into_iter().find(|head| head.id == route.id))
                    .ok_or_else(gone)?;
                proxy
                    .previews
                    .attach(&head)
                    .await
                    .map_err(|err| unavailable(&err.to_string()))
            }
        };
    }
    proxy
        .previews
        .attach(&head)
        .await
        .map_err(|err| unavailable(&err.to_string()))
}

pub(super) async fn wake(
    proxy: &Proxy,
    account_id: &str,
    id: caged_domain::SandboxId,
) -> Result<caged_activity::Busy, Refusal> {
    proxy
        .lifecycle
        .wake(account_id, id, "a preview request")
        .await
        .map_err(|err| unavailable(&err))
}

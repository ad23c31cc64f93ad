//! Who is calling: an API key (`Authorization: Bearer`, checked against its stored hash in
//! constant time) or the dashboard's session cookie. Part of the HTTP layer: its extractors
//! answer a refused request with an [`ApiError`]. The keys themselves are `crate::keys`'.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use caged_domain::random_hex;
use caged_domain::time::now_ms;
use caged_store::Account;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::keys::hash;
use crate::state::AppState;

/// The authenticated account behind a request: an API key (`Authorization: Bearer`), or the
/// dashboard's session cookie. A request the cookie authenticates must come from the dashboard's
/// own origin, and one that changes something must carry the session's CSRF token in
/// [`CSRF_HEADER`], which no other origin can read or send.
pub(crate) struct Caller(pub Account);

/// The dashboard's session cookie; host-only, so preview hosts never receive it.
pub(crate) const SESSION_COOKIE: &str = "caged_session";
pub(crate) const CSRF_HEADER: &str = "x-caged-csrf";

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let peer = peer(&parts.extensions);
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return match cookie(&parts.headers, SESSION_COOKIE) {
                Some(token) => {
                    not_locked_out(state, peer)?;
                    let caller = from_session(parts, state, token).await;
                    counted(state, peer, caller)
                }
                None => Err(ApiError::unauthorized(
                    "missing Authorization: Bearer <api key>",
                )),
            };
        };
        not_locked_out(state, peer)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <api key>`"));
        let caller = match token {
            Ok(token) => account_for_key(state, token)
                .await
                .map(|(_, account)| Caller(account)),
            Err(err) => Err(err),
        };
        counted(state, peer, caller)
    }
}

/// The address a request came from, as the failed-authentication limit keys it: an IPv6 client
/// usually holds a whole /64, so that is one client.
pub(crate) fn peer(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    let ConnectInfo(addr) = extensions.get::<ConnectInfo<SocketAddr>>()?;
    Some(match addr.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    })
}

/// Refuses every credential from an address that has used up its wrong ones, before looking at
/// what it sent this time: guessing gets no answers.
pub(crate) fn not_locked_out(state: &AppState, peer: Option<IpAddr>) -> Result<(), ApiError> {
    let Some(peer) = peer else { return Ok(()) };
    state
        .auth_failures
        .lock()
        .check(&peer, Instant::now())
        .map_err(|wait| locked_out(state, wait))
}

/// Counts a refused credential against its address.
pub(crate) fn counted<T>(
    state: &AppState,
    peer: Option<IpAddr>,
    outcome: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let (Err(err), Some(peer)) = (&outcome, peer)
        && err.status == axum::http::StatusCode::UNAUTHORIZED
    {
        // The limit answers from the next attempt on; this one gets its own error.
        let _ = state.auth_failures.lock().take(peer, Instant::now());
    }
    outcome
}

fn locked_out(state: &AppState, wait: Duration) -> ApiError {
    ApiError::rate_limited(
        format!(
            "too many failed sign-ins from this address (the limit is {} a minute); try again later",
            state.config.auth_failures_per_minute
        ),
        wait,
    )
}

/// The key id and account of an API key, if it is valid.
pub(crate) async fn account_for_key(
    state: &AppState,
    token: &str,
) -> Result<(String, Account), ApiError> {
    let (key_id, secret) = token
        .trim()
        .strip_prefix("caged_")
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(|| ApiError::unauthorized("malformed API key"))?;
    let (key_id, secret) = (key_id.to_string(), secret.to_string());
    let lookup = key_id.clone();
    let stored = state.db.run(move |store| store.api_key(&lookup)).await?;
    let valid = stored
        .as_ref()
        .is_some_and(|stored| bool::from(stored.secret_hash.ct_eq(&hash(&secret))));
    match stored {
        Some(stored) if valid => Ok((key_id, stored.account)),
        _ => Err(ApiError::unauthorized("invalid API key")),
    }
}

async fn from_session(parts: &Parts, state: &AppState, token: String) -> Result<Caller, ApiError> {
    if !same_origin(&parts.headers) {
        return Err(ApiError::forbidden(
            "the session cookie is accepted only from the dashboard's own origin",
        ));
    }
    let session = web_session(state, &token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the dashboard session has ended; sign in again"))?;
    if !parts.method.is_safe() {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(session.csrf_token.as_bytes())) {
            return Err(ApiError::forbidden(format!(
                "a change made with the session cookie needs the {CSRF_HEADER} header of its page"
            )));
        }
    }
    Ok(Caller(session.account))
}

/// The signed-in browser behind a session cookie's token.
pub(crate) async fn web_session(
    state: &AppState,
    token: &str,
) -> Result<Option<caged_store::WebSession>, ApiError> {
    let token_hash = hash(token);
    Ok(state
        .db
        .run(move |store| store.web_session(&token_hash, now_ms()))
        .await?)
}

/// Opens a dashboard session for a key's holder; returns the cookie's token.
pub(crate) async fn open_web_session(
    state: &AppState,
    key_id: String,
    lifetime_ms: i64,
) -> Result<String, ApiError> {
    let token = random_hex(32);
    let token_hash = hash(&token);
    state
        .db
        .run(move |store| {
            let now = now_ms();
            store.create_web_session(
                &token_hash,
                &key_id,
                &random_hex(16),
                now,
                now + lifetime_ms,
            )
        })
        .await?;
    Ok(token)
}

pub(crate) async fn close_web_session(state: &AppState, token: &str) -> Result<(), ApiError> {
    let token_hash = hash(token);
    state
        .db
        .run(move |store| store.delete_web_session(&token_hash))
        .await?;
    Ok(())
}

/// A cookie's value from the `Cookie` headers.
pub(crate) fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// Whether a browser's request came from a page of this server's own origin: its `Origin`, if it
/// sent one, names the host the request was sent to. Browsers send `Origin` with every
/// cross-origin request that could change something (and with WebSocket handshakes), so a
/// preview's page cannot drive the API with the dashboard's cookie.
pub(crate) fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|origin| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
    });
    matches!((origin_host, host), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
}

/// An authenticated caller who is an administrator.
pub(crate) struct Admin(pub Account);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let Caller(account) = Caller::from_request_parts(parts, state).await?;
        if !account.is_admin {
            return Err(ApiError::forbidden("this needs an admin API key"));
        }
        Ok(Admin(account))
    }
}

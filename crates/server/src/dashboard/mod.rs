//! The web dashboard, served by the API listener from assets compiled into the binary.
//!
//! Pages are one server-rendered shell (the account's name and the session's CSRF token in it)
//! and a small script that draws each page from the `/v1` API, authenticated by the session
//! cookie. Signing in trades an API key for that cookie: `HttpOnly`, `SameSite=Strict`,
//! host-only (preview hosts, `cage-*.<domain>`, never receive it), `Secure` when the sign-in came
//! over HTTPS. See `auth::Caller` for what a cookie-authenticated request must also carry.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::auth::{self, SESSION_COOKIE};
use crate::api::error::ApiError;
use crate::state::AppState;
use html_escape::encode_quoted_attribute as escape;

/// How long a sign-in lasts.
const SESSION_LIFETIME_MS: i64 = 12 * 3600 * 1000;

struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// A prefix of the content's SHA-256: the shell asks for `?v=<this>`, so an asset can be
    /// cached for good and a new binary's assets are fetched anew.
    version: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        Asset {
            body,
            content_type,
            version: hex::encode(&Sha256::digest(body.as_bytes())[..6]),
        }
    }
}

static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("assets/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/app.css"), "text/css; charset=utf-8"));
static ICON: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/icon.svg"), "image/svg+xml"));

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(page))
        .route("/new", get(page))
        .route("/usage", get(page))
        .route("/sandboxes/{id}", get(page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/{file}", get(asset))
}

/// What every page's answer carries: nothing from elsewhere may load or frame it.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(response)
}

/// Any page: the shell for a signed-in browser, the sign-in page otherwise.
async fn page(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    let session = match session_of(&state, &headers).await {
        Ok(session) => session,
        Err(err) => return err.into_response(),
    };
    match session {
        Some(session) => html(StatusCode::OK, shell(&session)),
        None => {
            // The whole address, query included, so a filtered list or a chosen period survives.
            let here = uri.path_and_query().map_or("/", |path| path.as_str());
            Redirect::to(&format!("/login?next={}", encode(here))).into_response()
        }
    }
}

async fn session_of(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<caged_store::WebSession>, ApiError> {
    match auth::cookie(headers, SESSION_COOKIE) {
        Some(token) => auth::web_session(state, &token).await,
        None => Ok(None),
    }
}

fn shell(session: &caged_store::WebSession) -> String {
    let head = format!(
        r#"<meta name="caged-csrf" content="{csrf}">
<script src="/assets/app.js?v={script}" defer></script>"#,
        csrf = escape(&session.csrf_token),
        script = SCRIPT.version,
    );
    let body = format!(
        r##"<a class="skip" href="#main">Skip to content</a>
<header class="top">
  <a class="brand" href="/"><img src="/assets/icon.svg?v={icon}" alt="" width="24" height="24"> Caged</a>
  <nav aria-label="Main">
    <a href="/">Sandboxes</a>
    <a href="/new">New sandbox</a>
    <a href="/usage">Usage</a>
  </nav>
  <form class="account" method="post" action="/logout">
    <span title="Signed-in account">{account}</span>
    <input type="hidden" name="csrf" value="{csrf}">
    <button type="submit" class="link">Sign out</button>
  </form>
</header>
<main id="main" tabindex="-1"><p class="muted">Loading…</p></main>
<div id="toast" role="status" aria-live="polite"></div>"##,
        csrf = escape(&session.csrf_token),
        account = escape(&session.account.name),
        icon = ICON.version,
    );
    document("Caged", &head, "", &body)
}

/// A whole page: the parts every page has around `head` and `body` (both already markup).
fn document(title: &str, head: &str, body_class: &str, body: &str) -> String {
    let body_class = if body_class.is_empty() {
        String::new()
    } else {
        format!(r#" class="{}""#, escape(body_class))
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/assets/icon.svg?v={icon}">
<link rel="stylesheet" href="/assets/app.css?v={style}">
{head}
</head>
<body{body_class}>
{body}
</body>
</html>
"#,
        title = escape(title),
        icon = ICON.version,
        style = STYLE.version,
    )
}

fn login_form(next: &str, error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |message| {
        format!(
            r#"<p class="error" role="alert" id="login-error">{}</p>"#,
            escape(message)
        )
    });
    let body = format!(
        r##"<main id="main">
  <h1><img src="/assets/icon.svg?v={icon}" alt="" width="32" height="32"> Caged</h1>
  <form method="post" action="/login" class="card">
    <h2>Sign in</h2>
    {error}
    <label for="api_key">API key</label>
    <input id="api_key" name="api_key" type="password" autocomplete="current-password" required
      placeholder="caged_…" aria-describedby="api-key-help"{invalid}>
    <p id="api-key-help" class="muted">The key <code>caged</code> prints when an account is made
      (the admin's is in the data folder's <code>admin.key</code>).</p>
    <input type="hidden" name="next" value="{next}">
    <button type="submit">Sign in</button>
  </form>
</main>"##,
        next = escape(next),
        invalid = if error.is_empty() {
            ""
        } else {
            r#" aria-invalid="true" aria-errormessage="login-error""#
        },
        icon = ICON.version,
    );
    document("Sign in · Caged", "", "login", &body)
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    let next = local_path(query.next.as_deref());
    if let Ok(Some(_)) = session_of(&state, &headers).await {
        return Redirect::to(next).into_response();
    }
    html(StatusCode::OK, login_form(next, None))
}

/// Only a path on this server is a place to go after signing in (never `//elsewhere`).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && path.chars().all(|c| c.is_ascii_graphic()) =>
        {
            path
        }
        _ => "/",
    }
}

fn form_fields(body: &[u8]) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn login(
    State(state): State<Arc<AppState>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form_fields(&body);
    let next = local_path(fields.get("next").map(String::as_str)).to_string();
    // Another site must not sign a browser in to an account of its choosing.
    if !auth::same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            login_form(&next, Some("Sign in from this server's own page.")),
        );
    }
    let key = fields.get("api_key").map(String::as_str).unwrap_or("");
    let peer = auth::peer(&extensions);
    if let Err(err) = auth::not_locked_out(&state, peer) {
        let mut response = html(
            StatusCode::TOO_MANY_REQUESTS,
            login_form(&next, Some(&err.message)),
        );
        err.set_retry_after(&mut response);
        return response;
    }
    let key_id = match auth::counted(&state, peer, auth::account_for_key(&state, key).await) {
        Ok((key_id, _)) => key_id,
        Err(err) if err.status == StatusCode::UNAUTHORIZED => {
            return html(
                StatusCode::UNAUTHORIZED,
                login_form(&next, Some("That API key is not valid.")),
            );
        }
        Err(err) => return err.into_response(),
    };
    let token = match auth::open_web_session(&state, key_id, SESSION_LIFETIME_MS).await {
        Ok(token) => token,
        Err(err) => return err.into_response(),
    };
    let over_https = headers
        .get(header::ORIGIN)
        .and_then(|origin| origin.to_str().ok())
        .is_some_and(|origin| origin.starts_with("https://"));
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME_MS / 1000,
        if over_https { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    secure(response)
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form_fields(&body);
    if let Some(token) = auth::cookie(&headers, SESSION_COOKIE) {
        // Only the page's own form signs out (its CSRF token), so another site cannot.
        let session = auth::web_session(&state, &token).await.ok().flatten();
        let sent = fields.get("csrf").map(String::as_str).unwrap_or("");
        match session {
            Some(session)
                if auth::same_origin(&headers)
                    && bool::from(sent.as_bytes().ct_eq(session.csrf_token.as_bytes())) =>
            {
                if let Err(err) = auth::close_web_session(&state, &token).await {
                    return err.into_response();
                }
            }
            Some(_) => {
                return ApiError::forbidden("sign out from the dashboard's own page")
                    .into_response();
            }
            None => {}
        }
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("caged_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    secure(response)
}

async fn asset(Path(file): Path<String>) -> Response {
    let asset = match file.as_str() {
        "app.js" => &*SCRIPT,
        "app.css" => &*STYLE,
        "icon.svg" => &*ICON,
        _ => return ApiError::not_found(format!("no asset {file:?}")).into_response(),
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    secure(response)
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(
            local_path(Some("/sandboxes/0a1b2c3d")),
            "/sandboxes/0a1b2c3d"
        );
        for bad in [
            "//evil.test/",
            "https://evil.test/",
            "/\\evil.test",
            "/a b",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }
}

//! A protected port: its password, checked against a cookie of the login form's or HTTP basic
//! auth (each verified password remembered, so scripts do not pay for a hash on every request),
//! and neither ever passed on to the sandbox.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::{Body, Ctx, LOGIN_PATH, empty, full, html_headers, page};
use crate::gate::{self, COOKIE};
use crate::host::Route;

/// Whether the request carries this port's credential; removes it from the request if so.
pub(super) async fn authorized(
    ctx: &Ctx,
    route: Route,
    password: &caged_store::PreviewPassword,
    req: &mut Request<Incoming>,
) -> bool {
    let previews = &ctx.proxy.previews;
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
    let known = previews.verified.lock().get(&(route, digest)).copied();
    let ok = if known == Some(password.set_at_ms) {
        true
    } else {
        let phc = password.hash.clone();
        let verified = verify(given, phc).await;
        if verified {
            let mut cache = previews.verified.lock();
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

pub(super) async fn login(
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
    let verified = verify(given, phc).await;
    if !verified {
        return login_form(StatusCode::UNAUTHORIZED, &next, Some("Wrong password."));
    }
    let now_secs = caged_domain::time::now_ms() / 1000;
    let value = ctx
        .proxy
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
pub(super) fn safe_next(next: &str) -> &str {
    let same_host = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.bytes().all(|b| b.is_ascii_graphic());
    if same_host { next } else { "/" }
}

/// 401 for a protected preview: a login form for browsers, a basic-auth challenge otherwise.
pub(super) fn login_page(req: &Request<Incoming>, error: Option<&str>) -> Response<Body> {
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
        .map(|error| {
            format!(
                "<p class=\"error\">{}</p>",
                html_escape::encode_quoted_attribute(error)
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Password required</title><style>body{{font:16px system-ui,sans-serif;max-width:22em;margin:15vh auto;padding:0 1em}}\
input{{font:inherit;width:100%;box-sizing:border-box;margin:.4em 0;padding:.5em}}.error{{color:#b00}}</style></head>\
<body><h1>Password required</h1><p>This preview is protected by its owner.</p>{error}\
<form method=\"post\" action=\"{LOGIN_PATH}\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
<input type=\"password\" name=\"password\" autofocus autocomplete=\"current-password\" aria-label=\"Password\">\
<input type=\"submit\" value=\"Open preview\"></form></body></html>",
        html_escape::encode_quoted_attribute(safe_next(next))
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    html_headers(response.headers_mut(), "password_required");
    response
}

/// Checks a password against its hash off the async workers (argon2 takes a while on purpose).
async fn verify(given: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || gate::verify_password(&given, &phc))
        .await
        .unwrap_or(false)
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

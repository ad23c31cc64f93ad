//! What stands between the world and a preview: the per-URL rate limit and the optional
//! password (a signed, host-only cookie after a login form, or HTTP basic auth for scripts).

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use caged_domain::rate::{Buckets, Rate};

use super::host::Route;

/// Name of the preview's own cookie; stripped before requests reach the sandbox.
pub(crate) const COOKIE: &str = "caged_preview";
/// How long a login lasts.
pub(crate) const LOGIN_SECONDS: i64 = 12 * 3600;
/// Shortest password accepted.
pub(crate) const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

pub(crate) fn check_password(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD {
        return Err(format!(
            "the password is too short: {chars} characters, at least {MIN_PASSWORD} needed"
        ));
    }
    if password.len() > MAX_PASSWORD {
        return Err(format!("the password is longer than {MAX_PASSWORD} bytes"));
    }
    Ok(())
}

/// An argon2id PHC string. Slow on purpose: call it off the async threads.
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| format!("no randomness: {err}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| err.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

/// Slow on purpose, like [`hash_password`].
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Signs and checks login cookies. A cookie names its preview (sandbox and port), when its
/// password was set (so a new password logs everyone out) and when it expires.
pub(crate) struct CookieKey([u8; 32]);

impl CookieKey {
    pub(crate) fn from_hex(hex_key: &str) -> Option<CookieKey> {
        let bytes = hex::decode(hex_key).ok()?;
        Some(CookieKey(bytes.try_into().ok()?))
    }

    fn mac(&self, route: Route, password_set_ms: i64, expires: i64) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(
            format!("v1|{}|{}|{password_set_ms}|{expires}", route.id, route.port).as_bytes(),
        );
        hex::encode(mac.finalize().into_bytes())
    }

    pub(crate) fn issue(&self, route: Route, password_set_ms: i64, now_secs: i64) -> String {
        let expires = now_secs + LOGIN_SECONDS;
        format!("{expires}.{}", self.mac(route, password_set_ms, expires))
    }

    pub(crate) fn accepts(
        &self,
        value: &str,
        route: Route,
        password_set_ms: i64,
        now_secs: i64,
    ) -> bool {
        let Some((expires, mac)) = value.split_once('.') else {
            return false;
        };
        let Ok(expires) = expires.parse::<i64>() else {
            return false;
        };
        let expected = self.mac(route, password_set_ms, expires);
        expires > now_secs
            && subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), mac.as_bytes()).into()
    }
}

/// Token buckets, one per preview URL: `per_minute` requests, refilled evenly.
pub(crate) struct RateLimit {
    /// `None`: no limit (0 a minute switches it off).
    buckets: Option<Mutex<Buckets<Route>>>,
}

impl RateLimit {
    pub(crate) fn new(per_minute: u32) -> RateLimit {
        RateLimit {
            buckets: (per_minute > 0)
                .then(|| Mutex::new(Buckets::new(Rate::per_minute(per_minute)))),
        }
    }

    /// `Ok` to go ahead, or how long until the next request would be let through.
    pub(crate) fn take(&self, route: Route, now: Instant) -> Result<(), Duration> {
        match &self.buckets {
            Some(buckets) => buckets.lock().take(route, now),
            None => Ok(()),
        }
    }
}

/// The password from an `Authorization: Basic` value (any user name).
pub(crate) fn basic_password(header: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// The `Cookie` header without our own cookie; `None` when nothing else is left.
pub(crate) fn strip_own_cookie(header: &str) -> (Option<String>, Option<String>) {
    let mut own = None;
    let mut rest = Vec::new();
    for pair in header.split(';') {
        let pair = pair.trim();
        match pair.split_once('=') {
            Some((name, value)) if name.trim() == COOKIE => own = Some(value.trim().to_string()),
            _ if pair.is_empty() => {}
            _ => rest.push(pair),
        }
    }
    let rest = (!rest.is_empty()).then(|| rest.join("; "));
    (own, rest)
}

/// A sandbox's `Set-Cookie` made host-only: its `Domain` attribute dropped, so one preview
/// cannot set cookies for another. `None` for a cookie named like ours.
pub(crate) fn host_only_set_cookie(value: &str) -> Option<String> {
    let mut parts = value.split(';');
    let first = parts.next()?.trim();
    if first
        .split_once('=')
        .is_some_and(|(name, _)| name.trim() == COOKIE)
    {
        return None;
    }
    let mut kept = vec![first.to_string()];
    for attribute in parts {
        let name = attribute.split('=').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("domain") {
            kept.push(attribute.trim().to_string());
        }
    }
    Some(kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(port: u16) -> Route {
        Route {
            id: "a1b2c3d4".parse().unwrap(),
            port,
        }
    }

    #[test]
    fn cookies_are_bound_to_their_preview_password_and_time() {
        let key = CookieKey::from_hex(&"ab".repeat(32)).unwrap();
        let cookie = key.issue(route(3000), 111, 1_000);
        assert!(key.accepts(&cookie, route(3000), 111, 1_001));
        assert!(!key.accepts(&cookie, route(3001), 111, 1_001), "other port");
        assert!(
            !key.accepts(&cookie, route(3000), 112, 1_001),
            "new password"
        );
        assert!(!key.accepts(&cookie, route(3000), 111, 1_000 + LOGIN_SECONDS));
        let other = CookieKey::from_hex(&"cd".repeat(32)).unwrap();
        assert!(
            !other.accepts(&cookie, route(3000), 111, 1_001),
            "other key"
        );
        let (expires, mac) = cookie.split_once('.').unwrap();
        let extended = format!("{}.{mac}", expires.parse::<i64>().unwrap() + 100);
        assert!(!key.accepts(&extended, route(3000), 111, 1_001));
        for junk in ["", ".", "x.y", "1", "99999999999.00"] {
            assert!(!key.accepts(junk, route(3000), 111, 1_001), "{junk:?}");
        }
    }

    #[test]
    fn the_limit_refills_evenly() {
        let limit = RateLimit::new(60);
        let start = Instant::now();
        for _ in 0..60 {
            limit.take(route(1), start).unwrap();
        }
        let wait = limit.take(route(1), start).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        assert!(
            limit.take(route(2), start).is_ok(),
            "URLs are limited apart"
        );
        assert!(limit.take(route(1), start + Duration::from_secs(1)).is_ok());
        assert!(RateLimit::new(0).take(route(1), start).is_ok());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
    }

    #[test]
    fn credentials_are_taken_apart() {
        assert_eq!(
            basic_password("Basic dXNlcjpzM2NyZXQ6eA==").as_deref(),
            Some("s3cret:x")
        );
        assert_eq!(basic_password("Bearer abc"), None);
        assert_eq!(
            strip_own_cookie("a=1; caged_preview=xyz; b=2"),
            (Some("xyz".into()), Some("a=1; b=2".into()))
        );
        assert_eq!(
            strip_own_cookie("caged_preview=xyz"),
            (Some("xyz".into()), None)
        );
        assert_eq!(
            host_only_set_cookie("sid=1; Domain=.preview.localhost; Path=/; HttpOnly").as_deref(),
            Some("sid=1; Path=/; HttpOnly")
        );
        assert_eq!(host_only_set_cookie("caged_preview=forged; Path=/"), None);
    }
}

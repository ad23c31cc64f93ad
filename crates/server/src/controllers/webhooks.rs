//! Webhooks: budget alerts sent to the URL an account set, signed, retried with backoff.
//!
//! Deliveries are rows (queued in the same transaction as the event they announce), so a
//! restart loses none. Each is a `POST` of JSON with
//! `Caged-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>`.
//! A 2xx answer delivers it; anything else is retried after 1, 2, 4, … seconds (at most
//! [`MAX_BACKOFF`] apart), [`MAX_ATTEMPTS`] times in all.
//!
//! The URL is the account's, so the server must not become its way into places it cannot
//! reach: unless the server allows it (`--webhook-allow-private`), an address that resolves to
//! loopback, a private, link-local, CGNAT or metadata range is refused, checked on the address
//! actually connected to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use caged_domain::time::{now_ms, rfc3339_from_ms};
use caged_store::{SandboxRecord, WebhookDelivery};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::state::AppState;

pub(crate) const MAX_ATTEMPTS: i64 = 12;
const MAX_BACKOFF: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(10);

/// A webhook's event type and JSON body.
pub(crate) fn body(
    event_type: &str,
    record: &SandboxRecord,
    payload: &Value,
    at_ms: i64,
) -> (String, String) {
    let body = json!({
        "id": format!("whk_{}", caged_domain::random_hex(8)),
        "type": event_type,
        "created_at": rfc3339_from_ms(at_ms),
        "sandbox": { "id": record.id, "name": record.config.name },
        "data": payload,
    });
    (event_type.to_string(), body.to_string())
}

/// `t=…,v1=…` for a body sent at `unix_seconds`.
pub(crate) fn signature(secret: &str, unix_seconds: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a webhook URL as the account gives it: `http` or `https`, a host, no user info.
pub(crate) fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|err| format!("url: {url:?} is not a URL ({err})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("url: {url:?} must start with http:// or https://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("url: {url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "url: {url:?} must not carry a user name or password"
        ));
    }
    if url.len() > 2048 {
        return Err("url: longer than 2048 characters".into());
    }
    Ok(uri)
}

/// Why a webhook may not go to `ip` (`None`: it may).
pub(crate) fn denied(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    if allow_private {
        return None;
    }
    caged_network::ranges::denied(ip, &[], &[])
}

pub(crate) async fn run(state: Arc<AppState>) {
    loop {
        let due = state
            .db
            .run(move |store| store.due_webhooks(now_ms(), 16))
            .await
            .unwrap_or_default();
        for delivery in &due {
            attempt(&state, delivery).await;
        }
        if due.len() == 16 {
            continue;
        }
        let next = state
            .db
            .run(move |store| store.next_webhook_at())
            .await
            .ok()
            .flatten();
        let wait = next.map_or(Duration::from_secs(60), |at| {
            Duration::from_millis((at - now_ms()).clamp(0, 60_000) as u64)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.webhook_sends.notified() => {}
            () = state.stop.cancelled() => break,
        }
    }
}

async fn attempt(state: &AppState, delivery: &WebhookDelivery) {
    let account = delivery.account_id.clone();
    let secret = state
        .db
        .run(move |store| store.webhook(&account))
        .await
        .ok()
        .flatten()
        .map(|target| target.secret);
    let result = match secret {
        Some(secret) => tokio::time::timeout(TIMEOUT, send(state, delivery, &secret))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", TIMEOUT.as_secs()))),
        None => Err("the account removed its webhook".into()),
    };
    let attempts = delivery.attempts + 1;
    let retry_at = (result.is_err() && attempts < MAX_ATTEMPTS).then(|| {
        let backoff = Duration::from_secs(1 << (attempts - 1).min(20)).min(MAX_BACKOFF);
        now_ms() + backoff.as_millis() as i64
    });
    if let Err(err) = &result {
        tracing::warn!(
            url = %delivery.url,
            attempt = attempts,
            "webhook {} not delivered: {err}{}",
            delivery.event_type,
            if retry_at.is_some() { "; will retry" } else { "; giving up" }
        );
    }
    let id = delivery.id;
    let error = result.err();
    let _ = state
        .db
        .run(move |store| store.webhook_attempted(id, now_ms(), error.as_deref(), retry_at))
        .await;
}

async fn send(state: &AppState, delivery: &WebhookDelivery, secret: &str) -> Result<(), String> {
    let uri = check_url(&delivery.url)?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|err| format!("cannot resolve {host}: {err}"))?
        .collect();
    let allow_private = state.config.cost.webhooks_to_private;
    let address = addresses
        .iter()
        .find(|addr| denied(addr.ip(), allow_private).is_none())
        .ok_or_else(|| match addresses.first() {
            Some(addr) => format!(
                "{host} is at {} ({}); webhooks do not go there unless the server runs with --webhook-allow-private",
                addr.ip(),
                denied(addr.ip(), allow_private).unwrap_or("denied")
            ),
            None => format!("{host} has no address"),
        })?;
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|err| format!("cannot connect to {address}: {err}"))?;
    let _ = tcp.set_nodelay(true);
    let now = now_ms() / 1000;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(
            hyper::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("caged/", env!("CARGO_PKG_VERSION")),
        )
        .header("caged-event", &delivery.event_type)
        .header("caged-delivery", delivery.id.to_string())
        .header("caged-signature", signature(secret, now, &delivery.body))
        .body(Full::new(Bytes::from(delivery.body.clone())))
        .map_err(|err| err.to_string())?;
    let status = if https {
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(caged_gateway::tls_client_config()?));
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|err| format!("{host}: {err}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|err| format!("TLS with {host}: {err}"))?;
        post(TokioIo::new(tls), request).await?
    } else {
        post(TokioIo::new(tcp), request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

async fn post<T>(io: T, request: Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status();
    // Read (and drop) what the receiver said, so the connection closes cleanly.
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_time_and_the_body() {
        let a = signature("secret", 1_700_000_000, "{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, signature("secret", 1_700_000_001, "{}"));
        assert_ne!(a, signature("secret", 1_700_000_000, "{ }"));
        assert_ne!(a, signature("other", 1_700_000_000, "{}"));
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/caged").is_ok());
        assert!(check_url("ftp://x/").unwrap_err().contains("http"));
        assert!(
            check_url("https://user:pw@x/")
                .unwrap_err()
                .contains("user")
        );
        assert!(check_url("/relative").is_err());
        assert!(denied("127.0.0.1".parse().unwrap(), false).is_some());
        assert!(denied("169.254.169.254".parse().unwrap(), false).is_some());
        assert!(denied("10.1.2.3".parse().unwrap(), false).is_some());
        assert!(denied("127.0.0.1".parse().unwrap(), true).is_none());
    }
}

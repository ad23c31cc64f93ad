//! The host an HTTP/1 client asks for, read from its request head.

use crate::allow::normalize;

#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Incomplete,
    NotHttp,
    /// A request head; `host` is the one name it asks for, `None` when it names none or
    /// disagrees with itself.
    Request {
        method: String,
        host: Option<String>,
        /// Bytes of the head, so a refusal can be told apart from a body.
        len: usize,
    },
}

/// Largest request head read before giving up.
pub const MAX_HEAD: usize = 16 * 1024;

pub fn parse(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD {
                Head::NotHttp
            } else {
                Head::Incomplete
            }
        }
        Err(_) => Head::NotHttp,
        Ok(httparse::Status::Complete(len)) => {
            let method = request.method.unwrap_or_default().to_string();
            let mut hosts = request
                .headers
                .iter()
                .filter(|header| header.name.eq_ignore_ascii_case("host"))
                .map(|header| std::str::from_utf8(header.value).ok().map(strip_port));
            let host = match (hosts.next(), hosts.next()) {
                (Some(Some(host)), None) => Some(host),
                _ => None,
            };
            // An absolute-form target must name the same host as the Host header.
            let target = request.path.unwrap_or_default();
            let target_host = target
                .split_once("://")
                .map(|(_, rest)| strip_port(rest.split(['/', '?', '#']).next().unwrap_or("")));
            let host = match (host, target_host) {
                (Some(host), Some(target)) if host != target => None,
                (host, _) => host,
            };
            Head::Request { method, host, len }
        }
    }
}

/// `Host: name:port` → `name`, normalized; an IPv6 literal keeps its brackets (and so is never
/// a host name).
fn strip_port(value: &str) -> String {
    let value = value.trim();
    let name = if value.starts_with('[') {
        value.split_inclusive(']').next().unwrap_or(value)
    } else {
        value.split(':').next().unwrap_or(value)
    };
    normalize(name)
}

/// The tokens of a request's or answer's `Connection` headers.
pub fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// What a proxy passes on of a request's or answer's headers: not those meant for one hop only,
/// nor those the `Connection` header names (RFC 9110, 7.6.1). An upgrade keeps
/// `Connection: upgrade` and its `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
    let named: Vec<http::HeaderName> = connection_tokens(headers)
        .filter_map(|token| http::HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == http::header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    } else {
        headers.remove(http::header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hop_by_hop_headers_go_and_named_ones_with_them() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", http::HeaderValue::from_static("1"));
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        headers.insert("x-kept", http::HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        headers.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[http::header::CONNECTION], "upgrade");
        assert_eq!(headers[http::header::UPGRADE], "websocket");
    }

    use super::*;

    fn host(raw: &str) -> Option<String> {
        match parse(raw.as_bytes()) {
            Head::Request { host, .. } => host,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_one_consistent_host() {
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: Allowed.Test:8080\r\n\r\n"),
            Some("allowed.test".into())
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            None
        );
        assert_eq!(
            host("GET http://evil.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"),
            None
        );
        assert_eq!(host("GET / HTTP/1.0\r\n\r\n"), None);
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: [::ffff:a9fe:a9fe]:80\r\n\r\n"),
            Some("[::ffff:a9fe:a9fe]".into())
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a"), Head::Incomplete);
        assert_eq!(parse(b"\x16\x03\x01\x00"), Head::NotHttp);
    }
}

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

#[cfg(test)]
mod tests {
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

//! Which sandbox port a request is for. Only an exact `cage-<id>-<port>.<domain>` routes; the
//! name is untrusted input, so everything else (other names, odd ports, extra labels) is refused
//! before anything is looked up or dialled.

use caged_domain::SandboxId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Route {
    pub id: SandboxId,
    pub port: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostError {
    /// Not a well-formed host (with optional port).
    Malformed,
    /// Well formed, but not one of our preview names.
    NotAPreview,
}

/// The host part of a `Host` header or `:authority` (port dropped), case folded, one trailing
/// dot removed. IP literals and empty names are refused.
pub(crate) fn normalize(authority: &str) -> Result<String, HostError> {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HostError::Malformed);
            }
            host
        }
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        || host.split('.').any(str::is_empty)
    {
        return Err(HostError::Malformed);
    }
    Ok(host.to_ascii_lowercase())
}

/// `domain` is already normalized (lowercase, no trailing dot).
pub(crate) fn route(authority: &str, domain: &str) -> Result<Route, HostError> {
    let host = normalize(authority)?;
    let label = host
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .ok_or(HostError::NotAPreview)?;
    let rest = label.strip_prefix("cage-").ok_or(HostError::NotAPreview)?;
    let (id, port) = rest.split_once('-').ok_or(HostError::NotAPreview)?;
    let id: SandboxId = id.parse().map_err(|_| HostError::NotAPreview)?;
    // Canonical decimal only: no sign, no leading zero, in range.
    if port.is_empty() || port.len() > 5 || port.starts_with('0') {
        return Err(HostError::NotAPreview);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::NotAPreview);
    }
    let port: u16 = port.parse().map_err(|_| HostError::NotAPreview)?;
    Ok(Route { id, port })
}

/// A preview domain from configuration: a DNS name of at least two labels, stored normalized.
pub(crate) fn check_domain(domain: &str) -> Result<String, String> {
    let normalized = (!domain.contains(':'))
        .then(|| normalize(domain).ok())
        .flatten()
        .filter(|name| name.contains('.'))
        .filter(|name| {
            name.split('.')
                .all(|label| label.len() <= 63 && !label.starts_with('-') && !label.ends_with('-'))
        });
    normalized.ok_or_else(|| {
        format!("preview domain {domain:?} must be a DNS name such as preview.example.com")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "preview.localhost";

    #[test]
    fn exact_names_route() {
        let id: SandboxId = "a1b2c3d4".parse().unwrap();
        for host in [
            "cage-a1b2c3d4-3000.preview.localhost",
            "CAGE-A1B2C3D4-3000.Preview.Localhost",
            "cage-a1b2c3d4-3000.preview.localhost.",
            "cage-a1b2c3d4-3000.preview.localhost:7701",
            "cage-a1b2c3d4-3000.preview.localhost.:7701",
        ] {
            assert_eq!(route(host, DOMAIN), Ok(Route { id, port: 3000 }), "{host}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for host in [
            "",
            "preview.localhost",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:7701",
            "[::1]:7701",
            "cage-a1b2c3d4-3000.preview.localhost..",
            "x.cage-a1b2c3d4-3000.preview.localhost",
            "cage-a1b2c3d4-3000.preview.localhost.evil.test",
            "cage-a1b2c3d4-3000.xpreview.localhost",
            "cage-a1b2c3d4-3000preview.localhost",
            "cage-a1b2c3d-3000.preview.localhost",
            "cage-a1b2c3d4x-3000.preview.localhost",
            "cage-a1b2c3d4-03000.preview.localhost",
            "cage-a1b2c3d4-0.preview.localhost",
            "cage-a1b2c3d4-65536.preview.localhost",
            "cage-a1b2c3d4-+80.preview.localhost",
            "cage-a1b2c3d4-3000-1.preview.localhost",
            "cage-a1b2c3d4--3000.preview.localhost",
            "cage-a1b2c3d4-3000.preview.localhost:",
            "cage-a1b2c3d4-3000.preview.localhost:x",
            "cage-a1b2c3d4-3000.preview.localhost:99999999",
            "cage-a1b2c3d4-3000.preview.localhost/x",
            "cage-a1b2c3d4-3000.preview.localhost@127.0.0.1",
            "cage-a1b2c3d4-3000.pre\u{0}view.localhost",
            "cage-a1b2c3d4-3000.préview.localhost",
        ] {
            assert!(route(host, DOMAIN).is_err(), "{host:?} routed");
        }
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(
            check_domain("Preview.Example.com.").as_deref(),
            Ok("preview.example.com")
        );
        for bad in [
            "localhost",
            "",
            "a..b",
            "-a.b",
            "a.b:80",
            "a b.c",
            "1.2.3.4x_",
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
    }
}

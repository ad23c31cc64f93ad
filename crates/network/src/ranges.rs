//! Destinations no sandbox reaches unless the server opens them: the host's own networks,
//! private and shared address space, loopback, link-local (and with it the cloud metadata
//! address), multicast and reserved space.

use std::net::{IpAddr, Ipv4Addr};

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4 {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Net4 {
    pub const fn new(a: u8, b: u8, c: u8, d: u8, prefix_len: u8) -> Net4 {
        Net4 {
            addr: Ipv4Addr::new(a, b, c, d),
            prefix_len,
        }
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// The network itself, host bits cleared (`192.0.2.2/24` → `192.0.2.0/24`).
    pub fn network(&self) -> Net4 {
        Net4 {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    pub fn parse(text: &str) -> Result<Net4, String> {
        let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 network like 10.1.0.0/16"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= 32)
            .ok_or_else(|| format!("{text:?} has a bad prefix length"))?;
        Ok(Net4 { addr, prefix_len })
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The ranges denied by default, with the name a refusal gives.
pub const DENIED: &[(Net4, &str)] = &[
    (Net4::new(0, 0, 0, 0, 8), "this-network"),
    (Net4::new(10, 0, 0, 0, 8), "private"),
    (Net4::new(100, 64, 0, 0, 10), "shared (CGNAT)"),
    (Net4::new(127, 0, 0, 0, 8), "loopback"),
    (Net4::new(169, 254, 0, 0, 16), "link-local (cloud metadata)"),
    (Net4::new(172, 16, 0, 0, 12), "private"),
    (Net4::new(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (Net4::new(192, 168, 0, 0, 16), "private"),
    (Net4::new(198, 18, 0, 0, 15), "benchmarking"),
    (Net4::new(224, 0, 0, 0, 4), "multicast"),
    (Net4::new(240, 0, 0, 0, 4), "reserved"),
];

/// What a destination is denied as, if it is: one of [`DENIED`] not in `opened`, or one of the
/// host's own networks (`host_nets`). Any IPv6 destination is denied (sandbox links are IPv4).
pub fn denied(ip: IpAddr, opened: &[Net4], host_nets: &[Net4]) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(ip) => ip,
            None => return Some("IPv6"),
        },
    };
    if host_nets.iter().any(|net| net.contains(ip)) {
        return Some("the host's own network");
    }
    if opened.iter().any(|net| net.contains(ip)) {
        return None;
    }
    DENIED
        .iter()
        .find(|(net, _)| net.contains(ip))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_private_and_metadata_unless_opened() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            denied(ip("169.254.169.254"), &[], &[]),
            Some("link-local (cloud metadata)")
        );
        assert_eq!(
            denied(ip("::ffff:169.254.169.254"), &[], &[]),
            Some("link-local (cloud metadata)")
        );
        assert_eq!(denied(ip("10.1.2.3"), &[], &[]), Some("private"));
        assert_eq!(denied(ip("100.100.1.1"), &[], &[]), Some("shared (CGNAT)"));
        assert_eq!(denied(ip("203.0.113.10"), &[], &[]), None);
        assert_eq!(denied(ip("2001:db8::1"), &[], &[]), Some("IPv6"));
        let opened = [Net4::parse("10.1.0.0/16").unwrap()];
        assert_eq!(denied(ip("10.1.2.3"), &opened, &[]), None);
        assert_eq!(
            Net4::parse("192.0.2.2/24").unwrap().network(),
            Net4::parse("192.0.2.0/24").unwrap()
        );
        let host = [Net4::parse("203.0.113.0/24").unwrap()];
        assert_eq!(
            denied(ip("203.0.113.10"), &[], &host),
            Some("the host's own network")
        );
    }
}

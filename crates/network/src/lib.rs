//! The host side of a sandbox's network. Each sandbox gets its own link (a veth pair whose host
//! end Caged owns, see [`link`]); the firewall ([`firewall`]) decides on that host end what the
//! sandbox may reach, by the interface a packet arrived on, never by its source address. An
//! `allowlist` sandbox reaches only Caged's DNS stub and egress proxy on its link's host address;
//! what they allow is decided here ([`allow`], [`ranges`]) from names read off the wire
//! ([`dns`], [`sni`], [`http`]).

pub mod allow;
pub mod conntrack;
pub mod dns;
pub mod firewall;
pub mod http;
pub mod link;
pub mod netlink;
pub mod nflog;
mod nfnetlink;
pub mod ranges;
pub mod sni;
pub mod sockets;
pub mod splice;

use std::net::Ipv4Addr;

pub use allow::Allowlist;
pub use link::{LinkError, LinkSpec};

/// The addresses sandbox links are numbered from: slot `n` is the `n`th /30 of the pool, its
/// first address the host end, its second the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    prefix_len: u8,
}

/// Prefix length of one link.
pub const LINK_PREFIX_LEN: u8 = 30;

impl Pool {
    /// Parses `a.b.c.d/len` (a network address; 16 to 28 bits of prefix).
    pub fn parse(text: &str) -> Result<Pool, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a network like 10.213.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|len| (8..=28).contains(len))
            .ok_or_else(|| format!("prefix length {len:?} must be 8 to 28"))?;
        let base = u32::from(addr);
        let mask = u32::MAX << (32 - prefix_len);
        if base & !mask != 0 {
            return Err(format!(
                "{text} has host bits set; the network is {}/{prefix_len}",
                Ipv4Addr::from(base & mask)
            ));
        }
        Ok(Pool { base, prefix_len })
    }

    /// How many links fit.
    pub fn capacity(&self) -> u32 {
        1 << (32 - self.prefix_len - 2)
    }

    /// The host and sandbox addresses of slot `slot`, if it fits.
    pub fn addresses(&self, slot: u32) -> Option<(Ipv4Addr, Ipv4Addr)> {
        (slot < self.capacity()).then(|| {
            let net = self.base + slot * 4;
            (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2))
        })
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(addr) & mask == self.base
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix_len)
    }
}

/// The host end's name for a sandbox: `c` + the first 6 hex digits of the installation id +
/// the sandbox id (8 hex), 15 characters, the most a Linux interface name holds. One
/// installation's links share the prefix [`link_prefix`].
pub fn host_ifname(installation_id: &str, sandbox_id: &str) -> String {
    format!("{}{sandbox_id}", link_prefix(installation_id))
}

pub fn link_prefix(installation_id: &str) -> String {
    let short: String = installation_id.chars().take(6).collect();
    format!("c{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_number_links_by_slot() {
        let pool = Pool::parse("10.213.0.0/16").unwrap();
        assert_eq!(pool.capacity(), 16384);
        assert_eq!(
            pool.addresses(0),
            Some(("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap()))
        );
        assert_eq!(
            pool.addresses(65),
            Some(("10.213.1.5".parse().unwrap(), "10.213.1.6".parse().unwrap()))
        );
        assert_eq!(pool.addresses(16384), None);
        assert!(pool.contains("10.213.255.255".parse().unwrap()));
        assert!(!pool.contains("10.214.0.1".parse().unwrap()));
        assert!(
            Pool::parse("10.213.0.1/16")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Pool::parse("10.213.0.0/30").is_err());
        assert!(Pool::parse("nope").is_err());
        assert_eq!(host_ifname("a1b2c3d4e5f6", "0badf00d"), "ca1b2c30badf00d");
    }
}

//! The DNS stub on each link's host address, and the resolver (with its cache) that the stub
//! and the egress proxy share.
//!
//! `allowlist`: A queries for allowed names are answered from Caged's own lookup; AAAA gets an
//! empty answer (links are IPv4), every other name or type REFUSED, and no sandbox packet is
//! ever passed upstream. `full`: A and AAAA for any name likewise; other types REFUSED (a `full`
//! sandbox may ask a public resolver itself). In both, addresses in denied ranges are removed
//! from answers (DNS rebinding), and each sandbox may ask [`QUERIES_PER_SECOND`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caged_domain::event::NetworkAction;
use caged_domain::rate::{Bucket, Rate};
use caged_network::dns::{self as wire, QueryKind, ResolveError, Resolved, Upstream};
use caged_network::firewall::Mode;
use tokio::task::JoinHandle;

use super::{Link, Network};

/// Queries a sandbox may send per second (burst: twice that): far above what builds and package
/// managers do (glibc has no cache and asks A and AAAA for every connection), far below a flood.
pub(super) const QUERIES_PER_SECOND: f64 = 500.0;
/// Longest a handed-out answer is trusted, whatever the upstream's TTL.
const MAX_TTL: u32 = 300;
const MIN_TTL: u32 = 5;
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// Caged's own lookups, cached by TTL.
pub(super) struct Resolver {
    upstream: Upstream,
    cache: Mutex<HashMap<String, (Instant, Resolved)>>,
}

impl Resolver {
    pub(super) fn new(upstream: Upstream) -> Resolver {
        Resolver {
            upstream,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A records of `name`, TTLs clamped to [`MIN_TTL`]..[`MAX_TTL`] and counted down.
    pub(super) async fn resolve(&self, name: &str) -> Result<Resolved, ResolveError> {
        let now = Instant::now();
        if let Some((expires, resolved)) = self.cache.lock().get(name)
            && *expires > now
        {
            let left = expires.duration_since(now).as_secs() as u32;
            return Ok(match resolved {
                Resolved::Addresses(addrs) => {
                    Resolved::Addresses(addrs.iter().map(|(ip, _)| (*ip, left.max(1))).collect())
                }
                Resolved::NoSuchName => Resolved::NoSuchName,
            });
        }
        let resolved = match self.upstream.resolve_a(name).await? {
            Resolved::Addresses(addrs) => Resolved::Addresses(
                addrs
                    .into_iter()
                    .map(|(ip, ttl)| (ip, ttl.clamp(MIN_TTL, MAX_TTL)))
                    .collect(),
            ),
            other => other,
        };
        let keep = match &resolved {
            Resolved::Addresses(addrs) => addrs
                .iter()
                .map(|(_, ttl)| Duration::from_secs(u64::from(*ttl)))
                .min()
                .unwrap_or(NEGATIVE_TTL),
            Resolved::NoSuchName => NEGATIVE_TTL,
        };
        let mut cache = self.cache.lock();
        if cache.len() > 10_000 {
            cache.retain(|_, (expires, _)| *expires > now);
        }
        cache.insert(name.to_string(), (now + keep, resolved.clone()));
        Ok(resolved)
    }
}

/// What one sandbox's stub answers: a second's worth of queries at once, then the rate.
const QUERY_RATE: Rate = Rate {
    burst: 2.0 * QUERIES_PER_SECOND,
    per_second: QUERIES_PER_SECOND,
};

pub(super) fn serve(
    net: Arc<Network>,
    link: Arc<Link>,
    socket: tokio::net::UdpSocket,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let socket = Arc::new(socket);
        let mut bucket = Bucket::full(QUERY_RATE, Instant::now());
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(err) => {
                    tracing::warn!(sandbox = %link.id, "DNS stub stopped: {err}");
                    return;
                }
            };
            if bucket.take(QUERY_RATE, Instant::now()).is_err() {
                net.record(
                    &link,
                    "dns rate",
                    NetworkAction::DnsRateLimited {
                        limit_per_second: QUERIES_PER_SECOND,
                    },
                );
                continue;
            }
            let query = match wire::parse_query(&buf[..len]) {
                Ok(query) => query,
                Err(Some(reply)) => {
                    let _ = socket.send_to(&reply, from).await;
                    continue;
                }
                Err(None) => continue,
            };
            let (net, link, socket) = (net.clone(), link.clone(), socket.clone());
            tokio::spawn(async move {
                let reply = answer(&net, &link, &query).await;
                let _ = socket.send_to(&reply, from).await;
            });
        }
    })
}

async fn answer(net: &Network, link: &Link, query: &wire::Query) -> Vec<u8> {
    let name = &query.name;
    if link.mode == Mode::Allowlist {
        let allowed = link.allowlist.read().allows(name);
        if !allowed {
            net.record(
                link,
                &format!("dns {name}"),
                NetworkAction::DnsRefused {
                    host: name.clone(),
                    query_type: query.kind.to_string(),
                    reason: "not in allowed_hosts".into(),
                },
            );
            return wire::refused(query);
        }
    }
    match query.kind {
        QueryKind::A => {}
        QueryKind::Aaaa => return wire::answer(query, &[]),
        QueryKind::Other(_) => {
            net.record(
                link,
                &format!("dns {} {name}", query.kind),
                NetworkAction::DnsRefused {
                    host: name.clone(),
                    query_type: query.kind.to_string(),
                    reason: "only A and AAAA queries are answered".into(),
                },
            );
            return wire::refused(query);
        }
    }
    if !caged_network::allow::is_host_name(name) {
        return wire::nxdomain(query);
    }
    match net.resolver.resolve(name).await {
        Ok(Resolved::Addresses(addrs)) => {
            let (kept, stripped): (Vec<(Ipv4Addr, u32)>, Vec<_>) = addrs
                .into_iter()
                .partition(|(ip, _)| net.denied((*ip).into()).is_none());
            if !stripped.is_empty() {
                net.record(
                    link,
                    &format!("rebind {name}"),
                    NetworkAction::DnsStripped {
                        host: name.clone(),
                        addresses: stripped.iter().map(|(ip, _)| ip.to_string()).collect(),
                        reason: "answer in a denied range (DNS rebinding)".into(),
                    },
                );
            }
            // Remembered in both modes: in `allowlist` a nameless connection may go to these;
            // in both, refusals of these addresses are reported with the name.
            {
                let now = Instant::now();
                let mut handed_out = link.handed_out.lock();
                if handed_out.len() > 4096 {
                    handed_out.retain(|_, (_, until)| *until > now);
                }
                for (ip, ttl) in &kept {
                    handed_out.insert(
                        *ip,
                        (name.clone(), now + Duration::from_secs(u64::from(*ttl))),
                    );
                }
            }
            wire::answer(query, &kept)
        }
        Ok(Resolved::NoSuchName) => wire::nxdomain(query),
        Err(err) => {
            tracing::debug!(sandbox = %link.id, "lookup of {name} failed: {err}");
            wire::servfail(query)
        }
    }
}

//! What `full` sandboxes' connections carried, from the kernel's connection tracking: each
//! ended connection is added to its sandbox's totals per destination, and every
//! [`FLUSH_EVERY`] the totals become `traffic` events (`host`, `address`, `port`, `protocol`,
//! `connections`, `bytes_out`, `bytes_in`). `allowlist` connections are the egress proxy's to
//! report. The sandbox is found by the connection's source address, which its link guarantees
//! (strict reverse-path filtering and the firewall's source check).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use caged_domain::event::{By, NetworkAction};
use caged_network::conntrack::{Ended, Listener};
use caged_network::firewall::Mode;

use super::{Link, Network};

const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Per destination: connections, bytes out, bytes in.
pub(super) type Totals = HashMap<(Ipv4Addr, Option<u16>, u8), (u64, u64, u64)>;

pub(super) async fn run(net: Arc<Network>, stop: tokio_util::sync::CancellationToken) {
    let mut listener = match Listener::bind() {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(
                "cannot follow connection tracking: {err}; full-mode traffic will not be events"
            );
            return;
        }
    };
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            batch = listener.next() => match batch {
                Ok(ended) => add(&net, &ended),
                Err(err) => {
                    tracing::error!("following connection tracking failed: {err}");
                    return;
                }
            },
            _ = flush.tick() => report(&net),
            () = stop.cancelled() => return,
        }
    }
}

fn add(net: &Network, ended: &[Ended]) {
    let links: Vec<Arc<Link>> = net.links.lock().values().cloned().collect();
    for connection in ended {
        if !net.config.pool.contains(connection.source) {
            continue;
        }
        let Some(link) = links
            .iter()
            .find(|link| link.spec.sandbox_addr == connection.source && link.mode == Mode::Full)
        else {
            continue;
        };
        let mut totals = link.traffic.lock();
        let entry = totals
            .entry((connection.destination, connection.port, connection.protocol))
            .or_default();
        entry.0 += 1;
        entry.1 += connection.bytes_out;
        entry.2 += connection.bytes_in;
    }
}

fn report(net: &Network) {
    let links: Vec<Arc<Link>> = net.links.lock().values().cloned().collect();
    for link in links {
        let totals = std::mem::take(&mut *link.traffic.lock());
        if totals.is_empty() {
            continue;
        }
        let payloads: Vec<NetworkAction> = totals
            .into_iter()
            .map(
                |((address, port, protocol), (connections, bytes_out, bytes_in))| {
                    let host = link
                        .handed_out
                        .lock()
                        .get(&address)
                        .map(|(name, _)| name.clone());
                    NetworkAction::Traffic {
                        host,
                        address: address.to_string(),
                        port,
                        protocol: match protocol {
                            6 => "tcp".to_string(),
                            17 => "udp".to_string(),
                            1 => "icmp".to_string(),
                            n => n.to_string(),
                        },
                        connections,
                        bytes_out,
                        bytes_in,
                        by: By::Conntrack,
                    }
                },
            )
            .collect();
        for event in payloads {
            net.write_event(link.id, link.account_id.clone(), event.into());
        }
    }
}

//! The firewall's refusals, read from the kernel's log (NFLOG) and recorded as `blocked` events
//! of the sandbox whose link the packet came in on.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use caged_domain::event::{By, NetworkAction};
use caged_network::firewall::{LOG_FLOW, LOG_HOST, LOG_RANGE, LOG_ROUTED, LOG_SANDBOX, LOG_SPOOF};
use caged_network::nflog::{Listener, Refusal};

use super::Network;

pub(super) async fn run(net: Arc<Network>, stop: tokio_util::sync::CancellationToken) {
    let group = net.firewall.log_group;
    let mut listener = match Listener::bind(group) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(
                group,
                "cannot read the firewall's log (NFLOG group {group}): {err}; refused packets will not be events"
            );
            return;
        }
    };
    loop {
        let next = tokio::select! {
            next = listener.next() => next,
            () = stop.cancelled() => return,
        };
        match next {
            Ok(refusals) => {
                for refusal in refusals {
                    note(&net, &refusal);
                }
            }
            Err(err) => {
                tracing::error!("reading the firewall's log failed: {err}");
                return;
            }
        }
    }
}

fn note(net: &Network, refusal: &Refusal) {
    let links = net.links.lock().values().cloned().collect::<Vec<_>>();
    let Some(link) = links
        .iter()
        .find(|link| link.bound_ifindex.load(Ordering::Acquire) == refusal.in_ifindex)
    else {
        return;
    };
    // The name the stub gave for this address, if it gave one.
    let host = link
        .handed_out
        .lock()
        .get(&refusal.destination)
        .map(|(name, _)| name.clone());
    let port = refusal
        .port
        .map_or(String::new(), |port| format!(":{port}"));
    if refusal.prefix == LOG_FLOW {
        net.record(
            link,
            &format!("flow {}{port}/{}", refusal.destination, refusal.protocol),
            NetworkAction::Connect {
                host,
                address: refusal.destination.to_string(),
                port: refusal.port,
                protocol: Some(refusal.protocol.to_string()),
                by: Some(By::Firewall),
                bytes_out: None,
                bytes_in: None,
                duration_ms: None,
            },
        );
        return;
    }
    let reason = match refusal.prefix.as_str() {
        LOG_HOST => "the host itself (only Caged's services on the link answer)".to_string(),
        LOG_ROUTED => {
            "nothing is routed in network_mode allowlist (TCP goes through the egress proxy)"
                .to_string()
        }
        LOG_SANDBOX => "another sandbox".to_string(),
        LOG_SPOOF => "a source address that is not the sandbox's".to_string(),
        LOG_RANGE => format!(
            "a denied range: {}",
            net.denied(refusal.destination.into()).unwrap_or("denied")
        ),
        other => other.to_string(),
    };
    net.record(
        link,
        &format!("fw {}{port}/{}", refusal.destination, refusal.protocol),
        NetworkAction::Blocked {
            host,
            address: refusal.destination.to_string(),
            port: refusal.port,
            protocol: Some(refusal.protocol.to_string()),
            reason,
            by: By::Firewall,
        },
    );
}

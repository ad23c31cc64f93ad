//! Port detection: each running sandbox's `/proc/net/tcp` and `tcp6` are re-read through
//! descriptors opened inside its namespace (host side; nothing in the sandbox can hide a socket
//! from them or invent one), and every change becomes a `port` event. A read costs the kernel a
//! walk of its listening hash (~50 µs a table however few sockets there are), so sandboxes in
//! use (busy, or active in the last minute) are scanned every half second and the others every
//! two seconds. Every two seconds the set of watched sandboxes is squared with the database.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use caged_store::PortChange;

use crate::{Cage, Lifecycle, Previews};

const SCAN_EVERY: Duration = Duration::from_millis(500);
/// Docker's embedded DNS server listens inside every sandbox on a user-defined network, at this
/// address; it is the engine's, not something the sandbox serves.
const ENGINE_RESOLVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 11));
/// Scans between two reconciliations with the database, and between two scans of sandboxes
/// nobody is using.
const SYNC_EVERY_SCANS: u32 = 4;
/// A sandbox active this recently is scanned at every tick.
const LIVELY_MS: i64 = 60_000;

/// The detector, and the bookkeeping that attaches and detaches sandboxes.
pub(crate) async fn run(
    previews: Arc<Previews>,
    lifecycle: Arc<dyn Lifecycle>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(SCAN_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick: u32 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let full = tick.is_multiple_of(SYNC_EVERY_SCANS);
        if full && lifecycle.engine_up() {
            sync(&previews).await;
        }
        tick = tick.wrapping_add(1);
        scan(&previews, full).await;
    }
}

/// Watches running sandboxes not watched yet (or now in another container) and forgets the
/// ones that are gone.
async fn sync(previews: &Arc<Previews>) {
    let heads = match previews.db.run(move |store| store.live_heads()).await {
        Ok(heads) => heads,
        Err(err) => {
            tracing::warn!("preview bookkeeping could not read the database: {err}");
            return;
        }
    };
    let live: HashSet<_> = heads.iter().map(|head| head.id).collect();
    previews.cages.lock().retain(|id, _| live.contains(id));
    for head in heads {
        let current = previews.cage(head.id);
        if let Some(cage) = &current {
            cage.running.store(
                head.state == caged_domain::SandboxState::Running,
                Ordering::Release,
            );
        }
        let stale =
            current.is_none_or(|cage| Some(&cage.container_id) != head.container_id.as_ref());
        if stale
            && head.state == caged_domain::SandboxState::Running
            && let Err(err) = previews.attach(&head).await
        {
            tracing::debug!(sandbox = %head.id, "not watching its ports yet: {err}");
        }
    }
}

async fn scan(previews: &Arc<Previews>, full: bool) {
    let lively_since = caged_domain::time::now_ms() - LIVELY_MS;
    let cages: Vec<Arc<Cage>> = previews
        .cages()
        .into_iter()
        .filter(|cage| cage.running.load(Ordering::Acquire))
        .filter(|cage| full || previews.activity.lively(cage.id, lively_since))
        .collect();
    if cages.is_empty() {
        return;
    }
    let changed = match tokio::task::spawn_blocking(move || changes(&cages)).await {
        Ok(changed) => changed,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    };
    for (cage, changes) in changed {
        let (id, account) = (cage.id, cage.account_id.clone());
        let at = caged_domain::time::now_ms();
        let written = previews
            .db
            .write(move |store| store.update_preview_ports(id, &account, at, &changes))
            .await;
        if let Err(err) = written {
            tracing::warn!(sandbox = %id, "could not record its ports: {err}");
        }
    }
}

/// Reads each cage's tables and updates its known ports; returns what changed, per cage.
pub(crate) fn changes(cages: &[Arc<Cage>]) -> Vec<(Arc<Cage>, Vec<PortChange>)> {
    let mut changed = Vec::new();
    for cage in cages {
        let now = {
            let mut tables = cage.tables.lock();
            let Some(tables) = tables.as_mut() else {
                continue;
            };
            match tables.listening() {
                Ok(mut now) => {
                    now.retain(|_, addr| *addr != ENGINE_RESOLVER);
                    now
                }
                Err(err) => {
                    tracing::debug!(sandbox = %cage.id, "cannot read its ports: {err}");
                    continue;
                }
            }
        };
        let mut known = cage.ports.lock();
        let diff = diff(&known, &now);
        if !diff.is_empty() {
            *known = now;
            changed.push((cage.clone(), diff));
        }
    }
    changed
}

fn diff(before: &BTreeMap<u16, IpAddr>, now: &BTreeMap<u16, IpAddr>) -> Vec<PortChange> {
    let mut changes = Vec::new();
    for (port, addr) in now {
        if before.get(port) != Some(addr) {
            changes.push(PortChange::Opened {
                port: *port,
                address: addr.to_string(),
            });
        }
    }
    for port in before.keys() {
        if !now.contains_key(port) {
            changes.push(PortChange::Closed { port: *port });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_opened_moved_and_closed_ports() {
        let lo: IpAddr = [127, 0, 0, 1].into();
        let any: IpAddr = [0, 0, 0, 0].into();
        let before = BTreeMap::from([(80, lo), (443, lo)]);
        let now = BTreeMap::from([(80, lo), (443, any), (3000, lo)]);
        assert_eq!(
            diff(&before, &now),
            vec![
                PortChange::Opened {
                    port: 443,
                    address: "0.0.0.0".into()
                },
                PortChange::Opened {
                    port: 3000,
                    address: "127.0.0.1".into()
                },
            ]
        );
        assert_eq!(diff(&now, &BTreeMap::new()).len(), 3, "everything closed");
    }
}

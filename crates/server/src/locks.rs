//! The lifecycle's locks: one async lock per sandbox, so operations on one sandbox never
//! interleave and different sandboxes never wait on each other.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use caged_domain::SandboxId;

/// One async lock per sandbox: operations on one sandbox never interleave, and different
/// sandboxes never wait on each other.
#[derive(Default)]
pub(crate) struct Locks {
    map: Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    pub(crate) async fn lock(&self, id: SandboxId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock();
            // Drop locks nobody holds or waits on, so the map does not grow without bound.
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
            map.entry(id).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The lock if nobody holds it; for background work that should yield to requests.
    pub(crate) fn try_lock(&self, id: SandboxId) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = {
            let mut map = self.map.lock();
            map.entry(id).or_default().clone()
        };
        lock.try_lock_owned().ok()
    }
}

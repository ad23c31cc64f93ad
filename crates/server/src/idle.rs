//! Idle sleep. Every piece of work on a sandbox restarts its clock; a sandbox whose clock runs
//! past its `timeout` is paused, with the reason in its event log. Deadlines live in one ordered
//! queue served by one task that sleeps until the earliest, so the cost does not grow with the
//! number of sandboxes. Last activity is persisted with every activity event, so a restarted
//! server picks the clocks up where they were.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caged_domain::time::now_ms;
use caged_domain::{SandboxId, SandboxState};
use tokio::sync::Notify;

use crate::engine::EngineStatus;
use crate::{AppState, sandboxes};

#[derive(Default)]
pub(crate) struct Idle {
    inner: Mutex<Queue>,
    changed: Notify,
}

#[derive(Default)]
struct Queue {
    by_deadline: BTreeSet<(i64, SandboxId)>,
    deadline_of: HashMap<SandboxId, i64>,
    /// Work in progress per sandbox; a busy sandbox is never put to sleep.
    busy: HashMap<SandboxId, usize>,
    /// When each running sandbox was last active.
    touched: HashMap<SandboxId, i64>,
}

/// Marks a sandbox busy while alive.
pub(crate) struct Busy {
    idle: Arc<Idle>,
    id: SandboxId,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut queue = self.idle.lock();
        if let Some(count) = queue.busy.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                queue.busy.remove(&self.id);
            }
        }
    }
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sandbox was active at `at_ms`; it sleeps `timeout_seconds` later unless used again.
    pub(crate) fn touch(&self, id: SandboxId, at_ms: i64, timeout_seconds: u64) {
        let deadline = at_ms.saturating_add(timeout_seconds as i64 * 1000);
        {
            let mut queue = self.lock();
            let touched = queue.touched.entry(id).or_insert(at_ms);
            *touched = (*touched).max(at_ms);
        }
        self.schedule(id, deadline);
    }

    /// Whether the sandbox is busy now or was active at or after `since_ms`.
    pub(crate) fn lively(&self, id: SandboxId, since_ms: i64) -> bool {
        let queue = self.lock();
        queue.busy.contains_key(&id) || queue.touched.get(&id).is_some_and(|at| *at >= since_ms)
    }

    fn schedule(&self, id: SandboxId, deadline: i64) {
        let mut queue = self.lock();
        let earliest = queue.by_deadline.first().map(|(at, _)| *at);
        if let Some(old) = queue.deadline_of.insert(id, deadline) {
            queue.by_deadline.remove(&(old, id));
        }
        queue.by_deadline.insert((deadline, id));
        drop(queue);
        // The sleeper wakes at the earliest deadline anyway and looks again then; only an
        // earlier one needs it now. (Activity mostly moves deadlines later: no wake per request.)
        if earliest.is_none_or(|earliest| deadline < earliest) {
            self.changed.notify_one();
        }
    }

    /// The sandbox no longer runs (paused or destroyed): nothing to time.
    pub(crate) fn forget(&self, id: SandboxId) {
        let mut queue = self.lock();
        queue.touched.remove(&id);
        if let Some(old) = queue.deadline_of.remove(&id) {
            queue.by_deadline.remove(&(old, id));
        }
    }

    pub(crate) fn busy(self: &Arc<Self>, id: SandboxId) -> Busy {
        *self.lock().busy.entry(id).or_default() += 1;
        Busy {
            idle: self.clone(),
            id,
        }
    }

    fn is_busy(&self, id: SandboxId) -> bool {
        self.lock().busy.contains_key(&id)
    }

    /// Removes and returns the sandboxes whose deadline has passed.
    fn take_due(&self, now: i64) -> Vec<SandboxId> {
        let mut queue = self.lock();
        let mut due = Vec::new();
        while let Some(&(deadline, id)) = queue.by_deadline.first() {
            if deadline > now {
                break;
            }
            queue.by_deadline.pop_first();
            queue.deadline_of.remove(&id);
            due.push(id);
        }
        due
    }

    fn next_deadline(&self) -> Option<i64> {
        self.lock()
            .by_deadline
            .first()
            .map(|(deadline, _)| *deadline)
    }
}

/// Serves the queue until the server stops.
pub(crate) fn run(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            let wait = match state.idle.next_deadline() {
                Some(deadline) => Duration::from_millis((deadline - now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = state.idle.changed.notified() => continue,
                _ = shutdown.changed() => return,
            }
            for id in state.idle.take_due(now_ms()) {
                let state = state.clone();
                tokio::spawn(async move { sleep_if_idle(&state, id).await });
            }
        }
    });
}

async fn sleep_if_idle(state: &AppState, id: SandboxId) {
    if !matches!(&*state.engine.borrow(), EngineStatus::Up(_)) {
        // Try again once the engine is back; the reconciler also reschedules.
        state.idle.schedule(id, now_ms() + 5_000);
        return;
    }
    let _guard = state.locks.lock(id).await;
    let record = match state.db.run(move |store| store.sandbox_by_id(id)).await {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(err) => {
            tracing::error!(sandbox = %id, "idle check could not read the database: {err}");
            state.idle.schedule(id, now_ms() + 5_000);
            return;
        }
    };
    if record.state != SandboxState::Running || state.idle.is_busy(id) {
        return; // work in progress re-arms the clock when it ends
    }
    let timeout_ms = record.config.timeout as i64 * 1000;
    let now = now_ms();
    if now < record.last_active_ms + timeout_ms {
        state.idle.schedule(id, record.last_active_ms + timeout_ms);
        return;
    }
    let reason = format!(
        "idle for {}s (timeout {}s)",
        (now - record.last_active_ms) / 1000,
        record.config.timeout
    );
    match sandboxes::apply(state, &record, SandboxState::Paused, &reason).await {
        Ok(()) => tracing::info!(sandbox = %id, "{reason}: paused"),
        Err(err) => {
            tracing::warn!(sandbox = %id, "idle sleep failed: {err}");
            state.idle.schedule(id, now_ms() + 30_000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_out_in_order_and_move_with_activity() {
        let idle = Arc::new(Idle::default());
        let (a, b, c) = (
            SandboxId::random(),
            SandboxId::random(),
            SandboxId::random(),
        );
        idle.touch(a, 1_000, 10); // due at 11_000
        idle.touch(b, 2_000, 5); // due at 7_000
        idle.touch(c, 0, 100);
        idle.touch(a, 5_000, 10); // activity moves a to 15_000
        assert!(idle.lively(a, 5_000) && !idle.lively(b, 2_001));
        assert_eq!(idle.next_deadline(), Some(7_000));
        assert_eq!(idle.take_due(10_999), vec![b]);
        assert!(idle.take_due(14_999).is_empty());
        assert_eq!(idle.take_due(15_000), vec![a]);
        idle.forget(c);
        assert_eq!(idle.next_deadline(), None);
        let busy = idle.busy(a);
        let again = idle.busy(a);
        drop(busy);
        assert!(idle.is_busy(a));
        drop(again);
        assert!(!idle.is_busy(a));
    }
}

//! Activity: every piece of work on a sandbox (an exec, a file, preview traffic, an LLM call)
//! restarts its clock, and work in flight marks it busy. Idle sleep puts a sandbox whose clock
//! ran past its `timeout` to sleep, never a busy one. Deadlines live in one ordered queue, so
//! whoever serves it sleeps until the earliest and the cost does not grow with the number of
//! sandboxes.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use caged_domain::SandboxId;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Default)]
pub struct Activity {
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
pub struct Busy {
    activity: Arc<Activity>,
    id: SandboxId,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut queue = self.activity.lock();
        if let Some(count) = queue.busy.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                queue.busy.remove(&self.id);
            }
        }
    }
}

impl Activity {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Queue> {
        self.inner.lock()
    }

    /// The sandbox was active at `at_ms`; it sleeps `timeout_seconds` later unless used again.
    pub fn touch(&self, id: SandboxId, at_ms: i64, timeout_seconds: u64) {
        let deadline = at_ms.saturating_add(timeout_seconds as i64 * 1000);
        {
            let mut queue = self.lock();
            let touched = queue.touched.entry(id).or_insert(at_ms);
            *touched = (*touched).max(at_ms);
        }
        self.schedule(id, deadline);
    }

    /// Whether the sandbox is busy now or was active at or after `since_ms`.
    pub fn lively(&self, id: SandboxId, since_ms: i64) -> bool {
        let queue = self.lock();
        queue.busy.contains_key(&id) || queue.touched.get(&id).is_some_and(|at| *at >= since_ms)
    }

    /// The sandbox sleeps at `deadline` (milliseconds) unless used again before.
    pub fn schedule(&self, id: SandboxId, deadline: i64) {
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
    pub fn forget(&self, id: SandboxId) {
        let mut queue = self.lock();
        queue.touched.remove(&id);
        if let Some(old) = queue.deadline_of.remove(&id) {
            queue.by_deadline.remove(&(old, id));
        }
    }

    /// Resolves when a deadline earlier than all others was set.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    pub fn busy(self: &Arc<Self>, id: SandboxId) -> Busy {
        *self.lock().busy.entry(id).or_default() += 1;
        Busy {
            activity: self.clone(),
            id,
        }
    }

    pub fn is_busy(&self, id: SandboxId) -> bool {
        self.lock().busy.contains_key(&id)
    }

    /// Removes and returns the sandboxes whose deadline has passed.
    pub fn take_due(&self, now: i64) -> Vec<SandboxId> {
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

    /// The earliest deadline, if any sandbox has one.
    pub fn next_deadline(&self) -> Option<i64> {
        self.lock()
            .by_deadline
            .first()
            .map(|(deadline, _)| *deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_out_in_order_and_move_with_activity() {
        let activity = Arc::new(Activity::default());
        let (a, b, c) = (
            SandboxId::random(),
            SandboxId::random(),
            SandboxId::random(),
        );
        activity.touch(a, 1_000, 10); // due at 11_000
        activity.touch(b, 2_000, 5); // due at 7_000
        activity.touch(c, 0, 100);
        activity.touch(a, 5_000, 10); // activity moves a to 15_000
        assert!(activity.lively(a, 5_000) && !activity.lively(b, 2_001));
        assert_eq!(activity.next_deadline(), Some(7_000));
        assert_eq!(activity.take_due(10_999), vec![b]);
        assert!(activity.take_due(14_999).is_empty());
        assert_eq!(activity.take_due(15_000), vec![a]);
        activity.forget(c);
        assert_eq!(activity.next_deadline(), None);
        let busy = activity.busy(a);
        let again = activity.busy(a);
        drop(busy);
        assert!(activity.is_busy(a));
        drop(again);
        assert!(!activity.is_busy(a));
    }
}

//! What runs in the background of the server, in one place. Every long-lived loop is started
//! here by name ([`Tasks::spawn`]) and ends when the server stops: [`Tasks::stop`] cancels
//! them all, waits for them up to a deadline, and names any that did not end (then aborts
//! them). ARCHITECTURE.md has the table of what runs.
//!
//! Short work a request or a loop hands off (recording an event, waking a sandbox) is not a
//! loop and is not registered; it ends on its own.

use parking_lot::Mutex;
use std::future::Future;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    running: Mutex<Vec<(&'static str, AbortHandle)>>,
}

impl Tasks {
    pub(crate) fn new() -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Cancelled when the server starts stopping; loops end on it.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` until it ends, the server stops, or (if it ignores the stop) the stop's
    /// deadline passes.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.tracker.spawn(async move {
            task.await;
            tracing::debug!(task = name, "ended");
        });
        let mut running = self.running.lock();
        running.retain(|(_, handle)| !handle.is_finished());
        running.push((name, handle.abort_handle()));
    }

    /// Cancels every loop and waits up to `deadline` for them to end; the ones still running
    /// then are named in the log and aborted.
    pub(crate) async fn stop(&self, deadline: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return;
        }
        let running = self.running.lock();
        for (name, handle) in running.iter().filter(|(_, handle)| !handle.is_finished()) {
            tracing::warn!(
                task = name,
                "did not stop within {}s of the server's stop; aborted",
                deadline.as_secs()
            );
            handle.abort();
        }
    }
}

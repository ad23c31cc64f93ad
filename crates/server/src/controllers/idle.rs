//! Idle sleep: a sandbox whose activity clock (`caged_activity`) runs past its `timeout` is
//! paused, with the reason in its event log. One task serves the clock's queue, sleeping until
//! the earliest deadline. Last activity is persisted with every activity event, so a restarted
//! server picks the clocks up where they were.

use std::sync::Arc;
use std::time::Duration;

use caged_domain::time::now_ms;
use caged_domain::{SandboxId, SandboxState};

use crate::sandboxes;
use crate::state::AppState;
use caged_node::EngineStatus;

/// Serves the queue until the server stops.
pub(crate) async fn run(state: Arc<AppState>) {
    loop {
        let wait = match state.activity.next_deadline() {
            Some(deadline) => Duration::from_millis((deadline - now_ms()).max(0) as u64),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.activity.changed() => continue,
            () = state.stop.cancelled() => return,
        }
        for id in state.activity.take_due(now_ms()) {
            let state = state.clone();
            tokio::spawn(async move { sleep_if_idle(&state, id).await });
        }
    }
}

async fn sleep_if_idle(state: &AppState, id: SandboxId) {
    if !matches!(&*state.engine.borrow(), EngineStatus::Up(_)) {
        // Try again once the engine is back; the reconciler also reschedules.
        state.activity.schedule(id, now_ms() + 5_000);
        return;
    }
    let _guard = state.locks.lock(id).await;
    let record = match state.db.run(move |store| store.sandbox_by_id(id)).await {
        Ok(Some(record)) => record,
        Ok(None) => return,
        Err(err) => {
            tracing::error!(sandbox = %id, "idle check could not read the database: {err}");
            state.activity.schedule(id, now_ms() + 5_000);
            return;
        }
    };
    if record.state != SandboxState::Running || state.activity.is_busy(id) {
        return; // work in progress re-arms the clock when it ends
    }
    let timeout_ms = record.config.timeout as i64 * 1000;
    let now = now_ms();
    if now < record.last_active_ms + timeout_ms {
        state
            .activity
            .schedule(id, record.last_active_ms + timeout_ms);
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
            state.activity.schedule(id, now_ms() + 30_000);
        }
    }
}

//! Auto-snapshots: a snapshot of each sandbox as it falls asleep, taken without holding its
//! lock (a resume never waits for one), kept only if nothing woke it meanwhile and something
//! changed since the latest, evicting older auto-snapshots to stay within the limits.

use caged_domain::EventKind;
use std::sync::Arc;

use caged_domain::time::now_ms;
use caged_domain::{SandboxId, SandboxState};
use caged_store::{NewEvent, SandboxRecord};
use serde_json::{Value, json};

use crate::error::Result;
use crate::sandboxes::{container_of, engine_ready};
use crate::snapshots;
use crate::state::AppState;

/// Serves auto-snapshots, one at a time, for sandboxes that just went to sleep.
pub(crate) async fn run(
    state: Arc<AppState>,
    mut paused: tokio::sync::mpsc::UnboundedReceiver<SandboxId>,
) {
    loop {
        let id = tokio::select! {
            next = paused.recv() => match next {
                Some(id) => id,
                None => return,
            },
            () = state.stop.cancelled() => return,
        };
        if let Err(err) = auto(&state, id).await {
            tracing::warn!(sandbox = %id, "auto-snapshot failed: {err}");
        }
    }
}

/// The snapshot taken when a sandbox pauses. It is captured without holding the sandbox's lock,
/// so a resume never waits for it, and kept only if the sandbox is still in the same sleep when
/// it is done, if anything changed since the latest snapshot, and if room can be made by
/// evicting older auto-snapshots (a pause never fails for want of room).
async fn auto(state: &AppState, id: SandboxId) -> Result<()> {
    engine_ready(state)?;
    let Some(record) = state.db.run(move |store| store.sandbox_by_id(id)).await? else {
        return Ok(());
    };
    if record.state != SandboxState::Paused {
        return Ok(());
    }
    let handle = container_of(&record)?.to_string();
    let (snapshot_id, captured, blob) = snapshots::capture(state, &handle).await?;

    let _guard = state.locks.lock(id).await;
    let account = record.account_id.clone();
    let (now, existing, used) = state
        .db
        .run(move |store| -> Result<_, caged_store::StoreError> {
            Ok((
                store.sandbox_by_id(id)?,
                store.snapshots_of(&account, id)?,
                store.snapshot_bytes(&account)?,
            ))
        })
        .await?;
    let same_sleep = now.as_ref().is_some_and(|now| {
        now.state == SandboxState::Paused && now.transitions.len() == record.transitions.len()
    });
    if !same_sleep {
        blob.abandon(); // it woke up meanwhile: the copy may be torn
        return Ok(());
    }
    if existing
        .last()
        .is_some_and(|latest| latest.sha256 == captured.sha256)
    {
        blob.abandon();
        let payload =
            json!({ "op": "auto-skipped", "reason": "nothing changed since the latest snapshot" });
        record_event(state, &record, payload).await;
        return Ok(());
    }
    let size = blob.size();
    let (max, quota) = (
        state.config.max_snapshots_per_sandbox,
        state.config.snapshot_quota_bytes,
    );
    let (mut count, mut used) = (existing.len(), used as u64);
    let mut evictable = existing.iter().filter(|snapshot| snapshot.kind == "auto");
    while count >= max || used + size > quota {
        let Some(oldest) = evictable.next() else {
            blob.abandon();
            let payload = json!({ "op": "auto-skipped", "reason": "the snapshot limits are reached by manual snapshots" });
            record_event(state, &record, payload).await;
            return Ok(());
        };
        snapshots::forget(state, &oldest.id).await?;
        record_event(
            state,
            &record,
            json!({ "op": "evicted", "snapshot_id": oldest.id }),
        )
        .await;
        count -= 1;
        used = used.saturating_sub(oldest.size_bytes as u64);
    }
    let (snapshot, size) =
        snapshots::keep(state, &record, snapshot_id, None, "auto", &captured, blob).await?;
    record_event(
        state,
        &record,
        json!({ "op": "auto", "snapshot_id": snapshot.id, "size_bytes": size }),
    )
    .await;
    Ok(())
}

/// A snapshot event that is not activity: a sleeping sandbox's clock is not restarted by it.
async fn record_event(state: &AppState, record: &SandboxRecord, payload: Value) {
    let (id, account) = (record.id, record.account_id.clone());
    let written = state
        .db
        .write(move |store| {
            let new = NewEvent::new(id, account, now_ms(), EventKind::Snapshot, payload);
            store.record_event(&new, false)
        })
        .await;
    if let Err(err) = written {
        tracing::error!(sandbox = %id, "could not record a snapshot event: {err}");
    }
}

//! Makes the database and the engine agree, at start-up and every little while: a server killed
//! at any point (mid-create, mid-pause, mid-destroy) comes back to a consistent world, with
//! nothing leaked and no live sandbox lost.
//!
//! Rules: act only after both the engine's list and the database were read successfully; only
//! on containers labelled with this installation; never on a sandbox whose lock is held (an
//! operation is under way); and before calling a sandbox gone, ask the engine about that very
//! container, so a transient error never destroys a live sandbox.

use caged_domain::EventKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use caged_domain::{SandboxId, SandboxState};
use caged_node::Start;
use caged_runtime::{ContainerSummary, EngineState, RuntimeError};
use caged_store::{NewEvent, SandboxRecord};

use crate::sandboxes;
use crate::state::AppState;
use caged_node::EngineStatus;

const EVERY: Duration = Duration::from_secs(30);

pub(crate) async fn run(state: Arc<AppState>) {
    let mut engine = state.engine.clone();
    loop {
        let up = matches!(&*engine.borrow_and_update(), EngineStatus::Up(_));
        let mut next = EVERY;
        if up {
            match reconcile_once(&state).await {
                Ok(pass) => {
                    if pass.fixed > 0 {
                        tracing::info!("reconciled {} sandbox(es) with the engine", pass.fixed);
                    }
                    // A sandbox busy with other work was left alone: look again soon
                    // rather than a whole period later (a lost container waits meanwhile).
                    if pass.skipped > 0 {
                        next = SOON;
                    }
                }
                Err(err) => tracing::warn!("reconcile skipped: {err}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            changed = engine.changed() => if changed.is_err() { return },
            () = state.stop.cancelled() => return,
        }
    }
}

/// What one pass did.
pub(crate) struct Pass {
    /// Sandboxes or containers it had to fix.
    pub fixed: usize,
    /// Sandboxes it left alone because their lock was held.
    pub skipped: usize,
}

/// How soon a pass that skipped a busy sandbox is followed by another.
const SOON: Duration = Duration::from_secs(1);

/// One pass.
pub(crate) async fn reconcile_once(state: &AppState) -> Result<Pass, String> {
    // The engine first, then the database: a container in this list was created after its row
    // was committed, so the row is in the read that follows.
    let containers = state
        .node
        .list()
        .await
        .map_err(|err| format!("engine list failed: {err}"))?;
    let live = state
        .db
        .run(move |store| store.live_sandboxes())
        .await
        .map_err(|err| format!("database read failed: {err}"))?;
    let live: HashMap<SandboxId, SandboxRecord> =
        live.into_iter().map(|record| (record.id, record)).collect();
    let mut by_sandbox: HashMap<SandboxId, ContainerSummary> = HashMap::new();
    let mut fixed = 0;
    let mut skipped = 0;

    for container in containers {
        match container.sandbox_id {
            Some(id) if live.contains_key(&id) => {
                let recorded = live
                    .get(&id)
                    .and_then(|record| record.container_id.as_deref());
                match recorded {
                    // A second container for a live sandbox: the leftover of a restore cut
                    // short (its staged copy). The recorded one is the sandbox.
                    Some(recorded) if recorded != container.container_id => {
                        let Some(_guard) = state.locks.try_lock(id) else {
                            continue;
                        };
                        if state.node.destroy(&container.container_id).await.is_ok() {
                            tracing::info!(sandbox = %id, "removed a stray container left by an interrupted restore");
                            fixed += 1;
                        }
                    }
                    _ => {
                        by_sandbox.insert(id, container);
                    }
                }
            }
            Some(id) => {
                // No live row: a destroy whose engine call was cut short, or a row never written.
                let Some(_guard) = state.locks.try_lock(id) else {
                    continue;
                };
                let still_live = matches!(state.db.run(move |store| store.sandbox_by_id(id)).await, Ok(Some(r)) if r.state.is_live());
                if still_live {
                    continue; // created since the read; the next pass looks again
                }
                if state.node.destroy(&container.container_id).await.is_ok() {
                    tracing::info!(sandbox = %id, "removed a container whose sandbox is destroyed");
                    fixed += 1;
                }
            }
            // Probe containers carry only the installation label; a finished one is litter.
            None if container.state != EngineState::Running
                && state.node.destroy(&container.container_id).await.is_ok() =>
            {
                fixed += 1;
            }
            None => {}
        }
    }

    for (id, _) in live {
        let Some(_guard) = state.locks.try_lock(id) else {
            skipped += 1;
            continue;
        };
        // Re-read under the lock: the sandbox may have changed since the list.
        let record = match state.db.run(move |store| store.sandbox_by_id(id)).await {
            Ok(Some(record)) if record.state.is_live() => record,
            Ok(_) => continue,
            Err(err) => return Err(format!("database read failed: {err}")),
        };
        match fix(state, &record, by_sandbox.get(&id)).await {
            Ok(true) => fixed += 1,
            Ok(false) => {}
            Err(err) => tracing::warn!(sandbox = %id, "could not reconcile: {err}"),
        }
    }
    Ok(Pass { fixed, skipped })
}

/// Brings one live sandbox in line with its container; true when something changed.
async fn fix(
    state: &AppState,
    record: &SandboxRecord,
    container: Option<&ContainerSummary>,
) -> Result<bool, String> {
    let id = record.id;
    let timeout = record.config.timeout;
    let transition = |from, to, reason: &str| {
        let reason = Some(reason.to_string());
        async move {
            sandboxes::record_transition(state, id, from, to, reason, timeout)
                .await
                .map_err(|err| err.to_string())
        }
    };
    let Some(container) = container else {
        if record.state == SandboxState::Pending {
            transition(
                record.state,
                SandboxState::Destroyed,
                "the server stopped before its container was created",
            )
            .await?;
            return Ok(true);
        }
        // Missing from the list; make sure with the engine before giving the sandbox up.
        let handle = record.container_id.clone().unwrap_or_default();
        match state.node.describe(&handle).await {
            Err(caged_node::Error::Runtime(RuntimeError::ContainerGone)) => {}
            Err(err) => return Err(err.to_string()),
            Ok(_) => return Ok(false),
        }
        transition(
            record.state,
            SandboxState::Destroyed,
            "its container disappeared",
        )
        .await?;
        return Ok(true);
    };
    let handle = container.container_id.as_str();
    match (record.state, &container.state) {
        (SandboxState::Pending, _) => {
            // A create cut short: roll it back rather than guess how far it got.
            state
                .node
                .destroy(handle)
                .await
                .map_err(|err| err.to_string())?;
            transition(
                SandboxState::Pending,
                SandboxState::Destroyed,
                "the server stopped while creating it",
            )
            .await?;
            Ok(true)
        }
        (SandboxState::Running, EngineState::Paused) => {
            transition(
                SandboxState::Running,
                SandboxState::Paused,
                "a pause finished across a server restart",
            )
            .await?;
            Ok(true)
        }
        (SandboxState::Paused, EngineState::Running) => {
            transition(
                SandboxState::Paused,
                SandboxState::Running,
                "a resume finished across a server restart",
            )
            .await?;
            Ok(true)
        }
        (SandboxState::Running, EngineState::Running) => {
            state.activity.touch(id, record.last_active_ms, timeout);
            Ok(false)
        }
        (SandboxState::Paused, EngineState::Paused) => Ok(false),
        (from, engine_state) => {
            // The engine lost the processes (it restarted, the host rebooted): the files are
            // intact, so start it again rather than lose the sandbox.
            if let Err(err) = state.node.restart(handle).await {
                let reason =
                    format!("its container was {engine_state} and would not start again: {err}");
                state
                    .node
                    .destroy(handle)
                    .await
                    .map_err(|err| err.to_string())?;
                transition(from, SandboxState::Destroyed, &reason).await?;
                return Ok(true);
            }
            // A new namespace came with the restart.
            state.node.started(record, Start::Restarted).await;
            let reason = format!(
                "restarted: its container was {engine_state} (processes were lost, files kept)"
            );
            match from {
                SandboxState::Paused => {
                    transition(SandboxState::Paused, SandboxState::Running, &reason).await?
                }
                _ => {
                    let account = record.account_id.clone();
                    let payload = serde_json::json!({ "reason": reason });
                    let at = caged_domain::time::now_ms();
                    if let Ok(event) = state
                        .db
                        .run(move |store| {
                            let new = NewEvent::new(id, account, at, EventKind::Restart, payload);
                            store.record_event(&new, true)
                        })
                        .await
                    {
                        state.db.publish(event);
                    }
                    state.activity.touch(id, at, timeout);
                }
            }
            Ok(true)
        }
    }
}

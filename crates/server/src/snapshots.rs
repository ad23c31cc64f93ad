//! Snapshots of sandboxes: capture (frozen for a consistent copy), restore (built beside the
//! original, which is only replaced once the copy succeeded), fork, download, and the limits
//! (snapshots per sandbox, compressed bytes per account).

use caged_domain::EventKind;
use std::sync::Arc;

use caged_archive::Limits;
use caged_domain::time::now_ms;
use caged_domain::{SandboxConfig, SandboxId, SandboxState, random_hex};
use caged_node::Start;
use caged_runtime::{ExecSpec, FsChange};
use caged_snapshot::Change;
use caged_store::{SandboxRecord, SnapshotRecord};
use futures_util::TryStreamExt;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::sandboxes::{self, CreateOptions, container_of, engine_ready, get};
use crate::state::AppState;
use crate::{blocking, failpoint};

/// Deletions are passed to `rm` as argv, this many at a time.
const RM_BATCH: usize = 256;

pub(crate) async fn snapshot(
    state: &AppState,
    account_id: &str,
    id: &str,
) -> Result<SnapshotRecord> {
    let (account, snapshot_id) = (account_id.to_string(), id.to_string());
    state
        .db
        .run(move |store| store.snapshot(&account, &snapshot_id))
        .await?
        .ok_or_else(|| Error::NotFound(format!("snapshot {id} not found")))
}

/// What a restore may unpack: no more bytes than the sandbox's disk, no absurd entry counts.
fn limits_for(config: &SandboxConfig) -> Limits {
    Limits::for_disk(config.resources.disk << 30)
}

/// Captures a sandbox's filesystem. A running sandbox is frozen for the copy and thawed after,
/// so the snapshot is consistent and holds every byte written before the call.
pub(crate) async fn create(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    name: Option<String>,
) -> Result<SnapshotRecord> {
    engine_ready(state)?;
    let _guard = state.locks.lock(id).await;
    let record = get(state, account_id, id).await?;
    create_locked(state, &record, name, true).await
}

/// [`create`] for a caller that holds the sandbox's lock. `count_limit: false` is for the final
/// snapshot of a sandbox about to be destroyed (its work must not be lost to the per-sandbox
/// limit; the account's byte quota still holds).
pub(crate) async fn create_locked(
    state: &AppState,
    record: &SandboxRecord,
    name: Option<String>,
    count_limit: bool,
) -> Result<SnapshotRecord> {
    let (id, account_id) = (record.id, record.account_id.as_str());
    if !matches!(record.state, SandboxState::Running | SandboxState::Paused) {
        return Err(Error::WrongState(format!(
            "sandbox {id} is {}; only a live sandbox can be snapshotted",
            record.state
        )));
    }
    let account = account_id.to_string();
    let (count, used) = state
        .db
        .run(move |store| -> Result<_, caged_store::StoreError> {
            Ok((
                store.snapshots_of(&account, id)?.len(),
                store.snapshot_bytes(&account)?,
            ))
        })
        .await?;
    let max = state.config.max_snapshots_per_sandbox;
    if count_limit && count >= max {
        return Err(Error::SnapshotLimit(format!(
            "sandbox {id} has {count} snapshots, the most allowed is {max}; delete one first"
        )));
    }
    let handle = container_of(record)?.to_string();
    let frozen = record.state == SandboxState::Running;
    if frozen {
        state.node.pause(&handle).await?;
    }
    let captured = capture(state, &handle).await;
    if frozen && let Err(err) = state.node.resume(&handle).await {
        tracing::error!(sandbox = %id, "could not thaw after a snapshot: {err}");
    }
    let (snapshot_id, captured, blob) = captured?;
    let quota = state.config.snapshot_quota_bytes;
    let needed = blob.size();
    if used as u64 + needed > quota {
        blob.abandon();
        return Err(Error::SnapshotQuota(format!(
            "this snapshot needs {needed} bytes; the account's snapshots use {used} of {quota} bytes; delete some first"
        )));
    }
    let (snapshot, size) =
        keep(state, record, snapshot_id, name, "manual", &captured, blob).await?;
    let payload = json!({ "op": "create", "snapshot_id": snapshot.id, "size_bytes": size, "entries": captured.entries,
                          "deletions": captured.deletions });
    sandboxes::record_activity(state, record, EventKind::Snapshot, payload).await;
    Ok(snapshot)
}

/// Commits a captured blob and records it; the bytes go first, so a crash in between leaves an
/// orphan blob, which start-up removes.
pub(crate) async fn keep(
    state: &AppState,
    record: &SandboxRecord,
    snapshot_id: String,
    name: Option<String>,
    kind: &str,
    captured: &caged_snapshot::Captured,
    blob: caged_snapshot::PendingBlob,
) -> Result<(SnapshotRecord, u64)> {
    let size = blocking::run(move || blob.commit())
        .await
        .map_err(|err| Error::Internal(format!("storing the snapshot: {err}")))?;
    failpoint::hit("snapshot.after_blob");
    let snapshot = SnapshotRecord {
        id: snapshot_id,
        account_id: record.account_id.clone(),
        sandbox_id: record.id,
        name,
        kind: kind.into(),
        template: record.config.template.clone(),
        config: record.config.clone(),
        created_at_ms: now_ms(),
        size_bytes: size as i64,
        raw_bytes: captured.raw_bytes as i64,
        entries: captured.entries as i64,
        sha256: captured.sha256.clone(),
    };
    let stored = snapshot.clone();
    state
        .db
        .run(move |store| store.insert_snapshot(&stored))
        .await?;
    Ok((snapshot, size))
}

/// Writes the diff of a container into a new blob (not yet committed).
pub(crate) async fn capture(
    state: &AppState,
    handle: &str,
) -> Result<(
    String,
    caged_snapshot::Captured,
    caged_snapshot::PendingBlob,
)> {
    let (changes, export) = state.node.capture(handle).await?;
    let changes: Vec<Change> = changes
        .into_iter()
        .map(|change| match change {
            FsChange::Added(path) => Change::Added(path),
            FsChange::Modified(path) => Change::Modified(path),
            FsChange::Deleted(path) => Change::Deleted(path),
        })
        .collect();
    let snapshot_id = format!("snap_{}", random_hex(8));
    let storage = state.snapshots.clone();
    let blob_id = snapshot_id.clone();
    let outcome = blocking::consume(export, move |reader| {
        let mut blob = storage.create(&blob_id)?;
        match caged_snapshot::capture(reader, &changes, &mut blob) {
            Ok(captured) => Ok((captured, blob)),
            Err(err) => {
                blob.abandon();
                Err(err)
            }
        }
    })
    .await;
    match outcome {
        Ok((captured, blob)) => Ok((snapshot_id, captured, blob)),
        Err(err) => Err(Error::Internal(format!(
            "capturing the snapshot failed: {err}"
        ))),
    }
}

/// Checks a stored snapshot end to end without touching anything; returns the deletions.
async fn validate(
    state: &AppState,
    snapshot: &SnapshotRecord,
    limits: Limits,
) -> Result<Vec<String>> {
    let storage = state.snapshots.clone();
    let id = snapshot.id.clone();
    blocking::run(
        move || -> Result<Vec<String>, caged_snapshot::SnapshotError> {
            let blob = storage.open(&id)?;
            Ok(caged_snapshot::plan(blob, std::io::sink(), limits)?.deletions)
        },
    )
    .await
    .map_err(|err| Error::BadSnapshot(format!("snapshot {} cannot be applied: {err}", snapshot.id)))
}

/// Applies a validated snapshot to a fresh container: deletions first, then the files.
async fn apply(
    state: &AppState,
    handle: &str,
    snapshot: &SnapshotRecord,
    deletions: Vec<String>,
    limits: Limits,
) -> Result<()> {
    for batch in deletions.chunks(RM_BATCH) {
        let mut cmd = vec!["rm".to_string(), "-rf".to_string(), "--".to_string()];
        cmd.extend(batch.iter().cloned());
        let spec = ExecSpec {
            cmd,
            // Whoever owned them, the snapshot's deletions are the platform's to make.
            user: Some(caged_runtime::ROOT_USER.into()),
            ..ExecSpec::default()
        };
        let removed =
            crate::collect::collect(state.node.as_ref(), handle, &spec, 4096, None).await?;
        let status = removed.exit_code;
        if status != Some(0) {
            return Err(Error::Internal(format!(
                "removing the snapshot's deleted paths failed (exit {status:?})"
            )));
        }
    }
    let storage = state.snapshots.clone();
    let id = snapshot.id.clone();
    let tar = blocking::produce(move |out| {
        let blob = storage.open(&id)?;
        caged_snapshot::plan(blob, out, limits)
            .map(|_| ())
            .map_err(std::io::Error::other)
    })
    .map_err(|err| caged_runtime::RuntimeError::BadArchive {
        reason: err.to_string(),
    });
    state
        .node
        .write_tar_stream(handle, "/", Box::pin(tar))
        .await?;
    Ok(())
}

/// Replaces a sandbox's filesystem with a snapshot's; its processes restart. The original is
/// untouched until the restored copy is complete.
pub(crate) async fn restore(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    snapshot_id: &str,
) -> Result<SandboxRecord> {
    engine_ready(state)?;
    let snapshot = snapshot(state, account_id, snapshot_id).await?;
    let _guard = state.locks.lock(id).await;
    let record = get(state, account_id, id).await?;
    if !matches!(record.state, SandboxState::Running | SandboxState::Paused) {
        return Err(Error::WrongState(format!(
            "sandbox {id} is {}; only a live sandbox can be restored into",
            record.state
        )));
    }
    if record.config.template != snapshot.template {
        return Err(Error::TemplateMismatch(format!(
            "snapshot {} is of template {}, sandbox {id} of template {}",
            snapshot.id, snapshot.template, record.config.template
        )));
    }
    let limits = limits_for(&record.config);
    let deletions = validate(state, &snapshot, limits).await?;
    let staged = state.node.stage(&record).await?;
    let applied = match apply(state, &staged, &snapshot, deletions, limits).await {
        Ok(()) => state
            .node
            .finish_stage(&staged, &record)
            .await
            .map_err(Error::from),
        Err(err) => Err(err),
    };
    if let Err(err) = applied {
        let _ = state.node.destroy(&staged).await;
        return Err(err);
    }
    failpoint::hit("restore.after_apply");
    // Switch the record to the restored copy first: from here on a crash leaves the original
    // as the stray the reconciler removes, never the other way round.
    let container = staged.clone();
    state
        .db
        .run(move |store| store.set_container_id(id, &container))
        .await?;
    failpoint::hit("restore.after_switch");
    if let Some(old) = record.container_id.as_deref()
        && let Err(err) = state.node.destroy(old).await
    {
        tracing::warn!(sandbox = %id, "the pre-restore container could not be removed yet ({err}); the reconciler will");
    }
    // A name is only cosmetic (containers are addressed by id); a failed rename is not fatal.
    if let Err(err) = state.node.promote(&staged, &record).await {
        tracing::warn!(sandbox = %id, "could not rename the restored container: {err}");
    }
    let restored = get(state, account_id, id).await?;
    state.node.started(&restored, Start::Restored).await;
    let reason = format!("restored from snapshot {}", snapshot.id);
    if record.state == SandboxState::Paused {
        sandboxes::record_transition(
            state,
            id,
            SandboxState::Paused,
            SandboxState::Running,
            Some(reason),
            record.config.timeout,
        )
        .await?;
    }
    let payload = json!({ "op": "restore", "snapshot_id": snapshot.id });
    sandboxes::record_activity(state, &record, EventKind::Snapshot, payload).await;
    get(state, account_id, id).await
}

/// A new sandbox whose filesystem starts as the snapshot's, with the origin's config unless
/// `overrides` (a partial `.caged.yaml` as JSON) says otherwise.
pub(crate) async fn fork(
    state: &Arc<AppState>,
    account_id: &str,
    snapshot_id: &str,
    overrides: Value,
) -> Result<SandboxRecord> {
    engine_ready(state)?;
    let snapshot = snapshot(state, account_id, snapshot_id).await?;
    let mut config =
        serde_json::to_value(&snapshot.config).map_err(|err| Error::Internal(err.to_string()))?;
    // The origin's name belongs to the origin.
    config.as_object_mut().map(|object| object.remove("name"));
    // A snapshot of a sandbox made before `user:` existed holds root's files: its fork runs as
    // root, as its origin did, unless the overrides say otherwise.
    if snapshot.config.user.is_none() {
        config["user"] = Value::from("root");
    }
    match overrides {
        Value::Null => {}
        Value::Object(fields) => {
            for (key, value) in fields {
                config[key] = value;
            }
        }
        _ => {
            return Err(Error::invalid(
                "invalid_config",
                "fork overrides must be an object of .caged.yaml settings",
            ));
        }
    }
    let config = SandboxConfig::from_json_value(config)
        .map_err(|err| Error::invalid("invalid_config", err.to_string()))?;
    if config.template != snapshot.template {
        return Err(Error::invalid(
            "template_mismatch",
            format!(
                "a fork of snapshot {} keeps its template {}",
                snapshot.id, snapshot.template
            ),
        ));
    }
    let limits = limits_for(&config);
    // A snapshot that cannot be applied creates nothing.
    let deletions = validate(state, &snapshot, limits).await?;
    let record = sandboxes::create(
        state,
        account_id,
        config,
        CreateOptions { defer_init: true },
    )
    .await?;
    let _guard = state.locks.lock(record.id).await;
    let applied = match container_of(&record) {
        Ok(handle) => apply(state, handle, &snapshot, deletions, limits).await,
        Err(err) => Err(err),
    };
    if let Err(err) = applied {
        let reason = format!("fork from snapshot {} failed: {}", snapshot.id, err);
        let _ = sandboxes::apply(state, &record, SandboxState::Destroyed, &reason).await;
        return Err(err);
    }
    let payload =
        json!({ "op": "fork", "snapshot_id": snapshot.id, "origin": snapshot.sandbox_id });
    sandboxes::record_activity(state, &record, EventKind::Snapshot, payload).await;
    get(state, account_id, record.id).await
}

pub(crate) async fn delete(
    state: &AppState,
    account_id: &str,
    snapshot_id: &str,
) -> Result<SnapshotRecord> {
    let snapshot = snapshot(state, account_id, snapshot_id).await?;
    forget(state, &snapshot.id).await?;
    Ok(snapshot)
}

/// Deletes a snapshot's record, then its bytes.
pub(crate) async fn forget(state: &AppState, snapshot_id: &str) -> Result<()> {
    let storage = state.snapshots.clone();
    let id = snapshot_id.to_string();
    // The record goes first: a crash between the two leaves an orphan blob, which start-up removes.
    state
        .db
        .run(move |store| -> Result<()> {
            store.delete_snapshot(&id)?;
            storage
                .delete(&id)
                .map_err(|err| Error::Internal(format!("deleting the snapshot's bytes: {err}")))
        })
        .await
}

/// Removes blobs whose record never made it (a crash mid-snapshot) and half-written ones.
pub(crate) async fn remove_orphans(state: &AppState) {
    let storage = state.snapshots.clone();
    let outcome = state
        .db
        .run(move |store| -> Result<usize, String> {
            let mut removed = storage.remove_partials().map_err(|err| err.to_string())?;
            let known: std::collections::HashSet<String> = store
                .snapshot_ids()
                .map_err(|err| err.to_string())?
                .into_iter()
                .collect();
            for id in storage.list().map_err(|err| err.to_string())? {
                if !known.contains(&id) {
                    storage.delete(&id).map_err(|err| err.to_string())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await;
    match outcome {
        Ok(0) => {}
        Ok(removed) => {
            tracing::info!("removed {removed} snapshot file(s) left by an interrupted snapshot")
        }
        Err(err) => tracing::warn!("could not tidy the snapshot folder: {err}"),
    }
}

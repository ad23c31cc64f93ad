//! The lifecycle of sandboxes: every state change goes through the domain's state machine, is
//! acted on in the runtime and persisted with its timestamp, one operation per sandbox at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use caged_domain::time::now_ms;
use caged_domain::{SandboxConfig, SandboxId, SandboxState};
use caged_runtime::{ExecSpec, RuntimeError, SandboxSpec};
use caged_store::{NewSandbox, SandboxRecord, StoreError};
use futures_util::StreamExt;
use serde_json::json;

use crate::api::ApiError;
use crate::engine::EngineStatus;
use crate::{AppState, blocking};

/// One async lock per sandbox: operations on one sandbox never interleave, and different
/// sandboxes never wait on each other.
#[derive(Default)]
pub(crate) struct Locks {
    map: Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    pub(crate) async fn lock(&self, id: SandboxId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .map
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Drop locks nobody holds or waits on, so the map does not grow without bound.
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
            map.entry(id).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Output kept from `init_script`, per stream.
const INIT_OUTPUT_LIMIT: usize = 64 * 1024;

pub(crate) fn engine_ready(state: &AppState) -> Result<Arc<caged_runtime::EngineInfo>, ApiError> {
    match &*state.engine.borrow() {
        EngineStatus::Up(info) => Ok(info.clone()),
        EngineStatus::Starting => Err(ApiError::engine_unavailable(
            "the container engine is still being probed",
        )),
        EngineStatus::Down { reason } => Err(ApiError::engine_unavailable(format!(
            "the container engine is unreachable: {reason}"
        ))),
    }
}

pub(crate) async fn get(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
) -> Result<SandboxRecord, ApiError> {
    let store = state.store.clone();
    let account_id = account_id.to_string();
    blocking::run(move || store.sandbox(&account_id, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("sandbox {id} not found")))
}

pub(crate) struct CreateOptions {
    /// Leave `init_script` for a later `POST /init` (used by `caged up`, which copies files first).
    pub defer_init: bool,
}

pub(crate) async fn create(
    state: &Arc<AppState>,
    account_id: &str,
    config: SandboxConfig,
    options: CreateOptions,
) -> Result<SandboxRecord, ApiError> {
    let engine = engine_ready(state)?;
    let store = state.store.clone();
    let account = account_id.to_string();
    let disk_enforced = engine.disk_limits.available;
    let insert_config = config.clone();
    let id = blocking::run(move || -> Result<SandboxId, ApiError> {
        if let Some(name) = &insert_config.name
            && store.live_name_taken(&account, name)?
        {
            return Err(ApiError::conflict(
                "name_taken",
                format!("a live sandbox is already named {name:?}"),
            ));
        }
        // Ids are random; on the rare collision, draw again.
        for _ in 0..8 {
            let id = SandboxId::random();
            let new = NewSandbox {
                id,
                account_id: &account,
                config: &insert_config,
                disk_enforced,
                at_ms: now_ms(),
            };
            match store.insert_sandbox(new) {
                Ok(()) => return Ok(id),
                Err(StoreError::Sqlite(rusqlite_err))
                    if rusqlite_err.to_string().contains("UNIQUE") =>
                {
                    continue;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(ApiError::internal("could not draw a free sandbox id"))
    })
    .await?;

    let _guard = state.locks.lock(id).await;
    let spec = SandboxSpec {
        id,
        account_id: account_id.to_string(),
        installation_id: state.installation_id.clone(),
        template: config.template.clone(),
        isolation: config.isolation,
        resources: config.resources,
        network_mode: config.network_mode,
        env: config.env.clone(),
        enforce_disk: disk_enforced,
        pids_limit: state.config.pids_limit,
    };
    match state.runtime.create(&spec).await {
        Ok(container_id) => {
            let store = state.store.clone();
            blocking::run(move || -> Result<(), StoreError> {
                store.set_container_id(id, &container_id)?;
                store.transition(
                    id,
                    SandboxState::Pending,
                    SandboxState::Running,
                    now_ms(),
                    None,
                )
            })
            .await?;
        }
        Err(err) => {
            let reason = format!("create failed: {err}");
            let store = state.store.clone();
            blocking::run(move || {
                store.transition(
                    id,
                    SandboxState::Pending,
                    SandboxState::Destroyed,
                    now_ms(),
                    Some(&reason),
                )
            })
            .await?;
            return Err(err.into());
        }
    }
    if config.init_script.is_some() && !options.defer_init {
        start_init(state.clone(), account_id.to_string(), id);
    }
    get(state, account_id, id).await
}

/// Runs `init_script` in the background, in `/workspace`, recording its output and status.
pub(crate) fn start_init(state: Arc<AppState>, account_id: String, id: SandboxId) {
    tokio::spawn(async move {
        if let Err(err) = run_init(&state, &account_id, id).await {
            tracing::warn!(sandbox = %id, "init_script could not run: {}", err.message);
            let result = json!({ "status": "failed", "error": err.message });
            let store = state.store.clone();
            let _ = blocking::run(move || store.set_init_result(id, &result)).await;
        }
    });
}

async fn run_init(state: &AppState, account_id: &str, id: SandboxId) -> Result<(), ApiError> {
    let record = get(state, account_id, id).await?;
    let Some(script) = record.config.init_script.clone() else {
        return Ok(());
    };
    let store = state.store.clone();
    let started = now_ms();
    blocking::run(move || {
        store.set_init_result(
            id,
            &json!({ "status": "running", "started_at_ms": started }),
        )
    })
    .await?;
    let spec = ExecSpec {
        cmd: vec!["/bin/sh".into(), "-c".into(), script],
        cwd: Some("/workspace".into()),
        isolation: record.config.isolation,
        ..ExecSpec::default()
    };
    let outcome = exec_collect(state, &record, &spec, INIT_OUTPUT_LIMIT, None).await?;
    let status = if outcome.exit_code == Some(0) {
        "succeeded"
    } else {
        "failed"
    };
    let result = json!({
        "status": status,
        "exit_code": outcome.exit_code,
        "stdout": String::from_utf8_lossy(&outcome.stdout),
        "stderr": String::from_utf8_lossy(&outcome.stderr),
        "duration_ms": now_ms() - started,
    });
    if status == "failed" {
        tracing::warn!(sandbox = %id, exit_code = ?outcome.exit_code, "init_script failed; the sandbox stays running");
    }
    let store = state.store.clone();
    blocking::run(move || store.set_init_result(id, &result)).await?;
    Ok(())
}

pub(crate) struct Collected {
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
}

/// Runs a command to completion, keeping up to `limit` bytes of each stream; after `timeout`
/// the command and everything it started are killed.
pub(crate) async fn exec_collect(
    state: &AppState,
    record: &SandboxRecord,
    spec: &ExecSpec,
    limit: usize,
    timeout: Option<std::time::Duration>,
) -> Result<Collected, ApiError> {
    let handle = container_of(record)?;
    let mut exec = state.runtime.exec(handle, spec).await?;
    drop(exec.input);
    let mut collected = Collected {
        exit_code: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
        timed_out: false,
    };
    let mut deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    loop {
        let next = match deadline {
            None => exec.output.next().await,
            Some(at) => match tokio::time::timeout_at(at, exec.output.next()).await {
                Ok(next) => next,
                // Killed already and the output still has not ended: stop waiting for it.
                Err(_) if collected.timed_out => None,
                Err(_) => {
                    collected.timed_out = true;
                    state.runtime.exec_kill(handle, &exec.exec_id).await?;
                    // What it wrote before dying still arrives; a short grace period collects it.
                    deadline =
                        Some(tokio::time::Instant::now() + std::time::Duration::from_secs(2));
                    continue;
                }
            },
        };
        let Some(chunk) = next else { break };
        let (buffer, bytes) = match chunk? {
            caged_runtime::ExecOutput::Stdout(bytes) => (&mut collected.stdout, bytes),
            caged_runtime::ExecOutput::Stderr(bytes) => (&mut collected.stderr, bytes),
        };
        let room = limit.saturating_sub(buffer.len());
        collected.truncated |= bytes.len() > room;
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    collected.exit_code = state.runtime.exec_status(&exec.exec_id).await?;
    Ok(collected)
}

pub(crate) fn container_of(record: &SandboxRecord) -> Result<&str, ApiError> {
    record.container_id.as_deref().ok_or_else(|| {
        ApiError::conflict(
            "not_ready",
            format!("sandbox {} has no container yet", record.id),
        )
    })
}

/// A sandbox that can run commands and take files right now, or the reason it cannot.
pub(crate) async fn running(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
) -> Result<SandboxRecord, ApiError> {
    engine_ready(state)?;
    let record = get(state, account_id, id).await?;
    match record.state {
        SandboxState::Running => Ok(record),
        other => Err(ApiError::conflict(
            "illegal_state",
            format!(
                "sandbox {id} is {other}; it must be running{}",
                if other == SandboxState::Paused {
                    " (resume it first)"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// Moves a live sandbox to `to` (paused, running, destroyed).
pub(crate) async fn change_state(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    to: SandboxState,
    reason: &str,
) -> Result<SandboxRecord, ApiError> {
    engine_ready(state)?;
    let _guard = state.locks.lock(id).await;
    let record = get(state, account_id, id).await?;
    if to == SandboxState::Destroyed && record.state == SandboxState::Destroyed {
        return Ok(record); // destroying twice is not an error
    }
    record.state.check_transition(to).map_err(|illegal| {
        ApiError::conflict(
            "illegal_transition",
            format!("cannot {} sandbox {id}: {illegal}", verb(to)),
        )
    })?;
    if let Some(handle) = record.container_id.as_deref() {
        let acted = match to {
            SandboxState::Paused => state.runtime.pause(handle).await,
            SandboxState::Running => state.runtime.resume(handle).await,
            SandboxState::Destroyed => state.runtime.destroy(handle).await,
            SandboxState::Pending => Ok(()),
        };
        match acted {
            Ok(()) => {}
            // The container vanished under us: the sandbox is gone, record it so.
            Err(RuntimeError::ContainerGone) if to != SandboxState::Destroyed => {
                let store = state.store.clone();
                let from = record.state;
                blocking::run(move || {
                    store.transition(
                        id,
                        from,
                        SandboxState::Destroyed,
                        now_ms(),
                        Some("its container disappeared"),
                    )
                })
                .await?;
                return Err(ApiError::conflict(
                    "gone",
                    format!("sandbox {id}'s container disappeared; it is now destroyed"),
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
    let store = state.store.clone();
    let from = record.state;
    let reason = (to == SandboxState::Destroyed).then(|| reason.to_string());
    blocking::run(move || store.transition(id, from, to, now_ms(), reason.as_deref())).await?;
    get(state, account_id, id).await
}

fn verb(to: SandboxState) -> &'static str {
    match to {
        SandboxState::Paused => "pause",
        SandboxState::Running => "resume",
        SandboxState::Destroyed => "destroy",
        SandboxState::Pending => "reset",
    }
}

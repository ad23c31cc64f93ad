//! The lifecycle of sandboxes: every state change goes through the domain's state machine, is
//! acted on in the runtime and persisted with its timestamp and an event, one operation per
//! sandbox at a time. Work on a sandbox (exec, files) marks it active and wakes it if it sleeps.

use caged_domain::EventKind;
use std::sync::Arc;

use caged_domain::config::DEFAULT_USER;
use caged_domain::time::now_ms;
use caged_domain::{SandboxConfig, SandboxId, SandboxState};
use caged_node::Start;
use caged_runtime::{ExecSpec, RuntimeError};
use caged_store::{NewEvent, NewSandbox, SandboxRecord, StoreError};
use serde_json::json;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::state::AppState;
use caged_activity::Busy;
use caged_node::EngineStatus;

/// The lifecycle as previews see it: a request may wake a sandbox, and one whose lock is free
/// is settled.
pub(crate) struct ForPreviews(pub Arc<AppState>);

#[async_trait::async_trait]
impl caged_preview::Lifecycle for ForPreviews {
    async fn wake(
        &self,
        account_id: &str,
        id: SandboxId,
        why: &'static str,
    ) -> std::result::Result<caged_activity::Busy, String> {
        active(&self.0, account_id, id, why)
            .await
            .map(|(_, busy)| busy)
            .map_err(|err| err.to_string())
    }

    fn settled(&self, id: SandboxId) -> bool {
        self.0.locks.try_lock(id).is_some()
    }

    fn engine_up(&self) -> bool {
        matches!(&*self.0.engine.borrow(), EngineStatus::Up(_))
    }
}

/// Output kept from `init_script`, per stream.
const INIT_OUTPUT_LIMIT: usize = 64 * 1024;

pub(crate) fn engine_ready(state: &AppState) -> Result<Arc<caged_runtime::EngineInfo>> {
    match &*state.engine.borrow() {
        EngineStatus::Up(info) => Ok(info.clone()),
        EngineStatus::Starting => Err(Error::EngineUnavailable(
            "the container engine is still being probed".into(),
        )),
        EngineStatus::Down { reason } => Err(Error::EngineUnavailable(format!(
            "the container engine is unreachable: {reason}"
        ))),
    }
}

pub(crate) async fn get(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
) -> Result<SandboxRecord> {
    let account_id = account_id.to_string();
    state
        .db
        .run(move |store| store.sandbox(&account_id, id))
        .await?
        .ok_or_else(|| Error::NotFound(format!("sandbox {id} not found")))
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
) -> Result<SandboxRecord> {
    let engine = engine_ready(state)?;
    let config = with_user(state, config).await?;
    let account = account_id.to_string();
    let disk_enforced = engine.disk_limits.available;
    let insert_config = Arc::new(config.clone());
    let most = state.config.max_sandboxes_per_account;
    // The id is drawn and locked before its row exists, so nothing (the reconciler included)
    // can act on the sandbox until this create is done with it.
    let (id, _guard, event) = loop {
        let id = SandboxId::random();
        let guard = state.locks.lock(id).await;
        let account = account.clone();
        let insert_config = insert_config.clone();
        let inserted = state
            .db
            .run(move |store| -> Result<Option<caged_store::Event>> {
                if let Some(name) = &insert_config.name
                    && store.live_name_taken(&account, name)?
                {
                    return Err(Error::NameTaken(name.clone()));
                }
                let new = NewSandbox {
                    id,
                    account_id: &account,
                    config: &insert_config,
                    disk_enforced,
                    at_ms: now_ms(),
                    most_live: most,
                };
                match store.insert_sandbox(new) {
                    Ok(event) => Ok(Some(event)),
                    // Ids are random; on the rare collision, draw again.
                    Err(StoreError::Sqlite(err)) if err.to_string().contains("UNIQUE") => Ok(None),
                    Err(StoreError::SandboxLimit { most, .. }) => Err(Error::SandboxLimit(most)),
                    Err(err) => Err(err.into()),
                }
            })
            .await?;
        if let Some(event) = inserted {
            break (id, guard, event);
        }
    };
    state.db.publish(event);
    failpoint::hit("create.after_insert");
    let record = get(state, account_id, id).await?;
    match state.node.create(&record).await.map_err(Error::from) {
        Ok(container_id) => {
            failpoint::hit("create.after_container");
            state
                .db
                .run(move |store| store.set_container_id(id, &container_id))
                .await?;
            record_transition(
                state,
                id,
                SandboxState::Pending,
                SandboxState::Running,
                None,
                config.timeout,
            )
            .await?;
        }
        Err(err) => {
            give_up_create(state, id, &err.to_string()).await?;
            return Err(err);
        }
    }
    let record = get(state, account_id, id).await?;
    state.node.started(&record, Start::Created).await;
    if config.init_script.is_some() && !options.defer_init {
        start_init(state.clone(), account_id.to_string(), id);
    }
    get(state, account_id, id).await
}

/// The config with the account its commands run as: `user:` as asked, checked against the
/// template; unset, the template's unprivileged `user` where it has one, else root. A template
/// the engine lacks is left for the create to report.
async fn with_user(state: &AppState, mut config: SandboxConfig) -> Result<SandboxConfig> {
    let Some(template) = state.node.template(&config.template).await? else {
        return Ok(config);
    };
    let has = |name: &str| template.accounts.iter().any(|account| account.name == name);
    match &config.user {
        Some(user) => check_user_of(&template, user)?,
        None if has(DEFAULT_USER) => config.user = Some(DEFAULT_USER.to_string()),
        None if has("root") => config.user = Some("root".to_string()),
        None => {}
    }
    Ok(config)
}

/// What an [`ExecSpec`] says for a command of `user` (the sandbox's, or one asked for): root by
/// number, so the engine needs no lookup a sandbox could subvert; `None` (root) for a sandbox
/// made before `user:` existed.
pub(crate) fn run_as(user: Option<&str>) -> Option<String> {
    user.map(|user| match user {
        "root" => caged_runtime::ROOT_USER.to_string(),
        other => other.to_string(),
    })
}

/// Whether `user` is an account of the sandbox's template.
pub(crate) async fn check_user(state: &AppState, record: &SandboxRecord, user: &str) -> Result<()> {
    if user == "root" || record.config.user.as_deref() == Some(user) {
        return Ok(());
    }
    match state.node.template(&record.config.template).await? {
        Some(template) => check_user_of(&template, user),
        // Removed since (nothing of it is left to check against): the engine decides.
        None => Ok(()),
    }
}

/// `user` (a `user:` key, or an exec's) as an account of `template`.
fn check_user_of(template: &caged_runtime::TemplateInfo, user: &str) -> Result<()> {
    if template.accounts.iter().any(|account| account.name == user) {
        return Ok(());
    }
    // Root and people; Debian's two dozen system accounts would drown them.
    let people: Vec<&str> = template
        .accounts
        .iter()
        .filter(|account| account.uid == 0 || (1000..60000).contains(&account.uid))
        .map(|account| account.name.as_str())
        .collect();
    Err(Error::UnknownUser(format!(
        "user: template {} has no user {user:?} (its users: {})",
        template.name,
        if people.is_empty() {
            "none".to_string()
        } else {
            people.join(", ")
        }
    )))
}

/// Records a create that failed: the sandbox ends destroyed, with the reason.
async fn give_up_create(state: &AppState, id: SandboxId, why: &str) -> Result<()> {
    let reason = format!("create failed: {why}");
    record_transition(
        state,
        id,
        SandboxState::Pending,
        SandboxState::Destroyed,
        Some(reason),
        0,
    )
    .await
}

/// Runs `init_script` in the background, in `/workspace`, recording its output and status.
pub(crate) fn start_init(state: Arc<AppState>, account_id: String, id: SandboxId) {
    tokio::spawn(async move {
        if let Err(err) = run_init(&state, &account_id, id).await {
            tracing::warn!(sandbox = %id, "init_script could not run: {err}");
            let result = json!({ "status": "failed", "error": err.to_string() });
            let _ = state
                .db
                .run(move |store| store.set_init_result(id, &result))
                .await;
        }
    });
}

async fn run_init(state: &AppState, account_id: &str, id: SandboxId) -> Result<()> {
    let (record, _busy) = active(state, account_id, id, "init_script").await?;
    let Some(script) = record.config.init_script.clone() else {
        return Ok(());
    };
    let started = now_ms();
    state
        .db
        .run(move |store| {
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
        user: run_as(record.config.user.as_deref()),
        ..ExecSpec::default()
    };
    let outcome = crate::collect::collect(
        state.node.as_ref(),
        container_of(&record)?,
        &spec,
        INIT_OUTPUT_LIMIT,
        None,
    )
    .await?;
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
    let stored = result.clone();
    state
        .db
        .run(move |store| store.set_init_result(id, &stored))
        .await?;
    let payload = json!({ "status": status, "exit_code": outcome.exit_code, "duration_ms": result["duration_ms"] });
    record_activity(state, &record, EventKind::Init, payload).await;
    Ok(())
}

pub(crate) fn container_of(record: &SandboxRecord) -> Result<&str> {
    record
        .container_id
        .as_deref()
        .ok_or(Error::NotReady(record.id))
}

/// A sandbox that is not destroyed, with its lock held: for changes to its settings.
/// `destroyed` is added to the refusal's message.
pub(crate) async fn live_locked(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    destroyed: &str,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, SandboxRecord)> {
    let guard = state.locks.lock(id).await;
    let record = get(state, account_id, id).await?;
    if record.state == SandboxState::Destroyed {
        return Err(Error::WrongState(format!(
            "sandbox {id} is destroyed{destroyed}"
        )));
    }
    Ok((guard, record))
}

/// Changes a live `allowlist` sandbox's allowed hosts (see `caged_netpolicy`).
pub(crate) async fn set_allowed_hosts(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    hosts: Vec<String>,
) -> Result<()> {
    let (_guard, sandbox) = live_locked(state, account_id, id, "").await?;
    if sandbox.config.network_mode != caged_domain::NetworkMode::Allowlist {
        return Err(Error::NotAllowlist(format!(
            "sandbox {id} has network_mode {}; allowed_hosts applies only to network_mode allowlist",
            sandbox.config.network_mode.as_str()
        )));
    }
    Ok(state.node.set_allowed_hosts(&sandbox, hosts).await?)
}

/// Starts a deferred `init_script` (see `defer_init` on create).
pub(crate) async fn start_deferred_init(
    state: &Arc<AppState>,
    account_id: &str,
    id: SandboxId,
) -> Result<SandboxRecord> {
    let (record, _busy) = active(state, account_id, id, "init_script").await?;
    if record.config.init_script.is_none() {
        return Err(Error::NoInitScript(id));
    }
    if record.init_result.is_some() {
        return Err(Error::InitStarted(id));
    }
    start_init(state.clone(), account_id.to_string(), id);
    Ok(record)
}

/// A sandbox ready for work: running (woken first if it was asleep, with the reason in its
/// log), and marked busy so idle sleep leaves it alone until the returned guard is dropped.
pub(crate) async fn active(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    why: &str,
) -> Result<(SandboxRecord, Busy)> {
    engine_ready(state)?;
    let _guard = state.locks.lock(id).await;
    let mut record = get(state, account_id, id).await?;
    match record.state {
        SandboxState::Running => {}
        SandboxState::Paused => {
            apply(
                state,
                &record,
                SandboxState::Running,
                &format!("woken by {why}"),
            )
            .await?;
            record = get(state, account_id, id).await?;
        }
        other => {
            return Err(Error::WrongState(format!(
                "sandbox {id} is {other}; it must be running"
            )));
        }
    }
    let busy = state.activity.busy(id);
    Ok((record, busy))
}

/// Appends an activity event (exec, file, init) and restarts the sandbox's idle clock. Failing
/// to log never fails the work itself; it is reported in the server log.
pub(crate) async fn record_activity(
    state: &AppState,
    record: &SandboxRecord,
    kind: EventKind,
    payload: serde_json::Value,
) {
    record_activity_in(state, record, kind, payload, None).await
}

/// [`record_activity`] for work that came through a session.
pub(crate) async fn record_activity_in(
    state: &AppState,
    record: &SandboxRecord,
    kind: EventKind,
    payload: serde_json::Value,
    session: Option<String>,
) {
    let (id, account_id) = (record.id, record.account_id.clone());
    let at = now_ms();
    match state
        .db
        .run(move |store| {
            let new = NewEvent::new(id, account_id, at, kind, payload).in_session(session);
            store.record_event(&new, true)
        })
        .await
    {
        Ok(event) => {
            state.activity.touch(id, at, record.config.timeout);
            state.db.publish(event);
        }
        Err(err) => tracing::error!(sandbox = %id, "could not record a {kind} event: {err}"),
    }
}

/// Persists a transition (with its event), tells event followers and the idle clock.
pub(crate) async fn record_transition(
    state: &AppState,
    id: SandboxId,
    from: SandboxState,
    to: SandboxState,
    reason: Option<String>,
    timeout_seconds: u64,
) -> Result<()> {
    let at = now_ms();
    let event = state
        .db
        .run(move |store| store.transition(id, from, to, at, reason.as_deref()))
        .await?;
    state.db.publish(event);
    state.node.transitioned(id, to);
    if to == SandboxState::Running {
        state.activity.touch(id, at, timeout_seconds);
    } else {
        state.activity.forget(id);
    }
    if to == SandboxState::Paused {
        // A closed channel means the server is stopping; the pause itself stands.
        let _ = state.auto_snapshots.send(id);
    }
    Ok(())
}

/// Moves a live sandbox to `to` (paused, running, destroyed).
pub(crate) async fn change_state(
    state: &AppState,
    account_id: &str,
    id: SandboxId,
    to: SandboxState,
    reason: &str,
) -> Result<SandboxRecord> {
    engine_ready(state)?;
    let _guard = state.locks.lock(id).await;
    let record = get(state, account_id, id).await?;
    if to == SandboxState::Destroyed && record.state == SandboxState::Destroyed {
        return Ok(record); // destroying twice is not an error
    }
    apply(state, &record, to, reason).await?;
    get(state, account_id, id).await
}

/// The one path from a checked state change to the engine and the store. The caller holds the
/// sandbox's lock.
pub(crate) async fn apply(
    state: &AppState,
    record: &SandboxRecord,
    to: SandboxState,
    reason: &str,
) -> Result<()> {
    let id = record.id;
    record.state.check_transition(to).map_err(|illegal| {
        Error::IllegalTransition(format!("cannot {} sandbox {id}: {illegal}", verb(to)))
    })?;
    if let Some(handle) = record.container_id.as_deref() {
        let acted = match to {
            SandboxState::Paused => state.node.pause(handle).await,
            SandboxState::Running => state.node.resume(handle).await,
            SandboxState::Destroyed => state.node.destroy(handle).await,
            SandboxState::Pending => Ok(()),
        };
        match acted {
            Ok(()) => failpoint::hit(match to {
                SandboxState::Paused => "pause.after_engine",
                SandboxState::Running => "resume.after_engine",
                _ => "destroy.after_engine",
            }),
            // The container vanished under us: the sandbox is gone, record it so.
            Err(caged_node::Error::Runtime(RuntimeError::ContainerGone))
                if to != SandboxState::Destroyed =>
            {
                let reason = "its container disappeared".to_string();
                record_transition(
                    state,
                    id,
                    record.state,
                    SandboxState::Destroyed,
                    Some(reason),
                    0,
                )
                .await?;
                return Err(Error::Gone(format!(
                    "sandbox {id}'s container disappeared; it is now destroyed"
                )));
            }
            Err(err) => return Err(err.into()),
        }
    }
    let reason = (!reason.is_empty()).then(|| reason.to_string());
    record_transition(state, id, record.state, to, reason, record.config.timeout).await
}

fn verb(to: SandboxState) -> &'static str {
    match to {
        SandboxState::Paused => "pause",
        SandboxState::Running => "resume",
        SandboxState::Destroyed => "destroy",
        SandboxState::Pending => "reset",
    }
}

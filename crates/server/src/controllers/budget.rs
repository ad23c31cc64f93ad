//! The budget guard. Every second (and at once after an LLM call is charged or a budget
//! changes) it compares each budgeted live sandbox's spend with its budget. 80% and 95% fire
//! once each per budget amount: a `budget` event and a webhook, recorded together. At 100% the
//! sandbox gets a final snapshot and is destroyed; the gateway already refuses its calls.
//!
//! Restart-safe: the alerts are rows with a primary key (a level cannot fire twice), and a
//! sandbox at or over its budget that is still alive after a restart is simply destroyed then.

use caged_domain::EventKind;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use caged_cost::{Level, Micros};
use caged_domain::time::{now_ms, rfc3339_from_ms};
use caged_domain::{SandboxId, SandboxState};
use caged_store::{NewAlert, SandboxRecord};
use serde_json::{Value, json};

use super::webhooks;
use crate::state::AppState;

/// What a sandbox has spent, by its clock.
pub(crate) fn spend(prices: &caged_cost::Prices, record: &SandboxRecord) -> caged_cost::Spend {
    caged_cost::spend(
        prices,
        &record.transitions,
        record.clock_ms(),
        &record.config.resources,
        record.llm.cost_micros,
    )
}

/// How often spend is compared with budgets when nothing wakes the guard sooner.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(state: Arc<AppState>) {
    // (sandbox, level, budget) known to have fired: spares the store a write per second.
    let mut fired: HashSet<(SandboxId, Level, i64)> = HashSet::new();
    let destroying: Arc<Mutex<HashSet<SandboxId>>> = Arc::default();
    loop {
        check_all(&state, &mut fired, &destroying).await;
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = state.budget_checks.notified() => {}
            () = state.stop.cancelled() => break,
        }
    }
}

/// How long a starting server waits for the engine to destroy sandboxes found over budget.
const START_WAIT: Duration = Duration::from_secs(30);

/// Sandboxes a restarted server finds at or over their budget are destroyed (after their final
/// snapshot) before the API serves, so nobody sees one running past its budget. Waits for the
/// engine (at most [`START_WAIT`]) only when there is one; the guard's loop keeps trying after.
pub(crate) async fn before_serving(state: &Arc<AppState>) {
    let records = match state.db.run(move |store| store.budgeted_sandboxes()).await {
        Ok(records) => records,
        Err(err) => {
            tracing::error!("budget guard: cannot read budgets: {err}");
            return;
        }
    };
    let over: Vec<SandboxRecord> = records
        .into_iter()
        .filter(|record| {
            record
                .budget_micros
                .is_some_and(|budget| spend(&state.config.cost.prices, record).total().0 >= budget)
        })
        .collect();
    if over.is_empty() {
        return;
    }
    let mut engine = state.engine.clone();
    let up = tokio::time::timeout(
        START_WAIT,
        engine.wait_for(|status| matches!(status, caged_node::EngineStatus::Up(_))),
    )
    .await;
    if !matches!(up, Ok(Ok(_))) {
        tracing::warn!(
            "{} sandbox(es) are over their budget but the engine is not up; the guard destroys them when it is",
            over.len()
        );
        return;
    }
    for record in &over {
        exceed(state, record).await;
    }
}

async fn check_all(
    state: &Arc<AppState>,
    fired: &mut HashSet<(SandboxId, Level, i64)>,
    destroying: &Arc<Mutex<HashSet<SandboxId>>>,
) {
    let records = match state.db.run(move |store| store.budgeted_sandboxes()).await {
        Ok(records) => records,
        Err(err) => {
            tracing::error!("budget guard: cannot read budgets: {err}");
            return;
        }
    };
    let live: HashSet<SandboxId> = records.iter().map(|record| record.id).collect();
    fired.retain(|(id, _, _)| live.contains(id));
    for record in records {
        let Some(budget) = record.budget_micros else {
            continue;
        };
        let spend = spend(&state.config.cost.prices, &record).total();
        for level in caged_cost::budget::reached(spend, Micros(budget)) {
            if level == Level::Exceeded {
                let started = destroying.lock().insert(record.id);
                if started {
                    let (state, destroying, record) =
                        (state.clone(), destroying.clone(), record.clone());
                    tokio::spawn(async move {
                        exceed(&state, &record).await;
                        destroying.lock().remove(&record.id);
                    });
                }
                continue;
            }
            if fired.contains(&(record.id, level, budget)) {
                continue;
            }
            match alert(state, &record, level, spend, budget, None).await {
                Ok(_) => {
                    fired.insert((record.id, level, budget));
                }
                Err(err) => {
                    tracing::error!(sandbox = %record.id, "cannot record a budget alert: {err}")
                }
            }
        }
    }
}

/// The `budget` event (and webhook) of a level; `Ok(false)` if it had fired already.
async fn alert(
    state: &AppState,
    record: &SandboxRecord,
    level: Level,
    spend: Micros,
    budget: i64,
    extra: Option<Value>,
) -> Result<bool, caged_store::StoreError> {
    let at = now_ms();
    let mut payload = json!({
        "op": "alert",
        "level": level.as_str(),
        "percent": level.percent(),
        "spend_micros": spend.0,
        "budget_micros": budget,
        "message": message(record, level, spend, Micros(budget)),
    });
    if let (Some(Value::Object(extra)), Some(object)) = (extra, payload.as_object_mut()) {
        object.extend(extra);
    }
    // The exceeded webhook goes out once the sandbox is gone (it says where the final snapshot
    // is); the other two at once.
    let hook = (level != Level::Exceeded)
        .then(|| webhooks::body(&format!("budget.{}", level.as_str()), record, &payload, at));
    let (id, account) = (record.id, record.account_id.clone());
    let event = state
        .db
        .run(move |store| {
            store.record_budget_alert(NewAlert {
                sandbox_id: id,
                account_id: &account,
                level: level.percent(),
                budget_micros: budget,
                spend_micros: spend.0,
                at_ms: at,
                payload: &payload,
                webhook: hook
                    .as_ref()
                    .map(|(kind, body)| (kind.as_str(), body.as_str())),
            })
        })
        .await?;
    let Some(event) = event else {
        return Ok(false);
    };
    tracing::warn!(sandbox = %record.id, "{}", event.payload["message"].as_str().unwrap_or(""));
    state.db.publish(event);
    state.webhook_sends.notify_one();
    Ok(true)
}

fn message(record: &SandboxRecord, level: Level, spend: Micros, budget: Micros) -> String {
    let what = match level {
        Level::Warning => "warning",
        Level::Critical => "critical",
        Level::Exceeded => "budget exceeded; destroying it after a final snapshot",
    };
    format!(
        "sandbox {} has spent {spend} of its {budget} budget ({}%): {what}",
        record.id,
        format_percent(spend, budget)
    )
}

pub(crate) fn format_percent(spend: Micros, budget: Micros) -> String {
    let bp = caged_cost::budget::basis_points(spend, budget);
    format!("{}.{:02}", bp / 100, bp % 100)
}

/// Spend reached the budget: record it, take a final snapshot, destroy, say where it went.
async fn exceed(state: &Arc<AppState>, seen: &SandboxRecord) {
    let id = seen.id;
    let _guard = state.locks.lock(id).await;
    let Ok(Some(record)) = state.db.run(move |store| store.sandbox_by_id(id)).await else {
        return;
    };
    if record.state == SandboxState::Destroyed {
        return;
    }
    // Looked at again under the lock: the budget may have been raised meanwhile.
    let spend = spend(&state.config.cost.prices, &record).total();
    let Some(budget) = record.budget_micros.filter(|budget| spend.0 >= *budget) else {
        return;
    };
    if let Err(err) = alert(state, &record, Level::Exceeded, spend, budget, None).await {
        tracing::error!(sandbox = %id, "cannot record a budget alert: {err}");
    }
    let snapshot = if record.state == SandboxState::Pending {
        Err("it never started".to_string())
    } else {
        crate::snapshots::create_locked(
            state,
            &record,
            Some("final (budget exceeded)".into()),
            false,
        )
        .await
        .map(|snapshot| snapshot.id)
        .map_err(|err| err.to_string())
    };
    if let Err(err) = &snapshot {
        tracing::error!(sandbox = %id, "the final snapshot failed ({err}); destroying anyway: the budget is a hard limit");
    }
    // The snapshot's own state change and events happened; read the record as it is now.
    let Ok(Some(record)) = state.db.run(move |store| store.sandbox_by_id(id)).await else {
        return;
    };
    let destroyed =
        crate::sandboxes::apply(state, &record, SandboxState::Destroyed, "budget exceeded").await;
    if let Err(err) = destroyed {
        tracing::error!(sandbox = %id, "cannot destroy a sandbox over its budget: {err}");
        return;
    }
    let at = now_ms();
    let payload = json!({
        "op": "destroyed",
        "spend_micros": spend.0,
        "budget_micros": budget,
        "snapshot_id": snapshot.as_ref().ok(),
        "snapshot_error": snapshot.as_ref().err(),
        "message": match &snapshot {
            Ok(snapshot) => format!("destroyed at {}% of its budget; its files are in snapshot {snapshot}", format_percent(spend, Micros(budget))),
            Err(err) => format!("destroyed at {}% of its budget; the final snapshot failed: {err}", format_percent(spend, Micros(budget))),
        },
        "destroyed_at": rfc3339_from_ms(at),
    });
    let (kind, body) = webhooks::body("budget.exceeded", &record, &payload, at);
    let account = record.account_id.clone();
    match state
        .db
        .run(move |store| {
            store.record_event_with_webhook(
                id,
                &account,
                at,
                EventKind::Budget,
                &payload,
                Some((&kind, &body)),
            )
        })
        .await
    {
        Ok(event) => {
            state.db.publish(event);
            state.webhook_sends.notify_one();
        }
        Err(err) => tracing::error!(sandbox = %id, "cannot record the budget's end: {err}"),
    }
}

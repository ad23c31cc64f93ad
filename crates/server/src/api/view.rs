//! The API's JSON shapes, converted explicitly from the store's records so that a change to one
//! is a decision about the other.

use caged_domain::running_millis;
use caged_domain::time::rfc3339_from_ms;
use caged_store::SandboxRecord;
use serde_json::{Value, json};

pub(crate) fn sandbox(state: &crate::AppState, record: &SandboxRecord) -> Value {
    let config = &record.config;
    // A destroyed sandbox's clock stopped at its last transition.
    let running_ms = running_millis(&record.transitions, record.clock_ms());
    json!({
        "id": record.id,
        "name": config.name,
        "state": record.state,
        "template": config.template,
        "isolation": config.isolation,
        "resources": {
            "cpu": config.resources.cpu,
            "memory_mb": config.resources.memory,
            "disk_gb": config.resources.disk,
            "disk_enforced": record.disk_enforced,
        },
        "timeout_seconds": config.timeout,
        "network_mode": config.network_mode,
        "allowed_hosts": config.allowed_hosts,
        // The budget now (it may have been changed since the config).
        "budget_usd": record.budget_micros.map(|b| caged_cost::Micros(b).as_usd()),
        "cost": super::usage::cost_view(state, record),
        "env": config.env,
        "init_script": config.init_script,
        "init": record.init_result,
        "created_at": rfc3339_from_ms(record.created_at_ms),
        "running_seconds": running_ms as f64 / 1000.0,
        "transitions": record.transitions.iter().map(|transition| json!({
            "state": transition.state,
            "at": rfc3339_from_ms(transition.at_ms),
        })).collect::<Vec<_>>(),
        "destroyed_reason": record.destroyed_reason,
    })
}

/// A sandbox's trust: its worst session (or its activity outside sessions), and each charged
/// session's score.
pub(crate) async fn sandbox_trust(
    state: &crate::AppState,
    id: caged_domain::SandboxId,
) -> Result<Value, caged_store::StoreError> {
    let charged = state
        .db
        .run(move |store| store.charged_by_session(id))
        .await?;
    let worst = charged.iter().map(|c| c.points).max().unwrap_or(0);
    let score = caged_trust::score(worst);
    Ok(json!({
        "score": score,
        "rating": caged_trust::Rating::of(score).as_str(),
        "charged": charged.iter().map(|c| json!({
            "session_id": c.session_id,
            "score": caged_trust::score(c.points),
        })).collect::<Vec<_>>(),
    }))
}

/// A session's score, rating and penalties with their evidence.
pub(crate) async fn session_trust(
    state: &crate::AppState,
    account: &str,
    session: &str,
) -> Result<Value, caged_store::StoreError> {
    let (account, session) = (account.to_string(), session.to_string());
    let penalties = state
        .db
        .run(move |store| store.session_penalties(&account, &session))
        .await?;
    let points: u64 = penalties.iter().map(|p| u64::from(p.points)).sum();
    let score = caged_trust::score(points);
    Ok(json!({
        "score": score,
        "rating": caged_trust::Rating::of(score).as_str(),
        "penalties": penalties.iter().map(|p| json!({
            "rule": p.rule,
            "key": p.key,
            "points": p.points,
            "reason": p.reason,
            "evidence": p.evidence,
            "event_seq": p.event_seq,
            "at": rfc3339_from_ms(p.at_ms),
        })).collect::<Vec<_>>(),
    }))
}

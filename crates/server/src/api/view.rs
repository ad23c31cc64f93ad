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

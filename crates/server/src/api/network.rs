//! Network routes: a sandbox's mode, link and allowlist; changing the allowlist of a live
//! sandbox; the hosts it tried (`caged network learn`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use caged_domain::SandboxState;
use serde_json::{Value, json};

use super::ApiError;
use super::sandboxes::{one_field_body, parse_id};
use crate::auth::Caller;
use crate::error::Error;
use crate::{AppState, sandboxes};

pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let link = match record.state {
        SandboxState::Destroyed => None,
        _ => state.node.link(&record).await.map_err(Error::from)?,
    };
    let hosts = state
        .node
        .learned_hosts(record.id)
        .await
        .map_err(Error::from)?;
    Ok(Json(json!({
        "network_mode": record.config.network_mode,
        "allowed_hosts": record.config.allowed_hosts,
        "link": link.map(|link| json!({
            "host_interface": link.host_ifname,
            "host_address": link.host_addr.to_string(),
            "sandbox_address": link.sandbox_addr.to_string(),
            "resolver": link.host_addr.to_string(),
        })),
        "hosts": hosts,
    })))
}

/// Hosts the sandbox tried, and an `allowed_hosts` block that allows exactly those.
pub(crate) async fn learn(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let hosts = state
        .node
        .learned_hosts(record.id)
        .await
        .map_err(Error::from)?;
    let mut block = String::from("network_mode: allowlist\nallowed_hosts:\n");
    for host in &hosts {
        block.push_str(&format!("  - {}\n", host.host));
    }
    if hosts.is_empty() {
        block = "network_mode: allowlist\nallowed_hosts: []\n".into();
    }
    Ok(Json(json!({ "hosts": hosts, "caged_yaml": block })))
}

/// Body: `{"allowed_hosts": ["a.example.com", "*.example.org"]}` replaces the list.
pub(crate) async fn set_allowed_hosts(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let body = one_field_body(&body, "allowed_hosts", "invalid_network")?;
    let invalid = |message: String| ApiError::bad_request("invalid_network", message);
    let hosts: Vec<String> = match body.get("allowed_hosts") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let host = item
                    .as_str()
                    .ok_or_else(|| invalid(format!("allowed_hosts[{i}]: must be a string")))?;
                caged_domain::check_host_pattern(host)
                    .map_err(|msg| invalid(format!("allowed_hosts[{i}]: {msg}")))?;
                Ok(host.to_ascii_lowercase())
            })
            .collect::<Result<_, ApiError>>()?,
        _ => {
            return Err(invalid(
                "allowed_hosts: required, a list of host names".into(),
            ));
        }
    };
    sandboxes::set_allowed_hosts(&state, &account.id, id, hosts.clone()).await?;
    Ok(Json(
        json!({ "network_mode": "allowlist", "allowed_hosts": hosts }),
    ))
}

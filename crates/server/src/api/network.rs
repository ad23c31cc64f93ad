//! Network routes: a sandbox's mode, link and allowlist; changing the allowlist of a live
//! sandbox; the hosts it tried (`caged network learn`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use caged_domain::{NetworkMode, SandboxState};
use caged_wire as wire;
use serde_json::Value;

use super::auth::Caller;
use super::body::{one_field_body, parse_id};
use super::docs::{Failures, SandboxPath};
use super::error::ApiError;
use super::view;
use crate::error::Error;
use crate::sandboxes;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/network",
    operation_id = "inspect_network",
    summary = "A sandbox's network: mode, allowlist, link and the hosts it tried",
    params(SandboxPath),
    responses((status = 200, description = "OK", body = wire::NetworkView), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn inspect(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::NetworkView>, ApiError> {
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
    Ok(Json(wire::NetworkView {
        allowed_hosts: record.config.allowed_hosts.clone(),
        hosts: view::learned_hosts(hosts),
        link: link.as_ref().map(view::link),
        network_mode: record.config.network_mode.as_str().to_string(),
    }))
}

/// Hosts the sandbox tried, and an `allowed_hosts` block that allows exactly those.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/network/learn",
    operation_id = "learn_network",
    summary = "The hosts a sandbox tried, with an allowed_hosts block that allows exactly those",
    params(SandboxPath),
    responses((status = 200, description = "OK", body = wire::NetworkLearn), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn learn(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::NetworkLearn>, ApiError> {
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
    Ok(Json(wire::NetworkLearn {
        caged_yaml: block,
        hosts: view::learned_hosts(hosts),
    }))
}

/// Body: `{"allowed_hosts": ["a.example.com", "*.example.org"]}` replaces the list.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/network/allowed-hosts",
    operation_id = "set_allowed_hosts",
    summary = "Replace a live allowlist sandbox's allowed hosts",
    description = "Takes effect at once, for connections made from then on.",
    params(SandboxPath),
    request_body = wire::SetAllowedHosts,
    responses((status = 200, description = "The list now", body = wire::AllowedHosts), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn set_allowed_hosts(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::AllowedHosts>, ApiError> {
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
    Ok(Json(wire::AllowedHosts {
        allowed_hosts: hosts,
        network_mode: NetworkMode::Allowlist.as_str().to_string(),
    }))
}

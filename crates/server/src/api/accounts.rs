//! Accounts and their keys (admin only). Each account sees only its own sandboxes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use caged_domain::random_hex;
use caged_domain::time::{now_ms, rfc3339_from_ms};
use caged_wire as wire;
use serde_json::Value;

use super::auth::Admin;
use super::body::json_body;
use super::docs::Failures;
use super::error::ApiError;
use crate::keys::new_key;
use crate::state::AppState;

#[utoipa::path(
    post,
    path = "/v1/accounts",
    operation_id = "create_account",
    summary = "Create an account and its API key (admin)",
    request_body = wire::CreateAccount,
    responses((status = 201, description = "Created; the key is shown only now", body = wire::NewAccount), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Admin(admin): Admin,
    body: Bytes,
) -> Result<(StatusCode, Json<wire::NewAccount>), ApiError> {
    let body = json_body(&body)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("invalid_account", "name: required, a string"))?
        .to_string();
    caged_domain::config::check_name("name", &name)
        .map_err(|err| ApiError::bad_request("invalid_account", err.to_string()))?;
    let key = new_key();
    let (account, token) = state
        .db
        .run(move |store| -> Result<_, ApiError> {
            let account = store.create_account(&random_hex(8), &name, false, now_ms())?;
            store.add_api_key(&key.key_id, &account.id, &key.secret_hash, now_ms())?;
            Ok((account, key.token))
        })
        .await?;
    tracing::info!(account = %account.name, by = %admin.name, "account created");
    Ok((
        StatusCode::CREATED,
        Json(wire::NewAccount {
            api_key: token,
            created_at: rfc3339_from_ms(account.created_at_ms),
            id: account.id,
            name: account.name,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/accounts",
    operation_id = "list_accounts",
    summary = "List accounts (admin)",
    responses((status = 200, description = "OK", body = wire::AccountList), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
) -> Result<Json<wire::AccountList>, ApiError> {
    let accounts = state.db.run(move |store| store.list_accounts()).await?;
    let accounts = accounts
        .into_iter()
        .map(|account| wire::AccountView {
            admin: account.is_admin,
            created_at: rfc3339_from_ms(account.created_at_ms),
            id: account.id,
            name: account.name,
        })
        .collect();
    Ok(Json(wire::AccountList { accounts }))
}

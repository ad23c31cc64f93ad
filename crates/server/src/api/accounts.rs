//! Accounts and their keys (admin only). Each account sees only its own sandboxes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use caged_domain::random_hex;
use caged_domain::time::{now_ms, rfc3339_from_ms};
use serde_json::{Value, json};

use super::ApiError;
use super::sandboxes::json_body;
use crate::AppState;
use crate::auth::{Admin, new_key};

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Admin(admin): Admin,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        Json(json!({
            "id": account.id,
            "name": account.name,
            "created_at": rfc3339_from_ms(account.created_at_ms),
            "api_key": token,
        })),
    ))
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
) -> Result<Json<Value>, ApiError> {
    let accounts = state.db.run(move |store| store.list_accounts()).await?;
    let accounts: Vec<Value> = accounts
        .iter()
        .map(|account| {
            json!({
                "id": account.id,
                "name": account.name,
                "admin": account.is_admin,
                "created_at": rfc3339_from_ms(account.created_at_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "accounts": accounts })))
}

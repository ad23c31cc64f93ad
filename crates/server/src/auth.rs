//! API keys: `caged_<key id>_<secret>`. Only a SHA-256 of the secret is stored (the secret is
//! 256 random bits, so a fast hash is enough), looked up by key id and compared in constant time.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use caged_domain::random_hex;
use caged_domain::time::now_ms;
use caged_store::{Account, Store};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::{AppState, StartError, blocking};

pub(crate) struct NewKey {
    pub key_id: String,
    pub secret_hash: Vec<u8>,
    /// The full key, shown to its owner once.
    pub token: String,
}

pub(crate) fn new_key() -> NewKey {
    let key_id = random_hex(6);
    let secret = random_hex(32);
    let token = format!("caged_{key_id}_{secret}");
    NewKey {
        key_id,
        secret_hash: hash(&secret),
        token,
    }
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates the admin account and key on first start and writes the key to `path` (mode 0600).
pub(crate) async fn ensure_admin(store: Arc<Store>, path: &Path) -> Result<(), StartError> {
    let path = path.to_path_buf();
    blocking::run(move || {
        if store.admin_account()?.is_some() {
            if !path.exists() {
                tracing::warn!(
                    "{} is missing; the admin key is not recoverable from the database",
                    path.display()
                );
            }
            return Ok(());
        }
        let key = new_key();
        let dir_err = |source| StartError::DataDir {
            path: path.clone(),
            source,
        };
        // Write the key before committing the account, so a crash never leaves an admin whose key
        // nobody has.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&path)
            .map_err(dir_err)?;
        writeln!(file, "{}", key.token).map_err(dir_err)?;
        file.sync_all().map_err(dir_err)?;
        let account = store.create_account(&random_hex(8), "admin", true, now_ms())?;
        store.add_api_key(&key.key_id, &account.id, &key.secret_hash, now_ms())?;
        tracing::info!(
            "created the admin account; its API key is in {}",
            path.display()
        );
        Ok(())
    })
    .await
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// The authenticated account behind a request.
pub(crate) struct Caller(pub Account);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <api key>`"))?;
        let (key_id, secret) = token
            .strip_prefix("caged_")
            .and_then(|rest| rest.split_once('_'))
            .ok_or_else(|| ApiError::unauthorized("malformed API key"))?;
        let (key_id, secret) = (key_id.to_string(), secret.to_string());
        let store = state.store.clone();
        let stored = blocking::run(move || store.api_key(&key_id)).await?;
        let valid = stored
            .as_ref()
            .is_some_and(|stored| bool::from(stored.secret_hash.ct_eq(&hash(&secret))));
        match stored {
            Some(stored) if valid => Ok(Caller(stored.account)),
            _ => Err(ApiError::unauthorized("invalid API key")),
        }
    }
}

/// An authenticated caller who is an administrator.
pub(crate) struct Admin(pub Account);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let Caller(account) = Caller::from_request_parts(parts, state).await?;
        if !account.is_admin {
            return Err(ApiError::forbidden("this needs an admin API key"));
        }
        Ok(Admin(account))
    }
}

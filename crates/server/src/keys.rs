//! API keys: `caged_<key id>_<secret>`. Only a SHA-256 of the secret is stored (the secret is
//! 256 random bits, so a fast hash is enough); the full key is shown to its owner once. The
//! admin's key is made on first start and kept in the data folder.

use std::io::Write;
use std::path::{Path, PathBuf};

use caged_domain::random_hex;
use caged_domain::time::now_ms;
use caged_store::{Db, StoreError};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminKeyError {
    #[error("cannot write the admin key to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

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

pub(crate) fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates the admin account and key on first start and writes the key to `path` (mode 0600).
pub(crate) async fn ensure_admin(db: &Db, path: &Path) -> Result<(), AdminKeyError> {
    let path = path.to_path_buf();
    db.run(move |store| {
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
        let dir_err = |source| AdminKeyError::Write {
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

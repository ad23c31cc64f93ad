//! What the dashboard needs of the store: signed-in browser sessions (a hash of each cookie's
//! token, tied to the API key that opened it) and the account's usage by day.

use rusqlite::{OptionalExtension, params};

use crate::{Account, Result, SandboxRecord, Store, account_from_row};

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct WebSession {
    pub account: Account,
    /// Must come back in a header with every request that changes something.
    pub csrf_token: String,
    pub expires_at_ms: i64,
}

/// One UTC day's LLM calls of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyLlm {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub cost_micros: i64,
    pub calls: i64,
}

pub const DAY_MS: i64 = 86_400_000;

impl Store {
    /// Opens a session for the holder of `key_id`, and forgets the expired ones.
    pub fn create_web_session(
        &self,
        token_hash: &[u8],
        key_id: &str,
        csrf_token: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM web_sessions WHERE expires_at_ms <= ?1",
            [now_ms],
        )?;
        conn.execute(
            "INSERT INTO web_sessions (token_hash, key_id, csrf_token, created_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, key_id, csrf_token, now_ms, expires_at_ms],
        )?;
        Ok(())
    }

    /// The live session whose token hashes to `token_hash`, with its account.
    pub fn web_session(&self, token_hash: &[u8], now_ms: i64) -> Result<Option<WebSession>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT a.id, a.name, a.is_admin, a.created_at_ms, w.csrf_token, w.expires_at_ms
                 FROM web_sessions w JOIN api_keys k ON k.id = w.key_id
                 JOIN accounts a ON a.id = k.account_id
                 WHERE w.token_hash = ?1 AND w.expires_at_ms > ?2",
                params![token_hash, now_ms],
                |row| {
                    Ok(WebSession {
                        account: account_from_row(row)?,
                        csrf_token: row.get(4)?,
                        expires_at_ms: row.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// Signs a browser out; `false` if there was no such session.
    pub fn delete_web_session(&self, token_hash: &[u8]) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM web_sessions WHERE token_hash = ?1",
            [token_hash],
        )? > 0)
    }

    /// The account's sandboxes that could have run at or after `from_ms`: the live ones and those
    /// destroyed since.
    pub fn sandboxes_since(&self, account_id: &str, from_ms: i64) -> Result<Vec<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {columns} FROM sandboxes s
             WHERE account_id = ?1 AND (state != 'destroyed'
                OR (SELECT MAX(at_ms) FROM transitions t WHERE t.sandbox_id = s.id) >= ?2)
             ORDER BY created_at_ms, id",
            columns = crate::SANDBOX_COLUMNS
        ))?;
        let raws = stmt.query_map(params![account_id, from_ms], crate::RawSandbox::from_row)?;
        let raws: Vec<crate::RawSandbox> = raws.collect::<rusqlite::Result<_>>()?;
        raws.into_iter().map(|raw| raw.into_record(&conn)).collect()
    }

    /// The account's LLM spend per UTC day from `from_ms` on.
    pub fn llm_cost_by_day(&self, account_id: &str, from_ms: i64) -> Result<Vec<DailyLlm>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms / ?3, SUM(cost_micros), COUNT(*) FROM llm_calls
             WHERE account_id = ?1 AND at_ms >= ?2 GROUP BY 1 ORDER BY 1",
        )?;
        let rows = stmt.query_map(params![account_id, from_ms, DAY_MS], |row| {
            Ok(DailyLlm {
                day: row.get(0)?,
                cost_micros: row.get(1)?,
                calls: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use caged_domain::SandboxState::*;

    use crate::tests::store_with_sandbox;

    #[test]
    fn sessions_expire_and_sign_out() {
        let (_dir, store, _, account) = store_with_sandbox();
        store.add_api_key("k1", &account, b"hash", 1).unwrap();
        store
            .create_web_session(b"token", "k1", "csrf", 100, 200)
            .unwrap();
        let session = store.web_session(b"token", 150).unwrap().unwrap();
        assert_eq!(session.account.id, account);
        assert_eq!(session.csrf_token, "csrf");
        assert!(store.web_session(b"other", 150).unwrap().is_none());
        assert!(
            store.web_session(b"token", 200).unwrap().is_none(),
            "expired"
        );
        // A new session sweeps the expired ones.
        store
            .create_web_session(b"t2", "k1", "c2", 300, 400)
            .unwrap();
        assert!(!store.delete_web_session(b"token").unwrap());
        assert!(store.delete_web_session(b"t2").unwrap());
        assert!(store.web_session(b"t2", 350).unwrap().is_none());
    }

    #[test]
    fn usage_reads_only_what_could_count() {
        let (_dir, store, id, account) = store_with_sandbox();
        store.transition(id, Pending, Running, 20, None).unwrap();
        assert_eq!(store.sandboxes_since(&account, 1_000).unwrap().len(), 1);
        store.transition(id, Running, Destroyed, 500, None).unwrap();
        assert_eq!(store.sandboxes_since(&account, 500).unwrap().len(), 1);
        assert!(store.sandboxes_since(&account, 501).unwrap().is_empty());
        assert!(store.sandboxes_since("nobody", 0).unwrap().is_empty());
        assert!(store.llm_cost_by_day(&account, 0).unwrap().is_empty());
    }
}

//! What the preview proxy keeps: the ports each sandbox listens on (as last detected, so a
//! restarted server reports only real changes) and the hashed passwords protecting some.

use caged_domain::{EventKind, SandboxId};
use rusqlite::{OptionalExtension, params};

use crate::{Event, Result, Store, insert_event};

#[derive(Clone, Debug, PartialEq)]
pub struct PreviewPort {
    pub port: u16,
    /// The address the socket listens on inside the sandbox, as detected.
    pub address: String,
    pub opened_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PreviewPassword {
    pub port: u16,
    /// A PHC string (`$argon2id$...`).
    pub hash: String,
    pub set_at_ms: i64,
}

/// One detected change of a sandbox's listening ports.
#[derive(Clone, Debug, PartialEq)]
pub enum PortChange {
    Opened { port: u16, address: String },
    Closed { port: u16 },
}

impl Store {
    pub fn preview_ports(&self, id: SandboxId) -> Result<Vec<PreviewPort>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT port, address, opened_at_ms FROM preview_ports WHERE sandbox_id = ?1 ORDER BY port",
        )?;
        let rows = stmt.query_map([id.as_str()], |row| {
            Ok(PreviewPort {
                port: row.get(0)?,
                address: row.get(1)?,
                opened_at_ms: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records detected changes, one `port` event each, in one transaction.
    pub fn update_preview_ports(
        &self,
        id: SandboxId,
        account_id: &str,
        at_ms: i64,
        changes: &[PortChange],
    ) -> Result<Vec<Event>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            let payload = match change {
                PortChange::Opened { port, address } => {
                    tx.execute(
                        "INSERT INTO preview_ports (sandbox_id, port, address, opened_at_ms)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (sandbox_id, port) DO UPDATE SET address = excluded.address",
                        params![id.as_str(), port, address, at_ms],
                    )?;
                    serde_json::json!({ "port": port, "state": "open", "address": address })
                }
                PortChange::Closed { port } => {
                    tx.execute(
                        "DELETE FROM preview_ports WHERE sandbox_id = ?1 AND port = ?2",
                        params![id.as_str(), port],
                    )?;
                    serde_json::json!({ "port": port, "state": "closed" })
                }
            };
            events.push(insert_event(
                &tx,
                id,
                account_id,
                at_ms,
                EventKind::Port,
                &payload,
            )?);
        }
        tx.commit()?;
        Ok(events)
    }

    /// Forgets a destroyed sandbox's ports (no events: the sandbox's end is its own event).
    pub fn clear_preview_ports(&self, id: SandboxId) -> Result<()> {
        self.conn().execute(
            "DELETE FROM preview_ports WHERE sandbox_id = ?1",
            [id.as_str()],
        )?;
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) a port's password hash, with a `preview` event.
    pub fn set_preview_password(
        &self,
        id: SandboxId,
        account_id: &str,
        port: u16,
        hash: Option<&str>,
        at_ms: i64,
    ) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match hash {
            Some(hash) => tx.execute(
                "INSERT INTO preview_passwords (sandbox_id, port, password_hash, set_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sandbox_id, port) DO UPDATE
                 SET password_hash = excluded.password_hash, set_at_ms = excluded.set_at_ms",
                params![id.as_str(), port, hash, at_ms],
            )?,
            None => tx.execute(
                "DELETE FROM preview_passwords WHERE sandbox_id = ?1 AND port = ?2",
                params![id.as_str(), port],
            )?,
        };
        let payload = serde_json::json!({ "port": port, "protected": hash.is_some() });
        let event = insert_event(&tx, id, account_id, at_ms, EventKind::Preview, &payload)?;
        tx.commit()?;
        Ok(event)
    }

    pub fn preview_password(&self, id: SandboxId, port: u16) -> Result<Option<PreviewPassword>> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT port, password_hash, set_at_ms FROM preview_passwords
                 WHERE sandbox_id = ?1 AND port = ?2",
            )?
            .query_row(params![id.as_str(), port], password_from_row)
            .optional()?;
        Ok(row)
    }

    pub fn preview_passwords(&self, id: SandboxId) -> Result<Vec<PreviewPassword>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT port, password_hash, set_at_ms FROM preview_passwords
             WHERE sandbox_id = ?1 ORDER BY port",
        )?;
        let rows = stmt.query_map([id.as_str()], password_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn password_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PreviewPassword> {
    Ok(PreviewPassword {
        port: row.get(0)?,
        hash: row.get(1)?,
        set_at_ms: row.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_passwords_round_trip() {
        let (_dir, store, id, account) = crate::tests::store_with_sandbox();
        let opened = PortChange::Opened {
            port: 3000,
            address: "127.0.0.1".into(),
        };
        let events = store
            .update_preview_ports(id, &account, 10, &[opened])
            .unwrap();
        assert_eq!(events[0].kind, "port");
        assert_eq!(events[0].payload["state"], "open");
        assert_eq!(store.preview_ports(id).unwrap()[0].port, 3000);
        store
            .update_preview_ports(id, &account, 11, &[PortChange::Closed { port: 3000 }])
            .unwrap();
        assert!(store.preview_ports(id).unwrap().is_empty());

        store
            .set_preview_password(id, &account, 3000, Some("$argon2id$x"), 12)
            .unwrap();
        let stored = store.preview_password(id, 3000).unwrap().unwrap();
        assert_eq!(
            (stored.hash.as_str(), stored.set_at_ms),
            ("$argon2id$x", 12)
        );
        store
            .set_preview_password(id, &account, 3000, None, 13)
            .unwrap();
        assert!(store.preview_password(id, 3000).unwrap().is_none());
    }
}

/// The little the preview proxy needs to know about a live sandbox.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxHead {
    pub id: SandboxId,
    pub account_id: String,
    pub state: caged_domain::SandboxState,
    pub container_id: Option<String>,
    pub timeout: u64,
}

impl Store {
    /// Every live sandbox in brief: one cheap query, for frequent bookkeeping.
    pub fn live_heads(&self) -> Result<Vec<SandboxHead>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, account_id, state, container_id, json_extract(config, '$.timeout')
             FROM sandboxes WHERE state != 'destroyed' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut heads = Vec::new();
        for row in rows {
            let (id, account_id, state, container_id, timeout) = row?;
            let (Ok(id), Ok(state)) = (id.parse(), state.parse()) else {
                return Err(crate::corrupt_state(&id));
            };
            heads.push(SandboxHead {
                id,
                account_id,
                state,
                container_id,
                timeout: timeout.unwrap_or(0).max(0) as u64,
            });
        }
        Ok(heads)
    }

    /// Marks the sandbox used at `at_ms` without an event (for traffic counted elsewhere).
    pub fn mark_active(&self, id: SandboxId, at_ms: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET last_active_ms = MAX(COALESCE(last_active_ms, 0), ?2) WHERE id = ?1",
            params![id.as_str(), at_ms],
        )?;
        Ok(())
    }
}

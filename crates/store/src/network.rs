//! What the network side keeps: each sandbox's link slot (which /30 of the pool its link uses,
//! stable across restarts so the resolver address baked into its container stays right) and
//! changes to a live sandbox's allowlist.

use caged_domain::{EventKind, SandboxId};
use rusqlite::{OptionalExtension, params};

use crate::{Event, Result, Store, StoreError, insert_event};

impl Store {
    /// Gives `id` the lowest slot below `capacity` that no live sandbox holds (a destroyed
    /// sandbox's slot is free again); `None` when all are taken. Idempotent.
    pub fn allocate_link_slot(&self, id: SandboxId, capacity: u32) -> Result<Option<u32>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(slot) = tx
            .query_row(
                "SELECT slot FROM link_slots WHERE sandbox_id = ?1",
                [id.as_str()],
                |row| row.get::<_, u32>(0),
            )
            .optional()?
        {
            return Ok(Some(slot));
        }
        let taken: Vec<u32> = {
            let mut stmt = tx.prepare_cached(
                "SELECT l.slot FROM link_slots l JOIN sandboxes s ON s.id = l.sandbox_id
                 WHERE s.state != 'destroyed' ORDER BY l.slot",
            )?;
            let rows = stmt.query_map([], |row| row.get::<_, u32>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut slot = 0u32;
        for used in taken {
            if used == slot {
                slot += 1;
            } else if used > slot {
                break;
            }
        }
        if slot >= capacity {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO link_slots (sandbox_id, slot) VALUES (?1, ?2)",
            params![id.as_str(), slot],
        )?;
        tx.commit()?;
        Ok(Some(slot))
    }

    pub fn link_slot(&self, id: SandboxId) -> Result<Option<u32>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT slot FROM link_slots WHERE sandbox_id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Replaces a sandbox's `allowed_hosts` and records a `network` event, in one transaction.
    pub fn set_allowed_hosts(
        &self,
        id: SandboxId,
        account_id: &str,
        hosts: &[String],
        at_ms: i64,
    ) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let config: String = tx.query_row(
            "SELECT config FROM sandboxes WHERE id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )?;
        let corrupt = |source| StoreError::CorruptConfig {
            id: id.to_string(),
            source,
        };
        let mut config: caged_domain::SandboxConfig =
            serde_json::from_str(&config).map_err(corrupt)?;
        let before = std::mem::replace(&mut config.allowed_hosts, hosts.to_vec());
        let config = serde_json::to_string(&config).map_err(corrupt)?;
        tx.execute(
            "UPDATE sandboxes SET config = ?2 WHERE id = ?1",
            params![id.as_str(), config],
        )?;
        let payload = serde_json::to_value(caged_domain::event::NetworkEvent::from(
            caged_domain::event::NetworkAction::AllowlistChanged {
                allowed_hosts: hosts.to_vec(),
                before,
            },
        ))
        .map_err(corrupt)?;
        let event = insert_event(&tx, id, account_id, at_ms, EventKind::Network, &payload)?;
        tx.commit()?;
        Ok(event)
    }

    /// Payloads of a sandbox's events of `kind`, oldest first (at most `limit`).
    pub fn event_payloads(
        &self,
        id: SandboxId,
        kind: EventKind,
        limit: i64,
    ) -> Result<Vec<serde_json::Value>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT payload FROM events WHERE sandbox_id = ?1 AND kind = ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![id.as_str(), kind.as_str(), limit], |row| {
            row.get::<_, String>(0)
        })?;
        rows.map(|row| Ok(serde_json::from_str(&row?).unwrap_or(serde_json::Value::Null)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use caged_domain::{SandboxConfig, SandboxId, SandboxState};

    use crate::NewSandbox;
    use crate::tests::store_with_sandbox;

    #[test]
    fn slots_are_lowest_free_and_reused_after_destroy() {
        let (_dir, store, first, account) = store_with_sandbox();
        let add = || {
            let id = SandboxId::random();
            store
                .insert_sandbox(NewSandbox {
                    id,
                    account_id: &account,
                    config: &SandboxConfig::default(),
                    disk_enforced: true,
                    at_ms: 11,
                    most_live: 0,
                })
                .unwrap();
            id
        };
        assert_eq!(store.allocate_link_slot(first, 2).unwrap(), Some(0));
        assert_eq!(store.allocate_link_slot(first, 2).unwrap(), Some(0));
        let second = add();
        assert_eq!(store.allocate_link_slot(second, 2).unwrap(), Some(1));
        let third = add();
        assert_eq!(store.allocate_link_slot(third, 2).unwrap(), None);
        store
            .transition(
                first,
                SandboxState::Pending,
                SandboxState::Destroyed,
                12,
                None,
            )
            .unwrap();
        assert_eq!(store.allocate_link_slot(third, 2).unwrap(), Some(0));
        assert_eq!(store.link_slot(second).unwrap(), Some(1));
    }

    #[test]
    fn allowlist_changes_are_stored_with_an_event() {
        let (_dir, store, id, account) = store_with_sandbox();
        let event = store
            .set_allowed_hosts(id, &account, &["a.test".to_string()], 20)
            .unwrap();
        assert_eq!(event.kind, "network");
        let record = store.sandbox(&account, id).unwrap().unwrap();
        assert_eq!(record.config.allowed_hosts, vec!["a.test".to_string()]);
        let payloads = store
            .event_payloads(id, caged_domain::EventKind::Network, 10)
            .unwrap();
        assert_eq!(payloads[0]["allowed_hosts"][0], "a.test");
    }
}

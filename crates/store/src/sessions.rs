//! Sessions: one agent's interaction with a sandbox, from the moment its channel (a streaming
//! exec, `caged shell`, `caged agent`) opens until it drops. Events that come through the
//! channel carry the session's id.

use caged_domain::{EventKind, SandboxId};
use rusqlite::{OptionalExtension, params};

use crate::{Event, Result, Store, insert_event_in};

#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub sandbox_id: SandboxId,
    pub account_id: String,
    pub agent_type: String,
    /// `exec` (a streaming exec or `caged shell`) or `agent` (`caged agent`).
    pub channel: String,
    pub command: Vec<String>,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub llm_cost_micros: i64,
}

pub struct NewSession<'a> {
    pub id: &'a str,
    pub sandbox_id: SandboxId,
    pub account_id: &'a str,
    pub agent_type: &'a str,
    pub channel: &'a str,
    pub command: &'a [String],
    pub at_ms: i64,
}

const SESSION_COLUMNS: &str = "id, sandbox_id, account_id, agent_type, channel, command, \
     started_at_ms, ended_at_ms, end_reason, tokens_in, tokens_out, llm_cost_micros";

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SessionRecord>> {
    let sandbox: String = row.get(1)?;
    let Ok(sandbox_id) = sandbox.parse::<SandboxId>() else {
        return Ok(Err(crate::corrupt_state(&sandbox)));
    };
    let command: String = row.get(5)?;
    Ok(Ok(SessionRecord {
        id: row.get(0)?,
        sandbox_id,
        account_id: row.get(2)?,
        agent_type: row.get(3)?,
        channel: row.get(4)?,
        command: serde_json::from_str(&command).unwrap_or_default(),
        started_at_ms: row.get(6)?,
        ended_at_ms: row.get(7)?,
        end_reason: row.get(8)?,
        tokens_in: row.get(9)?,
        tokens_out: row.get(10)?,
        llm_cost_micros: row.get(11)?,
    }))
}

impl Store {
    /// Opens a session, with a `session` event (`op: start`) in it.
    pub fn open_session(&self, new: NewSession<'_>) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let command = serde_json::to_string(new.command).unwrap_or_else(|_| "[]".into());
        tx.execute(
            &format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, 0, 0, 0)"
            ),
            params![
                new.id,
                new.sandbox_id.as_str(),
                new.account_id,
                new.agent_type,
                new.channel,
                command,
                new.at_ms
            ],
        )?;
        let payload = serde_json::json!({
            "op": "start", "agent_type": new.agent_type, "channel": new.channel,
        });
        let event = insert_event_in(
            &tx,
            new.sandbox_id,
            new.account_id,
            new.at_ms,
            EventKind::Session,
            &payload,
            Some(new.id),
        )?;
        tx.commit()?;
        Ok(event)
    }

    /// Ends a session still open, with a `session` event (`op: end`); `None` if it had ended.
    pub fn end_session(&self, id: &str, at_ms: i64, reason: &str) -> Result<Option<Event>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let open: Option<(String, String, i64)> = tx
            .query_row(
                "SELECT sandbox_id, account_id, started_at_ms FROM sessions
                 WHERE id = ?1 AND ended_at_ms IS NULL",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let Some((sandbox, account_id, started)) = open else {
            return Ok(None);
        };
        let Ok(sandbox_id) = sandbox.parse::<SandboxId>() else {
            return Err(crate::corrupt_state(&sandbox));
        };
        let at_ms = at_ms.max(started);
        tx.execute(
            "UPDATE sessions SET ended_at_ms = ?2, end_reason = ?3 WHERE id = ?1",
            params![id, at_ms, reason],
        )?;
        let payload = serde_json::json!({
            "op": "end", "reason": reason, "duration_ms": at_ms - started,
        });
        let event = insert_event_in(
            &tx,
            sandbox_id,
            &account_id,
            at_ms,
            EventKind::Session,
            &payload,
            Some(id),
        )?;
        tx.commit()?;
        Ok(Some(event))
    }

    /// Ids of sessions still open (at start-up, those whose server died under them).
    pub fn open_sessions(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, COALESCE(MAX(e.at_ms), s.started_at_ms) FROM sessions s
             LEFT JOIN events e ON e.session_id = s.id
             WHERE s.ended_at_ms IS NULL GROUP BY s.id",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn sessions_of(&self, account_id: &str, sandbox: SandboxId) -> Result<Vec<SessionRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE sandbox_id = ?1 AND account_id = ?2
             ORDER BY started_at_ms, id"
        ))?;
        let rows = stmt.query_map(params![sandbox.as_str(), account_id], session_from_row)?;
        rows.map(|row| row?).collect()
    }

    /// A session as its owner sees it; `None` when missing or someone else's.
    pub fn session(&self, account_id: &str, id: &str) -> Result<Option<SessionRecord>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1 AND account_id = ?2"
                ),
                params![id, account_id],
                session_from_row,
            )
            .optional()?;
        row.transpose()
    }

    pub fn session_events(
        &self,
        account_id: &str,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        self.events_where("session_id", id, account_id, after_seq, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewEvent;

    #[test]
    fn a_session_opens_collects_its_events_and_ends_once() {
        let (_dir, store, sandbox, account) = crate::tests::store_with_sandbox();
        let command = vec!["aider".to_string()];
        store
            .open_session(NewSession {
                id: "ses_1",
                sandbox_id: sandbox,
                account_id: &account,
                agent_type: "aider",
                channel: "agent",
                command: &command,
                at_ms: 100,
            })
            .unwrap();
        let json = serde_json::json!({ "cmd": ["ls"] });
        store
            .record_event(
                &NewEvent::new(sandbox, &account, 150, EventKind::Exec, json.clone())
                    .in_session(Some("ses_1".into())),
                true,
            )
            .unwrap();
        store
            .record_event(
                &NewEvent::new(sandbox, &account, 160, EventKind::Exec, json),
                true,
            )
            .unwrap();
        assert_eq!(store.open_sessions().unwrap(), vec![("ses_1".into(), 150)]);
        let ended = store
            .end_session("ses_1", 200, "exited (status 0)")
            .unwrap();
        assert_eq!(ended.unwrap().payload["duration_ms"], 100);
        assert!(store.end_session("ses_1", 300, "again").unwrap().is_none());
        let session = store.session(&account, "ses_1").unwrap().unwrap();
        assert_eq!(
            (session.ended_at_ms, session.end_reason.as_deref()),
            (Some(200), Some("exited (status 0)"))
        );
        let kinds: Vec<String> = store
            .session_events(&account, "ses_1", 0, 100)
            .unwrap()
            .into_iter()
            .map(|event| event.kind)
            .collect();
        assert_eq!(kinds, vec!["session", "exec", "session"]);
        assert!(store.session("someone-else", "ses_1").unwrap().is_none());
        assert_eq!(store.sessions_of(&account, sandbox).unwrap().len(), 1);
    }
}

//! What the host saw sandboxes do (process and file events, written in batches) and the trust
//! penalties charged for it. A penalty is stored once per (sandbox, session, rule, key) — the
//! unique index is what makes "charged once" hold across restarts — and announced by a `trust`
//! event; a penalty that moves a score into a lower rating band adds a second one.

use caged_domain::{EventKind, SandboxId};
use rusqlite::params;

use crate::{Event, Result, Store, insert_event_in};

pub struct NewPenalty<'a> {
    pub sandbox_id: SandboxId,
    pub account_id: &'a str,
    pub session_id: Option<&'a str>,
    pub rule: &'a str,
    pub key: &'a str,
    pub points: u32,
    pub reason: &'a str,
    pub evidence: &'a serde_json::Value,
    pub at_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PenaltyRecord {
    pub session_id: Option<String>,
    pub rule: String,
    pub key: String,
    pub points: u32,
    pub reason: String,
    pub evidence: serde_json::Value,
    pub event_seq: i64,
    pub at_ms: i64,
}

/// Points charged to one session (or, with `session_id: None`, outside sessions).
#[derive(Clone, Debug, PartialEq)]
pub struct Charged {
    pub session_id: Option<String>,
    pub points: u64,
}

/// The product's bands, for telling when a penalty crossed one.
fn band(score: i64) -> &'static str {
    match score {
        90.. => "excellent",
        70..=89 => "good",
        50..=69 => "caution",
        _ => "alert",
    }
}

impl Store {
    /// Charges a penalty unless the same (rule, key) was already charged to that session;
    /// returns the `trust` events recorded (none when it was a repeat).
    pub fn charge_penalty(&self, new: NewPenalty<'_>) -> Result<Vec<Event>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before: i64 = tx.query_row(
            "SELECT COALESCE(SUM(points), 0) FROM penalties
             WHERE sandbox_id = ?1 AND COALESCE(session_id, '') = COALESCE(?2, '')",
            params![new.sandbox_id.as_str(), new.session_id],
            |row| row.get(0),
        )?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM penalties WHERE sandbox_id = ?1
               AND COALESCE(session_id, '') = COALESCE(?2, '') AND rule = ?3 AND key = ?4)",
            params![new.sandbox_id.as_str(), new.session_id, new.rule, new.key],
            |row| row.get(0),
        )?;
        if exists {
            return Ok(Vec::new());
        }
        let (score_before, score) = (
            (100 - before).max(0),
            (100 - before - i64::from(new.points)).max(0),
        );
        let payload = serde_json::json!({
            "op": "penalty",
            "rule": new.rule,
            "key": new.key,
            "points": new.points,
            "reason": new.reason,
            "score": score,
            "rating": band(score),
        });
        let mut events = vec![insert_event_in(
            &tx,
            new.sandbox_id,
            new.account_id,
            new.at_ms,
            EventKind::Trust,
            &payload,
            new.session_id,
        )?];
        tx.execute(
            "INSERT INTO penalties (sandbox_id, account_id, session_id, rule, key, points, reason,
                                    evidence, event_seq, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                new.sandbox_id.as_str(),
                new.account_id,
                new.session_id,
                new.rule,
                new.key,
                new.points,
                new.reason,
                new.evidence.to_string(),
                events[0].seq,
                new.at_ms
            ],
        )?;
        if band(score) != band(score_before) {
            let payload = serde_json::json!({
                "op": "rating",
                "from": band(score_before),
                "to": band(score),
                "score": score,
            });
            events.push(insert_event_in(
                &tx,
                new.sandbox_id,
                new.account_id,
                new.at_ms,
                EventKind::Trust,
                &payload,
                new.session_id,
            )?);
        }
        tx.commit()?;
        Ok(events)
    }

    /// The penalties of one session of `account`'s, oldest first.
    pub fn session_penalties(
        &self,
        account_id: &str,
        session_id: &str,
    ) -> Result<Vec<PenaltyRecord>> {
        self.penalties_where("session_id = ?2", account_id, session_id)
    }

    /// All penalties of a sandbox of `account`'s, oldest first.
    pub fn sandbox_penalties(&self, account_id: &str, id: SandboxId) -> Result<Vec<PenaltyRecord>> {
        self.penalties_where("sandbox_id = ?2", account_id, id.as_str())
    }

    fn penalties_where(
        &self,
        filter: &str,
        account_id: &str,
        key: &str,
    ) -> Result<Vec<PenaltyRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT session_id, rule, key, points, reason, evidence, event_seq, at_ms
             FROM penalties WHERE account_id = ?1 AND {filter} ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![account_id, key], |row| {
            let evidence: String = row.get(5)?;
            Ok(PenaltyRecord {
                session_id: row.get(0)?,
                rule: row.get(1)?,
                key: row.get(2)?,
                points: row.get(3)?,
                reason: row.get(4)?,
                evidence: serde_json::from_str(&evidence).unwrap_or(serde_json::Value::Null),
                event_seq: row.get(6)?,
                at_ms: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Points per session of a sandbox (and outside sessions), for its aggregate score.
    pub fn charged_by_session(&self, id: SandboxId) -> Result<Vec<Charged>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT session_id, SUM(points) FROM penalties WHERE sandbox_id = ?1 GROUP BY session_id",
        )?;
        let rows = stmt.query_map([id.as_str()], |row| {
            Ok(Charged {
                session_id: row.get(0)?,
                points: row.get::<_, i64>(1)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sessions of a sandbox open within `grace_ms` of `at_ms` (what is seen is read a moment
    /// after it happened, and a session's row is written a moment after its command started).
    pub fn sessions_open_at(
        &self,
        id: SandboxId,
        at_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM sessions WHERE sandbox_id = ?1 AND started_at_ms <= ?2 + ?3
               AND (ended_at_ms IS NULL OR ended_at_ms >= ?2 - ?3) ORDER BY started_at_ms",
        )?;
        let rows = stmt.query_map(params![id.as_str(), at_ms, grace_ms], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// (rule, key, points) already charged to a session, to rebuild its ledger after a restart.
    pub fn charged_keys(
        &self,
        id: SandboxId,
        session_id: Option<&str>,
    ) -> Result<Vec<(String, String, u32)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT rule, key, points FROM penalties
             WHERE sandbox_id = ?1 AND COALESCE(session_id, '') = COALESCE(?2, '')",
        )?;
        let rows = stmt.query_map(params![id.as_str(), session_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

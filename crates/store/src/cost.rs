//! Money in the store: LLM calls (each one a row, an `llm` event and an addition to its
//! sandbox's and session's totals, in one transaction), budgets and the alerts they fired (once
//! per level and budget amount, by the primary key), and webhooks waiting to be delivered.
//! Amounts are integer micro-dollars.

use caged_domain::{EventKind, SandboxId};
use rusqlite::{OptionalExtension, params};

use crate::{Event, LlmTotals, Result, Store, insert_event_in};

/// One metered call through the LLM gateway.
pub struct NewLlmCall<'a> {
    pub sandbox_id: SandboxId,
    pub account_id: &'a str,
    pub session_id: Option<&'a str>,
    pub at_ms: i64,
    pub provider: &'a str,
    pub model: &'a str,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
    /// The upstream's HTTP status (0: no answer).
    pub status: u16,
    /// The `llm` event's payload.
    pub payload: &'a serde_json::Value,
}

/// Where an account's webhooks go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    /// Signs every delivery (HMAC-SHA256).
    pub secret: String,
}

/// A webhook to deliver, or one delivered or given up on.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookDelivery {
    pub id: i64,
    pub account_id: String,
    pub url: String,
    pub event_type: String,
    pub body: String,
    pub created_at_ms: i64,
    pub attempts: i64,
    /// When to try next (`None`: delivered or given up).
    pub next_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

const DELIVERY_COLUMNS: &str = "id, account_id, url, event_type, body, created_at_ms, attempts, \
     next_at_ms, delivered_at_ms, last_error";

fn delivery_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: row.get(0)?,
        account_id: row.get(1)?,
        url: row.get(2)?,
        event_type: row.get(3)?,
        body: row.get(4)?,
        created_at_ms: row.get(5)?,
        attempts: row.get(6)?,
        next_at_ms: row.get(7)?,
        delivered_at_ms: row.get(8)?,
        last_error: row.get(9)?,
    })
}

/// A budget alert to record: its level, what was spent of which budget, and the event (and
/// webhook) announcing it.
pub struct NewAlert<'a> {
    pub sandbox_id: SandboxId,
    pub account_id: &'a str,
    pub level: i64,
    pub budget_micros: i64,
    pub spend_micros: i64,
    pub at_ms: i64,
    pub payload: &'a serde_json::Value,
    /// `(event type, body)` of the webhook to queue, if the account has one.
    pub webhook: Option<(&'a str, &'a str)>,
}

impl Store {
    /// Records a call: its row, its `llm` event (in its session), and the running totals.
    pub fn record_llm_call(&self, call: NewLlmCall<'_>) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let event = insert_event_in(
            &tx,
            call.sandbox_id,
            call.account_id,
            call.at_ms,
            EventKind::Llm,
            call.payload,
            call.session_id,
        )?;
        tx.execute(
            "INSERT INTO llm_calls (sandbox_id, account_id, session_id, at_ms, provider, model,
                                    tokens_in, tokens_out, cost_micros, status, event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                call.sandbox_id.as_str(),
                call.account_id,
                call.session_id,
                call.at_ms,
                call.provider,
                call.model,
                call.tokens_in,
                call.tokens_out,
                call.cost_micros,
                call.status,
                event.seq
            ],
        )?;
        tx.execute(
            "UPDATE sandboxes SET llm_cost_micros = llm_cost_micros + ?2,
                    tokens_in = tokens_in + ?3, tokens_out = tokens_out + ?4,
                    last_active_ms = MAX(COALESCE(last_active_ms, 0), ?5)
             WHERE id = ?1",
            params![
                call.sandbox_id.as_str(),
                call.cost_micros,
                call.tokens_in,
                call.tokens_out,
                call.at_ms
            ],
        )?;
        if let Some(session) = call.session_id {
            tx.execute(
                "UPDATE sessions SET llm_cost_micros = llm_cost_micros + ?2,
                        tokens_in = tokens_in + ?3, tokens_out = tokens_out + ?4
                 WHERE id = ?1 AND sandbox_id = ?5",
                params![
                    session,
                    call.cost_micros,
                    call.tokens_in,
                    call.tokens_out,
                    call.sandbox_id.as_str()
                ],
            )?;
        }
        tx.commit()?;
        Ok(event)
    }

    /// A sandbox's LLM totals now.
    pub fn llm_totals(&self, id: SandboxId) -> Result<Option<LlmTotals>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT llm_cost_micros, tokens_in, tokens_out FROM sandboxes WHERE id = ?1",
                [id.as_str()],
                |row| {
                    Ok(LlmTotals {
                        cost_micros: row.get(0)?,
                        tokens_in: row.get(1)?,
                        tokens_out: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Changes a sandbox's budget (`None`: no limit), with a `budget` event.
    pub fn set_budget(
        &self,
        id: SandboxId,
        account_id: &str,
        budget_micros: Option<i64>,
        at_ms: i64,
        payload: &serde_json::Value,
    ) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE sandboxes SET budget_micros = ?2 WHERE id = ?1",
            params![id.as_str(), budget_micros],
        )?;
        let event = crate::insert_event(&tx, id, account_id, at_ms, EventKind::Budget, payload)?;
        tx.commit()?;
        Ok(event)
    }

    /// Live sandboxes that have a budget, for the guard.
    pub fn budgeted_sandboxes(&self) -> Result<Vec<crate::SandboxRecord>> {
        self.sandboxes_where("state != 'destroyed' AND budget_micros IS NOT NULL")
    }

    /// Records a budget alert unless this level already fired for this budget amount; the
    /// alert, its event and its webhook are one transaction. `None`: it had fired.
    pub fn record_budget_alert(&self, alert: NewAlert<'_>) -> Result<Option<Event>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let fired: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM budget_alerts
                            WHERE sandbox_id = ?1 AND level = ?2 AND budget_micros = ?3)",
            params![alert.sandbox_id.as_str(), alert.level, alert.budget_micros],
            |row| row.get(0),
        )?;
        if fired {
            return Ok(None);
        }
        let event = crate::insert_event(
            &tx,
            alert.sandbox_id,
            alert.account_id,
            alert.at_ms,
            EventKind::Budget,
            alert.payload,
        )?;
        tx.execute(
            "INSERT INTO budget_alerts (sandbox_id, level, budget_micros, spend_micros, at_ms, event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                alert.sandbox_id.as_str(),
                alert.level,
                alert.budget_micros,
                alert.spend_micros,
                alert.at_ms,
                event.seq
            ],
        )?;
        if let Some((event_type, body)) = alert.webhook {
            queue_webhook(&tx, alert.account_id, event_type, body, alert.at_ms)?;
        }
        tx.commit()?;
        Ok(Some(event))
    }

    /// Every alert a sandbox's budgets fired: `(level, budget, spend, at)`, oldest first.
    pub fn budget_alerts(&self, id: SandboxId) -> Result<Vec<(i64, i64, i64, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT level, budget_micros, spend_micros, at_ms FROM budget_alerts
             WHERE sandbox_id = ?1 ORDER BY at_ms, level",
        )?;
        let rows = stmt.query_map([id.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The levels that fired for a sandbox's budget of this amount.
    pub fn budget_levels_fired(&self, id: SandboxId, budget_micros: i64) -> Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT level FROM budget_alerts WHERE sandbox_id = ?1 AND budget_micros = ?2 ORDER BY level",
        )?;
        let rows = stmt.query_map(params![id.as_str(), budget_micros], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an event and queues its webhook (if the account has one), together.
    pub fn record_event_with_webhook(
        &self,
        id: SandboxId,
        account_id: &str,
        at_ms: i64,
        kind: EventKind,
        payload: &serde_json::Value,
        webhook: Option<(&str, &str)>,
    ) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let event = crate::insert_event(&tx, id, account_id, at_ms, kind, payload)?;
        if let Some((event_type, body)) = webhook {
            queue_webhook(&tx, account_id, event_type, body, at_ms)?;
        }
        tx.commit()?;
        Ok(event)
    }

    pub fn set_webhook(&self, account_id: &str, target: Option<&WebhookTarget>) -> Result<()> {
        self.conn().execute(
            "UPDATE accounts SET webhook_url = ?2, webhook_secret = ?3 WHERE id = ?1",
            params![
                account_id,
                target.map(|t| t.url.as_str()),
                target.map(|t| t.secret.as_str())
            ],
        )?;
        Ok(())
    }

    pub fn webhook(&self, account_id: &str) -> Result<Option<WebhookTarget>> {
        let row: Option<(Option<String>, Option<String>)> = self
            .conn()
            .query_row(
                "SELECT webhook_url, webhook_secret FROM accounts WHERE id = ?1",
                [account_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((Some(url), Some(secret))) => Some(WebhookTarget { url, secret }),
            _ => None,
        })
    }

    /// Deliveries due at `now_ms`, oldest first.
    pub fn due_webhooks(&self, now_ms: i64, limit: i64) -> Result<Vec<WebhookDelivery>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE next_at_ms IS NOT NULL AND next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit], delivery_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next delivery is due, if any is waiting.
    pub fn next_webhook_at(&self) -> Result<Option<i64>> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_at_ms) FROM webhook_deliveries WHERE next_at_ms IS NOT NULL",
            [],
            |row| row.get(0),
        )?)
    }

    /// Notes an attempt: delivered (`error: None`), to be retried at `retry_at_ms`, or given
    /// up on (`retry_at_ms: None`).
    pub fn webhook_attempted(
        &self,
        id: i64,
        at_ms: i64,
        error: Option<&str>,
        retry_at_ms: Option<i64>,
    ) -> Result<()> {
        let delivered = error.is_none().then_some(at_ms);
        let next = if error.is_some() { retry_at_ms } else { None };
        self.conn().execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at_ms = ?2,
                    next_at_ms = ?3, last_error = ?4 WHERE id = ?1",
            params![id, delivered, next, error],
        )?;
        Ok(())
    }

    /// An account's latest deliveries, newest first.
    pub fn webhook_deliveries(&self, account_id: &str, limit: i64) -> Result<Vec<WebhookDelivery>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE account_id = ?1
             ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![account_id, limit], delivery_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn queue_webhook(
    tx: &rusqlite::Transaction<'_>,
    account_id: &str,
    event_type: &str,
    body: &str,
    at_ms: i64,
) -> Result<()> {
    // The target is read inside the transaction, so a delivery goes where the account said
    // when the event happened.
    let url: Option<String> = tx
        .query_row(
            "SELECT webhook_url FROM accounts WHERE id = ?1",
            [account_id],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    if let Some(url) = url {
        tx.execute(
            "INSERT INTO webhook_deliveries (account_id, url, event_type, body, created_at_ms, next_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![account_id, url, event_type, body, at_ms],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_adds_to_its_sandbox_and_session_at_once() {
        let (_dir, store, sandbox, account) = crate::tests::store_with_sandbox();
        store
            .open_session(crate::NewSession {
                id: "ses_1",
                sandbox_id: sandbox,
                account_id: &account,
                agent_type: "aider",
                channel: "agent",
                command: &[],
                at_ms: 100,
            })
            .unwrap();
        let payload = serde_json::json!({ "model": "gpt-4o" });
        for session in [Some("ses_1"), None] {
            store
                .record_llm_call(NewLlmCall {
                    sandbox_id: sandbox,
                    account_id: &account,
                    session_id: session,
                    at_ms: 200,
                    provider: "openai",
                    model: "gpt-4o",
                    tokens_in: 100,
                    tokens_out: 10,
                    cost_micros: 350,
                    status: 200,
                    payload: &payload,
                })
                .unwrap();
        }
        let totals = store.llm_totals(sandbox).unwrap().unwrap();
        assert_eq!(
            (totals.cost_micros, totals.tokens_in, totals.tokens_out),
            (700, 200, 20)
        );
        let session = store.session(&account, "ses_1").unwrap().unwrap();
        assert_eq!((session.llm_cost_micros, session.tokens_in), (350, 100));
        let record = store.sandbox_by_id(sandbox).unwrap().unwrap();
        assert_eq!(record.llm, totals);
    }

    #[test]
    fn each_level_fires_once_per_budget_and_queues_its_webhook() {
        let (_dir, store, sandbox, account) = crate::tests::store_with_sandbox();
        let payload = serde_json::json!({});
        let alert = |level, budget, webhook| NewAlert {
            sandbox_id: sandbox,
            account_id: &account,
            level,
            budget_micros: budget,
            spend_micros: 1,
            at_ms: 10,
            payload: &payload,
            webhook,
        };
        // No webhook set: nothing queued.
        assert!(
            store
                .record_budget_alert(alert(80, 1000, Some(("t", "{}"))))
                .unwrap()
                .is_some()
        );
        assert!(store.due_webhooks(100, 10).unwrap().is_empty());
        store
            .set_webhook(
                &account,
                Some(&WebhookTarget {
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "s".into(),
                }),
            )
            .unwrap();
        assert!(
            store
                .record_budget_alert(alert(80, 1000, Some(("t", "{}"))))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .record_budget_alert(alert(95, 1000, Some(("t", "{}"))))
                .unwrap()
                .is_some()
        );
        // A new budget amount has levels of its own.
        assert!(
            store
                .record_budget_alert(alert(80, 2000, Some(("t", "{}"))))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store.budget_levels_fired(sandbox, 1000).unwrap(),
            vec![80, 95]
        );
        let due = store.due_webhooks(100, 10).unwrap();
        assert_eq!(due.len(), 2);
        store
            .webhook_attempted(due[0].id, 20, Some("refused"), Some(50))
            .unwrap();
        store.webhook_attempted(due[1].id, 20, None, None).unwrap();
        assert_eq!(store.due_webhooks(49, 10).unwrap().len(), 0);
        assert_eq!(store.next_webhook_at().unwrap(), Some(50));
        let log = store.webhook_deliveries(&account, 10).unwrap();
        assert_eq!(log[0].delivered_at_ms, Some(20));
        assert_eq!(log[1].last_error.as_deref(), Some("refused"));
    }
}

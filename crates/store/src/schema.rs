//! Schema migrations, applied in order and tracked with SQLite's `user_version`.

use rusqlite::Connection;

use crate::{Result, StoreError};

/// Each entry moves the schema one version forward; never edit a released entry, add one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    is_admin      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    secret_hash   BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE sandboxes (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts(id),
    state            TEXT NOT NULL CHECK (state IN ('pending', 'running', 'paused', 'destroyed')),
    config           TEXT NOT NULL,
    name             TEXT GENERATED ALWAYS AS (json_extract(config, '$.name')) VIRTUAL,
    container_id     TEXT,
    created_at_ms    INTEGER NOT NULL,
    destroyed_reason TEXT,
    init_result      TEXT,
    disk_enforced    INTEGER NOT NULL
);
CREATE INDEX sandboxes_by_account ON sandboxes (account_id, created_at_ms);
CREATE TABLE transitions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
    state      TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    reason     TEXT
);
CREATE INDEX transitions_by_sandbox ON transitions (sandbox_id, seq);
"#,
    r#"
ALTER TABLE sandboxes ADD COLUMN last_active_ms INTEGER;
UPDATE sandboxes SET last_active_ms = created_at_ms;
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
    account_id TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL
);
CREATE INDEX events_by_sandbox ON events (sandbox_id, seq);
"#,
    r#"
CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(id),
    sandbox_id    TEXT NOT NULL REFERENCES sandboxes(id),
    name          TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('manual', 'auto')),
    template      TEXT NOT NULL,
    config        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    size_bytes    INTEGER NOT NULL,
    raw_bytes     INTEGER NOT NULL,
    entries       INTEGER NOT NULL,
    sha256        TEXT NOT NULL
);
CREATE INDEX snapshots_by_sandbox ON snapshots (sandbox_id, created_at_ms);
CREATE INDEX snapshots_by_account ON snapshots (account_id);
"#,
    r#"
CREATE TABLE preview_ports (
    sandbox_id   TEXT NOT NULL REFERENCES sandboxes(id),
    port         INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    address      TEXT NOT NULL,
    opened_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, port)
) WITHOUT ROWID;
CREATE TABLE preview_passwords (
    sandbox_id    TEXT NOT NULL REFERENCES sandboxes(id),
    port          INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    password_hash TEXT NOT NULL,
    set_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, port)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    sandbox_id    TEXT NOT NULL REFERENCES sandboxes(id),
    account_id    TEXT NOT NULL,
    agent_type    TEXT NOT NULL,
    channel       TEXT NOT NULL CHECK (channel IN ('exec', 'agent')),
    command       TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER,
    end_reason    TEXT,
    tokens_in     INTEGER NOT NULL DEFAULT 0,
    tokens_out    INTEGER NOT NULL DEFAULT 0,
    llm_cost_usd  REAL NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_sandbox ON sessions (sandbox_id, started_at_ms);
CREATE INDEX sessions_open ON sessions (ended_at_ms) WHERE ended_at_ms IS NULL;
ALTER TABLE events ADD COLUMN session_id TEXT;
CREATE INDEX events_by_session ON events (session_id, seq) WHERE session_id IS NOT NULL;
"#,
    r#"
CREATE TABLE link_slots (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id),
    slot       INTEGER NOT NULL
);
CREATE INDEX link_slots_by_slot ON link_slots (slot);
CREATE INDEX events_by_kind ON events (sandbox_id, kind, seq);
"#,
    r#"
CREATE TABLE penalties (
    id         INTEGER PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
    account_id TEXT NOT NULL,
    -- NULL: activity outside any session (API execs, the sandbox's own processes).
    session_id TEXT,
    rule       TEXT NOT NULL,
    key        TEXT NOT NULL,
    points     INTEGER NOT NULL CHECK (points >= 0),
    reason     TEXT NOT NULL,
    evidence   TEXT NOT NULL,
    -- The `trust` event that announced it.
    event_seq  INTEGER NOT NULL,
    at_ms      INTEGER NOT NULL
);
-- Each behaviour is charged once per distinct key per session.
CREATE INDEX events_kind_seq ON events (kind, seq);
CREATE UNIQUE INDEX penalties_once ON penalties (sandbox_id, COALESCE(session_id, ''), rule, key);
"#,
    r#"
-- Money is integer micro-dollars.
ALTER TABLE sessions DROP COLUMN llm_cost_usd;
ALTER TABLE sessions ADD COLUMN llm_cost_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN budget_micros INTEGER CHECK (budget_micros > 0);
UPDATE sandboxes SET budget_micros = CAST(ROUND(json_extract(config, '$.budget') * 1000000) AS INTEGER)
    WHERE json_extract(config, '$.budget') > 0;
-- Running totals of the sandbox's LLM calls (the guard reads them every second).
ALTER TABLE sandboxes ADD COLUMN llm_cost_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN tokens_in INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN tokens_out INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN webhook_url TEXT;
ALTER TABLE accounts ADD COLUMN webhook_secret TEXT;
CREATE TABLE llm_calls (
    id          INTEGER PRIMARY KEY,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id),
    account_id  TEXT NOT NULL,
    session_id  TEXT,
    at_ms       INTEGER NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    tokens_in   INTEGER NOT NULL CHECK (tokens_in >= 0),
    tokens_out  INTEGER NOT NULL CHECK (tokens_out >= 0),
    cost_micros INTEGER NOT NULL CHECK (cost_micros >= 0),
    status      INTEGER NOT NULL,
    event_seq   INTEGER NOT NULL
);
CREATE INDEX llm_calls_by_sandbox ON llm_calls (sandbox_id, id);
-- Each level fires once per budget amount (a raised budget has levels of its own).
CREATE TABLE budget_alerts (
    sandbox_id    TEXT NOT NULL REFERENCES sandboxes(id),
    level         INTEGER NOT NULL CHECK (level IN (80, 95, 100)),
    budget_micros INTEGER NOT NULL,
    spend_micros  INTEGER NOT NULL,
    at_ms         INTEGER NOT NULL,
    event_seq     INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, level, budget_micros)
) WITHOUT ROWID;
-- Webhooks waiting to be delivered (or given up on), kept across restarts.
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    url             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at_ms      INTEGER,
    delivered_at_ms INTEGER,
    last_error      TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at_ms) WHERE next_at_ms IS NOT NULL;
CREATE INDEX webhook_deliveries_by_account ON webhook_deliveries (account_id, id);
"#,
    r#"
-- The dashboard's signed-in browsers. Only a hash of the cookie's token is kept; a session lives
-- as long as the API key it was opened with (the join) and until it expires.
CREATE TABLE web_sessions (
    token_hash    BLOB PRIMARY KEY,
    key_id        TEXT NOT NULL REFERENCES api_keys(id),
    csrf_token    TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at_ms);
-- The account's spend per day.
CREATE INDEX llm_calls_by_account ON llm_calls (account_id, at_ms);
"#,
];

pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

//! Caged's durable state in one SQLite file: accounts, API keys, sandboxes and every state
//! transition. Calls are blocking; async callers go through [`Db`].
//!
//! Invariants kept here: a sandbox's `state` column always equals the state of its newest
//! transition row (both are written in one transaction), and a transition is only written when
//! the row's current state is the one the caller expected, so two racing writers cannot both win.

mod cost;
mod db;
mod network;
mod previews;
mod schema;
mod sessions;
mod trust;
mod web;

pub use cost::{NewAlert, NewLlmCall, WebhookDelivery, WebhookTarget};
pub use db::{Db, Written};
pub use previews::{PortChange, PreviewPassword, PreviewPort, SandboxHead};
pub use sessions::{NewSession, SessionRecord};
pub use trust::{Charged, NewPenalty, PenaltyRecord};
pub use web::{DAY_MS, DailyLlm, WebSession};

use parking_lot::Mutex;
use std::path::Path;

use caged_domain::{EventKind, SandboxConfig, SandboxId, SandboxState, Transition};
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored config of sandbox {id} is unreadable")]
    CorruptConfig {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("database schema version {found} is newer than this caged understands ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("sandbox {id} is {actual}, not {expected}")]
    StateChanged {
        id: SandboxId,
        expected: SandboxState,
        actual: SandboxState,
    },
    #[error("sandbox {id} not found")]
    NotFound { id: SandboxId },
    #[error("an account named {name:?} already exists")]
    AccountExists { name: String },
    #[error("account {account_id} already has {most} sandboxes")]
    SandboxLimit { account_id: String, most: usize },
    #[error("cannot set the mode of {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub is_admin: bool,
    pub created_at_ms: i64,
}

/// What a key lookup needs to authenticate a request.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub secret_hash: Vec<u8>,
    pub account: Account,
}

#[derive(Clone, Debug)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub account_id: String,
    pub state: SandboxState,
    pub config: SandboxConfig,
    pub container_id: Option<String>,
    pub created_at_ms: i64,
    /// Why it was destroyed, when it was.
    pub destroyed_reason: Option<String>,
    /// Outcome of `init_script`, once it ran.
    pub init_result: Option<serde_json::Value>,
    /// Whether the engine enforces `resources.disk` for this sandbox.
    pub disk_enforced: bool,
    /// Last time anything was done with the sandbox (idle sleep counts from here).
    pub last_active_ms: i64,
    pub transitions: Vec<Transition>,
    /// The budget now (micro-dollars; `None`: no limit). Starts as the config's, can be changed.
    pub budget_micros: Option<i64>,
    /// Running totals of its LLM calls.
    pub llm: LlmTotals,
}

impl SandboxRecord {
    /// Where the sandbox's clock stands, for running time and billing: now, or (destroyed) its
    /// last transition.
    pub fn clock_ms(&self) -> i64 {
        if self.state == SandboxState::Destroyed {
            self.transitions
                .last()
                .map_or(self.created_at_ms, |last| last.at_ms)
        } else {
            caged_domain::time::now_ms()
        }
    }
}

/// What a sandbox's (or a session's) LLM calls added up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LlmTotals {
    pub cost_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

/// One row of the event log: something that happened to a sandbox, with a JSON payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Position in the log; strictly increasing, so "events after N" never misses one.
    pub seq: i64,
    pub sandbox_id: SandboxId,
    pub account_id: String,
    pub at_ms: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The session the event happened in, when it came through one.
    pub session_id: Option<String>,
}

/// A stored snapshot's record; its bytes are in the snapshot storage under the same id.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub account_id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: SandboxId,
    pub name: Option<String>,
    /// `manual` or `auto`.
    pub kind: String,
    pub template: String,
    /// The origin sandbox's config, for forks.
    pub config: SandboxConfig,
    pub created_at_ms: i64,
    /// Compressed bytes in storage (what quotas count).
    pub size_bytes: i64,
    pub raw_bytes: i64,
    pub entries: i64,
    pub sha256: String,
}

pub struct NewSandbox<'a> {
    pub id: SandboxId,
    pub account_id: &'a str,
    pub config: &'a SandboxConfig,
    pub disk_enforced: bool,
    pub at_ms: i64,
    /// The account's live sandboxes may not exceed this (0: no limit); checked in the insert's
    /// transaction, so concurrent creates cannot all slip under it.
    pub most_live: usize,
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates) the database at `path`. It and its journal are the operator's only
    /// (0600): it holds key hashes, webhook secrets and the gateway's key.
    pub fn open(path: &Path) -> Result<Store> {
        restrict(path, true)?;
        let mut conn = Connection::open(path)?;
        // WAL keeps readers off writers' backs; NORMAL is durable across a process kill (the
        // case that matters for a control plane), trading only the last commit on power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        // The journal files take the database's mode when SQLite makes them; older ones may not.
        for suffix in ["-wal", "-shm"] {
            let mut journal = path.as_os_str().to_owned();
            journal.push(suffix);
            restrict(Path::new(&journal), false)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> parking_lot::MutexGuard<'_, Connection> {
        // The lock does not poison: a panic while holding it cannot leave SQLite inconsistent
        // (transactions roll back on drop), so the next caller carries on.
        self.conn.lock()
    }

    /// A value kept for the lifetime of the data folder, created on first use.
    pub fn meta_get_or_insert(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let conn = self.conn();
        if let Some(value) = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?
        {
            return Ok(value);
        }
        let value = make();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(value)
    }

    pub fn create_account(
        &self,
        id: &str,
        name: &str,
        is_admin: bool,
        at_ms: i64,
    ) -> Result<Account> {
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO accounts (id, name, is_admin, created_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![id, name, is_admin, at_ms],
        )?;
        if inserted == 0 {
            return Err(StoreError::AccountExists {
                name: name.to_string(),
            });
        }
        Ok(Account {
            id: id.to_string(),
            name: name.to_string(),
            is_admin,
            created_at_ms: at_ms,
        })
    }

    pub fn admin_account(&self) -> Result<Option<Account>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT id, name, is_admin, created_at_ms FROM accounts WHERE is_admin ORDER BY created_at_ms LIMIT 1",
                [],
                account_from_row,
            )
            .optional()?)
    }

    pub fn list_accounts(&self) -> Result<Vec<Account>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, is_admin, created_at_ms FROM accounts ORDER BY created_at_ms",
        )?;
        let rows = stmt.query_map([], account_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_api_key(
        &self,
        key_id: &str,
        account_id: &str,
        secret_hash: &[u8],
        at_ms: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO api_keys (id, account_id, secret_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![key_id, account_id, secret_hash, at_ms],
        )?;
        Ok(())
    }

    pub fn api_key(&self, key_id: &str) -> Result<Option<StoredKey>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT k.secret_hash, a.id, a.name, a.is_admin, a.created_at_ms
                 FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.id = ?1",
                [key_id],
                |row| {
                    Ok(StoredKey {
                        secret_hash: row.get(0)?,
                        account: Account {
                            id: row.get(1)?,
                            name: row.get(2)?,
                            is_admin: row.get(3)?,
                            created_at_ms: row.get(4)?,
                        },
                    })
                },
            )
            .optional()?)
    }

    /// Records a new sandbox in `pending`, with its first transition and event.
    pub fn insert_sandbox(&self, new: NewSandbox<'_>) -> Result<Event> {
        let config =
            serde_json::to_string(new.config).map_err(|source| StoreError::CorruptConfig {
                id: new.id.to_string(),
                source,
            })?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if new.most_live > 0 {
            let live: i64 = tx.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE account_id = ?1 AND state != 'destroyed'",
                params![new.account_id],
                |row| row.get(0),
            )?;
            if usize::try_from(live).unwrap_or(usize::MAX) >= new.most_live {
                return Err(StoreError::SandboxLimit {
                    account_id: new.account_id.to_string(),
                    most: new.most_live,
                });
            }
        }
        tx.execute(
            "INSERT INTO sandboxes (id, account_id, state, config, created_at_ms, disk_enforced, last_active_ms, budget_micros)
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?4, ?6)",
            params![
                new.id.as_str(),
                new.account_id,
                config,
                new.at_ms,
                new.disk_enforced,
                new.config.budget_micros()
            ],
        )?;
        tx.execute(
            "INSERT INTO transitions (sandbox_id, state, at_ms) VALUES (?1, 'pending', ?2)",
            params![new.id.as_str(), new.at_ms],
        )?;
        let payload = serde_json::json!({ "from": null, "to": "pending", "reason": null });
        let event = insert_event(
            &tx,
            new.id,
            new.account_id,
            new.at_ms,
            EventKind::State,
            &payload,
        )?;
        tx.commit()?;
        Ok(event)
    }

    pub fn set_container_id(&self, id: SandboxId, container_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET container_id = ?2 WHERE id = ?1",
            params![id.as_str(), container_id],
        )?;
        Ok(())
    }

    pub fn set_init_result(&self, id: SandboxId, result: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET init_result = ?2 WHERE id = ?1",
            params![id.as_str(), result.to_string()],
        )?;
        Ok(())
    }

    /// Moves a sandbox from `expected` to `to`, atomically with its history and a `state`
    /// event. Legality of the change itself is the domain's call; this only guards against a
    /// concurrent writer. Entering `running` counts as activity.
    pub fn transition(
        &self,
        id: SandboxId,
        expected: SandboxState,
        to: SandboxState,
        at_ms: i64,
        reason: Option<&str>,
    ) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE sandboxes SET state = ?3,
                    destroyed_reason = CASE WHEN ?3 = 'destroyed' THEN ?4 ELSE destroyed_reason END
             WHERE id = ?1 AND state = ?2",
            params![id.as_str(), expected.as_str(), to.as_str(), reason],
        )?;
        if changed == 0 {
            let actual: Option<String> = tx
                .query_row(
                    "SELECT state FROM sandboxes WHERE id = ?1",
                    [id.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            return match actual {
                None => Err(StoreError::NotFound { id }),
                Some(actual) => Err(StoreError::StateChanged {
                    id,
                    expected,
                    actual: parse_state(&actual)?,
                }),
            };
        }
        tx.execute(
            "INSERT INTO transitions (sandbox_id, state, at_ms, reason) VALUES (?1, ?2, ?3, ?4)",
            params![id.as_str(), to.as_str(), at_ms, reason],
        )?;
        if to == SandboxState::Running {
            tx.execute(
                "UPDATE sandboxes SET last_active_ms = ?2 WHERE id = ?1",
                params![id.as_str(), at_ms],
            )?;
        }
        let account_id: String = tx.query_row(
            "SELECT account_id FROM sandboxes WHERE id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )?;
        let payload =
            serde_json::json!({ "from": expected.as_str(), "to": to.as_str(), "reason": reason });
        let event = insert_event(&tx, id, &account_id, at_ms, EventKind::State, &payload)?;
        tx.commit()?;
        Ok(event)
    }

    /// Appends an event; with `active`, also marks the sandbox as used at its time.
    pub fn record_event(&self, new: &NewEvent, active: bool) -> Result<Event> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if active {
            tx.execute(
                "UPDATE sandboxes SET last_active_ms = MAX(COALESCE(last_active_ms, 0), ?2) WHERE id = ?1",
                params![new.sandbox_id.as_str(), new.at_ms],
            )?;
        }
        let event = insert_new_event(&tx, new)?;
        tx.commit()?;
        Ok(event)
    }

    /// Appends many events in one transaction (the observer writes thousands a second; none is
    /// activity).
    pub fn record_events(&self, batch: &[NewEvent]) -> Result<Vec<Event>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let events = batch
            .iter()
            .map(|new| insert_new_event(&tx, new))
            .collect::<Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(events)
    }

    /// Events of one sandbox after `after_seq`, oldest first, at most `limit`.
    pub fn events(
        &self,
        account_id: &str,
        id: SandboxId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        self.events_where("sandbox_id", id.as_str(), account_id, after_seq, limit)
    }

    /// Events whose `column` (`sandbox_id` or `session_id`) is `key`, oldest first.
    pub(crate) fn events_where(
        &self,
        column: &'static str,
        key: &str,
        account_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE {column} = ?1 AND account_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![key, account_id, after_seq, limit], event_from_row)?;
        rows.map(|row| row?).collect()
    }

    /// A sandbox as its owner sees it; `None` when it does not exist or belongs to someone else.
    pub fn sandbox(&self, account_id: &str, id: SandboxId) -> Result<Option<SandboxRecord>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1 AND account_id = ?2"
                ),
                params![id.as_str(), account_id],
                RawSandbox::from_row,
            )
            .optional()?;
        row.map(|raw| raw.into_record(&conn)).transpose()
    }

    /// A sandbox whoever owns it (for the server's own bookkeeping, never for a request).
    pub fn sandbox_by_id(&self, id: SandboxId) -> Result<Option<SandboxRecord>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"),
                params![id.as_str()],
                RawSandbox::from_row,
            )
            .optional()?;
        row.map(|raw| raw.into_record(&conn)).transpose()
    }

    pub fn list_sandboxes(
        &self,
        account_id: &str,
        include_destroyed: bool,
    ) -> Result<Vec<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes
             WHERE account_id = ?1 AND (?2 OR state != 'destroyed') ORDER BY created_at_ms, id"
        ))?;
        let raws = stmt.query_map(params![account_id, include_destroyed], RawSandbox::from_row)?;
        let raws: Vec<RawSandbox> = raws.collect::<Result<_, _>>()?;
        raws.into_iter().map(|raw| raw.into_record(&conn)).collect()
    }

    /// Every sandbox not yet destroyed, across accounts (for the server's own bookkeeping).
    pub fn live_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.sandboxes_where("state != 'destroyed'")
    }

    pub(crate) fn sandboxes_where(&self, condition: &str) -> Result<Vec<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE {condition} ORDER BY id"
        ))?;
        let raws = stmt.query_map([], RawSandbox::from_row)?;
        let raws: Vec<RawSandbox> = raws.collect::<Result<_, _>>()?;
        raws.into_iter().map(|raw| raw.into_record(&conn)).collect()
    }

    /// The live sandbox whose container is `container_id` (for attributing what the host sees).
    pub fn sandbox_by_container(&self, container_id: &str) -> Result<Option<SandboxRecord>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes
                     WHERE container_id = ?1 AND state != 'destroyed'"
                ),
                params![container_id],
                RawSandbox::from_row,
            )
            .optional()?;
        row.map(|raw| raw.into_record(&conn)).transpose()
    }

    /// Whether a live sandbox of this account already uses `name`.
    pub fn live_name_taken(&self, account_id: &str, name: &str) -> Result<bool> {
        let conn = self.conn();
        let count: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sandboxes WHERE account_id = ?1 AND name = ?2 AND state != 'destroyed'",
            params![account_id, name],
            |row| row.get(0),
        )?;
        Ok(count > 0)
    }
}

impl Store {
    pub fn insert_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let config = serde_json::to_string(&snapshot.config).map_err(|source| {
            StoreError::CorruptConfig {
                id: snapshot.id.clone(),
                source,
            }
        })?;
        self.conn().execute(
            "INSERT INTO snapshots (id, account_id, sandbox_id, name, kind, template, config, created_at_ms,
                                    size_bytes, raw_bytes, entries, sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                snapshot.id,
                snapshot.account_id,
                snapshot.sandbox_id.as_str(),
                snapshot.name,
                snapshot.kind,
                snapshot.template,
                config,
                snapshot.created_at_ms,
                snapshot.size_bytes,
                snapshot.raw_bytes,
                snapshot.entries,
                snapshot.sha256
            ],
        )?;
        Ok(())
    }

    /// A snapshot as its owner sees it; `None` when missing or someone else's.
    pub fn snapshot(&self, account_id: &str, id: &str) -> Result<Option<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1 AND account_id = ?2"
        ))?;
        let row = stmt
            .query_row(params![id, account_id], snapshot_from_row)
            .optional()?;
        row.transpose()
    }

    /// Snapshots taken from a sandbox, oldest first.
    pub fn snapshots_of(
        &self,
        account_id: &str,
        sandbox: SandboxId,
    ) -> Result<Vec<SnapshotRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE sandbox_id = ?1 AND account_id = ?2
             ORDER BY created_at_ms, id"
        ))?;
        let rows = stmt.query_map(params![sandbox.as_str(), account_id], snapshot_from_row)?;
        let mut snapshots = Vec::new();
        for row in rows {
            snapshots.push(row??);
        }
        Ok(snapshots)
    }

    /// Compressed bytes of all of an account's snapshots.
    pub fn snapshot_bytes(&self, account_id: &str) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots WHERE account_id = ?1",
            [account_id],
            |row| row.get(0),
        )?)
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Every snapshot id, to find blobs without records.
    pub fn snapshot_ids(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM snapshots")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const SNAPSHOT_COLUMNS: &str = "id, account_id, sandbox_id, name, kind, template, config, created_at_ms, \
     size_bytes, raw_bytes, entries, sha256";

fn snapshot_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SnapshotRecord>> {
    let id: String = row.get(0)?;
    let sandbox: String = row.get(2)?;
    let config: String = row.get(6)?;
    let Ok(sandbox_id) = sandbox.parse::<SandboxId>() else {
        return Ok(Err(corrupt_state(&sandbox)));
    };
    let config = match serde_json::from_str(&config) {
        Ok(config) => config,
        Err(source) => return Ok(Err(StoreError::CorruptConfig { id, source })),
    };
    Ok(Ok(SnapshotRecord {
        id,
        account_id: row.get(1)?,
        sandbox_id,
        name: row.get(3)?,
        kind: row.get(4)?,
        template: row.get(5)?,
        config,
        created_at_ms: row.get(7)?,
        size_bytes: row.get(8)?,
        raw_bytes: row.get(9)?,
        entries: row.get(10)?,
        sha256: row.get(11)?,
    }))
}

const SANDBOX_COLUMNS: &str = "id, account_id, state, config, container_id, created_at_ms, destroyed_reason, \
     init_result, disk_enforced, last_active_ms, budget_micros, llm_cost_micros, tokens_in, tokens_out";

pub(crate) const EVENT_COLUMNS: &str =
    "seq, sandbox_id, account_id, at_ms, kind, payload, session_id";

pub(crate) fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Event>> {
    let sandbox: String = row.get(1)?;
    let Ok(sandbox_id) = sandbox.parse::<SandboxId>() else {
        return Ok(Err(corrupt_state(&sandbox)));
    };
    let payload: String = row.get(5)?;
    Ok(Ok(Event {
        seq: row.get(0)?,
        sandbox_id,
        account_id: row.get(2)?,
        at_ms: row.get(3)?,
        kind: row.get(4)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        session_id: row.get(6)?,
    }))
}

/// Makes `path` the owner's only (0600); with `create`, a missing file is created empty with
/// that mode from the start (before SQLite writes a byte of it).
fn restrict(path: &Path, create: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if create {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io(err)),
        }
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(err) if !create && err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io),
    }
}

/// An event to append: what happened to which sandbox, when, and in which session if any.
pub struct NewEvent {
    pub sandbox_id: SandboxId,
    pub account_id: String,
    pub session_id: Option<String>,
    pub at_ms: i64,
    pub kind: EventKind,
    pub payload: serde_json::Value,
}

impl NewEvent {
    pub fn new(
        sandbox_id: SandboxId,
        account_id: impl Into<String>,
        at_ms: i64,
        kind: EventKind,
        payload: serde_json::Value,
    ) -> Self {
        NewEvent {
            sandbox_id,
            account_id: account_id.into(),
            session_id: None,
            at_ms,
            kind,
            payload,
        }
    }

    /// The same event, attributed to `session` (none leaves it outside any session).
    pub fn in_session(mut self, session: Option<String>) -> Self {
        self.session_id = session;
        self
    }
}

fn insert_new_event(tx: &rusqlite::Transaction<'_>, new: &NewEvent) -> Result<Event> {
    insert_event_in(
        tx,
        new.sandbox_id,
        &new.account_id,
        new.at_ms,
        new.kind,
        &new.payload,
        new.session_id.as_deref(),
    )
}

pub(crate) fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    id: SandboxId,
    account_id: &str,
    at_ms: i64,
    kind: EventKind,
    payload: &serde_json::Value,
) -> Result<Event> {
    insert_event_in(tx, id, account_id, at_ms, kind, payload, None)
}

pub(crate) fn insert_event_in(
    tx: &rusqlite::Transaction<'_>,
    id: SandboxId,
    account_id: &str,
    at_ms: i64,
    kind: EventKind,
    payload: &serde_json::Value,
    session_id: Option<&str>,
) -> Result<Event> {
    tx.execute(
        "INSERT INTO events (sandbox_id, account_id, at_ms, kind, payload, session_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id.as_str(),
            account_id,
            at_ms,
            kind.as_str(),
            payload.to_string(),
            session_id
        ],
    )?;
    Ok(Event {
        seq: tx.last_insert_rowid(),
        sandbox_id: id,
        account_id: account_id.to_string(),
        at_ms,
        kind: kind.to_string(),
        payload: payload.clone(),
        session_id: session_id.map(str::to_string),
    })
}

struct RawSandbox {
    id: String,
    account_id: String,
    state: String,
    config: String,
    container_id: Option<String>,
    created_at_ms: i64,
    destroyed_reason: Option<String>,
    init_result: Option<String>,
    disk_enforced: bool,
    last_active_ms: Option<i64>,
    budget_micros: Option<i64>,
    llm: LlmTotals,
}

impl RawSandbox {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawSandbox> {
        Ok(RawSandbox {
            id: row.get(0)?,
            account_id: row.get(1)?,
            state: row.get(2)?,
            config: row.get(3)?,
            container_id: row.get(4)?,
            created_at_ms: row.get(5)?,
            destroyed_reason: row.get(6)?,
            init_result: row.get(7)?,
            disk_enforced: row.get(8)?,
            last_active_ms: row.get(9)?,
            budget_micros: row.get(10)?,
            llm: LlmTotals {
                cost_micros: row.get(11)?,
                tokens_in: row.get(12)?,
                tokens_out: row.get(13)?,
            },
        })
    }

    fn into_record(self, conn: &Connection) -> Result<SandboxRecord> {
        let id: SandboxId = self.id.parse().map_err(|_| corrupt_state(&self.id))?;
        let config =
            serde_json::from_str(&self.config).map_err(|source| StoreError::CorruptConfig {
                id: self.id.clone(),
                source,
            })?;
        let mut stmt = conn.prepare_cached(
            "SELECT state, at_ms FROM transitions WHERE sandbox_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([&self.id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut transitions = Vec::new();
        for row in rows {
            let (state, at_ms) = row?;
            transitions.push(Transition {
                state: parse_state(&state)?,
                at_ms,
            });
        }
        Ok(SandboxRecord {
            id,
            account_id: self.account_id,
            state: parse_state(&self.state)?,
            config,
            container_id: self.container_id,
            created_at_ms: self.created_at_ms,
            destroyed_reason: self.destroyed_reason,
            init_result: self
                .init_result
                .and_then(|text| serde_json::from_str(&text).ok()),
            disk_enforced: self.disk_enforced,
            last_active_ms: self.last_active_ms.unwrap_or(self.created_at_ms),
            transitions,
            budget_micros: self.budget_micros,
            llm: self.llm,
        })
    }
}

fn parse_state(text: &str) -> Result<SandboxState> {
    text.parse().map_err(|_| corrupt_state(text))
}

pub(crate) fn corrupt_state(text: &str) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::InvalidColumnType(
        0,
        text.to_string(),
        rusqlite::types::Type::Text,
    ))
}

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: row.get(0)?,
        name: row.get(1)?,
        is_admin: row.get(2)?,
        created_at_ms: row.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_and_its_journal_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("caged.db");
        let store = Store::open(&path).unwrap();
        store.meta_get_or_insert("k", || "v".into()).unwrap();
        for name in ["caged.db", "caged.db-wal", "caged.db-shm"] {
            let file = dir.path().join(name);
            if let Ok(meta) = std::fs::metadata(&file) {
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
            }
        }
        drop(store);
        // An installation made before this, world-readable, is tightened when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    use super::*;
    use SandboxState::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("caged.db")).unwrap();
        (dir, store)
    }

    pub(crate) fn store_with_sandbox() -> (tempfile::TempDir, Store, SandboxId, String) {
        let (dir, store) = store();
        store.create_account("acc1", "admin", true, 1).unwrap();
        let id = SandboxId::random();
        let config = SandboxConfig::default();
        store
            .insert_sandbox(NewSandbox {
                id,
                account_id: "acc1",
                config: &config,
                disk_enforced: true,
                at_ms: 10,
                most_live: 0,
            })
            .unwrap();
        (dir, store, id, "acc1".into())
    }

    #[test]
    fn the_live_sandbox_limit_counts_only_the_accounts_live_ones() {
        // acc1 has one live sandbox.
        let (_dir, store, id, _) = store_with_sandbox();
        store.create_account("acc2", "other", false, 1).unwrap();
        let config = SandboxConfig::default();
        let insert = |account_id: &str| {
            store.insert_sandbox(NewSandbox {
                id: SandboxId::random(),
                account_id,
                config: &config,
                disk_enforced: true,
                at_ms: 20,
                most_live: 1,
            })
        };
        let err = insert("acc1").unwrap_err();
        assert!(
            matches!(err, StoreError::SandboxLimit { most: 1, .. }),
            "{err}"
        );
        // Another account has its own count, and nothing was written for the refused one.
        insert("acc2").unwrap();
        assert_eq!(store.live_sandboxes().unwrap().len(), 2);
        // A destroyed sandbox no longer counts.
        store.transition(id, Pending, Destroyed, 30, None).unwrap();
        insert("acc1").unwrap();
    }

    #[test]
    fn transitions_are_guarded_and_recorded_in_order() {
        // Account acc1, sandbox created (pending) at 10.
        let (dir, store, id, _) = store_with_sandbox();
        store.transition(id, Pending, Running, 20, None).unwrap();
        let err = store
            .transition(id, Pending, Running, 30, None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("sandbox {id} is running, not pending")
        );
        store
            .transition(id, Running, Destroyed, 40, Some("asked"))
            .unwrap();

        // Reopening the file gives the same history: it is on disk, not in memory.
        drop(store);
        let store = Store::open(&dir.path().join("caged.db")).unwrap();
        let record = store.sandbox("acc1", id).unwrap().unwrap();
        assert_eq!(record.state, Destroyed);
        assert_eq!(record.destroyed_reason.as_deref(), Some("asked"));
        let states: Vec<_> = record
            .transitions
            .iter()
            .map(|t| (t.state, t.at_ms))
            .collect();
        assert_eq!(states, vec![(Pending, 10), (Running, 20), (Destroyed, 40)]);
        assert!(store.sandbox("someone-else", id).unwrap().is_none());
        assert!(store.live_sandboxes().unwrap().is_empty());
    }

    #[test]
    fn account_names_are_unique() {
        let (_dir, store) = store();
        store.create_account("a", "alice", false, 1).unwrap();
        let err = store.create_account("b", "alice", false, 2).unwrap_err();
        assert_eq!(err.to_string(), "an account named \"alice\" already exists");
    }
}

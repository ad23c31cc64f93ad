//! Observation from the host side and the trust scores made from it.
//!
//! [`tracker`] runs on its own thread and turns the kernel's process, file and open events into
//! attributed observations; [`consume`] writes them to the event log in batches (`process`,
//! `fs`, `file_open` events) and charges each session's [`Ledger`] under the trust policy. The
//! network layer's own events (`network`) reach it as they are written and are charged the same
//! way, to the sessions open when they happened.
//!
//! A sandbox's score is its worst: the lowest of its sessions' scores and of the activity outside
//! any session (API execs, its own processes), each 100 minus what it was charged.

pub(crate) mod tracker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caged_domain::SandboxId;
use caged_store::{NewEvent, NewPenalty};
use caged_trust::{Ledger, Observation, Policy, Rule};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::AppState;
use tracker::{Attribution, Command, Observed, Out, Stats, Tracker};

/// Most observations written in one transaction.
const BATCH: usize = 5000;
/// Longest an observation waits for its batch to fill.
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// File changes listed by path in one `fs` event (the rest are counted).
const FS_SAMPLE: usize = 20;
/// A ledger unused this long is dropped (rebuilt from the database if needed again).
const LEDGER_IDLE: Duration = Duration::from_secs(600);

pub(crate) struct Observer {
    pub policy: Arc<Policy>,
    enabled: bool,
    commands: Arc<tracker::Commands>,
    stats: Arc<Mutex<Stats>>,
    out: UnboundedSender<Out>,
    incoming: Mutex<Option<UnboundedReceiver<Out>>>,
    /// Why observation is not running, when it is not.
    unavailable: Mutex<Option<String>>,
}

impl Observer {
    pub(crate) fn new(policy: Policy, enabled: bool) -> Observer {
        let (out, incoming) = tokio::sync::mpsc::unbounded_channel();
        Observer {
            policy: Arc::new(policy),
            enabled,
            commands: Arc::new(tracker::Commands::new()),
            stats: Arc::default(),
            out,
            incoming: Mutex::new(Some(incoming)),
            unavailable: Mutex::new((!enabled).then(|| "turned off (--observe off)".to_string())),
        }
    }

    fn command(&self, command: Command) {
        self.commands.push(command);
    }

    /// The command whose first process is `pid` belongs to `session` (or to none).
    pub(crate) fn bind(&self, pid: i32, session: Option<String>) {
        if self.enabled {
            self.command(Command::Bind { pid, session });
        }
    }

    /// Starts watching a sandbox that just started (its sensitive files, before any process of
    /// its can open them). Sandboxes are also picked up when first seen, and every few seconds.
    pub(crate) fn watch(&self, record: &caged_store::SandboxRecord) {
        if let Some(container) = &record.container_id
            && self.enabled
        {
            self.command(Command::Watch(container.clone()));
        }
    }

    /// Waits until what the host saw before now is recorded and scored (at most `limit`).
    pub(crate) async fn settle(&self, limit: Duration) {
        if !self.enabled
            || self
                .unavailable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
        {
            return;
        }
        let (done, waiting) = tokio::sync::oneshot::channel();
        self.command(Command::Settle(done));
        let _ = tokio::time::timeout(limit, waiting).await;
    }

    /// For `caged system`: whether observation runs, and its counters.
    pub(crate) fn status(&self) -> Value {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let unavailable = self
            .unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "enabled": unavailable.is_none(),
            "detail": unavailable.unwrap_or_else(|| "process events, file changes and sensitive opens, from the host".into()),
            "processes": stats.processes,
            "unread_processes": stats.unread_processes,
            "file_events": stats.file_events,
            "lost": stats.lost,
        })
    }
}

impl caged_netpolicy::Watcher for Observer {
    fn network_event(&self, event: &caged_store::Event) {
        // Charged by the recorder, in order with what the kernel reported before it.
        let _ = self.out.send(Out::Network(event.clone()));
    }
}

/// Starts the observer thread and the task that records and scores what it sees.
pub(crate) fn run(state: Arc<AppState>, tasks: &crate::tasks::Tasks) {
    let observer = &state.observer;
    let Some(incoming) = observer
        .incoming
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    tasks.spawn("observe.record", consume(state.clone(), incoming));
    if !observer.enabled {
        return;
    }
    use caged_observe::connector::{EVENTS_EXEC, EVENTS_FORK_EXIT, ProcConnector};
    let connectors = ProcConnector::open(EVENTS_EXEC)
        .and_then(|execs| Ok((execs, ProcConnector::open(EVENTS_FORK_EXIT)?)));
    let (execs, lineage) = match connectors {
        Ok(connectors) => connectors,
        Err(err) => {
            let why = format!("cannot subscribe to the kernel's process events: {err}");
            tracing::warn!("observation off: {why}");
            *observer
                .unavailable
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(why);
            return;
        }
    };
    let sensitive = observer
        .policy
        .sensitive_files
        .iter()
        .map(|file| (file.path.clone(), file.named))
        .collect();
    let tracker = Tracker::new(
        state.db.blocking(),
        observer.out.clone(),
        observer.commands.clone(),
        observer.stats.clone(),
        sensitive,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("caged-observer".into())
        .spawn(move || tracker.run(execs, lineage, thread_stop));
    if let Err(err) = spawned {
        tracing::error!("cannot start the observer thread: {err}");
        return;
    }
    // Tell the tracker where sandboxes' files are once the engine says, and stop it at shutdown.
    let state = state.clone();
    tasks.spawn("observe.follow_engine", async move {
        let mut engine = state.engine.subscribe();
        loop {
            let filesystems = match &*engine.borrow_and_update() {
                crate::EngineStatus::Up(info) => info.sandbox_filesystems.clone(),
                _ => None,
            };
            if let Some(path) = filesystems {
                state.observer.command(Command::Filesystems(path));
            }
            tokio::select! {
                changed = engine.changed() => if changed.is_err() { break },
                () = state.stop.cancelled() => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// A sandbox's trust: its worst session (or its activity outside sessions), and why.
pub(crate) async fn sandbox_trust(state: &AppState, id: SandboxId) -> crate::error::Result<Value> {
    let charged = state
        .db
        .run(move |store| store.charged_by_session(id))
        .await?;
    let worst = charged.iter().map(|c| c.points).max().unwrap_or(0);
    let score = caged_trust::score(worst);
    Ok(json!({
        "score": score,
        "rating": caged_trust::Rating::of(score).as_str(),
        "charged": charged.iter().map(|c| json!({
            "session_id": c.session_id,
            "score": caged_trust::score(c.points),
        })).collect::<Vec<_>>(),
    }))
}

/// A session's score, rating and penalties with their evidence.
pub(crate) async fn session_trust(
    state: &AppState,
    account: &str,
    session: &str,
) -> crate::error::Result<Value> {
    let (account, session) = (account.to_string(), session.to_string());
    let penalties = state
        .db
        .run(move |store| store.session_penalties(&account, &session))
        .await?;
    let points: u64 = penalties.iter().map(|p| u64::from(p.points)).sum();
    let score = caged_trust::score(points);
    Ok(json!({
        "score": score,
        "rating": caged_trust::Rating::of(score).as_str(),
        "penalties": penalties.iter().map(|p| json!({
            "rule": p.rule,
            "key": p.key,
            "points": p.points,
            "reason": p.reason,
            "evidence": p.evidence,
            "event_seq": p.event_seq,
            "at": caged_domain::time::rfc3339_from_ms(p.at_ms),
        })).collect::<Vec<_>>(),
    }))
}

/// One observation on its way to the log, with the sessions it is charged to.
struct Item {
    observed: Observed,
    sessions: Vec<Option<String>>,
    /// Index of its event in the batch.
    event: usize,
}

#[derive(Default)]
struct Ledgers {
    open: HashMap<(SandboxId, Option<String>), (Ledger, Instant)>,
}

async fn consume(state: Arc<AppState>, mut incoming: UnboundedReceiver<Out>) {
    let mut ledgers = Ledgers::default();
    let mut last_prune = Instant::now();
    loop {
        let mut batch = Vec::new();
        let mut settled = Vec::new();
        let mut network = Vec::new();
        tokio::select! {
            first = incoming.recv() => match first {
                Some(first) => take(first, &mut batch, &mut settled, &mut network),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = state.stop.cancelled() => break,
        }
        if !batch.is_empty() || !settled.is_empty() || !network.is_empty() {
            // Let the batch fill without being woken for each item (a wake per process would
            // cost more than the rest of the work on it), unless someone waits for it.
            if settled.is_empty() {
                tokio::time::sleep(BATCH_WAIT).await;
            }
            while batch.len() < BATCH {
                match incoming.try_recv() {
                    Ok(next) => take(next, &mut batch, &mut settled, &mut network),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                record(&state, &mut ledgers, batch).await;
            }
            charge_network(&state, &mut ledgers, network).await;
            settled.into_iter().for_each(|done| {
                let _ = done.send(());
            });
        }
        if last_prune.elapsed() >= Duration::from_secs(1) {
            last_prune = Instant::now();
            ledgers
                .open
                .retain(|_, (_, used)| used.elapsed() < LEDGER_IDLE);
        }
    }
}

fn take(
    out: Out,
    batch: &mut Vec<Observed>,
    settled: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    network: &mut Vec<caged_store::Event>,
) {
    match out {
        Out::Observed(observed) => batch.push(observed),
        Out::Settled(done) => settled.push(done),
        Out::Network(event) => network.push(event),
    }
}

/// The sessions an observation is charged to.
async fn sessions_of(
    state: &AppState,
    sandbox: SandboxId,
    attribution: &Attribution,
    at_ms: i64,
    cache: &mut HashMap<SandboxId, Vec<Option<String>>>,
) -> Vec<Option<String>> {
    match attribution {
        Attribution::Session(session) => vec![session.clone()],
        Attribution::OpenSessions { grace_ms } => {
            let grace_ms = *grace_ms;
            if let Some(open) = cache.get(&sandbox) {
                return open.clone();
            }
            let open = state
                .db
                .run(move |store| store.sessions_open_at(sandbox, at_ms, grace_ms))
                .await
                .unwrap_or_default();
            let open: Vec<Option<String>> = if open.is_empty() {
                vec![None]
            } else {
                open.into_iter().map(Some).collect()
            };
            cache.insert(sandbox, open.clone());
            open
        }
    }
}

async fn record(state: &AppState, ledgers: &mut Ledgers, batch: Vec<Observed>) {
    let mut open_cache = HashMap::new();
    let mut items = Vec::with_capacity(batch.len());
    let mut events: Vec<NewEvent> = Vec::new();
    // File changes become one `fs` event per sandbox and session in a batch.
    let mut fs_events: HashMap<(SandboxId, Option<String>), usize> = HashMap::new();
    for observed in batch {
        let sessions = sessions_of(
            state,
            observed.sandbox,
            &observed.attribution,
            observed.at_ms,
            &mut open_cache,
        )
        .await;
        let session = match sessions.as_slice() {
            [only] => only.clone(),
            _ => None,
        };
        let event = if observed.kind == "fs" {
            let key = (observed.sandbox, session.clone());
            let index = *fs_events.entry(key).or_insert_with(|| {
                events.push(NewEvent {
                    sandbox_id: observed.sandbox,
                    account_id: observed.account.clone(),
                    session_id: session.clone(),
                    at_ms: observed.at_ms,
                    kind: "fs",
                    payload: json!({ "created": 0, "written": 0, "deleted": 0, "moved": 0, "paths": [] }),
                });
                events.len() - 1
            });
            fold_fs(&mut events[index].payload, &observed.payload);
            index
        } else {
            events.push(NewEvent {
                sandbox_id: observed.sandbox,
                account_id: observed.account.clone(),
                session_id: session,
                at_ms: observed.at_ms,
                kind: observed.kind,
                payload: observed.payload.clone(),
            });
            events.len() - 1
        };
        items.push(Item {
            observed,
            sessions,
            event,
        });
    }
    let written = match state
        .db
        .run(move |store| store.record_events(&events))
        .await
    {
        Ok(written) => written,
        Err(err) => {
            tracing::error!("could not record observations: {err}");
            return;
        }
    };
    for event in &written {
        state.db.publish(event.clone());
    }
    for item in items {
        let Some(observation) = &item.observed.observation else {
            continue;
        };
        let seq = written.get(item.event).map(|event| event.seq);
        for session in item.sessions {
            charge(
                state,
                ledgers,
                item.observed.sandbox,
                &item.observed.account,
                session,
                observation,
                seq,
                item.observed.at_ms,
            )
            .await;
        }
    }
}

/// Adds one file change to an aggregated `fs` event.
fn fold_fs(payload: &mut Value, change: &Value) {
    let counter = match change["change"].as_str() {
        Some("created") => "created",
        Some("written") => "written",
        Some("deleted") => "deleted",
        _ => "moved",
    };
    if let Some(count) = payload[counter].as_u64() {
        payload[counter] = json!(count + 1);
    }
    if let Some(paths) = payload["paths"].as_array_mut()
        && paths.len() < FS_SAMPLE
    {
        paths.push(
            json!({ "change": change["change"], "path": change["path"], "pid": change["pid"] }),
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn charge(
    state: &AppState,
    ledgers: &mut Ledgers,
    sandbox: SandboxId,
    account: &str,
    session: Option<String>,
    observation: &Observation,
    seq: Option<i64>,
    at_ms: i64,
) {
    let key = (sandbox, session.clone());
    if !ledgers.open.contains_key(&key) {
        let session_id = session.clone();
        let charged = state
            .db
            .run(move |store| store.charged_keys(sandbox, session_id.as_deref()))
            .await
            .unwrap_or_default();
        let ledger = Ledger::with_charged(
            charged
                .into_iter()
                .filter_map(|(rule, key, points)| Some((Rule::parse(&rule)?, key, points))),
        );
        ledgers.open.insert(key.clone(), (ledger, Instant::now()));
    }
    let Some((ledger, used)) = ledgers.open.get_mut(&key) else {
        return;
    };
    *used = Instant::now();
    let penalties = ledger.observe(&state.observer.policy, account, observation);
    for penalty in penalties {
        let mut evidence = penalty.evidence.clone();
        if let (Some(seq), Some(map)) = (seq, evidence.as_object_mut()) {
            map.insert("event".into(), json!(seq));
        }
        let (account, session) = (account.to_string(), session.clone());
        let recorded = state
            .db
            .run(move |store| {
                store.charge_penalty(NewPenalty {
                    sandbox_id: sandbox,
                    account_id: &account,
                    session_id: session.as_deref(),
                    rule: penalty.rule.as_str(),
                    key: &penalty.key,
                    points: penalty.points,
                    reason: &penalty.reason,
                    evidence: &evidence,
                    at_ms,
                })
            })
            .await;
        match recorded {
            Ok(events) => events.into_iter().for_each(|event| state.db.publish(event)),
            Err(err) => tracing::error!("could not record a penalty: {err}"),
        }
    }
}

/// Charges the network layer's events, as they were written.
async fn charge_network(state: &AppState, ledgers: &mut Ledgers, events: Vec<caged_store::Event>) {
    let mut open_cache = HashMap::new();
    for event in events {
        let Some(observation) = network_observation(&event.payload) else {
            continue;
        };
        open_cache.clear();
        let sessions = sessions_of(
            state,
            event.sandbox_id,
            // The network layer stamps its events when they happen.
            &Attribution::OpenSessions { grace_ms: 0 },
            event.at_ms,
            &mut open_cache,
        )
        .await;
        for session in sessions {
            charge(
                state,
                ledgers,
                event.sandbox_id,
                &event.account_id,
                session,
                &observation,
                Some(event.seq),
                event.at_ms,
            )
            .await;
        }
    }
}

/// What a `network` event means for trust: a refusal, or (`full` mode, seen by the firewall) a
/// connection made. Allowlist connections went to hosts the user allowed and cost nothing.
fn network_observation(payload: &Value) -> Option<Observation> {
    let action = payload["action"].as_str()?;
    let host = payload["host"]
        .as_str()
        .or_else(|| payload["name"].as_str())
        .or_else(|| payload["address"].as_str())?
        .to_string();
    let denied = match action {
        "blocked" => true,
        // A name outside the allowlist; other refused query types are not hosts reached for.
        "dns_refused" if payload["reason"].as_str() == Some("not in allowed_hosts") => true,
        "connect" if payload["by"].as_str() == Some("firewall") => false,
        "traffic" => false,
        _ => return None,
    };
    Some(Observation::Network {
        host,
        denied,
        rule: payload["reason"].as_str().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_events_map_to_observations() {
        let blocked = json!({"action": "blocked", "host": "evil.test", "by": "egress proxy", "reason": "not allowed"});
        assert!(matches!(
            network_observation(&blocked),
            Some(Observation::Network { denied: true, .. })
        ));
        let full = json!({"action": "connect", "host": "pypi.org", "by": "firewall"});
        assert!(matches!(
            network_observation(&full),
            Some(Observation::Network { denied: false, .. })
        ));
        let allowlisted = json!({"action": "connect", "host": "pypi.org", "by": "egress proxy"});
        assert_eq!(network_observation(&allowlisted), None);
        let unnamed = json!({"action": "traffic", "host": null, "address": "203.0.113.20"});
        assert!(matches!(
            network_observation(&unnamed),
            Some(Observation::Network { ref host, denied: false, .. }) if host == "203.0.113.20"
        ));
        assert_eq!(network_observation(&json!({"action": "closed"})), None);
    }
}

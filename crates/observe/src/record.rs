//! The recorder: what the tracker saw (and the network's events) written to the event log in
//! batches, and charged to each session's ledger under the trust policy. A penalty is stored
//! once per (sandbox, session, rule, key); the store's unique index refuses a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use caged_domain::event::{FileChange, FileSeen, NetworkAction, Seen};
use caged_domain::{EventKind, SandboxId};
use caged_store::{NewEvent, NewPenalty};
use caged_trust::{Ledger, Observation, Rule};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::Observer;
use crate::tracker::{Attribution, Observed, Out};

/// Most observations written in one transaction.
const BATCH: usize = 5000;
/// Longest an observation waits for its batch to fill.
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// File changes listed by path in one `fs` event (the rest are counted).
const FS_SAMPLE: usize = 20;
/// A ledger unused this long is dropped (rebuilt from the database if needed again).
const LEDGER_IDLE: Duration = Duration::from_secs(600);

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

pub(crate) async fn run(
    state: &Observer,
    mut incoming: UnboundedReceiver<Out>,
    stop: CancellationToken,
) {
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
            () = stop.cancelled() => break,
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
                record(state, &mut ledgers, batch).await;
            }
            charge_network(state, &mut ledgers, network).await;
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
    network: &mut Vec<(caged_store::Event, NetworkAction)>,
) {
    match out {
        Out::Observed(observed) => batch.push(observed),
        Out::Settled(done) => settled.push(done),
        Out::Network(event, what) => network.push((event, what)),
    }
}

/// The sessions an observation is charged to.
async fn sessions_of(
    state: &Observer,
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

async fn record(state: &Observer, ledgers: &mut Ledgers, batch: Vec<Observed>) {
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
        let event = if let Seen::File(file) = &observed.seen {
            let key = (observed.sandbox, session.clone());
            let index = *fs_events.entry(key).or_insert_with(|| {
                events.push(NewEvent {
                    sandbox_id: observed.sandbox,
                    account_id: observed.account.clone(),
                    session_id: session.clone(),
                    at_ms: observed.at_ms,
                    kind: EventKind::Fs,
                    payload: json!({ "created": 0, "written": 0, "deleted": 0, "moved": 0, "paths": [] }),
                });
                events.len() - 1
            });
            fold_fs(&mut events[index].payload, file);
            index
        } else {
            events.push(NewEvent {
                sandbox_id: observed.sandbox,
                account_id: observed.account.clone(),
                session_id: session,
                at_ms: observed.at_ms,
                kind: observed.seen.kind(),
                payload: observed.seen.payload(),
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
        let Some(observation) = Observation::of_seen(&item.observed.seen) else {
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
                &observation,
                seq,
                item.observed.at_ms,
            )
            .await;
        }
    }
}

/// Adds one file change to an aggregated `fs` event.
fn fold_fs(payload: &mut Value, change: &FileSeen) {
    let counter = match change.change {
        FileChange::Created => "created",
        FileChange::Written => "written",
        FileChange::Deleted => "deleted",
        FileChange::MovedFrom | FileChange::MovedTo => "moved",
    };
    if let Some(count) = payload[counter].as_u64() {
        payload[counter] = json!(count + 1);
    }
    if let Some(paths) = payload["paths"].as_array_mut()
        && paths.len() < FS_SAMPLE
    {
        paths.push(json!({ "change": change.change, "path": change.path, "pid": change.pid }));
    }
}

#[allow(clippy::too_many_arguments)]
async fn charge(
    state: &Observer,
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
    let penalties = ledger.observe(&state.policy, account, observation);
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
async fn charge_network(
    state: &Observer,
    ledgers: &mut Ledgers,
    events: Vec<(caged_store::Event, NetworkAction)>,
) {
    let mut open_cache = HashMap::new();
    for (event, what) in events {
        let Some(observation) = Observation::of_network(&what) else {
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

//! Watching sandboxes from the host, where nothing inside them can reach, and the trust scores
//! made from what is seen.
//!
//! - [`kernel`]: the readers: the kernel's process connector (every fork, exec and exit),
//!   fanotify (every file created, written, moved or deleted; opens of sensitive files), and
//!   `/proc` facts about a process while it lives.
//! - `tracker`: a thread of its own that turns the kernel's reports into observations, each
//!   attributed to a sandbox (by cgroup, by the root filesystem a path is in) and a session (by
//!   the process tree).
//! - `record`: writes them to the event log in batches (`process`, `fs`, `file_open` events)
//!   and charges each session's ledger under the trust policy. The network layer's own events
//!   (`network`) reach it as they are written ([`Observer::network_event`]) and are charged the
//!   same way, to the sessions open when they happened.
//!
//! A sandbox's score is its worst: the lowest of its sessions' scores and of the activity outside
//! any session (API execs, its own processes), each 100 minus what it was charged.

pub mod kernel;
mod record;
mod tracker;

use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use caged_domain::event::NetworkAction;
use caged_runtime::HostView;
use caged_store::Db;
use caged_trust::Policy;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use tracker::{Command, Out, Stats, Tracker};

pub use tracker::names_file;

pub struct Observer {
    policy: Arc<Policy>,
    enabled: bool,
    db: Db,
    commands: Arc<tracker::Commands>,
    stats: Arc<Mutex<Stats>>,
    out: UnboundedSender<Out>,
    incoming: Mutex<Option<UnboundedReceiver<Out>>>,
    /// Why observation is not running, when it is not.
    unavailable: Mutex<Option<String>>,
}

/// For `caged system`: whether observation runs, and its counters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub enabled: bool,
    pub detail: String,
    pub processes: u64,
    pub unread_processes: u64,
    pub file_events: u64,
    pub lost: u64,
}

impl Observer {
    /// `enabled: false` is `--observe off`: nothing is watched (network events are still
    /// charged).
    pub fn new(policy: Policy, enabled: bool, db: Db) -> Observer {
        let (out, incoming) = tokio::sync::mpsc::unbounded_channel();
        Observer {
            policy: Arc::new(policy),
            enabled,
            db,
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
    pub fn bind(&self, pid: i32, session: Option<String>) {
        if self.enabled {
            self.command(Command::Bind { pid, session });
        }
    }

    /// Starts watching a sandbox that just started (its sensitive files, before any process of
    /// its can open them). Sandboxes are also picked up when first seen, and every few seconds.
    pub fn watch(&self, record: &caged_store::SandboxRecord) {
        if let Some(container) = &record.container_id
            && self.enabled
        {
            self.command(Command::Watch(container.clone()));
        }
    }

    /// Waits until what the host saw before now is recorded and scored (at most `limit`).
    pub async fn settle(&self, limit: Duration) {
        if !self.enabled || self.unavailable.lock().is_some() {
            return;
        }
        let (done, waiting) = tokio::sync::oneshot::channel();
        self.command(Command::Settle(done));
        let _ = tokio::time::timeout(limit, waiting).await;
    }

    /// For `caged system`: whether observation runs, and its counters.
    pub fn status(&self) -> Status {
        let stats = self.stats.lock().clone();
        let unavailable = self.unavailable.lock().clone();
        Status {
            enabled: unavailable.is_none(),
            detail: unavailable.unwrap_or_else(|| {
                "process events, file changes and sensitive opens, from the host".into()
            }),
            processes: stats.processes,
            unread_processes: stats.unread_processes,
            file_events: stats.file_events,
            lost: stats.lost,
        }
    }

    /// Where sandboxes' files are, as the runtime says once its engine answers (`None`: the
    /// host cannot see them; file observation waits for a view).
    pub fn files(&self, view: Option<Arc<dyn HostView>>) {
        if let Some(view) = view
            && self.enabled
        {
            self.command(Command::Files(view));
        }
    }

    /// A `network` event the network layer wrote; charged to the sessions open when it
    /// happened, in order with what the kernel reported before it.
    pub fn network_event(&self, event: &caged_store::Event, what: &NetworkAction) {
        let _ = self.out.send(Out::Network(event.clone(), what.clone()));
    }

    /// Starts the tracker thread (when enabled and the kernel lets it) and returns the task
    /// that records and scores what it sees, to run until `stop`. The thread ends with it.
    pub fn start(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let incoming = self.incoming.lock().take();
        if incoming.is_some() && self.enabled {
            self.start_tracker();
        }
        let observer = self.clone();
        async move {
            if let Some(incoming) = incoming {
                record::run(&observer, incoming, stop).await;
            }
        }
    }

    fn start_tracker(&self) {
        let observer = self;
        use kernel::connector::{EVENTS_EXEC, EVENTS_FORK_EXIT, ProcConnector};
        let connectors = ProcConnector::open(EVENTS_EXEC)
            .and_then(|execs| Ok((execs, ProcConnector::open(EVENTS_FORK_EXIT)?)));
        let (execs, lineage) = match connectors {
            Ok(connectors) => connectors,
            Err(err) => {
                let why = format!("cannot subscribe to the kernel's process events: {err}");
                tracing::warn!("observation off: {why}");
                *observer.unavailable.lock() = Some(why);
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
            self.db.blocking(),
            observer.out.clone(),
            observer.commands.clone(),
            observer.stats.clone(),
            sensitive,
        );
        let spawned = std::thread::Builder::new()
            .name("caged-observer".into())
            .spawn(move || tracker.run(execs, lineage, Arc::new(AtomicBool::new(false))));
        if let Err(err) = spawned {
            tracing::error!("cannot start the observer thread: {err}");
        }
    }
}

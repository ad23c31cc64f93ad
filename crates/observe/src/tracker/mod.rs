//! The observer thread: reads the kernel's process events and fanotify's file and open events,
//! attributes each to a sandbox (by cgroup, by the subvolume a path is in) and a session (by the
//! process tree: a process belongs to the session whose command it descends from, recorded at
//! fork time, so reparenting or daemonizing does not shake it off), and hands
//! [`Observed`] items to the async side.
//!
//! It runs on its own OS thread and never waits on the async runtime: falling behind the kernel
//! is what loses events.

mod files;
mod lineage;
mod programs;

pub use programs::names_file;

use caged_domain::event::{NetworkAction, Seen};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caged_domain::{Isolation, SandboxId};
use caged_runtime::HostView;

use crate::kernel::connector::{ProcConnector, ProcEvent};
use crate::kernel::fanotify::{FsWatch, OpenWatch};
use crate::kernel::{self, procfs};
use caged_store::Store;

/// How long a new command's processes wait for the API to say which session it is.
const BIND_WAIT: Duration = Duration::from_secs(3);
/// How long a foreign container (not a sandbox of ours) is remembered as such.
const FOREIGN_TTL: Duration = Duration::from_secs(1);
/// How long after it happened something is read, at most (file changes wait for their batch).
const READ_LAG_MS: i64 = 500;
/// How often queued file changes are read.
const FS_BATCH: Duration = Duration::from_millis(25);
/// How long an ended process is remembered, for file events read after its exit.
const EXITED_MEMORY: Duration = Duration::from_secs(5);
/// How long a downloader's output pipe is remembered after it exits (a shell can start late).
const PIPE_MEMORY: Duration = Duration::from_secs(10);

/// Whose an observation is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attribution {
    /// A process of this session's command (or of no session: `None`).
    Session(Option<String>),
    /// The writer is the sandbox's but not a process the host can place (gVisor's file proxy,
    /// a process that exited before it was read): the sessions open at the time, or that ended
    /// at most `grace_ms` before (it is read a moment after it happened).
    OpenSessions { grace_ms: i64 },
}

/// One thing seen, attributed.
#[derive(Debug)]
pub(crate) struct Observed {
    pub sandbox: SandboxId,
    pub account: String,
    pub attribution: Attribution,
    pub at_ms: i64,
    /// What it was; its event and its trust observation both come from this.
    pub seen: Seen,
}

/// Commands from the async side.
pub(crate) enum Command {
    /// The command whose first process is `pid` belongs to this session (or none).
    Bind { pid: i32, session: Option<String> },
    /// Where sandboxes' root filesystems are, once the engine answers.
    Files(Arc<dyn HostView>),
    /// A sandbox's container started: watch it now.
    Watch(String),
    /// Answer once everything the kernel reported before now has been handed on.
    Settle(tokio::sync::oneshot::Sender<()>),
}

/// What the tracker hands to the async side.
pub(crate) enum Out {
    Observed(Observed),
    /// Everything before this has been sent; answer once it is recorded and scored.
    Settled(tokio::sync::oneshot::Sender<()>),
    /// A `network` event the network layer wrote (not the tracker's own), and what it says.
    Network(caged_store::Event, NetworkAction),
}

/// Commands from the async side, and the eventfd that wakes the tracker for them.
pub(crate) struct Commands {
    queue: Mutex<Vec<Command>>,
    waker: Option<kernel::Waker>,
}

impl Commands {
    pub(crate) fn new() -> Commands {
        Commands {
            queue: Mutex::new(Vec::new()),
            waker: kernel::Waker::new().ok(),
        }
    }

    pub(crate) fn push(&self, command: Command) {
        self.queue.lock().push(command);
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }

    fn take(&self) -> Vec<Command> {
        if let Some(waker) = &self.waker {
            waker.drain();
        }
        std::mem::take(&mut *self.queue.lock())
    }
}

/// Counters for `caged system` and the benchmark.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Stats {
    pub processes: u64,
    /// Processes that ended before their command line could be read.
    pub unread_processes: u64,
    pub file_events: u64,
    /// Times the kernel dropped events because this reader fell behind.
    pub lost: u64,
}

/// A sandbox being watched.
struct Watched {
    sandbox: SandboxId,
    account: String,
    container: String,
    isolation: Isolation,
    /// Its root filesystem on the host, opened, for resolving paths safely inside it.
    root: Option<File>,
    /// Content digests of the programs at their usual paths in this sandbox.
    programs: Mutex<Option<HashMap<[u8; 32], &'static str>>>,
}

struct Proc {
    watched: Arc<Watched>,
    /// The process it was forked from (`None` for a command's first process).
    parent: Option<i32>,
    /// When it ended (kept a little longer for file events read after that).
    exited: Option<Instant>,
    /// The first process of the command it descends from.
    root: i32,
    argv: Vec<String>,
    program: String,
    cwd: String,
    package_manager: bool,
}

/// Observations of one command waiting for the API to say which session it is.
struct Pending {
    until: Instant,
    observed: Vec<Observed>,
}

pub(crate) struct Tracker {
    store: Arc<Store>,
    out: tokio::sync::mpsc::UnboundedSender<Out>,
    commands: Arc<Commands>,
    stats: Arc<Mutex<Stats>>,
    /// Our own mount namespace: a process in a sandbox's cgroup that is still in it is the
    /// runtime's helper on its way in, not the sandbox's.
    host_mnt_ns: Option<u64>,
    /// Where sandboxes' files are, once the runtime says.
    view: Option<Arc<dyn HostView>>,
    containers: HashMap<String, (Option<Arc<Watched>>, Instant)>,
    mounts: HashMap<String, (Option<Arc<Watched>>, Instant)>,
    procs: HashMap<i32, Proc>,
    /// Command roots: their session, once the API said, and when they started.
    roots: HashMap<i32, (Option<Option<String>>, Instant)>,
    pending: HashMap<i32, Pending>,
    /// Downloaders' stdout pipes and shells' stdin pipes, for `curl | sh`.
    downloader_pipes: HashMap<u64, (i32, Vec<String>, Instant)>,
    shell_pipes: HashMap<u64, (i32, Vec<String>, Instant)>,
    /// (dev, ino) of watched sensitive files → the sandbox and the path.
    sensitive: HashMap<(u64, u64), (Arc<Watched>, String)>,
    sensitive_paths: Vec<(String, bool)>,
    digests: HashMap<(u64, u64, u64, i64), Option<&'static str>>,
    fs: Option<FsWatch>,
    opens: Option<OpenWatch>,
}

impl Tracker {
    pub(crate) fn new(
        store: Arc<Store>,
        out: tokio::sync::mpsc::UnboundedSender<Out>,
        commands: Arc<Commands>,
        stats: Arc<Mutex<Stats>>,
        sensitive_paths: Vec<(String, bool)>,
    ) -> Tracker {
        Tracker {
            store,
            out,
            commands,
            stats,
            host_mnt_ns: procfs::mount_ns(std::process::id() as i32),
            view: None,
            containers: HashMap::new(),
            mounts: HashMap::new(),
            procs: HashMap::new(),
            roots: HashMap::new(),
            pending: HashMap::new(),
            downloader_pipes: HashMap::new(),
            shell_pipes: HashMap::new(),
            sensitive: HashMap::new(),
            sensitive_paths,
            digests: HashMap::new(),
            fs: None,
            opens: OpenWatch::new()
                .map_err(|err| tracing::warn!("cannot watch sensitive files: {err}"))
                .ok(),
        }
    }

    /// Runs until `stop` is set. `execs` delivers process starts (waited on: each is read at
    /// once), `lineage` forks and exits (read whenever the thread wakes, before the starts).
    pub(crate) fn run(
        mut self,
        mut execs: ProcConnector,
        mut lineage: ProcConnector,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        // A process that lives a millisecond must still be read: run before the sandboxes'
        // processes when the kernel has news (this thread sleeps in poll otherwise, and the
        // kernel caps real-time threads' share of a CPU).
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sets this thread's own scheduling; the parameter is a valid sched_param.
        let rc =
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
        if rc != 0 {
            tracing::info!(
                "observer runs at normal priority (real-time refused: error {rc}); short-lived processes may be seen without their command lines"
            );
        }
        let mut proc_events = Vec::new();
        let mut fs_events = Vec::new();
        let mut opens_held = Vec::new();
        let mut last_sweep = Instant::now();
        let mut last_fs_drain = Instant::now();
        // Ends with the server: at shutdown, or when the task it feeds is gone (its runtime
        // was dropped without a shutdown).
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && !self.out.is_closed() {
            let settles = self.take_commands();
            // Processes and sensitive opens are read the moment they happen (a process may live
            // a millisecond); file changes wait in the kernel's queue and are read in batches,
            // so a busy writer is not interrupted for each file.
            let fs_wait = if settles.is_empty() {
                FS_BATCH.saturating_sub(last_fs_drain.elapsed())
            } else {
                Duration::ZERO
            };
            let commands = self.commands.clone();
            let mut fds = vec![execs.as_fd()];
            if let Some(opens) = &self.opens {
                fds.push(opens.as_fd());
            }
            if let Some(waker) = &commands.waker {
                fds.push(waker.as_fd());
            }
            if let Some(fs) = &self.fs
                && fs_wait.is_zero()
            {
                fds.push(fs.as_fd());
            }
            let mut timeout = if self.pending.is_empty() { 200 } else { 50 };
            if !fs_wait.is_zero() {
                timeout = timeout.min(fs_wait.as_millis() as i32 + 1);
            }
            if !settles.is_empty() {
                timeout = 0; // someone waits: read what is queued and answer
            }
            let ready = match kernel::poll_readable(&fds, timeout) {
                Ok(ready) => ready,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    vec![true; fds.len()]
                }
            };
            // Sensitive opens are second in the set when watched; read them only when there are
            // some (each read is a syscall on the path of every process start).
            let opens_ready = self.opens.is_some() && ready.get(1).copied().unwrap_or(false);
            drop(fds);
            // Processes first (a file event's writer is then already known), forks before
            // starts (a child's fork happened before its exec).
            self.read_processes(&mut lineage, &mut execs, &mut proc_events);
            if fs_wait.is_zero()
                && let Some(mut fs) = self.fs.take()
            {
                loop {
                    match fs.read(&mut fs_events) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(err) => {
                            tracing::warn!("reading file events: {err}");
                            std::thread::sleep(Duration::from_millis(100));
                            break;
                        }
                    }
                    // Between buffers, anything that started meanwhile is read first.
                    self.read_processes(&mut lineage, &mut execs, &mut proc_events);
                    for event in fs_events.drain(..) {
                        self.on_fs_event(event);
                    }
                }
                self.fs = Some(fs);
                last_fs_drain = Instant::now();
            }
            if opens_ready && let Some(mut opens) = self.opens.take() {
                if let Ok(overflows) = opens.read(&mut opens_held)
                    && overflows > 0
                {
                    self.stat(|s| s.lost += overflows as u64);
                }
                self.opens = Some(opens);
                for opened in opens_held.drain(..) {
                    self.on_open(opened);
                }
            }
            self.flush_pending(false);
            for settle in settles {
                let _ = self.out.send(Out::Settled(settle));
            }
            if last_sweep.elapsed() > Duration::from_secs(2) {
                self.sweep();
                last_sweep = Instant::now();
            }
        }
        self.flush_pending(true);
    }

    /// Reads process starts, then forks and exits, and applies them forks first. In that order,
    /// every start read has its fork read too (the kernel queued the fork before the start),
    /// even when it happened while the starts were being read.
    fn read_processes(
        &mut self,
        lineage: &mut ProcConnector,
        execs: &mut ProcConnector,
        events: &mut Vec<ProcEvent>,
    ) {
        let mut starts = Vec::new();
        for (connector, into) in [(execs, &mut starts), (lineage, &mut *events)] {
            if let Err(err) = connector.read(into) {
                tracing::warn!("reading process events: {err}");
                // Never spin at real-time priority on a broken socket.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for event in events.drain(..).chain(starts) {
            self.on_proc_event(event);
        }
    }

    /// Applies the commands queued; returns the settle requests among them.
    fn take_commands(&mut self) -> Vec<tokio::sync::oneshot::Sender<()>> {
        let commands = self.commands.take();
        let mut settles = Vec::new();
        for command in commands {
            match command {
                Command::Bind { pid, session } => {
                    let entry = self.roots.entry(pid).or_insert((None, Instant::now()));
                    entry.0 = Some(session);
                }
                Command::Files(view) => self.watch_files(view),
                Command::Settle(done) => settles.push(done),
                Command::Watch(container) => {
                    self.containers.remove(&container);
                    self.watched_container(&container);
                }
            }
        }
        settles
    }

    fn send(&self, observed: Observed) {
        let _ = self.out.send(Out::Observed(observed));
    }

    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock());
    }

    /// Sends an observation of the command rooted at `root`, or holds it until the API says
    /// which session that command is.
    fn attribute(&mut self, root: Option<i32>, mut observed: Observed) {
        let Some(root) = root else {
            // Not placed by a process: its attribution stands as made.
            self.send(observed);
            return;
        };
        match self.roots.get(&root) {
            Some((Some(session), _)) => {
                observed.attribution = Attribution::Session(session.clone());
                self.send(observed);
            }
            Some((None, started)) if started.elapsed() < BIND_WAIT => {
                let until = *started + BIND_WAIT;
                self.pending
                    .entry(root)
                    .or_insert_with(|| Pending {
                        until,
                        observed: Vec::new(),
                    })
                    .observed
                    .push(observed);
            }
            _ => {
                observed.attribution = Attribution::Session(None);
                self.send(observed);
            }
        }
    }

    fn flush_pending(&mut self, all: bool) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let ready: Vec<(i32, Option<Option<String>>)> = self
            .pending
            .iter()
            .filter_map(|(root, pending)| {
                let bound = self
                    .roots
                    .get(root)
                    .and_then(|(session, _)| session.clone());
                (bound.is_some() || all || now >= pending.until).then_some((*root, bound))
            })
            .collect();
        for (root, bound) in ready {
            let Some(pending) = self.pending.remove(&root) else {
                continue;
            };
            let session = bound.flatten();
            for mut observed in pending.observed {
                observed.attribution = Attribution::Session(session.clone());
                self.send(observed);
            }
        }
    }

    /// Drops what is no longer needed: roots without processes, old pipes, foreign caches.
    fn sweep(&mut self) {
        self.procs
            .retain(|_, proc| proc.exited.is_none_or(|at| at.elapsed() < EXITED_MEMORY));
        let live_roots: std::collections::HashSet<i32> = self
            .procs
            .values()
            .filter(|p| p.exited.is_none())
            .map(|p| p.root)
            .collect();
        self.roots.retain(|root, (_, started)| {
            live_roots.contains(root) || started.elapsed() < BIND_WAIT * 4
        });
        self.downloader_pipes
            .retain(|_, (pid, _, at)| at.elapsed() < PIPE_MEMORY || live(*pid));
        self.shell_pipes
            .retain(|_, (pid, _, at)| at.elapsed() < PIPE_MEMORY || live(*pid));
        self.containers
            .retain(|_, (w, at)| w.is_some() || at.elapsed() < FOREIGN_TTL);
        self.mounts
            .retain(|_, (w, at)| w.is_some() || at.elapsed() < FOREIGN_TTL);
        // Sandboxes that are gone: drop what was kept for them.
        let gone: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, (w, _))| {
                w.as_ref().is_some_and(|w| {
                    !matches!(self.store.sandbox_by_container(&w.container), Ok(Some(_)))
                })
            })
            .map(|(c, _)| c.clone())
            .collect();
        for container in gone {
            self.containers.remove(&container);
            self.mounts
                .retain(|_, (w, _)| w.as_ref().is_none_or(|w| w.container != container));
            self.sensitive.retain(|_, (w, _)| w.container != container);
        }
        if self.digests.len() > 10_000 {
            self.digests.clear();
        }
        // Sandboxes started without a word to the tracker (by another path, before the engine
        // answered): picked up here.
        let live = self.store.live_sandboxes().unwrap_or_default();
        for record in live {
            if let Some(container) = record.container_id
                && record.state == caged_domain::SandboxState::Running
                && !self
                    .containers
                    .get(&container)
                    .is_some_and(|(w, _)| w.is_some())
            {
                self.watched_container(&container);
            }
        }
    }
}

fn live(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

//! The observer thread: reads the kernel's process events and fanotify's file and open events,
//! attributes each to a sandbox (by cgroup, by the subvolume a path is in) and a session (by the
//! process tree: a process belongs to the session whose command it descends from, recorded at
//! fork time, so reparenting or daemonizing does not shake it off), and hands
//! [`Observed`] items to the async side.
//!
//! It runs on its own OS thread and never waits on the async runtime: falling behind the kernel
//! is what loses events.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caged_domain::time::now_ms;
use caged_domain::{Isolation, SandboxId};
use caged_observe::connector::{ProcConnector, ProcEvent};
use caged_observe::fanotify::{FsChange, FsEvent, FsWatch, OpenWatch, Opened};
use caged_observe::{procfs, rootfs};
use caged_store::Store;
use caged_trust::programs;
use caged_trust::{FileChange, Observation};
use serde_json::{Value, json};

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
/// Directories whose programs are the system's own names for them.
const CANONICAL_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];
/// Programs that install packages (what they and their children write is charged as a package).
const PACKAGE_MANAGERS: &[&str] = &[
    "apt", "apt-get", "aptitude", "dpkg", "pip", "pip3", "npm", "pnpm", "yarn", "cargo",
];

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
    /// `process`, `fs` (aggregated by the writer) or `file_open`.
    pub kind: &'static str,
    pub payload: Value,
    pub observation: Option<Observation>,
}

/// Commands from the async side.
pub(crate) enum Command {
    /// The command whose first process is `pid` belongs to this session (or none).
    Bind { pid: i32, session: Option<String> },
    /// The engine's filesystem of sandbox root filesystems, once the engine answers.
    Filesystems(PathBuf),
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
    /// A `network` event the network layer wrote (not the tracker's own).
    Network(caged_store::Event),
}

/// Commands from the async side, and the eventfd that wakes the tracker for them.
pub(crate) struct Commands {
    queue: Mutex<Vec<Command>>,
    waker: Option<caged_observe::Waker>,
}

impl Commands {
    pub(crate) fn new() -> Commands {
        Commands {
            queue: Mutex::new(Vec::new()),
            waker: caged_observe::Waker::new().ok(),
        }
    }

    pub(crate) fn push(&self, command: Command) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command);
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }

    fn take(&self) -> Vec<Command> {
        if let Some(waker) = &self.waker {
            waker.drain();
        }
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
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
    engine_root: Option<PathBuf>,
    subvolumes: Option<PathBuf>,
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
            engine_root: None,
            subvolumes: None,
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
            let ready = match caged_observe::poll_readable(&fds, timeout) {
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
                Command::Filesystems(root) => self.watch_filesystems(root),
                Command::Settle(done) => settles.push(done),
                Command::Watch(container) => {
                    self.containers.remove(&container);
                    self.watched_container(&container);
                }
            }
        }
        settles
    }

    fn watch_filesystems(&mut self, root: PathBuf) {
        if self.engine_root.as_ref() == Some(&root) {
            return;
        }
        let subvolumes = caged_runtime::layout::subvolumes(&root);
        match FsWatch::new(&subvolumes) {
            Ok(fs) => {
                tracing::info!(path = %subvolumes.display(), "watching sandbox file systems");
                self.fs = Some(fs);
            }
            Err(err) => tracing::warn!(
                path = %subvolumes.display(),
                "cannot watch sandbox file systems (file changes will not be observed): {err}"
            ),
        }
        self.subvolumes = Some(subvolumes);
        self.engine_root = Some(root);
        // Sandboxes met before now have no root filesystem to resolve paths in: meet them again.
        self.containers.clear();
        self.mounts.clear();
    }

    fn send(&self, observed: Observed) {
        let _ = self.out.send(Out::Observed(observed));
    }

    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The sandbox whose container is `container`, if it is one of ours.
    fn watched_container(&mut self, container: &str) -> Option<Arc<Watched>> {
        if let Some((watched, at)) = self.containers.get(container)
            && (watched.is_some() || at.elapsed() < FOREIGN_TTL)
        {
            return watched.clone();
        }
        let record = self.store.sandbox_by_container(container);
        tracing::trace!(container, found = ?record.as_ref().map(|r| r.as_ref().map(|r| r.id)), "is this container a sandbox");
        let record = record.ok().flatten();
        let watched = record.map(|record| {
            let mount = self
                .engine_root
                .as_ref()
                .and_then(|engine| caged_runtime::layout::mount_of(engine, container));
            let root = self
                .engine_root
                .as_ref()
                .zip(mount.as_ref())
                .and_then(|(engine, mount)| {
                    rootfs::open_root(&caged_runtime::layout::subvolumes(engine).join(mount)).ok()
                });
            let watched = Arc::new(Watched {
                sandbox: record.id,
                account: record.account_id.clone(),
                container: container.to_string(),
                isolation: record.config.isolation,
                root,
                programs: Mutex::new(None),
            });
            self.watch_sensitive(&watched);
            if let Some(mount) = mount {
                // Its file system may have been judged foreign while the engine was making it.
                self.mounts
                    .insert(mount, (Some(watched.clone()), Instant::now()));
            }
            watched
        });
        self.containers
            .insert(container.to_string(), (watched.clone(), Instant::now()));
        watched
    }

    /// Marks the sandbox's sensitive files for open events.
    fn watch_sensitive(&mut self, watched: &Arc<Watched>) {
        let (Some(opens), Some(root)) = (&self.opens, &watched.root) else {
            return;
        };
        for (path, _) in &self.sensitive_paths {
            let Some((dir, name)) = rootfs::parent_in(root, path) else {
                continue;
            };
            if let Ok(id) = opens.watch(&dir, &name) {
                self.sensitive.insert(id, (watched.clone(), path.clone()));
            }
        }
    }

    /// The sandbox whose root filesystem is the subvolume `mount`.
    fn watched_mount(&mut self, mount: &str) -> Option<Arc<Watched>> {
        if let Some((watched, at)) = self.mounts.get(mount)
            && (watched.is_some() || at.elapsed() < FOREIGN_TTL)
        {
            return watched.clone();
        }
        let container = self
            .engine_root
            .as_ref()
            .and_then(|root| caged_runtime::layout::container_of_mount(root, mount));
        tracing::trace!(mount, ?container, "which container is this file system");
        let watched = container.and_then(|container| self.watched_container(&container));
        self.mounts
            .insert(mount.to_string(), (watched.clone(), Instant::now()));
        watched
    }

    fn on_proc_event(&mut self, event: ProcEvent) {
        match event {
            ProcEvent::Fork { parent, child } => {
                let parent_pid = parent;
                let Some(parent) = self.procs.get(&parent).filter(|p| p.exited.is_none()) else {
                    self.procs.remove(&child); // a recycled pid's old record
                    return;
                };
                let child_proc = Proc {
                    watched: parent.watched.clone(),
                    parent: Some(parent_pid),
                    exited: None,
                    root: parent.root,
                    argv: parent.argv.clone(),
                    program: parent.program.clone(),
                    cwd: parent.cwd.clone(),
                    package_manager: parent.package_manager,
                };
                self.procs.insert(child, child_proc);
            }
            ProcEvent::Exec { pid } => self.on_exec(pid),
            ProcEvent::Exit { pid, .. } => {
                if let Some(proc) = self.procs.get_mut(&pid) {
                    proc.exited = Some(Instant::now());
                }
            }
            ProcEvent::Lost => {
                tracing::warn!("the kernel dropped process events (the observer fell behind)");
                self.stat(|s| s.lost += 1);
            }
        }
    }

    fn on_exec(&mut self, pid: i32) {
        let facts = procfs::facts(pid);
        // An ended record still counts: its exit can be read before its start (they come on
        // different sockets); a recycled pid's old record was dropped at the new fork.
        let (watched, root, inherited_pm, parent) = match self.procs.get(&pid) {
            Some(proc) => (
                proc.watched.clone(),
                proc.root,
                proc.package_manager,
                proc.parent,
            ),
            None => {
                // A process the tree did not lead to: a new command (an exec through the engine)
                // or the sandbox's first process, if its cgroup is a sandbox's.
                let Some(container) = procfs::container_of(pid) else {
                    return;
                };
                let Some(watched) = self.watched_container(&container) else {
                    tracing::debug!(pid, container, "exec in a container that is not a sandbox");
                    return;
                };
                if watched.isolation == Isolation::Gvisor {
                    return; // the host sees gVisor's own processes, not the sandbox's
                }
                // The runtime's helper is still in the host's mount namespace; a process gone
                // before this read was the sandbox's (helpers do not vanish mid-start).
                let ns = procfs::mount_ns(pid);
                if ns.is_some() && ns == self.host_mnt_ns {
                    return;
                }
                self.roots.entry(pid).or_insert((None, Instant::now()));
                (watched, pid, false, None)
            }
        };
        if watched.isolation == Isolation::Gvisor {
            return;
        }
        self.stat(|s| s.processes += 1);
        let Some(facts) = facts else {
            self.stat(|s| s.unread_processes += 1);
            self.emit_process(pid, root, &watched, json!({ "op": "exec", "pid": pid, "argv": null, "note": "ended before it could be read" }), None);
            return;
        };
        let program = self.program_of(&watched, pid, &facts);
        let package_manager = inherited_pm
            || PACKAGE_MANAGERS.contains(&program.as_str())
            || caged_trust::packages::install_of(&facts.argv).is_some();
        let payload = json!({
            "op": "exec",
            "pid": pid,
            "ppid": parent,
            "argv": facts.argv,
            "exe": facts.exe,
            "program": program,
            "cwd": facts.cwd,
        });
        let observation = Observation::Exec {
            pid,
            argv: facts.argv.clone(),
            program: program.clone(),
        };
        self.emit_process(pid, root, &watched, payload, Some(observation));
        self.check_pipe(pid, root, &watched, &program, &facts);
        let exited = self.procs.get(&pid).and_then(|proc| proc.exited);
        self.procs.insert(
            pid,
            Proc {
                watched,
                parent,
                exited,
                root,
                argv: facts.argv,
                program,
                cwd: facts.cwd,
                package_manager,
            },
        );
    }

    /// What a program is: its name where it lives in the usual places, else whatever program of
    /// the sandbox's own it is a copy of (by content), else its file name.
    fn program_of(&mut self, watched: &Watched, pid: i32, facts: &procfs::ProcessFacts) -> String {
        let exe = facts.exe.trim_end_matches(" (deleted)");
        let (dir, name) = exe.rsplit_once('/').unwrap_or(("", exe));
        let mut program = name.to_string();
        let canonical = CANONICAL_DIRS.contains(&dir);
        if !(canonical && programs::WATCHED.contains(&name))
            && let Some(by_content) = self.by_content(watched, pid, facts)
        {
            program = by_content.to_string();
        }
        if program == "busybox"
            && let Some(applet) = programs::busybox_applet(&facts.argv)
        {
            program = applet.to_string();
        }
        program
    }

    fn by_content(
        &mut self,
        watched: &Watched,
        pid: i32,
        facts: &procfs::ProcessFacts,
    ) -> Option<&'static str> {
        let id = facts.exe_id?;
        if let Some(known) = self.digests.get(&id) {
            return *known;
        }
        let sensitive = &self.sensitive;
        let refuse = |id: (u64, u64)| sensitive.contains_key(&id);
        let mut programs = watched.programs.lock().unwrap_or_else(|p| p.into_inner());
        let programs =
            programs.get_or_insert_with(|| canonical_programs(watched.root.as_ref(), &refuse));
        // The program file as the process runs it (even if renamed or deleted since). Never a
        // watched file: opening one would wait on this very thread's answer.
        let digest = open_path(&format!("/proc/{pid}/exe"))
            .and_then(|handle| rootfs::reopen_for_reading(&handle, refuse).ok())
            .and_then(rootfs::digest)
            .and_then(|digest| programs.get(&digest).copied());
        self.digests.insert(id, digest);
        digest
    }

    fn emit_process(
        &mut self,
        _pid: i32,
        root: i32,
        watched: &Watched,
        payload: Value,
        observation: Option<Observation>,
    ) {
        let observed = Observed {
            sandbox: watched.sandbox,
            account: watched.account.clone(),
            attribution: Attribution::Session(None),
            at_ms: now_ms(),
            kind: "process",
            payload,
            observation,
        };
        self.attribute(Some(root), observed);
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

    /// `curl … | sh`: a shell whose stdin is the pipe a downloader writes to, in either order
    /// of their starts.
    fn check_pipe(
        &mut self,
        pid: i32,
        root: i32,
        watched: &Arc<Watched>,
        program: &str,
        facts: &procfs::ProcessFacts,
    ) {
        let now = Instant::now();
        let mut found = None;
        if programs::is_downloader(program)
            && let Some(pipe) = procfs::pipe_of(pid, 1)
        {
            if let Some((shell_pid, shell, _)) = self.shell_pipes.get(&pipe) {
                found = Some((facts.argv.clone(), shell.clone(), *shell_pid));
            }
            self.downloader_pipes
                .insert(pipe, (pid, facts.argv.clone(), now));
        } else if programs::is_shell(program)
            && let Some(pipe) = procfs::pipe_of(pid, 0)
        {
            if let Some((_, downloader, _)) = self.downloader_pipes.get(&pipe) {
                found = Some((downloader.clone(), facts.argv.clone(), pid));
            }
            self.shell_pipes
                .insert(pipe, (pid, facts.argv.clone(), now));
        }
        let Some((downloader, shell, shell_pid)) = found else {
            return;
        };
        let observed = Observed {
            sandbox: watched.sandbox,
            account: watched.account.clone(),
            attribution: Attribution::Session(None),
            at_ms: now_ms(),
            kind: "process",
            payload: json!({ "op": "pipe_to_shell", "pid": shell_pid, "downloader": downloader, "shell": shell }),
            observation: Some(Observation::PipeToShell {
                downloader,
                shell,
                pid: shell_pid,
            }),
        };
        self.attribute(Some(root), observed);
    }

    fn on_fs_event(&mut self, event: FsEvent) {
        let FsEvent::Change {
            change,
            is_dir,
            pid,
            dir,
            name,
        } = event
        else {
            tracing::warn!("the kernel dropped file events (the observer fell behind)");
            self.stat(|s| s.lost += 1);
            return;
        };
        tracing::trace!(?dir, name, pid, "file event");
        let (Some(dir), Some(subvolumes)) = (dir, self.subvolumes.as_ref()) else {
            return;
        };
        let Ok(rest) = dir.strip_prefix(subvolumes) else {
            return;
        };
        let mut parts = rest.components();
        let Some(mount) = parts
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(str::to_string)
        else {
            return;
        };
        if mount.ends_with("-init") {
            return;
        }
        let inner: PathBuf = parts.collect();
        let path = Path::new("/")
            .join(inner)
            .join(&name)
            .to_string_lossy()
            .into_owned();
        let Some(watched) = self.watched_mount(&mount) else {
            tracing::trace!(mount, path, "a file change outside sandboxes");
            return;
        };
        self.stat(|s| s.file_events += 1);
        // A sensitive file replaced by a new one: watch the new one.
        if matches!(change, FsChange::Created | FsChange::MovedTo)
            && self.sensitive_paths.iter().any(|(p, _)| *p == path)
        {
            self.watch_sensitive(&watched);
        }
        let change = match change {
            FsChange::Created => FileChange::Created,
            FsChange::Deleted => FileChange::Deleted,
            FsChange::Written => FileChange::Written,
            FsChange::MovedFrom => FileChange::MovedFrom,
            FsChange::MovedTo => FileChange::MovedTo,
        };
        let (root, package_manager) = match self.procs.get(&pid) {
            Some(proc) if proc.watched.sandbox == watched.sandbox => {
                (Some(proc.root), proc.package_manager)
            }
            _ => {
                // Not a process the tree knows. Under gVisor every write comes from gVisor's own
                // host processes (some short-lived): the sandbox's. Under runc: a command's first
                // process that ended before it was read (known by the pid the API reported), or
                // the engine's own work, such as the files API extracting an upload (recorded by
                // the API, not charged here).
                let ours = watched.isolation == Isolation::Gvisor
                    || procfs::container_of(pid).as_deref() == Some(watched.container.as_str());
                if !ours && !self.roots.contains_key(&pid) {
                    return;
                }
                (self.roots.contains_key(&pid).then_some(pid), false)
            }
        };
        let observed = Observed {
            sandbox: watched.sandbox,
            account: watched.account.clone(),
            attribution: Attribution::OpenSessions {
                grace_ms: READ_LAG_MS,
            },
            at_ms: now_ms(),
            kind: "fs",
            payload: json!({ "change": change, "path": path, "is_dir": is_dir, "pid": pid }),
            observation: Some(Observation::File {
                change,
                path,
                is_dir,
                by_package_manager: package_manager,
            }),
        };
        self.attribute(root, observed);
    }

    /// A sensitive file opened; the opener waits (until `opened` is dropped) while it is read.
    fn on_open(&mut self, opened: Opened) {
        let Some((watched, path)) = self.sensitive.get(&(opened.dev, opened.ino)).cloned() else {
            return;
        };
        let pid = opened.pid;
        if procfs::container_of(pid).as_deref() != Some(watched.container.as_str()) {
            return; // the engine reading it for the files API, not the sandbox
        }
        // Under gVisor the opener is the sandbox's file proxy: its command line says nothing
        // about the process inside, which the host cannot see.
        let facts = match watched.isolation {
            Isolation::Gvisor => procfs::ProcessFacts::default(),
            _ => procfs::facts(pid).unwrap_or_default(),
        };
        let root = self
            .procs
            .get(&pid)
            .filter(|proc| proc.watched.sandbox == watched.sandbox)
            .map(|proc| proc.root);
        if root.is_none() && watched.isolation != Isolation::Gvisor && !runs_from(pid, &watched) {
            return; // the runtime's helper on its way in (runc resolving the user), not the sandbox
        }
        let id = (opened.dev, opened.ino);
        drop(opened);
        let named = names_file(watched.root.as_ref(), &facts.argv, &facts.cwd, &path, id);
        let observed = Observed {
            sandbox: watched.sandbox,
            account: watched.account.clone(),
            attribution: Attribution::OpenSessions {
                grace_ms: READ_LAG_MS,
            },
            at_ms: now_ms(),
            kind: "file_open",
            payload: json!({ "path": path, "pid": pid, "argv": facts.argv, "named_by_command": named }),
            observation: Some(Observation::SensitiveOpen {
                path,
                pid,
                argv: facts.argv,
                named,
            }),
        };
        self.attribute(root, observed);
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

/// Whether `pid` runs a program from the sandbox's own file system (every process of a sandbox
/// does, once exec'd; the runtime's helpers run the host's).
fn runs_from(pid: i32, watched: &Watched) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = &watched.root else {
        return true;
    };
    let (Ok(exe), Ok(root)) = (
        std::fs::metadata(format!("/proc/{pid}/exe")),
        root.metadata(),
    ) else {
        return true;
    };
    exe.dev() == root.dev()
}

fn live(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn open_path(path: &str) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .ok()
}

/// Digests of the watched programs at their usual paths in a sandbox.
fn canonical_programs(
    root: Option<&File>,
    refuse: &dyn Fn((u64, u64)) -> bool,
) -> HashMap<[u8; 32], &'static str> {
    let mut found = HashMap::new();
    let Some(root) = root else {
        return found;
    };
    for name in programs::WATCHED {
        for dir in ["/usr/bin", "/bin"] {
            if let Ok(handle) = rootfs::open_path_in(root, &format!("{dir}/{name}"))
                && let Ok(file) = rootfs::reopen_for_reading(&handle, refuse)
                && let Some(digest) = rootfs::digest(file)
            {
                found.entry(digest).or_insert(*name);
                break;
            }
        }
    }
    found
}

/// Whether a command's arguments name `path` (the file opened, identified by `id`): literally
/// after normalizing against its working directory, or through a link to the same file.
pub(crate) fn names_file(
    root: Option<&File>,
    argv: &[String],
    cwd: &str,
    path: &str,
    id: (u64, u64),
) -> bool {
    argv.iter().skip(1).any(|arg| {
        let value = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => value,
            _ if arg.starts_with('-') => return false,
            _ => arg.as_str(),
        };
        if value.is_empty() {
            return false;
        }
        let absolute = if value.starts_with('/') {
            value.to_string()
        } else {
            format!("{}/{value}", if cwd.is_empty() { "/" } else { cwd })
        };
        let normal = normalize(&absolute);
        normal == path || root.is_some_and(|root| rootfs::identity_in(root, &normal) == Some(id))
    })
}

/// `/a/./b/../c` → `/a/c`, without touching the filesystem.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_files_however_spelled() {
        let argv = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        let id = (0, 0);
        assert!(names_file(
            None,
            &argv("cat /etc/passwd"),
            "/",
            "/etc/passwd",
            id
        ));
        assert!(names_file(
            None,
            &argv("cat passwd"),
            "/etc",
            "/etc/passwd",
            id
        ));
        assert!(names_file(
            None,
            &argv("cat ../etc/./passwd"),
            "/tmp",
            "/etc/passwd",
            id
        ));
        assert!(names_file(
            None,
            &argv("grep -f x --file=/etc/passwd"),
            "/",
            "/etc/passwd",
            id
        ));
        assert!(names_file(
            None,
            &argv("cat //etc//passwd"),
            "/",
            "/etc/passwd",
            id
        ));
        assert!(!names_file(None, &argv("id -u"), "/etc", "/etc/passwd", id));
        assert!(!names_file(
            None,
            &argv("ls -l /etc"),
            "/",
            "/etc/passwd",
            id
        ));
        assert!(
            !names_file(None, &argv("/etc/passwd"), "/", "/etc/passwd", id),
            "argv[0] is the program"
        );
    }
}

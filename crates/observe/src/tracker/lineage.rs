//! The process tree: every fork, exec and exit of a sandbox's processes, each process placed in
//! the session whose command it descends from (recorded at fork time, so reparenting or
//! daemonizing does not shake it off), and the `curl | sh` pattern seen from the pipes between
//! two processes.

use std::sync::Arc;
use std::time::Instant;

use caged_domain::Isolation;
use caged_domain::event::{ProcessSeen, Seen};
use caged_domain::time::now_ms;
use caged_trust::programs;

use super::{Attribution, Observed, Proc, Tracker, Watched};
use crate::kernel::connector::ProcEvent;
use crate::kernel::procfs;

impl Tracker {
    pub(super) fn on_proc_event(&mut self, event: ProcEvent) {
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

    pub(super) fn on_exec(&mut self, pid: i32) {
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
            self.emit_process(
                root,
                &watched,
                ProcessSeen::Exec {
                    pid,
                    ppid: None,
                    argv: None,
                    exe: None,
                    program: None,
                    cwd: None,
                    note: Some("ended before it could be read".into()),
                },
            );
            return;
        };
        let program = self.program_of(&watched, pid, &facts);
        let package_manager = inherited_pm
            || caged_trust::packages::is_manager(&program)
            || caged_trust::packages::install_of(&facts.argv).is_some();
        self.emit_process(
            root,
            &watched,
            ProcessSeen::Exec {
                pid,
                ppid: parent,
                argv: Some(facts.argv.clone()),
                exe: Some(facts.exe.clone()),
                program: Some(program.clone()),
                cwd: Some(facts.cwd.clone()),
                note: None,
            },
        );
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

    pub(super) fn emit_process(&mut self, root: i32, watched: &Watched, seen: ProcessSeen) {
        let observed = Observed {
            sandbox: watched.sandbox,
            account: watched.account.clone(),
            attribution: Attribution::Session(None),
            at_ms: now_ms(),
            seen: Seen::Process(seen),
        };
        self.attribute(Some(root), observed);
    }

    /// `curl … | sh`: a shell whose stdin is the pipe a downloader writes to, in either order
    /// of their starts.
    pub(super) fn check_pipe(
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
        self.emit_process(
            root,
            watched,
            ProcessSeen::PipeToShell {
                pid: shell_pid,
                downloader,
                shell,
            },
        );
    }
}

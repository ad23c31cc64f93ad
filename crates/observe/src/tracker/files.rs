//! Files: changes anywhere under the sandboxes' roots (placed in their sandbox by the root they
//! are in, as the runtime's host view says), and opens of the sensitive files each sandbox is
//! watched for (the opener waits while the tracker reads who it is).

use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use caged_domain::Isolation;
use caged_domain::event::{FileChange, FileSeen, OpenSeen, Seen};
use caged_domain::time::now_ms;
use caged_runtime::HostView;

use super::programs::names_file;
use super::{Attribution, FOREIGN_TTL, Observed, READ_LAG_MS, Tracker, Watched};
use crate::kernel::fanotify::{FsChange, FsEvent, FsWatch, Opened};
use crate::kernel::{procfs, rootfs};

impl Tracker {
    pub(super) fn watch_files(&mut self, view: Arc<dyn HostView>) {
        if self
            .view
            .as_ref()
            .is_some_and(|current| current.roots() == view.roots())
        {
            return;
        }
        let roots = view.roots();
        match FsWatch::new(roots) {
            Ok(fs) => {
                tracing::info!(path = %roots.display(), "watching sandbox file systems");
                self.fs = Some(fs);
            }
            Err(err) => tracing::warn!(
                path = %roots.display(),
                "cannot watch sandbox file systems (file changes will not be observed): {err}"
            ),
        }
        self.view = Some(view);
        // Sandboxes met before now have no root filesystem to resolve paths in: meet them again.
        self.containers.clear();
        self.mounts.clear();
    }

    /// The sandbox whose container is `container`, if it is one of ours.
    pub(super) fn watched_container(&mut self, container: &str) -> Option<Arc<Watched>> {
        if let Some((watched, at)) = self.containers.get(container)
            && (watched.is_some() || at.elapsed() < FOREIGN_TTL)
        {
            return watched.clone();
        }
        let record = self.store.sandbox_by_container(container);
        tracing::trace!(container, found = ?record.as_ref().map(|r| r.as_ref().map(|r| r.id)), "is this container a sandbox");
        let record = record.ok().flatten();
        let watched = record.map(|record| {
            let located = self.view.as_ref().and_then(|view| view.root_of(container));
            let root = located
                .as_ref()
                .and_then(|(_, path)| rootfs::open_root(path).ok());
            let mount = located.map(|(mount, _)| mount);
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
    pub(super) fn watch_sensitive(&mut self, watched: &Arc<Watched>) {
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
    pub(super) fn watched_mount(&mut self, mount: &str) -> Option<Arc<Watched>> {
        if let Some((watched, at)) = self.mounts.get(mount)
            && (watched.is_some() || at.elapsed() < FOREIGN_TTL)
        {
            return watched.clone();
        }
        let container = self.view.as_ref().and_then(|view| view.handle_of(mount));
        tracing::trace!(mount, ?container, "which container is this file system");
        let watched = container.and_then(|container| self.watched_container(&container));
        self.mounts
            .insert(mount.to_string(), (watched.clone(), Instant::now()));
        watched
    }

    pub(super) fn on_fs_event(&mut self, event: FsEvent) {
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
        let (Some(dir), Some(view)) = (dir, self.view.as_ref()) else {
            return;
        };
        let Some((mount, inner)) = view.locate(&dir) else {
            return;
        };
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
            seen: Seen::File(FileSeen {
                change,
                path,
                is_dir,
                pid,
                by_package_manager: package_manager,
            }),
        };
        self.attribute(root, observed);
    }

    /// A sensitive file opened; the opener waits (until `opened` is dropped) while it is read.
    pub(super) fn on_open(&mut self, opened: Opened) {
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
            seen: Seen::Open(OpenSeen {
                path,
                pid,
                argv: facts.argv,
                named,
            }),
        };
        self.attribute(root, observed);
    }
}

/// Whether `pid` runs a program from the sandbox's own file system (every process of a sandbox
/// does, once exec'd; the runtime's helpers run the host's).
pub(super) fn runs_from(pid: i32, watched: &Watched) -> bool {
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

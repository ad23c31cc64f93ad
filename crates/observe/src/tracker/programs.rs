//! What program a process runs: its name where it lives in the usual places, else whatever
//! program of the sandbox's own it is a copy of (by content: a renamed `curl` is still curl),
//! and whether a command names the file it opened.

use std::collections::HashMap;
use std::fs::File;

use caged_trust::programs;

use super::{Tracker, Watched};
use crate::kernel::{procfs, rootfs};

/// Directories whose programs are the system's own names for them.
const CANONICAL_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

impl Tracker {
    /// What a program is: its name where it lives in the usual places, else whatever program of
    /// the sandbox's own it is a copy of (by content), else its file name.
    pub(super) fn program_of(
        &mut self,
        watched: &Watched,
        pid: i32,
        facts: &procfs::ProcessFacts,
    ) -> String {
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

    pub(super) fn by_content(
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
        let mut programs = watched.programs.lock();
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
pub fn names_file(
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

fn open_path(path: &str) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .ok()
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

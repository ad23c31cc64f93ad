//! What a live process is, read from the host's `/proc`: its command line, its program, where it
//! runs, which container's cgroup holds it, and what its stdin and stdout are connected to.
//!
//! Everything here races with the process exiting; a read that fails means "gone", never an
//! error worth more than a `None`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

/// Longest command line kept; longer ones are cut (and marked so).
const MAX_CMDLINE: usize = 16 << 10;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    pub argv: Vec<String>,
    /// The program's path as the process itself sees it (inside its own root).
    pub exe: String,
    pub cwd: String,
    /// The program file's identity: (device, inode, size, mtime), to cache what it is by.
    pub exe_id: Option<(u64, u64, u64, i64)>,
}

/// The facts of `pid`, or `None` when it has already gone. Four reads of `/proc`, the command
/// line first (it is what a short-lived process most often takes with it).
pub fn facts(pid: i32) -> Option<ProcessFacts> {
    let argv = cmdline(pid)?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_default();
    let exe_meta = fs::metadata(format!("/proc/{pid}/exe")).ok();
    Some(ProcessFacts {
        argv,
        exe,
        cwd,
        exe_id: exe_meta.map(|m| (m.dev(), m.ino(), m.size(), m.mtime())),
    })
}

/// The argument vector; `None` for a process that is gone (or a kernel thread, which has none).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let mut raw = Vec::new();
    fs::File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .take(MAX_CMDLINE as u64 + 1)
        .read_to_end(&mut raw)
        .ok()?;
    if raw.is_empty() {
        return None;
    }
    let cut = raw.len() > MAX_CMDLINE;
    raw.truncate(MAX_CMDLINE);
    if raw.last() == Some(&0) {
        raw.pop();
    }
    let mut argv: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if cut && let Some(last) = argv.last_mut() {
        last.push('…');
    }
    Some(argv)
}

/// The pipe id behind `fd` of `pid`, if it is a pipe.
pub fn pipe_of(pid: i32, fd: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// The container whose cgroup holds `pid`, from `/proc/PID/cgroup`: the 64-hex id Docker names
/// cgroups by (`/docker/ID`, `docker-ID.scope`), on cgroup v1 or v2.
pub fn container_of(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    container_in_cgroups(&text)
}

pub(crate) fn container_in_cgroups(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').rev().find_map(|part| {
            let part = part.strip_prefix("docker-").unwrap_or(part);
            let part = part.strip_suffix(".scope").unwrap_or(part);
            (part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| part.to_string())
        })
    })
}

/// The mount namespace `pid` lives in (its inode number).
pub fn mount_ns(pid: i32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|meta| meta.ino())
}

/// The parent of `pid` as the kernel has it now (after any reparenting).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_found_in_v1_and_v2_cgroups() {
        let id = "21973727fab94fd3beffd2b20262d63b25a0fda45e28881e0b99a63ff5ca030a";
        let v1 = format!("9:name=systemd:/docker/{id}\n8:pids:/docker/{id}\n");
        assert_eq!(container_in_cgroups(&v1).as_deref(), Some(id));
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_in_cgroups(&v2).as_deref(), Some(id));
        assert_eq!(
            container_in_cgroups("0::/user.slice/session-3.scope\n"),
            None
        );
        assert_eq!(container_in_cgroups("garbage"), None);
    }

    #[test]
    fn our_own_process_reads_back() {
        let me = std::process::id() as i32;
        let facts = facts(me).expect("this process is alive");
        assert!(!facts.argv.is_empty());
        assert!(!facts.exe.is_empty());
        assert_eq!(cmdline(i32::MAX), None);
        assert_eq!(
            parent_of(me),
            Some(std::os::unix::process::parent_id() as i32)
        );
    }
}

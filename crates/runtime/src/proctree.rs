//! Killing a command with everything it started, from the host's `/proc`: a command that forks
//! into the background or ignores signals must not outlive its timeout.

use std::collections::HashMap;

/// Sends SIGKILL to `root` and all its descendants; returns how many processes were signalled.
pub(crate) fn kill_tree(root: i32) -> std::io::Result<usize> {
    // Freeze the root first so it cannot fork new children while the tree is read.
    send(root, libc::SIGSTOP);
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(parent) = parent_of(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut doomed = vec![root];
    let mut index = 0;
    while index < doomed.len() {
        if let Some(kids) = children.get(&doomed[index]) {
            doomed.extend(kids.iter().copied());
        }
        index += 1;
    }
    let mut signalled = 0;
    for pid in doomed {
        if send(pid, libc::SIGKILL) {
            signalled += 1;
        }
    }
    Ok(signalled)
}

fn send(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

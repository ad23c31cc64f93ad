//! Crash points for tests. `CAGED_FAILPOINTS=create.after_insert,pause.after_engine` makes the
//! server kill itself with SIGKILL on reaching a named point, so tests can check what the next
//! start finds. Unset (always, outside tests), a point costs one lookup in an empty list.

use std::sync::OnceLock;

fn points() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("CAGED_FAILPOINTS")
            .map(|list| {
                list.split(',')
                    .map(|point| point.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

pub(crate) fn hit(name: &str) {
    if points().iter().any(|point| point == name) {
        eprintln!("caged: failpoint {name} reached; killing the server (SIGKILL)");
        // SAFETY: kill(2) with our own pid and a signal number touches no memory.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

//! Caged's own seccomp profile, passed on every create: the engine's built-in default differs
//! between releases (Debian 12's predates the io_uring block), and a sandbox's syscall surface
//! should not depend on which engine version a host happens to run.

use serde_json::{Value, json};

use crate::syscalls::ALLOWED;

/// Namespace flags `clone` may not be given (NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Syscalls answered as "not implemented" rather than "denied", so libraries fall back cleanly:
/// glibc retries `clone3` as `clone` (whose flags can be filtered), io_uring users fall back to
/// ordinary I/O.
const NOT_IMPLEMENTED: &[&str] = &[
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

pub(crate) fn profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            { "names": ALLOWED, "action": "SCMP_ACT_ALLOW" },
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{ "index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }]
            },
            { "names": NOT_IMPLEMENTED, "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        for name in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "bpf",
            "io_uring_setup",
            "init_module",
            "kexec_load",
        ] {
            assert!(!ALLOWED.contains(&name), "{name} must not be allowed");
        }
        for name in [
            "read", "execve", "openat", "statx", "fork", "ptrace", "time",
        ] {
            assert!(ALLOWED.contains(&name), "{name} must be allowed");
        }
        let profile = profile();
        assert_eq!(profile["syscalls"][1]["args"][0]["value"], 0x7E02_0000u64);
    }
}

//! Least privilege, checked from inside a runc sandbox: capabilities, no_new_privs and seccomp
//! on every process; kernel-global syscalls refused; nothing of the host visible.

use serde_json::{Value, json};

/// Effective capabilities: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE.
const EXPECTED_CAPS: &str = "00000000000004fb";

const PROBE: &str = r#"
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(nr, *args):
    ctypes.set_errno(0)
    result = libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return 0 if result >= 0 else ctypes.get_errno()
print(json.dumps({
    "mount": errno_of(165, b"none", b"/mnt", b"tmpfs", 0, 0),
    "unshare_user": errno_of(272, 0x10000000),
    "unshare_net": errno_of(272, 0x40000000),
    "keyctl": errno_of(250, 0, -1, 0, 0, 0),
    "bpf": errno_of(321, 0, 0, 0),
    "io_uring_setup": errno_of(425, 1, 0),
    "kexec_load": errno_of(246, 0, 0, 0, 0),
    "setns": errno_of(308, 0, 0),
}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn runc_sandbox_runs_with_least_privilege() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    // Root's bounds: a sandbox of `user` has no capabilities at all (tests/e2e/users.rs).
    let id = server
        .sandbox(json!({ "template": "base", "user": "root" }))
        .await;
    // Start a background process too, so more than one process is checked.
    client
        .run(&id, &["sh", "-c", "sleep 300 >/dev/null 2>&1 </dev/null &"])
        .await
        .unwrap();
    let status = client
        .run(&id, &["sh", "-c", "for f in /proc/[0-9]*/status; do echo \"$(grep -E '^(Name|CapEff|NoNewPrivs|Seccomp):' $f | tr '\\n' ' ')\"; done"])
        .await
        .unwrap();
    let lines: Vec<&str> = status
        .stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(lines.len() >= 3, "{}", status.stdout);
    for line in lines {
        assert!(
            line.contains(&format!("CapEff:\t{EXPECTED_CAPS}")),
            "{line}"
        );
        assert!(line.contains("NoNewPrivs:\t1"), "{line}");
        assert!(line.contains("Seccomp:\t2"), "{line}");
    }

    let probe = client.run(&id, &["python3", "-c", PROBE]).await.unwrap();
    assert_eq!(probe.exit_code, Some(0), "{}", probe.stderr);
    let errnos: Value = serde_json::from_str(&probe.stdout).unwrap();
    const EPERM: i64 = 1;
    const ENOSYS: i64 = 38;
    for call in [
        "mount",
        "unshare_user",
        "unshare_net",
        "keyctl",
        "bpf",
        "kexec_load",
        "setns",
    ] {
        assert_eq!(errnos[call], EPERM, "{call}: {errnos}");
    }
    assert_eq!(errnos["io_uring_setup"], ENOSYS, "{errnos}");

    let tools = client
        .run(&id, &["sh", "-c", "unshare -U true; echo unshare=$?; mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?"])
        .await
        .unwrap();
    assert!(
        tools.stdout.contains("unshare=1")
            && tools.stdout.contains("mount=")
            && !tools.stdout.contains("mount=0"),
        "{}",
        tools.stdout
    );

    // Nothing of the host: no engine socket, no /dev/kvm, sysrq absent or not writable, no
    // host mounts beyond the engine's own three files.
    let host = client
        .run(
            &id,
            &["sh", "-c", "ls /var/run/docker.sock /run/docker.sock /dev/kvm 2>&1; (echo h > /proc/sysrq-trigger) 2>&1; echo sysrq=$?; find / -xdev -type s 2>/dev/null | wc -l"],
        )
        .await
        .unwrap();
    assert!(
        host.stdout.contains("sysrq=") && !host.stdout.contains("sysrq=0"),
        "{}",
        host.stdout
    );
    assert_eq!(
        host.stdout.matches("No such file or directory").count(),
        3,
        "{}",
        host.stdout
    );
    assert!(
        host.stdout.trim_end().ends_with('0'),
        "sockets found: {}",
        host.stdout
    );
    let mounts = client
        .run(&id, &["cat", "/proc/self/mountinfo"])
        .await
        .unwrap();
    for line in mounts.stdout.lines() {
        assert!(
            !line.contains("docker.sock") && !line.contains(" /var/lib/caged"),
            "host mount: {line}"
        );
    }
    // The engine-side view agrees: not privileged, our seccomp profile, no-new-privileges.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let inspect = docker
        .inspect_container(&format!("caged-{}-{id}", server.installation_id), None)
        .await
        .unwrap();
    let host_config = inspect.host_config.unwrap();
    assert_eq!(host_config.privileged, Some(false));
    assert_eq!(host_config.cap_drop, Some(vec!["ALL".to_string()]));
    let security = host_config.security_opt.unwrap_or_default();
    assert!(security.iter().any(|opt| opt == "no-new-privileges:true"));
    assert!(
        security
            .iter()
            .any(|opt| opt.starts_with("seccomp=") && opt.contains("SCMP_ACT_ERRNO"))
    );
    assert!(
        inspect.mounts.unwrap_or_default().is_empty(),
        "host paths mounted"
    );
}

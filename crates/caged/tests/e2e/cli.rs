//! The CLI's own behaviour: tables and JSON, exit statuses, one-line errors.

use serde_json::Value;

use crate::{caged, caged_in, stderr, stdout};

#[tokio::test(flavor = "multi_thread")]
async fn cli_drives_the_lifecycle() {
    let server = caged_testkit::spawn().await;
    let out = caged(
        &server,
        &[
            "create",
            "--template",
            "busybox",
            "--name",
            "cli-box",
            "--memory",
            "128",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let out = caged(&server, &["ls"]);
    let table = stdout(&out);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&id) && table.contains("cli-box") && table.contains("running"),
        "{table}"
    );
    let out = caged(&server, &["ls", "--json"]);
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());

    // exec exits with the command's status and keeps stdout and stderr apart.
    let out = caged(
        &server,
        &[
            "exec",
            &id,
            "--env",
            "A=1",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A $(pwd); echo e >&2; exit 42",
        ],
    );
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(stdout(&out), "1 /tmp\n");
    assert_eq!(stderr(&out), "e\n");
    let out = caged_in(
        &server,
        &["exec", "-i", &id, "--", "tr", "a-z", "A-Z"],
        None,
        Some(b"piped input"),
    );
    assert_eq!(stdout(&out), "PIPED INPUT");
    let out = caged(
        &server,
        &["exec", &id, "--timeout", "0.5", "--", "sleep", "100"],
    );
    assert_eq!(out.status.code(), Some(124));

    let out = caged(&server, &["inspect", &id, "--json"]);
    let inspected: Value = serde_json::from_str(&stdout(&out)).unwrap();
    for key in [
        "id",
        "name",
        "state",
        "template",
        "isolation",
        "resources",
        "timeout_seconds",
        "network_mode",
        "allowed_hosts",
        "budget_usd",
        "created_at",
        "running_seconds",
        "transitions",
    ] {
        assert!(inspected.get(key).is_some(), "inspect lacks {key}");
    }
    assert_eq!(inspected["resources"]["memory_mb"], 128);

    for verb in ["pause", "resume", "rm"] {
        let out = caged(&server, &[verb, &id]);
        assert!(out.status.success(), "{verb}: {}", stderr(&out));
    }
    let out = caged(&server, &["pause", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("caged: cannot pause sandbox {id}: cannot go from destroyed to paused\n")
    );
    let out = caged(&server, &["rm", "0badc0de"]);
    assert_eq!(stderr(&out), "caged: sandbox 0badc0de not found\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_says_clearly_when_the_server_is_not_there() {
    let server = caged_testkit::spawn().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caged"))
        .args(["ls"])
        .env("CAGED_URL", "http://127.0.0.1:9")
        .env("CAGED_API_KEY", &server.admin_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("caged: cannot reach the caged server at http://127.0.0.1:9 (is `caged server` running?)"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_is_an_interactive_terminal() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(serde_json::json!({ "template": "busybox" }))
        .await;
    // `script` gives `caged shell` a real terminal of a known size, as a person's would be.
    let command = format!(
        "stty cols 100 rows 30; {} shell {id}",
        env!("CARGO_BIN_EXE_caged")
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .envs(server.cli_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo $((6*7)); stty size; tty; exit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = stdout(&out);
    assert!(
        screen.contains("\n42\r\n") || screen.contains("42\r\n30 100"),
        "{screen:?}"
    );
    assert!(screen.contains("30 100"), "{screen:?}");
    assert!(screen.contains("/dev/pts/"), "{screen:?}");
    assert_eq!(out.status.code(), Some(3), "{screen:?} {}", stderr(&out));
}

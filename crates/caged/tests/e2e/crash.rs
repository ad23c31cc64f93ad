//! A server killed with SIGKILL in the middle of create, pause, resume or destroy comes back to a
//! world where the engine and the database agree and nothing leaked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caged_client::Client;
use serde_json::json;

/// The `caged` binary as a separate process, so it can really be killed.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) client: Client,
}

impl ServerProcess {
    pub(crate) async fn start(
        data_dir: &std::path::Path,
        failpoint: Option<&str>,
    ) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_caged"));
        command
            .args([
                "server",
                "--no-gvisor-probe",
                "--preview-listen",
                "127.0.0.1:0",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--sandbox-network",
                &caged_testkit::sandbox_network(data_dir),
                "--dns-upstream",
                "127.0.0.1:9",
            ])
            .env("CAGED_DATA_DIR", data_dir)
            .env_remove("CAGED_FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(point) = failpoint {
            command.env("CAGED_FAILPOINTS", point);
        }
        let url = format!("http://127.0.0.1:{port}");
        // Owned by the guard at once, so it is reaped whatever happens below.
        let mut process = ServerProcess {
            child: command.spawn().expect("caged server starts"),
            client: Client::new(&url, None),
        };
        let started = Instant::now();
        loop {
            if let Ok(key) = std::fs::read_to_string(data_dir.join("admin.key")) {
                let client = Client::new(&url, Some(key.trim().to_string()));
                if let Ok(system) = client.system().await
                    && system.engine_up()
                {
                    process.client = client;
                    return process;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's installation id, and a guard that removes everything it made on the engine.
    pub(crate) async fn installation(&self) -> (String, caged_testkit::InstallationGuard) {
        let installation = self.client.system().await.unwrap().installation_id;
        let guard = caged_testkit::InstallationGuard(installation.clone());
        caged_testkit::provide_templates(&installation).await;
        (installation, guard)
    }

    /// A new running busybox sandbox.
    pub(crate) async fn busybox(&self) -> String {
        self.client
            .create_sandbox(&json!({ "template": "busybox" }))
            .await
            .unwrap()
            .id
    }

    /// Waits for the process to die of the failpoint's SIGKILL.
    fn expect_killed(mut self) {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "the server was not killed: {status:?}"
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Containers of this installation on the engine: (sandbox id, engine state).
async fn engine_view(installation: &str) -> Vec<(String, String)> {
    caged_testkit::engine_sandboxes(installation)
        .await
        .into_iter()
        .filter(|c| !c.sandbox_id.is_empty())
        .map(|c| (c.sandbox_id, c.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_at_any_point_then_restart_agrees_with_the_engine() {
    let cases = [
        (
            "create.after_insert",
            "destroyed",
            "the server stopped before its container was created",
        ),
        (
            "create.after_container",
            "destroyed",
            "the server stopped while creating it",
        ),
        (
            "pause.after_engine",
            "paused",
            "a pause finished across a server restart",
        ),
        (
            "resume.after_engine",
            "running",
            "a resume finished across a server restart",
        ),
        (
            "destroy.after_engine",
            "destroyed",
            "its container disappeared",
        ),
    ];
    for (point, expected_state, expected_reason) in cases {
        let data = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(data.path(), Some(point)).await;
        let (installation, _cleanup) = server.installation().await;
        let client = server.client.clone();
        let create = json!({ "template": "busybox" });
        let id = if point.starts_with("create") {
            assert!(
                client.create_sandbox(&create).await.is_err(),
                "{point}: create survived"
            );
            None
        } else {
            let id = client.create_sandbox(&create).await.unwrap().id;
            if point.starts_with("resume") {
                client.pause(&id).await.unwrap();
            }
            let cut = match point {
                "pause.after_engine" => client.pause(&id).await.err(),
                "resume.after_engine" => client.resume(&id).await.err(),
                _ => client.destroy(&id).await.err(),
            };
            assert!(cut.is_some(), "{point}: the operation survived");
            Some(id)
        };
        server.expect_killed();

        let server = ServerProcess::start(data.path(), None).await;
        let all = server.client.list_sandboxes(true).await.unwrap();
        assert_eq!(all.len(), 1, "{point}: {all:?}");
        let id = id.unwrap_or_else(|| all[0].id.clone());
        // The reconciler runs as soon as the engine is up; wait for its verdict.
        let started = Instant::now();
        let sandbox = loop {
            let sandbox = server.client.sandbox(&id).await.unwrap();
            if sandbox.state == expected_state {
                break sandbox;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{point}: still {sandbox:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The last transition's (the host's observation may record a process after it).
        let last_reason = server
            .client
            .events(&id, 0)
            .await
            .unwrap()
            .iter()
            .rev()
            .find(|event| event.kind == "state")
            .unwrap()
            .payload["reason"]
            .clone();
        assert_eq!(last_reason, expected_reason, "{point}");
        if expected_state == "destroyed" {
            assert_eq!(
                sandbox.destroyed_reason.as_deref(),
                Some(expected_reason),
                "{point}"
            );
        }
        // Engine and database agree, and nothing leaked.
        let engine = engine_view(&installation).await;
        match expected_state {
            "destroyed" => assert!(engine.is_empty(), "{point}: leaked {engine:?}"),
            state => assert_eq!(engine, vec![(id.clone(), state.to_string())], "{point}"),
        }
        // And the sandbox works normally afterwards.
        if expected_state != "destroyed" {
            let result = server.client.run(&id, &["echo", "ok"]).await.unwrap();
            assert_eq!(result.stdout, "ok\n", "{point}");
            server.client.destroy(&id).await.unwrap();
            assert!(engine_view(&installation).await.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_work_finish_then_exits() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), None).await;
    let (_, _cleanup) = server.installation().await;
    let id = server.busybox().await;
    let client = server.client.clone();
    let exec_id = id.clone();
    let in_flight = tokio::spawn(async move {
        client
            .run(
                &exec_id,
                &["sh", "-c", "touch /tmp/begun; sleep 2; echo done"],
            )
            .await
    });
    crate::wait_for_file(&server.client, &id, "/tmp/begun").await;
    let mut server = server;
    let sent = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let finished = in_flight
        .await
        .unwrap()
        .expect("the in-flight exec was cut off");
    assert_eq!(finished.stdout, "done\n");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "caged server exited with {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_snapshot_leaves_no_partial_snapshot() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), Some("snapshot.after_blob")).await;
    let (_, _cleanup) = server.installation().await;
    let id = server.busybox().await;
    server
        .client
        .run(&id, &["sh", "-c", "echo data > /workspace/f"])
        .await
        .unwrap();
    assert!(server.client.create_snapshot(&id, None).await.is_err());
    server.expect_killed();
    // The bytes were written, the record was not.
    let blobs = || {
        std::fs::read_dir(data.path().join("snapshots"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 1);

    let server = ServerProcess::start(data.path(), None).await;
    assert!(server.client.snapshots(&id).await.unwrap().is_empty());
    assert_eq!(blobs(), 0, "the orphaned snapshot bytes were not removed");
    // The sandbox itself came through, running, and can be snapshotted normally.
    assert_eq!(server.client.sandbox(&id).await.unwrap().state, "running");
    server.client.create_snapshot(&id, None).await.unwrap();
    assert_eq!(server.client.snapshots(&id).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_restore_keeps_exactly_one_whole_sandbox() {
    // Killed before the switch, the original stays; killed after it, the restored copy does.
    for (point, expected) in [
        ("restore.after_apply", "v2\n"),
        ("restore.after_switch", "v1\n"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(data.path(), Some(point)).await;
        let (installation, _cleanup) = server.installation().await;
        let id = server.busybox().await;
        server
            .client
            .run(&id, &["sh", "-c", "echo v1 > /workspace/f"])
            .await
            .unwrap();
        let sid = server.client.create_snapshot(&id, None).await.unwrap().id;
        server
            .client
            .run(&id, &["sh", "-c", "echo v2 > /workspace/f"])
            .await
            .unwrap();
        assert!(
            server.client.restore(&id, &sid).await.is_err(),
            "{point}: restore survived"
        );
        server.expect_killed();

        let server = ServerProcess::start(data.path(), None).await;
        let started = Instant::now();
        while engine_view(&installation).await.len() != 1 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{point}: {:?}",
                engine_view(&installation).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            engine_view(&installation).await,
            vec![(id.clone(), "running".to_string())],
            "{point}"
        );
        let content = server
            .client
            .run(&id, &["cat", "/workspace/f"])
            .await
            .unwrap();
        assert_eq!(content.stdout, expected, "{point}");
    }
}

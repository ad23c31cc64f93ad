//! The lifecycle: create, pause, resume, destroy; transitions, running time and 409s.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::error_code;

#[tokio::test(flavor = "multi_thread")]
async fn full_lifecycle_with_exact_running_time() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let created = Instant::now();
    let sandbox = client
        .create_sandbox(&json!({ "template": "busybox", "name": "life" }))
        .await
        .unwrap();
    assert_eq!(sandbox.state, "running");
    assert_eq!(sandbox.id.len(), 8);
    assert_eq!(sandbox.name.as_deref(), Some("life"));
    let id = sandbox.id.clone();

    // A second live sandbox may not take the same name.
    let err = client
        .create_sandbox(&json!({ "template": "busybox", "name": "life" }))
        .await
        .unwrap_err();
    assert_eq!(error_code(err).1, "name_taken");

    let paused = client.pause(&id).await.unwrap();
    assert_eq!(paused.state, "paused");
    let paused_at = Instant::now();
    // Illegal changes are 409s that name both states.
    let (status, code, message) = error_code(client.pause(&id).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "illegal_transition"));
    assert_eq!(
        message,
        format!("cannot pause sandbox {id}: cannot go from paused to paused")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused_for = paused_at.elapsed();
    let resumed = client.resume(&id).await.unwrap();
    assert_eq!(resumed.state, "running");

    // Running time excludes the paused stretch: it is at most the wall time minus the pause.
    let inspected = client.sandbox(&id).await.unwrap();
    let wall = created.elapsed().as_secs_f64();
    assert!(inspected.running_seconds > 0.0);
    assert!(
        inspected.running_seconds <= wall - paused_for.as_secs_f64() + 0.05,
        "running {} wall {wall} paused {paused_for:?}",
        inspected.running_seconds
    );
    let states: Vec<&str> = inspected
        .transitions
        .iter()
        .map(|t| t.state.as_str())
        .collect();
    assert_eq!(states, ["pending", "running", "paused", "running"]);

    let destroyed = client.destroy(&id).await.unwrap();
    assert_eq!(destroyed.state, "destroyed");
    assert_eq!(
        destroyed.destroyed_reason.as_deref(),
        Some("destroyed on request")
    );
    // Destroy is idempotent, and a destroyed sandbox's clock has stopped.
    let again = client.destroy(&id).await.unwrap();
    assert_eq!(again.running_seconds, destroyed.running_seconds);
    let (status, code, _) = error_code(client.resume(&id).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "illegal_transition"));
    // Work on a destroyed sandbox is refused, not a wake-up.
    let (status, code, message) = error_code(client.run(&id, &["true"]).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "illegal_state"));
    assert_eq!(
        message,
        format!("sandbox {id} is destroyed; it must be running")
    );
    assert!(
        server.engine_containers().await.is_empty(),
        "container left behind"
    );

    // Gone from the default list, present with ?all.
    assert!(
        client
            .list_sandboxes(false)
            .await
            .unwrap()
            .iter()
            .all(|s| s.id != id)
    );
    assert!(
        client
            .list_sandboxes(true)
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == id)
    );
    let (status, _, message) = error_code(client.destroy("deadbeef").await.unwrap_err());
    assert_eq!(status, 404);
    assert_eq!(message, "sandbox deadbeef not found");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_freezes_processes_and_loses_nothing_under_writes() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    // A writer that appends a counter as fast as it can, in the background.
    let started = client
        .run(&id, &["sh", "-c", "sh -c 'i=0; while :; do i=$((i+1)); echo $i >> /workspace/log; done' >/dev/null 2>&1 </dev/null & echo $!"])
        .await
        .unwrap();
    let writer_pid = started.stdout.trim().to_string();
    assert!(!writer_pid.is_empty());
    for _ in 0..10 {
        client.pause(&id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.resume(&id).await.unwrap();
    }
    // Same process still alive, and the log is an unbroken count: nothing lost or reordered.
    let check = client
        .run(&id, &["sh", "-c", &format!("kill -0 {writer_pid} && kill {writer_pid}; sleep 0.2; awk 'NR != $1 {{ print \"gap at \" NR; exit 1 }} END {{ print NR }}' /workspace/log")])
        .await
        .unwrap();
    assert_eq!(
        check.exit_code,
        Some(0),
        "stdout {} stderr {}",
        check.stdout,
        check.stderr
    );
    let lines: u64 = check.stdout.trim().parse().unwrap();
    assert!(lines > 100, "the writer barely ran: {lines} lines");
    client.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_create_leaves_nothing_behind() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let (status, code, message) = error_code(
        client
            .create_sandbox(&json!({ "template": "no-such-template" }))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "unknown_template"));
    assert!(
        message.starts_with("unknown template \"no-such-template\"; known templates: "),
        "{message}"
    );
    assert!(message.contains("busybox"), "{message}");
    assert!(server.engine_containers().await.is_empty());
    // The attempt is recorded as destroyed, with the reason.
    let all = client.list_sandboxes(true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "destroyed");
    assert!(
        all[0]
            .destroyed_reason
            .as_deref()
            .unwrap()
            .starts_with("create failed: unknown template")
    );

    // Limits the engine refuses (more CPUs than the host has) end the same way.
    let (status, _, _) = error_code(
        client
            .create_sandbox(&json!({ "template": "busybox", "resources": { "cpu": 64 } }))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert!(server.engine_containers().await.is_empty());
    assert!(client.list_sandboxes(false).await.unwrap().is_empty());
}

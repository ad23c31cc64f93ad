//! Idle sleep and wake on request; the idle clock across a restart; graceful shutdown.

use std::time::{Duration, Instant};

use caged_client::{Client, Sandbox};
use serde_json::json;

/// Polls until `check` holds for the sandbox (or gives up after a generous bound).
async fn wait_for(
    client: &Client,
    id: &str,
    what: &str,
    check: impl Fn(&Sandbox) -> bool,
) -> Sandbox {
    let started = Instant::now();
    loop {
        let sandbox = client.sandbox(id).await.unwrap();
        if check(&sandbox) {
            return sandbox;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sandbox never {what}: {sandbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_reasons(events: &[caged_client::wire::Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|event| event.kind == "state")
        .map(|event| {
            (
                event.payload["to"].as_str().unwrap_or_default().to_string(),
                event.payload["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sandbox_sleeps_and_wakes_on_request() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "timeout": 2 }))
        .await;
    client
        .run(&id, &["sh", "-c", "echo kept > /workspace/state"])
        .await
        .unwrap();
    let asleep = wait_for(client, &id, "paused", |s| s.state == "paused").await;
    // Asleep, it costs nothing: its running time stands still.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.sandbox(&id).await.unwrap().running_seconds,
        asleep.running_seconds
    );

    // An exec on the sleeping sandbox wakes it and runs.
    let result = client.run(&id, &["cat", "/workspace/state"]).await.unwrap();
    assert_eq!(result.stdout, "kept\n");
    assert_eq!(client.sandbox(&id).await.unwrap().state, "running");
    // So does a file read, after it fell asleep again.
    wait_for(client, &id, "paused again", |s| s.state == "paused").await;
    let bytes = client
        .read_file_bytes(&id, "/workspace/state")
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"kept\n");

    let reasons = state_reasons(&client.events(&id, 0).await.unwrap());
    let paused: Vec<_> = reasons.iter().filter(|(to, _)| to == "paused").collect();
    assert_eq!(paused.len(), 2, "{reasons:?}");
    assert!(
        paused[0].1.starts_with("idle for ") && paused[0].1.ends_with("(timeout 2s)"),
        "{reasons:?}"
    );
    let woken: Vec<_> = reasons
        .iter()
        .filter(|(to, reason)| to == "running" && reason.starts_with("woken"))
        .collect();
    assert_eq!(
        woken
            .iter()
            .map(|(_, reason)| reason.as_str())
            .collect::<Vec<_>>(),
        ["woken by exec", "woken by file read"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn work_in_progress_is_never_put_to_sleep() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "timeout": 1 }))
        .await;
    let result = client
        .run(&id, &["sh", "-c", "sleep 3; echo finished"])
        .await
        .unwrap();
    assert_eq!(result.stdout, "finished\n");
    let states: Vec<String> = client
        .sandbox(&id)
        .await
        .unwrap()
        .transitions
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, ["pending", "running"], "paused during an exec");
    // Once the work is done, the clock runs again.
    wait_for(client, &id, "paused", |s| s.state == "paused").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_clock_survives_a_restart() {
    let mut server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "busybox", "timeout": 6 }))
        .await;
    server.client.run(&id, &["true"]).await.unwrap();
    // Four of its six idle seconds pass before the restart.
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.restart().await;
    wait_for(&server.client, &id, "paused", |s| s.state == "paused").await;
    // The sleep decision records how long the sandbox had been idle: about six seconds since
    // its last activity. A clock restarted by the restart would say ten or more.
    let events = server.client.events(&id, 0).await.unwrap();
    let reason = state_reasons(&events)
        .into_iter()
        .find(|(to, _)| to == "paused")
        .unwrap()
        .1;
    let idle_seconds: u64 = reason
        .strip_prefix("idle for ")
        .and_then(|rest| rest.split('s').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reason {reason:?}"));
    assert!(
        (6..10).contains(&idle_seconds),
        "slept after {idle_seconds}s idle: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let mut server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let client = server.client.clone();
    let exec_id = id.clone();
    let in_flight = tokio::spawn(async move {
        client
            .run(
                &exec_id,
                &["sh", "-c", "touch /tmp/started; sleep 2; echo done"],
            )
            .await
    });
    // Shut down only once the command is running.
    crate::wait_for_file(&server.client, &id, "/tmp/started").await;
    let url = server.url.clone();
    server.shutdown().await;
    let finished = in_flight
        .await
        .unwrap()
        .expect("the in-flight exec was cut off");
    assert_eq!(finished.stdout, "done\n");
    let after = Client::new(&url, Some(server.admin_key.clone()))
        .list_sandboxes(false)
        .await;
    assert!(after.is_err(), "the server still answers after shutdown");
}

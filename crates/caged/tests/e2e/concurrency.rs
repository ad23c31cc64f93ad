//! Many clients at once: operations on one sandbox never interleave badly, different sandboxes
//! proceed side by side.

use std::time::Duration;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn destroy_during_create_waits_and_leaks_nothing() {
    let server = caged_testkit::spawn().await;
    let client = server.client.clone();
    let creating = tokio::spawn(async move {
        client
            .create_sandbox(&json!({ "template": "busybox" }))
            .await
    });
    // The row appears (pending) as soon as the create has begun.
    let id = loop {
        if let Some(sandbox) = server
            .client
            .list_sandboxes(false)
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            break sandbox.id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let destroyed = server.client.destroy(&id).await.unwrap();
    assert_eq!(destroyed.state, "destroyed");
    let created = creating.await.unwrap().unwrap();
    // The create finished first (destroy waited for it), then the destroy ran.
    assert_eq!(created.state, "running");
    let states: Vec<String> = server
        .client
        .sandbox(&id)
        .await
        .unwrap()
        .transitions
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, ["pending", "running", "destroyed"]);
    assert!(server.engine_containers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_during_exec_freezes_it_and_resume_lets_it_finish() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let client = server.client.clone();
    let exec_id = id.clone();
    let running = tokio::spawn(async move {
        client
            .run(
                &exec_id,
                &["sh", "-c", "touch /tmp/begun; sleep 1; echo finished"],
            )
            .await
    });
    crate::wait_for_file(&server.client, &id, "/tmp/begun").await;
    assert_eq!(server.client.pause(&id).await.unwrap().state, "paused");
    server.client.resume(&id).await.unwrap();
    let result = running.await.unwrap().unwrap();
    assert_eq!(
        (result.stdout.as_str(), result.exit_code),
        ("finished\n", Some(0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_clients_on_many_sandboxes_at_once() {
    let server = caged_testkit::spawn().await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            let id = client
                .create_sandbox(&json!({ "template": "busybox" }))
                .await
                .unwrap()
                .id;
            let result = client
                .run(&id, &["sh", "-c", &format!("echo {n}")])
                .await
                .unwrap();
            assert_eq!(result.stdout, format!("{n}\n"));
            client.pause(&id).await.unwrap();
            client.resume(&id).await.unwrap();
            client.destroy(&id).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(server.engine_containers().await.is_empty());
    assert_eq!(server.client.list_sandboxes(true).await.unwrap().len(), 8);
}

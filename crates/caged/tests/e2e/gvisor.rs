//! The gVisor (runsc) smoke test: create, exec, files, pause, resume, destroy.

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn gvisor_sandbox_smoke() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let sandbox = client
        .create_sandbox(&json!({ "template": "busybox", "isolation": "gvisor" }))
        .await
        .unwrap();
    assert_eq!(
        (sandbox.state.as_str(), sandbox.isolation.as_str()),
        ("running", "gvisor")
    );
    let id = sandbox.id;
    // It really runs on gVisor's kernel: its log says so.
    let dmesg = client.run(&id, &["dmesg"]).await.unwrap();
    assert!(
        dmesg.stdout.contains("gVisor"),
        "not gVisor: {}",
        dmesg.stdout
    );
    let result = client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "echo hi > /workspace/f; cat /workspace/f; exit 3",
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (result.stdout.as_str(), result.exit_code),
        ("hi\n", Some(3))
    );

    client
        .write_file(&id, "/workspace/in.txt", "from the host", None)
        .await
        .unwrap();
    let read = client
        .run(&id, &["cat", "/workspace/in.txt"])
        .await
        .unwrap();
    assert_eq!(read.stdout, "from the host");
    let back = client.read_file_bytes(&id, "/workspace/f").await.unwrap();
    assert_eq!(&back[..], b"hi\n");

    client
        .run(
            &id,
            &["sh", "-c", "sleep 1000 >/dev/null 2>&1 </dev/null &"],
        )
        .await
        .unwrap();
    assert_eq!(client.pause(&id).await.unwrap().state, "paused");
    assert_eq!(client.resume(&id).await.unwrap().state, "running");
    let ps = client.run(&id, &["ps", "-o", "args"]).await.unwrap();
    assert!(
        ps.stdout.contains("sleep 1000"),
        "process lost across pause: {}",
        ps.stdout
    );

    // A timeout kills the command inside gVisor too.
    let timed = client
        .exec(
            &id,
            &json!({ "cmd": ["sh", "-c", "sleep 2000 & sleep 2000"], "timeout": 1 }),
        )
        .await
        .unwrap();
    assert!(timed.timed_out);
    let ps = client.run(&id, &["ps", "-o", "args"]).await.unwrap();
    assert!(
        !ps.stdout.contains("sleep 2000"),
        "left running: {}",
        ps.stdout
    );

    client.destroy(&id).await.unwrap();
    assert!(server.engine_containers().await.is_empty());
}

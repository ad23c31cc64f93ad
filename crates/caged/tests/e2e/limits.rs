//! Resource limits are enforced inside the sandbox, and the host stays fine.

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_kills_the_hog_not_the_host() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "resources": { "memory": 64 } }))
        .await;
    let limit = client
        .run(&id, &["sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"]).await.unwrap();
    assert_eq!(limit.stdout.trim(), (64u64 << 20).to_string());
    // `sort` holds its whole input (one endless line) in memory.
    let hog = client
        .run(
            &id,
            &["sh", "-c", "head -c 400000000 /dev/zero | sort > /dev/null"],
        )
        .await
        .unwrap();
    assert_ne!(hog.exit_code, Some(0), "400 MB fit in a 64 MB sandbox");
    let after = client.run(&id, &["echo", "alive"]).await.unwrap();
    assert_eq!(after.stdout, "alive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_limit_contains_a_fork_bomb() {
    let server = caged_testkit::spawn_with(|config| config.pids_limit = 64).await;
    let client = &server.client;
    let bombed = server.sandbox(json!({ "template": "busybox" })).await;
    let bomb = client
        .exec(&bombed, &json!({ "cmd": ["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 5"], "timeout": 3 }))
        .await
        .unwrap();
    assert!(bomb.timed_out || bomb.exit_code != Some(0));
    // The engine reports the sandbox at its cap, not beyond.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let container = format!("caged-{}-{bombed}", server.installation_id);
    let top = docker
        .top_processes(&container, None::<bollard::query_parameters::TopOptions>)
        .await
        .unwrap();
    let count = top.processes.unwrap_or_default().len();
    assert!(count <= 64, "{count} processes in a sandbox limited to 64");
    // Another sandbox, and the server, are unaffected; the bombed one can still be destroyed.
    let other = server.sandbox(json!({ "template": "busybox" })).await;
    assert_eq!(
        client.run(&other, &["echo", "fine"]).await.unwrap().stdout,
        "fine\n"
    );
    client.destroy(&bombed).await.unwrap();
    client.destroy(&other).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_limit_stops_a_big_write() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let system = client.system().await.unwrap();
    let caged_client::wire::EngineStatus::Up { info } = &system.engine else {
        panic!("the engine is not up: {system:?}");
    };
    assert!(
        info.disk_limits.available,
        "this engine cannot enforce disk limits; start it with scripts/engine-up (btrfs data root)"
    );
    let id = server
        .sandbox(json!({ "template": "busybox", "resources": { "disk": 1 }, "user": "root" }))
        .await;
    assert!(client.sandbox(&id).await.unwrap().resources.disk_enforced);
    let write = client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/big bs=1M count=1500 2>&1; echo status=$?; ls -l /big",
            ],
        )
        .await
        .unwrap();
    assert!(write.stdout.contains("status=1"), "{}", write.stdout);
    assert!(
        write.stdout.contains("Disk quota exceeded") || write.stdout.contains("No space left"),
        "{}",
        write.stdout
    );
    let size: u64 = write
        .stdout
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert!(size <= 1 << 30, "wrote {size} bytes into a 1 GB sandbox");
    client.destroy(&id).await.unwrap();
}

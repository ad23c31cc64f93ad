//! Snapshots: capture, restore, fork and download round trips compared byte for byte; limits;
//! hostile snapshot bytes; a crash mid-snapshot.

use serde_json::json;

use crate::{caged, error_code, stderr, stdout};

/// Files of every kind, a deleted template file, a big binary file; prints a fingerprint.
const SETUP: &str = r#"
set -e
mkdir -p /workspace/src/deep
echo hello > /workspace/hello.txt
printf '#!/bin/sh\necho tool\n' > /workspace/tool.sh && chmod 755 /workspace/tool.sh
chmod 600 /workspace/hello.txt
ln -s hello.txt /workspace/link
ln -s /etc/shadow /workspace/evil
head -c 20000000 /dev/urandom > /workspace/src/deep/big.bin
rm /bin/vi
"#;

const FINGERPRINT: &str = "cd /workspace && md5sum hello.txt tool.sh src/deep/big.bin && stat -c '%n %a' hello.txt tool.sh \
     && readlink link && readlink evil && ./tool.sh && (test -e /bin/vi && echo vi-present || echo vi-gone) \
     && (test -e later.txt && echo later-present || echo later-gone)";

async fn fingerprint(client: &caged_client::Client, id: &str) -> String {
    let result = client.run(id, &["sh", "-c", FINGERPRINT]).await.unwrap();
    assert_eq!(result.exit_code, Some(0), "{}", result.stderr);
    result.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_restore_fork_and_download_round_trip() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "name": "origin", "user": "root" }))
        .await;
    let setup = client.run(&id, &["sh", "-c", SETUP]).await.unwrap();
    assert_eq!(setup.exit_code, Some(0), "{}", setup.stderr);
    let before = fingerprint(client, &id).await;
    assert!(
        before.contains("vi-gone") && before.contains("later-gone"),
        "{before}"
    );

    let snapshot = client.create_snapshot(&id, Some("first")).await.unwrap();
    let sid = snapshot.id.clone();
    assert_eq!(snapshot.template, "busybox");
    assert!(snapshot.size_bytes > 19_000_000, "{snapshot:?}");
    assert_eq!(
        client.sandbox(&id).await.unwrap().state,
        "running",
        "thawed after the capture"
    );

    // Change things after the snapshot, and leave a process running.
    client
        .run(&id, &["sh", "-c", "echo later > /workspace/later.txt; echo changed > /workspace/hello.txt; rm /workspace/tool.sh; sleep 1000 >/dev/null 2>&1 </dev/null &"])
        .await
        .unwrap();
    let restored = client.restore(&id, &sid).await.unwrap();
    assert_eq!(restored.state, "running");
    assert_eq!(
        fingerprint(client, &id).await,
        before,
        "restore did not bring the snapshot back"
    );
    let ps = client.run(&id, &["ps", "-o", "args"]).await.unwrap();
    assert!(
        !ps.stdout.contains("sleep 1000"),
        "processes were not restarted: {}",
        ps.stdout
    );
    assert_eq!(
        server.engine_containers().await.len(),
        1,
        "the replaced container leaked"
    );

    // Fork: a new sandbox starting from the snapshot, same config, not the origin's name.
    let fork = client.fork(&sid, &json!(null)).await.unwrap();
    assert_ne!(fork.id, id);
    assert_eq!(fork.name, None);
    assert_eq!(fork.template, "busybox");
    assert_eq!(fingerprint(client, &fork.id).await, before);

    // Download: a standard .tar.gz that tar opens, with the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("snap.tar.gz");
    let out = caged(
        &server,
        &[
            "snapshot",
            "download",
            &sid,
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        untar.status.success(),
        "{}",
        String::from_utf8_lossy(&untar.stderr)
    );
    let big = std::fs::read(dir.path().join("workspace/src/deep/big.bin")).unwrap();
    let inside = client
        .read_file_bytes(&fork.id, "/workspace/src/deep/big.bin")
        .await
        .unwrap();
    assert_eq!(big, inside.to_vec());
    assert_eq!(
        std::fs::read_link(dir.path().join("workspace/evil"))
            .unwrap()
            .to_str(),
        Some("/etc/shadow")
    );
    let deleted = std::fs::read_to_string(dir.path().join(".caged-snapshot-deleted.txt")).unwrap();
    assert!(deleted.lines().any(|line| line == "/bin/vi"), "{deleted}");

    // The CLI lists it; deleting it frees it.
    let out = caged(&server, &["snapshot", "ls", &id]);
    assert!(
        stdout(&out).contains(&sid) && stdout(&out).contains("first"),
        "{}",
        stdout(&out)
    );
    client.delete_snapshot(&sid).await.unwrap();
    assert!(client.snapshots(&id).await.unwrap().is_empty());
    assert_eq!(
        error_code(client.restore(&id, &sid).await.unwrap_err()).0,
        404
    );
    // Someone else cannot use it.
    let other = server.new_account("other").await;
    let (status, _, _) = error_code(other.create_snapshot(&id, None).await.unwrap_err());
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_limits_are_clear_errors() {
    let server = caged_testkit::spawn_with(|config| {
        config.max_snapshots_per_sandbox = 2;
        config.snapshot_quota_bytes = 3_000_000;
    })
    .await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    client.create_snapshot(&id, None).await.unwrap();
    let second = client.create_snapshot(&id, None).await.unwrap();
    let (status, code, message) = error_code(client.create_snapshot(&id, None).await.unwrap_err());
    assert_eq!((status, code.as_str()), (422, "snapshot_limit"));
    assert_eq!(
        message,
        format!("sandbox {id} has 2 snapshots, the most allowed is 2; delete one first")
    );
    client.delete_snapshot(&second.id).await.unwrap();

    // Random data does not compress: 4 MB cannot fit a 3 MB quota.
    client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "head -c 4000000 /dev/urandom > /workspace/noise",
            ],
        )
        .await
        .unwrap();
    let (status, code, message) = error_code(client.create_snapshot(&id, None).await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (422, "snapshot_quota"),
        "{message}"
    );
    assert!(message.contains("of 3000000 bytes"), "{message}");
    assert_eq!(
        client.snapshots(&id).await.unwrap().len(),
        1,
        "a refused snapshot was kept"
    );
    let files = std::fs::read_dir(server.data_dir.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "a refused snapshot left its bytes");
}

/// A real snapshot-shaped blob cut in half.
fn truncated() -> Vec<u8> {
    let mut whole = zstd_tar(&[("workspace/a", tar::EntryType::Regular, 300_000)]);
    // Random-ish content so the compressed form is long enough to cut meaningfully.
    whole.truncate(whole.len() / 2);
    whole
}

fn zstd_tar(entries: &[(&str, tar::EntryType, u64)]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (name, kind, size) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(*size);
        header.set_mode(0o644);
        header.set_cksum();
        raw.extend_from_slice(header.as_bytes());
        raw.resize(raw.len() + (*size as usize).div_ceil(512) * 512, 0);
    }
    raw.resize(raw.len() + 1024, 0);
    zstd::encode_all(&raw[..], 3).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_snapshot_bytes_are_refused_and_change_nothing() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "resources": { "disk": 1 } }))
        .await;
    client
        .run(&id, &["sh", "-c", "echo original > /workspace/keep"])
        .await
        .unwrap();
    let sid = client.create_snapshot(&id, None).await.unwrap().id;
    client
        .run(&id, &["sh", "-c", "echo current > /workspace/keep"])
        .await
        .unwrap();
    let blob = server
        .data_dir
        .path()
        .join("snapshots")
        .join(format!("{sid}.tar.zst"));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            zstd_tar(&[
                ("workspace/ok", tar::EntryType::Regular, 1),
                ("/etc/evil", tar::EntryType::Regular, 1),
            ]),
            "absolute paths are not allowed",
        ),
        (
            zstd_tar(&[("workspace/../../etc/evil", tar::EntryType::Regular, 1)]),
            "`..` is not allowed",
        ),
        (
            zstd_tar(&[("dev/evil", tar::EntryType::Block, 0)]),
            "block device entries are not allowed",
        ),
        (
            zstd_tar(&[("workspace/.wh...", tar::EntryType::Regular, 0)]),
            "is not a clean absolute path",
        ),
        // A bomb: 2 GB of zeros, a few kilobytes compressed, into a 1 GB sandbox.
        (
            zstd_tar(&[("workspace/bomb", tar::EntryType::Regular, 2 << 30)]),
            "bytes unpacked",
        ),
        (b"not zstd at all".to_vec(), "cannot be applied"),
        (
            zstd_tar(&[("workspace/h", tar::EntryType::Link, 0)]),
            "hard link",
        ),
        (truncated(), "cannot be applied"),
    ];
    for (bytes, expected) in cases {
        std::fs::write(&blob, &bytes).unwrap();
        let (status, code, message) = error_code(client.restore(&id, &sid).await.unwrap_err());
        assert_eq!((status, code.as_str()), (422, "bad_snapshot"), "{message}");
        assert!(message.contains(expected), "{expected}: {message}");
        let (status, _, _) = error_code(client.fork(&sid, &json!(null)).await.unwrap_err());
        assert_eq!(status, 422);
        // The target is as it was, and nothing leaked.
        let keep = client.run(&id, &["cat", "/workspace/keep"]).await.unwrap();
        assert_eq!(keep.stdout, "current\n");
        assert_eq!(
            server.engine_containers().await.len(),
            1,
            "{expected}: a container leaked"
        );
    }
    assert_eq!(
        client.list_sandboxes(false).await.unwrap().len(),
        1,
        "a failed fork left a sandbox"
    );
}

/// Waits until the sandbox's log has a snapshot event with `op`, after event `after`.
async fn snapshot_event(
    client: &caged_client::Client,
    id: &str,
    after: i64,
    op: &str,
) -> caged_client::wire::Event {
    let started = std::time::Instant::now();
    loop {
        let events = client.events(id, after).await.unwrap();
        if let Some(event) = events
            .into_iter()
            .find(|e| e.kind == "snapshot" && e.payload["op"] == op)
        {
            return event;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no {op} snapshot event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn last_seq(client: &caged_client::Client, id: &str) -> i64 {
    client.events(id, 0).await.unwrap().last().unwrap().seq
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pause_takes_an_auto_snapshot_unless_nothing_changed() {
    let server = caged_testkit::spawn_with(|config| config.max_snapshots_per_sandbox = 2).await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let mut ids = Vec::new();
    for (round, content) in ["one", "two", "three"].into_iter().enumerate() {
        client
            .run(
                &id,
                &["sh", "-c", &format!("echo {content} > /workspace/f")],
            )
            .await
            .unwrap();
        let mark = last_seq(client, &id).await;
        client.pause(&id).await.unwrap();
        let event = snapshot_event(client, &id, mark, "auto").await;
        ids.push(event.payload["snapshot_id"].as_str().unwrap().to_string());
        if round == 0 {
            // Asleep and woken with nothing changed: no second copy.
            client.resume(&id).await.unwrap();
            let mark = last_seq(client, &id).await;
            client.pause(&id).await.unwrap();
            let skipped = snapshot_event(client, &id, mark, "auto-skipped").await;
            assert_eq!(
                skipped.payload["reason"],
                "nothing changed since the latest snapshot"
            );
        }
        client.resume(&id).await.unwrap();
    }
    // At the limit of two, the third pause evicted the oldest auto-snapshot instead of failing.
    let kept: Vec<String> = client
        .snapshots(&id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(kept, ids[1..].to_vec());
    assert!(
        client
            .snapshots(&id)
            .await
            .unwrap()
            .iter()
            .all(|s| s.kind == "auto")
    );
    let events = client.events(&id, 0).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.payload["op"] == "evicted" && e.payload["snapshot_id"] == ids[0].as_str())
    );
    // The latest auto-snapshot holds the latest content.
    client
        .run(&id, &["sh", "-c", "echo later > /workspace/f"])
        .await
        .unwrap();
    client.restore(&id, &ids[2]).await.unwrap();
    assert_eq!(
        client
            .run(&id, &["cat", "/workspace/f"])
            .await
            .unwrap()
            .stdout,
        "three\n"
    );
}

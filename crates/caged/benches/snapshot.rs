//! Snapshot benchmark: snapshot, restore and fork of a sandbox with ~200 MB of changed files,
//! against the raw floor on the same data in the same run: the engine's export piped to the same
//! compressor (zstd -1), `docker commit`, and an upload of the same diff as a plain archive.
//! Also fork of an unchanged snapshot against a plain create.
//!
//! `cargo bench -p caged --bench snapshot`; needs the engine and templates.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde_json::json;

/// 100 MB of random bytes (incompressible) and 100 MB of text (compressible), in 200 files.
const FILL: &str = "mkdir -p /workspace/data && cd /workspace/data && \
    for i in $(seq 100); do head -c 1000000 /dev/urandom > r$i; done && \
    for i in $(seq 100); do yes 'the quick brown fox jumps over the lazy dog' | head -c 1000000 > t$i; done";

#[tokio::main]
async fn main() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let docker = Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let id = server
        .sandbox(json!({ "template": "busybox", "resources": { "disk": 5 } }))
        .await;
    let fill = client.run(&id, &["sh", "-c", FILL]).await.unwrap();
    assert_eq!(fill.exit_code, Some(0), "{}", fill.stderr);
    let container = format!("caged-{}-{id}", server.installation_id);

    // Snapshot through Caged.
    let started = Instant::now();
    let snapshot = client.create_snapshot(&id, None).await.unwrap();
    let caged_snapshot = started.elapsed();
    let raw_bytes = snapshot.raw_bytes as f64;
    let sid = snapshot.id.clone();

    // Floor: the engine's export piped to zstd -1, nothing kept.
    let started = Instant::now();
    let mut export = docker.export_container(&container);
    let mut encoder = zstd::stream::write::Encoder::new(std::io::sink(), 1).unwrap();
    while let Some(chunk) = export.next().await {
        std::io::Write::write_all(&mut encoder, &chunk.unwrap()).unwrap();
    }
    encoder.finish().unwrap();
    let floor_export = started.elapsed();

    // Floor: docker commit of the same container.
    let started = Instant::now();
    let options = CommitContainerOptionsBuilder::default()
        .container(&container)
        .repo("caged-bench-commit")
        .build();
    docker
        .commit_container(options, bollard::models::ContainerConfig::default())
        .await
        .unwrap();
    let floor_commit = started.elapsed();
    let _ = docker
        .remove_image(
            "caged-bench-commit",
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;

    // Restore through Caged.
    let started = Instant::now();
    client.restore(&id, &sid).await.unwrap();
    let caged_restore = started.elapsed();

    // Floor: a fresh container of the same configuration, and the diff uploaded as a plain tar.
    let mut diff = Vec::new();
    let download = client
        .download_snapshot(&sid)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::io::copy(&mut flate2_reader(&download), &mut diff).unwrap();
    let (name, body) = caged_testkit::raw::sandbox_container(&server.installation_id);
    let started = Instant::now();
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .unwrap();
    docker.start_container(&name, None).await.unwrap();
    let upload = UploadToContainerOptionsBuilder::default().path("/").build();
    docker
        .upload_to_container(&name, Some(upload), bollard::body_full(diff.into()))
        .await
        .unwrap();
    let floor_restore = started.elapsed();
    let remove = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(&name, Some(remove)).await.unwrap();

    // Fork of the 200 MB snapshot.
    let started = Instant::now();
    let fork = client.fork(&sid, &json!(null)).await.unwrap();
    let caged_fork = started.elapsed();
    client.destroy(&fork.id).await.unwrap();

    // Fork of an unchanged snapshot against a plain create.
    let empty = server.sandbox(json!({ "template": "busybox" })).await;
    let empty_snapshot = client.create_snapshot(&empty, None).await.unwrap();
    let started = Instant::now();
    let plain = client
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .unwrap();
    let plain_create = started.elapsed();
    let started = Instant::now();
    let forked = client.fork(&empty_snapshot.id, &()).await.unwrap();
    let empty_fork = started.elapsed();
    for sandbox in [&plain.id, &forked.id, &empty, &id] {
        client.destroy(sandbox).await.unwrap();
    }

    let mb = raw_bytes / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!(
        "\nsnapshot of {mb:.0} MB of changed files (busybox sandbox), stored {:.0} MB",
        snapshot.size_bytes as f64 / 1e6
    );
    println!("{:<34} {:>9} {:>9}", "", "seconds", "MB/s");
    for (label, duration) in [
        ("caged snapshot create", caged_snapshot),
        ("floor: engine export | zstd -1", floor_export),
        ("floor: docker commit", floor_commit),
        ("caged restore", caged_restore),
        ("floor: create + upload plain tar", floor_restore),
        ("caged fork", caged_fork),
    ] {
        println!(
            "{label:<34} {:>9.2} {:>9.0}",
            duration.as_secs_f64(),
            rate(duration)
        );
    }
    println!(
        "ratios: snapshot {:.2}x export|zstd, {:.2}x commit; restore {:.2}x its floor; fork {:.2}x the restore floor",
        caged_snapshot.as_secs_f64() / floor_export.as_secs_f64(),
        caged_snapshot.as_secs_f64() / floor_commit.as_secs_f64(),
        caged_restore.as_secs_f64() / floor_restore.as_secs_f64(),
        caged_fork.as_secs_f64() / floor_restore.as_secs_f64(),
    );
    println!(
        "fork of an unchanged snapshot {:.0} ms vs plain create {:.0} ms: {:.2}x",
        empty_fork.as_secs_f64() * 1e3,
        plain_create.as_secs_f64() * 1e3,
        empty_fork.as_secs_f64() / plain_create.as_secs_f64()
    );
}

fn flate2_reader(bytes: &[u8]) -> impl std::io::Read + '_ {
    flate2::read::GzDecoder::new(bytes)
}

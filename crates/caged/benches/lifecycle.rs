//! Lifecycle benchmark: create→running, exec round trip and pause+resume through Caged's API,
//! against the same operations as raw Docker API calls, in the same run, reported as ratios.
//!
//! `cargo bench -p caged --bench lifecycle [-- ITERATIONS]`; needs the engine and templates.

use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use caged_testkit::stats::{ms, percentile};
use serde_json::json;

#[tokio::main]
async fn main() {
    let iterations: usize = std::env::args()
        .filter_map(|arg| arg.parse().ok())
        .next()
        .unwrap_or(15);
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let docker = Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("engine");

    let mut rows = Vec::new();

    // create → running
    let (mut caged_create, mut raw_create) = (Vec::new(), Vec::new());
    let (mut caged_ids, mut raw_ids) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let started = Instant::now();
        let id = client
            .create_sandbox(&json!({ "template": "busybox" }))
            .await
            .expect("create")
            .id;
        caged_create.push(started.elapsed());
        caged_ids.push(id);

        let (name, body) = caged_testkit::raw::sandbox_container(&server.installation_id);
        let started = Instant::now();
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        docker
            .create_container(Some(options), body)
            .await
            .expect("raw create");
        docker
            .start_container(&name, None)
            .await
            .expect("raw start");
        raw_create.push(started.elapsed());
        raw_ids.push(name);
    }
    rows.push(("create → running", caged_create, raw_create));

    // exec round trip of `true`
    let (mut caged_exec, mut raw_exec) = (Vec::new(), Vec::new());
    for i in 0..iterations * 3 {
        let id = &caged_ids[i % caged_ids.len()];
        let started = Instant::now();
        let result = client.run(id, &["true"]).await.expect("exec");
        assert_eq!(result.exit_code, Some(0));
        caged_exec.push(started.elapsed());

        let name = &raw_ids[i % raw_ids.len()];
        let started = Instant::now();
        caged_testkit::raw::exec(&docker, name, &["true"]).await;
        raw_exec.push(started.elapsed());
    }
    rows.push(("exec round trip", caged_exec, raw_exec));

    // pause + resume
    let (mut caged_pause, mut raw_pause) = (Vec::new(), Vec::new());
    for i in 0..iterations * 2 {
        let id = &caged_ids[i % caged_ids.len()];
        let started = Instant::now();
        client.pause(id).await.expect("pause");
        client.resume(id).await.expect("resume");
        caged_pause.push(started.elapsed());

        let name = &raw_ids[i % raw_ids.len()];
        let started = Instant::now();
        docker.pause_container(name).await.expect("pause");
        docker.unpause_container(name).await.expect("unpause");
        raw_pause.push(started.elapsed());
    }
    rows.push(("pause + resume", caged_pause, raw_pause));

    for id in &caged_ids {
        client.destroy(id).await.expect("destroy");
    }
    for name in &raw_ids {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(name, Some(options)).await;
    }

    println!("\nCaged vs raw Docker API, {iterations} sandboxes (busybox), medians and p90 in ms");
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "operation", "caged p50", "raw p50", "caged p90", "raw p90", "ratio"
    );
    for (name, mut caged, mut raw) in rows {
        let (caged_p50, caged_p90) = (percentile(&mut caged, 0.5), percentile(&mut caged, 0.9));
        let (raw_p50, raw_p90) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.9));
        println!(
            "{name:<18} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>7.2}x",
            ms(caged_p50),
            ms(raw_p50),
            ms(caged_p90),
            ms(raw_p90),
            ms(caged_p50) / ms(raw_p50)
        );
    }
}

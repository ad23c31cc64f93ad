//! Load benchmark: N sandboxes (busybox) created concurrently, each running one exec, then
//! destroyed, through a `caged server` process; the same work with raw Docker API calls on the
//! very same container configuration, in the same run. Reports total time, p50/p99 per
//! operation and the server's peak memory.
//!
//! `cargo bench -p caged --bench load [-- N]` (default 100); needs the engine and templates.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use caged_client::Client;
use caged_testkit::stats::{ms, percentile};
use serde_json::json;

#[derive(Default)]
struct Timings {
    create: Vec<Duration>,
    exec: Vec<Duration>,
    destroy: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .filter_map(|arg| arg.parse().ok())
        .next()
        .unwrap_or(100);
    // Make sure the templates exist (an in-process server imports them when missing).
    drop(caged_testkit::spawn().await);

    let data = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_caged"))
        .args([
            "server",
            "--no-gvisor-probe",
            "--preview-listen",
            "127.0.0.1:0",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sandbox-network",
            "10.209.0.0/16",
            "--dns-upstream",
            "127.0.0.1:9",
        ])
        .env("CAGED_DATA_DIR", data.path())
        .env("CAGED_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caged server");
    let url = format!("http://127.0.0.1:{port}");
    let client = loop {
        if let Ok(key) = std::fs::read_to_string(data.path().join("admin.key")) {
            let client = Client::new(&url, Some(key.trim().to_string()));
            if client.system().await.is_ok_and(|system| system.engine_up()) {
                break client;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let installation = client.system().await.unwrap().installation_id;

    // Caged.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let id = client
                .create_sandbox(&json!({ "template": "busybox" }))
                .await
                .expect("create")
                .id;
            let t1 = Instant::now();
            let result = client.run(&id, &["echo", "hello"]).await.expect("exec");
            assert_eq!(result.stdout, "hello\n");
            let t2 = Instant::now();
            client.destroy(&id).await.expect("destroy");
            (t1 - t0, t2 - t1, t2.elapsed())
        }));
    }
    let caged = collect(tasks).await;
    let caged_total = started.elapsed();
    let peak_kib = peak_memory_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();

    // Raw Docker API, same containers.
    let docker = Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let docker = docker.clone();
        let (name, body) = caged_testkit::raw::sandbox_container(&installation);
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            docker
                .create_container(Some(options), body)
                .await
                .expect("raw create");
            docker
                .start_container(&name, None)
                .await
                .expect("raw start");
            let t1 = Instant::now();
            caged_testkit::raw::exec(&docker, &name, &["echo", "hello"]).await;
            let t2 = Instant::now();
            let remove = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            docker
                .remove_container(&name, Some(remove))
                .await
                .expect("raw remove");
            (t1 - t0, t2 - t1, t2.elapsed())
        }));
    }
    let raw = collect(tasks).await;
    let raw_total = started.elapsed();
    caged_testkit::remove_installation(&installation).await;

    println!("\n{count} sandboxes created concurrently, one exec each, destroyed (busybox)");
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "", "caged p50", "raw p50", "caged p99", "raw p99", "ratio"
    );
    for (name, mut ours, mut theirs) in [
        ("create", caged.create, raw.create),
        ("exec", caged.exec, raw.exec),
        ("destroy", caged.destroy, raw.destroy),
    ] {
        let (p50, p99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
        let (raw_p50, raw_p99) = (percentile(&mut theirs, 0.5), percentile(&mut theirs, 0.99));
        println!(
            "{name:<10} {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>7.2}x",
            ms(p50),
            ms(raw_p50),
            ms(p99),
            ms(raw_p99),
            ms(p50) / ms(raw_p50)
        );
    }
    println!(
        "total      caged {:.2}s, raw {:.2}s: {:.2}x; caged server peak memory {:.1} MiB",
        caged_total.as_secs_f64(),
        raw_total.as_secs_f64(),
        caged_total.as_secs_f64() / raw_total.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<(Duration, Duration, Duration)>>) -> Timings {
    let mut timings = Timings::default();
    for task in tasks {
        let (create, exec, destroy) = task.await.expect("task");
        timings.create.push(create);
        timings.exec.push(exec);
        timings.destroy.push(destroy);
    }
    timings
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_memory_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmHWM:")
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            })
        })
        .unwrap_or(0)
}

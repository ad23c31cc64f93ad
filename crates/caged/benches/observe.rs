//! Observation benchmark: what watching a sandbox from the host (process events, file changes)
//! costs its workload, against the same workload with observation off, in the same run.
//!
//! One sandbox; two workloads, timed inside it: 10,000 short processes (`/bin/true` in a loop)
//! and untarring a large tree (the base template's `/usr`, about 9,000 files). Observed runs go
//! through Caged's API with its server (and observer) up; unobserved runs are the same commands
//! by a raw `docker exec` into the same container while the server is stopped, so nothing on the
//! host watches them. The two take turns, ROUNDS times each; medians are compared. Observed runs
//! also count the events recorded against what the workload did: nothing may go missing.
//! Target (issue "Sessions and trust scores"): under 10% slowdown, nothing lost.
//!
//! `cargo bench -p caged --bench observe [-- ROUNDS]`; needs root, the engine and the templates.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use caged_client::wire::Event;
use caged_testkit::TestServer;
use futures_util::StreamExt;
use serde_json::json;

const PROCESSES: u32 = 10_000;

/// The tree: the base template's /usr (about 9,000 files, 270 MB).
const PREPARE: &str = "tar -cf /tmp/tree.tar -C / usr && tar -tf /tmp/tree.tar | grep -vc '/$'";

fn timed(work: &str) -> String {
    format!("s=$(date +%s%N); {work}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))")
}

const PROCESS_LOOP: &str = "for i in $(seq 1 10000); do /bin/true measured; done";
const CLEAR_TREE: &str = "rm -rf /work/tree && mkdir -p /work/tree && sync";
const UNTAR: &str = "tar -xf /tmp/tree.tar -C /work/tree";

async fn run(server: &TestServer, id: &str, cmd: &str) -> String {
    let result = server
        .client
        .exec(id, &json!({ "cmd": ["bash", "-c", cmd] }))
        .await
        .expect("exec");
    assert_eq!(result.exit_code, Some(0), "{cmd}: {}", result.stderr);
    result.stdout.trim().to_string()
}

/// The same command by the engine alone (nothing of Caged's running).
async fn raw(docker: &Docker, container: &str, cmd: &str) -> String {
    let options = CreateExecOptions::<String> {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(vec!["bash".into(), "-c".into(), cmd.into()]),
        ..Default::default()
    };
    let exec = docker
        .create_exec(container, options)
        .await
        .expect("raw exec");
    let mut stdout = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.expect("raw start")
    {
        while let Some(Ok(chunk)) = output.next().await {
            if let bollard::container::LogOutput::StdOut { message } = chunk {
                stdout.push_str(&String::from_utf8_lossy(&message));
            }
        }
    }
    stdout.trim().to_string()
}

/// Events after `after` folded by `count`, once they reach `expect` and stop growing.
async fn settled_count(
    server: &TestServer,
    id: &str,
    after: i64,
    count: impl Fn(&Event) -> u64,
    expect: u64,
) -> u64 {
    let mut last = (0, Instant::now());
    loop {
        let mut total = 0;
        let mut seq = after;
        loop {
            let page = server.client.events(id, seq).await.expect("events");
            let Some(tail) = page.last() else { break };
            seq = tail.seq;
            total += page.iter().map(&count).sum::<u64>();
        }
        if total != last.0 {
            last = (total, Instant::now());
        }
        let quiet = last.1.elapsed() > Duration::from_secs(5);
        if (total >= expect && quiet) || last.1.elapsed() > Duration::from_secs(30) {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn last_seq(server: &TestServer, id: &str) -> i64 {
    let mut seq = 0;
    loop {
        let page = server.client.events(id, seq).await.expect("events");
        match page.last() {
            Some(tail) => seq = tail.seq,
            None => return seq,
        }
    }
}

#[derive(Default)]
struct Runs {
    processes_us: Vec<f64>,
    untar_us: Vec<f64>,
}

struct Seen {
    processes: u64,
    files: u64,
}

async fn observed(server: &TestServer, id: &str, files: u64, runs: &mut Runs) -> Seen {
    let before = last_seq(server, id).await;
    runs.processes_us.push(
        run(server, id, &timed(PROCESS_LOOP))
            .await
            .parse()
            .expect("micros"),
    );
    let is_measured = |e: &Event| {
        u64::from(
            e.kind == "process"
                && e.payload["op"] == "exec"
                && (e.payload["argv"] == json!(["/bin/true", "measured"])
                    || e.payload["argv"].is_null()),
        )
    };
    let processes = settled_count(server, id, before, is_measured, u64::from(PROCESSES)).await;

    run(server, id, CLEAR_TREE).await;
    let before = last_seq(server, id).await;
    runs.untar_us.push(
        run(server, id, &timed(UNTAR))
            .await
            .parse()
            .expect("micros"),
    );
    let created = |e: &Event| {
        if e.kind == "fs" {
            e.payload["created"].as_u64().unwrap_or(0)
        } else {
            0
        }
    };
    let files = settled_count(server, id, before, created, files).await;
    Seen { processes, files }
}

async fn unobserved(docker: &Docker, container: &str, runs: &mut Runs) {
    runs.processes_us.push(
        raw(docker, container, &timed(PROCESS_LOOP))
            .await
            .parse()
            .expect("micros"),
    );
    raw(docker, container, CLEAR_TREE).await;
    runs.untar_us.push(
        raw(docker, container, &timed(UNTAR))
            .await
            .parse()
            .expect("micros"),
    );
}

const GAP_PROCESSES: u64 = 1000;

/// What the host sees of a gVisor sandbox's work: its processes run inside gVisor's own kernel,
/// its files reach the host through gVisor's file proxy. Returns (processes seen, files seen,
/// files made).
async fn gvisor_gap(server: &TestServer) -> (u64, u64, u64) {
    let id = server
        .sandbox(json!({ "template": "base", "isolation": "gvisor" }))
        .await;
    let files: u64 = run(
        server,
        &id,
        "tar -cf /tmp/small.tar -C /usr/lib python3.11 && tar -tf /tmp/small.tar | grep -vc '/$'",
    )
    .await
    .parse()
    .expect("file count");
    let before = last_seq(server, &id).await;
    run(
        server,
        &id,
        &format!("for i in $(seq 1 {GAP_PROCESSES}); do /bin/true measured; done"),
    )
    .await;
    let is_measured = |e: &Event| {
        u64::from(e.kind == "process" && e.payload["argv"] == json!(["/bin/true", "measured"]))
    };
    let processes = settled_count(server, &id, before, is_measured, 0).await;
    let before = last_seq(server, &id).await;
    run(
        server,
        &id,
        "mkdir -p /work/small && tar -xf /tmp/small.tar -C /work/small",
    )
    .await;
    let created = |e: &Event| {
        if e.kind == "fs" {
            e.payload["created"].as_u64().unwrap_or(0)
        } else {
            0
        }
    };
    let seen = settled_count(server, &id, before, created, files).await;
    server.client.destroy(&id).await.expect("destroy");
    (processes, seen, files)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(7);
    let docker = Docker::connect_with_local_defaults().expect("docker");
    let mut server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "base" })).await;
    let container = server
        .engine_containers()
        .await
        .pop()
        .expect("the sandbox's container");
    let files: u64 = run(&server, &id, PREPARE)
        .await
        .parse()
        .expect("file count");
    // Warm the caches both read from.
    run(
        &server,
        &id,
        "for i in $(seq 1 300); do /bin/true warm-up; done",
    )
    .await;

    let (mut on, mut off) = (Runs::default(), Runs::default());
    let (mut lost_processes, mut lost_files) = (0u64, 0u64);
    for index in 0..rounds {
        // Alternate which goes first, so drift over the run favours neither.
        for observe in if index % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if observe {
                let seen = observed(&server, &id, files, &mut on).await;
                lost_processes =
                    lost_processes.max(u64::from(PROCESSES).saturating_sub(seen.processes));
                lost_files = lost_files.max(files.saturating_sub(seen.files));
                eprintln!(
                    "round {index} observed:   {:.0} ms processes, {:.0} ms untar (seen {} processes, {} created)",
                    on.processes_us.last().unwrap() / 1000.0,
                    on.untar_us.last().unwrap() / 1000.0,
                    seen.processes,
                    seen.files
                );
            } else {
                server.shutdown().await;
                // The observer thread notices the shutdown within its poll interval.
                tokio::time::sleep(Duration::from_millis(500)).await;
                unobserved(&docker, &container, &mut off).await;
                server.restart().await;
                eprintln!(
                    "round {index} unobserved: {:.0} ms processes, {:.0} ms untar",
                    off.processes_us.last().unwrap() / 1000.0,
                    off.untar_us.last().unwrap() / 1000.0
                );
            }
        }
    }
    server.client.destroy(&id).await.expect("destroy");
    let gap = gvisor_gap(&server).await;

    // Each observed run against the unobserved run of the same round: drift over the run (the
    // filesystem's background work, other load) cancels within a round, not across rounds.
    let ratio =
        |on: &[f64], off: &[f64]| median(on.iter().zip(off).map(|(on, off)| on / off).collect());
    let processes = (
        median(on.processes_us.clone()),
        median(off.processes_us.clone()),
        ratio(&on.processes_us, &off.processes_us),
    );
    let untar = (
        median(on.untar_us.clone()),
        median(off.untar_us.clone()),
        ratio(&on.untar_us, &off.untar_us),
    );
    println!(
        "observation overhead ({rounds} rounds, same sandbox, same run; ratio = median of per-round ratios)"
    );
    println!(
        "  {PROCESSES} processes: {:.0} ms observed vs {:.0} ms unobserved (medians) = {:.2}x; missing events (worst round): {lost_processes}",
        processes.0 / 1000.0,
        processes.1 / 1000.0,
        processes.2
    );
    println!(
        "  untar {files} files:  {:.0} ms observed vs {:.0} ms unobserved (medians) = {:.2}x; missing events (worst round): {lost_files}",
        untar.0 / 1000.0,
        untar.1 / 1000.0,
        untar.2
    );
    println!(
        "  under gVisor (same observer): {} of {GAP_PROCESSES} processes seen, {} of {} files seen created",
        gap.0, gap.1, gap.2
    );
    let met = processes.2 < 1.10 && untar.2 < 1.10 && lost_processes == 0 && lost_files == 0;
    println!(
        "  target (under 1.10x, nothing lost): {}",
        if met { "met" } else { "NOT met" }
    );
}

//! Preview benchmark, two parts, each against its raw baseline in the same run.
//!
//! 1. Proxy: requests per second and p99 latency through the preview proxy (Host-routed, TLS
//!    off, rate limit off) against a direct connection to the same server, dialled inside the
//!    sandbox's namespace the same way, with small and 1 MB responses. The server is the
//!    python dev server on the `base` template (keep-alive, threaded). A third column is a bare
//!    `splice(2)` relay into the same namespace (no HTTP, no checks, nothing copied through user
//!    space): what any proxy in the path costs on this machine, the ceiling for the real one.
//! 2. Port detection: one scan of N namespaces (N defaults to 300, one listener each) through
//!    the detector's reader against plain reads of the same `/proc/net/tcp{,6}` files.
//!
//! `cargo bench -p caged --bench preview [-- SECONDS [NAMESPACES]]` (SECONDS 0 skips the proxy
//! part; CAGED_BENCH_DISTINCT_PORTS=1 gives each namespace its own port); needs root, the
//! engine and the templates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caged_netns::NetNs;
use caged_netns::proc_net::TcpTables;
use caged_testkit::stats::ms;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse::<u64>().ok());
    let seconds = numbers.next().unwrap_or(4);
    let namespaces = numbers.next().unwrap_or(300) as usize;
    if seconds > 0 {
        proxy(seconds).await;
    }
    detection(namespaces);
}

async fn proxy(seconds: u64) {
    let server = caged_testkit::spawn_with(|config| config.preview.rate_limit_per_minute = 0).await;
    let client = &server.client;
    let id = client
        .create_sandbox(&json!({ "template": "base" }))
        .await
        .expect("sandbox")
        .id;
    client
        .write_file(
            &id,
            "/srv/server.py",
            caged_testkit::PREVIEW_SERVER_PY,
            None,
        )
        .await
        .expect("server script");
    client
        .run(
            &id,
            &["sh", "-c", "python3 /srv/server.py 8000 >/tmp/log 2>&1 &"],
        )
        .await
        .expect("server started");
    let started = Instant::now();
    while !client
        .previews(&id)
        .await
        .expect("previews")
        .iter()
        .any(|preview| preview.port == 8000)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ns = Arc::new(server.sandbox_namespace(&id).await);
    let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay listener");
    let relay = relay_listener.local_addr().expect("relay address");
    tokio::spawn(caged_testkit::bare_relay(
        relay_listener,
        ns.clone(),
        ([127, 0, 0, 1], 8000).into(),
    ));
    let host = format!("cage-{id}-8000.preview.localhost");
    let duration = Duration::from_secs(seconds);

    println!(
        "preview proxy vs direct, keep-alive connections, {seconds}s each, the median of \
         {ROUNDS} alternating rounds"
    );
    println!(
        "{:<8} {:>5} {:>12} {:>12} {:>7} {:>12} {:>11} {:>11} {:>7} {:>14} {:>14}",
        "response",
        "conns",
        "proxy req/s",
        "direct req/s",
        "ratio",
        "bare relay",
        "proxy p99",
        "direct p99",
        "ratio",
        "proxy CPU/req",
        "relay CPU/req"
    );
    for (label, path, connections) in [
        ("small", "/", 1),
        ("small", "/", 8),
        ("1 MB", "/big", 1),
        ("1 MB", "/big", 8),
    ] {
        // This machine's speed drifts from second to second: the three alternate, and each
        // reports its median round.
        let (mut direct, mut proxied, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let at = |target| load(target, &host, path, connections, duration);
            direct.push(at(Target::Direct(ns.clone())).await);
            proxied.push(at(Target::Proxy(server.preview_addr)).await);
            relayed.push(at(Target::Proxy(relay)).await);
        }
        let (direct, proxied, relayed) = (median(direct), median(proxied), median(relayed));
        println!(
            "{label:<8} {connections:>5} {:>12.0} {:>12.0} {:>6.2}x {:>11.2}x {:>9.2}ms {:>9.2}ms {:>6.2}x {:>12.0}µs {:>12.0}µs",
            proxied.rate,
            direct.rate,
            proxied.rate / direct.rate,
            relayed.rate / direct.rate,
            ms(proxied.p99),
            ms(direct.p99),
            proxied.p99.as_secs_f64() / direct.p99.as_secs_f64(),
            proxied.cpu_per_request(),
            relayed.cpu_per_request(),
        );
    }
    println!("(target: at least 0.70x of direct throughput for small responses, 0.90x for 1 MB)");
    println!(
        "('bare relay': a splice(2) relay with no HTTP in the same place, against direct: the \
         most any proxy here could reach)"
    );
    println!(
        "(the sandbox's server, the proxy and this load generator share the machine's {} cores; \
         'CPU/req' is what the server process spent per request through it)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    drop(server);
}

/// Rounds of each measurement.
const ROUNDS: usize = 3;

/// The round with the median rate.
fn median(mut rounds: Vec<Load>) -> Load {
    rounds.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    rounds.swap_remove(rounds.len() / 2)
}

enum Target {
    Proxy(SocketAddr),
    Direct(Arc<NetNs>),
}

struct Load {
    rate: f64,
    p99: Duration,
    requests: usize,
    /// CPU the server (everything in this process but the load generator) used meanwhile.
    server_cpu: Duration,
}

impl Load {
    /// Microseconds of the server process's CPU per request.
    fn cpu_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// The load generator's own runtime, on threads named apart so their CPU can be told from the
/// server's.
static LOAD: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(LOAD_THREAD)
        .enable_all()
        .build()
        .expect("load runtime")
});
const LOAD_THREAD: &str = "bench-load";

/// CPU used so far by this process's threads: (all of them, the load generator's).
fn cpu() -> (Duration, Duration) {
    // SAFETY: plain libc query.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut all, mut load) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = fields
            .get(11..13)
            .into_iter()
            .flatten()
            .filter_map(|field| field.parse::<u64>().ok())
            .sum();
        all += ticks;
        if name.starts_with(LOAD_THREAD) {
            load += ticks;
        }
    }
    let seconds = |ticks: u64| Duration::from_secs_f64(ticks as f64 / ticks_per_second);
    (seconds(all), seconds(load))
}

/// `connections` clients sending requests back to back for `duration`.
async fn load(
    target: Target,
    host: &str,
    path: &str,
    connections: usize,
    duration: Duration,
) -> Load {
    let target = Arc::new(target);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (target, stop, host, path) = (
            target.clone(),
            stop.clone(),
            host.to_string(),
            path.to_string(),
        );
        workers.push(LOAD.spawn(async move {
            let stream = match &*target {
                Target::Proxy(addr) => tokio::net::TcpStream::connect(addr).await,
                Target::Direct(ns) => ns.connect(([127, 0, 0, 1], 8000).into()).await,
            }
            .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(path.as_str())
                    .header("host", host.as_str())
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                // The connection may still be finishing the last response.
                sender.ready().await.expect("connection ready");
                let started = Instant::now();
                let response = sender.send_request(request).await.expect("response");
                assert!(response.status().is_success(), "{}", response.status());
                response.into_body().collect().await.expect("body");
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let started = Instant::now();
    let (all_before, load_before) = cpu();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    let (all_after, load_after) = cpu();
    let server_cpu = (all_after.saturating_sub(all_before))
        .saturating_sub(load_after.saturating_sub(load_before));
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    Load {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p99,
        requests: latencies.len(),
        server_cpu,
    }
}

/// One detector scan over `count` namespaces against plain reads of the same files.
fn detection(count: usize) {
    let private = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_child_ehash_entries")
        .map(|value| value.trim().to_string())
        .unwrap_or_default();
    println!();
    println!(
        "port detection over {count} namespaces (net.ipv4.tcp_child_ehash_entries = {private}, \
         {} ports)",
        if std::env::var_os("CAGED_BENCH_DISTINCT_PORTS").is_some() {
            "distinct"
        } else {
            "the same port in all"
        }
    );
    let mut spaces = Vec::new();
    // Sandboxes often serve the same port (every dev server on 5173), which puts all their
    // listeners in one bucket of the kernel's listening hash: the harder case, the default.
    let distinct = std::env::var_os("CAGED_BENCH_DISTINCT_PORTS").is_some();
    for index in 0..count {
        let port = if distinct { 8000 + index as u16 } else { 8000 };
        let (ns, listener) = std::thread::spawn(move || {
            // SAFETY: plain syscall on a thread that ends right after.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(unshared, 0, "needs root");
            let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("listen");
            (NetNs::current().expect("namespace"), listener)
        })
        .join()
        .expect("namespace thread");
        let tables = TcpTables::open(&ns).expect("tables");
        spaces.push((ns, listener, tables, port));
    }
    let rounds = 20;
    let mut raw = Vec::new();
    let mut detector = Vec::new();
    for _ in 0..rounds {
        // Raw: what any reader pays, the kernel walking the tables and formatting them.
        let started = Instant::now();
        for (ns, _, _, _) in &spaces {
            for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
                let mut bytes = Vec::new();
                let mut opened = ns
                    .open_file(std::path::Path::new(file))
                    .expect("open table");
                std::io::Read::read_to_end(&mut opened, &mut bytes).expect("read table");
            }
        }
        raw.push(started.elapsed());
        // The detector: re-reads its open descriptors and parses the listening rows.
        let started = Instant::now();
        for (_, _, tables, port) in &mut spaces {
            let ports = tables.listening().expect("scan");
            assert!(ports.contains_key(port));
        }
        detector.push(started.elapsed());
    }
    raw.sort();
    detector.sort();
    let (raw, detector) = (raw[rounds / 2], detector[rounds / 2]);
    println!(
        "one scan: detector {:.2} ms, raw reads {:.2} ms, ratio {:.2}x; {:.1} µs per namespace",
        ms(detector),
        ms(raw),
        detector.as_secs_f64() / raw.as_secs_f64(),
        detector.as_secs_f64() * 1e6 / count as f64,
    );
    println!(
        "share of one core: {:.1}% with all of them idle (scanned every 2 s), {:.1}% with all \
         of them in use (every 500 ms)",
        detector.as_secs_f64() / 2.0 * 100.0,
        detector.as_secs_f64() / 0.5 * 100.0,
    );
}

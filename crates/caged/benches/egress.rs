//! Egress benchmark: what the `allowlist` path (firewall redirect → Caged's egress proxy, which
//! reads the Host, resolves the name itself and connects) costs against the same transfer from a
//! `full` sandbox (routed with NAT), in the same run, to the same server on the test internet.
//!
//! Both sandboxes run the same python client: new-connection latency (connect, one small HTTP
//! request, read to the end; p50 and p99 over ROUNDS) and throughput (one 1 GB response).
//! Targets (issue "Network modes"): at least 80% of `full` throughput, under 1 ms added per
//! new connection. A third path, `relayed`, is the `full` sandbox reaching the same server
//! through a bare `splice(2)` relay on the test internet (no names, no checks): what one more
//! TCP hop through a process costs on this machine, the ceiling of any proxy, this one included.
//!
//! `cargo bench -p caged --bench egress [-- ROUNDS]`; needs root, the engine and the templates.

use std::time::Instant;

use caged_testkit::internet::{self, BULK_PORT, BULK_RELAY_PORT};
use serde_json::{Value, json};

const CLIENT: &str = r#"
import socket, sys, time
mode, rounds = sys.argv[1], int(sys.argv[2])
port = int(sys.argv[3])
# Resolved once: what is measured is the connection, not the resolver.
addr = socket.getaddrinfo("allowed.test", port, socket.AF_INET)[0][4][0]
def get(size):
    s = socket.create_connection((addr, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: allowed.test\r\n\r\n" % size)
    n = 0
    buf = bytearray(1 << 20)
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
    s.close()
    return n
for _ in range(20):
    get(1)
lat = []
for _ in range(rounds):
    t = time.perf_counter()
    get(1)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
t = time.perf_counter()
n = get(1000 * 1000 * 1000)
secs = time.perf_counter() - t
print("%f %f %f" % (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], n / secs / 1e6))
"#;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: u32 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(300);
    let internet = internet::internet().await;
    let resolver = internet.resolver();
    let server =
        caged_testkit::spawn_with(|config| config.network.upstream = Some(vec![resolver])).await;
    let full = server.sandbox(json!({ "template": "base" })).await;
    let allowlist = server
        .sandbox(json!({
            "template": "base",
            "network_mode": "allowlist",
            "allowed_hosts": ["allowed.test"],
        }))
        .await;

    let mut results: Vec<(String, [f64; 3])> = Vec::new();
    // Alternate, three times each, so drift on the machine hits all alike.
    for round in 0..3 {
        for (mode, id, port) in [
            ("full", &full, BULK_PORT),
            ("relayed", &full, BULK_RELAY_PORT),
            ("allowlist", &allowlist, BULK_PORT),
        ] {
            let started = Instant::now();
            let out = server
                .client
                .run(
                    id,
                    &[
                        "python3",
                        "-c",
                        CLIENT,
                        mode,
                        &rounds.to_string(),
                        &port.to_string(),
                    ],
                )
                .await
                .expect("client runs");
            assert_eq!(out.exit_code, Some(0), "{out:?}");
            let numbers: Vec<f64> = out
                .stdout
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            assert_eq!(numbers.len(), 3, "{out:?}");
            eprintln!(
                "round {round} {mode:9}: connect+request p50 {:.3} ms, p99 {:.3} ms, throughput {:.0} MB/s ({:.1} s)",
                numbers[0],
                numbers[1],
                numbers[2],
                started.elapsed().as_secs_f64()
            );
            results.push((mode.to_string(), [numbers[0], numbers[1], numbers[2]]));
        }
    }
    let best = |mode: &str, index: usize, lower_is_better: bool| {
        let values = results
            .iter()
            .filter(|(m, _)| m == mode)
            .map(|(_, v)| v[index]);
        if lower_is_better {
            values.fold(f64::INFINITY, f64::min)
        } else {
            values.fold(0.0, f64::max)
        }
    };
    let (full_p50, allow_p50) = (best("full", 0, true), best("allowlist", 0, true));
    let (full_p99, allow_p99) = (best("full", 1, true), best("allowlist", 1, true));
    let (full_tp, allow_tp) = (best("full", 2, false), best("allowlist", 2, false));
    let relayed_tp = best("relayed", 2, false);
    // Best rounds above (the least disturbed); medians too, since the machine drifts.
    let median = |mode: &str| {
        let mut values: Vec<f64> = results
            .iter()
            .filter(|(m, _)| m == mode)
            .map(|(_, v)| v[2])
            .collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let median_ratio = median("allowlist") / median("full");
    let summary: Value = json!({
        "new_connection_ms": { "full_p50": full_p50, "allowlist_p50": allow_p50, "added_p50": allow_p50 - full_p50,
                               "full_p99": full_p99, "allowlist_p99": allow_p99 },
        "throughput_mb_s": { "full": full_tp, "allowlist": allow_tp, "ratio": allow_tp / full_tp,
                             "bare_relay": relayed_tp, "bare_relay_ratio": relayed_tp / full_tp,
                             "median_ratio": median_ratio },
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    println!(
        "allowlist vs full: {:.2}x throughput (best rounds; {:.2}x by medians; target >= 0.8x), +{:.3} ms per new connection at p50 (target < 1 ms)",
        allow_tp / full_tp,
        median_ratio,
        allow_p50 - full_p50
    );
    println!(
        "bare splice relay vs full: {:.2}x throughput (the most any proxy in the path reaches here)",
        relayed_tp / full_tp
    );
}

//! LLM gateway benchmark: time to first byte and total time of a streamed Chat Completion
//! through the gateway against a direct call to the same provider, in the same run.
//!
//! The provider is the test suite's fake (a real HTTP server on loopback streaming CHUNKS
//! server-sent events with usage at the end). The gateway call is made the way a sandbox's agent
//! makes it: from inside the sandbox's network namespace, over its link, to the gateway on the
//! link's host address, with the sandbox's key. The direct call goes from the host to the
//! provider on loopback, asking for the same usage chunk the gateway asks for. Each path keeps
//! one connection alive across calls (as SDKs do); rounds alternate the two.
//!
//! `cargo bench -p caged --bench gateway [-- CALLS [CHUNKS]]` (defaults 500 and 100); needs
//! root, the engine and the templates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caged_testkit::llm::FakeLlm;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;

const ROUNDS: usize = 5;

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse::<usize>().ok());
    let calls = numbers.next().unwrap_or(500).max(ROUNDS);
    let chunks = numbers.next().unwrap_or(100) as u64;

    let llm = FakeLlm::start(1000, 200).await;
    llm.set_stream(chunks, Duration::ZERO);
    let url = llm.url();
    let server = caged_testkit::spawn_with(move |config| {
        config.cost.openai = caged_server::Upstream {
            base_url: url,
            api_key: Some("sk-bench".into()),
        };
    })
    .await;
    let client = &server.client;
    let id = client
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .expect("sandbox")
        .id;
    let env = client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "printf '%s %s' \"$OPENAI_BASE_URL\" \"$OPENAI_API_KEY\"",
            ],
        )
        .await
        .expect("the sandbox's environment")
        .stdout;
    let (base, key) = env.split_once(' ').expect("gateway variables");
    let gateway: SocketAddr = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|addr| addr.parse().ok())
        .expect("the gateway's address");
    let ns = server.sandbox_namespace(&id).await;

    let body = |usage: bool| {
        let mut body = json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "messages": [{ "role": "user", "content": "Write a haiku about sandboxes." }],
        });
        if usage {
            body["stream_options"] = json!({ "include_usage": true });
        }
        Bytes::from(body.to_string())
    };
    let through = Path {
        sender: connect(ns.connect(gateway).await.expect("dial the gateway")).await,
        host: gateway.to_string(),
        path: "/openai/v1/chat/completions".into(),
        key: key.to_string(),
        // The gateway adds the usage option itself.
        body: body(false),
    };
    let direct = Path {
        sender: connect(
            tokio::net::TcpStream::connect(llm.addr)
                .await
                .expect("dial the provider"),
        )
        .await,
        host: llm.addr.to_string(),
        path: "/v1/chat/completions".into(),
        key: "sk-bench".into(),
        body: body(true),
    };
    let mut paths = [through, direct];
    for path in paths.iter_mut() {
        for _ in 0..20 {
            path.call().await; // warm-up
        }
    }
    println!(
        "LLM gateway vs direct: streamed completions of {chunks} chunks, {ROUNDS} alternating rounds, one kept-alive connection per path"
    );
    println!(
        "{:<24} {:>7} {:>11} {:>11} {:>11} {:>9}",
        "", "calls", "TTFB p50", "TTFB p99", "total p50", "calls/s"
    );
    // As fast as the fake can send: what relaying costs per piece.
    measure(&mut paths, "unpaced", calls).await;
    // Paced like a fast provider (a piece every millisecond, 1,000 tokens/s).
    llm.set_stream(chunks, Duration::from_millis(1));
    measure(&mut paths, "paced 1 ms/chunk", (calls / 10).max(ROUNDS)).await;
    println!("(target: under 2 ms added to first byte, throughput within 5%)");
    let usage = client.usage(&id).await.expect("usage");
    println!(
        "metered: {} calls' tokens in the sandbox's usage ({} in, {} out)",
        usage.tokens_in / 1000,
        usage.tokens_in,
        usage.tokens_out
    );
    drop(server);
}

async fn measure(paths: &mut [Path; 2], label: &str, calls: usize) {
    let mut timings: [Vec<(Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (path, times) in paths.iter_mut().zip(timings.iter_mut()) {
            for _ in 0..calls / ROUNDS {
                times.push(path.call().await);
            }
        }
    }
    let stats = |times: &[(Duration, Duration)]| {
        let mut first: Vec<Duration> = times.iter().map(|t| t.0).collect();
        let mut total: Vec<Duration> = times.iter().map(|t| t.1).collect();
        first.sort();
        total.sort();
        let sum: Duration = total.iter().sum();
        (
            first[first.len() / 2],
            first[first.len() * 99 / 100],
            total[total.len() / 2],
            times.len() as f64 / sum.as_secs_f64(),
        )
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let [gateway, direct] = [stats(&timings[0]), stats(&timings[1])];
    for (name, (ttfb, p99, total, rate)) in [("gateway", gateway), ("direct", direct)] {
        println!(
            "{:<24} {:>7} {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>9.0}",
            format!("{label}, {name}"),
            timings[0].len(),
            ms(ttfb),
            ms(p99),
            ms(total),
            rate
        );
    }
    println!(
        "{label}: {:.3} ms added to first byte (p50), {:.3} ms (p99); throughput {:.2}x of direct",
        ms(gateway.0) - ms(direct.0),
        ms(gateway.1) - ms(direct.1),
        gateway.3 / direct.3
    );
}

struct Path {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    path: String,
    key: String,
    body: Bytes,
}

impl Path {
    /// One call: (time to the first body byte, time to the end).
    async fn call(&mut self) -> (Duration, Duration) {
        let request = Request::post(&self.path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(self.body.clone()))
            .expect("a valid request");
        self.sender.ready().await.expect("connection ready");
        let started = Instant::now();
        let response = self.sender.send_request(request).await.expect("answer");
        assert!(response.status().is_success(), "{}", response.status());
        let mut body = response.into_body();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body");
            if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                first = Some(started.elapsed());
            }
        }
        let total = started.elapsed();
        (first.unwrap_or(total), total)
    }
}

async fn connect(stream: tokio::net::TcpStream) -> SendRequest<Full<Bytes>> {
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender
}

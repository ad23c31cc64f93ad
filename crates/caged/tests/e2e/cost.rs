//! Cost: compute billed from the exact running intervals, LLM calls metered by the gateway on
//! each sandbox's link (against a fake provider on loopback that reports known usage), budget
//! alerts at 80/95/100% with signed webhooks, and the final snapshot before destruction.

use std::time::{Duration, Instant};

use caged_client::wire::Event;
use caged_domain::time::ms_from_rfc3339;
use caged_testkit::TestServer;
use caged_testkit::llm::FakeLlm;
use caged_testkit::webhook::WebhookReceiver;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::caged;

/// A server whose gateway forwards to `llm` with the operator's keys, with `prices`.
async fn server_with(llm: &FakeLlm, prices: &str) -> TestServer {
    let prices = caged_cost::Prices::from_yaml(prices).expect("a valid price table");
    let url = llm.url();
    caged_testkit::spawn_with(move |config| {
        config.cost.prices = prices;
        config.cost.openai = caged_server::Upstream {
            base_url: url.clone(),
            api_key: Some("sk-operator-openai".into()),
        };
        config.cost.anthropic = caged_server::Upstream {
            base_url: url,
            api_key: Some("sk-ant-operator".into()),
        };
        config.cost.webhooks_to_private = true;
    })
    .await
}

async fn events_of(server: &TestServer, id: &str, kind: &str) -> Vec<Event> {
    server
        .client
        .events(id, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == kind)
        .collect()
}

/// Polls `check` until it holds (or fails the test after a generous bound).
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes `count` unstreamed OpenAI calls from inside the sandbox; prints each status.
async fn calls(server: &TestServer, id: &str, count: usize) -> Result<String, String> {
    let script = format!(
        "for i in $(seq {count}); do curl -sS -o /dev/null -w '%{{http_code}}\\n' \
         -H \"Authorization: Bearer $OPENAI_API_KEY\" -H 'content-type: application/json' \
         -d '{{\"model\":\"test-model\",\"messages\":[]}}' \"$OPENAI_BASE_URL/chat/completions\"; done"
    );
    server
        .client
        .run(id, &["sh", "-c", &script])
        .await
        .map(|result| result.stdout)
        .map_err(|err| err.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_is_billed_for_exactly_the_running_intervals() {
    let llm = FakeLlm::start(0, 0).await;
    // 1 µ$ per vCPU-ms and 0.001 µ$ per MiB-ms: 2 vCPUs and 512 MiB cost 2.512 µ$ a millisecond.
    let server = server_with(&llm, "compute: { vcpu_hour: 3.6, gib_hour: 3.6864 }\n").await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "resources": { "cpu": 2, "memory": 512 } }))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.pause(&id).await.unwrap();
    // Paused, the bill stands still.
    let asleep = client.usage(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = client.usage(&id).await.unwrap();
    assert_eq!(asleep.running_ms, still.running_ms);
    assert_eq!(asleep.cost.compute_micros, still.cost.compute_micros);
    client.resume(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.destroy(&id).await.unwrap();

    let sandbox = client.sandbox(&id).await.unwrap();
    let transitions: Vec<(String, i64)> = sandbox
        .transitions
        .iter()
        .map(|t| (t.state.clone(), ms_from_rfc3339(&t.at).unwrap()))
        .collect();
    let running_ms: i64 = transitions
        .windows(2)
        .filter(|pair| pair[0].0 == "running")
        .map(|pair| pair[1].1 - pair[0].1)
        .sum();
    assert_eq!(
        transitions.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
        ["pending", "running", "paused", "running", "destroyed"]
    );
    let usage = client.usage(&id).await.unwrap();
    assert_eq!(usage.running_ms, running_ms, "{usage:#?}");
    assert_eq!(
        usage.cost.compute_micros,
        running_ms * 2512 / 1000,
        "{usage:#?}"
    );
    // The paused stretch (at least 600 ms) is not in it.
    let wall = transitions.last().unwrap().1 - transitions[1].1;
    assert!(running_ms <= wall - 600, "{running_ms} of {wall}");
    assert_eq!(usage.cost.llm_micros, 0);
    assert_eq!(
        sandbox
            .cost
            .expect("the server sends the cost")
            .total_micros,
        usage.cost.compute_micros
    );
    // A destroyed sandbox's bill is final.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.usage(&id).await.unwrap().running_ms, running_ms);
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_calls_are_metered_from_both_formats_streamed_or_not() {
    let llm = FakeLlm::start(1200, 345).await;
    // $2 and $10 per million: 1200 × 2 + 345 × 10 = 5850 µ$ a call.
    let server = server_with(
        &llm,
        "compute: { vcpu_hour: 0, gib_hour: 0 }\nmodels:\n  test-model: { input: 2, output: 10 }\n",
    )
    .await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "base" })).await;

    // The sandbox has the gateway and its own key; the operator's keys are nowhere in it.
    let env = client.run(&id, &["env"]).await.unwrap().stdout;
    assert!(
        env.contains(&format!("OPENAI_API_KEY=cgk-{id}-sandbox-")),
        "{env}"
    );
    assert!(env.contains("ANTHROPIC_BASE_URL=http://"), "{env}");
    assert!(
        env.contains("OPENAI_BASE_URL=http://") && env.contains("/openai/v1"),
        "{env}"
    );
    assert!(
        !env.contains("sk-operator") && !env.contains("sk-ant"),
        "{env}"
    );

    // One agent session, four calls: OpenAI and Anthropic, whole and streamed.
    let script = r#"set -e
j='content-type: application/json'
curl -sS -H "Authorization: Bearer $OPENAI_API_KEY" -H "$j" -d '{"model":"test-model","messages":[]}' "$OPENAI_BASE_URL/chat/completions"; echo
curl -sSN -H "Authorization: Bearer $OPENAI_API_KEY" -H "$j" -d '{"model":"test-model","stream":true,"messages":[]}' "$OPENAI_BASE_URL/chat/completions"; echo
curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' -H "$j" -d '{"model":"test-model","max_tokens":9,"messages":[]}' "$ANTHROPIC_BASE_URL/v1/messages"; echo
curl -sSN -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' -H "$j" -d '{"model":"test-model","max_tokens":9,"stream":true,"messages":[]}' "$ANTHROPIC_BASE_URL/v1/messages"; echo
"#;
    let run = caged(
        &server,
        &[
            "agent",
            &id,
            "--type",
            "test-agent",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let output = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{output}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The answers came through whole: both streams to their last piece.
    assert_eq!(output.matches("piece 4").count(), 2, "{output}");
    assert!(
        output.contains("[DONE]") && output.contains("message_stop"),
        "{output}"
    );
    assert!(output.contains("\"completion_tokens\":345"), "{output}");

    let session_id = client.sessions(&id).await.unwrap()[0].session.id.clone();
    let llm_events = eventually("four llm events", async || {
        let events = events_of(&server, &id, "llm").await;
        (events.len() == 4).then_some(events)
    })
    .await;
    let seen: Vec<(String, bool, u64, u64, i64)> = llm_events
        .iter()
        .map(|event| {
            let p = &event.payload;
            assert_eq!(event.session_id.as_ref(), Some(&session_id), "{event:#?}");
            assert_eq!(p["status"], 200);
            assert_eq!(p["outcome"], "completed");
            assert_eq!(p["model"], "test-model");
            assert!(p["latency_ms"].as_f64().unwrap() >= p["ttfb_ms"].as_f64().unwrap());
            (
                p["provider"].as_str().unwrap().to_string(),
                p["streamed"].as_bool().unwrap(),
                p["tokens_in"].as_u64().unwrap(),
                p["tokens_out"].as_u64().unwrap(),
                p["cost_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("openai".to_string(), false, 1200, 345, 5850),
            ("openai".to_string(), true, 1200, 345, 5850),
            ("anthropic".to_string(), false, 1200, 345, 5850),
            ("anthropic".to_string(), true, 1200, 345, 5850),
        ]
    );

    // The provider got the operator's keys, never the sandbox's; a streamed Chat Completion was
    // asked to include its usage.
    let got = llm.seen();
    assert_eq!(got.len(), 4);
    for call in &got[..2] {
        assert_eq!(
            call.authorization.as_deref(),
            Some("Bearer sk-operator-openai")
        );
    }
    for call in &got[2..] {
        assert_eq!(call.api_key.as_deref(), Some("sk-ant-operator"));
        assert_eq!(call.authorization, None);
    }
    assert_eq!(got[1].body["stream_options"]["include_usage"], true);

    // Totals: the sandbox's and the session's share.
    let usage = client.usage(&id).await.unwrap();
    assert_eq!((usage.tokens_in, usage.tokens_out), (4800, 1380));
    assert_eq!(usage.cost.llm_micros, 4 * 5850);
    let share = &usage.sessions[0];
    assert_eq!(share.id, session_id);
    assert_eq!((share.tokens_in, share.llm_micros), (4800, 4 * 5850));
    assert_eq!(
        client
            .session(&session_id)
            .await
            .unwrap()
            .session
            .tokens_out,
        1380
    );

    // A call outside any session is the sandbox's, not the session's.
    assert_eq!(calls(&server, &id, 1).await.unwrap().trim(), "200");
    // The charge is stored with its event, just after the answer's last byte went out.
    eventually("a fifth llm event", async || {
        (events_of(&server, &id, "llm").await.len() == 5).then_some(())
    })
    .await;
    let usage = client.usage(&id).await.unwrap();
    assert_eq!(usage.cost.llm_micros, 5 * 5850);
    assert_eq!(usage.sessions[0].llm_micros, 4 * 5850);

    // Keys that are not this sandbox's are refused before the provider: none, forged, another
    // sandbox's.
    let other = server
        .sandbox(json!({
            "template": "base",
            "network_mode": "allowlist",
            "allowed_hosts": ["example.com"],
        }))
        .await;
    let other_key = client
        .run(&other, &["sh", "-c", "printf %s \"$OPENAI_API_KEY\""])
        .await
        .unwrap()
        .stdout;
    assert!(
        other_key.starts_with(&format!("cgk-{other}-")),
        "{other_key}"
    );
    for key in [
        String::new(),
        format!("cgk-{id}-sandbox-0000000000"),
        other_key,
    ] {
        let script = format!(
            "curl -sS -w '\\n%{{http_code}}' -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \
             -d '{{\"model\":\"test-model\"}}' \"$OPENAI_BASE_URL/chat/completions\""
        );
        let answer = client
            .run(&id, &["sh", "-c", &script])
            .await
            .unwrap()
            .stdout;
        assert!(answer.ends_with("401"), "{key}: {answer}");
        assert!(answer.contains("authentication_error"), "{answer}");
    }
    assert_eq!(llm.seen().len(), 5);
    // An `allowlist` sandbox reaches the gateway too, without listing the provider.
    assert_eq!(calls(&server, &other, 1).await.unwrap().trim(), "200");
    assert_eq!(llm.seen().len(), 6);
    assert_eq!(client.usage(&other).await.unwrap().cost.llm_micros, 5850);
}

fn signed_correctly(received: &caged_testkit::webhook::Received, secret: &str) -> bool {
    let Some(signature) = received.header("caged-signature") else {
        return false;
    };
    let Some((t, v1)) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", received.body).as_bytes());
    hex::encode(mac.finalize().into_bytes()) == v1
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_alerts_fire_once_each_then_a_final_snapshot_and_destroy() {
    // Each call costs exactly $0.05; compute is free here, so spend moves only with calls.
    let llm = FakeLlm::start(50_000, 0).await;
    let server = server_with(
        &llm,
        "compute: { vcpu_hour: 0, gib_hour: 0 }\nmodels:\n  test-model: { input: 1, output: 0 }\n",
    )
    .await;
    let client = &server.client;
    let receiver = WebhookReceiver::start(1).await;
    let set = caged(&server, &["webhook", "set", &receiver.url(), "--json"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let hook: Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(hook["url"], receiver.url().as_str());
    let secret = hook["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));

    let id = server
        .sandbox(json!({ "template": "base", "budget": 1.0 }))
        .await;
    client
        .run(&id, &["sh", "-c", "echo precious > /workspace/work.txt"])
        .await
        .unwrap();
    let key = client
        .run(&id, &["sh", "-c", "printf %s \"$OPENAI_API_KEY\""])
        .await
        .unwrap()
        .stdout;

    let levels = async || -> Vec<(String, i64)> {
        events_of(&server, &id, "budget")
            .await
            .iter()
            .filter(|e| e.payload["op"] == "alert")
            .map(|e| {
                (
                    e.payload["level"].as_str().unwrap().to_string(),
                    e.payload["budget_micros"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    // 75%: nothing yet.
    assert_eq!(
        calls(&server, &id, 15)
            .await
            .unwrap()
            .matches("200")
            .count(),
        15
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(levels().await.is_empty());
    // 80%: the warning, once.
    calls(&server, &id, 1).await.unwrap();
    eventually("the warning", async || {
        (levels().await.len() == 1).then_some(())
    })
    .await;
    // 95%: critical.
    calls(&server, &id, 3).await.unwrap();
    eventually("the critical alert", async || {
        (levels().await.len() == 2).then_some(())
    })
    .await;
    let usage = client.usage(&id).await.unwrap();
    assert_eq!(usage.cost.total_micros, 950_000);
    assert_eq!(usage.cost.budget_percent, Some(95.0));

    // Raised live: the sequence stops (50% of the new budget, still running).
    let raised = caged(&server, &["budget", &id, "2"]);
    assert!(
        raised.status.success(),
        "{}",
        String::from_utf8_lossy(&raised.stderr)
    );
    assert!(String::from_utf8_lossy(&raised.stdout).contains("$2.000000"));
    calls(&server, &id, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(levels().await.len(), 2);
    assert_eq!(client.sandbox(&id).await.unwrap().state, "running");

    // On to 100% of $2 (20 calls) and beyond: the calls past the budget never reach the
    // provider, and the sandbox is destroyed (this exec may end with it).
    let _ = calls(&server, &id, 30).await;
    let destroyed = eventually("the destroy", async || {
        let sandbox = client.sandbox(&id).await.unwrap();
        (sandbox.state == "destroyed").then_some(sandbox)
    })
    .await;
    assert_eq!(
        destroyed.destroyed_reason.as_deref(),
        Some("budget exceeded")
    );
    assert_eq!(
        llm.seen().len(),
        15 + 1 + 3 + 1 + 20,
        "calls reached the provider past the budget"
    );
    assert_eq!(
        levels().await,
        [
            ("warning".to_string(), 1_000_000),
            ("critical".to_string(), 1_000_000),
            ("warning".to_string(), 2_000_000),
            ("critical".to_string(), 2_000_000),
            ("exceeded".to_string(), 2_000_000),
        ]
    );
    let end = eventually("the destroyed event", async || {
        events_of(&server, &id, "budget")
            .await
            .into_iter()
            .find(|e| e.payload["op"] == "destroyed")
    })
    .await;
    let snapshot_id = end.payload["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(end.payload["spend_micros"], 2_000_000);

    // The work is in the final snapshot.
    let snapshots = client.snapshots(&id).await.unwrap();
    let last = snapshots.iter().find(|s| s.id == snapshot_id).unwrap();
    assert_eq!(last.name.as_deref(), Some("final (budget exceeded)"));
    let fork = client.fork(&snapshot_id, &json!({})).await.unwrap();
    let kept = client
        .run(&fork.id, &["cat", "/workspace/work.txt"])
        .await
        .unwrap();
    assert_eq!(kept.stdout, "precious\n");

    // Its key is void: no link carries it any more, and another sandbox cannot use it.
    let script = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {key}' -d '{{}}' \"$OPENAI_BASE_URL/chat/completions\""
    );
    assert_eq!(
        client
            .run(&fork.id, &["sh", "-c", &script])
            .await
            .unwrap()
            .stdout,
        "401"
    );

    // Webhooks: each alert once (the first retried after a 500), all signed with the secret.
    let delivered = eventually("five webhooks delivered", async || {
        let received = receiver.received();
        (received.iter().filter(|r| r.status == 200).count() == 5).then_some(received)
    })
    .await;
    // The first was refused and sent again later (retries may overtake: order is not promised).
    assert_eq!(delivered.len(), 6);
    assert_eq!(delivered[0].status, 500);
    assert_eq!(
        delivered[0].header("caged-event"),
        Some("budget.warning"),
        "{delivered:?}"
    );
    assert!(
        delivered[1..]
            .iter()
            .any(|r| r.body == delivered[0].body && r.status == 200),
        "the refused delivery was not retried"
    );
    let mut kinds: Vec<String> = delivered[1..]
        .iter()
        .map(|r| r.header("caged-event").unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "budget.critical",
            "budget.critical",
            "budget.exceeded",
            "budget.warning",
            "budget.warning"
        ]
    );
    for received in &delivered {
        assert!(signed_correctly(received, &secret), "{received:?}");
        assert!(!signed_correctly(received, "whsec_wrong"));
    }
    let exceeded = delivered
        .iter()
        .find(|r| r.header("caged-event") == Some("budget.exceeded"))
        .unwrap();
    let last: Value = serde_json::from_str(&exceeded.body).unwrap();
    assert_eq!(last["data"]["snapshot_id"], snapshot_id.as_str());
    assert_eq!(last["sandbox"]["id"], id.as_str());
    let shown = client.webhook().await.unwrap();
    assert!(shown.deliveries.iter().all(|d| d.delivered_at.is_some()));

    // The CLI's account of it.
    let usage = caged(&server, &["usage", &id]);
    let text = String::from_utf8_lossy(&usage.stdout);
    assert!(
        text.contains("$2.000000") && text.contains("100.00% spent"),
        "{text}"
    );
    assert!(text.contains("exceeded"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_and_webhooks_reject_bad_input() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    for (body, message) in [
        (
            json!({ "budget_usd": -1 }),
            "budget_usd: must be at least 0.000001",
        ),
        (
            json!({ "budget_usd": "5" }),
            "budget_usd: must be a number of USD or null",
        ),
        (json!({ "budget": 5 }), "budget: unknown field"),
        (json!({}), "budget_usd: required"),
    ] {
        let (status, answer) = client
            .raw(
                reqwest::Method::PUT,
                &format!("/v1/sandboxes/{id}/budget"),
                Some(body),
            )
            .await
            .unwrap();
        assert_eq!(status, 400);
        let text = answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(text.contains(message), "{text}");
    }
    // No budget means no limit; `none` removes one.
    let set = client.set_budget(&id, Some(3.5)).await.unwrap();
    assert_eq!(set.budget_usd, Some(3.5));
    assert_eq!(client.sandbox(&id).await.unwrap().budget_usd, Some(3.5));
    let removed = caged(&server, &["budget", &id, "none"]);
    assert!(removed.status.success());
    assert_eq!(client.sandbox(&id).await.unwrap().budget_usd, None);
    let bad = caged(&server, &["budget", &id, "lots"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an amount of USD"));
    for url in [
        "ftp://example.com/x",
        "https://user:pw@example.com/",
        "not a url",
    ] {
        let err = client.set_webhook(url).await.unwrap_err().to_string();
        assert!(err.contains("url:"), "{url}: {err}");
    }
    // Webhooks to this host's own addresses are refused unless the server allows them.
    let err = client
        .set_webhook("http://127.0.0.1:9/hook")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--webhook-allow-private"), "{err}");
    let err = client
        .set_webhook("http://169.254.169.254/")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--webhook-allow-private"), "{err}");
    client.destroy(&id).await.unwrap();
}

/// A sandbox a restarted server finds past its budget (here: prices raised while it was down)
/// is destroyed, after its final snapshot, before the API answers anything about it.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_found_over_budget_at_start_is_gone_before_the_api_serves() {
    let llm = FakeLlm::start(0, 0).await;
    let mut server = server_with(&llm, "compute: { vcpu_hour: 0, gib_hour: 0 }\n").await;
    let id = server
        .sandbox(json!({ "template": "busybox", "budget": 1.0 }))
        .await;
    // Running costs nothing yet; let it run a little.
    server.client.run(&id, &["true"]).await.unwrap();
    let expensive = caged_cost::Prices::from_yaml("compute: { vcpu_hour: 1000000, gib_hour: 0 }\n")
        .expect("a valid price table");
    server
        .restart_with(move |config| config.cost.prices = expensive)
        .await;
    let sandbox = server.client.sandbox(&id).await.unwrap();
    assert_eq!(
        sandbox.state, "destroyed",
        "the first answer after the restart"
    );
    assert_eq!(
        sandbox.destroyed_reason.as_deref(),
        Some("budget exceeded"),
        "{sandbox:?}"
    );
    let snapshots = server.client.snapshots(&id).await.unwrap();
    assert!(
        snapshots
            .iter()
            .any(|s| s.name.as_deref() == Some("final (budget exceeded)")),
        "{snapshots:?}"
    );
}

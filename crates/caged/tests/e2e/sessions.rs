//! Sessions: each streaming exec, shell or agent is one, from the moment its command runs until
//! its channel ends, however it ends (exit, a killed client, a killed server).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caged_client::Client;
use caged_client::wire::{SessionListItem, SessionState};
use serde_json::{Value, json};

use crate::caged;
use crate::crash::ServerProcess;

/// The sandbox's sessions once `done` says so.
async fn wait_for_sessions(
    client: &Client,
    id: &str,
    done: impl Fn(&[SessionListItem]) -> bool,
) -> Vec<SessionListItem> {
    let started = Instant::now();
    loop {
        let sessions = client.sessions(id).await.unwrap();
        if done(&sessions) {
            return sessions;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sessions never got there: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_session_lasts_as_long_as_its_command() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let run = caged(
        &server,
        &[
            "agent",
            &id,
            "--type",
            "aider",
            "--",
            "sh",
            "-c",
            "echo working; exit 3",
        ],
    );
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("working"));

    let listed = caged(&server, &["sessions", &id, "--json"]);
    let sessions: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(
        (
            session["agent_type"].as_str(),
            session["channel"].as_str(),
            session["state"].as_str(),
            session["end_reason"].as_str()
        ),
        (
            Some("aider"),
            Some("agent"),
            Some("ended"),
            Some("exited (status 3)")
        )
    );
    let sid = session["id"].as_str().unwrap();
    let shown = caged(&server, &["session", sid, "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let events: Vec<(&str, &Value)> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| (event["kind"].as_str().unwrap(), &event["session_id"]))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|(kind, _)| *kind)
        .filter(|kind| *kind != "process")
        .collect();
    assert_eq!(kinds, vec!["session", "exec", "session"]);
    assert!(events.iter().all(|(_, session)| *session == sid));
    // The host saw the command's process, and knew whose it was.
    let seen = shown["events"].as_array().unwrap().iter().any(|event| {
        event["kind"] == "process"
            && event["payload"]["argv"] == json!(["sh", "-c", "echo working; exit 3"])
    });
    assert!(seen, "{:#}", shown["events"]);

    // A plain streaming exec is a session too, its agent inferred; a one-shot exec is not.
    server.client.run(&id, &["true"]).await.unwrap();
    let stream = server
        .client
        .exec_stream(
            &id,
            &json!({ "cmd": ["/bin/sh", "-c", "exit 0"], "tty": true }),
        )
        .await
        .unwrap();
    stream.output.collect().await.unwrap();
    let sessions = wait_for_sessions(&server.client, &id, |sessions| {
        sessions.len() == 2 && sessions[1].session.state == SessionState::Ended
    })
    .await;
    assert_eq!(sessions[1].session.agent_type, "shell");

    // Someone else's session is not found.
    let bob = server.new_account("bob").await;
    assert!(bob.session(sid).await.is_err());
    assert!(bob.sessions(&id).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_when_its_client_is_killed() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let mut agent = Command::new(env!("CARGO_BIN_EXE_caged"))
        .args(["agent", &id, "--", "sleep", "1000"])
        .envs(server.cli_env())
        .stdin(Stdio::piped()) // kept open: the agent waits for input like a real one
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sessions = wait_for_sessions(&server.client, &id, |sessions| {
        sessions
            .first()
            .is_some_and(|item| item.session.state == SessionState::Open)
    })
    .await;
    assert_eq!(sessions[0].session.agent_type, "unknown");
    agent.kill().unwrap(); // SIGKILL: no goodbye
    agent.wait().unwrap();
    let sessions = wait_for_sessions(&server.client, &id, |sessions| {
        sessions[0].session.state == SessionState::Ended
    })
    .await;
    assert_eq!(
        sessions[0].session.end_reason.as_deref(),
        Some("the client disconnected")
    );
    // Its command went with it.
    let ps = server.client.run(&id, &["ps"]).await.unwrap();
    assert!(!ps.stdout.contains("sleep 1000"), "{}", ps.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_a_killed_server_left_open_end_when_it_restarts() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), None).await;
    let (_, _cleanup) = server.installation().await;
    let id = server.busybox().await;
    let _stream = server
        .client
        .exec_stream(&id, &json!({ "cmd": ["sleep", "1000"], "stdin": true }))
        .await
        .unwrap();
    wait_for_sessions(&server.client, &id, |sessions| sessions.len() == 1).await;
    drop(server); // SIGKILL
    let server = ServerProcess::start(data.path(), None).await;
    let sessions = server.client.sessions(&id).await.unwrap();
    let session = &sessions[0].session;
    assert_eq!(
        (session.state, session.end_reason.as_deref()),
        (SessionState::Ended, Some("the server stopped"))
    );
}

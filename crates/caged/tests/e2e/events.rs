//! The event log: every transition, exec and file operation, listed and followed live.

use caged_client::wire::Event;
use serde_json::json;

use crate::{caged, error_code, stdout};

#[tokio::test(flavor = "multi_thread")]
async fn events_are_listed_and_followed_live() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    client.run(&id, &["sh", "-c", "exit 3"]).await.unwrap();
    client
        .write_file(&id, "/workspace/a.txt", "a", None)
        .await
        .unwrap();
    client.pause(&id).await.unwrap();
    client.resume(&id).await.unwrap();

    // What the host observed (processes, files) arrives on its own schedule; this test is about
    // the API's own events.
    let observed =
        |event: &Event| ["process", "fs", "file_open", "trust"].contains(&event.kind.as_str());
    let events: Vec<Event> = client
        .events(&id, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| !observed(event))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(kinds, ["state", "state", "exec", "file", "state", "state"]);
    assert_eq!(events[2].payload["cmd"], json!(["sh", "-c", "exit 3"]));
    assert_eq!(events[2].payload["exit_code"], 3);
    assert_eq!(events[3].payload["op"], "write");
    assert_eq!(events[3].payload["path"], "/workspace/a.txt");
    assert_eq!(
        events[4].payload,
        json!({ "from": "running", "to": "paused", "reason": null })
    );
    let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]));

    // Following: the backlog after a point, then what happens next, as it happens.
    let mut feed = client.follow_events(&id, seqs[3]).await.unwrap();
    let mut next = async || loop {
        let event = feed.next().await.unwrap().unwrap();
        if !observed(&event) {
            return event;
        }
    };
    assert_eq!(next().await.seq, seqs[4]);
    assert_eq!(next().await.seq, seqs[5]);
    client.run(&id, &["echo", "live"]).await.unwrap();
    let live = next().await;
    assert_eq!(live.kind, "exec");
    assert_eq!(live.payload["cmd"], json!(["echo", "live"]));

    // The CLI prints the same log, as JSON lines.
    let out = caged(&server, &["events", &id, "--json"]);
    let lines: Vec<Event> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|line| !observed(line)).count(),
        events.len() + 1
    );

    // Someone else's log is not found.
    let other = server.new_account("other").await;
    assert_eq!(error_code(other.events(&id, 0).await.unwrap_err()).0, 404);
    assert_eq!(
        error_code(other.follow_events(&id, 0).await.err().unwrap()).0,
        404
    );
}

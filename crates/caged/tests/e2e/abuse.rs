//! What one client can make the server do is bounded: a connection that trickles its headers is
//! cut off, guessing keys earns 429s instead of answers, and an account's sandboxes are capped.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error_code;

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    let server =
        caged_testkit::spawn_with(|config| config.header_timeout = Duration::from_secs(1)).await;
    let request = format!(
        "GET /v1/sandboxes HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        server.addr,
        "a".repeat(100)
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    // One byte every 100 ms: the whole request would take about 14 s.
    let trickle = async {
        for byte in request.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut answer = Vec::new();
    let closed = async { reader.read_to_end(&mut answer).await };
    tokio::select! {
        () = trickle => panic!("the server waited for a whole trickled request"),
        _ = closed => {}
    }
    // Closed without serving the request it never finished (which would have been a 401).
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("401"), "{answer}");

    // A client that sends its request at once is served, on the same listener.
    let served = reqwest::Client::new()
        .get(format!("{}/v1/sandboxes", server.url))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_a_refused_body_reads_the_refusal() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    // A 9 MB JSON body where 4 MB are accepted, sent whole as a plain client would, and only
    // then the answer read: the server refuses it at its headers, but must not reset the
    // connection under the client (which would lose the answer) while the body still comes.
    let body = format!(r#"{{"cmd":["echo","{}"]}}"#, "x".repeat(9 << 20));
    let head = format!(
        "POST /v1/sandboxes/{id}/exec HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        server.admin_key,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(body.as_bytes())
        .await
        .expect("the server reset the connection while the body was still being sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    // And it says that the connection ends, so a client does not send its next request on it.
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_keys_from_one_address_are_refused_with_429_before_they_are_checked() {
    let server = caged_testkit::spawn_with(|config| config.auth_failures_per_minute = 5).await;
    let http = reqwest::Client::new();
    let get = |key: Option<&str>| {
        let mut request = http.get(format!("{}/v1/sandboxes", server.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    // Right keys and no key at all are not failures: they never use up the allowance.
    for _ in 0..10 {
        assert_eq!(
            get(Some(&server.admin_key)).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(get(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..5 {
        let wrong = get(Some("caged_000000000000_0000")).await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    let refused = get(Some("caged_000000000000_0000")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Five a minute refill one every 12 s.
    assert!(
        (1..=12).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("5 a minute"),
        "{body}"
    );
    // While it lasts, even the right key from this address is not looked at: a guess that
    // happened to be right would learn nothing.
    let right = get(Some(&server.admin_key)).await.unwrap();
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    // The dashboard's sign-in form is the same door.
    let login = http
        .post(format!("{}/login", server.url))
        .header("origin", &server.url)
        .form(&[("api_key", server.admin_key.as_str()), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(login.headers().contains_key("retry-after"));
    assert!(
        login
            .text()
            .await
            .unwrap()
            .contains("too many failed sign-ins")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_has_at_most_its_share_of_live_sandboxes() {
    let server = caged_testkit::spawn_with(|config| config.max_sandboxes_per_account = 2).await;
    let alice = server.new_account("alice").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = alice
            .create_sandbox(&json!({ "template": "busybox" }))
            .await
            .unwrap();
        ids.push(created.id);
    }
    let err = alice
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .unwrap_err();
    let (status, code, message) = error_code(err);
    assert_eq!((status, code.as_str()), (429, "sandbox_limit"), "{message}");
    assert!(message.contains("already has 2 sandboxes"), "{message}");
    let (status, _) = alice
        .raw(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(json!({ "template": "busybox" })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The refused creates left nothing behind: no row, no container.
    assert_eq!(alice.list_sandboxes(true).await.unwrap().len(), 2);
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let filter = format!("dev.caged.installation={}", server.installation_id);
    let containers = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some([("label".to_string(), vec![filter])].into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(containers.len(), 2);
    // Another account has its own share.
    let bob = server.new_account("bob").await;
    let theirs = bob
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .unwrap();
    // A destroyed sandbox frees its place.
    alice.destroy(&ids[0]).await.unwrap();
    let again = alice
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .unwrap();
    for (client, id) in [(&alice, &ids[1]), (&alice, &again.id), (&bob, &theirs.id)] {
        client.destroy(id).await.unwrap();
    }
}

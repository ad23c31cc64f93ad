//! Accounts never see or touch each other's sandboxes; keys are checked.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::error_code;

#[tokio::test(flavor = "multi_thread")]
async fn a_second_account_cannot_see_or_touch_the_first() {
    let server = caged_testkit::spawn().await;
    let alice = server.new_account("alice").await;
    let bob = server.new_account("bob").await;
    let id = alice
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .unwrap()
        .id;

    assert!(bob.list_sandboxes(true).await.unwrap().is_empty());
    let not_found = format!("sandbox {id} not found");
    for err in [
        bob.sandbox(&id).await.unwrap_err(),
        bob.run(&id, &["true"]).await.unwrap_err(),
        bob.pause(&id).await.unwrap_err(),
        bob.destroy(&id).await.unwrap_err(),
        bob.read_file(&id, "/etc/passwd").await.err().unwrap(),
        bob.write_file(&id, "/tmp/x", "x", None).await.unwrap_err(),
        bob.previews(&id).await.unwrap_err(),
        bob.protect_preview(&id, 80, Some("long enough"))
            .await
            .unwrap_err(),
        bob.usage(&id).await.unwrap_err(),
        bob.set_budget(&id, Some(1.0)).await.unwrap_err(),
    ] {
        let (status, _, message) = error_code(err);
        assert_eq!((status, message.as_str()), (404, not_found.as_str()));
    }
    let err = bob
        .exec_stream(&id, &json!({ "cmd": ["true"] }))
        .await
        .err()
        .unwrap();
    assert_eq!(error_code(err).0, 404);
    // Alice's sandbox is untouched, and the admin does not see it in its own list either.
    assert_eq!(alice.sandbox(&id).await.unwrap().state, "running");
    // Webhooks are each account's own.
    alice
        .set_webhook("https://hooks.example.com/alice")
        .await
        .unwrap();
    assert_eq!(bob.webhook().await.unwrap().webhook.url, None);
    assert_eq!(
        alice.webhook().await.unwrap().webhook.url.as_deref(),
        Some("https://hooks.example.com/alice")
    );
    assert!(server.client.list_sandboxes(true).await.unwrap().is_empty());

    // Admin-only routes refuse ordinary accounts.
    let (status, code, _) = error_code(bob.create_account("mallory").await.unwrap_err());
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (status, _, _) = error_code(
        bob.import_template("evil", vec![0u8; 1024])
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    alice.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_need_a_valid_key() {
    let server = caged_testkit::spawn().await;
    let cases = [
        (None, "missing Authorization: Bearer <api key>"),
        (Some("nonsense"), "malformed API key"),
        (Some("caged_000000000000_0000"), "invalid API key"),
    ];
    for (key, expected) in cases {
        let client = caged_client::Client::new(&server.url, key.map(str::to_string));
        let (status, body) = client
            .raw(Method::GET, "/v1/sandboxes", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({ "error": { "code": "unauthorized", "message": expected } })
        );
    }
    // A real key id with a wrong secret is refused the same way.
    let (key_id, _) = server
        .admin_key
        .strip_prefix("caged_")
        .unwrap()
        .split_once('_')
        .unwrap();
    let forged = caged_client::Client::new(
        &server.url,
        Some(format!("caged_{key_id}_{}", "0".repeat(64))),
    );
    let (status, _) = forged
        .raw(Method::GET, "/v1/sandboxes", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The admin key file is private and keys are stored hashed.
    use std::os::unix::fs::PermissionsExt;
    let key_file = server.data_dir.path().join("admin.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, secret) = server
        .admin_key
        .strip_prefix("caged_")
        .unwrap()
        .split_once('_')
        .unwrap();
    for file in ["caged.db", "caged.db-wal"] {
        let bytes = std::fs::read(server.data_dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "key in {file}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_lists_the_routes() {
    let server = caged_testkit::spawn().await;
    let anonymous = caged_client::Client::new(&server.url, None);
    let (status, document) = anonymous
        .raw(Method::GET, "/v1/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/files",
        "/v1/sandboxes/{id}/usage",
        "/v1/account/webhook",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} missing");
    }
    let (status, body) = server
        .client
        .raw(Method::GET, "/v1/nowhere", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

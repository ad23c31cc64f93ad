//! The server starts without an engine, answers 503 with the reason, and picks the engine up
//! when it appears.

use caged_client::wire::EngineStatus;
use serde_json::json;
use tokio::net::{UnixListener, UnixStream};

use crate::error_code;

#[tokio::test(flavor = "multi_thread")]
async fn server_works_around_an_absent_engine_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let host = format!("unix://{}", socket.display());
    let server = caged_testkit::spawn_with(|config| config.docker_host = Some(host)).await;
    let client = &server.client;
    // Its templates, for when the engine "comes back".
    caged_testkit::provide_templates(&server.installation_id).await;

    let system = client.system().await.unwrap();
    assert!(
        matches!(system.engine, EngineStatus::Down { .. }),
        "{system:?}"
    );
    let (status, code, message) = error_code(
        client
            .create_sandbox(&json!({ "template": "busybox" }))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (503, "engine_unavailable"));
    assert!(
        message.starts_with("the container engine is unreachable"),
        "{message}"
    );
    // Reads that need only the database still work.
    assert!(client.list_sandboxes(true).await.unwrap().is_empty());

    // The engine "comes back": a socket at that address forwarding to the real one.
    let listener = UnixListener::bind(&socket).unwrap();
    let proxy = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = UnixStream::connect("/var/run/docker.sock").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    // Wait for the condition (the watcher retries every 2 s; a loaded machine may be slow).
    let mut up = false;
    for _ in 0..600 {
        if client.system().await.unwrap().engine_up() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the server did not notice the engine coming back");
    let sandbox = client
        .create_sandbox(&json!({ "template": "busybox" }))
        .await
        .unwrap();
    assert_eq!(sandbox.state, "running");
    client.destroy(&sandbox.id).await.unwrap();
    proxy.abort();
}

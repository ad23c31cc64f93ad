//! `.caged.yaml`: strict parsing with key and line in errors, `config schema`, `caged up` with
//! init_script.

use serde_json::json;

use crate::{caged, caged_in, error_code, stderr, stdout};

#[tokio::test(flavor = "multi_thread")]
async fn bad_configs_are_refused_naming_key_and_line() {
    let server = caged_testkit::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "template: busybox\nresources:\n  cpu: 0\n",
            "line 3: resources.cpu: must be between 0.1 and 64 (got 0)",
        ),
        (
            "resources:\n  memory: 10\n",
            "line 2: resources.memory: must be between 64 and 262144 MB (got 10)",
        ),
        (
            "timeout: -1\n",
            "line 1: timeout: invalid value: integer `-1`, expected u64",
        ),
        (
            "template: busybox\nnetwork: none\n",
            "line 2: network: unknown field `network`",
        ),
    ];
    for (yaml, expected) in cases {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = caged(&server, &["config", "validate", file.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).starts_with(&format!("caged: {}: {expected}", file.display())),
            "{}",
            stderr(&out)
        );
        let out = caged(&server, &["create", "-f", file.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    assert!(
        server.client.list_sandboxes(true).await.unwrap().is_empty(),
        "a bad config reached the server"
    );

    // The API applies the same checks to JSON.
    let (status, code, message) = error_code(
        server
            .client
            .create_sandbox(&json!({ "template": "busybox", "resources": { "memory": 10 } }))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "invalid_config"));
    assert_eq!(
        message,
        "resources.memory: must be between 64 and 262144 MB (got 10)"
    );

    // The schema is JSON Schema listing the keys.
    let out = caged(&server, &["config", "schema"]);
    let schema: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        schema["properties"]["network_mode"]["enum"],
        json!(["full", "allowlist", "none"])
    );
}

/// From the outside review: each of these used to create a sandbox other than the one asked
/// for (full network, no budget).
#[tokio::test(flavor = "multi_thread")]
async fn configs_that_used_to_fail_open_are_refused() {
    let server = caged_testkit::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "template: busybox\n---\nnetwork_mode: none\n",
            "a second YAML document starts here",
        ),
        (
            "template: busybox\nbudget: 1e309\n",
            "line 2: budget: must be a finite number",
        ),
    ];
    for (yaml, expected) in cases {
        let file = dir.path().join("open.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = caged(&server, &["create", "-f", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{yaml:?} was accepted");
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    // JSON with a key given twice: refused by name, whichever value came last.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes", server.url))
        .bearer_auth(server.client.api_key().unwrap())
        .header("content-type", "application/json")
        .body(r#"{"template":"busybox","network_mode":"none","network_mode":"full"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_json", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("network_mode: is given twice"),
        "{message}"
    );
    assert!(
        server.client.list_sandboxes(true).await.unwrap().is_empty(),
        "a config that fails open reached the engine"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn up_copies_the_project_and_runs_init_script() {
    let server = caged_testkit::spawn().await;
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join(".caged.yaml"),
        "template: busybox\nresources:\n  cpu: 0.5\n  memory: 128\ninit_script: ls > listing.txt && echo initialized\n",
    )
    .unwrap();
    std::fs::write(project.path().join("main.py"), "print('hi')\n").unwrap();
    let out = caged_in(&server, &["up"], Some(project.path()), None);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(stderr(&out).contains("initialized"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("init_script succeeded"),
        "{}",
        stderr(&out)
    );
    let listing = server
        .client
        .read_file_bytes(&id, "/workspace/listing.txt")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listing), "listing.txt\nmain.py\n");
    let sandbox = server.client.sandbox(&id).await.unwrap();
    let init = sandbox.init.expect("init_script ran");
    assert_eq!(init["status"], "succeeded");
    assert_eq!(init["stdout"], "initialized\n");
    assert_eq!(sandbox.resources.memory_mb, 128);

    // A failing init_script says so, exits non-zero and leaves the sandbox running.
    std::fs::write(
        project.path().join(".caged.yaml"),
        "template: busybox\ninit_script: echo oops >&2; exit 4\n",
    )
    .unwrap();
    let out = caged_in(&server, &["up"], Some(project.path()), None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("oops"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("init_script FAILED (exit 4)"),
        "{}",
        stderr(&out)
    );
    let id = stdout(&out).trim().to_string();
    let sandbox = server.client.sandbox(&id).await.unwrap();
    assert_eq!(sandbox.state, "running");
    assert_eq!(sandbox.init.unwrap()["exit_code"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_runs_init_script_in_the_background() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "busybox", "init_script": "echo made > /workspace/made" }))
        .await;
    let mut init = serde_json::Value::Null;
    for _ in 0..100 {
        init = server
            .client
            .sandbox(&id)
            .await
            .unwrap()
            .init
            .unwrap_or_default();
        if init["status"] == "succeeded" || init["status"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(init["status"], "succeeded", "{init}");
    let made = server
        .client
        .read_file_bytes(&id, "/workspace/made")
        .await
        .unwrap();
    assert_eq!(&made[..], b"made\n");
}

//! Who a sandbox's commands run as: the template's unprivileged `user` by default, `user:` to
//! choose, `--user` per command; files the API writes belong to the sandbox's user.

use reqwest::Method;
use serde_json::json;

use crate::{caged, error_code, stderr, stdout};

/// `uid:gid` of `path` in the sandbox.
async fn owner(server: &caged_testkit::TestServer, id: &str, path: &str) -> String {
    let out = server
        .client
        .run(id, &["stat", "-c", "%u:%g", path])
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "stat {path}: {}", out.stderr);
    out.stdout.trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_as_the_unprivileged_user_unless_asked() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({"template": "base"})).await;
    let detail = server.client.sandbox_detail(&id).await.unwrap();
    assert_eq!(detail.sandbox.user.as_deref(), Some("user"));
    assert!(
        detail.caged_yaml.contains("user: \"user\""),
        "{}",
        detail.caged_yaml
    );

    let out = server
        .client
        .run(&id, &["sh", "-c", "id -un; echo $HOME $USER $LANG; pwd"])
        .await
        .unwrap();
    assert_eq!(
        out.stdout, "user\n/home/user user C.UTF-8\n/workspace\n",
        "{}",
        out.stderr
    );
    let out = server
        .client
        .run(&id, &["grep", "^CapEff", "/proc/self/status"])
        .await
        .unwrap();
    assert_eq!(
        out.stdout, "CapEff:\t0000000000000000\n",
        "the user has no capabilities"
    );

    // As root, for one command: through the API and the CLI.
    let (status, body) = server
        .client
        .raw(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["sh", "-c", "id -u; echo $HOME $USER"], "user": "root"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "0\n/root root\n");
    let out = caged(&server, &["exec", "--user", "root", &id, "--", "id", "-un"]);
    assert_eq!(stdout(&out), "root\n", "{}", stderr(&out));

    // A user the template lacks, or that is no user name at all.
    let (status, body) = server
        .client
        .raw(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["id"], "user": "bob"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_user");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("base") && message.contains("\"bob\"") && message.contains("root, user"),
        "{message}"
    );
    let (status, body) = server
        .client
        .raw(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["id"], "user": "../0"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (400, &json!("invalid_exec"))
    );

    // The init script runs as the user too, in its /workspace.
    let id = server
        .sandbox(json!({"template": "base", "init_script": "id -un > who"}))
        .await;
    for _ in 0..200 {
        let detail = server.client.sandbox_detail(&id).await.unwrap();
        if detail
            .sandbox
            .init
            .as_ref()
            .is_some_and(|init| init["status"] != "running")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let who = server
        .client
        .read_file_bytes(&id, "/workspace/who")
        .await
        .unwrap();
    assert_eq!(&who[..], b"user\n");
    assert_eq!(owner(&server, &id, "/workspace/who").await, "1000:1000");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_user_key_names_an_account_of_the_template() {
    let server = caged_testkit::spawn().await;
    let (status, code, message) = error_code(
        server
            .client
            .create_sandbox(&json!({"template": "busybox", "user": "bob"}))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (422, "unknown_user"));
    assert!(
        message.starts_with("user: template busybox has no user \"bob\""),
        "the error names the key and the template: {message}"
    );
    let (status, code, message) = error_code(
        server
            .client
            .create_sandbox(&json!({"template": "busybox", "user": "Bob Smith"}))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "invalid_config"));
    assert!(message.starts_with("user: "), "{message}");
    assert!(
        server.client.list_sandboxes(true).await.unwrap().is_empty(),
        "a refused user leaves no sandbox behind"
    );

    let id = server
        .sandbox(json!({"template": "busybox", "user": "root"}))
        .await;
    let out = server.client.run(&id, &["id", "-u"]).await.unwrap();
    assert_eq!(out.stdout, "0\n");
    server
        .client
        .write_file(&id, "/workspace/f", "x", None)
        .await
        .unwrap();
    assert_eq!(owner(&server, &id, "/workspace/f").await, "0:0");

    // A template without `user` runs as root by default, as every template did before.
    server
        .client
        .import_template(
            "rootonly",
            crate::templates::busybox_with(&[("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")]),
        )
        .await
        .unwrap();
    let id = server.sandbox(json!({"template": "rootonly"})).await;
    let detail = server.client.sandbox_detail(&id).await.unwrap();
    assert_eq!(detail.sandbox.user.as_deref(), Some("root"));
    let out = server.client.run(&id, &["id", "-u"]).await.unwrap();
    assert_eq!(out.stdout, "0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_the_api_writes_belong_to_the_sandbox_user() {
    let server = caged_testkit::spawn().await;
    let id = server.sandbox(json!({"template": "busybox"})).await;
    server
        .client
        .write_file(&id, "/workspace/new/deep/file.txt", "hello", None)
        .await
        .unwrap();
    for path in [
        "/workspace/new",
        "/workspace/new/deep",
        "/workspace/new/deep/file.txt",
    ] {
        assert_eq!(owner(&server, &id, path).await, "1000:1000", "{path}");
    }
    // The user can change what the API wrote, as its own.
    let out = server
        .client
        .run(
            &id,
            &[
                "sh",
                "-c",
                "echo more >> /workspace/new/deep/file.txt && rm -r /workspace/new",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", out.stderr);

    // A folder through `caged cp`, and a tar into a folder that does not exist yet.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.py"), "print(1)\n").unwrap();
    let out = caged(
        &server,
        &[
            "cp",
            &dir.path().display().to_string(),
            &format!("{id}:/workspace/project"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for path in [
        "/workspace/project",
        "/workspace/project/src",
        "/workspace/project/src/main.py",
    ] {
        assert_eq!(owner(&server, &id, path).await, "1000:1000", "{path}");
    }

    // A snapshot keeps who owns what: restored, the user's files are still the user's.
    let out = server
        .client
        .run(&id, &["sh", "-c", "echo mine > /workspace/mine"])
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", out.stderr);
    let (status, body) = server
        .client
        .raw(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["touch", "/workspace/roots"], "user": "root"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let snapshot = server.client.create_snapshot(&id, None).await.unwrap();
    let fork = server.client.fork(&snapshot.id, &json!({})).await.unwrap();
    assert_eq!(fork.user.as_deref(), Some("user"));
    for path in ["/workspace/mine", "/workspace/project/src/main.py"] {
        assert_eq!(
            owner(&server, &fork.id, path).await,
            "1000:1000",
            "{path} in the fork"
        );
    }
    assert_eq!(
        owner(&server, &fork.id, "/workspace/roots").await,
        "0:0",
        "root's file stays root's"
    );
    server.client.restore(&id, &snapshot.id).await.unwrap();
    assert_eq!(owner(&server, &id, "/workspace/mine").await, "1000:1000");
    assert_eq!(owner(&server, &id, "/workspace/roots").await, "0:0");
}

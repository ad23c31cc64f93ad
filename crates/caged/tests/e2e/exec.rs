//! Exec: argv, exit codes, stderr, env, cwd, timeouts that kill the whole tree, streaming, PTY.

use caged_client::ExecEvent;
use serde_json::json;

use crate::error_code;

#[tokio::test(flavor = "multi_thread")]
async fn exec_reports_output_status_env_and_cwd() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "env": { "FROM_CONFIG": "yes" } }))
        .await;

    let result = client
        .exec(
            &id,
            &json!({ "cmd": ["sh", "-c", "echo out; echo err >&2; echo $FROM_CONFIG $EXTRA; pwd; exit 7"],
                     "env": { "EXTRA": "x y" }, "cwd": "/tmp" }),
        )
        .await
        .unwrap();
    assert_eq!(result.exit_code, Some(7));
    assert_eq!(result.stdout, "out\nyes x y\n/tmp\n");
    assert_eq!(result.stderr, "err\n");
    assert!(!result.timed_out);

    // argv is passed as is: no host shell splits or expands it.
    let result = client
        .run(&id, &["echo", "a  b", "$HOME", "*"])
        .await
        .unwrap();
    assert_eq!(result.stdout, "a  b $HOME *\n");

    // A program that does not exist is the command's failure, not the server's.
    let result = client.run(&id, &["/no/such/program"]).await.unwrap();
    assert_ne!(result.exit_code, Some(0));

    for (body, expected) in [
        (
            json!({ "cmd": [] }),
            "cmd: must name a program (an argv array, not a shell string)",
        ),
        (
            json!({ "cmd": "ls -l" }),
            "exec request: invalid type: string \"ls -l\", expected a sequence",
        ),
        (
            json!({ "cmd": ["ls"], "timeout": -1 }),
            "timeout: must be between 0 and 604800 seconds",
        ),
        (
            json!({ "cmd": ["ls"], "cwd": "../etc" }),
            "cwd: bad sandbox path \"../etc\": must be absolute (start with /)",
        ),
        (
            json!({ "cmd": ["echo", "a\u{0}b"] }),
            "cmd[1]: contains a NUL byte",
        ),
        (
            json!({ "cmd": ["echo", "x".repeat(200_000)] }),
            "cmd[1]: is 200001 bytes; the kernel takes at most 131072 per argument",
        ),
        (
            json!({ "cmd": ["echo"], "env": { "A": "a\u{0}b" } }),
            "env.A: contains a NUL byte (with the command's arguments)",
        ),
        (
            json!({ "cmd": ["echo", "x".repeat(100_000)], "env": { "A": "x".repeat(100_000), "B": "x".repeat(100_000),
                    "C": "x".repeat(100_000), "D": "x".repeat(100_000), "E": "x".repeat(100_000),
                    "F": "x".repeat(100_000), "G": "x".repeat(100_000), "H": "x".repeat(100_000),
                    "I": "x".repeat(100_000), "J": "x".repeat(100_000) } }),
            "env.J: takes the environment past 948570 bytes in all (with the command's arguments)",
        ),
    ] {
        let (status, code, message) = error_code(client.exec(&id, &body).await.unwrap_err());
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (400, "invalid_exec", expected)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_is_in_the_error_shape_whichever_layer_refused() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    // An 8 MB argv: refused by the body limit, before the handler, still as JSON.
    let huge = json!({ "cmd": ["echo", "x".repeat(8 << 20)] });
    let (status, body) = client
        .raw(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(huge),
        )
        .await
        .unwrap();
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    assert_eq!(
        body["error"]["message"],
        "request body too large: a JSON body may be at most 2 MB"
    );
    // A method the route does not take.
    let (status, body) = client
        .raw(reqwest::Method::PATCH, &format!("/v1/sandboxes/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // A 1 MB environment value is the request's fault, named, before any engine call.
    let (status, code, message) = error_code(
        client
            .create_sandbox(
                &json!({ "template": "busybox", "env": { "BIG": "x".repeat(1 << 20) } }),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, code.as_str()),
        (400, "invalid_config"),
        "{message}"
    );
    assert!(
        message.starts_with("env.BIG: is 1048581 bytes as NAME=value; the kernel takes at most"),
        "{message}"
    );
    assert_eq!(client.list_sandboxes(false).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_command_and_everything_it_started() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let result = client
        .exec(
            &id,
            &json!({ "cmd": ["sh", "-c", "echo started; (trap '' TERM; sleep 1000) & sleep 1000"], "timeout": 1 }),
        )
        .await
        .unwrap();
    assert!(result.timed_out);
    assert_eq!(result.stdout, "started\n");
    // No `sleep 1000` survives, not even the one that ignored SIGTERM in the background.
    let ps = client.run(&id, &["ps", "-o", "args"]).await.unwrap();
    assert!(
        !ps.stdout.contains("sleep 1000"),
        "left running:\n{}",
        ps.stdout
    );

    // The same through the streaming form.
    let stream = client
        .exec_stream(
            &id,
            &json!({ "cmd": ["sh", "-c", "sleep 1000 & sleep 1000"], "timeout": 0.5 }),
        )
        .await
        .unwrap();
    let (_, _, _, timed_out) = stream.output.collect().await.unwrap();
    assert!(timed_out);
    let ps = client.run(&id, &["ps", "-o", "args"]).await.unwrap();
    assert!(
        !ps.stdout.contains("sleep 1000"),
        "left running:\n{}",
        ps.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_exec_delivers_output_before_the_command_ends() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    // The command waits for input that is only sent once its first line has arrived, so the
    // first line must have been streamed while the command was still running.
    let mut stream = client
        .exec_stream(&id, &json!({ "cmd": ["sh", "-c", "echo ready; read line; echo got $line; echo bye >&2; exit 3"], "stdin": true }))
        .await
        .unwrap();
    let first = stream.output.next_event().await.unwrap().unwrap();
    assert_eq!(first, ExecEvent::Stdout("ready\n".into()));
    stream.sink.stdin(b"hello\n").await.unwrap();
    let (stdout, stderr, exit_code, timed_out) = stream.output.collect().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&stdout), "got hello\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "bye\n");
    assert_eq!((exit_code, timed_out), (Some(3), false));
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_exec_is_a_real_terminal_that_resizes() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    let mut stream = client
        .exec_stream(
            &id,
            &json!({ "cmd": ["sh"], "tty": true, "cols": 91, "rows": 33 }),
        )
        .await
        .unwrap();
    stream.sink.stdin(b"stty size; tty\n").await.unwrap();
    let mut seen = String::new();
    while !seen.contains("/dev/pts/") {
        match stream.output.next_event().await.unwrap().unwrap() {
            ExecEvent::Stdout(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
    }
    assert!(seen.contains("33 91"), "{seen:?}");
    stream.sink.resize(120, 40).await.unwrap();
    stream.sink.stdin(b"stty size; exit 5\n").await.unwrap();
    let (stdout, _, exit_code, _) = stream.output.collect().await.unwrap();
    assert!(
        String::from_utf8_lossy(&stdout).contains("40 120"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert_eq!(exit_code, Some(5));
}

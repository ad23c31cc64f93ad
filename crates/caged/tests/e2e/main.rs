//! End-to-end tests: a real server (in this process, on a random port) against the real
//! container engine, driven over HTTP and through the `caged` binary. One test binary, so it
//! links once.

mod abuse;
mod ca;
mod cli;
mod concurrency;
mod config;
mod cost;
mod crash;
mod dashboard;
mod engine_down;
mod events;
mod exec;
mod files;
mod gvisor;
mod idle;
mod lifecycle;
mod limits;
mod network;
mod openapi;
mod page;
mod previews;
mod security;
mod sessions;
mod snapshots;
mod templates;
mod tenancy;
mod trust;
mod users;

use std::process::Output;

use caged_testkit::TestServer;

/// Runs the `caged` binary against `server`.
pub fn caged(server: &TestServer, args: &[&str]) -> Output {
    caged_in(server, args, None, None)
}

pub fn caged_in(
    server: &TestServer,
    args: &[&str],
    dir: Option<&std::path::Path>,
    stdin: Option<&[u8]>,
) -> Output {
    use std::io::Write;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_caged"));
    command.args(args).envs(server.cli_env());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("caged binary runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    child.wait_with_output().expect("caged binary finishes")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The error code of a failed client call.
pub fn error_code(err: caged_client::ClientError) -> (u16, String, String) {
    match err {
        caged_client::ClientError::Api {
            status,
            code,
            message,
        } => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Waits until `path` exists in the sandbox: the sign that a command started elsewhere is
/// under way.
pub async fn wait_for_file(client: &caged_client::Client, id: &str, path: &str) {
    let started = std::time::Instant::now();
    while client
        .run(id, &["test", "-e", path])
        .await
        .unwrap()
        .exit_code
        != Some(0)
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{path} never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

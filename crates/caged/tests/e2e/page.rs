//! The product page's Config-as-Code example, as a new user runs it: `caged up` on a project
//! with its `.caged.yaml` (template `node-20`, `init_script: npm install`, an allowlist), with a
//! real package from the npm registry this machine reaches; and the same with pip in
//! `python-3.13`. The registries' hosts come from this machine's own npm and pip settings, and
//! the CAs a TLS-inspecting proxy needs from its own trust store, as `scripts/up` passes them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{caged, stderr, stdout};

/// The Config-as-Code example, exactly as the product page has it, with `allowed_hosts` as given.
fn page_example(template: &str, init_script: &str, allowed_hosts: &[String]) -> String {
    let hosts: String = allowed_hosts
        .iter()
        .map(|host| format!("  - {host}\n"))
        .collect();
    format!(
        "template: {template}\nresources:\n  cpu: 2\n  memory: 1024\n  disk: 10\ntimeout: 1800\n\
         budget: 5.00\ninit_script: {init_script}\nnetwork_mode: allowlist\nallowed_hosts:\n{hosts}"
    )
}

/// The LLM provider's host of the page's examples.
const PROVIDER: &str = "api.openai.com";

/// The npm registry's host, from this machine's npm (its `registry` setting or default).
fn npm_registry_host() -> String {
    let out = Command::new("npm")
        .args(["config", "get", "registry"])
        .output()
        .expect("npm on this machine (the registry is read from its settings)");
    host_of(String::from_utf8_lossy(&out.stdout).trim())
}

/// PyPI's hosts (its index and where its files are), from this machine's pip.
fn pypi_hosts() -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "from pip._internal.models.index import PyPI; print(PyPI.url); print(PyPI.file_storage_domain)",
        ])
        .output()
        .expect("python3 with pip on this machine");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let index = host_of(lines.next().expect("PyPI's index URL"));
    let files = lines.next().expect("PyPI's file host").trim().to_string();
    vec![index, files]
}

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| panic!("no host in {url:?}"))
        .to_string()
}

/// The CAs this host trusts beyond Debian's (a TLS-inspecting proxy's), as one PEM file, as
/// scripts/up gives them to the server; `None` when it trusts no others.
fn host_extra_cas(dir: &Path) -> Option<PathBuf> {
    let mut pem = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir("/usr/local/share/ca-certificates")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "crt"))
        .collect();
    files.sort();
    for file in files {
        pem.push_str(&std::fs::read_to_string(file).ok()?);
        pem.push('\n');
    }
    if pem.trim().is_empty() {
        return None;
    }
    let path = dir.join("host-ca.pem");
    std::fs::write(&path, pem).unwrap();
    Some(path)
}

/// A server whose sandboxes reach the real registries (the host's resolver, no test stub),
/// trusting the host's extra CAs unless `without_ca`.
async fn server(
    templates: &[&str],
    without_ca: bool,
) -> (caged_testkit::TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = if without_ca {
        None
    } else {
        host_extra_cas(dir.path())
    };
    let server = caged_testkit::spawn_with(|config| {
        config.network.upstream = None;
        config.sandbox_ca = ca;
    })
    .await;
    for template in templates {
        caged_testkit::provide_template(&server.installation_id, template).await;
    }
    (server, dir)
}

/// `caged up` on a project of `files`; its exit status, stdout and stderr.
fn up(server: &caged_testkit::TestServer, files: &[(&str, String)]) -> (bool, String, String) {
    let project = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(project.path().join(name), content).unwrap();
    }
    let out = caged(server, &["up", &project.path().display().to_string()]);
    (out.status.success(), stdout(&out), stderr(&out))
}

fn package_json() -> String {
    r#"{"name": "page-example", "version": "1.0.0", "private": true, "dependencies": {"is-number": "7.0.0"}}"#
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_example_installs_its_npm_dependency_as_the_user() {
    let (server, _dir) = server(&["node-20"], false).await;
    let registry = npm_registry_host();
    let config = page_example("node-20", "npm install", &[PROVIDER.to_string(), registry]);
    let (ok, out, err) = up(
        &server,
        &[(".caged.yaml", config), ("package.json", package_json())],
    );
    assert!(ok, "caged up succeeds: {err}");
    let id = out.trim().to_string();
    let run = caged(
        &server,
        &[
            "exec",
            &id,
            "--",
            "node",
            "-e",
            "require('is-number'); console.log(require('os').userInfo().username, process.version)",
        ],
    );
    let said = stdout(&run);
    assert!(
        said.starts_with("user v20."),
        "node requires the dependency, as user: {said} {}",
        stderr(&run)
    );
    let owner = server
        .client
        .run(
            &id,
            &[
                "stat",
                "-c",
                "%U",
                "/workspace/node_modules/is-number/package.json",
            ],
        )
        .await
        .unwrap();
    assert_eq!(owner.stdout, "user\n", "npm install ran as the user");
    let detail: Value =
        serde_json::from_str(&stdout(&caged(&server, &["inspect", &id, "--json"]))).unwrap();
    assert_eq!(detail["init"]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_example_as_written_says_the_registry_was_refused() {
    let (server, _dir) = server(&["node-20"], false).await;
    let registry = npm_registry_host();
    // The page's own allowlist: the LLM provider only.
    let config = page_example("node-20", "npm install", &[PROVIDER.to_string()]);
    let (ok, out, err) = up(
        &server,
        &[(".caged.yaml", config), ("package.json", package_json())],
    );
    assert!(!ok, "npm install cannot reach the registry: {err}");
    let id = out.trim();
    assert!(
        err.contains(&format!("the allowlist refused {registry}")),
        "caged up names the refused registry: {err}"
    );
    assert!(
        err.contains(&format!("caged network allow {id} {registry}"))
            && err.contains(&format!("  - {registry}")),
        "and says how to allow it: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_proxy_ca_the_tls_failure_is_named() {
    let dir = tempfile::tempdir().unwrap();
    if host_extra_cas(dir.path()).is_none() {
        eprintln!("this host trusts no extra CAs (no TLS-inspecting proxy): nothing to show");
        return;
    }
    let (server, _dir) = server(&["node-20"], true).await;
    let registry = npm_registry_host();
    let config = page_example("node-20", "npm install", &[PROVIDER.to_string(), registry]);
    let (ok, _, err) = up(
        &server,
        &[(".caged.yaml", config), ("package.json", package_json())],
    );
    assert!(!ok, "npm cannot verify the proxy's certificate: {err}");
    assert!(
        err.contains("TLS certificate verification failed in the sandbox")
            && err.contains("--sandbox-ca"),
        "caged up names the TLS failure and the fix: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_install_works_in_python_3_13_as_the_user() {
    let (server, _dir) = server(&["python-3.13"], false).await;
    let mut hosts = vec![PROVIDER.to_string()];
    hosts.extend(pypi_hosts());
    let config = page_example("python-3.13", "pip install -r requirements.txt", &hosts);
    let (ok, out, err) = up(
        &server,
        &[
            (".caged.yaml", config),
            ("requirements.txt", "six==1.16.0\n".to_string()),
        ],
    );
    assert!(ok, "caged up succeeds: {err}");
    let id = out.trim().to_string();
    let run = server
        .client
        .run(
            &id,
            &["python3", "-c", "import os, pwd, six, sys; print(pwd.getpwuid(os.getuid()).pw_name, sys.version_info[:2], six.__version__)"],
        )
        .await
        .unwrap();
    assert_eq!(run.stdout, "user (3, 13) 1.16.0\n", "{}", run.stderr);
}

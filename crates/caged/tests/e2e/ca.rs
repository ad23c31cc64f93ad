//! The operator's CA certificates (`caged server --sandbox-ca`) are trusted by the TLS clients
//! inside every sandbox, as a TLS-inspecting proxy's CA must be. The "inspected" host here is an
//! HTTPS server inside the sandbox itself, with a certificate only that CA vouches for.

use caged_client::Client;
use serde_json::json;

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

/// A CA, and a certificate for 127.0.0.1 signed by it.
fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Inspecting Proxy Test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

const SERVE: &str = r#"
import http.server, ssl
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"trusted\n")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 8443), Answer)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/tls/cert.pem", "/tls/key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// Puts the HTTPS server in the sandbox and waits until it listens.
async fn serve_tls(client: &Client, id: &str, pki: &Pki) {
    for (path, text) in [
        ("/tls/cert.pem", &pki.cert),
        ("/tls/key.pem", &pki.key),
        ("/tls/serve.py", &SERVE.to_string()),
    ] {
        client
            .write_file(id, path, text.clone(), None)
            .await
            .unwrap();
    }
    let started = client
        .run(
            id,
            &[
                "sh",
                "-c",
                r#"(setsid python3 /tls/serve.py > /tmp/serve.log 2>&1 &)
                for i in $(seq 100); do
                  python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8443))' 2>/dev/null && exit 0
                  sleep 0.1
                done
                cat /tmp/serve.log; exit 1"#,
            ],
        )
        .await
        .unwrap();
    assert_eq!(started.exit_code, Some(0), "{started:?}");
}

const CURL: [&str; 4] = ["curl", "-sS", "--max-time", "10"];
const URL: &str = "https://127.0.0.1:8443/";
const PYTHON_GET: &str = "import urllib.request; print(urllib.request.urlopen('https://127.0.0.1:8443/').read().decode(), end='')";

async fn curl(client: &Client, id: &str) -> caged_client::wire::ExecResult {
    let mut argv = CURL.to_vec();
    argv.push(URL);
    client.run(id, &argv).await.unwrap()
}

async fn count(client: &Client, id: &str, needle: &str, file: &str) -> usize {
    let out = client
        .run(id, &["grep", "-c", "--", needle, file])
        .await
        .unwrap();
    out.stdout.trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sandbox_trusts_the_operators_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy-ca.pem");
    std::fs::write(&file, format!("# the proxy's CA\n{}", pki.ca)).unwrap();
    let server = caged_testkit::spawn_with(|config| config.sandbox_ca = Some(file.clone())).await;
    let client = &server.client;

    let shown = client.system().await.unwrap().sandbox_ca.unwrap();
    assert_eq!(shown.file, file.to_string_lossy());
    assert_eq!(shown.certificates, 1);

    let id = server.sandbox(json!({ "template": "base" })).await;
    serve_tls(client, &id, &pki).await;
    let out = curl(client, &id).await;
    assert_eq!(
        (out.exit_code, out.stdout.as_str()),
        (Some(0), "trusted\n"),
        "{out:?}"
    );
    let out = client
        .run(&id, &["python3", "-c", PYTHON_GET])
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_str()),
        (Some(0), "trusted\n"),
        "{out:?}"
    );
    // A client that reads no variable uses the system bundle, which has it too.
    let out = client
        .run(
            &id,
            &[
                "env",
                "-u",
                "CURL_CA_BUNDLE",
                "-u",
                "SSL_CERT_FILE",
                "curl",
                "-sS",
                URL,
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "trusted\n", "{out:?}");

    let env = client
        .run(&id, &["sh", "-c", "echo $SSL_CERT_FILE $NODE_EXTRA_CA_CERTS $REQUESTS_CA_BUNDLE $PIP_CERT $CURL_CA_BUNDLE $GIT_SSL_CAINFO"])
        .await
        .unwrap();
    let bundle = "/etc/caged/ca-certificates.crt";
    assert_eq!(
        env.stdout.trim(),
        format!("{bundle} /etc/caged/operator-ca.pem {bundle} {bundle} {bundle} {bundle}")
    );
    // The public roots are kept beside the operator's, and only the certificate went in.
    assert!(count(client, &id, "BEGIN CERTIFICATE", bundle).await > 100);
    let operator = client
        .read_file_bytes(&id, "/etc/caged/operator-ca.pem")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&operator), pki.ca);

    // A restored sandbox gets the operator's block once, not once more per restore.
    let snapshot = client.create_snapshot(&id, None).await.unwrap();
    client.restore(&id, &snapshot.id).await.unwrap();
    for file in [bundle, "/etc/ssl/certs/ca-certificates.crt"] {
        assert_eq!(
            count(client, &id, "caged: operator CA certificates (begin)", file).await,
            1,
            "{file}"
        );
    }
    serve_tls(client, &id, &pki).await;
    assert_eq!(curl(client, &id).await.stdout, "trusted\n");

    // What the user sets explicitly wins over the server's variables.
    let own = server
        .sandbox(json!({ "template": "busybox", "env": { "SSL_CERT_FILE": "/mine.pem" } }))
        .await;
    let out = client
        .run(&own, &["sh", "-c", "echo $SSL_CERT_FILE"])
        .await
        .unwrap();
    assert_eq!(out.stdout, "/mine.pem\n");
    // A template without a TLS stack still gets the files (and no system bundle made up).
    assert_eq!(count(client, &own, "BEGIN CERTIFICATE", bundle).await, 1);
    let system = client
        .run(&own, &["ls", "/etc/ssl/certs/ca-certificates.crt"])
        .await
        .unwrap();
    assert_ne!(system.exit_code, Some(0), "{system:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_ca_the_inspected_host_is_refused_by_name() {
    let pki = pki();
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    assert_eq!(client.system().await.unwrap().sandbox_ca, None);
    let id = server.sandbox(json!({ "template": "base" })).await;
    serve_tls(client, &id, &pki).await;
    let out = curl(client, &id).await;
    // curl's "peer certificate cannot be authenticated with given CA certificates".
    assert_eq!(out.exit_code, Some(60), "{out:?}");
    assert!(out.stderr.contains("certificate"), "{out:?}");
}

#[test]
fn a_ca_file_that_is_not_certificates_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key-not-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&file, key.serialize_pem()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_caged"))
        .args([
            "server",
            "--no-gvisor-probe",
            "--listen",
            "127.0.0.1:0",
            "--preview-listen",
            "127.0.0.1:0",
            "--sandbox-network",
            &caged_testkit::sandbox_network(dir.path()),
            "--sandbox-ca",
        ])
        .arg(&file)
        .env("CAGED_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--sandbox-ca")
            && stderr.contains(&*file.to_string_lossy())
            && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}

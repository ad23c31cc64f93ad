//! Preview URLs: real servers inside sandboxes (busybox httpd, python on `base`), detected from
//! the host and reached through the proxy by Host header, over HTTP/1.1, HTTP/2, WebSocket and
//! TLS; passwords, cookies, the rate limit, wake on request, `network_mode: none`.

use std::time::{Duration, Instant};

use caged_client::Client;
use caged_client::wire::Preview;
use caged_testkit::TestServer;
use caged_testkit::http::{self, request, send};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

use crate::{caged, error_code};

const DOMAIN: &str = "preview.localhost";

fn host(id: &str, port: u16) -> String {
    format!("cage-{id}-{port}.{DOMAIN}")
}

/// The sandbox's previews once `port` is (`true`) or is no longer (`false`) listening.
async fn wait_for_port(client: &Client, id: &str, port: u16, listening: bool) -> Vec<Preview> {
    let started = Instant::now();
    loop {
        let previews = client.previews(id).await.unwrap();
        let seen = previews
            .iter()
            .any(|preview| preview.port == port && preview.listening);
        if seen == listening {
            return previews;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "port {port} listening={seen}, waited for {listening}: {previews:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(server: &TestServer, host: &str, path: &str) -> http::Reply {
    send(server.preview_addr, request("GET", host, path, &[])).await
}

/// Starts busybox httpd serving `/workspace/www` (with an index.html saying `text`) on `bind`.
async fn busybox_httpd(client: &Client, id: &str, bind: &str, text: &str) {
    let script = format!(
        "mkdir -p /workspace/www && echo {text} > /workspace/www/index.html && httpd -p {bind} -h /workspace/www"
    );
    let started = client.run(id, &["sh", "-c", &script]).await.unwrap();
    assert_eq!(started.exit_code, Some(0), "{started:?}");
}

/// Starts the python dev server on 127.0.0.1:`port` in a `base` sandbox.
async fn python_server(client: &Client, id: &str, port: u16) {
    client
        .write_file(
            id,
            "/srv/preview_server.py",
            caged_testkit::PREVIEW_SERVER_PY,
            None,
        )
        .await
        .unwrap();
    let script = format!("python3 /srv/preview_server.py {port} >/tmp/server.log 2>&1 &");
    client.run(id, &["sh", "-c", &script]).await.unwrap();
    wait_for_port(client, id, port, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_are_detected_from_the_host_and_served_by_host_name() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    busybox_httpd(client, &id, "127.0.0.1:8080", "loopback-only").await;

    let previews = wait_for_port(client, &id, 8080, true).await;
    let preview = previews.iter().find(|p| p.port == 8080).unwrap();
    assert_eq!(preview.address.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        preview.url,
        format!("http://{}:{}", host(&id, 8080), server.preview_addr.port())
    );
    // Docker's resolver listens in the sandbox too, but it is the engine's, not a preview.
    assert!(
        previews
            .iter()
            .all(|p| p.address.as_deref() != Some("127.0.0.11")),
        "{previews:?}"
    );

    // Case and a trailing dot do not matter; the port in Host does not either.
    for name in [
        host(&id, 8080),
        host(&id, 8080).to_uppercase(),
        format!("{}.:{}", host(&id, 8080), server.preview_addr.port()),
    ] {
        let reply = get(&server, &name, "/").await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "loopback-only\n"),
            "{name}"
        );
    }

    // inspect and the CLI show it too.
    let inspected = client.sandbox_detail(&id).await.unwrap();
    assert_eq!(inspected.previews[0].port, 8080);
    let listed = caged(&server, &["preview", "ls", &id]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(stdout.contains(&host(&id, 8080)), "{stdout}");

    // A closed port is a clear 502, and its disappearance an event.
    let killed = client.run(&id, &["killall", "httpd"]).await.unwrap();
    assert_eq!(killed.exit_code, Some(0), "{killed:?}");
    wait_for_port(client, &id, 8080, false).await;
    let reply = get(&server, &host(&id, 8080), "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-caged-error"), Some("upstream_unreachable"));
    let events = client.events(&id, 0).await.unwrap();
    let ports: Vec<(i64, &str)> = events
        .iter()
        .filter(|event| event.kind == "port")
        .map(|event| {
            (
                event.payload["port"].as_i64().unwrap(),
                event.payload["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, vec![(8080, "open"), (8080, "closed")]);

    // The port of a service on the host's own loopback leads into the sandbox, not the host.
    let host_service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let reply = get(&server, &host(&id, host_port), "/").await;
    assert_eq!(reply.status, 502);
    let accepted = tokio::time::timeout(Duration::from_millis(200), host_service.accept()).await;
    assert!(
        accepted.is_err(),
        "the proxy reached the host's own service"
    );

    // Unknown and destroyed sandboxes are 404s.
    let reply = get(&server, &host("0badf00d", 80), "/").await;
    assert_eq!(
        (reply.status, reply.header("x-caged-error")),
        (404, Some("no_sandbox"))
    );
    busybox_httpd(client, &id, "9090", "last").await;
    wait_for_port(client, &id, 9090, true).await;
    client.destroy(&id).await.unwrap();
    let reply = get(&server, &host(&id, 9090), "/").await;
    assert_eq!(reply.status, 404);
    assert!(client.previews(&id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_do_not_name_a_preview_exactly_are_refused() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    busybox_httpd(client, &id, "0.0.0.0:80", "served").await;
    wait_for_port(client, &id, 80, true).await;
    let good = host(&id, 80);
    for bad in [
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        DOMAIN.to_string(),
        format!("x.{good}"),
        format!("{good}.evil.test"),
        format!("cage-{id}-080.{DOMAIN}"),
        format!("cage-{id}-80-1.{DOMAIN}"),
        format!("{good}.."),
    ] {
        let reply = get(&server, &bad, "/").await;
        assert!(
            reply.status == 404 || reply.status == 400,
            "{bad} answered {}",
            reply.status
        );
        assert_ne!(reply.text(), "served\n", "{bad}");
    }
    let preview = server.preview_addr;
    // Absolute-form targets, a second Host, CONNECT: refused before any dial.
    let absolute = format!("GET http://{good}/ HTTP/1.1\r\nHost: {good}\r\n\r\n");
    assert!(
        http::raw(preview, absolute.as_bytes())
            .await
            .starts_with("HTTP/1.1 400")
    );
    let two_hosts = format!("GET / HTTP/1.1\r\nHost: {good}\r\nHost: localhost\r\n\r\n");
    assert!(
        http::raw(preview, two_hosts.as_bytes())
            .await
            .starts_with("HTTP/1.1 400")
    );
    let connect = format!("CONNECT {good}:80 HTTP/1.1\r\nHost: {good}\r\n\r\n");
    let answer = http::raw(preview, connect.as_bytes()).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The exact name works on the same connection setup.
    let fine = format!("GET / HTTP/1.1\r\nHost: {good}\r\nConnection: close\r\n\r\n");
    assert!(
        http::raw(preview, fine.as_bytes())
            .await
            .ends_with("served\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_python_server_streams_upgrades_and_speaks_http2() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "base" })).await;
    python_server(client, &id, 8000).await;
    let name = host(&id, 8000);

    let reply = get(&server, &name, "/").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "hello from python\n")
    );

    // HTTP/2 from the client (prior knowledge), HTTP/1.1 to the sandbox.
    let (reply, version) =
        http::send_h2(server.preview_addr, request("GET", &name, "/headers", &[])).await;
    assert_eq!((reply.status, version), (200, hyper::Version::HTTP_2));
    assert!(
        reply.text().contains(&format!("host: {name}")),
        "{}",
        reply.text()
    );

    // Streaming: the first chunk arrives while the server is still holding the second.
    let response =
        http::send_streaming(server.preview_addr, request("GET", &name, "/stream", &[])).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = http_body_util::BodyExt::frame(&mut body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    client.run(&id, &["touch", "/tmp/release"]).await.unwrap();
    let rest = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "second\n");

    // A WebSocket upgrade, echoed by the sandbox.
    let stream = tokio::net::TcpStream::connect(server.preview_addr)
        .await
        .unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(format!("ws://{name}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", &"x".repeat(70_000)] {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    // The sandbox falls asleep under the open socket; the client speaking wakes it.
    client.pause(&id).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("after sleep"))
        .await
        .unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "after sleep");
    // The echo proves the engine resumed it; the record of the wake follows.
    let started = Instant::now();
    while client.sandbox(&id).await.unwrap().state != "running" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the wake was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = client.events(&id, 0).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.payload["reason"] == "woken by preview traffic"),
        "{events:?}"
    );
    socket.close(None).await.unwrap();

    // A request body passes through too.
    let post = http::request_with_body("POST", &name, "/echo", &[], "posted".into());
    let reply = send(server.preview_addr, post).await;
    assert_eq!(reply.text(), "posted");
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_cookies_and_basic_auth() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "base" })).await;
    python_server(client, &id, 8000).await;
    let name = host(&id, 8000);

    let too_short = client.protect_preview(&id, 8000, Some("short")).await;
    let (status, code, message) = error_code(too_short.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (400, "invalid_preview"),
        "{message}"
    );
    assert!(message.contains("password"), "{message}");

    let protected = caged(
        &server,
        &[
            "preview",
            "protect",
            &id,
            "8000",
            "--password",
            "open sesame",
        ],
    );
    assert!(protected.status.success(), "{protected:?}");
    let previews = client.previews(&id).await.unwrap();
    assert!(previews[0].protected);
    // Stored hashed: the plain password is nowhere in the database.
    let db = std::fs::read(server.data_dir.path().join("caged.db")).unwrap();
    assert!(!db.windows(11).any(|window| window == b"open sesame"));

    // No credential: a basic-auth challenge for scripts, a login form for browsers.
    let reply = get(&server, &name, "/headers").await;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    let html = send(
        server.preview_addr,
        request("GET", &name, "/app?x=1", &[("accept", "text/html")]),
    )
    .await;
    assert_eq!(html.status, 401);
    assert!(html.header("www-authenticate").is_none());
    assert!(
        html.text().contains("action=\"/__caged/login\""),
        "{}",
        html.text()
    );
    assert!(
        html.text().contains("value=\"/app?x=1\""),
        "{}",
        html.text()
    );

    // Basic auth: a wrong password fails, the right one passes and is not forwarded.
    let basic = |password: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("me:{password}"))
        )
    };
    let wrong = send(
        server.preview_addr,
        request(
            "GET",
            &name,
            "/headers",
            &[("authorization", &basic("nope nope"))],
        ),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = send(
        server.preview_addr,
        request(
            "GET",
            &name,
            "/headers",
            &[
                ("authorization", &basic("open sesame")),
                ("x-custom", "kept"),
            ],
        ),
    )
    .await;
    assert_eq!(right.status, 200);
    let seen = right.text();
    assert!(!seen.contains("authorization"), "{seen}");
    assert!(seen.contains("x-custom: kept"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");

    // The login form: a wrong password stays out, the right one gets a host-only cookie.
    let form = |password: &str| {
        http::request_with_body(
            "POST",
            &name,
            "/__caged/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("password={}&next=%2Fheaders", password.replace(' ', "+")).into(),
        )
    };
    assert_eq!(
        send(server.preview_addr, form("wrong one")).await.status,
        401
    );
    let login = send(server.preview_addr, form("open sesame")).await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/headers"));
    let set_cookie = login.header("set-cookie").unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(
        !set_cookie.to_lowercase().contains("domain"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let with_cookie = |cookie: &str| {
        request(
            "GET",
            &name,
            "/headers",
            &[("cookie", &format!("theirs=1; {cookie}"))],
        )
    };
    let reply = send(server.preview_addr, with_cookie(&cookie)).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.text().contains("cookie: theirs=1\n"),
        "{}",
        reply.text()
    );
    assert!(!reply.text().contains("caged_preview"), "{}", reply.text());

    // The cookie is this preview's only: not another port's, and not after a new password.
    let other_port = send(
        server.preview_addr,
        request("GET", &host(&id, 8001), "/", &[("cookie", &cookie)]),
    )
    .await;
    assert_ne!(other_port.status, 200);
    let forged = send(
        server.preview_addr,
        with_cookie("caged_preview=99999999999.00"),
    )
    .await;
    assert_eq!(forged.status, 401);

    // The sandbox cannot set cookies for other previews, nor overwrite the login cookie.
    let reply = send(
        server.preview_addr,
        request("GET", &name, "/cookie", &[("cookie", &cookie)]),
    )
    .await;
    let cookies: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .collect();
    assert_eq!(cookies, vec!["sid=1; Path=/; HttpOnly"]);

    client
        .protect_preview(&id, 8000, Some("another secret"))
        .await
        .unwrap();
    assert_eq!(
        send(server.preview_addr, with_cookie(&cookie)).await.status,
        401
    );
    // Opened again: no credential needed.
    let opened = caged(&server, &["preview", "protect", &id, "8000", "--off"]);
    assert!(opened.status.success(), "{opened:?}");
    assert_eq!(get(&server, &name, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_preview_url_is_rate_limited() {
    let server = caged_testkit::spawn_with(|config| config.preview.rate_limit_per_minute = 5).await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    busybox_httpd(client, &id, "80", "ok").await;
    busybox_httpd(client, &id, "81", "ok").await;
    wait_for_port(client, &id, 81, true).await;
    for _ in 0..5 {
        assert_eq!(get(&server, &host(&id, 80), "/").await.status, 200);
    }
    let limited = get(&server, &host(&id, 80), "/").await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    // Another port of the same sandbox is another URL with its own budget.
    assert_eq!(get(&server, &host(&id, 81), "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_generated_wildcard_certificate() {
    let server = caged_testkit::spawn_with(|config| {
        config.preview.tls = caged_server::PreviewTls::SelfSigned
    })
    .await;
    let client = &server.client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    busybox_httpd(client, &id, "80", "over tls").await;
    wait_for_port(client, &id, 80, true).await;
    let previews = client.previews(&id).await.unwrap();
    assert!(previews[0].url.starts_with("https://"));
    let cert = server
        .data_dir
        .path()
        .join(caged_server::SELF_SIGNED_DIR)
        .join("cert.pem");
    let name = host(&id, 80);
    for h2 in [true, false] {
        let (reply, version) = http::send_tls(
            server.preview_addr,
            &name,
            &cert,
            h2,
            request("GET", &name, "/", &[]),
        )
        .await
        .unwrap();
        assert_eq!((reply.status, reply.text().as_str()), (200, "over tls\n"));
        let expected = if h2 {
            hyper::Version::HTTP_2
        } else {
            hyper::Version::HTTP_11
        };
        assert_eq!(version, expected);
    }
    // A TLS name for one preview with a Host for another is refused.
    let other = server.sandbox(json!({ "template": "busybox" })).await;
    busybox_httpd(client, &other, "80", "other").await;
    let (reply, _) = http::send_tls(
        server.preview_addr,
        &host(&other, 80),
        &cert,
        false,
        request("GET", &name, "/", &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        (reply.status, reply.header("x-caged-error")),
        (421, Some("misdirected"))
    );
    // Plain HTTP is not spoken on the TLS listener.
    let plain = format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n");
    assert!(
        !http::raw(server.preview_addr, plain.as_bytes())
            .await
            .contains("over tls")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_wakes_a_sleeping_sandbox() {
    let mut server = caged_testkit::spawn().await;
    let client = server.client.clone();
    let client = &client;
    let id = server.sandbox(json!({ "template": "busybox" })).await;
    busybox_httpd(client, &id, "80", "awake").await;
    wait_for_port(client, &id, 80, true).await;
    client.pause(&id).await.unwrap();
    let reply = get(&server, &host(&id, 80), "/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "awake\n"));
    let sandbox = client.sandbox(&id).await.unwrap();
    assert_eq!(sandbox.state, "running");
    let events = client.events(&id, 0).await.unwrap();
    assert!(
        events.iter().any(|event| event.kind == "state"
            && event.payload["reason"] == "woken by a preview request"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|event| event.kind == "http"),
        "{events:?}"
    );

    // The same after a server restart: the namespace is opened again from the engine.
    client.pause(&id).await.unwrap();
    server.restart().await;
    let reply = get(&server, &host(&id, 80), "/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "awake\n"));
    // Ports known before the restart are not reported again.
    let opened = server
        .client
        .events(&id, 0)
        .await
        .unwrap()
        .iter()
        .filter(|event| event.kind == "port" && event.payload["state"] == "open")
        .count();
    assert_eq!(opened, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_without_network_is_still_previewable() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "network_mode": "none" }))
        .await;
    busybox_httpd(client, &id, "127.0.0.1:3000", "offline but served").await;
    wait_for_port(client, &id, 3000, true).await;
    let reply = get(&server, &host(&id, 3000), "/").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "offline but served\n")
    );
    // And it still has no way out.
    let out = client
        .run(&id, &["sh", "-c", "ip -o link | grep -v ' lo:' | wc -l"])
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "0", "{out:?}");
}

/// Under gVisor (with the host network stack this host's runsc needs) the sandbox's sockets
/// live in its namespace on the host kernel: detected and dialled the same way.
#[tokio::test(flavor = "multi_thread")]
async fn gvisor_sandboxes_are_detected_and_previewable() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let id = server
        .sandbox(json!({ "template": "busybox", "isolation": "gvisor" }))
        .await;
    busybox_httpd(client, &id, "127.0.0.1:8080", "from gvisor").await;
    wait_for_port(client, &id, 8080, true).await;
    let reply = get(&server, &host(&id, 8080), "/").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "from gvisor\n")
    );
    let killed = client.run(&id, &["killall", "httpd"]).await.unwrap();
    assert_eq!(killed.exit_code, Some(0), "{killed:?}");
    wait_for_port(client, &id, 8080, false).await;
}

//! Network modes against the test internet (`caged_testkit::internet`): what a sandbox reaches
//! is asserted on the servers' side (who saw what), since a transparent proxy makes a refused
//! connection look open to the client.

use std::time::{Duration, Instant};

use caged_client::wire::{Event, Link};
use caged_testkit::TestServer;
use caged_testkit::internet::{self, ALLOWED, EVIL, PRIVATE, PUBLIC_RESOLVER};
use serde_json::{Value, json};

use crate::{caged, stdout};

/// A network client run inside the sandbox with `python3 -c` (no file needed, so it works the
/// same under gVisor). Each command prints one line: what happened, never a traceback.
const NET_PY: &str = r#"
import socket, ssl, struct, sys
cmd, args = sys.argv[1], sys.argv[2:]
def out(text):
    print(text, flush=True)
try:
    if cmd == "http":
        host, port, header = args[0], int(args[1]), args[2]
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % header).encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        out("HTTP " + data.decode(errors="replace").replace("\r\n", " | ")[:300] if data else "CLOSED")
    elif cmd == "tls":
        host, port, sni = args[0], int(args[1]), args[2]
        ctx = ssl._create_unverified_context()
        s = socket.create_connection((host, port), timeout=5)
        t = ctx.wrap_socket(s, server_hostname=sni)
        out("TLS-OK")
    elif cmd == "tcp":
        s = socket.create_connection((args[0], int(args[1])), timeout=5)
        s.settimeout(3)
        try:
            data = s.recv(100)
            out("CONNECTED " + data.decode(errors="replace").strip() if data else "CLOSED")
        except socket.timeout:
            out("CONNECTED (silent)")
    elif cmd == "dns":
        server, name, qtype = args[0], args[1], int(args[2])
        q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
        for label in name.split("."):
            q += bytes([len(label)]) + label.encode()
        q += b"\x00" + struct.pack(">HH", qtype, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(q, (server, 53))
        data, _ = s.recvfrom(4096)
        rcode = data[3] & 0xF
        answers = struct.unpack(">H", data[6:8])[0]
        out("DNS rcode=%d answers=%d" % (rcode, answers))
    elif cmd == "raw":
        host, port, data = args[0], int(args[1]), args[2].encode().decode("unicode_escape").encode("latin-1")
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(data)
        reply = s.recv(4096)
        out("RAW " + reply.decode(errors="replace").split("\r\n")[0] if reply else "CLOSED")
    elif cmd == "resolve":
        out("RESOLVED " + " ".join(sorted(set(a[4][0] for a in socket.getaddrinfo(args[0], 80, socket.AF_INET)))))
except Exception as e:
    out("ERROR %s: %s" % (type(e).__name__, e))
"#;

async fn net(server: &TestServer, id: &str, args: &[&str]) -> String {
    let mut argv = vec!["python3", "-c", NET_PY];
    argv.extend_from_slice(args);
    let result = server.client.run(id, &argv).await.unwrap();
    assert_eq!(result.exit_code, Some(0), "{result:?}");
    result.stdout.trim().to_string()
}

async fn server_on(internet: &internet::Internet) -> TestServer {
    let resolver = internet.resolver();
    caged_testkit::spawn_with(|config| config.network.upstream = Some(vec![resolver])).await
}

async fn network_events(server: &TestServer, id: &str) -> Vec<Event> {
    server
        .client
        .events(id, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "network")
        .collect()
}

/// The sandbox's link; it has one.
async fn link_of(server: &TestServer, id: &str) -> Link {
    let network = server.client.network(id).await.unwrap();
    network.link.expect("the sandbox has a link")
}

/// Waits until an event satisfying `matches` is recorded.
async fn wait_for_event(server: &TestServer, id: &str, matches: impl Fn(&Value) -> bool) -> Event {
    let started = Instant::now();
    loop {
        let events = network_events(server, id).await;
        if let Some(event) = events.iter().find(|event| matches(&event.payload)) {
            return event.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no such network event among {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn allowlist_sandbox(server: &TestServer, isolation: &str) -> String {
    server
        .sandbox(json!({
            "template": "base",
            "isolation": isolation,
            "network_mode": "allowlist",
            "allowed_hosts": ["allowed.test"],
        }))
        .await
}

/// Everything the allowlist must refuse, and the one thing it must let through, seen from
/// both ends.
async fn allowlist_holds(isolation: &str) {
    let internet = internet::internet().await;
    let server = server_on(&internet).await;
    let id = allowlist_sandbox(&server, isolation).await;
    let (allowed_before, evil_before) = (internet.count(ALLOWED), internet.count(EVIL));
    let resolver_before = internet.count(PUBLIC_RESOLVER);

    // Allowed by name, over HTTP and TLS: reaches allowed.test, which saw the name.
    assert_eq!(
        net(&server, &id, &["resolve", "allowed.test"]).await,
        "RESOLVED 203.0.113.10"
    );
    let reply = net(
        &server,
        &id,
        &["http", "allowed.test", "80", "allowed.test"],
    )
    .await;
    assert!(
        reply.starts_with("HTTP HTTP/1.1 200") && reply.contains("hello from 203.0.113.10"),
        "{reply}"
    );
    let _ = net(
        &server,
        &id,
        &["tls", "allowed.test", "443", "allowed.test"],
    )
    .await;
    let seen: Vec<String> = internet.seen_by(ALLOWED)[allowed_before..]
        .iter()
        .map(|seen| seen.what.clone())
        .collect();
    assert_eq!(seen, ["http allowed.test", "tls allowed.test"]);

    // Refused: other names in DNS, other query types, the public resolver, IP literals and odd
    // spellings of the metadata address, a spoofed /etc/hosts entry, SNI/Host that disagree
    // with the address, and a protocol with no name.
    assert!(
        net(&server, &id, &["resolve", "evil.test"])
            .await
            .starts_with("ERROR")
    );
    let resolv = net(
        &server,
        &id,
        &["dns", &PUBLIC_RESOLVER.to_string(), "allowed.test", "1"],
    )
    .await;
    assert!(resolv.starts_with("ERROR"), "{resolv}");
    for (host, port, header) in [
        ("203.0.113.20", "80", "evil.test"),
        ("203.0.113.10", "80", "evil.test"),
        ("203.0.113.20", "80", "203.0.113.20"),
        ("2852039166", "80", "2852039166"),
        ("0xa9fea9fe", "80", "0xa9fea9fe"),
        ("169.254.169.254", "80", "169.254.169.254"),
    ] {
        let reply = net(&server, &id, &["http", host, port, header]).await;
        assert!(
            reply.starts_with("HTTP HTTP/1.1 403"),
            "{host} Host {header}: {reply}"
        );
        assert!(reply.contains("not reachable"), "{reply}");
    }
    let tls = net(&server, &id, &["tls", "203.0.113.10", "443", "evil.test"]).await;
    assert!(
        tls.starts_with("ERROR") && tls.to_lowercase().contains("access"),
        "{tls}"
    );
    // CONNECT (with an allowed name, then anything could follow): this is not a forward proxy.
    let connect = net(
        &server,
        &id,
        &[
            "raw",
            "203.0.113.10",
            "443",
            "CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: allowed.test:443\\r\\n\\r\\n",
        ],
    )
    .await;
    assert!(connect.starts_with("RAW HTTP/1.1 403"), "{connect}");
    // DNS over TCP and DNS over TLS to another resolver: no name, not a handed-out address.
    for port in ["53", "853"] {
        let reply = net(&server, &id, &["tcp", &PUBLIC_RESOLVER.to_string(), port]).await;
        assert!(
            reply.starts_with("ERROR") || reply == "CLOSED",
            "port {port}: {reply}"
        );
    }
    let opaque = net(&server, &id, &["tcp", "203.0.113.20", "22"]).await;
    assert!(!opaque.contains("SSH"), "{opaque}");
    // /etc/hosts pointing allowed.test at evil's address: the proxy resolves the name itself.
    let hosts = server
        .client
        .run(
            &id,
            &["sh", "-c", "echo '203.0.113.20 allowed.test' >> /etc/hosts"],
        )
        .await
        .unwrap();
    if hosts.exit_code == Some(0) {
        let reply = net(
            &server,
            &id,
            &["http", "allowed.test", "80", "allowed.test"],
        )
        .await;
        assert!(reply.contains("hello from 203.0.113.10"), "{reply}");
    }

    // Observers: evil.test and the public resolver saw nothing at all.
    assert_eq!(
        internet.seen_by(EVIL)[evil_before..],
        [],
        "evil.test was reached"
    );
    assert_eq!(
        internet.seen_by(PUBLIC_RESOLVER)[resolver_before..],
        [],
        "the public resolver was asked"
    );

    // Events name what was refused and what went through, with bytes.
    let blocked = wait_for_event(&server, &id, |p| {
        p["action"] == "blocked" && p["host"] == "evil.test"
    })
    .await;
    assert_eq!(blocked.payload["reason"], "not in allowed_hosts");
    wait_for_event(&server, &id, |p| {
        p["action"] == "dns_refused" && p["host"] == "evil.test"
    })
    .await;
    // The UDP packet to the public resolver, refused by the firewall, from the kernel's log.
    wait_for_event(&server, &id, |p| {
        p["by"] == "firewall"
            && p["address"] == PUBLIC_RESOLVER.to_string()
            && p["protocol"] == "udp"
    })
    .await;
    let connected = wait_for_event(&server, &id, |p| {
        p["action"] == "connect" && p["host"] == "allowed.test"
    })
    .await;
    assert!(
        connected.payload["bytes_in"].as_u64().unwrap() > 0,
        "{connected:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_reaches_only_allowed_names() {
    allowlist_holds("container").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_holds_under_gvisor() {
    allowlist_holds("gvisor").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_stub_refuses_tunnels_and_strips_rebinding() {
    let internet = internet::internet().await;
    let server = server_on(&internet).await;
    let id = allowlist_sandbox(&server, "container").await;
    let link = server.client.network(&id).await.unwrap();
    let stub = link.link.expect("a link").resolver;
    // TXT (16), NULL (10), ANY (255) for an allowed name: REFUSED (rcode 5).
    for qtype in ["16", "10", "255"] {
        let reply = net(&server, &id, &["dns", &stub, "allowed.test", qtype]).await;
        assert_eq!(reply, "DNS rcode=5 answers=0", "type {qtype}");
    }
    // A data-carrying name under an allowed-looking domain: refused, never asked upstream.
    let reply = net(&server, &id, &["dns", &stub, "c2VjcmV0.evil.test", "1"]).await;
    assert_eq!(reply, "DNS rcode=5 answers=0");
    server
        .client
        .set_allowed_hosts(&id, &["allowed.test".into(), "rebind.test".into()])
        .await
        .unwrap();
    // rebind.test answers 169.254.169.254 and 203.0.113.10: only the second is handed out.
    assert_eq!(
        net(&server, &id, &["resolve", "rebind.test"]).await,
        "RESOLVED 203.0.113.10"
    );
    wait_for_event(&server, &id, |p| {
        p["action"] == "dns_stripped" && p["host"] == "rebind.test"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn full_mode_reaches_the_internet_but_not_the_host_or_private_ranges() {
    let internet = internet::internet().await;
    let server = server_on(&internet).await;
    let id = server.sandbox(json!({ "template": "base" })).await;
    let other = server.sandbox(json!({ "template": "busybox" })).await;
    let before = internet.count(ALLOWED);
    let private_before = internet.count(PRIVATE);
    let reply = net(
        &server,
        &id,
        &["http", "allowed.test", "80", "allowed.test"],
    )
    .await;
    assert!(reply.contains("hello from 203.0.113.10"), "{reply}");
    assert_eq!(internet.count(ALLOWED), before + 1);
    // The connection, from the kernel (its first packet in the firewall's log, its bytes from
    // connection tracking), named by what the stub answered for the address.
    wait_for_event(&server, &id, |p| {
        p["action"] == "connect"
            && p["by"] == "firewall"
            && p["host"] == "allowed.test"
            && p["port"] == 80
    })
    .await;
    // A connection's bytes are reported once the kernel drops its tracking entry (after the
    // TCP close timeouts and the collector's next pass: up to a minute or two here).
    let reset = "import socket,struct\ns=socket.create_connection(('allowed.test',80),timeout=5)\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\nprint(len(s.recv(4096)))\ns.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\ns.close()";
    let sent = server
        .client
        .run(&id, &["python3", "-c", reset])
        .await
        .unwrap();
    assert_eq!(sent.exit_code, Some(0), "{sent:?}");
    let started = Instant::now();
    let traffic = loop {
        let events = network_events(&server, &id).await;
        if let Some(event) = events.iter().find(|e| {
            e.payload["action"] == "traffic"
                && e.payload["host"] == "allowed.test"
                && e.payload["port"] == 80
        }) {
            break event.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "no traffic event: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        traffic.payload["connections"].as_u64().unwrap() >= 1,
        "{traffic:?}"
    );
    // The response is 100-odd bytes of HTTP plus TCP/IP headers both ways.
    assert!(
        traffic.payload["bytes_in"].as_u64().unwrap() > 100,
        "{traffic:?}"
    );
    assert!(
        traffic.payload["bytes_out"].as_u64().unwrap() > 60,
        "{traffic:?}"
    );
    // A name resolved through the stub, any name in full mode.
    assert_eq!(
        net(&server, &id, &["resolve", "evil.test"]).await,
        "RESOLVED 203.0.113.20"
    );

    let api_port = server.addr.port().to_string();
    let other_addr = link_of(&server, &other).await.sandbox_address;
    let host_addr = link_of(&server, &id).await.host_address;
    for (addr, port) in [
        (host_addr.as_str(), api_port.as_str()), // the host itself, on the link
        ("198.51.100.1", "22"),                  // the host, on another of its addresses
        ("169.254.169.254", "80"),               // cloud metadata
        ("2852039166", "80"),                    // the same, spelled as a number
        ("10.99.0.10", "80"),                    // private (a real server, routed here)
        ("100.64.0.1", "80"),                    // CGNAT
        (other_addr.as_str(), "80"),             // another sandbox
    ] {
        let started = Instant::now();
        let reply = net(&server, &id, &["tcp", addr, port]).await;
        assert!(
            reply.contains("ConnectionRefused"),
            "{addr}:{port}: {reply}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{addr}:{port} hung"
        );
    }
    assert_eq!(
        internet.count(PRIVATE),
        private_before,
        "the private server was reached"
    );
    // The kernel's log of the refusals, not anything the sandbox said, made these events.
    let metadata = wait_for_event(&server, &id, |p| {
        p["action"] == "blocked" && p["by"] == "firewall" && p["address"] == "169.254.169.254"
    })
    .await;
    assert_eq!(metadata.payload["port"], 80);
    assert!(
        metadata.payload["reason"]
            .as_str()
            .unwrap()
            .contains("link-local"),
        "{metadata:?}"
    );
    wait_for_event(&server, &id, |p| {
        p["by"] == "firewall"
            && p["address"] == host_addr.as_str()
            && p["reason"]
                .as_str()
                .unwrap_or("")
                .contains("the host itself")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_changes_apply_to_a_running_sandbox() {
    let internet = internet::internet().await;
    let server = server_on(&internet).await;
    let id = allowlist_sandbox(&server, "container").await;
    let refused = net(&server, &id, &["http", "evil.test", "80", "evil.test"]).await;
    assert!(
        refused.starts_with("ERROR"),
        "no name, no address: {refused}"
    );

    let added = caged(&server, &["network", "allow", &id, "evil.test"]);
    assert!(added.status.success(), "{added:?}");
    let before = internet.count(EVIL);
    let reply = net(&server, &id, &["http", "evil.test", "80", "evil.test"]).await;
    assert!(reply.contains("hello from 203.0.113.20"), "{reply}");
    assert_eq!(internet.count(EVIL), before + 1);

    let opened = internet.count(EVIL);
    // An open connection to a host taken off the list is closed at once.
    let held = {
        let client = server.client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let script = "import socket,time\ns=socket.create_connection(('evil.test',22),timeout=5)\ns.settimeout(30)\nt=time.time()\ns.recv(100)\nwhile True:\n  d=s.recv(100)\n  if not d: break\nprint('closed after %.1f' % (time.time()-t))";
            client.run(&id, &["python3", "-c", script]).await.unwrap()
        })
    };
    // Revoked once the connection is open (evil.test's server saw it).
    wait_until(|| internet.count(EVIL) > opened).await;
    let revoked = caged(&server, &["network", "revoke", &id, "evil.test"]);
    assert!(revoked.status.success(), "{revoked:?}");
    let held = held.await.unwrap();
    let secs: f64 = held
        .stdout
        .trim()
        .strip_prefix("closed after ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{held:?}"));
    assert!(secs < 10.0, "closed {secs}s after the connection opened");
    let refused = net(&server, &id, &["http", "203.0.113.20", "80", "evil.test"]).await;
    assert!(refused.contains("403"), "{refused}");

    let learned = caged(&server, &["network", "learn", &id]);
    let block = stdout(&learned);
    assert!(
        block.contains("network_mode: allowlist\nallowed_hosts:\n")
            && block.contains("  - allowed.test\n") == block.contains("allowed.test")
            && block.contains("  - evil.test\n"),
        "{block}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_layer_is_put_back() {
    let internet = internet::internet().await;
    let server = server_on(&internet).await;
    let id = allowlist_sandbox(&server, "container").await;
    let full = server.sandbox(json!({ "template": "busybox" })).await;
    let full_base = server.sandbox(json!({ "template": "base" })).await;
    let table = format!("caged_{}", server.installation_id);
    let link = link_of(&server, &full).await;
    let ifname = link.host_interface.clone();
    let allow_if = link_of(&server, &id).await.host_interface;

    // A service of the host's own, listening on every address.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    host_service.set_nonblocking(true).unwrap();
    let service_port = host_service.local_addr().unwrap().port().to_string();
    let full_host = link.host_address.clone();

    // The main table deleted: the guard table still drops what it refused, and an allowlist
    // link forwards nothing anyway (its forwarding is off)...
    let deleted = std::process::Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .status()
        .unwrap();
    assert!(deleted.success());
    let (evil_before, private_before) = (internet.count(EVIL), internet.count(PRIVATE));
    let evil_ssh = ["tcp", "203.0.113.20", "22"];
    let private_web = ["tcp", "10.99.0.10", "80"];
    let host_port = ["tcp", full_host.as_str(), service_port.as_str()];
    let (from_allowlist, from_full, to_host, to_private) = tokio::join!(
        net(&server, &id, &evil_ssh),
        net(&server, &full_base, &private_web),
        net(&server, &full_base, &host_port),
        net(&server, &id, &host_port),
    );
    assert!(!from_allowlist.contains("SSH"), "{from_allowlist}");
    assert!(!from_full.starts_with("CONNECTED"), "{from_full}");
    assert!(!to_host.starts_with("CONNECTED"), "{to_host}");
    assert!(!to_private.starts_with("CONNECTED"), "{to_private}");
    assert_eq!(
        internet.count(EVIL),
        evil_before,
        "evil.test reached without the table"
    );
    assert_eq!(
        internet.count(PRIVATE),
        private_before,
        "a private range reached without the table"
    );
    assert!(
        host_service.accept().is_err(),
        "a host service was reached without the table"
    );
    // ...and the healer writes the table again within seconds.
    wait_until(|| {
        std::process::Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .is_ok_and(|out| out.status.success())
    })
    .await;

    // A global ip_forward toggle resets every interface's forwarding: put back per link.
    let forwarding = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(forwarding(&allow_if), "0");
    assert_eq!(forwarding(&ifname), "1");
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{allow_if}/forwarding"),
        "1",
    )
    .unwrap();
    wait_until(|| forwarding(&allow_if) == "0").await;

    // The link itself deleted: made again, with its services.
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &allow_if])
        .status();
    wait_until(|| std::path::Path::new(&format!("/sys/class/net/{allow_if}")).exists()).await;
    reaches_allowed_test(&server, &id, "not healed").await;
}

/// Waits until the sandbox reaches allowed.test (an exec refused meanwhile, e.g. while the
/// reconciler restarts the container, counts as not yet).
async fn reaches_allowed_test(server: &TestServer, id: &str, what: &str) {
    let argv = [
        "python3",
        "-c",
        NET_PY,
        "http",
        "allowed.test",
        "80",
        "allowed.test",
    ];
    let started = Instant::now();
    loop {
        let reply = match server.client.run(id, &argv).await {
            Ok(result) => result.stdout,
            Err(err) => err.to_string(),
        };
        if reply.contains("hello from 203.0.113.10") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not healed within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn none_mode_has_no_link() {
    let server = caged_testkit::spawn().await;
    let id = server
        .sandbox(json!({ "template": "busybox", "network_mode": "none" }))
        .await;
    let links = server
        .client
        .run(&id, &["ls", "/sys/class/net"])
        .await
        .unwrap();
    assert_eq!(links.stdout.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let network = server.client.network(&id).await.unwrap();
    assert_eq!(network.link, None);
    // Nor does it learn the host's resolvers or search domains.
    let resolv = server
        .client
        .run(&id, &["cat", "/etc/resolv.conf"])
        .await
        .unwrap()
        .stdout;
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let entries = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| line.trim().strip_prefix(key))
            .flat_map(|rest| rest.split_whitespace().map(str::to_string))
            .collect()
    };
    assert_eq!(entries(&resolv, "nameserver"), ["127.0.0.1"], "{resolv}");
    for search in entries(&host, "search")
        .iter()
        .chain(&entries(&host, "domain"))
    {
        assert!(
            !resolv.contains(search.as_str()),
            "host search domain {search} in {resolv}"
        );
    }
}

/// What an engine restart does to a sandbox (its processes lost, a new namespace without the
/// link when it starts again), then a server restart: the reconciler starts the container and
/// gives it its link and services back.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_the_engine_lost_gets_its_link_back() {
    let internet = internet::internet().await;
    let mut server = server_on(&internet).await;
    let id = allowlist_sandbox(&server, "container").await;
    // The server's only sandbox.
    let container = server.engine_containers().await.remove(0);
    let killed = std::process::Command::new("docker")
        .args(["kill", &container])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    // The restarted server must find the container stopped, not about to be.
    wait_until(|| {
        std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &container])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "false")
    })
    .await;
    server.restart().await;
    reaches_allowed_test(&server, &id, "no network after the restart").await;
}

/// `full` under gVisor: the same host-side rules, since this host's runsc sends the sandbox's
/// traffic through the same link.
#[tokio::test(flavor = "multi_thread")]
async fn full_mode_holds_under_gvisor() {
    let internet = internet::internet().await;
    let server = server_on(&internet).await;
    let id = server
        .sandbox(json!({ "template": "base", "isolation": "gvisor" }))
        .await;
    let (allowed_before, private_before) = (internet.count(ALLOWED), internet.count(PRIVATE));
    let reply = net(
        &server,
        &id,
        &["http", "allowed.test", "80", "allowed.test"],
    )
    .await;
    assert!(reply.contains("hello from 203.0.113.10"), "{reply}");
    assert_eq!(internet.count(ALLOWED), allowed_before + 1);
    for (addr, port) in [("10.99.0.10", "80"), ("169.254.169.254", "80")] {
        let reply = net(&server, &id, &["tcp", addr, port]).await;
        assert!(
            reply.contains("ConnectionRefused"),
            "{addr}:{port}: {reply}"
        );
    }
    assert_eq!(
        internet.count(PRIVATE),
        private_before,
        "the private server was reached"
    );
    wait_for_event(&server, &id, |p| {
        p["by"] == "firewall" && p["address"] == "10.99.0.10" && p["action"] == "blocked"
    })
    .await;
}

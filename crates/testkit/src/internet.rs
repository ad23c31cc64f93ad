//! A small internet for network tests, on this machine only: a network namespace (`caged-inet`)
//! reached from the host through a veth pair, holding TEST-NET-3 addresses:
//!
//! | address | what |
//! | --- | --- |
//! | 203.0.113.10 | `allowed.test`: TCP 80, 443, 22 |
//! | 203.0.113.20 | `evil.test`: the same |
//! | 203.0.113.53 | the authoritative DNS server for `.test` (the server's `--dns-upstream`) |
//! | 203.0.113.8 | a "public resolver" that answers nothing and logs every packet |
//! | 10.99.0.10 | a web server in a private range (TCP 80), routed to the namespace only |
//!
//! Every server logs what reached it, so tests assert on the observer's side: a transparent
//! proxy makes a refused connection look open to the client. Nothing routes beyond it.

use parking_lot::Mutex;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, Packet, PacketFlag, RCODE, ResourceRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const EVIL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const AUTHORITY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
pub const PUBLIC_RESOLVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 8);
/// A server in a private range (routed to the test namespace only), which no sandbox may reach.
pub const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);

const NAMESPACE: &str = "caged-inet";
const HOST_END: &str = "cginet0";

/// One thing a server of the internet saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub server: Ipv4Addr,
    pub port: u16,
    /// `tls <sni>`, `http <host>`, `opaque`, or `dns <name> <type>`.
    pub what: String,
}

pub struct Internet {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Internet {
    /// The resolver to give the server (`--dns-upstream`).
    pub fn resolver(&self) -> SocketAddr {
        SocketAddr::from((AUTHORITY, 53))
    }

    /// Everything `server` saw so far.
    pub fn seen_by(&self, server: Ipv4Addr) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|seen| seen.server == server)
            .cloned()
            .collect()
    }

    /// How many things `server` saw so far.
    pub fn count(&self, server: Ipv4Addr) -> usize {
        self.seen_by(server).len()
    }
}

static INTERNET: std::sync::OnceLock<Internet> = std::sync::OnceLock::new();
static IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The internet for one test at a time (its servers' logs are shared, so tests that count what
/// reached them take turns), built on first use; left-over ones of earlier runs are replaced.
pub async fn internet() -> InternetUse {
    let guard = IN_USE.lock().await;
    InternetUse {
        internet: INTERNET.get_or_init(start),
        _turn: guard,
    }
}

/// The internet while a test has its turn.
pub struct InternetUse {
    internet: &'static Internet,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for InternetUse {
    type Target = Internet;
    fn deref(&self) -> &Internet {
        self.internet
    }
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// Runs the internet on a thread and runtime of its own: it must outlive the test (and the
/// test's runtime) that first asked for it.
fn start() -> Internet {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the internet");
        runtime.block_on(async move {
            let seen = build().await;
            tx.send(seen).expect("the test waits");
            std::future::pending::<()>().await;
        });
    });
    Internet {
        seen: rx.recv().expect("the internet starts"),
    }
}

async fn build() -> Arc<Mutex<Vec<Seen>>> {
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", NAMESPACE])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", HOST_END])
        .stderr(std::process::Stdio::null())
        .status();
    ip(&["netns", "add", NAMESPACE]);
    ip(&[
        "link", "add", HOST_END, "type", "veth", "peer", "name", "inet0", "netns", NAMESPACE,
    ]);
    ip(&["addr", "add", "198.51.100.1/30", "dev", HOST_END]);
    ip(&["link", "set", HOST_END, "up"]);
    ip(&[
        "-n",
        NAMESPACE,
        "addr",
        "add",
        "198.51.100.2/30",
        "dev",
        "inet0",
    ]);
    ip(&["-n", NAMESPACE, "link", "set", "inet0", "up"]);
    ip(&["-n", NAMESPACE, "link", "set", "lo", "up"]);
    for addr in [ALLOWED, EVIL, AUTHORITY, PUBLIC_RESOLVER, PRIVATE] {
        ip(&[
            "-n",
            NAMESPACE,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
    }
    ip(&[
        "-n",
        NAMESPACE,
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
    ]);
    // Only the servers' own addresses: the rest of TEST-NET-3 may be this machine's real
    // neighbours (the package registries' proxy is one here), which a /24 route would hide.
    for addr in [ALLOWED, EVIL, AUTHORITY, PUBLIC_RESOLVER, PRIVATE] {
        ip(&[
            "route",
            "replace",
            &format!("{addr}/32"),
            "via",
            "198.51.100.2",
        ]);
    }

    let ns = Arc::new(
        caged_netns::NetNs::open(std::path::Path::new(&format!("/var/run/netns/{NAMESPACE}")))
            .expect("open the internet's namespace"),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    for server in [ALLOWED, EVIL] {
        for port in [80u16, 443, 22] {
            let listener = ns
                .enter(|| std::net::TcpListener::bind((server, port)))
                .expect("enter")
                .expect("bind a web server");
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::spawn(web_server(listener, server, port, seen.clone()));
        }
    }
    let private = ns
        .enter(|| std::net::TcpListener::bind((PRIVATE, 80)))
        .expect("enter")
        .expect("bind the private web server");
    private.set_nonblocking(true).unwrap();
    tokio::spawn(web_server(
        tokio::net::TcpListener::from_std(private).unwrap(),
        PRIVATE,
        80,
        seen.clone(),
    ));
    // Bulk data for benchmarks: `GET /bytes/N` on allowed.test:8080 answers N bytes.
    let bulk = ns
        .enter(|| std::net::TcpListener::bind((ALLOWED, BULK_PORT)))
        .expect("enter")
        .expect("bind the bulk server");
    bulk.set_nonblocking(true).unwrap();
    tokio::spawn(bulk_server(
        tokio::net::TcpListener::from_std(bulk).unwrap(),
    ));
    // The same data through a bare relay beside it (benchmarks only).
    let relay = ns
        .enter(|| std::net::TcpListener::bind((ALLOWED, BULK_RELAY_PORT)))
        .expect("enter")
        .expect("bind the bulk relay");
    relay.set_nonblocking(true).unwrap();
    tokio::spawn(crate::bare_relay(
        tokio::net::TcpListener::from_std(relay).unwrap(),
        ns.clone(),
        SocketAddr::from((ALLOWED, BULK_PORT)),
    ));
    for server in [AUTHORITY, PUBLIC_RESOLVER] {
        let socket = ns
            .enter(|| std::net::UdpSocket::bind((server, 53)))
            .expect("enter")
            .expect("bind a DNS server");
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        tokio::spawn(dns_server(
            socket,
            server,
            server == AUTHORITY,
            seen.clone(),
        ));
        let listener = ns
            .enter(|| std::net::TcpListener::bind((server, 53)))
            .expect("enter")
            .expect("bind DNS over TCP");
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(web_server(listener, server, 53, seen.clone()));
    }
    seen
}

async fn web_server(
    listener: tokio::net::TcpListener,
    server: Ipv4Addr,
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            if port == 22 {
                // A server that speaks first and keeps the connection open, echoing, until the
                // client (or something between) closes it.
                seen.lock().push(Seen {
                    server,
                    port,
                    what: "opaque".into(),
                });
                let _ = stream.write_all(b"SSH-2.0-fake\r\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                return;
            }
            let mut buf = vec![0u8; 16384];
            let mut len = 0;
            let what = loop {
                let read =
                    tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf[len..]))
                        .await;
                match read {
                    Ok(Ok(n)) if n > 0 => len += n,
                    _ => break "opaque".to_string(),
                }
                match caged_network::sni::parse(&buf[..len]) {
                    caged_network::sni::Hello::ClientHello { server_name } => {
                        break format!("tls {}", server_name.unwrap_or_default());
                    }
                    caged_network::sni::Hello::Incomplete => continue,
                    _ => {}
                }
                match caged_network::http::parse(&buf[..len]) {
                    caged_network::http::Head::Request { host, .. } => {
                        break format!("http {}", host.unwrap_or_default());
                    }
                    caged_network::http::Head::Incomplete => continue,
                    caged_network::http::Head::NotHttp => break "opaque".to_string(),
                }
            };
            seen.lock().push(Seen {
                server,
                port,
                what: what.clone(),
            });
            if what.starts_with("http") {
                let body = format!("hello from {server}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Port of allowed.test's bulk server.
pub const BULK_PORT: u16 = 8080;
/// Port of allowed.test's relay to its bulk server.
pub const BULK_RELAY_PORT: u16 = 8081;

async fn bulk_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // One request per connection: read the head, send the bytes, close.
            loop {
                match stream.read(&mut buf[len..]).await {
                    Ok(n) if n > 0 => len += n,
                    _ => return,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let size: u64 = head
                .split_whitespace()
                .nth(1)
                .and_then(|path| path.strip_prefix("/bytes/"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let header =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n");
            if stream.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 256 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// The zone of `.test`.
fn zone(name: &str) -> Option<Vec<Ipv4Addr>> {
    match name {
        "allowed.test" | "www.allowed.test" => Some(vec![ALLOWED]),
        "evil.test" => Some(vec![EVIL]),
        // Half rebinding: one answer is the cloud metadata address.
        "rebind.test" => Some(vec![Ipv4Addr::new(169, 254, 169, 254), ALLOWED]),
        _ => None,
    }
}

async fn dns_server(
    socket: tokio::net::UdpSocket,
    server: Ipv4Addr,
    answers: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Packet::parse(&buf[..len]) else {
            seen.lock().push(Seen {
                server,
                port: 53,
                what: "dns (unparsable)".into(),
            });
            continue;
        };
        let Some(question) = query.questions.first() else {
            continue;
        };
        let name = question
            .qname
            .to_string()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        seen.lock().push(Seen {
            server,
            port: 53,
            what: format!("dns {name} {:?}", question.qtype),
        });
        if !answers {
            continue;
        }
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
        reply.questions.push(question.clone());
        match zone(&name) {
            Some(addrs) => {
                for addr in addrs {
                    reply.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        30,
                        RData::A(A::from(addr)),
                    ));
                }
            }
            None => *reply.rcode_mut() = RCODE::NameError,
        }
        if let Ok(bytes) = reply.build_bytes_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

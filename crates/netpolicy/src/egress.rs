//! The egress proxy of an `allowlist` link. The firewall redirects every TCP connection the
//! sandbox makes (to any address but the host's) here. The proxy reads the name the client asks
//! for — TLS SNI or the HTTP Host header, without terminating anything — checks it against the
//! allowlist, resolves it itself and connects to what it resolved: the address the sandbox
//! dialled is never trusted, so `/etc/hosts` entries, IP literals and SNI spoofing reach nothing.
//! A connection that carries no name (SSH, a database protocol) goes through only to an address
//! the DNS stub handed out for an allowed name, while that answer is fresh.
//!
//! Refusals are fast and visible: a TLS `access_denied` alert, an HTTP 403 naming the rule, or a
//! reset; each is a `network` event, as is every connection allowed (host, bytes, duration).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caged_domain::event::{By, NetworkAction};
use caged_network::dns::Resolved;
use caged_network::{http, sni};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{Link, Network};

/// How long a client may take to say which host it wants.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a client that may be waiting for the server to speak first.
const SILENT_CLIENT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one sandbox may have open through the proxy.
const MAX_CONNECTIONS: usize = 1024;

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

pub(super) fn serve(
    net: Arc<Network>,
    link: Arc<Link>,
    listener: tokio::net::TcpListener,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let what = format!("egress proxy of sandbox {}", link.id);
        loop {
            let (stream, _) = caged_network::sockets::accept(&listener, &what).await;
            if link.connections.lock().len() >= MAX_CONNECTIONS {
                caged_network::sockets::reset(stream);
                continue;
            }
            let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
            let (net, task_link) = (net.clone(), link.clone());
            let task = tokio::spawn(async move {
                handle(&net, &task_link, stream, number).await;
                task_link.connections.lock().remove(&number);
            });
            // Registered with no host until one is allowed; an allowlist change closes it then.
            link.connections
                .lock()
                .insert(number, (String::new(), task.abort_handle()));
        }
    })
}

/// What the first bytes of a connection asked for.
enum Asked {
    Tls(String),
    Http(String),
    /// TLS without a server name, CONNECT, a request with no or contradictory Host.
    Nameless(&'static str),
    /// Not TLS, not HTTP.
    Opaque,
}

async fn handle(net: &Network, link: &Link, mut client: TcpStream, number: u64) {
    let Ok(original) = caged_network::sockets::original_destination(&client) else {
        caged_network::sockets::reset(client);
        return;
    };
    let mut buf = Vec::with_capacity(4096);
    let Some(asked) = read_hello(&mut client, &mut buf).await else {
        caged_network::sockets::reset(client);
        return;
    };
    match decide(net, link, asked, original).await {
        Ok((name, addresses)) => {
            connect(net, link, client, buf, &name, original, addresses, number).await
        }
        Err((name, why)) => refuse(net, link, client, &buf, name.as_deref(), original, why).await,
    }
}

/// The name a connection may go to and the addresses to try, or the name it asked for (if any)
/// and why it may not.
async fn decide(
    net: &Network,
    link: &Link,
    asked: Asked,
    original: SocketAddrV4,
) -> Result<(String, Vec<Ipv4Addr>), (Option<String>, &'static str)> {
    let name = match asked {
        Asked::Tls(name) | Asked::Http(name) => name,
        Asked::Nameless(why) => return Err((None, why)),
        Asked::Opaque => {
            // Only to an address handed out for an allowed name, while fresh.
            let handed = link
                .handed_out
                .lock()
                .get(original.ip())
                .filter(|(_, until)| *until > Instant::now())
                .map(|(name, _)| name.clone());
            return match handed {
                Some(name) if allows(link, &name) => Ok((name, vec![*original.ip()])),
                _ => Err((
                    None,
                    "no host name (not TLS or HTTP) and not an address the DNS stub gave for an allowed host",
                )),
            };
        }
    };
    if !caged_network::allow::is_host_name(&name) {
        return Err((Some(name), "an IP address, not a host name"));
    }
    if !allows(link, &name) {
        return Err((Some(name), "not in allowed_hosts"));
    }
    match net.resolver.resolve(&name).await {
        Ok(Resolved::Addresses(addrs)) if !addrs.is_empty() => {
            Ok((name, addrs.into_iter().map(|(ip, _)| ip).collect()))
        }
        Ok(_) => Err((Some(name), "the name does not resolve")),
        Err(err) => {
            tracing::debug!(sandbox = %link.id, "lookup of {name} failed: {err}");
            Err((Some(name), "the name could not be resolved"))
        }
    }
}

fn allows(link: &Link, name: &str) -> bool {
    link.allowlist.read().allows(name)
}

async fn read_hello(client: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Asked> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut chunk = [0u8; 4096];
    // A client that says nothing at first may be waiting for the server (SSH, SMTP, ...).
    match tokio::time::timeout(SILENT_CLIENT, client.read(&mut chunk)).await {
        Err(_) => return Some(Asked::Opaque),
        Ok(Ok(0)) | Ok(Err(_)) => return None,
        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
    }
    loop {
        match sni::parse(buf) {
            sni::Hello::ClientHello {
                server_name: Some(name),
            } => return Some(Asked::Tls(caged_network::allow::normalize(&name))),
            sni::Hello::ClientHello { server_name: None } => {
                return Some(Asked::Nameless("TLS without a server name (SNI)"));
            }
            sni::Hello::Malformed => return Some(Asked::Nameless("a malformed TLS hello")),
            sni::Hello::Incomplete => {}
            sni::Hello::NotTls => match http::parse(buf) {
                http::Head::Request { method, .. } if method.eq_ignore_ascii_case("CONNECT") => {
                    return Some(Asked::Nameless("CONNECT (this is not a forward proxy)"));
                }
                http::Head::Request {
                    host: Some(host), ..
                } => return Some(Asked::Http(host)),
                http::Head::Request { host: None, .. } => {
                    return Some(Asked::Nameless(
                        "an HTTP request without one consistent Host",
                    ));
                }
                http::Head::NotHttp => return Some(Asked::Opaque),
                http::Head::Incomplete => {}
            },
        }
        if buf.len() >= sni::MAX_HELLO.max(http::MAX_HEAD) {
            return Some(Asked::Nameless("no host name in the first 16 KiB"));
        }
        let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn refuse(
    net: &Network,
    link: &Link,
    mut client: TcpStream,
    buf: &[u8],
    name: Option<&str>,
    original: SocketAddrV4,
    why: &str,
) {
    let target = name.map_or_else(|| original.ip().to_string(), str::to_string);
    net.record(
        link,
        &format!("blocked {target}:{}", original.port()),
        NetworkAction::Blocked {
            host: name.map(str::to_string),
            address: original.ip().to_string(),
            port: Some(original.port()),
            protocol: None,
            reason: why.to_string(),
            by: By::EgressProxy,
        },
    );
    if buf.first() == Some(&0x16) {
        let _ = client.write_all(&sni::ACCESS_DENIED_ALERT).await;
        let _ = client.shutdown().await;
    } else if matches!(http::parse(buf), http::Head::Request { .. }) {
        let body = format!(
            "caged: {target} is not reachable from sandbox {}: {why}. Allowed hosts: {}\n",
            link.id,
            link.allowlist.read().patterns().join(", ")
        );
        let response = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\nx-caged-error: egress_blocked\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes()).await;
        let _ = client.shutdown().await;
    } else {
        caged_network::sockets::reset(client);
    }
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    net: &Network,
    link: &Link,
    client: TcpStream,
    hello: Vec<u8>,
    name: &str,
    original: SocketAddrV4,
    candidates: Vec<Ipv4Addr>,
    number: u64,
) {
    // The address the sandbox dialled, if the name really has it; otherwise the first one.
    let mut ordered: Vec<Ipv4Addr> = candidates
        .iter()
        .copied()
        .filter(|ip| ip == original.ip())
        .collect();
    ordered.extend(candidates.iter().copied().filter(|ip| ip != original.ip()));
    // Checked again right before connecting: the answer may have changed since it was cached.
    let Some(target) = ordered
        .into_iter()
        .find(|ip| net.denied(IpAddr::V4(*ip)).is_none())
    else {
        refuse(
            net,
            link,
            client,
            &hello,
            Some(name),
            original,
            "it resolves only to denied addresses",
        )
        .await;
        return;
    };
    let target = SocketAddr::from((target, original.port()));
    let started = Instant::now();
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        _ => {
            net.record(
                link,
                &format!("unreachable {name}:{}", original.port()),
                NetworkAction::Unreachable {
                    host: name.to_string(),
                    address: target.ip().to_string(),
                    port: original.port(),
                },
            );
            caged_network::sockets::reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Some(entry) = link.connections.lock().get_mut(&number) {
        entry.0 = name.to_string();
    }
    let mut upstream = upstream;
    let mut sent = hello.len() as u64;
    // The bytes read to find the name first; the rest moves inside the kernel.
    let copied = async {
        upstream.write_all(&hello).await?;
        caged_network::splice::relay(&client, &upstream, caged_network::splice::AFTER_HALF_CLOSE)
            .await
    }
    .await;
    let (up, down) = copied.unwrap_or((0, 0));
    sent += up;
    net.record(
        link,
        &format!("connect {number}"),
        NetworkAction::Connect {
            host: Some(name.to_string()),
            address: target.ip().to_string(),
            port: Some(original.port()),
            protocol: None,
            by: None,
            bytes_out: Some(sent),
            bytes_in: Some(down),
            duration_ms: Some(started.elapsed().as_millis() as u64),
        },
    );
}

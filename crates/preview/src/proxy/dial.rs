//! Connections into a sandbox, made inside its network namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;

use crate::Previews;

/// Dials `http://<sandbox-id>:<port>` from inside that sandbox's network namespace, at the
/// address the port was detected listening on (its loopback when listening on all addresses).
#[derive(Clone)]
pub(super) struct Dialer {
    pub previews: Arc<Previews>,
}

impl tower_service::Service<hyper::Uri> for Dialer {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let previews = self.previews.clone();
        Box::pin(async move {
            let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such sandbox");
            let id: caged_domain::SandboxId = uri
                .host()
                .and_then(|host| host.parse().ok())
                .ok_or_else(not_found)?;
            let port = uri.port_u16().ok_or_else(not_found)?;
            let cage = previews.cage(id).ok_or_else(not_found)?;
            let listening = cage.ports.lock().get(&port).copied();
            let mut last_error = None;
            for addr in dial_candidates(listening) {
                match cage.ns.connect(SocketAddr::new(addr, port)).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Err(err) => last_error = Some(err),
                }
            }
            Err(last_error.unwrap_or_else(not_found))
        })
    }
}

/// Where to dial for a port listening on `addr` (all addresses means loopback).
fn dial_candidates(addr: Option<IpAddr>) -> Vec<IpAddr> {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    match addr {
        Some(IpAddr::V4(addr)) if addr.is_unspecified() => vec![v4],
        Some(IpAddr::V6(addr)) if addr.is_unspecified() => vec![v4, v6],
        Some(addr) => vec![addr],
        None => vec![v4, v6],
    }
}

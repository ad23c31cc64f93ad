//! An HTTP client for tests and benchmarks that says exactly what it is told: the Host header,
//! the TLS server name and the protocol are the caller's, so a test can send what a browser
//! would and what an attacker would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// A request with `Host: host` for `path`, plus `headers`.
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    request_with_body(method, host, path, headers, Bytes::new())
}

pub fn request_with_body(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body)).expect("a valid request")
}

/// Sends one request over a new HTTP/1.1 connection and reads the whole response.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    collect(send_streaming(addr, request).await).await
}

/// Sends one request over a new HTTP/1.1 connection; the body is left to the caller to read.
pub async fn send_streaming(addr: SocketAddr, request: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(connection.with_upgrades());
    sender.send_request(request).await.expect("response")
}

/// One request over HTTP/2 without TLS (prior knowledge).
pub async fn send_h2(
    addr: SocketAddr,
    mut request: Request<Full<Bytes>>,
) -> (Reply, hyper::Version) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    h2_authority(&mut request);
    let response = sender.send_request(request).await.expect("response");
    let version = response.version();
    (collect(response).await, version)
}

/// HTTP/2 carries the host as `:authority`, which hyper takes from an absolute URI.
fn h2_authority(request: &mut Request<Full<Bytes>>) {
    let host = request
        .headers_mut()
        .remove("host")
        .and_then(|value| value.to_str().ok().map(str::to_string))
        .expect("a host");
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_string();
    *request.uri_mut() = format!("http://{host}{path}").parse().expect("uri");
}

/// TLS to `addr`, asking for `server_name`, trusting only the certificate in `ca_pem`, then one
/// request over HTTP/2 when `h2` (negotiated by ALPN) or HTTP/1.1.
pub async fn send_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &Path,
    h2: bool,
    request: Request<Full<Bytes>>,
) -> Result<(Reply, hyper::Version), String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(|err| err.to_string())? {
        roots
            .add(cert.map_err(|err| err.to_string())?)
            .map_err(|err| err.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_string()).map_err(|err| err.to_string())?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| err.to_string())?;
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|err| err.to_string())?;
    let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if negotiated_h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|err| err.to_string())?;
        tokio::spawn(connection);
        let mut https = request;
        h2_authority(&mut https);
        let uri = https.uri().to_string().replacen("http://", "https://", 1);
        *https.uri_mut() = uri.parse().expect("uri");
        sender
            .send_request(https)
            .await
            .map_err(|err| err.to_string())?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| err.to_string())?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|err| err.to_string())?
    };
    let version = response.version();
    Ok((collect(response).await, version))
}

/// Writes `raw` bytes and returns whatever comes back until the server closes (or 64 KiB).
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer))
            .await
        {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buffer[..n]);
                // One response is enough: stop at the end of its (small) body.
                if out.len() > 65536 || complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .is_some_and(|length| body.len() >= length)
}

pub async fn collect(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

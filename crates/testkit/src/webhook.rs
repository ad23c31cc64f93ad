//! A webhook receiver for tests: a real HTTP server on loopback that keeps every POST it gets
//! and answers 500 to the first `fail_first` (to see retries), 200 after.

use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One delivery as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// What it was answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookReceiver {
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("its address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let failed = Arc::new(AtomicUsize::new(0));
        let kept = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (kept, failed) = (kept.clone(), failed.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (kept, failed) = (kept.clone(), failed.clone());
                        async move {
                            let headers = request
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), v.to_str().unwrap_or_default().to_string())
                                })
                                .collect();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let fail = failed.fetch_add(1, Ordering::SeqCst) < fail_first;
                            let status = if fail {
                                StatusCode::INTERNAL_SERVER_ERROR
                            } else {
                                StatusCode::OK
                            };
                            kept.lock().push(Received {
                                headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                status: status.as_u16(),
                            });
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WebhookReceiver {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/caged", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().clone()
    }
}

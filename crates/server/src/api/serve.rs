//! The API's listener: accepts connections and serves the router on each, with the limits a
//! server on a network needs (a client that trickles its headers is cut off) and the peer's
//! address on every request (for the failed-authentication limit), and a lingering close (a
//! client still sending a body the server refused gets to read the refusal).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tower_service::Service;

/// Serves `router` on `listener` until `shutdown` resolves, then lets the requests in flight
/// finish. A client has `header_timeout` to send a request's headers, from its first byte (or,
/// on a kept-alive connection, from the previous answer).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = caged_network::sockets::accept(&listener, "API listener") => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo::<SocketAddr>(peer));
            let (body, read) = Tracked::new(body);
            let answer = router.clone().call(hyper::Request::from_parts(
                parts,
                axum::body::Body::new(body),
            ));
            async move {
                let mut response = answer.await?;
                // Refused before its body was read (a 413, a 401 on an upload): the connection
                // cannot carry another request, and the client is told so rather than finding
                // out on its next one.
                if !read.load(Ordering::Relaxed) {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(Lingering::new(stream)), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (gone away, too slow, malformed): the connection
            // ends, and there is no one to tell.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// How long, and how much, a closed connection still reads of what its client sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 64 << 20;

/// A connection whose close waits for the client. Answering before the whole request body was
/// read (a 413 for an oversized body, a 401 before an upload) and closing at once would make the
/// kernel reset the connection, since unread data is still arriving, and the reset throws the
/// answer away in the client's buffers: it would see "broken pipe" instead of the error. So, as
/// web servers do, the close sends FIN first, then reads and drops what still comes, until the
/// client closes too, for at most [`LINGER`] and [`LINGER_BYTES`].
struct Lingering {
    inner: TcpStream,
    /// Set once the write side is shut: the deadline, and what was drained so far.
    closing: Option<(Pin<Box<Sleep>>, u64)>,
}

impl Lingering {
    fn new(inner: TcpStream) -> Lingering {
        Lingering {
            inner,
            closing: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.closing = Some((Box::pin(tokio::time::sleep(LINGER)), 0));
        }
        let Some((deadline, drained)) = &mut this.closing else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *drained > LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => *drained += buf.filled().len() as u64,
                // The client is gone: nothing left to wait for.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A request body that says when it was read to its end (at once, for a request without one).
struct Tracked {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl Tracked {
    fn new(inner: Incoming) -> (Tracked, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(inner.is_end_stream()));
        (
            Tracked {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

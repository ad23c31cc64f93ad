//! Blocking work (SQLite, tar, decompression) off the async workers.

use std::io::{Read, Write};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Runs `work` on the blocking pool. A panic in it is re-raised here.
pub(crate) async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Feeds `input` through a blocking `transform` (reader in, writer out) on its own thread and
/// returns its output as a stream, chunk by chunk, without holding the whole thing in memory.
pub(crate) fn pipe<S, E, F>(
    input: S,
    transform: F,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
    F: FnOnce(&mut dyn Read, &mut dyn Write) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let reader = StreamReader::new(input.map_err(|err| std::io::Error::other(err.to_string())));
    tokio::task::spawn_blocking(move || {
        let mut reader = SyncIoBridge::new(reader);
        let mut writer = ChannelWriter { tx: tx.clone() };
        if let Err(err) = transform(&mut reader, &mut writer) {
            let _ = tx.blocking_send(Err(err));
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `produce` on its own thread, writing into a stream the caller reads chunk by chunk.
pub(crate) fn produce<F>(produce: F) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let mut writer =
            std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter { tx: tx.clone() });
        let outcome = produce(&mut writer).and_then(|()| writer.flush());
        if let Err(err) = outcome {
            let _ = tx.blocking_send(Err(err));
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// Hands an async byte stream to blocking `work` as a reader, on a blocking thread.
pub(crate) async fn consume<S, E, T, F>(input: S, work: F) -> T
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
    F: FnOnce(&mut dyn Read) -> T + Send + 'static,
    T: Send + 'static,
{
    let reader = StreamReader::new(input.map_err(|err| std::io::Error::other(err.to_string())));
    run(move || {
        let mut reader = SyncIoBridge::new(reader);
        work(&mut reader)
    })
    .await
}

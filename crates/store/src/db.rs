//! The store for async callers. SQLite calls block, so each runs on the blocking pool; the
//! events a call writes are handed to live followers (`caged events --follow`, the dashboard)
//! as they commit. Everything async in Caged reaches the database through one of these.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{Event, Store};

/// Events kept for followers that fall behind; one that falls further re-reads the log.
const FOLLOWER_BACKLOG: usize = 1024;

#[derive(Clone)]
pub struct Db {
    store: Arc<Store>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Db {
    pub fn new(store: Store) -> Db {
        Db {
            store: Arc::new(store),
            events: broadcast::channel(FOLLOWER_BACKLOG).0,
        }
    }

    /// Runs `work` on the blocking pool. A panic in it is re-raised here.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(value) => value,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    /// [`Db::run`] for a write that appends events: they are published once it returns them.
    pub async fn write<W: Written + Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> crate::Result<W> + Send + 'static,
    ) -> crate::Result<()> {
        let written = self.run(work).await?;
        for event in written.into_events() {
            self.publish(event);
        }
        Ok(())
    }

    /// Tells live followers about an event already in the log.
    pub fn publish(&self, event: Event) {
        // No follower is not an error.
        let _ = self.events.send(Arc::new(event));
    }

    /// Events from now on, as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The store itself, for a thread of its own that may block (the observer).
    pub fn blocking(&self) -> Arc<Store> {
        self.store.clone()
    }
}

/// What a write hands back: the events it appended.
pub trait Written {
    fn into_events(self) -> Vec<Event>;
}

impl Written for Event {
    fn into_events(self) -> Vec<Event> {
        vec![self]
    }
}

impl Written for Option<Event> {
    fn into_events(self) -> Vec<Event> {
        self.into_iter().collect()
    }
}

impl Written for Vec<Event> {
    fn into_events(self) -> Vec<Event> {
        self
    }
}

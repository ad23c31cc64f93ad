//! Controllers beside the lifecycle: loops that watch the sandboxes and drive them through it.
//!
//! - [`reconcile`]: makes the database and the engine agree after a crash or an engine restart.
//! - [`idle`]: puts sandboxes whose activity clock ran out to sleep.
//! - [`budget`]: alerts at 80% and 95% of a budget, and takes a final snapshot and destroys at
//!   100%; [`webhooks`] delivers the alerts.
//! - [`auto_snapshot`]: a snapshot of each sandbox as it falls asleep.

pub(crate) mod auto_snapshot;
pub(crate) mod budget;
pub(crate) mod idle;
pub(crate) mod reconcile;
pub(crate) mod webhooks;

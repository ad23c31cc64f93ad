//! A sandbox's event log as the API shows it: listed as JSON, or followed as Server-Sent Events
//! whose `data` is the same [`Event`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub at: String,
    /// `seq` as a string: the SSE id a reconnecting client resumes after.
    pub id: String,
    /// What happened: `state`, `exec`, `file`, `network`, `process`, ...
    pub kind: String,
    /// What the kind says about it; its fields depend on the kind.
    pub payload: Value,
    pub sandbox_id: String,
    /// Position in the log; strictly increasing, so "events after N" never misses one.
    pub seq: i64,
    /// The session it happened in, when it came through one.
    #[schema(required = true)]
    pub session_id: Option<String>,
}

/// `GET /v1/sandboxes/{id}/events` and `GET /v1/sessions/{sid}/events`, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
}

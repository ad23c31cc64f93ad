//! Sessions (one per streaming exec, shell or agent) and their trust: a score out of 100, its
//! rating, and the penalties, with their evidence, that took points off it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::values::TrustRating;

/// Whether a session is still going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Open,
    Ended,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub agent_type: String,
    /// `exec` (a streaming exec or `caged shell`) or `agent` (`caged agent`).
    pub channel: String,
    pub command: Vec<String>,
    /// Until now while it is open.
    pub duration_seconds: f64,
    #[schema(required = true)]
    pub end_reason: Option<String>,
    #[schema(required = true)]
    pub ended_at: Option<String>,
    pub id: String,
    pub llm_cost_micros: i64,
    pub sandbox_id: String,
    pub started_at: String,
    pub state: SessionState,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

/// A score and its band, as lists show them beside what was scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrustSummary {
    #[schema(value_type = TrustRating)]
    pub trust_rating: String,
    pub trust_score: u32,
}

/// `GET /v1/sandboxes/{id}/sessions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionListItem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionListItem {
    #[serde(flatten)]
    pub session: Session,
    #[serde(flatten)]
    pub trust: TrustSummary,
}

/// `GET /v1/sessions/{sid}`: the session, its trust, and why it has that score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    pub penalties: Vec<Penalty>,
    #[serde(flatten)]
    pub session: Session,
    #[serde(flatten)]
    pub trust: TrustSummary,
}

/// Points taken off a session's score, and what was seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Penalty {
    pub at: String,
    /// The event it was charged for.
    pub event_seq: i64,
    /// What was seen; its fields depend on the rule.
    pub evidence: Value,
    /// What the penalty is about (a path, a host, a program), so each is charged once.
    pub key: String,
    pub points: u32,
    pub reason: String,
    pub rule: String,
}

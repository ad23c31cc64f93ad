//! Money: what a sandbox spent (`cost`, `usage`), its budget, the account's webhook for budget
//! alerts and the account's spend per day. Amounts are integer micro-dollars, so that sums are
//! exact; only `budget_usd` is a float, as people write budgets.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::values::{AlertLevel, SandboxState};

/// What a sandbox spent so far, and how much of its budget that is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cost {
    /// `null`: no budget.
    #[schema(required = true)]
    pub budget_micros: Option<i64>,
    /// Spend as a percentage of the budget, two decimals; `null`: no budget.
    #[schema(required = true)]
    pub budget_percent: Option<f64>,
    pub compute_micros: i64,
    pub llm_micros: i64,
    pub total_micros: i64,
}

/// `GET /v1/sandboxes/{id}/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Budget alerts sent so far, oldest first.
    pub alerts: Vec<BudgetAlert>,
    #[schema(required = true)]
    pub budget_usd: Option<f64>,
    pub cost: Cost,
    pub prices: Prices,
    pub resources: UsageResources,
    /// Exact, as billed.
    pub running_ms: i64,
    pub running_seconds: f64,
    pub sandbox_id: String,
    /// Each session's share, oldest first.
    pub sessions: Vec<SessionUsage>,
    #[schema(value_type = SandboxState)]
    pub state: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

/// What compute is billed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageResources {
    pub cpu: f64,
    pub memory_mb: u64,
}

/// The server's compute prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prices {
    pub gib_hour_micros: i64,
    pub vcpu_hour_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetAlert {
    pub at: String,
    pub budget_micros: i64,
    /// `null` for a percentage that names no level.
    #[schema(value_type = Option<AlertLevel>, required = true)]
    pub level: Option<String>,
    pub percent: i64,
    pub spend_micros: i64,
}

/// A session's share of a sandbox's spend: the compute while it was open, and its LLM calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionUsage {
    pub agent_type: String,
    pub compute_micros: i64,
    /// `null` while the session is open.
    #[schema(required = true)]
    pub ended_at: Option<String>,
    pub id: String,
    pub llm_micros: i64,
    pub running_seconds: f64,
    pub started_at: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub total_micros: i64,
}

/// Body of `PUT /v1/sandboxes/{id}/budget`: a number of USD, or `null` for no limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetBudget {
    #[schema(required = true, minimum = 0.000001, maximum = 1000000)]
    pub budget_usd: Option<f64>,
}

/// `PUT /v1/sandboxes/{id}/budget`'s answer: the budget now, and the spend it is measured against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    #[schema(required = true)]
    pub budget_usd: Option<f64>,
    pub cost: Cost,
    pub sandbox_id: String,
}

/// The account's webhook; `url` is `null` (and `secret` absent) when none is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Signs every delivery (HMAC-SHA256); made anew each time the webhook is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub secret: Option<String>,
    #[schema(required = true)]
    pub url: Option<String>,
}

/// `GET /v1/account/webhook`: the webhook and its latest deliveries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookStatus {
    /// Newest first, at most 20.
    pub deliveries: Vec<WebhookDelivery>,
    #[serde(flatten)]
    pub webhook: Webhook,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    pub attempts: i64,
    pub created_at: String,
    #[schema(required = true)]
    pub delivered_at: Option<String>,
    pub id: i64,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// `null` once delivered or given up on.
    #[schema(required = true)]
    pub next_attempt_at: Option<String>,
    /// The event delivered (`budget.warning`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
}

/// Body of `PUT /v1/account/webhook`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetWebhook {
    /// `https://...` (or `http://`).
    pub url: String,
}

/// `GET /v1/account/usage`: the account's spend per UTC day, oldest first, and the totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountUsage {
    pub compute_micros: i64,
    pub days: Vec<DayUsage>,
    pub llm_micros: i64,
    pub total_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DayUsage {
    pub compute_micros: i64,
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub llm_calls: i64,
    pub llm_micros: i64,
    pub running_seconds: f64,
    /// How many sandboxes ran at some point of the day.
    pub sandboxes_running: i64,
    pub total_micros: i64,
}

//! The HTTP API's requests and answers as types, in one crate so that the server builds its
//! answers from the same definitions the client, the CLI and the tests read them with, and
//! `/v1/openapi.json` describes: a change to the contract is a change here, seen by all of them.
//!
//! Conventions, so that the answers stayed byte for byte what they were when the server wrote
//! them as `serde_json` maps (which sort their keys):
//! - Fields are declared in alphabetical order.
//! - An `Option` field is sent as `null` when empty (and is `required` in the schema) unless it
//!   says `skip_serializing_if`, in which case the key is left out.
//! - Values whose spelling belongs to another crate (a sandbox's state, a trust rating) are
//!   `String`s here, so that callers compare them with plain strings; their schema names the
//!   allowed values (see [`values`]).
//! - Times are RFC 3339 strings; money is integer micro-dollars (`*_micros`) unless a name says
//!   `_usd`.

pub mod accounts;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod network;
pub mod previews;
pub mod sandbox;
pub mod sessions;
pub mod snapshots;
pub mod system;
pub mod templates;
pub mod usage;
pub mod values;

pub use accounts::{AccountList, AccountView, CreateAccount, NewAccount};
pub use error::{ErrorBody, ErrorDetail};
pub use events::{Event, EventList};
pub use exec::{ExecClientMessage, ExecRequest, ExecResult, ExecServerMessage};
pub use files::FileWritten;
pub use network::{AllowedHosts, LearnedHost, Link, NetworkLearn, NetworkView, SetAllowedHosts};
pub use previews::{Preview, PreviewList, PreviewUrl, ProtectPreview};
pub use sandbox::{
    ChargedSession, Resources, Sandbox, SandboxDetail, SandboxList, SandboxListItem, SandboxTrust,
    TransitionView,
};
pub use sessions::{
    Penalty, Session, SessionDetail, SessionList, SessionListItem, SessionState, TrustSummary,
};
pub use snapshots::{CreateSnapshot, Restore, Snapshot, SnapshotDeleted, SnapshotList};
pub use system::{EngineInfo, EngineStatus, ObservationStatus, SandboxCa, Support, System};
pub use templates::{Template, TemplateList};
pub use usage::{
    AccountUsage, Budget, BudgetAlert, Cost, DayUsage, Prices, SessionUsage, SetBudget, SetWebhook,
    Usage, UsageResources, Webhook, WebhookDelivery, WebhookStatus,
};

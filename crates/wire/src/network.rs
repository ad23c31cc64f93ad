//! A sandbox's network: its mode and allowlist, its link to the host, and the hosts it tried
//! (what `caged network learn` turns into an allowlist).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::values::NetworkMode;

/// `GET /v1/sandboxes/{id}/network`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    pub allowed_hosts: Vec<String>,
    pub hosts: Vec<LearnedHost>,
    /// `null` for a destroyed sandbox, or one without a network.
    #[schema(required = true)]
    pub link: Option<Link>,
    #[schema(value_type = NetworkMode)]
    pub network_mode: String,
}

/// The sandbox's own link to the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Link {
    pub host_address: String,
    pub host_interface: String,
    /// The DNS resolver the sandbox is given (the host's end of the link).
    pub resolver: String,
    pub sandbox_address: String,
}

/// A host the sandbox tried to reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LearnedHost {
    /// Whether it was let through at least once.
    pub allowed: bool,
    pub attempts: u64,
    pub host: String,
}

/// `GET /v1/sandboxes/{id}/network/learn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkLearn {
    /// `network_mode` and `allowed_hosts` lines that allow exactly the hosts tried.
    pub caged_yaml: String,
    pub hosts: Vec<LearnedHost>,
}

/// Body of `PUT /v1/sandboxes/{id}/network/allowed-hosts`; replaces the list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetAllowedHosts {
    /// Host names, `*.` wildcards allowed (`*.example.org`).
    pub allowed_hosts: Vec<String>,
}

/// `PUT /v1/sandboxes/{id}/network/allowed-hosts`'s answer: the list now (lowercased).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AllowedHosts {
    pub allowed_hosts: Vec<String>,
    /// Always `allowlist`: only an allowlist sandbox's list can change.
    #[schema(value_type = NetworkMode)]
    pub network_mode: String,
}

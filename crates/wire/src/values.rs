//! The closed sets of strings the answers use, as enums for the schema: the fields that carry them
//! stay `String` (callers compare them with `"running"`), and these name the values allowed.
//! Where the spelling belongs to the domain, a `From` conversion with an exhaustive match makes a
//! new domain variant fail to compile here until the document knows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a sandbox is in its lifecycle (`caged_domain::SandboxState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Pending,
    Running,
    Paused,
    Destroyed,
}

impl From<caged_domain::SandboxState> for SandboxState {
    fn from(state: caged_domain::SandboxState) -> Self {
        use caged_domain::SandboxState as Domain;
        match state {
            Domain::Pending => Self::Pending,
            Domain::Running => Self::Running,
            Domain::Paused => Self::Paused,
            Domain::Destroyed => Self::Destroyed,
        }
    }
}

/// How a sandbox is isolated from the host (`caged_domain::Isolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Container,
    Gvisor,
}

impl From<caged_domain::Isolation> for Isolation {
    fn from(isolation: caged_domain::Isolation) -> Self {
        use caged_domain::Isolation as Domain;
        match isolation {
            Domain::Container => Self::Container,
            Domain::Gvisor => Self::Gvisor,
        }
    }
}

/// What a sandbox may reach (`caged_domain::NetworkMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Full,
    Allowlist,
    None,
}

impl From<caged_domain::NetworkMode> for NetworkMode {
    fn from(mode: caged_domain::NetworkMode) -> Self {
        use caged_domain::NetworkMode as Domain;
        match mode {
            Domain::Full => Self::Full,
            Domain::Allowlist => Self::Allowlist,
            Domain::None => Self::None,
        }
    }
}

/// The band a trust score falls in (`caged_trust::Rating`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrustRating {
    Excellent,
    Good,
    Caution,
    Alert,
}

/// How far a sandbox's spend went into its budget (`caged_cost::Level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    Warning,
    Critical,
    Exceeded,
}

/// Who took a snapshot: a caller, or the server when the sandbox went to sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Manual,
    Auto,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// Whether `text` is one of `T`'s values, as the document lists them.
    fn allowed<T: DeserializeOwned>(text: &str) -> bool {
        serde_json::from_value::<T>(serde_json::Value::from(text)).is_ok()
    }

    #[test]
    fn the_domains_spellings_are_the_documents() {
        for state in caged_domain::SandboxState::ALL {
            let wire = serde_json::to_value(SandboxState::from(state)).unwrap();
            assert_eq!(wire, state.as_str());
        }
        for isolation in [
            caged_domain::Isolation::Container,
            caged_domain::Isolation::Gvisor,
        ] {
            let wire = serde_json::to_value(Isolation::from(isolation)).unwrap();
            assert_eq!(wire, isolation.as_str());
        }
        for mode in [
            caged_domain::NetworkMode::Full,
            caged_domain::NetworkMode::Allowlist,
            caged_domain::NetworkMode::None,
        ] {
            let wire = serde_json::to_value(NetworkMode::from(mode)).unwrap();
            assert_eq!(wire, mode.as_str());
        }
    }

    #[test]
    fn every_rating_and_alert_level_is_listed() {
        for score in 0..=100 {
            let rating = caged_trust::Rating::of(score).as_str();
            assert!(allowed::<TrustRating>(rating), "{rating}");
        }
        for percent in 0..=200 {
            if let Some(level) = caged_cost::Level::from_percent(percent) {
                assert!(allowed::<AlertLevel>(level.as_str()), "{}", level.as_str());
            }
        }
    }
}

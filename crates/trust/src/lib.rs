//! Trust scores from what a session was seen doing. Pure: the server feeds [`Observation`]s
//! (made on the host side from the kernel's reports) into a [`Ledger`] per session, which charges
//! each distinct risky behaviour once, with the evidence, as the [`Policy`] prices it.
//!
//! A score is 100 minus the points charged, never below 0; [`Rating`] names its band.

mod ledger;
pub mod packages;
mod policy;
pub mod programs;

pub use ledger::{FileChange, Ledger, Observation, Penalty};
pub use policy::{Policy, PolicyError, Rule, SensitiveFile, Tier};

use serde::Serialize;

/// The product's bands: Excellent 90–100, Good 70–89, Caution 50–69, Alert 0–49.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Alert,
    Caution,
    Good,
    Excellent,
}

impl Rating {
    pub fn of(score: u32) -> Rating {
        match score {
            90.. => Rating::Excellent,
            70..=89 => Rating::Good,
            50..=69 => Rating::Caution,
            _ => Rating::Alert,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Excellent => "excellent",
            Rating::Good => "good",
            Rating::Caution => "caution",
            Rating::Alert => "alert",
        }
    }
}

/// The score left after `points` of penalties.
pub fn score(points: u64) -> u32 {
    100u64.saturating_sub(points) as u32
}

/// Whether `host` matches one of `patterns` (`example.com` exactly, `*.example.com` any name
/// under it). Names compare case-insensitively, a trailing dot ignored.
pub fn host_matches(patterns: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => host == pattern,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_and_scores() {
        assert_eq!(score(0), 100);
        assert_eq!(score(250), 0);
        assert_eq!(Rating::of(100), Rating::Excellent);
        assert_eq!(Rating::of(90), Rating::Excellent);
        assert_eq!(Rating::of(89), Rating::Good);
        assert_eq!(Rating::of(70), Rating::Good);
        assert_eq!(Rating::of(69), Rating::Caution);
        assert_eq!(Rating::of(50), Rating::Caution);
        assert_eq!(Rating::of(49), Rating::Alert);
        assert_eq!(Rating::of(0), Rating::Alert);
    }

    #[test]
    fn host_patterns() {
        let patterns = vec!["pypi.org".to_string(), "*.github.com".to_string()];
        assert!(host_matches(&patterns, "PyPI.org."));
        assert!(host_matches(&patterns, "api.github.com"));
        assert!(!host_matches(&patterns, "github.com"));
        assert!(!host_matches(&patterns, "evilgithub.com"));
        assert!(!host_matches(&patterns, "pypi.org.evil.test"));
    }
}

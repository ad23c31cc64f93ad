//! Money for Caged. Every amount is an integer number of micro-dollars ([`Micros`]): sums of
//! many small charges never drift, and "99.99% of the budget" is never rounded up to 100%.
//!
//! - [`prices`]: the price table (compute per vCPU-hour and GiB-hour, tokens per model), the
//!   compute cost of exact running time and the cost of one LLM call.
//! - [`usage`]: token usage read from OpenAI- and Anthropic-format responses, whole or streamed
//!   (server-sent events), without holding up the stream.
//! - [`spend`]: what a sandbox spent, from its history of transitions and its LLM total.
//! - [`budget`]: the alert levels of a budget (80%, 95%, 100%).

pub mod budget;
pub mod prices;
pub mod spend;
pub mod usage;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub use budget::Level;
pub use prices::{ModelPrice, Prices};
pub use spend::{Spend, compute_cost, session_running_ms, spend};
pub use usage::{Protocol, Usage, UsageMeter};

/// An amount of money in micro-dollars (1 USD = 1,000,000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

/// The most any single amount in a configuration may be: a billion dollars.
const MAX_USD: f64 = 1e9;

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// From a decimal USD amount as written in a file (`5.00`, `0.0504`), to the nearest
    /// micro-dollar. `None` for negative, non-finite or absurd amounts.
    pub fn from_usd(usd: f64) -> Option<Micros> {
        if !usd.is_finite() || !(0.0..=MAX_USD).contains(&usd) {
            return None;
        }
        Some(Micros((usd * 1e6).round() as i64))
    }

    /// For JSON readers that want a number: exact to the micro-dollar for any amount below
    /// $9 billion (f64 holds 15 significant digits).
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e6
    }

    pub fn saturating_add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }
}

impl std::ops::Add for Micros {
    type Output = Micros;
    fn add(self, other: Micros) -> Micros {
        self.saturating_add(other)
    }
}

impl std::iter::Sum for Micros {
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        iter.fold(Micros::ZERO, Micros::saturating_add)
    }
}

/// `$1.234567`: every digit a micro-dollar has, so what is shown adds up.
impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:06}", abs / 1_000_000, abs % 1_000_000)
    }
}

/// Reads a USD number (as YAML and JSON write money) into micro-dollars.
pub fn deserialize_usd<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Micros, D::Error> {
    let usd = f64::deserialize(deserializer)?;
    Micros::from_usd(usd).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "must be an amount of USD from 0 to {MAX_USD} (got {usd})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_amounts_become_exact_micros() {
        assert_eq!(Micros::from_usd(5.0), Some(Micros(5_000_000)));
        assert_eq!(Micros::from_usd(0.0504), Some(Micros(50_400)));
        assert_eq!(Micros::from_usd(0.1 + 0.2), Some(Micros(300_000)));
        assert_eq!(Micros::from_usd(-1.0), None);
        assert_eq!(Micros::from_usd(f64::NAN), None);
        assert_eq!(Micros(1_234_567).to_string(), "$1.234567");
        assert_eq!(Micros(5).to_string(), "$0.000005");
        assert_eq!(Micros(-5).to_string(), "-$0.000005");
    }

    #[test]
    fn a_million_small_charges_add_up_exactly() {
        let total: Micros = std::iter::repeat_n(Micros(3), 1_000_000).sum();
        assert_eq!(total, Micros(3_000_000));
    }
}

//! The levels of a budget. Integer arithmetic throughout: a spend of 99.99% is not 100%.

use serde::Serialize;

use crate::Micros;

/// An alert level, in the order a growing spend reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// 80%: a warning.
    Warning,
    /// 95%: critical.
    Critical,
    /// 100%: the sandbox is destroyed (after a final snapshot).
    Exceeded,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Warning, Level::Critical, Level::Exceeded];

    pub fn percent(self) -> i64 {
        match self {
            Level::Warning => 80,
            Level::Critical => 95,
            Level::Exceeded => 100,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Critical => "critical",
            Level::Exceeded => "exceeded",
        }
    }

    pub fn from_percent(percent: i64) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|level| level.percent() == percent)
    }

    /// Whether `spend` has reached this level of `budget`.
    pub fn reached(self, spend: Micros, budget: Micros) -> bool {
        i128::from(spend.0) * 100 >= i128::from(budget.0) * i128::from(self.percent())
    }
}

/// The levels `spend` has reached, lowest first.
pub fn reached(spend: Micros, budget: Micros) -> impl Iterator<Item = Level> {
    Level::ALL
        .into_iter()
        .filter(move |level| level.reached(spend, budget))
}

/// Spend as hundredths of a percent of the budget, rounded down (9999 is 99.99%).
pub fn basis_points(spend: Micros, budget: Micros) -> i64 {
    if budget.0 <= 0 {
        return 0;
    }
    (i128::from(spend.0.max(0)) * 10_000 / i128::from(budget.0)).min(i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_reached_exactly_at_their_percentages() {
        let budget = Micros(1_000_000);
        assert_eq!(reached(Micros(799_999), budget).count(), 0);
        assert_eq!(
            reached(Micros(800_000), budget).collect::<Vec<_>>(),
            [Level::Warning]
        );
        assert_eq!(reached(Micros(949_999), budget).count(), 1);
        assert_eq!(reached(Micros(950_000), budget).count(), 2);
        // 99.99% is not 100%.
        assert_eq!(reached(Micros(999_900), budget).count(), 2);
        assert_eq!(basis_points(Micros(999_900), budget), 9999);
        assert_eq!(reached(Micros(1_000_000), budget).count(), 3);
        // A budget so small that 80% of it is a fraction of a micro-dollar.
        assert!(!Level::Warning.reached(Micros(0), Micros(1)));
        assert!(Level::Exceeded.reached(Micros(1), Micros(1)));
    }
}

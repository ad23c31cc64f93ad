//! The sandbox lifecycle as one state machine:
//! `pending → running ⇄ paused`, and any live state `→ destroyed`.
//! Billing and `running_seconds` are derived from the recorded transitions alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Pending,
    Running,
    Paused,
    Destroyed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: SandboxState,
    pub to: SandboxState,
}

impl SandboxState {
    pub const ALL: [SandboxState; 4] =
        [Self::Pending, Self::Running, Self::Paused, Self::Destroyed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Destroyed => "destroyed",
        }
    }

    /// The only place that decides which state changes are legal.
    pub fn check_transition(self, to: SandboxState) -> Result<(), IllegalTransition> {
        use SandboxState::*;
        let legal = matches!(
            (self, to),
            (Pending, Running)
                | (Running, Paused)
                | (Paused, Running)
                | (Pending | Running | Paused, Destroyed)
        );
        if legal {
            Ok(())
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    pub fn is_live(self) -> bool {
        self != Self::Destroyed
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown sandbox state {s:?}"))
    }
}

/// One entry of a sandbox's history: it entered `state` at `at_ms` (Unix milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: SandboxState,
    pub at_ms: i64,
}

/// Exact milliseconds spent `running`, from a history in time order, counting an open running
/// interval up to `now_ms`. Billing and `running_seconds` both come from here.
pub fn running_millis(transitions: &[Transition], now_ms: i64) -> i64 {
    let mut total = 0;
    let mut running_since: Option<i64> = None;
    for transition in transitions {
        if let Some(since) = running_since.take() {
            total += (transition.at_ms - since).max(0);
        }
        if transition.state == SandboxState::Running {
            running_since = Some(transition.at_ms);
        }
    }
    if let Some(since) = running_since {
        total += (now_ms - since).max(0);
    }
    total
}

/// Milliseconds spent running within `[from_ms, to_ms)` (a session's share of its sandbox's
/// running time).
pub fn running_millis_between(transitions: &[Transition], from_ms: i64, to_ms: i64) -> i64 {
    let mut total = 0;
    let mut running_since: Option<i64> = None;
    let overlap = |start: i64, end: i64| (end.min(to_ms) - start.max(from_ms)).max(0);
    for transition in transitions {
        if let Some(since) = running_since.take() {
            total += overlap(since, transition.at_ms);
        }
        if transition.state == SandboxState::Running {
            running_since = Some(transition.at_ms);
        }
    }
    if let Some(since) = running_since {
        total += overlap(since, to_ms);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;
    use super::*;

    #[test]
    fn a_window_gets_the_running_time_inside_it() {
        let at = |state, at_ms| Transition { state, at_ms };
        let transitions = [
            at(Pending, 0),
            at(Running, 10),
            at(Paused, 110),
            at(Running, 210),
        ];
        assert_eq!(running_millis(&transitions, 260), 150);
        assert_eq!(running_millis_between(&transitions, 0, 260), 150);
        assert_eq!(running_millis_between(&transitions, 60, 230), 50 + 20);
        assert_eq!(running_millis_between(&transitions, 120, 200), 0);
        assert_eq!(running_millis_between(&transitions, 300, 400), 100);
    }

    #[test]
    fn only_the_documented_transitions_are_legal() {
        let legal = [
            (Pending, Running),
            (Running, Paused),
            (Paused, Running),
            (Pending, Destroyed),
            (Running, Destroyed),
            (Paused, Destroyed),
        ];
        for from in SandboxState::ALL {
            for to in SandboxState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(
                    from.check_transition(to).is_ok(),
                    expected,
                    "{from} -> {to}"
                );
            }
        }
        let err = Paused.check_transition(Paused).unwrap_err();
        assert_eq!(err.to_string(), "cannot go from paused to paused");
    }

    #[test]
    fn running_time_counts_only_running_intervals() {
        let t = |state, at_ms| Transition { state, at_ms };
        let history = [
            t(Pending, 0),
            t(Running, 1_000),
            t(Paused, 3_500),
            t(Running, 10_000),
            t(Paused, 10_250),
        ];
        assert_eq!(running_millis(&history, 99_000), 2_750);
        // An open running interval counts up to now.
        assert_eq!(running_millis(&history[..4], 12_000), 4_500);
        assert_eq!(running_millis(&[t(Pending, 0), t(Destroyed, 5)], 100), 0);
    }
}

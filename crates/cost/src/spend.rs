//! What a sandbox has spent: compute from the exact time its history says it ran, and its LLM
//! calls. Derived every time from the transitions, never accumulated.

use caged_domain::{Resources, Transition, running_millis, running_millis_between};

use crate::{Micros, Prices};

/// A sandbox's spend up to its clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spend {
    pub running_ms: i64,
    pub compute: Micros,
    pub llm: Micros,
}

impl Spend {
    pub fn total(&self) -> Micros {
        self.compute + self.llm
    }
}

/// The compute cost of `running_ms` at `resources`.
pub fn compute_cost(prices: &Prices, resources: &Resources, running_ms: i64) -> Micros {
    prices.compute_cost(
        running_ms,
        crate::prices::milli_cpus(resources.cpu),
        resources.memory as i64,
    )
}

/// What a sandbox with this history, resources and LLM total has spent by `clock_ms` (now, or
/// its last transition once destroyed).
pub fn spend(
    prices: &Prices,
    transitions: &[Transition],
    clock_ms: i64,
    resources: &Resources,
    llm_micros: i64,
) -> Spend {
    let running_ms = running_millis(transitions, clock_ms);
    Spend {
        running_ms,
        compute: compute_cost(prices, resources, running_ms),
        llm: Micros(llm_micros),
    }
}

/// A session's share of its sandbox's running time: the time it ran while the session was open
/// (`ended_ms`: when the session ended, if it did), up to the sandbox's clock.
pub fn session_running_ms(
    transitions: &[Transition],
    clock_ms: i64,
    started_ms: i64,
    ended_ms: Option<i64>,
) -> i64 {
    let end = ended_ms.unwrap_or(clock_ms).min(clock_ms);
    running_millis_between(transitions, started_ms, end)
}

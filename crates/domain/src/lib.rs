//! Caged's pure core: the vocabulary every other crate speaks (sandboxes, their lifecycle, the
//! `.caged.yaml` config). No I/O here, so the rules can be tested as plain functions.

pub mod config;
pub mod event;
pub mod id;
pub mod json;
pub mod lifecycle;
pub mod rate;
pub mod time;

pub use config::{
    ConfigError, Isolation, NetworkMode, Resources, SandboxConfig, check_host_pattern,
};
pub use event::EventKind;
pub use id::{IdError, SandboxId, random_hex};
pub use lifecycle::{
    IllegalTransition, SandboxState, Transition, running_millis, running_millis_between,
};

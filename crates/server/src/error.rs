//! What can go wrong below the API: each variant says what failed, in words a user can act on.
//! Which HTTP status and error code that is, is the API's business (`api::error`), decided in
//! one place; so is what reaches the log.

use caged_domain::SandboxId;
use caged_runtime::RuntimeError;
use caged_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    EngineUnavailable(String),
    /// A sandbox, snapshot or session that does not exist, or is someone else's: the two look
    /// the same.
    #[error("{0}")]
    NotFound(String),
    /// The request asked for something that cannot be (`code` names the field or rule).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("a live sandbox is already named {0:?}")]
    NameTaken(String),
    #[error("sandbox {0} has no container yet")]
    NotReady(SandboxId),
    /// The sandbox is not in a state the operation works in.
    #[error("{0}")]
    WrongState(String),
    /// The state machine refused the change, or the state changed meanwhile.
    #[error("{0}")]
    IllegalTransition(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TemplateMismatch(String),
    /// `user:` (or an exec's user) names an account the template does not have.
    #[error("{0}")]
    UnknownUser(String),
    #[error("sandbox {0} has no init_script")]
    NoInitScript(SandboxId),
    #[error("sandbox {0}'s init_script has already run")]
    InitStarted(SandboxId),
    #[error("{0}")]
    NotAllowlist(String),
    /// An upload past a limit: the server's, or what the sandbox's disk holds.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    IsDirectory(String),
    #[error("{0}")]
    NotADirectory(String),
    #[error(
        "this account already has {0} sandboxes, the most it may have \
         (`caged server --max-sandboxes-per-account`); destroy one first"
    )]
    SandboxLimit(usize),
    #[error("{0}")]
    SnapshotLimit(String),
    #[error("{0}")]
    SnapshotQuota(String),
    #[error("{0}")]
    BadSnapshot(String),
    #[error("{0}")]
    NetworkFull(String),
    #[error("{0}")]
    NetworkUnreachable(String),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<caged_netpolicy::Error> for Error {
    fn from(err: caged_netpolicy::Error) -> Self {
        match err {
            caged_netpolicy::Error::PoolFull { .. } => Error::NetworkFull(err.to_string()),
            caged_netpolicy::Error::Store(err) => Error::Store(err),
            other => Error::Internal(format!("cannot set up the sandbox's network: {other}")),
        }
    }
}

impl From<caged_preview::Error> for Error {
    fn from(err: caged_preview::Error) -> Self {
        match err {
            caged_preview::Error::BadPassword(why) => {
                Error::invalid("invalid_preview", format!("password: {why}"))
            }
            caged_preview::Error::NotReady(id) => Error::NotReady(id),
            caged_preview::Error::NetworkUnreachable(why) => Error::NetworkUnreachable(why),
            caged_preview::Error::Runtime(err) => Error::Runtime(err),
            caged_preview::Error::Store(err) => Error::Store(err),
            caged_preview::Error::Internal(why) => Error::Internal(why),
        }
    }
}

impl From<caged_node::Error> for Error {
    fn from(err: caged_node::Error) -> Self {
        match err {
            caged_node::Error::Runtime(err) => Error::Runtime(err),
            caged_node::Error::Network(err) => err.into(),
            caged_node::Error::Preview(err) => err.into(),
            caged_node::Error::Store(err) => Error::Store(err),
        }
    }
}

impl Error {
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

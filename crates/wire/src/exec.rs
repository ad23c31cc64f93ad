//! Running commands: `POST /exec`'s request and answer, and the control messages of the
//! WebSocket exec (`GET /exec/ws`), whose data frames are binary and need no type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A command to run: `POST /exec`'s body, and the WebSocket's first message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecRequest {
    /// The agent this command is (`claude-code`, `aider`, ...); WebSocket only. Without it the
    /// session's agent type is inferred from the program's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// An argv array, not a shell string.
    #[schema(min_items = 1)]
    pub cmd: Vec<String>,
    /// The terminal's size, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// An absolute path in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Whether the command reads stdin (WebSocket only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// Seconds; the command and everything it started are killed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    pub timeout: Option<f64>,
    /// Run it on a terminal (WebSocket only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Who it runs as: `root`, or an account of the sandbox's template (422 `unknown_user`
    /// otherwise); the sandbox's own `user` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// `POST /exec`'s answer: the command's output (each stream kept up to a limit) and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub duration_ms: u64,
    /// `null` when it was killed (by the timeout, or a signal).
    #[schema(required = true)]
    pub exit_code: Option<i64>,
    pub stderr: String,
    pub stdout: String,
    pub timed_out: bool,
    /// Whether output beyond the limit was dropped.
    pub truncated: bool,
}

/// A text frame the client sends on the exec WebSocket, after the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecClientMessage {
    /// The terminal's new size.
    Resize { cols: u16, rows: u16 },
    /// No more stdin.
    Eof,
}

/// A text frame the server sends on the exec WebSocket; it closes the socket after either.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecServerMessage {
    /// The command ended.
    Exit {
        /// `null` when it was killed (by the timeout, or a signal).
        #[schema(required = true)]
        exit_code: Option<i64>,
        timed_out: bool,
    },
    /// The request was refused; the same codes as an HTTP error's.
    Error { code: String, message: String },
}

//! Sessions: one agent's interaction with a sandbox. A session opens with its channel (a
//! streaming exec: `caged shell`, `caged agent`, any WebSocket exec) and ends when the channel
//! does, however it does: the command exits, the client closes, the connection drops. A server
//! that dies with sessions open ends them at start-up, at their last recorded event.

use std::sync::Arc;

use caged_domain::time::now_ms;
use caged_store::{NewSession, SandboxRecord};

use crate::error::{Error, Result};
use crate::state::AppState;

/// An open session; ending it is explicit ([`Session::end`]), and dropping it unended (an error
/// path, a dropped connection) ends it as lost.
pub(crate) struct Session {
    pub id: String,
    state: Arc<AppState>,
    ended: bool,
}

/// The agent a command is, from the name of the program it runs.
pub(crate) fn infer_agent(cmd: &[String], tty: bool) -> &'static str {
    let program = cmd
        .first()
        .map(|program| program.rsplit('/').next().unwrap_or(program))
        .unwrap_or("");
    match program {
        "claude" | "claude-code" => "claude-code",
        "cursor" | "cursor-agent" => "cursor",
        "aider" => "aider",
        "codex" => "codex",
        "gemini" => "gemini-cli",
        "sh" | "bash" | "zsh" | "ash" | "dash" if tty => "shell",
        _ => "unknown",
    }
}

/// Declared agent types: short lowercase names (`claude-code`, `my-agent`).
pub(crate) fn check_agent_type(agent: &str) -> Result<()> {
    let ok = !agent.is_empty()
        && agent.len() <= 40
        && agent
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_exec",
            format!("agent: {agent:?} must be 1-40 of a-z, 0-9 and '-' (e.g. claude-code)"),
        ))
    }
}

/// A new session's id.
pub(crate) fn new_id() -> String {
    format!("ses_{}", caged_domain::random_hex(8))
}

pub(crate) async fn open(
    state: &Arc<AppState>,
    id: String,
    record: &SandboxRecord,
    agent_type: &str,
    channel: &'static str,
    command: &[String],
    // When the channel was asked for (before its command started: what the command does from
    // its first instant is the session's).
    started_at_ms: i64,
) -> Result<Session> {
    let (session_id, sandbox, account) = (id.clone(), record.id, record.account_id.clone());
    let (agent_type, command) = (agent_type.to_string(), command.to_vec());
    let event = state
        .db
        .run(move |store| {
            store.open_session(NewSession {
                id: &session_id,
                sandbox_id: sandbox,
                account_id: &account,
                agent_type: &agent_type,
                channel,
                command: &command,
                at_ms: started_at_ms,
            })
        })
        .await?;
    state.db.publish(event);
    Ok(Session {
        id,
        state: state.clone(),
        ended: false,
    })
}

impl Session {
    pub(crate) async fn end(mut self, reason: &str) {
        self.ended = true;
        finish(&self.state, self.id.clone(), reason.to_string()).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (state, id) = (self.state.clone(), self.id.clone());
        // Inside the runtime a task finishes it; at shutdown, the next start-up does.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { finish(&state, id, "the stream failed".into()).await });
        }
    }
}

async fn finish(state: &AppState, id: String, reason: String) {
    let at = now_ms();
    let session = id.clone();
    match state
        .db
        .run(move |store| store.end_session(&session, at, &reason))
        .await
    {
        Ok(Some(event)) => state.db.publish(event),
        Ok(None) => {}
        Err(err) => tracing::error!(session = %id, "could not end the session: {err}"),
    }
}

/// Ends the sessions a previous run of the server left open, at their last event.
pub(crate) async fn end_orphans(state: &AppState) {
    let ended = state
        .db
        .run(move |store| {
            let mut events = Vec::new();
            for (id, last_at) in store.open_sessions()? {
                events.extend(store.end_session(&id, last_at, "the server stopped")?);
            }
            Ok::<_, caged_store::StoreError>(events)
        })
        .await;
    match ended {
        Ok(events) => events.into_iter().for_each(|event| state.db.publish(event)),
        Err(err) => tracing::error!("could not end sessions left open: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_named_by_their_program() {
        let cmd = |argv: &[&str]| argv.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
        assert_eq!(
            infer_agent(&cmd(&["/usr/local/bin/claude", "-p"]), true),
            "claude-code"
        );
        assert_eq!(infer_agent(&cmd(&["aider", "--yes"]), false), "aider");
        assert_eq!(infer_agent(&cmd(&["/bin/sh", "-c", "x"]), true), "shell");
        assert_eq!(infer_agent(&cmd(&["/bin/sh", "-c", "x"]), false), "unknown");
        assert!(check_agent_type("claude-code").is_ok());
        for bad in ["", "Claude", "a b", &"x".repeat(41)] {
            assert!(check_agent_type(bad).is_err(), "{bad:?}");
        }
    }
}

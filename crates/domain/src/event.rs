//! The event log's vocabulary: the kinds of event a sandbox's log holds ([`EventKind`]), and the
//! payloads the platform itself reads back (what the network layer saw, [`Network`]; what the
//! host saw a sandbox's processes do, [`Seen`]), each serialized here and nowhere else. Trust
//! observations are derived from these (`caged_trust`), not built a second time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an event is about; its name is the event's `kind` in the API and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A transition of the sandbox's state.
    State,
    /// A command run (through the API or a session).
    Exec,
    /// A file read or written through the API.
    File,
    /// The `init_script` ran.
    Init,
    Snapshot,
    /// A session opened or ended.
    Session,
    /// What the network layer saw or refused ([`NetworkAction`]).
    Network,
    /// A process the host saw start ([`ProcessSeen`]).
    Process,
    /// File changes the host saw, aggregated per batch and session.
    Fs,
    /// A sensitive file opened ([`OpenSeen`]).
    FileOpen,
    /// A penalty charged to a session.
    Trust,
    /// A call through the LLM gateway.
    Llm,
    Budget,
    /// A port opened or closed.
    Port,
    /// A preview's password set or removed.
    Preview,
    /// Preview traffic.
    Http,
    /// The sandbox's container was started again after the engine lost its processes.
    Restart,
}

impl EventKind {
    pub const ALL: [EventKind; 17] = [
        EventKind::State,
        EventKind::Exec,
        EventKind::File,
        EventKind::Init,
        EventKind::Snapshot,
        EventKind::Session,
        EventKind::Network,
        EventKind::Process,
        EventKind::Fs,
        EventKind::FileOpen,
        EventKind::Trust,
        EventKind::Llm,
        EventKind::Budget,
        EventKind::Port,
        EventKind::Preview,
        EventKind::Http,
        EventKind::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Exec => "exec",
            EventKind::File => "file",
            EventKind::Init => "init",
            EventKind::Snapshot => "snapshot",
            EventKind::Session => "session",
            EventKind::Network => "network",
            EventKind::Process => "process",
            EventKind::Fs => "fs",
            EventKind::FileOpen => "file_open",
            EventKind::Trust => "trust",
            EventKind::Llm => "llm",
            EventKind::Budget => "budget",
            EventKind::Port => "port",
            EventKind::Preview => "preview",
            EventKind::Http => "http",
            EventKind::Restart => "restart",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// Who in the network layer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum By {
    #[serde(rename = "egress proxy")]
    EgressProxy,
    #[serde(rename = "firewall")]
    Firewall,
    #[serde(rename = "conntrack")]
    Conntrack,
}

/// What the network layer saw of a sandbox: the payload of a `network` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum NetworkAction {
    /// The DNS stub answered a sandbox over its rate no more.
    DnsRateLimited { limit_per_second: f64 },
    /// The DNS stub refused a query.
    DnsRefused {
        host: String,
        #[serde(rename = "type")]
        query_type: String,
        reason: String,
    },
    /// Addresses in denied ranges were taken out of an answer (DNS rebinding).
    DnsStripped {
        host: String,
        addresses: Vec<String>,
        reason: String,
    },
    /// A connection or packet refused.
    Blocked {
        /// The name it was for, when one is known.
        host: Option<String>,
        address: String,
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
        reason: String,
        by: By,
    },
    /// A connection made: through the egress proxy (with what it carried), or a flow the
    /// firewall let through in `full` mode.
    Connect {
        host: Option<String>,
        address: String,
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<By>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_out: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_in: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// An allowed host that did not answer.
    Unreachable {
        host: String,
        address: String,
        port: u16,
    },
    /// An open connection closed because its host left the allowlist.
    Closed { host: String, reason: String },
    /// What `full`-mode connections to one destination carried, over a while.
    Traffic {
        host: Option<String>,
        address: String,
        port: Option<u16>,
        protocol: String,
        connections: u64,
        bytes_out: u64,
        bytes_in: u64,
        by: By,
    },
    /// The allowlist was changed.
    AllowlistChanged {
        allowed_hosts: Vec<String>,
        before: Vec<String>,
    },
}

/// A `network` event as logged: what was seen, and how many like it were folded into it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkEvent {
    #[serde(flatten)]
    pub what: NetworkAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<u64>,
}

impl From<NetworkAction> for NetworkEvent {
    fn from(what: NetworkAction) -> Self {
        NetworkEvent {
            what,
            repeats: None,
        }
    }
}

/// How a file changed, as the host saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    Created,
    Written,
    Deleted,
    MovedFrom,
    MovedTo,
}

/// A process the host saw in a sandbox: the payload of a `process` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ProcessSeen {
    /// A program started; `argv` is `None` when it ended before it could be read.
    Exec {
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ppid: Option<i32>,
        argv: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exe: Option<String>,
        /// What the program is (`curl`, `bash`, ...), by name or by content.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A shell whose standard input is a pipe a downloader writes into (`curl … | sh`).
    PipeToShell {
        pid: i32,
        downloader: Vec<String>,
        shell: Vec<String>,
    },
}

/// One file change the host saw (folded into an `fs` event's counts and sample).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSeen {
    pub change: FileChange,
    /// The path inside the sandbox.
    pub path: String,
    pub is_dir: bool,
    pub pid: i32,
    /// Written by a package manager (or what it ran).
    #[serde(skip)]
    pub by_package_manager: bool,
}

/// A sensitive file opened: the payload of a `file_open` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenSeen {
    pub path: String,
    pub pid: i32,
    pub argv: Vec<String>,
    /// Whether the opening command's arguments name the file.
    #[serde(rename = "named_by_command")]
    pub named: bool,
}

/// Something the host saw a sandbox's processes do.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    Process(ProcessSeen),
    File(FileSeen),
    Open(OpenSeen),
}

impl Seen {
    /// The kind of event it is logged as.
    pub fn kind(&self) -> EventKind {
        match self {
            Seen::Process(_) => EventKind::Process,
            Seen::File(_) => EventKind::Fs,
            Seen::Open(_) => EventKind::FileOpen,
        }
    }

    /// Its payload in the log.
    pub fn payload(&self) -> serde_json::Value {
        let value = match self {
            Seen::Process(seen) => serde_json::to_value(seen),
            Seen::File(seen) => serde_json::to_value(seen),
            Seen::Open(seen) => serde_json::to_value(seen),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_have_one_name_each() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                json!(kind.as_str()),
                "{kind}"
            );
        }
        assert!("nope".parse::<EventKind>().is_err());
    }

    #[test]
    fn network_events_keep_their_logged_shape() {
        let blocked = NetworkEvent {
            what: NetworkAction::Blocked {
                host: None,
                address: "203.0.113.9".into(),
                port: Some(443),
                protocol: None,
                reason: "not in allowed_hosts".into(),
                by: By::EgressProxy,
            },
            repeats: Some(3),
        };
        let logged = serde_json::to_value(&blocked).unwrap();
        assert_eq!(
            logged,
            json!({"action": "blocked", "host": null, "address": "203.0.113.9", "port": 443,
                   "reason": "not in allowed_hosts", "by": "egress proxy", "repeats": 3})
        );
        let back: NetworkEvent = serde_json::from_value(logged).unwrap();
        assert_eq!(back, blocked);
        let refused = serde_json::to_value(NetworkEvent::from(NetworkAction::DnsRefused {
            host: "evil.test".into(),
            query_type: "A".into(),
            reason: "not in allowed_hosts".into(),
        }))
        .unwrap();
        assert_eq!(refused["type"], "A");
        assert_eq!(refused["action"], "dns_refused");
        assert!(refused.get("repeats").is_none());
    }

    #[test]
    fn what_the_host_saw_is_logged_as_its_kind() {
        let open = Seen::Open(OpenSeen {
            path: "/etc/shadow".into(),
            pid: 7,
            argv: vec!["cat".into(), "/etc/shadow".into()],
            named: true,
        });
        assert_eq!(open.kind(), EventKind::FileOpen);
        assert_eq!(open.payload()["named_by_command"], true);
        let unread = Seen::Process(ProcessSeen::Exec {
            pid: 9,
            ppid: None,
            argv: None,
            exe: None,
            program: None,
            cwd: None,
            note: Some("ended before it could be read".into()),
        });
        assert_eq!(
            unread.payload(),
            json!({"op": "exec", "pid": 9, "argv": null, "note": "ended before it could be read"})
        );
    }
}

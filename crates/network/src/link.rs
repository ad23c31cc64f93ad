//! A sandbox's own link: a veth pair whose host end Caged owns (named after the installation
//! and the sandbox) and whose other end is `eth0` inside the sandbox's network namespace.
//! Everything that decides what the sandbox may reach acts on the host end, where nothing the
//! sandbox does can change it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use caged_netns::NetNs;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The name of the sandbox's end, inside its namespace.
pub const SANDBOX_IFNAME: &str = "eth0";

/// One sandbox's link: the host end's name and the two addresses of its /30.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub host_ifname: String,
    pub host_addr: Ipv4Addr,
    pub sandbox_addr: Ipv4Addr,
    pub prefix_len: u8,
    /// Whether packets from the sandbox may be routed on (only `full` mode).
    pub forwarding: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> LinkError {
    move |source| LinkError::Io { what, source }
}

/// A netlink connection in the calling thread's namespace (or in `ns`), served on this runtime.
fn connect(ns: Option<&NetNs>) -> Result<Handle, LinkError> {
    let (connection, handle, _) = match ns {
        None => rtnetlink::new_connection().map_err(io_err("open a netlink socket"))?,
        Some(ns) => ns
            .enter(rtnetlink::new_connection)
            .map_err(io_err("enter the sandbox's namespace"))?
            .map_err(io_err("open a netlink socket in the sandbox's namespace"))?,
    };
    tokio::spawn(connection);
    Ok(handle)
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ENODEV => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Gives the sandbox in `ns` its link, replacing any earlier one of the same name (a restarted
/// container's, or one half made when a server died). The sandbox's end gets its address and a
/// default route via the host end; IPv6 is off on both ends.
pub async fn attach_veth(ns: &NetNs, spec: &LinkSpec) -> Result<(), LinkError> {
    let host = connect(None)?;
    let inner = connect(Some(ns))?;
    if let Some(index) = index_of(&host, &spec.host_ifname).await? {
        host.link().del(index).execute().await?;
    }
    if let Some(index) = index_of(&inner, SANDBOX_IFNAME).await? {
        inner.link().del(index).execute().await?;
    }

    // The peer is created directly inside the sandbox's namespace: it never exists on the host
    // under a name that could clash.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(SANDBOX_IFNAME)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&spec.host_ifname, SANDBOX_IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await?;

    let result = configure(&host, &inner, ns, spec).await;
    if result.is_err() {
        // Leave nothing half made; the caller retries or gives up on the sandbox.
        let _ = detach(&spec.host_ifname).await;
    }
    result
}

async fn configure(
    host: &Handle,
    inner: &Handle,
    ns: &NetNs,
    spec: &LinkSpec,
) -> Result<(), LinkError> {
    let host_index = index_of(host, &spec.host_ifname)
        .await?
        .ok_or_else(|| LinkError::Io {
            what: "find the new host end",
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    set_host_sysctls(spec)?;
    host.address()
        .add(host_index, IpAddr::V4(spec.host_addr), spec.prefix_len)
        .execute()
        .await?;
    host.link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await?;

    let inner_index = index_of(inner, SANDBOX_IFNAME)
        .await?
        .ok_or_else(|| LinkError::Io {
            what: "find the sandbox's end",
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    // /proc/sys/net belongs to the namespace of whoever opens it.
    let disable_v6 = ns
        .enter(|| {
            std::fs::OpenOptions::new().write(true).open(format!(
                "/proc/sys/net/ipv6/conf/{SANDBOX_IFNAME}/disable_ipv6"
            ))
        })
        .map_err(io_err("enter the sandbox's namespace"))?;
    if let Ok(mut file) = disable_v6 {
        use std::io::Write;
        // Absent when the kernel has no IPv6; nothing to turn off then.
        let _ = file.write_all(b"1");
    }
    inner
        .address()
        .add(inner_index, IpAddr::V4(spec.sandbox_addr), spec.prefix_len)
        .execute()
        .await?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(inner_index).up().build())
        .execute()
        .await?;
    inner
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(spec.host_addr)
                .output_interface(inner_index)
                .build(),
        )
        .execute()
        .await?;
    Ok(())
}

/// The per-interface settings of a host end: forwarding only for `full` mode, strict reverse
/// path filtering (a sandbox cannot send with another source address), no IPv6.
pub fn set_host_sysctls(spec: &LinkSpec) -> Result<(), LinkError> {
    let name = &spec.host_ifname;
    write_sysctl(
        &format!("net/ipv6/conf/{name}/disable_ipv6"),
        "1",
        /* optional */ true,
    )?;
    write_sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "1", false)?;
    write_sysctl(
        &format!("net/ipv4/conf/{name}/forwarding"),
        if spec.forwarding { "1" } else { "0" },
        false,
    )?;
    Ok(())
}

/// Whether the host end's settings are still what [`set_host_sysctls`] made them (a global
/// `ip_forward` toggle rewrites every interface's `forwarding`).
pub fn host_sysctls_hold(spec: &LinkSpec) -> Result<bool, LinkError> {
    let name = &spec.host_ifname;
    let forwarding = read_sysctl(&format!("net/ipv4/conf/{name}/forwarding"))?;
    let rp_filter = read_sysctl(&format!("net/ipv4/conf/{name}/rp_filter"))?;
    Ok(forwarding == if spec.forwarding { "1" } else { "0" } && rp_filter == "1")
}

fn write_sysctl(key: &str, value: &str, optional: bool) -> Result<(), LinkError> {
    match std::fs::write(format!("/proc/sys/{key}"), value) {
        Err(err) if optional && err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err("write a sysctl of the host end")),
    }
}

fn read_sysctl(key: &str) -> Result<String, LinkError> {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .map(|value| value.trim().to_string())
        .map_err(io_err("read a sysctl of the host end"))
}

/// Removes a host end (its peer goes with it). Succeeds when it is already gone.
pub async fn detach(host_ifname: &str) -> Result<(), LinkError> {
    let host = connect(None)?;
    if let Some(index) = index_of(&host, host_ifname).await? {
        match host.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ENODEV => {}
            other => other?,
        }
    }
    Ok(())
}

//! The kernel's process events connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): one message per
//! fork, exec and exit on the whole host, sent by the kernel as it happens. Nothing a process does
//! can skip them. Only threads-groups matter here; thread forks and exits are dropped.
//!
//! The socket's buffer is large, but a reader that falls far behind loses messages; the kernel
//! then fails a read with `ENOBUFS`, which is reported as [`ProcEvent::Lost`] so the loss is
//! counted rather than silent.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Receive buffer asked for (root may exceed `rmem_max`): bursts of thousands of short processes
/// fit without loss.
const RECEIVE_BUFFER: libc::c_int = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcEvent {
    /// A new process (`child` is its pid, which is also its thread-group id).
    Fork { parent: i32, child: i32 },
    /// `pid` replaced its program.
    Exec { pid: i32 },
    /// The process `pid` ended.
    Exit { pid: i32, code: u32 },
    /// The kernel dropped messages because the reader fell behind.
    Lost,
}

pub struct ProcConnector {
    fd: OwnedFd,
    buf: Vec<u8>,
    events: u32,
}

/// Process starts (`exec`): the ones to read at once.
pub const EVENTS_EXEC: u32 = PROC_EVENT_EXEC;
/// Forks and exits: lineage and bookkeeping, read when convenient.
pub const EVENTS_FORK_EXIT: u32 = PROC_EVENT_FORK | PROC_EVENT_EXIT;

impl ProcConnector {
    /// Subscribes to the host's process events of the kinds in `events` (a mask of
    /// [`EVENTS_EXEC`], [`EVENTS_FORK_EXIT`]; kernels before 6.6 send every kind, and the others
    /// are dropped here). Needs `CAP_NET_ADMIN` in the initial namespaces.
    pub fn open(events: u32) -> io::Result<ProcConnector> {
        let fd =
            caged_network::netlink::bound(NETLINK_CONNECTOR, CN_IDX_PROC, Some(RECEIVE_BUFFER))?;
        // struct proc_input { mcast_op, event_type }: the kernel sends only those kinds.
        let mut request = Vec::with_capacity(NLMSG_HDRLEN + CN_MSG_LEN + 8);
        let total = (NLMSG_HDRLEN + CN_MSG_LEN + 8) as u32;
        request.extend_from_slice(&total.to_ne_bytes());
        request.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        request.extend_from_slice(&0u16.to_ne_bytes()); // flags
        request.extend_from_slice(&0u32.to_ne_bytes()); // seq
        request.extend_from_slice(&std::process::id().to_ne_bytes());
        request.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        request.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes()); // seq
        request.extend_from_slice(&0u32.to_ne_bytes()); // ack
        request.extend_from_slice(&8u16.to_ne_bytes()); // len
        request.extend_from_slice(&0u16.to_ne_bytes()); // flags
        request.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        request.extend_from_slice(&events.to_ne_bytes());
        // SAFETY: sending a buffer we own, of its own length.
        let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ProcConnector {
            fd,
            buf: vec![0u8; 64 << 10],
            events,
        })
    }

    /// Reads what is queued without blocking, appending events to `out`; returns false when the
    /// queue was empty.
    pub fn read(&mut self, out: &mut Vec<ProcEvent>) -> io::Result<bool> {
        let mut any = false;
        loop {
            // SAFETY: receiving into a buffer we own, of its own length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(any),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        out.push(ProcEvent::Lost);
                        any = true;
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            any = true;
            let before = out.len();
            parse_datagram(&self.buf[..n as usize], out);
            // An older kernel ignores the filter: keep only what was asked for.
            let wanted = self.events;
            let read = out.split_off(before);
            out.extend(read.into_iter().filter(|event| {
                let kind = match event {
                    ProcEvent::Fork { .. } => PROC_EVENT_FORK,
                    ProcEvent::Exec { .. } => PROC_EVENT_EXEC,
                    ProcEvent::Exit { .. } => PROC_EVENT_EXIT,
                    ProcEvent::Lost => u32::MAX,
                };
                kind & wanted != 0
            }));
        }
    }
}

impl AsFd for ProcConnector {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into netlink messages and decodes the process events in them.
pub(crate) fn parse_datagram(mut buf: &[u8], out: &mut Vec<ProcEvent>) {
    while buf.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(buf, 0).map(|len| len as usize) else {
            return;
        };
        if len < NLMSG_HDRLEN || len > buf.len() {
            return;
        }
        if let Some(event) = parse_message(&buf[NLMSG_HDRLEN..len]) {
            out.push(event);
        }
        buf = &buf[(len + 3) & !3..];
    }
}

fn parse_message(msg: &[u8]) -> Option<ProcEvent> {
    if u32_at(msg, 0)? != CN_IDX_PROC || u32_at(msg, 4)? != CN_VAL_PROC {
        return None;
    }
    // proc_event: what, cpu, timestamp_ns (u64), then the event's own fields.
    let event = msg.get(CN_MSG_LEN..)?;
    let what = u32_at(event, 0)?;
    let data = 16;
    let field = |index: usize| u32_at(event, data + 4 * index);
    match what {
        PROC_EVENT_FORK => {
            let (parent_tgid, child_pid, child_tgid) = (field(1)?, field(2)?, field(3)?);
            // A new thread of an existing process is not a new process.
            (child_pid == child_tgid).then_some(ProcEvent::Fork {
                parent: parent_tgid as i32,
                child: child_tgid as i32,
            })
        }
        PROC_EVENT_EXEC => Some(ProcEvent::Exec {
            pid: field(1)? as i32,
        }),
        PROC_EVENT_EXIT => {
            let (pid, tgid, code) = (field(0)?, field(1)?, field(2)?);
            (pid == tgid).then_some(ProcEvent::Exit {
                pid: tgid as i32,
                code,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, fields: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        body.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        body.extend_from_slice(&[0u8; 12]);
        body.extend_from_slice(&what.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes());
        for field in fields {
            body.extend_from_slice(&field.to_ne_bytes());
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&[0u8; 12]);
        msg.extend_from_slice(&body);
        while msg.len() % 4 != 0 {
            msg.push(0);
        }
        msg
    }

    #[test]
    fn decodes_processes_and_skips_threads() {
        let mut datagram = message(PROC_EVENT_FORK, &[10, 10, 11, 11]);
        datagram.extend(message(PROC_EVENT_FORK, &[10, 10, 12, 10])); // a thread
        datagram.extend(message(PROC_EVENT_EXEC, &[11, 11]));
        datagram.extend(message(PROC_EVENT_EXIT, &[12, 10, 0, 17, 1, 1])); // a thread
        datagram.extend(message(PROC_EVENT_EXIT, &[11, 11, 256, 17, 10, 10]));
        datagram.extend(message(0x200, &[11, 11])); // comm: ignored
        let mut out = Vec::new();
        parse_datagram(&datagram, &mut out);
        assert_eq!(
            out,
            vec![
                ProcEvent::Fork {
                    parent: 10,
                    child: 11
                },
                ProcEvent::Exec { pid: 11 },
                ProcEvent::Exit { pid: 11, code: 256 },
            ]
        );
        // A truncated message is dropped, not misread.
        let mut out = Vec::new();
        let whole = message(PROC_EVENT_EXEC, &[11, 11]);
        parse_datagram(&whole[..whole.len() - 8], &mut out);
        assert!(out.is_empty());
    }
}

#[cfg(test)]
mod live {
    use super::*;

    /// The kernel reports a real child's fork, exec and exit (needs root, as the server does).
    #[test]
    fn sees_a_child_start_and_end() {
        let Ok(mut connector) = ProcConnector::open(EVENTS_EXEC | EVENTS_FORK_EXIT) else {
            eprintln!("skipped: not allowed to subscribe to process events here");
            return;
        };
        let child = std::process::Command::new("true").status().unwrap();
        assert!(child.success());
        let mut events = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let _ = crate::kernel::poll_readable(&[connector.as_fd()], 100);
            connector.read(&mut events).unwrap();
            let me = std::process::id() as i32;
            let forked = events.iter().find_map(|e| match e {
                ProcEvent::Fork { parent, child } if *parent == me => Some(*child),
                _ => None,
            });
            if let Some(child) = forked
                && events.contains(&ProcEvent::Exec { pid: child })
                && events
                    .iter()
                    .any(|e| matches!(e, ProcEvent::Exit { pid, .. } if *pid == child))
            {
                return;
            }
        }
        panic!(
            "no fork/exec/exit of our child among {} events",
            events.len()
        );
    }
}

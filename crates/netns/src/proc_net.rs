//! Listening TCP sockets from a namespace's `/proc/net/tcp` and `/proc/net/tcp6`: the tables
//! `ss` and `netstat` read, parsed here without trusting their contents to be well formed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::NetNs;

/// `TCP_LISTEN` in the tables' `st` column.
const LISTEN: &str = "0A";

/// The two tables of one namespace, opened once and re-read on every scan.
#[derive(Debug)]
pub struct TcpTables {
    tcp: File,
    tcp6: File,
    buffer: Vec<u8>,
}

impl TcpTables {
    pub fn open(ns: &NetNs) -> io::Result<TcpTables> {
        Ok(TcpTables {
            tcp: ns.open_file(Path::new("/proc/thread-self/net/tcp"))?,
            tcp6: ns.open_file(Path::new("/proc/thread-self/net/tcp6"))?,
            buffer: Vec::with_capacity(8192),
        })
    }

    /// Ports with a listening socket, each with the most reachable address it listens on.
    pub fn listening(&mut self) -> io::Result<BTreeMap<u16, IpAddr>> {
        let mut ports = BTreeMap::new();
        for file in [&mut self.tcp, &mut self.tcp6] {
            self.buffer.clear();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut self.buffer)?;
            for (addr, port) in parse_listening(&self.buffer) {
                ports
                    .entry(port)
                    .and_modify(|known: &mut IpAddr| {
                        if rank(addr) < rank(*known) {
                            *known = addr;
                        }
                    })
                    .or_insert(addr);
            }
        }
        Ok(ports)
    }
}

/// Which address to dial when a port listens on several: loopback first (what the sandbox
/// itself would use), then any-address, then a specific one.
fn rank(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(v4) if v4.is_loopback() => 0,
        IpAddr::V4(v4) if v4.is_unspecified() => 1,
        IpAddr::V6(v6) if v6.is_loopback() => 2,
        IpAddr::V6(v6) if v6.is_unspecified() => 3,
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 5,
    }
}

/// `(address, port)` of every LISTEN row; rows that do not parse are skipped.
pub fn parse_listening(table: &[u8]) -> Vec<(IpAddr, u16)> {
    let text = String::from_utf8_lossy(table);
    text.lines()
        .skip(1) // the header
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _slot = fields.next()?;
            let local = fields.next()?;
            let _remote = fields.next()?;
            let state = fields.next()?;
            if state != LISTEN {
                return None;
            }
            parse_endpoint(local)
        })
        .collect()
}

/// `0100007F:1F90` or a 32-digit IPv6 form: the kernel prints each 32-bit word of the address
/// in host byte order, then the port in hex.
fn parse_endpoint(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = addr
        .as_bytes()
        .chunks(8)
        .map(|word| {
            let word = std::str::from_utf8(word).ok()?;
            (word.len() == 8)
                .then(|| u32::from_str_radix(word, 16).ok())
                .flatten()
        })
        .collect::<Option<Vec<u32>>>()?;
    let addr = match words.as_slice() {
        [v4] => IpAddr::V4(Ipv4Addr::from(v4.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    (port != 0).then_some((addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 805019 1 0 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 805020 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 805021 1 0 100 0 0 10 0
   3: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1389 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
";

    #[test]
    fn reads_listening_rows_only() {
        let rows = parse_listening(TCP.as_bytes());
        assert_eq!(
            rows,
            vec![
                (IpAddr::from([127, 0, 0, 1]), 8080),
                (IpAddr::from([0, 0, 0, 0]), 80)
            ]
        );
    }

    #[test]
    fn reads_ipv6_words_in_host_order() {
        let rows = parse_listening(TCP6.as_bytes());
        assert_eq!(rows[0], (IpAddr::V6(Ipv6Addr::LOCALHOST), 3000));
        assert_eq!(
            rows[1],
            (
                IpAddr::V6("::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap()),
                5001
            )
        );
    }

    #[test]
    fn odd_rows_are_skipped() {
        for table in [
            "",
            "header only",
            "h\n 0: 0100007F 0 0A",
            "h\n 0: 0100007:1F90 0 0A",
        ] {
            assert!(parse_listening(table.as_bytes()).is_empty(), "{table:?}");
        }
    }

    #[test]
    fn sees_a_listener_in_its_own_namespace_only() {
        let ns = crate::tests::scratch();
        let mut tables = TcpTables::open(&ns).unwrap();
        assert!(tables.listening().unwrap().is_empty());
        // A host listener does not show up in the namespace's tables.
        let _host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tables.listening().unwrap().is_empty());
        let inner = ns
            .enter(|| std::net::TcpListener::bind("0.0.0.0:0").unwrap())
            .unwrap();
        let port = inner.local_addr().unwrap().port();
        let seen = tables.listening().unwrap();
        assert_eq!(seen.get(&port), Some(&IpAddr::from([0, 0, 0, 0])));
        drop(inner);
        // The kernel lets go of a closed socket once nothing else holds it (a concurrent
        // /proc read may, for a moment): wait for it to go.
        let gone = (0..200).any(|_| {
            let empty = tables.listening().unwrap().is_empty();
            if !empty {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            empty
        });
        assert!(gone, "the closed listener is still listed");
    }
}

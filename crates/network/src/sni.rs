//! The server name a TLS client asks for, read from its ClientHello without terminating TLS.

/// What the first bytes of a connection say about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    Incomplete,
    /// Not a TLS handshake.
    NotTls,
    /// A ClientHello, with the name it carries (none without the extension).
    ClientHello { server_name: Option<String> },
    /// A TLS record that is not a well-formed ClientHello.
    Malformed,
}

/// Largest ClientHello read before giving up (post-quantum key shares make them ~1.5-2 KiB).
pub const MAX_HELLO: usize = 16 * 1024;

/// Reads the ClientHello at the start of `buf`, which may span several TLS records.
pub fn parse(buf: &[u8]) -> Hello {
    if buf.is_empty() {
        return Hello::Incomplete;
    }
    if buf[0] != 0x16 {
        return Hello::NotTls;
    }
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        if rest[0] != 0x16 || rest[1] != 3 {
            return if handshake.is_empty() {
                Hello::NotTls
            } else {
                Hello::Malformed
            };
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 1 << 14 {
            return Hello::Malformed;
        }
        if rest.len() < 5 + len {
            return Hello::Incomplete;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Hello::Malformed;
            }
            let body_len =
                u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if body_len + 4 > MAX_HELLO {
                return Hello::Malformed;
            }
            if handshake.len() >= body_len + 4 {
                return match client_hello_name(&handshake[4..4 + body_len]) {
                    Some(server_name) => Hello::ClientHello { server_name },
                    None => Hello::Malformed,
                };
            }
        }
    }
}

/// A cursor that fails instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// `Some(None)`: a well-formed hello without a name; `None`: malformed.
fn client_hello_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    let mut name = None;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        if name.is_some() {
            return None; // two server_name extensions
        }
        let mut list = Reader(data);
        let list_len = list.u16()?;
        let mut entries = Reader(list.take(list_len)?);
        while !entries.0.is_empty() {
            let name_type = entries.u8()?;
            let len = entries.u16()?;
            let host = entries.take(len)?;
            if name_type == 0 {
                if name.is_some() {
                    return None; // two host names in one hello
                }
                name = Some(String::from_utf8(host.to_vec()).ok()?);
            }
        }
    }
    Some(name)
}

/// A fatal `access_denied` alert, sent instead of a ServerHello to a name that is not allowed.
pub const ACCESS_DENIED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello for `name`, split into records of `record` bytes.
    pub(crate) fn hello(name: Option<&str>, record: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = name {
            let mut sni = Vec::new();
            sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
            sni.push(0);
            sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
            sni.extend_from_slice(name.as_bytes());
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(sni.len() as u16).to_be_bytes());
            exts.extend_from_slice(&sni);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in handshake.chunks(record) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn reads_the_name_across_records_and_partial_input() {
        let whole = hello(Some("allowed.test"), 4096);
        assert_eq!(
            parse(&whole),
            Hello::ClientHello {
                server_name: Some("allowed.test".into())
            }
        );
        let split = hello(Some("allowed.test"), 10);
        assert_eq!(parse(&split), parse(&whole));
        for cut in 0..split.len() {
            assert_eq!(parse(&split[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            parse(&hello(None, 4096)),
            Hello::ClientHello { server_name: None }
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        let mut bad = whole.clone();
        bad[5] = 2; // a ServerHello
        assert_eq!(parse(&bad), Hello::Malformed);
        // Lengths that point past the data never panic.
        for i in 5..whole.len() {
            let mut fuzzed = whole.clone();
            fuzzed[i] = 0xff;
            let _ = parse(&fuzzed);
        }
    }
}

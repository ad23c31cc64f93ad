//! Identifiers users type: a sandbox id is 8 lowercase hex characters (interface.md).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId([u8; 8]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid sandbox id {given:?}: expected 8 lowercase hex characters, e.g. a1b2c3d4")]
pub struct IdError {
    pub given: String,
}

impl SandboxId {
    pub fn random() -> Self {
        let hex = random_hex(4);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(hex.as_bytes());
        SandboxId(bytes)
    }

    pub fn as_str(&self) -> &str {
        // The bytes are checked ASCII hex on construction.
        std::str::from_utf8(&self.0).expect("sandbox id is ascii hex")
    }
}

/// `n` random bytes from the OS, as lowercase hex (2n characters).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The OS random source failing is not something a sandbox platform can continue past.
    getrandom::fill(&mut bytes).expect("OS random source unavailable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromStr for SandboxId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(IdError {
                given: s.to_string(),
            });
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(s.as_bytes());
        Ok(SandboxId(bytes))
    }
}

impl TryFrom<String> for SandboxId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.as_str().to_string()
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SandboxId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_eight_lowercase_hex() {
        assert!("a1b2c3d4".parse::<SandboxId>().is_ok());
        for bad in [
            "",
            "a1b2c3d",
            "a1b2c3d45",
            "A1B2C3D4",
            "g1b2c3d4",
            "../../etc",
        ] {
            assert!(bad.parse::<SandboxId>().is_err(), "{bad}");
        }
        let id = SandboxId::random();
        assert_eq!(id.as_str().parse::<SandboxId>().unwrap(), id);
    }
}

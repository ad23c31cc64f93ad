//! The operator's CA certificates in every sandbox (`caged server --sandbox-ca FILE`). Networks
//! that inspect TLS put their own CA in front of the internet; without it a sandbox's
//! `npm install`, `pip install` and `git clone` fail. The bundle is written into each sandbox's
//! filesystem when its container is made (no template is rebuilt), and the usual variables point
//! at it:
//!
//! - `/etc/caged/operator-ca.pem`: the operator's certificates alone (`NODE_EXTRA_CA_CERTS`);
//! - `/etc/caged/ca-certificates.crt`: the template's own bundle plus the operator's (the other
//!   variables), which also replaces `/etc/ssl/certs/ca-certificates.crt` where the template has
//!   one, so tools that read no variable (openssl, apt, wget) trust it too;
//! - `/usr/local/share/ca-certificates/caged-operator.crt` where that folder exists, so an
//!   `update-ca-certificates` inside the sandbox keeps it.
//!
//! The operator's part of a bundle sits between two marker lines and is replaced, not appended
//! again, when a restored sandbox gets it a second time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use caged_runtime::{Runtime, RuntimeError, SandboxSpec};
use caged_store::SandboxRecord;
use futures_util::StreamExt;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::Result;
use crate::capability::Capability;

const OPERATOR_FILE: &str = "/etc/caged/operator-ca.pem";
const BUNDLE_FILE: &str = "/etc/caged/ca-certificates.crt";
const SYSTEM_CERTS: &str = "/etc/ssl/certs";
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const LOCAL_CERTS: &str = "/usr/local/share/ca-certificates";
const BEGIN: &str = "# caged: operator CA certificates (begin)";
const END: &str = "# caged: operator CA certificates (end)";
/// A template's own bundle is a few hundred kilobytes; anything much larger is not one.
const MOST_SYSTEM_BUNDLE: u64 = 8 << 20;

/// Which variables point at which file: what TLS clients in a sandbox read.
const VARIABLES: [(&str, &str); 6] = [
    ("SSL_CERT_FILE", BUNDLE_FILE),
    ("CURL_CA_BUNDLE", BUNDLE_FILE),
    ("GIT_SSL_CAINFO", BUNDLE_FILE),
    ("REQUESTS_CA_BUNDLE", BUNDLE_FILE),
    ("PIP_CERT", BUNDLE_FILE),
    // Node keeps its own roots and adds these to them.
    ("NODE_EXTRA_CA_CERTS", OPERATOR_FILE),
];

/// The operator's certificates, checked when the server starts.
#[derive(Clone, Debug)]
pub struct SandboxCa {
    file: PathBuf,
    pem: String,
    certificates: usize,
}

impl SandboxCa {
    /// Reads `file`: PEM `CERTIFICATE` blocks, each a certificate a TLS client can trust.
    /// Anything else in it (a key, a broken block, no certificate at all) is an error that names
    /// what is wrong.
    pub fn load(file: &Path) -> Result<SandboxCa, String> {
        let name = file.display();
        let text = std::fs::read(file).map_err(|err| format!("cannot read {name}: {err}"))?;
        let text = String::from_utf8(text).map_err(|_| format!("{name} is not a PEM text file"))?;
        let mut roots = RootCertStore::empty();
        for (index, item) in CertificateDer::pem_slice_iter(text.as_bytes()).enumerate() {
            let der = item.map_err(|err| {
                format!("{name}: certificate {} is not valid PEM: {err}", index + 1)
            })?;
            roots.add(der).map_err(|err| {
                format!("{name}: certificate {} cannot be trusted: {err}", index + 1)
            })?;
        }
        if roots.is_empty() {
            return Err(format!(
                "{name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        if text.contains("PRIVATE KEY-----") {
            return Err(format!(
                "{name} holds a private key: give the CA's certificates only"
            ));
        }
        Ok(SandboxCa {
            file: file.to_path_buf(),
            certificates: roots.len(),
            pem: certificate_blocks(&text),
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn certificates(&self) -> usize {
        self.certificates
    }

    /// `bundle` with the operator's block in place of any earlier one, at its end.
    fn merged_into(&self, bundle: &str) -> String {
        let mut merged = without_block(bundle);
        if !merged.is_empty() && !merged.ends_with('\n') {
            merged.push('\n');
        }
        merged.push_str(BEGIN);
        merged.push('\n');
        merged.push_str(&self.pem);
        merged.push_str(END);
        merged.push('\n');
        merged
    }
}

/// Only the file's certificate blocks, so the sandbox gets what was checked (no comments, no
/// stray text from the operator's file).
fn certificate_blocks(text: &str) -> String {
    let mut blocks = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        inside |= line == "-----BEGIN CERTIFICATE-----";
        if inside {
            blocks.push_str(line);
            blocks.push('\n');
        }
        inside &= line != "-----END CERTIFICATE-----";
    }
    blocks
}

fn without_block(bundle: &str) -> String {
    let mut kept = String::with_capacity(bundle.len());
    let mut inside = false;
    for line in bundle.split_inclusive('\n') {
        match line.trim_end() {
            BEGIN => inside = true,
            END => inside = false,
            _ if !inside => kept.push_str(line),
            _ => {}
        }
    }
    kept
}

/// The capability: variables in the spec, files in the container once it exists.
pub(crate) struct Ca {
    pub runtime: Arc<dyn Runtime>,
    pub ca: Arc<SandboxCa>,
}

#[async_trait]
impl Capability for Ca {
    async fn prepare(&self, _record: &SandboxRecord, spec: &mut SandboxSpec) -> Result<()> {
        // What the user set explicitly wins.
        for (name, file) in VARIABLES {
            spec.env
                .entry(name.to_string())
                .or_insert_with(|| file.to_string());
        }
        Ok(())
    }

    async fn created(&self, _record: &SandboxRecord, handle: &str) -> Result<()> {
        let system = self.system_bundle(handle).await?;
        let merged = self.ca.merged_into(system.as_deref().unwrap_or(""));
        let caged = tar_of(&[
            ("caged", None),
            ("caged/operator-ca.pem", Some(self.ca.pem.as_bytes())),
            ("caged/ca-certificates.crt", Some(merged.as_bytes())),
        ])?;
        self.runtime.write_tar(handle, "/etc", caged).await?;
        if system.is_some() {
            let tar = tar_of(&[("ca-certificates.crt", Some(merged.as_bytes()))])?;
            self.runtime.write_tar(handle, SYSTEM_CERTS, tar).await?;
        }
        if matches!(self.runtime.stat_path(handle, LOCAL_CERTS).await, Ok(stat) if stat.is_dir) {
            let tar = tar_of(&[("caged-operator.crt", Some(self.ca.pem.as_bytes()))])?;
            self.runtime.write_tar(handle, LOCAL_CERTS, tar).await?;
        }
        Ok(())
    }
}

impl Ca {
    /// The template's bundle, when it has one as a regular file.
    async fn system_bundle(&self, handle: &str) -> Result<Option<String>> {
        // The driver looks the path up before it streams; a link or a folder comes back as
        // such, and is left alone below.
        let mut stream = match self.runtime.read_tar(handle, SYSTEM_BUNDLE).await {
            Ok(stream) => stream,
            Err(RuntimeError::PathNotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let mut tar = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk?);
            if tar.len() as u64 > MOST_SYSTEM_BUNDLE + 4096 {
                return Err(too_big().into());
            }
        }
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = archive.entries().map_err(RuntimeError::Io)?;
        let Some(entry) = entries.next() else {
            return Ok(None);
        };
        let mut entry = entry.map_err(RuntimeError::Io)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Ok(None);
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(MOST_SYSTEM_BUNDLE)
            .read_to_string(&mut text)
            .map_err(RuntimeError::Io)?;
        Ok(Some(text))
    }
}

fn too_big() -> RuntimeError {
    RuntimeError::Io(std::io::Error::other(format!(
        "the template's {SYSTEM_BUNDLE} is over {MOST_SYSTEM_BUNDLE} bytes"
    )))
}

/// A tar of root-owned entries: a directory for `None`, a 0644 file otherwise.
fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Result<Bytes> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        match data {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, name, std::io::empty())
            }
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, name, *data)
            }
        }
        .map_err(RuntimeError::Io)?;
    }
    Ok(Bytes::from(builder.into_inner().map_err(RuntimeError::Io)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> SandboxCa {
        SandboxCa {
            file: PathBuf::from("ca.pem"),
            pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            certificates: 1,
        }
    }

    #[test]
    fn the_operators_block_is_replaced_not_appended_twice() {
        let system = "public one\npublic two\n";
        let once = ca().merged_into(system);
        assert!(once.starts_with(system));
        assert_eq!(ca().merged_into(&once), once);
        assert_eq!(once.matches(BEGIN).count(), 1);
        // A bundle without a final newline still gets the block on lines of its own.
        let unterminated = ca().merged_into("public");
        assert!(unterminated.starts_with("public\n# caged"));
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-ca.pem");
        std::fs::write(&file, "just text\n").unwrap();
        let err = SandboxCa::load(&file).unwrap_err();
        assert!(
            err.contains("not-a-ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        std::fs::write(
            &file,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = SandboxCa::load(&file).unwrap_err();
        assert!(err.contains("certificate 1 cannot be trusted"), "{err}");
        let err = SandboxCa::load(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("missing.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_real_bundle_loads_with_only_its_certificate_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bundle.pem");
        let public = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap();
        std::fs::write(&file, format!("# a comment\n{public}\ntrailing words\n")).unwrap();
        let ca = SandboxCa::load(&file).unwrap();
        assert_eq!(
            ca.certificates(),
            public.matches("BEGIN CERTIFICATE").count()
        );
        assert!(ca.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(ca.pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!ca.pem.contains("comment") && !ca.pem.contains("trailing"));
    }
}

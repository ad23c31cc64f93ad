//! HTTPS for previews: a wildcard certificate given by the operator, or one generated here for
//! local use (self-signed, kept in the data folder so browsers can be told to trust it once).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Where the preview listener gets its certificate.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PreviewTls {
    /// Plain HTTP.
    #[default]
    Off,
    /// PEM files: a certificate chain for `*.<preview-domain>` and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed wildcard for the preview domain, made once and kept in the data folder.
    SelfSigned,
}

/// Folder in the data folder that holds a generated certificate.
pub const SELF_SIGNED_DIR: &str = "preview-tls";

pub fn acceptor(
    tls: &PreviewTls,
    data_dir: &Path,
    domain: &str,
) -> Result<Option<TlsAcceptor>, String> {
    let (cert, key) = match tls {
        PreviewTls::Off => return Ok(None),
        PreviewTls::Files { cert, key } => (cert.clone(), key.clone()),
        PreviewTls::SelfSigned => self_signed(&data_dir.join(SELF_SIGNED_DIR), domain)?,
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("cannot read certificates from {}: {err}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|err| format!("cannot read a private key from {}: {err}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| format!("the certificate and key do not fit together: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// `cert.pem` and `key.pem` for `*.<domain>` in `dir`, made unless already there for the same
/// domain.
fn self_signed(dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key, made_for) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("domain"),
    );
    if std::fs::read_to_string(&made_for).is_ok_and(|known| known.trim() == domain)
        && cert.exists()
        && key.exists()
    {
        return Ok((cert, key));
    }
    let wildcard = format!("*.{domain}");
    let generated = rcgen::generate_simple_self_signed(vec![wildcard, domain.to_string()])
        .map_err(|err| format!("cannot generate a certificate: {err}"))?;
    let io = |err: std::io::Error| format!("cannot write {}: {err}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes()).map_err(io)?;
    std::fs::write(&cert, generated.cert.pem()).map_err(io)?;
    std::fs::write(&made_for, domain).map_err(io)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate for *.{domain}; trust it in your browser or pass it to curl --cacert");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

//! TLS for `wss://` cloud URLs: Mozilla's root certificates by default, or,
//! when an operator names a CA file, only the certificates in it (a private
//! cloud with its own CA, or a pinned certificate).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA certificates from {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("TLS setup failed: {0}")]
    Setup(#[from] rustls::Error),
}

/// Reads every certificate of a PEM file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::CaFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(shown));
    }
    Ok(certificates)
}

/// A client configuration trusting `only` these certificates, or Mozilla's
/// roots when `None`.
pub fn client_config(
    only: Option<Vec<CertificateDer<'static>>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match only {
        Some(certificates) => {
            for certificate in certificates {
                roots.add(certificate)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = read_ca_file(&path).unwrap_err();
        assert!(
            error.to_string().contains("holds no certificate"),
            "{error}"
        );
        let missing = read_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            missing.to_string().contains("cannot read CA certificates"),
            "{missing}"
        );
    }

    #[test]
    fn mozilla_roots_are_the_default() {
        assert!(client_config(None).is_ok());
    }
}

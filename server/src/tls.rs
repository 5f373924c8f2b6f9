//! TLS for `wss://` and `https://` (`--tls-cert`, `--tls-key`): rustls with
//! the ring provider, no OpenSSL.
//!
//! This file holds the settings. The connection itself is rustls'
//! unbuffered API over buffers the server owns (`tls_session`), a tokio
//! stream for the handshake and the HTTP phase (`tls_stream`). After the
//! upgrade the connection leaves that stream (like a plain one leaves
//! hyper): the shard keeps the socket halves and the session, and encrypts
//! each frame for each TLS recipient from the shared plaintext bytes
//! (`conn`). Plain connections never touch any of this.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Ciphertext a connection may hold beyond what the socket took (what one
/// write encrypts at most); the plaintext still waiting stays in the connection's own queue,
/// where `--max-backlog` counts it.
pub(crate) const TLS_BUFFER: usize = 64 * 1024;

/// Why the TLS settings cannot be built. Each message is one line naming
/// the flag and the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file is missing, unreadable or not PEM.
    #[error("--tls-cert {}: {source}", .path.display())]
    Cert {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("--tls-cert {}: no PEM certificate in the file", .path.display())]
    NoCert { path: PathBuf },
    /// The key file is missing, unreadable or holds no private key.
    #[error("--tls-key {}: {source}", .path.display())]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (for example, the key does not match).
    #[error("--tls-cert {} / --tls-key: {source}", .cert.display())]
    Pair {
        cert: PathBuf,
        source: rustls::Error,
    },
    /// rustls refused its own protocol settings (a build problem).
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

/// Builds the server's TLS settings from a PEM certificate chain and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// A file is missing or unreadable, holds no certificate or key, or the
/// key does not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Settings)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|source| TlsError::Pair {
            cert: cert.to_owned(),
            source,
        })?;
    // WebSocket upgrades are HTTP/1.1 (RFC 8441 over h2 is not served).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_in_the_error() {
        let e = server_config(Path::new("/nonexistent/cert.pem"), Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-cert /nonexistent/cert.pem:"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("bs-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let e = server_config(&empty, &empty).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

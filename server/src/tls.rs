//! TLS for `wss://` and `https://` (`--tls-cert`, `--tls-key`): rustls with
//! the ring provider, no OpenSSL.
//!
//! The handshake and the HTTP phase run on tokio-rustls' stream. After the
//! upgrade the connection leaves it (like a plain one leaves hyper): the
//! shard keeps the socket halves and the `rustls::ServerConnection`, and
//! encrypts each frame for each TLS recipient from the shared plaintext
//! bytes (`conn`). Plain connections never touch any of this.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Ciphertext rustls may hold for one connection beyond what the socket
/// took; the plaintext still waiting stays in the connection's own queue,
/// where `--max-backlog` counts it.
pub(crate) const TLS_BUFFER: usize = 64 * 1024;

/// Builds the server's TLS settings from a PEM certificate chain and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1). The error is one line naming the
/// file at fault.
///
/// # Errors
/// A file is missing or unreadable, holds no certificate or key, or the
/// key does not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert {} / --tls-key: {e}", cert.display()))?;
    // WebSocket upgrades are HTTP/1.1 (RFC 8441 over h2 is not served).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_in_the_error() {
        let e = server_config(Path::new("/nonexistent/cert.pem"), Path::new("/x")).unwrap_err();
        assert!(e.starts_with("--tls-cert /nonexistent/cert.pem:"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("bs-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let e = server_config(&empty, &empty).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

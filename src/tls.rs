//! PEM files → a rustls `ServerConfig` for the HTTPS listener.
//!
//! TLS 1.2 and 1.3 only, rustls' safe defaults (its default cipher suites and key
//! exchange groups; the `aws-lc-rs` provider), ALPN `h2` then `http/1.1`. The certificate chain
//! is read leaf first; the key may be PKCS#8, PKCS#1 or SEC1. A key that does not match the
//! certificate is refused here, so `clonelb check` and a reload catch it before a client
//! would.
//!
//! Owns the TLS files' loading, not their place in lb.toml (that is `config`). Imports
//! nothing from `error` (whose `StartError` wraps [`TlsError`]) nor from the request path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("certificate file {path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read private key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Read `cert` and `key` and build the server config.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS configuration for a checked lb.toml (`None` without an HTTPS listener), or the
/// problem as a `PATH:LINE:COL` diagnostic pointing at `tls_cert` or `tls_key`.
pub fn from_checked(
    label: &str,
    checked: &crate::config::Checked,
) -> Result<Option<Arc<ServerConfig>>, crate::config::LoadError> {
    let listen = &checked.config.listen;
    let (Some(cert), Some(key)) = (&listen.tls_cert, &listen.tls_key) else {
        return Ok(None);
    };
    load(cert, key).map(Some).map_err(|e| {
        let (line, col) = match e {
            TlsError::Key { .. } => checked.tls_key_at,
            _ => checked.tls_cert_at,
        };
        crate::config::LoadError {
            path: label.to_string(),
            diagnostics: vec![crate::config::Diagnostic {
                line,
                col,
                error: crate::config::ConfigError::Tls(e.to_string()),
            }],
        }
    })
}

//! rustls client configuration: trust roots, an optional CA file, an optional
//! SHA-256 pin of the server's leaf certificate, and what a probe reports.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::SessionError;

/// One provider for rustls and tokio-rustls alike: ring, chosen explicitly,
/// so no process-wide default is needed (two providers make rustls panic).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's roots, read once per process (it walks /etc/ssl/certs);
/// Mozilla's bundled roots when the system has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::debug!("no system trust roots found; using the bundled webpki roots");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

/// Builds the client configuration. With `ca_file`, only that file's
/// certificates are trusted (as with mpop's tls_trust_file). With a pin,
/// the leaf must hash to it; the pin replaces chain validation, so a
/// self-signed server can be used safely.
pub fn client_config(
    ca_file: Option<&Path>,
    pin: Option<[u8; 32]>,
) -> Result<Arc<ClientConfig>, SessionError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SessionError::TlsConfig(e.to_string()))?;
    let config = if let Some(pin) = pin {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedLeaf {
                pin,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let roots = match ca_file {
            Some(path) => Arc::new(load_ca_file(path)?),
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn load_ca_file(path: &Path) -> Result<RootCertStore, SessionError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| SessionError::TlsConfig(format!("ca_file {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::TlsConfig(format!("ca_file {}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SessionError::TlsConfig(format!(
            "ca_file {} holds no usable PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// SHA-256 of a certificate's DER.
pub fn sha256(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

/// The form the `fingerprint` config key accepts: `sha256:AB:CD:…`.
pub fn format_fingerprint(digest: &[u8; 32]) -> String {
    let hexes: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", hexes.join(":"))
}

#[derive(Debug)]
struct PinnedLeaf {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if sha256(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match the configured pin {}",
                format_fingerprint(&sha256(end_entity)),
                format_fingerprint(&self.pin)
            )))
        }
    }

    // The handshake signatures are still checked: the pin proves which
    // certificate, the signature proves the server holds its key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What was negotiated, for `probe` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub subject: String,
    pub fingerprint: [u8; 32],
}

impl TlsInfo {
    pub fn from_connection(conn: &rustls::ClientConnection) -> TlsInfo {
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
            .replace("TLSv1_", "TLSv1.");
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        let (subject, fingerprint) = match leaf {
            Some(cert) => (subject_of(cert), sha256(cert)),
            None => (String::new(), [0; 32]),
        };
        TlsInfo {
            version,
            cipher,
            subject,
            fingerprint,
        }
    }
}

fn subject_of(cert: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, parsed)) => crate::pop3::sanitize(parsed.subject().to_string().as_bytes(), 256),
        Err(_) => "<unparsable certificate>".into(),
    }
}

/// Classifies a failed handshake: certificate problems apart from the rest.
pub fn handshake_error(host: &str, err: std::io::Error) -> SessionError {
    let reason = err.to_string();
    let is_cert = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::General(_)
            )
        });
    if is_cert {
        SessionError::Certificate {
            host: host.to_string(),
            reason,
        }
    } else {
        SessionError::Tls {
            host: host.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let mut d = [0u8; 32];
        d[0] = 0x9f;
        d[31] = 0x01;
        let s = format_fingerprint(&d);
        assert!(s.starts_with("sha256:9F:00:"));
        assert!(s.ends_with(":01"));
        assert_eq!(s.len(), "sha256:".len() + 32 * 3 - 1);
    }

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}

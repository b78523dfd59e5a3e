//! rustls client configuration: trust roots, an optional CA file, an optional
//! SHA-256 pin of the server's leaf certificate, and what a probe reports.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
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
    Ok(observed_client_config(ca_file, pin)?.0)
}

/// [`client_config`], plus what the server presents during the handshake
/// (for an error message that names the certificate).
pub fn observed_client_config(
    ca_file: Option<&Path>,
    pin: Option<[u8; 32]>,
) -> Result<(Arc<ClientConfig>, Arc<Presented>), SessionError> {
    let trust = match (pin, ca_file) {
        (Some(pin), _) => Trust::Pin(pin),
        (None, ca_file) => {
            let (roots, exact) = match ca_file {
                Some(path) => {
                    let certs = read_ca_file(path)?;
                    (Arc::new(roots_of(path, certs.clone())?), certs)
                }
                None => (system_roots(), Vec::new()),
            };
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| SessionError::TlsConfig(e.to_string()))?;
            Trust::Roots { webpki, exact }
        }
    };
    let presented = Arc::new(Presented::default());
    let verifier = Verifier {
        trust,
        presented: Arc::clone(&presented),
        algorithms: provider().signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SessionError::TlsConfig(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((Arc::new(config), presented))
}

/// A configuration that accepts any certificate and records it: only for
/// `probe --insecure-show-cert`, which sends nothing after the handshake.
pub fn show_cert_client_config() -> (Arc<ClientConfig>, Arc<Presented>) {
    let presented = Arc::new(Presented::default());
    let verifier = Verifier {
        trust: Trust::ShowOnly,
        presented: Arc::clone(&presented),
        algorithms: provider().signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (Arc::new(config), presented)
}

/// The certificate the server presented in the last handshake, if any.
#[derive(Debug, Default)]
pub struct Presented(Mutex<Option<CertificateDer<'static>>>);

impl Presented {
    pub fn get(&self) -> Option<CertificateDer<'static>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, cert: &CertificateDer<'_>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(cert.clone().into_owned());
    }
}

#[derive(Debug)]
enum Trust {
    /// The leaf must hash to this (`fingerprint`); replaces chain checks.
    Pin([u8; 32]),
    /// Chains to these roots with full name checks, or is exactly one of
    /// the `ca_file` certificates (a self-signed server certificate put
    /// there: trusted as such, like a pin, dates still checked).
    Roots {
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
        exact: Vec<CertificateDer<'static>>,
    },
    /// Accepts anything (the certificate is only shown).
    ShowOnly,
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    presented: Arc<Presented>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.presented.set(end_entity);
        match &self.trust {
            Trust::Pin(pin) if sha256(end_entity) == *pin => Ok(ServerCertVerified::assertion()),
            Trust::Pin(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            Trust::Roots { exact, .. } if exact.iter().any(|c| c == end_entity) => {
                check_dates(end_entity, now)?;
                Ok(ServerCertVerified::assertion())
            }
            Trust::Roots { webpki, .. } => {
                webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Trust::ShowOnly => Ok(ServerCertVerified::assertion()),
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

fn check_dates(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = now.as_secs() as i64;
    let validity = parsed.validity();
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// A certificate as a TLS error shows it: enough to decide whether to
/// trust it, and the exact `fingerprint` line that would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub fingerprint: [u8; 32],
    pub self_signed: bool,
}

impl CertSummary {
    pub fn of(cert: &[u8]) -> CertSummary {
        let fingerprint = sha256(cert);
        let clean = |s: String| crate::pop3::sanitize(s.as_bytes(), 256);
        match x509_parser::parse_x509_certificate(cert) {
            Ok((_, parsed)) => {
                let date = |t: x509_parser::time::ASN1Time| {
                    let c = crate::datetime::Civil::from_unix(t.timestamp());
                    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
                };
                CertSummary {
                    subject: clean(parsed.subject().to_string()),
                    issuer: clean(parsed.issuer().to_string()),
                    not_before: date(parsed.validity().not_before),
                    not_after: date(parsed.validity().not_after),
                    fingerprint,
                    self_signed: parsed.subject() == parsed.issuer(),
                }
            }
            Err(_) => CertSummary {
                subject: "<unparsable certificate>".into(),
                issuer: String::new(),
                not_before: String::new(),
                not_after: String::new(),
                fingerprint,
                self_signed: false,
            },
        }
    }

    /// One line: subject, issuer, validity, fingerprint.
    pub fn describe(&self) -> String {
        format!(
            "subject \"{}\", issuer \"{}\", valid {} to {}, {}",
            self.subject,
            self.issuer,
            self.not_before,
            self.not_after,
            format_fingerprint(&self.fingerprint)
        )
    }
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, SessionError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| SessionError::TlsConfig(format!("ca_file {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::TlsConfig(format!("ca_file {}: {e}", path.display())))
}

fn roots_of(
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<RootCertStore, SessionError> {
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

/// What a failed handshake's error should say and which setting fixes it.
pub struct HandshakeContext<'a> {
    pub host: &'a str,
    pub port: u16,
    /// TLS from the first byte (not after STLS).
    pub implicit: bool,
    pub ca_file: Option<&'a Path>,
    pub pinned: bool,
    pub presented: Option<CertificateDer<'static>>,
}

/// Classifies a failed handshake: certificate problems apart from the rest.
/// A certificate problem names the certificate and the config key to set.
pub fn handshake_error(ctx: &HandshakeContext<'_>, err: std::io::Error) -> SessionError {
    let host = ctx.host.to_string();
    let Some(tls_err) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return SessionError::Tls {
            host,
            reason: err.to_string(),
        };
    };
    if let (true, rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
        (ctx.implicit, tls_err)
    {
        // Not a TLS record at all: a plain POP3 greeting, most likely.
        return SessionError::PlainWhereTlsExpected {
            addr: format!("{}:{}", ctx.host, ctx.port),
        };
    }
    let rustls::Error::InvalidCertificate(cert_err) = tls_err else {
        return SessionError::Tls {
            host,
            reason: err.to_string(),
        };
    };
    let reason = match &ctx.presented {
        Some(cert) => certificate_advice(ctx, cert_err, &CertSummary::of(cert)),
        None => tls_err.to_string(),
    };
    SessionError::Certificate { host, reason }
}

fn certificate_advice(
    ctx: &HandshakeContext<'_>,
    err: &CertificateError,
    cert: &CertSummary,
) -> String {
    let pin = format!(
        "fingerprint = \"{}\"",
        format_fingerprint(&cert.fingerprint)
    );
    let trusted = match ctx.ca_file {
        Some(path) => format!("the CAs in ca_file {}", path.display()),
        None => "the system's CAs".to_string(),
    };
    let (what, fix) = match err {
        CertificateError::ApplicationVerificationFailure if ctx.pinned => (
            "it does not match the configured pin".to_string(),
            format!("if the server's certificate was replaced on purpose, set {pin}"),
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            format!("it expired on {}", cert.not_after),
            "the server's administrator must renew it".to_string(),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            format!("it is not valid before {}", cert.not_before),
            "check this machine's clock".to_string(),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
            format!("it is not valid for the name \"{}\"", ctx.host),
            format!(
                "set host to a name the certificate holds, or, if it is the server's own certificate, set {pin} or ca_file = \"FILE\" holding it"
            ),
        ),
        // webpki's CaUsedAsEndEntity arrives as `Other`.
        CertificateError::UnknownIssuer | CertificateError::Other(_) if cert.self_signed => (
            format!("it is self-signed and not in {trusted}"),
            format!(
                "if it is the server's own certificate, set {pin}, or save it as PEM and set ca_file = \"FILE\""
            ),
        ),
        CertificateError::UnknownIssuer => (
            format!("its issuer is not among {trusted}"),
            format!("set ca_file = \"FILE\" holding the issuing CA, or {pin}"),
        ),
        other => (
            format!("{other:?}"),
            format!("if it is the server's own certificate, set {pin}"),
        ),
    };
    format!("{what} (presented: {}); {fix}", cert.describe())
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

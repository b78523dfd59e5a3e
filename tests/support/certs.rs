//! A throw-away PKI made with the `openssl` CLI: a test CA and leafs signed by it.
//!
//! rustls refuses a plain `openssl req -x509` certificate as an end entity
//! (`CaUsedAsEndEntity`), so the server always gets a CA-signed leaf with
//! `CA:FALSE`. Keys are P-256: generating them takes milliseconds, RSA ~0.3 s.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// SANs of the normal leaf. Besides `localhost`/`127.0.0.1` it names the other
/// loopback addresses a [`super::Dovecot`] may listen on (see `DovecotOptions`).
pub const LEAF_SAN: &str = "DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3";

/// A certificate file and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub pem: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// SHA-256 of the certificate's DER (what a pin compares against).
    pub fn sha256(&self) -> [u8; 32] {
        cert_sha256(&self.pem)
    }
}

#[derive(Debug, Clone)]
pub struct TestPki {
    pub dir: PathBuf,
    /// `/CN=popsync test CA`: what a client trusts.
    pub ca_pem: PathBuf,
    pub ca_key: PathBuf,
    /// Leaf for `localhost` (see [`LEAF_SAN`]), valid for ten years.
    pub leaf_pem: PathBuf,
    pub leaf_key: PathBuf,
}

impl TestPki {
    /// Makes the CA and the `localhost` leaf in `dir` (created if missing).
    pub fn generate(dir: &Path) -> TestPki {
        Self::generate_with_ca_name(dir, "popsync test CA")
    }

    /// Like `generate`, with another CA subject. A CA that shares the test
    /// CA's name makes rustls report `BadSignature`, not `UnknownIssuer`.
    pub fn generate_with_ca_name(dir: &Path, ca_cn: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("create pki dir");
        let ca_pem = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        make_ca(&ca_pem, &ca_key, ca_cn);
        let pki = TestPki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key,
            leaf_pem: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
        };
        pki.sign_leaf("leaf", LEAF_SAN, None);
        pki
    }

    /// A second CA, unrelated to any `TestPki` (for "untrusted certificate"
    /// tests). Returns the path of its PEM, `dir/other-ca.pem`.
    pub fn generate_other_ca(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("create pki dir");
        let pem = dir.join("other-ca.pem");
        make_ca(&pem, &dir.join("other-ca.key"), "popsync other CA");
        pem
    }

    /// A leaf signed by an unrelated CA (trusting `ca_pem` must refuse it).
    pub fn untrusted_leaf(&self) -> Leaf {
        let other = TestPki::generate_with_ca_name(&self.dir.join("untrusted"), "popsync other CA");
        other.leaf()
    }

    /// The normal leaf as a [`Leaf`].
    pub fn leaf(&self) -> Leaf {
        Leaf {
            pem: self.leaf_pem.clone(),
            key: self.leaf_key.clone(),
        }
    }

    /// A leaf for `localhost` signed by this CA that expired on 2020-01-02.
    pub fn expired_leaf(&self) -> Leaf {
        // `openssl x509 -req` of OpenSSL 3.0 has no -not_before/-not_after
        // (3.4+), so the back-dated leaf goes through `openssl ca`.
        self.sign_leaf(
            "expired",
            LEAF_SAN,
            Some(("20200101000000Z", "20200102000000Z")),
        )
    }

    /// A leaf signed by this CA for `wrong.example` only.
    pub fn wrong_host_leaf(&self) -> Leaf {
        self.sign_leaf("wrong-host", "DNS:wrong.example", None)
    }

    /// SHA-256 of the normal leaf's DER.
    pub fn leaf_sha256(&self) -> [u8; 32] {
        cert_sha256(&self.leaf_pem)
    }

    pub fn leaf_sha256_hex(&self) -> String {
        hex::encode(self.leaf_sha256())
    }

    /// A rustls client config (ring provider) trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_trusting(&self.ca_pem)
    }

    /// Signs a new leaf `dir/NAME.pem` + `dir/NAME.key` with the given SAN;
    /// `validity` = (notBefore, notAfter) as `YYYYMMDDHHMMSSZ`.
    pub fn sign_leaf(&self, name: &str, san: &str, validity: Option<(&str, &str)>) -> Leaf {
        let pem = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\n\
                 subjectAltName={san}\n"
            ),
        )
        .expect("write ext file");
        let cn = san
            .split(',')
            .find_map(|s| s.strip_prefix("DNS:"))
            .unwrap_or("localhost");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        match validity {
            None => openssl(&[
                "x509",
                "-req",
                "-in",
                s(&csr),
                "-CA",
                s(&self.ca_pem),
                "-CAkey",
                s(&self.ca_key),
                "-set_serial",
                &serial(),
                "-days",
                "3650",
                "-sha256",
                "-extfile",
                s(&ext),
                "-out",
                s(&pem),
            ]),
            Some((not_before, not_after)) => {
                // `openssl ca` wants a database; each leaf gets its own.
                let db = self.dir.join(format!("{name}.cadb"));
                std::fs::create_dir_all(&db).expect("create ca db dir");
                std::fs::write(db.join("index.txt"), "").expect("write index");
                let cnf = db.join("ca.cnf");
                std::fs::write(
                    &cnf,
                    format!(
                        "[ca]\ndefault_ca = testca\n[testca]\n\
                         database = {d}/index.txt\nnew_certs_dir = {d}\n\
                         serial = {d}/serial\ndefault_md = sha256\n\
                         policy = policy_any\nunique_subject = no\n\
                         [policy_any]\ncommonName = supplied\n",
                        d = db.display()
                    ),
                )
                .expect("write ca.cnf");
                openssl(&[
                    "ca",
                    "-batch",
                    "-notext",
                    "-create_serial",
                    "-config",
                    s(&cnf),
                    "-cert",
                    s(&self.ca_pem),
                    "-keyfile",
                    s(&self.ca_key),
                    "-in",
                    s(&csr),
                    "-out",
                    s(&pem),
                    "-startdate",
                    not_before,
                    "-enddate",
                    not_after,
                    "-extfile",
                    s(&ext),
                ]);
            }
        }
        Leaf { pem, key }
    }
}

/// A self-signed certificate as `openssl req -x509` makes it (CA:TRUE,
/// `CN=localhost`), in `dir/NAME.pem` + `dir/NAME.key`. `san: None` leaves
/// the name only in the CN, as Courier's own set-up does.
pub fn self_signed(dir: &Path, name: &str, san: Option<&str>) -> Leaf {
    std::fs::create_dir_all(dir).expect("create pki dir");
    let pem = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let san_ext = san.map(|san| format!("subjectAltName={san}"));
    let extra: Vec<&str> = match &san_ext {
        Some(ext) => vec!["-addext", ext.as_str()],
        None => Vec::new(),
    };
    req_x509(&pem, &key, "365", "/CN=localhost", &extra);
    Leaf { pem, key }
}

/// A rustls client config (ring provider, never the process default) whose
/// only trust anchor is the CA in `ca_pem`.
pub fn client_config_trusting(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA pem") {
        roots.add(cert.expect("parse CA pem")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// The first certificate of a PEM file, as DER.
pub fn cert_der(pem: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("read certificate {}: {e}", pem.display()))
}

pub fn key_der(pem: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(pem).unwrap_or_else(|e| panic!("read key {}: {e}", pem.display()))
}

/// SHA-256 of the DER of the first certificate in `pem`.
pub fn cert_sha256(pem: &Path) -> [u8; 32] {
    Sha256::digest(cert_der(pem).as_ref()).into()
}

fn make_ca(pem: &Path, key: &Path, cn: &str) {
    req_x509(
        pem,
        key,
        "3650",
        &format!("/CN={cn}"),
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `openssl req -x509` with a fresh P-256 key.
fn req_x509(pem: &Path, key: &Path, days: &str, subj: &str, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(key),
        "-out",
        s(pem),
        "-days",
        days,
        "-subj",
        subj,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}

/// Distinct serials so that no two test leafs share issuer+serial.
fn serial() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "0x{:x}{:04x}{:04x}",
        nanos,
        std::process::id() & 0xffff,
        n & 0xffff
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is the openssl CLI installed?)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

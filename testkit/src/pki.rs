//! A test CA made with rcgen, as `otactl pki` makes one (no key is checked in), certificates
//! for otad and for sites, an otad serving TLS with them, and TLS channels to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ota_server::config::{Config, TlsFiles};
use ota_server::core::Clock;
use ota_server::wiring;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA.
#[derive(Debug)]
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pki {
    /// A CA named `cn`.
    pub fn new(cn: &str) -> Pki {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `sans` with the one extended key usage `usage`.
    pub fn issue(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// otad's certificate: `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pair {
        self.issue(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// An agent's client certificate for `site` (`ota-site:<site>`).
    pub fn site(&self, site: &str) -> Pair {
        self.issue(
            vec![SanType::URI(format!("ota-site:{site}").try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// Writes `<stem>.pem` and `<stem>.key` into `dir` (made if missing); their paths.
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pair.cert).unwrap();
    std::fs::write(&key, &pair.key).unwrap();
    (cert, key)
}

/// The configuration of an otad serving TLS with a certificate of `pki` and verifying agents'
/// client certificates against it: files in `<dir>/tls`, data in `<dir>/data`.
pub fn tls_config(dir: &Path, pki: &Pki) -> Config {
    let tls = dir.join("tls");
    let (cert, key) = write_pair(&tls, "server", &pki.server());
    std::fs::write(tls.join("ca.pem"), pki.ca_pem()).unwrap();
    Config {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsFiles {
            cert,
            key,
            client_ca: Some(tls.join("ca.pem")),
        }),
        insecure_plaintext: false,
        ..Config::default()
    }
}

/// An otad with [`tls_config`]; the admin token it bootstrapped.
pub async fn start_tls_server(dir: &Path, pki: &Pki) -> (wiring::Otad, String) {
    let server = crate::otad::start_server(tls_config(dir, pki), Clock::new()).await;
    (server, crate::otad::admin_token(&dir.join("data")))
}

/// A TLS channel to otad at `addr` (as `localhost`) trusting `ca`, with a client certificate
/// when `identity` is given.
pub async fn tls_channel(addr: SocketAddr, ca: &str, identity: Option<&Pair>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(p) = identity {
        tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An operator's channel (TLS, no client certificate).
pub async fn operator_channel(server: &wiring::Otad, pki: &Pki) -> Channel {
    tls_channel(server.addr, &pki.ca_pem(), None).await
}

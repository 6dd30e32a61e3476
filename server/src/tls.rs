//! TLS of the gRPC listener, and what a verified agent certificate says.
//!
//! # Identity of an agent
//! An agent's client certificate is signed by the CA in `tls_client_ca` (rustls checks the
//! chain, the validity period and the clientAuth extended key usage during the handshake) and
//! names its site in exactly one subject alternative name of the form
//! **`URI:ota-site:<site_id>`** (`otactl pki issue-site <site>` writes such certificates). The
//! site id follows the same rules as everywhere (1-64 letters, digits, '-', '_' or '.'). The
//! common name is for people only and is ignored. A certificate without that SAN, or with two,
//! identifies nobody and is refused.
//!
//! Client certificates are optional in the handshake — otactl connects with TLS and a bearer
//! token — and required per RPC by the authentication layer (`api::guard`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::config::TlsFiles;

/// URI scheme of the SAN that binds a client certificate to a site.
pub const SITE_URI_PREFIX: &str = "ota-site:";

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the listener serves with, after the files were read and checked.
#[derive(Debug)]
pub struct LoadedTls {
    /// For `tonic::transport::Server::tls_config`.
    pub config: ServerTlsConfig,
    /// Whether agents can present client certificates (a client CA is configured).
    pub client_ca: bool,
    /// Things the operator should know (expiring certificate, readable key file).
    pub warnings: Vec<String>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// DER certificates in a PEM file, in order.
fn pem_certificates(pem: &[u8], path: &Path, what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item =
            item.map_err(|e| anyhow::anyhow!("the {what} {} is not PEM: {e}", path.display()))?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "the {what} {} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        );
    }
    Ok(out)
}

/// Makes ring the process's TLS provider unless one was chosen already. Some dependencies
/// enable rustls' aws-lc-rs provider too, and rustls refuses to guess between two.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads and checks the listener's files.
pub fn load(files: &TlsFiles, now_unix_s: i64) -> anyhow::Result<LoadedTls> {
    install_crypto_provider();
    let mut warnings = Vec::new();
    let cert_pem = read(&files.cert, "TLS certificate")?;
    let key_pem = read(&files.key, "TLS private key")?;
    let chain = pem_certificates(&cert_pem, &files.cert, "TLS certificate")?;
    let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| {
        anyhow::anyhow!(
            "the TLS certificate {} cannot be parsed: {e}",
            files.cert.display()
        )
    })?;
    let not_after = leaf.validity().not_after.timestamp();
    if not_after < now_unix_s {
        anyhow::bail!(
            "the TLS certificate {} expired at {} (unix time); issue a new one (`otactl pki issue-server`)",
            files.cert.display(),
            not_after
        );
    }
    if not_after - now_unix_s < 30 * 24 * 3600 {
        warnings.push(format!(
            "the TLS certificate {} expires in {} days; issue a new one soon (`otactl pki issue-server`)",
            files.cert.display(),
            (not_after - now_unix_s) / (24 * 3600)
        ));
    }
    let key_text = String::from_utf8_lossy(&key_pem);
    if !key_text.contains("PRIVATE KEY-----") {
        anyhow::bail!(
            "the TLS private key {} holds no PEM private key",
            files.key.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(&files.key)
            && meta.permissions().mode() & 0o077 != 0
        {
            warnings.push(format!(
                "the TLS private key {} is readable by other users (chmod 600 it)",
                files.key.display()
            ));
        }
    }
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    let client_ca = match &files.client_ca {
        Some(path) => {
            let pem = read(path, "client CA certificate")?;
            pem_certificates(&pem, path, "client CA certificate")?;
            config = config
                .client_ca_root(Certificate::from_pem(pem))
                .client_auth_optional(true);
            true
        }
        None => {
            warnings.push(
                "no tls_client_ca is configured: agents cannot authenticate, only otactl with tokens can connect".into(),
            );
            false
        }
    };
    Ok(LoadedTls {
        config,
        client_ca,
        warnings,
    })
}

/// Why a verified client certificate identifies no site. Logged at the server; the client only
/// hears "missing or invalid credentials".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a parsable X.509 certificate.
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// No `URI:ota-site:<site>` SAN.
    #[error(
        "the client certificate names no site (no URI:ota-site:<site> subject alternative name)"
    )]
    NoSite,
    /// More than one.
    #[error("the client certificate names more than one site")]
    TwoSites,
    /// A site id outside the rules.
    #[error("the client certificate names an invalid site id {}", crate::quote::quote(.0))]
    BadSite(String),
}

/// Whether a site id follows the rules (1-64 letters, digits, '-', '_' or '.', not starting
/// with '.').
pub fn valid_site_id(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 64
        && site
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !site.starts_with('.')
}

/// The site a (verified) client certificate is bound to.
pub fn site_of_certificate(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let mut sites = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(site) = uri.strip_prefix(SITE_URI_PREFIX)
            {
                sites.push(site.to_string());
            }
        }
    }
    match sites.as_slice() {
        [] => Err(IdentityError::NoSite),
        [site] if valid_site_id(site) => Ok(site.clone()),
        [site] => Err(IdentityError::BadSite(site.clone())),
        _ => Err(IdentityError::TwoSites),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn the_site_comes_from_exactly_one_site_uri() {
        assert_eq!(
            site_of_certificate(&cert_with(vec![
                SanType::DnsName("agent.example".try_into().unwrap()),
                uri("ota-site:home-1"),
            ])),
            Ok("home-1".into())
        );
        assert_eq!(
            site_of_certificate(&cert_with(vec![SanType::DnsName(
                "home-1".try_into().unwrap()
            )])),
            Err(IdentityError::NoSite)
        );
        assert_eq!(
            site_of_certificate(&cert_with(vec![uri("ota-site:a"), uri("ota-site:b")])),
            Err(IdentityError::TwoSites)
        );
        assert_eq!(
            site_of_certificate(&cert_with(vec![uri("ota-site:../etc")])),
            Err(IdentityError::BadSite("../etc".into()))
        );
        assert!(matches!(
            site_of_certificate(b"not a certificate"),
            Err(IdentityError::Unparsable(_))
        ));
    }

    #[test]
    fn files_are_checked_with_names_in_the_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        let err = load(&files, 0).unwrap_err().to_string();
        assert!(err.contains("server.pem"), "{err}");

        let kp = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let c = params.self_signed(&kp).unwrap();
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let err = load(&files, 1_700_000_000).unwrap_err().to_string();
        assert!(err.contains("server.key"), "{err}");

        std::fs::write(&key, kp.serialize_pem()).unwrap();
        let loaded = load(&files, 1_700_000_000).unwrap();
        assert!(!loaded.client_ca);
        assert!(
            loaded.warnings.iter().any(|w| w.contains("tls_client_ca")),
            "{:?}",
            loaded.warnings
        );
        // 2029-12-15: expiring soon.
        let soon = load(&files, 1_892_000_000).unwrap();
        assert!(soon.warnings.iter().any(|w| w.contains("expires in")));
        // 2031: expired.
        let err = load(&files, 1_930_000_000).unwrap_err().to_string();
        assert!(err.contains("expired"), "{err}");
    }
}

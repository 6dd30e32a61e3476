//! The agent's side of TLS: the CA that signed otad's certificate, and the agent's own client
//! certificate, which binds it to its site.
//!
//! ```toml
//! server = "https://otad.example:7600"
//! [tls]
//! ca = "/etc/ota-agent/ca.pem"          # CA of otad's certificate (default: system roots)
//! cert = "/etc/ota-agent/site.pem"      # `otactl pki issue-site <site_id>`
//! key = "/etc/ota-agent/site.key"       # mode 0600
//! # server_name = "otad.example"        # name to verify, when `server` uses an IP address
//! ```
//!
//! otad reads the site from the certificate (`URI:ota-site:<site_id>`) and refuses a session
//! whose hello names another site, so `site_id` here must match the certificate.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The `[tls]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA certificate of otad's certificate; unset: the system's trusted roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate of this site.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// Server name to verify instead of the host of `server`.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl TlsConfig {
    /// Reads the files into a channel configuration. Relative paths are relative to `base`
    /// (the config file's directory).
    pub fn client_config(&self, base: &Path) -> anyhow::Result<ClientTlsConfig> {
        // Some dependencies (MQTT) enable rustls' aws-lc-rs provider next to tonic's ring, and
        // rustls refuses to guess between two: choose ring unless a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert_path = resolve(base, &self.cert);
        let key_path = resolve(base, &self.key);
        let cert = std::fs::read(&cert_path)
            .with_context(|| format!("tls: cannot read the certificate {}", cert_path.display()))?;
        let key = std::fs::read(&key_path)
            .with_context(|| format!("tls: cannot read the private key {}", key_path.display()))?;
        if !String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE") {
            anyhow::bail!("tls: {} holds no PEM certificate", cert_path.display());
        }
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            anyhow::bail!("tls: {} holds no PEM private key", key_path.display());
        }
        let mut config = ClientTlsConfig::new().identity(Identity::from_pem(cert, key));
        config = match &self.ca {
            Some(ca) => {
                let ca_path = resolve(base, ca);
                let pem = std::fs::read(&ca_path).with_context(|| {
                    format!("tls: cannot read the CA certificate {}", ca_path.display())
                })?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_enabled_roots(),
        };
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

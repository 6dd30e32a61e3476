//! `otactl pki init-ca|issue-site|issue-server`: a small certificate authority in a directory.
//!
//! Everything here is local: the CA key never leaves `<dir>/ca.key` (mode 0600). Keys are ECDSA
//! P-256, serial numbers are 128 random bits, and every certificate is for one purpose:
//!
//! - the CA: `CA:TRUE, pathlen:0`, key usage keyCertSign and cRLSign;
//! - a site: `URI:ota-site:<site>` as its only SAN (otad binds the agent to that site), extended
//!   key usage clientAuth — it cannot serve TLS;
//! - otad: its DNS names and IP addresses as SANs, extended key usage serverAuth — it cannot
//!   act as an agent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rand::TryRng as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::Serialize;

use super::Ctx;
use crate::keys;

// === arguments ===

/// `otactl pki ...` (local files only; nothing is sent to otad)
#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create the certificate authority that signs otad's and the agents' certificates
    ///
    /// Writes <DIR>/ca.pem (give it to otad as tls_client_ca and to agents as [tls] ca) and
    /// <DIR>/ca.key (mode 0600; keep it offline: whoever has it can make agent certificates).
    ///
    /// Example:
    ///   otactl pki init-ca --dir /etc/ota/pki
    #[command(verbatim_doc_comment)]
    InitCa(PkiInitArgs),
    /// Issue the client certificate of one site's agent
    ///
    /// The certificate names the site as URI:ota-site:<SITE>; otad lets it report only for
    /// that site. Writes <DIR>/site-<SITE>.pem and <DIR>/site-<SITE>.key (mode 0600).
    ///
    /// Example:
    ///   otactl pki issue-site home --dir /etc/ota/pki
    #[command(verbatim_doc_comment)]
    IssueSite(PkiSiteArgs),
    /// Issue otad's server certificate for the names agents and otactl connect to
    ///
    /// Each NAME is a DNS name or an IP address. Writes <DIR>/server.pem and <DIR>/server.key
    /// (mode 0600), for otad's tls_cert and tls_key.
    ///
    /// Example:
    ///   otactl pki issue-server otad.example.net 10.0.0.5 --dir /etc/ota/pki
    #[command(verbatim_doc_comment)]
    IssueServer(PkiServerArgs),
}

/// `pki init-ca`.
#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// Directory of the PKI files (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Common name of the CA.
    #[arg(long, value_name = "NAME", default_value = "OTA fleet CA")]
    pub name: String,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 3650)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// `pki issue-site`.
#[derive(Debug, Args)]
pub struct PkiSiteArgs {
    /// The site id, as in the agent's site_id.
    #[arg(value_name = "SITE")]
    pub site: String,
    #[command(flatten)]
    pub issue: PkiIssueArgs,
}

/// `pki issue-server`.
#[derive(Debug, Args)]
pub struct PkiServerArgs {
    /// DNS names and IP addresses otad is reached at.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub issue: PkiIssueArgs,
}

/// What `pki issue-site` and `pki issue-server` share: where the CA is, how long the
/// certificate is valid, whether to overwrite.
#[derive(Debug, Args)]
pub struct PkiIssueArgs {
    /// Directory of the PKI files (holding ca.pem and ca.key).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 825)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

// === certificates ===

/// What a `pki` command wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PkiJson {
    /// The certificate (PEM).
    pub certificate_path: String,
    /// Its private key (PEM, mode 0600).
    pub key_path: String,
    /// Subject common name.
    pub subject: String,
    /// Subject alternative names, as `DNS:`, `IP:` or `URI:` values.
    pub names: Vec<String>,
    /// Days it is valid for.
    pub days: u32,
}

/// The URI SAN that binds an agent certificate to a site.
pub fn site_uri(site: &str) -> String {
    format!("ota-site:{site}")
}

/// The same rules as everywhere for site ids.
pub fn check_site(site: &str) -> anyhow::Result<()> {
    let ok = !site.is_empty()
        && site.len() <= 64
        && site
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !site.starts_with('.');
    if !ok {
        anyhow::bail!("site id {site:?} is not valid: 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

fn serial() -> anyhow::Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes from the operating system: {e}"))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 || days > 36_500 {
        anyhow::bail!("--days {days} is not between 1 and 36500");
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour back, so a clock that is a little behind still accepts the certificate.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn refuse_overwrite(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if !force {
        for p in paths {
            if p.exists() {
                anyhow::bail!("{} already exists (pass --force to overwrite)", p.display());
            }
        }
    }
    Ok(())
}

fn write_pair(cert: &Path, key: &Path, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    keys::write_private(key, key_pem).with_context(|| format!("cannot write {}", key.display()))?;
    std::fs::write(cert, cert_pem).with_context(|| format!("cannot write {}", cert.display()))?;
    Ok(())
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// Creates the CA.
pub fn init_ca(a: &PkiInitArgs) -> anyhow::Result<PkiJson> {
    let cn = a.name.trim();
    if cn.is_empty() || cn.len() > 64 {
        anyhow::bail!("--name must be 1-64 characters");
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let (cert_path, key_path) = ca_paths(&a.dir);
    refuse_overwrite(&[&cert_path, &key_path], a.force)?;
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial()?);
    validity(&mut params, a.days)?;
    let cert = params
        .self_signed(&key)
        .context("cannot make the CA certificate")?;
    write_pair(&cert_path, &key_path, &cert.pem(), &key.serialize_pem())?;
    Ok(PkiJson {
        certificate_path: cert_path.display().to_string(),
        key_path: key_path.display().to_string(),
        subject: cn.to_string(),
        names: Vec::new(),
        days: a.days,
    })
}

fn load_ca(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let (cert_path, key_path) = ca_paths(dir);
    let cert = std::fs::read_to_string(&cert_path).with_context(|| {
        format!(
            "cannot read the CA certificate {} (run `otactl pki init-ca --dir {}` first)",
            cert_path.display(),
            dir.display()
        )
    })?;
    let key_pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| anyhow::anyhow!("{} is not a private key: {e}", key_path.display()))?;
    Issuer::from_ca_cert_pem(&cert, key)
        .map_err(|e| anyhow::anyhow!("{} is not a CA certificate: {e}", cert_path.display()))
}

fn issue(
    a: &PkiIssueArgs,
    stem: &str,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<PkiJson> {
    let (dir, days) = (a.dir.as_path(), a.days);
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    refuse_overwrite(&[&cert_path, &key_path], a.force)?;
    let issuer = load_ca(dir)?;
    let names = sans
        .iter()
        .map(|s| match s {
            SanType::DnsName(n) => format!("DNS:{}", n.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            SanType::URI(u) => format!("URI:{}", u.as_str()),
            other => format!("{other:?}"),
        })
        .collect();
    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial()?);
    validity(&mut params, days)?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate")?;
    write_pair(&cert_path, &key_path, &cert.pem(), &key.serialize_pem())?;
    Ok(PkiJson {
        certificate_path: cert_path.display().to_string(),
        key_path: key_path.display().to_string(),
        subject: cn.to_string(),
        names,
        days,
    })
}

/// Issues a site's agent certificate.
pub fn issue_site(a: &PkiSiteArgs) -> anyhow::Result<PkiJson> {
    check_site(&a.site)?;
    let uri = site_uri(&a.site)
        .try_into()
        .map_err(|e| anyhow::anyhow!("site id {:?}: {e}", a.site))?;
    issue(
        &a.issue,
        &format!("site-{}", a.site),
        &format!("ota-agent {}", a.site),
        vec![SanType::URI(uri)],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

/// Issues otad's certificate.
pub fn issue_server(a: &PkiServerArgs) -> anyhow::Result<PkiJson> {
    let mut sans = Vec::new();
    for n in &a.names {
        let n = n.trim();
        if let Ok(ip) = n.parse::<IpAddr>() {
            sans.push(SanType::IpAddress(ip));
            continue;
        }
        let ok = !n.is_empty()
            && n.len() <= 253
            && n.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
            });
        if !ok {
            anyhow::bail!("{n:?} is neither an IP address nor a DNS name");
        }
        sans.push(SanType::DnsName(
            n.try_into()
                .map_err(|e| anyhow::anyhow!("{n:?} is not a DNS name: {e}"))?,
        ));
    }
    let cn = a.names.first().map(|s| s.trim()).unwrap_or("otad");
    issue(
        &a.issue,
        "server",
        cn,
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

fn human(v: &PkiJson, next: &str) -> String {
    let names = if v.names.is_empty() {
        String::new()
    } else {
        format!(" for {}", v.names.join(", "))
    };
    format!(
        "Wrote {} ({}{names}, valid {} days) and its key {} (mode 0600; keep it secret).\n{next}",
        v.certificate_path, v.subject, v.days, v.key_path
    )
}

/// Runs a `pki` command.
pub fn run(ctx: &Ctx, cmd: PkiCmd) -> anyhow::Result<()> {
    match cmd {
        PkiCmd::InitCa(a) => {
            let v = init_ca(&a)?;
            ctx.out.show(&v, |v| {
                human(
                    v,
                    "otad: tls_client_ca = the certificate; agents: [tls] ca = the certificate. Next: otactl pki issue-server, otactl pki issue-site.",
                )
            })?;
        }
        PkiCmd::IssueSite(a) => {
            let v = issue_site(&a)?;
            let site = a.site.clone();
            ctx.out.show(&v, |v| {
                human(
                    v,
                    &format!("Agent of site {site}: [tls] cert and key = these files; site_id = \"{site}\"."),
                )
            })?;
        }
        PkiCmd::IssueServer(a) => {
            let v = issue_server(&a)?;
            ctx.out.show(&v, |v| {
                human(v, "otad: tls_cert and tls_key = these files.")
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue_args(dir: &Path, force: bool) -> PkiIssueArgs {
        PkiIssueArgs {
            dir: dir.to_path_buf(),
            days: 10,
            force,
        }
    }

    fn init(dir: &Path) -> PkiJson {
        init_ca(&PkiInitArgs {
            dir: dir.to_path_buf(),
            name: "Test CA".into(),
            days: 30,
            force: false,
        })
        .unwrap()
    }

    #[test]
    fn a_ca_issues_site_and_server_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init(dir.path());
        assert!(ca.certificate_path.ends_with("ca.pem"));
        let again = init_ca(&PkiInitArgs {
            dir: dir.path().to_path_buf(),
            name: "Test CA".into(),
            days: 30,
            force: false,
        })
        .unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");

        let site = issue_site(&PkiSiteArgs {
            site: "home-1".into(),
            issue: issue_args(dir.path(), false),
        })
        .unwrap();
        assert_eq!(site.names, ["URI:ota-site:home-1"]);
        assert!(site.certificate_path.ends_with("site-home-1.pem"));
        let pem = std::fs::read_to_string(&site.certificate_path).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = std::fs::read_to_string(&site.key_path).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for p in [&site.key_path, &ca.key_path] {
                let mode = std::fs::metadata(p).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{p}");
            }
        }

        let server = issue_server(&PkiServerArgs {
            names: vec!["otad.example".into(), "127.0.0.1".into()],
            issue: issue_args(dir.path(), false),
        })
        .unwrap();
        assert_eq!(server.names, ["DNS:otad.example", "IP:127.0.0.1"]);

        for bad in ["../etc", "a b", ""] {
            assert!(
                issue_site(&PkiSiteArgs {
                    site: bad.into(),
                    issue: issue_args(dir.path(), true),
                })
                .is_err(),
                "{bad:?}"
            );
        }
        assert!(
            issue_server(&PkiServerArgs {
                names: vec!["not a name".into()],
                issue: issue_args(dir.path(), true),
            })
            .is_err()
        );
    }

    #[test]
    fn issuing_without_a_ca_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue_site(&PkiSiteArgs {
            site: "home".into(),
            issue: issue_args(dir.path(), false),
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("otactl pki init-ca"), "{err:#}");
    }
}

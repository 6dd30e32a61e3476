//! What otad does about access before it serves: the first admin token, and saying — loudly
//! when it matters — how the listener is secured.
//!
//! - TLS: authentication is always on. Agents present client certificates, operators bearer
//!   tokens; without a usable admin token one is written to `<data_dir>/admin.token`.
//! - Plaintext (`insecure_plaintext`): for a development machine. While no token was created,
//!   every caller is the local administrator and any agent may claim any site (development
//!   mode); once a token exists, operators need tokens, and agents (which authenticate only
//!   with certificates) need TLS.

use std::net::SocketAddr;

use tracing::{info, warn};

use crate::app::App;
use crate::tls::LoadedTls;
use crate::tokens;

/// Bootstraps the admin token (TLS only) and logs how the listener is secured.
pub async fn prepare(app: &App, addr: SocketAddr, tls: Option<&LoadedTls>) -> anyhow::Result<()> {
    match tls {
        Some(tls) => {
            for w in &tls.warnings {
                warn!("{w}");
            }
            if let Some(path) = tokens::bootstrap(&app.core, &app.config.data_dir).await? {
                warn!(
                    file = %path.display(),
                    "no admin token existed: wrote a new one to this file (mode 0600); use it to create personal tokens (`otactl token create`), then delete the file"
                );
            }
            info!(
                %addr,
                agents = if tls.client_ca { "client certificates (URI:ota-site:<site>)" } else { "none (no tls_client_ca)" },
                "TLS on; operators authenticate with bearer tokens"
            );
        }
        None => {
            warn!(
                %addr,
                "INSECURE: otad serves PLAINTEXT gRPC (insecure_plaintext); tokens, reports and firmware travel unencrypted. Use TLS (tls_cert, tls_key) anywhere but a development machine"
            );
            if tokens::any_created(&app.core.read()) {
                warn!(
                    "access tokens exist, so operators need them; agents authenticate only with TLS client certificates and cannot connect over plaintext"
                );
            } else {
                warn!(
                    "DEVELOPMENT MODE: no access tokens exist, so EVERY CALLER IS THE ADMINISTRATOR and any agent may claim any site"
                );
            }
        }
    }
    Ok(())
}

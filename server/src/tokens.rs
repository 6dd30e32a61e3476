//! Operator access tokens: format, hashing, verification, and the first admin token.
//!
//! # Format
//! A token is `<id>.<secret>`: the id (`tok-` and 16 hex digits) is public — it names the token in
//! `otactl token list` and events — and the secret is 64 hex digits (256 bits from the operating
//! system's random source). The log stores only the lowercase hex SHA-256 of the secret
//! (`TokenCreated.secret_hash`); a high-entropy secret needs no slow password hash. Verification
//! looks the token up by id and compares hashes in constant time; unknown, revoked and expired
//! tokens all fail the same way.
//!
//! # Bootstrap
//! When authentication is on (a TLS listener) and no usable admin token exists, otad records a
//! fresh admin token named `bootstrap-admin` and writes it to `<data_dir>/admin.token` (mode
//! 0600) before serving; the log says where the file is, never what is in it. An admin uses it
//! to create personal tokens and should then delete the file (or revoke the token once another
//! admin token exists). `otad --create-admin-token FILE` records a new admin token while otad is
//! stopped, for recovery.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ota_domain::events::{TokenCreated, streams};
use ota_domain::model::Actor;
use ota_domain::projection::{FleetState, TokenView};
use ota_domain::time::UnixMillis;
use rand::TryRng as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::api::caller::Role;
use crate::core::{Change, Core, CoreError};

/// Prefix of token ids.
pub const ID_PREFIX: &str = "tok-";
/// Name of the file the first admin token is written to, in the data directory.
pub const BOOTSTRAP_FILE: &str = "admin.token";
/// Name of the bootstrap token.
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";
/// Names nobody's token may have: they label the server itself and development mode.
pub const RESERVED_NAMES: [&str; 2] = ["otad", "local"];
/// The stored `expires_at_ms` of a token that never expires (0, the epoch).
const NEVER: UnixMillis = UnixMillis::EPOCH;

/// A freshly made token.
pub struct NewToken {
    /// Public id.
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl NewToken {
    /// Makes a token from the operating system's random source.
    pub fn generate() -> anyhow::Result<NewToken> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut id)
            .and_then(|()| rand::rngs::SysRng.try_fill_bytes(&mut secret))
            .map_err(|e| {
                anyhow::anyhow!("cannot get random bytes from the operating system: {e}")
            })?;
        Ok(NewToken {
            id: format!("{ID_PREFIX}{}", hex::encode(id)),
            secret: hex::encode(secret),
        })
    }

    /// What the bearer sends: `<id>.<secret>`.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The hash stored in the log.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }

    /// The event that records it (`expires`: `None` for a token that never expires).
    pub fn created(&self, name: &str, role: Role, expires: Option<UnixMillis>) -> TokenCreated {
        TokenCreated {
            id: self.id.clone(),
            name: name.to_string(),
            role: role.name().to_string(),
            secret_hash: self.secret_hash(),
            expires_at_ms: expires.unwrap_or(NEVER),
        }
    }
}

/// Lowercase hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The role named in a token record.
pub fn role_of(t: &TokenView) -> Option<Role> {
    match t.role.as_str() {
        "viewer" => Some(Role::Viewer),
        "operator" => Some(Role::Operator),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// Whether a token can be used now.
pub fn is_active(t: &TokenView, now: UnixMillis) -> bool {
    !t.revoked && (t.expires_at_ms == NEVER || t.expires_at_ms > now)
}

/// Whether any token can be used now.
pub fn any_active(state: &FleetState, now: UnixMillis) -> bool {
    state.tokens.values().any(|t| is_active(t, now))
}

/// Whether a token was ever created. Then authentication is required even without TLS — also
/// after every token expired or was revoked (`otad --create-admin-token` recovers).
pub fn any_created(state: &FleetState) -> bool {
    !state.tokens.is_empty()
}

/// Active admin tokens.
pub fn active_admins(state: &FleetState, now: UnixMillis) -> usize {
    state
        .tokens
        .values()
        .filter(|t| is_active(t, now) && role_of(t) == Some(Role::Admin))
        .count()
}

/// Who a bearer token belongs to: `(token id, name, role)`. `None` for anything that is not an
/// active token with this exact secret.
pub fn verify(state: &FleetState, bearer: &str, now: UnixMillis) -> Option<(String, String, Role)> {
    let (id, secret) = bearer.split_once('.')?;
    let token = state.tokens.get(id)?;
    let stored = hex::decode(&token.secret_hash).ok()?;
    let given = Sha256::digest(secret.as_bytes());
    let same: bool = given.as_slice().ct_eq(stored.as_slice()).into();
    if !same || !is_active(token, now) {
        return None;
    }
    Some((token.id.clone(), token.name.clone(), role_of(token)?))
}

/// Token names: 1-64 letters, digits, '.', '_', '-' or '@'; not a reserved name.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !ok {
        return Err(format!(
            "token name {} is not valid: 1-64 letters, digits, '.', '_', '-' or '@' (who it is for: \"alice\", \"ci\")",
            crate::quote::quote(name)
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "token name {} is reserved; choose another",
            crate::quote::quote(name)
        ));
    }
    Ok(())
}

/// Writes a token to a new file only the owner can read (replacing an older file atomically).
pub fn write_token_file(path: &Path, token: &NewToken) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension("tmp");
    let text = format!("{}\n", token.bearer());
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = dir
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Records a new admin token named `name` and writes it to `path`. The file is written first:
/// a crash in between leaves a file with a token that does not work, never a working token
/// nobody has.
pub async fn create_admin_token(core: &Core, path: &Path, name: &str) -> anyhow::Result<String> {
    let token = NewToken::generate()?;
    write_token_file(path, &token)?;
    let created = token.created(name, Role::Admin, None);
    core.execute::<CoreError, _>(&Actor::system(), |_| {
        Ok(vec![Change::any(
            streams::ACCESS,
            vec![created.clone().into()],
        )])
    })
    .await
    .context("cannot record the admin token")?;
    Ok(token.id)
}

/// When authentication is on and no admin token can be used, records one and writes it to
/// `<data_dir>/admin.token`. Returns the file when it did.
pub async fn bootstrap(core: &Core, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let now = core.clock().now();
    if active_admins(&core.read(), now) > 0 {
        return Ok(None);
    }
    let path = data_dir.join(BOOTSTRAP_FILE);
    create_admin_token(core, &path, BOOTSTRAP_NAME).await?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(t: &NewToken, role: &str, expires_at_ms: i64) -> TokenView {
        TokenView {
            id: t.id.clone(),
            name: "alice".into(),
            role: role.into(),
            secret_hash: t.secret_hash(),
            expires_at_ms: UnixMillis::from_unix_ms(expires_at_ms),
            created_at_ms: UnixMillis::EPOCH,
            created_by: "otad (system)".into(),
            revoked: false,
        }
    }

    #[test]
    fn tokens_verify_only_with_their_secret_while_active() {
        let t = NewToken::generate().unwrap();
        let bearer = t.bearer();
        let (id, secret) = bearer.split_once('.').unwrap();
        assert!(id.starts_with("tok-") && id.len() == 20, "{id}");
        assert_eq!(secret.len(), 64);
        assert!(!format!("{t:?}").contains(secret));

        let mut state = FleetState::default();
        state
            .tokens
            .insert(t.id.clone(), view(&t, "operator", 1000));
        assert_eq!(
            verify(&state, &bearer, UnixMillis::from_unix_ms(999)),
            Some((t.id.clone(), "alice".into(), Role::Operator))
        );
        assert_eq!(
            verify(&state, &bearer, UnixMillis::from_unix_ms(1000)),
            None,
            "expired"
        );
        assert_eq!(
            verify(
                &state,
                &format!("{id}.{}", "0".repeat(64)),
                UnixMillis::from_unix_ms(0)
            ),
            None
        );
        assert_eq!(verify(&state, secret, UnixMillis::from_unix_ms(0)), None);
        assert_eq!(verify(&state, "", UnixMillis::from_unix_ms(0)), None);
        assert_eq!(
            verify(
                &state,
                &format!("tok-0000000000000000.{secret}"),
                UnixMillis::from_unix_ms(0)
            ),
            None
        );
        state.tokens.get_mut(id).unwrap().revoked = true;
        assert_eq!(
            verify(&state, &bearer, UnixMillis::from_unix_ms(0)),
            None,
            "revoked"
        );
        assert!(!any_active(&state, UnixMillis::EPOCH));
    }

    #[test]
    fn only_the_hash_is_recorded() {
        let t = NewToken::generate().unwrap();
        let e = t.created("ci", Role::Viewer, None);
        let json = ota_domain::events::DomainEvent::from(e).to_json();
        let bearer = t.bearer();
        let secret = bearer.split_once('.').unwrap().1;
        assert!(!json.contains(secret), "{json}");
        assert!(json.contains(&hash_secret(secret)));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alice@example").is_ok());
        for bad in [
            "",
            "a b",
            "agent:home",
            "otad",
            "local",
            "../x/y",
            &"n".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn token_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t = NewToken::generate().unwrap();
        write_token_file(&path, &t).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", t.bearer())
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

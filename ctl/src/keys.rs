//! Firmware signing keys: the key file format, key generation, and signing a sha256 digest.
//!
//! Format (both files): one line holding the standard base64 encoding (with padding) of 32
//! bytes, followed by a newline. The private key file (`<PREFIX>.key`, mode 0600) holds the
//! ed25519 seed; the public key file (`<PREFIX>.pub`) holds the ed25519 public key. Reading
//! also accepts 64 hex digits, and ignores blank lines and lines starting with `#`.
//!
//! A firmware signature is the ed25519 signature of the raw 32-byte sha256 digest of the file
//! (not of its hex text).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _};
use rand::TryRng as _;

pub use ota_firmware::key_text::{decode_key_text, encode_key_text};

/// Reads a private key file.
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    let seed = decode_key_text(&text)
        .map_err(|e| anyhow::anyhow!("{} is not an ed25519 private key: {e}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs a sha256 digest given as lowercase hex, and checks the signature verifies.
pub fn sign_sha256_hex(key: &SigningKey, sha256_hex: &str) -> anyhow::Result<Signature> {
    let digest = hex::decode(sha256_hex)
        .ok()
        .filter(|d| d.len() == 32)
        .ok_or_else(|| anyhow::anyhow!("the server sent a malformed sha256 {sha256_hex:?}"))?;
    let sig = key.sign(&digest);
    key.verifying_key()
        .verify(&digest, &sig)
        .context("the signature does not verify with its own key")?;
    Ok(sig)
}

/// The two files `keygen --out PREFIX` writes.
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let mut private = prefix.as_os_str().to_owned();
    private.push(".key");
    let mut public = prefix.as_os_str().to_owned();
    public.push(".pub");
    (PathBuf::from(private), PathBuf::from(public))
}

/// A fresh key from the operating system's random source.
pub fn generate() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes from the operating system: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes the key pair; refuses to overwrite unless `force`.
pub fn write_pair(
    prefix: &Path,
    key: &SigningKey,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (private, public) = key_paths(prefix);
    if !force {
        for p in [&private, &public] {
            if p.exists() {
                anyhow::bail!("{} already exists (pass --force to overwrite)", p.display());
            }
        }
    }
    write_private(&private, &encode_key_text(&key.to_bytes()))
        .with_context(|| format!("cannot write {}", private.display()))?;
    std::fs::write(&public, encode_key_text(&key.verifying_key().to_bytes()))
        .with_context(|| format!("cannot write {}", public.display()))?;
    Ok((private, public))
}

/// Writes a file only its owner can read (mode 0600, also when it existed).
#[cfg(unix)]
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open; tighten it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

/// Writes a file (no permissions to set on this platform).
#[cfg(not(unix))]
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::VerifyingKey;
    use sha2::Digest as _;

    /// What an agent does: verify a signature over a sha256 digest (hex) with a public key.
    fn verify_sha256_hex(public: &VerifyingKey, sha256_hex: &str, sig: &[u8]) -> bool {
        let (Ok(digest), Ok(sig)) = (hex::decode(sha256_hex), Signature::from_slice(sig)) else {
            return false;
        };
        public.verify(&digest, &sig).is_ok()
    }

    #[test]
    fn signatures_cover_the_raw_digest() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let digest = sha2::Sha256::digest(b"firmware bytes");
        let hex_digest = hex::encode(digest);
        let sig = sign_sha256_hex(&key, &hex_digest).unwrap();
        assert!(verify_sha256_hex(
            &key.verifying_key(),
            &hex_digest,
            &sig.to_bytes()
        ));
        // The signature is over the 32 raw bytes, not the 64 hex characters.
        assert!(
            key.verifying_key()
                .verify(hex_digest.as_bytes(), &sig)
                .is_err()
        );
        assert!(!verify_sha256_hex(
            &key.verifying_key(),
            &"00".repeat(32),
            &sig.to_bytes()
        ));
        assert!(sign_sha256_hex(&key, "abcd").is_err());
    }

    #[test]
    fn keygen_writes_a_usable_pair_and_does_not_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("release");
        let key = generate().unwrap();
        let (private, public) = write_pair(&prefix, &key, false).unwrap();
        assert_eq!(private, dir.path().join("release.key"));
        let read = read_signing_key(&private).unwrap();
        assert_eq!(read.to_bytes(), key.to_bytes());
        let pubtext = std::fs::read_to_string(&public).unwrap();
        assert_eq!(
            decode_key_text(&pubtext).unwrap(),
            key.verifying_key().to_bytes()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = write_pair(&prefix, &key, false).unwrap_err();
        assert!(err.to_string().contains("already exists"));
        assert!(write_pair(&prefix, &generate().unwrap(), true).is_ok());
        assert_ne!(
            generate().unwrap().to_bytes(),
            generate().unwrap().to_bytes()
        );
    }
}

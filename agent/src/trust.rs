//! Which firmware this site installs: the trusted signing keys and the site's policy.
//!
//! ```toml
//! [trust]
//! require_signed = true                 # default: true when any key is configured
//! [trust.keys]                          # key id -> base64 (or 64 hex digits) ed25519 public key
//! release-2026 = "8Jm1y0s1Zk3a8Qj0p7cW8b0mJt9nHq0bq9v1m2x3y4E="
//! [trust.key_files]                     # key id -> file written by `otactl firmware keygen`
//! ops = "/etc/ota-agent/ops.pub"
//! ```
//!
//! A firmware signature is an ed25519 signature over the raw 32-byte SHA-256 digest of the image
//! (`otactl firmware sign`); otad forwards every recorded signature in the update command. Before
//! an image is downloaded — so long before any byte reaches a device — the agent decides:
//!
//! - a signature whose key id this site trusts and which verifies (strictly) over the announced
//!   digest accepts the image; the download then must hash to exactly that digest (5009 if not);
//! - with `require_signed`, an image without such a signature is refused with **5013**
//!   (pre-validation failed) and nothing is downloaded or sent;
//! - without `require_signed` (no keys configured, or `require_signed = false`), an image with no
//!   signature by a trusted key is accepted — but a signature that names a trusted key and does
//!   not verify refuses the image in every policy (5013): that is tampering, not absence.
//!
//! Signatures by key ids this site does not know are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use ota_domain::status::{ErrorCode, TaskError};
use ota_firmware::key_text::decode_key_text;
use ota_proto::v1 as pb;
use serde::Deserialize;

/// The `[trust]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Refuse images without a valid signature by a trusted key. Default: true when any key is
    /// configured.
    #[serde(default)]
    pub require_signed: Option<bool>,
    /// Key id -> public key (base64 of 32 bytes, or 64 hex digits).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Key id -> public key file (`otactl firmware keygen` writes `<PREFIX>.pub`).
    #[serde(default)]
    pub key_files: BTreeMap<String, PathBuf>,
}

/// The resolved policy.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: BTreeMap<String, VerifyingKey>,
    require_signed: bool,
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl TrustConfig {
    /// Resolves the keys (reading key files) and the policy; every problem at once.
    pub fn resolve(&self, base: &Path) -> Result<TrustPolicy, Vec<String>> {
        let mut errors = Vec::new();
        let mut keys = BTreeMap::new();
        let mut add = |id: &str, text: Result<String, String>, errors: &mut Vec<String>| {
            if !valid_key_id(id) {
                errors.push(format!(
                    "trust: key id {id:?} is not valid: 1-64 letters, digits, '.', '_' or '-'"
                ));
                return;
            }
            if keys.contains_key(id) {
                errors.push(format!("trust: key id {id:?} is configured twice"));
                return;
            }
            match text.and_then(|t| decode_key_text(&t)).and_then(|b| {
                VerifyingKey::from_bytes(&b)
                    .map_err(|_| "not a valid ed25519 public key".to_string())
            }) {
                Ok(k) => {
                    keys.insert(id.to_string(), k);
                }
                Err(e) => errors.push(format!("trust: key {id:?}: {e}")),
            }
        };
        for (id, text) in &self.keys {
            add(id, Ok(text.clone()), &mut errors);
        }
        for (id, path) in &self.key_files {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                base.join(path)
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()));
            add(id, text, &mut errors);
        }
        let require_signed = self.require_signed.unwrap_or(!keys.is_empty());
        if require_signed && keys.is_empty() {
            errors.push(
                "trust: require_signed = true needs at least one key in [trust.keys] or [trust.key_files]".into(),
            );
        }
        if errors.is_empty() {
            Ok(TrustPolicy {
                keys,
                require_signed,
            })
        } else {
            Err(errors)
        }
    }
}

impl TrustPolicy {
    /// A policy from keys (tests and embedding).
    pub fn new(keys: BTreeMap<String, VerifyingKey>, require_signed: bool) -> Self {
        Self {
            keys,
            require_signed,
        }
    }

    /// Whether unsigned images are refused.
    pub fn require_signed(&self) -> bool {
        self.require_signed
    }

    /// The trusted key ids.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    /// Decides whether the image a command names may be installed here. `Ok(Some(key id))`:
    /// signed by that trusted key; `Ok(None)`: unsigned, and the policy allows it.
    pub fn check(&self, firmware: &pb::FirmwareRef) -> Result<Option<String>, TaskError> {
        let refuse = |why: String| {
            Err(TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!(
                    "firmware {} refused by this site's signature policy: {why}; nothing was sent to the device",
                    firmware.id
                ),
            ))
        };
        let digest = match hex::decode(&firmware.sha256) {
            Ok(d) if d.len() == 32 => d,
            _ => return refuse("the command names no valid sha256".into()),
        };
        let mut bad = Vec::new();
        for s in &firmware.signatures {
            let Some(key) = self.keys.get(&s.key_id) else {
                continue;
            };
            let ok = Signature::from_slice(&s.signature)
                .is_ok_and(|sig| key.verify_strict(&digest, &sig).is_ok());
            if ok {
                return Ok(Some(s.key_id.clone()));
            }
            bad.push(s.key_id.clone());
        }
        if !bad.is_empty() {
            return refuse(format!(
                "the signature by trusted key {} does not verify (the image or the signature was altered)",
                bad.join(", ")
            ));
        }
        if self.require_signed {
            let known: Vec<&str> = self.key_ids();
            return refuse(if firmware.signatures.is_empty() {
                format!(
                    "it is not signed, and this site requires a signature by one of: {}",
                    known.join(", ")
                )
            } else {
                format!(
                    "it is signed only by keys this site does not trust ({}); trusted: {}",
                    firmware
                        .signatures
                        .iter()
                        .map(|s| s.key_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    known.join(", ")
                )
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::{Signer as _, SigningKey};
    use sha2::Digest as _;

    fn fw(signatures: Vec<(&str, Vec<u8>)>) -> pb::FirmwareRef {
        pb::FirmwareRef {
            id: "fw-1".into(),
            sha256: hex::encode(sha2::Sha256::digest(b"image")),
            size: 5,
            signatures: signatures
                .into_iter()
                .map(|(k, s)| pb::FirmwareSignature {
                    key_id: k.into(),
                    signature: s,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn sign(key: &SigningKey, data: &[u8]) -> Vec<u8> {
        key.sign(&sha2::Sha256::digest(data)).to_bytes().to_vec()
    }

    #[test]
    fn policies() {
        let trusted = SigningKey::from_bytes(&[1; 32]);
        let stranger = SigningKey::from_bytes(&[2; 32]);
        let policy = TrustConfig {
            keys: [(
                "release".to_string(),
                STANDARD.encode(trusted.verifying_key().to_bytes()),
            )]
            .into(),
            ..Default::default()
        }
        .resolve(Path::new("/"))
        .unwrap();
        assert!(policy.require_signed(), "keys make signatures required");

        let good = fw(vec![("release", sign(&trusted, b"image"))]);
        assert_eq!(policy.check(&good), Ok(Some("release".into())));
        // Other keys' signatures are ignored next to a good one.
        let mixed = fw(vec![
            ("unknown", vec![0; 64]),
            ("release", sign(&trusted, b"image")),
        ]);
        assert!(policy.check(&mixed).is_ok());

        for (what, bad) in [
            ("unsigned", fw(vec![])),
            (
                "untrusted key",
                fw(vec![("other", sign(&stranger, b"image"))]),
            ),
            (
                "wrong key under a trusted id",
                fw(vec![("release", sign(&stranger, b"image"))]),
            ),
            (
                "other image",
                fw(vec![("release", sign(&trusted, b"imagE"))]),
            ),
            ("short signature", fw(vec![("release", vec![1; 10])])),
        ] {
            let e = policy.check(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::PrevalidationFailed, "{what}");
            assert!(e.message.contains("nothing was sent"), "{what}: {e:?}");
        }

        let lax = TrustPolicy::default();
        assert!(!lax.require_signed());
        assert_eq!(lax.check(&fw(vec![])), Ok(None));
        let permissive = TrustPolicy::new(policy.keys.clone(), false);
        assert_eq!(permissive.check(&fw(vec![])), Ok(None));
        assert!(
            permissive
                .check(&fw(vec![("release", sign(&stranger, b"image"))]))
                .is_err(),
            "a trusted key id with a bad signature is refused even when unsigned images are allowed"
        );
    }

    #[test]
    fn configuration_problems_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let public = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
        std::fs::write(
            dir.path().join("ops.pub"),
            format!("# ops key\n{}\n", STANDARD.encode(public)),
        )
        .unwrap();
        let ok = TrustConfig {
            key_files: [("ops".to_string(), PathBuf::from("ops.pub"))].into(),
            require_signed: Some(false),
            ..Default::default()
        }
        .resolve(dir.path())
        .unwrap();
        assert_eq!(ok.key_ids(), ["ops"]);
        assert!(!ok.require_signed());

        let errors = TrustConfig {
            keys: [
                ("bad id!".to_string(), STANDARD.encode(public)),
                ("short".to_string(), "AAAA".to_string()),
            ]
            .into(),
            key_files: [("missing".to_string(), PathBuf::from("nope.pub"))].into(),
            ..Default::default()
        }
        .resolve(dir.path())
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let none = TrustConfig {
            require_signed: Some(true),
            ..Default::default()
        }
        .resolve(dir.path())
        .unwrap_err();
        assert!(none[0].contains("at least one key"), "{none:?}");
    }
}

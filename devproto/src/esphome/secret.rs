//! The two secrets of ESPHome OTA: the OTA password and the 32-byte Noise pre-shared key.
//!
//! Both format as `<redacted>` in `Debug`, so a configuration or machine printed with `{:?}`
//! shows neither. What this module does not do: read secrets from files or decode base64 (the
//! agent's configuration does that and hands over the raw value).

use std::fmt;

/// An ESPHome OTA password. The empty password means "no password" to the device.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The password's bytes, for hashing only.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// True for the empty password (the device then sends no challenge).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Noise pre-shared key (ESPHome's `encryption: key:`, base64 of 32 bytes in YAML).
#[derive(Clone, PartialEq, Eq)]
pub struct NoiseKey([u8; 32]);

impl NoiseKey {
    /// Wraps the 32 raw key bytes (already base64-decoded).
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Wraps a key from a slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The raw key, for the Noise handshake only.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let pw = Password::new("hunter2");
        let key = NoiseKey::new([7; 32]);
        assert_eq!(format!("{pw:?} {key:?}"), "<redacted> <redacted>");
        assert!(NoiseKey::from_slice(&[1; 31]).is_none());
        assert!(NoiseKey::from_slice(&[1; 32]).is_some());
    }
}

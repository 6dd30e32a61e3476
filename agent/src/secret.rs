//! Device secrets (ESPHome OTA passwords, Noise keys, MQTT credentials).
//!
//! A [`Secret`] never prints itself: `Debug` and `Display` show `<redacted>`, so a secret that
//! ends up in a log line, a trace attribute, an error message or an event shows nothing. Secrets
//! live only in the agent's config or in secret files next to it; they never travel to the server.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// A secret string whose formatting is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file, trimming one trailing newline.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let mut value = std::fs::read_to_string(path)?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(Self(value))
    }

    /// The secret itself. Call this only where the value goes on the wire to the device.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_secret_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "pa ss\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "pa ss");
    }
}

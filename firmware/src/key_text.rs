//! The text form of firmware signing keys, shared by `otactl` (which writes and reads key files)
//! and the agent (which reads trusted public keys from its configuration).
//!
//! Format: one line holding the standard base64 encoding (with padding) of 32 bytes (an ed25519
//! public key or seed), followed by a newline. Reading also accepts 64 hex digits, and ignores
//! blank lines and lines starting with `#`.
//!
//! What it does not do: sign, verify, or check that the bytes are a valid ed25519 point (the
//! callers own `ed25519-dalek`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Decodes the 32 bytes a key text holds (base64 or 64 hex digits; blank and `#` lines ignored).
pub fn decode_key_text(text: &str) -> Result<[u8; 32], String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines.as_slice() else {
        return Err(format!(
            "expected one line with the base64 of 32 bytes, found {} lines",
            lines.len()
        ));
    };
    let bytes = if line.len() == 64 && line.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(line).map_err(|e| e.to_string())?
    } else {
        STANDARD
            .decode(line)
            .map_err(|e| format!("not base64 ({e})"))?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected 32 bytes, found {}", bytes.len()))
}

/// The text of a key file for these bytes.
pub fn encode_key_text(bytes: &[u8; 32]) -> String {
    format!("{}\n", STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips_and_rejects_junk() {
        let bytes = [7u8; 32];
        let text = encode_key_text(&bytes);
        assert_eq!(text, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n");
        assert_eq!(decode_key_text(&text), Ok(bytes));
        assert_eq!(decode_key_text(&format!("# comment\n\n{text}")), Ok(bytes));
        assert_eq!(decode_key_text(&hex::encode(bytes)), Ok(bytes));
        assert!(decode_key_text("").unwrap_err().contains("found 0 lines"));
        assert!(
            decode_key_text("AAAA")
                .unwrap_err()
                .contains("expected 32 bytes")
        );
        assert!(decode_key_text("!!").unwrap_err().contains("not base64"));
        assert!(decode_key_text("a\nb").is_err());
    }
}

//! ESPHome OTA challenge-response authentication: the SHA256 scheme (devices since 2025.10,
//! mandatory since 2026.1) and the legacy MD5 scheme (devices up to 2025.12).
//!
//! Both are `hex(H(password ‖ nonce ‖ cnonce))` over ASCII hex strings; the device draws the
//! nonce, the uploader the cnonce. What this module does not do: any I/O or state; the
//! machines call it.

use md5::Md5;
use sha2::{Digest, Sha256};

use super::entropy::SeededRng;
use super::secret::Password;
use super::wire::response;

/// Which challenge the device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthScheme {
    /// `0x02` + 64 hex nonce; SHA-256.
    Sha256,
    /// `0x01` + 32 hex nonce; MD5 (legacy devices).
    Md5,
}

impl AuthScheme {
    /// The challenge byte.
    pub fn request_byte(self) -> u8 {
        match self {
            Self::Sha256 => response::REQUEST_SHA256_AUTH,
            Self::Md5 => response::REQUEST_AUTH,
        }
    }

    /// The scheme a challenge byte asks for.
    pub fn from_request_byte(byte: u8) -> Option<Self> {
        match byte {
            response::REQUEST_SHA256_AUTH => Some(Self::Sha256),
            response::REQUEST_AUTH => Some(Self::Md5),
            _ => None,
        }
    }

    /// Length of nonce, cnonce and response in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Md5 => 32,
        }
    }

    /// `hex(H(password ‖ nonce ‖ cnonce))`, lowercase.
    pub(crate) fn response(self, password: &Password, nonce: &[u8], cnonce: &[u8]) -> String {
        match self {
            Self::Sha256 => {
                let mut h = Sha256::new();
                h.update(password.bytes());
                h.update(nonce);
                h.update(cnonce);
                hex::encode(h.finalize())
            }
            Self::Md5 => {
                let mut h = Md5::new();
                h.update(password.bytes());
                h.update(nonce);
                h.update(cnonce);
                hex::encode(h.finalize())
            }
        }
    }

    /// A device nonce as ESPHome draws it: SHA256 = hex(sha256(8 random bytes)); MD5 =
    /// hex(md5("%08x" of a random u32)).
    pub(crate) fn device_nonce(self, rng: &mut SeededRng) -> String {
        match self {
            Self::Sha256 => hex::encode(Sha256::digest(rng.bytes::<8>())),
            Self::Md5 => {
                let n = u32::from_le_bytes(rng.bytes::<4>());
                hex::encode(Md5::digest(format!("{n:08x}").as_bytes()))
            }
        }
    }

    /// An uploader cnonce: `hex_len` random hex characters, like `secrets.token_hex`.
    pub(crate) fn client_cnonce(self, rng: &mut SeededRng) -> String {
        let mut raw = vec![0u8; self.hex_len() / 2];
        rng.fill(&mut raw);
        hex::encode(raw)
    }

    /// Checks a response case-insensitively, as the device does (it parses the hex).
    pub(crate) fn verify(
        self,
        password: &Password,
        nonce: &[u8],
        cnonce: &[u8],
        response: &[u8],
    ) -> bool {
        let expected = self.response(password, nonce, cnonce);
        expected.len() == response.len()
            && expected
                .bytes()
                .zip(response)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_match_the_formula() {
        let pw = Password::new("secret");
        let r = AuthScheme::Sha256.response(&pw, b"ab", b"cd");
        assert_eq!(r, hex::encode(Sha256::digest(b"secretabcd")));
        let r = AuthScheme::Md5.response(&pw, b"ab", b"cd");
        assert_eq!(r, hex::encode(Md5::digest(b"secretabcd")));
        assert!(AuthScheme::Md5.verify(&pw, b"ab", b"cd", r.to_uppercase().as_bytes()));
        assert!(!AuthScheme::Md5.verify(&pw, b"ab", b"ce", r.as_bytes()));
    }

    #[test]
    fn nonces_have_the_scheme_length() {
        let mut rng = SeededRng::new([3; 32], crate::esphome::entropy::Purpose::OtaDeviceNonce);
        for s in [AuthScheme::Sha256, AuthScheme::Md5] {
            assert_eq!(s.device_nonce(&mut rng).len(), s.hex_len());
            assert_eq!(s.client_cnonce(&mut rng).len(), s.hex_len());
        }
    }
}

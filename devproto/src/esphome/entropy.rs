//! Deterministic randomness from caller-supplied entropy, for the ESPHome OTA and native API
//! machines.
//!
//! The machines never ask the operating system for randomness, just as they never read the
//! clock: the driver passes 32 bytes of OS entropy at construction and everything random (the
//! device's nonce, the uploader's cnonce, Noise ephemeral keys) comes from a ChaCha20 CSPRNG
//! (`rand_chacha`) seeded with them. Each [`Purpose`] reads its own ChaCha20 stream of that
//! seed, so no two purposes ever see the same bytes (a nonce the peer sees must not reveal
//! anything about an ephemeral key). Tests pass fixed bytes and get byte-exact transcripts.
//!
//! What it does not do: gather entropy. Security rests on the 32 bytes being unpredictable.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng as _, SeedableRng as _};

/// What a stream of random bytes is for; each purpose is its own ChaCha20 stream (nonce) of
/// the seed. The numbers are part of the byte-exact test transcripts: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The OTA device's authentication nonce.
    OtaDeviceNonce = 1,
    /// The OTA uploader's cnonce.
    OtaClientCnonce = 2,
    /// The OTA device's Noise ephemeral key.
    OtaDeviceNoise = 3,
    /// The OTA uploader's Noise ephemeral key.
    OtaClientNoise = 4,
    /// The native API client's Noise ephemeral key.
    ApiClientNoise = 5,
    /// The native API device's Noise ephemeral key.
    ApiServerNoise = 6,
}

/// A ChaCha20 byte stream over a 32-byte seed, one stream per [`Purpose`]. No `Debug`: its
/// state is the seed.
#[derive(Clone)]
pub(crate) struct SeededRng(ChaCha20Rng);

impl SeededRng {
    /// The stream for `purpose` of `seed`.
    pub(crate) fn new(seed: [u8; 32], purpose: Purpose) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        rng.set_stream(purpose as u64);
        Self(rng)
    }

    /// Fills `out` with the next bytes of the stream. Whole 32-bit words are taken per call (a
    /// partial last word is dropped), so the bytes depend on how they are asked for; the
    /// machines always ask the same way.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        self.0.fill_bytes(out);
    }

    /// The next `N` bytes.
    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out);
        out
    }
}

impl snow::types::Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_separated_by_purpose() {
        let mut a = SeededRng::new([1; 32], Purpose::OtaDeviceNonce);
        let mut a2 = SeededRng::new([1; 32], Purpose::OtaDeviceNonce);
        let mut b = SeededRng::new([1; 32], Purpose::OtaDeviceNoise);
        let mut other_seed = SeededRng::new([2; 32], Purpose::OtaDeviceNonce);
        let x: [u8; 70] = a.bytes();
        assert_eq!(x, a2.bytes::<70>());
        assert_ne!(x, b.bytes::<70>());
        assert_ne!(x, other_seed.bytes::<70>());
    }

    #[test]
    fn it_is_chacha20_with_the_purpose_as_stream() {
        // RFC 7539-style ChaCha20 keystream of key = seed, 64-bit nonce = purpose, counter 0:
        // the all-zero key and nonce give the published first block (RFC 7539 A.1 test 1).
        let mut z = ChaCha20Rng::from_seed([0; 32]);
        let mut first = [0u8; 8];
        z.fill_bytes(&mut first);
        assert_eq!(hex::encode(first), "76b8e0ada0f13d90");
        let mut s = SeededRng::new([0; 32], Purpose::OtaDeviceNonce);
        let mut z1 = ChaCha20Rng::from_seed([0; 32]);
        z1.set_stream(1);
        let mut want = [0u8; 8];
        z1.fill_bytes(&mut want);
        assert_eq!(s.bytes::<8>(), want);
    }
}

//! Deterministic randomness from caller-supplied entropy.
//!
//! The machines never ask the operating system for randomness, just as they never read the
//! clock: the driver passes 32 bytes of OS entropy at construction and everything random (the
//! device's nonce, the uploader's cnonce, Noise ephemeral keys) is derived from them with
//! SHA-256 in counter mode. Tests pass fixed bytes and get byte-exact transcripts.
//!
//! What it does not do: gather entropy. Security rests on the 32 bytes being unpredictable.

use sha2::{Digest, Sha256};

/// A SHA-256 counter-mode byte stream over a 32-byte seed and a purpose label.
#[derive(Clone)]
pub(crate) struct Drbg {
    seed: [u8; 32],
    label: &'static [u8],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl Drbg {
    /// A stream for one purpose; different labels give independent streams.
    pub(crate) fn new(seed: [u8; 32], label: &'static [u8]) -> Self {
        Self {
            seed,
            label,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// Fills `out` with the next bytes of the stream.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.label);
                h.update(self.counter.to_le_bytes());
                self.block.copy_from_slice(&h.finalize());
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }

    /// The next `N` bytes.
    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out);
        out
    }
}

impl snow::types::Random for Drbg {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_separated_by_label() {
        let mut a = Drbg::new([1; 32], b"a");
        let mut a2 = Drbg::new([1; 32], b"a");
        let mut b = Drbg::new([1; 32], b"b");
        let x: [u8; 40] = a.bytes();
        let mut y = [0u8; 40];
        a2.fill(&mut y[..7]);
        a2.fill(&mut y[7..]);
        assert_eq!(x, y);
        assert_ne!(x, b.bytes::<40>());
    }
}

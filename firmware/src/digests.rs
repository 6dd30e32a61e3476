//! Content digests of a firmware file, computed incrementally in one pass.
//!
//! What it does: [`FirmwareHasher`] takes the file in chunks as it streams in (an upload, a
//! download) and produces [`Digests`]: SHA-256, MD5 and SHA-512 of every byte fed to it, plus the
//! byte count. The digests cover the *whole file* as received, including any vendor prefix or
//! trailer around a Zigbee image: that is what zigbee-OTA's `sha512` in `index.json` and
//! zigbee-herdsman's checksum validation cover, and what ESPHome's OTA protocol sends as MD5 or
//! SHA-256 of the file.
//!
//! What it does not do: read files or sockets (the caller feeds bytes), or compare digests
//! against expectations (compare the hex strings).

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// Computes SHA-256, MD5 and SHA-512 of a byte stream in one pass.
///
/// ```
/// use ota_firmware::{Digests, FirmwareHasher};
///
/// let mut hasher = FirmwareHasher::new();
/// hasher.update(b"hello ");
/// hasher.update(b"world");
/// let digests = hasher.finish();
/// assert_eq!(digests, Digests::of(b"hello world"));
/// assert_eq!(digests.len(), 11);
/// assert_eq!(digests.md5_hex(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
/// ```
#[derive(Clone, Default)]
pub struct FirmwareHasher {
    sha256: Sha256,
    md5: Md5,
    sha512: Sha512,
    len: u64,
}

impl std::fmt::Debug for FirmwareHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareHasher")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl FirmwareHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the file.
    pub fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        self.md5.update(chunk);
        self.sha512.update(chunk);
        self.len = self
            .len
            .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
    }

    /// Number of bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes have been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digests of everything fed so far.
    pub fn finish(self) -> Digests {
        Digests {
            len: self.len,
            sha256: self.sha256.finalize().into(),
            md5: self.md5.finalize().into(),
            sha512: self.sha512.finalize().into(),
        }
    }
}

/// SHA-256, MD5 and SHA-512 of a whole file, with its length.
///
/// Serialises as `{"len": .., "sha256": "<hex>", "md5": "<hex>", "sha512": "<hex>"}` with
/// lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "DigestsRepr", try_from = "DigestsRepr")]
pub struct Digests {
    len: u64,
    sha256: [u8; 32],
    md5: [u8; 16],
    sha512: [u8; 64],
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digests")
            .field("len", &self.len)
            .field("sha256", &self.sha256_hex())
            .field("md5", &self.md5_hex())
            .field("sha512", &self.sha512_hex())
            .finish()
    }
}

impl Digests {
    /// Digests of a file already in memory.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = FirmwareHasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// Number of bytes hashed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the hashed file was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-256 bytes.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// MD5 bytes.
    pub fn md5(&self) -> &[u8; 16] {
        &self.md5
    }

    /// SHA-512 bytes.
    pub fn sha512(&self) -> &[u8; 64] {
        &self.sha512
    }

    /// SHA-256 as 64 lowercase hex digits.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// MD5 as 32 lowercase hex digits.
    pub fn md5_hex(&self) -> String {
        hex::encode(self.md5)
    }

    /// SHA-512 as 128 lowercase hex digits (the form of zigbee-OTA's `index.json` `sha512`).
    pub fn sha512_hex(&self) -> String {
        hex::encode(self.sha512)
    }
}

/// Stored form of [`Digests`].
#[derive(Serialize, Deserialize)]
struct DigestsRepr {
    len: u64,
    sha256: String,
    md5: String,
    sha512: String,
}

impl From<Digests> for DigestsRepr {
    fn from(d: Digests) -> Self {
        Self {
            len: d.len,
            sha256: d.sha256_hex(),
            md5: d.md5_hex(),
            sha512: d.sha512_hex(),
        }
    }
}

/// A stored digest that is not hex of the right length.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored {name} digest: expected {expected} hex digits, got {got:?}")]
pub struct DigestDecodeError {
    name: &'static str,
    expected: usize,
    got: String,
}

fn decode_hex<const N: usize>(name: &'static str, s: String) -> Result<[u8; N], DigestDecodeError> {
    let mut out = [0u8; N];
    match hex::decode_to_slice(&s, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(DigestDecodeError {
            name,
            expected: N * 2,
            got: s,
        }),
    }
}

impl TryFrom<DigestsRepr> for Digests {
    type Error = DigestDecodeError;

    fn try_from(r: DigestsRepr) -> Result<Self, Self::Error> {
        Ok(Self {
            len: r.len,
            sha256: decode_hex("sha256", r.sha256)?,
            md5: decode_hex("md5", r.md5)?,
            sha512: decode_hex("sha512", r.sha512)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_of_the_empty_input() {
        let d = FirmwareHasher::new().finish();
        assert!(d.is_empty());
        assert_eq!(
            d.sha256_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.md5_hex(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            d.sha512_hex(),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
    }

    #[test]
    fn known_vectors_of_abc() {
        let d = Digests::of(b"abc");
        assert_eq!(d.len(), 3);
        assert_eq!(
            d.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.md5_hex(), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            d.sha512_hex(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = Digests::of(&data);
        for chunk in [1usize, 3, 63, 64, 65, 1000, 9999] {
            let mut h = FirmwareHasher::new();
            for c in data.chunks(chunk) {
                h.update(c);
            }
            assert_eq!(h.len(), 10_000);
            assert_eq!(h.finish(), whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn serde_round_trip_uses_lowercase_hex() {
        let d = Digests::of(b"abc");
        let json = serde_json::to_string(&d).expect("serialise");
        assert!(json.contains("\"md5\":\"900150983cd24fb0d6963f7d28e17f72\""));
        let back: Digests = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, d);
        let bad = json.replace("900150983cd24fb0d6963f7d28e17f72", "zz");
        let err = serde_json::from_str::<Digests>(&bad).expect_err("bad hex refused");
        assert!(
            err.to_string().contains("invalid stored md5 digest"),
            "{err}"
        );
    }
}

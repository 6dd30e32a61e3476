//! Targeted damage to built images, so each refusal can be tested on its own.
//!
//! What it does: flips an ESP checksum (re-sealing the SHA-256 so only the checksum is wrong),
//! breaks an appended SHA-256, damages segment data, truncates, and rewrites Zigbee header
//! fields in place. What it does not do: anything subtle; each helper panics with a message if
//! its input is not the kind of valid image it expects.

use sha2::{Digest, Sha256};

use crate::esp::{self, EspImage};

fn parsed(image: &[u8]) -> EspImage {
    esp::parse_image(image, None).expect("corrupt helpers need a valid ESP image to start from")
}

fn index(n: u64) -> usize {
    usize::try_from(n).expect("offset fits usize")
}

/// Flips every bit of the checksum byte of a valid ESP image and, if a SHA-256 is appended,
/// recomputes it, so the image fails only on its checksum.
pub fn flip_esp_checksum(image: &mut [u8]) {
    let parsed = parsed(image);
    let hash_len = if parsed.sha256.is_some() { 32 } else { 0 };
    let checksum_at = index(parsed.image_len) - hash_len - 1;
    image[checksum_at] ^= 0xFF;
    if hash_len > 0 {
        let digest: [u8; 32] = Sha256::digest(&image[..=checksum_at]).into();
        image[checksum_at + 1..checksum_at + 33].copy_from_slice(&digest);
    }
}

/// Flips one bit of the appended SHA-256 of a valid ESP32-family image.
pub fn break_esp_sha256(image: &mut [u8]) {
    let parsed = parsed(image);
    assert!(parsed.sha256.is_some(), "image has no appended SHA-256");
    image[index(parsed.image_len) - 1] ^= 0x01;
}

/// Flips one byte in the middle of the last segment's data, so the checksum (and SHA-256) no
/// longer match.
pub fn damage_esp_segment_data(image: &mut [u8]) {
    let parsed = parsed(image);
    let last = parsed.segments.last().expect("at least one segment");
    assert!(last.len > 0, "last segment is empty");
    image[index(last.data_offset) + index(u64::from(last.len)) / 2] ^= 0x5A;
}

/// The first `len` bytes.
pub fn truncated(bytes: &[u8], len: usize) -> Vec<u8> {
    bytes[..len.min(bytes.len())].to_vec()
}

/// Rewrites the total image size of the Zigbee OTA file in place (the first magic found).
pub fn set_zigbee_total_image_size(file: &mut [u8], total: u32) {
    let at = crate::zigbee::find_magic(file).expect("a Zigbee OTA file") + 52;
    file[at..at + 4].copy_from_slice(&total.to_le_bytes());
}

//! Zigbee OTA files as the simulated zigbee2mqtt sees them: parse what it fetched, and build
//! small valid files for demos.
//!
//! What it does: [`parse`] reads an upgrade file with `ota_firmware::zigbee::parse` (the
//! herdsman-compatible parser: magic anywhere, header, sub-elements tiling the image) and keeps
//! what a simulated device checks (manufacturer code, image type, file version, header string,
//! total image size); [`build`] writes a spec-conforming file (56-byte header, one
//! upgrade-image sub-element, deterministic payload) without needing `ota-firmware`'s
//! test builders.
//! What it does not do: verify signatures or CRCs (neither does zigbee-herdsman).

use ota_firmware::zigbee;

/// The upgrade file identifier as it appears in a file.
pub const MAGIC: [u8; 4] = zigbee::MAGIC_BYTES;

/// The header facts the simulator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    /// Manufacturer code.
    pub manufacturer_code: u16,
    /// Image type.
    pub image_type: u16,
    /// File version.
    pub file_version: u32,
    /// Header string (NULs removed, padding trimmed).
    pub header_string: String,
    /// Total image size (what the device is told to download).
    pub total_image_size: u32,
    /// Offset of the magic in the file (vendor prefix length).
    pub offset: usize,
}

impl ImageHeader {
    /// The bytes the device receives: `total_image_size` bytes from the magic.
    pub fn image<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.offset..self.offset + self.total_image_size as usize]
    }
}

/// Why a file is not a valid OTA file (herdsman logs it and answers NO_IMAGE_AVAILABLE).
pub type ImageError = zigbee::ZigbeeError;

/// Parses an OTA upgrade file.
pub fn parse(file: &[u8]) -> Result<ImageHeader, ImageError> {
    let f = zigbee::parse(file)?;
    Ok(ImageHeader {
        manufacturer_code: f.header.manufacturer_code,
        image_type: f.header.image_type,
        file_version: f.header.file_version,
        header_string: f.header.header_string.clone(),
        total_image_size: f.header.total_image_size,
        offset: usize::try_from(f.prefix_len).unwrap_or(usize::MAX),
    })
}

/// Builds a valid OTA file: a 56-byte header (stack version 2, the given header string, cut to
/// 32 bytes) and one upgrade-image sub-element with `payload_len` deterministic bytes that
/// depend on the file version, so two versions never share bytes by accident.
pub fn build(
    manufacturer_code: u16,
    image_type: u16,
    file_version: u32,
    header_string: &str,
    payload_len: usize,
) -> Vec<u8> {
    let total = 56 + 6 + payload_len;
    let mut f = Vec::with_capacity(total);
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&0x0100u16.to_le_bytes());
    f.extend_from_slice(&56u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&manufacturer_code.to_le_bytes());
    f.extend_from_slice(&image_type.to_le_bytes());
    f.extend_from_slice(&file_version.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    let mut hs = [0u8; 32];
    let n = header_string.len().min(32);
    hs[..n].copy_from_slice(&header_string.as_bytes()[..n]);
    f.extend_from_slice(&hs);
    f.extend_from_slice(&(total as u32).to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&(payload_len as u32).to_le_bytes());
    let mut x = file_version ^ 0x9E37_79B9;
    f.extend((0..payload_len).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_it_parses() {
        let f = build(0x117C, 0x2803, 0x2309_3631, "sim image", 1000);
        let h = parse(&f).unwrap();
        assert_eq!(
            (h.manufacturer_code, h.image_type, h.file_version),
            (0x117C, 0x2803, 0x2309_3631)
        );
        assert_eq!(h.header_string, "sim image");
        assert_eq!(h.total_image_size as usize, f.len());
        let mut prefixed = b"NGIS-prefix".to_vec();
        prefixed.extend_from_slice(&f);
        prefixed.extend_from_slice(&[0; 16]);
        let h2 = parse(&prefixed).unwrap();
        assert_eq!(h2.offset, 11);
        assert_eq!(h2.image(&prefixed), &f[..]);
        assert!(parse(b"not an image").is_err());
        assert!(parse(&f[..f.len() - 1]).is_err());
    }
}

//! Zigbee OTA files as the simulated zigbee2mqtt sees them: parse what it fetched, and build
//! small valid files for tests and demos.
//!
//! What it does: [`parse`] reads the header of an upgrade file the way zigbee-herdsman does
//! (find the magic `1E F1 EE 0B` anywhere, read manufacturer code, image type, file version,
//! header string and total image size, require the image to be complete); [`build`] writes a
//! spec-conforming file (56-byte header, one upgrade-image sub-element, deterministic payload).
//! What it does not do: validate sub-elements, signatures or CRCs (`ota-firmware` is the real
//! parser; this is the simulator's view of a device accepting an image).

/// The upgrade file identifier as it appears in a file.
pub const MAGIC: [u8; 4] = [0x1E, 0xF1, 0xEE, 0x0B];

/// The header facts the simulator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    /// Manufacturer code.
    pub manufacturer_code: u16,
    /// Image type.
    pub image_type: u16,
    /// File version.
    pub file_version: u32,
    /// Header string, NULs removed, trailing spaces trimmed.
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

/// Why a file is not a valid OTA file (herdsman's wording where it has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No magic, or too short for a header.
    #[error("Not a valid OTA file")]
    NotOta,
    /// The total image size runs past the end of the file.
    #[error("Size mismatch")]
    SizeMismatch,
}

/// Parses the header of an OTA upgrade file.
pub fn parse(file: &[u8]) -> Result<ImageHeader, ImageError> {
    let offset = file
        .windows(4)
        .position(|w| w == MAGIC)
        .ok_or(ImageError::NotOta)?;
    let h = &file[offset..];
    if h.len() < 56 {
        return Err(ImageError::NotOta);
    }
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let header_len = usize::from(u16_at(6));
    let total_image_size = u32_at(52);
    if header_len < 56 || (total_image_size as usize) < header_len {
        return Err(ImageError::NotOta);
    }
    if total_image_size as usize > h.len() {
        return Err(ImageError::SizeMismatch);
    }
    let header_string = String::from_utf8_lossy(&h[20..52])
        .replace('\0', "")
        .trim_end()
        .to_string();
    Ok(ImageHeader {
        manufacturer_code: u16_at(10),
        image_type: u16_at(12),
        file_version: u32_at(14),
        header_string,
        total_image_size,
        offset,
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
        assert_eq!(parse(b"not an image"), Err(ImageError::NotOta));
        assert_eq!(parse(&f[..f.len() - 1]), Err(ImageError::SizeMismatch));
    }
}

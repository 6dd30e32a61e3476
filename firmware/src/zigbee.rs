//! Zigbee OTA upgrade files (ZCL OTA Upgrade cluster file format).
//!
//! What it does: [`parse`] finds the upgrade file identifier `0x0BEEF11E` (bytes `1E F1 EE 0B`)
//! anywhere in the input, decodes the header and its optional fields, and walks the sub-elements
//! from the header length to the total image size. The result, [`ZigbeeOtaFile`], records the
//! parsed facts and where the image proper (`magic .. magic + total image size`) sits in the
//! input. Anything that is not a well-formed upgrade file is refused with a [`ZigbeeError`]
//! saying what is wrong.
//!
//! What it does not do: check the image against an index entry or a device (manufacturer, image
//! type, file version, hardware version are reported, never judged), verify vendor signatures or
//! Silabs GBL/EBL CRCs, hash the file (see [`crate::FirmwareHasher`]), or do any I/O.
//!
//! # Policy
//!
//! The parser accepts exactly the files zigbee-herdsman (zigbee2mqtt ≥ 2.8) accepts, except
//! where a rule below is stricter; nothing it accepts would be refused by herdsman.
//!
//! - **Vendor prefix and trailer.** The magic is searched for anywhere (first occurrence, like
//!   herdsman's `indexOf`): IKEA files carry a 488–712 byte `NGIS` prefix and a 512 byte trailer,
//!   Legrand a 4 byte prefix, Salus 4 trailing bytes. The bytes before the magic are reported as
//!   [`ZigbeeOtaFile::prefix_len`], those after `magic + total image size` as
//!   [`ZigbeeOtaFile::trailing_len`]; both are tolerated.
//! - **Header version.** Only `0x0100` is accepted (every one of the 902 files in Koenkk/zigbee-OTA
//!   uses it, and it is the only version the ZCL specification defines). Herdsman does not look at
//!   this field; a different value means either a future format whose layout we cannot know, or
//!   not an OTA file at all, so it is refused rather than guessed.
//! - **Header length.** It must equal exactly what the field control announces: 56 bytes, +1 for
//!   the security credential version (bit 0), +8 for the upgrade file destination (bit 1), +4 for
//!   the hardware versions (bit 2). Reserved field-control bits are reported, not judged.
//! - **Truncation.** A total image size larger than the bytes after the magic means the file was
//!   cut short: it is always refused ([`ZigbeeError::Truncated`]), whatever the sub-elements say.
//! - **Sub-elements.** Each is `tag: u16, length: u32, data`; tag `0xF000` (Telink AES) has two
//!   extra information bytes, so its element header is 8 bytes and its length counts only the
//!   data after them. The elements must tile the image exactly from the header length to the
//!   total image size.
//! - **Overlong last element (herdsman parity).** About 90 real files (Develco, Lumi, Hue
//!   EFR32MG13) end with a vendor element whose declared length runs past the end of the image.
//!   Herdsman accepts them because its element slices clamp at the end of the buffer and the file
//!   ends exactly at the total image size. This parser does the same, and only then: when the
//!   image is *not* followed by trailing bytes, the element's data is clamped to the end of the
//!   image, and the element is reported with [`SubElement::declared_len`] larger than
//!   [`SubElement::len`] ([`ZigbeeOtaFile::has_clamped_element`]). With trailing bytes present,
//!   herdsman's clamp would run into the trailer and fail its size check, so the file is refused
//!   ([`ZigbeeError::ElementOverrun`]). Callers that want strict files can refuse
//!   `has_clamped_element()` themselves.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::bytes::{array_at, to_u64, to_usize, u8_at, u16_at, u32_at, u64_at};

/// The upgrade file identifier, as a little-endian `u32`.
pub const MAGIC: u32 = 0x0BEE_F11E;
/// The upgrade file identifier as it appears in the file.
pub const MAGIC_BYTES: [u8; 4] = MAGIC.to_le_bytes();
/// The only header version this parser accepts.
pub const HEADER_VERSION: u16 = 0x0100;
/// Length of the header without optional fields.
pub const BASE_HEADER_LEN: u16 = 56;
/// Manufacturer-specific tag that zigbee-herdsman (and Telink's SDK) treat as an AES-encrypted
/// upgrade image with two extra element-header bytes.
pub const TELINK_AES_TAG: u16 = 0xF000;

/// Field-control bit: the security credential version (1 byte) is present.
pub const FC_SECURITY_CREDENTIAL_VERSION: u16 = 0x0001;
/// Field-control bit: the upgrade file destination (8-byte IEEE address) is present.
pub const FC_UPGRADE_FILE_DESTINATION: u16 = 0x0002;
/// Field-control bit: minimum and maximum hardware versions (2 + 2 bytes) are present.
pub const FC_HARDWARE_VERSIONS: u16 = 0x0004;

/// Length of a sub-element header (tag + length).
const ELEMENT_HEADER_LEN: usize = 6;
/// Length of the Telink AES sub-element header (tag + length + 2 information bytes).
const TELINK_ELEMENT_HEADER_LEN: usize = 8;

/// A parsed Zigbee OTA upgrade file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZigbeeOtaFile {
    /// Bytes before the magic (vendor prefix, e.g. IKEA's 488-byte `NGIS` block).
    pub prefix_len: u64,
    /// Bytes after `magic + total image size` (e.g. IKEA's 512-byte trailer).
    pub trailing_len: u64,
    /// The header.
    pub header: ZigbeeOtaHeader,
    /// Sub-elements in file order.
    pub elements: Vec<SubElement>,
}

/// The OTA header, with its optional fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZigbeeOtaHeader {
    /// Header version (always [`HEADER_VERSION`] once parsed).
    pub header_version: u16,
    /// Header length including the optional fields.
    pub header_len: u16,
    /// Header field control (bit 0 security credential version, bit 1 upgrade file destination,
    /// bit 2 hardware versions; other bits reserved).
    pub field_control: u16,
    /// Manufacturer code (0xFFFF = wildcard).
    pub manufacturer_code: u16,
    /// Image type (0xFFC0 security credential, 0xFFC1 configuration, 0xFFC2 log, 0xFFFF wildcard).
    pub image_type: u16,
    /// File version: what zigbee2mqtt publishes as installed/latest version.
    pub file_version: u32,
    /// Zigbee stack version (0 = 2006, 1 = 2007, 2 = PRO, 3 = IP).
    pub stack_version: u16,
    /// Header string: lossy UTF-8 of the 32-byte field with every NUL removed (as zigbee-OTA's
    /// `otaHeaderString`) and trailing spaces and 0xFF padding trimmed.
    pub header_string: String,
    /// Total image size: header plus sub-elements, the `imageSize` devices are told, and
    /// zigbee-OTA's `fileSize`.
    pub total_image_size: u32,
    /// Security credential version (field-control bit 0).
    pub security_credential_version: Option<u8>,
    /// Upgrade file destination IEEE address (field-control bit 1), read little-endian as on the
    /// wire, so `0x00124b0012345678` for the device `0x00124b0012345678`.
    pub upgrade_file_destination: Option<u64>,
    /// Hardware versions the image is for (field-control bit 2).
    pub hardware_versions: Option<HardwareVersions>,
}

/// Inclusive hardware-version bounds from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareVersions {
    /// Minimum hardware version.
    pub min: u16,
    /// Maximum hardware version.
    pub max: u16,
}

/// One sub-element. Offsets are relative to the magic (the start of the image proper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubElement {
    /// Tag id (0x0000 upgrade image, 0x0003 image integrity code, 0xF000.. manufacturer).
    pub tag: u16,
    /// Offset of the element header from the magic.
    pub offset: u32,
    /// Length of the element header: 6, or 8 for the Telink AES element.
    pub header_len: u8,
    /// The two information bytes of a Telink AES element.
    pub telink_info: Option<[u8; 2]>,
    /// Length the element header declares.
    pub declared_len: u32,
    /// Length of the data actually inside the image: equal to `declared_len` except for an
    /// overlong last element (see the module policy).
    pub len: u32,
}

impl SubElement {
    /// Whether the declared length ran past the image end and the data was clamped.
    pub fn is_clamped(&self) -> bool {
        self.declared_len != self.len
    }

    /// Range of the element data within the image proper (see [`ZigbeeOtaFile::image`]).
    pub fn data_range(&self) -> Range<usize> {
        let start = to_usize(self.offset).saturating_add(usize::from(self.header_len));
        start..start.saturating_add(to_usize(self.len))
    }

    /// The element data, given the image proper.
    pub fn data<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        image.get(self.data_range())
    }

    /// Name of a tag defined by the specification or known from real files.
    pub fn tag_name(&self) -> &'static str {
        tag_name(self.tag)
    }
}

/// Name of a sub-element tag.
pub fn tag_name(tag: u16) -> &'static str {
    match tag {
        0x0000 => "upgrade image",
        0x0001 => "ECDSA signature (crypto suite 1)",
        0x0002 => "ECDSA signing certificate (crypto suite 1)",
        0x0003 => "image integrity code",
        0x0004 => "picture data",
        0x0005 => "ECDSA signature (crypto suite 2)",
        0x0006 => "ECDSA signing certificate (crypto suite 2)",
        TELINK_AES_TAG => "Telink AES upgrade image",
        0xF001..=0xFFFF => "manufacturer specific",
        _ => "reserved",
    }
}

impl ZigbeeOtaFile {
    /// Range of the image proper (`magic .. magic + total image size`) within the input.
    pub fn image_range(&self) -> Range<usize> {
        let start = usize::try_from(self.prefix_len).unwrap_or(usize::MAX);
        start..start.saturating_add(to_usize(self.header.total_image_size))
    }

    /// The image proper, given the input this was parsed from: what is served to devices
    /// (herdsman's `raw`). `None` if `file` is not that input.
    pub fn image<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        file.get(self.image_range())
    }

    /// Length of the input this was parsed from.
    pub fn file_len(&self) -> u64 {
        self.prefix_len
            .saturating_add(u64::from(self.header.total_image_size))
            .saturating_add(self.trailing_len)
    }

    /// Whether an overlong last element was clamped (see the module policy).
    pub fn has_clamped_element(&self) -> bool {
        self.elements.iter().any(SubElement::is_clamped)
    }
}

/// Why a file is not an acceptable Zigbee OTA upgrade file. Offsets in messages are offsets in
/// the input file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZigbeeError {
    /// The identifier does not occur anywhere in the input.
    #[error("not a Zigbee OTA file: magic 0x0BEEF11E (bytes 1E F1 EE 0B) not found")]
    MagicNotFound,
    /// Fewer bytes follow the magic than the header needs.
    #[error(
        "truncated Zigbee OTA header: the magic at offset {magic_offset} is followed by \
         {available} bytes, the header needs {needed}"
    )]
    TruncatedHeader {
        /// Offset of the magic in the input.
        magic_offset: u64,
        /// Bytes from the magic to the end of the input.
        available: u64,
        /// Bytes the header needs.
        needed: u64,
    },
    /// The header version is not 0x0100.
    #[error(
        "unsupported Zigbee OTA header version 0x{0:04X}: only 0x0100, the version the ZCL \
         specification defines, is accepted"
    )]
    UnsupportedHeaderVersion(u16),
    /// The header length is shorter than the field control requires.
    #[error(
        "header length {header_len} is shorter than the {required} bytes field control \
         0x{field_control:04X} requires"
    )]
    HeaderTooShort {
        /// Header length from the file.
        header_len: u16,
        /// Header field control from the file.
        field_control: u16,
        /// Length the field control requires.
        required: u16,
    },
    /// The header length is longer than the field control describes.
    #[error(
        "header length {header_len} is longer than the {required} bytes field control \
         0x{field_control:04X} describes; the extra bytes are not part of any defined field"
    )]
    HeaderTooLong {
        /// Header length from the file.
        header_len: u16,
        /// Header field control from the file.
        field_control: u16,
        /// Length the field control requires.
        required: u16,
    },
    /// The total image size is smaller than the header itself.
    #[error("total image size {total_image_size} is smaller than the header length {header_len}")]
    TotalSmallerThanHeader {
        /// Total image size from the header.
        total_image_size: u32,
        /// Header length from the header.
        header_len: u16,
    },
    /// The file ends before the total image size.
    #[error(
        "truncated file: the header declares a total image size of {total_image_size} bytes \
         but only {available} bytes follow the magic at offset {magic_offset}; the file was cut \
         short (incomplete download or upload?)"
    )]
    Truncated {
        /// Total image size from the header.
        total_image_size: u32,
        /// Bytes from the magic to the end of the input.
        available: u64,
        /// Offset of the magic in the input.
        magic_offset: u64,
    },
    /// An element header does not fit before the total image size.
    #[error(
        "sub-elements do not add up to the total image size {total_image_size}: the element \
         header at offset {offset} needs {needed} bytes but only {remaining} remain"
    )]
    ElementHeaderTruncated {
        /// File offset of the element header.
        offset: u64,
        /// Element header length needed (6, or 8 for tag 0xF000).
        needed: u8,
        /// Bytes left before the end of the image.
        remaining: u32,
        /// Total image size from the header.
        total_image_size: u32,
    },
    /// An element runs past the total image size while trailing bytes follow the image.
    #[error(
        "sub-elements do not add up to the total image size {total_image_size}: element \
         0x{tag:04X} at offset {offset} declares {declared_len} bytes of data but only \
         {remaining} remain before the end of the image (followed by {trailing_len} other bytes)"
    )]
    ElementOverrun {
        /// Tag of the element.
        tag: u16,
        /// File offset of the element header.
        offset: u64,
        /// Data length the element declares.
        declared_len: u32,
        /// Bytes left before the end of the image.
        remaining: u32,
        /// Total image size from the header.
        total_image_size: u32,
        /// Bytes after the image.
        trailing_len: u64,
    },
}

/// Offset of the first upgrade file identifier in `bytes`.
pub fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(MAGIC_BYTES.len())
        .position(|w| w == MAGIC_BYTES)
}

/// Header length the field control requires (56 + optional fields).
pub fn required_header_len(field_control: u16) -> u16 {
    let mut len = BASE_HEADER_LEN;
    if field_control & FC_SECURITY_CREDENTIAL_VERSION != 0 {
        len += 1;
    }
    if field_control & FC_UPGRADE_FILE_DESTINATION != 0 {
        len += 8;
    }
    if field_control & FC_HARDWARE_VERSIONS != 0 {
        len += 4;
    }
    len
}

/// Parses a Zigbee OTA upgrade file, possibly wrapped in a vendor prefix and trailer.
///
/// See the module documentation for what is accepted.
pub fn parse(file: &[u8]) -> Result<ZigbeeOtaFile, ZigbeeError> {
    let start = find_magic(file).ok_or(ZigbeeError::MagicNotFound)?;
    let img = file.get(start..).unwrap_or_default();
    let magic_offset = to_u64(start);
    let truncated = |needed: usize| ZigbeeError::TruncatedHeader {
        magic_offset,
        available: to_u64(img.len()),
        needed: to_u64(needed),
    };

    let base = usize::from(BASE_HEADER_LEN);
    if img.len() < base {
        return Err(truncated(base));
    }
    let field = |r: Option<u16>| r.ok_or_else(|| truncated(base));
    let header_version = field(u16_at(img, 4))?;
    let header_len = field(u16_at(img, 6))?;
    let field_control = field(u16_at(img, 8))?;
    let manufacturer_code = field(u16_at(img, 10))?;
    let image_type = field(u16_at(img, 12))?;
    let file_version = u32_at(img, 14).ok_or_else(|| truncated(base))?;
    let stack_version = field(u16_at(img, 18))?;
    let raw_string: [u8; 32] = array_at(img, 20).ok_or_else(|| truncated(base))?;
    let total_image_size = u32_at(img, 52).ok_or_else(|| truncated(base))?;

    if header_version != HEADER_VERSION {
        return Err(ZigbeeError::UnsupportedHeaderVersion(header_version));
    }
    let required = required_header_len(field_control);
    if header_len < required {
        return Err(ZigbeeError::HeaderTooShort {
            header_len,
            field_control,
            required,
        });
    }
    if header_len > required {
        return Err(ZigbeeError::HeaderTooLong {
            header_len,
            field_control,
            required,
        });
    }
    let header_end = usize::from(header_len);
    if img.len() < header_end {
        return Err(truncated(header_end));
    }

    let mut pos = base;
    let mut optional = |len: usize| {
        let at = pos;
        pos += len;
        at
    };
    let security_credential_version = if field_control & FC_SECURITY_CREDENTIAL_VERSION != 0 {
        Some(u8_at(img, optional(1)).ok_or_else(|| truncated(header_end))?)
    } else {
        None
    };
    let upgrade_file_destination = if field_control & FC_UPGRADE_FILE_DESTINATION != 0 {
        Some(u64_at(img, optional(8)).ok_or_else(|| truncated(header_end))?)
    } else {
        None
    };
    let hardware_versions = if field_control & FC_HARDWARE_VERSIONS != 0 {
        let at = optional(4);
        let min = u16_at(img, at).ok_or_else(|| truncated(header_end))?;
        let max = u16_at(img, at + 2).ok_or_else(|| truncated(header_end))?;
        Some(HardwareVersions { min, max })
    } else {
        None
    };

    if total_image_size < u32::from(header_len) {
        return Err(ZigbeeError::TotalSmallerThanHeader {
            total_image_size,
            header_len,
        });
    }
    let total = to_usize(total_image_size);
    if total > img.len() {
        return Err(ZigbeeError::Truncated {
            total_image_size,
            available: to_u64(img.len()),
            magic_offset,
        });
    }
    let trailing_len = to_u64(img.len() - total);

    let elements = walk_elements(
        img,
        header_end,
        total_image_size,
        magic_offset,
        trailing_len,
    )?;

    Ok(ZigbeeOtaFile {
        prefix_len: magic_offset,
        trailing_len,
        header: ZigbeeOtaHeader {
            header_version,
            header_len,
            field_control,
            manufacturer_code,
            image_type,
            file_version,
            stack_version,
            header_string: clean_header_string(&raw_string),
            total_image_size,
            security_credential_version,
            upgrade_file_destination,
            hardware_versions,
        },
        elements,
    })
}

/// Walks the sub-elements of `img` (which starts at the magic) from `header_end` to the total
/// image size, which the caller has checked is within `img`.
fn walk_elements(
    img: &[u8],
    header_end: usize,
    total_image_size: u32,
    magic_offset: u64,
    trailing_len: u64,
) -> Result<Vec<SubElement>, ZigbeeError> {
    let total = to_usize(total_image_size);
    let file_offset = |pos: usize| magic_offset.saturating_add(to_u64(pos));
    let remaining_from = |pos: usize| u32::try_from(total.saturating_sub(pos)).unwrap_or(u32::MAX);
    let mut elements = Vec::new();
    let mut pos = header_end;
    while pos < total {
        let header_truncated = |needed: usize| ZigbeeError::ElementHeaderTruncated {
            offset: file_offset(pos),
            needed: u8::try_from(needed).unwrap_or(u8::MAX),
            remaining: remaining_from(pos),
            total_image_size,
        };
        if total - pos < ELEMENT_HEADER_LEN {
            return Err(header_truncated(ELEMENT_HEADER_LEN));
        }
        let tag = u16_at(img, pos).ok_or_else(|| header_truncated(ELEMENT_HEADER_LEN))?;
        let declared_len =
            u32_at(img, pos + 2).ok_or_else(|| header_truncated(ELEMENT_HEADER_LEN))?;
        let (header_len, telink_info) = if tag == TELINK_AES_TAG {
            if total - pos < TELINK_ELEMENT_HEADER_LEN {
                return Err(header_truncated(TELINK_ELEMENT_HEADER_LEN));
            }
            let info: [u8; 2] = array_at(img, pos + 6)
                .ok_or_else(|| header_truncated(TELINK_ELEMENT_HEADER_LEN))?;
            (TELINK_ELEMENT_HEADER_LEN, Some(info))
        } else {
            (ELEMENT_HEADER_LEN, None)
        };
        let data_start = pos + header_len;
        let remaining = remaining_from(data_start);
        let len = if declared_len <= remaining {
            declared_len
        } else if trailing_len == 0 {
            // Herdsman parity: the slice clamps at the end of the buffer, which is the image end.
            remaining
        } else {
            return Err(ZigbeeError::ElementOverrun {
                tag,
                offset: file_offset(pos),
                declared_len,
                remaining,
                total_image_size,
                trailing_len,
            });
        };
        elements.push(SubElement {
            tag,
            offset: u32::try_from(pos).unwrap_or(u32::MAX),
            header_len: u8::try_from(header_len).unwrap_or(u8::MAX),
            telink_info,
            declared_len,
            len,
        });
        pos = data_start + to_usize(len);
    }
    Ok(elements)
}

/// The header string as zigbee-OTA's index stores it (NULs removed), with trailing spaces and
/// 0xFF padding trimmed.
fn clean_header_string(raw: &[u8; 32]) -> String {
    let kept: Vec<u8> = raw.iter().copied().filter(|&b| b != 0).collect();
    let end = kept
        .iter()
        .rposition(|&b| b != b' ' && b != 0xFF)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(kept.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_are_little_endian() {
        assert_eq!(MAGIC_BYTES, [0x1E, 0xF1, 0xEE, 0x0B]);
    }

    #[test]
    fn required_header_len_adds_each_optional_field() {
        assert_eq!(required_header_len(0), 56);
        assert_eq!(required_header_len(FC_SECURITY_CREDENTIAL_VERSION), 57);
        assert_eq!(required_header_len(FC_UPGRADE_FILE_DESTINATION), 64);
        assert_eq!(required_header_len(FC_HARDWARE_VERSIONS), 60);
        assert_eq!(required_header_len(0x0007), 69);
        assert_eq!(required_header_len(0xFFF8), 56, "reserved bits add nothing");
    }

    #[test]
    fn header_string_cleanup() {
        let mut raw = [0u8; 32];
        raw[..16].copy_from_slice(b"EBL tradfri_wrgb");
        assert_eq!(clean_header_string(&raw), "EBL tradfri_wrgb");
        assert_eq!(clean_header_string(&[b' '; 32]), "");
        assert_eq!(clean_header_string(&[0xFF; 32]), "");
        let mut raw = [0u8; 32];
        raw[..7].copy_from_slice(b"a\0b c  ");
        assert_eq!(clean_header_string(&raw), "ab c");
        let mut raw = [0u8; 32];
        raw[..3].copy_from_slice(&[b'x', 0xC3, b'y']);
        assert_eq!(clean_header_string(&raw), "x\u{FFFD}y");
    }

    #[test]
    fn tag_names() {
        assert_eq!(tag_name(0x0000), "upgrade image");
        assert_eq!(tag_name(0x0003), "image integrity code");
        assert_eq!(tag_name(0xF000), "Telink AES upgrade image");
        assert_eq!(tag_name(0xFFBF), "manufacturer specific");
        assert_eq!(tag_name(0x0100), "reserved");
    }
}

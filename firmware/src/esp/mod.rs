//! ESP application images (the `0xE9` format of ESP32-family chips and the ESP8266) and merged
//! factory images.
//!
//! What it does: [`parse_app`] validates an image for network OTA (what ESPHome calls
//! `firmware.ota.bin`): header, ESP32-family extended header, segments, XOR checksum, appended
//! SHA-256, and the ESP-IDF application description that carries the version. It refuses
//! merged factory images with a message that says what they are for. [`parse_image`] does the
//! same for any single image (an application or a bootloader) without requiring an application
//! description. [`parse_factory`] takes a merged factory image apart for the serial flasher:
//! bootloader, partition table, application and its offset.
//!
//! What it does not do: verify secure-boot signatures (a signature block after the SHA-256 is
//! reported as trailing bytes), decompress gzip/deflate uploads, know the flash size of a real
//! device, or do any I/O.
//!
//! # ESP32 family or ESP8266?
//!
//! ESP8266 images have no extended header: their first segment header sits where ESP32-family
//! images have the 16-byte extended header. When the caller names the target chip, the image is
//! read as that chip's format (and a mismatch is reported as such). Without a chip, the image is
//! read as ESP32-family when the bytes at offset 8 are a plausible extended header: a `chip_id`
//! known to esptool (see [`Chip`]) *and* the four reserved bytes (offsets 19–22) zero, as esptool
//! writes them. Otherwise it is read as an ESP8266 image; if that fails too, the error says both
//! ([`EspError::AssumedEsp8266`]). An ESP8266 image passes for ESP32-family only if its first
//! segment length is congruent to a known chip id modulo 65536 and bytes 3–6 of its data are zero,
//! and then it must still pass every check of the ESP32 layout, checksum included.
//!
//! # Factory images
//!
//! ESPHome's `firmware.factory.bin` for ESP32-family chips is the bootloader (at 0x1000 for
//! ESP32/S2, 0x0 for C3/S3/C6/C2/H2, 0x2000 for P4/C5), the partition table at 0x8000
//! (entries start with `AA 50`), `ota_data_initial` at 0xE000 and the application at 0x10000,
//! merged with 0xFF gaps. It is recognised when either
//! - the file starts with 0xFF padding up to an ESP image at 0x1000 or 0x2000, or
//! - the file starts with an ESP32-family image that ends at or before 0x8000 and 0x8000 holds a
//!   plausible partition-table entry (`AA 50`, 4 KiB aligned offset, non-zero size, printable
//!   label).
//!
//! (An ESP8266 `firmware.factory.bin` is a copy of the application image and parses as one.)

mod chip;
mod factory;

pub use chip::{Chip, UnknownChipName};
pub use factory::{
    EspFactoryImage, FactoryError, PARTITION_TABLE_OFFSET, Partition, parse_factory,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bytes::{array_at, c_string, slice_at, to_u64, to_usize, u8_at, u16_at, u32_at};

/// First byte of an ESP image.
pub const IMAGE_MAGIC: u8 = 0xE9;
/// First byte of an ESP8266 "v2" image (`esptool elf2image --version 2`).
pub const ESP8266_V2_MAGIC: u8 = 0xEA;
/// Most segments an image may have.
pub const MAX_SEGMENTS: u8 = 16;
/// Seed of the XOR checksum.
pub const CHECKSUM_SEED: u8 = 0xEF;
/// Magic of the ESP-IDF application description (`esp_app_desc_t`).
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// File offset of the application description: the start of the first segment's data.
pub const APP_DESC_OFFSET: usize = 0x20;
/// Bytes of the application description this crate reads (through `app_elf_sha256`).
pub const APP_DESC_READ_LEN: usize = 176;

/// Length of the common image header.
const COMMON_HEADER_LEN: usize = 8;
/// Length of the common plus the ESP32-family extended header.
const ESP32_HEADER_LEN: usize = 24;
/// Length of a segment header.
const SEGMENT_HEADER_LEN: usize = 8;
/// Length of the appended SHA-256.
const SHA256_LEN: usize = 32;

/// SPI flash mode from the image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashMode {
    /// Quad I/O (0).
    Qio,
    /// Quad output (1).
    Qout,
    /// Dual I/O (2).
    Dio,
    /// Dual output (3).
    Dout,
    /// Any other value.
    Unknown(u8),
}

impl FlashMode {
    fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Qio,
            1 => Self::Qout,
            2 => Self::Dio,
            3 => Self::Dout,
            other => Self::Unknown(other),
        }
    }

    /// The header code.
    pub fn code(self) -> u8 {
        match self {
            Self::Qio => 0,
            Self::Qout => 1,
            Self::Dio => 2,
            Self::Dout => 3,
            Self::Unknown(code) => code,
        }
    }

    /// esptool's name (`qio`, `dout`, ...), or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qio => "qio",
            Self::Qout => "qout",
            Self::Dio => "dio",
            Self::Dout => "dout",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// Flash size from the high nibble of header byte 3. The code table differs between the ESP8266
/// and the ESP32 family; this is the decoded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlashSize {
    /// 256 KB (ESP8266 code 1).
    #[serde(rename = "256KB")]
    Kb256,
    /// 512 KB (ESP8266 code 0).
    #[serde(rename = "512KB")]
    Kb512,
    /// 1 MB.
    #[serde(rename = "1MB")]
    Mb1,
    /// 2 MB.
    #[serde(rename = "2MB")]
    Mb2,
    /// 2 MB with the ESP8266 "c1" (1 MB + 1 MB) layout (ESP8266 code 5).
    #[serde(rename = "2MB-c1")]
    Mb2C1,
    /// 4 MB.
    #[serde(rename = "4MB")]
    Mb4,
    /// 4 MB with the ESP8266 "c1" layout (ESP8266 code 6).
    #[serde(rename = "4MB-c1")]
    Mb4C1,
    /// 8 MB.
    #[serde(rename = "8MB")]
    Mb8,
    /// 16 MB.
    #[serde(rename = "16MB")]
    Mb16,
    /// 32 MB (ESP32 family).
    #[serde(rename = "32MB")]
    Mb32,
    /// 64 MB (ESP32 family).
    #[serde(rename = "64MB")]
    Mb64,
    /// 128 MB (ESP32 family).
    #[serde(rename = "128MB")]
    Mb128,
    /// A code the chip family does not define.
    #[serde(rename = "unknown")]
    Unknown(u8),
}

impl FlashSize {
    fn from_code(code: u8, chip: Chip) -> Self {
        if chip.is_esp32_family() {
            match code {
                0 => Self::Mb1,
                1 => Self::Mb2,
                2 => Self::Mb4,
                3 => Self::Mb8,
                4 => Self::Mb16,
                5 => Self::Mb32,
                6 => Self::Mb64,
                7 => Self::Mb128,
                other => Self::Unknown(other),
            }
        } else {
            match code {
                0 => Self::Kb512,
                1 => Self::Kb256,
                2 => Self::Mb1,
                3 => Self::Mb2,
                4 => Self::Mb4,
                5 => Self::Mb2C1,
                6 => Self::Mb4C1,
                8 => Self::Mb8,
                9 => Self::Mb16,
                other => Self::Unknown(other),
            }
        }
    }

    /// The header code of this size for images of `chip`, if that family defines it.
    pub fn code_for(self, chip: Chip) -> Option<u8> {
        (0..16).find(|&code| Self::from_code(code, chip) == self)
    }

    /// Size in bytes, if known.
    pub fn bytes(self) -> Option<u64> {
        const MB: u64 = 1024 * 1024;
        Some(match self {
            Self::Kb256 => 256 * 1024,
            Self::Kb512 => 512 * 1024,
            Self::Mb1 => MB,
            Self::Mb2 | Self::Mb2C1 => 2 * MB,
            Self::Mb4 | Self::Mb4C1 => 4 * MB,
            Self::Mb8 => 8 * MB,
            Self::Mb16 => 16 * MB,
            Self::Mb32 => 32 * MB,
            Self::Mb64 => 64 * MB,
            Self::Mb128 => 128 * MB,
            Self::Unknown(_) => return None,
        })
    }

    /// esptool's name (`4MB`, `2MB-c1`, ...), or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kb256 => "256KB",
            Self::Kb512 => "512KB",
            Self::Mb1 => "1MB",
            Self::Mb2 => "2MB",
            Self::Mb2C1 => "2MB-c1",
            Self::Mb4 => "4MB",
            Self::Mb4C1 => "4MB-c1",
            Self::Mb8 => "8MB",
            Self::Mb16 => "16MB",
            Self::Mb32 => "32MB",
            Self::Mb64 => "64MB",
            Self::Mb128 => "128MB",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// Flash frequency code from the low nibble of header byte 3, named as for the ESP32 and
/// ESP8266. (Some later chips reuse these codes for other frequencies, e.g. ESP32-C2 runs code
/// 0xF at 60 MHz; the code is what the image says.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlashFreq {
    /// Code 0x0: 40 MHz.
    #[serde(rename = "40m")]
    Mhz40,
    /// Code 0x1: 26 MHz.
    #[serde(rename = "26m")]
    Mhz26,
    /// Code 0x2: 20 MHz.
    #[serde(rename = "20m")]
    Mhz20,
    /// Code 0xF: 80 MHz.
    #[serde(rename = "80m")]
    Mhz80,
    /// Any other code.
    #[serde(rename = "unknown")]
    Unknown(u8),
}

impl FlashFreq {
    fn from_code(code: u8) -> Self {
        match code {
            0x0 => Self::Mhz40,
            0x1 => Self::Mhz26,
            0x2 => Self::Mhz20,
            0xF => Self::Mhz80,
            other => Self::Unknown(other),
        }
    }

    /// The header code (low nibble of byte 3).
    pub fn code(self) -> u8 {
        match self {
            Self::Mhz40 => 0x0,
            Self::Mhz26 => 0x1,
            Self::Mhz20 => 0x2,
            Self::Mhz80 => 0xF,
            Self::Unknown(code) => code & 0x0F,
        }
    }

    /// esptool's name (`40m`, `80m`, ...), or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mhz40 => "40m",
            Self::Mhz26 => "26m",
            Self::Mhz20 => "20m",
            Self::Mhz80 => "80m",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// The 16-byte ESP32-family extended header (file offset 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedHeader {
    /// SPI write-protect pin (0xEE = disabled).
    pub wp_pin: u8,
    /// SPI pin drive settings (nibbles).
    pub spi_pin_drive: [u8; 3],
    /// Chip id.
    pub chip_id: u16,
    /// Minimum chip revision (legacy, major only).
    pub min_chip_rev: u8,
    /// Minimum chip revision, major * 100 + minor.
    pub min_chip_rev_full: u16,
    /// Maximum chip revision, major * 100 + minor (0xFFFF = any).
    pub max_chip_rev_full: u16,
    /// Whether a SHA-256 of the image is appended after the checksum.
    pub hash_appended: bool,
}

/// One image segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Address the segment is loaded to (or mapped at, for flash-mapped segments).
    pub load_addr: u32,
    /// Offset of the segment data in the image (after the 8-byte segment header).
    pub data_offset: u64,
    /// Length of the data.
    pub len: u32,
}

impl Segment {
    /// The segment data, given the image bytes.
    pub fn data<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        slice_at(
            image,
            usize::try_from(self.data_offset).ok()?,
            to_usize(self.len),
        )
    }
}

/// The ESP-IDF application description (`esp_app_desc_t`) at file offset 0x20.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDescription {
    /// Secure version (anti-rollback counter).
    pub secure_version: u32,
    /// Application version: what ESPHome's downgrade protection compares.
    pub version: String,
    /// Project name.
    pub project_name: String,
    /// Build time.
    pub time: String,
    /// Build date.
    pub date: String,
    /// ESP-IDF version.
    pub idf_ver: String,
    /// SHA-256 of the application ELF, lowercase hex.
    pub app_elf_sha256: String,
}

/// A parsed and verified ESP image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspImage {
    /// Chip the image is built for.
    pub chip: Chip,
    /// Flash mode.
    pub flash_mode: FlashMode,
    /// Flash size the image was built for.
    pub flash_size: FlashSize,
    /// Flash frequency.
    pub flash_freq: FlashFreq,
    /// Entry point.
    pub entry_addr: u32,
    /// Extended header (ESP32 family only).
    pub extended: Option<ExtendedHeader>,
    /// Segments in file order.
    pub segments: Vec<Segment>,
    /// The checksum byte (verified).
    pub checksum: u8,
    /// The appended SHA-256, lowercase hex (verified), when the extended header announces it.
    pub sha256: Option<String>,
    /// Bytes from the start of the image through the checksum and the SHA-256.
    pub image_len: u64,
    /// Bytes after that: a secure-boot signature block, or (ESP8266 Arduino builds, which put
    /// the bootloader image first) the rest of the flash contents.
    pub trailing_len: u64,
    /// The application description (ESP32 family, present in every ESP-IDF application).
    pub app: Option<AppDescription>,
}

impl EspImage {
    /// Length of the input this was parsed from.
    pub fn file_len(&self) -> u64 {
        self.image_len.saturating_add(self.trailing_len)
    }

    /// The application version, if the image has an application description.
    pub fn version(&self) -> Option<&str> {
        self.app.as_ref().map(|a| a.version.as_str())
    }
}

/// Why bytes are not an acceptable ESP image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    /// No bytes at all.
    #[error("empty file: an ESP image starts with the byte 0xE9")]
    Empty,
    /// The first byte is not 0xE9.
    #[error("not an ESP image: first byte 0x{found:02X}, expected 0xE9")]
    BadMagic {
        /// The first byte.
        found: u8,
    },
    /// An ESP8266 "v2" image.
    #[error(
        "ESP8266 \"v2\" image (first byte 0xEA, made by `esptool elf2image --version 2`): it is \
         written over serial by esptool and is not an OTA application image; ESP8266 OTA \
         (ESPHome, Arduino) needs a 0xE9 image such as ESPHome's firmware.ota.bin"
    )]
    Esp8266V2,
    /// The file ends inside the image header.
    #[error("truncated ESP image: {len} bytes, the image header needs {needed}")]
    HeaderTruncated {
        /// Length of the input.
        len: u64,
        /// Header length needed (8, or 24 with the ESP32-family extended header).
        needed: u64,
    },
    /// Segment count outside 1..=16.
    #[error("segment count {count} is out of range: an ESP image has 1 to 16 segments")]
    SegmentCount {
        /// Segment count from the header.
        count: u8,
    },
    /// The extended header names a chip id this crate does not know.
    #[error(
        "unknown chip id {chip_id} (0x{chip_id:04X}) in the extended header at offset 12; \
         known ids: {}",
        known_chip_ids()
    )]
    UnknownChipId {
        /// The chip id.
        chip_id: u16,
    },
    /// The image is for another chip than the target.
    #[error("image is built for {found} but the target is {expected}")]
    ChipMismatch {
        /// Chip the caller expects.
        expected: Chip,
        /// Chip the image is for.
        found: Chip,
    },
    /// `hash_appended` is neither 0 nor 1.
    #[error(
        "invalid hash_appended byte 0x{value:02X} at offset 23: only 0 (no SHA-256) or 1 \
         (SHA-256 appended) are valid"
    )]
    InvalidHashAppended {
        /// The byte.
        value: u8,
    },
    /// The file ends inside a segment header.
    #[error(
        "truncated ESP image: the header of segment {index} at offset 0x{offset:X} needs 8 \
         bytes, the file has {len}"
    )]
    SegmentHeaderTruncated {
        /// Segment index.
        index: u8,
        /// Offset of the segment header.
        offset: u64,
        /// Length of the input.
        len: u64,
    },
    /// The file ends inside a segment's data.
    #[error(
        "truncated ESP image: segment {index} (load address 0x{load_addr:08X}) declares \
         {seg_len} bytes at offset 0x{offset:X} but only {available} remain"
    )]
    SegmentTruncated {
        /// Segment index.
        index: u8,
        /// Load address.
        load_addr: u32,
        /// Offset of the segment data.
        offset: u64,
        /// Declared length.
        seg_len: u32,
        /// Bytes left in the input.
        available: u64,
    },
    /// A segment length that is not a multiple of 4.
    #[error(
        "segment {index} length {seg_len} is not a multiple of 4: esptool pads segments to 4 \
         bytes and the bootloader refuses others"
    )]
    SegmentUnaligned {
        /// Segment index.
        index: u8,
        /// Declared length.
        seg_len: u32,
    },
    /// The file ends before the checksum byte.
    #[error(
        "truncated ESP image: the checksum byte at offset 0x{offset:X} is missing (the file has \
         {len} bytes)"
    )]
    ChecksumMissing {
        /// Where the checksum belongs.
        offset: u64,
        /// Length of the input.
        len: u64,
    },
    /// The checksum does not match the segment data.
    #[error(
        "image checksum mismatch: the byte at offset 0x{offset:X} is 0x{stored:02X} but the \
         segment data gives 0x{computed:02X}; the image is corrupt"
    )]
    BadChecksum {
        /// Offset of the checksum byte.
        offset: u64,
        /// Stored checksum.
        stored: u8,
        /// Computed checksum.
        computed: u8,
    },
    /// The file ends before the appended SHA-256 is complete.
    #[error(
        "truncated ESP image: the extended header announces a SHA-256 at offset 0x{offset:X} \
         but the file ends after {len} bytes"
    )]
    HashMissing {
        /// Where the digest belongs.
        offset: u64,
        /// Length of the input.
        len: u64,
    },
    /// The appended SHA-256 does not match.
    #[error(
        "appended SHA-256 mismatch: stored {stored}, computed {computed} over the first {covered} \
         bytes; the image is corrupt"
    )]
    BadSha256 {
        /// Stored digest, hex.
        stored: String,
        /// Computed digest, hex.
        computed: String,
        /// Bytes the digest covers.
        covered: u64,
    },
    /// The application description magic is present but the first segment is too short for it.
    #[error(
        "the application description at offset 0x20 is cut off: the first segment has {seg_len} \
         bytes, the description needs {APP_DESC_READ_LEN}"
    )]
    AppDescTruncated {
        /// Length of the first segment.
        seg_len: u32,
    },
    /// An ESP32-family image without an application description.
    #[error(
        "no application description (magic 0xABCD5432) at offset 0x20: this {chip} image is \
         not an ESP-IDF application (a bootloader?); OTA needs the application image \
         (ESPHome's firmware.ota.bin)"
    )]
    NotAnApp {
        /// Chip of the image.
        chip: Chip,
    },
    /// A merged factory image where an application image was expected.
    #[error(
        "this is a merged factory image{} (bootloader at 0x{bootloader_offset:X}, partition \
         table at 0x8000, application usually at 0x10000), meant for serial flashing at offset \
         0x0; for OTA send the application image, ESPHome's firmware.ota.bin",
        chip.map(|c| format!(" for {c}")).unwrap_or_default()
    )]
    FactoryImage {
        /// Chip of the bootloader, if its header names one.
        chip: Option<Chip>,
        /// Offset of the bootloader.
        bootloader_offset: u32,
    },
    /// No ESP32-family extended header and not a valid ESP8266 image either.
    #[error(
        "assumed an ESP8266 image because there is no ESP32-family extended header at offset 8 \
         ({why}), but {error}"
    )]
    AssumedEsp8266 {
        /// Why the bytes at offset 8 are not an ESP32-family extended header.
        why: NoExtendedHeader,
        /// Why the ESP8266 reading failed.
        error: Box<EspError>,
    },
}

/// Why the bytes at offset 8 were not taken for an ESP32-family extended header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoExtendedHeader {
    /// The file is shorter than the 24-byte ESP32-family header.
    #[error("the file is only {len} bytes")]
    TooShort {
        /// Length of the input.
        len: u64,
    },
    /// The chip id is not one this crate knows.
    #[error("chip id {0} (0x{0:04X}) is not one esptool knows")]
    UnknownChipId(u16),
    /// The reserved bytes are not zero.
    #[error("reserved bytes 19-22 are {}, not zero", hex::encode(.0))]
    ReservedNotZero([u8; 4]),
}

fn known_chip_ids() -> String {
    Chip::ALL
        .iter()
        .filter_map(|c| c.image_chip_id().map(|id| format!("{id} {c}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Image layout family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Esp8266,
    Esp32,
}

/// Whether the bytes look like a merged factory image (see the module documentation). Cheap:
/// reads headers only.
pub fn looks_like_factory(bytes: &[u8]) -> bool {
    factory::sniff(bytes).is_some()
}

/// Parses and verifies an application image for network OTA.
///
/// On top of [`parse_image`], refuses merged factory images ([`EspError::FactoryImage`]) and
/// ESP32-family images without an application description ([`EspError::NotAnApp`]).
pub fn parse_app(bytes: &[u8], expected: Option<Chip>) -> Result<EspImage, EspError> {
    if bytes.is_empty() {
        return Err(EspError::Empty);
    }
    if let Some(sniff) = factory::sniff(bytes) {
        return Err(EspError::FactoryImage {
            chip: sniff.chip,
            bootloader_offset: sniff.bootloader_offset,
        });
    }
    let image = parse_image(bytes, expected)?;
    if image.chip.is_esp32_family() && image.app.is_none() {
        return Err(EspError::NotAnApp { chip: image.chip });
    }
    Ok(image)
}

/// Parses and verifies one ESP image (an application or a bootloader): header, extended header,
/// segments, checksum and appended SHA-256. `expected` is the target chip, when known; see the
/// module documentation for how the layout is chosen without it.
pub fn parse_image(bytes: &[u8], expected: Option<Chip>) -> Result<EspImage, EspError> {
    match bytes.first() {
        None => return Err(EspError::Empty),
        Some(&ESP8266_V2_MAGIC) => return Err(EspError::Esp8266V2),
        Some(&IMAGE_MAGIC) => {}
        Some(&found) => return Err(EspError::BadMagic { found }),
    }
    if bytes.len() < COMMON_HEADER_LEN {
        return Err(EspError::HeaderTruncated {
            len: to_u64(bytes.len()),
            needed: to_u64(COMMON_HEADER_LEN),
        });
    }
    match expected {
        Some(Chip::Esp8266) => {
            parse_as(bytes, Family::Esp8266).map_err(|e| match parse_as(bytes, Family::Esp32) {
                Ok(image) => EspError::ChipMismatch {
                    expected: Chip::Esp8266,
                    found: image.chip,
                },
                Err(_) => e,
            })
        }
        Some(chip) => match parse_as(bytes, Family::Esp32) {
            Ok(image) if image.chip == chip => Ok(image),
            Ok(image) => Err(EspError::ChipMismatch {
                expected: chip,
                found: image.chip,
            }),
            Err(e) => match parse_as(bytes, Family::Esp8266) {
                Ok(_) => Err(EspError::ChipMismatch {
                    expected: chip,
                    found: Chip::Esp8266,
                }),
                Err(_) => Err(e),
            },
        },
        None => match extended_header_chip(bytes) {
            Ok(_) => parse_as(bytes, Family::Esp32),
            Err(why) => parse_as(bytes, Family::Esp8266).or_else(|e| {
                parse_as(bytes, Family::Esp32).map_err(|_| EspError::AssumedEsp8266 {
                    why,
                    error: Box::new(e),
                })
            }),
        },
    }
}

/// The chip named by a plausible ESP32-family extended header: a 0xE9 image whose chip id is
/// known and whose reserved bytes are zero.
pub(crate) fn sniff_extended_header(bytes: &[u8]) -> Option<Chip> {
    if bytes.first() != Some(&IMAGE_MAGIC) {
        return None;
    }
    extended_header_chip(bytes).ok()
}

/// The chip of a plausible extended header, or why there is none.
fn extended_header_chip(bytes: &[u8]) -> Result<Chip, NoExtendedHeader> {
    let too_short = || NoExtendedHeader::TooShort {
        len: to_u64(bytes.len()),
    };
    let reserved: [u8; 4] = array_at(bytes, 19).ok_or_else(too_short)?;
    let chip_id = u16_at(bytes, 12).ok_or_else(too_short)?;
    if bytes.len() < ESP32_HEADER_LEN {
        return Err(too_short());
    }
    let chip = Chip::from_image_chip_id(chip_id).ok_or(NoExtendedHeader::UnknownChipId(chip_id))?;
    if reserved != [0; 4] {
        return Err(NoExtendedHeader::ReservedNotZero(reserved));
    }
    Ok(chip)
}

/// Header and segment layout, before any content check.
struct Layout {
    chip: Chip,
    extended: Option<ExtendedHeader>,
    segments: Vec<Segment>,
    /// Offset just after the last segment's data.
    data_end: usize,
}

/// Reads the headers and segment table of an image in the given layout family.
fn layout(bytes: &[u8], family: Family) -> Result<Layout, EspError> {
    let len = to_u64(bytes.len());
    let header_len = match family {
        Family::Esp8266 => COMMON_HEADER_LEN,
        Family::Esp32 => ESP32_HEADER_LEN,
    };
    let truncated = || EspError::HeaderTruncated {
        len,
        needed: to_u64(header_len),
    };
    let common: [u8; COMMON_HEADER_LEN] = array_at(bytes, 0).ok_or_else(truncated)?;
    let [_, count, _, _, ..] = common;
    if count == 0 || count > MAX_SEGMENTS {
        return Err(EspError::SegmentCount { count });
    }
    let (chip, extended) = match family {
        Family::Esp8266 => (Chip::Esp8266, None),
        Family::Esp32 => {
            let ext: [u8; 16] = array_at(bytes, COMMON_HEADER_LEN).ok_or_else(truncated)?;
            let [
                wp_pin,
                d0,
                d1,
                d2,
                id0,
                id1,
                min_rev,
                mf0,
                mf1,
                xf0,
                xf1,
                ..,
                hash,
            ] = ext;
            let chip_id = u16::from_le_bytes([id0, id1]);
            let chip =
                Chip::from_image_chip_id(chip_id).ok_or(EspError::UnknownChipId { chip_id })?;
            let hash_appended = match hash {
                0 => false,
                1 => true,
                value => return Err(EspError::InvalidHashAppended { value }),
            };
            let ext = ExtendedHeader {
                wp_pin,
                spi_pin_drive: [d0, d1, d2],
                chip_id,
                min_chip_rev: min_rev,
                min_chip_rev_full: u16::from_le_bytes([mf0, mf1]),
                max_chip_rev_full: u16::from_le_bytes([xf0, xf1]),
                hash_appended,
            };
            (chip, Some(ext))
        }
    };

    let mut segments = Vec::with_capacity(usize::from(count));
    let mut pos = header_len;
    for index in 0..count {
        let seg_header = || EspError::SegmentHeaderTruncated {
            index,
            offset: to_u64(pos),
            len,
        };
        let load_addr = u32_at(bytes, pos).ok_or_else(seg_header)?;
        let seg_len = u32_at(bytes, pos + 4).ok_or_else(seg_header)?;
        let data_offset = pos + SEGMENT_HEADER_LEN;
        if seg_len % 4 != 0 {
            return Err(EspError::SegmentUnaligned { index, seg_len });
        }
        let available = bytes.len().saturating_sub(data_offset);
        if to_usize(seg_len) > available {
            return Err(EspError::SegmentTruncated {
                index,
                load_addr,
                offset: to_u64(data_offset),
                seg_len,
                available: to_u64(available),
            });
        }
        segments.push(Segment {
            load_addr,
            data_offset: to_u64(data_offset),
            len: seg_len,
        });
        pos = data_offset + to_usize(seg_len);
    }
    Ok(Layout {
        chip,
        extended,
        segments,
        data_end: pos,
    })
}

/// End offset of the segment data of an image (no content checks), for factory sniffing.
pub(crate) fn segments_end(bytes: &[u8]) -> Option<usize> {
    layout(bytes, Family::Esp32).ok().map(|l| l.data_end)
}

/// Offset of the checksum byte after segment data ending at `data_end`: zero padding until
/// `offset % 16 == 15`.
fn checksum_offset(data_end: usize) -> usize {
    data_end + (15 + 16 - data_end % 16) % 16
}

/// Parses and verifies an image in the given layout family.
fn parse_as(bytes: &[u8], family: Family) -> Result<EspImage, EspError> {
    let len = to_u64(bytes.len());
    let Layout {
        chip,
        extended,
        segments,
        data_end,
    } = layout(bytes, family)?;

    let checksum_at = checksum_offset(data_end);
    let stored = u8_at(bytes, checksum_at).ok_or(EspError::ChecksumMissing {
        offset: to_u64(checksum_at),
        len,
    })?;
    let computed = segments
        .iter()
        .filter_map(|s| s.data(bytes))
        .flatten()
        .fold(CHECKSUM_SEED, |acc, b| acc ^ b);
    if stored != computed {
        return Err(EspError::BadChecksum {
            offset: to_u64(checksum_at),
            stored,
            computed,
        });
    }
    let mut end = checksum_at + 1;

    let mut sha256 = None;
    if extended.as_ref().is_some_and(|e| e.hash_appended) {
        let missing = EspError::HashMissing {
            offset: to_u64(end),
            len,
        };
        let stored: [u8; SHA256_LEN] = array_at(bytes, end).ok_or(missing)?;
        let covered = bytes.get(..end).unwrap_or_default();
        let computed: [u8; SHA256_LEN] = Sha256::digest(covered).into();
        if stored != computed {
            return Err(EspError::BadSha256 {
                stored: hex::encode(stored),
                computed: hex::encode(computed),
                covered: to_u64(end),
            });
        }
        sha256 = Some(hex::encode(stored));
        end += SHA256_LEN;
    }

    let app = match (family, segments.first()) {
        (Family::Esp32, Some(first)) => app_description(bytes, first)?,
        _ => None,
    };

    let size_freq = u8_at(bytes, 3).unwrap_or_default();
    Ok(EspImage {
        chip,
        flash_mode: FlashMode::from_code(u8_at(bytes, 2).unwrap_or_default()),
        flash_size: FlashSize::from_code(size_freq >> 4, chip),
        flash_freq: FlashFreq::from_code(size_freq & 0x0F),
        entry_addr: u32_at(bytes, 4).unwrap_or_default(),
        extended,
        segments,
        checksum: stored,
        sha256,
        image_len: to_u64(end),
        trailing_len: to_u64(bytes.len().saturating_sub(end)),
        app,
    })
}

/// The application description at the start of the first segment, if its magic is there.
fn app_description(bytes: &[u8], first: &Segment) -> Result<Option<AppDescription>, EspError> {
    if first.data_offset != to_u64(APP_DESC_OFFSET)
        || u32_at(bytes, APP_DESC_OFFSET) != Some(APP_DESC_MAGIC)
    {
        return Ok(None);
    }
    if to_usize(first.len) < APP_DESC_READ_LEN {
        return Err(EspError::AppDescTruncated { seg_len: first.len });
    }
    let desc = slice_at(bytes, APP_DESC_OFFSET, APP_DESC_READ_LEN)
        .ok_or(EspError::AppDescTruncated { seg_len: first.len })?;
    let field = |start: usize, len: usize| slice_at(desc, start, len).unwrap_or_default();
    Ok(Some(AppDescription {
        secure_version: u32_at(desc, 4).unwrap_or_default(),
        version: c_string(field(16, 32)),
        project_name: c_string(field(48, 32)),
        time: c_string(field(80, 16)),
        date: c_string(field(96, 16)),
        idf_ver: c_string(field(112, 32)),
        app_elf_sha256: hex::encode(field(144, 32)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lands_on_offset_15_mod_16() {
        assert_eq!(checksum_offset(0), 15);
        assert_eq!(checksum_offset(15), 15);
        assert_eq!(checksum_offset(16), 31);
        assert_eq!(checksum_offset(24 + 8 + 256), 303);
        for end in 0..64 {
            let c = checksum_offset(end);
            assert_eq!(c % 16, 15);
            assert!(c >= end && c - end < 16);
        }
    }

    #[test]
    fn flash_size_tables_differ_by_family() {
        assert_eq!(FlashSize::from_code(0, Chip::Esp32), FlashSize::Mb1);
        assert_eq!(FlashSize::from_code(2, Chip::Esp32C3), FlashSize::Mb4);
        assert_eq!(FlashSize::from_code(7, Chip::Esp32), FlashSize::Mb128);
        assert_eq!(FlashSize::from_code(8, Chip::Esp32), FlashSize::Unknown(8));
        assert_eq!(FlashSize::from_code(0, Chip::Esp8266), FlashSize::Kb512);
        assert_eq!(FlashSize::from_code(1, Chip::Esp8266), FlashSize::Kb256);
        assert_eq!(FlashSize::from_code(5, Chip::Esp8266), FlashSize::Mb2C1);
        assert_eq!(FlashSize::from_code(6, Chip::Esp8266), FlashSize::Mb4C1);
        assert_eq!(
            FlashSize::from_code(7, Chip::Esp8266),
            FlashSize::Unknown(7)
        );
        assert_eq!(FlashSize::from_code(9, Chip::Esp8266), FlashSize::Mb16);
        assert_eq!(FlashSize::Mb4C1.bytes(), Some(4 * 1024 * 1024));
        assert_eq!(FlashSize::Kb256.bytes(), Some(256 * 1024));
        assert_eq!(FlashSize::Unknown(3).bytes(), None);
        assert_eq!(
            serde_json::to_string(&FlashSize::Mb2C1).expect("serialise"),
            "\"2MB-c1\""
        );
    }

    #[test]
    fn flash_mode_and_freq_codes() {
        assert_eq!(FlashMode::from_code(0), FlashMode::Qio);
        assert_eq!(FlashMode::from_code(3), FlashMode::Dout);
        assert_eq!(FlashMode::from_code(4), FlashMode::Unknown(4));
        assert_eq!(FlashFreq::from_code(0xF), FlashFreq::Mhz80);
        assert_eq!(FlashFreq::from_code(0x1), FlashFreq::Mhz26);
        assert_eq!(FlashFreq::from_code(0x3), FlashFreq::Unknown(3));
        assert_eq!(FlashFreq::Mhz40.name(), "40m");
    }

    #[test]
    fn unknown_chip_message_lists_known_ids() {
        let msg = EspError::UnknownChipId { chip_id: 99 }.to_string();
        assert!(msg.contains("unknown chip id 99 (0x0063)"), "{msg}");
        assert!(msg.contains("0 ESP32, 2 ESP32-S2, 5 ESP32-C3"), "{msg}");
    }
}

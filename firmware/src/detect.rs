//! Format detection: one entry point, [`inspect`], for every firmware file the system handles.
//!
//! What it does: recognises a Zigbee OTA upgrade file, an ESP application image or (when asked
//! for) a merged ESP factory image, parses it with the matching module, and returns the facts as
//! a [`FirmwareImage`], or refuses it with an [`ImageError`] that says why.
//!
//! What it does not do: hash (see [`crate::FirmwareHasher`]), or decide whether an image suits a
//! particular device beyond the chip the caller names.
//!
//! # Detection order for [`Expected::Auto`]
//!
//! 1. Starts with the Zigbee magic `1E F1 EE 0B`: Zigbee OTA file.
//! 2. Starts with 0xE9 or 0xEA, or looks like a factory image (0xFF padding up to an ESP image at
//!    0x1000/0x2000): ESP application image. Factory images are refused here: `Auto` means "a
//!    file that can be sent over the air".
//! 3. Contains the Zigbee magic further in: Zigbee OTA file with a vendor prefix.
//! 4. Anything else is refused ([`ImageError::Unrecognised`]; gzip data gets its own hint).
//!
//! ESP images are checked before the magic search because an ESP Zigbee firmware may well
//! contain the OTA magic as a constant.

use serde::{Deserialize, Serialize};

use crate::esp::{self, Chip, EspError, EspFactoryImage, EspImage, FactoryError};
use crate::zigbee::{self, ZigbeeError, ZigbeeOtaFile};

/// What the caller expects the file to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Expected {
    /// Any file that can be sent over the air: a Zigbee OTA file or an ESP application image.
    #[default]
    Auto,
    /// A Zigbee OTA upgrade file.
    Zigbee,
    /// An ESP application image, optionally for a given chip.
    EspApp {
        /// Target chip, if known.
        chip: Option<Chip>,
    },
    /// A merged ESP factory image for serial flashing at 0x0, optionally for a given chip.
    EspFactory {
        /// Target chip, if known.
        chip: Option<Chip>,
    },
}

/// The parsed facts of a firmware file.
///
/// Serialises with a `format` tag holding [`Self::format_name`]:
/// `{"format": "zigbee-ota", ...}`, `"esp-app"`, `"esp-factory"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format")]
pub enum FirmwareImage {
    /// A Zigbee OTA upgrade file.
    #[serde(rename = "zigbee-ota")]
    Zigbee(ZigbeeOtaFile),
    /// An ESP application image.
    #[serde(rename = "esp-app")]
    EspApp(EspImage),
    /// A merged ESP factory image (boxed: it holds two images).
    #[serde(rename = "esp-factory")]
    EspFactory(Box<EspFactoryImage>),
}

impl FirmwareImage {
    /// Format name: `zigbee-ota`, `esp-app` or `esp-factory`.
    pub fn format_name(&self) -> &'static str {
        match self {
            Self::Zigbee(_) => "zigbee-ota",
            Self::EspApp(_) => "esp-app",
            Self::EspFactory(_) => "esp-factory",
        }
    }

    /// The ESP chip, for ESP images.
    pub fn chip(&self) -> Option<Chip> {
        match self {
            Self::Zigbee(_) => None,
            Self::EspApp(image) => Some(image.chip),
            Self::EspFactory(image) => Some(image.chip),
        }
    }

    /// The version as operators see it: the Zigbee file version as `0x%08X`, or the ESP
    /// application description's version.
    pub fn version(&self) -> Option<String> {
        match self {
            Self::Zigbee(file) => Some(format!("0x{:08X}", file.header.file_version)),
            Self::EspApp(image) => image.version().map(str::to_owned),
            Self::EspFactory(image) => image.app.version().map(str::to_owned),
        }
    }
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No bytes.
    #[error("empty file: no firmware bytes")]
    Empty,
    /// gzip data.
    #[error(
        "gzip-compressed data (starts with 1F 8B): upload the uncompressed firmware image; the \
         OTA uploader compresses it itself"
    )]
    Compressed,
    /// Neither a Zigbee OTA file nor an ESP image.
    #[error(
        "unrecognised firmware format: neither a Zigbee OTA file (no 0x0BEEF11E magic) nor an \
         ESP image (first byte 0x{first_byte:02X}, expected 0xE9)"
    )]
    Unrecognised {
        /// The first byte of the file.
        first_byte: u8,
    },
    /// Not an acceptable Zigbee OTA file.
    #[error(transparent)]
    Zigbee(#[from] ZigbeeError),
    /// Not an acceptable ESP application image.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// Not an acceptable ESP factory image.
    #[error(transparent)]
    Factory(#[from] FactoryError),
}

/// Recognises, parses and validates a firmware file.
///
/// ```
/// use ota_firmware::{Expected, ImageError, inspect};
///
/// let err = inspect(b"\x7fELF...", Expected::Auto).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "unrecognised firmware format: neither a Zigbee OTA file (no 0x0BEEF11E magic) nor an \
///      ESP image (first byte 0x7F, expected 0xE9)"
/// );
/// assert!(matches!(err, ImageError::Unrecognised { first_byte: 0x7F }));
/// ```
pub fn inspect(bytes: &[u8], expected: Expected) -> Result<FirmwareImage, ImageError> {
    let Some(&first_byte) = bytes.first() else {
        return Err(ImageError::Empty);
    };
    match expected {
        Expected::Zigbee => Ok(FirmwareImage::Zigbee(zigbee::parse(bytes)?)),
        Expected::EspApp { chip } => Ok(FirmwareImage::EspApp(esp::parse_app(bytes, chip)?)),
        Expected::EspFactory { chip } => Ok(FirmwareImage::EspFactory(Box::new(
            esp::parse_factory(bytes, chip)?,
        ))),
        Expected::Auto => {
            if bytes.starts_with(&zigbee::MAGIC_BYTES) {
                return Ok(FirmwareImage::Zigbee(zigbee::parse(bytes)?));
            }
            if first_byte == esp::IMAGE_MAGIC
                || first_byte == esp::ESP8266_V2_MAGIC
                || esp::looks_like_factory(bytes)
            {
                return Ok(FirmwareImage::EspApp(esp::parse_app(bytes, None)?));
            }
            if zigbee::find_magic(bytes).is_some() {
                return Ok(FirmwareImage::Zigbee(zigbee::parse(bytes)?));
            }
            if bytes.starts_with(&[0x1F, 0x8B]) {
                return Err(ImageError::Compressed);
            }
            Err(ImageError::Unrecognised { first_byte })
        }
    }
}

//! ESP chip identities as they appear in application images.
//!
//! What it does: maps the `chip_id` of the ESP32-family extended image header to [`Chip`] and
//! back, names chips the way esptool does (`esp32c3`) and the way people do (`ESP32-C3`), and
//! knows where each chip's second-stage bootloader sits in flash.
//!
//! What it does not do: talk to a chip (the ROM detection registers belong to the serial
//! flasher), or judge silicon revisions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ESP chip an image can be built for.
///
/// Serialises as esptool's `--chip` name: `esp8266`, `esp32`, `esp32s2`, `esp32c3`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chip {
    /// ESP8266: images have no extended header and no chip id.
    Esp8266,
    /// ESP32, chip id 0.
    Esp32,
    /// ESP32-S2, chip id 2.
    Esp32S2,
    /// ESP32-C3, chip id 5.
    Esp32C3,
    /// ESP32-S3, chip id 9.
    Esp32S3,
    /// ESP32-C2, chip id 12.
    Esp32C2,
    /// ESP32-C6, chip id 13.
    Esp32C6,
    /// ESP32-H2, chip id 16.
    Esp32H2,
    /// ESP32-P4, chip id 18.
    Esp32P4,
    /// ESP32-C61, chip id 20.
    Esp32C61,
    /// ESP32-C5, chip id 23.
    Esp32C5,
    /// ESP32-H21, chip id 25.
    Esp32H21,
    /// ESP32-H4, chip id 28.
    Esp32H4,
    /// ESP32-E22, chip id 31.
    Esp32E22,
    /// ESP32-S31, chip id 32.
    Esp32S31,
}

impl Chip {
    /// Every chip, ESP8266 first, then by extended-header chip id.
    pub const ALL: [Chip; 15] = [
        Chip::Esp8266,
        Chip::Esp32,
        Chip::Esp32S2,
        Chip::Esp32C3,
        Chip::Esp32S3,
        Chip::Esp32C2,
        Chip::Esp32C6,
        Chip::Esp32H2,
        Chip::Esp32P4,
        Chip::Esp32C61,
        Chip::Esp32C5,
        Chip::Esp32H21,
        Chip::Esp32H4,
        Chip::Esp32E22,
        Chip::Esp32S31,
    ];

    /// The chip with this extended-header `chip_id`.
    pub fn from_image_chip_id(id: u16) -> Option<Chip> {
        Chip::ALL
            .into_iter()
            .find(|c| c.image_chip_id() == Some(id))
    }

    /// The extended-header `chip_id`; `None` for the ESP8266, whose images have no extended
    /// header.
    pub fn image_chip_id(self) -> Option<u16> {
        Some(match self {
            Chip::Esp8266 => return None,
            Chip::Esp32 => 0,
            Chip::Esp32S2 => 2,
            Chip::Esp32C3 => 5,
            Chip::Esp32S3 => 9,
            Chip::Esp32C2 => 12,
            Chip::Esp32C6 => 13,
            Chip::Esp32H2 => 16,
            Chip::Esp32P4 => 18,
            Chip::Esp32C61 => 20,
            Chip::Esp32C5 => 23,
            Chip::Esp32H21 => 25,
            Chip::Esp32H4 => 28,
            Chip::Esp32E22 => 31,
            Chip::Esp32S31 => 32,
        })
    }

    /// Whether images for this chip carry the 16-byte extended header (all but the ESP8266).
    pub fn is_esp32_family(self) -> bool {
        self != Chip::Esp8266
    }

    /// esptool's `--chip` name: `esp32c3`.
    pub fn esptool_name(self) -> &'static str {
        match self {
            Chip::Esp8266 => "esp8266",
            Chip::Esp32 => "esp32",
            Chip::Esp32S2 => "esp32s2",
            Chip::Esp32C3 => "esp32c3",
            Chip::Esp32S3 => "esp32s3",
            Chip::Esp32C2 => "esp32c2",
            Chip::Esp32C6 => "esp32c6",
            Chip::Esp32H2 => "esp32h2",
            Chip::Esp32P4 => "esp32p4",
            Chip::Esp32C61 => "esp32c61",
            Chip::Esp32C5 => "esp32c5",
            Chip::Esp32H21 => "esp32h21",
            Chip::Esp32H4 => "esp32h4",
            Chip::Esp32E22 => "esp32e22",
            Chip::Esp32S31 => "esp32s31",
        }
    }

    /// Human name: `ESP32-C3`.
    pub fn name(self) -> &'static str {
        match self {
            Chip::Esp8266 => "ESP8266",
            Chip::Esp32 => "ESP32",
            Chip::Esp32S2 => "ESP32-S2",
            Chip::Esp32C3 => "ESP32-C3",
            Chip::Esp32S3 => "ESP32-S3",
            Chip::Esp32C2 => "ESP32-C2",
            Chip::Esp32C6 => "ESP32-C6",
            Chip::Esp32H2 => "ESP32-H2",
            Chip::Esp32P4 => "ESP32-P4",
            Chip::Esp32C61 => "ESP32-C61",
            Chip::Esp32C5 => "ESP32-C5",
            Chip::Esp32H21 => "ESP32-H21",
            Chip::Esp32H4 => "ESP32-H4",
            Chip::Esp32E22 => "ESP32-E22",
            Chip::Esp32S31 => "ESP32-S31",
        }
    }

    /// Flash offset of the second-stage bootloader in a merged factory image, where known
    /// (ESPHome's `BOOTLOADER_FLASH_OFFSET`): 0x1000 for ESP32/S2, 0x0 for C3/S3/C6/C2/H2,
    /// 0x2000 for P4/C5. `None` for the ESP8266 and for chips without a documented offset.
    pub fn bootloader_offset(self) -> Option<u32> {
        match self {
            Chip::Esp32 | Chip::Esp32S2 => Some(0x1000),
            Chip::Esp32C3 | Chip::Esp32S3 | Chip::Esp32C6 | Chip::Esp32C2 | Chip::Esp32H2 => {
                Some(0x0)
            }
            Chip::Esp32P4 | Chip::Esp32C5 => Some(0x2000),
            _ => None,
        }
    }
}

impl fmt::Display for Chip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A chip name that is not one of [`Chip::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown chip {0:?}: expected a name like esp32, esp32c3, ESP32-S3 or esp8266")]
pub struct UnknownChipName(pub String);

impl FromStr for Chip {
    type Err = UnknownChipName;

    /// Accepts esptool names and human names, ignoring case, `-` and `_`: `esp32c3`,
    /// `ESP32-C3`, `esp32_c3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Chip::ALL
            .into_iter()
            .find(|c| c.esptool_name() == norm)
            .ok_or_else(|| UnknownChipName(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chip_ids_match_the_reference() {
        let expected = [
            (0, Chip::Esp32),
            (2, Chip::Esp32S2),
            (5, Chip::Esp32C3),
            (9, Chip::Esp32S3),
            (12, Chip::Esp32C2),
            (13, Chip::Esp32C6),
            (16, Chip::Esp32H2),
            (18, Chip::Esp32P4),
            (20, Chip::Esp32C61),
            (23, Chip::Esp32C5),
            (25, Chip::Esp32H21),
            (28, Chip::Esp32H4),
            (31, Chip::Esp32E22),
            (32, Chip::Esp32S31),
        ];
        for (id, chip) in expected {
            assert_eq!(Chip::from_image_chip_id(id), Some(chip));
            assert_eq!(chip.image_chip_id(), Some(id));
        }
        for id in [1, 3, 4, 6, 7, 8, 10, 11, 14, 15, 17, 33, 0xFFFF] {
            assert_eq!(Chip::from_image_chip_id(id), None, "id {id}");
        }
        assert_eq!(Chip::Esp8266.image_chip_id(), None);
    }

    #[test]
    fn names_parse_and_serialise() {
        for chip in Chip::ALL {
            assert_eq!(chip.esptool_name().parse::<Chip>(), Ok(chip));
            assert_eq!(chip.name().parse::<Chip>(), Ok(chip));
            let json = serde_json::to_string(&chip).expect("serialise");
            assert_eq!(json, format!("\"{}\"", chip.esptool_name()));
        }
        assert_eq!("esp32_c3".parse::<Chip>(), Ok(Chip::Esp32C3));
        let err = "esp33".parse::<Chip>().expect_err("unknown");
        assert!(err.to_string().contains("unknown chip \"esp33\""));
    }

    #[test]
    fn bootloader_offsets() {
        assert_eq!(Chip::Esp32.bootloader_offset(), Some(0x1000));
        assert_eq!(Chip::Esp32S2.bootloader_offset(), Some(0x1000));
        assert_eq!(Chip::Esp32C3.bootloader_offset(), Some(0));
        assert_eq!(Chip::Esp32S3.bootloader_offset(), Some(0));
        assert_eq!(Chip::Esp32P4.bootloader_offset(), Some(0x2000));
        assert_eq!(Chip::Esp32C5.bootloader_offset(), Some(0x2000));
        assert_eq!(Chip::Esp8266.bootloader_offset(), None);
    }
}

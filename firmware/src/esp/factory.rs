//! Merged ESP32-family factory images: bootloader + partition table + application.
//!
//! What it does: [`parse_factory`] finds the bootloader (at 0x0, or after 0xFF padding at 0x1000
//! or 0x2000), checks it is where its chip boots from, reads the partition table at 0x8000
//! (verifying its MD5 entry when present), and parses the application at the lowest-offset app
//! partition, checking that bootloader and application are for the same chip and that the
//! application fits its partition. It also provides the cheap recognition [`super::parse_app`]
//! uses to refuse factory images for OTA.
//!
//! What it does not do: flash anything, interpret `ota_data_initial` (0xE000), or check the
//! partitions against a device's flash size.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::{
    Chip, EspError, EspImage, IMAGE_MAGIC, parse_image, segments_end, sniff_extended_header,
};
use crate::bytes::{c_string, slice_at, to_u64, to_usize, u8_at, u16_at, u32_at};

/// Flash offset of the partition table.
pub const PARTITION_TABLE_OFFSET: u32 = 0x8000;
/// Largest partition table (ESP-IDF `ESP_PARTITION_TABLE_MAX_LEN`).
const PARTITION_TABLE_MAX_LEN: usize = 0xC00;
/// Length of one partition table entry.
const ENTRY_LEN: usize = 32;
/// Magic of a partition entry (bytes `AA 50`).
const ENTRY_MAGIC: u16 = 0x50AA;
/// Magic of the MD5 entry (bytes `EB EB`).
const MD5_MAGIC: u16 = 0xEBEB;
/// Offsets where a bootloader may sit after 0xFF padding.
const PADDED_BOOTLOADER_OFFSETS: [usize; 2] = [0x1000, 0x2000];

/// One partition table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Label (up to 16 bytes).
    pub name: String,
    /// Type: 0 app, 1 data, 2 bootloader, 3 partition table, 0x40–0xFE custom.
    pub partition_type: u8,
    /// Subtype (app: 0 factory, 0x10–0x1F ota_N, 0x20 test; data: 0 ota, 1 phy, 2 nvs, ...).
    pub subtype: u8,
    /// Flash offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Flags (bit 0 encrypted, bit 1 read-only).
    pub flags: u32,
}

impl Partition {
    /// Whether this is an application partition (type 0).
    pub fn is_app(&self) -> bool {
        self.partition_type == 0
    }

    /// Name of the type: `app`, `data`, `bootloader`, `partition_table` or `custom`.
    pub fn type_name(&self) -> &'static str {
        match self.partition_type {
            0 => "app",
            1 => "data",
            2 => "bootloader",
            3 => "partition_table",
            _ => "custom",
        }
    }

    /// Name of the subtype as in ESP-IDF partition CSVs (`ota_0`, `nvs`, ...), or its number.
    pub fn subtype_name(&self) -> String {
        let known = match (self.partition_type, self.subtype) {
            (0, 0x00) => "factory",
            (0, n @ 0x10..=0x1F) => return format!("ota_{}", n - 0x10),
            (0, 0x20) => "test",
            (1, 0x00) => "ota",
            (1, 0x01) => "phy",
            (1, 0x02) => "nvs",
            (1, 0x03) => "coredump",
            (1, 0x04) => "nvs_keys",
            (1, 0x05) => "efuse",
            (1, 0x06) => "undefined",
            (1, 0x80) => "esphttpd",
            (1, 0x81) => "fat",
            (1, 0x82) => "spiffs",
            (1, 0x83) => "littlefs",
            (2 | 3, 0x00) => "primary",
            (2 | 3, 0x01) => "ota",
            (_, n) => return format!("0x{n:02x}"),
        };
        known.to_owned()
    }
}

/// A parsed merged factory image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspFactoryImage {
    /// Chip of the bootloader and the application.
    pub chip: Chip,
    /// Offset of the bootloader.
    pub bootloader_offset: u32,
    /// The bootloader image.
    pub bootloader: EspImage,
    /// Offset of the partition table (0x8000).
    pub partition_table_offset: u32,
    /// Partition entries in table order.
    pub partitions: Vec<Partition>,
    /// Whether the table carries an MD5 entry (verified when present).
    pub partition_table_md5: bool,
    /// Offset of the application: the lowest-offset app partition.
    pub app_offset: u32,
    /// The application image.
    pub app: EspImage,
    /// Length of the whole file; flash it at offset 0x0.
    pub file_len: u64,
}

impl EspFactoryImage {
    /// The application image bytes (without anything after its checksum/SHA-256), given the
    /// factory file this was parsed from.
    pub fn app_bytes<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        slice_at(
            file,
            to_usize(self.app_offset),
            usize::try_from(self.app.image_len).ok()?,
        )
    }
}

/// Why bytes are not an acceptable factory image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactoryError {
    /// No bootloader where one can be.
    #[error(
        "not a factory image: no ESP image (0xE9) at offset 0x0, nor 0xFF padding up to one at \
         0x1000 or 0x2000 (first byte {})",
        first_byte.map_or("none, the file is empty".to_owned(), |b| format!("0x{b:02X}"))
    )]
    NoBootloader {
        /// First byte of the file.
        first_byte: Option<u8>,
    },
    /// The bootloader image is invalid.
    #[error("factory image: the bootloader at 0x{offset:X} is invalid: {error}")]
    Bootloader {
        /// Offset of the bootloader.
        offset: u32,
        /// Why.
        error: EspError,
    },
    /// The bootloader is not where its chip boots from.
    #[error(
        "factory image: the {chip} bootloader is at 0x{found:X} but the {chip} boots from \
         0x{expected:X}; flashed at 0x0 this image would not boot"
    )]
    BootloaderOffset {
        /// Chip of the bootloader.
        chip: Chip,
        /// Where it is.
        found: u32,
        /// Where it must be.
        expected: u32,
    },
    /// The bootloader runs into the partition table.
    #[error(
        "factory image: the bootloader at 0x{offset:X} runs to 0x{end:X}, past the partition \
         table at 0x8000"
    )]
    BootloaderTooLong {
        /// Offset of the bootloader.
        offset: u32,
        /// End of its image.
        end: u64,
    },
    /// No partition table at 0x8000.
    #[error(
        "factory image: no partition table at 0x8000 (expected an entry starting with AA 50; \
         the file has {len} bytes)"
    )]
    NoPartitionTable {
        /// Length of the file.
        len: u64,
    },
    /// The file ends inside the partition table.
    #[error(
        "factory image: the partition table entry at 0x{offset:X} is cut off by the end of the file"
    )]
    PartitionTableTruncated {
        /// Offset of the entry.
        offset: u64,
    },
    /// An entry with an unknown magic.
    #[error(
        "factory image: invalid partition table entry at 0x{offset:X}: it starts with \
         {:02X} {:02X}, expected AA 50 (entry), EB EB (MD5) or FF FF (end)",
        magic.to_le_bytes()[0],
        magic.to_le_bytes()[1]
    )]
    BadPartitionEntry {
        /// Offset of the entry.
        offset: u64,
        /// Its first two bytes, little-endian.
        magic: u16,
    },
    /// The MD5 entry does not match the entries.
    #[error(
        "factory image: partition table MD5 mismatch: stored {stored}, computed {computed}; the \
         partition table is corrupt"
    )]
    PartitionTableMd5 {
        /// Stored MD5, hex.
        stored: String,
        /// Computed MD5, hex.
        computed: String,
    },
    /// The table has no app partition.
    #[error("factory image: the partition table has no app partition (type 0)")]
    NoAppPartition,
    /// The file ends before the application.
    #[error(
        "factory image: the app partition {name} starts at 0x{offset:X} but the file ends at \
         0x{len:X}; the image contains no application"
    )]
    AppMissing {
        /// Partition label.
        name: String,
        /// Partition offset.
        offset: u32,
        /// Length of the file.
        len: u64,
    },
    /// The application image is invalid.
    #[error("factory image: the application at 0x{offset:X} is invalid: {error}")]
    App {
        /// Offset of the application.
        offset: u32,
        /// Why.
        error: EspError,
    },
    /// The application is larger than its partition.
    #[error(
        "factory image: the application ({app_len} bytes) does not fit its partition {name} at \
         0x{offset:X} ({size} bytes)"
    )]
    AppTooLarge {
        /// Partition label.
        name: String,
        /// Partition offset.
        offset: u32,
        /// Partition size.
        size: u32,
        /// Application image length.
        app_len: u64,
    },
    /// Bootloader and application are for different chips.
    #[error("factory image: the bootloader is for {bootloader} but the application is for {app}")]
    ChipMismatch {
        /// Chip of the bootloader.
        bootloader: Chip,
        /// Chip of the application.
        app: Chip,
    },
    /// The image is for another chip than the target.
    #[error("factory image is built for {found} but the target is {expected}")]
    WrongChip {
        /// Chip the caller expects.
        expected: Chip,
        /// Chip of the image.
        found: Chip,
    },
}

/// Where a factory image's bootloader is, as far as a cheap look tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FactorySniff {
    pub(crate) bootloader_offset: u32,
    pub(crate) chip: Option<Chip>,
}

/// Recognises a merged factory image (see the `esp` module documentation).
pub(crate) fn sniff(bytes: &[u8]) -> Option<FactorySniff> {
    if let Some(offset) = padded_bootloader_offset(bytes) {
        return Some(FactorySniff {
            bootloader_offset: u32::try_from(offset).unwrap_or(u32::MAX),
            chip: bytes.get(offset..).and_then(sniff_extended_header),
        });
    }
    let table = to_usize(PARTITION_TABLE_OFFSET);
    let chip = sniff_extended_header(bytes)?;
    if plausible_partition_entry(bytes, table)
        && segments_end(bytes).is_some_and(|end| end <= table)
    {
        return Some(FactorySniff {
            bootloader_offset: 0,
            chip: Some(chip),
        });
    }
    None
}

/// Offset of an ESP image that follows nothing but 0xFF bytes at 0x1000 or 0x2000.
fn padded_bootloader_offset(bytes: &[u8]) -> Option<usize> {
    PADDED_BOOTLOADER_OFFSETS.into_iter().find(|&off| {
        u8_at(bytes, off) == Some(IMAGE_MAGIC)
            && bytes
                .get(..off)
                .is_some_and(|pad| pad.iter().all(|&b| b == 0xFF))
    })
}

/// Whether `offset` holds something that looks like a partition entry.
fn plausible_partition_entry(bytes: &[u8], offset: usize) -> bool {
    let Some(entry) = slice_at(bytes, offset, ENTRY_LEN) else {
        return false;
    };
    let label = entry.get(12..28).unwrap_or_default();
    let label_len = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    let (text, rest) = label.split_at(label_len);
    u16_at(entry, 0) == Some(ENTRY_MAGIC)
        && u32_at(entry, 4).is_some_and(|o| o % 0x1000 == 0)
        && u32_at(entry, 8).is_some_and(|s| s > 0)
        && !text.is_empty()
        && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        && rest.iter().all(|&b| b == 0)
}

/// Parses a merged factory image for serial flashing at offset 0x0.
///
/// `expected` is the target chip, when known.
pub fn parse_factory(
    bytes: &[u8],
    expected: Option<Chip>,
) -> Result<EspFactoryImage, FactoryError> {
    let bootloader_offset = if bytes.first() == Some(&IMAGE_MAGIC) {
        0
    } else {
        padded_bootloader_offset(bytes).ok_or(FactoryError::NoBootloader {
            first_byte: bytes.first().copied(),
        })?
    };
    let boot_off32 = u32::try_from(bootloader_offset).unwrap_or(u32::MAX);
    let bootloader_bytes = bytes.get(bootloader_offset..).unwrap_or_default();
    let bootloader = parse_image(bootloader_bytes, expected.filter(|c| c.is_esp32_family()))
        .map_err(|error| match error {
            EspError::ChipMismatch { expected, found } => {
                FactoryError::WrongChip { expected, found }
            }
            error => FactoryError::Bootloader {
                offset: boot_off32,
                error,
            },
        })?;
    let chip = bootloader.chip;
    if let Some(expected) = expected.filter(|&e| e != chip) {
        return Err(FactoryError::WrongChip {
            expected,
            found: chip,
        });
    }
    if let Some(boots_from) = chip.bootloader_offset()
        && boots_from != boot_off32
    {
        return Err(FactoryError::BootloaderOffset {
            chip,
            found: boot_off32,
            expected: boots_from,
        });
    }
    let boot_end = to_u64(bootloader_offset).saturating_add(bootloader.image_len);
    if boot_end > u64::from(PARTITION_TABLE_OFFSET) {
        return Err(FactoryError::BootloaderTooLong {
            offset: boot_off32,
            end: boot_end,
        });
    }

    let (partitions, partition_table_md5) = parse_partition_table(bytes)?;
    let app_partition = partitions
        .iter()
        .filter(|p| p.is_app())
        .min_by_key(|p| p.offset)
        .ok_or(FactoryError::NoAppPartition)?;
    let app_offset = app_partition.offset;
    let app_bytes = bytes
        .get(to_usize(app_offset)..)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| FactoryError::AppMissing {
            name: app_partition.name.clone(),
            offset: app_offset,
            len: to_u64(bytes.len()),
        })?;
    let app = parse_image(app_bytes, Some(chip))
        .and_then(|app| match app.app {
            Some(_) => Ok(app),
            None => Err(EspError::NotAnApp { chip: app.chip }),
        })
        .map_err(|error| match error {
            EspError::ChipMismatch { found, .. } => FactoryError::ChipMismatch {
                bootloader: chip,
                app: found,
            },
            error => FactoryError::App {
                offset: app_offset,
                error,
            },
        })?;
    if app.image_len > u64::from(app_partition.size) {
        return Err(FactoryError::AppTooLarge {
            name: app_partition.name.clone(),
            offset: app_offset,
            size: app_partition.size,
            app_len: app.image_len,
        });
    }

    Ok(EspFactoryImage {
        chip,
        bootloader_offset: boot_off32,
        bootloader,
        partition_table_offset: PARTITION_TABLE_OFFSET,
        partitions,
        partition_table_md5,
        app_offset,
        app,
        file_len: to_u64(bytes.len()),
    })
}

/// Reads the partition table at 0x8000: entries until an `FF FF` end marker (or the 0xC00 byte
/// limit), verifying the MD5 entry if there is one.
fn parse_partition_table(bytes: &[u8]) -> Result<(Vec<Partition>, bool), FactoryError> {
    let base = to_usize(PARTITION_TABLE_OFFSET);
    if u16_at(bytes, base) != Some(ENTRY_MAGIC) {
        return Err(FactoryError::NoPartitionTable {
            len: to_u64(bytes.len()),
        });
    }
    let mut partitions = Vec::new();
    let mut has_md5 = false;
    for index in 0..PARTITION_TABLE_MAX_LEN / ENTRY_LEN {
        let offset = base + index * ENTRY_LEN;
        let entry =
            slice_at(bytes, offset, ENTRY_LEN).ok_or(FactoryError::PartitionTableTruncated {
                offset: to_u64(offset),
            })?;
        let magic = u16_at(entry, 0).unwrap_or_default();
        match magic {
            ENTRY_MAGIC => partitions.push(Partition {
                name: c_string(entry.get(12..28).unwrap_or_default()),
                partition_type: u8_at(entry, 2).unwrap_or_default(),
                subtype: u8_at(entry, 3).unwrap_or_default(),
                offset: u32_at(entry, 4).unwrap_or_default(),
                size: u32_at(entry, 8).unwrap_or_default(),
                flags: u32_at(entry, 28).unwrap_or_default(),
            }),
            MD5_MAGIC => {
                let covered = bytes.get(base..offset).unwrap_or_default();
                let computed: [u8; 16] = Md5::digest(covered).into();
                let stored = entry.get(16..32).unwrap_or_default();
                if stored != computed {
                    return Err(FactoryError::PartitionTableMd5 {
                        stored: hex::encode(stored),
                        computed: hex::encode(computed),
                    });
                }
                has_md5 = true;
            }
            0xFFFF => break,
            magic => {
                return Err(FactoryError::BadPartitionEntry {
                    offset: to_u64(offset),
                    magic,
                });
            }
        }
    }
    Ok((partitions, has_md5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition_type: u8, subtype: u8) -> Partition {
        Partition {
            name: "p".into(),
            partition_type,
            subtype,
            offset: 0x10000,
            size: 0x1000,
            flags: 0,
        }
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition(0, 0).subtype_name(), "factory");
        assert_eq!(partition(0, 0x10).subtype_name(), "ota_0");
        assert_eq!(partition(0, 0x1F).subtype_name(), "ota_15");
        assert_eq!(partition(1, 0x02).subtype_name(), "nvs");
        assert_eq!(partition(1, 0x82).subtype_name(), "spiffs");
        assert_eq!(partition(0x40, 0x07).subtype_name(), "0x07");
        assert_eq!(partition(0, 0).type_name(), "app");
        assert_eq!(partition(1, 0).type_name(), "data");
        assert_eq!(partition(0x40, 0).type_name(), "custom");
        assert!(partition(0, 0x11).is_app());
    }

    #[test]
    fn plausible_entry_needs_magic_alignment_size_and_label() {
        let mut b = vec![0u8; 32];
        b[0..2].copy_from_slice(&[0xAA, 0x50]);
        b[4..8].copy_from_slice(&0x9000u32.to_le_bytes());
        b[8..12].copy_from_slice(&0x5000u32.to_le_bytes());
        b[12..15].copy_from_slice(b"nvs");
        assert!(plausible_partition_entry(&b, 0));
        let mut unaligned = b.clone();
        unaligned[4] = 1;
        assert!(!plausible_partition_entry(&unaligned, 0));
        let mut no_label = b.clone();
        no_label[12..15].copy_from_slice(&[0, 0, 0]);
        assert!(!plausible_partition_entry(&no_label, 0));
        let mut garbage_after_label = b.clone();
        garbage_after_label[20] = b'x';
        garbage_after_label[19] = 0;
        assert!(!plausible_partition_entry(&garbage_after_label, 0));
        assert!(!plausible_partition_entry(&b[..31], 0));
    }
}

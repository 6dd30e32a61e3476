//! Builders for ESP application, bootloader and merged factory images.
//!
//! What it does: lays out plausible segments for the chip, writes the application description
//! into the first segment, pads, checksums and (for the ESP32 family, by default) appends the
//! SHA-256; merges images with a partition table. What it does not do: validate (use
//! [`crate::esp`]).

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::esp::{
    APP_DESC_MAGIC, CHECKSUM_SEED, Chip, FlashFreq, FlashMode, FlashSize, IMAGE_MAGIC,
    PARTITION_TABLE_OFFSET, Partition,
};

use super::deterministic_payload;

/// Size of `esp_app_desc_t`.
const APP_DESC_LEN: usize = 256;

/// The application description to write.
#[derive(Debug, Clone)]
struct AppDesc {
    secure_version: u32,
    version: String,
    project_name: String,
    time: String,
    date: String,
    idf_ver: String,
    elf_sha256: [u8; 32],
}

/// Builds an ESP application image (or, with [`Self::bootloader`], a bootloader image).
///
/// Defaults: DIO, 4 MB, 40 MHz; version `1.0.0`, project `ota-test`; 4 KiB of payload in three
/// segments; for the ESP32 family an extended header (wp pin 0xEE, any revision) and an
/// appended SHA-256.
#[derive(Debug, Clone)]
pub struct EspAppBuilder {
    chip: Chip,
    flash_mode: FlashMode,
    flash_size: FlashSize,
    flash_freq: FlashFreq,
    entry_addr: Option<u32>,
    app_desc: Option<AppDesc>,
    payload_size: usize,
    extra_segments: Vec<(u32, Vec<u8>)>,
    hash_appended: Option<bool>,
    hash_appended_byte: Option<u8>,
    chip_id_override: Option<u16>,
    segment_count_override: Option<u8>,
    min_chip_rev_full: u16,
    max_chip_rev_full: u16,
    trailer: Vec<u8>,
}

impl EspAppBuilder {
    /// An application image for `chip`.
    pub fn new(chip: Chip) -> Self {
        Self {
            chip,
            flash_mode: FlashMode::Dio,
            flash_size: FlashSize::Mb4,
            flash_freq: FlashFreq::Mhz40,
            entry_addr: None,
            app_desc: chip.is_esp32_family().then(|| AppDesc {
                secure_version: 0,
                version: "1.0.0".into(),
                project_name: "ota-test".into(),
                time: "12:00:00".into(),
                date: "Jan  1 2026".into(),
                idf_ver: "v5.4.1".into(),
                elf_sha256: [0xAB; 32],
            }),
            payload_size: 4096,
            extra_segments: Vec::new(),
            hash_appended: None,
            hash_appended_byte: None,
            chip_id_override: None,
            segment_count_override: None,
            min_chip_rev_full: 0,
            max_chip_rev_full: 0xFFFF,
            trailer: Vec::new(),
        }
    }

    /// A second-stage bootloader image for `chip`: no application description, 1 KiB payload.
    pub fn bootloader(chip: Chip) -> Self {
        Self::new(chip).without_app_desc().payload_size(1024)
    }

    fn desc(&mut self) -> &mut AppDesc {
        assert!(
            self.chip.is_esp32_family(),
            "ESP8266 images have no application description"
        );
        self.app_desc.get_or_insert_with(|| AppDesc {
            secure_version: 0,
            version: String::new(),
            project_name: String::new(),
            time: String::new(),
            date: String::new(),
            idf_ver: String::new(),
            elf_sha256: [0; 32],
        })
    }

    /// Application version (at most 31 bytes).
    pub fn version(mut self, v: &str) -> Self {
        assert!(
            v.len() < 32,
            "version {v:?} does not fit 32 bytes with its NUL"
        );
        self.desc().version = v.into();
        self
    }

    /// Project name (at most 31 bytes).
    pub fn project_name(mut self, name: &str) -> Self {
        assert!(
            name.len() < 32,
            "project name {name:?} does not fit 32 bytes with its NUL"
        );
        self.desc().project_name = name.into();
        self
    }

    /// Secure version.
    pub fn secure_version(mut self, v: u32) -> Self {
        self.desc().secure_version = v;
        self
    }

    /// Build date and time (at most 15 bytes each).
    pub fn build_time(mut self, date: &str, time: &str) -> Self {
        assert!(
            date.len() < 16 && time.len() < 16,
            "date/time do not fit 16 bytes"
        );
        let desc = self.desc();
        desc.date = date.into();
        desc.time = time.into();
        self
    }

    /// ESP-IDF version (at most 31 bytes).
    pub fn idf_ver(mut self, v: &str) -> Self {
        assert!(
            v.len() < 32,
            "idf version {v:?} does not fit 32 bytes with its NUL"
        );
        self.desc().idf_ver = v.into();
        self
    }

    /// SHA-256 of the application ELF.
    pub fn elf_sha256(mut self, sha: [u8; 32]) -> Self {
        self.desc().elf_sha256 = sha;
        self
    }

    /// Leaves out the application description (a bootloader, or a non-application image).
    pub fn without_app_desc(mut self) -> Self {
        self.app_desc = None;
        self
    }

    /// Bytes of payload spread over the three generated segments (rounded up to multiples of 4).
    pub fn payload_size(mut self, len: usize) -> Self {
        self.payload_size = len;
        self
    }

    /// Appends a segment after the generated ones (`data` is zero-padded to a multiple of 4).
    pub fn segment(mut self, load_addr: u32, data: impl Into<Vec<u8>>) -> Self {
        self.extra_segments.push((load_addr, data.into()));
        self
    }

    /// Whether to append the SHA-256 (ESP32 family only; default yes).
    pub fn sha256(mut self, appended: bool) -> Self {
        assert!(
            self.chip.is_esp32_family() || !appended,
            "ESP8266 images cannot carry an appended SHA-256"
        );
        self.hash_appended = Some(appended);
        self
    }

    /// Writes this raw `hash_appended` byte (invalid values for negative tests; no digest is
    /// appended unless it is 1).
    pub fn hash_appended_byte(mut self, value: u8) -> Self {
        self.hash_appended_byte = Some(value);
        self
    }

    /// Writes this chip id into the extended header instead of the chip's own.
    pub fn chip_id(mut self, id: u16) -> Self {
        self.chip_id_override = Some(id);
        self
    }

    /// Writes this segment count into the header instead of the real one.
    pub fn segment_count(mut self, count: u8) -> Self {
        self.segment_count_override = Some(count);
        self
    }

    /// Flash parameters for the header.
    pub fn flash(mut self, mode: FlashMode, size: FlashSize, freq: FlashFreq) -> Self {
        assert!(
            size.code_for(self.chip).is_some(),
            "{} images cannot encode flash size {size:?}",
            self.chip
        );
        self.flash_mode = mode;
        self.flash_size = size;
        self.flash_freq = freq;
        self
    }

    /// Entry point.
    pub fn entry(mut self, addr: u32) -> Self {
        self.entry_addr = Some(addr);
        self
    }

    /// Chip revision bounds (major * 100 + minor; 0xFFFF = any).
    pub fn chip_revisions(mut self, min_full: u16, max_full: u16) -> Self {
        self.min_chip_rev_full = min_full;
        self.max_chip_rev_full = max_full;
        self
    }

    /// Bytes after the image (a signature block, or the rest of an ESP8266 flash image).
    pub fn trailer(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.trailer = bytes.into();
        self
    }

    /// Plausible load addresses: (first segment, second, third), and the entry point.
    fn addresses(&self) -> ([u32; 3], u32) {
        match self.chip {
            Chip::Esp8266 => ([0x4010_0000, 0x3FFE_8000, 0x3FFE_8800], 0x4010_0004),
            Chip::Esp32 => ([0x3F40_0020, 0x4008_0000, 0x400D_0020], 0x4008_1000),
            Chip::Esp32S2 => ([0x3F00_0020, 0x4002_2000, 0x4008_0020], 0x4002_4000),
            Chip::Esp32S3 => ([0x3C00_0020, 0x4037_0000, 0x4200_0020], 0x4037_5000),
            _ => ([0x3C00_0020, 0x4038_0000, 0x4200_0020], 0x4038_0400),
        }
    }

    /// Segments as written: (load address, data padded to 4 bytes).
    fn segments(&self) -> Vec<(u32, Vec<u8>)> {
        let (addrs, _) = self.addresses();
        let seed = self.app_desc.as_ref().map_or(0, |d| {
            d.version
                .bytes()
                .fold(17u32, |h, b| h.wrapping_mul(31) ^ u32::from(b))
        });
        let third = self.payload_size / 3;
        let sizes = [self.payload_size - 2 * third, third, third];
        let mut segments = Vec::new();
        for (i, (&addr, &size)) in addrs.iter().zip(sizes.iter()).enumerate() {
            let index = u32::try_from(i).expect("three segments");
            let mut data = Vec::new();
            if i == 0
                && let Some(desc) = &self.app_desc
            {
                data.extend_from_slice(&app_desc_bytes(desc));
            }
            data.extend_from_slice(&deterministic_payload(size, seed.wrapping_add(index)));
            segments.push((addr, data));
        }
        segments.extend(self.extra_segments.iter().cloned());
        for (_, data) in &mut segments {
            data.resize(data.len().div_ceil(4) * 4, 0);
        }
        segments
    }

    /// The image bytes.
    pub fn build(&self) -> Vec<u8> {
        let segments = self.segments();
        let (_, default_entry) = self.addresses();
        let count = self
            .segment_count_override
            .unwrap_or_else(|| u8::try_from(segments.len()).expect("segment count fits a byte"));
        let size_code = self.flash_size.code_for(self.chip).unwrap_or(0);
        let mut out = vec![
            IMAGE_MAGIC,
            count,
            self.flash_mode.code(),
            (size_code << 4) | self.flash_freq.code(),
        ];
        out.extend_from_slice(&self.entry_addr.unwrap_or(default_entry).to_le_bytes());

        let hash_byte = match (self.hash_appended_byte, self.hash_appended) {
            (Some(raw), _) => raw,
            (None, Some(appended)) => u8::from(appended),
            (None, None) => 1,
        };
        if let Some(chip_id) = self.chip_id_override.or(self.chip.image_chip_id()) {
            out.extend_from_slice(&[0xEE, 0, 0, 0]);
            out.extend_from_slice(&chip_id.to_le_bytes());
            out.push(0);
            out.extend_from_slice(&self.min_chip_rev_full.to_le_bytes());
            out.extend_from_slice(&self.max_chip_rev_full.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.push(hash_byte);
        }

        let mut checksum = CHECKSUM_SEED;
        for (addr, data) in &segments {
            out.extend_from_slice(&addr.to_le_bytes());
            let len = u32::try_from(data.len()).expect("segment under 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(data);
            checksum = data.iter().fold(checksum, |acc, b| acc ^ b);
        }
        while out.len() % 16 != 15 {
            out.push(0);
        }
        out.push(checksum);
        if self.chip.is_esp32_family() && hash_byte == 1 {
            let digest: [u8; 32] = Sha256::digest(&out).into();
            out.extend_from_slice(&digest);
        }
        out.extend_from_slice(&self.trailer);
        out
    }
}

/// `esp_app_desc_t` bytes.
fn app_desc_bytes(desc: &AppDesc) -> [u8; APP_DESC_LEN] {
    fn put(out: &mut [u8; APP_DESC_LEN], at: usize, s: &str) {
        out[at..at + s.len()].copy_from_slice(s.as_bytes());
    }
    let mut out = [0u8; APP_DESC_LEN];
    out[0..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&desc.secure_version.to_le_bytes());
    put(&mut out, 16, &desc.version);
    put(&mut out, 48, &desc.project_name);
    put(&mut out, 80, &desc.time);
    put(&mut out, 96, &desc.date);
    put(&mut out, 112, &desc.idf_ver);
    out[144..176].copy_from_slice(&desc.elf_sha256);
    out
}

/// ESPHome's default partition table for 4 MB ESP32-family devices: nvs, otadata, app0 (ota_0 at
/// 0x10000), app1, eeprom, spiffs.
pub fn esphome_partitions() -> Vec<Partition> {
    let p = |name: &str, partition_type, subtype, offset, size| Partition {
        name: name.into(),
        partition_type,
        subtype,
        offset,
        size,
        flags: 0,
    };
    vec![
        p("nvs", 1, 0x02, 0x9000, 0x5000),
        p("otadata", 1, 0x00, 0xE000, 0x2000),
        p("app0", 0, 0x10, 0x10000, 0x1C_0000),
        p("app1", 0, 0x11, 0x1D_0000, 0x1C_0000),
        p("eeprom", 1, 0x99, 0x39_0000, 0x1000),
        p("spiffs", 1, 0x82, 0x39_1000, 0xF000),
    ]
}

/// Builds a merged factory image: 0xFF padding, bootloader at the chip's offset, partition
/// table at 0x8000, application at the lowest app partition (0x10000 by default).
#[derive(Debug, Clone)]
pub struct FactoryImageBuilder {
    chip: Chip,
    bootloader: Option<Vec<u8>>,
    bootloader_offset: Option<u32>,
    app: Option<Vec<u8>>,
    partitions: Vec<Partition>,
    md5: bool,
    raw_entries: Vec<[u8; 32]>,
}

impl FactoryImageBuilder {
    /// A factory image for `chip` (ESP32 family) with ESPHome's partition table, an MD5 entry,
    /// [`EspAppBuilder::bootloader`] and [`EspAppBuilder::new`].
    pub fn new(chip: Chip) -> Self {
        assert!(
            chip.is_esp32_family(),
            "ESP8266 factory images are plain app images"
        );
        Self {
            chip,
            bootloader: None,
            bootloader_offset: None,
            app: None,
            partitions: esphome_partitions(),
            md5: true,
            raw_entries: Vec::new(),
        }
    }

    /// Uses these bootloader bytes.
    pub fn bootloader(mut self, image: Vec<u8>) -> Self {
        self.bootloader = Some(image);
        self
    }

    /// Puts the bootloader at this offset instead of the chip's.
    pub fn bootloader_offset(mut self, offset: u32) -> Self {
        self.bootloader_offset = Some(offset);
        self
    }

    /// Uses these application bytes.
    pub fn app(mut self, image: Vec<u8>) -> Self {
        self.app = Some(image);
        self
    }

    /// Uses this partition table.
    pub fn partitions(mut self, partitions: Vec<Partition>) -> Self {
        self.partitions = partitions;
        self
    }

    /// Whether to write the MD5 entry (default yes).
    pub fn md5(mut self, md5: bool) -> Self {
        self.md5 = md5;
        self
    }

    /// Appends a raw 32-byte entry after the partitions (before the MD5 entry).
    pub fn raw_entry(mut self, entry: [u8; 32]) -> Self {
        self.raw_entries.push(entry);
        self
    }

    /// The partition table bytes (0xC00, 0xFF-padded).
    pub fn partition_table(&self) -> Vec<u8> {
        let mut table = Vec::new();
        for p in &self.partitions {
            assert!(
                p.name.len() <= 16,
                "partition name {:?} over 16 bytes",
                p.name
            );
            table.extend_from_slice(&[0xAA, 0x50, p.partition_type, p.subtype]);
            table.extend_from_slice(&p.offset.to_le_bytes());
            table.extend_from_slice(&p.size.to_le_bytes());
            let mut label = [0u8; 16];
            label[..p.name.len()].copy_from_slice(p.name.as_bytes());
            table.extend_from_slice(&label);
            table.extend_from_slice(&p.flags.to_le_bytes());
        }
        for raw in &self.raw_entries {
            table.extend_from_slice(raw);
        }
        if self.md5 {
            let digest: [u8; 16] = Md5::digest(&table).into();
            table.extend_from_slice(&[0xEB, 0xEB]);
            table.extend_from_slice(&[0xFF; 14]);
            table.extend_from_slice(&digest);
        }
        table.resize(0xC00, 0xFF);
        table
    }

    /// The factory image bytes.
    pub fn build(&self) -> Vec<u8> {
        let bootloader = self
            .bootloader
            .clone()
            .unwrap_or_else(|| EspAppBuilder::bootloader(self.chip).build());
        let app = self
            .app
            .clone()
            .unwrap_or_else(|| EspAppBuilder::new(self.chip).build());
        let boot_at = self
            .bootloader_offset
            .or(self.chip.bootloader_offset())
            .unwrap_or(0);
        let boot_at = usize::try_from(boot_at).expect("offset fits usize");
        let table_at = usize::try_from(PARTITION_TABLE_OFFSET).expect("fits");
        assert!(
            boot_at + bootloader.len() <= table_at,
            "bootloader overlaps the partition table"
        );
        let app_at = self
            .partitions
            .iter()
            .filter(|p| p.is_app())
            .map(|p| p.offset)
            .min()
            .map_or(0x10000, |o| usize::try_from(o).expect("fits"));
        assert!(
            app_at >= table_at + 0xC00,
            "app overlaps the partition table"
        );

        let mut out = vec![0xFF; app_at];
        out[boot_at..boot_at + bootloader.len()].copy_from_slice(&bootloader);
        let table = self.partition_table();
        out[table_at..table_at + table.len()].copy_from_slice(&table);
        out.extend_from_slice(&app);
        out
    }
}

//! Wire constants of ESPHome's native OTA protocol: magic, response bytes, feature bits, sizes,
//! the OTA version and OTA type bytes, and ESPHome's default timeouts.
//!
//! What it does not do: parse or produce any sequence of bytes; the client and device machines
//! do that. Values are those of ESPHome 2026.10.0 (`espota2.py`, `ota_backend.h`).

use std::time::Duration;

/// The five magic bytes the uploader sends first.
pub const MAGIC: [u8; 5] = [0x6C, 0x26, 0xF7, 0x5C, 0x45];

/// Image bytes per block: the uploader sends blocks of this size and, on OTA version 2, waits for
/// one [`response::CHUNK_OK`] after each.
pub const BLOCK_SIZE: usize = 8192;

/// Largest plaintext of one encrypted data frame (the device's buffer is this plus the MAC).
pub const NOISE_MAX_PLAINTEXT: usize = 1024;

/// Length of a ChaCha20-Poly1305 tag.
pub const NOISE_MAC_LEN: usize = 16;

/// Raw deflate window the device inflates with: `1 << 12` = 4096 bytes.
pub const DEFLATE_WINDOW_BITS: u8 = 12;

/// Largest back reference the device's ring window can serve.
pub const DEFLATE_WINDOW: usize = 1 << DEFLATE_WINDOW_BITS;

/// Most bytes the device reads per `read()` in the data phase (`OTA_BUFFER_SIZE`).
pub const DEVICE_READ_SIZE: usize = 1040;

/// ESPHome's uploader: connect and handshake timeout (until authentication is done).
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// ESPHome's uploader: per-read timeout once authentication is done (`DATA_PHASE_TIMEOUT`).
pub const CLIENT_DATA_TIMEOUT: Duration = Duration::from_secs(160);

/// The device: the whole handshake (magic to authentication) must finish this soon after accept.
pub const DEVICE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// The device: the data phase aborts after this long without data (`OTA_SOCKET_TIMEOUT_DATA`).
pub const DEVICE_DATA_TIMEOUT: Duration = Duration::from_secs(105);

/// Single response bytes the device sends (and the client's final `OK`).
pub mod response {
    /// Magic ack first byte; also the client's final acknowledgement.
    pub const OK: u8 = 0x00;
    /// MD5 challenge follows (32 hex characters). Devices up to 2025.12.
    pub const REQUEST_AUTH: u8 = 0x01;
    /// SHA256 challenge follows (64 hex characters). Devices since 2025.10.
    pub const REQUEST_SHA256_AUTH: u8 = 0x02;
    /// Legacy feature ack: no compression.
    pub const HEADER_OK: u8 = 0x40;
    /// Start of the data phase; always sent, with or without a password.
    pub const AUTH_OK: u8 = 0x41;
    /// The backend accepted the size.
    pub const UPDATE_PREPARE_OK: u8 = 0x42;
    /// The MD5 was read.
    pub const BIN_MD5_OK: u8 = 0x43;
    /// All announced bytes arrived.
    pub const RECEIVE_OK: u8 = 0x44;
    /// The image verified and was committed; the device reboots next.
    pub const UPDATE_END_OK: u8 = 0x45;
    /// Legacy feature ack: send gzip.
    pub const SUPPORTS_COMPRESSION: u8 = 0x46;
    /// OTA version 2: one 8 KiB block received.
    pub const CHUNK_OK: u8 = 0x47;
    /// Extended feature ack: one server flag byte follows.
    pub const FEATURE_FLAGS: u8 = 0x48;
}

/// Feature bits the uploader sends after the magic ack.
pub mod client_feature {
    /// The uploader can send gzip.
    pub const COMPRESSION: u8 = 0x01;
    /// The uploader answers SHA256 challenges.
    pub const SHA256_AUTH: u8 = 0x02;
    /// The uploader speaks the extended protocol (`48 SS` ack, OTA type byte).
    pub const EXTENDED: u8 = 0x04;
    /// The uploader can encrypt with Noise; counts only together with [`EXTENDED`].
    pub const NOISE: u8 = 0x08;
    /// The uploader can send raw deflate with a 4 KiB window.
    pub const DEFLATE: u8 = 0x10;
}

/// Server flag bits that follow an extended feature ack.
pub mod server_flag {
    /// Send gzip (the backend stores it and inflates at reboot).
    pub const COMPRESSION: u8 = 0x01;
    /// Partition table and bootloader updates are allowed.
    pub const PARTITION_ACCESS: u8 = 0x02;
    /// The device offers Noise encryption.
    pub const NOISE: u8 = 0x04;
    /// Send raw deflate (binding once offered: the image-size field follows the size).
    pub const DEFLATE: u8 = 0x08;
}

/// The OTA protocol version the device announces after the magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OtaVersion {
    /// Version 1: no chunk acknowledgements.
    V1,
    /// Version 2 (ESPHome 2024.2+ default): one `0x47` per 8 KiB block.
    #[default]
    V2,
}

impl OtaVersion {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// The version announced by this byte, if the uploader supports it.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }

    /// Whether the device acknowledges every 8 KiB block.
    pub fn has_chunk_acks(self) -> bool {
        self == Self::V2
    }
}

/// What the upload replaces (extended protocol only; older devices take only applications).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OtaType {
    /// The application image.
    #[default]
    App,
    /// The partition table (needs `allow_partition_access`).
    PartitionTable,
    /// The bootloader (needs `allow_partition_access`).
    Bootloader,
}

impl OtaType {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Self::App => 0,
            Self::PartitionTable => 1,
            Self::Bootloader => 2,
        }
    }

    /// The type with this byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::App),
            1 => Some(Self::PartitionTable),
            2 => Some(Self::Bootloader),
            _ => None,
        }
    }
}

/// How the image travels on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// The image as is.
    #[default]
    None,
    /// `gzip -9`; the device stores it and inflates at reboot (ESP8266, RP2040).
    Gzip,
    /// Raw deflate, level 9, 4 KiB window; the device inflates while receiving (ESP32,
    /// LibreTiny, host).
    Deflate,
}

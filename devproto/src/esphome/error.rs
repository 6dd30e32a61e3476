//! Errors of ESPHome native OTA: the device's one-byte error responses ([`ErrorCode`]) and every
//! way an upload can fail on the uploader's side ([`ClientError`]).
//!
//! What it does: name each device code and say in its message what ESPHome means by it, and
//! classify uploader failures (retryable network trouble, or "the device may have committed").
//! What it does not do: decide a retry policy; the driver does, from [`ClientError::is_retryable`]
//! and [`ClientError::may_have_committed`]. No message ever contains a password or a key.

use thiserror::Error;

use super::client::ClientState;

/// An error byte the device sends (`OTAResponseTypes` 0x80–0x94 and 0xFF). After sending one
/// the device aborts the update and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[repr(u8)]
pub enum ErrorCode {
    /// 0x80.
    #[error(
        "invalid magic (0x80): the device did not recognise the OTA preamble; an ESP32 also sends \
         this when the image does not start with 0xE9 (not an application image, e.g. a factory \
         image)"
    )]
    Magic = 0x80,
    /// 0x81.
    #[error(
        "could not prepare flash for the update (0x81): is the image too big? restarting the \
         device may help"
    )]
    UpdatePrepare = 0x81,
    /// 0x82.
    #[error(
        "authentication invalid (0x82): wrong OTA password (the running firmware's password \
         counts), or the uploader does not offer SHA256 authentication"
    )]
    AuthInvalid = 0x82,
    /// 0x83.
    #[error("writing the image to flash failed (0x83); the device log has the details")]
    WritingFlash = 0x83,
    /// 0x84.
    #[error(
        "finishing the update failed (0x84): the image did not validate (ESP8266: bad 0xE9 header \
         or a flash size larger than the chip)"
    )]
    UpdateEnd = 0x84,
    /// 0x85.
    #[error(
        "invalid bootstrapping (0x85): the ESP8266 is still in serial bootloader mode after a \
         serial flash; power-cycle (reset) it once, then retry"
    )]
    InvalidBootstrapping = 0x85,
    /// 0x86.
    #[error(
        "wrong current flash configuration (0x86): the running firmware was flashed with the \
         wrong flash size; flash it over serial with the right board"
    )]
    WrongCurrentFlashConfig = 0x86,
    /// 0x87.
    #[error(
        "wrong new flash configuration (0x87): the device does not have the flash size the new \
         image asks for (wrong board)"
    )]
    WrongNewFlashConfig = 0x87,
    /// 0x88.
    #[error(
        "not enough space on the ESP8266 (0x88): staging needs free space for the image plus the \
         current sketch; install a minimal firmware first"
    )]
    Esp8266NotEnoughSpace = 0x88,
    /// 0x89.
    #[error(
        "not enough space (0x89): the OTA partition is too small for the image; change the \
         partition table (serial flash, or a partition-table update)"
    )]
    Esp32NotEnoughSpace = 0x89,
    /// 0x8A.
    #[error("no update partition (0x8A): the device has no OTA partition; flash it over serial")]
    NoUpdatePartition = 0x8A,
    /// 0x8B.
    #[error(
        "MD5 mismatch (0x8B): the image the device received does not match the announced MD5; \
         it was corrupted in transit"
    )]
    Md5Mismatch = 0x8B,
    /// 0x8C.
    #[error("not enough space on the RP2040 (0x8C) for the image")]
    Rp2040NotEnoughSpace = 0x8C,
    /// 0x8D.
    #[error(
        "signature invalid (0x8D): the image is not signed with the key the running firmware \
         trusts (secure boot)"
    )]
    SignatureInvalid = 0x8D,
    /// 0x8E.
    #[error(
        "unsupported OTA type (0x8E): the device does not accept this kind of update (partition \
         table or bootloader without allow_partition_access)"
    )]
    UnsupportedOtaType = 0x8E,
    /// 0x8F.
    #[error("partition table verification failed (0x8F); nothing was changed")]
    PartitionTableVerify = 0x8F,
    /// 0x90.
    #[error(
        "partition table update failed (0x90): the device is degraded and may not boot; retry \
         without rebooting it, or recover over serial"
    )]
    PartitionTableUpdate = 0x90,
    /// 0x91.
    #[error("bootloader verification failed (0x91); nothing was changed")]
    BootloaderVerify = 0x91,
    /// 0x92.
    #[error(
        "bootloader update failed (0x92): the device is degraded and may not boot; retry without \
         rebooting it, or recover over serial"
    )]
    BootloaderUpdate = 0x92,
    /// 0x93.
    #[error(
        "version downgrade refused (0x93): the device has downgrade protection and the image's \
         version is not newer than the running one"
    )]
    VersionDowngrade = 0x93,
    /// 0x94.
    #[error(
        "encryption required (0x94): the device only accepts Noise-encrypted uploads; configure \
         its OTA encryption key"
    )]
    EncryptionRequired = 0x94,
    /// 0xFF.
    #[error(
        "unknown error on the device (0xFF): includes its read timeouts and failures to inflate \
         the upload"
    )]
    Unknown = 0xFF,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 22] = [
        Self::Magic,
        Self::UpdatePrepare,
        Self::AuthInvalid,
        Self::WritingFlash,
        Self::UpdateEnd,
        Self::InvalidBootstrapping,
        Self::WrongCurrentFlashConfig,
        Self::WrongNewFlashConfig,
        Self::Esp8266NotEnoughSpace,
        Self::Esp32NotEnoughSpace,
        Self::NoUpdatePartition,
        Self::Md5Mismatch,
        Self::Rp2040NotEnoughSpace,
        Self::SignatureInvalid,
        Self::UnsupportedOtaType,
        Self::PartitionTableVerify,
        Self::PartitionTableUpdate,
        Self::BootloaderVerify,
        Self::BootloaderUpdate,
        Self::VersionDowngrade,
        Self::EncryptionRequired,
        Self::Unknown,
    ];

    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// The code this byte stands for, if it is one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.byte() == byte)
    }

    /// ESPHome's constant name without the `OTA_RESPONSE_ERROR_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Magic => "MAGIC",
            Self::UpdatePrepare => "UPDATE_PREPARE",
            Self::AuthInvalid => "AUTH_INVALID",
            Self::WritingFlash => "WRITING_FLASH",
            Self::UpdateEnd => "UPDATE_END",
            Self::InvalidBootstrapping => "INVALID_BOOTSTRAPPING",
            Self::WrongCurrentFlashConfig => "WRONG_CURRENT_FLASH_CONFIG",
            Self::WrongNewFlashConfig => "WRONG_NEW_FLASH_CONFIG",
            Self::Esp8266NotEnoughSpace => "ESP8266_NOT_ENOUGH_SPACE",
            Self::Esp32NotEnoughSpace => "ESP32_NOT_ENOUGH_SPACE",
            Self::NoUpdatePartition => "NO_UPDATE_PARTITION",
            Self::Md5Mismatch => "MD5_MISMATCH",
            Self::Rp2040NotEnoughSpace => "RP2040_NOT_ENOUGH_SPACE",
            Self::SignatureInvalid => "SIGNATURE_INVALID",
            Self::UnsupportedOtaType => "UNSUPPORTED_OTA_TYPE",
            Self::PartitionTableVerify => "PARTITION_TABLE_VERIFY",
            Self::PartitionTableUpdate => "PARTITION_TABLE_UPDATE",
            Self::BootloaderVerify => "BOOTLOADER_VERIFY",
            Self::BootloaderUpdate => "BOOTLOADER_UPDATE",
            Self::VersionDowngrade => "VERSION_DOWNGRADE",
            Self::EncryptionRequired => "ENCRYPTION_REQUIRED",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// The image does not fit the device (0x88, 0x89, 0x8C).
    pub fn is_not_enough_space(self) -> bool {
        matches!(
            self,
            Self::Esp8266NotEnoughSpace | Self::Esp32NotEnoughSpace | Self::Rp2040NotEnoughSpace
        )
    }
}

/// Why an upload failed, from the uploader's side.
///
/// [`ClientError::Device`] is the device's own verdict: ESPHome's uploader never retries those.
/// Network trouble ([`ClientError::ConnectionClosed`], [`ClientError::Timeout`]) is retryable,
/// unless the last image byte was already sent: then the device may have committed the update
/// and a retry could flash a device that already updated ([`ClientError::may_have_committed`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// The device answered with an error byte, then closed.
    #[error("device error while waiting for {waiting}: {code}")]
    Device {
        /// The device's code.
        code: ErrorCode,
        /// What the uploader was waiting for.
        waiting: ClientState,
    },
    /// The device sent a byte that is neither the expected answer nor an error code.
    #[error("unexpected response 0x{got:02X} from the device while waiting for {waiting}")]
    Unexpected {
        /// The byte received.
        got: u8,
        /// What the uploader was waiting for.
        waiting: ClientState,
    },
    /// The device announced an OTA version other than 1 or 2.
    #[error("device uses unsupported OTA version {0}; this uploader supports 1 and 2")]
    UnsupportedVersion(u8),
    /// The device asks for a password and none is configured.
    #[error("the device requests a password, but no password is configured")]
    PasswordRequired,
    /// A Noise key is configured, the device does not offer encryption and plaintext is not
    /// allowed.
    #[error(
        "an OTA encryption key is configured but the device does not offer encryption (firmware \
         before ESPHome 2026.9 or without an api encryption key); refusing to send the image in \
         plaintext unless plaintext uploads are allowed for this one install"
    )]
    EncryptionNotOffered,
    /// The device rejected the Noise handshake with its MAC-failure reason: a different key.
    #[error("the device rejected the encrypted handshake: is the OTA encryption key correct?")]
    NoiseWrongKey,
    /// The device rejected the Noise handshake for another reason.
    #[error("the device rejected the encrypted handshake: {0}")]
    NoiseRejected(String),
    /// The Noise layer failed (bad frame, decryption failure, handshake failure).
    #[error("encrypted transport failed: {detail}{}", committed_note(*.may_have_committed))]
    Noise {
        /// What went wrong (never key material).
        detail: String,
        /// The last image byte was sent: the device may have committed.
        may_have_committed: bool,
    },
    /// The upload needs a capability the device does not offer (partition table or bootloader
    /// update without the extended protocol or partition access).
    #[error("the device cannot take this upload: {0}")]
    Unsupported(&'static str),
    /// The image cannot be sent (empty, or larger than the 32-bit size field).
    #[error("invalid image: {0}")]
    InvalidImage(&'static str),
    /// The connection closed before the upload finished.
    #[error("connection closed while waiting for {waiting}{}", committed_note(*.may_have_committed))]
    ConnectionClosed {
        /// What the uploader was waiting for.
        waiting: ClientState,
        /// The last image byte was sent: the device may have committed.
        may_have_committed: bool,
    },
    /// The driver's timer for the current wait expired.
    #[error("timed out waiting for {waiting}{}", committed_note(*.may_have_committed))]
    Timeout {
        /// What the uploader was waiting for.
        waiting: ClientState,
        /// The last image byte was sent: the device may have committed.
        may_have_committed: bool,
    },
}

fn committed_note(may_have_committed: bool) -> &'static str {
    if may_have_committed {
        " (the device had the whole image and may have committed the update and be rebooting; \
         check its version before uploading again)"
    } else {
        ""
    }
}

impl ClientError {
    /// A fresh connection may succeed: network trouble before the last image byte was sent.
    /// Device error codes, authentication and policy failures are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ConnectionClosed {
                may_have_committed, ..
            }
            | Self::Timeout {
                may_have_committed, ..
            }
            | Self::Noise {
                may_have_committed, ..
            } => !may_have_committed,
            _ => false,
        }
    }

    /// The failure happened after the last image byte was sent, without a device verdict: the
    /// device may have committed the update. Never retry; check the running version instead.
    pub fn may_have_committed(&self) -> bool {
        matches!(
            self,
            Self::ConnectionClosed {
                may_have_committed: true,
                ..
            } | Self::Timeout {
                may_have_committed: true,
                ..
            } | Self::Noise {
                may_have_committed: true,
                ..
            }
        )
    }

    /// The device's error code, when the device reported one.
    pub fn device_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Device { code, .. } => Some(*code),
            _ => None,
        }
    }
}

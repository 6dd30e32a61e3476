//! Pure parsers and validators for firmware files: Zigbee OTA upgrade files, ESP application
//! images and merged ESP factory images, plus the digests the system records for every file
//! and the text form of the keys that sign them.
//!
//! What this crate does: take the bytes of a firmware file, say what it is, extract the facts
//! the rest of the system needs (versions, manufacturer and image type, chip, segments,
//! application description, partition table, where the image proper sits), and refuse anything
//! malformed with an error that names the problem. The parsers never panic, whatever the input.
//!
//! What it does not do: I/O of any kind, async, reading the clock, or deciding whether a
//! device should get an image (that is the server's and the agent's business).
//!
//! # Layout
//! - [`inspect`] with [`Expected`]: the one entry point; returns a [`FirmwareImage`] or an
//!   [`ImageError`].
//! - [`zigbee`]: Zigbee OTA upgrade files (magic search, header, optional fields, sub-elements,
//!   vendor prefix and trailer).
//! - [`esp`]: ESP application images (ESP32 family and ESP8266), chips, and merged factory
//!   images with their partition table.
//! - [`FirmwareHasher`] / [`Digests`]: SHA-256, MD5 and SHA-512 in one streaming pass.
//! - [`key_text`]: the text form of firmware signing keys (base64 or hex of 32 bytes).
//! - `builders` (feature `test-builders`): synthesise valid and broken files for tests.

mod bytes;
mod detect;
mod digests;
pub mod esp;
pub mod key_text;
pub mod zigbee;

#[cfg(any(test, feature = "test-builders"))]
pub mod builders;

pub use detect::{Expected, FirmwareImage, ImageError, inspect};
pub use digests::{DigestDecodeError, Digests, FirmwareHasher};
pub use esp::Chip;

//! Builders that synthesise firmware files for tests, here and across the workspace.
//!
//! What it does: [`ZigbeeOtaBuilder`] writes Zigbee OTA upgrade files (optional header fields,
//! arbitrary and Telink sub-elements, vendor prefix and trailer, header overrides for broken
//! files); [`EspAppBuilder`] writes ESP application (or bootloader) images for any chip,
//! ESP8266 included, with or without the appended SHA-256; [`FactoryImageBuilder`] merges a
//! bootloader, a partition table and an application into a factory image; [`corrupt`] breaks
//! them in targeted ways. Everything is deterministic: the same builder gives the same bytes.
//!
//! What it does not do: produce runnable firmware (payloads are filler), or check its own
//! output (the tests do that with the parsers). Builders panic on impossible requests (a header
//! string longer than 32 bytes, a bootloader that overlaps the partition table): they are test
//! helpers, and a panic there is a bug in the test.
//!
//! Only compiled with the `test-builders` feature (and for this crate's own tests).
//!
//! ```
//! use ota_firmware::builders::{EspAppBuilder, ZigbeeOtaBuilder};
//! use ota_firmware::{Chip, Expected, FirmwareImage, inspect};
//!
//! let zigbee = ZigbeeOtaBuilder::new(0x117C, 0x2803, 0x2309_3631)
//!     .header_string("EBL tradfri_wrgb")
//!     .upgrade_image(1024)
//!     .ikea_prefix(488)
//!     .trailer(vec![0xA5; 512])
//!     .build();
//! let Ok(FirmwareImage::Zigbee(file)) = inspect(&zigbee, Expected::Auto) else { panic!() };
//! assert_eq!(file.prefix_len, 488);
//! assert_eq!(file.header.file_version, 0x2309_3631);
//!
//! let app = EspAppBuilder::new(Chip::Esp32C3).version("2026.1.0").build();
//! let Ok(FirmwareImage::EspApp(image)) = inspect(&app, Expected::Auto) else { panic!() };
//! assert_eq!(image.version(), Some("2026.1.0"));
//! ```

pub mod corrupt;
mod esp;
mod zigbee;

pub use esp::{EspAppBuilder, FactoryImageBuilder, esphome_partitions};
pub use zigbee::ZigbeeOtaBuilder;

/// `len` filler bytes, the same for the same `seed`, never zero (so a synthesised ESP8266 image
/// can never look like an ESP32-family extended header, whose reserved bytes are zero).
pub fn deterministic_payload(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            match state.to_le_bytes()[3] {
                0 => 0x5A,
                b => b,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_never_zero() {
        let a = deterministic_payload(4096, 7);
        assert_eq!(a, deterministic_payload(4096, 7));
        assert_ne!(a, deterministic_payload(4096, 8));
        assert_eq!(a.len(), 4096);
        assert!(a.iter().all(|&b| b != 0));
        assert!(deterministic_payload(0, 1).is_empty());
    }
}

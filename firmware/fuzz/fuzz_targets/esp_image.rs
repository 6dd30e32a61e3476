//! Fuzzes the ESP image parsers (application, single image, factory) with arbitrary bytes and
//! every way of naming the chip. Nothing may panic; an accepted image's segments lie inside the
//! input, its checksum matches, and (for a named chip) cutting it before its end is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_firmware::esp::{self, CHECKSUM_SEED};
use ota_firmware::{Chip, Expected, inspect};

fuzz_target!(|data: &[u8]| {
    let chips = [
        None,
        Some(Chip::Esp32),
        Some(Chip::Esp32C3),
        Some(Chip::Esp8266),
    ];
    for chip in chips {
        let _ = inspect(data, Expected::EspApp { chip });
        let _ = inspect(data, Expected::EspFactory { chip });
        if let Ok(factory) = esp::parse_factory(data, chip) {
            assert!(factory.app_bytes(data).is_some());
        }
        let Ok(image) = esp::parse_image(data, chip) else {
            continue;
        };
        let xor = image
            .segments
            .iter()
            .flat_map(|s| s.data(data).expect("segment inside the input").iter())
            .fold(CHECKSUM_SEED, |a, b| a ^ b);
        assert_eq!(xor, image.checksum);
        assert_eq!(image.file_len(), data.len() as u64);
        // With a named chip the layout is fixed, so a cut image must be refused. (Without one, a
        // cut ESP8266 reading may legitimately leave a shorter valid ESP32-family reading.)
        if chip.is_some() {
            let end = image.image_len as usize;
            assert!(
                esp::parse_image(&data[..end - 1], chip).is_err(),
                "a truncated image was accepted"
            );
        }
    }
    let _ = esp::looks_like_factory(data);
    let _ = inspect(data, Expected::Auto);
});

//! `inspect`: format detection, what each `Expected` accepts, refusal messages, and the stored
//! (serde) form of the facts.

use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder, ZigbeeOtaBuilder};
use ota_firmware::esp::EspError;
use ota_firmware::zigbee::ZigbeeError;
use ota_firmware::{Chip, Expected, FirmwareImage, ImageError, inspect};

fn zigbee_file() -> Vec<u8> {
    ZigbeeOtaBuilder::new(0x1002, 0xD3A3, 0x0000_0042)
        .header_string("tuya")
        .upgrade_image(512)
        .build()
}

#[test]
fn auto_recognises_each_ota_format() {
    let zigbee = zigbee_file();
    let image = inspect(&zigbee, Expected::Auto).expect("zigbee");
    assert_eq!(image.format_name(), "zigbee-ota");
    assert_eq!(image.version().as_deref(), Some("0x00000042"));
    assert_eq!(image.chip(), None);

    let prefixed = ZigbeeOtaBuilder::new(0x117C, 1, 2)
        .upgrade_image(10)
        .ikea_prefix(712)
        .build();
    let Ok(FirmwareImage::Zigbee(f)) = inspect(&prefixed, Expected::Auto) else {
        panic!("prefixed zigbee file not recognised");
    };
    assert_eq!(f.prefix_len, 712);

    for chip in [Chip::Esp32, Chip::Esp32C3, Chip::Esp8266] {
        let app = EspAppBuilder::new(chip).build();
        let image = inspect(&app, Expected::Auto).expect("esp app");
        assert_eq!(image.format_name(), "esp-app");
        assert_eq!(image.chip(), Some(chip));
    }
    let app = EspAppBuilder::new(Chip::Esp32H2)
        .version("2026.3.1")
        .build();
    assert_eq!(
        inspect(&app, Expected::Auto)
            .expect("app")
            .version()
            .as_deref(),
        Some("2026.3.1")
    );
}

#[test]
fn auto_refuses_factory_images() {
    for chip in [Chip::Esp32, Chip::Esp32S3] {
        let factory = FactoryImageBuilder::new(chip).build();
        let err = inspect(&factory, Expected::Auto).expect_err("refused for OTA");
        assert!(
            matches!(err, ImageError::Esp(EspError::FactoryImage { .. })),
            "{chip}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("factory image"), "{msg}");
        assert!(msg.contains("serial flashing at offset 0x0"), "{msg}");
        assert!(msg.contains("firmware.ota.bin"), "{msg}");
        // The same file is fine when a factory image is what the caller wants.
        let image = inspect(&factory, Expected::EspFactory { chip: Some(chip) }).expect("factory");
        assert_eq!(image.format_name(), "esp-factory");
        assert_eq!(image.chip(), Some(chip));
        assert_eq!(image.version().as_deref(), Some("1.0.0"));
    }
}

#[test]
fn unrecognised_files_are_refused_with_the_reason() {
    let err = inspect(b"\x7fELF\x02\x01\x01", Expected::Auto).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "unrecognised firmware format: neither a Zigbee OTA file (no 0x0BEEF11E magic) nor an \
         ESP image (first byte 0x7F, expected 0xE9)"
    );
    assert_eq!(inspect(&[], Expected::Auto), Err(ImageError::Empty));
    assert_eq!(inspect(&[], Expected::Zigbee), Err(ImageError::Empty));
    let gzip = [0x1F, 0x8B, 0x08, 0x00, 0x00];
    let err = inspect(&gzip, Expected::Auto).expect_err("refused");
    assert_eq!(err, ImageError::Compressed);
    assert!(err.to_string().contains("uncompressed"), "{err}");
}

#[test]
fn expected_format_is_enforced() {
    let zigbee = zigbee_file();
    let app = EspAppBuilder::new(Chip::Esp32C3).build();
    assert_eq!(
        inspect(&zigbee, Expected::EspApp { chip: None }),
        Err(ImageError::Esp(EspError::BadMagic { found: 0x1E }))
    );
    assert_eq!(
        inspect(&app, Expected::Zigbee),
        Err(ImageError::Zigbee(ZigbeeError::MagicNotFound))
    );
    assert!(matches!(
        inspect(&app, Expected::EspFactory { chip: None }),
        Err(ImageError::Factory(_))
    ));
    assert_eq!(
        inspect(
            &app,
            Expected::EspApp {
                chip: Some(Chip::Esp32S3)
            }
        ),
        Err(ImageError::Esp(EspError::ChipMismatch {
            expected: Chip::Esp32S3,
            found: Chip::Esp32C3
        }))
    );
    assert!(
        inspect(
            &app,
            Expected::EspApp {
                chip: Some(Chip::Esp32C3)
            }
        )
        .is_ok()
    );
}

#[test]
fn broken_files_keep_their_specific_reason_through_auto() {
    let mut zigbee = zigbee_file();
    zigbee.truncate(zigbee.len() - 10);
    assert!(matches!(
        inspect(&zigbee, Expected::Auto),
        Err(ImageError::Zigbee(ZigbeeError::Truncated { .. }))
    ));
    let mut app = EspAppBuilder::new(Chip::Esp32).build();
    ota_firmware::builders::corrupt::break_esp_sha256(&mut app);
    assert!(matches!(
        inspect(&app, Expected::Auto),
        Err(ImageError::Esp(EspError::BadSha256 { .. }))
    ));
}

#[test]
fn facts_serialise_with_a_format_tag_and_round_trip() {
    let files = [
        zigbee_file(),
        EspAppBuilder::new(Chip::Esp32C3).build(),
        EspAppBuilder::new(Chip::Esp8266).build(),
    ];
    for bytes in &files {
        let image = inspect(bytes, Expected::Auto).expect("parses");
        let json = serde_json::to_value(&image).expect("serialise");
        assert_eq!(json["format"], image.format_name());
        let back: FirmwareImage = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, image);
    }
    let factory = FactoryImageBuilder::new(Chip::Esp32C3).build();
    let image = inspect(&factory, Expected::EspFactory { chip: None }).expect("factory");
    let json = serde_json::to_value(&image).expect("serialise");
    assert_eq!(json["format"], "esp-factory");
    assert_eq!(json["chip"], "esp32c3");
    assert_eq!(json["app"]["flash_size"], "4MB");
    assert_eq!(json["partitions"][2]["name"], "app0");
    let back: FirmwareImage = serde_json::from_value(json).expect("deserialise");
    assert_eq!(back, image);

    let json = serde_json::to_value(inspect(&files[0], Expected::Auto).expect("zigbee"))
        .expect("serialise");
    assert_eq!(json["format"], "zigbee-ota");
    assert_eq!(json["header"]["manufacturer_code"], 0x1002);
    assert_eq!(json["header"]["header_string"], "tuya");
}

//! Property tests: no input makes a parser panic, builders round-trip through the parsers, and
//! truncated files are always refused.

use std::sync::LazyLock;

use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder, ZigbeeOtaBuilder};
use ota_firmware::esp::{self, FlashFreq, FlashMode, FlashSize};
use ota_firmware::zigbee::{self, HardwareVersions, MAGIC_BYTES, TELINK_AES_TAG};
use ota_firmware::{Chip, Digests, Expected, FirmwareHasher, FirmwareImage, inspect};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Every public parsing entry point, with every way of calling it; also touches the accessors
/// that slice the input.
fn exercise(bytes: &[u8]) {
    let chips = [
        None,
        Some(Chip::Esp32),
        Some(Chip::Esp32C3),
        Some(Chip::Esp8266),
    ];
    let mut expectations = vec![Expected::Auto, Expected::Zigbee];
    for chip in chips {
        expectations.push(Expected::EspApp { chip });
        expectations.push(Expected::EspFactory { chip });
        let _ = esp::parse_image(bytes, chip);
    }
    let _ = esp::looks_like_factory(bytes);
    for expected in expectations {
        match inspect(bytes, expected) {
            Ok(FirmwareImage::Zigbee(f)) => {
                let image = f.image(bytes).expect("image range is inside the input");
                for e in &f.elements {
                    assert!(e.data(image).is_some(), "element data inside the image");
                }
                assert_eq!(f.file_len(), bytes.len() as u64);
            }
            Ok(FirmwareImage::EspApp(i)) => {
                for s in &i.segments {
                    assert!(s.data(bytes).is_some(), "segment data inside the input");
                }
                assert_eq!(i.file_len(), bytes.len() as u64);
            }
            Ok(FirmwareImage::EspFactory(f)) => {
                assert!(f.app_bytes(bytes).is_some());
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

static BASE_IMAGES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    vec![
        ZigbeeOtaBuilder::new(1, 2, 3)
            .hardware_versions(1, 2)
            .upgrade_image(200)
            .telink_element([1, 2], vec![3; 40])
            .element(0x0003, vec![4; 16])
            .ikea_prefix(100)
            .trailer(vec![0; 20])
            .build(),
        EspAppBuilder::new(Chip::Esp32).payload_size(300).build(),
        EspAppBuilder::new(Chip::Esp32C3)
            .payload_size(200)
            .sha256(false)
            .build(),
        EspAppBuilder::new(Chip::Esp8266).payload_size(300).build(),
        FactoryImageBuilder::new(Chip::Esp32C3)
            .app(EspAppBuilder::new(Chip::Esp32C3).payload_size(100).build())
            .build(),
        FactoryImageBuilder::new(Chip::Esp32)
            .app(EspAppBuilder::new(Chip::Esp32).payload_size(100).build())
            .build(),
    ]
});

/// Interesting places to damage: headers, and the partition table of factory images.
fn hot_offset(len: usize, pick: &Index, hot: bool) -> usize {
    if !hot {
        return pick.index(len);
    }
    let spots = [0usize, 0x20, 0x1000, 0x8000, 0x10000];
    let base = spots[pick.index(spots.len())];
    (base + pick.index(64)).min(len.saturating_sub(1))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn bytes_after_a_zigbee_magic_never_panic(
        prefix in vec(any::<u8>(), 0..8),
        header in vec(any::<u8>(), 0..80),
        tail in vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = prefix;
        bytes.extend_from_slice(&MAGIC_BYTES);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&tail);
        exercise(&bytes);
    }

    #[test]
    fn plausible_zigbee_headers_with_random_bodies_never_panic(
        fc in 0u16..8,
        total in prop_oneof![any::<u32>(), 56u32..600],
        body in vec(any::<u8>(), 0..600),
        telink in any::<bool>(),
    ) {
        let mut bytes = ZigbeeOtaBuilder::new(1, 2, 3)
            .field_control(fc)
            .total_image_size(total)
            .build_image();
        let required = usize::from(zigbee::required_header_len(fc));
        bytes.resize(required, 0);
        bytes[6..8].copy_from_slice(&(required as u16).to_le_bytes());
        if telink {
            bytes.extend_from_slice(&TELINK_AES_TAG.to_le_bytes());
        }
        bytes.extend_from_slice(&body);
        exercise(&bytes);
    }

    #[test]
    fn bytes_after_an_esp_magic_never_panic(
        count in 0u8..20,
        ext in vec(any::<u8>(), 0..24),
        tail in vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = vec![0xE9, count, 2, 0x20, 0, 0, 0, 0];
        bytes.extend_from_slice(&ext);
        bytes.extend_from_slice(&tail);
        exercise(&bytes);
    }

    #[test]
    fn damaged_valid_images_never_panic(
        which in any::<Index>(),
        flips in vec((any::<Index>(), any::<u8>(), any::<bool>()), 1..6),
        cut in option::of(any::<Index>()),
    ) {
        let mut bytes = BASE_IMAGES[which.index(BASE_IMAGES.len())].clone();
        for (at, value, hot) in &flips {
            let i = hot_offset(bytes.len(), at, *hot);
            bytes[i] ^= value | 1;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        exercise(&bytes);
    }
}

fn tag() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..TELINK_AES_TAG, (TELINK_AES_TAG + 1)..=u16::MAX]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn zigbee_builder_round_trips(
        (manufacturer_code, image_type, file_version, stack) in (any::<u16>(), any::<u16>(), any::<u32>(), 0u16..4),
        header_string in "[ -~]{0,32}",
        security in option::of(any::<u8>()),
        destination in option::of(any::<u64>()),
        hardware in option::of((any::<u16>(), any::<u16>())),
        elements in vec((tag(), 0usize..300), 0..4),
        telink in option::of((any::<[u8; 2]>(), 0usize..300)),
        prefix_len in prop_oneof![Just(0usize), 1usize..24, 24usize..800],
        trailer in vec(any::<u8>(), 0..600),
    ) {
        let mut b = ZigbeeOtaBuilder::new(manufacturer_code, image_type, file_version)
            .stack_version(stack)
            .header_string(&header_string);
        if let Some(v) = security { b = b.security_credential_version(v); }
        if let Some(ieee) = destination { b = b.upgrade_file_destination(ieee); }
        if let Some((min, max)) = hardware { b = b.hardware_versions(min, max); }
        let mut expected_elements = Vec::new();
        for (i, &(tag, len)) in elements.iter().enumerate() {
            b = b.element(tag, ota_firmware::builders::deterministic_payload(len, i as u32));
            expected_elements.push((tag, len as u32, 6u8, None));
        }
        if let Some((info, len)) = telink {
            b = b.telink_element(info, vec![0x33; len]);
            expected_elements.push((TELINK_AES_TAG, len as u32, 8u8, Some(info)));
        }
        b = match prefix_len {
            0 => b,
            n if n < 24 => b.prefix(vec![0u8; n]),
            n => b.ikea_prefix(n),
        };
        let b = b.trailer(trailer.clone());
        let bytes = b.build();

        let Ok(FirmwareImage::Zigbee(f)) = inspect(&bytes, Expected::Auto) else {
            panic!("built file not recognised: {:?}", inspect(&bytes, Expected::Auto));
        };
        prop_assert_eq!(f.prefix_len, prefix_len as u64);
        prop_assert_eq!(f.trailing_len, trailer.len() as u64);
        let h = &f.header;
        prop_assert_eq!(
            (h.manufacturer_code, h.image_type, h.file_version, h.stack_version),
            (manufacturer_code, image_type, file_version, stack)
        );
        prop_assert_eq!(h.header_string.as_str(), header_string.trim_end_matches(' '));
        prop_assert_eq!(h.security_credential_version, security);
        prop_assert_eq!(h.upgrade_file_destination, destination);
        prop_assert_eq!(
            h.hardware_versions,
            hardware.map(|(min, max)| HardwareVersions { min, max })
        );
        prop_assert_eq!(h.field_control, b.field_control_value());
        let parsed: Vec<_> = f
            .elements
            .iter()
            .map(|e| (e.tag, e.len, e.header_len, e.telink_info))
            .collect();
        prop_assert_eq!(parsed, expected_elements);
        prop_assert!(!f.has_clamped_element());
        let image = b.build_image();
        prop_assert_eq!(f.image(&bytes), Some(image.as_slice()));
        prop_assert_eq!(h.total_image_size as usize, image.len());

        // Every cut that removes part of the image proper is refused.
        let end = prefix_len + image.len();
        for cut in [end - 1, end - image.len() / 2, prefix_len + 3] {
            prop_assert!(zigbee::parse(&bytes[..cut]).is_err(), "cut at {} accepted", cut);
        }
    }

    #[test]
    fn esp_builder_round_trips(
        chip in select(Chip::ALL.to_vec()),
        version in "[0-9a-z.+-]{0,31}",
        project in "[a-z0-9_-]{0,31}",
        secure_version in any::<u32>(),
        payload in 0usize..3000,
        sha in any::<bool>(),
        mode in select(vec![FlashMode::Qio, FlashMode::Qout, FlashMode::Dio, FlashMode::Dout]),
        freq in select(vec![FlashFreq::Mhz40, FlashFreq::Mhz26, FlashFreq::Mhz20, FlashFreq::Mhz80]),
        size in any::<Index>(),
        trailer in vec(any::<u8>(), 0..100),
    ) {
        let sizes: Vec<FlashSize> = [
            FlashSize::Kb256, FlashSize::Kb512, FlashSize::Mb1, FlashSize::Mb2, FlashSize::Mb2C1,
            FlashSize::Mb4, FlashSize::Mb4C1, FlashSize::Mb8, FlashSize::Mb16, FlashSize::Mb32,
            FlashSize::Mb64, FlashSize::Mb128,
        ]
        .into_iter()
        .filter(|s| s.code_for(chip).is_some())
        .collect();
        let size = sizes[size.index(sizes.len())];
        let mut b = EspAppBuilder::new(chip)
            .payload_size(payload)
            .flash(mode, size, freq)
            .trailer(trailer.clone());
        if chip.is_esp32_family() {
            b = b
                .version(&version)
                .project_name(&project)
                .secure_version(secure_version)
                .sha256(sha);
        }
        let bytes = b.build();
        let auto = esp::parse_app(&bytes, None);
        let told = esp::parse_app(&bytes, Some(chip));
        prop_assert_eq!(&auto, &told);
        let image = told.expect("built image parses");
        prop_assert_eq!(image.chip, chip);
        prop_assert_eq!((image.flash_mode, image.flash_size, image.flash_freq), (mode, size, freq));
        prop_assert_eq!(image.segments.len(), 3);
        prop_assert_eq!(image.trailing_len, trailer.len() as u64);
        prop_assert_eq!(image.file_len(), bytes.len() as u64);
        if chip.is_esp32_family() {
            let app = image.app.as_ref().expect("app description");
            prop_assert_eq!(app.version.as_str(), version.as_str());
            prop_assert_eq!(app.project_name.as_str(), project.as_str());
            prop_assert_eq!(app.secure_version, secure_version);
            prop_assert_eq!(image.sha256.is_some(), sha);
        } else {
            prop_assert_eq!(&image.app, &None);
            prop_assert_eq!(&image.sha256, &None);
        }

        // Every cut before the end of the image is refused, with or without a named chip.
        let end = image.image_len as usize;
        for cut in [end - 1, end / 2, 23, 7] {
            prop_assert!(esp::parse_app(&bytes[..cut], None).is_err(), "cut at {} accepted", cut);
            prop_assert!(esp::parse_app(&bytes[..cut], Some(chip)).is_err(), "cut at {} accepted", cut);
        }
    }

    #[test]
    fn hashing_in_any_chunks_equals_hashing_at_once(
        data in vec(any::<u8>(), 0..5000),
        splits in vec(any::<Index>(), 0..8),
    ) {
        let mut points: Vec<usize> = splits.iter().map(|i| i.index(data.len() + 1)).collect();
        points.sort_unstable();
        let mut hasher = FirmwareHasher::new();
        let mut last = 0;
        for p in points.into_iter().chain([data.len()]) {
            hasher.update(&data[last..p]);
            last = p;
        }
        prop_assert_eq!(hasher.finish(), Digests::of(&data));
    }
}

#[test]
fn factory_images_round_trip_for_every_chip_with_a_known_bootloader_offset() {
    for chip in Chip::ALL
        .into_iter()
        .filter(|c| c.bootloader_offset().is_some())
    {
        let app = EspAppBuilder::new(chip).version("3.2.1").build();
        let bytes = FactoryImageBuilder::new(chip).app(app.clone()).build();
        let f = esp::parse_factory(&bytes, Some(chip)).expect("parses");
        assert_eq!(f.chip, chip);
        assert_eq!(Some(f.bootloader_offset), chip.bootloader_offset());
        assert_eq!(f.app_bytes(&bytes), Some(app.as_slice()));
        assert!(esp::looks_like_factory(&bytes), "{chip}");
        assert!(!esp::looks_like_factory(&app), "{chip}");
    }
}

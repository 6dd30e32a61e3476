//! ESP application images and merged factory images: every header field, the checksum and
//! SHA-256 rules, the application description, chip handling, and each refusal, on images these
//! tests build themselves.

use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder, corrupt, esphome_partitions};
use ota_firmware::esp::{
    self, EspError, ExtendedHeader, FactoryError, FlashFreq, FlashMode, FlashSize,
    NoExtendedHeader, Partition, Segment,
};
use sha2::{Digest, Sha256};

/// A 48-byte ESP32-C3 image written by hand: one 4-byte segment, no SHA-256, no app description.
fn golden_c3() -> Vec<u8> {
    let mut b = vec![
        0xE9, 0x01, 0x02, 0x20, // magic, 1 segment, DIO, 4MB | 40m
        0x00, 0x04, 0x38, 0x40, // entry 0x40380400
        0xEE, 0x00, 0x00, 0x00, // wp pin, spi drive
        0x05, 0x00, // chip id 5 = ESP32-C3
        0x00, // min rev
        0x03, 0x00, // min rev full 3
        0xFF, 0xFF, // max rev full any
        0x00, 0x00, 0x00, 0x00, // reserved
        0x00, // hash not appended
        0x20, 0x00, 0x00, 0x3C, // segment load address 0x3C000020
        0x04, 0x00, 0x00, 0x00, // segment length 4
        0x01, 0x02, 0x03, 0x04, // data
    ];
    b.extend_from_slice(&[0; 11]); // pad until offset 47
    b.push(0xEF ^ 0x01 ^ 0x02 ^ 0x03 ^ 0x04);
    assert_eq!(b.len(), 48);
    b
}

#[test]
fn golden_esp32_c3_image_byte_for_byte() {
    let bytes = golden_c3();
    let image = esp::parse_image(&bytes, None).expect("parses");
    assert_eq!(image.chip, Chip::Esp32C3);
    assert_eq!(image.flash_mode, FlashMode::Dio);
    assert_eq!(image.flash_size, FlashSize::Mb4);
    assert_eq!(image.flash_freq, FlashFreq::Mhz40);
    assert_eq!(image.entry_addr, 0x4038_0400);
    assert_eq!(
        image.extended,
        Some(ExtendedHeader {
            wp_pin: 0xEE,
            spi_pin_drive: [0, 0, 0],
            chip_id: 5,
            min_chip_rev: 0,
            min_chip_rev_full: 3,
            max_chip_rev_full: 0xFFFF,
            hash_appended: false,
        })
    );
    assert_eq!(
        image.segments,
        vec![Segment {
            load_addr: 0x3C00_0020,
            data_offset: 32,
            len: 4
        }]
    );
    assert_eq!(image.segments[0].data(&bytes), Some(&[1, 2, 3, 4][..]));
    assert_eq!(image.checksum, 0xEB);
    assert_eq!(image.sha256, None);
    assert_eq!((image.image_len, image.trailing_len), (48, 0));
    assert_eq!(image.app, None);
    // Not an application: no description at 0x20.
    assert_eq!(
        esp::parse_app(&bytes, None),
        Err(EspError::NotAnApp {
            chip: Chip::Esp32C3
        })
    );
}

#[test]
fn golden_image_with_appended_sha256() {
    let mut bytes = golden_c3();
    bytes[23] = 1;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    bytes.extend_from_slice(&digest);
    let image = esp::parse_image(&bytes, Some(Chip::Esp32C3)).expect("parses");
    assert_eq!(image.sha256, Some(hex::encode(digest)));
    assert_eq!(image.image_len, 80);
    assert!(image.extended.expect("extended").hash_appended);
}

/// A 32-byte ESP8266 image written by hand.
fn golden_esp8266() -> Vec<u8> {
    let mut b = vec![
        0xE9, 0x01, 0x00, 0x40, // magic, 1 segment, QIO, 4MB (ESP8266 code 4) | 40m
        0x04, 0x00, 0x10, 0x40, // entry 0x40100004
        0x00, 0x00, 0x10, 0x40, // segment load address 0x40100000
        0x04, 0x00, 0x00, 0x00, // length 4
        0xAA, 0xBB, 0xCC, 0xDD,
    ];
    b.extend_from_slice(&[0; 11]);
    b.push(0xEF ^ 0xAA ^ 0xBB ^ 0xCC ^ 0xDD);
    b
}

#[test]
fn golden_esp8266_image_byte_for_byte() {
    let bytes = golden_esp8266();
    for expected in [None, Some(Chip::Esp8266)] {
        let image = esp::parse_app(&bytes, expected).expect("parses");
        assert_eq!(image.chip, Chip::Esp8266);
        assert_eq!(image.flash_mode, FlashMode::Qio);
        assert_eq!(image.flash_size, FlashSize::Mb4);
        assert_eq!(image.flash_freq, FlashFreq::Mhz40);
        assert_eq!(image.entry_addr, 0x4010_0004);
        assert_eq!(image.extended, None);
        assert_eq!(image.segments[0].data_offset, 16);
        assert_eq!(image.checksum, 0xEF);
        assert_eq!((image.image_len, image.trailing_len), (32, 0));
        assert_eq!(image.app, None, "ESP8266 images have no app description");
    }
}

#[test]
fn esp8266_flash_size_codes_use_the_esp8266_table() {
    let mut bytes = golden_esp8266();
    for (code, size) in [
        (0u8, FlashSize::Kb512),
        (1, FlashSize::Kb256),
        (5, FlashSize::Mb2C1),
        (9, FlashSize::Mb16),
    ] {
        bytes[3] = (code << 4) | 0x0F;
        let image = esp::parse_app(&bytes, None).expect("parses");
        assert_eq!(
            (image.flash_size, image.flash_freq),
            (size, FlashFreq::Mhz80)
        );
    }
}

#[test]
fn esp32_app_with_description_and_sha256() {
    let bytes = EspAppBuilder::new(Chip::Esp32)
        .version("2026.1.0")
        .project_name("living-room.sensor")
        .secure_version(3)
        .build_time("Jan 15 2026", "10:11:12")
        .idf_ver("v5.4.2")
        .elf_sha256([0x11; 32])
        .payload_size(3000)
        .build();
    assert_eq!(
        &bytes[0x20..0x24],
        &[0x32, 0x54, 0xCD, 0xAB],
        "app desc magic at 0x20"
    );
    let image = esp::parse_app(&bytes, None).expect("parses");
    assert_eq!(image.chip, Chip::Esp32);
    assert_eq!(image.segments.len(), 3);
    assert_eq!(image.segments[0].load_addr, 0x3F40_0020);
    let app = image.app.as_ref().expect("app description");
    assert_eq!(app.version, "2026.1.0");
    assert_eq!(image.version(), Some("2026.1.0"));
    assert_eq!(app.project_name, "living-room.sensor");
    assert_eq!(app.secure_version, 3);
    assert_eq!(
        (app.date.as_str(), app.time.as_str()),
        ("Jan 15 2026", "10:11:12")
    );
    assert_eq!(app.idf_ver, "v5.4.2");
    assert_eq!(app.app_elf_sha256, "11".repeat(32));
    let end = image.image_len as usize;
    assert_eq!(end, bytes.len());
    assert_eq!(end % 16, 0, "checksum at 15 mod 16, then 32 digest bytes");
    let digest: [u8; 32] = Sha256::digest(&bytes[..end - 32]).into();
    assert_eq!(image.sha256, Some(hex::encode(digest)));
    let xor = image
        .segments
        .iter()
        .flat_map(|s| s.data(&bytes).expect("segment data").iter())
        .fold(0xEF, |a, b| a ^ b);
    assert_eq!(image.checksum, xor);
}

#[test]
fn every_esp32_family_chip_round_trips() {
    for chip in Chip::ALL.into_iter().filter(|c| c.is_esp32_family()) {
        let bytes = EspAppBuilder::new(chip).version("9.9.9").build();
        for expected in [None, Some(chip)] {
            let image = esp::parse_app(&bytes, expected).expect("parses");
            assert_eq!(image.chip, chip);
            assert_eq!(
                image.extended.as_ref().map(|e| e.chip_id),
                chip.image_chip_id()
            );
            assert_eq!(image.version(), Some("9.9.9"));
        }
    }
}

#[test]
fn esp32_without_sha256_and_with_a_signature_block() {
    let bytes = EspAppBuilder::new(Chip::Esp32S3)
        .sha256(false)
        .flash(FlashMode::Qio, FlashSize::Mb16, FlashFreq::Mhz80)
        .trailer(vec![0x5A; 1216])
        .build();
    let image = esp::parse_app(&bytes, Some(Chip::Esp32S3)).expect("parses");
    assert_eq!(image.sha256, None);
    assert_eq!(image.image_len % 16, 0);
    assert_eq!(image.trailing_len, 1216);
    assert_eq!(image.file_len(), bytes.len() as u64);
    assert_eq!(
        (image.flash_mode, image.flash_size, image.flash_freq),
        (FlashMode::Qio, FlashSize::Mb16, FlashFreq::Mhz80)
    );
    assert_eq!(bytes[3], 0x4F);
}

#[test]
fn esp8266_app_from_the_builder_with_trailing_flash_contents() {
    let bytes = EspAppBuilder::new(Chip::Esp8266)
        .flash(FlashMode::Dout, FlashSize::Mb1, FlashFreq::Mhz40)
        .trailer(vec![0xAA; 3000])
        .build();
    let image = esp::parse_app(&bytes, None).expect("parses");
    assert_eq!(image.chip, Chip::Esp8266);
    assert_eq!(image.flash_size, FlashSize::Mb1);
    assert_eq!(bytes[3] >> 4, 2, "1MB is ESP8266 code 2");
    assert_eq!(image.trailing_len, 3000);
    assert_eq!(image.segments[0].load_addr, 0x4010_0000);
}

#[test]
fn extra_segments_are_walked() {
    let bytes = EspAppBuilder::new(Chip::Esp32C6)
        .segment(0x5000_0000, vec![1, 2, 3, 4, 5, 6, 7, 8])
        .segment(0x5000_1000, vec![9; 5])
        .build();
    let image = esp::parse_app(&bytes, None).expect("parses");
    assert_eq!(image.segments.len(), 5);
    assert_eq!(image.segments[4].len, 8, "padded to a multiple of 4");
    assert_eq!(
        image.segments[4].data(&bytes),
        Some(&[9, 9, 9, 9, 9, 0, 0, 0][..])
    );
}

// --- refusals -------------------------------------------------------------------------------

#[test]
fn refuses_empty_and_foreign_bytes() {
    assert_eq!(esp::parse_app(&[], None), Err(EspError::Empty));
    let err = esp::parse_app(&[0x7F, b'E', b'L', b'F'], None).expect_err("refused");
    assert_eq!(err, EspError::BadMagic { found: 0x7F });
    assert_eq!(
        err.to_string(),
        "not an ESP image: first byte 0x7F, expected 0xE9"
    );
}

#[test]
fn explains_esp8266_v2_images() {
    let mut bytes = golden_esp8266();
    bytes[0] = 0xEA;
    let err = esp::parse_app(&bytes, None).expect_err("refused");
    assert_eq!(err, EspError::Esp8266V2);
    let msg = err.to_string();
    assert!(msg.contains("0xEA"), "{msg}");
    assert!(msg.contains("not an OTA application image"), "{msg}");
    assert!(msg.contains("firmware.ota.bin"), "{msg}");
}

#[test]
fn refuses_out_of_range_segment_counts() {
    for count in [0u8, 17, 255] {
        let bytes = EspAppBuilder::new(Chip::Esp32).segment_count(count).build();
        assert_eq!(
            esp::parse_app(&bytes, Some(Chip::Esp32)),
            Err(EspError::SegmentCount { count })
        );
    }
    let err = EspError::SegmentCount { count: 17 };
    assert_eq!(
        err.to_string(),
        "segment count 17 is out of range: an ESP image has 1 to 16 segments"
    );
}

#[test]
fn refuses_unknown_chip_ids() {
    let bytes = EspAppBuilder::new(Chip::Esp32C3).chip_id(0x63).build();
    assert_eq!(
        esp::parse_app(&bytes, Some(Chip::Esp32C3)),
        Err(EspError::UnknownChipId { chip_id: 0x63 })
    );
    // Without a target chip the image is read as ESP8266, which fails, and the error says both.
    let err = esp::parse_app(&bytes, None).expect_err("refused");
    let EspError::AssumedEsp8266 { why, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(*why, NoExtendedHeader::UnknownChipId(0x63));
    assert!(
        err.to_string().starts_with(
            "assumed an ESP8266 image because there is no ESP32-family extended header at \
             offset 8 (chip id 99 (0x0063) is not one esptool knows), but "
        ),
        "{err}"
    );
}

#[test]
fn refuses_invalid_hash_appended() {
    for value in [2u8, 0x80, 0xFF] {
        let bytes = EspAppBuilder::new(Chip::Esp32)
            .hash_appended_byte(value)
            .build();
        assert_eq!(
            esp::parse_app(&bytes, None),
            Err(EspError::InvalidHashAppended { value })
        );
    }
}

#[test]
fn refuses_truncated_images() {
    let bytes = EspAppBuilder::new(Chip::Esp32C3).payload_size(600).build();
    let image = esp::parse_app(&bytes, None).expect("parses");
    assert!(matches!(
        esp::parse_image(&bytes[..7], None),
        Err(EspError::HeaderTruncated { len: 7, needed: 8 })
    ));
    assert!(matches!(
        esp::parse_image(&bytes[..20], Some(Chip::Esp32C3)),
        Err(EspError::HeaderTruncated {
            len: 20,
            needed: 24
        })
    ));
    assert!(matches!(
        esp::parse_image(&bytes[..28], Some(Chip::Esp32C3)),
        Err(EspError::SegmentHeaderTruncated {
            index: 0,
            offset: 24,
            len: 28
        })
    ));
    let second = &image.segments[1];
    let cut = second.data_offset as usize + 3;
    let err = esp::parse_image(&bytes[..cut], Some(Chip::Esp32C3)).expect_err("refused");
    assert_eq!(
        err,
        EspError::SegmentTruncated {
            index: 1,
            load_addr: second.load_addr,
            offset: second.data_offset,
            seg_len: second.len,
            available: 3
        }
    );
    let checksum_at = image.image_len as usize - 33;
    assert_eq!(
        esp::parse_image(&bytes[..checksum_at], Some(Chip::Esp32C3)),
        Err(EspError::ChecksumMissing {
            offset: checksum_at as u64,
            len: checksum_at as u64
        })
    );
    assert_eq!(
        esp::parse_image(&bytes[..bytes.len() - 1], Some(Chip::Esp32C3)),
        Err(EspError::HashMissing {
            offset: checksum_at as u64 + 1,
            len: bytes.len() as u64 - 1
        })
    );
}

#[test]
fn refuses_unaligned_segments() {
    let mut bytes = golden_esp8266();
    bytes[12] = 3;
    assert_eq!(
        esp::parse_image(&bytes, Some(Chip::Esp8266)),
        Err(EspError::SegmentUnaligned {
            index: 0,
            seg_len: 3
        })
    );
}

#[test]
fn refuses_a_bad_checksum() {
    for chip in [Chip::Esp32, Chip::Esp32C3, Chip::Esp8266] {
        let mut bytes = EspAppBuilder::new(chip).build();
        let good = esp::parse_app(&bytes, None).expect("parses").checksum;
        corrupt::flip_esp_checksum(&mut bytes);
        let err = esp::parse_app(&bytes, Some(chip)).expect_err("refused");
        let EspError::BadChecksum {
            stored, computed, ..
        } = err
        else {
            panic!("{chip}: unexpected {err:?}");
        };
        assert_eq!((stored, computed), (good ^ 0xFF, good), "{chip}");
        assert!(
            err.to_string().starts_with("image checksum mismatch"),
            "{err}"
        );
    }
    // Damaged segment data also shows up as a checksum mismatch.
    let mut bytes = EspAppBuilder::new(Chip::Esp32).build();
    corrupt::damage_esp_segment_data(&mut bytes);
    assert!(matches!(
        esp::parse_app(&bytes, None),
        Err(EspError::BadChecksum { .. })
    ));
}

#[test]
fn refuses_a_bad_sha256() {
    let mut bytes = EspAppBuilder::new(Chip::Esp32S3).build();
    corrupt::break_esp_sha256(&mut bytes);
    let err = esp::parse_app(&bytes, None).expect_err("refused");
    let EspError::BadSha256 {
        stored,
        computed,
        covered,
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_ne!(stored, computed);
    assert_eq!(*covered, bytes.len() as u64 - 32);
    assert!(
        err.to_string().starts_with("appended SHA-256 mismatch"),
        "{err}"
    );
}

#[test]
fn refuses_an_image_for_another_chip() {
    let c3 = EspAppBuilder::new(Chip::Esp32C3).build();
    let err = esp::parse_app(&c3, Some(Chip::Esp32S3)).expect_err("refused");
    assert_eq!(
        err,
        EspError::ChipMismatch {
            expected: Chip::Esp32S3,
            found: Chip::Esp32C3
        }
    );
    assert_eq!(
        err.to_string(),
        "image is built for ESP32-C3 but the target is ESP32-S3"
    );
    assert_eq!(
        esp::parse_app(&c3, Some(Chip::Esp8266)),
        Err(EspError::ChipMismatch {
            expected: Chip::Esp8266,
            found: Chip::Esp32C3
        })
    );
    let e8266 = EspAppBuilder::new(Chip::Esp8266).build();
    assert_eq!(
        esp::parse_app(&e8266, Some(Chip::Esp32)),
        Err(EspError::ChipMismatch {
            expected: Chip::Esp32,
            found: Chip::Esp8266
        })
    );
}

#[test]
fn refuses_bootloaders_for_ota() {
    let bytes = EspAppBuilder::bootloader(Chip::Esp32C6).build();
    let image = esp::parse_image(&bytes, None).expect("a valid image");
    assert_eq!(image.app, None);
    let err = esp::parse_app(&bytes, None).expect_err("refused");
    assert_eq!(
        err,
        EspError::NotAnApp {
            chip: Chip::Esp32C6
        }
    );
    assert!(err.to_string().contains("firmware.ota.bin"), "{err}");
}

#[test]
fn refuses_an_app_description_cut_by_its_segment() {
    let mut bytes = golden_c3();
    bytes[32..36].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    bytes[47] = 0xEF ^ 0x32 ^ 0x54 ^ 0xCD ^ 0xAB;
    assert_eq!(
        esp::parse_image(&bytes, None),
        Err(EspError::AppDescTruncated { seg_len: 4 })
    );
}

#[test]
fn refuses_garbage_after_the_magic() {
    let mut bytes = vec![0xE9, 0x03, 0x02, 0x20];
    bytes.extend_from_slice(&ota_firmware::builders::deterministic_payload(200, 3));
    assert!(esp::parse_app(&bytes, None).is_err());
}

// --- factory images -------------------------------------------------------------------------

#[test]
fn esp32_factory_image_starts_with_padding_and_parses() {
    let app = EspAppBuilder::new(Chip::Esp32).version("2026.2.0").build();
    let bytes = FactoryImageBuilder::new(Chip::Esp32)
        .app(app.clone())
        .build();
    assert!(bytes[..0x1000].iter().all(|&b| b == 0xFF));
    assert_eq!(bytes[0x1000], 0xE9);
    assert_eq!(&bytes[0x8000..0x8002], &[0xAA, 0x50]);
    let f = esp::parse_factory(&bytes, None).expect("parses");
    assert_eq!(f.chip, Chip::Esp32);
    assert_eq!(f.bootloader_offset, 0x1000);
    assert_eq!(f.bootloader.app, None);
    assert_eq!(f.partition_table_offset, 0x8000);
    assert!(f.partition_table_md5);
    assert_eq!(f.partitions, esphome_partitions());
    assert_eq!(f.app_offset, 0x10000);
    assert_eq!(f.app.version(), Some("2026.2.0"));
    assert_eq!(f.file_len, bytes.len() as u64);
    assert_eq!(f.app_bytes(&bytes), Some(app.as_slice()));
    let names: Vec<(String, &str, String)> = f
        .partitions
        .iter()
        .map(|p| (p.name.clone(), p.type_name(), p.subtype_name()))
        .collect();
    assert_eq!(names[2], ("app0".to_owned(), "app", "ota_0".to_owned()));
    assert_eq!(names[0], ("nvs".to_owned(), "data", "nvs".to_owned()));
}

#[test]
fn c3_s3_and_p4_factory_images() {
    for (chip, boot) in [
        (Chip::Esp32C3, 0x0),
        (Chip::Esp32S3, 0x0),
        (Chip::Esp32P4, 0x2000),
    ] {
        let bytes = FactoryImageBuilder::new(chip).build();
        let f = esp::parse_factory(&bytes, Some(chip)).expect("parses");
        assert_eq!(
            (f.chip, f.bootloader_offset, f.app_offset),
            (chip, boot, 0x10000)
        );
        assert_eq!(f.app.chip, chip);
    }
}

#[test]
fn factory_images_are_refused_for_ota_with_directions() {
    for chip in [Chip::Esp32, Chip::Esp32C3, Chip::Esp32S3] {
        let bytes = FactoryImageBuilder::new(chip).build();
        let err = esp::parse_app(&bytes, None).expect_err("refused");
        let EspError::FactoryImage {
            chip: found,
            bootloader_offset,
        } = err
        else {
            panic!("{chip}: unexpected {err:?}");
        };
        assert_eq!(found, Some(chip));
        assert_eq!(Some(bootloader_offset), chip.bootloader_offset());
        let msg = err.to_string();
        assert!(
            msg.starts_with("this is a merged factory image for "),
            "{msg}"
        );
        assert!(msg.contains("serial flashing at offset 0x0"), "{msg}");
        assert!(msg.contains("firmware.ota.bin"), "{msg}");
    }
    // Even cut short before the partition table, the padded layout gives it away.
    let bytes = FactoryImageBuilder::new(Chip::Esp32).build();
    assert!(matches!(
        esp::parse_app(&bytes[..0x3000], None),
        Err(EspError::FactoryImage {
            bootloader_offset: 0x1000,
            ..
        })
    ));
}

#[test]
fn factory_image_without_md5_entry() {
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3).md5(false).build();
    let f = esp::parse_factory(&bytes, None).expect("parses");
    assert!(!f.partition_table_md5);
    assert_eq!(f.partitions.len(), 6);
}

#[test]
fn factory_refusals() {
    // No bootloader anywhere.
    assert_eq!(
        esp::parse_factory(&[0x00; 0x100], None),
        Err(FactoryError::NoBootloader {
            first_byte: Some(0)
        })
    );
    assert!(matches!(
        esp::parse_factory(&[], None),
        Err(FactoryError::NoBootloader { first_byte: None })
    ));

    // An ESP32 bootloader at 0x0 would not boot.
    let bytes = FactoryImageBuilder::new(Chip::Esp32)
        .bootloader_offset(0)
        .build();
    assert_eq!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::BootloaderOffset {
            chip: Chip::Esp32,
            found: 0,
            expected: 0x1000
        })
    );

    // Bootloader and app for different chips.
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3)
        .app(EspAppBuilder::new(Chip::Esp32S3).build())
        .build();
    assert_eq!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::ChipMismatch {
            bootloader: Chip::Esp32C3,
            app: Chip::Esp32S3
        })
    );

    // The caller's chip.
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3).build();
    assert_eq!(
        esp::parse_factory(&bytes, Some(Chip::Esp32)),
        Err(FactoryError::WrongChip {
            expected: Chip::Esp32,
            found: Chip::Esp32C3
        })
    );

    // A corrupted partition table.
    let mut bytes = FactoryImageBuilder::new(Chip::Esp32C3).build();
    bytes[0x8000 + 8] ^= 0x01;
    assert!(matches!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::PartitionTableMd5 { .. })
    ));
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3)
        .raw_entry([0x12; 32])
        .build();
    assert_eq!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::BadPartitionEntry {
            offset: 0x8000 + 6 * 32,
            magic: 0x1212
        })
    );

    // No partition table.
    let mut bytes = FactoryImageBuilder::new(Chip::Esp32C3).build();
    bytes[0x8000] = 0xFF;
    assert!(matches!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::NoPartitionTable { .. })
    ));

    // No app partition.
    let data_only: Vec<Partition> = esphome_partitions()
        .into_iter()
        .filter(|p| !p.is_app())
        .collect();
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3)
        .partitions(data_only)
        .build();
    assert_eq!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::NoAppPartition)
    );

    // The file ends before the app.
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3).build();
    assert!(matches!(
        esp::parse_factory(&bytes[..0x10000], None),
        Err(FactoryError::AppMissing {
            offset: 0x10000,
            ..
        })
    ));

    // A broken app.
    let mut app = EspAppBuilder::new(Chip::Esp32C3).build();
    corrupt::flip_esp_checksum(&mut app);
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3).app(app).build();
    let err = esp::parse_factory(&bytes, None).expect_err("refused");
    assert!(
        matches!(
            &err,
            FactoryError::App {
                offset: 0x10000,
                error: EspError::BadChecksum { .. }
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with(
        "factory image: the application at 0x10000 is invalid: image checksum mismatch"
    ));

    // An app larger than its partition.
    let mut small = esphome_partitions();
    small[2].size = 0x1000;
    let bytes = FactoryImageBuilder::new(Chip::Esp32C3)
        .partitions(small)
        .build();
    assert!(matches!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::AppTooLarge { size: 0x1000, .. })
    ));

    // A broken bootloader.
    let mut boot = EspAppBuilder::bootloader(Chip::Esp32).build();
    corrupt::flip_esp_checksum(&mut boot);
    let bytes = FactoryImageBuilder::new(Chip::Esp32)
        .bootloader(boot)
        .build();
    assert!(matches!(
        esp::parse_factory(&bytes, None),
        Err(FactoryError::Bootloader {
            offset: 0x1000,
            error: EspError::BadChecksum { .. }
        })
    ));
}

#[test]
fn an_app_with_partition_magic_at_0x8000_is_still_an_app() {
    // A large application whose data happens to hold a plausible partition entry at 0x8000:
    // its segments run past 0x8000, so it is not a factory image.
    let mut bytes = EspAppBuilder::new(Chip::Esp32C3)
        .payload_size(0x10000)
        .sha256(false)
        .build();
    let mut entry = [0u8; 32];
    entry[..2].copy_from_slice(&[0xAA, 0x50]);
    entry[4..8].copy_from_slice(&0x9000u32.to_le_bytes());
    entry[8..12].copy_from_slice(&0x5000u32.to_le_bytes());
    entry[12..15].copy_from_slice(b"nvs");
    let old: Vec<u8> = bytes[0x8000..0x8020].to_vec();
    bytes[0x8000..0x8020].copy_from_slice(&entry);
    // Keep the checksum right: XOR out the old bytes and XOR in the new ones.
    let checksum_at = bytes.len() - 1;
    let delta = old.iter().chain(entry.iter()).fold(0u8, |a, b| a ^ b);
    bytes[checksum_at] ^= delta;
    assert!(!esp::looks_like_factory(&bytes));
    assert!(esp::parse_app(&bytes, None).is_ok());
}

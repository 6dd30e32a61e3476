//! Zigbee OTA upgrade files: every header field, optional field, sub-element layout and refusal,
//! on files these tests build themselves (golden bytes written by hand, and the builder).

use ota_firmware::builders::{ZigbeeOtaBuilder, corrupt, deterministic_payload};
use ota_firmware::zigbee::{self, HardwareVersions, SubElement, ZigbeeError};

/// A 70-byte file written out by hand: field control 4 (hardware versions), one 4-byte element.
fn golden() -> Vec<u8> {
    let mut b = vec![
        0x1E, 0xF1, 0xEE, 0x0B, // magic
        0x00, 0x01, // header version 0x0100
        0x3C, 0x00, // header length 60
        0x04, 0x00, // field control: hardware versions
        0xF2, 0x10, // manufacturer code 0x10F2
        0x2A, 0x7B, // image type 0x7B2A
        0x30, 0x02, 0x01, 0x02, // file version 0x02010230
        0x02, 0x00, // stack version 2
    ];
    let mut string = [0u8; 32];
    string[..15].copy_from_slice(b"ubisys R0 2.0.1");
    b.extend_from_slice(&string);
    b.extend_from_slice(&[0x46, 0x00, 0x00, 0x00]); // total image size 70
    b.extend_from_slice(&[0x00, 0x00, 0x05, 0x00]); // hardware versions 0..=5
    b.extend_from_slice(&[0x00, 0x00, 0x04, 0x00, 0x00, 0x00]); // element 0x0000, 4 bytes
    b.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
    assert_eq!(b.len(), 70);
    b
}

#[test]
fn golden_file_fields_byte_for_byte() {
    let bytes = golden();
    let f = zigbee::parse(&bytes).expect("golden file parses");
    let h = &f.header;
    assert_eq!(h.header_version, 0x0100);
    assert_eq!(h.header_len, 60);
    assert_eq!(h.field_control, 0x0004);
    assert_eq!(h.manufacturer_code, 0x10F2);
    assert_eq!(h.image_type, 0x7B2A);
    assert_eq!(h.file_version, 0x0201_0230);
    assert_eq!(h.stack_version, 2);
    assert_eq!(h.header_string, "ubisys R0 2.0.1");
    assert_eq!(h.total_image_size, 70);
    assert_eq!(h.security_credential_version, None);
    assert_eq!(h.upgrade_file_destination, None);
    assert_eq!(
        h.hardware_versions,
        Some(HardwareVersions { min: 0, max: 5 })
    );
    assert_eq!(f.prefix_len, 0);
    assert_eq!(f.trailing_len, 0);
    assert_eq!(f.file_len(), 70);
    assert_eq!(
        f.elements,
        vec![SubElement {
            tag: 0x0000,
            offset: 60,
            header_len: 6,
            telink_info: None,
            declared_len: 4,
            len: 4,
        }]
    );
    let image = f.image(&bytes).expect("image range inside the file");
    assert_eq!(image, &bytes[..]);
    assert_eq!(
        f.elements[0].data(image),
        Some(&[0xDE, 0xAD, 0xBE, 0xEF][..])
    );
    assert_eq!(f.elements[0].tag_name(), "upgrade image");
    assert!(!f.has_clamped_element());
}

#[test]
fn builder_writes_the_golden_bytes() {
    let built = ZigbeeOtaBuilder::new(0x10F2, 0x7B2A, 0x0201_0230)
        .header_string("ubisys R0 2.0.1")
        .hardware_versions(0, 5)
        .element(0x0000, vec![0xDE, 0xAD, 0xBE, 0xEF])
        .build();
    assert_eq!(built, golden());
}

#[test]
fn plain_file_without_prefix_or_trailer() {
    let bytes = ZigbeeOtaBuilder::new(0x128B, 0x0102, 0x0003_0103)
        .header_string("nodon_sin2_stm32_ota")
        .upgrade_image(1000)
        .element(0x0003, [7u8; 16])
        .build();
    let f = zigbee::parse(&bytes).expect("parses");
    assert_eq!(f.header.total_image_size, 56 + 6 + 1000 + 6 + 16);
    assert_eq!(f.header.total_image_size as usize, bytes.len());
    assert_eq!(f.header.header_string, "nodon_sin2_stm32_ota");
    assert_eq!(f.header.hardware_versions, None);
    assert_eq!(f.image_range(), 0..bytes.len());
    let tags: Vec<(u16, u32, u32)> = f
        .elements
        .iter()
        .map(|e| (e.tag, e.offset, e.len))
        .collect();
    assert_eq!(tags, vec![(0x0000, 56, 1000), (0x0003, 1062, 16)]);
    let image = f.image(&bytes).expect("image");
    assert_eq!(f.elements[1].data(image), Some(&[7u8; 16][..]));
}

#[test]
fn ikea_prefix_and_trailer_are_tolerated_and_reported() {
    let builder = ZigbeeOtaBuilder::new(0x117C, 0x2803, 0x2309_3631)
        .header_string("EBL tradfri_wrgb")
        .upgrade_image(2000)
        .element(0xFFBF, [1u8; 64])
        .element(0xFFBE, [2u8; 100])
        .ikea_prefix(488)
        .trailer(deterministic_payload(512, 9));
    let bytes = builder.build();
    assert_eq!(&bytes[..4], b"NGIS");
    let f = zigbee::parse(&bytes).expect("parses");
    assert_eq!(f.prefix_len, 488);
    assert_eq!(f.trailing_len, 512);
    let total = f.header.total_image_size as usize;
    assert_eq!(total, 56 + 6 + 2000 + 6 + 64 + 6 + 100);
    assert_eq!(bytes.len(), 488 + total + 512);
    assert_eq!(f.file_len(), bytes.len() as u64);
    // The prefix fields IKEA writes: magic offset and image length.
    assert_eq!(
        u32::from_le_bytes(bytes[16..20].try_into().expect("4")),
        488
    );
    assert_eq!(
        u32::from_le_bytes(bytes[20..24].try_into().expect("4")) as usize,
        total
    );
    assert_eq!(f.image_range(), 488..488 + total);
    let image = f.image(&bytes).expect("image");
    assert_eq!(image, builder.build_image().as_slice());
    assert_eq!(&image[..4], &zigbee::MAGIC_BYTES);
    let tags: Vec<u16> = f.elements.iter().map(|e| e.tag).collect();
    assert_eq!(tags, vec![0x0000, 0xFFBF, 0xFFBE]);
    assert_eq!(f.elements[2].data(image), Some(&[2u8; 100][..]));
}

#[test]
fn short_prefix_and_a_few_trailing_bytes() {
    // Legrand: 4-byte prefix; Salus: 4 trailing bytes.
    let bytes = ZigbeeOtaBuilder::new(0x1021, 0x000F, 0x0047_45FF)
        .header_string_raw([b' '; 32])
        .upgrade_image(10)
        .prefix(vec![1, 2, 3, 4])
        .trailer(vec![0, 0, 0, 0])
        .build();
    let f = zigbee::parse(&bytes).expect("parses");
    assert_eq!((f.prefix_len, f.trailing_len), (4, 4));
    assert_eq!(f.header.header_string, "", "32 spaces trim to nothing");
}

#[test]
fn every_optional_field() {
    let cases: [(u16, u16); 4] = [(0x0001, 57), (0x0002, 64), (0x0004, 60), (0x0007, 69)];
    for (fc, len) in cases {
        let mut b = ZigbeeOtaBuilder::new(1, 2, 3);
        if fc & 1 != 0 {
            b = b.security_credential_version(0x42);
        }
        if fc & 2 != 0 {
            b = b.upgrade_file_destination(0x0012_4B00_1234_5678);
        }
        if fc & 4 != 0 {
            b = b.hardware_versions(0x0102, 0x0304);
        }
        let bytes = b.upgrade_image(8).build();
        assert_eq!(&bytes[6..10], &[len as u8, 0, fc as u8, 0], "fc {fc:#x}");
        let f = zigbee::parse(&bytes).expect("parses");
        let h = &f.header;
        assert_eq!((h.field_control, h.header_len), (fc, len));
        assert_eq!(h.security_credential_version, (fc & 1 != 0).then_some(0x42));
        assert_eq!(
            h.upgrade_file_destination,
            (fc & 2 != 0).then_some(0x0012_4B00_1234_5678)
        );
        assert_eq!(
            h.hardware_versions,
            (fc & 4 != 0).then_some(HardwareVersions {
                min: 0x0102,
                max: 0x0304
            })
        );
        assert_eq!(
            f.elements[0].offset,
            u32::from(len),
            "elements start after the header"
        );
    }
}

#[test]
fn optional_fields_are_read_in_order_from_the_bytes() {
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .security_credential_version(0x42)
        .upgrade_file_destination(0x0807_0605_0403_0201)
        .hardware_versions(0x0A0B, 0x0C0D)
        .build();
    assert_eq!(
        &bytes[56..69],
        &[0x42, 1, 2, 3, 4, 5, 6, 7, 8, 0x0B, 0x0A, 0x0D, 0x0C]
    );
    let f = zigbee::parse(&bytes).expect("parses");
    assert!(f.elements.is_empty(), "a header-only image has no elements");
    assert_eq!(f.header.total_image_size, 69);
}

#[test]
fn telink_element_has_an_eight_byte_header() {
    let payload = deterministic_payload(300, 1);
    let bytes = ZigbeeOtaBuilder::new(0x1286, 0x0815, 0x1102)
        .header_string("Telink OTA Sample Usage")
        .telink_element([0x01, 0x0C], payload.clone())
        .build();
    assert_eq!(
        &bytes[56..64],
        &[0x00, 0xF0, 0x2C, 0x01, 0x00, 0x00, 0x01, 0x0C]
    );
    let f = zigbee::parse(&bytes).expect("parses");
    assert_eq!(f.header.total_image_size, 56 + 8 + 300);
    let e = &f.elements[0];
    assert_eq!(
        (e.tag, e.offset, e.header_len, e.telink_info, e.len),
        (0xF000, 56, 8, Some([0x01, 0x0C]), 300)
    );
    assert_eq!(e.data_range(), 64..364);
    assert_eq!(e.data(&bytes), Some(payload.as_slice()));
    assert_eq!(e.tag_name(), "Telink AES upgrade image");
}

#[test]
fn header_string_strips_nuls_and_keeps_lossy_utf8() {
    let mut raw = [0u8; 32];
    raw[..9].copy_from_slice(b"abc\0def  ");
    raw[9] = 0xFF;
    let f = zigbee::parse(
        &ZigbeeOtaBuilder::new(1, 2, 3)
            .header_string_raw(raw)
            .build(),
    )
    .expect("parses");
    assert_eq!(f.header.header_string, "abcdef");
    let mut raw = [0u8; 32];
    raw[..4].copy_from_slice(&[b'a', 0xFE, b'b', 0]);
    let f = zigbee::parse(
        &ZigbeeOtaBuilder::new(1, 2, 3)
            .header_string_raw(raw)
            .build(),
    )
    .expect("parses");
    assert_eq!(f.header.header_string, "a\u{FFFD}b");
}

#[test]
fn the_first_magic_wins() {
    let inner = ZigbeeOtaBuilder::new(9, 9, 9)
        .upgrade_image(4)
        .build_image();
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .element(0xF100, inner)
        .prefix(vec![0x1E, 0xF1, 0xEE])
        .build();
    let f = zigbee::parse(&bytes).expect("parses");
    assert_eq!(f.prefix_len, 3);
    assert_eq!(f.header.manufacturer_code, 1);
}

// --- refusals -------------------------------------------------------------------------------

fn refused(bytes: &[u8]) -> ZigbeeError {
    zigbee::parse(bytes).expect_err("must be refused")
}

#[test]
fn refuses_a_file_without_the_magic() {
    let err = refused(&[0x0B, 0xEE, 0xF1, 0x1E, 0, 0, 0, 0]);
    assert_eq!(err, ZigbeeError::MagicNotFound);
    assert_eq!(
        err.to_string(),
        "not a Zigbee OTA file: magic 0x0BEEF11E (bytes 1E F1 EE 0B) not found"
    );
    assert_eq!(refused(&[]), ZigbeeError::MagicNotFound);
    assert_eq!(refused(&[0x1E, 0xF1, 0xEE]), ZigbeeError::MagicNotFound);
}

#[test]
fn refuses_a_truncated_header() {
    let bytes = golden();
    assert_eq!(
        refused(&bytes[..55]),
        ZigbeeError::TruncatedHeader {
            magic_offset: 0,
            available: 55,
            needed: 56
        }
    );
    // The base header is complete but the hardware versions are cut off.
    assert_eq!(
        refused(&bytes[..58]),
        ZigbeeError::TruncatedHeader {
            magic_offset: 0,
            available: 58,
            needed: 60
        }
    );
    let mut prefixed = vec![0xAA; 10];
    prefixed.extend_from_slice(&bytes[..20]);
    let err = refused(&prefixed);
    assert_eq!(
        err.to_string(),
        "truncated Zigbee OTA header: the magic at offset 10 is followed by 20 bytes, the \
         header needs 56"
    );
}

#[test]
fn refuses_unknown_header_versions() {
    for v in [0x0000, 0x0001, 0x0101, 0x0200, 0xFFFF] {
        let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
            .header_version(v)
            .upgrade_image(4)
            .build();
        assert_eq!(refused(&bytes), ZigbeeError::UnsupportedHeaderVersion(v));
    }
    let err = ZigbeeError::UnsupportedHeaderVersion(0x0200);
    assert!(
        err.to_string()
            .starts_with("unsupported Zigbee OTA header version 0x0200")
    );
}

#[test]
fn refuses_a_header_length_that_disagrees_with_the_field_control() {
    // Field control announces hardware versions but the header is only 56 bytes.
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .field_control(0x0004)
        .upgrade_image(8)
        .build();
    let err = refused(&bytes);
    assert_eq!(
        err,
        ZigbeeError::HeaderTooShort {
            header_len: 56,
            field_control: 4,
            required: 60
        }
    );
    assert_eq!(
        err.to_string(),
        "header length 56 is shorter than the 60 bytes field control 0x0004 requires"
    );
    // Hardware versions written but not announced.
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .hardware_versions(0, 5)
        .field_control(0)
        .build();
    assert_eq!(
        refused(&bytes),
        ZigbeeError::HeaderTooLong {
            header_len: 60,
            field_control: 0,
            required: 56
        }
    );
    // A header length below the 56-byte base.
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3).header_len(40).build();
    assert_eq!(
        refused(&bytes),
        ZigbeeError::HeaderTooShort {
            header_len: 40,
            field_control: 0,
            required: 56
        }
    );
}

#[test]
fn refuses_a_total_smaller_than_the_header() {
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .total_image_size(55)
        .upgrade_image(8)
        .build();
    let err = refused(&bytes);
    assert_eq!(
        err,
        ZigbeeError::TotalSmallerThanHeader {
            total_image_size: 55,
            header_len: 56
        }
    );
    assert_eq!(
        err.to_string(),
        "total image size 55 is smaller than the header length 56"
    );
}

#[test]
fn refuses_truncated_files() {
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3).upgrade_image(1000).build();
    for cut in [1, 2, 500, 999] {
        let err = refused(&bytes[..bytes.len() - cut]);
        assert_eq!(
            err,
            ZigbeeError::Truncated {
                total_image_size: 1062,
                available: (1062 - cut) as u64,
                magic_offset: 0
            },
            "cut {cut}"
        );
    }
    // With an IKEA prefix and the trailer cut off plus part of the image.
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .upgrade_image(1000)
        .ikea_prefix(616)
        .trailer(vec![0; 512])
        .build();
    let err = refused(&corrupt::truncated(&bytes, 616 + 1000));
    assert_eq!(
        err.to_string(),
        "truncated file: the header declares a total image size of 1062 bytes but only 1000 \
         bytes follow the magic at offset 616; the file was cut short (incomplete download or \
         upload?)"
    );
    // A header total one byte larger than the file.
    let mut bytes = ZigbeeOtaBuilder::new(1, 2, 3).upgrade_image(10).build();
    corrupt::set_zigbee_total_image_size(&mut bytes, 73);
    assert!(matches!(refused(&bytes), ZigbeeError::Truncated { .. }));
}

#[test]
fn refuses_elements_that_stop_short_of_the_total() {
    // The total claims 3 more bytes than the elements cover: no room for another element header.
    let mut bytes = ZigbeeOtaBuilder::new(1, 2, 3).upgrade_image(10).build();
    bytes.extend_from_slice(&[0, 0, 0]);
    corrupt::set_zigbee_total_image_size(&mut bytes, 75);
    let err = refused(&bytes);
    assert_eq!(
        err,
        ZigbeeError::ElementHeaderTruncated {
            offset: 72,
            needed: 6,
            remaining: 3,
            total_image_size: 75
        }
    );
    assert_eq!(
        err.to_string(),
        "sub-elements do not add up to the total image size 75: the element header at offset 72 \
         needs 6 bytes but only 3 remain"
    );
    // A Telink element header needs 8 bytes.
    let mut bytes = ZigbeeOtaBuilder::new(1, 2, 3).build();
    bytes.extend_from_slice(&[0x00, 0xF0, 0, 0, 0, 0, 1]);
    corrupt::set_zigbee_total_image_size(&mut bytes, 63);
    assert!(matches!(
        refused(&bytes),
        ZigbeeError::ElementHeaderTruncated {
            needed: 8,
            remaining: 7,
            ..
        }
    ));
}

#[test]
fn refuses_an_overlong_element_when_bytes_follow_the_image() {
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .upgrade_image(100)
        .element_with_declared_len(0xF7BD, vec![5u8; 16], 20)
        .trailer(vec![0u8; 4])
        .build();
    let err = refused(&bytes);
    assert_eq!(
        err,
        ZigbeeError::ElementOverrun {
            tag: 0xF7BD,
            offset: 162,
            declared_len: 20,
            remaining: 16,
            total_image_size: 184,
            trailing_len: 4
        }
    );
    assert!(
        err.to_string()
            .starts_with("sub-elements do not add up to the total image size 184")
    );
}

#[test]
fn refuses_an_element_overrunning_into_the_next_one_with_a_trailer() {
    // The first element claims more than its data, so the walk ends inside the second element
    // and the claimed length runs past the image end.
    let bytes = ZigbeeOtaBuilder::new(1, 2, 3)
        .element_with_declared_len(0x0000, vec![1u8; 10], 1000)
        .element(0x0003, vec![2u8; 16])
        .prefix(vec![9u8; 7])
        .trailer(vec![9u8; 7])
        .build();
    assert!(matches!(
        refused(&bytes),
        ZigbeeError::ElementOverrun {
            tag: 0x0000,
            offset: 63,
            declared_len: 1000,
            ..
        }
    ));
}

#[test]
fn an_overlong_last_element_at_the_end_of_the_file_is_clamped_like_herdsman() {
    // The Develco/Lumi/Hue quirk: the last vendor element declares more than the file holds.
    let bytes = ZigbeeOtaBuilder::new(0x1015, 1, 2)
        .upgrade_image(100)
        .element_with_declared_len(0xFF01, vec![5u8; 16], 1 << 20)
        .build();
    let f = zigbee::parse(&bytes).expect("accepted, as zigbee2mqtt would");
    assert_eq!(f.trailing_len, 0);
    assert!(f.has_clamped_element());
    let last = f.elements.last().expect("element");
    assert_eq!((last.declared_len, last.len), (1 << 20, 16));
    assert!(last.is_clamped());
    assert!(!f.elements[0].is_clamped());
    assert_eq!(last.data(&bytes), Some(&[5u8; 16][..]));
}

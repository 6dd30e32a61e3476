//! Golden transcripts of the main flows, checked byte for byte in both roles: the client must
//! send exactly the `C` segments when fed the `D` segments, and the device must answer exactly
//! the `D` segments when fed the `C` segments. Control bytes are written from the protocol
//! reference; nonces, cnonces and Noise frames follow from the fixed test entropy, and every
//! authentication response below was recomputed independently (Python's hashlib).

use bytes::Bytes;
use md5::{Digest, Md5};

use super::super::compress::{deflate_4k, gunzip, gzip};
use super::super::wire::BLOCK_SIZE;
use super::super::{
    AuthScheme, ClientConfig, ClientError, ClientState, Compression, DeviceAuth, DeviceConfig,
    DeviceEvent, DeviceNoise, ErrorCode, Event, NoiseKey, OtaVersion, Password,
};
use super::{Seg, c, check_client, check_device, d, h, image, received};

const MAGIC: &str = "6c26f75c45";

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// `data` in 8 KiB blocks, each followed by a chunk ack on version 2.
fn blocks(data: &[u8], acks: bool) -> Vec<Seg> {
    let mut v = Vec::new();
    for block in data.chunks(BLOCK_SIZE) {
        v.push(c(block));
        if acks {
            v.push(d([0x47]));
        }
    }
    v
}

fn plain_device() -> DeviceConfig {
    DeviceConfig {
        deflate: false,
        ..DeviceConfig::default()
    }
}

/// Checks both roles and that the device received `img`.
fn check_both(cc: ClientConfig, dc: DeviceConfig, img: &Bytes, script: &[Seg]) -> Vec<Event> {
    let (client, events) = check_client(cc, img.clone(), script);
    assert_eq!(client.state(), ClientState::Done);
    assert!(events.contains(&Event::Completed));
    let (device, dev_events) = check_device(dc, script);
    assert!(device.is_closed(), "the device closes after the final 00");
    let got = received(&dev_events).expect("image received");
    assert!(got.md5_ok());
    assert_eq!(got.boot_image().unwrap(), *img);
    assert!(dev_events.contains(&DeviceEvent::Committed));
    events
}

#[test]
fn no_password_v2_plain() {
    let img = image(10_000, 1);
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x48, 0x00]),
        d([0x41]),
        c([0x00]),
        c(h("00002710")),
        d([0x42]),
        c(md5_hex(&img)),
        d([0x43]),
    ];
    s.extend(blocks(&img, true));
    s.extend([d([0x44]), d([0x45]), c([0x00])]);
    let events = check_both(ClientConfig::default(), plain_device(), &img, &s);
    assert!(events.contains(&Event::LastChunkSent));
}

#[test]
fn sha256_password() {
    let img = image(100, 1);
    let nonce = "51a8e6aa55feeb4c13656d039bac4f014ad7df99bc6ca4e5e6bd4b7f404a24ba";
    let cnonce = "c97c7bfd384ff63fd810d81dffe9d5e77cf0ae098f9f4e3c70cd4bfe984efe1d";
    // sha256("otapass" ‖ nonce ‖ cnonce), computed with Python's hashlib.
    let response = "3320f7e8d4851c6b814be75946530b66eb1b258d89b3fd821b5c3cc500d86cd6";
    assert_eq!(
        AuthScheme::Sha256.response(
            &Password::new("otapass"),
            nonce.as_bytes(),
            cnonce.as_bytes()
        ),
        response
    );
    let mut challenge = vec![0x02];
    challenge.extend_from_slice(nonce.as_bytes());
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x48, 0x00]),
        d(&challenge),
        c(cnonce),
        c(response),
        d([0x41]),
        c([0x00]),
        c(h("00000064")),
        d([0x42]),
        c("66589e142cbfd406d1664a5364025b92"),
        d([0x43]),
    ];
    assert_eq!(md5_hex(&img), "66589e142cbfd406d1664a5364025b92");
    s.extend(blocks(&img, true));
    s.extend([d([0x44]), d([0x45]), c([0x00])]);
    let pw = || Some(Password::new("otapass"));
    check_both(
        ClientConfig {
            password: pw(),
            ..ClientConfig::default()
        },
        DeviceConfig {
            password: pw(),
            ..plain_device()
        },
        &img,
        &s,
    );

    // The same exchange with a wrong password ends at the device's 0x82.
    let wrong = "b".repeat(64);
    let s = [
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x48, 0x00]),
        d(&challenge),
        c(cnonce),
        c(&wrong),
        d([0x82]),
    ];
    let (device, events) = check_device(
        DeviceConfig {
            password: pw(),
            ..plain_device()
        },
        &s,
    );
    assert!(device.is_closed());
    assert_eq!(
        events.last(),
        Some(&DeviceEvent::Failed(ErrorCode::AuthInvalid))
    );
}

#[test]
fn legacy_md5_device() {
    // A device before 2026.5 (no extended protocol) with MD5 auth (before 2025.10): legacy
    // ack 0x40, an MD5 challenge, and no OTA type byte.
    let img = image(100, 1);
    let nonce = "48fbee43c787632f654b0dc4a8c2b2bb";
    let cnonce = "c97c7bfd384ff63fd810d81dffe9d5e7";
    // md5("otapass" ‖ nonce ‖ cnonce), computed with Python's hashlib.
    let response = "10fb2cb44a1534e60fcddded396cefce";
    let mut challenge = vec![0x01];
    challenge.extend_from_slice(nonce.as_bytes());
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x40]),
        d(&challenge),
        c(cnonce),
        c(response),
        d([0x41]),
        c(h("00000064")),
        d([0x42]),
        c(md5_hex(&img)),
        d([0x43]),
    ];
    s.extend(blocks(&img, true));
    s.extend([d([0x44]), d([0x45]), c([0x00])]);
    let pw = || Some(Password::new("otapass"));
    let events = check_both(
        ClientConfig {
            password: pw(),
            ..ClientConfig::default()
        },
        DeviceConfig {
            password: pw(),
            auth: DeviceAuth::Md5,
            extended: false,
            ..plain_device()
        },
        &img,
        &s,
    );
    let n = events
        .iter()
        .find_map(|e| match e {
            Event::Negotiated(n) => Some(*n),
            _ => None,
        })
        .unwrap();
    assert!(!n.extended);
    assert_eq!(n.compression, Compression::None);
}

#[test]
fn v1_has_no_chunk_acks() {
    let img = image(20_000, 2);
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x01]),
        c([0x17]),
        d([0x48, 0x00]),
        d([0x41]),
        c([0x00]),
        c(h("00004e20")),
        d([0x42]),
        c(md5_hex(&img)),
        d([0x43]),
        // All three blocks back to back.
        c(&img),
        d([0x44]),
        d([0x45]),
        c([0x00]),
    ];
    check_both(
        ClientConfig::default(),
        DeviceConfig {
            version: OtaVersion::V1,
            ..plain_device()
        },
        &img,
        &s,
    );
    // And the same bytes are the v1 transcript of a legacy device as well.
    s[3] = d([0x40]);
    s.remove(5);
    check_both(
        ClientConfig::default(),
        DeviceConfig {
            version: OtaVersion::V1,
            extended: false,
            ..plain_device()
        },
        &img,
        &s,
    );
}

#[test]
fn gzip_legacy_0x46() {
    // An ESP8266 before 2026.5: legacy ack 0x46, gzip on the wire, MD5 of the gzip file.
    let img = image(30_000, 3);
    let gz = gzip(&img);
    assert_eq!(
        &gz[..10],
        &h("1f8b08000000000002ff")[..],
        "gzip header, mtime 0, -9"
    );
    assert_eq!(gunzip(&gz).unwrap(), img);
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x46]),
        d([0x41]),
        c((gz.len() as u32).to_be_bytes()),
        d([0x42]),
        c(md5_hex(&gz)),
        d([0x43]),
    ];
    s.extend(blocks(&gz, true));
    s.extend([d([0x44]), d([0x45]), c([0x00])]);
    check_both(
        ClientConfig::default(),
        DeviceConfig {
            extended: false,
            gzip: true,
            deflate: false,
            ..DeviceConfig::default()
        },
        &img,
        &s,
    );
}

#[test]
fn extended_gzip_and_partition_flag() {
    // An ESP8266 on 2026.10 (48 01) and an RP2040 build with partition access (48 03).
    let img = image(12_000, 4);
    let gz = gzip(&img);
    for (flags, partition_access) in [(0x01, false), (0x03, true)] {
        let mut s = vec![
            c(h(MAGIC)),
            d([0x00, 0x02]),
            c([0x17]),
            d([0x48, flags]),
            d([0x41]),
            c([0x00]),
            c((gz.len() as u32).to_be_bytes()),
            d([0x42]),
            c(md5_hex(&gz)),
            d([0x43]),
        ];
        s.extend(blocks(&gz, true));
        s.extend([d([0x44]), d([0x45]), c([0x00])]);
        check_both(
            ClientConfig::default(),
            DeviceConfig {
                gzip: true,
                deflate: false,
                partition_access,
                ..DeviceConfig::default()
            },
            &img,
            &s,
        );
    }
}

#[test]
fn extended_deflate() {
    // An ESP32 on 2026.10: 48 08, then size, inflated size (its own field) and the MD5 of the
    // inflated image; chunk acks count bytes on the wire.
    let img = image(40_000, 5);
    let z = deflate_4k(&img);
    assert!(z.len() > BLOCK_SIZE, "spans several blocks");
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x48, 0x08]),
        d([0x41]),
        c([0x00]),
        c((z.len() as u32).to_be_bytes()),
        c(h("00009c40")),
        d([0x42]),
        c(md5_hex(&img)),
        d([0x43]),
    ];
    s.extend(blocks(&z, true));
    s.extend([d([0x44]), d([0x45]), c([0x00])]);
    check_both(ClientConfig::default(), DeviceConfig::default(), &img, &s);
}

fn noise_device(required: bool) -> DeviceConfig {
    DeviceConfig {
        noise: Some(DeviceNoise {
            key: NoiseKey::new([0x4B; 32]),
            required,
        }),
        ..plain_device()
    }
}

#[test]
fn noise() {
    // Features 0x1F, 48 04, [00 ‖ msg1], [00 ‖ msg2], then every device byte its own 17-byte
    // frame and every client field one frame: type (1+16), size (4+16), MD5 (32+16), data
    // (100+16), final 00 (1+16).
    let img = image(100, 1);
    let s = [
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x1F]),
        d([0x48, 0x04]),
        c(h(
            "01003100 1de22f3d84207ef304c4708c05f127d68ce495724bd21a925d4dabe9f9b5b13d \
             386f04b8ae811030e4d79cb74a7ace4c",
        )),
        d(h(
            "01003100 9247b7d8200c2df643a0e12e49ecdb7481d50d279a33ca7f0bc3c821ed2d3b7f \
             48d8912c1f42b38bd4931258003da7b4",
        )),
        d(h("010011 a46ca1b86c56805b8447978681d3e5e126")),
        c(h("010011 1df8a2de1b900f8eae5b65f76a530ca900")),
        c(h("010014 0485a51c1b5a0262eb415ce0219a15d65d7acd43")),
        d(h("010011 5ba163a34e8d5e9c8e7fa47031117b9c00")),
        c(h(
            "010030 c897c26506a7396e264e7d9768e5ed501c6aef8e821d3bd38c6a7db87cac7e33 \
             8bc70ed822550b6d65bca0de4e824e94",
        )),
        d(h("010011 5860688d7ee4a3ca12d3b56b7eb39f719c")),
        c(h(
            "010074 c783267e771ef44b8bfa481c99766c4c7b605dbf458aab8f8573baa849040f1a \
             01c39e1c49c3408aae270af5be4304372fc9f6e79b9b3239385a057ff3d64fe07ee3042f \
             899a07a46d9a3760688ecef4f07c21def044861a8db9c960ddc60a40f4c479006d8ebb00 \
             8aa6f72b599d313ef8312616",
        )),
        d(h("010011 749bdcc7e7841dfa37e2495d7f5f1680cb")),
        d(h("010011 71943faa807f412ef58bdcbb028c7be36b")),
        d(h("010011 6ef43b2768dfe99cfdf3285977266d6e74")),
        c(h("010011 3cc1549525432552778b66fcef9c02770c")),
    ];
    let events = check_both(
        ClientConfig {
            noise_key: Some(NoiseKey::new([0x4B; 32])),
            ..ClientConfig::default()
        },
        noise_device(true),
        &img,
        &s,
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Negotiated(n) if n.encrypted))
    );
}

#[test]
fn noise_wrong_key_and_encryption_required() {
    let img = image(100, 1);
    // The device rejects msg1 with the exact MAC-failure reason.
    let s = [
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x1F]),
        d([0x48, 0x04]),
        c(h(
            "01003100 1de22f3d84207ef304c4708c05f127d68ce495724bd21a925d4dabe9f9b5b13d \
             6af23a678844d0ae6e452e7b7a0088da",
        )),
        d(h("010016 01 48616e647368616b65204d4143206661696c757265")),
    ];
    assert_eq!(
        &h("48616e647368616b65204d4143206661696c757265"),
        b"Handshake MAC failure"
    );
    let (device, events) = check_device(noise_device(true), &s);
    assert!(device.is_closed());
    assert!(events.iter().any(|e| matches!(e, DeviceEvent::Aborted(_))));
    let wrong = ClientConfig {
        noise_key: Some(NoiseKey::new([0x4C; 32])),
        ..ClientConfig::default()
    };
    let last = s.len() - 1;
    let (mut client, _) = check_client(wrong, img.clone(), &s[..last]);
    let Seg::D(reject) = &s[last] else {
        unreachable!()
    };
    assert_eq!(client.handle_input(reject), Err(ClientError::NoiseWrongKey));

    // A client without a key at a device that requires encryption: 0x94 right after features.
    let s = [c(h(MAGIC)), d([0x00, 0x02]), c([0x17]), d([0x94])];
    let (device, _) = check_device(noise_device(true), &s);
    assert!(device.is_closed());
    let (mut client, _) = check_client(ClientConfig::default(), img, &s[..3]);
    assert_eq!(
        client.handle_input(&[0x94]),
        Err(ClientError::Device {
            code: ErrorCode::EncryptionRequired,
            waiting: ClientState::AwaitFeatureAck
        })
    );
}

#[test]
fn offered_noise_is_ignored_by_a_client_without_key() {
    // An api-key device offers Noise (48 04); a client without a key goes on in plaintext.
    let img = image(100, 1);
    let mut s = vec![
        c(h(MAGIC)),
        d([0x00, 0x02]),
        c([0x17]),
        d([0x48, 0x04]),
        d([0x41]),
        c([0x00]),
        c(h("00000064")),
        d([0x42]),
        c(md5_hex(&img)),
        d([0x43]),
    ];
    s.extend(blocks(&img, true));
    s.extend([d([0x44]), d([0x45]), c([0x00])]);
    let events = check_both(ClientConfig::default(), noise_device(false), &img, &s);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Negotiated(n) if !n.encrypted))
    );
    let _ = received;
}

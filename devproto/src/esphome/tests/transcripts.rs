//! Golden transcripts of the main flows, checked byte for byte in both roles: the client must
//! send exactly the `C` segments when fed the `D` segments, and the device must answer exactly
//! the `D` segments when fed the `C` segments. Control bytes are written from the protocol
//! reference; nonces, cnonces and Noise frames follow from the fixed test entropy (ChaCha20
//! streams, see `entropy`). The nonces and cnonces below were recomputed independently (the
//! ChaCha20 of Python's `cryptography` with the seed as key and the purpose as 64-bit stream
//! nonce, then `hashlib`), and so was every authentication response (Python's hashlib).

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
    let nonce = "493bd4e5b54cf600b43d290a84c7a41b477bbfe1e874bebf4fedfa9b6626437d";
    let cnonce = "f8f071533df7a04569a79927748eb2c1fc945a877e2e2ce2df69cbca3331b1e1";
    // sha256("otapass" ‖ nonce ‖ cnonce), computed with Python's hashlib.
    let response = "e875236f67d2df3fc4177daa2a8bbd71759278fc02b0c46904321735d073b5f9";
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
    let nonce = "73129fda84e2020e401f137de2c24a3a";
    let cnonce = "f8f071533df7a04569a79927748eb2c1";
    // md5("otapass" ‖ nonce ‖ cnonce), computed with Python's hashlib.
    let response = "9f8c4b165b56e11a82968a6c1cde6818";
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
            "01003100 58c2f792c7fdd977ff1d84e7cae1c2379926a1e3c1607e3d99e838457e11e761 \
             b0447f2d84574dfa743bd2d2ff161d40",
        )),
        d(h(
            "01003100 dbceb2292451be23cfe6dbd3880abdf630175c635b4ff76e95282c6b12c73726 \
             4319d4bd7731602142dfca65beb1069f",
        )),
        d(h("010011 1390f3c6de5338678f244607206b199378")),
        c(h("010011 f7c2a49ba5908928ebd311478e7c415031")),
        c(h("010014 ac176dc97c59f947a05792514da1ad72aef5bfa3")),
        d(h("010011 7d5fa25f6377c693eccf035b489385434b")),
        c(h(
            "010030 b859b0f8c22c1d967cc995e0f0635bca0d7331d0bd1cea3351b97ca80da5a24f \
             7f022eaf28a4eee0d9249cc052741be1",
        )),
        d(h("010011 d05d48bc684871b0c84f9ed078a9c9219a")),
        c(h(
            "010074 b9e370a409d1b2c1a6ed7c2f6b70ae6eed540dbb8153707c7333545faedda07567 \
             db09f766e9b23262f354c6b9c4e5dae39e4cd3722a492f3df1e0e0e6e4d2c80a3283aa75 \
             99f01f192ed606066d95078883f861fa5f66fe76ca92267e9c5bb3965fb669c881cea729 \
             803b13440691efd9d4d895",
        )),
        d(h("010011 4196d0f62acc649e4a389529744ec49ff1")),
        d(h("010011 0f288be6b2e3aa251d261f9108b602cc67")),
        d(h("010011 555734dfe03853a6f7a6a4bc9c457c8bb6")),
        c(h("010011 183ef07c73cf55e73ef60faae1aafe3efe")),
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
            "01003100 58c2f792c7fdd977ff1d84e7cae1c2379926a1e3c1607e3d99e838457e11e761 \
             8dd258e1ed9191938646f9097bda18aa",
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

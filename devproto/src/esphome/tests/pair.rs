//! Deterministic two-party simulation: a client and a device machine wired back to back in
//! memory, bytes cut into pseudo-random pieces, optionally tampered with in transit. Runs every
//! feature combination against an oracle, every device error, wrong secrets and cut connections.

use bytes::Bytes;

use super::super::wire::{BLOCK_SIZE, client_feature};
use super::super::{
    AcceptAll, AuthScheme, Backend, Client, ClientConfig, ClientError, ClientState, Compression,
    Device, DeviceAuth, DeviceConfig, DeviceEvent, DeviceNoise, ErrorCode, Event, NoiseKey,
    OtaType, OtaVersion, Password, ReceivedImage,
};
use super::{CLIENT_ENTROPY, DEVICE_ENTROPY, Seg, image, received};

/// Options of one run.
#[derive(Clone, Copy, Default)]
pub(super) struct Wire {
    /// Cut every transmission into pieces of pseudo-random size (1..=2048) from this seed.
    pub split: Option<u32>,
    /// XOR this byte into the client's byte at this offset (counted over all it sends).
    pub tamper: Option<(usize, u8)>,
    /// The client's connection drops after it sent this many bytes.
    pub cut_after: Option<usize>,
}

pub(super) struct Outcome {
    pub client: Result<(), ClientError>,
    pub client_events: Vec<Event>,
    pub device_events: Vec<DeviceEvent>,
    pub log: Vec<Seg>,
}

impl Outcome {
    pub fn image(&self) -> Option<&ReceivedImage> {
        received(&self.device_events)
    }

    pub fn committed(&self) -> bool {
        self.device_events.contains(&DeviceEvent::Committed)
    }

    pub fn negotiated(&self) -> Option<super::super::Negotiated> {
        self.client_events.iter().find_map(|e| match e {
            Event::Negotiated(n) => Some(*n),
            _ => None,
        })
    }
}

fn pieces(data: &[u8], rng: &mut Option<u32>) -> Vec<Vec<u8>> {
    let Some(x) = rng else {
        return vec![data.to_vec()];
    };
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        let n = (*x as usize % 2048 + 1).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

pub(super) fn run<B: Backend>(
    client_config: ClientConfig,
    device_config: DeviceConfig,
    backend: B,
    image: Bytes,
    wire: Wire,
) -> Outcome {
    let mut client = Client::new(client_config, image, CLIENT_ENTROPY).unwrap();
    let mut device = Device::new(device_config, backend, DEVICE_ENTROPY);
    let mut split = wire.split.map(|s| s | 1);
    let mut log = Vec::new();
    let (mut client_events, mut device_events) = (Vec::new(), Vec::new());
    let mut client_result: Option<Result<(), ClientError>> = None;
    let mut sent = 0usize;
    let mut device_told_eof = false;
    for _ in 0..100_000 {
        let mut progressed = false;
        if client_result.is_none() {
            while let Some(mut b) = client.poll_transmit().map(|b| b.to_vec()) {
                progressed = true;
                if let Some((at, x)) = wire.tamper
                    && (sent..sent + b.len()).contains(&at)
                {
                    b[at - sent] ^= x;
                }
                if let Some(cut) = wire.cut_after
                    && sent + b.len() >= cut
                {
                    b.truncate(cut - sent);
                    sent = cut;
                    log.push(Seg::C(b.clone()));
                    device.handle_input(&b);
                    client_result = Some(client.handle_eof());
                    break;
                }
                sent += b.len();
                log.push(Seg::C(b.clone()));
                for p in pieces(&b, &mut split) {
                    device.handle_input(&p);
                }
            }
        }
        client_events.extend(std::iter::from_fn(|| client.poll_event()));
        device_events.extend(std::iter::from_fn(|| device.poll_event()));
        while let Some(b) = device.poll_transmit() {
            progressed = true;
            log.push(Seg::D(b.to_vec()));
            if client_result.is_some() {
                continue;
            }
            for p in pieces(&b, &mut split) {
                if let Err(e) = client.handle_input(&p) {
                    client_result = Some(Err(e));
                    break;
                }
            }
        }
        client_events.extend(std::iter::from_fn(|| client.poll_event()));
        let client_closed =
            client_result.is_some() || (client.state() == ClientState::Done && !progressed);
        if client_closed && !device_told_eof {
            device_told_eof = true;
            progressed = true;
            device.handle_eof();
        }
        if device.is_closed() && client_result.is_none() && !progressed {
            client_result = Some(client.handle_eof());
            progressed = true;
        }
        device_events.extend(std::iter::from_fn(|| device.poll_event()));
        if !progressed {
            break;
        }
    }
    Outcome {
        client: client_result.unwrap_or_else(|| Err(client.handle_timeout().unwrap_err())),
        client_events,
        device_events,
        log,
    }
}

/// What a client configuration and a device configuration must come to.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Ok {
        compression: Compression,
        encrypted: bool,
    },
    Device(ErrorCode),
    EncryptionNotOffered,
    PasswordRequired,
    WrongKey,
}

fn oracle(c: &ClientConfig, d: &DeviceConfig) -> Expect {
    let required = d.noise.as_ref().is_some_and(|n| n.required);
    if required && c.noise_key.is_none() {
        return Expect::Device(ErrorCode::EncryptionRequired);
    }
    let extended = required || d.extended;
    let offers = extended && d.noise.is_some();
    let encrypted = c.noise_key.is_some() && offers;
    if c.noise_key.is_some() && !offers && !c.allow_plaintext {
        return Expect::EncryptionNotOffered;
    }
    if encrypted && d.noise.as_ref().map(|n| &n.key) != c.noise_key.as_ref() {
        return Expect::WrongKey;
    }
    let compression = match (c.compression, extended) {
        (false, _) => Compression::None,
        (true, true) if d.deflate => Compression::Deflate,
        (true, _) if d.gzip => Compression::Gzip,
        _ => Compression::None,
    };
    if !encrypted && d.password.as_ref().is_some_and(|p| !p.is_empty()) {
        match &c.password {
            None => return Expect::PasswordRequired,
            Some(p) if Some(p) != d.password.as_ref() => {
                return Expect::Device(ErrorCode::AuthInvalid);
            }
            Some(_) => {}
        }
    }
    Expect::Ok {
        compression,
        encrypted,
    }
}

fn key(n: u8) -> NoiseKey {
    NoiseKey::new([n; 32])
}

#[test]
fn every_feature_combination_matches_the_oracle() {
    let img = image(3 * BLOCK_SIZE + 1234, 5);
    let mut runs = 0;
    let passwords = [None, Some("right")];
    let client_passwords = [None, Some("right"), Some("wrong")];
    let noises = [None, Some(false), Some(true)];
    let client_keys = [None, Some(1u8), Some(2u8)];
    for version in [OtaVersion::V1, OtaVersion::V2] {
        for extended in [true, false] {
            for (gzip, deflate) in [(false, false), (true, false), (false, true)] {
                for auth in [DeviceAuth::Sha256, DeviceAuth::Sha256OrMd5, DeviceAuth::Md5] {
                    for dpw in passwords {
                        for dnoise in noises {
                            let dc = DeviceConfig {
                                version,
                                password: dpw.map(Password::new),
                                auth,
                                extended,
                                gzip,
                                deflate,
                                partition_access: false,
                                noise: dnoise.map(|required| DeviceNoise {
                                    key: key(1),
                                    required,
                                }),
                            };
                            for cpw in client_passwords {
                                for ckey in client_keys {
                                    for (allow_plaintext, compression) in
                                        [(false, true), (true, true), (false, false)]
                                    {
                                        let cc = ClientConfig {
                                            password: cpw.map(Password::new),
                                            noise_key: ckey.map(key),
                                            allow_plaintext,
                                            compression,
                                            ota_type: OtaType::App,
                                        };
                                        let split = (runs % 3 != 0).then_some(runs as u32);
                                        check_combination(&cc, &dc, &img, split);
                                        runs += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(runs, 2 * 2 * 3 * 3 * 2 * 3 * 3 * 3 * 3);
}

fn check_combination(cc: &ClientConfig, dc: &DeviceConfig, img: &Bytes, split: Option<u32>) {
    let want = oracle(cc, dc);
    let out = run(
        cc.clone(),
        dc.clone(),
        AcceptAll,
        img.clone(),
        Wire {
            split,
            ..Wire::default()
        },
    );
    let ctx = format!("client {cc:?}\ndevice {dc:?}");
    match want {
        Expect::Ok {
            compression,
            encrypted,
        } => {
            assert_eq!(out.client, Ok(()), "{ctx}");
            assert!(out.committed(), "{ctx}");
            let got = out.image().expect("image received");
            assert_eq!(got.boot_image().unwrap(), *img, "{ctx}");
            assert!(got.md5_ok());
            let n = out.negotiated().unwrap();
            assert_eq!(
                (n.compression, n.encrypted),
                (compression, encrypted),
                "{ctx}"
            );
            let acks = out
                .log
                .iter()
                .filter(|s| matches!(s, Seg::D(b) if b == &[0x47]))
                .count();
            let blocks = (n.wire_size as usize).div_ceil(BLOCK_SIZE);
            if !encrypted {
                let want_acks = if dc.version == OtaVersion::V2 {
                    blocks
                } else {
                    0
                };
                assert_eq!(acks, want_acks, "{ctx}");
            }
            assert_eq!(
                out.client_events.last(),
                Some(&Event::Phase(super::super::Phase::Done))
            );
        }
        Expect::Device(code) => {
            assert_eq!(
                out.client.as_ref().unwrap_err().device_code(),
                Some(code),
                "{ctx}"
            );
            assert!(!out.committed());
        }
        Expect::EncryptionNotOffered => {
            assert_eq!(out.client, Err(ClientError::EncryptionNotOffered), "{ctx}");
            assert!(out.image().is_none());
        }
        Expect::PasswordRequired => {
            assert_eq!(out.client, Err(ClientError::PasswordRequired), "{ctx}");
        }
        Expect::WrongKey => {
            assert_eq!(out.client, Err(ClientError::NoiseWrongKey), "{ctx}");
            assert!(out.device_events.contains(&DeviceEvent::Aborted(
                "noise handshake: MAC failure (wrong key)"
            )));
        }
    }
}

/// A backend that fails one step with one code.
#[derive(Debug, Default)]
struct Failing {
    begin: Option<ErrorCode>,
    write_at: Option<(usize, ErrorCode)>,
    end: Option<ErrorCode>,
    begun: Option<(usize, OtaType)>,
    written: usize,
}

impl Backend for Failing {
    fn begin(&mut self, size: usize, ota_type: OtaType) -> Result<(), ErrorCode> {
        self.begun = Some((size, ota_type));
        self.begin.map_or(Ok(()), Err)
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), ErrorCode> {
        assert_eq!(offset, self.written, "writes are sequential");
        self.written += data.len();
        match self.write_at {
            Some((at, code)) if (offset..offset + data.len()).contains(&at) => Err(code),
            _ => Ok(()),
        }
    }
    fn end(&mut self, _: &ReceivedImage) -> Result<(), ErrorCode> {
        self.end.map_or(Ok(()), Err)
    }
}

fn esp32() -> DeviceConfig {
    DeviceConfig::default()
}

#[test]
fn every_device_error_reaches_the_client_typed_and_final() {
    let img = image(20_000, 9);
    for code in ErrorCode::ALL {
        for (where_, backend, waiting) in [
            (
                "begin",
                Failing {
                    begin: Some(code),
                    ..Failing::default()
                },
                ClientState::AwaitPrepare,
            ),
            (
                "end",
                Failing {
                    end: Some(code),
                    ..Failing::default()
                },
                ClientState::AwaitUpdateEnd,
            ),
        ] {
            for noise in [false, true] {
                let mut dc = esp32();
                let mut cc = ClientConfig::default();
                if noise {
                    dc.noise = Some(DeviceNoise {
                        key: key(4),
                        required: true,
                    });
                    cc.noise_key = Some(key(4));
                }
                let out = run(
                    cc,
                    dc,
                    backend_clone(&backend),
                    img.clone(),
                    Wire::default(),
                );
                let err = out.client.clone().unwrap_err();
                assert_eq!(
                    err,
                    ClientError::Device { code, waiting },
                    "{where_} noise={noise}"
                );
                assert!(!err.is_retryable() && !err.may_have_committed());
                assert!(
                    err.to_string()
                        .contains(&format!("(0x{:02X})", code.byte()))
                );
                assert!(out.device_events.contains(&DeviceEvent::Failed(code)));
            }
        }
    }
}

fn backend_clone(b: &Failing) -> Failing {
    Failing {
        begin: b.begin,
        write_at: b.write_at,
        end: b.end,
        ..Failing::default()
    }
}

#[test]
fn flash_write_error_mid_upload_stops_the_client() {
    for version in [OtaVersion::V1, OtaVersion::V2] {
        for deflate in [false, true] {
            let dc = DeviceConfig {
                version,
                deflate,
                ..esp32()
            };
            let backend = Failing {
                write_at: Some((20_000, ErrorCode::WritingFlash)),
                ..Failing::default()
            };
            let out = run(
                ClientConfig::default(),
                dc,
                backend,
                image(60_000, 2),
                Wire::default(),
            );
            let err = out.client.clone().unwrap_err();
            assert_eq!(err.device_code(), Some(ErrorCode::WritingFlash));
            assert!(!out.committed());
            assert!(out.image().is_none());
        }
    }
}

#[test]
fn corruption_in_transit_is_an_md5_mismatch_or_an_inflate_error() {
    let img = image(30_000, 4);
    // Plain upload: byte 15_000 of the image is at offset 5 + 1 + 1 + 4 + 32 + 15_000 of
    // everything the client sends (magic, features, type, size, md5).
    let at = 5 + 1 + 1 + 4 + 32 + 15_000;
    let dc = DeviceConfig {
        deflate: false,
        ..esp32()
    };
    let out = run(
        ClientConfig::default(),
        dc,
        AcceptAll,
        img.clone(),
        Wire {
            tamper: Some((at, 0x01)),
            ..Wire::default()
        },
    );
    let err = out.client.clone().unwrap_err();
    assert_eq!(
        err,
        ClientError::Device {
            code: ErrorCode::Md5Mismatch,
            waiting: ClientState::AwaitUpdateEnd
        }
    );
    let got = out.image().unwrap();
    assert!(!got.md5_ok());
    assert_eq!(got.stored.len(), img.len());
    assert_eq!(got.stored[15_000], img[15_000] ^ 1);
    // Deflate: a flipped bit either breaks the stream (0xFF) or the MD5 (0x8B).
    let out = run(
        ClientConfig::default(),
        esp32(),
        AcceptAll,
        img,
        Wire {
            tamper: Some((5 + 1 + 1 + 4 + 4 + 32 + 3000, 0x10)),
            ..Wire::default()
        },
    );
    let code = out.client.unwrap_err().device_code().unwrap();
    assert!(
        matches!(code, ErrorCode::Unknown | ErrorCode::Md5Mismatch),
        "{code:?}"
    );
}

#[test]
fn dropped_connection_is_retryable_until_the_last_block_went_out() {
    let img = image(3 * BLOCK_SIZE, 8);
    let dc = DeviceConfig {
        deflate: false,
        ..esp32()
    };
    let header = 5 + 1 + 1 + 4 + 32;
    // Cut in the middle of the upload: retryable, nothing committed.
    let out = run(
        ClientConfig::default(),
        dc.clone(),
        AcceptAll,
        img.clone(),
        Wire {
            cut_after: Some(header + BLOCK_SIZE + 10),
            ..Wire::default()
        },
    );
    let err = out.client.clone().unwrap_err();
    assert!(err.is_retryable() && !err.may_have_committed(), "{err}");
    assert_eq!(
        out.device_events.last(),
        Some(&DeviceEvent::Failed(ErrorCode::Unknown))
    );
    // Cut just after the last byte: the device commits, the client must not retry.
    let out = run(
        ClientConfig::default(),
        dc,
        AcceptAll,
        img,
        Wire {
            cut_after: Some(header + 3 * BLOCK_SIZE),
            ..Wire::default()
        },
    );
    let err = out.client.clone().unwrap_err();
    assert!(err.may_have_committed() && !err.is_retryable(), "{err}");
    assert!(err.to_string().contains("may have committed"));
    assert!(out.client_events.contains(&Event::LastChunkSent));
    assert!(out.committed(), "the device had everything and committed");
}

#[test]
fn timeouts_say_what_was_awaited_and_whether_the_device_may_have_committed() {
    let img = image(100, 1);
    let mut c = Client::new(ClientConfig::default(), img.clone(), CLIENT_ENTROPY).unwrap();
    assert_eq!(
        c.state().timeout(),
        Some(std::time::Duration::from_secs(20))
    );
    let err = c.handle_timeout().unwrap_err();
    assert_eq!(
        err,
        ClientError::Timeout {
            waiting: ClientState::AwaitVersion,
            may_have_committed: false
        }
    );
    assert!(err.is_retryable());
    assert_eq!(c.state(), ClientState::Failed);
    assert_eq!(
        c.handle_input(&[0, 2]),
        Err(err),
        "a failed machine stays failed"
    );

    // Drive to the end of the data and time out waiting for 0x45.
    let mut c = Client::new(
        ClientConfig {
            compression: false,
            ..ClientConfig::default()
        },
        img,
        CLIENT_ENTROPY,
    )
    .unwrap();
    for input in [&[0x00, 0x02][..], &[0x48, 0x00], &[0x41], &[0x42], &[0x43]] {
        while c.poll_transmit().is_some() {}
        c.handle_input(input).unwrap();
    }
    while c.poll_transmit().is_some() {}
    assert_eq!(c.state(), ClientState::AwaitChunkAck);
    assert!(c.may_have_committed());
    assert_eq!(
        c.state().timeout(),
        Some(std::time::Duration::from_secs(160))
    );
    let err = c.handle_timeout().unwrap_err();
    assert!(err.may_have_committed() && !err.is_retryable());
}

#[test]
fn partition_table_updates_need_partition_access() {
    let img = image(5000, 3);
    let cc = ClientConfig {
        ota_type: OtaType::PartitionTable,
        ..ClientConfig::default()
    };
    // Refused up front by the client when the device does not allow it.
    let out = run(cc.clone(), esp32(), AcceptAll, img.clone(), Wire::default());
    assert!(matches!(out.client, Err(ClientError::Unsupported(_))));
    // Legacy devices cannot take it at all.
    let legacy = DeviceConfig {
        extended: false,
        ..esp32()
    };
    let out = run(cc.clone(), legacy, AcceptAll, img.clone(), Wire::default());
    assert!(matches!(out.client, Err(ClientError::Unsupported(_))));
    // Allowed: the backend sees the type.
    let dc = DeviceConfig {
        partition_access: true,
        ..esp32()
    };
    let out = run(cc, dc, Failing::default(), img, Wire::default());
    assert_eq!(out.client, Ok(()));
    assert_eq!(out.image().unwrap().ota_type, OtaType::PartitionTable);
}

#[test]
fn device_answers_an_unsupported_ota_type_with_0x8e() {
    // A client that sends type 1 anyway (no partition access on the device).
    let mut dev = Device::new(
        DeviceConfig {
            deflate: false,
            ..esp32()
        },
        AcceptAll,
        DEVICE_ENTROPY,
    );
    dev.handle_input(&[0x6C, 0x26, 0xF7, 0x5C, 0x45, 0x07, 0x01, 0, 0, 0, 4]);
    let out: Vec<u8> = std::iter::from_fn(|| dev.poll_transmit())
        .flat_map(|b| b.to_vec())
        .collect();
    assert_eq!(out, [0x00, 0x02, 0x48, 0x00, 0x41, 0x8E]);
    assert!(dev.is_closed());
}

#[test]
fn legacy_md5_and_transitional_devices_authenticate() {
    let img = image(9000, 6);
    for (auth, want) in [
        (DeviceAuth::Md5, AuthScheme::Md5),
        (DeviceAuth::Sha256OrMd5, AuthScheme::Sha256),
    ] {
        let dc = DeviceConfig {
            auth,
            password: Some(Password::new("pw")),
            ..esp32()
        };
        let cc = ClientConfig {
            password: Some(Password::new("pw")),
            ..ClientConfig::default()
        };
        let out = run(cc, dc, AcceptAll, img.clone(), Wire::default());
        assert_eq!(out.client, Ok(()));
        assert!(
            out.device_events
                .contains(&DeviceEvent::Authenticated(want))
        );
    }
}

#[test]
fn sha256_only_device_refuses_a_client_without_sha256() {
    let mut dev = Device::new(
        DeviceConfig {
            password: Some(Password::new("pw")),
            ..esp32()
        },
        AcceptAll,
        DEVICE_ENTROPY,
    );
    // An old uploader: features 0x01 (gzip only).
    dev.handle_input(&[0x6C, 0x26, 0xF7, 0x5C, 0x45, client_feature::COMPRESSION]);
    let out: Vec<u8> = std::iter::from_fn(|| dev.poll_transmit())
        .flat_map(|b| b.to_vec())
        .collect();
    // The legacy ack goes out first, then 0x82 from the auth step, as ota_esphome.cpp does.
    assert_eq!(out, [0x00, 0x02, 0x40, 0x82]);
    assert!(dev.is_closed());
}

#[test]
fn bad_magic_gets_0x80_and_the_client_reads_errors_anywhere() {
    let mut dev = Device::new(esp32(), AcceptAll, DEVICE_ENTROPY);
    dev.handle_input(b"GET /");
    assert_eq!(dev.poll_transmit().unwrap(), &[0x80][..]);
    assert!(dev.is_closed());

    let mut c = Client::new(ClientConfig::default(), image(10, 1), CLIENT_ENTROPY).unwrap();
    let err = c.handle_input(&[0x80]).unwrap_err();
    assert_eq!(err.device_code(), Some(ErrorCode::Magic));
    let mut c = Client::new(ClientConfig::default(), image(10, 1), CLIENT_ENTROPY).unwrap();
    c.handle_input(&[0x00, 0x02]).unwrap();
    let err = c.handle_input(&[0x94]).unwrap_err();
    assert_eq!(err.device_code(), Some(ErrorCode::EncryptionRequired));
    assert!(err.to_string().contains("encryption"));
    let mut c = Client::new(ClientConfig::default(), image(10, 1), CLIENT_ENTROPY).unwrap();
    assert_eq!(
        c.handle_input(&[0x00, 0x03]),
        Err(ClientError::UnsupportedVersion(3))
    );
    let mut c = Client::new(ClientConfig::default(), image(10, 1), CLIENT_ENTROPY).unwrap();
    c.handle_input(&[0x00, 0x02, 0x40]).unwrap();
    assert_eq!(
        c.handle_input(&[0x43]),
        Err(ClientError::Unexpected {
            got: 0x43,
            waiting: ClientState::AwaitAuthRequest
        })
    );
}

#[test]
fn error_messages_say_what_esphome_means_and_never_leak_secrets() {
    let msg = |c: ErrorCode| c.to_string();
    assert!(msg(ErrorCode::AuthInvalid).contains("wrong OTA password"));
    assert!(msg(ErrorCode::AuthInvalid).contains("SHA256"));
    assert!(msg(ErrorCode::InvalidBootstrapping).contains("power-cycle"));
    assert!(msg(ErrorCode::InvalidBootstrapping).contains("serial"));
    for c in [
        ErrorCode::Esp8266NotEnoughSpace,
        ErrorCode::Esp32NotEnoughSpace,
        ErrorCode::Rp2040NotEnoughSpace,
    ] {
        assert!(msg(c).contains("not enough space") || msg(c).contains("too small"));
        assert!(c.is_not_enough_space());
    }
    assert!(msg(ErrorCode::Md5Mismatch).contains("MD5"));
    assert!(msg(ErrorCode::UnsupportedOtaType).contains("unsupported OTA type"));
    assert!(msg(ErrorCode::VersionDowngrade).contains("downgrade"));
    assert!(msg(ErrorCode::EncryptionRequired).contains("encrypted"));
    for c in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_byte(c.byte()), Some(c));
    }
    assert_eq!(ErrorCode::from_byte(0x95), None);
    assert_eq!(ErrorCode::from_byte(0x47), None);

    let cc = ClientConfig {
        password: Some(Password::new("hunter2-secret")),
        noise_key: Some(NoiseKey::new(*b"0123456789abcdef0123456789abcdef")),
        ..ClientConfig::default()
    };
    let dc = DeviceConfig {
        password: Some(Password::new("hunter2-secret")),
        ..esp32()
    };
    let out = run(
        cc.clone(),
        dc.clone(),
        AcceptAll,
        image(100, 1),
        Wire::default(),
    );
    let c = Client::new(cc, image(10, 1), CLIENT_ENTROPY).unwrap();
    let d = Device::new(dc, AcceptAll, DEVICE_ENTROPY);
    let text = format!(
        "{c:?} {d:?} {:?} {}",
        out.client,
        out.client.clone().unwrap_err()
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("0123456789abcdef"), "{text}");
    assert!(!text.contains("3031323334"), "{text}");
}

#[test]
fn progress_events_count_sent_and_acked_bytes() {
    let img = image(2 * BLOCK_SIZE + 100, 7);
    let out = run(
        ClientConfig {
            compression: false,
            ..ClientConfig::default()
        },
        DeviceConfig {
            deflate: false,
            ..esp32()
        },
        AcceptAll,
        img.clone(),
        Wire::default(),
    );
    assert_eq!(out.client, Ok(()));
    let progress: Vec<(u64, u64)> = out
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Progress(p) => Some((p.sent, p.acked)),
            _ => None,
        })
        .collect();
    let b = BLOCK_SIZE as u64;
    let total = img.len() as u64;
    assert_eq!(
        progress,
        [
            (0, 0),
            (b, 0),
            (b, b),
            (2 * b, b),
            (2 * b, 2 * b),
            (total, 2 * b),
            (total, total)
        ]
    );
    let last_chunk = out
        .client_events
        .iter()
        .position(|e| e == &Event::LastChunkSent)
        .unwrap();
    let final_send = out
        .client_events
        .iter()
        .position(|e| {
            e == &Event::Progress(super::super::Progress {
                sent: total,
                acked: 2 * b,
                total,
            })
        })
        .unwrap();
    assert_eq!(last_chunk, final_send + 1);
}

#[test]
fn noise_data_frames_are_at_most_1024_plaintext_bytes() {
    let img = image(2 * BLOCK_SIZE + 500, 3);
    let cc = ClientConfig {
        noise_key: Some(key(9)),
        compression: false,
        ..ClientConfig::default()
    };
    let dc = DeviceConfig {
        noise: Some(DeviceNoise {
            key: key(9),
            required: false,
        }),
        ..esp32()
    };
    let out = run(cc, dc, AcceptAll, img.clone(), Wire::default());
    assert_eq!(out.client, Ok(()));
    assert_eq!(out.image().unwrap().stored, img);
    // Blocks: 8 frames of 1024 + 16 each, then 1 frame of 500 + 16.
    let blocks: Vec<Vec<u16>> = out
        .log
        .iter()
        .filter_map(|s| match s {
            Seg::C(b) if b.len() > 100 => Some(frame_lengths(b)),
            _ => None,
        })
        .collect();
    assert_eq!(blocks, [vec![1040; 8], vec![1040; 8], vec![516]]);
    // Every device response after the handshake is its own 1-byte frame.
    let responses = out
        .log
        .iter()
        .filter(|s| matches!(s, Seg::D(b) if b.len() == 20 && b[..3] == [1, 0, 17]))
        .count();
    // 41 42 43 47 47 47 44 45
    assert_eq!(responses, 8);
}

fn frame_lengths(mut b: &[u8]) -> Vec<u16> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert_eq!(b[0], 1);
        let n = u16::from_be_bytes([b[1], b[2]]);
        v.push(n);
        b = &b[3 + n as usize..];
    }
    v
}

#[test]
fn key_without_offer_is_refused_unless_plaintext_is_allowed() {
    let img = image(100, 3);
    let cc = ClientConfig {
        noise_key: Some(key(1)),
        ..ClientConfig::default()
    };
    let out = run(cc.clone(), esp32(), AcceptAll, img.clone(), Wire::default());
    assert_eq!(out.client, Err(ClientError::EncryptionNotOffered));
    // Nothing but magic and features went out: the image never left.
    let sent: usize = out
        .log
        .iter()
        .map(|s| if let Seg::C(b) = s { b.len() } else { 0 })
        .sum();
    assert_eq!(sent, 6);
    let out = run(
        ClientConfig {
            allow_plaintext: true,
            ..cc
        },
        esp32(),
        AcceptAll,
        img,
        Wire::default(),
    );
    assert_eq!(out.client, Ok(()));
    assert!(!out.negotiated().unwrap().encrypted);
}

#[test]
fn deflate_is_inflated_with_4k_window_and_hashed_inflated() {
    let img = image(200_000, 12);
    let out = run(
        ClientConfig::default(),
        esp32(),
        Failing::default(),
        img.clone(),
        Wire {
            split: Some(77),
            ..Wire::default()
        },
    );
    assert_eq!(out.client, Ok(()));
    let n = out.negotiated().unwrap();
    assert_eq!(n.compression, Compression::Deflate);
    assert!(n.wire_size < n.image_size);
    let got = out.image().unwrap();
    assert_eq!(got.stored, img);
    assert_eq!(
        got.md5_actual,
        hex::encode(<md5::Md5 as md5::Digest>::digest(&img))
    );
}

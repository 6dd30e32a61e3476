//! The ESPHome simulator over real loopback TCP, driven by a small tokio driver around the
//! uploader machine of `ota_devproto::esphome` (the loop documented in that module). Time is
//! paused: reboots, slow devices and timeouts take virtual time only.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ota_devproto::esphome::{
    Client, ClientConfig, ClientError, ClientState, Compression, DeviceAuth, ErrorCode, Event,
    NoiseKey, OtaVersion, Password,
};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esphome::{
    Encryption, EsphomeConfig, EsphomeSim, Fault, Platform, Power, UploadOutcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

#[derive(Debug)]
enum UploadError {
    Connect(io::Error),
    Ota(ClientError),
}

impl UploadError {
    fn ota(&self) -> &ClientError {
        match self {
            Self::Ota(e) => e,
            Self::Connect(e) => panic!("expected a protocol error, got connect error {e}"),
        }
    }
}

/// The driver loop of `ota_devproto::esphome`'s module documentation.
async fn upload(
    addr: SocketAddr,
    config: ClientConfig,
    image: &[u8],
) -> Result<Vec<Event>, UploadError> {
    let mut client =
        Client::new(config, image.to_vec(), rand::random()).map_err(UploadError::Ota)?;
    let mut stream = match timeout(Duration::from_secs(20), TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(UploadError::Connect(e)),
        Err(_) => return Err(UploadError::Connect(io::ErrorKind::TimedOut.into())),
    };
    // Small control fields must not wait for delayed ACKs (ESPHome's uploader does the same).
    stream.set_nodelay(true).map_err(UploadError::Connect)?;
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(bytes) = client.poll_transmit() {
            match timeout(Duration::from_secs(160), stream.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                // The device went away; an error byte it sent first still counts.
                Ok(Err(_)) => {
                    while let Ok(Ok(n @ 1..)) =
                        timeout(Duration::from_secs(1), stream.read(&mut buf)).await
                    {
                        client.handle_input(&buf[..n]).map_err(UploadError::Ota)?;
                    }
                    client.handle_eof().map_err(UploadError::Ota)?;
                }
                Err(_) => client.handle_timeout().map_err(UploadError::Ota)?,
            }
        }
        events.extend(std::iter::from_fn(|| client.poll_event()));
        match client.state() {
            ClientState::Done => {
                let _ = stream.shutdown().await;
                return Ok(events);
            }
            ClientState::Uploading => continue,
            state => {
                let wait = state.timeout().expect("a waiting state has a timeout");
                let r = tokio::select! {
                    biased;
                    r = stream.read(&mut buf) => match r {
                        Ok(0) | Err(_) => client.handle_eof(),
                        Ok(n) => client.handle_input(&buf[..n]),
                    },
                    () = sleep(wait) => client.handle_timeout(),
                };
                r.map_err(UploadError::Ota)?;
            }
        }
    }
}

/// An upload right after the device came back: its port may take a moment to be bound again,
/// so connection refusals are retried for a few (virtual) seconds, as an agent would.
async fn upload_when_up(
    addr: SocketAddr,
    config: ClientConfig,
    image: &[u8],
) -> Result<Vec<Event>, UploadError> {
    for _ in 0..10 {
        match upload(addr, config.clone(), image).await {
            Err(UploadError::Connect(_)) => sleep(Duration::from_millis(500)).await,
            other => return other,
        }
    }
    upload(addr, config, image).await
}

fn app(version: &str, payload: usize) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("sim.test")
        .payload_size(payload)
        .build()
}

fn start(config: EsphomeConfig) -> EsphomeSim {
    EsphomeSim::start(config).expect("bind 127.0.0.1:0")
}

fn negotiated(events: &[Event]) -> ota_devproto::esphome::Negotiated {
    events
        .iter()
        .find_map(|e| match e {
            Event::Negotiated(n) => Some(*n),
            _ => None,
        })
        .expect("negotiated")
}

#[tokio::test(start_paused = true)]
async fn upload_reboots_the_device_into_the_new_version() {
    let sim = start(EsphomeConfig {
        version: "1.0.0".into(),
        reboot_time: Duration::from_secs(5),
        ..EsphomeConfig::new("kitchen", Platform::Esp32)
    });
    let image = app("2.0.0", 200_000);
    let events = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
    assert_eq!(negotiated(&events).compression, Compression::Deflate);
    assert!(events.contains(&Event::LastChunkSent));
    assert!(events.contains(&Event::Completed));

    // The device closed and went down: the port is gone while it reboots.
    sim.device().wait_for(Power::Rebooting).await;
    assert!(!sim.is_up());
    assert!(TcpStream::connect(sim.ota_addr()).await.is_err());
    assert_eq!(sim.current_version(), "1.0.0");

    let t0 = Instant::now();
    sim.device().wait_for(Power::Up).await;
    assert!(t0.elapsed() >= Duration::from_secs(4));
    let snap = sim.snapshot();
    assert_eq!(snap.version, "2.0.0");
    assert_eq!(snap.project_name, "sim.test");
    assert_eq!((snap.uploads, snap.attempts, snap.boots), (1, 1, 2));
    assert_eq!(
        sim.received_images(),
        vec![bytes::Bytes::from(image.clone())]
    );
    assert_eq!(snap.received[0].outcome, UploadOutcome::Committed);

    // The same port serves again.
    let image3 = app("3.0.0", 1000);
    upload_when_up(sim.ota_addr(), ClientConfig::default(), &image3)
        .await
        .unwrap();
    sim.device().wait_for(Power::Rebooting).await;
    sim.device().wait_for(Power::Up).await;
    assert_eq!(sim.current_version(), "3.0.0");
}

#[tokio::test(start_paused = true)]
async fn platforms_offer_their_compression_and_store_the_exact_image() {
    let image = app("4.1.0", 60_000);
    for (platform, want) in [
        (Platform::Esp32, Compression::Deflate),
        (Platform::Esp8266, Compression::Gzip),
        (Platform::Rp2040, Compression::Gzip),
        (Platform::Bk72xx, Compression::Deflate),
    ] {
        let esp8266_image = EspAppBuilder::new(Chip::Esp8266)
            .payload_size(60_000)
            .build();
        let img = if platform == Platform::Esp8266 {
            &esp8266_image
        } else {
            &image
        };
        let sim = start(EsphomeConfig::new("dev", platform));
        let events = upload(sim.ota_addr(), ClientConfig::default(), img)
            .await
            .unwrap();
        assert_eq!(negotiated(&events).compression, want, "{platform:?}");
        assert_eq!(sim.received_images(), vec![bytes::Bytes::from(img.clone())]);
        sim.device().wait_for(Power::Rebooting).await;
        sim.device().wait_for(Power::Up).await;
        if platform == Platform::Esp8266 {
            assert!(
                sim.current_version().starts_with("md5:"),
                "no app description"
            );
        } else {
            assert_eq!(sim.current_version(), "4.1.0");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn passwords_sha256_legacy_md5_and_wrong() {
    let image = app("2.0.0", 20_000);
    let pw = |s: &str| Some(Password::new(s));
    for auth in [DeviceAuth::Sha256, DeviceAuth::Md5] {
        let sim = start(EsphomeConfig {
            password: Some("s3cret".into()),
            auth,
            extended_protocol: auth == DeviceAuth::Sha256,
            ..EsphomeConfig::new("dev", Platform::Esp32)
        });
        let wrong = upload(
            sim.ota_addr(),
            ClientConfig {
                password: pw("nope"),
                ..ClientConfig::default()
            },
            &image,
        )
        .await
        .unwrap_err();
        assert_eq!(wrong.ota().device_code(), Some(ErrorCode::AuthInvalid));
        let missing = upload(sim.ota_addr(), ClientConfig::default(), &image)
            .await
            .unwrap_err();
        assert_eq!(missing.ota(), &ClientError::PasswordRequired);
        upload(
            sim.ota_addr(),
            ClientConfig {
                password: pw("s3cret"),
                ..ClientConfig::default()
            },
            &image,
        )
        .await
        .unwrap();
        assert_eq!(sim.uploads(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn noise_required_right_key_wrong_key_and_no_key() {
    let image = app("2.0.0", 30_000);
    let key = NoiseKey::new([0x11; 32]);
    let sim = start(EsphomeConfig {
        encryption: Some(Encryption::Required(key.clone())),
        ..EsphomeConfig::new("dev", Platform::Esp32)
    });
    let none = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    assert_eq!(
        none.ota().device_code(),
        Some(ErrorCode::EncryptionRequired)
    );
    let wrong = upload(
        sim.ota_addr(),
        ClientConfig {
            noise_key: Some(NoiseKey::new([0x12; 32])),
            ..ClientConfig::default()
        },
        &image,
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.ota(), &ClientError::NoiseWrongKey);
    let events = upload(
        sim.ota_addr(),
        ClientConfig {
            noise_key: Some(key),
            ..ClientConfig::default()
        },
        &image,
    )
    .await
    .unwrap();
    let n = negotiated(&events);
    assert!(n.encrypted);
    assert_eq!(n.compression, Compression::Deflate);
    assert_eq!(sim.received_images(), vec![bytes::Bytes::from(image)]);
}

#[tokio::test(start_paused = true)]
async fn legacy_devices_v1_and_pre_extended() {
    let image = app("2.0.0", 50_000);
    for (ota_version, extended, platform) in [
        (OtaVersion::V1, true, Platform::Esp32),
        (OtaVersion::V2, false, Platform::Esp8266),
        (OtaVersion::V1, false, Platform::Esp32),
    ] {
        let sim = start(EsphomeConfig {
            ota_version,
            extended_protocol: extended,
            validate_images: false,
            ..EsphomeConfig::new("old", platform)
        });
        let events = upload(sim.ota_addr(), ClientConfig::default(), &image)
            .await
            .unwrap();
        let n = negotiated(&events);
        assert_eq!(n.version, ota_version);
        assert_eq!(n.extended, extended);
        assert_eq!(
            sim.received_images(),
            vec![bytes::Bytes::from(image.clone())]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn too_large_images_get_the_platform_error() {
    let image = app("2.0.0", 70_000);
    for (platform, code) in [
        (Platform::Esp32, ErrorCode::Esp32NotEnoughSpace),
        (Platform::Esp8266, ErrorCode::Esp8266NotEnoughSpace),
        (Platform::Rp2040, ErrorCode::Rp2040NotEnoughSpace),
    ] {
        let sim = start(EsphomeConfig {
            max_image_size: 10_000,
            validate_images: false,
            ..EsphomeConfig::new("small", platform)
        });
        let err = upload(sim.ota_addr(), ClientConfig::default(), &image)
            .await
            .unwrap_err();
        assert_eq!(err.ota().device_code(), Some(code));
        assert!(err.ota().to_string().contains("space") || err.ota().to_string().contains("small"));
        assert!(sim.is_up());
        assert_eq!(sim.snapshot().last_error, Some(code));
    }
}

#[tokio::test(start_paused = true)]
async fn esp32_refuses_what_is_not_an_app_image() {
    let sim = start(EsphomeConfig::new("dev", Platform::Esp32));
    let mut not_app = app("2.0.0", 5000);
    not_app[0] = 0xFF;
    let err = upload(sim.ota_addr(), ClientConfig::default(), &not_app)
        .await
        .unwrap_err();
    assert_eq!(err.ota().device_code(), Some(ErrorCode::Magic));
    let mut broken = app("2.0.0", 5000);
    let n = broken.len();
    broken[n - 40] ^= 0xFF;
    let err = upload(sim.ota_addr(), ClientConfig::default(), &broken)
        .await
        .unwrap_err();
    assert_eq!(err.ota().device_code(), Some(ErrorCode::UpdateEnd));
    assert_eq!(sim.current_version(), "2026.10.0");
}

#[tokio::test(start_paused = true)]
async fn md5_mismatch_flash_error_and_bootstrapping_faults() {
    let image = app("2.0.0", 40_000);
    let sim = start(EsphomeConfig::new("dev", Platform::Esp32));
    sim.device().inject_once(Fault::Md5MismatchAtEnd);
    let err = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    assert_eq!(
        err.ota(),
        &ClientError::Device {
            code: ErrorCode::Md5Mismatch,
            waiting: ClientState::AwaitUpdateEnd
        }
    );
    let snap = sim.snapshot();
    assert_eq!(snap.received.len(), 1);
    assert_eq!(snap.received[0].image, image, "the image arrived intact");
    assert_eq!(
        snap.received[0].outcome,
        UploadOutcome::Failed(ErrorCode::Md5Mismatch)
    );
    assert_eq!(snap.uploads, 0);
    assert!(sim.is_up(), "no reboot after a failed upload");

    sim.device()
        .inject_once(Fault::FlashWriteError { at: 20_000 });
    let err = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    assert_eq!(err.ota().device_code(), Some(ErrorCode::WritingFlash));

    let esp8266 = start(EsphomeConfig::new("plug", Platform::Esp8266));
    esp8266.device().inject_once(Fault::InvalidBootstrapping);
    let err = upload(esp8266.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    assert_eq!(
        err.ota().device_code(),
        Some(ErrorCode::InvalidBootstrapping)
    );
    assert!(err.ota().to_string().contains("power-cycle"));

    // One-shot faults are gone: the next uploads work.
    upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
    assert_eq!(sim.uploads(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_is_retryable_and_a_retry_succeeds() {
    let image = app("2.0.0", 100_000);
    let sim = start(EsphomeConfig {
        compression: false,
        ..EsphomeConfig::new("dev", Platform::Esp32)
    });
    sim.device().inject_once(Fault::DropAfter { bytes: 30_000 });
    let err = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    let err = err.ota();
    assert!(
        matches!(
            err,
            ClientError::ConnectionClosed {
                may_have_committed: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(sim.snapshot().received.is_empty());
    upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
    assert_eq!(sim.received_images(), vec![bytes::Bytes::from(image)]);
}

#[tokio::test(start_paused = true)]
async fn stalled_device_times_the_client_out() {
    let image = app("2.0.0", 50_000);
    let sim = start(EsphomeConfig {
        compression: false,
        ..EsphomeConfig::new("dev", Platform::Esp32)
    });
    // Stall in the handshake: the client's 20 s handshake timeout fires.
    sim.device().inject_once(Fault::Stall { after: 5 });
    let t0 = Instant::now();
    let err = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    assert_eq!(
        err.ota(),
        &ClientError::Timeout {
            waiting: ClientState::AwaitVersion,
            may_have_committed: false
        }
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(20));
    // Stall in the data phase: 160 s waiting for a chunk ack.
    sim.device().inject_once(Fault::Stall { after: 20_000 });
    let err = upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.ota(),
            ClientError::Timeout {
                waiting: ClientState::AwaitChunkAck,
                may_have_committed: false
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_device_still_succeeds() {
    let image = app("2.0.0", 81_920);
    let sim = start(EsphomeConfig {
        compression: false,
        ..EsphomeConfig::new("dev", Platform::Esp32)
    });
    sim.device().inject(Fault::Slow {
        per_response: Duration::from_millis(500),
    });
    let t0 = Instant::now();
    upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
    // 00 VV, 48 SS, 41, 42, 43, one 47 per block, 44, 45.
    let blocks = image.len().div_ceil(8192) as u32;
    assert!(t0.elapsed() >= Duration::from_millis(500) * (7 + blocks));
}

#[tokio::test(start_paused = true)]
async fn stays_down_or_rolls_back_after_the_reboot() {
    let image = app("2.0.0", 10_000);
    let sim = start(EsphomeConfig {
        version: "1.0.0".into(),
        reboot_time: Duration::from_secs(3),
        ..EsphomeConfig::new("dev", Platform::Esp32)
    });
    sim.device().inject_once(Fault::RollbackAfterReboot);
    upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
    sim.device().wait_for(Power::Rebooting).await;
    sim.device().wait_for(Power::Up).await;
    assert_eq!(sim.current_version(), "1.0.0", "rolled back");
    assert_eq!(sim.uploads(), 1);

    sim.device().inject_once(Fault::StaysDownAfterReboot);
    upload(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
    sim.device().wait_for(Power::Rebooting).await;
    sim.device().wait_for(Power::Down).await;
    sleep(Duration::from_secs(600)).await;
    assert_eq!(sim.device().power(), Power::Down);
    assert!(matches!(
        upload(sim.ota_addr(), ClientConfig::default(), &image).await,
        Err(UploadError::Connect(_))
    ));
    // Switched on again, it boots the image it never booted.
    sim.device().power_on();
    assert_eq!(sim.current_version(), "2.0.0");
    upload_when_up(sim.ota_addr(), ClientConfig::default(), &image)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_client_at_a_time() {
    let image = app("2.0.0", 10_000);
    let sim = start(EsphomeConfig::new("dev", Platform::Esp32));
    // A first client connects and sends only the magic.
    let mut first = TcpStream::connect(sim.ota_addr()).await.unwrap();
    first
        .write_all(&[0x6C, 0x26, 0xF7, 0x5C, 0x45])
        .await
        .unwrap();
    let mut ack = [0u8; 2];
    first.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x00, 0x02]);
    let addr = sim.ota_addr();
    let second = tokio::spawn(async move { upload(addr, ClientConfig::default(), &image).await });
    sleep(Duration::from_secs(5)).await;
    assert!(
        !second.is_finished(),
        "the device serves the first client only"
    );
    drop(first);
    second.await.unwrap().unwrap();
    assert_eq!(sim.uploads(), 1);
}

//! The serial transport against the ROM simulator on a pseudo-terminal: the real tokio driver,
//! the real port code (`tokio-serial`), the real image checks.
//!
//! Time is real: a pty is real I/O, which tokio's paused clock would race. Faults that make the
//! flasher wait use shortened connect attempts (see `quick`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use ota_agent::transport::serial::{SerialConfig, SerialPortConfig, SerialTransport, plan_write};
use ota_agent::transport::{
    TransferProgress, Transport, TransportKind, UpdateJob, UpdateReport, VerifiedImage,
};
use ota_devproto::serial::{Chip, FlasherConfig, ResetMode};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder};
use ota_sim::esprom::{BlockFault, EspRomSim, Faults, RomConfig, RomEvent};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// An ESP application of about `len` bytes, half of it compressible like real firmware.
fn app(chip: Chip, len: usize) -> Vec<u8> {
    let text: Vec<u8> = b"[I][wifi:290]: WiFi Connected! SSID 'greenhouse' channel 6\n"
        .iter()
        .copied()
        .cycle()
        .take(len / 2)
        .collect();
    let mut b = EspAppBuilder::new(chip).payload_size(len / 2);
    if chip != Chip::Esp8266 {
        b = b.version("2026.2.0");
    }
    let load = if chip == Chip::Esp8266 {
        0x3FFE_9000
    } else {
        0x3FFB_0000
    };
    b.segment(load, text).build()
}

fn verified(bytes: Vec<u8>) -> Arc<VerifiedImage> {
    Arc::new(VerifiedImage {
        firmware_id: "fw-1".into(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        md5: hex::encode(Md5::digest(&bytes)),
        bytes: Bytes::from(bytes),
        version: "2026.2.0".into(),
        file_version: None,
    })
}

fn job(device: &str, image: Arc<VerifiedImage>) -> UpdateJob {
    UpdateJob {
        task_id: "task-1".into(),
        attempt: 1,
        device: device.into(),
        image,
        downgrade: false,
        schedule: false,
        timeout: Duration::from_secs(60),
        wake_timeout: ota_agent::transport::DEFAULT_WAKE_TIMEOUT,
        commit: Default::default(),
    }
}

fn port_cfg(sim: &EspRomSim) -> SerialPortConfig {
    SerialPortConfig {
        chip: Some(Chip::Esp32),
        flash_size: Some(4 << 20),
        ..SerialPortConfig::new("bench", sim.path())
    }
}

fn transport(port: SerialPortConfig) -> SerialTransport {
    SerialTransport::new(SerialConfig {
        ports: vec![port],
        ..SerialConfig::default()
    })
    .expect("config")
    .with_flasher_defaults(quick())
}

/// esptool's timings, but two connect attempts instead of seven.
fn quick() -> FlasherConfig {
    FlasherConfig {
        connect_attempts: 2,
        ..FlasherConfig::default()
    }
}

fn sim_with(faults: Faults) -> EspRomSim {
    EspRomSim::start(RomConfig {
        faults,
        ..RomConfig::esp32()
    })
    .expect("pty")
}

async fn update(
    t: &SerialTransport,
    image: Arc<VerifiedImage>,
) -> (Result<UpdateReport, TaskError>, Vec<TransferProgress>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        t.update(job("serial-bench", image), tx, CancellationToken::new()),
    )
    .await
    .expect("update finished within a minute");
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    (result, progress)
}

#[tokio::test]
async fn serial_transport_flashes_an_app_image_with_progress() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let t = transport(SerialPortConfig {
        baud: Some(921_600),
        ..port_cfg(&sim)
    });
    assert_eq!(t.kind(), TransportKind::Serial);
    assert_eq!(t.instance(), "serial");
    let image = app(Chip::Esp32, 300 * 1024);
    let started = tokio::time::Instant::now();
    let (result, progress) = update(&t, verified(image.clone())).await;
    let took = started.elapsed();
    let report = result.expect("flashed");

    // The flash holds exactly the image at the application offset.
    assert_eq!(sim.flash_range(0x10000, image.len()), image);
    assert!(sim.flash_range(0, 0x10000).iter().all(|b| *b == 0xFF));
    assert_eq!(report.to.version.as_deref(), Some("2026.2.0"));
    assert!(
        report.wire_bytes < image.len() as u64,
        "compressed: {}",
        report.wire_bytes
    );
    assert!(sim.events().contains(&RomEvent::BaudChanged(921_600)));

    // 100 while connecting, then 2 with rising percent, then 6.
    let statuses: Vec<UpgradeStatus> = progress.iter().map(|p| p.status).collect();
    assert_eq!(statuses.first(), Some(&UpgradeStatus::AgentPreparing));
    assert_eq!(statuses.last(), Some(&UpgradeStatus::Downloaded));
    let first_updating = statuses
        .iter()
        .position(|s| *s == UpgradeStatus::Updating)
        .unwrap();
    assert!(
        statuses[..first_updating]
            .iter()
            .all(|s| *s == UpgradeStatus::AgentPreparing)
    );
    assert!(
        progress
            .iter()
            .any(|p| p.status == UpgradeStatus::AgentPreparing
                && p.detail.contains("ESP32 with 4 MB flash"))
    );
    let percents: Vec<f32> = progress
        .iter()
        .filter(|p| p.status == UpgradeStatus::Updating)
        .filter_map(|p| p.percent)
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100.0));
    assert!(
        percents.len() >= 50,
        "one report per percent: {}",
        percents.len()
    );
    assert!(
        progress
            .iter()
            .filter(|p| p.status == UpgradeStatus::Updating && p.bytes_sent > 0)
            .all(|p| p.remaining_s.is_some() && p.bytes_total == image.len() as u64)
    );
    let done = progress.last().unwrap();
    assert!(
        done.detail.contains("MD5") && done.detail.contains("verified"),
        "{}",
        done.detail
    );
    eprintln!(
        "serial transport: {} bytes through the agent's driver in {:.3} s ({:.0} KiB/s), {} wire bytes",
        image.len(),
        took.as_secs_f64(),
        image.len() as f64 / 1024.0 / took.as_secs_f64(),
        report.wire_bytes
    );

    // The inventory learned the chip.
    let inv = t.inventory().borrow().clone();
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].local_id, "serial-bench");
    assert_eq!(inv[0].chip.as_deref(), Some("esp32"));
    assert_eq!(inv[0].current_version.as_deref(), Some("2026.2.0"));
    assert!(inv[0].reachable);
}

#[tokio::test]
async fn serial_transport_flashes_a_factory_image_at_zero_uncompressed() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let t = transport(SerialPortConfig {
        compress: false,
        ..port_cfg(&sim)
    });
    let factory = FactoryImageBuilder::new(Chip::Esp32)
        .app(app(Chip::Esp32, 64 * 1024))
        .build();
    let plan = plan_write(&port_cfg(&sim), &factory).expect("plan");
    assert_eq!((plan.offset, plan.format), (0, "esp-factory"));
    let (result, _) = update(&t, verified(factory.clone())).await;
    let report = result.expect("flashed");
    assert_eq!(sim.flash_range(0, factory.len()), factory);
    assert!(report.wire_bytes >= factory.len() as u64);
    assert!(
        sim.counters().requests.contains_key(&0x03),
        "plain FLASH_DATA"
    );
}

#[tokio::test]
async fn serial_transport_esp8266_app_goes_to_zero() {
    let sim = EspRomSim::start(RomConfig::esp8266()).expect("pty");
    let t = transport(SerialPortConfig {
        chip: Some(Chip::Esp8266),
        flash_size: Some(1 << 20),
        ..SerialPortConfig::new("bench", sim.path())
    });
    let image = app(Chip::Esp8266, 32 * 1024);
    let (result, progress) = update(&t, verified(image.clone())).await;
    result.expect("flashed");
    assert_eq!(sim.flash_range(0, image.len()), image);
    assert!(progress.last().unwrap().detail.contains("not verified"));
}

#[tokio::test]
async fn serial_transport_check_and_inventory() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let t = SerialTransport::new(SerialConfig {
        ports: vec![
            SerialPortConfig::new("bench", sim.path()),
            SerialPortConfig::new("gone", "/dev/this-port-does-not-exist"),
        ],
        ..SerialConfig::default()
    })
    .expect("config")
    .with_flasher_defaults(quick());
    let inv = t.refresh().await;
    assert_eq!(
        inv.iter()
            .map(|d| (d.local_id.as_str(), d.reachable))
            .collect::<Vec<_>>(),
        [("serial-bench", true), ("serial-gone", false)]
    );
    let check = t
        .check("serial-bench", Duration::from_secs(30))
        .await
        .expect("check");
    assert!(check.reachable);
    assert_eq!(check.device.chip.as_deref(), Some("esp32"));
    assert_eq!(check.device.platform.as_deref(), Some("esp32"));
    assert!(
        check.device.model.contains("4 MB"),
        "{}",
        check.device.model
    );
    // A check reads; it never erases or writes.
    assert_eq!(sim.counters().begins, 0);

    let err = t
        .check("serial-gone", Duration::from_secs(30))
        .await
        .expect_err("gone");
    assert_eq!(err.code, ErrorCode::Offline, "{err}");
    assert!(err.message.contains("plugged in"), "{err}");
    let err = t
        .check("serial-nope", Duration::from_secs(5))
        .await
        .expect_err("unknown");
    assert_eq!(err.code, ErrorCode::Offline);
}

#[tokio::test]
async fn serial_transport_no_sync_is_5006_with_advice() {
    let sim = sim_with(Faults {
        silent: true,
        ..Faults::default()
    });
    let t = transport(port_cfg(&sim));
    let (result, progress) = update(&t, verified(app(Chip::Esp32, 8 * 1024))).await;
    let err = result.expect_err("no sync");
    assert_eq!(err.code, ErrorCode::ConnectFailed);
    assert_eq!(
        err.message,
        "no answer from the ROM bootloader: hold BOOT/IO0 while resetting, or check the cable and port"
    );
    assert!(
        progress
            .iter()
            .all(|p| p.status == UpgradeStatus::AgentPreparing)
    );
    let err = t
        .check("serial-bench", Duration::from_secs(30))
        .await
        .expect_err("no sync");
    assert_eq!(err.code, ErrorCode::ConnectFailed);
}

#[tokio::test]
async fn serial_transport_checksum_and_write_errors_are_5010() {
    for faults in [
        Faults {
            checksum_error: Some(BlockFault::always(2)),
            ..Faults::default()
        },
        Faults {
            flash_write_error: Some(BlockFault::always(0)),
            ..Faults::default()
        },
    ] {
        let sim = sim_with(faults.clone());
        let t = transport(port_cfg(&sim));
        let (result, _) = update(&t, verified(app(Chip::Esp32, 64 * 1024))).await;
        let err = result.expect_err("write failed");
        assert_eq!(err.code, ErrorCode::SendFailed, "{faults:?}: {err}");
        assert!(err.message.contains("flash again"), "{err}");
    }
}

#[tokio::test]
async fn serial_transport_md5_mismatch_is_5009() {
    let sim = sim_with(Faults {
        corrupt_flash_byte: Some(0x10000 + 1234),
        ..Faults::default()
    });
    let t = transport(port_cfg(&sim));
    let image = app(Chip::Esp32, 16 * 1024);
    let (result, progress) = update(&t, verified(image)).await;
    let err = result.expect_err("md5");
    assert_eq!(err.code, ErrorCode::ChecksumMismatch, "{err}");
    assert!(
        err.message.contains("does not match the image MD5"),
        "{err}"
    );
    assert!(
        progress
            .iter()
            .all(|p| p.status != UpgradeStatus::Downloaded)
    );
}

#[tokio::test]
async fn serial_transport_unplugged_mid_write_is_5010() {
    let sim = sim_with(Faults {
        unplug_after_blocks: Some(20),
        ..Faults::default()
    });
    let t = transport(SerialPortConfig {
        compress: false,
        ..port_cfg(&sim)
    });
    let (result, progress) = update(&t, verified(app(Chip::Esp32, 64 * 1024))).await;
    let err = result.expect_err("unplugged");
    assert_eq!(err.code, ErrorCode::SendFailed, "{err}");
    assert!(err.message.contains("unplugged"), "{err}");
    assert!(
        progress
            .iter()
            .any(|p| p.status == UpgradeStatus::Updating && p.bytes_sent > 0)
    );
    assert!(sim.is_closed());
}

#[tokio::test]
async fn serial_transport_refuses_images_that_do_not_fit() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");

    // The image is for another chip than the configured one: refused before connecting.
    let t = transport(port_cfg(&sim));
    let (result, progress) = update(&t, verified(app(Chip::Esp32C3, 8 * 1024))).await;
    let err = result.expect_err("wrong chip");
    assert_eq!(err.code, ErrorCode::PrevalidationFailed);
    assert!(
        err.message.contains("ESP32-C3") && err.message.contains("ESP32"),
        "{err}"
    );
    assert!(progress.is_empty());
    assert_eq!(sim.counters().syncs, 0);

    // No chip configured: the detected chip decides, before anything is erased.
    let t = transport(SerialPortConfig {
        chip: None,
        ..port_cfg(&sim)
    });
    let (result, _) = update(&t, verified(app(Chip::Esp32S3, 8 * 1024))).await;
    let err = result.expect_err("wrong chip on the port");
    assert_eq!(err.code, ErrorCode::PrevalidationFailed);
    assert_eq!(
        err.message,
        "the image is built for ESP32-S3 but the chip on the port is ESP32; nothing was written"
    );
    assert_eq!(sim.counters().begins, 0);

    // Larger than the configured flash.
    let t = transport(SerialPortConfig {
        flash_size: Some(1 << 20),
        ..port_cfg(&sim)
    });
    let (result, _) = update(&t, verified(app(Chip::Esp32, 1 << 20))).await;
    let err = result.expect_err("too large");
    assert_eq!(err.code, ErrorCode::PrevalidationFailed);
    assert!(err.message.contains("does not fit the 1 MB flash"), "{err}");

    // Larger than the detected flash (the configuration claims more).
    let small = EspRomSim::start(RomConfig {
        flash_size: 1 << 20,
        ..RomConfig::esp32()
    })
    .expect("pty");
    let t = transport(port_cfg(&small));
    let (result, _) = update(&t, verified(app(Chip::Esp32, 1 << 20))).await;
    let err = result.expect_err("too large for the chip");
    assert_eq!(err.code, ErrorCode::PrevalidationFailed);
    assert!(err.message.contains("1 MB flash"), "{err}");
    assert_eq!(small.counters().begins, 0);

    // Not an ESP image at all.
    let t = transport(port_cfg(&sim));
    let (result, _) = update(&t, verified(b"\x7fELF not firmware".to_vec())).await;
    let err = result.expect_err("garbage");
    assert_eq!(err.code, ErrorCode::PrevalidationFailed);
    assert!(
        err.message
            .contains("not an ESP application or factory image"),
        "{err}"
    );
}

#[tokio::test]
async fn serial_transport_cancel_and_timeout() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let t = transport(port_cfg(&sim));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = t
        .update(
            job("serial-bench", verified(app(Chip::Esp32, 4096))),
            tx,
            cancel,
        )
        .await
        .expect_err("cancelled");
    assert!(
        err.message
            .contains("cancelled before anything was written"),
        "{err}"
    );
    assert_eq!(sim.counters().begins, 0);

    // The transfer budget runs from the erase: a ROM that never answers is a connect failure,
    // however small the budget.
    let silent = sim_with(Faults {
        silent: true,
        ..Faults::default()
    });
    let t = transport(port_cfg(&silent));
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut j = job("serial-bench", verified(app(Chip::Esp32, 4096)));
    j.timeout = Duration::from_millis(1);
    let err = t
        .update(j, tx, CancellationToken::new())
        .await
        .expect_err("no sync");
    assert_eq!(err.code, ErrorCode::ConnectFailed, "{err}");

    // Once the flash is erased the budget runs: a write that takes longer is cut. The erase
    // takes 200 ms, so the 1 ms budget ends while the agent waits for it (an instant erase
    // let the whole write finish before the runtime looked at its timers).
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    sim.set_erase_time(Duration::from_millis(200));
    let t = transport(port_cfg(&sim));
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut j = job("serial-bench", verified(app(Chip::Esp32, 256 * 1024)));
    j.timeout = Duration::from_millis(1);
    let err = t
        .update(j, tx, CancellationToken::new())
        .await
        .expect_err("timeout");
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(err.message.contains("incomplete"), "{err}");
    assert_eq!(sim.counters().writes_completed, 0);
}

#[tokio::test]
async fn serial_transport_no_reset_port_runs_the_new_firmware() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let t = transport(SerialPortConfig {
        reset: ResetMode::NoReset,
        ..port_cfg(&sim)
    });
    let (result, progress) = update(&t, verified(app(Chip::Esp32, 8 * 1024))).await;
    result.expect("flashed");
    assert!(sim.is_running_app());
    assert!(
        progress
            .last()
            .unwrap()
            .detail
            .contains("the ROM started the new firmware")
    );
}

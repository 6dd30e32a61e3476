#![cfg(feature = "conformance")]
//! esptool against the ROM simulator, and the project's flasher against the same image.
//!
//! For each of `--no-compress` (FLASH_BEGIN/DATA) and `--compress` (FLASH_DEFL_*):
//! `esptool --chip esp32 --port <pty> --before no-reset --after no-reset --no-stub write-flash
//! --flash-size 4MB 0x10000 app.bin` must end with "Hash of data verified" and leave exactly the
//! image at 0x10000 in the simulator's flash; then the agent's serial transport writes the same
//! image, with the same compression, to a fresh simulator, and the two flashes must be
//! byte-identical over their whole 4 MB.
//!
//! The peer is `esptool` on `PATH`, or the program named by `OTA_CONFORMANCE_ESPTOOL`
//! (scripts/conformance.sh installs esptool in its own virtualenv). A missing peer fails the
//! test.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use ota_agent::transport::serial::{SerialConfig, SerialPortConfig, SerialTransport};
use ota_agent::transport::{Transport, UpdateJob, VerifiedImage};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esprom::{EspRomSim, RomConfig};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const APP_OFFSET: usize = 0x10000;

fn esptool() -> PathBuf {
    std::env::var_os("OTA_CONFORMANCE_ESPTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("esptool"))
}

/// A plausible ESP32 application of about 300 KiB: ESP-IDF headers and application
/// description from the firmware builders, filler code, and a string table that compresses the
/// way real firmware does.
fn app_image() -> Vec<u8> {
    let strings: Vec<u8> = b"[C][wifi:443]: WiFi:\n[C][wifi:444]:   Local MAC: 24:6F:28:AA:BB:CC\n\
                             [D][sensor:094]: 'Greenhouse Temperature': Sending state 21.50000 C\n"
        .iter()
        .copied()
        .cycle()
        .take(150 * 1024)
        .collect();
    EspAppBuilder::new(Chip::Esp32)
        .version("2026.10.0")
        .project_name("greenhouse")
        .payload_size(150 * 1024)
        .segment(0x3F40_8000, strings)
        .build()
}

async fn esptool_version() -> String {
    let out = Command::new(esptool())
        .arg("version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("esptool ({}) could not run: {e}", esptool().display()));
    assert!(out.status.success(), "esptool version failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Runs esptool's ROM-mode write-flash against a fresh simulator; returns the simulator and
/// esptool's output.
async fn esptool_write(image: &[u8], compress: bool) -> (EspRomSim, String) {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.bin");
    std::fs::write(&file, image).expect("write app.bin");
    let mut cmd = Command::new(esptool());
    cmd.args(["--chip", "esp32", "--port"])
        .arg(sim.path())
        .args([
            "--before",
            "no-reset",
            "--after",
            "no-reset",
            "--no-stub",
            "write-flash",
            "--flash-size",
            "4MB",
        ])
        .arg(if compress {
            "--compress"
        } else {
            "--no-compress"
        })
        .arg(format!("0x{APP_OFFSET:x}"))
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = tokio::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("esptool finished within 2 minutes")
        .unwrap_or_else(|e| panic!("esptool ({}) could not run: {e}", esptool().display()));
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "esptool failed ({:?}):\n{text}",
        out.status
    );
    eprintln!(
        "esptool write-flash {} of {} bytes took {:.2} s",
        if compress {
            "--compress"
        } else {
            "--no-compress"
        },
        image.len(),
        took.as_secs_f64()
    );
    (sim, text)
}

/// The agent's serial transport writes `image` to a fresh simulator.
async fn project_write(image: &[u8], compress: bool) -> EspRomSim {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let transport = SerialTransport::new(SerialConfig {
        ports: vec![SerialPortConfig {
            chip: Some(Chip::Esp32),
            flash_size: Some(4 << 20),
            compress,
            ..SerialPortConfig::new("bench", sim.path())
        }],
        ..SerialConfig::default()
    })
    .expect("config");
    let image = Arc::new(VerifiedImage {
        firmware_id: "fw".into(),
        bytes: Bytes::copy_from_slice(image),
        sha256: String::new(),
        md5: hex::encode(Md5::digest(image)),
        version: "2026.10.0".into(),
        file_version: None,
    });
    let (tx, _rx) = mpsc::unbounded_channel();
    let job = UpdateJob {
        task_id: "conformance".into(),
        attempt: 1,
        device: "serial-bench".into(),
        image,
        downgrade: false,
        schedule: false,
        timeout: Duration::from_secs(120),
        wake_timeout: ota_agent::transport::DEFAULT_WAKE_TIMEOUT,
        commit: Default::default(),
    };
    let started = tokio::time::Instant::now();
    let report = transport
        .update(job, tx, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("the project's flasher failed: {e}"));
    eprintln!(
        "project flasher ({}) took {:.2} s, {} wire bytes",
        if compress { "compressed" } else { "plain" },
        started.elapsed().as_secs_f64(),
        report.wire_bytes
    );
    sim
}

async fn conformance(compress: bool) {
    eprintln!("esptool {}", esptool_version().await);
    let image = app_image();
    let (esptool_sim, output) = esptool_write(&image, compress).await;
    for line in output.lines().filter(|l| !l.contains("Writing at")) {
        eprintln!("esptool| {line}");
    }
    assert!(
        output.contains("Hash of data verified"),
        "esptool did not verify the hash:\n{output}"
    );
    assert_eq!(
        esptool_sim.flash_range(APP_OFFSET, image.len()),
        image,
        "the simulator's flash does not hold the image at 0x10000"
    );
    let flash = esptool_sim.flash();
    assert!(
        flash[..APP_OFFSET].iter().all(|b| *b == 0xFF),
        "esptool wrote below 0x10000"
    );
    assert!(
        flash[APP_OFFSET + image.len()..].iter().all(|b| *b == 0xFF),
        "esptool wrote past the image"
    );
    let c = esptool_sim.counters();
    let (data_op, begin_op) = if compress { (0x11, 0x10) } else { (0x03, 0x02) };
    assert!(
        c.requests.get(&begin_op).copied().unwrap_or(0) >= 1,
        "{c:?}"
    );
    assert!(c.requests.get(&data_op).copied().unwrap_or(0) >= 1, "{c:?}");
    assert_eq!(c.md5_requests, 1);

    let ours = project_write(&image, compress).await;
    assert!(
        ours.flash() == flash,
        "the project's flasher left a different flash than esptool"
    );
    esptool_sim.shutdown().await;
    ours.shutdown().await;
}

#[tokio::test]
async fn esptool_rom_write_flash_uncompressed() {
    conformance(false).await;
}

#[tokio::test]
async fn esptool_rom_write_flash_compressed() {
    conformance(true).await;
}

#![cfg(feature = "conformance")]
//! Conformance of the simulated ESPHome device (built on `ota_devproto::esphome::Device`) with
//! ESPHome's own uploader: `esphome.espota2.run_ota` from the installed `esphome` package, run
//! with `$OTA_CONFORMANCE_PYTHON` (set by scripts/conformance.sh) against the simulator on
//! loopback. Every case checks espota2's exit code and message and that the simulator received
//! exactly the image (and, after success, rebooted into its version).
//!
//! These tests fail, never skip, when the Python peer is missing.

use std::process::Stdio;
use std::time::Duration;

use ota_devproto::esphome::{Compression, DeviceAuth, NoiseKey, OtaVersion};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esphome::{
    Encryption, EsphomeConfig, EsphomeSim, Fault, Platform, Power, UploadOutcome,
};
use tokio::process::Command;
use tokio::time::timeout;

/// Runs espota2 in a Python process; it imports `esphome.espota2` and calls `run_ota` with the
/// installed signature (checked) and prints its result.
const DRIVER: &str = r#"
import base64, inspect, logging, pathlib, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
import esphome.const
from esphome import espota2
params = inspect.signature(espota2.run_ota).parameters
assert list(params)[:4] == ["remote_host", "remote_port", "password", "filename"], list(params)
assert "noise_psk" in params, list(params)
host, port, password, path, key_hex = sys.argv[1:6]
psk = base64.b64encode(bytes.fromhex(key_hex)).decode() if key_hex else None
rc, used = espota2.run_ota(host, int(port), password or None, pathlib.Path(path), noise_psk=psk)
print(f"esphome {esphome.const.__version__} rc={rc} host={used}")
sys.exit(rc)
"#;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn espota(
    sim: &EsphomeSim,
    password: Option<&str>,
    key: Option<&NoiseKey32>,
    image: &[u8],
) -> Run {
    let python = std::env::var("OTA_CONFORMANCE_PYTHON").expect(
        "OTA_CONFORMANCE_PYTHON must name a Python with esphome installed: run \
         scripts/conformance.sh",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("firmware.bin");
    std::fs::write(&file, image).expect("write image");
    let addr = sim.ota_addr();
    let child = Command::new(&python)
        .arg("-c")
        .arg(DRIVER)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(password.unwrap_or(""))
        .arg(&file)
        .arg(key.map(|k| hex::encode(k.0)).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let out = timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("espota2 finishes within 120 s")
        .expect("espota2 output");
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        run.stdout.contains("esphome 2026.10.0") || !run.ok,
        "unexpected esphome version or output:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        !run.stderr.contains("Traceback") && !run.stderr.contains("AssertionError"),
        "the driver crashed:\n{}",
        run.stderr
    );
    run
}

/// A raw key with its bytes at hand for the Python side.
struct NoiseKey32([u8; 32]);

impl NoiseKey32 {
    fn key(&self) -> NoiseKey {
        NoiseKey::new(self.0)
    }
}

fn esp32_app(version: &str) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("conformance.esp32")
        .payload_size(300 * 1024)
        .build()
}

fn esp8266_app() -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp8266)
        .payload_size(200 * 1024)
        .build()
}

fn sim(config: EsphomeConfig) -> EsphomeSim {
    EsphomeSim::start(EsphomeConfig {
        reboot_time: Duration::from_millis(200),
        version: "1.0.0".into(),
        ..config
    })
    .expect("start the simulator")
}

/// espota2 succeeded, the simulator received exactly `image` over `compression`, committed
/// it and came back running it.
async fn assert_installed(sim: &EsphomeSim, run: &Run, image: &[u8], compression: Compression) {
    assert!(run.ok, "espota2 failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("OTA successful"), "{}", run.stderr);
    for line in run.stderr.lines() {
        if line.contains("took") || line.contains("Compressed to") {
            eprintln!("espota2: {line}");
        }
    }
    let snap = sim.snapshot();
    assert_eq!(snap.received.len(), 1, "{snap:?}");
    let got = &snap.received[0];
    assert_eq!(got.image, image, "the simulator received exactly the image");
    assert!(got.md5_ok);
    assert_eq!(got.compression, compression);
    assert_eq!(got.outcome, UploadOutcome::Committed);
    timeout(Duration::from_secs(10), sim.device().wait_for(Power::Up))
        .await
        .expect("the device comes back");
    let (want, _) = ota_sim::esphome::model::image_identity(image);
    // The reboot may still be under way when the uploader returns; wait for the new version.
    timeout(Duration::from_secs(10), async {
        while sim.current_version() != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the device runs the new version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password() {
    let sim = sim(EsphomeConfig {
        compression: false,
        ..EsphomeConfig::new("plain", Platform::Esp32)
    });
    let image = esp32_app("2.0.0");
    let run = espota(&sim, None, None, &image).await;
    assert!(
        run.stderr.contains("device supports OTA version 2"),
        "{}",
        run.stderr
    );
    assert_installed(&sim, &run, &image, Compression::None).await;
    assert_eq!(sim.current_version(), "2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_password() {
    let sim = sim(EsphomeConfig {
        password: Some("conformance-secret".into()),
        ..EsphomeConfig::new("pw", Platform::Esp32)
    });
    let image = esp32_app("2.1.0");
    let run = espota(&sim, Some("conformance-secret"), None, &image).await;
    assert!(
        run.stderr.contains("Auth: SHA256 Nonce is"),
        "{}",
        run.stderr
    );
    assert_installed(&sim, &run, &image, Compression::Deflate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_with_an_auth_error() {
    let sim = sim(EsphomeConfig {
        password: Some("right".into()),
        ..EsphomeConfig::new("pw", Platform::Esp32)
    });
    let run = espota(&sim, Some("wrong"), None, &esp32_app("2.0.0")).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("Authentication invalid"),
        "{}",
        run.stderr
    );
    assert!(sim.snapshot().received.is_empty());
    assert_eq!(sim.current_version(), "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_version_1() {
    let sim = sim(EsphomeConfig {
        ota_version: OtaVersion::V1,
        ..EsphomeConfig::new("v1", Platform::Esp32)
    });
    let image = esp32_app("2.2.0");
    let run = espota(&sim, None, None, &image).await;
    assert!(
        run.stderr.contains("device supports OTA version 1"),
        "{}",
        run.stderr
    );
    assert_installed(&sim, &run, &image, Compression::Deflate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_gzip_device() {
    // An ESP8266 before 2026.5: one-byte ack 0x46, gzip stored.
    let sim = sim(EsphomeConfig {
        extended_protocol: false,
        ..EsphomeConfig::new("plug", Platform::Esp8266)
    });
    let image = esp8266_app();
    let run = espota(&sim, None, None, &image).await;
    assert!(run.stderr.contains("Compressed to"), "{}", run.stderr);
    assert_installed(&sim, &run, &image, Compression::Gzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_gzip() {
    // An ESP8266 on 2026.10: 48 01.
    let sim = sim(EsphomeConfig::new("plug", Platform::Esp8266));
    let image = esp8266_app();
    let run = espota(&sim, None, None, &image).await;
    assert_installed(&sim, &run, &image, Compression::Gzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate() {
    // An ESP32 on 2026.10: 48 08; espota2's zlib stream (wbits -12) through the device's
    // strict 4 KiB-window inflater.
    let sim = sim(EsphomeConfig::new("esp", Platform::Esp32));
    let image = esp32_app("2.3.0");
    let run = espota(&sim, None, None, &image).await;
    assert!(run.stderr.contains("(deflate)"), "{}", run.stderr);
    assert_installed(&sim, &run, &image, Compression::Deflate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_right_key() {
    let key = NoiseKey32([0x5A; 32]);
    let sim = sim(EsphomeConfig {
        encryption: Some(Encryption::Required(key.key())),
        ..EsphomeConfig::new("enc", Platform::Esp32)
    });
    let image = esp32_app("2.4.0");
    let run = espota(&sim, None, Some(&key), &image).await;
    assert!(
        run.stderr.contains("Encrypted connection established"),
        "{}",
        run.stderr
    );
    assert_installed(&sim, &run, &image, Compression::Deflate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_wrong_key() {
    let sim = sim(EsphomeConfig {
        encryption: Some(Encryption::Required(NoiseKey::new([0x5A; 32]))),
        ..EsphomeConfig::new("enc", Platform::Esp32)
    });
    let run = espota(
        &sim,
        None,
        Some(&NoiseKey32([0x5B; 32])),
        &esp32_app("2.0.0"),
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("is the OTA encryption key correct?"),
        "{}",
        run.stderr
    );
    assert!(sim.snapshot().received.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_auth_legacy_device() {
    // A device up to 2025.9: legacy ack, MD5 challenge.
    let sim = sim(EsphomeConfig {
        password: Some("old-secret".into()),
        auth: DeviceAuth::Md5,
        extended_protocol: false,
        compression: false,
        ..EsphomeConfig::new("old", Platform::Esp32)
    });
    let image = esp32_app("2.5.0");
    let run = espota(&sim, Some("old-secret"), None, &image).await;
    assert!(run.stderr.contains("Auth: MD5 Nonce is"), "{}", run.stderr);
    assert_installed(&sim, &run, &image, Compression::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_mismatch_at_the_end() {
    let sim = sim(EsphomeConfig::new("esp", Platform::Esp32));
    sim.device().inject(Fault::Md5MismatchAtEnd);
    let image = esp32_app("3.0.0");
    let run = espota(&sim, None, None, &image).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("MD5 code mismatch"), "{}", run.stderr);
    let snap = sim.snapshot();
    assert_eq!(snap.received.len(), 1, "no retry after a device error");
    assert_eq!(snap.received[0].image, image, "the image arrived intact");
    assert_eq!(
        snap.received[0].outcome,
        UploadOutcome::Failed(ota_devproto::esphome::ErrorCode::Md5Mismatch)
    );
    assert_eq!(snap.uploads, 0);
    assert_eq!(sim.current_version(), "1.0.0");
}

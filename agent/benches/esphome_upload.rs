//! Upload time of our ESPHome uploader alone (`transport::esphome::native::upload`) to the
//! simulated device on loopback: a 1.5 MB ESP32 image, SHA256 password, OTA version 2, with
//! deflate and without compression. Needs only cargo:
//! `cargo bench -p ota-agent --bench esphome_upload` (`OTA_BENCH_RUNS`, default 10).
//!
//! Each figure covers connect, handshake, compression, MD5, the data phase with chunk acks and
//! the end sequence; not the device's reboot. The comparison with ESPHome's own uploader is
//! `ota-conformance`'s `esphome_upload` bench (it needs the Python `esphome` package).

use std::time::Duration;

use bytes::Bytes;
use ota_agent::transport::esphome::native::{self, Timeouts};
use ota_devproto::esphome::{ClientConfig, Password};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esphome::{EsphomeConfig, EsphomeSim, Platform};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "bench-secret";
const IMAGE_SIZE: usize = 1_500_000;
const WARMUP: usize = 2;

fn main() {
    let runs: usize = std::env::var("OTA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let image = Bytes::from(image());
        println!(
            "esphome_upload (ours only): {} byte ESP32 image, {runs} runs after {WARMUP} warm-up",
            image.len()
        );
        for compression in [true, false] {
            let sim = EsphomeSim::start(EsphomeConfig {
                password: Some(PASSWORD.into()),
                compression,
                version: "1.0.0".into(),
                reboot_time: Duration::from_millis(100),
                ..EsphomeConfig::new("bench", Platform::Esp32)
            })
            .expect("simulator");
            let mut times = Vec::new();
            for i in 0..WARMUP + runs {
                let t = upload(&sim, image.clone()).await;
                wait_rebooted(&sim, i as u32 + 2).await;
                if i >= WARMUP {
                    times.push(t);
                }
            }
            let snap = sim.snapshot();
            assert_eq!(snap.uploads as usize, WARMUP + runs, "{snap:?}");
            assert!(snap.received.iter().all(|u| u.image == image));
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            println!(
                "  {:<15} median {:>6.1} ms  min {:>6.1} ms  ({:.0} MB/s of image)",
                if compression {
                    "deflate"
                } else {
                    "no compression"
                },
                median * 1e3,
                times[0] * 1e3,
                image.len() as f64 / median / 1e6
            );
        }
    });
}

async fn upload(sim: &EsphomeSim, image: Bytes) -> f64 {
    let addr = sim.ota_addr();
    let config = ClientConfig {
        password: Some(Password::new(PASSWORD)),
        ..ClientConfig::default()
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(20),
        handshake: Duration::from_secs(20),
        data: Duration::from_secs(160),
    };
    let t0 = Instant::now();
    native::upload(
        &addr.ip().to_string(),
        addr.port(),
        config,
        image,
        timeouts,
        &CancellationToken::new(),
        |_| {},
    )
    .await
    .expect("upload");
    t0.elapsed().as_secs_f64()
}

/// Until the device booted `boots` times and its port is back.
async fn wait_rebooted(sim: &EsphomeSim, boots: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.snapshot().boots < boots || !sim.is_up() {
        assert!(Instant::now() < deadline, "the device did not come back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The listener rebinds the port right after the boot.
    tokio::time::sleep(Duration::from_millis(30)).await;
}

/// A 1.5 MB application whose bulk compresses about like firmware (to roughly half).
fn image() -> Vec<u8> {
    let build = |code_len: usize| {
        EspAppBuilder::new(Chip::Esp32)
            .version("2.0.0")
            .project_name("bench.esp32")
            .payload_size(16 * 1024)
            .segment(0x400d_0020, code(code_len))
            .build()
    };
    let probe = 64 * 1024;
    let overhead = build(probe).len() - probe;
    build((IMAGE_SIZE - overhead) & !3)
}

/// Instruction-like words from a small alphabet, some text, some noise.
fn code(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let words: Vec<[u8; 4]> = (0..512).map(|_| next().to_le_bytes()).collect();
    let text = b"esphome sensor component update_interval wifi api ota logger ";
    let mut code = Vec::with_capacity(len + 64);
    while code.len() < len {
        match next() % 16 {
            0 => code.extend_from_slice(&text[..(next() as usize % text.len())]),
            1 => code.extend_from_slice(&next().to_le_bytes()),
            _ => code.extend_from_slice(&words[next() as usize % words.len()]),
        }
    }
    code.truncate(len);
    code
}

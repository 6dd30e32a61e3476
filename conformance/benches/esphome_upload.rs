//! Upload time of a 1.5 MB ESP32 image to the simulated ESPHome device on loopback: our uploader
//! (`ota_agent::transport::esphome::native::upload`, the driver the agent runs) against
//! ESPHome's own (`esphome.espota2.run_ota` of the `esphome` package) in the same run, on the
//! same simulator and image.
//!
//! Run: `OTA_CONFORMANCE_PYTHON=target/conformance-venv/bin/python cargo bench -p
//! ota-conformance --features conformance --bench esphome_upload` (scripts/conformance.sh
//! creates that virtualenv). `OTA_BENCH_RUNS` sets the measured uploads per uploader (default
//! 10, after 2 warm-up uploads each).
//!
//! The device: an ESP32 on ESPHome 2026.10 (OTA version 2, extended protocol, SHA256 password
//! challenge), no slow-flash limit, 100 ms reboots; once offering deflate, once offering no
//! compression. The image: an ESP-IDF application of 1.5 MB whose segments compress roughly
//! like firmware (about 60 %); the simulator checks it as ESP-IDF would and every upload must
//! arrive intact, exactly once.
//!
//! What each figure includes:
//! - **ours**: `native::upload` in this process: connect, handshake with authentication,
//!   compression, MD5, the data phase with chunk acks, the device's `44`/`45` and our final
//!   `00`. Not the reboot wait.
//! - **espota2 in-process**: `run_ota` in a Python process started once, timed by a wrapper
//!   around the call: address resolution, connect, the same exchange, reading the file.
//!   espota2 sleeps 1 s after "OTA successful" ("do not connect logs until it is fully on");
//!   the wrapper records the time when that sleep starts and skips it.
//! - **espota2 process**: wall time of a whole `python` process (interpreter start, importing
//!   `esphome.espota2`, the upload as above without the 1 s sleep, exit): what an operator
//!   waits for with `esphome upload`, minus its YAML handling.
//!
//! Runs of the three alternate, so load from other processes on the machine spreads over all
//! of them; still, the figures are only as steady as the machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use ota_agent::transport::esphome::native::{self, Timeouts};
use ota_devproto::esphome::{ClientConfig, Password};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esphome::{EsphomeConfig, EsphomeSim, Platform};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "bench-secret";
const IMAGE_SIZE: usize = 1_500_000;
const WARMUP: usize = 2;

/// espota2 under a stopwatch; see the module documentation. Modes: `once` (one upload, then
/// exit) and `serve` (one upload per line on stdin); one JSON line per upload on stdout.
const WRAPPER: &str = r#"
import json, logging, pathlib, sys, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from esphome import espota2

class Clock:
    """espota2's `time`: the 1 s pause after a successful upload is noted, not slept."""
    def __init__(self):
        self.end = None
    def __getattr__(self, name):
        return getattr(time, name)
    def sleep(self, seconds):
        if seconds == 1 and self.end is None:
            self.end = time.perf_counter()
            return
        time.sleep(seconds)

clock = Clock()
espota2.time = clock
host, port, password, path, mode = sys.argv[1:6]

def upload():
    clock.end = None
    t0 = time.perf_counter()
    rc, _ = espota2.run_ota(host, int(port), password or None, pathlib.Path(path))
    t1 = clock.end if clock.end is not None else time.perf_counter()
    return {"rc": rc, "upload_s": t1 - t0}

if mode == "once":
    r = upload()
    print(json.dumps(r), flush=True)
    sys.exit(r["rc"])
for _ in sys.stdin:
    print(json.dumps(upload()), flush=True)
"#;

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::var("OTA_BENCH_RUNS") {
        Ok(v) => v.parse().context("OTA_BENCH_RUNS")?,
        Err(_) => 10,
    };
    let python = std::env::var("OTA_CONFORMANCE_PYTHON").context(
        "OTA_CONFORMANCE_PYTHON must name a Python with esphome installed \
         (target/conformance-venv/bin/python after scripts/conformance.sh)",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let image = Bytes::from(image());
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("firmware.bin");
        std::fs::write(&file, &image)?;
        println!(
            "esphome_upload: {} byte ESP32 image (deflate 4 KiB window: {} bytes), {runs} runs \
             per uploader after {WARMUP} warm-up runs, SHA256 password, OTA version 2",
            image.len(),
            ota_devproto::esphome::compress::deflate_4k(&image).len(),
        );
        for compression in [true, false] {
            scenario(&python, &file, image.clone(), compression, runs).await?;
        }
        anyhow::Ok(())
    })
}

/// A 1.5 MB application whose bulk compresses about like firmware: instruction-like words drawn
/// from a small alphabet, some text, some noise.
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

/// Times of one uploader, in seconds.
#[derive(Debug, Default)]
struct Series(Vec<f64>);

impl Series {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

async fn scenario(
    python: &str,
    file: &Path,
    image: Bytes,
    compression: bool,
    runs: usize,
) -> anyhow::Result<()> {
    let sim = EsphomeSim::start(EsphomeConfig {
        password: Some(PASSWORD.into()),
        compression,
        version: "1.0.0".into(),
        reboot_time: Duration::from_millis(100),
        ..EsphomeConfig::new("bench", Platform::Esp32)
    })?;
    let mut espota = Espota::serve(python, &sim, file)?;
    let mut device = Device {
        sim: &sim,
        image: image.clone(),
        boots: sim.snapshot().boots,
    };
    let (mut ours, mut theirs, mut process) =
        (Series::default(), Series::default(), Series::default());
    for i in 0..WARMUP + runs {
        let t = upload_ours(&sim, image.clone()).await?;
        device.installed().await.context("after our upload")?;
        let u = espota.upload().await?;
        device
            .installed()
            .await
            .context("after espota2 in-process")?;
        let p = espota_process(python, &sim, file).await?;
        device
            .installed()
            .await
            .context("after the espota2 process")?;
        if i >= WARMUP {
            ours.0.push(t);
            theirs.0.push(u);
            process.0.push(p);
        }
    }
    espota.close().await?;
    let label = if compression {
        "deflate"
    } else {
        "no compression"
    };
    println!("\nESP32, {label}:");
    println!("  uploader                    median     min");
    for (name, s) in [
        ("ours (native::upload)", &ours),
        ("espota2 run_ota in-process", &theirs),
        ("espota2 whole process", &process),
    ] {
        println!(
            "  {name:<26} {:>7.1} ms {:>7.1} ms",
            s.median() * 1e3,
            s.min() * 1e3
        );
    }
    println!(
        "  ratio ours/espota2: {:.2}x in-process, {:.2}x whole process (median; goal <= 1.0x)",
        ours.median() / theirs.median(),
        ours.median() / process.median()
    );
    Ok(())
}

/// The simulator between uploads: each must have arrived intact, once, and the device must be
/// back before the next.
struct Device<'a> {
    sim: &'a EsphomeSim,
    image: Bytes,
    boots: u32,
}

impl Device<'_> {
    async fn installed(&mut self) -> anyhow::Result<()> {
        self.boots += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snap = self.sim.snapshot();
            if snap.boots >= self.boots && self.sim.is_up() {
                ensure!(
                    snap.boots == self.boots,
                    "more reboots than uploads: {snap:?}"
                );
                ensure!(
                    snap.uploads + 1 == self.boots && snap.attempts == snap.uploads,
                    "an upload was retried or failed: {snap:?}"
                );
                let got = snap.received.last().context("nothing received")?;
                ensure!(got.image == self.image, "the image arrived damaged");
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the device did not come back: {snap:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The listener task rebinds the port right after the boot; give it that moment.
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(())
    }
}

async fn upload_ours(sim: &EsphomeSim, image: Bytes) -> anyhow::Result<f64> {
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
    .context("our upload")?;
    Ok(t0.elapsed().as_secs_f64())
}

/// One line of the wrapper's answer.
fn parse(line: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("espota2 wrapper printed {line:?}"))?;
    ensure!(v["rc"] == 0, "espota2 failed: {v}");
    v["upload_s"].as_f64().context("upload_s")
}

fn wrapper(python: &str, sim: &EsphomeSim, file: &Path, mode: &str) -> Command {
    let addr = sim.ota_addr();
    let mut c = Command::new(python);
    c.arg("-c")
        .arg(WRAPPER)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(PASSWORD)
        .arg(file)
        .arg(mode);
    c
}

/// A Python process that uploads on request.
struct Espota {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Espota {
    fn serve(python: &str, sim: &EsphomeSim, file: &Path) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::from(wrapper(python, sim, file, "serve"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {python}"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    async fn upload(&mut self) -> anyhow::Result<f64> {
        self.stdin.write_all(b"go\n").await?;
        self.stdin.flush().await?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line).await? == 0 {
            bail!("the espota2 wrapper exited");
        }
        parse(&line)
    }

    async fn close(mut self) -> anyhow::Result<()> {
        drop(self.stdin);
        let status = self.child.wait().await?;
        ensure!(status.success(), "the espota2 wrapper ended with {status}");
        Ok(())
    }
}

/// One upload by a fresh Python process; its wall time from spawn to exit.
async fn espota_process(python: &str, sim: &EsphomeSim, file: &Path) -> anyhow::Result<f64> {
    let mut cmd = tokio::process::Command::from(wrapper(python, sim, file, "once"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {python}"))?;
    let wall = t0.elapsed().as_secs_f64();
    ensure!(out.status.success(), "espota2 failed: {}", out.status);
    parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok(wall)
}

//! The ROM simulator on a real pseudo-terminal, driven by `ota_devproto`'s flasher through a
//! minimal tokio loop in this file (the agent's transport has its own tests).
//!
//! Time is real here: a pty is real I/O, and tokio's paused clock would fire timeouts while a
//! reply is on its way. The timeouts are shortened where a fault makes the flasher wait.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use ota_devproto::serial::flasher::{Event, FlashError, Flasher, FlasherConfig, Job, Outcome};
use ota_devproto::serial::{Chip, Command, Op, RomError, Stage};
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esprom::{BlockFault, EspRomSim, Faults, RomConfig, RomEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

/// How a run over the pty ended, short of a flasher outcome.
#[derive(Debug)]
enum Drive {
    Flasher(FlashError),
    /// The port went away (EOF or an I/O error).
    PortGone(String),
}

fn open_port(path: &Path) -> tokio_serial::Result<SerialStream> {
    tokio_serial::new(path.to_string_lossy(), 115_200).open_native_async()
}

/// Runs the flasher over the pty at `path`. Resets are no-ops (a pty has no modem lines).
async fn drive(path: &Path, cfg: FlasherConfig, job: Job) -> Result<(Outcome, Vec<Event>), Drive> {
    let mut port = open_port(path).map_err(|e| Drive::PortGone(e.to_string()))?;
    let start = Instant::now();
    let now = || start.elapsed();
    let mut f = Flasher::new(cfg, job);
    let mut events = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        while let Some(bytes) = f.poll_transmit() {
            port.write_all(&bytes)
                .await
                .map_err(|e| Drive::PortGone(e.to_string()))?;
        }
        let mut acted = false;
        while let Some(ev) = f.poll_event() {
            acted = true;
            match &ev {
                Event::ResetRequested { .. } => f.reset_done(now()),
                Event::SetBaud(_) => f.baud_changed(now()),
                Event::Finished(r) => {
                    return r.clone().map(|o| (o, events)).map_err(Drive::Flasher);
                }
                _ => {}
            }
            events.push(ev);
        }
        if acted {
            continue;
        }
        let deadline = f.poll_timeout().map(|t| start + t);
        tokio::select! {
            r = port.read(&mut buf) => match r {
                Ok(0) => return Err(Drive::PortGone("end of file".into())),
                Ok(n) => f.handle_input(&buf[..n], now()),
                Err(e) => return Err(Drive::PortGone(e.to_string())),
            },
            _ = async { sleep_until(deadline.unwrap_or_else(|| start + Duration::from_secs(3600))).await }, if deadline.is_some() => {
                f.handle_timeout(now());
            }
        }
    }
}

/// An ESP32 application of about `len` bytes: half filler from the builder, half text-like
/// data (string tables compress like this in real firmware).
fn app(len: usize) -> Bytes {
    let text: Vec<u8> = b"[D][sensor:094]: 'Living Room Temperature': Sending state 21.5 C\n"
        .iter()
        .copied()
        .cycle()
        .take(len / 2)
        .collect();
    Bytes::from(
        EspAppBuilder::new(Chip::Esp32)
            .version("2026.1.0")
            .payload_size(len / 2)
            .segment(0x3FFB_0000, text)
            .build(),
    )
}

fn cfg(compress: bool) -> FlasherConfig {
    FlasherConfig {
        compress,
        expect_chip: Some(Chip::Esp32),
        flash_size: Some(4 << 20),
        ..FlasherConfig::default()
    }
}

fn write(image: &Bytes) -> Job {
    Job::Write {
        offset: 0x10000,
        image: image.clone(),
    }
}

async fn within<T>(fut: impl Future<Output = T>) -> T {
    timeout(Duration::from_secs(60), fut)
        .await
        .expect("test took more than 60 s")
}

#[tokio::test]
async fn esprom_flasher_writes_over_the_pty_uncompressed_and_compressed() {
    for compress in [false, true] {
        let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
        let image = app(300 * 1024);
        let started = std::time::Duration::ZERO;
        let t0 = Instant::now();
        let (out, events) = within(drive(sim.path(), cfg(compress), write(&image)))
            .await
            .expect("flash");
        let took = t0.elapsed() + started;
        assert_eq!(sim.flash_range(0x10000, image.len()), image.to_vec());
        assert_eq!(out.verified_md5, Some(Md5::digest(&image).into()));
        assert_eq!(out.compressed, compress);
        assert_eq!(out.bytes_written, image.len() as u64);
        assert!(events.contains(&Event::Stage(Stage::Verifying)));
        let c = sim.counters();
        assert_eq!(c.md5_requests, 1);
        assert_eq!(c.invalid, 0);
        let (rx, tx) = sim.traffic();
        eprintln!(
            "esprom over pty, compress={compress}: {} bytes in {:.3} s ({:.0} KiB/s image, {rx} bytes to the ROM, {tx} back)",
            image.len(),
            took.as_secs_f64(),
            image.len() as f64 / 1024.0 / took.as_secs_f64()
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn esprom_port_can_be_reopened() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let (out, _) = within(drive(sim.path(), FlasherConfig::default(), Job::Detect))
        .await
        .expect("detect");
    assert_eq!(out.chip.chip, Chip::Esp32);
    assert_eq!(out.chip.flash_size, Some(4 << 20));
    let image = app(8 * 1024);
    within(drive(sim.path(), cfg(true), write(&image)))
        .await
        .expect("flash after reopening");
    assert_eq!(sim.flash_range(0x10000, image.len()), image.to_vec());
    assert_eq!(sim.counters().syncs, 2);
}

#[tokio::test]
async fn esprom_answers_sync_with_eight_replies_byte_for_byte() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let mut port = open_port(sim.path()).expect("open");
    port.write_all(&Command::Sync.to_frame())
        .await
        .expect("write");
    let one = [
        0xC0, 0x01, 0x08, 0x04, 0x00, 0x07, 0x07, 0x12, 0x20, 0x00, 0x00, 0x00, 0x00, 0xC0,
    ];
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < one.len() * 8 {
        let n = within(port.read(&mut buf)).await.expect("read");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, one.repeat(8));
}

#[tokio::test]
async fn esprom_fault_silent_gives_no_sync() {
    let sim = EspRomSim::start(RomConfig {
        faults: Faults {
            silent: true,
            ..Faults::default()
        },
        ..RomConfig::esp32()
    })
    .expect("pty");
    let config = FlasherConfig {
        connect_attempts: 2,
        ..cfg(true)
    };
    let err = within(drive(sim.path(), config, write(&app(1024))))
        .await
        .expect_err("silent");
    assert!(
        matches!(err, Drive::Flasher(FlashError::NoSync { attempts: 2 })),
        "{err:?}"
    );
    assert!(sim.traffic().0 > 0, "the ROM heard the SYNCs");
    assert_eq!(sim.traffic().1, 0, "and said nothing");
}

#[tokio::test]
async fn esprom_fault_checksum_error_on_block() {
    let sim = EspRomSim::start(RomConfig {
        faults: Faults {
            checksum_error: Some(BlockFault::always(3)),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    })
    .expect("pty");
    let err = within(drive(sim.path(), cfg(false), write(&app(16 * 1024))))
        .await
        .expect_err("checksum");
    assert!(
        matches!(
            err,
            Drive::Flasher(FlashError::Rom {
                op: Op::FlashData,
                error: RomError::INVALID_CRC,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(sim.counters().blocks_failed, 3);
}

#[tokio::test]
async fn esprom_fault_flash_write_error() {
    let sim = EspRomSim::start(RomConfig {
        faults: Faults {
            flash_write_error: Some(BlockFault::always(0)),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    })
    .expect("pty");
    let err = within(drive(sim.path(), cfg(true), write(&app(16 * 1024))))
        .await
        .expect_err("write error");
    assert!(
        matches!(
            err,
            Drive::Flasher(FlashError::Rom {
                error: RomError::FLASH_WRITE,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn esprom_fault_md5_mismatch() {
    let sim = EspRomSim::start(RomConfig {
        faults: Faults {
            corrupt_flash_byte: Some(0x10000 + 100),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    })
    .expect("pty");
    let image = app(16 * 1024);
    let err = within(drive(sim.path(), cfg(true), write(&image)))
        .await
        .expect_err("md5");
    assert!(
        matches!(err, Drive::Flasher(FlashError::Md5Mismatch { .. })),
        "{err:?}"
    );
    let flash = sim.flash_range(0x10000, image.len());
    let diffs: Vec<usize> = (0..image.len())
        .filter(|i| flash[*i] != image[*i])
        .collect();
    assert_eq!(diffs, [100]);
}

#[tokio::test]
async fn esprom_fault_unplugged_closes_the_port() {
    let sim = EspRomSim::start(RomConfig {
        faults: Faults {
            unplug_after_blocks: Some(5),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    })
    .expect("pty");
    let err = within(drive(sim.path(), cfg(false), write(&app(64 * 1024))))
        .await
        .expect_err("unplugged");
    let Drive::PortGone(why) = err else {
        panic!("{err:?}")
    };
    eprintln!("the client saw: {why}");
    within(sim.closed()).await;
    assert_eq!(sim.events(), [RomEvent::Unplugged]);
    assert_eq!(sim.counters().blocks_ok, 5);
    // The port is gone for good.
    let again = within(drive(sim.path(), cfg(false), Job::Detect)).await;
    assert!(matches!(again, Err(Drive::PortGone(_))), "{again:?}");
}

#[tokio::test]
async fn esprom_runs_user_code_and_resets_into_the_bootloader() {
    let sim = EspRomSim::start(RomConfig::esp32()).expect("pty");
    let config = FlasherConfig {
        after: ota_devproto::serial::After::RunUserCode,
        ..cfg(true)
    };
    within(drive(sim.path(), config, write(&app(4096))))
        .await
        .expect("flash");
    assert!(sim.is_running_app());
    assert!(sim.events().contains(&RomEvent::RanUserCode));
    // The application does not speak the ROM protocol.
    let quick = FlasherConfig {
        connect_attempts: 1,
        ..FlasherConfig::default()
    };
    let err = within(drive(sim.path(), quick.clone(), Job::Detect))
        .await
        .expect_err("app runs");
    assert!(matches!(err, Drive::Flasher(FlashError::NoSync { .. })));
    sim.reset_into_bootloader();
    within(drive(sim.path(), quick, Job::Detect))
        .await
        .expect("back in the ROM");
}

#[tokio::test]
async fn esprom_esp8266() {
    let sim = EspRomSim::start(RomConfig::esp8266()).expect("pty");
    let image = Bytes::from(
        EspAppBuilder::new(Chip::Esp8266)
            .payload_size(32 * 1024)
            .build(),
    );
    let config = FlasherConfig {
        expect_chip: Some(Chip::Esp8266),
        ..FlasherConfig::default()
    };
    let (out, _) = within(drive(
        sim.path(),
        config,
        Job::Write {
            offset: 0,
            image: image.clone(),
        },
    ))
    .await
    .expect("flash");
    assert_eq!(out.chip.chip, Chip::Esp8266);
    assert_eq!(sim.flash_range(0, image.len()), image.to_vec());
    assert_eq!(out.verified_md5, None);
}

//! The flasher against the simulated ROM, in memory, with virtual time; and property tests of
//! the parsers. No pty and no tokio here: the pair moves bytes and jumps time itself (the
//! simulator's and the agent's tests cover the real line).

use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use ota_domain::status::ErrorCode;
use proptest::prelude::*;

use super::chip::Chip;
use super::flasher::{After, Event, FlashError, Flasher, FlasherConfig, Job, Outcome, Stage};
use super::packet::{Op, Request, Response, RomError};
use super::rom::{BlockFault, Faults, RomConfig, RomDevice, RomEvent};
use super::slip::SlipDecoder;

/// One byte on a 115200 baud line takes about 87 µs; the pair charges that per byte so
/// timeouts scale like on a wire.
const BYTE_TIME: Duration = Duration::from_micros(87);

/// Runs a flasher against a ROM until the flasher finishes, jumping virtual time to the next
/// timeout when nothing moves (quinn-proto's `Pair` idea).
struct Pair {
    flasher: Flasher,
    rom: RomDevice,
    now: Duration,
    events: Vec<Event>,
    resets: u32,
    line_up: bool,
    /// Blocks the ROM had acknowledged when the flasher held the last one.
    held_at_blocks: Option<u64>,
}

impl Pair {
    fn new(cfg: FlasherConfig, job: Job, rom: RomConfig) -> Pair {
        Pair {
            flasher: Flasher::new(cfg, job),
            rom: RomDevice::new(rom),
            now: Duration::ZERO,
            events: Vec::new(),
            resets: 0,
            line_up: true,
            held_at_blocks: None,
        }
    }

    fn run(&mut self) -> Result<Outcome, FlashError> {
        for _ in 0..1_000_000 {
            let mut moved = false;
            while let Some(bytes) = self.flasher.poll_transmit() {
                moved = true;
                self.now += BYTE_TIME * bytes.len() as u32;
                if self.line_up {
                    self.rom.handle_input(&bytes);
                }
            }
            while let Some(ev) = self.rom.poll_event() {
                if ev == RomEvent::Unplugged {
                    self.line_up = false;
                }
            }
            while let Some(bytes) = self.rom.poll_transmit() {
                moved = true;
                self.now += BYTE_TIME * bytes.len() as u32;
                if self.line_up {
                    self.flasher.handle_input(&bytes, self.now);
                }
            }
            while let Some(ev) = self.flasher.poll_event() {
                moved = true;
                match &ev {
                    Event::ResetRequested { .. } => {
                        self.resets += 1;
                        self.flasher.reset_done(self.now);
                    }
                    Event::SetBaud(_) => self.flasher.baud_changed(self.now),
                    Event::LastBlock => {
                        self.held_at_blocks = Some(self.rom.counters().blocks_ok);
                        assert!(
                            self.flasher.poll_transmit().is_none()
                                && self.flasher.poll_timeout().is_none(),
                            "nothing goes out while the last block is held"
                        );
                        self.flasher.release_last_block(self.now);
                    }
                    Event::Finished(result) => {
                        let result = result.clone();
                        self.events.push(ev);
                        return result;
                    }
                    _ => {}
                }
                self.events.push(ev);
            }
            if !moved {
                let Some(t) = self.flasher.poll_timeout() else {
                    panic!("flasher stalled without a timeout");
                };
                self.now = self.now.max(t);
                self.flasher.handle_timeout(self.now);
            }
        }
        panic!("flasher did not finish");
    }

    fn stages(&self) -> Vec<Stage> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Stage(s) => Some(*s),
                _ => None,
            })
            .collect()
    }
}

/// A plausible ESP32 application image: header, extended header (chip 0), one segment.
fn app_image(len: usize) -> Bytes {
    let mut img = vec![0xE9, 0x01, 0x02, 0x20, 0x00, 0x00, 0x08, 0x40];
    img.extend([0xEE, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0]);
    let data_len = len.saturating_sub(img.len() + 8 + 16) / 4 * 4;
    img.extend(0x3F40_0020u32.to_le_bytes());
    img.extend((data_len as u32).to_le_bytes());
    // Compressible but not trivially so, with some 0xC0/0xDB bytes for SLIP to escape.
    img.extend((0..data_len).map(|i| ((i * 31 + i / 97) % 256) as u8 & 0xDF | (i as u8 & 0x20)));
    img.resize(len, 0);
    Bytes::from(img)
}

fn write_job(image: &Bytes) -> Job {
    Job::Write {
        offset: 0x10000,
        image: image.clone(),
    }
}

fn cfg(compress: bool) -> FlasherConfig {
    FlasherConfig {
        compress,
        expect_chip: Some(Chip::Esp32),
        flash_size: Some(4 << 20),
        ..FlasherConfig::default()
    }
}

fn assert_flash_holds(rom: &RomDevice, offset: usize, image: &[u8]) {
    assert!(
        rom.flash()[offset..offset + image.len()] == *image,
        "flash differs from the image"
    );
    assert!(
        rom.flash()[offset + image.len()..]
            .iter()
            .take(4096)
            .all(|b| *b == 0xFF)
    );
}

#[test]
fn serial_flasher_writes_uncompressed() {
    let image = app_image(300 * 1024 + 123);
    let mut pair = Pair::new(cfg(false), write_job(&image), RomConfig::esp32());
    let out = pair.run().expect("flash");
    assert_flash_holds(&pair.rom, 0x10000, &image);
    assert_eq!(out.bytes_written, (image.len() as u64).div_ceil(4) * 4);
    assert!(!out.compressed);
    assert_eq!(out.verified_md5, Some(Md5::digest(padded(&image)).into()));
    assert_eq!(out.chip.chip, Chip::Esp32);
    assert_eq!(out.chip.flash_id, Some(0x1640EF));
    assert_eq!(out.chip.flash_size, Some(4 << 20));
    assert_eq!(pair.rom.counters().blocks_ok, 301);
    assert_eq!(
        pair.stages(),
        [
            Stage::Connecting,
            Stage::Detecting,
            Stage::Configuring,
            Stage::Erasing,
            Stage::Writing,
            Stage::Verifying
        ]
    );
    // Progress is monotonic and ends at the image size.
    let written: Vec<u64> = pair
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Progress(p) => Some(p.written),
            _ => None,
        })
        .collect();
    assert_eq!(written.len(), 301);
    assert!(written.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*written.last().unwrap(), out.bytes_written);
    // The ROM never saw a FLASH_END: the chip stays in the loader.
    assert_eq!(pair.rom.counters().requests.get(&0x04), None);
}

fn padded(image: &[u8]) -> Vec<u8> {
    let mut v = image.to_vec();
    v.resize(v.len().div_ceil(4) * 4, 0xFF);
    v
}

#[test]
fn serial_flasher_writes_compressed() {
    let image = app_image(300 * 1024);
    let mut pair = Pair::new(cfg(true), write_job(&image), RomConfig::esp32());
    let out = pair.run().expect("flash");
    assert_flash_holds(&pair.rom, 0x10000, &image);
    assert!(out.compressed);
    assert!(
        out.wire_bytes < image.len() as u64,
        "{} wire bytes",
        out.wire_bytes
    );
    assert_eq!(out.bytes_written, image.len() as u64);
    assert!(pair.rom.counters().requests.contains_key(&0x10));
    assert!(!pair.rom.counters().requests.contains_key(&0x02));
}

#[test]
fn serial_flasher_overwrites_old_contents() {
    // NOR flash: without the erase the AND of old and new would remain.
    let image = app_image(8 * 1024);
    let mut pair = Pair::new(cfg(false), write_job(&image), RomConfig::esp32());
    pair.rom.flash_mut()[0x10000..0x12000].fill(0x00);
    pair.run().expect("flash");
    assert_flash_holds(&pair.rom, 0x10000, &image);
}

#[test]
fn serial_flasher_changes_baud_and_runs_user_code() {
    let image = app_image(4 * 1024);
    let config = FlasherConfig {
        target_baud: Some(921_600),
        after: After::RunUserCode,
        ..cfg(true)
    };
    let mut pair = Pair::new(config, write_job(&image), RomConfig::esp32());
    let out = pair.run().expect("flash");
    assert_eq!(out.baud, 921_600);
    assert!(pair.events.contains(&Event::SetBaud(921_600)));
    // The simulated ROM's crystal estimate is exactly 40 MHz, so the quirk leaves it unscaled.
    assert_eq!(pair.rom.baud(), 921_600);
    assert!(pair.rom.is_running_app());
    assert!(pair.stages().contains(&Stage::ChangingBaud));
    assert!(pair.stages().ends_with(&[Stage::Verifying, Stage::Leaving]));
}

#[test]
fn serial_flasher_detect_only() {
    let mut pair = Pair::new(FlasherConfig::default(), Job::Detect, RomConfig::esp32());
    let out = pair.run().expect("detect");
    assert_eq!(out.chip.chip, Chip::Esp32);
    assert_eq!(out.chip.magic, 0x00F0_1D83);
    assert_eq!(out.bytes_written, 0);
    assert_eq!(pair.rom.counters().begins, 0);
    let detected = pair
        .events
        .iter()
        .filter(|e| matches!(e, Event::Detected(_)))
        .count();
    assert_eq!(detected, 1);
}

#[test]
fn serial_flasher_esp8266_plain_unverified() {
    let image = app_image(64 * 1024);
    let config = FlasherConfig {
        expect_chip: Some(Chip::Esp8266),
        flash_size: None,
        ..cfg(true)
    };
    let mut pair = Pair::new(
        config,
        Job::Write {
            offset: 0,
            image: image.clone(),
        },
        RomConfig::esp8266(),
    );
    let out = pair.run().expect("flash");
    assert_flash_holds(&pair.rom, 0, &image);
    assert!(!out.compressed, "the ESP8266 ROM cannot inflate");
    assert_eq!(out.verified_md5, None, "the ESP8266 ROM has no MD5 command");
    assert_eq!(out.chip.flash_size, Some(1 << 20));
    assert_eq!(
        pair.rom.counters().invalid,
        0,
        "no unsupported command was sent"
    );
}

#[test]
fn serial_flasher_other_chip_detected_by_security_info() {
    let rom = RomConfig {
        chip: Chip::Esp32C5,
        ..RomConfig::esp32()
    };
    let image = app_image(2048);
    let config = FlasherConfig {
        expect_chip: Some(Chip::Esp32C5),
        ..cfg(true)
    };
    let mut pair = Pair::new(config, write_job(&image), rom);
    let out = pair.run().expect("flash");
    assert_eq!(out.chip.chip, Chip::Esp32C5);
    assert_eq!(out.chip.flash_id, None);
    assert_flash_holds(&pair.rom, 0x10000, &image);
}

#[test]
fn serial_fault_no_sync() {
    let rom = RomConfig {
        faults: Faults {
            silent: true,
            ..Faults::default()
        },
        ..RomConfig::esp32()
    };
    let mut pair = Pair::new(cfg(true), write_job(&app_image(1024)), rom);
    let err = pair.run().expect_err("no sync");
    assert_eq!(err, FlashError::NoSync { attempts: 7 });
    assert_eq!(pair.resets, 7);
    // 7 attempts × 5 syncs × 100 ms, plus the pauses in between: esptool's ~5 s.
    assert!(pair.now >= Duration::from_millis(3500) && pair.now < Duration::from_secs(6));
    let te = err.to_task_error();
    assert_eq!(te.code, ErrorCode::ConnectFailed);
    assert_eq!(
        te.message,
        "no answer from the ROM bootloader: hold BOOT/IO0 while resetting, or check the cable and port"
    );
}

#[test]
fn serial_fault_checksum_error_is_retried_then_fails() {
    let faults = |f| Faults {
        checksum_error: Some(f),
        ..Faults::default()
    };
    // Twice: the third attempt succeeds.
    let image = app_image(20 * 1024);
    let rom = RomConfig {
        faults: faults(BlockFault::times(5, 2)),
        ..RomConfig::esp32()
    };
    let mut pair = Pair::new(cfg(false), write_job(&image), rom);
    let out = pair.run().expect("retried");
    assert_eq!(out.block_retries, 2);
    assert_flash_holds(&pair.rom, 0x10000, &image);
    // Always: three attempts, then the ROM's error.
    let rom = RomConfig {
        faults: faults(BlockFault::always(1)),
        ..RomConfig::esp32()
    };
    let mut pair = Pair::new(cfg(true), write_job(&image), rom);
    let err = pair.run().expect_err("checksum");
    assert_eq!(
        err,
        FlashError::Rom {
            stage: Stage::Writing,
            op: Op::FlashDeflData,
            error: RomError::INVALID_CRC
        }
    );
    assert_eq!(pair.rom.counters().blocks_failed, 3);
    let te = err.to_task_error();
    assert_eq!(te.code, ErrorCode::SendFailed);
    assert!(te.message.contains("0x0107"), "{}", te.message);
}

#[test]
fn serial_fault_flash_write_error() {
    let rom = RomConfig {
        faults: Faults {
            flash_write_error: Some(BlockFault::always(0)),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    };
    let mut pair = Pair::new(cfg(false), write_job(&app_image(4096)), rom);
    let err = pair.run().expect_err("write error");
    assert!(matches!(
        err,
        FlashError::Rom {
            error: RomError::FLASH_WRITE,
            ..
        }
    ));
    assert_eq!(err.to_task_error().code, ErrorCode::SendFailed);
    assert!(
        err.to_task_error()
            .message
            .contains("writing the flash failed")
    );
}

#[test]
fn serial_fault_md5_mismatch() {
    let image = app_image(16 * 1024);
    let rom = RomConfig {
        faults: Faults {
            corrupt_flash_byte: Some(0x10000 + 5000),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    };
    let mut pair = Pair::new(cfg(true), write_job(&image), rom);
    let err = pair.run().expect_err("md5");
    let FlashError::Md5Mismatch { expected, actual } = err else {
        panic!("{err:?}");
    };
    assert_eq!(expected, <[u8; 16]>::from(Md5::digest(&image[..])));
    assert_ne!(expected, actual);
    assert_eq!(err.to_task_error().code, ErrorCode::ChecksumMismatch);
}

#[test]
fn serial_fault_unplugged_mid_write() {
    let rom = RomConfig {
        faults: Faults {
            unplug_after_blocks: Some(10),
            ..Faults::default()
        },
        ..RomConfig::esp32()
    };
    let mut pair = Pair::new(cfg(false), write_job(&app_image(40 * 1024)), rom);
    let err = pair.run().expect_err("unplugged");
    let FlashError::Timeout { stage, op, waited } = err else {
        panic!("{err:?}");
    };
    assert_eq!((stage, op), (Stage::Writing, Op::FlashData));
    assert_eq!(waited, Duration::from_secs(3));
    assert_eq!(pair.flasher.bytes_written(), 9 * 1024);
    let te = err.to_task_error();
    assert_eq!(te.code, ErrorCode::SendFailed);
    assert!(te.message.contains("unplugged"));
}

#[test]
fn serial_prechecks_refuse_before_erasing() {
    // Wrong chip.
    let config = FlasherConfig {
        expect_chip: Some(Chip::Esp32C3),
        ..cfg(true)
    };
    let mut pair = Pair::new(config, write_job(&app_image(4096)), RomConfig::esp32());
    let err = pair.run().expect_err("mismatch");
    assert_eq!(
        err,
        FlashError::ChipMismatch {
            expected: Chip::Esp32C3,
            detected: Chip::Esp32
        }
    );
    let te = err.to_task_error();
    assert_eq!(te.code, ErrorCode::PrevalidationFailed);
    assert!(te.message.contains("ESP32-C3") && te.message.contains("ESP32"));
    assert_eq!(pair.rom.counters().begins, 0);

    // Too large for the detected flash (the configured size is larger).
    let rom = RomConfig {
        flash_size: 1 << 20,
        ..RomConfig::esp32()
    };
    let image = app_image((1 << 20) - 0x10000 + 4);
    let mut pair = Pair::new(cfg(true), write_job(&image), rom);
    let err = pair.run().expect_err("too large");
    assert!(matches!(err, FlashError::ImageTooLarge { flash_size, .. } if flash_size == 1 << 20));
    assert_eq!(err.to_task_error().code, ErrorCode::PrevalidationFailed);
    assert_eq!(pair.rom.counters().begins, 0);
    assert!(pair.flasher.can_stop_safely());

    // Misaligned offset: refused before connecting.
    let mut f = Flasher::new(
        cfg(true),
        Job::Write {
            offset: 0x10010,
            image: app_image(64),
        },
    );
    assert!(matches!(
        f.poll_event(),
        Some(Event::Finished(Err(FlashError::InvalidJob(_))))
    ));
}

#[test]
fn serial_sync_after_boot_noise_and_extra_replies() {
    // The ROM prints its boot banner first; the flasher ignores it, and the seven extra SYNC
    // replies do not confuse the next command.
    let mut pair = Pair::new(FlasherConfig::default(), Job::Detect, RomConfig::esp32());
    pair.flasher
        .handle_input(b"ets Jun  8 2016 00:22:57\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n", Duration::ZERO);
    let out = pair.run().expect("detect");
    assert_eq!(out.chip.chip, Chip::Esp32);
    assert!(pair.flasher.skipped_replies() >= 7);
}

#[test]
fn serial_timeouts_follow_the_reference() {
    // A ROM that answers SYNC and then nothing: READ_REG times out after 3 s.
    let mut f = Flasher::new(FlasherConfig::default(), Job::Detect);
    while f.poll_event().is_some() {}
    f.reset_done(Duration::ZERO);
    assert_eq!(f.poll_timeout(), Some(Duration::from_millis(100)));
    let reply = Response::new(
        Op::Sync.code(),
        1,
        &[],
        super::packet::Status::Ok,
        super::packet::StatusLayout::Four,
    );
    f.handle_input(&reply.to_frame(), Duration::from_millis(10));
    assert_eq!(f.poll_timeout(), Some(Duration::from_millis(3010)));
}

#[test]
fn serial_erase_timeout_scales_with_size() {
    // FLASH_BEGIN for 4 MB: 40 s/MB → 160 s (well, 4 × 1.048576 MB).
    let image = app_image(4 * 1024 * 1024 - 0x10000);
    let mut pair = Pair::new(
        FlasherConfig {
            flash_size: Some(8 << 20),
            ..cfg(false)
        },
        write_job(&image),
        RomConfig {
            flash_size: 8 << 20,
            ..RomConfig::esp32()
        },
    );
    // Drive until FLASH_BEGIN is in flight, then look at the deadline.
    let mut begin_deadline = None;
    for _ in 0..10_000 {
        while let Some(b) = pair.flasher.poll_transmit() {
            let mut d = SlipDecoder::new();
            d.push(&b);
            let req = Request::parse(&d.next_frame().unwrap()).unwrap();
            if req.op == Op::FlashBegin.code() {
                begin_deadline = pair.flasher.poll_timeout().map(|t| t - pair.now);
            }
            pair.rom.handle_input(&b);
        }
        if begin_deadline.is_some() {
            break;
        }
        while let Some(b) = pair.rom.poll_transmit() {
            pair.flasher.handle_input(&b, pair.now);
        }
        while let Some(ev) = pair.flasher.poll_event() {
            if let Event::ResetRequested { .. } = ev {
                pair.flasher.reset_done(pair.now);
            }
        }
    }
    let t = begin_deadline.expect("FLASH_BEGIN sent");
    let expected = Duration::from_secs(40).mul_f64(image.len() as f64 / 1e6);
    assert!(
        (t.as_secs_f64() - expected.as_secs_f64()).abs() < 0.01,
        "{t:?}"
    );
}

proptest! {
    #[test]
    fn serial_slip_decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
        let mut d = SlipDecoder::with_max_frame(256);
        for c in &chunks {
            d.push(c);
            while let Some(f) = d.next_frame() {
                prop_assert!(f.len() <= 256);
                if let Ok(r) = Response::parse(&f) {
                    let _ = r.outcome(32);
                }
                let _ = Request::parse(&f).map(|r| super::command::Command::parse(&r));
            }
        }
    }

    #[test]
    fn serial_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128), len in 0usize..64) {
        if let Ok(r) = Response::parse(&bytes) {
            let _ = r.outcome(len);
        }
        if let Ok(r) = Request::parse(&bytes) {
            let _ = super::command::Command::parse(&r);
        }
    }

    #[test]
    fn serial_slip_round_trips_any_split(payload in proptest::collection::vec(any::<u8>(), 1..300), cut in 0usize..400) {
        let wire = super::slip::encode(&payload);
        let cut = cut.min(wire.len());
        let mut d = SlipDecoder::new();
        d.push(&wire[..cut]);
        d.push(&wire[cut..]);
        prop_assert_eq!(d.next_frame(), Some(payload));
    }

    #[test]
    fn serial_rom_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut rom = RomDevice::new(RomConfig::esp32());
        rom.handle_input(&bytes);
        while rom.poll_transmit().is_some() {}
    }

    #[test]
    fn serial_flasher_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut f = Flasher::new(FlasherConfig::default(), Job::Detect);
        f.reset_done(Duration::ZERO);
        let mut framed = super::slip::encode(&bytes);
        framed.extend_from_slice(&bytes);
        f.handle_input(&framed, Duration::from_millis(1));
        f.handle_timeout(Duration::from_secs(100));
    }
}

#[test]
fn serial_flasher_holds_the_last_block_until_released_and_reads_region_md5s() {
    for compress in [false, true] {
        let image = app_image(20 * 1024 + 3);
        let config = FlasherConfig {
            hold_last_block: true,
            ..cfg(compress)
        };
        let mut pair = Pair::new(config, write_job(&image), RomConfig::esp32());
        let out = pair.run().expect("flash");
        let blocks = pair.rom.counters().blocks_ok;
        assert_eq!(pair.held_at_blocks, Some(blocks - 1), "compress {compress}");
        assert_eq!(pair.rom.counters().writes_completed, 1);
        assert!(out.verified_md5.is_some());
        assert_flash_holds(&pair.rom, 0x10000, &image);

        // A second run reads the region's MD5 only: the padded image's.
        let mut padded = image.to_vec();
        padded.resize(padded.len().div_ceil(4) * 4, 0xFF);
        let job = Job::Md5 {
            offset: 0x10000,
            len: padded.len() as u32,
        };
        let rom = std::mem::replace(&mut pair.rom, RomDevice::new(RomConfig::esp32()));
        let mut md5_pair = Pair::new(cfg(compress), job.clone(), RomConfig::esp32());
        md5_pair.rom = rom;
        let out = md5_pair.run().expect("md5");
        let want: [u8; 16] = Md5::digest(&padded).into();
        assert_eq!(out.flash_md5, Some(want));
        assert_eq!(
            md5_pair.rom.counters().writes_completed,
            1,
            "nothing written"
        );
        assert_eq!(md5_pair.rom.counters().begins, 1);
        // A region that differs.
        md5_pair.rom.flash_mut()[0x10000] ^= 0xFF;
        let rom = std::mem::replace(&mut md5_pair.rom, RomDevice::new(RomConfig::esp32()));
        let mut again = Pair::new(FlasherConfig::default(), job, RomConfig::esp32());
        again.rom = rom;
        assert_ne!(again.run().expect("md5").flash_md5, Some(want));
    }
}

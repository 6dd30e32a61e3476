//! The serial transport: ESP chips on serial ports, flashed through their ROM bootloader.
//!
//! What it does: one device per configured port ([`SerialConfig`]). The inventory says whether
//! each port exists and can be opened. A check connects to the ROM (resetting the chip into it
//! unless the port is `no-reset`), detects the chip and its flash, and resets the chip back into
//! its application. An update
//! 1. checks the image without touching the device: an ESP factory image (bootloader, partition
//!    table, application) goes to 0x0, an application image to the port's application offset;
//!    the image's chip must be the configured one and the image must fit the configured flash
//!    (else 5013, naming both);
//! 2. connects and detects the chip: no answer is 5006 with what to do; another chip than the
//!    image's, or a flash too small for the image, is 5013 before anything is erased;
//! 3. writes (compressed when the ROM can inflate), reporting 2 "updating" with percent and
//!    remaining seconds by bytes written; a ROM error or the port going away mid-write is 5010.
//!    Right before the last FLASH_DATA block the job's committing mark is made durable, with a
//!    [`RecoveryNote`] (region and MD5): the point of no return;
//! 4. verifies the flash MD5 against the image (else 5009), records the committed mark, reports
//!    6 "downloaded", and starts the new firmware: a hard reset through RTS, or on a `no-reset`
//!    port the ROM's "run user code".
//!
//! Progress during connecting and detecting is 100 ("preparing at the site"). Cancel is honoured
//! until the erase starts; the transfer budget (the job's timeout) runs from the erase and cuts
//! the write only before the point of no return. Every failure is a [`TaskError`] a person can
//! act on.
//!
//! **Recover** (after an agent restart) compares the MD5 of the noted flash region
//! (SPI_FLASH_MD5, through [`Job::Md5`]) with the image's: equal is success without writing
//! again, different is 5010 (retryable: the write did not complete); a port or ROM that does not
//! answer, or a ROM without the MD5 command, leaves it undecided (the device may have the
//! image). **Probe** looks at the named ports now.
//!
//! What it does not do: know the firmware version running on the chip (the ROM cannot tell; the
//! report's `from` is empty), discover ports by itself (ports come from the configuration), run
//! esptool's flasher stub, or speak to the chip's application.

mod config;
pub mod driver;

pub use config::{
    DEFAULT_APP_OFFSET, SerialConfig, SerialConfigError, SerialPortConfig, parse_size,
};

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ota_devproto::serial::flasher::human_size;
use ota_devproto::serial::{
    After, Chip, ChipInfo, Event, FlasherConfig, Job, Outcome, ResetMode, Stage,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_firmware::esp;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::driver::DriveError;
use super::{
    CheckReport, CommitStage, Commitment, DeviceReport, ProgressSink, RecoverJob, TransferProgress,
    Transport, TransportKind, UpdateJob, UpdateReport, VersionInfo, unix_ms,
};

/// What an update will write, decided from the image alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// The image's chip.
    pub chip: Chip,
    /// Flash offset.
    pub offset: u32,
    /// `esp-app` or `esp-factory`.
    pub format: &'static str,
    /// The application's version, when the image carries one.
    pub version: Option<String>,
}

/// Decides where `image` goes on the port `port`, or why it must not be written there (5013).
pub fn plan_write(port: &SerialPortConfig, image: &[u8]) -> Result<WritePlan, TaskError> {
    let refuse = |msg: String| TaskError::new(ErrorCode::PrevalidationFailed, msg);
    let (chip, offset, format, version) = if esp::looks_like_factory(image) {
        let f = esp::parse_factory(image, port.chip)
            .map_err(|e| refuse(format!("the factory image is not valid: {e}")))?;
        (f.chip, 0, "esp-factory", f.app.version().map(str::to_owned))
    } else {
        let parsed = esp::parse_image(image, None).or_else(|first| match port.chip {
            // Without a hint an ESP8266 image can pass for nothing; try the configured chip.
            Some(chip) => esp::parse_image(image, Some(chip)).map_err(|_| first),
            None => Err(first),
        });
        let img = parsed.map_err(|e| {
            refuse(format!(
                "not an ESP application or factory image for serial flashing: {e}"
            ))
        })?;
        let offset = port.app_offset_for(img.chip);
        (
            img.chip,
            offset,
            "esp-app",
            img.version().map(str::to_owned),
        )
    };
    if let Some(expected) = port.chip
        && expected != chip
    {
        return Err(refuse(format!(
            "the image is built for {chip} but {} is configured with an {expected}; nothing was written",
            port.port.display()
        )));
    }
    let end = u64::from(offset) + image.len() as u64;
    if let Some(size) = port.flash_size
        && end > u64::from(size)
    {
        return Err(refuse(format!(
            "the image ({} bytes at 0x{offset:X}) does not fit the {} flash configured for {}; nothing was written",
            image.len(),
            human_size(u64::from(size)),
            port.port.display()
        )));
    }
    Ok(WritePlan {
        chip,
        offset,
        format,
        version,
    })
}

/// Turns a failed run into the status model.
pub fn task_error(port: &SerialPortConfig, err: &DriveError, wrote: bool) -> TaskError {
    let p = port.port.display();
    match err {
        DriveError::Flash(e) => e.to_task_error(),
        DriveError::Open { source, .. } => {
            let msg = source.to_string();
            let (code, hint) = match source.kind() {
                tokio_serial::ErrorKind::NoDevice => (
                    ErrorCode::Offline,
                    "the port does not exist or cannot be used: is the device plugged in?",
                ),
                tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound) => (
                    ErrorCode::Offline,
                    "the port does not exist: is the device plugged in?",
                ),
                tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied) => (
                    ErrorCode::ConnectFailed,
                    "permission denied: add the agent's user to the dialout group",
                ),
                _ if msg.contains("busy") || msg.contains("EBUSY") => (
                    ErrorCode::ConnectFailed,
                    "the port is in use by another program (a serial monitor, esptool?)",
                ),
                _ => (
                    ErrorCode::ConnectFailed,
                    "check the port path and the cable",
                ),
            };
            TaskError::new(code, format!("could not open {p} ({msg}): {hint}"))
        }
        DriveError::Port(e) if wrote => TaskError::new(
            ErrorCode::SendFailed,
            format!(
                "the serial port {p} went away while writing the flash ({e}): the device was unplugged or reset; the flash is incomplete, reconnect it and flash again"
            ),
        ),
        DriveError::Port(e) => TaskError::new(
            ErrorCode::ConnectFailed,
            format!(
                "the serial port {p} failed before anything was written ({e}): check the cable and port"
            ),
        ),
        DriveError::Cancelled => TaskError::new(
            ErrorCode::Other,
            "cancelled before anything was written to the flash",
        ),
        DriveError::NotCommitted(why) => TaskError::new(
            ErrorCode::SendFailed,
            format!(
                "flashing {p} stopped before the last block ({why}); the flash is incomplete, \
                 flash again"
            ),
        ),
    }
}

/// What a restarted agent needs to find out whether an interrupted write completed (the
/// committing mark's note): the region and the MD5 it must hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryNote {
    /// Flash offset.
    pub offset: u32,
    /// Bytes (the image padded to a multiple of 4 with 0xFF, as written).
    pub len: u32,
    /// Lowercase hex MD5 of those bytes.
    pub md5: String,
    /// The image's application version, when it has one.
    pub version: Option<String>,
}

impl RecoveryNote {
    fn new(plan: &WritePlan, image: &[u8]) -> Self {
        use md5::{Digest, Md5};
        let mut padded = image.to_vec();
        padded.resize(padded.len().div_ceil(4) * 4, 0xFF);
        Self {
            offset: plan.offset,
            len: padded.len() as u32,
            md5: hex::encode(Md5::digest(&padded)),
            version: plan.version.clone(),
        }
    }
}

/// Turns flasher events into [`TransferProgress`] reports: 100 while connecting, 2 with
/// percent and remaining seconds while erasing and writing (at most one report per percent, or
/// per second), 2 at 100 % while verifying.
#[derive(Debug)]
struct ProgressMapper {
    sink: ProgressSink,
    total: u64,
    port: String,
    write_started: Option<Instant>,
    last_percent: Option<u32>,
    last_sent: Option<Instant>,
    written: u64,
}

impl ProgressMapper {
    fn new(sink: ProgressSink, total: u64, port: &SerialPortConfig) -> ProgressMapper {
        ProgressMapper {
            sink,
            total,
            port: port.port.display().to_string(),
            write_started: None,
            last_percent: None,
            last_sent: None,
            written: 0,
        }
    }

    fn send(
        &self,
        status: UpgradeStatus,
        percent: Option<f32>,
        remaining_s: Option<u32>,
        detail: String,
    ) {
        let _ = self.sink.send(TransferProgress {
            status,
            percent,
            remaining_s,
            bytes_sent: self.written,
            bytes_total: self.total,
            detail,
        });
    }

    fn preparing(&self, detail: String) {
        self.send(UpgradeStatus::AgentPreparing, None, None, detail);
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Stage(Stage::Connecting) => {
                self.preparing(format!("connecting to the ROM bootloader on {}", self.port))
            }
            Event::Stage(Stage::Detecting) => self.preparing("detecting the chip".into()),
            Event::Detected(info) => self.preparing(describe_chip(info)),
            Event::Stage(Stage::ChangingBaud) => self.preparing("changing the baud rate".into()),
            Event::Stage(Stage::Erasing) => {
                self.write_started = Some(Instant::now());
                self.send(
                    UpgradeStatus::Updating,
                    Some(0.0),
                    None,
                    "erasing the flash".into(),
                );
            }
            Event::Progress(p) => {
                self.written = p.written;
                let percent = (p.written as f64 * 100.0 / p.total.max(1) as f64) as f32;
                let whole = percent as u32;
                let now = Instant::now();
                let due = self.last_percent != Some(whole)
                    || self
                        .last_sent
                        .is_none_or(|t| now - t >= Duration::from_secs(1))
                    || p.written == p.total;
                if !due {
                    return;
                }
                self.last_percent = Some(whole);
                self.last_sent = Some(now);
                let remaining = self.write_started.and_then(|t0| {
                    let secs = (now - t0).as_secs_f64();
                    (p.written > 0 && secs > 0.0).then(|| {
                        let rate = p.written as f64 / secs;
                        ((p.total - p.written) as f64 / rate).ceil() as u32
                    })
                });
                self.send(
                    UpgradeStatus::Updating,
                    Some(percent),
                    remaining,
                    format!("writing the flash ({} of {} bytes)", p.written, p.total),
                );
            }
            Event::Stage(Stage::Verifying) => self.send(
                UpgradeStatus::Updating,
                Some(100.0),
                Some(0),
                "verifying the flash (MD5)".into(),
            ),
            _ => {}
        }
    }
}

fn describe_chip(info: &ChipInfo) -> String {
    match (info.flash_size, info.flash_id) {
        (Some(size), Some(id)) => format!(
            "{} with {} flash (JEDEC id 0x{id:06X})",
            info.chip,
            human_size(u64::from(size))
        ),
        _ => format!("{}", info.chip),
    }
}

fn platform_of(chip: Chip) -> &'static str {
    if chip == Chip::Esp8266 {
        "esp8266"
    } else {
        "esp32"
    }
}

/// One port and its state.
#[derive(Debug)]
struct PortEntry {
    cfg: SerialPortConfig,
    /// One operation at a time per port.
    busy: tokio::sync::Mutex<()>,
}

/// The serial transport. See the module documentation.
#[derive(Debug)]
pub struct SerialTransport {
    instance: String,
    ports: Vec<Arc<PortEntry>>,
    by_id: HashMap<String, usize>,
    inventory: watch::Sender<Vec<DeviceReport>>,
    reports: Mutex<Vec<DeviceReport>>,
    flasher_defaults: FlasherConfig,
}

impl SerialTransport {
    /// A transport for the configured ports. Nothing is opened yet; the inventory starts with
    /// each port's existence and is refreshed by [`Self::refresh`].
    pub fn new(config: SerialConfig) -> Result<Self, SerialConfigError> {
        config.validate()?;
        let mut by_id = HashMap::new();
        let mut ports = Vec::new();
        let mut reports = Vec::new();
        for (i, cfg) in config.ports.into_iter().enumerate() {
            by_id.insert(cfg.local_id(), i);
            reports.push(DeviceReport {
                local_id: cfg.local_id(),
                network: config.instance.clone(),
                name: cfg.name.clone(),
                model: "ESP serial port".into(),
                vendor: "Espressif".into(),
                chip: cfg.chip.map(|c| c.esptool_name().to_owned()),
                platform: cfg.chip.map(|c| platform_of(c).to_owned()),
                reachable: cfg.port.exists(),
                supports_ota: true,
                ..DeviceReport::default()
            });
            ports.push(Arc::new(PortEntry {
                cfg,
                busy: tokio::sync::Mutex::new(()),
            }));
        }
        let (inventory, _) = watch::channel(reports.clone());
        Ok(SerialTransport {
            instance: config.instance,
            ports,
            by_id,
            inventory,
            reports: Mutex::new(reports),
            flasher_defaults: FlasherConfig::default(),
        })
    }

    /// Replaces the timings and retry counts every run starts from (esptool's by default).
    /// Per-port settings (baud, compression, chip, flash size) are applied on top.
    pub fn with_flasher_defaults(mut self, defaults: FlasherConfig) -> Self {
        self.flasher_defaults = defaults;
        self
    }

    fn entry(&self, device: &str) -> Result<(usize, Arc<PortEntry>), TaskError> {
        let idx = self
            .by_id
            .get(device)
            .or_else(|| self.by_id.get(&format!("serial-{device}")))
            .copied()
            .ok_or_else(|| {
                TaskError::new(
                    ErrorCode::Offline,
                    format!("no serial port {device:?} is configured at this site"),
                )
            })?;
        Ok((idx, self.ports[idx].clone()))
    }

    fn update_report(&self, idx: usize, f: impl FnOnce(&mut DeviceReport)) -> DeviceReport {
        super::update_report(&self.reports, &self.inventory, idx, f)
    }

    /// Checks every idle port: reachable when it exists and can be opened. Ports busy with a
    /// check or an update keep their last state.
    pub async fn refresh(&self) -> Vec<DeviceReport> {
        for (idx, entry) in self.ports.iter().enumerate() {
            let Ok(_guard) = entry.busy.try_lock() else {
                continue;
            };
            let reachable = entry.cfg.port.exists() && driver::open_port(&entry.cfg.port).is_ok();
            self.update_report(idx, |r| r.reachable = reachable);
        }
        self.inventory.borrow().clone()
    }

    /// Refreshes the inventory every `every` until `cancel`.
    pub async fn run_inventory(&self, every: Duration, cancel: CancellationToken) {
        loop {
            self.refresh().await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    fn flasher_config(&self, port: &SerialPortConfig) -> FlasherConfig {
        FlasherConfig {
            target_baud: port.baud,
            compress: port.compress,
            flash_size: port.flash_size,
            after: if port.reset == ResetMode::NoReset {
                After::RunUserCode
            } else {
                After::StayInLoader
            },
            ..self.flasher_defaults.clone()
        }
    }

    async fn do_check(&self, device: &str) -> Result<CheckReport, TaskError> {
        let (idx, entry) = self.entry(device)?;
        let port = &entry.cfg;
        let _guard = entry.busy.try_lock().map_err(|_| busy(port))?;
        let mut stream = driver::open_port(&port.port).map_err(|e| {
            self.update_report(idx, |r| r.reachable = false);
            task_error(port, &e, false)
        })?;
        let cfg = self.flasher_config(port);
        let mode = port.reset;
        let result = driver::run(
            &mut stream,
            cfg,
            Job::Detect,
            |attempt| mode.enter_bootloader(attempt),
            |_| {},
            &CancellationToken::new(),
        )
        .await;
        // Back into the application (on a `no-reset` port the chip stays in its bootloader).
        driver::play_reset(&mut stream, &mode.hard_reset(), "back to the application").await;
        drop(stream);
        let outcome = result.map_err(|e| task_error(port, &e, false))?;
        let info = outcome.chip;
        if let Some(expected) = port.chip
            && expected != info.chip
        {
            tracing::warn!(%expected, detected = %info.chip, "the chip on the port is not the configured one");
        }
        let report = self.update_report(idx, |r| {
            r.reachable = true;
            r.chip = Some(info.chip.esptool_name().to_owned());
            r.platform = Some(platform_of(info.chip).to_owned());
            r.model = describe_chip(&info);
            r.last_seen_ms = unix_ms();
        });
        Ok(CheckReport {
            reachable: true,
            device: report,
            update_available: None,
        })
    }

    async fn do_update(
        &self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> Result<UpdateReport, TaskError> {
        let (idx, entry) = self.entry(&job.device)?;
        let port = &entry.cfg;
        let image = job.image.bytes.clone();
        let plan = plan_write(port, &image)?;
        if cancel.is_cancelled() {
            return Err(task_error(port, &DriveError::Cancelled, false));
        }
        let _guard = entry.busy.try_lock().map_err(|_| busy(port))?;
        tracing::info!(chip = %plan.chip, offset = plan.offset, format = plan.format, "flashing");
        let mut stream = driver::open_port(&port.port).map_err(|e| {
            self.update_report(idx, |r| r.reachable = false);
            task_error(port, &e, false)
        })?;
        let cfg = FlasherConfig {
            expect_chip: Some(plan.chip),
            ..self.flasher_config(port)
        };
        let mode = port.reset;
        let mut mapper = ProgressMapper::new(progress, image.len() as u64, port);
        let mut erased = false;
        let note = serde_json::to_value(RecoveryNote::new(&plan, &image)).unwrap_or_default();
        let hook = super::committing_hook(&job.commit, note);
        // The transfer budget runs from the erase (the first change to the flash).
        let (began, since) = watch::channel(None);
        let run = driver::run_with(
            &mut stream,
            cfg,
            Job::Write {
                offset: plan.offset,
                image,
            },
            |attempt| mode.enter_bootloader(attempt),
            |ev| {
                if matches!(ev, Event::Stage(Stage::Erasing)) {
                    erased = true;
                    began.send_if_modified(|t| t.is_none() && t.replace(Instant::now()).is_none());
                }
                mapper.on_event(ev);
            },
            &cancel,
            Some(hook),
        );
        let limit = job.timeout;
        let result =
            super::under_budget(async { Ok(run.await) }, limit, since, &job.commit, || {
                TaskError::new(
                    ErrorCode::Timeout,
                    format!(
                        "flashing {} did not finish within {} of the erase; the flash is \
                         incomplete, flash again",
                        port.port.display(),
                        humantime::format_duration(limit),
                    ),
                )
            })
            .await;
        let result = match result {
            Ok(r) => r,
            Err(timeout) => {
                drop(stream);
                return Err(timeout);
            }
        };
        match result {
            Ok(outcome) => {
                job.commit.committed().await;
                self.finish_update(&mut stream, port, mode, &outcome, &mapper)
                    .await;
                drop(stream);
                self.record_flashed(idx, &outcome, plan.version.clone());
                Ok(UpdateReport {
                    from: VersionInfo::default(),
                    to: VersionInfo {
                        version: plan.version.or_else(|| Some(job.image.version.clone())),
                        ..VersionInfo::default()
                    },
                    wire_bytes: outcome.wire_bytes,
                })
            }
            Err(e) => Err(flash_failed(stream, port, mode, &job.commit, erased, &e).await),
        }
    }

    /// The device's report after a flash that took: the chip as the ROM named it, the version.
    fn record_flashed(&self, idx: usize, outcome: &Outcome, version: Option<String>) {
        self.update_report(idx, |r| {
            r.reachable = true;
            r.chip = Some(outcome.chip.chip.esptool_name().to_owned());
            r.platform = Some(platform_of(outcome.chip.chip).to_owned());
            r.model = describe_chip(&outcome.chip);
            r.current_version = version;
            r.last_seen_ms = unix_ms();
        });
    }

    async fn finish_update(
        &self,
        stream: &mut tokio_serial::SerialStream,
        port: &SerialPortConfig,
        mode: ResetMode,
        outcome: &Outcome,
        mapper: &ProgressMapper,
    ) {
        let verified = match outcome.verified_md5 {
            Some(md5) => format!("flash MD5 {} verified", hex::encode(md5)),
            None => format!(
                "written; not verified: the {} ROM has no MD5 command",
                outcome.chip.chip
            ),
        };
        let restart = match mode {
            ResetMode::NoReset => "the ROM started the new firmware",
            _ => "resetting into the new firmware",
        };
        mapper.send(
            UpgradeStatus::Downloaded,
            Some(100.0),
            Some(0),
            format!("{verified}; {restart}"),
        );
        if mode != ResetMode::NoReset {
            driver::play_reset(stream, &mode.hard_reset(), "into the new firmware").await;
        }
        tracing::info!(
            port = %port.port.display(),
            bytes = outcome.bytes_written,
            wire_bytes = outcome.wire_bytes,
            retries = outcome.block_retries,
            "serial flash done"
        );
    }
}

impl SerialTransport {
    /// After an agent restart: whether the interrupted write completed, from the MD5 of the
    /// flash region (SPI_FLASH_MD5) against the committing note; never writes.
    async fn do_recover(
        &self,
        job: RecoverJob,
        progress: ProgressSink,
    ) -> Result<UpdateReport, TaskError> {
        let (idx, entry) = self.entry(&job.device)?;
        let port = &entry.cfg;
        let p = port.port.display().to_string();
        let _guard = entry.busy.lock().await;
        let note: Option<RecoveryNote> = job
            .note
            .as_ref()
            .and_then(|n| serde_json::from_value(n.clone()).ok());
        let Some(note) = note.filter(|_| job.commit.stage() != CommitStage::Before) else {
            return Err(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted before the last block was written to {p}; the flash is \
                     untouched or incomplete, flash again"
                ),
            ));
        };
        let say = |detail: String| {
            let _ = progress.send(TransferProgress {
                status: UpgradeStatus::Updating,
                percent: Some(100.0),
                remaining_s: Some(0),
                bytes_sent: u64::from(note.len),
                bytes_total: u64::from(note.len),
                detail,
            });
        };
        say(format!(
            "the agent restarted at the end of the write; reading the flash MD5 on {p}"
        ));
        let mut stream = driver::open_port(&port.port).map_err(|e| {
            self.update_report(idx, |r| r.reachable = false);
            let te = task_error(port, &e, false);
            TaskError::new(
                te.code,
                format!("{}; whether the write completed cannot be told", te.message),
            )
        })?;
        let mode = port.reset;
        let outcome = driver::run(
            &mut stream,
            self.flasher_config(port),
            Job::Md5 {
                offset: note.offset,
                len: note.len,
            },
            |attempt| mode.enter_bootloader(attempt),
            |_| {},
            &CancellationToken::new(),
        )
        .await
        .map_err(|e| {
            let te = task_error(port, &e, false);
            TaskError::new(
                te.code,
                format!(
                    "{}; whether the write completed cannot be told: check it",
                    te.message
                ),
            )
        })?;
        // The ROM answered: the port is there.
        self.update_report(idx, |r| {
            r.reachable = true;
            r.last_seen_ms = unix_ms();
        });
        match outcome.flash_md5 {
            Some(md5) if hex::encode(md5) == note.md5 => {
                job.commit.committed().await;
                say(format!(
                    "flash MD5 {} verified; resetting into the new firmware",
                    note.md5
                ));
                if mode != ResetMode::NoReset {
                    driver::play_reset(&mut stream, &mode.hard_reset(), "into the new firmware")
                        .await;
                }
                drop(stream);
                self.update_report(idx, |r| {
                    r.reachable = true;
                    r.current_version = note.version.clone();
                    r.last_seen_ms = unix_ms();
                });
                Ok(UpdateReport {
                    from: VersionInfo::default(),
                    to: VersionInfo {
                        version: note.version.or(Some(job.target_version)),
                        ..VersionInfo::default()
                    },
                    wire_bytes: 0,
                })
            }
            Some(md5) => {
                job.commit.not_taken();
                Err(TaskError::new(
                    ErrorCode::SendFailed,
                    format!(
                        "the agent restarted during the write to {p} and the flash does not hold \
                         the image (MD5 {} instead of {}): the write did not complete, flash again",
                        hex::encode(md5),
                        note.md5
                    ),
                ))
            }
            None => Err(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted during the write to {p} and the {} ROM has no MD5 \
                     command: whether the write completed cannot be told; check it",
                    outcome.chip.chip
                ),
            )),
        }
    }
}

/// A flash that failed: the commitment learns whether the flash holds the image, an untouched
/// chip is reset into its old firmware, and the port is closed.
async fn flash_failed(
    mut stream: tokio_serial::SerialStream,
    port: &SerialPortConfig,
    mode: ResetMode,
    commit: &Commitment,
    erased: bool,
    e: &DriveError,
) -> TaskError {
    if let DriveError::Flash(
        ota_devproto::serial::FlashError::Md5Mismatch { .. }
        | ota_devproto::serial::FlashError::Rom { .. },
    ) = e
    {
        // The ROM answered: the flash does not hold the image.
        commit.not_taken();
    }
    let wrote = erased || matches!(e, DriveError::Flash(f) if f.stage().touches_flash());
    if !wrote {
        // Nothing was changed: let the old firmware run again.
        driver::play_reset(&mut stream, &mode.hard_reset(), "back to the application").await;
    }
    // After a failed write the chip stays in its bootloader, ready for another try, rather than
    // booting a half-written image.
    drop(stream);
    task_error(port, e, wrote)
}

fn busy(port: &SerialPortConfig) -> TaskError {
    TaskError::new(
        ErrorCode::OneAtATime,
        format!(
            "{} is busy with another check or update; try again when it is done",
            port.port.display()
        ),
    )
}

impl Transport for SerialTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Serial
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    fn inventory(&self) -> watch::Receiver<Vec<DeviceReport>> {
        self.inventory.subscribe()
    }

    fn check<'a>(
        &'a self,
        device: &'a str,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<CheckReport, TaskError>> {
        let span = tracing::info_span!("serial check", device.id = %device);
        Box::pin(super::check_within(
            deadline,
            self.do_check(device).instrument(span),
            move || format!("no answer from the ROM bootloader of {device} within {deadline:?}"),
        ))
    }

    fn update<'a>(
        &'a self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        let span = job_span!("serial update", job);
        Box::pin(self.do_update(job, progress, cancel).instrument(span))
    }

    fn recover<'a>(
        &'a self,
        job: RecoverJob,
        progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        let span = job_span!("serial recover", job);
        Box::pin(self.do_recover(job, progress).instrument(span))
    }

    fn probe<'a>(&'a self, devices: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for d in devices {
                let Ok((idx, entry)) = self.entry(d) else {
                    continue;
                };
                let Ok(_guard) = entry.busy.try_lock() else {
                    continue;
                };
                let reachable =
                    entry.cfg.port.exists() && driver::open_port(&entry.cfg.port).is_ok();
                self.update_report(idx, |r| r.reachable = reachable);
            }
        })
    }
}

//! The ESPHome transport: ESPHome devices on the site's network, updated through ESPHome's
//! native OTA protocol, or through the web_server's `/update` where configured.
//!
//! # What it does
//!
//! - **Inventory**: every configured device, asked periodically through its native API
//!   (`DeviceInfo`): node or friendly name, board (as the model), manufacturer, ESPHome version
//!   (as the software build id), build time (as the date code) and **project version** (the
//!   current version). A device is reachable when its API or its OTA port answers; when only the
//!   OTA port does (safe mode runs no API), its last known version is kept. No RSSI is reported:
//!   it needs entity subscriptions (a `wifi_signal` sensor), not a cheap request.
//! - **Check**: the same probe now, within the check's deadline.
//! - **Update**:
//!   1. pre-flight on the image alone, before any connection: on ESP platforms it must be an
//!      ESP application image for the device's chip (`ota_firmware::inspect` with
//!      `Expected::EspApp`); merged factory images are refused (5013) because a device would
//!      reject them (ESP32: 0x80) or worse;
//!   2. the running version, through the API (the report's `from`); a device that already runs
//!      one of the expected versions succeeds at once, without a byte sent (so a retry that lands
//!      on a device that took the image does not flash it again);
//!   3. the transfer: native OTA through `ota_devproto::esphome::Client` with ESPHome's timeouts
//!      (20 s connect and handshake, 160 s per read or write in the data phase), TCP_NODELAY as
//!      espota2 sets it, retries after network failures only (never after a device error code,
//!      never once the last image block was sent), the pause between them cancellable; or the
//!      web_server's `/update` (multipart POST, basic auth, 20 s connect / 120 s read). Right
//!      before the last image block (the last piece of the body) leaves, the job's
//!      [`Commitment`] gets its durable committing mark with a [`RecoveryNote`] (the point of no
//!      return: the device verifies and commits without another word from us); the device's
//!      `0x45` (or "Update Successful!") gets the committed mark;
//!   4. the device reboots: the API is asked every `reboot_poll` until the device answers on the
//!      expected version (success), on another version after having gone away (5018: "came back
//!      on 1.0.0: the new firmware was rolled back"), still on the old version without ever
//!      having gone away for `reboot_settle` (it did not reboot into the image), or not at all
//!      within `reboot_timeout` (5018, see below).
//!
//!   Progress: 100 while asking, connecting, negotiating and authenticating; 2 with percent and
//!   remaining seconds (from the transfer rate) by bytes the device acknowledged (OTA version
//!   2; bytes sent on version 1 and on the web_server path); 6 once the device answered
//!   `0x44`/`0x45` (or "Update Successful!") and while it reboots. Cancel is honoured until the
//!   first image byte goes out (and in the pause before a retry); afterwards the outcome is
//!   reported. The transfer budget (the job's timeout) runs from the first image byte and cuts
//!   the upload only before the point of no return.
//! - **Recover** (after an agent restart): before the point of no return one look at the API
//!   decides (the target: success; else 5010, retryable); after it the API is asked every
//!   `reboot_poll` for up to `reboot_timeout` ([`confirm::RecoveryWatch`]): the target is
//!   success, the old version steadily for `reboot_settle` is "not taken" (5010, retryable)
//!   before the device's `0x45` and "rolled back" (5018) after it; silence is 5018 with "the
//!   device may run the image". Nothing is ever sent.
//! - **Probe**: asks the named idle devices now (the server waits for them).
//! - **Health** (an update's health window, judged by the core): the API's project version and
//!   the `uptime` sensor's value (ESPHome's `uptime` sensor platform; without one a reboot shows
//!   only as silence); an API that refuses connections while the OTA port answers is safe mode;
//!   a device without an API (`api_port = 0`) is only reachable or not.
//!
//! The expected version is the firmware's version at the server, or the application version of
//! the image's `esp_app_desc_t` (ESPHome writes the project version there when downgrade
//! protection is on); a device without `esphome: project:` reports no project version, and then
//! a changed build time is the confirmation.
//!
//! **A device that stays away** after accepting an image is 5018 (the device's failure, final),
//! not 5016 (transient): it committed the image, so an automatic retry would only send the same
//! image again to a device that may not boot it; a person has to look at it. ESP32 firmware rolls
//! back to the previous image when the new one does not boot.
//!
//! Errors are [`TaskError`]s in the status model; the mapping of every device response code is
//! in [`errors`]. Passwords, Noise keys and basic-auth credentials appear in no log, trace,
//! error or `Debug` output.
//!
//! # Configuration
//!
//! ```toml
//! [esphome]
//! connect_timeout = "20s"     # TCP connect (native OTA, API, web_server)
//! handshake_timeout = "20s"   # native OTA up to authentication; a whole API exchange
//! data_timeout = "160s"       # longest silence per read/write in the native data phase
//! web_read_timeout = "120s"   # web_server: longest stall while sending, wait for the answer
//! reboot_timeout = "2m"       # how long a device may take to come back after an update
//! reboot_poll = "1s"          # how often the API is asked meanwhile
//! reboot_settle = "15s"       # old version and never away this long: it did not reboot
//! retries = 2                 # extra attempts after network failures
//! retry_delay = "5s"
//! inventory_interval = "5m"
//!
//! [[esphome.device]]
//! name = "kitchen-plug"       # local id at this site
//! host = "192.168.1.40"
//! platform = "esp32"          # esp32 | esp8266 | rp2040 | bk72xx | rtl87xx | ln882x | host
//! chip = "esp32c3"            # optional: images for other chips are refused
//! # port = 3232               # default by platform: esp32 3232, esp8266 8266, rp2040 2040,
//! #                           # bk72xx/rtl87xx 8892, ln882x 8820, host 8082
//! password_file = "/etc/ota-agent/kitchen-plug.ota"   # or password = "…"
//! api_key = "kjdh…base64…="   # `api: encryption: key:`; also used for OTA when offered
//! # noise_key = "…"           # `ota: encryption: key:` if it differs (or noise_key_file)
//! # allow_plaintext = false   # with noise_key: upload in plaintext to a device not offering it
//! # api_port = 6053           # 0: no native API (the version cannot be confirmed)
//! tags = ["kitchen"]
//!
//! [[esphome.device]]
//! name = "garage-door"
//! host = "garage.lan"
//! platform = "esp8266"
//! method = "web_server"       # native (default) | web_server
//! web = { port = 80, username = "admin", password_file = "/etc/ota-agent/garage.web" }
//! ```
//!
//! # What it does not do
//!
//! Discover devices (mDNS), report RSSI, schedule updates for deep-sleeping devices (they must
//! be awake), update partition tables or bootloaders, or digest auth on the web_server.

pub mod api;
mod config;
pub mod confirm;
pub mod errors;
pub mod native;
mod progress;
pub mod web;

pub use config::{
    DEFAULT_API_PORT, DEFAULT_WEB_PORT, DeviceSecrets, EsphomeConfig, EsphomeConfigError,
    EsphomeDeviceConfig, EsphomePlatform, Method, WebServerConfig,
};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use ota_devproto::esphome::{ClientConfig, OtaType};
use ota_devproto::esphome_api::DeviceInfoResponse;
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_firmware::esp::EspError;
use ota_firmware::{Expected, FirmwareImage, ImageError, inspect};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::api::ProbeError;
use self::confirm::{Answer, Commit, RebootWatch, RecoveryVerdict, RecoveryWatch, Verdict};
use self::native::Timeouts;
use self::progress::{Reporter, Stage};
use self::web::{WebError, WebTarget};
use super::{
    CheckReport, CommitStage, Commitment, DeviceReport, HealthLook, Observation, ProgressSink,
    RecoverJob, Transport, TransportKind, UpdateJob, UpdateReport, VerifiedImage, VersionInfo,
    unix_ms,
};
use crate::sync::LockExt;

/// What an update must end on, decided from the job alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    /// Versions that count as "the device runs the image": the firmware's version at the
    /// server and the image's application version (when it has one).
    pub expected: Vec<String>,
    /// The image's chip, for ESP images.
    pub chip: Option<ota_firmware::Chip>,
}

impl UpdatePlan {
    /// The version to name in messages.
    pub fn target(&self) -> &str {
        self.expected
            .first()
            .map_or("the new version", String::as_str)
    }
}

/// Checks `image` for `device` without touching the network: 5013 when it must not be sent.
pub fn preflight(
    device: &EsphomeDeviceConfig,
    image: &VerifiedImage,
) -> Result<UpdatePlan, TaskError> {
    let name = &device.name;
    let refuse = |msg: String| {
        TaskError::new(
            ErrorCode::PrevalidationFailed,
            format!("{msg}; nothing was sent to {name}"),
        )
    };
    let mut expected = Vec::new();
    let mut push = |v: &str| {
        let v = v.trim();
        if !v.is_empty() && !expected.iter().any(|e| e == v) {
            expected.push(v.to_owned());
        }
    };
    push(&image.version);
    let bytes = &image.bytes[..];
    if bytes.is_empty() {
        return Err(refuse("the image is empty".into()));
    }
    let mut chip = None;
    if device.platform.takes_esp_images() {
        let want = device.expected_chip();
        match inspect(bytes, Expected::EspApp { chip: want }) {
            Ok(FirmwareImage::EspApp(img)) => {
                let fits = match device.platform {
                    EsphomePlatform::Esp8266 => img.chip == ota_firmware::Chip::Esp8266,
                    _ => img.chip.is_esp32_family(),
                };
                if !fits {
                    return Err(refuse(format!(
                        "the image is built for {} but {name} is an {} device",
                        img.chip, device.platform
                    )));
                }
                chip = Some(img.chip);
                if let Some(v) = img.version() {
                    push(v);
                }
            }
            Ok(other) => {
                return Err(refuse(format!(
                    "a {} file is not an ESP application image",
                    other.format_name()
                )));
            }
            Err(ImageError::Esp(e @ EspError::FactoryImage { .. })) => {
                return Err(refuse(format!(
                    "refused for OTA: {e}; a factory image must never be sent over the air"
                )));
            }
            Err(e) => {
                let target = want.map_or_else(|| device.platform.to_string(), |c| c.to_string());
                return Err(refuse(format!(
                    "not an ESP application image for {target} ({name}): {e}"
                )));
            }
        }
    } else if let Ok(other) = inspect(bytes, Expected::Auto) {
        return Err(refuse(format!(
            "this is an {} image{} but {name} is an {} device",
            other.format_name(),
            other
                .chip()
                .map(|c| format!(" for {c}"))
                .unwrap_or_default(),
            device.platform
        )));
    }
    Ok(UpdatePlan { expected, chip })
}

#[derive(Debug)]
struct Transferred {
    wire_bytes: u64,
    commit: Commit,
}

/// What a restarted agent needs to find out how an update ended (the committing mark's note).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryNote {
    /// Versions that count as "the device runs the image" ([`UpdatePlan::expected`]).
    pub expected: Vec<String>,
    /// The project version the device ran before, when its API told.
    pub before_version: Option<String>,
    /// The build time of what it ran before, when its API told.
    pub before_build: Option<String>,
}

/// One configured device.
#[derive(Debug)]
struct Entry {
    cfg: EsphomeDeviceConfig,
    secrets: DeviceSecrets,
    /// One check or update at a time per device.
    busy: tokio::sync::Mutex<()>,
}

impl Entry {
    fn ota_addr(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.ota_port())
    }
}

/// What a probe found.
#[derive(Debug)]
enum Probe {
    /// The API answered.
    Api(Box<DeviceInfoResponse>),
    /// Only the OTA port answers (safe mode, no API configured, or an API problem).
    OtaOnly(Option<ProbeError>),
    /// Nothing answers.
    Down(String),
}

/// The ESPHome transport. See the module documentation.
#[derive(Debug)]
pub struct EsphomeTransport {
    settings: EsphomeConfig,
    devices: Vec<Arc<Entry>>,
    by_id: HashMap<String, usize>,
    inventory: watch::Sender<Vec<DeviceReport>>,
    reports: Mutex<Vec<DeviceReport>>,
}

fn base_report(instance: &str, cfg: &EsphomeDeviceConfig) -> DeviceReport {
    DeviceReport {
        local_id: cfg.name.clone(),
        network: instance.to_owned(),
        name: cfg.name.clone(),
        model: "ESPHome device".into(),
        vendor: cfg.platform.vendor().into(),
        chip: cfg.expected_chip().map(|c| c.esptool_name().to_owned()),
        platform: Some(cfg.platform.name().to_owned()),
        supports_ota: true,
        ..DeviceReport::default()
    }
}

fn apply_info(r: &mut DeviceReport, info: &DeviceInfoResponse) {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    if let Some(n) = nonempty(&info.friendly_name).or_else(|| nonempty(&info.name)) {
        r.name = n;
    }
    if let Some(m) = nonempty(&info.model) {
        r.model = m;
    }
    if let Some(v) = nonempty(&info.manufacturer) {
        r.vendor = v;
    }
    r.current_version = nonempty(&info.project_version);
    r.software_build_id = nonempty(&info.esphome_version).map(|v| format!("ESPHome {v}"));
    r.date_code = nonempty(&info.compilation_time);
    r.reachable = true;
    r.last_seen_ms = unix_ms();
}

fn version_info(info: Option<&DeviceInfoResponse>, fallback: Option<&str>) -> VersionInfo {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    VersionInfo {
        version: info
            .and_then(|i| nonempty(&i.project_version))
            .or_else(|| fallback.map(str::to_owned)),
        file_version: None,
        software_build_id: info
            .and_then(|i| nonempty(&i.esphome_version))
            .map(|v| format!("ESPHome {v}")),
        date_code: info.and_then(|i| nonempty(&i.compilation_time)),
    }
}

impl EsphomeTransport {
    /// A transport for the configured devices; secret files are read now (relative paths
    /// against the working directory). Nothing is connected yet.
    pub fn new(config: EsphomeConfig) -> Result<Self, EsphomeConfigError> {
        Self::new_in(config, None)
    }

    /// As [`Self::new`], with relative secret file paths taken against `base` (the directory of
    /// the agent's configuration file).
    pub fn new_in(
        mut config: EsphomeConfig,
        base: Option<&Path>,
    ) -> Result<Self, EsphomeConfigError> {
        let secrets = config.resolve(base)?;
        let devices_cfg = std::mem::take(&mut config.devices);
        let mut by_id = HashMap::new();
        let mut devices = Vec::new();
        let mut reports = Vec::new();
        for (i, (cfg, secrets)) in devices_cfg.into_iter().zip(secrets).enumerate() {
            by_id.insert(cfg.name.clone(), i);
            reports.push(base_report(&config.instance, &cfg));
            devices.push(Arc::new(Entry {
                cfg,
                secrets,
                busy: tokio::sync::Mutex::new(()),
            }));
        }
        let (inventory, _) = watch::channel(reports.clone());
        Ok(Self {
            settings: config,
            devices,
            by_id,
            inventory,
            reports: Mutex::new(reports),
        })
    }

    /// The timeouts and retry settings in force (the configuration without its devices).
    pub fn settings(&self) -> &EsphomeConfig {
        &self.settings
    }

    fn entry(&self, device: &str) -> Result<(usize, Arc<Entry>), TaskError> {
        let idx = self.by_id.get(device).copied().ok_or_else(|| {
            TaskError::new(
                ErrorCode::Offline,
                format!("no ESPHome device {device:?} is configured at this site"),
            )
        })?;
        Ok((idx, self.devices[idx].clone()))
    }

    fn update_report(&self, idx: usize, f: impl FnOnce(&mut DeviceReport)) -> DeviceReport {
        super::update_report(&self.reports, &self.inventory, idx, f)
    }

    fn report(&self, idx: usize) -> DeviceReport {
        self.reports.locked()[idx].clone()
    }

    async fn device_info(
        &self,
        e: &Entry,
        limit: Duration,
    ) -> Result<DeviceInfoResponse, ProbeError> {
        let s = &self.settings;
        api::device_info(
            &e.cfg.host,
            e.cfg.api_port,
            e.secrets.api_key.as_ref(),
            s.connect_timeout.min(limit),
            s.handshake_timeout.min(limit),
        )
        .await
    }

    /// One look during an update's health window: the API's version and uptime; safe mode when
    /// the API refuses connections while the OTA port answers; without an API, whether the OTA
    /// port answers.
    async fn do_look(&self, device: &str, deadline: Duration) -> HealthLook {
        let Ok((idx, e)) = self.entry(device) else {
            return HealthLook::Silent;
        };
        let s = &self.settings;
        let connect = s.connect_timeout.min(deadline);
        let ota_answers = || api::port_answers(&e.cfg.host, e.cfg.ota_port(), connect);
        if e.cfg.api_port == 0 {
            return HealthLook::Reachable(ota_answers().await);
        }
        let key = e.secrets.api_key.as_ref();
        let exchange = s.handshake_timeout.min(deadline);
        match api::device_info_and_uptime(&e.cfg.host, e.cfg.api_port, key, connect, exchange).await
        {
            Ok((info, uptime_s)) => {
                self.update_report(idx, |r| apply_info(r, &info));
                HealthLook::Api {
                    version: (!info.project_version.is_empty()).then_some(info.project_version),
                    uptime_s,
                    safe_mode: false,
                }
            }
            Err(ProbeError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused
                    && ota_answers().await =>
            {
                HealthLook::Api {
                    version: None,
                    uptime_s: None,
                    safe_mode: true,
                }
            }
            Err(err) => {
                tracing::debug!(device.id = %device, error = %err, "no API answer in the health window");
                HealthLook::Silent
            }
        }
    }

    /// Asks the API, then (if it does not answer) whether the OTA port does, by `deadline`.
    async fn ask(&self, e: &Entry, deadline: Instant) -> Probe {
        let mut api_error = None;
        if e.cfg.api_port != 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.device_info(e, left).await {
                Ok(info) => return Probe::Api(Box::new(info)),
                Err(err) => api_error = Some(err),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = self.settings.connect_timeout.min(left);
        if api::port_answers(&e.cfg.host, e.cfg.ota_port(), limit).await {
            return Probe::OtaOnly(api_error);
        }
        Probe::Down(match api_error {
            Some(err) => format!("{err}; OTA port {} does not answer either", e.ota_addr()),
            None => format!("OTA port {} does not answer", e.ota_addr()),
        })
    }

    fn apply_probe(&self, idx: usize, e: &Entry, probe: &Probe) -> DeviceReport {
        match probe {
            Probe::Api(info) => self.update_report(idx, |r| apply_info(r, info)),
            Probe::OtaOnly(why) => {
                if let Some(err) = why {
                    tracing::debug!(device.id = %e.cfg.name, error = %err, "only the OTA port answers");
                }
                self.update_report(idx, |r| {
                    r.reachable = true;
                    r.last_seen_ms = unix_ms();
                })
            }
            Probe::Down(_) => self.update_report(idx, |r| r.reachable = false),
        }
    }

    /// Asks every idle device (16 at a time) and updates the inventory. Devices busy with a
    /// check or an update keep their last state.
    pub async fn refresh(&self) -> Vec<DeviceReport> {
        let budget = self.settings.connect_timeout + self.settings.handshake_timeout;
        futures::stream::iter(self.devices.iter().enumerate())
            .for_each_concurrent(16, |(idx, e)| async move {
                let Ok(_guard) = e.busy.try_lock() else {
                    return;
                };
                let probe = self.ask(e, Instant::now() + budget).await;
                self.apply_probe(idx, e, &probe);
            })
            .await;
        self.inventory.borrow().clone()
    }

    /// Refreshes the inventory every `every` (the configuration's `inventory_interval`) until
    /// `cancel`.
    pub async fn run_inventory(&self, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.refresh() => {}
                () = cancel.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    async fn do_check(&self, device: &str, deadline: Duration) -> Result<CheckReport, TaskError> {
        let (idx, e) = self.entry(device)?;
        let Ok(_guard) = e.busy.try_lock() else {
            // An update is running: what it last saw is the answer.
            let report = self.report(idx);
            return Ok(CheckReport {
                reachable: report.reachable,
                device: report,
                update_available: None,
            });
        };
        let probe = self.ask(&e, Instant::now() + deadline).await;
        let report = self.apply_probe(idx, &e, &probe);
        match probe {
            Probe::Api(_) => Ok(CheckReport {
                reachable: true,
                device: report,
                update_available: None,
            }),
            Probe::OtaOnly(Some(err)) if err.is_config() => Err(TaskError::new(
                ErrorCode::ConnectFailed,
                format!("{device} is online but its native API refused us: {err}"),
            )),
            Probe::OtaOnly(_) => Ok(CheckReport {
                reachable: true,
                device: report,
                update_available: None,
            }),
            Probe::Down(why) => Err(TaskError::new(
                ErrorCode::Offline,
                format!("{device} does not answer: {why}"),
            )),
        }
    }

    async fn do_update(
        &self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
        stage: Arc<Stage>,
    ) -> Result<UpdateReport, TaskError> {
        let (idx, e) = self.entry(&job.device)?;
        let plan = preflight(&e.cfg, &job.image)?;
        let cancelled = || {
            TaskError::new(
                ErrorCode::Other,
                format!(
                    "cancelled before any image byte was sent to {}; it keeps its firmware",
                    job.device
                ),
            )
        };
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let _guard = e.busy.try_lock().map_err(|_| {
            TaskError::new(
                ErrorCode::OneAtATime,
                format!(
                    "{} is busy with another update; try again when it is done",
                    job.device
                ),
            )
        })?;
        let reporter = Reporter::new(progress, job.image.bytes.len() as u64, stage);
        let before = if e.cfg.api_port != 0 {
            reporter.preparing(format!("asking {} what it runs (native API)", job.device));
            let limit = self.settings.connect_timeout + self.settings.handshake_timeout;
            let answer = tokio::select! {
                a = self.device_info(&e, limit) => a,
                () = cancel.cancelled() => return Err(cancelled()),
            };
            match answer {
                Ok(info) => {
                    self.update_report(idx, |r| apply_info(r, &info));
                    Some(info)
                }
                Err(err) => {
                    tracing::info!(error = %err, "the running version is unknown; updating anyway");
                    None
                }
            }
        } else {
            None
        };
        if let Some(info) = &before
            && !info.project_version.is_empty()
            && plan.expected.contains(&info.project_version)
        {
            tracing::info!(version = %info.project_version, "already on the target version; nothing sent");
            let v = version_info(Some(info), None);
            return Ok(UpdateReport {
                from: v.clone(),
                to: v,
                wire_bytes: 0,
            });
        }
        tracing::info!(
            method = ?e.cfg.method,
            from = before.as_ref().map(|i| i.project_version.as_str()),
            to = plan.target(),
            bytes = job.image.bytes.len(),
            "esphome update"
        );
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let note = serde_json::to_value(RecoveryNote {
            expected: plan.expected.clone(),
            before_version: before.as_ref().and_then(|i| nonempty(&i.project_version)),
            before_build: before.as_ref().and_then(|i| nonempty(&i.compilation_time)),
        })
        .unwrap_or_default();
        let point = NoReturn {
            commit: &job.commit,
            note: &note,
        };
        let upload = Upload {
            e: &e,
            image: job.image.bytes.clone(),
            reporter: &reporter,
            cancel: &cancel,
            point,
        };
        let transferred = match e.cfg.method {
            Method::Native => self.transfer_native(upload).await?,
            Method::WebServer => self.transfer_web(upload).await?,
        };
        if transferred.commit == Commit::Confirmed {
            job.commit.committed().await;
        }
        reporter.rebooting(format!(
            "{} reboots into the new firmware; waiting for it to come back (up to {})",
            job.device,
            humantime::format_duration(self.settings.reboot_timeout)
        ));
        let after = self
            .wait_for_return(&e, &plan, before.as_ref(), &transferred.commit, &reporter)
            .await
            .inspect_err(|err| {
                // "did not install the image: it still runs … and did not reboot".
                if matches!(transferred.commit, Commit::Maybe(_))
                    && err.code == ErrorCode::SendFailed
                {
                    job.commit.not_taken();
                }
            })?;
        if let Some(info) = &after {
            self.update_report(idx, |r| apply_info(r, info));
        }
        Ok(UpdateReport {
            from: version_info(before.as_ref(), None),
            to: version_info(after.as_ref(), Some(plan.target())),
            wire_bytes: transferred.wire_bytes,
        })
    }

    async fn transfer_native(&self, up: Upload<'_>) -> Result<Transferred, TaskError> {
        let s = &self.settings;
        let timeouts = Timeouts {
            connect: s.connect_timeout,
            handshake: s.handshake_timeout,
            data: s.data_timeout,
        };
        let config = ClientConfig {
            password: up.e.secrets.password.clone(),
            noise_key: up.e.secrets.ota_key.clone(),
            // With only the api key known, ESPHome's uploader falls back to plaintext.
            allow_plaintext: up.e.cfg.allow_plaintext || up.e.secrets.ota_key_from_api,
            compression: true,
            ota_type: OtaType::App,
        };
        let addr = up.e.ota_addr();
        let ctx = errors::Context {
            device: &up.e.cfg.name,
            addr: &addr,
            timeouts,
            image_len: up.image.len(),
        };
        let attempts = s.retries + 1;
        for attempt in 1..=attempts {
            let note = attempt_note(attempt, attempts);
            up.reporter.preparing(format!("connecting to {addr}{note}"));
            let r = native::upload_with(
                &up.e.cfg.host,
                up.e.cfg.ota_port(),
                config.clone(),
                up.image.clone(),
                timeouts,
                up.cancel,
                |ev| up.reporter.ota_event(ev),
                up.point.hook(),
            )
            .await;
            match r {
                Ok(u) => {
                    return Ok(Transferred {
                        wire_bytes: u.wire_bytes,
                        commit: Commit::Confirmed,
                    });
                }
                Err(err) if err.may_have_committed() => {
                    tracing::warn!(error = %err, "connection lost after the last image byte; not retrying");
                    return Ok(Transferred {
                        wire_bytes: up.image.len() as u64,
                        commit: Commit::Maybe(errors::task_error(&ctx, &err)),
                    });
                }
                Err(err) if err.is_retryable() && attempt < attempts => {
                    let te = errors::task_error(&ctx, &err);
                    tracing::warn!(attempt, error = %te, "native OTA attempt failed; retrying");
                    up.reporter.preparing(format!(
                        "attempt {attempt} failed ({}); retrying in {}",
                        te.message,
                        humantime::format_duration(s.retry_delay)
                    ));
                    tokio::select! {
                        () = tokio::time::sleep(s.retry_delay) => {}
                        () = up.cancel.cancelled() => {
                            return Err(errors::task_error(&ctx, &native::AttemptError::Cancelled));
                        }
                    }
                }
                Err(err) => {
                    // A device error byte after the last block: it refused the image.
                    up.point.commit.not_taken();
                    return Err(errors::task_error(&ctx, &err));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn transfer_web(&self, up: Upload<'_>) -> Result<Transferred, TaskError> {
        let s = &self.settings;
        let web_cfg = up.e.cfg.web.clone().unwrap_or_default();
        let device = up.e.cfg.name.as_str();
        let addr = format!("{}:{}", up.e.cfg.host, web_cfg.port);
        let target = WebTarget {
            host: &up.e.cfg.host,
            port: web_cfg.port,
            username: web_cfg.username.as_deref(),
            password: up.e.secrets.web_password.as_ref(),
            connect_timeout: s.connect_timeout,
            read_timeout: s.web_read_timeout,
        };
        let total = up.image.len() as u64;
        let attempts = s.retries + 1;
        for attempt in 1..=attempts {
            let note = attempt_note(attempt, attempts);
            up.reporter
                .preparing(format!("connecting to the web_server {addr}{note}"));
            let r2 = up.reporter.clone();
            let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let st = started.clone();
            let (sent, result) = web::upload_with(
                &target,
                up.image.clone(),
                up.cancel,
                move |done, total| {
                    if !st.swap(true, Ordering::Relaxed) {
                        r2.start_sending("sending the firmware to /update".into());
                    }
                    r2.bytes(done, total);
                },
                up.point.hook(),
            )
            .await;
            let network = matches!(
                result,
                Err(WebError::Connect(_) | WebError::ConnectTimeout(_) | WebError::Http(_))
            );
            match result {
                Ok(()) => {
                    up.reporter.rebooting(format!(
                        "{device} answered \"Update Successful!\"; it reboots now"
                    ));
                    return Ok(Transferred {
                        wire_bytes: total,
                        commit: Commit::Confirmed,
                    });
                }
                Err(err)
                    if sent.complete && (network || matches!(err, WebError::ReadTimeout(_))) =>
                {
                    tracing::warn!(error = %err, "web_server connection lost after the whole image; not retrying");
                    return Ok(Transferred {
                        wire_bytes: total,
                        commit: Commit::Maybe(TaskError::new(
                            ErrorCode::SendFailed,
                            format!(
                                "the web_server connection to {device} failed after the whole image was sent ({err})"
                            ),
                        )),
                    });
                }
                Err(err) if network && attempt < attempts && !sent.complete => {
                    tracing::warn!(attempt, error = %err, "web_server attempt failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(s.retry_delay) => {}
                        () = up.cancel.cancelled() => return Err(web_error(device, &addr, &WebError::Cancelled, sent)),
                    }
                }
                Err(err) => {
                    if matches!(err, WebError::Refused(_) | WebError::Status { .. }) {
                        // The device answered: it did not take the image.
                        up.point.commit.not_taken();
                    }
                    return Err(web_error(device, &addr, &err, sent));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// After an agent restart: finds out how an interrupted update of this device ended. Before
    /// the point of no return one look decides (target: success; else 5010, retryable); after it
    /// the device is asked every `reboot_poll` for up to `reboot_timeout` ([`RecoveryWatch`]).
    async fn do_recover(
        &self,
        job: RecoverJob,
        progress: ProgressSink,
    ) -> Result<UpdateReport, TaskError> {
        let (idx, e) = self.entry(&job.device)?;
        // Wait for an inventory probe of this device to end; nothing else runs on it now.
        let _guard = e.busy.lock().await;
        let s = &self.settings;
        let device = e.cfg.name.as_str();
        let reporter = Reporter::new(progress, 0, Arc::new(Stage::default()));
        let stage = job.commit.stage();
        let note: Option<RecoveryNote> = job
            .note
            .as_ref()
            .and_then(|n| serde_json::from_value(n.clone()).ok());
        let from = VersionInfo {
            version: note.as_ref().and_then(|n| n.before_version.clone()),
            date_code: note.as_ref().and_then(|n| n.before_build.clone()),
            ..VersionInfo::default()
        };
        let Some(note) = note.filter(|_| stage != CommitStage::Before) else {
            reporter.preparing(format!(
                "the agent restarted before the point of no return; asking {device} what it runs"
            ));
            return self.recover_before_commit(idx, &e, &job, from).await;
        };
        let committed = stage == CommitStage::Committed;
        let detail = format!(
            "the agent restarted {}; waiting for {device} to tell what it runs (up to {})",
            if committed {
                "after the device accepted the image"
            } else {
                "while the last block was going out"
            },
            humantime::format_duration(s.reboot_timeout)
        );
        if committed {
            reporter.rebooting(detail);
        } else {
            reporter.send(UpgradeStatus::Updating, Some(100.0), Some(0), detail);
        }
        let started = Instant::now();
        let deadline = started + s.reboot_timeout;
        let mut watch = RecoveryWatch::new(device, &note, committed, s.reboot_settle);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let answer = self.look_at(&e, left).await;
            if let Answer::Info(info) = &answer {
                self.update_report(idx, |r| apply_info(r, info));
            }
            match watch.observe(started.elapsed(), answer) {
                RecoveryVerdict::Wait => {}
                RecoveryVerdict::Back(info) => {
                    job.commit.committed().await;
                    return Ok(UpdateReport {
                        from,
                        to: version_info(info.as_deref(), Some(&job.target_version)),
                        wire_bytes: 0,
                    });
                }
                RecoveryVerdict::NotTaken(err) => {
                    job.commit.not_taken();
                    return Err(err);
                }
                RecoveryVerdict::Failed(err) => return Err(err),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(s.reboot_poll.min(left)).await;
        }
        Err(watch.give_up(s.reboot_timeout))
    }

    /// Recovery before the point of no return: one look decides (the target: success; anything
    /// else: 5010, the update can be sent again).
    async fn recover_before_commit(
        &self,
        idx: usize,
        e: &Entry,
        job: &RecoverJob,
        from: VersionInfo,
    ) -> Result<UpdateReport, TaskError> {
        let device = e.cfg.name.as_str();
        let limit = self.settings.connect_timeout + self.settings.handshake_timeout;
        match self.device_info(e, limit).await {
            Ok(info) => {
                self.update_report(idx, |r| apply_info(r, &info));
                if !info.project_version.is_empty() && info.project_version == job.target_version {
                    Ok(UpdateReport {
                        from,
                        to: version_info(Some(&info), None),
                        wire_bytes: 0,
                    })
                } else {
                    Err(TaskError::new(
                        ErrorCode::SendFailed,
                        format!(
                            "the agent restarted before anything irrevocable was sent; {device} \
                             runs {}, the update can be sent again",
                            if info.project_version.is_empty() {
                                "its old firmware"
                            } else {
                                info.project_version.as_str()
                            }
                        ),
                    ))
                }
            }
            Err(err) => Err(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted before anything irrevocable was sent; {device} did \
                     not answer ({err}); the update can be sent again"
                ),
            )),
        }
    }

    /// One look at a device that may be rebooting: its native API's device info, or (without an
    /// API) whether its OTA port answers, within `left`.
    async fn look_at(&self, e: &Entry, left: Duration) -> Answer {
        let s = &self.settings;
        if e.cfg.api_port == 0 {
            let limit = s.connect_timeout.min(left);
            if api::port_answers(&e.cfg.host, e.cfg.ota_port(), limit).await {
                Answer::PortAnswers
            } else {
                Answer::Away
            }
        } else {
            match self.device_info(e, left).await {
                Ok(info) => Answer::Info(Box::new(info)),
                Err(err) => {
                    tracing::debug!(error = %err, "no answer yet");
                    Answer::Away
                }
            }
        }
    }

    /// After the transfer: asks the device every `reboot_poll` until [`RebootWatch`] decides,
    /// or the reboot timeout passes. `Ok(None)` when the device has no API.
    async fn wait_for_return(
        &self,
        e: &Entry,
        plan: &UpdatePlan,
        before: Option<&DeviceInfoResponse>,
        commit: &Commit,
        reporter: &Reporter,
    ) -> Result<Option<DeviceInfoResponse>, TaskError> {
        let s = &self.settings;
        let device = e.cfg.name.as_str();
        let started = Instant::now();
        let deadline = started + s.reboot_timeout;
        let mut watch = RebootWatch::new(device, plan, before, commit, s.reboot_settle);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let answer = self.look_at(e, left).await;
            let was_away = watch.seen_away();
            match watch.observe(started.elapsed(), answer) {
                Verdict::Wait => {}
                Verdict::Back(info) => {
                    if let Commit::Maybe(err) = commit {
                        tracing::info!(error = %err.message, "the upload ended uncertainly, but the device installed the image");
                    }
                    if info.is_none() {
                        tracing::warn!("no native API: the new version cannot be confirmed");
                    }
                    return Ok(info.map(|i| *i));
                }
                Verdict::Failed(err) => return Err(err),
            }
            if !was_away && watch.seen_away() {
                reporter.rebooting(format!(
                    "{device} went away to reboot; waiting for it to come back (up to {})",
                    humantime::format_duration(s.reboot_timeout)
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(s.reboot_poll.min(left)).await;
        }
        let ota_answers = e.cfg.api_port != 0
            && api::port_answers(
                &e.cfg.host,
                e.cfg.ota_port(),
                s.connect_timeout.min(Duration::from_secs(5)),
            )
            .await;
        Err(watch.give_up(s.reboot_timeout, ota_answers))
    }
}

/// One image on its way to one device: what either uploader (native OTA, web_server) is given.
struct Upload<'a> {
    e: &'a Entry,
    image: Bytes,
    reporter: &'a Reporter,
    cancel: &'a CancellationToken,
    point: NoReturn<'a>,
}

/// `" (attempt 2 of 3)"` after the first attempt, nothing on the first.
fn attempt_note(attempt: u32, attempts: u32) -> String {
    if attempt > 1 {
        format!(" (attempt {attempt} of {attempts})")
    } else {
        String::new()
    }
}

/// The point of no return of one update: the job's marks and the note for a restarted agent.
#[derive(Debug, Clone, Copy)]
struct NoReturn<'a> {
    commit: &'a Commitment,
    note: &'a serde_json::Value,
}

impl NoReturn<'_> {
    /// The hook the uploaders await right before the last image block.
    fn hook(self) -> native::BeforeLastBlock<'static> {
        super::committing_hook(self.commit, self.note.clone())
    }
}

fn web_error(device: &str, addr: &str, err: &WebError, sent: web::Sent) -> TaskError {
    let (code, msg) = match err {
        WebError::Connect(e) => (
            ErrorCode::ConnectFailed,
            format!(
                "could not connect to {device}'s web_server {addr} ({e}): is it online, with `web_server:` on this port?"
            ),
        ),
        WebError::ConnectTimeout(t) => (
            ErrorCode::ConnectFailed,
            format!("no answer from {device}'s web_server {addr} within {t:?}"),
        ),
        WebError::Cancelled => (
            ErrorCode::Other,
            format!("cancelled before any image byte was sent to {device}; it keeps its firmware"),
        ),
        WebError::Unauthorized => (
            ErrorCode::ConnectFailed,
            format!(
                "{device}'s web_server refused the credentials (HTTP 401): check web.username and \
                 web.password against `web_server: auth:` in its YAML"
            ),
        ),
        WebError::Status { status: 404, .. } => (
            ErrorCode::ConnectFailed,
            format!(
                "{device}'s web_server has no /update (HTTP 404): its firmware needs `ota: - \
                 platform: web_server`"
            ),
        ),
        WebError::Status { status, body } => (
            ErrorCode::DeviceReportedFailure,
            format!("{device}'s web_server answered HTTP {status}: {body}"),
        ),
        WebError::Refused(body) => (
            ErrorCode::DeviceReportedFailure,
            format!(
                "{device} answered {body:?}: it refused the image (not an application image for \
                 its chip, or too large for its OTA slot); it keeps its old firmware, its log has \
                 the details"
            ),
        ),
        WebError::Http(e) if sent.image_bytes > 0 => (
            ErrorCode::SendFailed,
            format!(
                "the web_server connection to {device} broke while sending the firmware ({e}); \
                 it keeps its old firmware, upload again"
            ),
        ),
        WebError::Http(e) => (
            ErrorCode::ConnectFailed,
            format!("HTTP to {device}'s web_server {addr} failed: {e}"),
        ),
        WebError::ReadTimeout(t) => (
            ErrorCode::Timeout,
            format!("{device}'s web_server made no progress for {t:?}"),
        ),
        WebError::NotCommitted(why) => (
            ErrorCode::SendFailed,
            format!(
                "the upload to {device} stopped before its last piece ({why}); it keeps its \
                 firmware"
            ),
        ),
    };
    TaskError::new(code, msg)
}

impl Transport for EsphomeTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Esphome
    }

    fn instance(&self) -> &str {
        &self.settings.instance
    }

    fn inventory(&self) -> watch::Receiver<Vec<DeviceReport>> {
        self.inventory.subscribe()
    }

    fn check<'a>(
        &'a self,
        device: &'a str,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<CheckReport, TaskError>> {
        let span = tracing::info_span!("esphome check", device.id = %device);
        let check = super::check_within(deadline, self.do_check(device, deadline), move || {
            format!("no answer from {device} within {deadline:?}")
        });
        Box::pin(check.instrument(span))
    }

    fn update<'a>(
        &'a self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        let span = job_span!("esphome update", job);
        Box::pin(
            async move {
                let stage = Arc::new(Stage::default());
                let limit = job.timeout;
                let device = job.device.clone();
                let commit = job.commit.clone();
                let since = stage.sending_since();
                let run = self.do_update(job, progress, cancel, stage.clone());
                super::under_budget(run, limit, since, &commit, || {
                    TaskError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the upload to {device} did not finish within {} of its start; it \
                             was cut, the device keeps its old firmware",
                            humantime::format_duration(limit),
                        ),
                    )
                })
                .await
            }
            .instrument(span),
        )
    }

    fn recover<'a>(
        &'a self,
        job: RecoverJob,
        progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        let span = job_span!("esphome recover", job);
        Box::pin(self.do_recover(job, progress).instrument(span))
    }

    fn observation(&self, device: &str) -> Observation {
        match self.entry(device) {
            Ok((_, e)) if e.cfg.api_port != 0 => Observation::Api,
            _ => Observation::Reachability,
        }
    }

    fn look<'a>(&'a self, device: &'a str, deadline: Duration) -> BoxFuture<'a, HealthLook> {
        Box::pin(self.do_look(device, deadline))
    }

    fn probe<'a>(&'a self, devices: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let budget = self.settings.connect_timeout + self.settings.handshake_timeout;
            let wanted = devices.iter().filter_map(|d| self.by_id.get(d).copied());
            futures::future::join_all(wanted.map(|idx| async move {
                let e = &self.devices[idx];
                // A device busy with a check or an update is being looked at already.
                let Ok(_guard) = e.busy.try_lock() else {
                    return;
                };
                let probe = self.ask(e, Instant::now() + budget).await;
                self.apply_probe(idx, e, &probe);
            }))
            .await;
        })
    }
}

//! Update transports: each wraps a sans-I/O protocol from `ota-devproto` in a thin tokio driver.
//!
//! A transport owns the devices of one kind at a site (one zigbee2mqtt instance, the configured
//! ESPHome devices, the serial ports) and offers the same four things to the agent's core:
//! an inventory that changes over time, a check of one device, an update of one device with
//! progress, and a description of itself. The core knows nothing about MQTT, TCP or serial lines;
//! a transport knows nothing about the server, the journal or rollouts.
//!
//! Every failure leaves a transport as a [`TaskError`] whose code is the product's status model
//! (see `ota_domain::status`) and whose message says what the device or bridge meant, without
//! secrets.
//!
//! # Exactly once
//! Each transport has one point of no return per attempt: the step after which the device may
//! install the image without any further word from the agent (ESPHome: the last image block;
//! serial: the last FLASH_DATA block; zigbee2mqtt: the update or schedule request, after which
//! zigbee2mqtt runs the transfer on its own). Right before it, the transport asks the core for
//! the durable *committing* mark through the job's [`Commitment`] (and waits for it: the core
//! fsyncs its journal), handing over a note of what a restarted agent needs to find out how the
//! attempt ended; once the device accepted the image it asks for the *committed* mark. After an
//! agent restart the core gives every interrupted attempt to [`Transport::recover`], which looks
//! at the device instead of sending anything again.
//!
//! # Health
//! When the update command carries a health window, the core watches the device after the
//! transport reported success: it asks [`Transport::look`] every few seconds and feeds the
//! answers to `ota_domain::health::HealthWatch`, the pure judgement; a transport only says what
//! it sees ([`HealthLook`]) and how it can see it ([`Transport::observation`]).

/// The span of one update or recovery on a transport: `job_span!("esphome update", job)` names
/// the device, the task and the attempt of an [`UpdateJob`] or a [`RecoverJob`].
macro_rules! job_span {
    ($name:literal, $job:expr) => {
        tracing::info_span!(
            $name,
            device.id = %$job.device,
            task.id = %$job.task_id,
            attempt = $job.attempt,
        )
    };
}

pub mod esphome;
pub mod serial;
pub mod zigbee;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use ota_domain::status::ErrorCode;
use ota_domain::status::{TaskError, UpgradeStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::sync::LockExt;

/// Which kind of transport a device is reached through, how it is powered (battery devices may
/// be sleepy and need a scheduled update) and how its signal is measured: the domain's value
/// types, one definition for the agent and otad.
pub use ota_domain::model::{PowerSource, Signal, Transport as TransportKind};

/// How the site can watch a device's health after an update (`ota_domain::health`).
pub use ota_domain::health::Observation;

/// One look at a device's health after an update, in the agent's (tokio) clock; the core turns
/// it into an `ota_domain::health::Sample` for the pure judgement.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthLook {
    /// The device's API answered.
    Api {
        /// The version it names, if any.
        version: Option<String>,
        /// Seconds since it booted, when it reports them.
        uptime_s: Option<u64>,
        /// It runs in safe mode (its OTA port answers, its API is not running).
        safe_mode: bool,
    },
    /// What the bridge heard of the device.
    Heard {
        /// When the device last talked (any message of its own).
        last: Option<tokio::time::Instant>,
        /// The version the bridge knows it runs.
        version: Option<String>,
    },
    /// Reachable or not, by the lower-level means.
    Reachable(bool),
    /// Nothing answered.
    Silent,
}

/// What a transport knows about one device. `local_id` is unique within the site.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceReport {
    /// Unique within the site: IEEE address for Zigbee, configured name for ESPHome,
    /// `serial-<port name>` for serial ports.
    pub local_id: String,
    /// The transport instance (zigbee2mqtt network name, `esphome`, `serial`).
    pub network: String,
    /// Human name (zigbee2mqtt friendly name, ESPHome node name).
    pub name: String,
    /// Model id.
    pub model: String,
    /// Vendor / manufacturer name.
    pub vendor: String,
    /// Zigbee manufacturer code, when known.
    pub manufacturer_code: Option<u16>,
    /// Zigbee OTA image type, when known.
    pub image_type: Option<u16>,
    /// ESP chip (`esp32`, `esp32c3`, `esp8266`, `rp2040`, `bk72xx`, ...), when known.
    pub chip: Option<String>,
    /// Platform as configured (`esp32`, `esp8266`, `rp2040`, `bk72xx`, `rtl87xx`).
    pub platform: Option<String>,
    /// Current firmware version as a string (ESPHome project version, Zigbee file version).
    pub current_version: Option<String>,
    /// Zigbee OTA file version currently installed.
    pub file_version: Option<u32>,
    /// Zigbee genBasic software build id.
    pub software_build_id: Option<String>,
    /// Zigbee genBasic date code.
    pub date_code: Option<String>,
    /// Hardware version, when known.
    pub hardware_version: Option<u16>,
    /// Power source.
    pub power_source: PowerSource,
    /// Battery percentage, for battery devices.
    pub battery_percent: Option<u8>,
    /// Last known signal.
    pub signal: Option<Signal>,
    /// Whether the transport can reach the device now.
    pub reachable: bool,
    /// Whether the device can be updated over the air at all.
    pub supports_ota: bool,
    /// zigbee2mqtt's `update.state` (`idle`, `available`, `updating`, `scheduled`), if any.
    pub z2m_state: Option<String>,
    /// When the device was last heard from, in Unix milliseconds.
    pub last_seen_ms: Option<i64>,
}

/// A firmware image that the agent downloaded and verified (sha256, signature) before any byte
/// reaches a device. Transports receive only verified images.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    /// Firmware id at the server.
    pub firmware_id: String,
    /// The whole file, exactly as registered at the server.
    pub bytes: Bytes,
    /// Lowercase hex sha256 of `bytes`.
    pub sha256: String,
    /// Lowercase hex MD5 of `bytes`.
    pub md5: String,
    /// Human version of the firmware.
    pub version: String,
    /// Zigbee OTA file version, for Zigbee images.
    pub file_version: Option<u32>,
}

/// What the core asks a transport to do for one task.
#[derive(Debug, Clone)]
pub struct UpdateJob {
    /// Task id at the server (used for logs, image URLs and correlation).
    pub task_id: String,
    /// Attempt number of this task, starting at 1.
    pub attempt: u32,
    /// The device, by its `local_id`.
    pub device: String,
    /// The verified image.
    pub image: Arc<VerifiedImage>,
    /// Install an older version on purpose.
    pub downgrade: bool,
    /// For sleepy devices: schedule the update for the device's next wake-up instead of now.
    pub schedule: bool,
    /// The transfer budget: give up when the transfer has not ended this long after it started
    /// (the first image byte; for zigbee2mqtt the request or the wake-up). Waits before it (for
    /// a wake-up, for the network's update slot) do not count. Once the point of no return is
    /// passed the attempt is not cut short: its real outcome is reported.
    pub timeout: Duration,
    /// The wake-up budget: how long a sleepy device may take to wake up (and the job to wait for
    /// the network's update slot) before the attempt fails with 5016.
    pub wake_timeout: Duration,
    /// The attempt's point of no return (see the module documentation).
    pub commit: Commitment,
}

/// The default wake-up budget: 7 days.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How far an attempt got with respect to its point of no return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommitStage {
    /// Nothing irrevocable has happened: the device keeps its firmware.
    Before,
    /// The irrevocable step was about to happen (or happened): the device may take the image.
    Committing,
    /// The device accepted the image.
    Committed,
}

/// Where the core keeps an attempt's marks (its journal).
pub trait CommitLog: Send + Sync + std::fmt::Debug {
    /// Records durably that the irrevocable step is about to happen, with the transport's
    /// `note` for a restarted agent. Returns once it is on disk; an error means the step must
    /// not be taken.
    fn committing(&self, note: serde_json::Value) -> BoxFuture<'_, Result<(), String>>;

    /// Records durably that the device accepted the image.
    fn committed(&self) -> BoxFuture<'_, Result<(), String>>;
}

const NOT_TAKEN: u8 = 3;

/// An attempt's point of no return, shared by the transport (which passes it) and the core
/// (which keeps it durably and reads it when the attempt ends). Clones share the state.
#[derive(Debug, Clone)]
pub struct Commitment {
    log: Option<Arc<dyn CommitLog>>,
    state: Arc<AtomicU8>,
}

impl Default for Commitment {
    fn default() -> Self {
        Self::untracked()
    }
}

impl Commitment {
    /// Marks kept in memory only (a transport used without the agent's core, tests).
    pub fn untracked() -> Self {
        Self {
            log: None,
            state: Arc::new(AtomicU8::new(0)),
        }
    }

    /// Marks kept in `log`, starting at `stage` (an attempt recovered after a restart).
    pub fn new(log: Arc<dyn CommitLog>, stage: CommitStage) -> Self {
        Self {
            log: Some(log),
            state: Arc::new(AtomicU8::new(stage as u8)),
        }
    }

    /// Where the attempt stands.
    pub fn stage(&self) -> CommitStage {
        match self.state.load(Ordering::SeqCst) {
            0 => CommitStage::Before,
            1 | NOT_TAKEN => CommitStage::Committing,
            _ => CommitStage::Committed,
        }
    }

    /// Asks for the durable committing mark right before the point of no return, with what a
    /// restarted agent needs to know (`note`). Asked again (a re-sent schedule), it returns at
    /// once. An error (the journal could not be written) means: do not take the step; nothing
    /// irrevocable happened, the error is 5010 and may be retried.
    pub async fn committing(&self, note: serde_json::Value) -> Result<(), TaskError> {
        if self.stage() != CommitStage::Before {
            // A step taken again after the device was seen not to take the image (a schedule
            // armed again): the journal holds the mark already, the step is irrevocable again.
            let _ = self
                .state
                .compare_exchange(NOT_TAKEN, 1, Ordering::SeqCst, Ordering::SeqCst);
            return Ok(());
        }
        if let Some(log) = &self.log {
            log.committing(note).await.map_err(|e| {
                TaskError::new(
                    ErrorCode::SendFailed,
                    format!(
                        "the agent could not record the update in its journal ({e}); nothing \
                         irrevocable was sent to the device"
                    ),
                )
            })?;
        }
        let _ = self
            .state
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }

    /// The device accepted the image: asks for the durable committed mark. A journal failure is
    /// logged; the attempt goes on (a restart would then look at the device as after
    /// `committing`).
    pub async fn committed(&self) {
        if self.stage() == CommitStage::Committed {
            return;
        }
        if let Some(log) = &self.log
            && let Err(e) = log.committed().await
        {
            tracing::warn!(error = %e, "could not journal that the device accepted the image");
        }
        self.state.store(2, Ordering::SeqCst);
    }

    /// The transport found out that the device did not take the image after all (it refused
    /// it, or it still runs its old firmware and settled before accepting it): a failure is
    /// then retryable again. Ignored once the device accepted the image.
    pub fn not_taken(&self) {
        let _ = self
            .state
            .compare_exchange(1, NOT_TAKEN, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether a failure now must be reported as "the device may already run the new image"
    /// (never retried automatically): the point of no return was passed and nothing showed that
    /// the device did not take the image.
    pub fn may_have_image(&self) -> bool {
        matches!(self.state.load(Ordering::SeqCst), 1 | 2)
    }
}

/// Awaited once per attempt right before the point of no return (the last image block); an
/// error stops the attempt there, with nothing irrevocable sent.
pub type BeforeLastBlock<'a> = Box<dyn FnOnce() -> BoxFuture<'a, Result<(), String>> + Send + 'a>;

/// The hook that asks `commit` for its committing mark with `note`.
pub fn committing_hook(commit: &Commitment, note: serde_json::Value) -> BeforeLastBlock<'static> {
    let commit = commit.clone();
    Box::new(move || Box::pin(async move { commit.committing(note).await.map_err(|e| e.message) }))
}

/// Runs `work` under a transfer budget of `limit`: it starts when `started` first holds an
/// instant (the transfer began) and is enforced only while `commit` is before its point of no
/// return; expiring there drops `work` and answers `expired()`. After the point of no return the
/// real outcome is awaited (each protocol phase has its own timeouts).
pub(crate) async fn under_budget<T>(
    work: impl std::future::Future<Output = Result<T, TaskError>>,
    limit: Duration,
    mut started: watch::Receiver<Option<tokio::time::Instant>>,
    commit: &Commitment,
    expired: impl FnOnce() -> TaskError,
) -> Result<T, TaskError> {
    tokio::pin!(work);
    let mut enforce = true;
    loop {
        let since = *started.borrow_and_update();
        let expiry = async move {
            match since {
                Some(t) if enforce => tokio::time::sleep_until(t + limit).await,
                _ => futures::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut work => return r,
            r = started.changed(), if enforce => if r.is_err() { enforce = false },
            () = expiry => {
                if commit.stage() == CommitStage::Before {
                    return Err(expired());
                }
                tracing::info!("transfer budget used up after the point of no return: waiting for the device's outcome");
                enforce = false;
            }
        }
    }
}

/// Runs a device check under the core's `deadline`: a check still running then is dropped and
/// answered [`ErrorCode::BulkCheckTimeout`] with the message `silent` gives.
pub(crate) async fn check_within(
    deadline: Duration,
    check: impl std::future::Future<Output = Result<CheckReport, TaskError>>,
    silent: impl FnOnce() -> String,
) -> Result<CheckReport, TaskError> {
    tokio::time::timeout(deadline, check)
        .await
        .unwrap_or_else(|_| Err(TaskError::new(ErrorCode::BulkCheckTimeout, silent())))
}

/// An attempt that was running when the agent stopped, handed to [`Transport::recover`].
#[derive(Debug, Clone)]
pub struct RecoverJob {
    /// Task id at the server.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// The device, by its `local_id`.
    pub device: String,
    /// The firmware's version at the server.
    pub target_version: String,
    /// The firmware's Zigbee OTA file version, for Zigbee images.
    pub target_file_version: Option<u32>,
    /// The note the transport gave with the committing mark (`None` before it).
    pub note: Option<serde_json::Value>,
    /// The transfer budget (as in [`UpdateJob::timeout`]).
    pub timeout: Duration,
    /// The wake-up budget (as in [`UpdateJob::wake_timeout`]).
    pub wake_timeout: Duration,
    /// The attempt's marks, at the stage the journal holds.
    pub commit: Commitment,
}

/// A progress report from a running transfer, in the product's status model.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferProgress {
    /// 100 preparing at the site, 5 waiting for wake-up, 2 updating, 6 downloaded.
    pub status: UpgradeStatus,
    /// Percent done, 0–100, when known.
    pub percent: Option<f32>,
    /// Estimated seconds remaining, when known.
    pub remaining_s: Option<u32>,
    /// Bytes delivered to the device so far.
    pub bytes_sent: u64,
    /// Bytes to deliver in total.
    pub bytes_total: u64,
    /// Short human detail ("authenticating", "waiting for the device to come back").
    pub detail: String,
}

/// Where a transport sends progress. Unbounded so a slow server link never stalls a device.
pub type ProgressSink = mpsc::UnboundedSender<TransferProgress>;

/// Versions before and after, like zigbee2mqtt's `ota_update/update` response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VersionInfo {
    /// Human version string.
    pub version: Option<String>,
    /// Zigbee OTA file version.
    pub file_version: Option<u32>,
    /// Zigbee software build id.
    pub software_build_id: Option<String>,
    /// Zigbee date code.
    pub date_code: Option<String>,
}

/// A successful update.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateReport {
    /// What the device ran before.
    pub from: VersionInfo,
    /// What the device runs now.
    pub to: VersionInfo,
    /// Bytes sent on the wire to the device (after compression).
    pub wire_bytes: u64,
}

/// The answer to a check of one device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckReport {
    /// The device answered.
    pub reachable: bool,
    /// What it reported about itself (version, battery, signal), as fresh as the check.
    pub device: DeviceReport,
    /// zigbee2mqtt's own opinion whether an update is available, when it has one.
    pub update_available: Option<bool>,
}

/// One transport instance, as the agent's core sees it.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// The kind.
    fn kind(&self) -> TransportKind;

    /// The instance name (zigbee2mqtt network name, `esphome`, `serial`).
    fn instance(&self) -> &str;

    /// The devices of this transport; the receiver sees every change.
    fn inventory(&self) -> watch::Receiver<Vec<DeviceReport>>;

    /// Whether [`Transport::inventory`] is the whole list of this transport's devices. A bridge
    /// that has not yet published its device list (zigbee2mqtt before its retained
    /// `bridge/devices` arrives) answers false, and the agent then reports no device of the site
    /// as gone.
    fn inventory_complete(&self) -> bool {
        true
    }

    /// Asks the device (through its bridge) for its current state, within `deadline`.
    fn check<'a>(
        &'a self,
        device: &'a str,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<CheckReport, TaskError>>;

    /// Installs the job's image on the device, reporting progress. Honours `cancel` where the
    /// transport can stop safely (before any byte was sent, or while waiting for a wake-up);
    /// once the device may have committed the image, cancel is ignored and the outcome reported.
    /// Asks `job.commit` for the committing mark right before its point of no return and for the
    /// committed mark once the device accepted the image.
    fn update<'a>(
        &'a self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>>;

    /// Finds out how an attempt that was running when the agent stopped ended, by looking at
    /// the device; never sends the image again. Success when the device runs the target; a
    /// failure marked [`Commitment::not_taken`] when it certainly did not take the image. The
    /// default cannot look: the attempt is reported interrupted (retryable only if the
    /// committing mark was never written).
    fn recover<'a>(
        &'a self,
        job: RecoverJob,
        _progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        Box::pin(async move {
            Err(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted during the update of {}; this transport cannot look at \
                     the device",
                    job.device
                ),
            ))
        })
    }

    /// Looks at these devices now (the server waits for them) and updates the inventory with
    /// what it finds. The default does nothing: the inventory is live.
    fn probe<'a>(&'a self, _devices: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Whether `device` sleeps: it answers only when it wakes up by itself (a battery Zigbee
    /// end device), so a check is answered "awaiting wake-up" and asked again when it next
    /// talks.
    fn is_sleepy(&self, _device: &str) -> bool {
        false
    }

    /// How the site can watch `device`'s health after an update. The default: reachability
    /// only (the device ends "unconfirmed" unless the rollout accepts reachability).
    fn observation(&self, _device: &str) -> Observation {
        Observation::Reachability
    }

    /// The last look of a health window that began at `since`, within `deadline`. A transport
    /// whose healthy devices may stay silent for a whole window asks the device here; the
    /// default is [`Transport::look`].
    fn last_look<'a>(
        &'a self,
        device: &'a str,
        _since: tokio::time::Instant,
        deadline: Duration,
    ) -> BoxFuture<'a, HealthLook> {
        self.look(device, deadline)
    }

    /// One look at `device`'s health, within `deadline`. The default: whether the inventory
    /// reports it reachable.
    fn look<'a>(&'a self, device: &'a str, _deadline: Duration) -> BoxFuture<'a, HealthLook> {
        Box::pin(async move {
            let reachable = self
                .inventory()
                .borrow()
                .iter()
                .any(|r| r.local_id == device && r.reachable);
            HealthLook::Reachable(reachable)
        })
    }

    /// Resolves when `device` next talks (any message of it reaches the transport). The
    /// default never resolves.
    fn next_contact<'a>(&'a self, _device: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(futures::future::pending())
    }
}

/// The wall clock in Unix milliseconds (`None` before 1970 or past `i64`): the one place the
/// agent reads it, for `last_seen_ms` and the timestamps of its reports.
pub(crate) fn unix_ms() -> Option<i64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Changes one device's report in a transport's fixed list (configured ESPHome devices, serial
/// ports) and publishes the whole list on `inventory` when it differs from what was published.
/// Returns the changed report.
pub(crate) fn update_report(
    reports: &Mutex<Vec<DeviceReport>>,
    inventory: &watch::Sender<Vec<DeviceReport>>,
    idx: usize,
    f: impl FnOnce(&mut DeviceReport),
) -> DeviceReport {
    let mut reports = reports.locked();
    f(&mut reports[idx]);
    let report = reports[idx].clone();
    let snapshot = reports.clone();
    drop(reports);
    inventory.send_if_modified(|cur| {
        if *cur == snapshot {
            false
        } else {
            *cur = snapshot;
            true
        }
    });
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_taken_again_after_not_taken_is_irrevocable_again() {
        let c = Commitment::untracked();
        assert!(!c.may_have_image());
        c.committing(serde_json::Value::Null).await.unwrap();
        assert!(c.may_have_image());
        c.not_taken();
        assert!(!c.may_have_image());
        assert_eq!(c.stage(), CommitStage::Committing);
        // A schedule armed again.
        c.committing(serde_json::Value::Null).await.unwrap();
        assert!(c.may_have_image());
        c.committed().await;
        c.not_taken();
        assert!(c.may_have_image(), "accepted stays accepted");
    }
}

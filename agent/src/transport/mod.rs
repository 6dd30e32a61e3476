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

pub mod esphome;
pub mod serial;
pub mod zigbee;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use ota_domain::status::{TaskError, UpgradeStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Which kind of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Zigbee devices through a zigbee2mqtt instance over MQTT.
    Zigbee2Mqtt,
    /// ESPHome devices through the native network OTA protocol (or the web_server fallback).
    Esphome,
    /// ESP chips on a serial port, through the ROM bootloader.
    Serial,
}

/// How a device is powered; battery devices may be sleepy and need a scheduled update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PowerSource {
    /// Not known.
    #[default]
    Unknown,
    /// Mains or DC powered: always listening.
    Mains,
    /// Battery powered: often asleep.
    Battery,
}

/// How the signal of a device is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Zigbee link quality indicator, 0–255.
    LinkQuality(u8),
    /// Wi-Fi RSSI in dBm (negative).
    RssiDbm(i16),
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
    /// Give up after this long (the per-device timeout of the rollout).
    pub timeout: Duration,
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
    fn update<'a>(
        &'a self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>>;
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
    let mut reports = reports.lock().unwrap_or_else(|e| e.into_inner());
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

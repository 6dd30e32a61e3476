//! Configuration of the zigbee2mqtt simulator: the bridge, its timings and its devices.
//!
//! What it does: describe a simulated zigbee2mqtt instance (broker, base topic, API version,
//! zigbee2mqtt's OTA settings) and its Zigbee devices (identity, power, sleepiness, how they
//! behave during an OTA), with constructors for the usual kinds.
//! What it does not do: run anything (see [`crate::z2m::Z2mSim`]).

use std::time::Duration;

use ota_devproto::z2m::progress;
use ota_devproto::z2m::{DeviceType, Z2mVersion};

/// How a simulated device behaves when it is updated.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Behavior {
    /// Answers, downloads every block, reports SUCCESS, restarts on the new version.
    #[default]
    Normal,
    /// Downloads everything, then ends with this ZCL status (`ABORT`, `INVALID_IMAGE`, …):
    /// `… failed with reason: <status>`.
    EndStatus(String),
    /// Never answers the image notify: `Device didn't respond to OTA request` after 60 s.
    NeverResponds,
    /// Stops asking for blocks at this percentage: `did not start/finish firmware download`
    /// after the block request timeout.
    StallAt(f64),
}

impl Behavior {
    /// The device aborts at 100 %.
    pub fn abort_at_end() -> Self {
        Self::EndStatus("ABORT".into())
    }
}

/// A simulated Zigbee device behind the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDevice {
    /// IEEE address, `0x` + 16 hex digits.
    pub ieee: String,
    /// Friendly name.
    pub friendly_name: String,
    /// Network (short) address.
    pub network_address: u16,
    /// Router or end device.
    pub device_type: DeviceType,
    /// zigbee2mqtt's `power_source` text (`Mains (single phase)`, `Battery`, …).
    pub power_source: String,
    /// genBasic modelId.
    pub model_id: String,
    /// genBasic manufacturerName.
    pub manufacturer: String,
    /// zigbee2mqtt definition model.
    pub model: String,
    /// zigbee2mqtt definition vendor.
    pub vendor: String,
    /// Zigbee manufacturer code of its OTA images.
    pub manufacturer_code: u16,
    /// OTA image type.
    pub image_type: u16,
    /// Installed OTA file version.
    pub file_version: u32,
    /// genBasic swBuildId (`None`: unreadable).
    pub software_build_id: Option<String>,
    /// genBasic dateCode (`None`: unreadable).
    pub date_code: Option<String>,
    /// The definition has `ota` and the device an OTA cluster.
    pub supports_ota: bool,
    /// Battery percentage (battery devices).
    pub battery: Option<u8>,
    /// Link quality.
    pub linkquality: u8,
    /// `None`: always listening (routers, mains). `Some`: sleepy; it wakes every
    /// `wake_interval` (or only when the test calls [`crate::z2m::Z2mSim::wake`] when `None`).
    pub sleepy: Option<Option<Duration>>,
    /// OTA behaviour.
    pub behavior: Behavior,
    /// The device's `maximumDataSize` in its block requests.
    pub max_data_size: u32,
    /// How long after the upgrade end the device announces itself (herdsman waits at most
    /// 120 s; `None`: it never announces, so the full wait passes).
    pub announce_after: Option<Duration>,
    /// Test gate: the transfer pauses at this percentage (100: after the 100 % report, during
    /// the announce wait) until [`crate::z2m::Z2mSim::release`]. The device's clock stands
    /// still while held: no block timeout runs.
    pub hold_at: Option<f64>,
}

impl SimDevice {
    /// A mains-powered router (a bulb): always listening.
    pub fn mains_router(ieee: &str, friendly_name: &str) -> Self {
        Self {
            ieee: ieee.to_string(),
            friendly_name: friendly_name.to_string(),
            network_address: network_address_of(ieee),
            device_type: DeviceType::Router,
            power_source: "Mains (single phase)".into(),
            model_id: "TRADFRI bulb E27 CWS opal 600lm".into(),
            manufacturer: "IKEA of Sweden".into(),
            model: "LED1624G9".into(),
            vendor: "IKEA".into(),
            manufacturer_code: 0x117C,
            image_type: 0x2803,
            file_version: 0x2309_3620,
            software_build_id: Some("2.3.093".into()),
            date_code: Some("20220101".into()),
            supports_ota: true,
            battery: None,
            linkquality: 120,
            sleepy: None,
            behavior: Behavior::Normal,
            max_data_size: 64,
            announce_after: Some(Duration::from_secs(15)),
            hold_at: None,
        }
    }

    /// A sleepy battery end device (a remote): it wakes every `wake_interval`, or only when the
    /// test wakes it (`None`).
    pub fn sleepy_end_device(
        ieee: &str,
        friendly_name: &str,
        wake_interval: Option<Duration>,
    ) -> Self {
        Self {
            device_type: DeviceType::EndDevice,
            power_source: "Battery".into(),
            model_id: "TRADFRI remote control".into(),
            model: "E1524/E1810".into(),
            image_type: 0x11C1,
            file_version: 0x2403_0011,
            software_build_id: Some("24.4.11".into()),
            battery: Some(87),
            linkquality: 90,
            sleepy: Some(wake_interval),
            announce_after: Some(Duration::from_secs(5)),
            ..Self::mains_router(ieee, friendly_name)
        }
    }

    /// A device zigbee2mqtt cannot update (no OTA definition, no OTA cluster).
    pub fn without_ota(ieee: &str, friendly_name: &str) -> Self {
        Self {
            model_id: "lumi.sensor_switch".into(),
            manufacturer: "LUMI".into(),
            model: "WXKG01LM".into(),
            vendor: "Aqara".into(),
            manufacturer_code: 0x115F,
            supports_ota: false,
            ..Self::mains_router(ieee, friendly_name)
        }
    }

    /// With this behaviour.
    pub fn with_behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// With this installed file version.
    pub fn with_file_version(mut self, v: u32) -> Self {
        self.file_version = v;
        self
    }

    /// With this manufacturer code and image type.
    pub fn with_image_ids(mut self, manufacturer_code: u16, image_type: u16) -> Self {
        self.manufacturer_code = manufacturer_code;
        self.image_type = image_type;
        self
    }

    /// Held at `percent` until released.
    pub fn held_at(mut self, percent: f64) -> Self {
        self.hold_at = Some(percent);
        self
    }

    /// Whether it sleeps.
    pub fn is_sleepy(&self) -> bool {
        self.sleepy.is_some()
    }
}

fn network_address_of(ieee: &str) -> u16 {
    let digits = ieee.trim_start_matches("0x");
    let tail = &digits[digits.len().saturating_sub(4)..];
    u16::from_str_radix(tail, 16).unwrap_or(0x1234)
}

/// zigbee2mqtt's OTA settings and the simulator's own delays.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// `ota.image_block_response_delay`: spacing of block responses (one block each).
    pub image_block_response_delay: Duration,
    /// `ota.default_maximum_data_size`: bytes per block (capped by the device's size).
    pub default_maximum_data_size: u32,
    /// `ota.image_block_request_timeout`: wait for each next block request.
    pub image_block_request_timeout: Duration,
    /// Wait for the queryNextImageRequest after an image notify (60 s).
    pub query_timeout: Duration,
    /// Wait for the device announce after the upgrade end (120 s).
    pub announce_wait: Duration,
    /// Minimum spacing of progress reports (30 s).
    pub progress_interval: Duration,
    /// How long a mains device takes to answer an image notify.
    pub query_delay: Duration,
    /// How long a sleepy device stays awake after waking up.
    pub awake_window: Duration,
    /// `ota.update_check_interval`: device-initiated checks closer than this are ignored.
    pub update_check_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            image_block_response_delay: Duration::from_millis(progress::DEFAULT_RESPONSE_DELAY_MS),
            default_maximum_data_size: progress::DEFAULT_BASE_SIZE,
            image_block_request_timeout: Duration::from_millis(
                progress::DEFAULT_BLOCK_REQUEST_TIMEOUT_MS,
            ),
            query_timeout: Duration::from_millis(progress::QUERY_NEXT_IMAGE_TIMEOUT_MS),
            announce_wait: Duration::from_millis(progress::DEVICE_ANNOUNCE_WAIT_MS),
            progress_interval: Duration::from_millis(progress::PROGRESS_INTERVAL_MS),
            query_delay: Duration::from_millis(500),
            awake_window: Duration::from_secs(10),
            update_check_interval: Duration::from_secs(1440 * 60),
        }
    }
}

/// How `last_seen` is published (`advanced.last_seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastSeen {
    /// Not published.
    Disable,
    /// `2026-01-01T00:00:00.000Z`.
    #[default]
    Iso8601,
    /// Unix milliseconds.
    Epoch,
}

/// An image in the simulated bridge's OTA index (what zigbee2mqtt would find in zigbee-OTA's
/// `index.json`): used by `check`, by update requests without `url`/`hex`, and by 2.0–2.7.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexImage {
    /// The URL zigbee2mqtt reports as `source` / `latest_source`.
    pub url: String,
    /// Release notes, when the index has them.
    pub release_notes: Option<String>,
    /// The whole file.
    pub bytes: Vec<u8>,
}

/// A simulated zigbee2mqtt instance.
#[derive(Debug, Clone)]
pub struct Z2mSimConfig {
    /// Broker host.
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// MQTT credentials.
    pub credentials: Option<(String, String)>,
    /// MQTT client id.
    pub client_id: String,
    /// Base topic (`zigbee2mqtt`).
    pub base_topic: String,
    /// Which API generation to speak.
    pub version: Z2mVersion,
    /// The devices (the coordinator is added by the simulator).
    pub devices: Vec<SimDevice>,
    /// Timings.
    pub timings: Timings,
    /// Wall-clock time at simulator start, Unix ms (the simulator's clock is tokio's).
    pub epoch_ms: i64,
    /// zigbee2mqtt's data directory, as it appears in schedule responses for `hex` images.
    pub data_path: String,
    /// `advanced.last_seen`.
    pub last_seen: LastSeen,
    /// `ota.disable_automatic_update_check`.
    pub disable_automatic_update_check: bool,
    /// Device option `retain` for state messages (zigbee2mqtt's default: false).
    pub retain_device_state: bool,
    /// The bridge's OTA index.
    pub index: Vec<IndexImage>,
    /// A scheduled run that keeps failing is retried at most this often (zigbee2mqtt retries
    /// forever; the cap keeps a paused clock from spinning).
    pub scheduled_retry_limit: u32,
}

impl Z2mSimConfig {
    /// A bridge on `host:port` with zigbee2mqtt's defaults and no devices.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            broker_host: host.into(),
            broker_port: port,
            credentials: None,
            client_id: "zigbee2mqtt-sim".into(),
            base_topic: "zigbee2mqtt".into(),
            version: Z2mVersion::V2_8Plus,
            devices: Vec::new(),
            timings: Timings::default(),
            epoch_ms: 1_767_225_600_000,
            data_path: "/app/data".into(),
            last_seen: LastSeen::Iso8601,
            disable_automatic_update_check: false,
            retain_device_state: false,
            index: Vec::new(),
            scheduled_retry_limit: 5,
        }
    }

    /// With a device.
    pub fn with_device(mut self, device: SimDevice) -> Self {
        self.devices.push(device);
        self
    }

    /// With this base topic (and a client id derived from it).
    pub fn with_base_topic(mut self, base: &str) -> Self {
        self.base_topic = base.to_string();
        self.client_id = format!("zigbee2mqtt-sim-{}", base.replace('/', "-"));
        self
    }

    /// Speaking this API generation.
    pub fn with_version(mut self, version: Z2mVersion) -> Self {
        self.version = version;
        self
    }
}

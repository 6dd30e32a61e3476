//! The rollout specification as the domain sees it: validated, with defaults resolved.
//!
//! The gRPC layer converts `ota.v1.RolloutSpec` into [`RolloutSpec`] with
//! [`RolloutSpec::validate`]; the result is stored in the `RolloutCreated` event, so these types
//! follow the event compatibility rules (never rename, reorder or remove a field).

use serde::{Deserialize, Serialize};

use crate::model::Transport;

/// How an update is offered (Tuya `upgradeType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum UpgradeType {
    /// 0: offered; runs when a rollout or operator starts it.
    #[default]
    Notify,
    /// 2: forced.
    Forced,
    /// 3: check only; install nothing.
    Check,
}

impl UpgradeType {
    /// Tuya number.
    pub fn code(self) -> u32 {
        match self {
            Self::Notify => 0,
            Self::Forced => 2,
            Self::Check => 3,
        }
    }

    /// From the Tuya number.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Notify),
            2 => Some(Self::Forced),
            3 => Some(Self::Check),
            _ => None,
        }
    }
}

/// Which devices a rollout targets. Every non-empty field must match; list fields match any of
/// their values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Selector {
    /// Sites.
    pub site_ids: Vec<String>,
    /// Transports.
    pub transports: Vec<Transport>,
    /// Models.
    pub models: Vec<String>,
    /// Vendors.
    pub vendors: Vec<String>,
    /// Zigbee manufacturer code.
    pub manufacturer_code: Option<u16>,
    /// Zigbee image type.
    pub image_type: Option<u16>,
    /// ESP chips.
    pub chips: Vec<String>,
    /// Minimum current version, inclusive.
    pub min_version: Option<String>,
    /// Maximum current version, inclusive.
    pub max_version: Option<String>,
    /// Devices must carry all of these tags.
    pub tags: Vec<String>,
    /// Explicit device ids.
    pub device_ids: Vec<String>,
    /// Devices never selected.
    pub exclude_device_ids: Vec<String>,
    /// Transport instances (zigbee2mqtt networks).
    pub networks: Vec<String>,
}

/// A count or a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Threshold {
    /// A number of devices.
    Count(u32),
    /// A percentage (0–100) of the stage's devices.
    Percent(f64),
}

impl Threshold {
    /// The threshold as a device count for a stage of `n` devices (percentages round up, so
    /// "10 % of 5 devices" is 1 device, never 0).
    pub fn of(self, n: u32) -> u32 {
        match self {
            Self::Count(c) => c,
            Self::Percent(p) => {
                let exact = f64::from(n) * p / 100.0;
                // Round up, with a tolerance so 10 % of 10 is 1, not 2 from float noise.
                let rounded = (exact - 1e-9).ceil().max(0.0);
                rounded as u32
            }
        }
    }
}

/// How large a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum StageSize {
    /// A fixed number of devices in this stage.
    Count(u32),
    /// The share of all targets reached by the end of this stage (5, 25, 100).
    CumulativePercent(f64),
}

/// What to do when a stage crosses its failure threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FailureAction {
    /// Pause the rollout.
    #[default]
    Pause,
    /// Abort the rollout.
    Abort,
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Name ("canary", "wave-1").
    pub name: String,
    /// Size.
    pub size: StageSize,
    /// Successes needed to advance; `None`: every device of the stage that was not skipped.
    pub success_threshold: Option<Threshold>,
    /// Failures that stop the stage; `None`: 1 for stages of ≤ 10 devices, else 10 %.
    pub failure_threshold: Option<Threshold>,
    /// What stopping means.
    pub on_failure: FailureAction,
    /// Batch-check timeout of the stage: devices unfinished this long after the stage started
    /// count as timed out (5016). 0: no deadline.
    pub deadline_s: u32,
    /// Soak time after success.
    pub soak_s: u32,
}

/// Concurrency limits, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// Across the rollout.
    pub global: u32,
    /// Per site.
    pub per_site: u32,
    /// Per zigbee2mqtt network.
    pub per_zigbee_network: u32,
    /// ESPHome devices per site.
    pub per_esphome_site: u32,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            global: 50,
            per_site: 10,
            per_zigbee_network: 1,
            per_esphome_site: 4,
        }
    }
}

/// Retries for transient errors, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts including the first.
    pub max_attempts: u32,
    /// First backoff in seconds; doubles per attempt.
    pub initial_backoff_s: u32,
    /// Backoff cap in seconds.
    pub max_backoff_s: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_s: 30,
            max_backoff_s: 900,
        }
    }
}

/// A daily window in the site's local time, in minutes after midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Opens at (minutes after local midnight).
    pub start_minute: u16,
    /// Closes at; smaller than `start_minute` when the window crosses midnight.
    pub end_minute: u16,
    /// Days it opens on (0 Sunday .. 6 Saturday); empty: every day.
    pub weekdays: Vec<u8>,
}

/// Checks right before each dispatch, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preconditions {
    /// Battery devices below are skipped with a reminder.
    pub min_battery_percent: u8,
    /// Zigbee link quality below waits for confirmation (5005).
    pub min_linkquality: u8,
    /// Wi-Fi RSSI below waits for confirmation (5005).
    pub min_rssi_dbm: i16,
}

impl Default for Preconditions {
    fn default() -> Self {
        Self {
            min_battery_percent: 70,
            min_linkquality: 30,
            min_rssi_dbm: -85,
        }
    }
}

/// A validated rollout specification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// Human name.
    pub name: String,
    /// Firmware id.
    pub firmware_id: String,
    /// Targets.
    pub selector: Selector,
    /// Stages; the last reaches 100 %.
    pub stages: Vec<StageSpec>,
    /// Concurrency.
    pub concurrency: Concurrency,
    /// Per-device timeout in seconds; 0: by transport (30 min Zigbee, 10 min otherwise).
    pub device_timeout_s: u32,
    /// Retries.
    pub retry: RetryPolicy,
    /// Maintenance window, if any.
    pub window: Option<MaintenanceWindow>,
    /// Upgrade type.
    pub upgrade_type: UpgradeType,
    /// Downgrades allowed.
    pub allow_downgrade: bool,
    /// Preconditions.
    pub preconditions: Preconditions,
    /// Run a batch check before the first stage.
    pub batch_check: bool,
    /// Its timeout in seconds.
    pub batch_check_timeout_s: u32,
}

/// Per-device timeout when the spec leaves it at 0.
pub fn default_device_timeout_s(transport: Transport) -> u32 {
    match transport {
        Transport::Zigbee2Mqtt => 30 * 60,
        Transport::Esphome | Transport::Serial => 10 * 60,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_thresholds_round_up() {
        assert_eq!(Threshold::Percent(10.0).of(10), 1);
        assert_eq!(Threshold::Percent(10.0).of(5), 1);
        assert_eq!(Threshold::Percent(10.0).of(11), 2);
        assert_eq!(Threshold::Percent(100.0).of(7), 7);
        assert_eq!(Threshold::Percent(0.0).of(7), 0);
        assert_eq!(Threshold::Count(3).of(100), 3);
    }

    #[test]
    fn upgrade_type_numbers() {
        for t in [UpgradeType::Notify, UpgradeType::Forced, UpgradeType::Check] {
            assert_eq!(UpgradeType::from_code(t.code()), Some(t));
        }
        assert_eq!(UpgradeType::from_code(1), None);
    }
}

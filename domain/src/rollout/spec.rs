//! The rollout specification as the domain sees it: validated, with defaults resolved.
//!
//! The gRPC layer converts `ota.v1.RolloutSpec` into [`RolloutSpec`] with
//! [`RolloutSpec::validate`]; the result is stored in the `RolloutCreated` event, so these types
//! follow the event compatibility rules (never rename, reorder or remove a field).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::health::HealthPolicy;
use crate::model::Transport;
use crate::rollout::abort::AbortCriterion;
use crate::rollout::rate::Rate;
use crate::rollout::rollback::{Revert, RollbackScope};

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
    /// count as timed out (5016), except those asleep then (they finish later). 0: no deadline
    /// (only when written explicitly: the API's default is [`DEFAULT_STAGE_DEADLINE_S`]).
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

/// The gates checked right before each dispatch, defaults resolved; `None` switches a gate off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preconditions {
    /// Battery devices below are skipped with a reminder.
    pub min_battery_percent: Option<u8>,
    /// Zigbee link quality below waits for confirmation (5005).
    pub min_linkquality: Option<u8>,
    /// Wi-Fi RSSI below waits for confirmation (5005).
    pub min_rssi_dbm: Option<i16>,
}

impl Default for Preconditions {
    fn default() -> Self {
        Self {
            min_battery_percent: Some(70),
            min_linkquality: Some(30),
            min_rssi_dbm: Some(-85),
        }
    }
}

/// [`Preconditions`] as stored by [`RolloutSpecV1`]: every gate on, 0 meant the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionsV1 {
    /// See [`Preconditions`].
    pub min_battery_percent: u8,
    /// See [`Preconditions`].
    pub min_linkquality: u8,
    /// See [`Preconditions`].
    pub min_rssi_dbm: i16,
}

impl From<PreconditionsV1> for Preconditions {
    fn from(v1: PreconditionsV1) -> Self {
        Self {
            min_battery_percent: Some(v1.min_battery_percent),
            min_linkquality: Some(v1.min_linkquality),
            min_rssi_dbm: Some(v1.min_rssi_dbm),
        }
    }
}

/// What a stage does about devices waiting for a wake-up (status 5). They never count as
/// failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnAsleep {
    /// The stage waits for them (within its deadline) before the next stage starts.
    #[default]
    Wait,
    /// The next stage may start while they finish later.
    Continue,
}

/// The rollout-wide failure budget: failures (failed or timed out, stragglers of finished
/// stages included, failures accepted by a resume not) that pause the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum FailureBudget {
    /// 10 % of all targets (rounded up), and never below the largest stage failure limit, so
    /// the default never stops a stage before its own threshold would.
    #[default]
    Default,
    /// No rollout-wide budget.
    Off,
    /// This many devices, or this share of all targets.
    Limit(Threshold),
}

/// The default wake-up budget: a week.
pub const DEFAULT_WAKE_TIMEOUT_S: u32 = 7 * 24 * 3600;
/// The default stage deadline: a day.
pub const DEFAULT_STAGE_DEADLINE_S: u32 = 24 * 3600;

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
    /// Transfer budget per device in seconds, from the start of the transfer; 0: by transport
    /// (30 min Zigbee, 10 min otherwise).
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
    /// Wake-up budget per task in seconds; 0: [`DEFAULT_WAKE_TIMEOUT_S`].
    pub wake_timeout_s: u32,
    /// What a stage does about devices that sleep.
    pub on_asleep: OnAsleep,
    /// The rollout-wide failure budget.
    pub failure_budget: FailureBudget,
    /// IANA zone per site for the maintenance window (overrides what agents report).
    pub site_timezones: BTreeMap<String, String>,
    /// Abort criteria over the devices that finished, in the order they are evaluated.
    pub abort_criteria: Vec<AbortCriterion>,
    /// How many devices may start per minute, with an optional ramp (`None`: no limit beyond
    /// the concurrency).
    pub rate: Option<Rate>,
    /// Per-site canaries: when above 0, the first stage takes exactly this many devices from
    /// every transport instance of every site (each zigbee2mqtt network, a site's ESPHome
    /// devices, its serial ports), or all of an instance's devices when it has fewer, and the
    /// later stages take the rest. The first stage's `size` is then not used (the API refuses a
    /// spec that gives both and stores `Count(0)` there). See [`crate::rollout::plan`].
    pub canary_per_site: u32,
    /// Which devices an automatic rollback reverts when the rollout's thresholds or criteria
    /// stop it (see [`crate::rollout::rollback`]).
    pub rollback: RollbackScope,
    /// Set only on a rollback that otad created: the rollout it reverts and the image each
    /// device gets back, resolved when it was created.
    pub reverts: Option<Revert>,
    /// The health gate: how long a device must stay healthy on the target version before its
    /// task counts as succeeded.
    pub health: HealthPolicy,
}

/// [`RolloutSpec`] as stored by `RolloutCreated` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpecV1 {
    /// See [`RolloutSpec`].
    pub name: String,
    /// See [`RolloutSpec`].
    pub firmware_id: String,
    /// See [`RolloutSpec`].
    pub selector: Selector,
    /// See [`RolloutSpec`].
    pub stages: Vec<StageSpec>,
    /// See [`RolloutSpec`].
    pub concurrency: Concurrency,
    /// See [`RolloutSpec`].
    pub device_timeout_s: u32,
    /// See [`RolloutSpec`].
    pub retry: RetryPolicy,
    /// See [`RolloutSpec`].
    pub window: Option<MaintenanceWindow>,
    /// See [`RolloutSpec`].
    pub upgrade_type: UpgradeType,
    /// See [`RolloutSpec`].
    pub allow_downgrade: bool,
    /// See [`RolloutSpec`].
    pub preconditions: PreconditionsV1,
    /// See [`RolloutSpec`].
    pub batch_check: bool,
    /// See [`RolloutSpec`].
    pub batch_check_timeout_s: u32,
}

impl From<RolloutSpecV1> for RolloutSpec {
    /// Rollouts created before v2 keep their behaviour: no rollout-wide budget, stage deadlines
    /// as written (0 was "none").
    fn from(v1: RolloutSpecV1) -> Self {
        Self {
            name: v1.name,
            firmware_id: v1.firmware_id,
            selector: v1.selector,
            stages: v1.stages,
            concurrency: v1.concurrency,
            device_timeout_s: v1.device_timeout_s,
            retry: v1.retry,
            window: v1.window,
            upgrade_type: v1.upgrade_type,
            allow_downgrade: v1.allow_downgrade,
            preconditions: v1.preconditions.into(),
            batch_check: v1.batch_check,
            batch_check_timeout_s: v1.batch_check_timeout_s,
            wake_timeout_s: 0,
            on_asleep: OnAsleep::Wait,
            failure_budget: FailureBudget::Off,
            site_timezones: BTreeMap::new(),
            abort_criteria: Vec::new(),
            rate: None,
            canary_per_site: 0,
            rollback: RollbackScope::None,
            reverts: None,
            health: HealthPolicy::OFF,
        }
    }
}

impl RolloutSpec {
    /// The wake-up budget in seconds, default resolved.
    pub fn wake_timeout_s(&self) -> u32 {
        if self.wake_timeout_s == 0 {
            DEFAULT_WAKE_TIMEOUT_S
        } else {
            self.wake_timeout_s
        }
    }

    /// The firmware `device_id` gets: its own previous image in a rollback, else the spec's.
    pub fn firmware_for(&self, device_id: &str) -> &str {
        self.reverts
            .as_ref()
            .and_then(|r| r.firmware.get(device_id))
            .unwrap_or(&self.firmware_id)
    }

    /// Every firmware the rollout installs.
    pub fn uses_firmware(&self, firmware_id: &str) -> bool {
        self.firmware_id == firmware_id
            || self
                .reverts
                .as_ref()
                .is_some_and(|r| r.firmware.values().any(|f| f == firmware_id))
    }
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

//! The stored events: every OTA fact the server records.
//!
//! # Compatibility rules
//! Events are the compatibility boundary of the whole system: a log written today must be
//! readable by every later `otad`. So:
//! - an event type is never renamed or removed, and a field is never renamed, reordered or
//!   removed;
//! - payloads are encoded with `postcard` (compact and fast to replay, but not self-describing),
//!   so *any* change to a payload struct — even adding an optional field — is a new schema
//!   version: bump the version in [`domain_events!`] and add an upcaster arm in
//!   [`DomainEvent::decode`]. When the new version only appends fields at the end of the
//!   payload, the arm decodes the old bytes followed by those fields' values for old events
//!   (`decode_appended`); otherwise keep the old struct as `…V<n>` and convert
//!   (`(type, old version) => decode old, convert`);
//! - `tests/golden_events.rs` decodes checked-in bytes of every event type and version, so an
//!   accidental change to a payload fails the build's tests.
//!
//! The store envelope (global seq, stream, stream version, type name, schema version, actor,
//! time) is the store's business; this module only turns payloads into bytes and back.
//!
//! # Streams
//! `firmware/<id>`, `device/<site>/<local>`, `task/<id>`, `rollout/<id>`, `site/<id>`,
//! `access/tokens` — see [`streams`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::health::{Health, HealthPolicy};
use crate::model::{
    AgentSource, DeviceFacts, EspFacts, FirmwareFormat, Labels, TransportInstance, VersionInfo,
    ZigbeeFacts,
};
use crate::rollout::abort::AbortCriterion;
use crate::rollout::rate::Rate;
use crate::rollout::rollback::{Revert, RollbackScope};
use crate::rollout::spec::{RolloutSpec, RolloutSpecV1, UpgradeType};
use crate::status::{ErrorCode, TaskError, UpgradeStatus};
use crate::time::UnixMillis;

/// Stream names.
pub mod split;

pub mod streams {
    /// Prefix of firmware streams.
    pub const FIRMWARE_PREFIX: &str = "firmware/";
    /// Prefix of device streams.
    pub const DEVICE_PREFIX: &str = "device/";
    /// Prefix of task streams.
    pub const TASK_PREFIX: &str = "task/";
    /// Prefix of rollout streams.
    pub const ROLLOUT_PREFIX: &str = "rollout/";
    /// Prefix of site streams.
    pub const SITE_PREFIX: &str = "site/";
    /// The stream of access tokens.
    pub const ACCESS: &str = "access/tokens";

    /// `firmware/<id>`.
    pub fn firmware(id: &str) -> String {
        format!("{FIRMWARE_PREFIX}{id}")
    }
    /// `device/<site>/<local>`.
    pub fn device(device_id: &str) -> String {
        format!("{DEVICE_PREFIX}{device_id}")
    }
    /// `task/<id>`.
    pub fn task(id: &str) -> String {
        format!("{TASK_PREFIX}{id}")
    }
    /// `rollout/<id>`.
    pub fn rollout(id: &str) -> String {
        format!("{ROLLOUT_PREFIX}{id}")
    }
    /// `site/<id>`.
    pub fn site(id: &str) -> String {
        format!("{SITE_PREFIX}{id}")
    }
}

// ---------------------------------------------------------------------------------------------
// Firmware
// ---------------------------------------------------------------------------------------------

/// A firmware image was validated and stored (content-addressed by sha256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirmwareRegistered {
    /// `fw-` + 16 hex of sha256.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// Human version.
    pub version: String,
    /// Format.
    pub format: FirmwareFormat,
    /// Tuya channel type number (3 Zigbee, 0 main module).
    pub channel: u32,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex digests.
    pub sha256: String,
    /// MD5.
    pub md5: String,
    /// SHA-512.
    pub sha512: String,
    /// Zigbee header facts.
    pub zigbee: Option<ZigbeeFacts>,
    /// ESP image facts.
    pub esp: Option<EspFacts>,
    /// Labels.
    pub labels: Labels,
    /// Release notes.
    pub release_notes: String,
}

/// An ed25519 signature over the firmware's sha256 was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareSignatureAdded {
    /// Signing key name.
    pub key_id: String,
    /// 64-byte signature.
    pub signature: Vec<u8>,
}

/// The firmware was removed from the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareDeleted {
    /// Why, if given.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Sites and agents
// ---------------------------------------------------------------------------------------------

/// A site's agent opened a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConnected {
    /// Installation id.
    pub agent_id: String,
    /// Agent version.
    pub agent_version: String,
    /// IANA zone.
    pub timezone: String,
    /// UTC offset in minutes when it connected.
    pub utc_offset_minutes: i32,
    /// Transport instances.
    pub transports: Vec<TransportInstance>,
    /// Remote address.
    pub peer: String,
}

/// A site's agent went away (stream closed, or heartbeats stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDisconnected {
    /// Installation id.
    pub agent_id: String,
    /// Why ("stream closed", "no heartbeat for 45 s").
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// A site reported a device (first sighting or a change of its facts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReported {
    /// Everything the site knows about the device now.
    pub facts: DeviceFacts,
    /// The agent report this came from.
    pub source: Option<AgentSource>,
}

/// A site no longer has the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRemoved {
    /// The agent report this came from.
    pub source: Option<AgentSource>,
}

/// The outcome of asking a device (through its site) for its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceChecked {
    /// The check (a single check, a batch check, or a rollout's batch check).
    pub check_id: String,
    /// The firmware it was checked against, if any.
    pub firmware_id: Option<String>,
    /// 0 none, 1 available, or 4 failure (see `error`).
    pub status: UpgradeStatus,
    /// Whether the device answered.
    pub reachable: bool,
    /// The version it runs.
    pub current: VersionInfo,
    /// The bridge's own opinion, if it has one.
    pub update_available: Option<bool>,
    /// Why the check failed (5012, 5019, 5020, ...).
    pub error: Option<TaskError>,
    /// The agent report this came from; `None` for checks the server ended (timeouts).
    pub source: Option<AgentSource>,
}

/// An operator switched auto-upgrade for the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoUpgradeSet {
    /// On or off.
    pub enabled: bool,
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

/// A device update was created (by a rollout, an operator, or auto-upgrade). Status 13.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCreated {
    /// Task id.
    pub task_id: String,
    /// Device id.
    pub device_id: String,
    /// Site id.
    pub site_id: String,
    /// Rollout id, if any.
    pub rollout_id: Option<String>,
    /// Stage index within the rollout.
    pub stage: u32,
    /// Firmware id.
    pub firmware_id: String,
    /// Version the task installs.
    pub target: VersionInfo,
    /// Upgrade type.
    pub upgrade_type: UpgradeType,
    /// Install an older version on purpose.
    pub downgrade: bool,
    /// Attempts including the first.
    pub max_attempts: u32,
    /// Backoff after the first transient failure, seconds.
    pub initial_backoff_s: u32,
    /// Backoff cap, seconds.
    pub max_backoff_s: u32,
    /// Transfer budget, seconds, from the start of the transfer; 0: by transport.
    pub timeout_s: u32,
    /// Serial: explicit flash offset.
    pub flash_offset: Option<u32>,
    /// Created by the auto-upgrade switch.
    pub auto: bool,
    /// Wake-up budget, seconds, while the device sleeps; 0: 7 days.
    pub wake_timeout_s: u32,
    /// The version the device ran when the task was created: what a rollback restores. `None`
    /// in tasks recorded before schema v3.
    pub from: Option<VersionInfo>,
    /// The catalog's image of that version, when the catalog had it then.
    pub from_firmware_id: Option<String>,
}

/// The server is checking preconditions right before dispatch. Status 14.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPreparing {}

/// A precondition holds the task back: weak signal (5005, waits for confirmation), offline
/// (5012, retried later), site disconnected (5020, retried later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHeld {
    /// Why.
    pub error: TaskError,
    /// Words for a person.
    pub remind: String,
    /// Waits for `ConfirmWarning` (5005) rather than for time to pass.
    pub needs_confirmation: bool,
    /// When the server looks again (for 5012/5020).
    pub retry_at_ms: Option<UnixMillis>,
}

/// An operator answered a weak-signal warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfirmed {
    /// Continue (true) or cancel (false).
    pub proceed: bool,
}

/// The task ends without an update: a precondition says so (battery too low → reminder;
/// already on target → 5000; firmware does not fit → 5013).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSkipped {
    /// The code (5000, 5013, or 5099 with a reminder for battery).
    pub code: ErrorCode,
    /// Words for a person.
    pub remind: String,
}

/// The task was sent to its site's agent. Status 100 until the agent reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDispatched {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Command id on the agent session.
    pub command_id: u64,
    /// When the per-device timeout expires.
    pub timeout_at_ms: UnixMillis,
    /// Scheduled for a sleepy device's wake-up.
    pub schedule: bool,
}

/// Progress reported by the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgressed {
    /// Attempt the report belongs to.
    pub attempt: u32,
    /// 100, 5, 2 or 6.
    pub status: UpgradeStatus,
    /// Percent.
    pub progress: f32,
    /// Seconds remaining.
    pub remaining_s: Option<u32>,
    /// Bytes delivered.
    pub bytes_sent: u64,
    /// Bytes in total.
    pub bytes_total: u64,
    /// Short detail.
    pub detail: String,
    /// The agent report this came from.
    pub source: Option<AgentSource>,
}

/// The device runs the target version. Status 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSucceeded {
    /// Attempt that succeeded.
    pub attempt: u32,
    /// Before.
    pub from: VersionInfo,
    /// After.
    pub to: VersionInfo,
    /// How long the attempt took at the site.
    pub duration_ms: u64,
    /// Bytes on the wire.
    pub wire_bytes: u64,
    /// The agent report this came from.
    pub source: Option<AgentSource>,
    /// The server had already ended the task (timed it out, or cancelled it after it was sent)
    /// when the site reported this success: the device is the truth, the task succeeded late.
    pub late: bool,
    /// How the device's health was established after it reported the target version
    /// ([`Health::Unconfirmed`] does not count as a success for the stage).
    pub health: Health,
}

/// The device reports the target version and its site watches its health until `until_ms`
/// (the rollout's health window); the verdict is a `TaskSucceeded` (with its health) or a
/// `TaskFailed` (5022).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskVerifying {
    /// The attempt.
    pub attempt: u32,
    /// When the window ends.
    pub until_ms: UnixMillis,
    /// The version the device reported.
    pub to: VersionInfo,
    /// The agent report this came from.
    pub source: Option<AgentSource>,
}

/// An attempt failed. With `retry_at_ms` the task goes back to queued and is dispatched again
/// then; without, the task ends (status 4, or 7 when `timed_out`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// Attempt that failed.
    pub attempt: u32,
    /// Why.
    pub error: TaskError,
    /// The failure is a timeout (status 7).
    pub timed_out: bool,
    /// When to try again, if the error is transient and attempts remain.
    pub retry_at_ms: Option<UnixMillis>,
    /// The agent report this came from; `None` when the server decided (timeouts, deadlines).
    pub source: Option<AgentSource>,
}

/// The task was cancelled (only while queued, held, or waiting for wake-up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancelled {
    /// Why.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Rollouts
// ---------------------------------------------------------------------------------------------

/// A rollout was created (draft).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutCreated {
    /// Rollout id.
    pub id: String,
    /// Validated spec.
    pub spec: RolloutSpec,
}

/// Schema version 1 of [`RolloutCreated`]: the spec before switchable gates, the wake-up budget,
/// `on_asleep`, the failure budget and per-site zones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutCreatedV1 {
    /// See [`RolloutCreated`].
    pub id: String,
    /// See [`RolloutCreated`].
    pub spec: RolloutSpecV1,
}

impl From<RolloutCreatedV1> for RolloutCreated {
    fn from(v1: RolloutCreatedV1) -> Self {
        Self {
            id: v1.id,
            spec: v1.spec.into(),
        }
    }
}

/// Devices of one stage, decided when the rollout starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStage {
    /// Stage name.
    pub name: String,
    /// Device ids in dispatch order.
    pub device_ids: Vec<String>,
}

/// A device selected by the rollout's selector but left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// Device id.
    pub device_id: String,
    /// Code (5000 already on target, 5013 does not fit, 5019 no answer to the batch check, ...).
    pub code: ErrorCode,
    /// Words for a person.
    pub reason: String,
}

/// The rollout started: its targets are fixed into stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStarted {
    /// Stages with their devices.
    pub stages: Vec<PlannedStage>,
    /// Devices left out.
    pub exclusions: Vec<Exclusion>,
}

/// The bulk availability check before the first stage began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCheckStarted {
    /// Check id (the devices' `DeviceChecked` events carry it).
    pub check_id: String,
    /// Devices asked.
    pub device_ids: Vec<String>,
    /// When unanswered devices get 5019.
    pub deadline_at_ms: UnixMillis,
}

/// The bulk check ended (all answered, or the deadline passed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCheckCompleted {
    /// Check id.
    pub check_id: String,
    /// Devices that did not answer in time (5019), listed, never dropped.
    pub timed_out: Vec<String>,
    /// Devices removed from the plan by the check's answers, with why.
    pub excluded: Vec<Exclusion>,
}

/// A stage began dispatching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStarted {
    /// Stage index.
    pub index: u32,
    /// When its deadline (batch-check timeout) expires; `None`: no deadline.
    pub deadline_at_ms: Option<UnixMillis>,
}

/// More of the plan of the `RolloutStarted` just before it in the same append, when the whole
/// plan does not fit one event (see [`split`]): devices of one stage, in dispatch order after
/// the ones already recorded, and exclusions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlanContinued {
    /// Stage index the devices belong to.
    pub stage: u32,
    /// More device ids of that stage.
    pub device_ids: Vec<String>,
    /// More devices left out.
    pub exclusions: Vec<Exclusion>,
}

/// More of a batch check whose lists do not fit one event (see [`split`]): devices asked
/// (after `BatchCheckStarted`, in the same append) or outcomes (before `BatchCheckCompleted`,
/// in the same append). Applied like the lists of those events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCheckContinued {
    /// Check id.
    pub check_id: String,
    /// More devices asked.
    pub device_ids: Vec<String>,
    /// More devices that did not answer in time (5019).
    pub timed_out: Vec<String>,
    /// More devices removed from the plan by the check's answers.
    pub excluded: Vec<Exclusion>,
}

/// Devices were taken out of a stage when it started (or later, before they got a task): a
/// device that already has an unfinished task elsewhere (5002, one update at a time), or that
/// its site no longer reports (5012). Listed in the rollout's exclusions, never dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDevicesExcluded {
    /// Stage index.
    pub index: u32,
    /// The devices, with why.
    pub excluded: Vec<Exclusion>,
}

/// A stage met its success threshold and soaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSoaking {
    /// Stage index.
    pub index: u32,
    /// Soak ends.
    pub until_ms: UnixMillis,
}

/// A stage succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSucceeded {
    /// Stage index.
    pub index: u32,
}

/// A stage crossed its failure threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFailed {
    /// Stage index.
    pub index: u32,
    /// Why, with the numbers.
    pub reason: String,
}

/// The rollout paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPaused {
    /// Why.
    pub reason: String,
    /// Paused by the scheduler (threshold) rather than an operator.
    pub automatic: bool,
}

/// The rollout resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutResumed {
    /// Why, if given.
    pub reason: String,
}

/// The rollout completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutCompleted {
    /// Summary ("120 updated, 3 skipped, 1 failed").
    pub summary: String,
}

/// The rollout was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutAborted {
    /// Why.
    pub reason: String,
    /// Aborted by the scheduler (threshold) rather than an operator.
    pub automatic: bool,
}

/// The rollout needs the approval of a second person before it can start (four eyes); recorded
/// with `RolloutCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutApprovalRequired {
    /// What asks for it: "otad setting require_approval" or "the rollout's spec".
    pub required_by: String,
}

/// Another operator approved the rollout (the event's actor); it may start now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutApproved {
    /// Why, as the approver wrote it.
    pub reason: String,
}

/// Another operator denied the rollout (the event's actor); it ends without having run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDenied {
    /// Why, as the approver wrote it.
    pub reason: String,
}

/// The rollout is rolled back by a linked rollout (`rollback_id`, created in the same append
/// with `spec.reverts` naming this rollout). Recorded at most once per rollout; the event's
/// actor is who asked (the system for an automatic rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRolledBack {
    /// The linked rollout that reverts the devices.
    pub rollback_id: String,
    /// Which devices it reverts.
    pub scope: RollbackScope,
    /// Triggered by the rollout's own thresholds or criteria rather than an operator.
    pub automatic: bool,
    /// Why ("stage canary: 1 failure(s) ≥ threshold 1 …", or the operator's reason).
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------------------------

/// An operator token was created (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Public id.
    pub id: String,
    /// Who it is for.
    pub name: String,
    /// viewer, operator, admin.
    pub role: String,
    /// Hash of the secret (hex).
    pub secret_hash: String,
    /// Expiry, Unix ms; 0 never.
    pub expires_at_ms: UnixMillis,
}

/// A token was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// Public id.
    pub id: String,
}

// ---------------------------------------------------------------------------------------------
// The union and its codec
// ---------------------------------------------------------------------------------------------

/// Why stored bytes could not be turned back into an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The type name is unknown to this build.
    #[error("unknown event type {0:?}: this log was written by a newer otad, or is damaged")]
    UnknownType(String),
    /// The schema version is newer than this build understands.
    #[error(
        "event {type_name} has schema version {found}, this otad understands up to {max}: upgrade otad"
    )]
    NewerVersion {
        /// Type.
        type_name: String,
        /// Version found.
        found: u16,
        /// Newest known.
        max: u16,
    },
    /// The version is older than the first, or a retired version without upcaster.
    #[error("event {type_name} schema version {found} has no upcaster")]
    NoUpcaster {
        /// Type.
        type_name: String,
        /// Version found.
        found: u16,
    },
    /// The bytes do not match the schema.
    #[error("event {type_name} v{version} payload is malformed: {reason}")]
    Malformed {
        /// Type.
        type_name: String,
        /// Version.
        version: u16,
        /// Decoder message.
        reason: String,
    },
}

macro_rules! domain_events {
    ($( $variant:ident = $ver:literal ),* $(,)?) => {
        /// Every event the server records.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum DomainEvent {
            $(
                #[doc = concat!("See [`", stringify!($variant), "`].")]
                $variant($variant),
            )*
        }

        impl DomainEvent {
            /// Every event type name with its current schema version.
            pub const TYPES: &'static [(&'static str, u16)] = &[$( (stringify!($variant), $ver), )*];

            /// The type name stored in the envelope.
            pub fn type_name(&self) -> &'static str {
                match self { $( Self::$variant(_) => stringify!($variant), )* }
            }

            /// The schema version this build writes.
            pub fn schema_version(&self) -> u16 {
                match self { $( Self::$variant(_) => $ver, )* }
            }

            /// The payload bytes (postcard).
            pub fn encode(&self) -> Vec<u8> {
                match self {
                    $( Self::$variant(e) => postcard::to_stdvec(e), )*
                }
                .unwrap_or_else(|e| unreachable!("postcard cannot fail encoding to a Vec: {e}"))
            }

            /// The payload as JSON (current schema), for people and scripts.
            pub fn to_json(&self) -> String {
                serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            }

            fn decode_current(type_name: &str, bytes: &[u8]) -> Option<Result<Self, postcard::Error>> {
                match type_name {
                    $( stringify!($variant) => Some(postcard::from_bytes(bytes).map(Self::$variant)), )*
                    _ => None,
                }
            }

            fn current_version(type_name: &str) -> Option<u16> {
                match type_name {
                    $( stringify!($variant) => Some($ver), )*
                    _ => None,
                }
            }
        }

        $(
            impl From<$variant> for DomainEvent {
                fn from(e: $variant) -> Self { Self::$variant(e) }
            }
        )*
    };
}

domain_events! {
    FirmwareRegistered = 1,
    FirmwareSignatureAdded = 1,
    FirmwareDeleted = 1,
    AgentConnected = 1,
    AgentDisconnected = 1,
    DeviceReported = 2,
    DeviceRemoved = 1,
    DeviceChecked = 1,
    AutoUpgradeSet = 1,
    TaskCreated = 3,
    TaskPreparing = 1,
    TaskHeld = 1,
    TaskConfirmed = 1,
    TaskSkipped = 1,
    TaskDispatched = 1,
    TaskProgressed = 1,
    TaskSucceeded = 3,
    TaskFailed = 1,
    TaskCancelled = 1,
    RolloutCreated = 7,
    RolloutStarted = 1,
    RolloutPlanContinued = 1,
    BatchCheckStarted = 1,
    BatchCheckContinued = 1,
    BatchCheckCompleted = 1,
    StageStarted = 1,
    StageDevicesExcluded = 1,
    StageSoaking = 1,
    StageSucceeded = 1,
    StageFailed = 1,
    RolloutPaused = 1,
    RolloutResumed = 1,
    RolloutCompleted = 1,
    RolloutAborted = 1,
    RolloutApprovalRequired = 1,
    RolloutApproved = 1,
    RolloutDenied = 1,
    TokenCreated = 1,
    TokenRevoked = 1,
    RolloutRolledBack = 1,
    TaskVerifying = 1,
}

impl DomainEvent {
    /// Decodes a stored payload, upcasting older schema versions to the current one.
    pub fn decode(type_name: &str, version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let current = Self::current_version(type_name)
            .ok_or_else(|| DecodeError::UnknownType(type_name.to_string()))?;
        let malformed = |e: postcard::Error| DecodeError::Malformed {
            type_name: type_name.to_string(),
            version,
            reason: e.to_string(),
        };
        if version == current {
            return Self::decode_current(type_name, bytes)
                .unwrap_or_else(|| unreachable!("current_version knew {type_name}"))
                .map_err(malformed);
        }
        if version > current {
            return Err(DecodeError::NewerVersion {
                type_name: type_name.to_string(),
                found: version,
                max: current,
            });
        }
        // Upcasters: one arm per retired (type, version).
        match (type_name, version) {
            // v2 appended `facts.tags` (none) and `source` (none).
            ("DeviceReported", 1) => {
                decode_appended(bytes, &(Vec::<String>::new(), None::<AgentSource>))
                    .map(Self::DeviceReported)
                    .map_err(malformed)
            }
            // v2 appended `wake_timeout_s` (0: the default budget), v3 `from` and
            // `from_firmware_id` (not recorded).
            ("TaskCreated", 1) => {
                decode_appended(bytes, &(0u32, None::<VersionInfo>, None::<String>))
                    .map(Self::TaskCreated)
                    .map_err(malformed)
            }
            ("TaskCreated", 2) => decode_appended(bytes, &(None::<VersionInfo>, None::<String>))
                .map(Self::TaskCreated)
                .map_err(malformed),
            // v2 appended `late` (no), v3 `health` (not checked).
            ("TaskSucceeded", 1) => decode_appended(bytes, &(false, Health::NotChecked))
                .map(Self::TaskSucceeded)
                .map_err(malformed),
            ("TaskSucceeded", 2) => decode_appended(bytes, &Health::NotChecked)
                .map(Self::TaskSucceeded)
                .map_err(malformed),
            ("RolloutCreated", 1) => postcard::from_bytes::<RolloutCreatedV1>(bytes)
                .map(|old| Self::RolloutCreated(old.into()))
                .map_err(malformed),
            // v3 appended `spec.abort_criteria` (none), v4 `spec.rate` (none), v5
            // `spec.canary_per_site` (off), v6 `spec.rollback` (none) and `spec.reverts` (not a
            // rollback), v7 `spec.health` (off: rollouts created before the health gate keep
            // their behaviour).
            ("RolloutCreated", 2) => decode_appended(
                bytes,
                &(
                    Vec::<AbortCriterion>::new(),
                    None::<Rate>,
                    0u32,
                    RollbackScope::None,
                    None::<Revert>,
                    HealthPolicy::OFF,
                ),
            )
            .map(Self::RolloutCreated)
            .map_err(malformed),
            ("RolloutCreated", 3) => decode_appended(
                bytes,
                &(
                    None::<Rate>,
                    0u32,
                    RollbackScope::None,
                    None::<Revert>,
                    HealthPolicy::OFF,
                ),
            )
            .map(Self::RolloutCreated)
            .map_err(malformed),
            ("RolloutCreated", 4) => decode_appended(
                bytes,
                &(0u32, RollbackScope::None, None::<Revert>, HealthPolicy::OFF),
            )
            .map(Self::RolloutCreated)
            .map_err(malformed),
            ("RolloutCreated", 5) => decode_appended(
                bytes,
                &(RollbackScope::None, None::<Revert>, HealthPolicy::OFF),
            )
            .map(Self::RolloutCreated)
            .map_err(malformed),
            ("RolloutCreated", 6) => decode_appended(bytes, &HealthPolicy::OFF)
                .map(Self::RolloutCreated)
                .map_err(malformed),
            _ => Err(DecodeError::NoUpcaster {
                type_name: type_name.to_string(),
                found: version,
            }),
        }
    }

    /// The agent report an event came from, if any (for at-most-once application).
    pub fn agent_source(&self) -> Option<&AgentSource> {
        match self {
            Self::DeviceReported(e) => e.source.as_ref(),
            Self::DeviceRemoved(e) => e.source.as_ref(),
            Self::DeviceChecked(e) => e.source.as_ref(),
            Self::TaskProgressed(e) => e.source.as_ref(),
            Self::TaskSucceeded(e) => e.source.as_ref(),
            Self::TaskVerifying(e) => e.source.as_ref(),
            Self::TaskFailed(e) => e.source.as_ref(),
            _ => None,
        }
    }
}

/// Decodes a retired schema version whose successor only appended fields at the end of the
/// payload. Postcard writes a struct as its fields in order with nothing around them, so the old
/// bytes followed by the encoding of the appended fields' values for old events (`appended`) are
/// the current version's bytes.
fn decode_appended<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    appended: &impl Serialize,
) -> Result<T, postcard::Error> {
    let current = postcard::to_extend(appended, bytes.to_vec())?;
    postcard::from_bytes(&current)
}

/// Labels from key/value pairs (used by tests and conversions).
pub fn labels<I, K, V>(pairs: I) -> Labels
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect::<BTreeMap<_, _>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_unique() {
        let mut names: Vec<_> = DomainEvent::TYPES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn unknown_and_newer_versions_are_refused_clearly() {
        let e = DomainEvent::decode("NoSuchEvent", 1, &[]).unwrap_err();
        assert!(e.to_string().contains("unknown event type"), "{e}");
        let e = DomainEvent::decode("FirmwareDeleted", 9, &[]).unwrap_err();
        assert!(e.to_string().contains("upgrade otad"), "{e}");
        let e = DomainEvent::decode("FirmwareDeleted", 1, &[0xff, 0xff]).unwrap_err();
        assert!(matches!(e, DecodeError::Malformed { .. }), "{e}");
    }

    #[test]
    fn device_reported_v1_is_upcast() {
        // The v1 line of tests/golden/events.txt: an ESPHome node "kitchen" on 1.0.0.
        let hex = "010107657370686f6d65076b69746368656e08657370333264657609457370726573736966\
                   000005657370333205657370333205312e302e30000000010001017701010000";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let DomainEvent::DeviceReported(up) =
            DomainEvent::decode("DeviceReported", 1, &bytes).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(up.facts.name, "kitchen");
        assert_eq!(up.facts.current.version, "1.0.0");
        assert_eq!(up.facts.z2m_state, "");
        assert!(up.facts.tags.is_empty());
        assert_eq!(up.source, None);
    }

    #[test]
    fn a_version_that_appended_fields_is_read_from_the_old_bytes() {
        let now = TaskSucceeded {
            attempt: 2,
            from: VersionInfo::default(),
            to: VersionInfo {
                version: "2.0".into(),
                ..Default::default()
            },
            duration_ms: 1500,
            wire_bytes: 4096,
            source: None,
            late: false,
            health: Health::NotChecked,
        };
        let mut bytes = postcard::to_stdvec(&now).unwrap();
        assert_eq!(bytes.pop(), Some(0), "`health` is the last byte");
        let up = DomainEvent::decode("TaskSucceeded", 2, &bytes).unwrap();
        assert_eq!(up, DomainEvent::TaskSucceeded(now.clone()));
        assert_eq!(bytes.pop(), Some(0), "`late` is the last byte of v1");
        let up = DomainEvent::decode("TaskSucceeded", 1, &bytes).unwrap();
        assert_eq!(up, DomainEvent::TaskSucceeded(now));
        bytes.pop();
        let e = DomainEvent::decode("TaskSucceeded", 1, &bytes).unwrap_err();
        assert!(matches!(e, DecodeError::Malformed { .. }), "{e}");
    }

    #[test]
    fn round_trip_and_json() {
        let e = DomainEvent::from(TaskCancelled {
            reason: "operator".into(),
        });
        let back = DomainEvent::decode(e.type_name(), e.schema_version(), &e.encode()).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.to_json(), r#"{"reason":"operator"}"#);
    }
}

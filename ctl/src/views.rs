//! The JSON shapes otactl prints with `-o json`, and the data its tables are drawn from.
//!
//! These are plain serde structs converted from the prost types at the edge, so the output is
//! a deliberate, documented contract (see `ctl/README.md`) rather than whatever the wire
//! types happen to be. Rules: every key is always present; enum values are objects
//! `{"code": <number>, "name": "<name>"}`; times are Unix milliseconds (`0` = never/unknown,
//! or `null` where noted); digests and signatures are lowercase hex; an absent message is
//! `null`. Keys are only ever added, never renamed or removed.

use std::collections::BTreeMap;

use ota_proto::v1 as pb;
use serde::Serialize;

use crate::vocab;

/// An enum value: its number and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnumView {
    /// The number, as in the API (Tuya numbers for statuses and errors).
    pub code: i32,
    /// The short name (`updating`, `bulk-check-timeout`, `zigbee2mqtt`).
    pub name: String,
}

impl EnumView {
    fn new(code: i32, name: fn(i32) -> String) -> Self {
        Self {
            code,
            name: name(code),
        }
    }
}

/// `{"code": 5019, "name": "bulk-check-timeout", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorView {
    /// Error number (5000-5099).
    pub code: i32,
    /// Short name.
    pub name: String,
    /// What happened, in the server's or transport's words.
    pub message: String,
}

/// An error only when there is one (code 0 and no message: `null`).
fn error(e: Option<&pb::TaskError>) -> Option<ErrorView> {
    e.filter(|e| e.code != 0 || !e.message.is_empty())
        .map(|e| ErrorView {
            code: e.code,
            name: vocab::error_name(e.code),
            message: e.message.clone(),
        })
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorView {
    /// Token name, `agent:<site>` or `otad`.
    pub name: String,
    /// Role used.
    pub role: String,
}

fn actor(a: Option<&pb::Actor>) -> Option<ActorView> {
    a.map(|a| ActorView {
        name: a.name.clone(),
        role: a.role.clone(),
    })
}

/// A firmware version as a device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionView {
    /// Human version.
    pub version: String,
    /// Zigbee OTA file version, if known.
    pub file_version: Option<u32>,
    /// Zigbee swBuildId.
    pub software_build_id: String,
    /// Zigbee dateCode.
    pub date_code: String,
}

fn version(v: Option<&pb::VersionInfo>) -> Option<VersionView> {
    v.map(|v| VersionView {
        version: v.version.clone(),
        file_version: v.file_version,
        software_build_id: v.software_build_id.clone(),
        date_code: v.date_code.clone(),
    })
}

// === server ===

/// `server status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerStatusView {
    /// The URL otactl talked to.
    pub server: String,
    /// otad's version.
    pub version: String,
    /// Start time.
    pub started_at_ms: i64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// The event log.
    pub event_log: Option<EventLogView>,
    /// Agents connected now.
    pub connected_agents: u32,
    /// Counts.
    pub sites: u32,
    /// Devices known.
    pub devices: u32,
    /// Firmware in the catalog.
    pub firmware: u32,
    /// Rollouts running.
    pub rollouts_running: u32,
    /// Tasks not ended.
    pub tasks_active: u32,
    /// Whether the listener uses TLS.
    pub tls: bool,
    /// Whether requests need a token.
    pub auth_required: bool,
    /// Who otad recognised the caller as.
    pub caller: Option<ActorView>,
}

/// The event log's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLogView {
    /// Last sequence number.
    pub last_seq: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Startup replay time.
    pub replay_ms: u64,
}

impl ServerStatusView {
    /// From the API.
    pub fn new(server: &str, s: &pb::ServerStatus) -> Self {
        Self {
            server: server.to_string(),
            version: s.version.clone(),
            started_at_ms: s.started_at_ms,
            uptime_s: s.uptime_s,
            event_log: s.event_log.as_ref().map(|l| EventLogView {
                last_seq: l.last_seq,
                size_bytes: l.size_bytes,
                replay_ms: l.replay_ms,
            }),
            connected_agents: s.connected_agents,
            sites: s.sites,
            devices: s.devices,
            firmware: s.firmware,
            rollouts_running: s.rollouts_running,
            tasks_active: s.tasks_active,
            tls: s.tls,
            auth_required: s.auth_required,
            caller: actor(s.caller.as_ref()),
        }
    }
}

// === firmware ===

/// A firmware in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareView {
    /// "fw-" + 16 hex digits.
    pub id: String,
    /// Catalog name.
    pub name: String,
    /// Human version.
    pub version: String,
    /// What the file is.
    pub format: EnumView,
    /// The module it is for.
    pub channel: EnumView,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex digests.
    pub sha256: String,
    /// MD5.
    pub md5: String,
    /// SHA-512.
    pub sha512: String,
    /// Facts from a Zigbee OTA file.
    pub zigbee: Option<ZigbeeView>,
    /// Facts from an ESP image.
    pub esp: Option<EspView>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Release notes.
    pub release_notes: String,
    /// Registration time.
    pub created_at_ms: i64,
    /// Uploader.
    pub created_by: Option<ActorView>,
    /// Signatures.
    pub signatures: Vec<SignatureView>,
    /// Rollouts using it that are not completed or aborted.
    pub active_rollouts: Vec<String>,
}

/// Zigbee OTA header facts (numbers as numbers; tables show hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZigbeeView {
    /// Manufacturer code.
    pub manufacturer_code: u32,
    /// Image type.
    pub image_type: u32,
    /// File version.
    pub file_version: u32,
    /// Header version.
    pub header_version: u32,
    /// Header length.
    pub header_length: u32,
    /// Field control bits.
    pub field_control: u32,
    /// Zigbee stack version.
    pub stack_version: u32,
    /// Header string.
    pub header_string: String,
    /// Total image size.
    pub total_image_size: u32,
    /// Security credential version.
    pub security_credential_version: Option<u32>,
    /// Destination IEEE address.
    pub destination: Option<u64>,
    /// Minimum hardware version.
    pub min_hardware_version: Option<u32>,
    /// Maximum hardware version.
    pub max_hardware_version: Option<u32>,
    /// Vendor prefix bytes.
    pub prefix_length: u32,
    /// Trailing bytes.
    pub trailing_length: u32,
    /// Sub-element tags.
    pub sub_element_tags: Vec<u32>,
}

/// ESP image facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspView {
    /// Chip name.
    pub chip: String,
    /// Extended header chip id.
    pub chip_id: Option<u32>,
    /// App version.
    pub app_version: String,
    /// Project name.
    pub project_name: String,
    /// ESP-IDF version.
    pub idf_version: String,
    /// Build date.
    pub build_date: String,
    /// Build time.
    pub build_time: String,
    /// Secure version.
    pub secure_version: u32,
    /// Segments.
    pub segment_count: u32,
    /// Flash mode.
    pub flash_mode: String,
    /// Flash size.
    pub flash_size: String,
    /// Flash frequency.
    pub flash_freq: String,
    /// SHA-256 appended to the image.
    pub hash_appended: bool,
    /// Application offset in factory images.
    pub app_offset: Option<u32>,
}

/// A recorded signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureView {
    /// Key name.
    pub key_id: String,
    /// 64-byte ed25519 signature, hex.
    pub signature: String,
    /// When recorded.
    pub added_at_ms: i64,
    /// By whom.
    pub added_by: Option<ActorView>,
}

impl FirmwareView {
    /// From the API.
    pub fn new(f: &pb::Firmware) -> Self {
        Self {
            id: f.id.clone(),
            name: f.name.clone(),
            version: f.version.clone(),
            format: EnumView::new(f.format, vocab::format_name),
            channel: EnumView::new(f.channel, vocab::channel_name),
            size: f.size,
            sha256: f.sha256.clone(),
            md5: f.md5.clone(),
            sha512: f.sha512.clone(),
            zigbee: f.zigbee.as_ref().map(|z| ZigbeeView {
                manufacturer_code: z.manufacturer_code,
                image_type: z.image_type,
                file_version: z.file_version,
                header_version: z.header_version,
                header_length: z.header_length,
                field_control: z.field_control,
                stack_version: z.stack_version,
                header_string: z.header_string.clone(),
                total_image_size: z.total_image_size,
                security_credential_version: z.security_credential_version,
                destination: z.destination,
                min_hardware_version: z.min_hardware_version,
                max_hardware_version: z.max_hardware_version,
                prefix_length: z.prefix_length,
                trailing_length: z.trailing_length,
                sub_element_tags: z.sub_element_tags.clone(),
            }),
            esp: f.esp.as_ref().map(|e| EspView {
                chip: e.chip.clone(),
                chip_id: e.chip_id,
                app_version: e.app_version.clone(),
                project_name: e.project_name.clone(),
                idf_version: e.idf_version.clone(),
                build_date: e.build_date.clone(),
                build_time: e.build_time.clone(),
                secure_version: e.secure_version,
                segment_count: e.segment_count,
                flash_mode: e.flash_mode.clone(),
                flash_size: e.flash_size.clone(),
                flash_freq: e.flash_freq.clone(),
                hash_appended: e.hash_appended,
                app_offset: e.app_offset,
            }),
            labels: f
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            release_notes: f.release_notes.clone(),
            created_at_ms: f.created_at_ms,
            created_by: actor(f.created_by.as_ref()),
            signatures: f
                .signatures
                .iter()
                .map(|s| SignatureView {
                    key_id: s.key_id.clone(),
                    signature: hex::encode(&s.signature),
                    added_at_ms: s.added_at_ms,
                    added_by: actor(s.added_by.as_ref()),
                })
                .collect(),
            active_rollouts: f.active_rollouts.clone(),
        }
    }
}

/// `firmware upload`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadView {
    /// The registered firmware.
    pub firmware: Option<FirmwareView>,
    /// The same bytes, name and version were already registered; nothing new was recorded.
    pub already_existed: bool,
}

/// `firmware list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareListView {
    /// Newest first.
    pub firmware: Vec<FirmwareView>,
}

/// `firmware rm`, `token revoke` and similar: what was acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedView {
    /// The id deleted.
    pub deleted: String,
}

/// `firmware download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadView {
    /// Firmware id.
    pub firmware_id: String,
    /// Where the file was written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// sha256 of the written file (equal to the catalog's).
    pub sha256: String,
}

/// `firmware keygen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeygenView {
    /// The private key file.
    pub private_key_path: String,
    /// The public key file.
    pub public_key_path: String,
    /// The public key, base64.
    pub public_key: String,
}

// === devices and tasks ===

/// A signal reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalView {
    /// `linkquality` (0-255) or `rssi-dbm`.
    pub kind: EnumView,
    /// The reading.
    pub value: i32,
}

/// A device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    /// "<site>/<local id>".
    pub id: String,
    /// Site.
    pub site_id: String,
    /// Id within the site.
    pub local_id: String,
    /// Transport.
    pub transport: EnumView,
    /// Transport instance.
    pub network: String,
    /// Human name.
    pub name: String,
    /// Model.
    pub model: String,
    /// Vendor.
    pub vendor: String,
    /// Zigbee manufacturer code.
    pub manufacturer_code: Option<u32>,
    /// Zigbee image type.
    pub image_type: Option<u32>,
    /// ESP chip.
    pub chip: String,
    /// ESPHome platform.
    pub platform: String,
    /// What it runs now.
    pub current: Option<VersionView>,
    /// Power source.
    pub power_source: EnumView,
    /// Battery percent.
    pub battery_percent: Option<u32>,
    /// Signal.
    pub signal: Option<SignalView>,
    /// Reachable by its site now.
    pub reachable: bool,
    /// Supports OTA.
    pub supports_ota: bool,
    /// Hardware version.
    pub hardware_version: Option<u32>,
    /// zigbee2mqtt's update state.
    pub z2m_state: EnumView,
    /// Last seen.
    pub last_seen_ms: i64,
    /// First seen.
    pub first_seen_ms: i64,
    /// Tags.
    pub tags: Vec<String>,
    /// Auto-upgrade switch.
    pub auto_upgrade: bool,
    /// Update status (Tuya number and name).
    pub status: EnumView,
    /// Running or most recent task.
    pub current_task: Option<TaskView>,
}

impl DeviceView {
    /// From the API.
    pub fn new(d: &pb::Device) -> Self {
        Self {
            id: d.id.clone(),
            site_id: d.site_id.clone(),
            local_id: d.local_id.clone(),
            transport: EnumView::new(d.transport, vocab::transport_name),
            network: d.network.clone(),
            name: d.name.clone(),
            model: d.model.clone(),
            vendor: d.vendor.clone(),
            manufacturer_code: d.manufacturer_code,
            image_type: d.image_type,
            chip: d.chip.clone(),
            platform: d.platform.clone(),
            current: version(d.current.as_ref()),
            power_source: EnumView::new(d.power_source, vocab::power_name),
            battery_percent: d.battery_percent,
            signal: d.signal.as_ref().map(|s| SignalView {
                kind: EnumView::new(s.kind, vocab::signal_kind_name),
                value: s.value,
            }),
            reachable: d.reachable,
            supports_ota: d.supports_ota,
            hardware_version: d.hardware_version,
            z2m_state: EnumView::new(d.z2m_state, vocab::z2m_state_name),
            last_seen_ms: d.last_seen_ms,
            first_seen_ms: d.first_seen_ms,
            tags: d.tags.clone(),
            auto_upgrade: d.auto_upgrade,
            status: EnumView::new(d.status, vocab::status_name),
            current_task: d.current_task.as_ref().map(TaskView::new),
        }
    }
}

/// `device list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceListView {
    /// Ordered by id.
    pub devices: Vec<DeviceView>,
    /// Devices matching the filters (as the server counted them).
    pub total: u32,
}

/// A device update task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Device.
    pub device_id: String,
    /// Site.
    pub site_id: String,
    /// Rollout, empty for single-device updates.
    pub rollout_id: String,
    /// Stage index within the rollout.
    pub stage: u32,
    /// Firmware installed.
    pub firmware_id: String,
    /// Target version.
    pub target: Option<VersionView>,
    /// Status (Tuya number and name).
    pub status: EnumView,
    /// Percent, 0-100.
    pub progress: f32,
    /// Seconds left, while updating.
    pub remaining_s: Option<u32>,
    /// Why it failed or waits.
    pub error: Option<ErrorView>,
    /// Why it was skipped or waits, for a person.
    pub remind: String,
    /// Attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How it is offered.
    pub upgrade_type: EnumView,
    /// Installs an older version.
    pub downgrade: bool,
    /// Version before.
    pub from: Option<VersionView>,
    /// Version after.
    pub to: Option<VersionView>,
    /// Created.
    pub created_at_ms: i64,
    /// Started.
    pub started_at_ms: i64,
    /// Ended.
    pub finished_at_ms: i64,
    /// Next attempt due.
    pub next_attempt_at_ms: i64,
    /// Waits for `device confirm`.
    pub awaiting_confirmation: bool,
    /// Who asked.
    pub requested_by: Option<ActorView>,
    /// Bytes delivered so far.
    pub bytes_sent: u64,
    /// Bytes in total.
    pub bytes_total: u64,
}

impl TaskView {
    /// From the API.
    pub fn new(t: &pb::Task) -> Self {
        Self {
            id: t.id.clone(),
            device_id: t.device_id.clone(),
            site_id: t.site_id.clone(),
            rollout_id: t.rollout_id.clone(),
            stage: t.stage,
            firmware_id: t.firmware_id.clone(),
            target: version(t.target.as_ref()),
            status: EnumView::new(t.status, vocab::status_name),
            progress: t.progress,
            remaining_s: t.remaining_s,
            error: error(t.error.as_ref()),
            remind: t.remind.clone(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            upgrade_type: EnumView::new(t.upgrade_type, vocab::upgrade_type_name),
            downgrade: t.downgrade,
            from: version(t.from.as_ref()),
            to: version(t.to.as_ref()),
            created_at_ms: t.created_at_ms,
            started_at_ms: t.started_at_ms,
            finished_at_ms: t.finished_at_ms,
            next_attempt_at_ms: t.next_attempt_at_ms,
            awaiting_confirmation: t.awaiting_confirmation,
            requested_by: actor(t.requested_by.as_ref()),
            bytes_sent: t.bytes_sent,
            bytes_total: t.bytes_total,
        }
    }
}

/// The answer of one device to a check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckView {
    /// Device.
    pub device_id: String,
    /// 0 none, 1 available, 4 failure.
    pub status: EnumView,
    /// What it runs.
    pub current: Option<VersionView>,
    /// Best newer firmware, if any.
    pub available_firmware_id: String,
    /// Its version.
    pub available: Option<VersionView>,
    /// Whether an update could start now.
    pub can_upgrade: bool,
    /// Why not.
    pub remind: String,
    /// Why the check failed (5012, 5019, 5020, ...).
    pub error: Option<ErrorView>,
    /// Reachable.
    pub reachable: bool,
    /// When checked.
    pub checked_at_ms: i64,
}

impl CheckView {
    /// From the API.
    pub fn new(c: &pb::DeviceCheck) -> Self {
        Self {
            device_id: c.device_id.clone(),
            status: EnumView::new(c.status, vocab::status_name),
            current: version(c.current.as_ref()),
            available_firmware_id: c.available_firmware_id.clone(),
            available: version(c.available.as_ref()),
            can_upgrade: c.can_upgrade,
            remind: c.remind.clone(),
            error: error(c.error.as_ref()),
            reachable: c.reachable,
            checked_at_ms: c.checked_at_ms,
        }
    }

    /// The check itself failed (status failure or timeout, or no answer in time).
    pub fn failed(&self) -> bool {
        self.status.code == pb::UpgradeStatus::Failure as i32
            || self.status.code == pb::UpgradeStatus::Timeout as i32
            || self
                .error
                .as_ref()
                .is_some_and(|e| e.code == pb::ErrorCode::BulkCheckTimeout as i32)
    }

    /// No answer within the timeout (5019).
    pub fn timed_out(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|e| e.code == pb::ErrorCode::BulkCheckTimeout as i32)
    }
}

/// `device check` (one device or many: the same shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReportView {
    /// One entry per device, never dropped.
    pub checks: Vec<CheckView>,
    /// Devices with an update available.
    pub available: u32,
    /// Devices up to date.
    pub up_to_date: u32,
    /// Devices that did not answer in time (5019).
    pub timed_out: u32,
    /// Other failures.
    pub failed: u32,
}

impl CheckReportView {
    /// From a batch answer.
    pub fn batch(r: &pb::BatchCheckResponse) -> Self {
        Self {
            checks: r.checks.iter().map(CheckView::new).collect(),
            available: r.available,
            up_to_date: r.up_to_date,
            timed_out: r.timed_out,
            failed: r.failed,
        }
    }

    /// From a single check (counts computed here).
    pub fn single(c: &pb::DeviceCheck) -> Self {
        let v = CheckView::new(c);
        let timed_out = u32::from(v.timed_out());
        let failed = u32::from(v.failed() && !v.timed_out());
        let available =
            u32::from(!v.failed() && v.status.code == pb::UpgradeStatus::Available as i32);
        let up_to_date = u32::from(!v.failed() && v.status.code == pb::UpgradeStatus::None as i32);
        Self {
            checks: vec![v],
            available,
            up_to_date,
            timed_out,
            failed,
        }
    }
}

/// `device update`, `device flash`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateView {
    /// The task, as last seen.
    pub task: Option<TaskView>,
    /// Version before.
    pub from: Option<VersionView>,
    /// Version after (once the task succeeded).
    pub to: Option<VersionView>,
}

impl UpdateView {
    /// From a task (its from/to versions).
    pub fn from_task(t: &pb::Task) -> Self {
        Self {
            task: Some(TaskView::new(t)),
            from: version(t.from.as_ref()),
            to: version(t.to.as_ref()),
        }
    }

    /// From the Update answer.
    pub fn new(r: &pb::UpdateDeviceResponse) -> Self {
        Self {
            task: r.task.as_ref().map(TaskView::new),
            from: version(r.from.as_ref()),
            to: version(r.to.as_ref()),
        }
    }
}

/// `device auto-upgrade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoUpgradeView {
    /// Device.
    pub device_id: String,
    /// Whether the device can take automatic upgrades at all.
    pub supported: bool,
    /// The switch.
    pub enabled: bool,
}

// === rollouts ===

/// A count or a percentage: `{"count": 2}` or `{"percent": 10.0}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdView {
    /// Devices.
    Count(u32),
    /// Percent of the stage's devices.
    Percent(f64),
}

fn threshold(t: Option<&pb::Threshold>) -> Option<ThresholdView> {
    match t.and_then(|t| t.value) {
        Some(pb::threshold::Value::Count(c)) => Some(ThresholdView::Count(c)),
        Some(pb::threshold::Value::Percent(p)) => Some(ThresholdView::Percent(p)),
        None => None,
    }
}

/// Which devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectorView {
    /// Sites.
    pub site_ids: Vec<String>,
    /// Transports.
    pub transports: Vec<EnumView>,
    /// Models.
    pub models: Vec<String>,
    /// Vendors.
    pub vendors: Vec<String>,
    /// Zigbee manufacturer code.
    pub manufacturer_code: Option<u32>,
    /// Zigbee image type.
    pub image_type: Option<u32>,
    /// Chips.
    pub chips: Vec<String>,
    /// Minimum version.
    pub min_version: String,
    /// Maximum version.
    pub max_version: String,
    /// Tags (all).
    pub tags: Vec<String>,
    /// Explicit devices.
    pub device_ids: Vec<String>,
    /// Excluded devices.
    pub exclude_device_ids: Vec<String>,
    /// Transport instances.
    pub networks: Vec<String>,
}

/// A stage of a spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpecView {
    /// Name.
    pub name: String,
    /// Devices in this stage, or null.
    pub count: Option<u32>,
    /// Cumulative percent of all targets by the end of this stage, or null.
    pub cumulative_percent: Option<f64>,
    /// Successes needed (null: all not skipped).
    pub success_threshold: Option<ThresholdView>,
    /// Failures that stop the stage (null: server default).
    pub failure_threshold: Option<ThresholdView>,
    /// pause or abort.
    pub on_failure: EnumView,
    /// Stage deadline, seconds (0: none).
    pub deadline_s: u32,
    /// Soak, seconds.
    pub soak_s: u32,
}

/// A rollout spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecView {
    /// Name.
    pub name: String,
    /// Firmware.
    pub firmware_id: String,
    /// Targets.
    pub selector: Option<SelectorView>,
    /// Stages.
    pub stages: Vec<StageSpecView>,
    /// Concurrency limits (0: server default).
    pub concurrency: Option<ConcurrencyView>,
    /// Per-device timeout, seconds (0: by transport).
    pub device_timeout_s: u32,
    /// Retries.
    pub retry: Option<RetryView>,
    /// Maintenance window.
    pub maintenance_window: Option<WindowView>,
    /// How updates are offered.
    pub upgrade_type: EnumView,
    /// Downgrades allowed.
    pub allow_downgrade: bool,
    /// Preconditions (0: server default).
    pub preconditions: Option<PreconditionsView>,
    /// No batch check first.
    pub skip_batch_check: bool,
    /// Batch check timeout, seconds.
    pub batch_check_timeout_s: u32,
}

/// Concurrency limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConcurrencyView {
    /// Across the rollout.
    pub global: u32,
    /// Per site.
    pub per_site: u32,
    /// Per zigbee2mqtt network.
    pub per_zigbee_network: u32,
    /// ESPHome devices per site.
    pub per_esphome_site: u32,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryView {
    /// Attempts including the first.
    pub max_attempts: u32,
    /// First backoff, seconds.
    pub initial_backoff_s: u32,
    /// Backoff cap, seconds.
    pub max_backoff_s: u32,
}

/// Maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowView {
    /// "HH:MM".
    pub start: String,
    /// "HH:MM".
    pub end: String,
    /// 0 Sunday .. 6 Saturday; empty: every day.
    pub weekdays: Vec<u32>,
}

/// Preconditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreconditionsView {
    /// Battery minimum.
    pub min_battery_percent: u32,
    /// Zigbee link quality minimum.
    pub min_linkquality: u32,
    /// Wi-Fi RSSI minimum.
    pub min_rssi_dbm: i32,
}

impl SpecView {
    /// From the API.
    pub fn new(s: &pb::RolloutSpec) -> Self {
        Self {
            name: s.name.clone(),
            firmware_id: s.firmware_id.clone(),
            selector: s.selector.as_ref().map(|x| SelectorView {
                site_ids: x.site_ids.clone(),
                transports: x
                    .transports
                    .iter()
                    .map(|t| EnumView::new(*t, vocab::transport_name))
                    .collect(),
                models: x.models.clone(),
                vendors: x.vendors.clone(),
                manufacturer_code: x.manufacturer_code,
                image_type: x.image_type,
                chips: x.chips.clone(),
                min_version: x.min_version.clone(),
                max_version: x.max_version.clone(),
                tags: x.tags.clone(),
                device_ids: x.device_ids.clone(),
                exclude_device_ids: x.exclude_device_ids.clone(),
                networks: x.networks.clone(),
            }),
            stages: s
                .stages
                .iter()
                .map(|st| StageSpecView {
                    name: st.name.clone(),
                    count: match st.size {
                        Some(pb::stage::Size::Count(c)) => Some(c),
                        _ => None,
                    },
                    cumulative_percent: match st.size {
                        Some(pb::stage::Size::CumulativePercent(p)) => Some(p),
                        _ => None,
                    },
                    success_threshold: threshold(st.success_threshold.as_ref()),
                    failure_threshold: threshold(st.failure_threshold.as_ref()),
                    on_failure: EnumView::new(st.on_failure, vocab::failure_action_name),
                    deadline_s: st.deadline_s,
                    soak_s: st.soak_s,
                })
                .collect(),
            concurrency: s.concurrency.as_ref().map(|c| ConcurrencyView {
                global: c.global,
                per_site: c.per_site,
                per_zigbee_network: c.per_zigbee_network,
                per_esphome_site: c.per_esphome_site,
            }),
            device_timeout_s: s.device_timeout_s,
            retry: s.retry.as_ref().map(|r| RetryView {
                max_attempts: r.max_attempts,
                initial_backoff_s: r.initial_backoff_s,
                max_backoff_s: r.max_backoff_s,
            }),
            maintenance_window: s.maintenance_window.as_ref().map(|w| WindowView {
                start: w.start.clone(),
                end: w.end.clone(),
                weekdays: w.weekdays.clone(),
            }),
            upgrade_type: EnumView::new(s.upgrade_type, vocab::upgrade_type_name),
            allow_downgrade: s.allow_downgrade,
            preconditions: s.preconditions.as_ref().map(|p| PreconditionsView {
                min_battery_percent: p.min_battery_percent,
                min_linkquality: p.min_linkquality,
                min_rssi_dbm: p.min_rssi_dbm,
            }),
            skip_batch_check: s.skip_batch_check,
            batch_check_timeout_s: s.batch_check_timeout_s,
        }
    }
}

/// Task counts by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountsView {
    /// All.
    pub total: u32,
    /// Queued.
    pub queued: u32,
    /// Preparing at the server or the site.
    pub preparing: u32,
    /// Updating.
    pub updating: u32,
    /// Waiting for a sleepy device.
    pub waiting_for_wakeup: u32,
    /// Waiting for `device confirm`.
    pub awaiting_confirmation: u32,
    /// On the device, applying.
    pub downloaded: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Failed.
    pub failed: u32,
    /// Timed out.
    pub timed_out: u32,
    /// Skipped.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
}

impl CountsView {
    /// From the API (absent: zeros).
    pub fn new(c: Option<&pb::TaskCounts>) -> Self {
        c.map(|c| Self {
            total: c.total,
            queued: c.queued,
            preparing: c.preparing,
            updating: c.updating,
            waiting_for_wakeup: c.waiting_for_wakeup,
            awaiting_confirmation: c.awaiting_confirmation,
            downloaded: c.downloaded,
            succeeded: c.succeeded,
            failed: c.failed,
            timed_out: c.timed_out,
            skipped: c.skipped,
            cancelled: c.cancelled,
        })
        .unwrap_or_default()
    }

    /// Tasks that ended one way or another.
    pub fn done(&self) -> u32 {
        self.succeeded + self.failed + self.timed_out + self.skipped + self.cancelled
    }

    /// Non-zero counts as (name, count), in a fixed order, for compact display.
    pub fn nonzero(&self) -> Vec<(&'static str, u32)> {
        [
            ("updating", self.updating),
            ("preparing", self.preparing),
            ("queued", self.queued),
            ("waiting-for-wakeup", self.waiting_for_wakeup),
            ("awaiting-confirmation", self.awaiting_confirmation),
            ("downloaded", self.downloaded),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("timed-out", self.timed_out),
            ("skipped", self.skipped),
            ("cancelled", self.cancelled),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// A stage's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageStatusView {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// pending, running, soaking, succeeded, failed.
    pub state: EnumView,
    /// Devices assigned.
    pub device_ids: Vec<String>,
    /// Counts by status.
    pub counts: CountsView,
    /// Started.
    pub started_at_ms: i64,
    /// Deadline.
    pub deadline_at_ms: i64,
    /// Soak end.
    pub soak_until_ms: i64,
    /// Ended.
    pub finished_at_ms: i64,
}

/// A device excluded from a rollout, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExclusionView {
    /// Device.
    pub device_id: String,
    /// Error code and name.
    pub code: EnumView,
    /// Why, in words.
    pub reason: String,
}

fn exclusion(e: &pb::Exclusion) -> ExclusionView {
    ExclusionView {
        device_id: e.device_id.clone(),
        code: EnumView::new(e.code, vocab::error_name),
        reason: e.reason.clone(),
    }
}

/// A rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    /// Id.
    pub id: String,
    /// The spec.
    pub spec: Option<SpecView>,
    /// draft, running, paused, completed, aborted.
    pub state: EnumView,
    /// Why paused, completed or aborted.
    pub state_reason: String,
    /// Index of the current stage.
    pub current_stage: u32,
    /// Stages.
    pub stages: Vec<StageStatusView>,
    /// Counts over all stages.
    pub totals: CountsView,
    /// Devices the batch check found not answering (5019).
    pub batch_check_timed_out: Vec<String>,
    /// Creator.
    pub created_by: Option<ActorView>,
    /// Created.
    pub created_at_ms: i64,
    /// Started.
    pub started_at_ms: i64,
    /// Ended.
    pub finished_at_ms: i64,
    /// Devices excluded at planning, with reasons.
    pub exclusions: Vec<ExclusionView>,
}

impl RolloutView {
    /// From the API.
    pub fn new(r: &pb::Rollout) -> Self {
        Self {
            id: r.id.clone(),
            spec: r.spec.as_ref().map(SpecView::new),
            state: EnumView::new(r.state, vocab::rollout_state_name),
            state_reason: r.state_reason.clone(),
            current_stage: r.current_stage,
            stages: r
                .stages
                .iter()
                .map(|s| StageStatusView {
                    index: s.index,
                    name: s.name.clone(),
                    state: EnumView::new(s.state, vocab::stage_state_name),
                    device_ids: s.device_ids.clone(),
                    counts: CountsView::new(s.counts.as_ref()),
                    started_at_ms: s.started_at_ms,
                    deadline_at_ms: s.deadline_at_ms,
                    soak_until_ms: s.soak_until_ms,
                    finished_at_ms: s.finished_at_ms,
                })
                .collect(),
            totals: CountsView::new(r.totals.as_ref()),
            batch_check_timed_out: r.batch_check_timed_out.clone(),
            created_by: actor(r.created_by.as_ref()),
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            exclusions: r.exclusions.iter().map(exclusion).collect(),
        }
    }
}

/// `rollout list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutListView {
    /// Rollouts.
    pub rollouts: Vec<RolloutView>,
}

/// A planned stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStageView {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Devices.
    pub device_ids: Vec<String>,
    /// Estimated seconds.
    pub estimated_s: u32,
}

/// `rollout plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanView {
    /// Devices targeted.
    pub target_count: u32,
    /// Estimated total, seconds.
    pub estimated_duration_s: u32,
    /// Stages with their devices.
    pub stages: Vec<PlannedStageView>,
    /// Devices left out, with why.
    pub exclusions: Vec<ExclusionView>,
    /// Things to know.
    pub warnings: Vec<String>,
}

impl PlanView {
    /// From the API.
    pub fn new(p: &pb::RolloutPlan) -> Self {
        Self {
            target_count: p.target_count,
            estimated_duration_s: p.estimated_duration_s,
            stages: p
                .stages
                .iter()
                .map(|s| PlannedStageView {
                    index: s.index,
                    name: s.name.clone(),
                    device_ids: s.device_ids.clone(),
                    estimated_s: s.estimated_s,
                })
                .collect(),
            exclusions: p.exclusions.iter().map(exclusion).collect(),
            warnings: p.warnings.clone(),
        }
    }
}

/// One line of `rollout watch -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressView {
    /// Event sequence number this reflects.
    pub seq: u64,
    /// The rollout now.
    pub rollout: Option<RolloutView>,
    /// Tasks changed since the previous line.
    pub tasks: Vec<TaskView>,
}

impl ProgressView {
    /// From the API.
    pub fn new(p: &pb::RolloutProgress) -> Self {
        Self {
            seq: p.seq,
            rollout: p.rollout.as_ref().map(RolloutView::new),
            tasks: p.tasks.iter().map(TaskView::new).collect(),
        }
    }
}

// === events ===

/// One line of `events tail -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// Global sequence number.
    pub seq: u64,
    /// Stream ("firmware/<id>", ...).
    pub stream: String,
    /// Version of the stream after this event.
    pub stream_version: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Payload schema version as stored.
    pub schema_version: u32,
    /// When recorded.
    pub recorded_at_ms: i64,
    /// Who caused it.
    pub actor: String,
    /// The payload as JSON (a string if the server sent something that is not JSON).
    pub payload: serde_json::Value,
}

impl EventView {
    /// From the API.
    pub fn new(e: &pb::Event) -> Self {
        let payload = if e.payload_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&e.payload_json)
                .unwrap_or_else(|_| serde_json::Value::String(e.payload_json.clone()))
        };
        Self {
            seq: e.seq,
            stream: e.stream.clone(),
            stream_version: e.stream_version,
            kind: e.r#type.clone(),
            schema_version: e.schema_version,
            recorded_at_ms: e.recorded_at_ms,
            actor: e.actor.clone(),
            payload,
        }
    }
}

// === sites and tokens ===

/// A transport instance at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransportInstanceView {
    /// Transport.
    pub kind: EnumView,
    /// Instance name.
    pub name: String,
    /// Devices on it.
    pub device_count: u32,
    /// Its link is up.
    pub connected: bool,
    /// Detail.
    pub detail: String,
}

/// A site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteView {
    /// Id.
    pub id: String,
    /// Agent connected now.
    pub agent_connected: bool,
    /// Agent version.
    pub agent_version: String,
    /// Agent installation id.
    pub agent_id: String,
    /// Connected since.
    pub connected_since_ms: i64,
    /// Last heartbeat.
    pub last_heartbeat_ms: i64,
    /// Time zone.
    pub timezone: String,
    /// Transports.
    pub transports: Vec<TransportInstanceView>,
    /// Devices.
    pub device_count: u32,
    /// Reachable devices.
    pub reachable_count: u32,
    /// Tasks running.
    pub running_tasks: u32,
    /// Agent's remote address.
    pub peer: String,
}

impl SiteView {
    /// From the API.
    pub fn new(s: &pb::Site) -> Self {
        Self {
            id: s.id.clone(),
            agent_connected: s.agent_connected,
            agent_version: s.agent_version.clone(),
            agent_id: s.agent_id.clone(),
            connected_since_ms: s.connected_since_ms,
            last_heartbeat_ms: s.last_heartbeat_ms,
            timezone: s.timezone.clone(),
            transports: s
                .transports
                .iter()
                .map(|t| TransportInstanceView {
                    kind: EnumView::new(t.kind, vocab::transport_name),
                    name: t.name.clone(),
                    device_count: t.device_count,
                    connected: t.connected,
                    detail: t.detail.clone(),
                })
                .collect(),
            device_count: s.device_count,
            reachable_count: s.reachable_count,
            running_tasks: s.running_tasks,
            peer: s.peer.clone(),
        }
    }
}

/// `site list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteListView {
    /// Sites.
    pub sites: Vec<SiteView>,
}

/// A token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Who it is for.
    pub name: String,
    /// viewer, operator, admin.
    pub role: EnumView,
    /// Created.
    pub created_at_ms: i64,
    /// Expiry; null: never.
    pub expires_at_ms: Option<i64>,
    /// Revoked.
    pub revoked: bool,
    /// Creator.
    pub created_by: Option<ActorView>,
}

impl TokenView {
    /// From the API.
    pub fn new(t: &pb::TokenInfo) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            role: EnumView::new(t.role, vocab::role_name),
            created_at_ms: t.created_at_ms,
            expires_at_ms: (t.expires_at_ms != 0).then_some(t.expires_at_ms),
            revoked: t.revoked,
            created_by: actor(t.created_by.as_ref()),
        }
    }
}

/// `token create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedTokenView {
    /// The bearer token (shown only here).
    pub token: String,
    /// Its description.
    pub info: Option<TokenView>,
}

/// `token list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenListView {
    /// Tokens.
    pub tokens: Vec<TokenView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn task_shape() {
        let t = pb::Task {
            id: "t-1".into(),
            device_id: "home/0x01".into(),
            site_id: "home".into(),
            firmware_id: "fw-00".into(),
            status: 2,
            progress: 45.5,
            remaining_s: Some(80),
            attempt: 1,
            max_attempts: 3,
            upgrade_type: 2,
            from: Some(pb::VersionInfo {
                version: "1.0".into(),
                file_version: Some(16),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            json(&TaskView::new(&t)),
            r#"{"id":"t-1","device_id":"home/0x01","site_id":"home","rollout_id":"","stage":0,"firmware_id":"fw-00","target":null,"status":{"code":2,"name":"updating"},"progress":45.5,"remaining_s":80,"error":null,"remind":"","attempt":1,"max_attempts":3,"upgrade_type":{"code":2,"name":"forced"},"downgrade":false,"from":{"version":"1.0","file_version":16,"software_build_id":"","date_code":""},"to":null,"created_at_ms":0,"started_at_ms":0,"finished_at_ms":0,"next_attempt_at_ms":0,"awaiting_confirmation":false,"requested_by":null,"bytes_sent":0,"bytes_total":0}"#
        );
    }

    #[test]
    fn check_report_shape_and_failure_rules() {
        let timed_out = pb::DeviceCheck {
            device_id: "home/a".into(),
            status: 4,
            error: Some(pb::TaskError {
                code: 5019,
                message: "no answer in 60s".into(),
            }),
            ..Default::default()
        };
        let r = CheckReportView::single(&timed_out);
        assert_eq!(
            json(&r),
            r#"{"checks":[{"device_id":"home/a","status":{"code":4,"name":"failure"},"current":null,"available_firmware_id":"","available":null,"can_upgrade":false,"remind":"","error":{"code":5019,"name":"bulk-check-timeout","message":"no answer in 60s"},"reachable":false,"checked_at_ms":0}],"available":0,"up_to_date":0,"timed_out":1,"failed":0}"#
        );
        assert!(r.checks[0].failed() && r.checks[0].timed_out());
        let ok = pb::DeviceCheck {
            device_id: "home/b".into(),
            status: 1,
            error: Some(pb::TaskError::default()),
            ..Default::default()
        };
        let r = CheckReportView::single(&ok);
        assert_eq!(r.available, 1);
        assert!(r.checks[0].error.is_none());
        assert!(!r.checks[0].failed());
    }

    #[test]
    fn firmware_shape() {
        let f = pb::Firmware {
            id: "fw-0011223344556677".into(),
            name: "hue".into(),
            version: "2.3".into(),
            format: 1,
            channel: 3,
            size: 1024,
            sha256: "ab".into(),
            zigbee: Some(pb::ZigbeeImageInfo {
                manufacturer_code: 4107,
                image_type: 1,
                file_version: 0x0203_0093,
                ..Default::default()
            }),
            labels: [("vendor".to_string(), "signify".to_string())].into(),
            signatures: vec![pb::FirmwareSignature {
                key_id: "k".into(),
                signature: vec![0xde, 0xad],
                added_at_ms: 5,
                added_by: Some(pb::Actor {
                    name: "alice".into(),
                    role: "admin".into(),
                }),
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(FirmwareView::new(&f)).unwrap();
        assert_eq!(
            v["format"],
            serde_json::json!({"code": 1, "name": "zigbee-ota"})
        );
        assert_eq!(
            v["channel"],
            serde_json::json!({"code": 3, "name": "zigbee"})
        );
        assert_eq!(v["zigbee"]["manufacturer_code"], 4107);
        assert_eq!(v["esp"], serde_json::Value::Null);
        assert_eq!(v["labels"], serde_json::json!({"vendor": "signify"}));
        assert_eq!(
            v["signatures"],
            serde_json::json!([{"key_id": "k", "signature": "dead", "added_at_ms": 5,
                "added_by": {"name": "alice", "role": "admin"}}])
        );
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "id",
            "name",
            "version",
            "format",
            "channel",
            "size",
            "sha256",
            "md5",
            "sha512",
            "zigbee",
            "esp",
            "labels",
            "release_notes",
            "created_at_ms",
            "created_by",
            "signatures",
            "active_rollouts",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn event_payload_is_embedded_json() {
        let e = pb::Event {
            seq: 1,
            stream: "firmware/fw-1".into(),
            stream_version: 1,
            r#type: "FirmwareRegistered".into(),
            schema_version: 1,
            recorded_at_ms: 1_700_000_000_000,
            actor: "alice".into(),
            payload_json: r#"{"id":"fw-1","size":3}"#.into(),
        };
        assert_eq!(
            json(&EventView::new(&e)),
            r#"{"seq":1,"stream":"firmware/fw-1","stream_version":1,"type":"FirmwareRegistered","schema_version":1,"recorded_at_ms":1700000000000,"actor":"alice","payload":{"id":"fw-1","size":3}}"#
        );
        let odd = pb::Event {
            payload_json: "not json".into(),
            ..e
        };
        assert_eq!(
            EventView::new(&odd).payload,
            serde_json::Value::String("not json".into())
        );
    }

    #[test]
    fn rollout_shapes() {
        let r = pb::Rollout {
            id: "ro-1".into(),
            state: 3,
            state_reason: "stage canary: 2 failures >= threshold 1".into(),
            spec: Some(pb::RolloutSpec {
                name: "n".into(),
                firmware_id: "fw-1".into(),
                stages: vec![pb::Stage {
                    name: "canary".into(),
                    size: Some(pb::stage::Size::Count(5)),
                    failure_threshold: Some(pb::Threshold {
                        value: Some(pb::threshold::Value::Percent(10.0)),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            totals: Some(pb::TaskCounts {
                total: 5,
                succeeded: 3,
                failed: 2,
                ..Default::default()
            }),
            exclusions: vec![pb::Exclusion {
                device_id: "home/x".into(),
                code: 5000,
                reason: "already on 2.3".into(),
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(RolloutView::new(&r)).unwrap();
        assert_eq!(v["state"], serde_json::json!({"code": 3, "name": "paused"}));
        assert_eq!(
            v["spec"]["stages"][0],
            serde_json::json!({"name": "canary", "count": 5, "cumulative_percent": null,
                "success_threshold": null, "failure_threshold": {"percent": 10.0},
                "on_failure": {"code": 0, "name": "pause"}, "deadline_s": 0, "soak_s": 0})
        );
        assert_eq!(v["totals"]["failed"], 2);
        assert_eq!(
            v["exclusions"][0],
            serde_json::json!({"device_id": "home/x",
                "code": {"code": 5000, "name": "already-on-target"}, "reason": "already on 2.3"})
        );
        let counts = CountsView::new(r.totals.as_ref());
        assert_eq!(counts.done(), 5);
        assert_eq!(counts.nonzero(), vec![("succeeded", 3), ("failed", 2)]);
    }

    #[test]
    fn token_expiry_is_null_when_never() {
        let t = pb::TokenInfo {
            id: "tok-1".into(),
            name: "ci".into(),
            role: 1,
            ..Default::default()
        };
        assert_eq!(
            json(&TokenView::new(&t)),
            r#"{"id":"tok-1","name":"ci","role":{"code":1,"name":"viewer"},"created_at_ms":0,"expires_at_ms":null,"revoked":false,"created_by":null}"#
        );
    }
}

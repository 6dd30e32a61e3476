//! The JSON documents of `otactl device ...` (see `crate::views` for the rules).

use ota_proto::v1 as pb;
use serde::Serialize;

use crate::views::{EnumJson, ErrorJson, TaskJson, VersionJson, error, version};
use crate::vocab;

/// A signal reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalJson {
    /// `linkquality` (0-255) or `rssi-dbm`.
    pub kind: EnumJson,
    /// The reading.
    pub value: i32,
}

/// A device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceJson {
    /// "<site>/<local id>".
    pub id: String,
    /// Site.
    pub site_id: String,
    /// Id within the site.
    pub local_id: String,
    /// Transport.
    pub transport: EnumJson,
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
    pub current: Option<VersionJson>,
    /// Power source.
    pub power_source: EnumJson,
    /// Battery percent.
    pub battery_percent: Option<u32>,
    /// Signal.
    pub signal: Option<SignalJson>,
    /// Reachable by its site now.
    pub reachable: bool,
    /// Supports OTA.
    pub supports_ota: bool,
    /// Hardware version.
    pub hardware_version: Option<u32>,
    /// zigbee2mqtt's update state.
    pub z2m_state: EnumJson,
    /// Last seen.
    pub last_seen_ms: i64,
    /// First seen.
    pub first_seen_ms: i64,
    /// Tags.
    pub tags: Vec<String>,
    /// Auto-upgrade switch.
    pub auto_upgrade: bool,
    /// Update status (Tuya number and name).
    pub status: EnumJson,
    /// Running or most recent task.
    pub current_task: Option<TaskJson>,
}

impl DeviceJson {
    /// From the API.
    pub fn new(d: &pb::Device) -> Self {
        Self {
            id: d.id.clone(),
            site_id: d.site_id.clone(),
            local_id: d.local_id.clone(),
            transport: EnumJson::new(d.transport, vocab::transport_name),
            network: d.network.clone(),
            name: d.name.clone(),
            model: d.model.clone(),
            vendor: d.vendor.clone(),
            manufacturer_code: d.manufacturer_code,
            image_type: d.image_type,
            chip: d.chip.clone(),
            platform: d.platform.clone(),
            current: version(d.current.as_ref()),
            power_source: EnumJson::new(d.power_source, vocab::power_name),
            battery_percent: d.battery_percent,
            signal: d.signal.as_ref().map(|s| SignalJson {
                kind: EnumJson::new(s.kind, vocab::signal_kind_name),
                value: s.value,
            }),
            reachable: d.reachable,
            supports_ota: d.supports_ota,
            hardware_version: d.hardware_version,
            z2m_state: EnumJson::new(d.z2m_state, vocab::z2m_state_name),
            last_seen_ms: d.last_seen_ms,
            first_seen_ms: d.first_seen_ms,
            tags: d.tags.clone(),
            auto_upgrade: d.auto_upgrade,
            status: EnumJson::new(d.status, vocab::status_name),
            current_task: d.current_task.as_ref().map(TaskJson::new),
        }
    }
}

/// `device list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceListJson {
    /// Ordered by id.
    pub devices: Vec<DeviceJson>,
    /// Devices matching the filters (as the server counted them).
    pub total: u32,
}

/// The answer of one device to a check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckJson {
    /// Device.
    pub device_id: String,
    /// 0 none, 1 available, 4 failure, 5 asleep (answers when it wakes).
    pub status: EnumJson,
    /// What it runs.
    pub current: Option<VersionJson>,
    /// Best newer firmware, if any.
    pub available_firmware_id: String,
    /// Its version.
    pub available: Option<VersionJson>,
    /// Whether an update could start now.
    pub can_upgrade: bool,
    /// Why not.
    pub remind: String,
    /// Why the check failed (5012, 5019, 5020, ...).
    pub error: Option<ErrorJson>,
    /// Reachable.
    pub reachable: bool,
    /// When checked.
    pub checked_at_ms: i64,
}

impl CheckJson {
    /// From the API.
    pub fn new(c: &pb::DeviceCheck) -> Self {
        Self {
            device_id: c.device_id.clone(),
            status: EnumJson::new(c.status, vocab::status_name),
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

    /// A sleepy device asleep now (status 5): it answers when it wakes. Not a failure.
    pub fn asleep(&self) -> bool {
        self.status.code == pb::UpgradeStatus::WaitingForWakeup as i32
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
pub struct CheckReportJson {
    /// One entry per device, never dropped.
    pub checks: Vec<CheckJson>,
    /// Devices with an update available.
    pub available: u32,
    /// Devices up to date.
    pub up_to_date: u32,
    /// Devices that did not answer in time (5019).
    pub timed_out: u32,
    /// Other failures.
    pub failed: u32,
    /// Sleepy devices asleep now (status 5): not failures, they answer when they wake.
    pub asleep: u32,
}

impl CheckReportJson {
    /// From a batch answer.
    pub fn batch(r: &pb::BatchCheckResponse) -> Self {
        Self {
            checks: r.checks.iter().map(CheckJson::new).collect(),
            available: r.available,
            up_to_date: r.up_to_date,
            timed_out: r.timed_out,
            failed: r.failed,
            asleep: r.asleep,
        }
    }

    /// From a single check (counts computed here).
    pub fn single(c: &pb::DeviceCheck) -> Self {
        let v = CheckJson::new(c);
        let timed_out = u32::from(v.timed_out());
        let failed = u32::from(v.failed() && !v.timed_out());
        let available =
            u32::from(!v.failed() && v.status.code == pb::UpgradeStatus::Available as i32);
        let up_to_date = u32::from(!v.failed() && v.status.code == pb::UpgradeStatus::None as i32);
        let asleep = u32::from(v.asleep());
        Self {
            checks: vec![v],
            available,
            up_to_date,
            timed_out,
            failed,
            asleep,
        }
    }
}

/// `device update`, `device flash`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateJson {
    /// The task, as last seen.
    pub task: Option<TaskJson>,
    /// Version before.
    pub from: Option<VersionJson>,
    /// Version after (once the task succeeded).
    pub to: Option<VersionJson>,
}

impl UpdateJson {
    /// From a task (its from/to versions).
    pub fn from_task(t: &pb::Task) -> Self {
        Self {
            task: Some(TaskJson::new(t)),
            from: version(t.from.as_ref()),
            to: version(t.to.as_ref()),
        }
    }

    /// From the Update answer.
    pub fn new(r: &pb::UpdateDeviceResponse) -> Self {
        Self {
            task: r.task.as_ref().map(TaskJson::new),
            from: version(r.from.as_ref()),
            to: version(r.to.as_ref()),
        }
    }
}

/// `device auto-upgrade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoUpgradeJson {
    /// Device.
    pub device_id: String,
    /// Whether the device can take automatic upgrades at all.
    pub supported: bool,
    /// The switch.
    pub enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
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
        let r = CheckReportJson::single(&timed_out);
        assert_eq!(
            json(&r),
            r#"{"checks":[{"device_id":"home/a","status":{"code":4,"name":"failure"},"current":null,"available_firmware_id":"","available":null,"can_upgrade":false,"remind":"","error":{"code":5019,"name":"bulk-check-timeout","message":"no answer in 60s"},"reachable":false,"checked_at_ms":0}],"available":0,"up_to_date":0,"timed_out":1,"failed":0,"asleep":0}"#
        );
        assert!(r.checks[0].failed() && r.checks[0].timed_out());
        let ok = pb::DeviceCheck {
            device_id: "home/b".into(),
            status: 1,
            error: Some(pb::TaskError::default()),
            ..Default::default()
        };
        let r = CheckReportJson::single(&ok);
        assert_eq!(r.available, 1);
        assert!(r.checks[0].error.is_none());
        assert!(!r.checks[0].failed());
    }
}

//! The pieces of otactl's JSON documents that several command groups share (enum values,
//! errors, actors, versions, tasks), and how each reads in a table.
//!
//! Each group's own documents live with its command code (`cmd/<group>`, in `view.rs` where the
//! group has a directory). They are plain serde structs converted from the prost types at the
//! edge, so the output is a deliberate, documented contract (see `ctl/README.md`) rather than
//! whatever the wire types happen to be; they are named `*Json` so that nobody mistakes them
//! for the server's projection views. Rules: every key is always present; enum values are
//! objects `{"code": <number>, "name": "<name>"}`; times are Unix milliseconds (`0` =
//! never/unknown, or `null` where noted); digests and signatures are lowercase hex; an absent
//! message is `null`. Keys are only ever added, never renamed or removed.

use ota_proto::v1 as pb;
use serde::Serialize;

use crate::output::{fmt_time, hex, numbered};
use crate::vocab;

/// An enum value: its number and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnumJson {
    /// The number, as in the API (Tuya numbers for statuses and errors).
    pub code: i32,
    /// The short name (`updating`, `bulk-check-timeout`, `zigbee2mqtt`).
    pub name: String,
}

impl EnumJson {
    /// A number and the name `name` gives it.
    pub fn new(code: i32, name: fn(i32) -> String) -> Self {
        Self {
            code,
            name: name(code),
        }
    }
}

/// `{"code": 5019, "name": "bulk-check-timeout", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorJson {
    /// Error number (5000-5099).
    pub code: i32,
    /// Short name.
    pub name: String,
    /// What happened, in the server's or transport's words.
    pub message: String,
}

/// An error only when there is one (code 0 and no message: `null`).
pub fn error(e: Option<&pb::TaskError>) -> Option<ErrorJson> {
    e.filter(|e| e.code != 0 || !e.message.is_empty())
        .map(|e| ErrorJson {
            code: e.code,
            name: vocab::error_name(e.code),
            message: e.message.clone(),
        })
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorJson {
    /// Token name, `agent:<site>` or `otad`.
    pub name: String,
    /// Role used.
    pub role: String,
}

/// Who did something, when the server says.
pub fn actor(a: Option<&pb::Actor>) -> Option<ActorJson> {
    a.map(|a| ActorJson {
        name: a.name.clone(),
        role: a.role.clone(),
    })
}

/// A firmware version as a device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionJson {
    /// Human version.
    pub version: String,
    /// Zigbee OTA file version, if known.
    pub file_version: Option<u32>,
    /// Zigbee swBuildId.
    pub software_build_id: String,
    /// Zigbee dateCode.
    pub date_code: String,
}

/// A version, when there is one.
pub fn version(v: Option<&pb::VersionInfo>) -> Option<VersionJson> {
    v.map(|v| VersionJson {
        version: v.version.clone(),
        file_version: v.file_version,
        software_build_id: v.software_build_id.clone(),
        date_code: v.date_code.clone(),
    })
}

/// A device update task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskJson {
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
    pub target: Option<VersionJson>,
    /// Status (Tuya number and name).
    pub status: EnumJson,
    /// Percent, 0-100.
    pub progress: f32,
    /// Seconds left, while updating.
    pub remaining_s: Option<u32>,
    /// Why it failed or waits.
    pub error: Option<ErrorJson>,
    /// Why it was skipped or waits, for a person.
    pub remind: String,
    /// Attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How it is offered.
    pub upgrade_type: EnumJson,
    /// Installs an older version.
    pub downgrade: bool,
    /// Version before.
    pub from: Option<VersionJson>,
    /// Version after.
    pub to: Option<VersionJson>,
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
    pub requested_by: Option<ActorJson>,
    /// Bytes delivered so far.
    pub bytes_sent: u64,
    /// Bytes in total.
    pub bytes_total: u64,
    /// Succeeded after the server had ended it (timed out or cancelled).
    pub late: bool,
    /// When the budget of the current phase runs out (0: none).
    pub phase_deadline_ms: i64,
    /// While the site watches the device's health: when the window ends (0: not verifying).
    pub verifying_until_ms: i64,
    /// How a success's health was established: not-checked, healthy, reachable or
    /// unconfirmed (the target version was written, its health is unknown: no success).
    pub health: String,
}

impl TaskJson {
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
            status: EnumJson::new(t.status, vocab::status_name),
            progress: t.progress,
            remaining_s: t.remaining_s,
            error: error(t.error.as_ref()),
            remind: t.remind.clone(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            upgrade_type: EnumJson::new(t.upgrade_type, vocab::upgrade_type_name),
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
            late: t.late,
            phase_deadline_ms: t.phase_deadline_ms,
            verifying_until_ms: t.verifying_until_ms,
            health: vocab::health_name(t.health),
        }
    }
}

// === for people ===

/// A version for people: the version string, or the Zigbee file version in hex when that is
/// all there is (or the string is just its decimal form).
pub fn ver(v: Option<&VersionJson>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) => match v.file_version {
            Some(n) if v.version.is_empty() || v.version == n.to_string() => hex(n, 8),
            _ if v.version.is_empty() => "-".to_string(),
            _ => v.version.clone(),
        },
    }
}

/// Who, for people: "alice (admin)", or nothing.
pub fn who(a: Option<&ActorJson>) -> String {
    a.map_or_else(String::new, |a| {
        if a.role.is_empty() {
            a.name.clone()
        } else {
            format!("{} ({})", a.name, a.role)
        }
    })
}

/// "2026-11-24T07:30:00Z by alice (admin)", leaving out what is unknown.
pub fn when_by(ms: i64, who: Option<&ActorJson>) -> String {
    let who = self::who(who);
    if who.is_empty() {
        fmt_time(ms)
    } else {
        format!("{} by {who}", fmt_time(ms))
    }
}

/// "2 updating": the number and the name.
pub fn en(e: &EnumJson) -> String {
    numbered(e.code, &e.name)
}

/// "5018 the device reported a failure: <message>", or nothing.
pub fn err(e: Option<&ErrorJson>) -> String {
    e.map_or_else(String::new, |e| {
        let mut s = format!("{} {}", e.code, crate::vocab::error_text(e.code));
        if !e.message.is_empty() {
            s.push_str(": ");
            s.push_str(&e.message);
        }
        s
    })
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
            json(&TaskJson::new(&t)),
            r#"{"id":"t-1","device_id":"home/0x01","site_id":"home","rollout_id":"","stage":0,"firmware_id":"fw-00","target":null,"status":{"code":2,"name":"updating"},"progress":45.5,"remaining_s":80,"error":null,"remind":"","attempt":1,"max_attempts":3,"upgrade_type":{"code":2,"name":"forced"},"downgrade":false,"from":{"version":"1.0","file_version":16,"software_build_id":"","date_code":""},"to":null,"created_at_ms":0,"started_at_ms":0,"finished_at_ms":0,"next_attempt_at_ms":0,"awaiting_confirmation":false,"requested_by":null,"bytes_sent":0,"bytes_total":0,"late":false,"phase_deadline_ms":0,"verifying_until_ms":0,"health":"not-checked"}"#
        );
    }

    #[test]
    fn versions_fall_back_to_the_file_version() {
        let v = VersionJson {
            version: String::new(),
            file_version: Some(0x0203_0093),
            software_build_id: String::new(),
            date_code: String::new(),
        };
        assert_eq!(ver(Some(&v)), "0x02030093");
        let decimal = VersionJson {
            version: "33751187".into(),
            ..v.clone()
        };
        assert_eq!(ver(Some(&decimal)), "0x02030093");
        let esp = VersionJson {
            version: "2026.11.1".into(),
            file_version: None,
            ..v
        };
        assert_eq!(ver(Some(&esp)), "2026.11.1");
        assert_eq!(ver(None), "-");
    }
}

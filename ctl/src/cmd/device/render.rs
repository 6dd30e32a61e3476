//! How the results of `otactl device ...` read in a terminal.

use super::view::{
    AutoUpgradeJson, CheckReportJson, DeviceJson, DeviceListJson, SignalJson, UpdateJson,
};
use crate::output::{
    fields, fmt_ago, fmt_bytes, fmt_secs, fmt_time, hex, now_ms, render, section, table, yes_no,
};
use crate::views::{TaskJson, en, err, ver, who};

fn signal(s: Option<&SignalJson>) -> String {
    match s {
        None => "-".to_string(),
        Some(s) if s.kind.name == "rssi-dbm" => format!("{} dBm", s.value),
        Some(s) if s.kind.name == "linkquality" => format!("lqi {}", s.value),
        Some(s) => s.value.to_string(),
    }
}

fn task_progress(t: Option<&TaskJson>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    if crate::vocab::is_terminal(t.status.code) {
        return String::new();
    }
    let mut s = String::new();
    if t.status.code == 2 || t.progress > 0.0 {
        s = format!("{:.0}%", t.progress);
    }
    if let Some(r) = t.remaining_s.filter(|r| *r > 0) {
        s.push_str(&format!(" {} left", fmt_secs(u64::from(r))));
    }
    if t.awaiting_confirmation {
        s.push_str(" confirm?");
    }
    s.trim().to_string()
}

/// `device list`.
pub fn device_list(l: &DeviceListJson) -> String {
    let mut t = table(&[
        "id",
        "name",
        "transport",
        "model",
        "version",
        "battery",
        "signal",
        "reachable",
        "status",
        "progress",
    ]);
    for d in &l.devices {
        t.add_row(vec![
            d.id.clone(),
            d.name.clone(),
            d.transport.name.clone(),
            d.model.clone(),
            ver(d.current.as_ref()),
            d.battery_percent
                .map_or_else(|| "-".to_string(), |b| format!("{b}%")),
            signal(d.signal.as_ref()),
            yes_no(d.reachable),
            en(&d.status),
            task_progress(d.current_task.as_ref()),
        ]);
    }
    let body = render(&t, "no devices match");
    if l.devices.is_empty() {
        body
    } else {
        format!(
            "{body}\n\n{} of {} devices",
            l.devices.len(),
            l.total
                .max(u32::try_from(l.devices.len()).unwrap_or(u32::MAX),)
        )
    }
}

fn task_fields(t: &TaskJson) -> String {
    let mut rows = vec![
        ("Task", t.id.clone()),
        ("Status", en(&t.status)),
        ("Firmware", t.firmware_id.clone()),
        ("Target version", ver(t.target.as_ref())),
        ("From", ver(t.from.as_ref())),
        ("To", ver(t.to.as_ref())),
        ("Progress", {
            let mut s = format!("{:.0}%", t.progress);
            if t.bytes_total > 0 {
                s.push_str(&format!(
                    " ({} of {})",
                    fmt_bytes(t.bytes_sent),
                    fmt_bytes(t.bytes_total)
                ));
            }
            if let Some(r) = t.remaining_s {
                s.push_str(&format!(", {} left", fmt_secs(u64::from(r))));
            }
            s
        }),
        ("Error", err(t.error.as_ref())),
        ("Note", t.remind.clone()),
        ("Attempt", format!("{} of {}", t.attempt, t.max_attempts)),
        ("Upgrade type", en(&t.upgrade_type)),
        ("Downgrade", yes_no(t.downgrade)),
        ("Awaiting confirmation", yes_no(t.awaiting_confirmation)),
        (
            "Rollout",
            if t.rollout_id.is_empty() {
                String::new()
            } else {
                format!("{} (stage {})", t.rollout_id, t.stage)
            },
        ),
        ("Requested by", who(t.requested_by.as_ref())),
        ("Created", fmt_time(t.created_at_ms)),
        ("Started", fmt_time(t.started_at_ms)),
        ("Finished", fmt_time(t.finished_at_ms)),
    ];
    if t.next_attempt_at_ms > 0 {
        rows.push(("Next attempt", fmt_time(t.next_attempt_at_ms)));
    }
    if t.verifying_until_ms > 0 {
        rows.push((
            "Health",
            format!(
                "on the target version; watching its health until {}",
                fmt_time(t.verifying_until_ms)
            ),
        ));
    } else if t.health != "not-checked" {
        rows.push(("Health", t.health.clone()));
    }
    fields(&rows)
}

/// `device show`.
pub fn device(d: &DeviceJson) -> String {
    let now = now_ms();
    let opt_hex = |v: Option<u32>| v.map_or_else(String::new, |n| hex(n, 4));
    let cur = d.current.as_ref();
    let mut out = fields(&[
        ("ID", d.id.clone()),
        ("Name", d.name.clone()),
        ("Site", d.site_id.clone()),
        ("Local id", d.local_id.clone()),
        (
            "Transport",
            if d.network.is_empty() || d.network == d.transport.name {
                d.transport.name.clone()
            } else {
                format!("{} ({})", d.transport.name, d.network)
            },
        ),
        ("Vendor", d.vendor.clone()),
        ("Model", d.model.clone()),
        ("Manufacturer code", opt_hex(d.manufacturer_code)),
        ("Image type", opt_hex(d.image_type)),
        ("Chip", d.chip.clone()),
        ("Platform", d.platform.clone()),
        (
            "Hardware version",
            d.hardware_version
                .map_or_else(String::new, |h| h.to_string()),
        ),
        ("Version", ver(cur)),
        (
            "File version",
            cur.and_then(|c| c.file_version)
                .map_or_else(String::new, |f| format!("{} ({f})", hex(f, 8))),
        ),
        (
            "Build",
            cur.map_or_else(String::new, |c| {
                format!("{} {}", c.software_build_id, c.date_code)
                    .trim()
                    .to_string()
            }),
        ),
        ("Power", d.power_source.name.clone()),
        (
            "Battery",
            d.battery_percent
                .map_or_else(String::new, |b| format!("{b}%")),
        ),
        ("Signal", signal(d.signal.as_ref())),
        ("Reachable", yes_no(d.reachable)),
        ("Supports OTA", yes_no(d.supports_ota)),
        (
            "Auto-upgrade",
            if d.auto_upgrade { "on" } else { "off" }.to_string(),
        ),
        (
            "zigbee2mqtt state",
            if d.z2m_state.code == 0 {
                String::new()
            } else {
                d.z2m_state.name.clone()
            },
        ),
        ("Tags", d.tags.join(", ")),
        ("Status", en(&d.status)),
        (
            "Last seen",
            format!(
                "{} ({})",
                fmt_time(d.last_seen_ms),
                fmt_ago(d.last_seen_ms, now)
            ),
        ),
        ("First seen", fmt_time(d.first_seen_ms)),
    ]);
    match &d.current_task {
        Some(t) => section(&mut out, "Current task", &task_fields(t)),
        None => section(&mut out, "Current task", "none"),
    }
    out
}

/// `device check`.
pub fn checks(r: &CheckReportJson) -> String {
    let mut t = table(&[
        "device",
        "status",
        "current",
        "available",
        "can upgrade",
        "reachable",
        "note",
    ]);
    for c in &r.checks {
        let available = if c.available_firmware_id.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} ({})",
                ver(c.available.as_ref()),
                c.available_firmware_id
            )
        };
        let note = if c.error.is_some() {
            err(c.error.as_ref())
        } else if c.asleep() && c.remind.is_empty() {
            "asleep: the check completes when it next wakes up".to_string()
        } else {
            c.remind.clone()
        };
        t.add_row(vec![
            c.device_id.clone(),
            en(&c.status),
            ver(c.current.as_ref()),
            available,
            yes_no(c.can_upgrade),
            yes_no(c.reachable),
            note,
        ]);
    }
    let mut out = render(&t, "no devices matched");
    out.push_str(&format!(
        "\n\n{} available, {} up to date, {} no answer in time (5019), {} failed",
        r.available, r.up_to_date, r.timed_out, r.failed
    ));
    if r.asleep > 0 {
        out.push_str(&format!(
            ", {} asleep (each answers when it next wakes up; `otactl device show` has it then)",
            r.asleep
        ));
    }
    let late: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| c.timed_out())
        .map(|c| c.device_id.as_str())
        .collect();
    if !late.is_empty() {
        out.push_str(&format!(
            "\nNo answer within the timeout (5019): {}",
            late.join(", ")
        ));
    }
    out
}

/// `device update`/`flash` result.
pub fn update(u: &UpdateJson) -> String {
    let Some(t) = &u.task else {
        return "no task".to_string();
    };
    let from = ver(u.from.as_ref().or(t.from.as_ref()));
    let to = ver(u.to.as_ref().or(t.to.as_ref()).or(t.target.as_ref()));
    match t.status.code {
        3 => format!(
            "Device {} was updated from {from} to {to} (task {}).",
            t.device_id, t.id
        ),
        4 | 7 => format!(
            "Update of {} failed ({}): {}\n\n{}",
            t.device_id,
            en(&t.status),
            if t.error.is_some() {
                err(t.error.as_ref())
            } else {
                "no error reported".to_string()
            },
            task_fields(t)
        ),
        _ => format!(
            "Update of {} to {to} started: task {} is {}.\nFollow it with `otactl device show {}`.",
            t.device_id,
            t.id,
            en(&t.status),
            t.device_id
        ),
    }
}

/// A task (cancel, confirm).
pub fn task(t: &TaskJson) -> String {
    task_fields(t)
}

/// `device cancel`.
pub fn cancelled(t: &TaskJson) -> String {
    format!(
        "Task {} of {} is {}.\n\n{}",
        t.id,
        t.device_id,
        t.status.name,
        task(t)
    )
}

/// `device confirm`: whether the update goes on.
pub fn confirmed(t: &TaskJson, proceed: bool) -> String {
    let verdict = if proceed {
        "continues despite the weak signal"
    } else {
        "was cancelled"
    };
    format!("The update of {} {verdict}.\n\n{}", t.device_id, task(t))
}

/// `device auto-upgrade`.
pub fn auto_upgrade(a: &AutoUpgradeJson) -> String {
    let mut s = format!(
        "Auto-upgrade for {} is {}.",
        a.device_id,
        if a.enabled { "on" } else { "off" }
    );
    if !a.supported {
        s.push_str(" (The device does not support OTA updates, so nothing will be applied.)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_proto::v1 as pb;

    #[test]
    fn update_results_read_like_zigbee2mqtt() {
        let t = pb::Task {
            id: "t-1".into(),
            device_id: "home/lamp".into(),
            status: 3,
            from: Some(pb::VersionInfo {
                version: "1.0".into(),
                ..Default::default()
            }),
            to: Some(pb::VersionInfo {
                version: "1.1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            update(&UpdateJson::from_task(&t)),
            "Device home/lamp was updated from 1.0 to 1.1 (task t-1)."
        );
        let failed = pb::Task {
            status: 4,
            error: Some(pb::TaskError {
                code: 5018,
                message: "failed with reason: ABORT".into(),
            }),
            ..t
        };
        let s = update(&UpdateJson::from_task(&failed));
        assert!(
            s.starts_with(
                "Update of home/lamp failed (4 failure): 5018 the device reported a failure: \
                 failed with reason: ABORT"
            ),
            "{s}"
        );
    }

    #[test]
    fn checks_list_late_devices() {
        let r = CheckReportJson::batch(&pb::BatchCheckResponse {
            checks: vec![
                pb::DeviceCheck {
                    device_id: "home/a".into(),
                    status: 1,
                    available_firmware_id: "fw-1".into(),
                    available: Some(pb::VersionInfo {
                        version: "2.0".into(),
                        ..Default::default()
                    }),
                    can_upgrade: true,
                    reachable: true,
                    ..Default::default()
                },
                pb::DeviceCheck {
                    device_id: "home/b".into(),
                    status: 4,
                    error: Some(pb::TaskError {
                        code: 5019,
                        message: String::new(),
                    }),
                    ..Default::default()
                },
            ],
            available: 1,
            timed_out: 1,
            ..Default::default()
        });
        let s = checks(&r);
        assert!(s.contains("2.0 (fw-1)"), "{s}");
        assert!(s.contains("5019 no answer within the check timeout"), "{s}");
        assert!(
            s.ends_with("No answer within the timeout (5019): home/b"),
            "{s}"
        );
    }
}

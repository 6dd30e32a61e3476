//! Human renderings of the views: tables for lists, field blocks for single things.
//!
//! Everything here is a pure function from a view to a `String`, so it is easy to test and
//! never mixes with the JSON printer. Numbers people recognise in hex (Zigbee codes and file
//! versions) are shown in hex; statuses and errors show their Tuya number and name.

use crate::output::{
    fields, fmt_ago, fmt_bytes, fmt_secs, fmt_time, hex, now_ms, numbered, render, table, yes_no,
};
use crate::views::*;

/// A version for people: the version string, or the Zigbee file version in hex when that is
/// all there is (or the string is just its decimal form).
fn ver(v: Option<&VersionView>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) => match v.file_version {
            Some(n) if v.version.is_empty() || v.version == n.to_string() => hex(n, 8),
            _ if v.version.is_empty() => "-".to_string(),
            _ => v.version.clone(),
        },
    }
}

fn actor(a: Option<&ActorView>) -> String {
    a.map_or_else(String::new, |a| {
        if a.role.is_empty() {
            a.name.clone()
        } else {
            format!("{} ({})", a.name, a.role)
        }
    })
}

/// "2026-11-24T07:30:00Z by alice (admin)", leaving out what is unknown.
fn when_by(ms: i64, who: Option<&ActorView>) -> String {
    let who = actor(who);
    if who.is_empty() {
        fmt_time(ms)
    } else {
        format!("{} by {who}", fmt_time(ms))
    }
}

fn en(e: &EnumView) -> String {
    numbered(e.code, &e.name)
}

fn err(e: Option<&ErrorView>) -> String {
    e.map_or_else(String::new, |e| {
        let mut s = format!("{} {}", e.code, crate::vocab::error_text(e.code));
        if !e.message.is_empty() {
            s.push_str(": ");
            s.push_str(&e.message);
        }
        s
    })
}

fn threshold(t: Option<&ThresholdView>) -> String {
    match t {
        None => "default".to_string(),
        Some(ThresholdView::Count(c)) => c.to_string(),
        Some(ThresholdView::Percent(p)) => format!("{p}%"),
    }
}

fn section(out: &mut String, title: &str, body: &str) {
    out.push('\n');
    out.push_str(title);
    out.push_str(":\n");
    for line in body.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

// === server ===

/// `server status`.
pub fn server_status(s: &ServerStatusView) -> String {
    let log = s.event_log.as_ref();
    fields(&[
        ("Server", s.server.clone()),
        ("Version", s.version.clone()),
        (
            "Up since",
            format!("{} ({})", fmt_time(s.started_at_ms), fmt_secs(s.uptime_s)),
        ),
        (
            "Event log",
            log.map_or_else(String::new, |l| {
                format!(
                    "{} events, {}, replayed in {} ms",
                    l.last_seq,
                    fmt_bytes(l.size_bytes),
                    l.replay_ms
                )
            }),
        ),
        (
            "Sites",
            format!("{} ({} agents connected)", s.sites, s.connected_agents),
        ),
        ("Devices", s.devices.to_string()),
        ("Firmware", s.firmware.to_string()),
        ("Rollouts running", s.rollouts_running.to_string()),
        ("Tasks active", s.tasks_active.to_string()),
        (
            "TLS",
            if s.tls {
                yes_no(true)
            } else {
                "NO - WARNING: plaintext; tokens, reports and firmware travel unencrypted".into()
            },
        ),
        (
            "Auth required",
            if s.auth_required {
                yes_no(true)
            } else {
                "NO - WARNING: development mode; every caller is an administrator".into()
            },
        ),
        ("You are", actor(s.caller.as_ref())),
    ])
}

// === firmware ===

fn fw_facts(f: &FirmwareView) -> String {
    if let Some(z) = &f.zigbee {
        format!(
            "mfr {} type {} file {}",
            hex(z.manufacturer_code, 4),
            hex(z.image_type, 4),
            hex(z.file_version, 8)
        )
    } else if let Some(e) = &f.esp {
        let mut s = e.chip.clone();
        if !e.app_version.is_empty() {
            s.push_str(&format!(" app {}", e.app_version));
        }
        if let Some(o) = e.app_offset {
            s.push_str(&format!(" at {}", hex(o, 5)));
        }
        s
    } else {
        String::new()
    }
}

/// `firmware list`.
pub fn firmware_list(l: &FirmwareListView) -> String {
    let mut t = table(&[
        "id", "name", "version", "format", "size", "facts", "signed", "created",
    ]);
    for f in &l.firmware {
        t.add_row(vec![
            f.id.clone(),
            f.name.clone(),
            f.version.clone(),
            f.format.name.clone(),
            fmt_bytes(f.size),
            fw_facts(f),
            if f.signatures.is_empty() {
                "-".to_string()
            } else {
                f.signatures
                    .iter()
                    .map(|s| s.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            fmt_time(f.created_at_ms),
        ]);
    }
    render(&t, "no firmware (upload one with `otactl firmware upload`)")
}

/// `firmware show` (and the result of upload and sign).
pub fn firmware(f: &FirmwareView) -> String {
    let mut labels: Vec<String> = f.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let mut out = fields(&[
        ("ID", f.id.clone()),
        ("Name", f.name.clone()),
        ("Version", f.version.clone()),
        ("Format", f.format.name.clone()),
        ("Module", f.channel.name.clone()),
        ("Size", format!("{} ({} bytes)", fmt_bytes(f.size), f.size)),
        ("SHA-256", f.sha256.clone()),
        ("MD5", f.md5.clone()),
        ("SHA-512", f.sha512.clone()),
        ("Labels", labels.join(", ")),
        ("Release notes", f.release_notes.clone()),
        ("Created", when_by(f.created_at_ms, f.created_by.as_ref())),
    ]);
    if let Some(z) = &f.zigbee {
        let opt = |v: Option<u32>| v.map_or_else(String::new, |n| n.to_string());
        section(
            &mut out,
            "Zigbee OTA header",
            &fields(&[
                ("Manufacturer code", hex(z.manufacturer_code, 4)),
                ("Image type", hex(z.image_type, 4)),
                (
                    "File version",
                    format!("{} ({})", hex(z.file_version, 8), z.file_version),
                ),
                ("Header version", hex(z.header_version, 4)),
                ("Header length", z.header_length.to_string()),
                ("Field control", hex(z.field_control, 4)),
                ("Stack version", hex(z.stack_version, 4)),
                ("Header string", z.header_string.clone()),
                ("Total image size", z.total_image_size.to_string()),
                ("Security credential", opt(z.security_credential_version)),
                (
                    "Destination",
                    z.destination.map_or_else(String::new, |d| hex(d, 16)),
                ),
                (
                    "Hardware versions",
                    match (z.min_hardware_version, z.max_hardware_version) {
                        (None, None) => String::new(),
                        (a, b) => format!("{} - {}", opt(a), opt(b)),
                    },
                ),
                ("Prefix bytes", z.prefix_length.to_string()),
                ("Trailing bytes", z.trailing_length.to_string()),
                (
                    "Sub-elements",
                    z.sub_element_tags
                        .iter()
                        .map(|t| hex(*t, 4))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]),
        );
    }
    if let Some(e) = &f.esp {
        section(
            &mut out,
            "ESP image",
            &fields(&[
                ("Chip", e.chip.clone()),
                ("Chip id", e.chip_id.map_or_else(String::new, |c| hex(c, 4))),
                ("App version", e.app_version.clone()),
                ("Project", e.project_name.clone()),
                ("IDF version", e.idf_version.clone()),
                (
                    "Built",
                    format!("{} {}", e.build_date, e.build_time)
                        .trim()
                        .to_string(),
                ),
                ("Secure version", e.secure_version.to_string()),
                ("Segments", e.segment_count.to_string()),
                (
                    "Flash",
                    format!("{} {} {}", e.flash_mode, e.flash_size, e.flash_freq)
                        .trim()
                        .to_string(),
                ),
                ("Hash appended", yes_no(e.hash_appended)),
                (
                    "App offset",
                    e.app_offset.map_or_else(String::new, |o| hex(o, 5)),
                ),
            ]),
        );
    }
    let mut sigs = table(&["key id", "added", "by", "signature"]);
    for s in &f.signatures {
        let short = if s.signature.len() > 16 {
            format!("{}…", &s.signature[..16])
        } else {
            s.signature.clone()
        };
        sigs.add_row(vec![
            s.key_id.clone(),
            fmt_time(s.added_at_ms),
            actor(s.added_by.as_ref()),
            short,
        ]);
    }
    section(&mut out, "Signatures", &render(&sigs, "none"));
    section(
        &mut out,
        "Active rollouts",
        &if f.active_rollouts.is_empty() {
            "none".to_string()
        } else {
            f.active_rollouts.join("\n")
        },
    );
    out
}

/// `firmware upload`.
pub fn upload(u: &UploadView) -> String {
    match (&u.firmware, u.already_existed) {
        (Some(f), true) => format!(
            "Already registered as {} (same name, version and bytes); nothing new recorded.\n\n{}",
            f.id,
            firmware(f)
        ),
        (Some(f), false) => format!(
            "Uploaded {} {} as {}.\n\n{}",
            f.name,
            f.version,
            f.id,
            firmware(f)
        ),
        (None, _) => "Uploaded (otad returned no details).".to_string(),
    }
}

// === devices ===

fn signal(s: Option<&SignalView>) -> String {
    match s {
        None => "-".to_string(),
        Some(s) if s.kind.name == "rssi-dbm" => format!("{} dBm", s.value),
        Some(s) if s.kind.name == "linkquality" => format!("lqi {}", s.value),
        Some(s) => s.value.to_string(),
    }
}

fn task_progress(t: Option<&TaskView>) -> String {
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
pub fn device_list(l: &DeviceListView) -> String {
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

fn task_fields(t: &TaskView) -> String {
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
        ("Requested by", actor(t.requested_by.as_ref())),
        ("Created", fmt_time(t.created_at_ms)),
        ("Started", fmt_time(t.started_at_ms)),
        ("Finished", fmt_time(t.finished_at_ms)),
    ];
    if t.next_attempt_at_ms > 0 {
        rows.push(("Next attempt", fmt_time(t.next_attempt_at_ms)));
    }
    fields(&rows)
}

/// `device show`.
pub fn device(d: &DeviceView) -> String {
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
pub fn checks(r: &CheckReportView) -> String {
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
pub fn update(u: &UpdateView) -> String {
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
pub fn task(t: &TaskView) -> String {
    task_fields(t)
}

/// `device auto-upgrade`.
pub fn auto_upgrade(a: &AutoUpgradeView) -> String {
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

// === rollouts ===

fn stage_size(s: &StageSpecView) -> String {
    match (s.count, s.cumulative_percent) {
        (Some(1), _) => "1 device".to_string(),
        (Some(c), _) => format!("{c} devices"),
        (_, Some(p)) => format!("up to {p}%"),
        _ => "-".to_string(),
    }
}

fn counts_line(c: &CountsView) -> String {
    let parts: Vec<String> = c
        .nonzero()
        .into_iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// `rollout list`.
pub fn rollout_list(l: &RolloutListView) -> String {
    let mut t = table(&[
        "id", "name", "firmware", "state", "stage", "done", "failed", "created",
    ]);
    for r in &l.rollouts {
        let stage = r
            .stages
            .iter()
            .find(|s| s.index == r.current_stage)
            .map_or_else(String::new, |s| {
                format!("{}/{} {}", s.index + 1, r.stages.len(), s.name)
            });
        t.add_row(vec![
            r.id.clone(),
            r.spec.as_ref().map_or_else(String::new, |s| s.name.clone()),
            r.spec
                .as_ref()
                .map_or_else(String::new, |s| s.firmware_id.clone()),
            r.state.name.clone(),
            stage,
            format!("{}/{}", r.totals.succeeded, r.totals.total),
            (r.totals.failed + r.totals.timed_out).to_string(),
            fmt_time(r.created_at_ms),
        ]);
    }
    render(&t, "no rollouts")
}

/// `rollout show`, create, start, pause, resume, abort.
pub fn rollout(r: &RolloutView) -> String {
    let spec = r.spec.as_ref();
    let mut out = fields(&[
        ("ID", r.id.clone()),
        ("Name", spec.map_or_else(String::new, |s| s.name.clone())),
        (
            "Firmware",
            spec.map_or_else(String::new, |s| s.firmware_id.clone()),
        ),
        ("State", r.state.name.clone()),
        ("Reason", r.state_reason.clone()),
        (
            "Totals",
            format!("{} devices: {}", r.totals.total, counts_line(&r.totals)),
        ),
        ("Created", when_by(r.created_at_ms, r.created_by.as_ref())),
        ("Started", fmt_time(r.started_at_ms)),
        ("Finished", fmt_time(r.finished_at_ms)),
    ]);
    let mut t = table(&[
        "#", "stage", "size", "state", "devices", "counts", "deadline", "soak",
    ]);
    let specs = spec.map(|s| s.stages.as_slice()).unwrap_or_default();
    if r.stages.is_empty() {
        for (i, s) in specs.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                s.name.clone(),
                stage_size(s),
                "pending".to_string(),
                "-".to_string(),
                format!(
                    "fail at {} ({})",
                    threshold(s.failure_threshold.as_ref()),
                    s.on_failure.name
                ),
                fmt_secs(u64::from(s.deadline_s)),
                fmt_secs(u64::from(s.soak_s)),
            ]);
        }
    }
    for st in &r.stages {
        let sp = specs.get(st.index as usize);
        let marker = if st.index == r.current_stage && r.state.name == "running" {
            "▶ "
        } else {
            ""
        };
        t.add_row(vec![
            format!("{marker}{}", st.index + 1),
            st.name.clone(),
            sp.map_or_else(String::new, stage_size),
            st.state.name.clone(),
            st.counts
                .total
                .max(u32::try_from(st.device_ids.len()).unwrap_or(0))
                .to_string(),
            counts_line(&st.counts),
            sp.map_or_else(String::new, |s| fmt_secs(u64::from(s.deadline_s))),
            sp.map_or_else(String::new, |s| fmt_secs(u64::from(s.soak_s))),
        ]);
    }
    section(&mut out, "Stages", &render(&t, "none"));
    if !r.batch_check_timed_out.is_empty() {
        section(
            &mut out,
            "No answer to the batch check (5019)",
            &r.batch_check_timed_out.join("\n"),
        );
    }
    if !r.exclusions.is_empty() {
        section(&mut out, "Excluded", &exclusions(&r.exclusions));
    }
    out
}

fn exclusions(list: &[ExclusionView]) -> String {
    let mut t = table(&["device", "code", "reason"]);
    for e in list {
        t.add_row(vec![e.device_id.clone(), en(&e.code), e.reason.clone()]);
    }
    render(&t, "none")
}

/// How many device ids to show per stage before "and N more".
const PLAN_DEVICES_SHOWN: usize = 8;

/// `rollout plan`.
pub fn plan(p: &PlanView) -> String {
    let mut out = fields(&[
        ("Target devices", p.target_count.to_string()),
        (
            "Estimated duration",
            fmt_secs(u64::from(p.estimated_duration_s)),
        ),
    ]);
    let mut t = table(&["#", "stage", "devices", "estimate", "device ids"]);
    for s in &p.stages {
        let mut ids: Vec<String> = s
            .device_ids
            .iter()
            .take(PLAN_DEVICES_SHOWN)
            .cloned()
            .collect();
        if s.device_ids.len() > PLAN_DEVICES_SHOWN {
            ids.push(format!(
                "… and {} more (-o json lists all)",
                s.device_ids.len() - PLAN_DEVICES_SHOWN
            ));
        }
        t.add_row(vec![
            (s.index + 1).to_string(),
            s.name.clone(),
            s.device_ids.len().to_string(),
            fmt_secs(u64::from(s.estimated_s)),
            ids.join("\n"),
        ]);
    }
    section(&mut out, "Stages", &render(&t, "none"));
    section(&mut out, "Excluded", &exclusions(&p.exclusions));
    if !p.warnings.is_empty() {
        section(
            &mut out,
            "Warnings",
            &p.warnings
                .iter()
                .map(|w| format!("! {w}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out
}

/// One line summarising a rollout's progress (for logs when bars are off).
pub fn progress_line(r: &RolloutView) -> String {
    let stage = r
        .stages
        .iter()
        .find(|s| s.index == r.current_stage)
        .map_or_else(String::new, |s| {
            format!(
                " stage {}/{} {} ({}): {}/{} done;",
                s.index + 1,
                r.stages.len(),
                s.name,
                s.state.name,
                s.counts.done(),
                s.counts.total
            )
        });
    format!(
        "{} {}:{stage} totals {}",
        r.id,
        r.state.name,
        counts_line(&r.totals)
    )
}

// === events, sites, tokens ===

/// The header of `events tail`.
pub fn event_header() -> String {
    format!(
        "{:>6}  {:<24}  {:<32}  {:<24}  {:<12}  PAYLOAD",
        "SEQ", "TIME", "STREAM", "TYPE", "ACTOR"
    )
}

/// One event line.
pub fn event_line(e: &EventView) -> String {
    let payload = if e.payload.is_null() {
        String::new()
    } else {
        e.payload.to_string()
    };
    format!(
        "{:>6}  {:<24}  {:<32}  {:<24}  {:<18}  {payload}",
        e.seq,
        crate::output::fmt_time_ms(e.recorded_at_ms),
        e.stream,
        e.kind,
        e.actor
    )
}

/// `site list`.
pub fn site_list(l: &SiteListView) -> String {
    let now = now_ms();
    let mut t = table(&[
        "site",
        "agent",
        "version",
        "devices",
        "reachable",
        "tasks",
        "heartbeat",
    ]);
    for s in &l.sites {
        t.add_row(vec![
            s.id.clone(),
            if s.agent_connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_string(),
            s.agent_version.clone(),
            s.device_count.to_string(),
            s.reachable_count.to_string(),
            s.running_tasks.to_string(),
            fmt_ago(s.last_heartbeat_ms, now),
        ]);
    }
    render(
        &t,
        "no sites (an agent creates its site when it first connects)",
    )
}

/// `site show`.
pub fn site(s: &SiteView) -> String {
    let now = now_ms();
    let mut out = fields(&[
        ("Site", s.id.clone()),
        (
            "Agent",
            if s.agent_connected {
                format!("connected since {}", fmt_time(s.connected_since_ms))
            } else {
                "disconnected".to_string()
            },
        ),
        ("Agent version", s.agent_version.clone()),
        ("Agent id", s.agent_id.clone()),
        ("Peer", s.peer.clone()),
        ("Last heartbeat", fmt_ago(s.last_heartbeat_ms, now)),
        ("Time zone", s.timezone.clone()),
        (
            "Devices",
            format!("{} ({} reachable)", s.device_count, s.reachable_count),
        ),
        ("Running tasks", s.running_tasks.to_string()),
    ]);
    let mut t = table(&["transport", "name", "devices", "link", "detail"]);
    for tr in &s.transports {
        t.add_row(vec![
            tr.kind.name.clone(),
            tr.name.clone(),
            tr.device_count.to_string(),
            if tr.connected { "up" } else { "down" }.to_string(),
            tr.detail.clone(),
        ]);
    }
    section(&mut out, "Transports", &render(&t, "none"));
    out
}

/// `token list`.
pub fn token_list(l: &TokenListView) -> String {
    let mut t = table(&["id", "name", "role", "created", "expires", "state"]);
    for k in &l.tokens {
        let expired = k.expires_at_ms.is_some_and(|e| e <= now_ms());
        t.add_row(vec![
            k.id.clone(),
            k.name.clone(),
            k.role.name.clone(),
            fmt_time(k.created_at_ms),
            k.expires_at_ms
                .map_or_else(|| "never".to_string(), fmt_time),
            if k.revoked {
                "revoked"
            } else if expired {
                "expired"
            } else {
                "active"
            }
            .to_string(),
        ]);
    }
    render(&t, "no tokens")
}

/// `token create`.
pub fn created_token(c: &CreatedTokenView) -> String {
    let info = c.info.as_ref();
    let who = info.map_or_else(String::new, |i| {
        format!(
            " for {} ({}), id {}, expires {}",
            i.name,
            i.role.name,
            i.id,
            i.expires_at_ms
                .map_or_else(|| "never".to_string(), fmt_time)
        )
    });
    format!(
        "Token created{who}.\n\nSecret (shown only this once; otad keeps only a hash):\n\n    {}\n\n\
         Use it with:\n    export OTACTL_TOKEN='{}'",
        c.token, c.token
    )
}

/// `token revoke`.
pub fn token(k: &TokenView) -> String {
    format!(
        "Token {} ({}, {}) is {}.",
        k.id,
        k.name,
        k.role.name,
        if k.revoked { "revoked" } else { "active" }
    )
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
            update(&UpdateView::from_task(&t)),
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
        let s = update(&UpdateView::from_task(&failed));
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
        let r = CheckReportView::batch(&pb::BatchCheckResponse {
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

    #[test]
    fn versions_fall_back_to_the_file_version() {
        let v = VersionView {
            version: String::new(),
            file_version: Some(0x0203_0093),
            software_build_id: String::new(),
            date_code: String::new(),
        };
        assert_eq!(ver(Some(&v)), "0x02030093");
        let decimal = VersionView {
            version: "33751187".into(),
            ..v.clone()
        };
        assert_eq!(ver(Some(&decimal)), "0x02030093");
        let esp = VersionView {
            version: "2026.11.1".into(),
            file_version: None,
            ..v
        };
        assert_eq!(ver(Some(&esp)), "2026.11.1");
        assert_eq!(ver(None), "-");
    }

    #[test]
    fn the_token_secret_is_shown_plainly() {
        let s = created_token(&CreatedTokenView {
            token: "tok-1.abc".into(),
            info: None,
        });
        assert!(s.contains("\n    tok-1.abc\n"));
        assert!(s.contains("shown only this once"));
    }

    #[test]
    fn event_lines_are_columns() {
        let e = EventView {
            seq: 7,
            stream: "firmware/fw-1".into(),
            stream_version: 1,
            kind: "FirmwareRegistered".into(),
            schema_version: 1,
            recorded_at_ms: 1_700_000_000_000,
            actor: "alice".into(),
            payload: serde_json::json!({"id": "fw-1"}),
        };
        let line = event_line(&e);
        assert!(
            line.starts_with("     7  2023-11-14T22:13:20.000Z"),
            "{line}"
        );
        assert!(line.ends_with(r#"{"id":"fw-1"}"#));
        assert!(event_header().contains("PAYLOAD"));
    }
}

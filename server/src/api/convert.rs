//! Conversions between the wire types (`ota_proto::v1`) and the domain (`ota_domain`).
//!
//! Only the API layer knows protobuf. Conversions *into* the domain validate and return a
//! message a person can act on; conversions *out of* the domain cannot fail.

use ota_domain::events::Exclusion;
use ota_domain::model::{
    Actor, DeviceFacts, EspFacts, FirmwareFormat, PowerSource, Signal, Transport,
    TransportInstance, VersionInfo, ZigbeeFacts,
};
use ota_domain::projection::{
    Approval, DeviceView, FirmwareView, FleetState, RolloutState, RolloutView, SiteView,
    StageState, TaskPhase, TaskView,
};
use ota_domain::rollout::spec::{
    Concurrency, DEFAULT_STAGE_DEADLINE_S, FailureAction, FailureBudget, MaintenanceWindow,
    OnAsleep, Preconditions, RetryPolicy, RolloutSpec, Selector, StageSize, StageSpec, Threshold,
    UpgradeType,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_proto::v1 as pb;

use crate::quote::quote;

/// Tuya status number on the wire.
pub fn status(s: UpgradeStatus) -> i32 {
    s.code() as i32
}

/// Tuya error number on the wire.
pub fn error_code(e: ErrorCode) -> i32 {
    e.code() as i32
}

/// A domain error on the wire.
pub fn task_error(e: &TaskError) -> pb::TaskError {
    pb::TaskError {
        code: error_code(e.code),
        message: e.message.clone(),
    }
}

/// Longest error message from an agent that is stored (bytes).
pub const MAX_ERROR_MESSAGE: usize = 1000;

/// A wire error into the domain: code 0 (or no message) is "no error"; unknown codes are kept
/// as 5099 with the number in the message. The message is cut to [`MAX_ERROR_MESSAGE`] bytes.
pub fn task_error_from(e: Option<&pb::TaskError>) -> Option<TaskError> {
    let e = e?;
    if e.code == 0 {
        return None;
    }
    let message = clip_to(&e.message, MAX_ERROR_MESSAGE);
    match ErrorCode::from_code(e.code as u32) {
        Some(code) => Some(TaskError::new(code, message)),
        None => Some(TaskError::new(
            ErrorCode::Other,
            format!("error {}: {message}", e.code),
        )),
    }
}

/// Version on the wire.
pub fn version(v: &VersionInfo) -> pb::VersionInfo {
    pb::VersionInfo {
        version: v.version.clone(),
        file_version: v.file_version,
        software_build_id: v.software_build_id.clone().unwrap_or_default(),
        date_code: v.date_code.clone().unwrap_or_default(),
    }
}

/// Longest version string (and build id, date code) that is stored, in bytes.
const MAX_VERSION: usize = 64;

/// Version from the wire; its strings cut to 64 bytes.
pub fn version_from(v: Option<&pb::VersionInfo>) -> VersionInfo {
    let Some(v) = v else {
        return VersionInfo::default();
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| clip_to(s, MAX_VERSION));
    VersionInfo {
        version: clip_to(&v.version, MAX_VERSION),
        file_version: v.file_version,
        software_build_id: non_empty(&v.software_build_id),
        date_code: non_empty(&v.date_code),
    }
}

/// Transport on the wire.
pub fn transport(t: Transport) -> i32 {
    match t {
        Transport::Zigbee2Mqtt => pb::Transport::Zigbee2mqtt as i32,
        Transport::Esphome => pb::Transport::Esphome as i32,
        Transport::Serial => pb::Transport::Serial as i32,
    }
}

/// Transport from the wire: `Ok(None)` for unspecified, `Err` for unknown numbers.
pub fn transport_from(v: i32) -> Result<Option<Transport>, String> {
    match pb::Transport::try_from(v) {
        Ok(pb::Transport::Unspecified) => Ok(None),
        Ok(pb::Transport::Zigbee2mqtt) => Ok(Some(Transport::Zigbee2Mqtt)),
        Ok(pb::Transport::Esphome) => Ok(Some(Transport::Esphome)),
        Ok(pb::Transport::Serial) => Ok(Some(Transport::Serial)),
        Err(_) => Err(format!(
            "unknown transport {v}: expected 1 (zigbee2mqtt), 2 (esphome) or 3 (serial)"
        )),
    }
}

/// Power source on the wire.
pub fn power(p: PowerSource) -> i32 {
    match p {
        PowerSource::Unknown => pb::PowerSource::Unknown as i32,
        PowerSource::Mains => pb::PowerSource::Mains as i32,
        PowerSource::Battery => pb::PowerSource::Battery as i32,
    }
}

/// Power source from the wire (unknown numbers are "unknown").
pub fn power_from(v: i32) -> PowerSource {
    match pb::PowerSource::try_from(v) {
        Ok(pb::PowerSource::Mains) => PowerSource::Mains,
        Ok(pb::PowerSource::Battery) => PowerSource::Battery,
        _ => PowerSource::Unknown,
    }
}

/// Signal on the wire.
pub fn signal(s: Option<Signal>) -> Option<pb::Signal> {
    s.map(|s| match s {
        Signal::LinkQuality(v) => pb::Signal {
            kind: pb::SignalKind::Linkquality as i32,
            value: i32::from(v),
        },
        Signal::RssiDbm(v) => pb::Signal {
            kind: pb::SignalKind::RssiDbm as i32,
            value: i32::from(v),
        },
    })
}

/// Signal from the wire (out-of-range values are clamped, unknown kinds dropped).
pub fn signal_from(s: Option<&pb::Signal>) -> Option<Signal> {
    let s = s?;
    match pb::SignalKind::try_from(s.kind) {
        Ok(pb::SignalKind::Linkquality) => Some(Signal::LinkQuality(s.value.clamp(0, 255) as u8)),
        Ok(pb::SignalKind::RssiDbm) => Some(Signal::RssiDbm(s.value.clamp(-200, 50) as i16)),
        _ => None,
    }
}

/// Firmware format on the wire.
pub fn format(f: FirmwareFormat) -> i32 {
    match f {
        FirmwareFormat::ZigbeeOta => pb::FirmwareFormat::ZigbeeOta as i32,
        FirmwareFormat::EspApp => pb::FirmwareFormat::EspApp as i32,
        FirmwareFormat::EspFactory => pb::FirmwareFormat::EspFactory as i32,
    }
}

/// Firmware format from the wire: `Ok(None)` means "detect".
pub fn format_from(v: i32) -> Result<Option<FirmwareFormat>, String> {
    match pb::FirmwareFormat::try_from(v) {
        Ok(pb::FirmwareFormat::Unspecified) => Ok(None),
        Ok(pb::FirmwareFormat::ZigbeeOta) => Ok(Some(FirmwareFormat::ZigbeeOta)),
        Ok(pb::FirmwareFormat::EspApp) => Ok(Some(FirmwareFormat::EspApp)),
        Ok(pb::FirmwareFormat::EspFactory) => Ok(Some(FirmwareFormat::EspFactory)),
        Err(_) => Err(format!(
            "unknown firmware format {v}: expected 0 (detect), 1 (zigbee-ota), 2 (esp-app) or 3 (esp-factory)"
        )),
    }
}

/// Actor on the wire, from the envelope label `name (role)`.
pub fn actor_from_label(label: &str) -> pb::Actor {
    actor(&Actor::from_label(label))
}

/// Actor on the wire.
pub fn actor(a: &Actor) -> pb::Actor {
    pb::Actor {
        name: a.name.clone(),
        role: a.role.clone(),
    }
}

fn zigbee_info(z: &ZigbeeFacts) -> pb::ZigbeeImageInfo {
    pb::ZigbeeImageInfo {
        manufacturer_code: u32::from(z.manufacturer_code),
        image_type: u32::from(z.image_type),
        file_version: z.file_version,
        header_version: u32::from(z.header_version),
        header_length: u32::from(z.header_length),
        field_control: u32::from(z.field_control),
        stack_version: u32::from(z.stack_version),
        header_string: z.header_string.clone(),
        total_image_size: z.total_image_size,
        security_credential_version: z.security_credential_version.map(u32::from),
        destination: z.destination,
        min_hardware_version: z.min_hardware_version.map(u32::from),
        max_hardware_version: z.max_hardware_version.map(u32::from),
        prefix_length: z.prefix_length,
        trailing_length: z.trailing_length,
        sub_element_tags: z.sub_element_tags.iter().map(|t| u32::from(*t)).collect(),
    }
}

fn esp_info(e: &EspFacts) -> pb::EspImageInfo {
    pb::EspImageInfo {
        chip: e.chip.clone(),
        chip_id: e.chip_id.map(u32::from),
        app_version: e.app_version.clone(),
        project_name: e.project_name.clone(),
        idf_version: e.idf_version.clone(),
        build_date: e.build_date.clone(),
        build_time: e.build_time.clone(),
        secure_version: e.secure_version,
        segment_count: u32::from(e.segment_count),
        flash_mode: e.flash_mode.clone(),
        flash_size: e.flash_size.clone(),
        flash_freq: e.flash_freq.clone(),
        hash_appended: e.hash_appended,
        app_offset: e.app_offset,
    }
}

/// A firmware on the wire.
pub fn firmware(fw: &FirmwareView, active_rollouts: Vec<String>) -> pb::Firmware {
    let r = &fw.registered;
    pb::Firmware {
        id: r.id.clone(),
        name: r.name.clone(),
        version: r.version.clone(),
        format: format(r.format),
        channel: r.channel as i32,
        size: r.size,
        sha256: r.sha256.clone(),
        md5: r.md5.clone(),
        sha512: r.sha512.clone(),
        zigbee: r.zigbee.as_ref().map(zigbee_info),
        esp: r.esp.as_ref().map(esp_info),
        labels: r.labels.clone().into_iter().collect(),
        release_notes: r.release_notes.clone(),
        created_at_ms: fw.created_at_ms,
        created_by: Some(actor_from_label(&fw.created_by)),
        signatures: fw
            .signatures
            .iter()
            .map(|s| pb::FirmwareSignature {
                key_id: s.key_id.clone(),
                signature: s.signature.clone(),
                added_at_ms: s.added_at_ms,
                added_by: Some(actor_from_label(&s.added_by)),
            })
            .collect(),
        active_rollouts,
    }
}

fn z2m_state(s: &str) -> i32 {
    match s {
        "idle" => pb::Z2mUpdateState::Idle as i32,
        "available" => pb::Z2mUpdateState::Available as i32,
        "updating" => pb::Z2mUpdateState::Updating as i32,
        "scheduled" => pb::Z2mUpdateState::Scheduled as i32,
        _ => pb::Z2mUpdateState::Unspecified as i32,
    }
}

/// zigbee2mqtt state name from the wire.
pub fn z2m_state_name(v: i32) -> &'static str {
    match pb::Z2mUpdateState::try_from(v) {
        Ok(pb::Z2mUpdateState::Idle) => "idle",
        Ok(pb::Z2mUpdateState::Available) => "available",
        Ok(pb::Z2mUpdateState::Updating) => "updating",
        Ok(pb::Z2mUpdateState::Scheduled) => "scheduled",
        _ => "",
    }
}

/// A device on the wire. `live` carries what the server knows beyond the log (site connected,
/// last heartbeat).
pub fn device(
    d: &DeviceView,
    state: &FleetState,
    site_connected: bool,
    live_last_seen_ms: Option<i64>,
) -> pb::Device {
    let f = &d.facts;
    let task = d.current_task.as_ref().and_then(|id| state.tasks.get(id));
    let upgrade_status = match task {
        Some(t) if !t.phase.is_terminal() => t.phase.status(),
        // As the proto says: available when the catalog holds a newer image that fits the
        // device (the same choice a check makes), whatever an earlier check answered — the
        // device may have been updated since.
        _ => {
            let catalog = state.firmware.values().map(|fw| &fw.registered);
            if ota_domain::tasks::best_firmware(catalog, f).is_some() {
                UpgradeStatus::Available
            } else {
                UpgradeStatus::None
            }
        }
    };
    pb::Device {
        id: d.id.clone(),
        site_id: d.site_id.clone(),
        local_id: d.local_id.clone(),
        transport: f.transport.map(transport).unwrap_or_default(),
        network: f.network.clone(),
        name: f.name.clone(),
        model: f.model.clone(),
        vendor: f.vendor.clone(),
        manufacturer_code: f.manufacturer_code.map(u32::from),
        image_type: f.image_type.map(u32::from),
        chip: f.chip.clone(),
        platform: f.platform.clone(),
        current: Some(version(&f.current)),
        power_source: power(f.power_source),
        battery_percent: f.battery_percent.map(u32::from),
        signal: signal(f.signal),
        reachable: f.reachable && site_connected && !d.removed,
        supports_ota: f.supports_ota,
        hardware_version: f.hardware_version.map(u32::from),
        z2m_state: z2m_state(&f.z2m_state),
        last_seen_ms: live_last_seen_ms
            .unwrap_or(d.last_seen_ms)
            .max(d.last_seen_ms),
        first_seen_ms: d.first_seen_ms,
        tags: f.tags.clone(),
        auto_upgrade: d.auto_upgrade,
        status: status(upgrade_status),
        current_task: task.map(self::task),
    }
}

/// A task on the wire.
pub fn task(t: &TaskView) -> pb::Task {
    let c = &t.created;
    pb::Task {
        id: c.task_id.clone(),
        device_id: c.device_id.clone(),
        site_id: c.site_id.clone(),
        rollout_id: c.rollout_id.clone().unwrap_or_default(),
        stage: c.stage,
        firmware_id: c.firmware_id.clone(),
        target: Some(version(&c.target)),
        status: status(t.phase.status()),
        progress: t.progress,
        remaining_s: t.remaining_s,
        error: t.error.as_ref().map(task_error),
        remind: t.remind.clone(),
        attempt: t.attempt,
        max_attempts: c.max_attempts,
        upgrade_type: c.upgrade_type.code() as i32,
        downgrade: c.downgrade,
        from: t.from.as_ref().map(version),
        to: t.to.as_ref().map(version),
        created_at_ms: t.created_at_ms,
        started_at_ms: t.started_at_ms.unwrap_or_default(),
        finished_at_ms: t.finished_at_ms.unwrap_or_default(),
        next_attempt_at_ms: t.next_attempt_at_ms.unwrap_or_default(),
        awaiting_confirmation: t.awaiting_confirmation,
        requested_by: Some(actor_from_label(&t.requested_by)),
        bytes_sent: t.bytes_sent,
        bytes_total: t.bytes_total,
        late: t.late,
        phase_deadline_ms: t.timeout_at_ms.unwrap_or_default(),
    }
}

/// Counts tasks by phase.
pub fn counts<'a>(tasks: impl IntoIterator<Item = &'a TaskView>) -> pb::TaskCounts {
    let mut c = pb::TaskCounts::default();
    for t in tasks {
        c.total += 1;
        match t.phase {
            TaskPhase::Queued | TaskPhase::SiteQueued => c.queued += 1,
            TaskPhase::Preparing | TaskPhase::AgentPreparing => c.preparing += 1,
            TaskPhase::Held if t.awaiting_confirmation => c.awaiting_confirmation += 1,
            TaskPhase::Held => c.queued += 1,
            TaskPhase::WaitingForWakeup => c.waiting_for_wakeup += 1,
            TaskPhase::Updating => c.updating += 1,
            TaskPhase::Downloaded => c.downloaded += 1,
            TaskPhase::Succeeded => c.succeeded += 1,
            TaskPhase::Failed => c.failed += 1,
            TaskPhase::TimedOut => c.timed_out += 1,
            TaskPhase::Skipped => c.skipped += 1,
            TaskPhase::Cancelled => c.cancelled += 1,
        }
    }
    c
}

fn rollout_state(s: RolloutState) -> i32 {
    match s {
        RolloutState::Draft => pb::RolloutState::Draft as i32,
        RolloutState::Running => pb::RolloutState::Running as i32,
        RolloutState::Paused => pb::RolloutState::Paused as i32,
        RolloutState::Completed => pb::RolloutState::Completed as i32,
        RolloutState::Aborted => pb::RolloutState::Aborted as i32,
    }
}

/// Rollout state from the wire: `Ok(None)` for unspecified.
pub fn rollout_state_from(v: i32) -> Result<Option<RolloutState>, String> {
    match pb::RolloutState::try_from(v) {
        Ok(pb::RolloutState::Unspecified) => Ok(None),
        Ok(pb::RolloutState::Draft) => Ok(Some(RolloutState::Draft)),
        Ok(pb::RolloutState::Running) => Ok(Some(RolloutState::Running)),
        Ok(pb::RolloutState::Paused) => Ok(Some(RolloutState::Paused)),
        Ok(pb::RolloutState::Completed) => Ok(Some(RolloutState::Completed)),
        Ok(pb::RolloutState::Aborted) => Ok(Some(RolloutState::Aborted)),
        Err(_) => Err(format!("unknown rollout state {v}")),
    }
}

fn stage_state(s: StageState) -> i32 {
    match s {
        StageState::Pending => pb::StageState::Pending as i32,
        StageState::Running => pb::StageState::Running as i32,
        StageState::Soaking => pb::StageState::Soaking as i32,
        StageState::Succeeded => pb::StageState::Succeeded as i32,
        StageState::Failed => pb::StageState::Failed as i32,
    }
}

/// An exclusion on the wire.
pub fn exclusion(e: &Exclusion) -> pb::Exclusion {
    pb::Exclusion {
        device_id: e.device_id.clone(),
        code: error_code(e.code),
        reason: e.reason.clone(),
    }
}

/// A rollout on the wire, with counts from its tasks.
pub fn rollout(r: &RolloutView, state: &FleetState) -> pb::Rollout {
    let task_of = |device: &str| {
        r.tasks_by_device
            .get(device)
            .and_then(|id| state.tasks.get(id))
    };
    let stages: Vec<pb::StageStatus> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| pb::StageStatus {
            index: i as u32,
            name: s.name.clone(),
            state: stage_state(s.state),
            device_ids: s.device_ids.clone(),
            counts: Some(counts(s.device_ids.iter().filter_map(|d| task_of(d)))),
            started_at_ms: s.started_at_ms.unwrap_or_default(),
            deadline_at_ms: s.deadline_at_ms.unwrap_or_default(),
            soak_until_ms: s.soak_until_ms.unwrap_or_default(),
            finished_at_ms: s.finished_at_ms.unwrap_or_default(),
        })
        .collect();
    let mut totals = counts(
        r.tasks_by_device
            .values()
            .filter_map(|id| state.tasks.get(id)),
    );
    // Devices planned but without a task yet count as queued.
    let planned: u32 = r.stages.iter().map(|s| s.device_ids.len() as u32).sum();
    if planned > totals.total {
        totals.queued += planned - totals.total;
        totals.total = planned;
    }
    let mut spec = spec_to_pb(&r.spec);
    spec.require_approval = r.approval != Approval::NotRequired;
    pb::Rollout {
        id: r.id.clone(),
        spec: Some(spec),
        state: rollout_state(r.state),
        state_reason: r.state_reason.clone(),
        current_stage: r.current_stage(),
        stages,
        totals: Some(totals),
        batch_check_timed_out: r
            .batch_check
            .as_ref()
            .map(|b| b.timed_out.clone())
            .unwrap_or_default(),
        created_by: Some(actor_from_label(&r.created_by)),
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms.unwrap_or_default(),
        finished_at_ms: r.finished_at_ms.unwrap_or_default(),
        exclusions: r.exclusions.iter().map(exclusion).collect(),
        failure_budget: ota_domain::rollout::scheduler::failure_budget(r).unwrap_or(0),
        failures: ota_domain::rollout::scheduler::budget_failures(r, state),
        approval: approval(&r.approval),
    }
}

/// A rollout's four-eyes approval on the wire (none when not required).
fn approval(a: &Approval) -> Option<pb::Approval> {
    use pb::approval::State;
    let decided = |state: State, v: &ota_domain::projection::ApprovalVerdict| pb::Approval {
        state: state as i32,
        required_by: String::new(),
        decided_by: Some(actor_from_label(&v.by)),
        decided_at_ms: v.at_ms,
        reason: v.reason.clone(),
    };
    match a {
        Approval::NotRequired => None,
        Approval::Pending { required_by } => Some(pb::Approval {
            state: State::Pending as i32,
            required_by: required_by.clone(),
            ..Default::default()
        }),
        Approval::Approved(v) => Some(decided(State::Approved, v)),
        Approval::Denied(v) => Some(decided(State::Denied, v)),
    }
}

/// A transport instance on the wire.
pub fn transport_instance(t: &TransportInstance) -> pb::TransportInstance {
    pb::TransportInstance {
        kind: transport(t.kind),
        name: t.name.clone(),
        device_count: t.device_count,
        connected: t.connected,
        detail: String::new(),
    }
}

/// Transport instances from the wire (unknown kinds dropped).
pub fn transport_instances_from(list: &[pb::TransportInstance]) -> Vec<TransportInstance> {
    list.iter()
        .filter_map(|t| {
            Some(TransportInstance {
                kind: transport_from(t.kind).ok().flatten()?,
                name: t.name.clone(),
                device_count: t.device_count,
                connected: t.connected,
            })
        })
        .collect()
}

/// A site on the wire.
pub fn site(s: &SiteView, state: &FleetState, last_heartbeat_ms: i64) -> pb::Site {
    let devices: Vec<&DeviceView> = state
        .devices
        .values()
        .filter(|d| d.site_id == s.id && !d.removed)
        .collect();
    let running = state
        .tasks
        .values()
        .filter(|t| t.created.site_id == s.id && t.phase.is_at_site())
        .count();
    pb::Site {
        id: s.id.clone(),
        agent_connected: s.connected,
        agent_version: s.agent_version.clone(),
        agent_id: s.agent_id.clone(),
        connected_since_ms: s.connected_since_ms,
        last_heartbeat_ms,
        timezone: s.timezone.clone(),
        transports: s.transports.iter().map(transport_instance).collect(),
        device_count: devices.len() as u32,
        reachable_count: devices
            .iter()
            .filter(|d| d.facts.reachable && s.connected)
            .count() as u32,
        running_tasks: running as u32,
        peer: s.peer.clone(),
    }
}

/// Limits on strings coming from agents, so one site cannot bloat the log.
const MAX_FIELD: usize = 256;

fn clip(s: &str) -> String {
    clip_to(s, MAX_FIELD)
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A device report from an agent into the domain: `(local id, facts)`.
pub fn device_facts_from(r: &pb::DeviceReport) -> Result<(String, DeviceFacts), String> {
    let local = r.local_id.trim();
    if local.is_empty() {
        return Err("device report without local_id".into());
    }
    if local.len() > 128 || local.contains(['/', '\0']) || local.chars().any(char::is_whitespace) {
        return Err(format!(
            "device local_id {} is not valid: at most 128 characters, no '/', no spaces",
            quote(local)
        ));
    }
    let transport = transport_from(r.transport)?;
    let facts = DeviceFacts {
        transport,
        network: clip(&r.network),
        name: clip(&r.name),
        model: clip(&r.model),
        vendor: clip(&r.vendor),
        manufacturer_code: r.manufacturer_code.and_then(|v| u16::try_from(v).ok()),
        image_type: r.image_type.and_then(|v| u16::try_from(v).ok()),
        chip: clip(&r.chip),
        platform: clip(&r.platform),
        current: version_from(r.current.as_ref()),
        power_source: power_from(r.power_source),
        battery_percent: r.battery_percent.map(|b| b.min(100) as u8),
        signal: signal_from(r.signal.as_ref()),
        reachable: r.reachable,
        supports_ota: r.supports_ota,
        hardware_version: r.hardware_version.and_then(|v| u16::try_from(v).ok()),
        z2m_state: z2m_state_name(r.z2m_state).to_string(),
        tags: r.tags.iter().take(32).map(|t| clip(t)).collect(),
    };
    Ok((local.to_string(), facts))
}

// ---------------------------------------------------------------------------------------------
// Rollout specs
// ---------------------------------------------------------------------------------------------

fn threshold_from(t: Option<&pb::Threshold>, what: &str) -> Result<Option<Threshold>, String> {
    match t.and_then(|t| t.value.as_ref()) {
        None => Ok(None),
        Some(pb::threshold::Value::Count(c)) => Ok(Some(Threshold::Count(*c))),
        Some(pb::threshold::Value::Percent(p)) if (0.0..=100.0).contains(p) => {
            Ok(Some(Threshold::Percent(*p)))
        }
        Some(pb::threshold::Value::Percent(p)) => Err(format!(
            "{what} is {p} %: a percentage must be between 0 and 100"
        )),
    }
}

fn threshold_to(t: Option<Threshold>) -> Option<pb::Threshold> {
    t.map(|t| pb::Threshold {
        value: Some(match t {
            Threshold::Count(c) => pb::threshold::Value::Count(c),
            Threshold::Percent(p) => pb::threshold::Value::Percent(p),
        }),
    })
}

fn parse_hhmm(s: &str, what: &str) -> Result<u16, String> {
    let err = || {
        format!(
            "maintenance window {what} {} is not a time like \"22:30\"",
            quote(s)
        )
    };
    let (h, m) = s.split_once(':').ok_or_else(err)?;
    let h: u16 = h.parse().map_err(|_| err())?;
    let m: u16 = m.parse().map_err(|_| err())?;
    if h > 23 || m > 59 {
        return Err(err());
    }
    Ok(h * 60 + m)
}

/// Longest stage deadline or soak time, seconds.
const MAX_STAGE_TIMER_S: u32 = 7 * 24 * 3600;

/// Validates a wire spec into the domain, resolving defaults. The message names the field.
pub fn spec_from_pb(s: &pb::RolloutSpec) -> Result<RolloutSpec, String> {
    let name = s.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err("spec.name is required (at most 200 characters)".into());
    }
    if s.firmware_id.trim().is_empty() {
        return Err("spec.firmware_id is required".into());
    }
    let sel = s.selector.clone().unwrap_or_default();
    let mut transports = Vec::new();
    for t in &sel.transports {
        match transport_from(*t).map_err(|e| format!("spec.selector.transports: {e}"))? {
            Some(t) => transports.push(t),
            None => return Err("spec.selector.transports contains TRANSPORT_UNSPECIFIED".into()),
        }
    }
    let list_len = sel.site_ids.len()
        + sel.models.len()
        + sel.vendors.len()
        + sel.chips.len()
        + sel.tags.len()
        + sel.device_ids.len()
        + sel.exclude_device_ids.len()
        + sel.networks.len();
    if list_len > 10_000 {
        return Err(format!(
            "spec.selector lists {list_len} values: at most 10000 in total"
        ));
    }
    for site in &sel.site_ids {
        if super::agents::validate_site_id(site).is_err() {
            return Err(format!(
                "spec.selector.site_ids: {} is not a site id (1-64 letters, digits, '-', '_' or '.')",
                quote(site)
            ));
        }
    }
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let selector = Selector {
        site_ids: sel.site_ids.clone(),
        transports,
        models: sel.models.clone(),
        vendors: sel.vendors.clone(),
        manufacturer_code: sel
            .manufacturer_code
            .map(|v| {
                u16::try_from(v).map_err(|_| {
                    format!("spec.selector.manufacturer_code {v} does not fit 16 bits")
                })
            })
            .transpose()?,
        image_type: sel
            .image_type
            .map(|v| {
                u16::try_from(v)
                    .map_err(|_| format!("spec.selector.image_type {v} does not fit 16 bits"))
            })
            .transpose()?,
        chips: sel.chips.clone(),
        min_version: non_empty(&sel.min_version),
        max_version: non_empty(&sel.max_version),
        tags: sel.tags.clone(),
        device_ids: sel.device_ids.clone(),
        exclude_device_ids: sel.exclude_device_ids.clone(),
        networks: sel.networks.clone(),
    };

    if s.stages.is_empty() {
        return Err(
            "spec.stages: at least one stage is required (e.g. a canary of 1 device, then 100 %)"
                .into(),
        );
    }
    if s.stages.len() > 50 {
        return Err(format!(
            "spec.stages has {} stages: at most 50",
            s.stages.len()
        ));
    }
    let mut stages = Vec::new();
    let mut last_percent = 0.0f64;
    for (i, st) in s.stages.iter().enumerate() {
        let label = if st.name.is_empty() {
            format!("spec.stages[{i}]")
        } else {
            format!("spec.stages[{i}] ({})", st.name)
        };
        let size = match st.size {
            Some(pb::stage::Size::Count(0)) => {
                return Err(format!("{label}.count must be at least 1"));
            }
            Some(pb::stage::Size::Count(c)) => StageSize::Count(c),
            Some(pb::stage::Size::CumulativePercent(p)) => {
                if !(p > 0.0 && p <= 100.0) {
                    return Err(format!(
                        "{label}.cumulative_percent is {p}: must be more than 0 and at most 100"
                    ));
                }
                if p < last_percent {
                    return Err(format!(
                        "{label}.cumulative_percent {p} is smaller than the previous stage's {last_percent}: percentages are cumulative"
                    ));
                }
                last_percent = p;
                StageSize::CumulativePercent(p)
            }
            None => return Err(format!("{label} needs a size: count or cumulative_percent")),
        };
        // Unset: a day (a week when a maintenance window limits the hours: a stage may need
        // several windows); 0 written explicitly: no deadline.
        let default_deadline = if s.maintenance_window.is_some() {
            MAX_STAGE_TIMER_S
        } else {
            DEFAULT_STAGE_DEADLINE_S
        };
        let deadline_s = st.deadline_s.unwrap_or(default_deadline);
        for (what, v) in [("deadline_s", deadline_s), ("soak_s", st.soak_s)] {
            if v > MAX_STAGE_TIMER_S {
                return Err(format!(
                    "{label}.{what} is {v}: at most {MAX_STAGE_TIMER_S} (7 days)"
                ));
            }
        }
        let on_failure = match pb::FailureAction::try_from(st.on_failure) {
            Ok(pb::FailureAction::Pause) => FailureAction::Pause,
            Ok(pb::FailureAction::Abort) => FailureAction::Abort,
            Err(_) => return Err(format!("{label}.on_failure {} is unknown", st.on_failure)),
        };
        stages.push(StageSpec {
            name: if st.name.trim().is_empty() {
                if i == 0 && s.stages.len() > 1 {
                    "canary".to_string()
                } else {
                    format!("wave-{i}")
                }
            } else {
                clip(st.name.trim())
            },
            size,
            success_threshold: threshold_from(
                st.success_threshold.as_ref(),
                &format!("{label}.success_threshold"),
            )?,
            failure_threshold: threshold_from(
                st.failure_threshold.as_ref(),
                &format!("{label}.failure_threshold"),
            )?,
            on_failure,
            deadline_s,
            soak_s: st.soak_s,
        });
    }
    // The last stage reaches everyone.
    if !matches!(stages.last().map(|s| s.size), Some(StageSize::CumulativePercent(p)) if p >= 100.0)
    {
        stages.push(StageSpec {
            name: "rest".into(),
            size: StageSize::CumulativePercent(100.0),
            success_threshold: None,
            failure_threshold: None,
            on_failure: FailureAction::Pause,
            deadline_s: if s.maintenance_window.is_some() {
                MAX_STAGE_TIMER_S
            } else {
                DEFAULT_STAGE_DEADLINE_S
            },
            soak_s: 0,
        });
    }

    let c = s.concurrency.unwrap_or_default();
    for (what, v) in [
        ("global", c.global),
        ("per_site", c.per_site),
        ("per_zigbee_network", c.per_zigbee_network),
        ("per_esphome_site", c.per_esphome_site),
    ] {
        if v > 100_000 {
            return Err(format!("spec.concurrency.{what} is {v}: at most 100000"));
        }
    }
    let d = Concurrency::default();
    let pick = |v: u32, default: u32| if v == 0 { default } else { v };
    let concurrency = Concurrency {
        global: pick(c.global, d.global),
        per_site: pick(c.per_site, d.per_site),
        per_zigbee_network: pick(c.per_zigbee_network, d.per_zigbee_network),
        per_esphome_site: pick(c.per_esphome_site, d.per_esphome_site),
    };
    let r = s.retry.unwrap_or_default();
    let rd = RetryPolicy::default();
    if r.max_attempts > MAX_ATTEMPTS {
        return Err(format!(
            "spec.retry.max_attempts is {}: at most {MAX_ATTEMPTS}",
            r.max_attempts
        ));
    }
    for (what, v) in [
        ("initial_backoff_s", r.initial_backoff_s),
        ("max_backoff_s", r.max_backoff_s),
    ] {
        if v > MAX_STAGE_TIMER_S {
            return Err(format!(
                "spec.retry.{what} is {v}: at most {MAX_STAGE_TIMER_S} (7 days)"
            ));
        }
    }
    let retry = RetryPolicy {
        max_attempts: pick(r.max_attempts, rd.max_attempts),
        initial_backoff_s: pick(r.initial_backoff_s, rd.initial_backoff_s),
        max_backoff_s: pick(r.max_backoff_s, rd.max_backoff_s),
    };
    if retry.max_backoff_s < retry.initial_backoff_s {
        return Err(format!(
            "spec.retry.max_backoff_s ({}) is smaller than initial_backoff_s ({})",
            retry.max_backoff_s, retry.initial_backoff_s
        ));
    }
    let window = match &s.maintenance_window {
        None => None,
        Some(w) => {
            let start = parse_hhmm(&w.start, "start")?;
            let end = parse_hhmm(&w.end, "end")?;
            if start == end {
                return Err("maintenance window start and end are equal: the window would never open (omit it for 'any time')".into());
            }
            if let Some(d) = w.weekdays.iter().find(|d| **d > 6) {
                return Err(format!(
                    "maintenance window weekday {d} is not 0 (Sunday) .. 6 (Saturday)"
                ));
            }
            Some(MaintenanceWindow {
                start_minute: start,
                end_minute: end,
                weekdays: w.weekdays.iter().map(|d| *d as u8).collect(),
            })
        }
    };
    let upgrade_type = UpgradeType::from_code(s.upgrade_type as u32).ok_or_else(|| {
        format!(
            "spec.upgrade_type {} is unknown: 0 notify, 2 forced, 3 check",
            s.upgrade_type
        )
    })?;
    if upgrade_type == UpgradeType::Check && s.skip_batch_check {
        return Err("spec.upgrade_type check runs only the batch check: skip_batch_check cannot be set with it".into());
    }
    if s.device_timeout_s > 24 * 3600 {
        return Err(format!(
            "spec.device_timeout_s is {}: at most 86400 (24 h)",
            s.device_timeout_s
        ));
    }
    if s.batch_check_timeout_s > 3600 {
        return Err(format!(
            "spec.batch_check_timeout_s is {}: at most 3600 (1 h)",
            s.batch_check_timeout_s
        ));
    }
    let preconditions = preconditions_from(s.preconditions.as_ref())?;
    if s.wake_timeout_s > MAX_WAKE_TIMEOUT_S {
        return Err(format!(
            "spec.wake_timeout_s is {}: at most {MAX_WAKE_TIMEOUT_S} (30 days)",
            s.wake_timeout_s
        ));
    }
    let on_asleep = match pb::OnAsleep::try_from(s.on_asleep) {
        Ok(pb::OnAsleep::Wait) => OnAsleep::Wait,
        Ok(pb::OnAsleep::Continue) => OnAsleep::Continue,
        Err(_) => {
            return Err(format!(
                "spec.on_asleep {} is unknown: 0 wait, 1 continue",
                s.on_asleep
            ));
        }
    };
    let failure_budget = match s.failure_budget.as_ref().and_then(|b| b.budget.as_ref()) {
        None => FailureBudget::Default,
        Some(pb::failure_budget::Budget::Off(true)) => FailureBudget::Off,
        Some(pb::failure_budget::Budget::Off(false)) => FailureBudget::Default,
        Some(pb::failure_budget::Budget::Limit(t)) => {
            match threshold_from(Some(t), "spec.failure_budget.limit")? {
                Some(t) => FailureBudget::Limit(t),
                None => FailureBudget::Default,
            }
        }
    };
    if s.site_timezones.len() > 1000 {
        return Err(format!(
            "spec.site_timezones has {} entries: at most 1000",
            s.site_timezones.len()
        ));
    }
    let mut site_timezones = std::collections::BTreeMap::new();
    for (site, zone) in &s.site_timezones {
        if super::agents::validate_site_id(site).is_err() {
            return Err(format!(
                "spec.site_timezones: {} is not a site id",
                quote(site)
            ));
        }
        let Some(tz) = ota_domain::rollout::window::parse_zone(zone.trim()) else {
            return Err(format!(
                "spec.site_timezones[{site}]: {} is not an IANA time zone (like \"Europe/Berlin\")",
                quote(zone)
            ));
        };
        site_timezones.insert(site.clone(), tz.name().to_string());
    }
    Ok(RolloutSpec {
        name: clip(name),
        firmware_id: s.firmware_id.trim().to_string(),
        selector,
        stages,
        concurrency,
        device_timeout_s: s.device_timeout_s,
        retry,
        window,
        upgrade_type,
        allow_downgrade: s.allow_downgrade,
        preconditions,
        batch_check: !s.skip_batch_check,
        batch_check_timeout_s: if s.batch_check_timeout_s == 0 {
            60
        } else {
            s.batch_check_timeout_s
        },
        wake_timeout_s: if s.wake_timeout_s == 0 {
            ota_domain::rollout::spec::DEFAULT_WAKE_TIMEOUT_S
        } else {
            s.wake_timeout_s
        },
        on_asleep,
        failure_budget,
        site_timezones,
    })
}

/// Most attempts a retry policy may ask for.
const MAX_ATTEMPTS: u32 = 20;
/// Longest wake-up budget.
const MAX_WAKE_TIMEOUT_S: u32 = 30 * 24 * 3600;

/// The gates: unset takes the default, 0 switches a gate off, anything else is bounded.
fn preconditions_from(p: Option<&pb::Preconditions>) -> Result<Preconditions, String> {
    let p = p.cloned().unwrap_or_default();
    let d = Preconditions::default();
    let battery = match p.min_battery_percent {
        None => d.min_battery_percent,
        Some(0) => None,
        Some(v) if v <= 100 => Some(v as u8),
        Some(v) => {
            return Err(format!(
                "spec.preconditions.min_battery_percent is {v}: 0 (off) to 100"
            ));
        }
    };
    let lq = match p.min_linkquality {
        None => d.min_linkquality,
        Some(0) => None,
        Some(v) if v <= 255 => Some(v as u8),
        Some(v) => {
            return Err(format!(
                "spec.preconditions.min_linkquality is {v}: 0 (off) to 255"
            ));
        }
    };
    let rssi = match p.min_rssi_dbm {
        None => d.min_rssi_dbm,
        Some(0) => None,
        Some(v) if (-120..0).contains(&v) => Some(v as i16),
        Some(v) => {
            return Err(format!(
                "spec.preconditions.min_rssi_dbm is {v}: -120 to -1 dBm, or 0 (off)"
            ));
        }
    };
    Ok(Preconditions {
        min_battery_percent: battery,
        min_linkquality: lq,
        min_rssi_dbm: rssi,
    })
}

/// A domain spec on the wire.
pub fn spec_to_pb(s: &RolloutSpec) -> pb::RolloutSpec {
    let sel = &s.selector;
    pb::RolloutSpec {
        name: s.name.clone(),
        firmware_id: s.firmware_id.clone(),
        selector: Some(pb::DeviceSelector {
            site_ids: sel.site_ids.clone(),
            transports: sel.transports.iter().map(|t| transport(*t)).collect(),
            models: sel.models.clone(),
            vendors: sel.vendors.clone(),
            manufacturer_code: sel.manufacturer_code.map(u32::from),
            image_type: sel.image_type.map(u32::from),
            chips: sel.chips.clone(),
            min_version: sel.min_version.clone().unwrap_or_default(),
            max_version: sel.max_version.clone().unwrap_or_default(),
            tags: sel.tags.clone(),
            device_ids: sel.device_ids.clone(),
            exclude_device_ids: sel.exclude_device_ids.clone(),
            networks: sel.networks.clone(),
        }),
        stages: s
            .stages
            .iter()
            .map(|st| pb::Stage {
                name: st.name.clone(),
                size: Some(match st.size {
                    StageSize::Count(c) => pb::stage::Size::Count(c),
                    StageSize::CumulativePercent(p) => pb::stage::Size::CumulativePercent(p),
                }),
                success_threshold: threshold_to(st.success_threshold),
                failure_threshold: threshold_to(st.failure_threshold),
                on_failure: match st.on_failure {
                    FailureAction::Pause => pb::FailureAction::Pause as i32,
                    FailureAction::Abort => pb::FailureAction::Abort as i32,
                },
                deadline_s: Some(st.deadline_s),
                soak_s: st.soak_s,
            })
            .collect(),
        concurrency: Some(pb::ConcurrencyLimits {
            global: s.concurrency.global,
            per_site: s.concurrency.per_site,
            per_zigbee_network: s.concurrency.per_zigbee_network,
            per_esphome_site: s.concurrency.per_esphome_site,
        }),
        device_timeout_s: s.device_timeout_s,
        retry: Some(pb::RetryPolicy {
            max_attempts: s.retry.max_attempts,
            initial_backoff_s: s.retry.initial_backoff_s,
            max_backoff_s: s.retry.max_backoff_s,
        }),
        maintenance_window: s.window.as_ref().map(|w| pb::MaintenanceWindow {
            start: format!("{:02}:{:02}", w.start_minute / 60, w.start_minute % 60),
            end: format!("{:02}:{:02}", w.end_minute / 60, w.end_minute % 60),
            weekdays: w.weekdays.iter().map(|d| u32::from(*d)).collect(),
        }),
        upgrade_type: s.upgrade_type.code() as i32,
        allow_downgrade: s.allow_downgrade,
        preconditions: Some(pb::Preconditions {
            min_battery_percent: Some(s.preconditions.min_battery_percent.map_or(0, u32::from)),
            min_linkquality: Some(s.preconditions.min_linkquality.map_or(0, u32::from)),
            min_rssi_dbm: Some(s.preconditions.min_rssi_dbm.map_or(0, i32::from)),
        }),
        skip_batch_check: !s.batch_check,
        batch_check_timeout_s: s.batch_check_timeout_s,
        wake_timeout_s: s.wake_timeout_s(),
        on_asleep: match s.on_asleep {
            OnAsleep::Wait => pb::OnAsleep::Wait as i32,
            OnAsleep::Continue => pb::OnAsleep::Continue as i32,
        },
        failure_budget: Some(pb::FailureBudget {
            budget: match s.failure_budget {
                FailureBudget::Default => None,
                FailureBudget::Off => Some(pb::failure_budget::Budget::Off(true)),
                FailureBudget::Limit(t) => {
                    threshold_to(Some(t)).map(pb::failure_budget::Budget::Limit)
                }
            },
        }),
        // Filled by `rollout` from the rollout's approval (not part of the domain spec).
        require_approval: false,
        site_timezones: s
            .site_timezones
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_spec() -> pb::RolloutSpec {
        pb::RolloutSpec {
            name: "spring".into(),
            firmware_id: "fw-1".into(),
            stages: vec![pb::Stage {
                name: "canary".into(),
                size: Some(pb::stage::Size::Count(1)),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn spec_defaults_are_resolved_and_a_final_stage_added() {
        let s = spec_from_pb(&minimal_spec()).unwrap();
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.stages[1].size, StageSize::CumulativePercent(100.0));
        assert_eq!(s.concurrency.per_zigbee_network, 1);
        assert_eq!(s.preconditions.min_battery_percent, Some(70));
        assert!(s.batch_check);
        assert_eq!(s.batch_check_timeout_s, 60);
        // Every stage gets a deadline of a day unless one is written, the added one included.
        assert_eq!(s.stages[0].deadline_s, 24 * 3600);
        assert_eq!(s.stages[1].deadline_s, 24 * 3600);
        assert_eq!(s.failure_budget, FailureBudget::Default);
        assert_eq!(s.wake_timeout_s(), 7 * 24 * 3600);
        // Round trip through the wire keeps it.
        assert_eq!(spec_from_pb(&spec_to_pb(&s)).unwrap(), s);
    }

    #[test]
    fn gates_and_deadlines_can_be_switched_off_explicitly() {
        let mut p = minimal_spec();
        p.stages[0].deadline_s = Some(0);
        p.preconditions = Some(pb::Preconditions {
            min_battery_percent: Some(0),
            min_linkquality: Some(0),
            min_rssi_dbm: None,
        });
        p.failure_budget = Some(pb::FailureBudget {
            budget: Some(pb::failure_budget::Budget::Off(true)),
        });
        let s = spec_from_pb(&p).unwrap();
        assert_eq!(s.stages[0].deadline_s, 0, "0 written: no deadline");
        assert_eq!(s.preconditions.min_battery_percent, None);
        assert_eq!(s.preconditions.min_linkquality, None);
        assert_eq!(
            s.preconditions.min_rssi_dbm,
            Some(-85),
            "unset: the default"
        );
        assert_eq!(s.failure_budget, FailureBudget::Off);
        assert_eq!(spec_from_pb(&spec_to_pb(&s)).unwrap(), s);
    }

    #[test]
    fn out_of_range_numbers_and_zones_are_refused() {
        let bad = |f: &dyn Fn(&mut pb::RolloutSpec)| {
            let mut p = minimal_spec();
            f(&mut p);
            spec_from_pb(&p).unwrap_err()
        };
        let e = bad(&|p| {
            p.retry = Some(pb::RetryPolicy {
                max_attempts: u32::MAX,
                ..Default::default()
            })
        });
        assert!(
            e.contains("max_attempts") && e.contains("at most 20"),
            "{e}"
        );
        let e = bad(&|p| {
            p.preconditions = Some(pb::Preconditions {
                min_battery_percent: Some(u32::MAX),
                ..Default::default()
            })
        });
        assert!(e.contains("min_battery_percent"), "{e}");
        let e = bad(&|p| {
            p.site_timezones
                .insert("home".into(), "../../etc/passwd".repeat(1000));
        });
        assert!(e.contains("not an IANA time zone") && e.len() < 300, "{e}");
        let mut p = minimal_spec();
        p.site_timezones
            .insert("home".into(), "Europe/Berlin".into());
        let s = spec_from_pb(&p).unwrap();
        assert_eq!(s.site_timezones["home"], "Europe/Berlin");
    }

    #[test]
    fn spec_errors_name_the_field() {
        let mut s = minimal_spec();
        s.stages[0].size = Some(pb::stage::Size::CumulativePercent(150.0));
        assert!(
            spec_from_pb(&s)
                .unwrap_err()
                .contains("spec.stages[0] (canary).cumulative_percent")
        );

        let mut s = minimal_spec();
        s.upgrade_type = 1;
        assert!(spec_from_pb(&s).unwrap_err().contains("upgrade_type"));

        let mut s = minimal_spec();
        s.maintenance_window = Some(pb::MaintenanceWindow {
            start: "25:00".into(),
            end: "05:00".into(),
            weekdays: vec![],
        });
        assert!(spec_from_pb(&s).unwrap_err().contains("22:30"));

        let mut s = minimal_spec();
        s.selector = Some(pb::DeviceSelector {
            transports: vec![99],
            ..Default::default()
        });
        assert!(
            spec_from_pb(&s)
                .unwrap_err()
                .contains("unknown transport 99")
        );

        let mut s = minimal_spec();
        s.stages.clear();
        assert!(spec_from_pb(&s).unwrap_err().contains("at least one stage"));
    }

    #[test]
    fn device_reports_are_validated_and_clipped() {
        let r = pb::DeviceReport {
            local_id: "a/b".into(),
            ..Default::default()
        };
        assert!(device_facts_from(&r).unwrap_err().contains("no '/'"));
        let r = pb::DeviceReport {
            local_id: "kitchen".into(),
            transport: pb::Transport::Esphome as i32,
            name: "x".repeat(1000),
            battery_percent: Some(250),
            ..Default::default()
        };
        let (id, f) = device_facts_from(&r).unwrap();
        assert_eq!(id, "kitchen");
        assert_eq!(f.name.len(), MAX_FIELD);
        assert_eq!(f.battery_percent, Some(100));
        assert_eq!(f.transport, Some(Transport::Esphome));
    }

    #[test]
    fn actor_labels_round_trip() {
        let a = Actor {
            name: "alice".into(),
            role: "operator".into(),
        };
        assert_eq!(actor_from_label(&a.label()), actor(&a));
        assert_eq!(actor_from_label("otad").name, "otad");
    }
}

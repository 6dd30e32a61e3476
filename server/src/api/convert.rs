//! Conversions between the wire types (`ota_proto::v1`) and the domain (`ota_domain`).
//!
//! Only the API layer knows protobuf. Conversions *into* the domain validate and return a
//! message a person can act on; conversions *out of* the domain cannot fail (those the agent
//! also writes — transport, power source, signal, task error, health — are `From` impls in
//! `ota_proto::domain`, and the functions here only name them).

use ota_domain::events::Exclusion;
use ota_domain::health::{Health, HealthPolicy};
use ota_domain::model::{
    Actor, DeviceFacts, EspFacts, FirmwareFormat, PowerSource, Signal, Transport,
    TransportInstance, VersionInfo, ZigbeeFacts,
};
use ota_domain::projection::{
    Approval, DeviceView, FirmwareView, FleetState, RollbackLink, RolloutState, RolloutView,
    SiteView, StageState, Tally, TaskPhase, TaskView,
};
use ota_domain::rollout::abort::{AbortAction, AbortCriterion, AbortOn};
use ota_domain::rollout::plan::CanaryGroup;
use ota_domain::rollout::rollback::RollbackScope;
use ota_domain::rollout::spec::{
    Concurrency, DEFAULT_STAGE_DEADLINE_S, FailureAction, FailureBudget, MaintenanceWindow,
    OnAsleep, Preconditions, RetryPolicy, RolloutSpec, Selector, StageSize, StageSpec, Threshold,
    UpgradeType,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_domain::time::UnixMillis;
use ota_proto::v1 as pb;

use super::bounds::{
    MAX_ABORT_CRITERIA, MAX_ATTEMPTS, MAX_BATCH_CHECK_TIMEOUT_S, MAX_CANARY_PER_SITE,
    MAX_CONCURRENCY, MAX_DEVICE_TIMEOUT_S, MAX_HEALTH_WINDOW_S, MAX_MIN_FINISHED,
    MAX_SELECTOR_VALUES, MAX_SITE_TIMEZONES, MAX_SPEC_NAME, MAX_STAGE_TIMER_S, MAX_STAGES,
    MAX_WAKE_TIMEOUT_S,
};
use crate::quote::quote;

mod rate;

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
    pb::TaskError::from(e)
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
    pb::Transport::from(t) as i32
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
    pb::PowerSource::from(p) as i32
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
    s.map(pb::Signal::from)
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
        created_at_ms: fw.created_at_ms.as_i64(),
        created_by: Some(actor_from_label(&fw.created_by)),
        signatures: fw
            .signatures
            .iter()
            .map(|s| pb::FirmwareSignature {
                key_id: s.key_id.clone(),
                signature: s.signature.clone(),
                added_at_ms: s.added_at_ms.as_i64(),
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
    live_last_seen: Option<UnixMillis>,
) -> pb::Device {
    let f = &d.facts;
    let task = d
        .current_task
        .as_ref()
        .and_then(|id| state.tasks.get(id).map(Box::as_ref));
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
        last_seen_ms: live_last_seen
            .unwrap_or(d.last_seen_ms)
            .max(d.last_seen_ms)
            .as_i64(),
        first_seen_ms: d.first_seen_ms.as_i64(),
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
        created_at_ms: t.created_at_ms.as_i64(),
        started_at_ms: t.started_at_ms.map_or(0, UnixMillis::as_i64),
        finished_at_ms: t.finished_at_ms.map_or(0, UnixMillis::as_i64),
        next_attempt_at_ms: t.next_attempt_at_ms.map_or(0, UnixMillis::as_i64),
        awaiting_confirmation: t.awaiting_confirmation,
        requested_by: Some(actor_from_label(&t.requested_by)),
        bytes_sent: t.bytes_sent,
        bytes_total: t.bytes_total,
        late: t.late,
        phase_deadline_ms: t.timeout_at_ms.map_or(0, UnixMillis::as_i64),
        verifying_until_ms: t.verifying_until_ms.map_or(0, UnixMillis::as_i64),
        health: health(t.health),
    }
}

/// A success's health on the wire.
pub fn health(h: Health) -> i32 {
    pb::TaskHealth::from(h) as i32
}

/// A success's health from the wire (an agent's result); `None` for a value the proto does not
/// define.
pub fn health_from(v: i32) -> Option<Health> {
    match pb::TaskHealth::try_from(v).ok()? {
        pb::TaskHealth::NotChecked => Some(Health::NotChecked),
        pb::TaskHealth::Healthy => Some(Health::Healthy),
        pb::TaskHealth::Reachable => Some(Health::Reachable),
        pb::TaskHealth::Unconfirmed => Some(Health::Unconfirmed),
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
            TaskPhase::Verifying => c.verifying += 1,
            TaskPhase::Succeeded if !t.health.is_success() => c.unconfirmed += 1,
            TaskPhase::Succeeded => c.succeeded += 1,
            TaskPhase::Failed => c.failed += 1,
            TaskPhase::TimedOut => c.timed_out += 1,
            TaskPhase::Skipped => c.skipped += 1,
            TaskPhase::Cancelled => c.cancelled += 1,
        }
    }
    c
}

/// The same counts from a tally the projection keeps (`projection::Tally`), without walking the
/// tasks: what a rollout's `Get` and `List` answer for its stages and totals.
pub fn counts_of(t: &Tally) -> pb::TaskCounts {
    use TaskPhase as P;
    pb::TaskCounts {
        total: t.tasks,
        queued: t.phase(P::Queued) + t.phase(P::SiteQueued) + t.phase(P::Held)
            - t.awaiting_confirmation,
        preparing: t.phase(P::Preparing) + t.phase(P::AgentPreparing),
        updating: t.phase(P::Updating),
        waiting_for_wakeup: t.phase(P::WaitingForWakeup),
        awaiting_confirmation: t.awaiting_confirmation,
        downloaded: t.phase(P::Downloaded),
        succeeded: t.phase(P::Succeeded) - t.unconfirmed,
        failed: t.phase(P::Failed),
        timed_out: t.phase(P::TimedOut),
        skipped: t.phase(P::Skipped),
        cancelled: t.phase(P::Cancelled),
        verifying: t.phase(P::Verifying),
        unconfirmed: t.unconfirmed,
    }
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

/// Most entries one device list of a rollout or plan message holds (stage devices, batch-check
/// timeouts, exclusions): a rollout over a whole large fleet names hundreds of thousands of
/// devices, and a message must stay far below the clients' limit (otactl takes 16 MiB). The
/// count beside each list gives the whole number.
pub const MAX_LISTED: usize = 10_000;

/// The first [`MAX_LISTED`] of `items`, converted, and how many there are in all.
pub fn first_listed<T, U>(items: &[T], convert: impl FnMut(&T) -> U) -> (Vec<U>, u32) {
    let listed = items.iter().take(MAX_LISTED).map(convert).collect();
    (listed, u32::try_from(items.len()).unwrap_or(u32::MAX))
}

/// An exclusion on the wire.
pub fn exclusion(e: &Exclusion) -> pb::Exclusion {
    pb::Exclusion {
        device_id: e.device_id.clone(),
        code: error_code(e.code),
        reason: e.reason.clone(),
    }
}

/// The canaries of one site's transport instance, on the wire.
pub fn canary_group(g: &CanaryGroup) -> pb::CanaryGroup {
    pb::CanaryGroup {
        site_id: g.site_id.clone(),
        transport: g
            .transport
            .map_or(pb::Transport::Unspecified as i32, transport),
        network: g.network.clone(),
        device_ids: g.device_ids.clone(),
        available: g.available,
    }
}

/// A rollout on the wire, with counts from its tasks.
pub fn rollout(r: &RolloutView, state: &FleetState) -> pb::Rollout {
    let stages: Vec<pb::StageStatus> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (device_ids, device_count) = first_listed(&s.device_ids, String::clone);
            pb::StageStatus {
                index: i as u32,
                name: s.name.clone(),
                state: stage_state(s.state),
                device_ids,
                device_count,
                counts: Some(counts_of(&s.tally)),
                started_at_ms: s.started_at_ms.map_or(0, UnixMillis::as_i64),
                deadline_at_ms: s.deadline_at_ms.map_or(0, UnixMillis::as_i64),
                soak_until_ms: s.soak_until_ms.map_or(0, UnixMillis::as_i64),
                finished_at_ms: s.finished_at_ms.map_or(0, UnixMillis::as_i64),
            }
        })
        .collect();
    let (batch_check_timed_out, batch_check_timed_out_count) = r
        .batch_check
        .as_ref()
        .map(|b| first_listed(&b.timed_out, String::clone))
        .unwrap_or_default();
    let (exclusions, exclusion_count) = first_listed(&r.exclusions, exclusion);
    let mut totals = counts_of(&r.tally);
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
        batch_check_timed_out,
        batch_check_timed_out_count,
        created_by: Some(actor_from_label(&r.created_by)),
        created_at_ms: r.created_at_ms.as_i64(),
        started_at_ms: r.started_at_ms.map_or(0, UnixMillis::as_i64),
        finished_at_ms: r.finished_at_ms.map_or(0, UnixMillis::as_i64),
        exclusions,
        exclusion_count,
        failure_budget: ota_domain::rollout::scheduler::failure_budget(r).unwrap_or(0),
        failures: ota_domain::rollout::scheduler::budget_failures(r, state),
        approval: approval(&r.approval),
        rollback_of: rollback_of(r, state),
        rolled_back_by: r.rolled_back_by.as_ref().map(rollback_link),
        revert_targets: r
            .spec
            .reverts
            .iter()
            .flat_map(|rv| &rv.firmware)
            .map(|(device_id, firmware_id)| pb::RevertTarget {
                device_id: device_id.clone(),
                firmware_id: firmware_id.clone(),
            })
            .collect(),
    }
}

/// A rollback on the wire, naming `link.rollout_id` (the linked rollout).
fn rollback_link(link: &RollbackLink) -> pb::RollbackLink {
    pb::RollbackLink {
        rollout_id: link.rollout_id.clone(),
        scope: rollback_scope_to(link.scope),
        automatic: link.automatic,
        by: Some(actor_from_label(&link.by)),
        reason: link.reason.clone(),
        at_ms: link.at_ms.as_i64(),
    }
}

/// The rollout a rollback reverts, with who asked and why (from that rollout's link).
fn rollback_of(r: &RolloutView, state: &FleetState) -> Option<pb::RollbackLink> {
    let reverts = r.spec.reverts.as_ref()?;
    let origin = state
        .rollouts
        .get(&reverts.rollout_id)
        .and_then(|o| o.rolled_back_by.as_ref());
    Some(match origin {
        Some(link) => pb::RollbackLink {
            rollout_id: reverts.rollout_id.clone(),
            ..rollback_link(link)
        },
        None => pb::RollbackLink {
            rollout_id: reverts.rollout_id.clone(),
            scope: rollback_scope_to(reverts.scope),
            ..Default::default()
        },
    })
}

/// A rollout's four-eyes approval on the wire (none when not required).
fn approval(a: &Approval) -> Option<pb::Approval> {
    use pb::approval::State;
    let decided = |state: State, v: &ota_domain::projection::ApprovalVerdict| pb::Approval {
        state: state as i32,
        required_by: String::new(),
        decided_by: Some(actor_from_label(&v.by)),
        decided_at_ms: v.at_ms.as_i64(),
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
pub fn site(s: &SiteView, state: &FleetState, last_heartbeat: Option<UnixMillis>) -> pb::Site {
    let devices: Vec<&DeviceView> = state
        .devices
        .values()
        .map(Box::as_ref)
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
        connected_since_ms: s.connected_since_ms.as_i64(),
        last_heartbeat_ms: last_heartbeat.map_or(0, UnixMillis::as_i64),
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

/// Why a wire rollout spec was refused: the field, as the caller wrote it (for example
/// `spec.stages[1] (canary).soak_s`), and what is wrong with it. `Display` is the message the
/// caller sees; it starts with the field.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The field the problem is in.
    pub field: String,
    /// What is wrong with it.
    pub problem: SpecProblem,
}

/// What is wrong with one field of a rollout spec.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecProblem {
    /// Empty, but required.
    Required,
    /// Empty or longer than this many characters.
    RequiredAtMost(usize),
    /// A rollout without stages.
    NoStages,
    /// A stage without a size.
    NoSize,
    /// More entries (`noun`) than allowed.
    TooMany {
        count: usize,
        max: usize,
        noun: &'static str,
    },
    /// More selector values in total than allowed.
    TooManyValues { count: usize, max: usize },
    /// A number above its bound; `note` says the bound for people, like " (7 days)".
    AtMost {
        value: u64,
        max: u64,
        note: &'static str,
    },
    /// A number outside the range `allowed` describes.
    OutOfRange {
        value: String,
        allowed: &'static str,
    },
    /// Zero where at least one is needed.
    Zero,
    /// A cumulative percentage below the previous stage's.
    NotCumulative { value: f64, previous: f64 },
    /// A number that does not fit 16 bits.
    Not16Bits(u32),
    /// An enum number this server does not know; `expected` lists the known ones.
    UnknownValue { value: i32, expected: &'static str },
    /// A wire value the shared converters refused (their message).
    Wire(String),
    /// A list of transports holding `TRANSPORT_UNSPECIFIED`.
    ContainsUnspecified,
    /// A value that is not what the field holds (`expected`: "a site id", ...).
    NotA {
        value: String,
        expected: &'static str,
    },
    /// Not a time of day like "22:30".
    NotTime(String),
    /// Not a weekday number.
    NotWeekday(u32),
    /// A maintenance window that never opens.
    EmptyWindow,
    /// A value smaller than another field's, which bounds it from below.
    SmallerThan {
        value: u32,
        other: &'static str,
        other_value: u32,
    },
    /// `upgrade_type` check with `skip_batch_check`.
    CheckWithoutBatchCheck,
    /// A first stage with a size while `canary_per_site` (this many) fills it.
    CanaryStageSized(u32),
}

impl SpecError {
    fn new(field: impl Into<String>, problem: SpecProblem) -> Self {
        SpecError {
            field: field.into(),
            problem,
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SpecProblem as P;
        f.write_str(&self.field)?;
        match &self.problem {
            P::Required => write!(f, " is required"),
            P::RequiredAtMost(max) => write!(f, " is required (at most {max} characters)"),
            P::NoStages => write!(
                f,
                ": at least one stage is required (e.g. a canary of 1 device, then 100 %)"
            ),
            P::NoSize => write!(f, " needs a size: count or cumulative_percent"),
            P::TooMany { count, max, noun } => write!(f, " has {count} {noun}: at most {max}"),
            P::TooManyValues { count, max } => {
                write!(f, " lists {count} values: at most {max} in total")
            }
            P::AtMost { value, max, note } => write!(f, " is {value}: at most {max}{note}"),
            P::OutOfRange { value, allowed } => write!(f, " is {value}: {allowed}"),
            P::Zero => write!(f, " must be at least 1"),
            P::NotCumulative { value, previous } => write!(
                f,
                " {value} is smaller than the previous stage's {previous}: percentages are cumulative"
            ),
            P::Not16Bits(v) => write!(f, " {v} does not fit 16 bits"),
            P::UnknownValue { value, expected } => write!(f, " {value} is unknown{expected}"),
            P::Wire(e) => write!(f, ": {e}"),
            P::ContainsUnspecified => write!(f, " contains TRANSPORT_UNSPECIFIED"),
            P::NotA { value, expected } => write!(f, ": {} is not {expected}", quote(value)),
            P::NotTime(v) => write!(f, " {} is not a time like \"22:30\"", quote(v)),
            P::NotWeekday(d) => write!(f, " {d} is not 0 (Sunday) .. 6 (Saturday)"),
            P::EmptyWindow => write!(
                f,
                " start and end are equal: the window would never open (omit it for 'any time')"
            ),
            P::SmallerThan {
                value,
                other,
                other_value,
            } => write!(f, " ({value}) is smaller than {other} ({other_value})"),
            P::CheckWithoutBatchCheck => write!(
                f,
                " check runs only the batch check: skip_batch_check cannot be set with it"
            ),
            P::CanaryStageSized(n) => write!(
                f,
                " has a size, but canary_per_site = {n} fills the first stage ({n} device(s) from \
                 every site and zigbee2mqtt network): leave its size unset, or set \
                 canary_per_site to 0"
            ),
        }
    }
}

impl std::error::Error for SpecError {}

type SpecResult<T> = Result<T, SpecError>;

/// `value` at most `max`, else [`SpecProblem::AtMost`] for `field`.
fn at_most(field: impl Into<String>, value: u32, max: u32, note: &'static str) -> SpecResult<()> {
    if value > max {
        return Err(SpecError::new(
            field,
            SpecProblem::AtMost {
                value: u64::from(value),
                max: u64::from(max),
                note,
            },
        ));
    }
    Ok(())
}

fn threshold_from(t: Option<&pb::Threshold>, what: &str) -> SpecResult<Option<Threshold>> {
    match t.and_then(|t| t.value.as_ref()) {
        None => Ok(None),
        Some(pb::threshold::Value::Count(c)) => Ok(Some(Threshold::Count(*c))),
        Some(pb::threshold::Value::Percent(p)) if (0.0..=100.0).contains(p) => {
            Ok(Some(Threshold::Percent(*p)))
        }
        Some(pb::threshold::Value::Percent(p)) => Err(SpecError::new(
            what,
            SpecProblem::OutOfRange {
                value: format!("{p} %"),
                allowed: "a percentage must be between 0 and 100",
            },
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

fn parse_hhmm(s: &str, what: &str) -> SpecResult<u16> {
    let err = || {
        SpecError::new(
            format!("maintenance window {what}"),
            SpecProblem::NotTime(s.to_string()),
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

/// Validates a wire spec into the domain, resolving defaults. The error names the field.
pub fn spec_from_pb(s: &pb::RolloutSpec) -> SpecResult<RolloutSpec> {
    let name = s.name.trim();
    if name.is_empty() || name.len() > MAX_SPEC_NAME {
        return Err(SpecError::new(
            "spec.name",
            SpecProblem::RequiredAtMost(MAX_SPEC_NAME),
        ));
    }
    if s.firmware_id.trim().is_empty() {
        return Err(SpecError::new("spec.firmware_id", SpecProblem::Required));
    }
    let selector = selector_from_pb("spec.selector", &s.selector.clone().unwrap_or_default())?;
    at_most(
        "spec.canary_per_site",
        s.canary_per_site,
        MAX_CANARY_PER_SITE,
        "",
    )?;
    let stages = stages_from_pb(s)?;
    let concurrency = concurrency_from_pb(s.concurrency.unwrap_or_default())?;
    let retry = retry_from_pb(s.retry.unwrap_or_default())?;
    let window = s
        .maintenance_window
        .as_ref()
        .map(window_from_pb)
        .transpose()?;
    let upgrade_type = upgrade_type_from_pb(s)?;
    check_timeouts(s)?;
    let preconditions = preconditions_from(s.preconditions.as_ref())?;
    let on_asleep = match pb::OnAsleep::try_from(s.on_asleep) {
        Ok(pb::OnAsleep::Wait) => OnAsleep::Wait,
        Ok(pb::OnAsleep::Continue) => OnAsleep::Continue,
        Err(_) => {
            return Err(SpecError::new(
                "spec.on_asleep",
                SpecProblem::UnknownValue {
                    value: s.on_asleep,
                    expected: ": 0 wait, 1 continue",
                },
            ));
        }
    };
    let failure_budget = failure_budget_from_pb(s.failure_budget.as_ref())?;
    let site_timezones = site_timezones_from_pb(&s.site_timezones)?;
    let abort_criteria = abort_criteria_from_pb(&s.abort_criteria)?;
    let rate = rate::rate_from_pb(s.rate.as_ref())?;
    let rollback = rollback_scope_from(s.rollback, "spec.rollback")?;
    let health = health_from_pb(s.health.as_ref())?;
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
        abort_criteria,
        rate,
        canary_per_site: s.canary_per_site,
        rollback,
        reverts: None,
        health,
    })
}

/// The health gate: unset is the default (ESPHome 2 min, Zigbee 10 min).
fn health_from_pb(h: Option<&pb::HealthPolicy>) -> SpecResult<HealthPolicy> {
    let Some(h) = h else {
        return Ok(HealthPolicy::default());
    };
    at_most(
        "spec.health.esphome_window_s",
        h.esphome_window_s,
        MAX_HEALTH_WINDOW_S,
        " (24 h)",
    )?;
    at_most(
        "spec.health.zigbee_window_s",
        h.zigbee_window_s,
        MAX_HEALTH_WINDOW_S,
        " (24 h)",
    )?;
    Ok(HealthPolicy {
        esphome_window_s: h.esphome_window_s,
        zigbee_window_s: h.zigbee_window_s,
        accept_reachability: h.accept_reachability,
    })
}

/// A wire rollback scope; `field` names it in errors.
pub fn rollback_scope_from(value: i32, field: &str) -> SpecResult<RollbackScope> {
    match pb::RollbackScope::try_from(value) {
        Ok(pb::RollbackScope::None) => Ok(RollbackScope::None),
        Ok(pb::RollbackScope::Failed) => Ok(RollbackScope::Failed),
        Ok(pb::RollbackScope::All) => Ok(RollbackScope::All),
        Err(_) => Err(SpecError::new(
            field,
            SpecProblem::UnknownValue {
                value,
                expected: ": 0 none, 1 failed, 2 all",
            },
        )),
    }
}

fn rollback_scope_to(s: RollbackScope) -> i32 {
    let scope = match s {
        RollbackScope::None => pb::RollbackScope::None,
        RollbackScope::Failed => pb::RollbackScope::Failed,
        RollbackScope::All => pb::RollbackScope::All,
    };
    scope as i32
}

/// A wire selector into the domain; `field` names it in errors (`spec.selector`, `selector`).
pub fn selector_from_pb(field: &str, sel: &pb::DeviceSelector) -> SpecResult<Selector> {
    let mut transports = Vec::new();
    for t in &sel.transports {
        let at = || format!("{field}.transports");
        match transport_from(*t).map_err(|e| SpecError::new(at(), SpecProblem::Wire(e)))? {
            Some(t) => transports.push(t),
            None => return Err(SpecError::new(at(), SpecProblem::ContainsUnspecified)),
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
    if list_len > MAX_SELECTOR_VALUES {
        return Err(SpecError::new(
            field,
            SpecProblem::TooManyValues {
                count: list_len,
                max: MAX_SELECTOR_VALUES,
            },
        ));
    }
    for site in &sel.site_ids {
        if super::agents::validate_site_id(site).is_err() {
            return Err(SpecError::new(
                format!("{field}.site_ids"),
                SpecProblem::NotA {
                    value: site.clone(),
                    expected: "a site id (1-64 letters, digits, '-', '_' or '.')",
                },
            ));
        }
    }
    let u16_field = |name: &str, v: Option<u32>| {
        v.map(|v| {
            u16::try_from(v)
                .map_err(|_| SpecError::new(format!("{field}.{name}"), SpecProblem::Not16Bits(v)))
        })
        .transpose()
    };
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    Ok(Selector {
        site_ids: sel.site_ids.clone(),
        transports,
        models: sel.models.clone(),
        vendors: sel.vendors.clone(),
        manufacturer_code: u16_field("manufacturer_code", sel.manufacturer_code)?,
        image_type: u16_field("image_type", sel.image_type)?,
        chips: sel.chips.clone(),
        min_version: non_empty(&sel.min_version),
        max_version: non_empty(&sel.max_version),
        tags: sel.tags.clone(),
        device_ids: sel.device_ids.clone(),
        exclude_device_ids: sel.exclude_device_ids.clone(),
        networks: sel.networks.clone(),
    })
}

/// The stages, with a final 100 % stage added when the last one does not reach everyone.
fn stages_from_pb(s: &pb::RolloutSpec) -> SpecResult<Vec<StageSpec>> {
    if s.stages.is_empty() {
        return Err(SpecError::new("spec.stages", SpecProblem::NoStages));
    }
    if s.stages.len() > MAX_STAGES {
        return Err(SpecError::new(
            "spec.stages",
            SpecProblem::TooMany {
                count: s.stages.len(),
                max: MAX_STAGES,
                noun: "stages",
            },
        ));
    }
    // Unset: a day (a week when a maintenance window limits the hours: a stage may need
    // several windows); 0 written explicitly: no deadline.
    let default_deadline = if s.maintenance_window.is_some() {
        MAX_STAGE_TIMER_S
    } else {
        DEFAULT_STAGE_DEADLINE_S
    };
    let mut stages = Vec::new();
    let mut last_percent = 0.0f64;
    for (i, st) in s.stages.iter().enumerate() {
        let size = if i == 0 && s.canary_per_site > 0 {
            canary_stage_size(&stage_label(i, st), st, s.canary_per_site)?
        } else {
            stage_size_from_pb(&stage_label(i, st), st, &mut last_percent)?
        };
        stages.push(stage_from_pb(
            i,
            // A lone canary stage is still "canary": otad adds the stage for the rest.
            if s.canary_per_site > 0 {
                s.stages.len().max(2)
            } else {
                s.stages.len()
            },
            st,
            size,
            default_deadline,
        )?);
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
            deadline_s: default_deadline,
            soak_s: 0,
        });
    }
    Ok(stages)
}

/// How errors name stage `i`: `spec.stages[1]`, or `spec.stages[1] (canary)` when named.
fn stage_label(i: usize, st: &pb::Stage) -> String {
    if st.name.is_empty() {
        format!("spec.stages[{i}]")
    } else {
        format!("spec.stages[{i}] ({})", st.name)
    }
}

/// The first stage's size under `canary_per_site`: unset on the wire (the per-site canaries fill
/// the stage), stored as `Count(0)`, which planning does not use.
fn canary_stage_size(label: &str, st: &pb::Stage, per_site: u32) -> SpecResult<StageSize> {
    match st.size {
        None => Ok(StageSize::Count(0)),
        Some(_) => Err(SpecError::new(
            label,
            SpecProblem::CanaryStageSized(per_site),
        )),
    }
}

/// A stage's size; cumulative percentages may not shrink from `last_percent`, which is moved on.
fn stage_size_from_pb(
    label: &str,
    st: &pb::Stage,
    last_percent: &mut f64,
) -> SpecResult<StageSize> {
    match st.size {
        Some(pb::stage::Size::Count(0)) => {
            Err(SpecError::new(format!("{label}.count"), SpecProblem::Zero))
        }
        Some(pb::stage::Size::Count(c)) => Ok(StageSize::Count(c)),
        Some(pb::stage::Size::CumulativePercent(p)) => {
            let field = || format!("{label}.cumulative_percent");
            if !(p > 0.0 && p <= 100.0) {
                return Err(SpecError::new(
                    field(),
                    SpecProblem::OutOfRange {
                        value: p.to_string(),
                        allowed: "must be more than 0 and at most 100",
                    },
                ));
            }
            if p < *last_percent {
                return Err(SpecError::new(
                    field(),
                    SpecProblem::NotCumulative {
                        value: p,
                        previous: *last_percent,
                    },
                ));
            }
            *last_percent = p;
            Ok(StageSize::CumulativePercent(p))
        }
        None => Err(SpecError::new(label, SpecProblem::NoSize)),
    }
}

/// Stage `i` of `count`, its size already read; unnamed stages are `canary` (the first of
/// several) or `wave-<i>`.
fn stage_from_pb(
    i: usize,
    count: usize,
    st: &pb::Stage,
    size: StageSize,
    default_deadline: u32,
) -> SpecResult<StageSpec> {
    let label = stage_label(i, st);
    let deadline_s = st.deadline_s.unwrap_or(default_deadline);
    for (what, v) in [("deadline_s", deadline_s), ("soak_s", st.soak_s)] {
        at_most(format!("{label}.{what}"), v, MAX_STAGE_TIMER_S, " (7 days)")?;
    }
    let on_failure = match pb::FailureAction::try_from(st.on_failure) {
        Ok(pb::FailureAction::Pause) => FailureAction::Pause,
        Ok(pb::FailureAction::Abort) => FailureAction::Abort,
        Err(_) => {
            return Err(SpecError::new(
                format!("{label}.on_failure"),
                SpecProblem::UnknownValue {
                    value: st.on_failure,
                    expected: "",
                },
            ));
        }
    };
    let name = if !st.name.trim().is_empty() {
        clip(st.name.trim())
    } else if i == 0 && count > 1 {
        "canary".to_string()
    } else {
        format!("wave-{i}")
    };
    Ok(StageSpec {
        name,
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
    })
}

/// Concurrency limits: 0 takes the default.
fn concurrency_from_pb(c: pb::ConcurrencyLimits) -> SpecResult<Concurrency> {
    for (what, v) in [
        ("global", c.global),
        ("per_site", c.per_site),
        ("per_zigbee_network", c.per_zigbee_network),
        ("per_esphome_site", c.per_esphome_site),
    ] {
        at_most(format!("spec.concurrency.{what}"), v, MAX_CONCURRENCY, "")?;
    }
    let d = Concurrency::default();
    Ok(Concurrency {
        global: or_default(c.global, d.global),
        per_site: or_default(c.per_site, d.per_site),
        per_zigbee_network: or_default(c.per_zigbee_network, d.per_zigbee_network),
        per_esphome_site: or_default(c.per_esphome_site, d.per_esphome_site),
    })
}

/// `v`, or `default` when `v` is 0 (unset on the wire).
fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

/// The retry policy: 0 takes the default; the backoff may not shrink.
fn retry_from_pb(r: pb::RetryPolicy) -> SpecResult<RetryPolicy> {
    at_most("spec.retry.max_attempts", r.max_attempts, MAX_ATTEMPTS, "")?;
    for (what, v) in [
        ("initial_backoff_s", r.initial_backoff_s),
        ("max_backoff_s", r.max_backoff_s),
    ] {
        at_most(
            format!("spec.retry.{what}"),
            v,
            MAX_STAGE_TIMER_S,
            " (7 days)",
        )?;
    }
    let d = RetryPolicy::default();
    let retry = RetryPolicy {
        max_attempts: or_default(r.max_attempts, d.max_attempts),
        initial_backoff_s: or_default(r.initial_backoff_s, d.initial_backoff_s),
        max_backoff_s: or_default(r.max_backoff_s, d.max_backoff_s),
    };
    if retry.max_backoff_s < retry.initial_backoff_s {
        return Err(SpecError::new(
            "spec.retry.max_backoff_s",
            SpecProblem::SmallerThan {
                value: retry.max_backoff_s,
                other: "initial_backoff_s",
                other_value: retry.initial_backoff_s,
            },
        ));
    }
    Ok(retry)
}

/// A maintenance window: `HH:MM` start and end that differ, weekdays 0 (Sunday) to 6.
fn window_from_pb(w: &pb::MaintenanceWindow) -> SpecResult<MaintenanceWindow> {
    let start = parse_hhmm(&w.start, "start")?;
    let end = parse_hhmm(&w.end, "end")?;
    if start == end {
        return Err(SpecError::new(
            "maintenance window",
            SpecProblem::EmptyWindow,
        ));
    }
    if let Some(d) = w.weekdays.iter().find(|d| **d > 6) {
        return Err(SpecError::new(
            "maintenance window weekday",
            SpecProblem::NotWeekday(*d),
        ));
    }
    Ok(MaintenanceWindow {
        start_minute: start,
        end_minute: end,
        weekdays: w.weekdays.iter().map(|d| *d as u8).collect(),
    })
}

/// The upgrade type; `check` runs only the batch check, so it cannot skip it.
fn upgrade_type_from_pb(s: &pb::RolloutSpec) -> SpecResult<UpgradeType> {
    let upgrade_type = UpgradeType::from_code(s.upgrade_type as u32).ok_or_else(|| {
        SpecError::new(
            "spec.upgrade_type",
            SpecProblem::UnknownValue {
                value: s.upgrade_type,
                expected: ": 0 notify, 2 forced, 3 check",
            },
        )
    })?;
    if upgrade_type == UpgradeType::Check && s.skip_batch_check {
        return Err(SpecError::new(
            "spec.upgrade_type",
            SpecProblem::CheckWithoutBatchCheck,
        ));
    }
    Ok(upgrade_type)
}

/// The device, batch-check and wake-up timeouts are within their bounds.
fn check_timeouts(s: &pb::RolloutSpec) -> SpecResult<()> {
    at_most(
        "spec.device_timeout_s",
        s.device_timeout_s,
        MAX_DEVICE_TIMEOUT_S,
        " (24 h)",
    )?;
    at_most(
        "spec.batch_check_timeout_s",
        s.batch_check_timeout_s,
        MAX_BATCH_CHECK_TIMEOUT_S,
        " (1 h)",
    )?;
    at_most(
        "spec.wake_timeout_s",
        s.wake_timeout_s,
        MAX_WAKE_TIMEOUT_S,
        " (30 days)",
    )
}

/// The failure budget: unset or `off: false` is the default.
fn failure_budget_from_pb(b: Option<&pb::FailureBudget>) -> SpecResult<FailureBudget> {
    Ok(match b.and_then(|b| b.budget.as_ref()) {
        None => FailureBudget::Default,
        Some(pb::failure_budget::Budget::Off(true)) => FailureBudget::Off,
        Some(pb::failure_budget::Budget::Off(false)) => FailureBudget::Default,
        Some(pb::failure_budget::Budget::Limit(t)) => {
            match threshold_from(Some(t), "spec.failure_budget.limit")? {
                Some(t) => FailureBudget::Limit(t),
                None => FailureBudget::Default,
            }
        }
    })
}

/// Abort criteria: a kind, a share in (0, 100], at least one finished device, an action.
fn abort_criteria_from_pb(list: &[pb::AbortCriterion]) -> SpecResult<Vec<AbortCriterion>> {
    if list.len() > MAX_ABORT_CRITERIA {
        return Err(SpecError::new(
            "spec.abort_criteria",
            SpecProblem::TooMany {
                count: list.len(),
                max: MAX_ABORT_CRITERIA,
                noun: "criteria",
            },
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let field = |name: &str| format!("spec.abort_criteria[{i}].{name}");
            let on = match pb::abort_criterion::On::try_from(c.on) {
                Ok(pb::abort_criterion::On::Failed) => AbortOn::Failed,
                Ok(pb::abort_criterion::On::TimedOut) => AbortOn::TimedOut,
                Ok(pb::abort_criterion::On::Rejected) => AbortOn::Rejected,
                Ok(pb::abort_criterion::On::Any) => AbortOn::Any,
                Ok(pb::abort_criterion::On::Unspecified) => {
                    return Err(SpecError::new(field("on"), SpecProblem::Required));
                }
                Err(_) => {
                    return Err(SpecError::new(
                        field("on"),
                        SpecProblem::UnknownValue {
                            value: c.on,
                            expected: ": 1 failed, 2 timed out, 3 rejected, 4 any",
                        },
                    ));
                }
            };
            let action = match pb::abort_criterion::Action::try_from(c.action) {
                Ok(
                    pb::abort_criterion::Action::Unspecified | pb::abort_criterion::Action::Pause,
                ) => AbortAction::Pause,
                Ok(pb::abort_criterion::Action::Abort) => AbortAction::Abort,
                Ok(pb::abort_criterion::Action::Rollback) => AbortAction::Rollback,
                Err(_) => {
                    return Err(SpecError::new(
                        field("action"),
                        SpecProblem::UnknownValue {
                            value: c.action,
                            expected: ": 1 pause, 2 abort, 3 rollback",
                        },
                    ));
                }
            };
            if !(c.percent > 0.0 && c.percent <= 100.0) {
                return Err(SpecError::new(
                    field("percent"),
                    SpecProblem::OutOfRange {
                        value: format!("{} %", c.percent),
                        allowed: "a share of the finished devices must be above 0 and at most 100",
                    },
                ));
            }
            at_most(field("min_finished"), c.min_finished, MAX_MIN_FINISHED, "")?;
            Ok(AbortCriterion {
                on,
                percent: c.percent,
                min_finished: c.min_finished.max(1),
                action,
            })
        })
        .collect()
}

fn abort_criteria_to_pb(list: &[AbortCriterion]) -> Vec<pb::AbortCriterion> {
    list.iter()
        .map(|c| pb::AbortCriterion {
            on: match c.on {
                AbortOn::Failed => pb::abort_criterion::On::Failed,
                AbortOn::TimedOut => pb::abort_criterion::On::TimedOut,
                AbortOn::Rejected => pb::abort_criterion::On::Rejected,
                AbortOn::Any => pb::abort_criterion::On::Any,
            } as i32,
            percent: c.percent,
            min_finished: c.min_finished,
            action: match c.action {
                AbortAction::Pause => pb::abort_criterion::Action::Pause,
                AbortAction::Abort => pb::abort_criterion::Action::Abort,
                AbortAction::Rollback => pb::abort_criterion::Action::Rollback,
            } as i32,
        })
        .collect()
}

/// Per-site time zones: site ids and IANA zone names (stored by their canonical name).
fn site_timezones_from_pb(
    zones: &std::collections::HashMap<String, String>,
) -> SpecResult<std::collections::BTreeMap<String, String>> {
    if zones.len() > MAX_SITE_TIMEZONES {
        return Err(SpecError::new(
            "spec.site_timezones",
            SpecProblem::TooMany {
                count: zones.len(),
                max: MAX_SITE_TIMEZONES,
                noun: "entries",
            },
        ));
    }
    let mut site_timezones = std::collections::BTreeMap::new();
    for (site, zone) in zones {
        if super::agents::validate_site_id(site).is_err() {
            return Err(SpecError::new(
                "spec.site_timezones",
                SpecProblem::NotA {
                    value: site.clone(),
                    expected: "a site id",
                },
            ));
        }
        let Some(tz) = ota_domain::rollout::window::parse_zone(zone.trim()) else {
            return Err(SpecError::new(
                format!("spec.site_timezones[{site}]"),
                SpecProblem::NotA {
                    value: zone.clone(),
                    expected: "an IANA time zone (like \"Europe/Berlin\")",
                },
            ));
        };
        site_timezones.insert(site.clone(), tz.name().to_string());
    }
    Ok(site_timezones)
}

/// The gates: unset takes the default, 0 switches a gate off, anything else is bounded.
fn preconditions_from(p: Option<&pb::Preconditions>) -> SpecResult<Preconditions> {
    let p = p.cloned().unwrap_or_default();
    let d = Preconditions::default();
    let out_of_range = |what: &str, v: String, allowed| {
        SpecError::new(
            format!("spec.preconditions.{what}"),
            SpecProblem::OutOfRange { value: v, allowed },
        )
    };
    let battery = match p.min_battery_percent {
        None => d.min_battery_percent,
        Some(0) => None,
        Some(v) if v <= 100 => Some(v as u8),
        Some(v) => {
            return Err(out_of_range(
                "min_battery_percent",
                v.to_string(),
                "0 (off) to 100",
            ));
        }
    };
    let lq = match p.min_linkquality {
        None => d.min_linkquality,
        Some(0) => None,
        Some(v) if v <= 255 => Some(v as u8),
        Some(v) => {
            return Err(out_of_range(
                "min_linkquality",
                v.to_string(),
                "0 (off) to 255",
            ));
        }
    };
    let rssi = match p.min_rssi_dbm {
        None => d.min_rssi_dbm,
        Some(0) => None,
        Some(v) if (-120..0).contains(&v) => Some(v as i16),
        Some(v) => {
            return Err(out_of_range(
                "min_rssi_dbm",
                v.to_string(),
                "-120 to -1 dBm, or 0 (off)",
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
            .enumerate()
            .map(|(i, st)| pb::Stage {
                name: st.name.clone(),
                // The per-site canaries fill the first stage: its size stays unset.
                size: (i > 0 || s.canary_per_site == 0).then_some(match st.size {
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
        abort_criteria: abort_criteria_to_pb(&s.abort_criteria),
        rate: s.rate.as_ref().map(rate::rate_to_pb),
        canary_per_site: s.canary_per_site,
        rollback: rollback_scope_to(s.rollback),
        health: Some(pb::HealthPolicy {
            esphome_window_s: s.health.esphome_window_s,
            zigbee_window_s: s.health.zigbee_window_s,
            accept_reachability: s.health.accept_reachability,
        }),
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
    fn a_rollout_lists_at_most_ten_thousand_devices_per_list_and_counts_all() {
        use ota_domain::events::{PlannedStage, RolloutCreated, RolloutStarted, streams};
        use ota_domain::projection::EventMeta;
        let spec = spec_from_pb(&minimal_spec()).unwrap();
        let ids = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}/d{i}")).collect()
        };
        let started = RolloutStarted {
            stages: vec![
                PlannedStage {
                    name: "canary".into(),
                    device_ids: ids("a", 3),
                },
                PlannedStage {
                    name: "all".into(),
                    device_ids: ids("b", MAX_LISTED + 5),
                },
            ],
            exclusions: ids("c", MAX_LISTED + 2_000)
                .into_iter()
                .map(|device_id| Exclusion {
                    device_id,
                    code: ota_domain::status::ErrorCode::AlreadyOnTarget,
                    reason: "already on 1.0.0".into(),
                })
                .collect(),
        };
        let mut state = FleetState::default();
        let created = RolloutCreated {
            id: "ro-big".into(),
            spec,
        };
        let events = std::iter::once(created.into()).chain(started.into_events());
        for (seq, e) in events.enumerate() {
            let meta = EventMeta {
                seq: seq as u64 + 1,
                recorded_at_ms: UnixMillis::from_unix_ms(1),
                actor: "test".into(),
            };
            state.apply(&meta, &streams::rollout("ro-big"), &e);
        }
        let r = rollout(&state.rollouts["ro-big"], &state);
        assert_eq!(r.stages[0].device_ids.len(), 3);
        assert_eq!(r.stages[0].device_count, 3);
        assert_eq!(r.stages[1].device_ids.len(), MAX_LISTED);
        assert_eq!(
            r.stages[1].device_ids[0], "b/d0",
            "the first ones, in order"
        );
        assert_eq!(r.stages[1].device_count as usize, MAX_LISTED + 5);
        assert_eq!(r.exclusions.len(), MAX_LISTED);
        assert_eq!(r.exclusion_count as usize, MAX_LISTED + 2_000);
        assert_eq!(
            r.totals.map(|t| t.total as usize),
            Some(MAX_LISTED + 8),
            "the totals count every planned device"
        );
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
        assert_eq!(
            s.health,
            HealthPolicy::default(),
            "the health gate is on by default"
        );
        // Round trip through the wire keeps it.
        assert_eq!(spec_from_pb(&spec_to_pb(&s)).unwrap(), s);
    }

    #[test]
    fn per_site_canaries_fill_a_sizeless_first_stage_and_round_trip() {
        let mut p = minimal_spec();
        p.canary_per_site = 3;
        p.stages[0].size = None;
        p.stages[0].name = String::new();
        let s = spec_from_pb(&p).unwrap();
        assert_eq!(s.canary_per_site, 3);
        let names: Vec<&str> = s.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["canary", "rest"],
            "a lone canary stage keeps its name"
        );
        assert_eq!(
            s.stages[0].size,
            StageSize::Count(0),
            "not used by planning"
        );
        let wire = spec_to_pb(&s);
        assert_eq!(wire.stages[0].size, None);
        assert_eq!(
            wire.stages[1].size,
            Some(pb::stage::Size::CumulativePercent(100.0))
        );
        assert_eq!(spec_from_pb(&wire).unwrap(), s);
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
            spec_from_pb(&p).unwrap_err().to_string()
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
                .to_string()
                .contains("spec.stages[0] (canary).cumulative_percent")
        );

        let mut s = minimal_spec();
        s.upgrade_type = 1;
        assert!(
            spec_from_pb(&s)
                .unwrap_err()
                .to_string()
                .contains("upgrade_type")
        );

        let mut s = minimal_spec();
        s.maintenance_window = Some(pb::MaintenanceWindow {
            start: "25:00".into(),
            end: "05:00".into(),
            weekdays: vec![],
        });
        assert!(spec_from_pb(&s).unwrap_err().to_string().contains("22:30"));

        let mut s = minimal_spec();
        s.selector = Some(pb::DeviceSelector {
            transports: vec![99],
            ..Default::default()
        });
        assert!(
            spec_from_pb(&s)
                .unwrap_err()
                .to_string()
                .contains("unknown transport 99")
        );

        let mut s = minimal_spec();
        s.stages.clear();
        assert!(
            spec_from_pb(&s)
                .unwrap_err()
                .to_string()
                .contains("at least one stage")
        );
    }

    #[test]
    fn spec_error_messages_are_exact() {
        let bad = |f: &dyn Fn(&mut pb::RolloutSpec)| {
            let mut p = minimal_spec();
            f(&mut p);
            spec_from_pb(&p).unwrap_err().to_string()
        };
        type Edit<'a> = &'a dyn Fn(&mut pb::RolloutSpec);
        let cases: Vec<(Edit<'_>, &str)> = vec![
            (
                &|p| {
                    p.health = Some(pb::HealthPolicy {
                        zigbee_window_s: 86_401,
                        ..Default::default()
                    })
                },
                "spec.health.zigbee_window_s is 86401: at most 86400 (24 h)",
            ),
            (
                &|p| p.name = " ".into(),
                "spec.name is required (at most 200 characters)",
            ),
            (&|p| p.firmware_id.clear(), "spec.firmware_id is required"),
            (
                &|p| {
                    p.selector = Some(pb::DeviceSelector {
                        transports: vec![0],
                        ..Default::default()
                    })
                },
                "spec.selector.transports contains TRANSPORT_UNSPECIFIED",
            ),
            (
                &|p| {
                    p.selector = Some(pb::DeviceSelector {
                        tags: vec!["t".into(); 10_001],
                        ..Default::default()
                    })
                },
                "spec.selector lists 10001 values: at most 10000 in total",
            ),
            (
                &|p| {
                    p.selector = Some(pb::DeviceSelector {
                        site_ids: vec!["a b".into()],
                        ..Default::default()
                    })
                },
                "spec.selector.site_ids: \"a b\" is not a site id (1-64 letters, digits, '-', '_' or '.')",
            ),
            (
                &|p| {
                    p.selector = Some(pb::DeviceSelector {
                        image_type: Some(70_000),
                        ..Default::default()
                    })
                },
                "spec.selector.image_type 70000 does not fit 16 bits",
            ),
            (
                &|p| p.stages[0].size = Some(pb::stage::Size::Count(0)),
                "spec.stages[0] (canary).count must be at least 1",
            ),
            (
                &|p| p.stages[0].size = None,
                "spec.stages[0] (canary) needs a size: count or cumulative_percent",
            ),
            (
                &|p| {
                    p.stages[0].size = Some(pb::stage::Size::CumulativePercent(50.0));
                    p.stages.push(pb::Stage {
                        size: Some(pb::stage::Size::CumulativePercent(10.0)),
                        ..Default::default()
                    });
                },
                "spec.stages[1].cumulative_percent 10 is smaller than the previous stage's 50: percentages are cumulative",
            ),
            (
                &|p| p.stages[0].soak_s = 700_000,
                "spec.stages[0] (canary).soak_s is 700000: at most 604800 (7 days)",
            ),
            (
                &|p| p.stages[0].on_failure = 9,
                "spec.stages[0] (canary).on_failure 9 is unknown",
            ),
            (
                &|p| {
                    p.stages[0].failure_threshold = Some(pb::Threshold {
                        value: Some(pb::threshold::Value::Percent(101.0)),
                    })
                },
                "spec.stages[0] (canary).failure_threshold is 101 %: a percentage must be between 0 and 100",
            ),
            (
                &|p| p.stages = vec![p.stages[0].clone(); 51],
                "spec.stages has 51 stages: at most 50",
            ),
            (
                &|p| {
                    p.concurrency = Some(pb::ConcurrencyLimits {
                        per_site: 100_001,
                        ..Default::default()
                    })
                },
                "spec.concurrency.per_site is 100001: at most 100000",
            ),
            (
                &|p| {
                    p.retry = Some(pb::RetryPolicy {
                        initial_backoff_s: 60,
                        max_backoff_s: 30,
                        ..Default::default()
                    })
                },
                "spec.retry.max_backoff_s (30) is smaller than initial_backoff_s (60)",
            ),
            (
                &|p| {
                    p.maintenance_window = Some(pb::MaintenanceWindow {
                        start: "22:00".into(),
                        end: "22:00".into(),
                        weekdays: vec![],
                    })
                },
                "maintenance window start and end are equal: the window would never open (omit it for 'any time')",
            ),
            (
                &|p| {
                    p.maintenance_window = Some(pb::MaintenanceWindow {
                        start: "22:00".into(),
                        end: "6".into(),
                        weekdays: vec![],
                    })
                },
                "maintenance window end \"6\" is not a time like \"22:30\"",
            ),
            (
                &|p| {
                    p.maintenance_window = Some(pb::MaintenanceWindow {
                        start: "22:00".into(),
                        end: "06:00".into(),
                        weekdays: vec![7],
                    })
                },
                "maintenance window weekday 7 is not 0 (Sunday) .. 6 (Saturday)",
            ),
            (
                &|p| p.upgrade_type = 1,
                "spec.upgrade_type 1 is unknown: 0 notify, 2 forced, 3 check",
            ),
            (
                &|p| {
                    p.upgrade_type = 3;
                    p.skip_batch_check = true;
                },
                "spec.upgrade_type check runs only the batch check: skip_batch_check cannot be set with it",
            ),
            (
                &|p| p.device_timeout_s = 86_401,
                "spec.device_timeout_s is 86401: at most 86400 (24 h)",
            ),
            (
                &|p| p.batch_check_timeout_s = 3601,
                "spec.batch_check_timeout_s is 3601: at most 3600 (1 h)",
            ),
            (
                &|p| p.wake_timeout_s = u32::MAX,
                "spec.wake_timeout_s is 4294967295: at most 2592000 (30 days)",
            ),
            (
                &|p| {
                    p.preconditions = Some(pb::Preconditions {
                        min_rssi_dbm: Some(5),
                        ..Default::default()
                    })
                },
                "spec.preconditions.min_rssi_dbm is 5: -120 to -1 dBm, or 0 (off)",
            ),
            (
                &|p| p.on_asleep = 7,
                "spec.on_asleep 7 is unknown: 0 wait, 1 continue",
            ),
            (
                &|p| {
                    p.site_timezones.insert("a b".into(), "UTC".into());
                },
                "spec.site_timezones: \"a b\" is not a site id",
            ),
            (
                &|p| {
                    p.site_timezones.insert("home".into(), "Mars/Base".into());
                },
                "spec.site_timezones[home]: \"Mars/Base\" is not an IANA time zone (like \"Europe/Berlin\")",
            ),
        ];
        for (f, want) in cases {
            assert_eq!(bad(f), want);
        }
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

//! Commands to agents, from the domain's decisions to the wire (`ota.v1.ServerMessage`).
//!
//! The dispatcher and the rollout loop decide commands as `ota_domain::dispatch::Command`s; this
//! is where they become protobuf. An update command is built from the fleet state (the task's
//! firmware, device and budgets), so a resent command always says what the log says.

use ota_domain::dispatch::Command;
use ota_domain::projection::{FleetState, TaskView, effective_wake_timeout_s};
use ota_proto::v1 as pb;

use super::convert;

/// The wire message of a command; `None` for an update whose task, firmware or device is gone.
/// `state` may be the one the command was decided on (before its `TaskDispatched`): the attempt
/// and the schedule flag come from the command.
pub fn server_message(state: &FleetState, command: &Command) -> Option<pb::ServerMessage> {
    match command {
        Command::Update {
            task_id,
            command_id,
            attempt,
            schedule,
            ..
        } => state.tasks.get(task_id).and_then(|t| {
            let mut dispatched = t.clone();
            dispatched.attempt = *attempt;
            dispatched.scheduled = *schedule;
            update_command(state, &dispatched, *command_id)
        }),
        Command::Cancel {
            task_id,
            command_id,
            reason,
            ..
        } => Some(cancel(task_id, reason, *command_id)),
        Command::Probe {
            device_local_ids,
            command_id,
            ..
        } => Some(pb::ServerMessage {
            command_id: *command_id,
            trace_context: Default::default(),
            body: Some(pb::server_message::Body::Probe(pb::ProbeCommand {
                device_local_ids: device_local_ids.clone(),
            })),
        }),
    }
}

/// A `CancelCommand`.
pub fn cancel(task_id: &str, reason: &str, command_id: u64) -> pb::ServerMessage {
    pb::ServerMessage {
        command_id,
        trace_context: Default::default(),
        body: Some(pb::server_message::Body::Cancel(pb::CancelCommand {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        })),
    }
}

/// The UpdateCommand for a task's current attempt.
pub fn update_command(
    state: &FleetState,
    task: &TaskView,
    command_id: u64,
) -> Option<pb::ServerMessage> {
    let c = &task.created;
    let fw = state.firmware.get(&c.firmware_id)?;
    let device = state.devices.get(&c.device_id)?;
    let r = &fw.registered;
    Some(pb::ServerMessage {
        command_id,
        trace_context: Default::default(),
        body: Some(pb::server_message::Body::Update(pb::UpdateCommand {
            task_id: c.task_id.clone(),
            attempt: task.attempt,
            device_local_id: device.local_id.clone(),
            firmware: Some(pb::FirmwareRef {
                id: r.id.clone(),
                sha256: r.sha256.clone(),
                size: r.size,
                format: convert::format(r.format),
                version: r.version.clone(),
                file_version: r.zigbee.as_ref().map(|z| z.file_version),
                signatures: fw
                    .signatures
                    .iter()
                    .map(|s| pb::FirmwareSignature {
                        key_id: s.key_id.clone(),
                        signature: s.signature.clone(),
                        added_at_ms: s.added_at_ms,
                        added_by: None,
                    })
                    .collect(),
            }),
            upgrade_type: c.upgrade_type.code() as i32,
            downgrade: c.downgrade,
            schedule: task.scheduled,
            timeout_s: c.timeout_s,
            flash_offset: c.flash_offset,
            wake_timeout_s: effective_wake_timeout_s(c),
        })),
    })
}

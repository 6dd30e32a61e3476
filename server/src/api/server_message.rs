//! What otad says to an agent ([`crate::to_agent::ToAgent`]) as the wire's
//! `ota.v1.ServerMessage`, converted where `agents` writes a session's stream. A field-by-field
//! mapping, nothing decided here.

use ota_proto::v1 as pb;
use pb::server_message::Body as PbBody;

use super::convert;
use crate::to_agent::{Body, FirmwareRef, ToAgent, Update};

/// The wire form of a message to an agent.
pub fn to_pb(m: ToAgent) -> pb::ServerMessage {
    pb::ServerMessage {
        command_id: m.command_id,
        trace_context: m.trace_context,
        body: Some(body(m.body)),
    }
}

fn body(b: Body) -> PbBody {
    match b {
        Body::Welcome(w) => PbBody::Welcome(pb::Welcome {
            server_version: w.server_version,
            heartbeat_interval_s: w.heartbeat_interval_s,
            acked_seq: w.acked_seq,
            active_tasks: w
                .active_tasks
                .into_iter()
                .map(|t| pb::ActiveTask {
                    task_id: t.task_id,
                    attempt: t.attempt,
                    device_local_id: t.device_local_id,
                })
                .collect(),
        }),
        Body::Ack { acked_seq } => PbBody::Ack(pb::Ack { acked_seq }),
        Body::Refused { seq, reason } => PbBody::Refused(pb::Refused { seq, reason }),
        Body::Check {
            check_id,
            device_local_ids,
            timeout_ms,
        } => PbBody::Check(pb::CheckCommand {
            check_id,
            device_local_ids,
            timeout_ms,
        }),
        Body::Update(u) => PbBody::Update(update(*u)),
        Body::Cancel { task_id, reason } => PbBody::Cancel(pb::CancelCommand { task_id, reason }),
        Body::Probe { device_local_ids } => PbBody::Probe(pb::ProbeCommand { device_local_ids }),
    }
}

fn update(u: Update) -> pb::UpdateCommand {
    pb::UpdateCommand {
        task_id: u.task_id,
        attempt: u.attempt,
        device_local_id: u.device_local_id,
        firmware: Some(firmware(u.firmware)),
        upgrade_type: u.upgrade_type.code() as i32,
        downgrade: u.downgrade,
        schedule: u.schedule,
        timeout_s: u.timeout_s,
        flash_offset: u.flash_offset,
        wake_timeout_s: u.wake_timeout_s,
        health_window_s: u.health_window_s,
        accept_reachability: u.accept_reachability,
    }
}

fn firmware(f: FirmwareRef) -> pb::FirmwareRef {
    pb::FirmwareRef {
        id: f.id,
        sha256: f.sha256,
        size: f.size,
        format: convert::format(f.format),
        version: f.version,
        file_version: f.file_version,
        signatures: f
            .signatures
            .into_iter()
            .map(|s| pb::FirmwareSignature {
                key_id: s.key_id,
                signature: s.signature,
                added_at_ms: s.added_at_ms,
                added_by: None,
            })
            .collect(),
    }
}

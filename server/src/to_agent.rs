//! What otad says to an agent, in the server's own terms: the session's own messages (welcome,
//! acknowledgement, refusal) and the commands the loops and handlers decide (update, cancel,
//! probe, check).
//!
//! [`crate::sessions::Sessions`] queues them per agent, in order; `api::agents` turns each into
//! an `ota.v1.ServerMessage` (`api::server_message`) only when it writes the session's stream, so
//! no loop knows protobuf. An update is resolved from the fleet state when it is decided (its
//! firmware, device and budgets), so a resent command always says what the log says.
//!
//! What this module does not do: decide (that is `ota_domain::dispatch`, the rollout loop and
//! the handlers), send (that is `Sessions::send`) or know the wire.

use std::collections::HashMap;

use ota_domain::dispatch::Command;
use ota_domain::model::FirmwareFormat;
use ota_domain::projection::{FleetState, TaskView, effective_wake_timeout_s};
use ota_domain::rollout::spec::UpgradeType;

/// One message down an agent's session.
#[derive(Debug, Clone, PartialEq)]
pub struct ToAgent {
    /// Server-assigned id of a command (0 for the welcome, acks and refusals).
    pub command_id: u64,
    /// W3C trace context of the span that issued the command; `Sessions::send` fills an empty
    /// one with the current span's.
    pub trace_context: HashMap<String, String>,
    /// What it says.
    pub body: Body,
}

/// What a message to an agent says.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// The answer to the hello.
    Welcome(Welcome),
    /// The report with this seq (and every lower one not refused) is durable.
    Ack {
        /// Seq.
        acked_seq: u64,
    },
    /// One journaled report the server will not take.
    Refused {
        /// Its seq.
        seq: u64,
        /// Why, in a few words (inputs quoted).
        reason: String,
    },
    /// Ask devices for their state now.
    Check {
        /// Check id.
        check_id: String,
        /// Local ids of the devices.
        device_local_ids: Vec<String>,
        /// Answer each device within this time.
        timeout_ms: u32,
    },
    /// Install firmware on a device (a task's current attempt).
    Update(Box<Update>),
    /// Stop a task where it is safe to stop.
    Cancel {
        /// Task.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// Look at these devices now and report what is found.
    Probe {
        /// Local ids of the devices.
        device_local_ids: Vec<String>,
    },
}

/// The answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// otad's version.
    pub server_version: String,
    /// The agent sends a heartbeat at least this often.
    pub heartbeat_interval_s: u32,
    /// Highest journal seq of the agent the log holds.
    pub acked_seq: u64,
    /// Tasks the server believes run at the site.
    pub active_tasks: Vec<ActiveTask>,
}

/// A task the server believes runs at the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveTask {
    /// Task.
    pub task_id: String,
    /// Current attempt.
    pub attempt: u32,
    /// Device, local to the site.
    pub device_local_id: String,
}

/// An update command: everything the agent needs for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Task.
    pub task_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Device, local to the site.
    pub device_local_id: String,
    /// The image.
    pub firmware: FirmwareRef,
    /// Notify, forced, ...
    pub upgrade_type: UpgradeType,
    /// Whether it installs an older version.
    pub downgrade: bool,
    /// Sleepy device: schedule the update for its next wake-up.
    pub schedule: bool,
    /// Transfer budget, seconds.
    pub timeout_s: u32,
    /// Serial flashing: explicit offset.
    pub flash_offset: Option<u32>,
    /// Wake-up budget, seconds.
    pub wake_timeout_s: u32,
    /// Health window, seconds (0: none).
    pub health_window_s: u32,
    /// Devices the site cannot ask succeed when reachable.
    pub accept_reachability: bool,
}

/// Enough for the agent to download and verify an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareRef {
    /// Firmware id.
    pub id: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Format.
    pub format: FirmwareFormat,
    /// Human version.
    pub version: String,
    /// Zigbee file version.
    pub file_version: Option<u32>,
    /// Its signatures.
    pub signatures: Vec<Signature>,
}

/// A signature of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Signing key name.
    pub key_id: String,
    /// Signature bytes.
    pub signature: Vec<u8>,
    /// When it was recorded, Unix ms.
    pub added_at_ms: i64,
}

impl ToAgent {
    /// A message that is no command (command id 0, no trace context).
    pub fn session(body: Body) -> Self {
        Self::command(0, body)
    }

    /// A command with its id; `Sessions::send` adds the trace context.
    pub fn command(command_id: u64, body: Body) -> Self {
        Self {
            command_id,
            trace_context: HashMap::new(),
            body,
        }
    }
}

/// The message of one of the dispatcher's commands; `None` for an update whose task, firmware or
/// device is gone. `state` may be the one the command was decided on (before its
/// `TaskDispatched`): the attempt and the schedule flag come from the command.
pub fn from_decision(state: &FleetState, command: &Command) -> Option<ToAgent> {
    match command {
        Command::Update {
            task_id,
            command_id,
            attempt,
            schedule,
            ..
        } => state.tasks.get(task_id).map(Box::as_ref).and_then(|t| {
            let mut dispatched = t.clone();
            dispatched.attempt = *attempt;
            dispatched.scheduled = *schedule;
            update(state, &dispatched, *command_id)
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
        } => Some(ToAgent::command(
            *command_id,
            Body::Probe {
                device_local_ids: device_local_ids.clone(),
            },
        )),
    }
}

/// A cancel command.
pub fn cancel(task_id: &str, reason: &str, command_id: u64) -> ToAgent {
    ToAgent::command(
        command_id,
        Body::Cancel {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        },
    )
}

/// The update command for a task's current attempt; `None` when its firmware or device is gone.
pub fn update(state: &FleetState, task: &TaskView, command_id: u64) -> Option<ToAgent> {
    let c = &task.created;
    let fw = state.firmware.get(&c.firmware_id)?;
    let device = state.devices.get(&c.device_id).map(Box::as_ref)?;
    let r = &fw.registered;
    let (health_window_s, accept_reachability) = ota_domain::health::task_window(state, task);
    let firmware = FirmwareRef {
        id: r.id.clone(),
        sha256: r.sha256.clone(),
        size: r.size,
        format: r.format,
        version: r.version.clone(),
        file_version: r.zigbee.as_ref().map(|z| z.file_version),
        signatures: fw
            .signatures
            .iter()
            .map(|s| Signature {
                key_id: s.key_id.clone(),
                signature: s.signature.clone(),
                added_at_ms: s.added_at_ms.as_i64(),
            })
            .collect(),
    };
    Some(ToAgent::command(
        command_id,
        Body::Update(Box::new(Update {
            task_id: c.task_id.clone(),
            attempt: task.attempt,
            device_local_id: device.local_id.clone(),
            firmware,
            upgrade_type: c.upgrade_type,
            downgrade: c.downgrade,
            schedule: task.scheduled,
            timeout_s: c.timeout_s,
            flash_offset: c.flash_offset,
            wake_timeout_s: effective_wake_timeout_s(c),
            health_window_s,
            accept_reachability,
        })),
    ))
}

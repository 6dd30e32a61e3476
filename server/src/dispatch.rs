//! The task dispatcher: a thin driver around the pure decision `ota_domain::dispatch::decide`.
//!
//! Each pass (see [`crate::reconcile_loop`] for when passes run) reads the fleet state, lets the
//! domain decide for every unfinished task what should happen now — time out a task past the
//! budget of its phase, dispatch, hold or skip a waiting one under the fleet-wide limits, probe
//! a device a task waits for — records the decision through `Core::execute` (every change to a
//! rollout's task guarded by the rollout's stream, so nothing is dispatched once a pause or abort
//! is durable), and only then sends the commands. Running a pass twice changes nothing.
//!
//! Tracing: every update and cancel is sent inside a `task.dispatch` span (task, device, site,
//! firmware, rollout, stage, transport) that continues the trace the task was created in, when
//! this process remembers it (`Sessions::trace_of`), and whose context travels with the command.
//!
//! Dispatch is recorded (`TaskDispatched`) before the command is sent. If the server dies in
//! between, the agent gets the command when it reconnects (see `api::agents`), and agents ignore
//! a command for a task attempt they already know, so a device is never updated twice by accident.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_domain::dispatch::{Command, DispatchInput, ProbeMemory, decide};
use ota_domain::events::{DomainEvent, TaskFailed, streams};
use ota_domain::model::{Actor, Transport};
use ota_domain::projection::{FleetState, TaskView};
use ota_domain::status::{ErrorCode, TaskError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::app::App;
use crate::core::{Change, CoreError};
use crate::lock::MutexExt;
use crate::reconcile_loop::{self, LoopSpec, Passed};
use crate::to_agent::{self, ToAgent};

/// Starts the dispatcher loop.
pub fn spawn(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let probes = Arc::new(Mutex::new(ProbeMemory::default()));
    let spec = LoopSpec {
        name: "dispatcher",
        relevant: is_relevant,
        min_sleep: Duration::ZERO,
    };
    let poke = app.dispatch_wake.clone();
    let looping = app.clone();
    tokio::spawn(
        async move {
            reconcile_loop::run(
                looping,
                spec,
                poke,
                shutdown,
                || pass(&app, &probes),
                |_| {},
            )
            .await;
            debug!("dispatcher stopped");
        }
        .instrument(info_span!("dispatcher")),
    )
}

fn is_relevant(e: &DomainEvent) -> bool {
    !matches!(
        e,
        DomainEvent::DeviceChecked(_)
            | DomainEvent::FirmwareSignatureAdded(_)
            | DomainEvent::TokenCreated(_)
            | DomainEvent::TokenRevoked(_)
            | DomainEvent::TaskDispatched(_)
            | DomainEvent::TaskHeld(_)
            | DomainEvent::TaskPreparing(_)
    ) && !matches!(e, DomainEvent::TaskProgressed(p) if !phase_change(p))
}

/// Progress that frees a task's slot (it now waits for a wake-up or for its site's own slot)
/// changes what the dispatcher may do; transfer progress does not.
fn phase_change(p: &ota_domain::events::TaskProgressed) -> bool {
    use ota_domain::status::UpgradeStatus as S;
    matches!(p.status, S::WaitingForWakeup | S::Queued)
}

/// What a task's spans say about it.
#[derive(Debug, Clone, Default)]
pub struct TaskSpanFields {
    device_id: String,
    firmware_id: String,
    rollout_id: String,
    stage: Option<u32>,
    transport: &'static str,
}

impl TaskSpanFields {
    /// The fields of a task.
    pub fn of(state: &FleetState, task: &TaskView) -> Self {
        let c = &task.created;
        Self {
            device_id: c.device_id.clone(),
            firmware_id: c.firmware_id.clone(),
            rollout_id: c.rollout_id.clone().unwrap_or_default(),
            stage: c.rollout_id.is_some().then_some(c.stage),
            transport: state
                .devices
                .get(&c.device_id)
                .and_then(|d| d.facts.transport)
                .map_or("", Transport::name),
        }
    }
}

/// The span that sends a command of a task: a new root, continuing the trace the task was
/// created in when this process remembers it.
pub fn task_span(
    app: &App,
    name: &'static str,
    task_id: &str,
    site_id: &str,
    attempt: u32,
    f: &TaskSpanFields,
) -> tracing::Span {
    let span = info_span!(
        parent: None,
        "task.dispatch",
        otel.name = name,
        task.id = %task_id,
        site.id = %site_id,
        device.id = %f.device_id,
        firmware.id = %f.firmware_id,
        rollout.id = %f.rollout_id,
        stage = f.stage,
        transport = f.transport,
        attempt,
    );
    if let Some(cx) = app.sessions.trace_of(task_id) {
        ota_telemetry::traces::set_parent_from(&span, &cx);
    }
    span
}

/// A command ready to send: the message to the agent and what its span says.
#[derive(Debug)]
struct Outgoing {
    command: Command,
    message: ToAgent,
    span: TaskSpanFields,
}

/// One pass. Returns the next time something becomes due, if any, and how long it was busy
/// deciding.
pub async fn pass(app: &Arc<App>, probes: &Mutex<ProbeMemory>) -> Result<Passed, CoreError> {
    let sessions = app.sessions.clone();
    let now = app.now();
    let memory = probes.locked().clone();
    let mut outgoing: Vec<Outgoing> = Vec::new();
    let mut decided = None;
    let mut busy = Duration::ZERO;
    app.core
        .execute::<CoreError, _>(&Actor::system(), |state| {
            let deciding = tokio::time::Instant::now();
            let connected = |site: &str| sessions.is_connected(site);
            let next_id = || sessions.next_command_id();
            let decision = decide(&DispatchInput {
                state,
                now_ms: now,
                connected: &connected,
                next_command_id: &next_id,
                probes: &memory,
            });
            outgoing = decision
                .commands
                .iter()
                .filter_map(|c| {
                    let message = to_agent::from_decision(state, c)?;
                    let span = match c {
                        Command::Update { task_id, .. } | Command::Cancel { task_id, .. } => state
                            .tasks
                            .get(task_id)
                            .map(|t| TaskSpanFields::of(state, t))
                            .unwrap_or_default(),
                        Command::Probe { .. } => TaskSpanFields::default(),
                    };
                    Some(Outgoing {
                        command: c.clone(),
                        message,
                        span,
                    })
                })
                .collect();
            // The changes go to the store; the rest of the decision is kept for after it.
            let mut decision = decision;
            let changes = std::mem::take(&mut decision.changes);
            decided = Some(decision);
            busy += deciding.elapsed();
            Ok(changes)
        })
        .await?;
    let Some(decision) = decided else {
        return Ok(Passed {
            next_due: None,
            busy,
        });
    };
    *probes.locked() = decision.probes.clone();
    for out in outgoing {
        send(app, out).await?;
    }
    Ok(Passed {
        next_due: decision.next_due_ms,
        busy,
    })
}

async fn send(app: &Arc<App>, out: Outgoing) -> Result<(), CoreError> {
    let sessions = &app.sessions;
    let (site_id, task_id, attempt, name) = match &out.command {
        Command::Update {
            site_id,
            task_id,
            attempt,
            ..
        } => (site_id, task_id.as_str(), *attempt, "task.dispatch"),
        Command::Cancel {
            site_id,
            task_id,
            attempt,
            ..
        } => (site_id, task_id.as_str(), *attempt, "task.cancel"),
        Command::Probe {
            site_id,
            device_local_ids,
            ..
        } => {
            debug!(site.id = %site_id, devices = device_local_ids.len(), "probe sent");
            if let Err(e) = sessions.send(site_id, out.message) {
                debug!(site.id = %site_id, error = %e, "probe not delivered");
            }
            return Ok(());
        }
    };
    let is_update = matches!(out.command, Command::Update { .. });
    let span = task_span(app, name, task_id, site_id, attempt, &out.span);
    async {
        match sessions.send(site_id, out.message) {
            Ok(()) => {
                if is_update {
                    info!("update sent to the site");
                }
                Ok(())
            }
            Err(e) if is_update => {
                warn!(error = %e, "could not send the update; it will be retried");
                let error = TaskError::new(ErrorCode::AgentDisconnected, e.to_string());
                record_send_failure(app, task_id, attempt, error).await
            }
            Err(e) => {
                debug!(error = %e, "cancel not delivered");
                Ok(())
            }
        }
    }
    .instrument(span)
    .await
}

async fn record_send_failure(
    app: &Arc<App>,
    task_id: &str,
    attempt: u32,
    error: TaskError,
) -> Result<(), CoreError> {
    let now = app.now();
    let jitter = rand::random::<f64>();
    app.core
        .execute::<CoreError, _>(&Actor::system(), |state| {
            let Some(t) = state.tasks.get(task_id).map(Box::as_ref) else {
                return Ok(vec![]);
            };
            if t.attempt != attempt || !t.phase.is_at_site() {
                return Ok(vec![]);
            }
            let retry_at_ms = match ota_domain::tasks::after_failure(t, &error, now, jitter) {
                ota_domain::tasks::AfterFailure::RetryAt(at) => Some(at),
                ota_domain::tasks::AfterFailure::Final => None,
            };
            let mut changes = vec![Change::unchanged(
                streams::task(task_id),
                vec![
                    TaskFailed {
                        attempt,
                        error: error.clone(),
                        timed_out: false,
                        retry_at_ms,
                        source: None,
                    }
                    .into(),
                ],
            )];
            if let Some(r) = &t.created.rollout_id {
                ota_domain::decision::ensure_guard(&mut changes, &streams::rollout(r));
            }
            Ok(changes)
        })
        .await?;
    Ok(())
}

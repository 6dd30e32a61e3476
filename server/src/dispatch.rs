//! The task dispatcher: moves queued tasks to their sites, and ends tasks that overstay.
//!
//! A level-triggered loop (like a kube controller): each pass re-reads the fleet state, decides
//! for every unfinished task what should happen now, records those decisions as events, and only
//! then sends commands to the agents. It runs again when something relevant happened (a task was
//! created, confirmed or finished, a device or site changed, a rollout moved), when the next
//! deadline is due, and every 30 s as a safety net. Running a pass twice changes nothing.
//!
//! Per task, in order:
//! 1. at the site past its per-device timeout → failure 7 (5016), and a cancel to the agent;
//! 2. queued (or held and due for a re-check), released by its rollout, within the concurrency
//!    limits → preflight (`ota_domain::tasks::preflight`) → dispatch, hold or skip.
//!
//! Tracing: every command is sent inside a `task.dispatch` span (task, device, site, firmware,
//! rollout, stage, transport) that continues the trace the task was created in, when this
//! process remembers it (`Sessions::trace_of`), and whose context travels with the command.
//!
//! Dispatch is recorded (`TaskDispatched`) before the command is sent. If the server dies in
//! between, the agent gets the command when it reconnects (see `api::agents`), and agents ignore
//! a command for a task attempt they already know, so a device is never updated twice by accident.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ota_domain::events::{DomainEvent, TaskDispatched, TaskFailed, TaskHeld, TaskSkipped, streams};
use ota_domain::model::{Actor, Transport};
use ota_domain::projection::{FleetState, RolloutState, StageState, TaskPhase, TaskView};
use ota_domain::rollout::spec::{Concurrency, Preconditions, default_device_timeout_s};
use ota_domain::rollout::window;
use ota_domain::status::{ErrorCode, TaskError};
use ota_domain::tasks::{Preflight, PreflightInput, preflight};
use ota_proto::v1 as pb;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::convert;
use crate::app::App;
use crate::core::{Change, CoreError};

/// How often a pass runs even when nothing happened.
const SAFETY_TICK: Duration = Duration::from_secs(30);
/// How long an offline or disconnected hold waits before the next look (events usually come first).
const HOLD_RECHECK_MS: i64 = 60_000;
/// After a pass, the loop rests this many times as long as the pass took before it looks at
/// new events. A pass costs O(unfinished tasks); on a large fleet reports arrive faster than
/// passes end, and back-to-back passes would take a whole core (and hold the projection's read
/// lock that reports wait for). Resting keeps the loop under 1/(1 + factor) of a core; events
/// that arrive meanwhile coalesce into the next pass. Cheap passes (small fleets, paused time in
/// tests) rest for next to nothing.
const PASS_REST_FACTOR: u32 = 4;

/// Starts the dispatcher loop.
pub fn spawn(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut applied = app.core.subscribe_applied();
            loop {
                let started = tokio::time::Instant::now();
                let next_due = match pass(&app).await {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(error = %e, "dispatch pass failed; retrying soon");
                        Some(app.now_ms() + 1000)
                    }
                };
                let rest = started.elapsed() * PASS_REST_FACTOR;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(rest) => {}
                }
                let sleep_for = next_due
                    .map(|at| Duration::from_millis((at - app.now_ms()).max(0) as u64))
                    .unwrap_or(SAFETY_TICK)
                    .min(SAFETY_TICK);
                let wake = async {
                    loop {
                        match applied.recv().await {
                            Ok(a) if is_relevant(&a.event) => return,
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = app.dispatch_wake.notified() => {}
                    () = tokio::time::sleep(sleep_for) => {}
                    () = wake => {}
                }
                // Coalesce a burst of events into one pass: the next pass reads a state that
                // already holds every event received so far (events are applied before they are
                // announced). Without this, a pass ran once per relevant event.
                while let Ok(_) | Err(TryRecvError::Lagged(_)) = applied.try_recv() {}
            }
            debug!("dispatcher stopped");
        }
        .instrument(info_span!("dispatcher")),
    )
}

fn is_relevant(e: &DomainEvent) -> bool {
    !matches!(
        e,
        DomainEvent::TaskProgressed(_)
            | DomainEvent::DeviceChecked(_)
            | DomainEvent::FirmwareSignatureAdded(_)
            | DomainEvent::TokenCreated(_)
            | DomainEvent::TokenRevoked(_)
            | DomainEvent::TaskDispatched(_)
            | DomainEvent::TaskHeld(_)
            | DomainEvent::TaskPreparing(_)
    )
}

/// A command to send after the decisions are durable.
#[derive(Debug, Clone)]
struct Outgoing {
    site_id: String,
    task_id: String,
    attempt: u32,
    message: pb::ServerMessage,
    span: TaskSpanFields,
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
            wake_timeout_s: 0,
        })),
    })
}

fn cancel_command(task: &TaskView, reason: &str, command_id: u64) -> pb::ServerMessage {
    pb::ServerMessage {
        command_id,
        trace_context: Default::default(),
        body: Some(pb::server_message::Body::Cancel(pb::CancelCommand {
            task_id: task.created.task_id.clone(),
            reason: reason.to_string(),
        })),
    }
}

/// Concurrency bookkeeping of one pass. Keys borrow from the state the pass looks at: a pass
/// runs over every unfinished task, so it allocates nothing per task.
#[derive(Debug, Default)]
struct Load<'a> {
    /// Per rollout: tasks at a site.
    rollout: HashMap<&'a str, u32>,
    /// Per (rollout, site).
    site: HashMap<(&'a str, &'a str), u32>,
    /// Per (rollout, site, zigbee network).
    zigbee: HashMap<(&'a str, &'a str, &'a str), u32>,
    /// Per (rollout, site) for ESPHome devices.
    esphome: HashMap<(&'a str, &'a str), u32>,
}

struct Key<'a> {
    rollout: &'a str,
    site: &'a str,
    network: &'a str,
    transport: Option<Transport>,
}

fn key_of<'a>(state: &'a FleetState, task: &'a TaskView) -> Option<Key<'a>> {
    let rollout = task.created.rollout_id.as_deref()?;
    let device = state.devices.get(&task.created.device_id);
    Some(Key {
        rollout,
        site: &task.created.site_id,
        network: device.map_or("", |d| d.facts.network.as_str()),
        transport: device.and_then(|d| d.facts.transport),
    })
}

impl<'a> Load<'a> {
    fn add(&mut self, k: &Key<'a>) {
        *self.rollout.entry(k.rollout).or_default() += 1;
        *self.site.entry((k.rollout, k.site)).or_default() += 1;
        match k.transport {
            Some(Transport::Zigbee2Mqtt) => {
                *self
                    .zigbee
                    .entry((k.rollout, k.site, k.network))
                    .or_default() += 1;
            }
            Some(Transport::Esphome) => {
                *self.esphome.entry((k.rollout, k.site)).or_default() += 1;
            }
            _ => {}
        }
    }

    fn allows(&self, k: &Key<'a>, limits: &Concurrency) -> bool {
        let get = |m: Option<&u32>| m.copied().unwrap_or(0);
        if get(self.rollout.get(k.rollout)) >= limits.global {
            return false;
        }
        if get(self.site.get(&(k.rollout, k.site))) >= limits.per_site {
            return false;
        }
        match k.transport {
            Some(Transport::Zigbee2Mqtt) => {
                get(self.zigbee.get(&(k.rollout, k.site, k.network))) < limits.per_zigbee_network
            }
            Some(Transport::Esphome) => {
                get(self.esphome.get(&(k.rollout, k.site))) < limits.per_esphome_site
            }
            _ => true,
        }
    }
}

/// Whether a rollout lets this task go now, and under which limits: the rollout runs and the
/// task's stage has started (running, soaking, or succeeded with stragglers still to go) — or,
/// for an auto-upgrade task, its source rollout completed — and the rollout's maintenance window
/// is open at the task's site (`ota_domain::rollout::window`). Tasks outside any rollout go any
/// time, unlimited.
pub(crate) fn released_by_rollout(
    state: &FleetState,
    task: &TaskView,
    now_ms: i64,
) -> Option<Concurrency> {
    let Some(rollout_id) = &task.created.rollout_id else {
        return Some(Concurrency {
            global: u32::MAX,
            per_site: u32::MAX,
            per_zigbee_network: u32::MAX,
            per_esphome_site: u32::MAX,
        });
    };
    let r = state.rollouts.get(rollout_id)?;
    let released = if task.created.auto {
        r.state == RolloutState::Completed
    } else {
        r.state == RolloutState::Running
            && r.stages.get(task.created.stage as usize).is_some_and(|s| {
                matches!(
                    s.state,
                    StageState::Running | StageState::Soaking | StageState::Succeeded
                )
            })
    };
    if !released {
        return None;
    }
    if let Some(w) = &r.spec.window {
        let offset = state
            .sites
            .get(&task.created.site_id)
            .map_or(0, |s| s.utc_offset_minutes);
        if !window::is_open(w, offset, now_ms) {
            return None;
        }
    }
    Some(r.spec.concurrency)
}

fn preconditions_of(state: &FleetState, task: &TaskView) -> Preconditions {
    task.created
        .rollout_id
        .as_ref()
        .and_then(|id| state.rollouts.get(id))
        .map(|r| r.spec.preconditions)
        .unwrap_or_default()
}

/// One pass. Returns the next time something becomes due, if any.
pub async fn pass(app: &Arc<App>) -> Result<Option<i64>, CoreError> {
    let mut outgoing: Vec<Outgoing> = Vec::new();
    let mut next_due: Option<i64> = None;
    let sessions = app.sessions.clone();
    let now = app.now_ms();
    app.core
        .execute::<CoreError, _>(&Actor::system(), |state| {
            outgoing.clear();
            next_due = None;
            let mut due = |at: i64| {
                if at > now {
                    next_due = Some(next_due.map_or(at, |d: i64| d.min(at)));
                }
            };
            let mut changes = Vec::new();
            let mut load = Load::default();
            // Tasks at a site first; then the waiting ones that may go now or have a time to
            // come back at, oldest first: fair, and deterministic for tests. Waiting tasks their
            // rollout does not release yet (a later stage) are left out here, before sorting.
            let mut active: Vec<&TaskView> = Vec::new();
            let mut waiting: Vec<&TaskView> = Vec::new();
            for t in state.tasks.values().filter(|t| !t.phase.is_terminal()) {
                if t.phase.is_at_site() {
                    active.push(t);
                } else if t.next_attempt_at_ms.is_some_and(|at| at > now)
                    || released_by_rollout(state, t, now).is_some()
                {
                    waiting.push(t);
                }
            }
            waiting.sort_by(|a, b| {
                (a.created_at_ms, &a.created.task_id).cmp(&(b.created_at_ms, &b.created.task_id))
            });
            active.append(&mut waiting);
            for t in &active {
                if t.phase.is_at_site()
                    && let Some(k) = key_of(state, t)
                {
                    load.add(&k);
                }
            }
            for t in &active {
                let task_id = &t.created.task_id;
                let stream = || streams::task(task_id);
                // 1. Per-device timeout.
                if t.phase.is_at_site() {
                    match t.timeout_at_ms {
                        Some(at) if at <= now => {
                            let effective_s = if t.created.timeout_s == 0 {
                                let transport = state
                                    .devices
                                    .get(&t.created.device_id)
                                    .and_then(|d| d.facts.transport)
                                    .unwrap_or(Transport::Esphome);
                                default_device_timeout_s(transport)
                            } else {
                                t.created.timeout_s
                            };
                            let minutes = effective_s / 60;
                            changes.push(Change::unchanged(
                                stream(),
                                vec![
                                    TaskFailed {
                                        attempt: t.attempt,
                                        error: TaskError::new(
                                            ErrorCode::Timeout,
                                            format!(
                                                "no result within the per-device timeout ({} min); the update was cancelled where the device allows it",
                                                minutes.max(1)
                                            ),
                                        ),
                                        timed_out: true,
                                        retry_at_ms: None,
                                        source: None,
                                    }
                                    .into(),
                                ],
                            ));
                            outgoing.push(Outgoing {
                                site_id: t.created.site_id.clone(),
                                task_id: task_id.clone(),
                                attempt: t.attempt,
                                message: cancel_command(t, "per-device timeout", sessions.next_command_id()),
                                span: TaskSpanFields::of(state, t),
                            });
                        }
                        Some(at) => due(at),
                        None => {}
                    }
                    continue;
                }
                // 2. Queued or held tasks that are due.
                let waiting = match t.phase {
                    TaskPhase::Queued => true,
                    TaskPhase::Held => !t.awaiting_confirmation,
                    _ => false,
                };
                if !waiting {
                    continue;
                }
                if let Some(at) = t.next_attempt_at_ms
                    && at > now
                {
                    due(at);
                    continue;
                }
                let Some(limits) = released_by_rollout(state, t, now) else {
                    continue;
                };
                let key = key_of(state, t);
                if let Some(k) = &key
                    && !load.allows(k, &limits)
                {
                    continue;
                }
                let (Some(device), Some(fw)) = (
                    state.devices.get(&t.created.device_id),
                    state.firmware.get(&t.created.firmware_id),
                ) else {
                    changes.push(Change::unchanged(
                        stream(),
                        vec![
                            TaskSkipped {
                                code: ErrorCode::NoFirmware,
                                remind: "the device or the firmware is no longer known".into(),
                            }
                            .into(),
                        ],
                    ));
                    continue;
                };
                let preconditions = preconditions_of(state, t);
                let decision = preflight(PreflightInput {
                    task: t,
                    device: &device.facts,
                    device_removed: device.removed,
                    firmware: &fw.registered,
                    site_connected: sessions.is_connected(&t.created.site_id),
                    preconditions: &preconditions,
                });
                match decision {
                    Preflight::Dispatch { schedule } => {
                        let attempt = t.attempt + 1;
                        let command_id = sessions.next_command_id();
                        let timeout_s = if t.created.timeout_s == 0 {
                            default_device_timeout_s(device.facts.transport.unwrap_or(Transport::Esphome))
                        } else {
                            t.created.timeout_s
                        };
                        let timeout_at_ms = now + i64::from(timeout_s) * 1000;
                        let mut dispatched = (*t).clone();
                        dispatched.attempt = attempt;
                        dispatched.scheduled = schedule;
                        if let Some(message) = update_command(state, &dispatched, command_id) {
                            changes.push(Change::unchanged(
                                stream(),
                                vec![
                                    TaskDispatched {
                                        attempt,
                                        command_id,
                                        timeout_at_ms,
                                        schedule,
                                    }
                                    .into(),
                                ],
                            ));
                            outgoing.push(Outgoing {
                                site_id: t.created.site_id.clone(),
                                task_id: task_id.clone(),
                                attempt,
                                message,
                                span: TaskSpanFields::of(state, t),
                            });
                            if let Some(k) = &key {
                                load.add(k);
                            }
                            due(timeout_at_ms);
                        }
                    }
                    Preflight::Hold {
                        error,
                        remind,
                        needs_confirmation,
                    } => {
                        let unchanged_hold = t.phase == TaskPhase::Held
                            && t.error.as_ref().map(|e| e.code) == Some(error.code);
                        let retry_at_ms = (!needs_confirmation).then_some(now + HOLD_RECHECK_MS);
                        if !unchanged_hold || t.next_attempt_at_ms.is_some_and(|at| at <= now) {
                            changes.push(Change::unchanged(
                                stream(),
                                vec![
                                    TaskHeld {
                                        error,
                                        remind,
                                        needs_confirmation,
                                        retry_at_ms,
                                    }
                                    .into(),
                                ],
                            ));
                        }
                        if let Some(at) = retry_at_ms {
                            due(at);
                        }
                    }
                    Preflight::Skip { code, remind } => {
                        changes.push(Change::unchanged(stream(), vec![TaskSkipped { code, remind }.into()]));
                    }
                }
            }
            Ok(changes)
        })
        .await?;

    for out in outgoing {
        let is_update = matches!(out.message.body, Some(pb::server_message::Body::Update(_)));
        let name = if is_update {
            "task.dispatch"
        } else {
            "task.cancel"
        };
        let span = task_span(
            app,
            name,
            &out.task_id,
            &out.site_id,
            out.attempt,
            &out.span,
        );
        async {
            match sessions.send(&out.site_id, out.message) {
                Ok(()) => {
                    if is_update {
                        info!("update sent to the site");
                    }
                    Ok(())
                }
                Err(e) if is_update => {
                    warn!(error = %e, "could not send the update; it will be retried");
                    let error = TaskError::new(ErrorCode::AgentDisconnected, e.to_string());
                    record_send_failure(app, &out.task_id, out.attempt, error).await
                }
                Err(e) => {
                    debug!(error = %e, "cancel not delivered");
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await?;
    }
    Ok(next_due)
}

async fn record_send_failure(
    app: &Arc<App>,
    task_id: &str,
    attempt: u32,
    error: TaskError,
) -> Result<(), CoreError> {
    let now = app.now_ms();
    let jitter = rand::random::<f64>();
    app.core
        .execute::<CoreError, _>(&Actor::system(), |state| {
            let Some(t) = state.tasks.get(task_id) else {
                return Ok(vec![]);
            };
            if t.attempt != attempt || !t.phase.is_at_site() {
                return Ok(vec![]);
            }
            let retry_at_ms = match ota_domain::tasks::after_failure(t, &error, now, jitter) {
                ota_domain::tasks::AfterFailure::RetryAt(at) => Some(at),
                ota_domain::tasks::AfterFailure::Final => None,
            };
            Ok(vec![Change::unchanged(
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
            )])
        })
        .await?;
    Ok(())
}

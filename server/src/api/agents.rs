//! `AgentService.Connect`: the session of one site's agent.
//!
//! The first message must be a hello. The server answers with a welcome carrying the highest
//! journal seq it has applied for this agent installation, so the agent resends only what is
//! above; then it resends the update commands of every task it believes runs at the site (the
//! agent ignores those it already knows). Reports are applied strictly in order, each at most
//! once: an event that results from a report carries the report's `(agent_id, seq)`, and the
//! projection remembers the highest seq per agent. Every report is acknowledged once its events
//! are durable.
//!
//! Silence longer than the agent timeout ends the session: the site is marked disconnected, so
//! its devices show as unreachable and new tasks for it wait (5020). Tasks that run at the site
//! are not failed; the agent reports their outcome when it is back.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use ota_domain::events::{
    AgentConnected, AgentDisconnected, DeviceRemoved, DeviceReported, DomainEvent, TaskFailed,
    TaskProgressed, TaskSucceeded, streams,
};
use ota_domain::model::{self, Actor, AgentSource, DeviceFacts, Signal};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_domain::tasks::{AfterFailure, after_failure, result_error};
use ota_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::auth::{Caller, caller};
use super::commands::update_command;
use super::convert;
use super::error::{ApiError, stream_status};
use crate::app::App;
use crate::core::{Change, CoreError};
use crate::dispatch::{TaskSpanFields, task_span};
use crate::quote::quote;
use crate::sessions::Session;

/// The service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    app: Arc<App>,
}

impl AgentApi {
    /// A service over the app.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

/// Site ids: what the config and certificates use.
pub fn validate_site_id(site: &str) -> Result<(), ApiError> {
    if crate::tls::valid_site_id(site) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "site id {} is not valid: 1-64 letters, digits, '-', '_' or '.'",
            quote(site)
        )))
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    type ConnectStream = ServerStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let who = caller(&request);
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| ApiError::DeadlineExceeded("no hello within 10 s".into()))?
            .map_err(stream_status)?;
        let hello = match first.and_then(|m| m.body) {
            Some(pb::agent_message::Body::Hello(h)) => h,
            _ => {
                return Err(
                    ApiError::invalid("the first message of a session must be a hello").into(),
                );
            }
        };
        validate_site_id(&hello.site_id)?;
        if hello.agent_id.is_empty()
            || hello.agent_id.len() > 128
            || hello
                .agent_id
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ApiError::invalid(
                "hello.agent_id is required (at most 128 characters, no spaces)",
            )
            .into());
        }
        if hello.transports.len() > 64
            || hello
                .transports
                .iter()
                .any(|t| t.name.len() > 128 || t.name.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(
                "hello.transports: at most 64, names of at most 128 characters",
            )
            .into());
        }
        match &who {
            Caller::Agent { site_id } if *site_id != hello.site_id => {
                warn!(site.id = %hello.site_id, certificate.site = %site_id, %peer, "an agent tried to open a session for another site");
                return Err(ApiError::PermissionDenied(
                    "these credentials are not valid for that site".into(),
                )
                .into());
            }
            Caller::Agent { .. } => {}
            // Development mode: the local administrator may act as any agent.
            Caller::Operator { .. } if who.is_local_admin() => {}
            Caller::Operator { .. } => {
                return Err(ApiError::PermissionDenied(
                    "agent sessions need an agent certificate".into(),
                )
                .into());
            }
            Caller::Anonymous => {
                return Err(ApiError::Unauthenticated(super::auth::UNAUTHENTICATED.into()).into());
            }
        }

        let app = self.app.clone();
        let (tx, rx) = mpsc::channel::<pb::ServerMessage>(1024);
        let now = app.now_ms();
        let (session, old) = app.sessions.register(
            &hello.site_id,
            &hello.agent_id,
            peer.clone(),
            tx.clone(),
            now,
        );
        if old.is_some() {
            info!(site.id = %hello.site_id, "a new session replaces the previous one");
        }

        let transports = convert::transport_instances_from(&hello.transports);
        let connected = AgentConnected {
            agent_id: hello.agent_id.clone(),
            agent_version: hello.agent_version.chars().take(64).collect(),
            // Only a zone the database knows is kept (windows then follow it, daylight saving
            // included); anything else leaves the site on its reported UTC offset.
            timezone: match ota_domain::rollout::window::parse_zone(hello.timezone.trim()) {
                Some(tz) => tz.name().to_string(),
                None => {
                    if !hello.timezone.is_empty() {
                        warn!(site.id = %hello.site_id, "the agent's time zone is not an IANA zone name; using its UTC offset");
                    }
                    String::new()
                }
            },
            utc_offset_minutes: hello.utc_offset_minutes.clamp(-14 * 60, 14 * 60),
            transports,
            peer,
        };
        let site_stream = streams::site(&hello.site_id);
        app.core
            .execute::<ApiError, _>(&Actor::agent(&hello.site_id), |_| {
                Ok(vec![Change::any(
                    site_stream.clone(),
                    vec![connected.clone().into()],
                )])
            })
            .await?;

        // Welcome, then the commands of tasks in flight at this site.
        let (acked, resend) = {
            let state = app.core.read();
            let acked = state.agent_seqs.get(&hello.agent_id).copied().unwrap_or(0);
            let mut active = Vec::new();
            let mut resend = Vec::new();
            for t in state.tasks.values() {
                if t.created.site_id == hello.site_id && t.phase.is_at_site() {
                    let local = model::split_device_id(&t.created.device_id)
                        .map(|(_, l)| l.to_string())
                        .unwrap_or_default();
                    active.push(pb::ActiveTask {
                        task_id: t.created.task_id.clone(),
                        attempt: t.attempt,
                        device_local_id: local,
                    });
                    if let Some(m) = update_command(
                        &state,
                        t,
                        t.command_id
                            .unwrap_or_else(|| app.sessions.next_command_id()),
                    ) {
                        resend.push((m, TaskSpanFields::of(&state, t), t.attempt));
                    }
                }
            }
            let welcome = pb::ServerMessage {
                command_id: 0,
                trace_context: Default::default(),
                body: Some(pb::server_message::Body::Welcome(pb::Welcome {
                    server_version: env!("CARGO_PKG_VERSION").into(),
                    heartbeat_interval_s: app.config.heartbeat_interval.as_secs().max(1) as u32,
                    acked_seq: acked,
                    active_tasks: active,
                })),
            };
            let _ = tx.try_send(welcome);
            (acked, resend)
        };
        for (mut m, fields, attempt) in resend {
            if let Some(pb::server_message::Body::Update(u)) = &m.body {
                let span = task_span(
                    &app,
                    "task.resend",
                    &u.task_id,
                    &hello.site_id,
                    attempt,
                    &fields,
                );
                m.trace_context = ota_telemetry::traces::inject(&span);
            }
            let _ = tx.try_send(m);
        }
        app.dispatch_wake.notify_one();

        let span = info_span!("agent.session", site.id = %hello.site_id, agent.id = %hello.agent_id, session = session.session_id);
        tokio::spawn(run_session(app, session, inbound, acked).instrument(span));

        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

async fn run_session(
    app: Arc<App>,
    session: Arc<Session>,
    mut inbound: Streaming<pb::AgentMessage>,
    mut acked: u64,
) {
    info!("agent connected");
    let timeout = app.config.agent_timeout;
    let reason = loop {
        let next = tokio::select! {
            () = app.shutdown.cancelled() => break "the server is shutting down".to_string(),
            next = tokio::time::timeout(timeout, inbound.message()) => next,
        };
        let msg = match next {
            Err(_) => break format!("no message for {}", humantime::format_duration(timeout)),
            Ok(Err(status)) => break format!("stream error: {}", status.message()),
            Ok(Ok(None)) => break "the agent closed the session".to_string(),
            Ok(Ok(Some(m))) => m,
        };
        if app.sessions.get(&session.site_id).map(|s| s.session_id) != Some(session.session_id) {
            break "replaced by a newer session".to_string();
        }
        session
            .last_heartbeat_ms
            .store(app.now_ms(), Ordering::Relaxed);
        let seq = msg.seq;
        if seq != 0 && seq <= acked {
            debug!(seq, "duplicate report ignored");
            send_ack(&session, acked);
            continue;
        }
        match handle_report(&app, &session, seq, msg.body).await {
            Ok(()) => {}
            Err(ReportError::Refused(why)) => {
                warn!(seq, %why, "report refused");
            }
            Err(ReportError::Server(e)) => {
                // Not acknowledged: the agent resends it after reconnecting.
                warn!(seq, error = %e, "could not record a report; ending the session");
                break format!("server could not record a report: {e}");
            }
        }
        if seq != 0 {
            acked = acked.max(seq);
            send_ack(&session, acked);
        }
    };
    if app.sessions.unregister(&session) {
        info!(%reason, "agent disconnected");
        let event = AgentDisconnected {
            agent_id: session.agent_id.clone(),
            reason: reason.clone(),
        };
        let stream = streams::site(&session.site_id);
        if let Err(e) = app
            .core
            .execute::<CoreError, _>(&Actor::agent(&session.site_id), |_| {
                Ok(vec![Change::any(
                    stream.clone(),
                    vec![event.clone().into()],
                )])
            })
            .await
        {
            warn!(error = %e, "could not record the disconnect");
        }
    } else {
        debug!(%reason, "superseded session ended");
    }
}

fn send_ack(session: &Session, acked: u64) {
    let _ = session.tx.try_send(pb::ServerMessage {
        command_id: 0,
        trace_context: Default::default(),
        body: Some(pb::server_message::Body::Ack(pb::Ack { acked_seq: acked })),
    });
}

#[derive(Debug)]
enum ReportError {
    /// The report is wrong; acknowledged anyway so the agent does not resend it forever.
    Refused(String),
    /// The server could not record it.
    Server(ApiError),
}

impl From<ApiError> for ReportError {
    fn from(e: ApiError) -> Self {
        Self::Server(e)
    }
}

/// Whether a change of facts is worth an event. Link quality and RSSI wobble all the time; small
/// moves are not recorded (the next significant change is).
fn significant_change(old: &DeviceFacts, new: &DeviceFacts) -> bool {
    let signal_moved = match (old.signal, new.signal) {
        (Some(Signal::LinkQuality(a)), Some(Signal::LinkQuality(b))) => a.abs_diff(b) >= 15,
        (Some(Signal::RssiDbm(a)), Some(Signal::RssiDbm(b))) => a.abs_diff(b) >= 6,
        (a, b) => a != b,
    };
    let battery_moved = match (old.battery_percent, new.battery_percent) {
        (Some(a), Some(b)) => a.abs_diff(b) >= 5,
        (a, b) => a != b,
    };
    let mut a = old.clone();
    let mut b = new.clone();
    a.signal = None;
    b.signal = None;
    a.battery_percent = None;
    b.battery_percent = None;
    a != b || signal_moved || battery_moved
}

async fn handle_report(
    app: &Arc<App>,
    session: &Arc<Session>,
    seq: u64,
    body: Option<pb::agent_message::Body>,
) -> Result<(), ReportError> {
    let source = (seq != 0).then(|| AgentSource {
        agent_id: session.agent_id.clone(),
        seq,
    });
    let actor = Actor::agent(&session.site_id);
    let site = session.site_id.clone();
    match body {
        None | Some(pb::agent_message::Body::Hello(_)) => Err(ReportError::Refused(
            "unexpected hello or empty message".into(),
        )),
        Some(pb::agent_message::Body::Heartbeat(_)) => Ok(()),
        Some(pb::agent_message::Body::Inventory(inv)) => {
            if inv.devices.len() > 10_000 || inv.removed_local_ids.len() > 10_000 {
                return Err(ReportError::Refused(format!(
                    "inventory of {} devices ({} removed) exceeds 10000",
                    inv.devices.len(),
                    inv.removed_local_ids.len()
                )));
            }
            let mut reports = Vec::new();
            for d in &inv.devices {
                match convert::device_facts_from(d) {
                    Ok(r) => reports.push(r),
                    // The message quotes what it repeats (at most 100 characters).
                    Err(e) => warn!(seq, error = %e, "device report ignored"),
                }
            }
            let now = app.now_ms();
            for (local, _) in &reports {
                app.sessions
                    .touch_device(&model::device_id(&site, local), now);
            }
            let removed: Vec<String> = inv.removed_local_ids.clone();
            app.core
                .execute::<ApiError, _>(&actor, |state| {
                    let mut changes = Vec::new();
                    let mut listed = HashSet::new();
                    for (local, facts) in &reports {
                        let id = model::device_id(&site, local);
                        listed.insert(id.clone());
                        let changed = match state.devices.get(&id) {
                            Some(d) if !d.removed => significant_change(&d.facts, facts),
                            _ => true,
                        };
                        if changed {
                            changes.push(Change::any(
                                streams::device(&id),
                                vec![
                                    DeviceReported {
                                        facts: facts.clone(),
                                        source: source.clone(),
                                    }
                                    .into(),
                                ],
                            ));
                        }
                    }
                    let mut gone: Vec<String> =
                        removed.iter().map(|l| model::device_id(&site, l)).collect();
                    if inv.full {
                        gone.extend(
                            state
                                .devices
                                .values()
                                .filter(|d| {
                                    d.site_id == site && !d.removed && !listed.contains(&d.id)
                                })
                                .map(|d| d.id.clone()),
                        );
                    }
                    for id in gone {
                        if state.devices.get(&id).is_some_and(|d| !d.removed) {
                            changes.push(Change::any(
                                streams::device(&id),
                                vec![
                                    DeviceRemoved {
                                        source: source.clone(),
                                    }
                                    .into(),
                                ],
                            ));
                        }
                    }
                    Ok(changes)
                })
                .await?;
            Ok(())
        }
        Some(pb::agent_message::Body::Progress(p)) => {
            let status = UpgradeStatus::from_code(p.status as u32)
                .filter(|s| {
                    matches!(
                        s,
                        UpgradeStatus::AgentPreparing
                            | UpgradeStatus::Queued
                            | UpgradeStatus::WaitingForWakeup
                            | UpgradeStatus::Updating
                            | UpgradeStatus::Downloaded
                    )
                })
                .ok_or_else(|| {
                    ReportError::Refused(format!(
                        "progress with status {} is not 100, 13, 5, 2 or 6",
                        p.status
                    ))
                })?;
            let event = TaskProgressed {
                attempt: p.attempt,
                status,
                progress: p.progress.clamp(0.0, 100.0),
                remaining_s: p.remaining_s,
                bytes_sent: p.bytes_sent,
                bytes_total: p.bytes_total,
                detail: p.detail.chars().take(200).collect(),
                source: source.clone(),
            };
            let mut refused = None;
            app.core
                .execute::<ApiError, _>(&actor, |state| {
                    refused = None;
                    match check_task(state, &p.task_id, p.attempt, &site) {
                        Ok(()) => Ok(vec![Change::any(
                            streams::task(&p.task_id),
                            vec![event.clone().into()],
                        )]),
                        Err(why) => {
                            refused = Some(why);
                            Ok(vec![])
                        }
                    }
                })
                .await?;
            refused.map_or(Ok(()), |w| Err(ReportError::Refused(w)))
        }
        Some(pb::agent_message::Body::Result(r)) => {
            let status =
                UpgradeStatus::from_code(r.status as u32).unwrap_or(UpgradeStatus::Failure);
            let mut outcome = result_error(status, agent_error(r.error.as_ref()));
            if r.device_may_have_image
                && let Err(e) = &mut outcome
            {
                e.message.push_str(
                    " — the device may already run the new image: check it before updating it again (not retried automatically)",
                );
            }
            let now = app.now_ms();
            let jitter = rand::random::<f64>();
            let mut refused = None;
            app.core
                .execute::<ApiError, _>(&actor, |state| {
                    refused = None;
                    // The device is the truth: a success for the attempt the server itself ended
                    // (timed out, cancelled after it was sent) still makes the task a success.
                    let late =
                        outcome.is_ok() && is_late_success(state, &r.task_id, r.attempt, &site);
                    if !late && let Err(why) = check_task(state, &r.task_id, r.attempt, &site) {
                        refused = Some(why);
                        return Ok(vec![]);
                    }
                    let task = &state.tasks[&r.task_id];
                    let event: DomainEvent = match &outcome {
                        Ok(()) => TaskSucceeded {
                            attempt: r.attempt,
                            from: convert::version_from(r.from.as_ref()),
                            to: convert::version_from(r.to.as_ref()),
                            duration_ms: r.duration_ms,
                            wire_bytes: r.wire_bytes,
                            source: source.clone(),
                            late,
                        }
                        .into(),
                        Err(error) => TaskFailed {
                            attempt: r.attempt,
                            error: error.clone(),
                            timed_out: status == UpgradeStatus::Timeout,
                            retry_at_ms: match after_failure(task, error, now, jitter) {
                                AfterFailure::RetryAt(at) if !r.device_may_have_image => Some(at),
                                _ => None,
                            },
                            source: source.clone(),
                        }
                        .into(),
                    };
                    let mut changes =
                        vec![Change::unchanged(streams::task(&r.task_id), vec![event])];
                    if let Some(rollout) = &task.created.rollout_id {
                        ota_domain::decision::ensure_guard(
                            &mut changes,
                            &streams::rollout(rollout),
                        );
                    }
                    Ok(changes)
                })
                .await?;
            refused.map_or(Ok(()), |w| Err(ReportError::Refused(w)))
        }
        Some(pb::agent_message::Body::CheckResult(c)) => {
            // Someone waits for it (a check running now)...
            let c = match app.sessions.answer_check(&site, c) {
                Ok(()) => return Ok(()),
                Err(c) => *c,
            };
            if seq == 0 {
                debug!("late or unknown check answer dropped");
                return Ok(());
            }
            // ...or a journaled answer: a sleepy device answering, after waking up, a check it
            // was asleep for (status 5). It completes that check.
            record_wake_answer(app, &actor, &site, c, source).await
        }
        Some(pb::agent_message::Body::CommandAck(a)) => {
            if a.accepted {
                return Ok(());
            }
            let error = agent_error(a.error.as_ref()).unwrap_or_else(|| {
                TaskError::new(ErrorCode::Other, "the agent refused the command")
            });
            let now = app.now_ms();
            let jitter = rand::random::<f64>();
            app.core
                .execute::<ApiError, _>(&actor, |state| {
                    let Some(task) = state.tasks.values().find(|t| {
                        t.created.site_id == site
                            && t.command_id == Some(a.command_id)
                            && t.phase.is_at_site()
                    }) else {
                        return Ok(vec![]);
                    };
                    Ok(vec![Change::unchanged(
                        streams::task(&task.created.task_id),
                        vec![
                            TaskFailed {
                                attempt: task.attempt,
                                error: error.clone(),
                                timed_out: false,
                                retry_at_ms: match after_failure(task, &error, now, jitter) {
                                    AfterFailure::RetryAt(at) => Some(at),
                                    AfterFailure::Final => None,
                                },
                                source: source.clone(),
                            }
                            .into(),
                        ],
                    )])
                })
                .await?;
            Ok(())
        }
    }
}

/// Records the answer a sleepy device gave when it woke up, for the check it was asleep for.
async fn record_wake_answer(
    app: &Arc<App>,
    actor: &Actor,
    site: &str,
    answer: pb::CheckResult,
    source: Option<AgentSource>,
) -> Result<(), ReportError> {
    let device_id = model::device_id(site, &answer.device_local_id);
    let mut refused = None;
    app.core
        .execute::<ApiError, _>(actor, |state| {
            refused = None;
            let Some(d) = state.devices.get(&device_id) else {
                refused = Some("a check answer for a device this site never reported".to_string());
                return Ok(vec![]);
            };
            let waiting = d.last_check.as_ref().is_some_and(|(c, _)| {
                c.check_id == answer.check_id && c.status == UpgradeStatus::WaitingForWakeup
            });
            if !waiting {
                refused = Some(
                    "a journaled check answer for a check the device is not asleep for".to_string(),
                );
                return Ok(vec![]);
            }
            let firmware_id = d
                .last_check
                .as_ref()
                .and_then(|(c, _)| c.firmware_id.clone());
            let checked = super::devices::answer_to_checked(
                state,
                &answer.check_id,
                firmware_id.as_deref(),
                d,
                &answer,
                source.clone(),
            );
            Ok(vec![Change::any(
                streams::device(&device_id),
                vec![checked.into()],
            )])
        })
        .await?;
    refused.map_or(Ok(()), |w| Err(ReportError::Refused(w)))
}

/// An agent's error, with its message bounded (`convert::MAX_ERROR_MESSAGE`).
fn agent_error(e: Option<&pb::TaskError>) -> Option<TaskError> {
    convert::task_error_from(e)
}

/// A success for a task of this site whose current attempt the server ended (a timeout, a stage
/// deadline, a cancel after the command was sent): it counts, late.
fn is_late_success(
    state: &ota_domain::projection::FleetState,
    task_id: &str,
    attempt: u32,
    site: &str,
) -> bool {
    state.tasks.get(task_id).is_some_and(|t| {
        t.created.site_id == site
            && t.attempt == attempt
            && t.phase.is_terminal()
            && t.ended_by_server
    })
}

/// A report about a task must come from the task's site, for its current attempt, while the task
/// runs.
fn check_task(
    state: &ota_domain::projection::FleetState,
    task_id: &str,
    attempt: u32,
    site: &str,
) -> Result<(), String> {
    let Some(t) = state.tasks.get(task_id) else {
        return Err(format!("unknown task {}", quote(task_id)));
    };
    if t.created.site_id != site {
        return Err(format!("task {task_id} belongs to another site"));
    }
    if t.attempt != attempt {
        return Err(format!(
            "report for attempt {attempt} of task {task_id}, which is at attempt {}",
            t.attempt
        ));
    }
    if t.phase.is_terminal() {
        return Err(format!("task {task_id} has already ended"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_wobble_is_not_an_event() {
        let a = DeviceFacts {
            signal: Some(Signal::LinkQuality(100)),
            battery_percent: Some(80),
            ..Default::default()
        };
        let mut b = a.clone();
        b.signal = Some(Signal::LinkQuality(108));
        b.battery_percent = Some(78);
        assert!(!significant_change(&a, &b));
        b.signal = Some(Signal::LinkQuality(60));
        assert!(significant_change(&a, &b));
        let mut c = a.clone();
        c.reachable = true;
        assert!(significant_change(&a, &c));
    }

    #[test]
    fn site_ids_are_checked() {
        assert!(validate_site_id("home-1").is_ok());
        assert!(validate_site_id("").is_err());
        assert!(validate_site_id("../etc").is_err());
        assert!(validate_site_id("a b").is_err());
    }
}

//! `AgentService.Connect`: the session of one site's agent.
//!
//! The first message must be a hello. The server answers with a welcome carrying the highest
//! journal seq it has applied for this agent installation, so the agent resends only what is
//! above; then it resends the update commands of every task it believes runs at the site (the
//! agent ignores those it already knows). Reports are applied strictly in order, each at most
//! once: an event that results from a report carries the report's `(agent_id, seq)`, and the
//! projection remembers the highest seq per agent (a report whose seq it already holds changes
//! nothing, even when two sessions of one agent overlap).
//!
//! Every journaled report gets exactly one answer, in order: an `Ack` once its events are
//! durable (or it changed nothing worth an event), or a `Refused` with a short reason when the
//! server will not take it (unknown or ended task, status out of range, oversized inventory,
//! ...: sending it again could not change that). A refused report is never acknowledged as
//! durable; it is logged and counted (`ota_reports_refused_total`).
//!
//! The session rules (the proto's `agent.proto` lists them for the agent's side) are checked
//! before a message is handled, by [`check_seq`]: one hello; seqs strictly increasing, at most
//! [`MAX_SEQ`], at most [`MAX_SEQ_GAP`] past the higher of the session's last seq and the
//! hello's `last_seq` (reports that changed nothing leave no seq in the log, so the welcome's
//! `acked_seq` may lag the agent's journal; the hello says how far it got). A message that
//! breaks one ends the session with `FAILED_PRECONDITION` or `INVALID_ARGUMENT` and is neither
//! acknowledged nor refused; bytes that are no message end it with `INVALID_ARGUMENT`, an
//! oversized message with `RESOURCE_EXHAUSTED`, a report the server could not record (its own
//! failure) with `UNAVAILABLE`. Errors and logs quote what the agent sent with
//! [`crate::quote::quote`].
//!
//! Silence longer than the agent timeout ends the session: the site is marked disconnected, so
//! its devices show as unreachable and new tasks for it wait (5020). Tasks that run at the site
//! are not failed; the agent reports their outcome when it is back.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use ota_domain::events::{
    AgentConnected, AgentDisconnected, DeviceRemoved, DeviceReported, DomainEvent, TaskFailed,
    TaskProgressed, TaskSucceeded, TaskVerifying, streams,
};
use ota_domain::model::{self, Actor, AgentSource, DeviceFacts, Signal};
use ota_domain::projection::FleetState;
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_domain::tasks::{AfterFailure, after_failure, result_error};
use ota_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::caller::{Caller, caller};
use super::convert;
use super::error::{ApiError, stream_status};
use super::server_message;
use crate::app::App;
use crate::core::{Change, CoreError};
use crate::dispatch::{TaskSpanFields, task_span};
use crate::quote::quote;
use crate::sessions::{CheckAnswer, Session};
use crate::to_agent::{self, ActiveTask, Body, ToAgent, Welcome};

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

/// Highest seq a journaled report may carry: 2^63 - 1 (seqs stay exact as JSON numbers in
/// signed 64-bit fields, and `u64::MAX` can never poison the acknowledged seq).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// How far a report's seq may jump past the higher of the session's last seq and the hello's
/// `last_seq`.
pub const MAX_SEQ_GAP: u64 = 1_000_000;

/// Most devices one inventory may list (and, separately, name as removed).
const MAX_INVENTORY: usize = 10_000;

/// Checks a message against the session rules, given the last seq of the session (the
/// welcome's `acked_seq` before the first report) and the hello's `last_seq`. `Err` is the status
/// that ends the session. Any message with a seq is a journaled report for these rules (a
/// heartbeat or command ack with a seq too: acknowledged like one that changed nothing).
pub fn check_seq(
    seq: u64,
    body: Option<&pb::agent_message::Body>,
    last: u64,
    hello_last: u64,
) -> Result<(), Status> {
    use pb::agent_message::Body;
    if let Some(Body::Hello(_)) = body {
        return Err(Status::failed_precondition(
            "a session has one hello, and it was sent: a second hello ends the session",
        ));
    }
    if seq == 0 {
        return Ok(());
    }
    if seq > MAX_SEQ {
        return Err(Status::invalid_argument(format!(
            "seq {seq} is out of range: at most {MAX_SEQ} (2^63 - 1)"
        )));
    }
    if seq <= last {
        return Err(Status::failed_precondition(format!(
            "seq {seq} is not above {last}, the last seq of this session: seqs strictly increase"
        )));
    }
    let base = last.max(hello_last);
    // Resent reports lie below the hello's last_seq.
    if seq.saturating_sub(base) > MAX_SEQ_GAP {
        return Err(Status::invalid_argument(format!(
            "seq {seq} jumps more than {MAX_SEQ_GAP} past {base} (the last seq of this session or the hello's last_seq)"
        )));
    }
    Ok(())
}

/// The report kind, for logs and the refusal metric.
fn kind_of(body: Option<&pb::agent_message::Body>) -> &'static str {
    use pb::agent_message::Body;
    match body {
        Some(Body::Inventory(_)) => "inventory",
        Some(Body::Progress(_)) => "progress",
        Some(Body::Result(_)) => "result",
        Some(Body::CheckResult(_)) => "check_result",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::CommandAck(_)) => "command_ack",
        Some(Body::Hello(_)) => "hello",
        None => "unknown",
    }
}

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

/// The hello's fields within their bounds: a valid site id, an agent id, at most 64 transports
/// with short names, a `last_seq` in range.
fn check_hello(hello: &pb::AgentHello) -> Result<(), ApiError> {
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
        ));
    }
    if hello.transports.len() > 64
        || hello
            .transports
            .iter()
            .any(|t| t.name.len() > 128 || t.name.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "hello.transports: at most 64, names of at most 128 characters",
        ));
    }
    if hello.last_seq > MAX_SEQ {
        return Err(ApiError::invalid(format!(
            "hello.last_seq {} is out of range: at most {MAX_SEQ} (2^63 - 1)",
            hello.last_seq
        )));
    }
    Ok(())
}

/// The caller may open a session for the hello's site: an agent certificate of that site (or,
/// in development mode, the local administrator).
fn check_session_caller(who: &Caller, hello: &pb::AgentHello, peer: &str) -> Result<(), Status> {
    match who {
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
            return Err(ApiError::Unauthenticated(super::caller::UNAUTHENTICATED.into()).into());
        }
    }
    Ok(())
}

/// The event a session's start records: the hello's agent, version, time zone (kept only
/// when the database knows it), UTC offset and transports, and the peer's address.
fn agent_connected(hello: &pb::AgentHello, peer: String) -> AgentConnected {
    let transports = convert::transport_instances_from(&hello.transports);
    AgentConnected {
        agent_id: hello.agent_id.clone(),
        agent_version: hello
            .agent_version
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect(),
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
        check_hello(&hello)?;
        check_session_caller(&who, &hello, &peer)?;

        let app = self.app.clone();
        let (tx, rx) = mpsc::channel::<ToAgent>(1024);
        let now = app.now();
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

        let connected = agent_connected(&hello, peer);
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
            // Tasks at a site have not ended: the open tasks, not every task ever created.
            let open = state.open_tasks.iter().filter_map(|id| state.tasks.get(id));
            for t in open.map(Box::as_ref) {
                if t.created.site_id == hello.site_id && t.phase.is_at_site() {
                    let local = model::split_device_id(&t.created.device_id)
                        .map(|(_, l)| l.to_string())
                        .unwrap_or_default();
                    active.push(ActiveTask {
                        task_id: t.created.task_id.clone(),
                        attempt: t.attempt,
                        device_local_id: local,
                    });
                    if let Some(m) = to_agent::update(
                        &state,
                        t,
                        t.command_id
                            .unwrap_or_else(|| app.sessions.next_command_id()),
                    ) {
                        resend.push((m, TaskSpanFields::of(&state, t), t.attempt));
                    }
                }
            }
            let welcome = ToAgent::session(Body::Welcome(Welcome {
                server_version: env!("CARGO_PKG_VERSION").into(),
                heartbeat_interval_s: app.config.heartbeat_interval.as_secs().max(1) as u32,
                acked_seq: acked,
                active_tasks: active,
            }));
            let _ = tx.try_send(welcome);
            (acked, resend)
        };
        for (mut m, fields, attempt) in resend {
            if let Body::Update(u) = &m.body {
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
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        tokio::spawn(
            run_session(app, session, inbound, acked, hello.last_seq, end_tx).instrument(span),
        );

        // Everything the session queued, then (when it ended on a broken rule) that status. The
        // queue ends when the session is over and unregistered (every sender dropped).
        let messages = ReceiverStream::new(rx).map(|m| Ok(server_message::to_pb(m)));
        let end = futures::stream::once(end_rx).filter_map(|r| async move { r.ok().map(Err) });
        Ok(Response::new(Box::pin(messages.chain(end))))
    }
}

async fn run_session(
    app: Arc<App>,
    session: Arc<Session>,
    mut inbound: Streaming<pb::AgentMessage>,
    welcome_acked: u64,
    hello_last: u64,
    end: oneshot::Sender<Status>,
) {
    info!("agent connected");
    let timeout = app.config.agent_timeout;
    // The last seq of this session: acknowledged or refused.
    let mut last = welcome_acked;
    let (reason, status): (String, Option<Status>) = loop {
        let next = tokio::select! {
            () = app.shutdown.cancelled() => break ("the server is shutting down".to_string(), None),
            next = tokio::time::timeout(timeout, inbound.message()) => next,
        };
        let msg = match next {
            Err(_) => {
                break (
                    format!("no message for {}", humantime::format_duration(timeout)),
                    None,
                );
            }
            Ok(Err(status)) => {
                let answer = stream_status(status);
                let reason = format!("stream error: {}", answer.message());
                // Garbage and oversized messages get their answer; a client that went away
                // needs none.
                match answer.code() {
                    tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => {
                        break (reason, Some(answer));
                    }
                    _ => break (reason, None),
                }
            }
            Ok(Ok(None)) => break ("the agent closed the session".to_string(), None),
            Ok(Ok(Some(m))) => m,
        };
        if app.sessions.get(&session.site_id).map(|s| s.session_id) != Some(session.session_id) {
            break ("replaced by a newer session".to_string(), None);
        }
        session.heard_from(app.now());
        let seq = msg.seq;
        let kind = kind_of(msg.body.as_ref());
        if let Err(status) = check_seq(seq, msg.body.as_ref(), last, hello_last) {
            warn!(seq, kind, rule = %status.message(), "the agent broke a session rule; ending the session");
            break (
                format!("session rule broken: {}", status.message()),
                Some(status),
            );
        }
        match handle_report(&app, &session, seq, msg.body).await {
            Ok(()) => {
                if seq != 0 {
                    last = seq;
                    send_ack(&session, seq);
                }
            }
            Err(ReportError::Refused(why)) => {
                warn!(seq, kind, reason = %why, "report refused: not recorded, not acknowledged");
                app.metrics.report_refused(&session.site_id, kind);
                // An unjournaled report (seq 0) gets no answer, as it gets no ack.
                if seq != 0 {
                    last = seq;
                    send_refused(&session, seq, why);
                }
            }
            Err(ReportError::Server(e)) => {
                // Neither acknowledged nor refused: the agent sends it again after reconnecting.
                warn!(seq, error = %e, "could not record a report; ending the session");
                break (
                    format!("server could not record a report: {e}"),
                    Some(Status::unavailable(
                        "the server could not record a report; reconnect and send it again",
                    )),
                );
            }
        }
    };
    if let Some(status) = status {
        let _ = end.send(status);
    }
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
    let _ = session
        .tx
        .try_send(ToAgent::session(Body::Ack { acked_seq: acked }));
}

fn send_refused(session: &Session, seq: u64, reason: String) {
    let _ = session
        .tx
        .try_send(ToAgent::session(Body::Refused { seq, reason }));
}

/// Whether the report `source` names was applied before (its seq is at or below the highest the
/// log holds for the agent): applying it again changes nothing.
fn applied_before(
    state: &ota_domain::projection::FleetState,
    source: Option<&AgentSource>,
) -> bool {
    source.is_some_and(|s| {
        state
            .agent_seqs
            .get(&s.agent_id)
            .is_some_and(|&seen| seen >= s.seq)
    })
}

#[derive(Debug)]
enum ReportError {
    /// The report is wrong and will not be recorded: answered with a refusal (never an ack), so
    /// the agent drops it instead of sending it again.
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
    let report = Report {
        app,
        actor: Actor::agent(&session.site_id),
        site: &session.site_id,
        seq,
        source: (seq != 0).then(|| AgentSource {
            agent_id: session.agent_id.clone(),
            seq,
        }),
    };
    match body {
        // A hello never gets here (`check_seq`); an empty body is a report of a kind this server
        // does not know (a newer agent's), which it cannot record.
        None | Some(pb::agent_message::Body::Hello(_)) => Err(ReportError::Refused(
            "a report of a kind this server does not know (empty body)".into(),
        )),
        Some(pb::agent_message::Body::Heartbeat(_)) => Ok(()),
        Some(pb::agent_message::Body::Inventory(inv)) => report.inventory(&inv).await,
        Some(pb::agent_message::Body::Progress(p)) => report.progress(&p).await,
        Some(pb::agent_message::Body::Result(r)) => report.result(&r).await,
        Some(pb::agent_message::Body::CheckResult(c)) => {
            // Someone waits for it (a check running now)...
            let c = match app.sessions.answer_check(report.site, check_answer(c)) {
                Ok(()) => return Ok(()),
                Err(c) => *c,
            };
            if seq == 0 {
                debug!("late or unknown check answer dropped");
                return Ok(());
            }
            // ...or a journaled answer: a sleepy device answering, after waking up, a check it
            // was asleep for (status 5). It completes that check.
            report.wake_answer(c).await
        }
        Some(pb::agent_message::Body::CommandAck(a)) => report.command_ack(&a).await,
    }
}

/// One report of a session being handled: who sent it and under which journal seq.
struct Report<'a> {
    app: &'a Arc<App>,
    actor: Actor,
    site: &'a str,
    seq: u64,
    /// The report's `(agent_id, seq)`, carried by the events it results in (none for seq 0).
    source: Option<AgentSource>,
}

impl Report<'_> {
    /// Records what `decide` makes of the state, unless the report was applied before. A
    /// refusal `decide` returns records nothing and becomes the report's answer.
    async fn record(
        &self,
        mut decide: impl FnMut(&FleetState) -> Result<Vec<Change>, String>,
    ) -> Result<(), ReportError> {
        let mut refused = None;
        self.app
            .core
            .execute::<ApiError, _>(&self.actor, |state| {
                refused = None;
                if applied_before(state, self.source.as_ref()) {
                    return Ok(vec![]);
                }
                decide(state).or_else(|why| {
                    refused = Some(why);
                    Ok(vec![])
                })
            })
            .await?;
        refused.map_or(Ok(()), |w| Err(ReportError::Refused(w)))
    }

    /// The site's devices: reported facts (recorded when they changed significantly) and
    /// removals (named, or every device a full inventory leaves out).
    async fn inventory(&self, inv: &pb::Inventory) -> Result<(), ReportError> {
        if inv.devices.len() > MAX_INVENTORY || inv.removed_local_ids.len() > MAX_INVENTORY {
            return Err(ReportError::Refused(format!(
                "inventory of {} devices ({} removed) exceeds {MAX_INVENTORY}",
                inv.devices.len(),
                inv.removed_local_ids.len()
            )));
        }
        let mut reports = Vec::new();
        for d in &inv.devices {
            match convert::device_facts_from(d) {
                Ok(r) => reports.push(r),
                // The message quotes what it repeats (at most 100 characters).
                Err(e) => warn!(seq = self.seq, error = %e, "device report ignored"),
            }
        }
        let now = self.app.now();
        for (local, _) in &reports {
            self.app
                .sessions
                .touch_device(&model::device_id(self.site, local), now);
        }
        self.record(|state| Ok(self.inventory_changes(state, &reports, inv)))
            .await
    }

    fn inventory_changes(
        &self,
        state: &FleetState,
        reports: &[(String, DeviceFacts)],
        inv: &pb::Inventory,
    ) -> Vec<Change> {
        let site = self.site;
        let mut changes = Vec::new();
        let mut listed = HashSet::new();
        for (local, facts) in reports {
            let id = model::device_id(site, local);
            listed.insert(id.clone());
            let changed = match state.devices.get(&id).map(Box::as_ref) {
                Some(d) if !d.removed => significant_change(&d.facts, facts),
                _ => true,
            };
            if changed {
                let event = DeviceReported {
                    facts: facts.clone(),
                    source: self.source.clone(),
                };
                changes.push(Change::any(streams::device(&id), vec![event.into()]));
            }
        }
        let mut gone: Vec<String> = inv
            .removed_local_ids
            .iter()
            .map(|l| model::device_id(site, l))
            .collect();
        if inv.full {
            gone.extend(
                state
                    .devices
                    .values()
                    .filter(|d| d.site_id == site && !d.removed && !listed.contains(&d.id))
                    .map(|d| d.id.clone()),
            );
        }
        for id in gone {
            if state
                .devices
                .get(&id)
                .map(Box::as_ref)
                .is_some_and(|d| !d.removed)
            {
                let event = DeviceRemoved {
                    source: self.source.clone(),
                };
                changes.push(Change::any(streams::device(&id), vec![event.into()]));
            }
        }
        changes
    }

    /// Progress of a task's current attempt (one of the in-flight statuses).
    async fn progress(&self, p: &pb::TaskProgress) -> Result<(), ReportError> {
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
        let progress = if p.progress.is_finite() {
            p.progress.clamp(0.0, 100.0)
        } else {
            0.0
        };
        if p.verify_until_ms != 0 {
            return self.verifying(p).await;
        }
        let event = TaskProgressed {
            attempt: p.attempt,
            status,
            progress,
            remaining_s: p.remaining_s,
            bytes_sent: p.bytes_sent,
            bytes_total: p.bytes_total,
            detail: p.detail.chars().take(200).collect(),
            source: self.source.clone(),
        };
        self.record(|state| {
            check_task(state, &p.task_id, p.attempt, self.site)?;
            Ok(vec![Change::any(
                streams::task(&p.task_id),
                vec![event.clone().into()],
            )])
        })
        .await
    }

    /// The device reports the target version and the agent watches its health: the window's
    /// length is taken from the report (`verify_until_ms − at_ms`, at most a day), its end from
    /// the server's clock, so a site whose clock is off moves no deadline.
    async fn verifying(&self, p: &pb::TaskProgress) -> Result<(), ReportError> {
        let window_ms = p.verify_until_ms.saturating_sub(p.at_ms);
        let max_ms = i64::from(super::bounds::MAX_HEALTH_WINDOW_S) * 1000;
        if !(0..=max_ms).contains(&window_ms) {
            return Err(ReportError::Refused(format!(
                "a health window of {window_ms} ms is not 0 .. {max_ms}"
            )));
        }
        let until_ms = self
            .app
            .now()
            .plus_ms(u64::try_from(window_ms).unwrap_or_default());
        self.record(|state| {
            check_task(state, &p.task_id, p.attempt, self.site)?;
            let event = TaskVerifying {
                attempt: p.attempt,
                until_ms,
                to: state.tasks[&p.task_id].created.target.clone(),
                source: self.source.clone(),
            };
            Ok(vec![Change::any(
                streams::task(&p.task_id),
                vec![event.into()],
            )])
        })
        .await
    }

    /// The outcome of a task's attempt: success (late when the server had ended the attempt),
    /// failure or timeout (with its retry time, never for a device that may have the image).
    async fn result(&self, r: &pb::TaskResult) -> Result<(), ReportError> {
        let status = UpgradeStatus::from_code(r.status as u32)
            .filter(|s| {
                matches!(
                    s,
                    UpgradeStatus::Success | UpgradeStatus::Failure | UpgradeStatus::Timeout
                )
            })
            .ok_or_else(|| {
                ReportError::Refused(format!("result with status {} is not 3, 4 or 7", r.status))
            })?;
        let health = convert::health_from(r.health).ok_or_else(|| {
            ReportError::Refused(format!(
                "result with health {} is not 0 (not checked), 1 (healthy), 2 (reachable) or 3 (unconfirmed)",
                r.health
            ))
        })?;
        let mut outcome = result_error(status, agent_error(r.error.as_ref()));
        if r.device_may_have_image
            && let Err(e) = &mut outcome
        {
            e.message.push_str(
                " — the device may already run the new image: check it before updating it again (not retried automatically)",
            );
        }
        let now = self.app.now();
        let jitter = rand::random::<f64>();
        self.record(|state| {
            // The device is the truth: a success for the attempt the server itself ended
            // (timed out, cancelled after it was sent) still makes the task a success.
            let late = outcome.is_ok() && is_late_success(state, &r.task_id, r.attempt, self.site);
            if !late {
                check_task(state, &r.task_id, r.attempt, self.site)?;
            }
            let task = &state.tasks[&r.task_id];
            let event: DomainEvent = match &outcome {
                Ok(()) => TaskSucceeded {
                    attempt: r.attempt,
                    from: convert::version_from(r.from.as_ref()),
                    to: convert::version_from(r.to.as_ref()),
                    duration_ms: r.duration_ms,
                    wire_bytes: r.wire_bytes,
                    source: self.source.clone(),
                    late,
                    health,
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
                    source: self.source.clone(),
                }
                .into(),
            };
            let mut changes = vec![Change::unchanged(streams::task(&r.task_id), vec![event])];
            if let Some(rollout) = &task.created.rollout_id {
                ota_domain::decision::ensure_guard(&mut changes, &streams::rollout(rollout));
            }
            Ok(changes)
        })
        .await
    }

    /// A command the agent acknowledged; a refused one fails the task's attempt it carried.
    async fn command_ack(&self, a: &pb::CommandAck) -> Result<(), ReportError> {
        if a.accepted {
            return Ok(());
        }
        let error = agent_error(a.error.as_ref())
            .unwrap_or_else(|| TaskError::new(ErrorCode::Other, "the agent refused the command"));
        let now = self.app.now();
        let jitter = rand::random::<f64>();
        self.record(|state| {
            let open = state.open_tasks.iter().filter_map(|id| state.tasks.get(id));
            let Some(task) = open.map(Box::as_ref).find(|t| {
                t.created.site_id == self.site
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
                        source: self.source.clone(),
                    }
                    .into(),
                ],
            )])
        })
        .await
    }

    /// Records the answer a sleepy device gave when it woke up, for the check it was asleep
    /// for.
    async fn wake_answer(&self, answer: CheckAnswer) -> Result<(), ReportError> {
        let device_id = model::device_id(self.site, &answer.device_local_id);
        self.record(|state| {
            let Some(d) = state.devices.get(&device_id).map(Box::as_ref) else {
                return Err("a check answer for a device this site never reported".to_string());
            };
            let waiting = d.last_check.as_ref().is_some_and(|(c, _)| {
                c.check_id == answer.check_id && c.status == UpgradeStatus::WaitingForWakeup
            });
            if !waiting {
                return Err(
                    "a journaled check answer for a check the device is not asleep for".to_string(),
                );
            }
            let firmware_id = d
                .last_check
                .as_ref()
                .and_then(|(c, _)| c.firmware_id.clone());
            let checked = crate::checks::answer_to_checked(
                state,
                &answer.check_id,
                firmware_id.as_deref(),
                d,
                &answer,
                self.source.clone(),
            );
            Ok(vec![Change::any(
                streams::device(&device_id),
                vec![checked.into()],
            )])
        })
        .await
    }
}

/// A device's answer to a check, in the server's terms: the error bounded, the facts kept only
/// when the report is valid (the check then falls back to what the site reported before).
fn check_answer(c: pb::CheckResult) -> CheckAnswer {
    CheckAnswer {
        facts: c
            .device
            .as_ref()
            .and_then(|r| convert::device_facts_from(r).ok())
            .map(|(_, f)| f),
        error: agent_error(c.error.as_ref()),
        check_id: c.check_id,
        device_local_id: c.device_local_id,
        reachable: c.reachable,
        update_available: c.update_available,
        awaiting_wakeup: c.awaiting_wakeup,
    }
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
    state.tasks.get(task_id).map(Box::as_ref).is_some_and(|t| {
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
    let Some(t) = state.tasks.get(task_id).map(Box::as_ref) else {
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
    fn the_seq_rules() {
        use pb::agent_message::Body;
        let inv = Body::Inventory(pb::Inventory::default());
        let ok = |seq, last, hello| check_seq(seq, Some(&inv), last, hello).is_ok();
        let code = |seq, last, hello| {
            check_seq(seq, Some(&inv), last, hello)
                .err()
                .map(|s| s.code())
        };
        assert!(ok(0, 5, 0), "seq 0: not journaled, no rule");
        assert!(ok(6, 5, 0));
        assert!(ok(6, 5, 9), "a resent report, below the hello's last_seq");
        assert!(ok(5 + MAX_SEQ_GAP, 5, 0));
        assert_eq!(
            code(6 + MAX_SEQ_GAP, 5, 0),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(
            ok(3_000_000, 5, 2_500_000),
            "the hello's last_seq extends the gap"
        );
        assert_eq!(code(5, 5, 0), Some(tonic::Code::FailedPrecondition));
        assert_eq!(code(4, 5, 9), Some(tonic::Code::FailedPrecondition));
        assert_eq!(code(u64::MAX, 5, 0), Some(tonic::Code::InvalidArgument));
        assert_eq!(
            code(MAX_SEQ + 1, MAX_SEQ - 1, MAX_SEQ),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(ok(MAX_SEQ, MAX_SEQ - 1, 0));
        let hello = Body::Hello(pb::AgentHello::default());
        assert_eq!(
            check_seq(0, Some(&hello), 0, 0).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        assert!(
            check_seq(0, None, 0, 0).is_ok(),
            "an unknown body is refused later"
        );
    }

    #[test]
    fn site_ids_are_checked() {
        assert!(validate_site_id("home-1").is_ok());
        assert!(validate_site_id("").is_err());
        assert!(validate_site_id("../etc").is_err());
        assert!(validate_site_id("a b").is_err());
    }
}

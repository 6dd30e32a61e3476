//! The life of one zigbee2mqtt job on its network: a mains job waits for an update slot and runs
//! `update`; a sleepy job keeps a `schedule` armed while the network may take a wake-up (see
//! [`super::slots`]) and becomes a transfer when its device wakes; both are then followed to
//! their end. Recovery after an agent restart attaches to what zigbee2mqtt still runs.
//!
//! Points of no return: the first `update` or `schedule` request (zigbee2mqtt then runs the
//! transfer on its own) is preceded by the durable committing mark; progress at 100 % (the
//! device has the whole image and ends the upgrade) gets the committed mark. A zigbee2mqtt error
//! for the update, a scheduled run that failed or found no image, a schedule withdrawn before
//! the device woke, an abort that zigbee2mqtt confirmed: the device keeps its firmware
//! ([`Commitment::not_taken`]).
//!
//! Budgets: the wake-up budget runs while a job waits (for its slot, for the wake-up); the
//! transfer budget from the `update` request or the wake-up; when it ends before 100 % the
//! transfer is aborted (`update/abort`) and the job ends with 5016 once zigbee2mqtt confirms;
//! after 100 % the outcome is awaited.
//!
//! What it does not do: decide the slots (`slots`), parse states (`job`), talk MQTT (`net`).

use std::time::Duration;

use ota_devproto::z2m::{
    ImageSource, OtaOp, UpdateData, UpdateState, Z2mErrorKind, classify, to_task_error,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::job::{Tracker, Verdict};
use super::net::{NetEvent, PendingRequest};
use super::slots::{JobKey, Started};
use super::{ZigbeeTransport, cancelled};
use crate::transport::{Commitment, ProgressSink, TransferProgress, UpdateReport, VersionInfo};

/// What a recovered or new job knows, for the flows.
pub(super) struct Cx<'a> {
    pub(super) task_id: &'a str,
    pub(super) ieee: String,
    pub(super) name: String,
    pub(super) target: u32,
    pub(super) total: u64,
    pub(super) timeout: Duration,
    pub(super) wake_timeout: Duration,
    pub(super) downgrade: bool,
    pub(super) commit: &'a Commitment,
    pub(super) progress: &'a ProgressSink,
    pub(super) cancel: &'a CancellationToken,
    pub(super) from: VersionInfo,
    pub(super) to: VersionInfo,
    pub(super) key: JobKey,
}

impl Cx<'_> {
    fn say(&self, p: TransferProgress) {
        let _ = self.progress.send(p);
    }

    fn status(&self, status: UpgradeStatus, detail: String) {
        self.say(TransferProgress {
            status,
            percent: None,
            remaining_s: None,
            bytes_sent: 0,
            bytes_total: self.total,
            detail,
        });
    }

    /// The success report, completed from the update response when there is one.
    pub(super) fn report(&self, update: Option<UpdateData>) -> UpdateReport {
        let mut from = self.from.clone();
        let mut to = self.to.clone();
        if let Some(d) = update {
            if let Some(f) = d.from {
                from.file_version = f.file_version.or(from.file_version);
                from.software_build_id = f.software_build_id_string().or(from.software_build_id);
                from.date_code = f.date_code.or(from.date_code);
            }
            if let Some(t) = d.to {
                to.software_build_id = t.software_build_id_string();
                to.date_code = t.date_code;
            }
        }
        UpdateReport {
            from,
            to,
            wire_bytes: self.total,
        }
    }

    fn budget_error(&self, tracker: &Tracker) -> TaskError {
        TaskError::new(
            ErrorCode::Timeout,
            format!(
                "no outcome for {} within the transfer budget of {} (last progress {:.2} %)",
                self.name,
                humantime::format_duration(self.timeout),
                tracker.max_percent()
            ),
        )
    }
}

/// How zigbee2mqtt answered a request.
#[derive(Debug)]
pub(super) enum Asked {
    Ok,
    Refused(TaskError, Z2mErrorKind),
    NoAnswer,
}

/// A schedule withdrawn after an agent restart cannot be armed again (the image is gone).
fn withdrawn(cx: &Cx<'_>) -> TaskError {
    cx.commit.not_taken();
    TaskError::new(
        ErrorCode::SendFailed,
        format!(
            "the schedule of {} was withdrawn for another transfer after an agent restart and \
             cannot be armed again without the image; the update is sent again",
            cx.name
        ),
    )
}

/// Why the job sent an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    Cancel,
    Budget,
}

/// A sleepy job's waiting state, shared by the arms of [`ZigbeeTransport::run_sleeper`]'s loop.
struct Waiting {
    armed: bool,
    tracker: Tracker,
    said: Option<UpgradeStatus>,
    retry_at: Option<Instant>,
    /// An over-the-limit run was aborted: wait for it to end before arming or disarming.
    aborted_run: bool,
    /// A cancel or the wake-up budget came while the run was starting: follow it anyway.
    too_late: bool,
}

/// What a sleeper's state change means for its waiting.
enum Woke {
    /// Still waiting.
    Asleep,
    /// The job ended.
    Ended(Result<UpdateReport, TaskError>),
    /// Its scheduled transfer runs: follow it from here.
    Transfer(Tracker),
}

/// A followed transfer's state, shared by the arms of [`ZigbeeTransport::follow`]'s loop.
struct Following {
    /// The update request, until it is answered.
    pending: Option<PendingRequest>,
    tracker: Tracker,
    /// A scheduled transfer (no update request to answer).
    schedule: bool,
    /// The transfer budget, until used up.
    deadline: Option<Instant>,
    /// After 100 %: how long the update response may take.
    grace: Option<Instant>,
    /// The check sent after an outage.
    verify: Option<PendingRequest>,
    /// The broker or zigbee2mqtt went away: the transfer may not have survived.
    suspect: bool,
    /// An abort was sent (until when it must be confirmed, and why).
    aborting: Option<(Instant, Abort)>,
    cancel_seen: bool,
}

/// A job's event stream lagged (logged, the job goes on) or closed (the job ends).
fn fell_behind_or_stopped(cx: &Cx<'_>, e: broadcast::error::RecvError) -> Result<(), TaskError> {
    match e {
        broadcast::error::RecvError::Lagged(n) => {
            tracing::warn!(task.id = %cx.task_id, skipped = n, "zigbee job fell behind the network's messages");
            Ok(())
        }
        broadcast::error::RecvError::Closed => Err(TaskError::new(
            ErrorCode::Other,
            "the zigbee transport stopped",
        )),
    }
}

impl ZigbeeTransport {
    /// Publishes a request and waits (the request timeout) for its answer.
    pub(super) async fn ask(
        &self,
        op: OtaOp,
        downgrade: bool,
        ieee: &str,
        image: Option<ImageSource>,
    ) -> Asked {
        let mut pending = match self.net.request(op, downgrade, ieee, image).await {
            Ok(p) => p,
            Err(e) => return Asked::Refused(e, Z2mErrorKind::Other),
        };
        match tokio::time::timeout(self.cfg.timeouts.request, &mut pending.rx).await {
            Ok(Ok(resp)) if resp.is_ok() => Asked::Ok,
            Ok(Ok(resp)) => {
                let msg = resp.error.unwrap_or_default();
                Asked::Refused(to_task_error(&msg), classify(&msg))
            }
            _ => Asked::NoAnswer,
        }
    }

    /// A mains job: waits for an update slot (status 13, the wake-up budget), then sends
    /// `update` after the committing mark and follows it.
    pub(super) async fn run_mains(
        &self,
        cx: &Cx<'_>,
        source: ImageSource,
        note: serde_json::Value,
    ) -> Result<UpdateReport, TaskError> {
        let key = cx.key;
        self.with_book(|b| b.enqueue(key));
        let mut changes = self.book_changed.subscribe();
        let wait_deadline = Instant::now() + cx.wake_timeout;
        let mut said = false;
        loop {
            if self.with_book(|b| b.try_grant(key)) {
                break;
            }
            if !said {
                said = true;
                let armed = self.with_book(|b| b.armed());
                cx.status(
                    UpgradeStatus::Queued,
                    if armed > 0 && self.with_book(|b| b.active()) == 0 {
                        format!(
                            "queued: withdrawing {armed} schedule(s) of sleepy devices on \
                             zigbee2mqtt network '{}' first",
                            self.cfg.network
                        )
                    } else {
                        format!(
                            "queued: another update runs on zigbee2mqtt network '{}' (at most {} \
                             at a time)",
                            self.cfg.network, self.cfg.max_concurrent_updates
                        )
                    },
                );
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(TaskError::new(ErrorCode::Other, "the zigbee transport is shutting down"));
                },
                () = cx.cancel.cancelled() => return Err(cancelled("while queued; nothing was sent")),
                () = sleep_until(wait_deadline) => return Err(TaskError::new(
                    ErrorCode::Timeout,
                    format!(
                        "still queued for an update slot on network '{}' after {}; nothing was sent",
                        self.cfg.network,
                        humantime::format_duration(cx.wake_timeout)
                    ),
                )),
            }
        }
        if cx.cancel.is_cancelled() {
            return Err(cancelled("before anything was sent"));
        }
        cx.commit.committing(note).await?;
        let mut events = self.net.events.subscribe();
        let pending = self
            .net
            .request(OtaOp::Update, cx.downgrade, &cx.ieee, Some(source))
            .await
            .inspect_err(|_| cx.commit.not_taken())?;
        tracing::info!(task.id = %cx.task_id, device = %cx.ieee, network = %self.cfg.network, "zigbee2mqtt update request sent");
        cx.status(
            UpgradeStatus::AgentPreparing,
            "update request sent to zigbee2mqtt".into(),
        );
        let tracker = Tracker::new(cx.target, cx.total, false);
        self.follow(cx, Some(pending), tracker, &mut events, false)
            .await
    }

    /// A sleepy job: its schedule armed while the network may take a wake-up (status 5),
    /// withdrawn while it may not (status 13), until the device wakes; then its transfer is
    /// followed. `source` is what the schedule carries (`None` after an agent restart: an armed
    /// schedule is followed but cannot be armed again).
    ///
    /// One select loop over the job's [`Waiting`] state; each arm is its own method
    /// ([`Self::sleeper_state`], [`Self::sleeper_cancelled`], [`Self::sleeper_out_of_time`]),
    /// what needs none of the state is in [`Self::arm_or_withdraw`] and [`withdrawn`].
    pub(super) async fn run_sleeper(
        &self,
        cx: &Cx<'_>,
        source: Option<ImageSource>,
        note: serde_json::Value,
        armed_at_start: bool,
    ) -> Result<UpdateReport, TaskError> {
        let key = cx.key;
        self.with_book(|b| {
            b.add_sleeper(key);
            b.set_armed(key, armed_at_start);
        });
        let mut events = self.net.events.subscribe();
        let mut changes = self.book_changed.subscribe();
        let wait_deadline = Instant::now() + cx.wake_timeout;
        let mut w = Waiting {
            armed: armed_at_start,
            tracker: Tracker::new(cx.target, cx.total, true),
            said: None,
            retry_at: None,
            aborted_run: false,
            too_late: false,
        };
        loop {
            let may = self.with_book(|b| b.may_arm());
            if !w.aborted_run && !w.too_late {
                self.arm_or_withdraw(
                    cx,
                    source.as_ref(),
                    &note,
                    may,
                    &mut w.armed,
                    &mut w.retry_at,
                )
                .await?;
            }
            self.say_waiting(cx, &mut w);
            let retry = w.retry_at;
            tokio::select! {
                biased;
                ev = events.recv() => match ev {
                    Ok(NetEvent::State { ieee, update: Some(u), .. }) if ieee == cx.ieee => {
                        match self.sleeper_state(cx, &mut w, &u).await {
                            Woke::Asleep => {}
                            Woke::Ended(r) => return r,
                            Woke::Transfer(fresh) => {
                                return self.follow(cx, None, fresh, &mut events, true).await;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => fell_behind_or_stopped(cx, e)?,
                },
                r = changes.changed() => if r.is_err() {
                    return Err(TaskError::new(ErrorCode::Other, "the zigbee transport is shutting down"));
                },
                () = async { sleep_until(retry.unwrap_or_else(Instant::now)).await }, if retry.is_some() => {}
                () = cx.cancel.cancelled(), if !w.too_late => self.sleeper_cancelled(cx, &mut w).await?,
                () = sleep_until(wait_deadline), if !w.too_late => self.sleeper_out_of_time(cx, &mut w).await?,
            }
        }
    }

    /// Tells, once per change, whether the schedule is armed or waits for a slot.
    fn say_waiting(&self, cx: &Cx<'_>, w: &mut Waiting) {
        let status = if w.armed {
            UpgradeStatus::WaitingForWakeup
        } else {
            UpgradeStatus::Queued
        };
        if w.said == Some(status) {
            return;
        }
        w.said = Some(status);
        cx.status(
            status,
            if w.armed {
                "scheduled: waiting for the device to wake up and ask for its image".into()
            } else {
                format!(
                    "waiting for an update slot on zigbee2mqtt network '{}': the schedule is \
                     armed when no other transfer runs",
                    self.cfg.network
                )
            },
        );
    }

    /// The sleeper's device state changed: it may have the target, its aborted run may have
    /// ended, or its scheduled transfer may have started (within the network's slots or over
    /// them).
    async fn sleeper_state(&self, cx: &Cx<'_>, w: &mut Waiting, u: &UpdateState) -> Woke {
        let (_, verdict) = w.tracker.on_state(u);
        match verdict {
            Verdict::ReachedTarget => {
                cx.commit.committed().await;
                return Woke::Ended(Ok(cx.report(None)));
            }
            Verdict::ScheduledRunFailed | Verdict::ScheduledRunFoundNoImage if w.aborted_run => {
                // The aborted run ended: withdraw the schedule, wait again.
                w.aborted_run = false;
                w.tracker = Tracker::new(cx.target, cx.total, true);
                if let Asked::Ok = self.ask(OtaOp::Unschedule, false, &cx.ieee, None).await {
                    w.armed = false;
                    self.with_book(|b| b.set_armed(cx.key, false));
                }
                return Woke::Asleep;
            }
            _ => {}
        }
        if !w.tracker.started() || w.aborted_run {
            return Woke::Asleep;
        }
        match self.with_book(|b| b.sleeper_started(cx.key)) {
            Started::Within => {
                tracing::info!(task.id = %cx.task_id, device = %cx.ieee, "the device woke: its scheduled transfer runs");
                // Report where the transfer stands now.
                let mut fresh = Tracker::new(cx.target, cx.total, true);
                if let (Some(p), _) = fresh.on_state(u) {
                    cx.say(p);
                }
                Woke::Transfer(fresh)
            }
            Started::OverLimit => {
                tracing::warn!(task.id = %cx.task_id, device = %cx.ieee, "the device woke while another transfer holds the network's last slot: aborting its run");
                w.armed = false;
                w.aborted_run = true;
                let _ = self.ask(OtaOp::Abort, false, &cx.ieee, None).await;
                Woke::Asleep
            }
        }
    }

    /// A cancel while the sleeper waits: nothing armed, or the schedule removed, ends the job;
    /// a schedule that cannot be removed any more (the device woke) is followed.
    async fn sleeper_cancelled(&self, cx: &Cx<'_>, w: &mut Waiting) -> Result<(), TaskError> {
        if !w.armed && !w.aborted_run {
            cx.commit.not_taken();
            return Err(cancelled(
                "while waiting for an update slot; nothing was armed",
            ));
        }
        if let Asked::Ok = self.ask(OtaOp::Unschedule, false, &cx.ieee, None).await {
            cx.commit.not_taken();
            return Err(cancelled(
                "the schedule was removed before the device woke up",
            ));
        }
        tracing::info!(task.id = %cx.task_id, "cancel came as the device woke: following its transfer");
        w.too_late = true;
        Ok(())
    }

    /// The wake-up budget is used up: the job ends unless its schedule cannot be removed any
    /// more (the device woke), then it is followed.
    async fn sleeper_out_of_time(&self, cx: &Cx<'_>, w: &mut Waiting) -> Result<(), TaskError> {
        if !w.armed && !w.aborted_run {
            cx.commit.not_taken();
        } else if let Asked::Ok = self.ask(OtaOp::Unschedule, false, &cx.ieee, None).await {
            cx.commit.not_taken();
        } else {
            w.too_late = true;
            return Ok(());
        }
        Err(TaskError::new(
            ErrorCode::Timeout,
            format!(
                "{} did not wake up within {} (the wake-up budget); the schedule was removed",
                cx.name,
                humantime::format_duration(cx.wake_timeout)
            ),
        ))
    }

    /// A sleepy job's schedule follows the network's slots: armed when a wake-up may take one
    /// (after the committing mark), withdrawn when it may not; a busy zigbee2mqtt is asked again
    /// a second later.
    async fn arm_or_withdraw(
        &self,
        cx: &Cx<'_>,
        source: Option<&ImageSource>,
        note: &serde_json::Value,
        may: bool,
        armed: &mut bool,
        retry_at: &mut Option<Instant>,
    ) -> Result<(), TaskError> {
        if may && !*armed && retry_at.is_none_or(|t| Instant::now() >= t) {
            let Some(src) = source else {
                return Err(withdrawn(cx));
            };
            cx.commit.committing(note.clone()).await?;
            match self
                .ask(OtaOp::Schedule, cx.downgrade, &cx.ieee, Some(src.clone()))
                .await
            {
                Asked::Ok | Asked::NoAnswer => {
                    *armed = true;
                    *retry_at = None;
                    self.with_book(|b| b.set_armed(cx.key, true));
                    tracing::info!(task.id = %cx.task_id, device = %cx.ieee, "schedule armed");
                }
                Asked::Refused(_, Z2mErrorKind::InProgress) => {
                    // Another operation on the device (a check): try again shortly.
                    *retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
                Asked::Refused(e, _) => {
                    cx.commit.not_taken();
                    return Err(e);
                }
            }
        } else if !may && *armed && retry_at.is_none_or(|t| Instant::now() >= t) {
            match self.ask(OtaOp::Unschedule, false, &cx.ieee, None).await {
                Asked::Ok => {
                    *armed = false;
                    *retry_at = None;
                    self.with_book(|b| b.set_armed(cx.key, false));
                    tracing::info!(task.id = %cx.task_id, device = %cx.ieee, "schedule withdrawn: another transfer holds the network's slot");
                    if source.is_none() {
                        return Err(withdrawn(cx));
                    }
                }
                // The run is starting (its state tells), or zigbee2mqtt is busy: ask
                // again shortly.
                _ => *retry_at = Some(Instant::now() + Duration::from_secs(1)),
            }
        }
        Ok(())
    }

    /// Follows a transfer to its end: the update response (when `pending`), the device's state,
    /// and outages of the broker or of zigbee2mqtt. The transfer budget runs from now.
    ///
    /// One select loop over the transfer's [`Following`] state; each arm is its own method
    /// ([`Self::followed_state`], [`Self::network_back`], [`Self::follow_cancelled`],
    /// [`Self::budget_used_up`]) and each outcome too ([`Self::run_ended`],
    /// [`Self::update_answered`], [`Self::verified`]).
    pub(super) async fn follow(
        &self,
        cx: &Cx<'_>,
        pending: Option<PendingRequest>,
        tracker: Tracker,
        events: &mut broadcast::Receiver<NetEvent>,
        schedule: bool,
    ) -> Result<UpdateReport, TaskError> {
        let mut f = Following {
            pending,
            tracker,
            schedule,
            deadline: Some(Instant::now() + cx.timeout),
            grace: None,
            verify: None,
            suspect: false,
            aborting: None,
            cancel_seen: false,
        };
        loop {
            tokio::select! {
                // State messages first: those that arrived before a response are part of it.
                biased;
                ev = events.recv() => match ev {
                    Ok(NetEvent::State { ieee: who, update: Some(u), .. }) if who == cx.ieee => {
                        if let Some(outcome) = self.followed_state(cx, &mut f, &u).await {
                            return outcome;
                        }
                    }
                    Ok(NetEvent::State { .. }) => {}
                    Ok(NetEvent::Disconnected) => f.suspect = true,
                    Ok(NetEvent::Bridge { online: false }) => f.suspect = true,
                    Ok(ev @ (NetEvent::Subscribed { .. } | NetEvent::Bridge { online: true })) => {
                        if let NetEvent::Subscribed { generation } = ev {
                            tracing::info!(task.id = %cx.task_id, generation, "zigbee job: MQTT connection is back");
                        }
                        self.network_back(cx, &mut f).await?;
                    }
                    Err(e) => fell_behind_or_stopped(cx, e)?,
                },
                resp = answer(&mut f.pending), if f.pending.is_some() => {
                    f.pending = None;
                    let Ok(resp) = resp else { continue };
                    return self.update_answered(cx, resp, f.aborting.map(|a| a.1), &f.tracker).await;
                }
                r = answer(&mut f.verify), if f.verify.is_some() => {
                    f.verify = None;
                    let Ok(resp) = r else { continue };
                    if !resp.is_ok() && matches!(classify(resp.error.as_deref().unwrap_or_default()), Z2mErrorKind::InProgress) {
                        // zigbee2mqtt still runs our transfer.
                        f.suspect = false;
                        continue;
                    }
                    return self.verified(cx, resp, &f.tracker).await;
                }
                () = until(f.grace), if f.grace.is_some() => {
                    return Ok(cx.report(None));
                }
                () = cx.cancel.cancelled(), if !f.cancel_seen => self.follow_cancelled(cx, &mut f).await,
                () = until(f.aborting.map(|a| a.0)), if f.aborting.is_some() => {
                    // zigbee2mqtt did not confirm the abort: whether the device took anything is
                    // not known.
                    return Err(match f.aborting.map(|a| a.1) {
                        Some(Abort::Cancel) => cancelled("the update was aborted before any block was sent"),
                        _ => cx.budget_error(&f.tracker),
                    });
                }
                () = until(f.deadline), if f.deadline.is_some() => self.budget_used_up(cx, &mut f).await,
            }
        }
    }

    /// The device's state during a followed transfer: progress, the committed mark at 100 %,
    /// and the outcome when the run ended (or the grace for the update response).
    async fn followed_state(
        &self,
        cx: &Cx<'_>,
        f: &mut Following,
        u: &UpdateState,
    ) -> Option<Result<UpdateReport, TaskError>> {
        let (p, verdict) = f.tracker.on_state(u);
        if let Some(p) = p {
            cx.say(p);
        }
        if f.tracker.downloaded() {
            cx.commit.committed().await;
        }
        match verdict {
            Verdict::Pending => None,
            Verdict::ReachedTarget => {
                cx.commit.committed().await;
                if f.schedule || f.pending.is_none() {
                    return Some(Ok(cx.report(None)));
                }
                // The update response (with build ids) follows right away.
                f.grace
                    .get_or_insert(Instant::now() + self.cfg.timeouts.completion_grace);
                None
            }
            ended => {
                let aborting = f.aborting.map(|a| a.1);
                Some(
                    self.run_ended(cx, ended, u.installed_version, aborting, &f.tracker)
                        .await,
                )
            }
        }
    }

    /// The broker or zigbee2mqtt is back after an outage during the transfer: a scheduled
    /// transfer is unscheduled and fails; an update is checked (its answer may be lost).
    async fn network_back(&self, cx: &Cx<'_>, f: &mut Following) -> Result<(), TaskError> {
        if !f.suspect {
            return Ok(());
        }
        if f.schedule {
            self.unschedule(&cx.ieee).await;
            if !f.tracker.downloaded() {
                cx.commit.not_taken();
            }
            return Err(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "zigbee2mqtt or the MQTT broker went away during the scheduled transfer to {}; the agent unscheduled it; retry",
                    cx.name
                ),
            ));
        }
        // Did the transfer survive? Ask again (the previous answer may be lost).
        f.verify = Some(
            self.net
                .request(OtaOp::Check, false, &cx.ieee, None)
                .await?,
        );
        Ok(())
    }

    /// A cancel during a followed transfer aborts it only before any block was sent.
    async fn follow_cancelled(&self, cx: &Cx<'_>, f: &mut Following) {
        f.cancel_seen = true;
        if !f.schedule
            && f.tracker.max_percent() <= 0.0
            && f.pending.is_some()
            && f.aborting.is_none()
        {
            tracing::info!(task.id = %cx.task_id, "cancel: aborting the update before any block was sent");
            let _ = self.net.request(OtaOp::Abort, false, &cx.ieee, None).await;
            f.aborting = Some((Instant::now() + self.cfg.timeouts.request, Abort::Cancel));
        } else {
            tracing::info!(task.id = %cx.task_id, "cancel ignored: the image is on its way to the device");
        }
    }

    /// The transfer budget is used up: aborted before 100 %, awaited after.
    async fn budget_used_up(&self, cx: &Cx<'_>, f: &mut Following) {
        f.deadline = None;
        if f.tracker.downloaded() {
            tracing::info!(task.id = %cx.task_id, "transfer budget used up at 100 %: waiting for the device's outcome");
            return;
        }
        tracing::info!(task.id = %cx.task_id, "transfer budget used up: aborting the transfer");
        let _ = self.net.request(OtaOp::Abort, false, &cx.ieee, None).await;
        f.aborting = Some((Instant::now() + self.cfg.timeouts.request, Abort::Budget));
    }

    /// A transfer's run ended without the target (`ended` is not `Pending` or `ReachedTarget`):
    /// what the job reports.
    async fn run_ended(
        &self,
        cx: &Cx<'_>,
        ended: Verdict,
        installed: Option<u32>,
        aborting: Option<Abort>,
        tracker: &Tracker,
    ) -> Result<UpdateReport, TaskError> {
        match ended {
            Verdict::ScheduledRunFailed => {
                self.unschedule(&cx.ieee).await;
                cx.commit.not_taken();
                Err(match aborting {
                    Some(Abort::Budget) => cx.budget_error(tracker),
                    Some(Abort::Cancel) => cancelled("the scheduled run was aborted"),
                    None => TaskError::new(
                        ErrorCode::SendFailed,
                        format!(
                            "the scheduled update of {} failed when the device woke up (zigbee2mqtt's log has the cause); the agent unscheduled it",
                            cx.name
                        ),
                    ),
                })
            }
            Verdict::ScheduledRunFoundNoImage => {
                if self.installed(&cx.ieee) == Some(cx.target) {
                    // It runs the image already (an earlier attempt got it).
                    cx.commit.committed().await;
                    return Ok(cx.report(None));
                }
                cx.commit.not_taken();
                Err(to_task_error(&format!(
                    "Update of '{}' failed (No image currently available)",
                    cx.name
                )))
            }
            Verdict::EndedWithoutTarget => {
                let now = installed.map_or("an unknown version".to_string(), |v| v.to_string());
                if tracker.downloaded()
                    || cx.commit.stage() == crate::transport::CommitStage::Committed
                {
                    return Err(TaskError::new(
                        ErrorCode::DeviceReportedFailure,
                        format!(
                            "the transfer to {} ended, but the device reports {now}, not {}",
                            cx.name, cx.target
                        ),
                    ));
                }
                cx.commit.not_taken();
                if aborting == Some(Abort::Budget) {
                    return Err(cx.budget_error(tracker));
                }
                Err(TaskError::new(
                    ErrorCode::SendFailed,
                    format!(
                        "the transfer to {} ended before the whole image was sent; it still reports {now}",
                        cx.name
                    ),
                ))
            }
            // The loop handles these itself; never passed here.
            Verdict::Pending | Verdict::ReachedTarget => Err(TaskError::new(
                ErrorCode::Other,
                "the zigbee job took a running transfer for ended",
            )),
        }
    }

    /// zigbee2mqtt answered the update request: the transfer's outcome.
    async fn update_answered(
        &self,
        cx: &Cx<'_>,
        resp: ota_devproto::z2m::Response,
        aborting: Option<Abort>,
        tracker: &Tracker,
    ) -> Result<UpdateReport, TaskError> {
        if resp.is_ok() {
            let data = UpdateData::from_value(&resp.data);
            if let Some(v) = data
                .as_ref()
                .and_then(|d| d.to.as_ref())
                .and_then(|t| t.file_version)
                && v != cx.target
            {
                return Err(TaskError::new(
                    ErrorCode::DeviceReportedFailure,
                    format!(
                        "zigbee2mqtt reports version {v} after the update, expected {}",
                        cx.target
                    ),
                ));
            }
            cx.commit.committed().await;
            return Ok(cx.report(data));
        }
        let msg = resp.error.unwrap_or_default();
        if classify(&msg) == Z2mErrorKind::NoImage && self.installed(&cx.ieee) == Some(cx.target) {
            // "No image" for a device that runs the image already (an earlier
            // attempt got it, and the agent did not know its version).
            tracing::info!(task.id = %cx.task_id, "the device already runs the target");
            cx.commit.committed().await;
            return Ok(cx.report(None));
        }
        // zigbee2mqtt's update failed: the device keeps its firmware.
        cx.commit.not_taken();
        Err(match aborting {
            Some(Abort::Cancel) if classify(&msg) == Z2mErrorKind::Aborted => {
                cancelled("zigbee2mqtt aborted the transfer before it started")
            }
            Some(Abort::Budget) => cx.budget_error(tracker),
            _ => to_task_error(&msg),
        })
    }

    /// zigbee2mqtt answered the check sent after an outage, and it runs no transfer for the
    /// device: the installed version decides.
    async fn verified(
        &self,
        cx: &Cx<'_>,
        resp: ota_devproto::z2m::Response,
        tracker: &Tracker,
    ) -> Result<UpdateReport, TaskError> {
        let installed = self.net.report(&cx.ieee).and_then(|r| r.file_version);
        if installed == Some(cx.target) {
            cx.commit.committed().await;
            return Ok(cx.report(None));
        }
        if !tracker.downloaded() {
            cx.commit.not_taken();
        }
        let why = resp.error.map(|e| format!(" ({e})")).unwrap_or_default();
        Err(TaskError::new(
            ErrorCode::SendFailed,
            format!(
                "the update of {} did not complete: zigbee2mqtt or the MQTT broker went away during the transfer and the device still reports version {}{why}; retry",
                cx.name,
                installed.map_or("unknown".to_string(), |v| v.to_string()),
            ),
        ))
    }

    /// The file version the device reports now, as far as zigbee2mqtt told.
    pub(super) fn installed(&self, ieee: &str) -> Option<u32> {
        self.net.report(ieee).and_then(|r| r.file_version)
    }

    /// Removes a schedule, waiting briefly for zigbee2mqtt's answer.
    pub(super) async fn unschedule(&self, ieee: &str) {
        match self.ask(OtaOp::Unschedule, false, ieee, None).await {
            Asked::Ok => {}
            Asked::NoAnswer => {
                tracing::warn!(device = %ieee, "zigbee2mqtt did not confirm the unschedule");
            }
            Asked::Refused(e, _) => {
                tracing::warn!(device = %ieee, error = %e, "unschedule refused");
            }
        }
    }
}

/// The answer to `request`, or never when there is none (for a `select!` branch guarded by
/// `is_some`).
async fn answer(
    request: &mut Option<PendingRequest>,
) -> Result<ota_devproto::z2m::Response, tokio::sync::oneshot::error::RecvError> {
    match request {
        Some(r) => (&mut r.rx).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is no such instant.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

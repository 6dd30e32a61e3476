//! Update jobs: an update command journaled as a started attempt, checked, downloaded and handed
//! to its transport with the attempt's commitment; progress and results journaled; attempts a
//! restart interrupted given to their transport's `recover`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::download;
use crate::journal::{Interrupted, Journal, TaskMark};
use crate::report;
use crate::transport::{
    CommitLog, CommitStage, Commitment, RecoverJob, TransferProgress, Transport, UpdateJob,
};

use crate::sync::LockExt;

use super::{Agent, now_ms, transport_name, write_journal};

impl Agent {
    pub(super) async fn start_update(
        self: &Arc<Self>,
        command_id: u64,
        u: pb::UpdateCommand,
        channel: Channel,
        trace: &HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let known = self.journal.locked().task_mark(&u.task_id, u.attempt);
        if let Some(mark) = known {
            debug!(task.id = %u.task_id, attempt = u.attempt, ?mark, "update command for a known attempt ignored");
            if mark != TaskMark::Finished {
                self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                    command_id,
                    accepted: true,
                    error: None,
                }));
            }
            return Ok(());
        }
        let Some((transport, _)) = self.find_device(&u.device_local_id) else {
            self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id,
                accepted: false,
                error: Some(report::error(&TaskError::new(
                    ErrorCode::Offline,
                    format!(
                        "site {} does not know device {}",
                        self.opts.site_id, u.device_local_id
                    ),
                ))),
            }));
            return Ok(());
        };
        let Some(firmware) = u.firmware.clone() else {
            self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id,
                accepted: false,
                error: Some(report::error(&TaskError::new(
                    ErrorCode::ServerRefused,
                    "update command without firmware",
                ))),
            }));
            return Ok(());
        };
        let started = {
            let (cmd, instance) = (u.clone(), transport.instance().to_owned());
            write_journal(&self.journal, move |j| j.start_attempt(&cmd, &instance)).await?
        };
        if !started {
            return Ok(());
        }
        self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
            command_id,
            accepted: true,
            error: None,
        }));
        let token = CancellationToken::new();
        self.jobs.locked().insert(u.task_id.clone(), token.clone());
        let span = self.task_span(&u, transport.kind(), Some(&firmware.id));
        ota_telemetry::traces::set_parent_from(&span, trace);
        let agent = self.clone();
        tokio::spawn(
            async move {
                let commit = agent.commitment(&u.task_id, u.attempt, CommitStage::Before);
                let transfer = agent.instruments().map(|m| m.transfer(transport.kind()));
                let cancelled = token.clone();
                let outcome = agent
                    .run_update(&u, &firmware, transport.clone(), token, channel, commit.clone())
                    .await;
                if let Some(t) = transfer {
                    t.finish(outcome.as_ref().err(), cancelled.is_cancelled());
                }
                let outcome = agent.verified(&u, &*transport, outcome).await;
                if let Err(e) = agent
                    .finish_update(&u.task_id, u.attempt, outcome, &commit)
                    .await
                {
                    warn!(error = %e, "could not journal the result; the attempt is recovered after a restart");
                }
                agent.jobs.locked().remove(&u.task_id);
            }
            .instrument(span),
        );
        Ok(())
    }

    /// The `agent.task` span of an attempt. Not a child of the session's span: the task
    /// continues the trace otad sent with it.
    pub(super) fn task_span(
        &self,
        u: &pb::UpdateCommand,
        kind: crate::transport::TransportKind,
        firmware_id: Option<&str>,
    ) -> tracing::Span {
        info_span!(
            parent: None,
            "agent.task",
            task.id = %u.task_id,
            attempt = u.attempt,
            device.id = %format!("{}/{}", self.opts.site_id, u.device_local_id),
            device.local_id = %u.device_local_id,
            site.id = %self.opts.site_id,
            firmware.id = %firmware_id.unwrap_or_default(),
            transport = transport_name(kind),
            outcome = tracing::field::Empty,
            error.code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// The marks of an attempt, kept in the journal.
    pub(super) fn commitment(&self, task: &str, attempt: u32, stage: CommitStage) -> Commitment {
        Commitment::new(
            Arc::new(JournalMarks {
                journal: self.journal.clone(),
                task: task.to_owned(),
                attempt,
            }),
            stage,
        )
    }

    pub(super) async fn progress(&self, task_id: &str, attempt: u32, p: &TransferProgress) {
        let body = pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: task_id.to_owned(),
            attempt,
            status: p.status.code() as i32,
            progress: p.percent.unwrap_or(0.0),
            remaining_s: p.remaining_s,
            bytes_sent: p.bytes_sent,
            bytes_total: p.bytes_total,
            detail: p.detail.clone(),
            at_ms: now_ms(),
            verify_until_ms: 0,
        });
        if let Err(e) = self.journal_report(body).await {
            warn!(error = %e, "could not journal progress");
        }
    }

    pub(super) async fn run_update(
        &self,
        u: &pb::UpdateCommand,
        firmware: &pb::FirmwareRef,
        transport: Arc<dyn Transport>,
        cancel: CancellationToken,
        channel: Channel,
        commit: Commitment,
    ) -> Result<(crate::transport::UpdateReport, u64), TaskError> {
        let started = tokio::time::Instant::now();
        match self.trust.check(firmware)? {
            Some(key) => info!(key.id = %key, "firmware signature verified"),
            None => warn!("installing unsigned firmware: this site's policy allows it"),
        }
        self.progress(
            &u.task_id,
            u.attempt,
            &TransferProgress {
                status: UpgradeStatus::AgentPreparing,
                percent: None,
                remaining_s: None,
                bytes_sent: 0,
                bytes_total: firmware.size,
                detail: "downloading the firmware from the server".into(),
            },
        )
        .await;
        let image = tokio::select! {
            r = download::fetch(channel, firmware, &u.task_id) => r?,
            () = cancel.cancelled() => return Err(TaskError::new(ErrorCode::Other, "cancelled before anything was sent to the device")),
        };
        if let Some(m) = self.instruments() {
            m.downloaded(image.bytes.len() as u64);
        }
        let job = UpdateJob {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            device: u.device_local_id.clone(),
            image: Arc::new(image),
            downgrade: u.downgrade,
            schedule: u.schedule,
            timeout: transfer_budget(u.timeout_s),
            wake_timeout: wake_budget(u.wake_timeout_s),
            commit,
        };
        let transfer = self.transfer_span(&u.task_id, &u.device_local_id, &*transport, firmware);
        let sent_bytes = self.instruments().map(|m| m.bytes(transport.kind()));
        let (ptx, prx) = mpsc::unbounded_channel::<TransferProgress>();
        let update = transport.update(job, ptx, cancel);
        let result = self
            .follow(&u.task_id, u.attempt, update, prx, sent_bytes, transfer)
            .await;
        result.map(|r| (r, started.elapsed().as_millis() as u64))
    }

    pub(super) fn transfer_span(
        &self,
        task_id: &str,
        device: &str,
        transport: &dyn Transport,
        firmware: &pb::FirmwareRef,
    ) -> tracing::Span {
        let kind = transport_name(transport.kind());
        info_span!(
            "device.transfer",
            otel.name = %format!("{kind}.transfer"),
            transport = kind,
            transport.instance = %transport.instance(),
            device.id = %format!("{}/{}", self.opts.site_id, device),
            site.id = %self.opts.site_id,
            firmware.id = %firmware.id,
            task.id = %task_id,
            bytes.total = firmware.size,
            bytes.sent = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error.code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// Runs a transport's work for an attempt to its end, forwarding its progress (throttled:
    /// status changes at once, otherwise at most once per `progress_interval`).
    pub(super) async fn follow(
        &self,
        task_id: &str,
        attempt: u32,
        work: futures::future::BoxFuture<'_, Result<crate::transport::UpdateReport, TaskError>>,
        mut prx: mpsc::UnboundedReceiver<TransferProgress>,
        mut sent_bytes: Option<crate::metrics::BytesMeter>,
        transfer: tracing::Span,
    ) -> Result<crate::transport::UpdateReport, TaskError> {
        let mut bytes_sent = 0u64;
        let work = work.instrument(transfer.clone());
        tokio::pin!(work);
        let mut last: Option<(UpgradeStatus, tokio::time::Instant)> = None;
        let mut pending: Option<TransferProgress> = None;
        let mut flush = tokio::time::interval(self.opts.progress_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(p) = prx.recv() => {
                    if let Some(m) = &mut sent_bytes {
                        m.progress(&p);
                    }
                    bytes_sent = bytes_sent.max(p.bytes_sent);
                    let due = match last {
                        None => true,
                        Some((status, at)) => status != p.status || at.elapsed() >= self.opts.progress_interval,
                    };
                    if due {
                        last = Some((p.status, tokio::time::Instant::now()));
                        pending = None;
                        self.progress(task_id, attempt, &p).await;
                    } else {
                        pending = Some(p);
                    }
                }
                _ = flush.tick() => {
                    if let Some(p) = pending.take() {
                        last = Some((p.status, tokio::time::Instant::now()));
                        self.progress(task_id, attempt, &p).await;
                    }
                }
            }
        };
        while let Ok(p) = prx.try_recv() {
            if let Some(m) = &mut sent_bytes {
                m.progress(&p);
            }
            bytes_sent = bytes_sent.max(p.bytes_sent);
            pending = Some(p);
        }
        match &result {
            Ok(r) => {
                transfer.record("bytes.sent", r.wire_bytes.max(bytes_sent));
                transfer.record("outcome", "success");
            }
            Err(e) => {
                transfer.record("bytes.sent", bytes_sent);
                transfer.record("outcome", "failure");
                transfer.record("error.code", e.code.code());
                transfer.record("otel.status_code", "error");
            }
        }
        drop(transfer);
        if let Some(p) = pending.take() {
            self.progress(task_id, attempt, &p).await;
        }
        result
    }

    /// A transport's success followed by the command's health window (see `health`); the
    /// window's verdict decides the outcome.
    pub(super) async fn verified(
        &self,
        u: &pb::UpdateCommand,
        transport: &dyn Transport,
        outcome: Result<(crate::transport::UpdateReport, u64), TaskError>,
    ) -> Outcome {
        let (report, duration_ms) = outcome?;
        let health = self.verify_health(u, transport, &report).await?;
        Ok((report, duration_ms, health))
    }

    /// Journals an attempt's result, then its finished mark. A failure after the point of no
    /// return that did not show the device kept its firmware is marked
    /// `device_may_have_image` (the server never retries it automatically).
    pub(super) async fn finish_update(
        &self,
        task_id: &str,
        attempt: u32,
        outcome: Outcome,
        commit: &Commitment,
    ) -> anyhow::Result<()> {
        let span = tracing::Span::current();
        match &outcome {
            Ok(_) => span.record("outcome", "success"),
            Err(e) => {
                span.record("error.code", e.code.code());
                span.record("otel.status_code", "error");
                span.record("outcome", "failure")
            }
        };
        let result = match outcome {
            Ok((r, duration_ms, health)) => {
                info!(from = ?r.from.version, to = ?r.to.version, duration_ms, health = health.name(), "update succeeded");
                pb::TaskResult {
                    task_id: task_id.to_owned(),
                    attempt,
                    status: UpgradeStatus::Success.code() as i32,
                    error: None,
                    from: Some(report::version(&r.from)),
                    to: Some(report::version(&r.to)),
                    duration_ms,
                    at_ms: now_ms(),
                    wire_bytes: r.wire_bytes,
                    device_may_have_image: false,
                    health: report::health(health),
                }
            }
            Err(mut e) => {
                let may_have_image = commit.may_have_image();
                if may_have_image {
                    e.message.push_str(
                        "; the device may already run the new image (the attempt passed the \
                         point of no return), so it is not retried automatically: check the \
                         device",
                    );
                }
                warn!(code = e.code.code(), error = %e.message, may_have_image, "update failed");
                pb::TaskResult {
                    task_id: task_id.to_owned(),
                    attempt,
                    status: if e.code == ErrorCode::Timeout {
                        UpgradeStatus::Timeout
                    } else {
                        UpgradeStatus::Failure
                    }
                    .code() as i32,
                    error: Some(report::error(&e)),
                    at_ms: now_ms(),
                    device_may_have_image: may_have_image,
                    ..Default::default()
                }
            }
        };
        self.journal_report(pb::agent_message::Body::Result(result))
            .await?;
        let task = task_id.to_owned();
        write_journal(&self.journal, move |j| j.finish_task(&task, attempt)).await?;
        Ok(())
    }

    /// Finds out how the attempts that were running when the agent stopped ended, one task
    /// each, through their transports (which look at the devices and send nothing again). Each
    /// counts as running meanwhile: a resent command for it is ignored, a cancel reaches it.
    pub(super) async fn recover_interrupted(self: Arc<Self>) {
        let interrupted = std::mem::take(&mut *self.recovering.locked());
        let mut running = Vec::new();
        for i in interrupted {
            let token = CancellationToken::new();
            self.jobs.locked().insert(i.task.clone(), token.clone());
            let agent = self.clone();
            running.push(tokio::spawn(async move {
                let task = i.task.clone();
                agent.recover_one(i, token).await;
                agent.jobs.locked().remove(&task);
            }));
        }
        for r in running {
            let _ = r.await;
        }
    }

    pub(super) async fn recover_one(self: &Arc<Self>, i: Interrupted, cancel: CancellationToken) {
        let stage = match i.mark {
            TaskMark::Started | TaskMark::Finished => CommitStage::Before,
            TaskMark::Committing => CommitStage::Committing,
            TaskMark::Committed => CommitStage::Committed,
        };
        let commit = self.commitment(&i.task, i.attempt, stage);
        let transport = i.transport.as_deref().and_then(|name| {
            self.transports
                .iter()
                .find(|t| t.instance() == name)
                .cloned()
        });
        let (Some(u), Some(transport)) = (i.command.clone(), transport) else {
            warn!(task.id = %i.task, attempt = i.attempt, mark = ?i.mark, "an update was running when the agent stopped and cannot be looked at; reporting it interrupted");
            let e = TaskError::new(
                ErrorCode::SendFailed,
                "the agent restarted during this update; the device may not have received the whole image",
            );
            if let Err(e) = self
                .finish_update(&i.task, i.attempt, Err(e), &commit)
                .await
            {
                warn!(error = %e, "could not journal the interrupted attempt");
            }
            return;
        };
        let firmware = u.firmware.clone().unwrap_or_default();
        let span = self.task_span(&u, transport.kind(), Some(&firmware.id));
        async {
            info!(mark = ?i.mark, "an update was running when the agent stopped; looking at the device");
            let started = tokio::time::Instant::now();
            let job = RecoverJob {
                task_id: u.task_id.clone(),
                attempt: u.attempt,
                device: u.device_local_id.clone(),
                target_version: firmware.version.clone(),
                target_file_version: firmware.file_version,
                note: i.note.clone(),
                timeout: transfer_budget(u.timeout_s),
                wake_timeout: wake_budget(u.wake_timeout_s),
                commit: commit.clone(),
            };
            let transfer = self.transfer_span(&u.task_id, &u.device_local_id, &*transport, &firmware);
            let (ptx, prx) = mpsc::unbounded_channel::<TransferProgress>();
            let work = transport.recover(job, ptx, cancel);
            let outcome = self
                .follow(&u.task_id, u.attempt, work, prx, None, transfer)
                .await
                .map(|r| (r, started.elapsed().as_millis() as u64));
            let outcome = self.verified(&u, &*transport, outcome).await;
            if let Err(e) = self
                .finish_update(&u.task_id, u.attempt, outcome, &commit)
                .await
            {
                warn!(error = %e, "could not journal the recovered attempt's result");
            }
        }
        .instrument(span)
        .await
    }
}

/// An attempt's outcome: the transport's report, how long it took (ms) and the device's health.
pub(super) type Outcome = Result<
    (
        crate::transport::UpdateReport,
        u64,
        ota_domain::health::Health,
    ),
    TaskError,
>;

/// The transfer budget of a command (0: 10 minutes).
fn transfer_budget(timeout_s: u32) -> Duration {
    Duration::from_secs(u64::from(if timeout_s == 0 { 600 } else { timeout_s }))
}

/// The wake-up budget of a command (0: 7 days).
fn wake_budget(wake_timeout_s: u32) -> Duration {
    if wake_timeout_s == 0 {
        crate::transport::DEFAULT_WAKE_TIMEOUT
    } else {
        Duration::from_secs(u64::from(wake_timeout_s))
    }
}

/// An attempt's marks in the journal, for its transport's [`Commitment`].
#[derive(Debug)]
struct JournalMarks {
    journal: Arc<Mutex<Journal>>,
    task: String,
    attempt: u32,
}

impl CommitLog for JournalMarks {
    fn committing(
        &self,
        note: serde_json::Value,
    ) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let (task, attempt) = (self.task.clone(), self.attempt);
        Box::pin(async move {
            write_journal(&self.journal, move |j| {
                j.mark_committing(&task, attempt, note)
            })
            .await
            .map_err(|e| e.to_string())
        })
    }

    fn committed(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let (task, attempt) = (self.task.clone(), self.attempt);
        Box::pin(async move {
            write_journal(&self.journal, move |j| j.mark_committed(&task, attempt))
                .await
                .map_err(|e| e.to_string())
        })
    }
}

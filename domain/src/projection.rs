//! The fleet state: a projection of the event log.
//!
//! [`FleetState::apply`] folds one recorded event into the state. It cannot fail and makes no
//! decisions: every rule lives where events are decided (the server's command handlers and the
//! rollout scheduler), so replaying the same log always gives the same state. Unknown streams
//! and events for entities that do not exist are ignored, which keeps replay robust against logs
//! whose earlier events were written by a buggy build.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::*;
use crate::health::Health;
use crate::model::{self, DeviceFacts, TransportInstance, VersionInfo};
use crate::rollout::eta::TransferTimes;
use crate::rollout::spec::RolloutSpec;
use crate::status::{ErrorCode, TaskError, UpgradeStatus};
use crate::time::UnixMillis;

mod tally;
pub use tally::{PHASES, Tally, TaskMark};

/// Envelope facts of a recorded event that projections use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Global sequence number.
    pub seq: u64,
    /// When it was recorded, Unix ms.
    pub recorded_at_ms: UnixMillis,
    /// Who caused it (`name (role)`).
    pub actor: String,
}

/// A firmware in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirmwareView {
    /// As registered.
    pub registered: FirmwareRegistered,
    /// When.
    pub created_at_ms: UnixMillis,
    /// By whom.
    pub created_by: String,
    /// Signatures: key id, signature, when, by whom.
    pub signatures: Vec<SignatureView>,
}

/// A recorded firmware signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureView {
    /// Key name.
    pub key_id: String,
    /// Signature bytes.
    pub signature: Vec<u8>,
    /// When.
    pub added_at_ms: UnixMillis,
    /// By whom.
    pub added_by: String,
}

/// A device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// `<site>/<local>`.
    pub id: String,
    /// Site.
    pub site_id: String,
    /// Local id.
    pub local_id: String,
    /// Last reported facts.
    pub facts: DeviceFacts,
    /// First report.
    pub first_seen_ms: UnixMillis,
    /// Last report that changed something (live last-seen is kept by the server).
    pub last_seen_ms: UnixMillis,
    /// Auto-upgrade switch.
    pub auto_upgrade: bool,
    /// The site no longer reports it.
    pub removed: bool,
    /// Last check outcome and when.
    pub last_check: Option<(DeviceChecked, UnixMillis)>,
    /// The running or most recent task.
    pub current_task: Option<String>,
    /// The version of the device's stream (its last event's), kept here rather than in a map
    /// of every stream ([`FleetState::stream_version`]).
    pub stream_version: u64,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskPhase {
    /// 13: waiting for dispatch (also between retries).
    Queued,
    /// 14: preconditions being checked.
    Preparing,
    /// Held by a precondition: weak signal (waits for confirmation), offline or site
    /// disconnected (retried later).
    Held,
    /// 100: sent to the site, no report yet (or the site reports it is preparing).
    AgentPreparing,
    /// 13 at the site: the agent has the task and waits for the network's update slot.
    SiteQueued,
    /// 5: waiting for the device to wake up.
    WaitingForWakeup,
    /// 2: transferring.
    Updating,
    /// 6: image delivered, device applying.
    Downloaded,
    /// 6: the device reports the target version; its site watches its health until the
    /// window ends (`TaskView::verifying_until_ms`). Holds no slot.
    Verifying,
    /// 3.
    Succeeded,
    /// 4.
    Failed,
    /// 7.
    TimedOut,
    /// Ended without an update (precondition).
    Skipped,
    /// Cancelled.
    Cancelled,
}

impl TaskPhase {
    /// The Tuya status shown for this phase.
    pub fn status(self) -> UpgradeStatus {
        match self {
            Self::Queued | Self::SiteQueued => UpgradeStatus::Queued,
            Self::Preparing | Self::Held => UpgradeStatus::Preparing,
            Self::AgentPreparing => UpgradeStatus::AgentPreparing,
            Self::WaitingForWakeup => UpgradeStatus::WaitingForWakeup,
            Self::Updating => UpgradeStatus::Updating,
            Self::Downloaded | Self::Verifying => UpgradeStatus::Downloaded,
            Self::Succeeded => UpgradeStatus::Success,
            Self::Failed => UpgradeStatus::Failure,
            Self::TimedOut => UpgradeStatus::Timeout,
            Self::Skipped | Self::Cancelled => UpgradeStatus::None,
        }
    }

    /// The task will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Skipped | Self::Cancelled
        )
    }

    /// The site has the task (its agent was sent the update command).
    pub fn is_at_site(self) -> bool {
        matches!(
            self,
            Self::AgentPreparing
                | Self::SiteQueued
                | Self::WaitingForWakeup
                | Self::Updating
                | Self::Downloaded
                | Self::Verifying
        )
    }

    /// The task holds a slot of its network and site (counts against concurrency limits): it
    /// is sent and neither waits for a wake-up nor for the site's own update slot.
    pub fn holds_slot(self) -> bool {
        matches!(
            self,
            Self::AgentPreparing | Self::Updating | Self::Downloaded
        )
    }

    /// Cancelling is safe: nothing has reached the device yet — the task waits at the server,
    /// for a wake-up, for the site's slot, or the agent is still preparing (downloading,
    /// connecting; the agent stops before the first byte reaches the device, and reports the
    /// real outcome if it was too late).
    pub fn is_cancellable(self) -> bool {
        matches!(
            self,
            Self::Queued
                | Self::Held
                | Self::WaitingForWakeup
                | Self::SiteQueued
                | Self::AgentPreparing
        )
    }

    /// Waiting for a sleepy device to wake up: not a failure, and not holding a slot.
    pub fn is_asleep(self) -> bool {
        self == Self::WaitingForWakeup
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Preparing => "preparing",
            Self::Held => "held",
            Self::AgentPreparing => "agent-preparing",
            Self::SiteQueued => "queued-at-site",
            Self::WaitingForWakeup => "waiting-for-wakeup",
            Self::Updating => "updating",
            Self::Downloaded => "downloaded",
            Self::Verifying => "verifying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed-out",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A device update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// As created.
    pub created: TaskCreated,
    /// Phase.
    pub phase: TaskPhase,
    /// Current attempt (0 before the first dispatch).
    pub attempt: u32,
    /// Percent.
    pub progress: f32,
    /// Seconds remaining.
    pub remaining_s: Option<u32>,
    /// Bytes delivered.
    pub bytes_sent: u64,
    /// Bytes in total.
    pub bytes_total: u64,
    /// Last error (failure, hold, skip).
    pub error: Option<TaskError>,
    /// Words for a person.
    pub remind: String,
    /// Before.
    pub from: Option<VersionInfo>,
    /// After.
    pub to: Option<VersionInfo>,
    /// Created at.
    pub created_at_ms: UnixMillis,
    /// First dispatch.
    pub started_at_ms: Option<UnixMillis>,
    /// Ended.
    pub finished_at_ms: Option<UnixMillis>,
    /// Next dispatch after a transient failure or a hold.
    pub next_attempt_at_ms: Option<UnixMillis>,
    /// When the budget of the current phase runs out: while the site prepares (from dispatch)
    /// and transfers (from the first progress 2 or 6) the transfer budget, while it waits for a
    /// wake-up or its network slot (progress 5 or 13) the wake-up budget. `None`: not at a site.
    pub timeout_at_ms: Option<UnixMillis>,
    /// When the current transfer started (first progress 2 or 6 of the attempt).
    pub transfer_started_ms: Option<UnixMillis>,
    /// When the current wait for a wake-up (or the site's slot) started.
    pub waiting_since_ms: Option<UnixMillis>,
    /// The server ended the task (timeout, deadline, cancel) rather than its site: a success the
    /// site reports later for the same attempt still counts.
    pub ended_by_server: bool,
    /// Succeeded after the server had ended it.
    pub late: bool,
    /// Waits for a weak-signal confirmation.
    pub awaiting_confirmation: bool,
    /// An operator confirmed a weak-signal warning: do not hold again for signal.
    pub signal_confirmed: bool,
    /// Who created it.
    pub requested_by: String,
    /// Command id of the current attempt's dispatch.
    pub command_id: Option<u64>,
    /// Scheduled for wake-up.
    pub scheduled: bool,
    /// Last change.
    pub updated_at_ms: UnixMillis,
    /// While verifying: when the device's health window ends.
    pub verifying_until_ms: Option<UnixMillis>,
    /// How a success's health was established.
    pub health: Health,
    /// Where the current attempt's transfer time starts counting, for the learned ETA
    /// ([`crate::rollout::eta`]): its dispatch, the end of a wait for a wake-up or the site's
    /// slot, or the first progress 2 or 6 after it; `None` while it waits.
    pub transfer_from_ms: Option<UnixMillis>,
    /// How long the current attempt's transfer took when the device reported the target version
    /// before its health window (the window is not transfer time).
    pub transfer_took_ms: Option<u64>,
    /// The version of the task's stream (its last event's), kept here rather than in a map of
    /// every stream ([`FleetState::stream_version`]).
    pub stream_version: u64,
}

impl TaskView {
    /// A task as created at `at_ms` by `requested_by`: queued, nothing sent yet.
    pub fn queued(created: TaskCreated, at_ms: UnixMillis, requested_by: String) -> TaskView {
        TaskView {
            created,
            phase: TaskPhase::Queued,
            attempt: 0,
            progress: 0.0,
            remaining_s: None,
            bytes_sent: 0,
            bytes_total: 0,
            error: None,
            remind: String::new(),
            from: None,
            to: None,
            created_at_ms: at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            next_attempt_at_ms: None,
            timeout_at_ms: None,
            transfer_started_ms: None,
            waiting_since_ms: None,
            ended_by_server: false,
            late: false,
            awaiting_confirmation: false,
            signal_confirmed: false,
            requested_by,
            command_id: None,
            scheduled: false,
            updated_at_ms: at_ms,
            verifying_until_ms: None,
            transfer_from_ms: None,
            transfer_took_ms: None,
            health: Health::NotChecked,
            stream_version: 0,
        }
    }
}

/// Lifecycle of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RolloutState {
    /// Created, not started.
    Draft,
    /// Dispatching.
    Running,
    /// Paused by an operator or a threshold.
    Paused,
    /// Done.
    Completed,
    /// Stopped for good.
    Aborted,
}

impl RolloutState {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
        }
    }

    /// Will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted)
    }
}

/// Lifecycle of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StageState {
    /// Not started.
    Pending,
    /// Dispatching.
    Running,
    /// Success threshold met, soaking.
    Soaking,
    /// Done.
    Succeeded,
    /// Failure threshold crossed.
    Failed,
}

/// One stage of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// Name.
    pub name: String,
    /// Devices.
    pub device_ids: Vec<String>,
    /// State.
    pub state: StageState,
    /// Started.
    pub started_at_ms: Option<UnixMillis>,
    /// Deadline.
    pub deadline_at_ms: Option<UnixMillis>,
    /// Soak end.
    pub soak_until_ms: Option<UnixMillis>,
    /// Ended.
    pub finished_at_ms: Option<UnixMillis>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// When an operator resumed the rollout after this stage failed: failures recorded up to
    /// then were seen and accepted, so they no longer count against the stage's thresholds.
    pub failures_accepted_at_ms: Option<UnixMillis>,
    /// The stage's tasks by phase, kept as events are applied (see [`Tally`]).
    pub tally: Tally,
}

/// The bulk check of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCheckView {
    /// Check id.
    pub check_id: String,
    /// Devices asked.
    pub device_ids: Vec<String>,
    /// Deadline.
    pub deadline_at_ms: UnixMillis,
    /// Ended.
    pub completed: bool,
    /// Devices that did not answer (5019).
    pub timed_out: Vec<String>,
}

/// A rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Id.
    pub id: String,
    /// Spec.
    pub spec: RolloutSpec,
    /// State.
    pub state: RolloutState,
    /// Why paused/completed/aborted.
    pub state_reason: String,
    /// Created.
    pub created_at_ms: UnixMillis,
    /// By.
    pub created_by: String,
    /// Started.
    pub started_at_ms: Option<UnixMillis>,
    /// Ended.
    pub finished_at_ms: Option<UnixMillis>,
    /// Stages (empty until started).
    pub stages: Vec<StageView>,
    /// Devices left out.
    pub exclusions: Vec<Exclusion>,
    /// Bulk check.
    pub batch_check: Option<BatchCheckView>,
    /// Task of each device in this rollout (auto-upgrade tasks that name the rollout as their
    /// source are not part of it).
    pub tasks_by_device: HashMap<String, String>,
    /// When it was paused, while it is paused.
    pub paused_at_ms: Option<UnixMillis>,
    /// When an operator last resumed it: failures that ended before then were seen and accepted,
    /// so they no longer count against the rollout-wide failure budget.
    pub failures_accepted_at_ms: Option<UnixMillis>,
    /// The four-eyes approval, when one is required.
    pub approval: Approval,
    /// The linked rollout that rolls this one back, once there is one (`RolloutRolledBack`).
    pub rolled_back_by: Option<RollbackLink>,
    /// Every task of the rollout (those of `tasks_by_device`) by phase, kept as events are
    /// applied; failures count as accepted against `failures_accepted_at_ms`.
    pub tally: Tally,
}

/// A rollback of a rollout: which rollout reverts it, which devices, who asked and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackLink {
    /// The linked rollout.
    pub rollout_id: String,
    /// Which devices it reverts.
    pub scope: crate::rollout::rollback::RollbackScope,
    /// Triggered by the rollout's own thresholds or criteria.
    pub automatic: bool,
    /// Who asked (the system for an automatic rollback).
    pub by: String,
    /// When.
    pub at_ms: UnixMillis,
    /// Why.
    pub reason: String,
}

/// Where a rollout stands with its approval (four eyes: `rollout::approval`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Approval {
    /// None is required.
    #[default]
    NotRequired,
    /// Required (by the named setting) and not given yet.
    Pending {
        /// "otad setting require_approval" or "the rollout's spec".
        required_by: String,
    },
    /// Given.
    Approved(ApprovalVerdict),
    /// Refused: the rollout ended without running.
    Denied(ApprovalVerdict),
}

/// Who approved or denied a rollout, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalVerdict {
    /// The actor ("bob (operator)").
    pub by: String,
    /// When.
    pub at_ms: UnixMillis,
    /// Why.
    pub reason: String,
}

impl RolloutView {
    /// Index of the stage that is running or soaking, else the last one that ended.
    pub fn current_stage(&self) -> u32 {
        let active = self
            .stages
            .iter()
            .position(|s| matches!(s.state, StageState::Running | StageState::Soaking));
        let last_started = self
            .stages
            .iter()
            .rposition(|s| s.state != StageState::Pending);
        active.or(last_started).unwrap_or(0) as u32
    }
}

/// A site and its agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SiteView {
    /// Id.
    pub id: String,
    /// An agent session is open.
    pub connected: bool,
    /// Installation id.
    pub agent_id: String,
    /// Agent version.
    pub agent_version: String,
    /// Zone.
    pub timezone: String,
    /// UTC offset in minutes.
    pub utc_offset_minutes: i32,
    /// Transports.
    pub transports: Vec<TransportInstance>,
    /// Since.
    pub connected_since_ms: UnixMillis,
    /// Remote address.
    pub peer: String,
    /// Why the last session ended.
    pub last_disconnect_reason: String,
}

/// An operator token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Secret hash.
    pub secret_hash: String,
    /// Expiry; 0 never.
    pub expires_at_ms: UnixMillis,
    /// Created.
    pub created_at_ms: UnixMillis,
    /// By.
    pub created_by: String,
    /// Revoked.
    pub revoked: bool,
}

/// Counts a rollout's tallies from scratch by walking its devices: at its start and after a
/// resume (which moves the moment failures count as accepted).
fn recount(r: &mut RolloutView, tasks: &HashMap<String, Box<TaskView>>) {
    let by_device = &r.tasks_by_device;
    let task_of = |d: &String| by_device.get(d).and_then(|id| tasks.get(id)).map(|t| &**t);
    for s in &mut r.stages {
        s.tally = Tally::of(
            s.device_ids.iter().filter_map(task_of),
            s.failures_accepted_at_ms,
        );
    }
    r.tally = Tally::of(
        by_device
            .values()
            .filter_map(|id| tasks.get(id))
            .map(|t| &**t),
        r.failures_accepted_at_ms,
    );
}

/// The plan fixed at the start (`RolloutStarted`, then any `RolloutPlanContinued` of the same
/// append).
fn planned(
    r: &mut RolloutView,
    event: &DomainEvent,
    at: UnixMillis,
    tasks: &HashMap<String, Box<TaskView>>,
) {
    match event {
        DomainEvent::RolloutStarted(e) => {
            r.state = RolloutState::Running;
            r.state_reason.clear();
            r.started_at_ms = Some(at);
            r.stages = e
                .stages
                .iter()
                .map(|s| StageView {
                    name: s.name.clone(),
                    device_ids: s.device_ids.clone(),
                    state: StageState::Pending,
                    started_at_ms: None,
                    deadline_at_ms: None,
                    soak_until_ms: None,
                    finished_at_ms: None,
                    failure_reason: None,
                    failures_accepted_at_ms: None,
                    tally: Tally::default(),
                })
                .collect();
            r.exclusions = e.exclusions.clone();
            recount(r, tasks);
        }
        DomainEvent::RolloutPlanContinued(e) => {
            if let Some(s) = r.stages.get_mut(e.stage as usize) {
                s.device_ids.extend(e.device_ids.iter().cloned());
            }
            r.exclusions.extend(e.exclusions.iter().cloned());
            if !r.tasks_by_device.is_empty() {
                recount(r, tasks);
            }
        }
        _ => {}
    }
}

/// Outcomes of a batch check (`BatchCheckCompleted`, or a `BatchCheckContinued` before it):
/// devices that did not answer are listed, excluded devices leave their stages.
fn batch_check_outcomes(r: &mut RolloutView, timed_out: &[String], excluded: &[Exclusion]) {
    if let Some(bc) = r.batch_check.as_mut() {
        bc.timed_out.extend(timed_out.iter().cloned());
    }
    if excluded.is_empty() {
        return;
    }
    let leaving: std::collections::HashSet<&str> =
        excluded.iter().map(|x| x.device_id.as_str()).collect();
    for stage in &mut r.stages {
        stage.device_ids.retain(|d| !leaving.contains(d.as_str()));
    }
    r.exclusions.extend(excluded.iter().cloned());
}

/// A resumed rollout: the stage in progress continues where it stopped, its timers moved by the
/// time spent paused; a failed stage runs again with the failures seen so far accepted.
fn resumed(r: &mut RolloutView, e: &RolloutResumed, at: UnixMillis) {
    r.state = RolloutState::Running;
    r.state_reason = e.reason.clone();
    r.failures_accepted_at_ms = Some(at);
    // Timers of the stage in progress resume where they stopped: the deadline and
    // the end of the soak move by the time spent paused.
    let paused_for = r
        .paused_at_ms
        .take()
        .map_or(Duration::ZERO, |p| at.since(p));
    for s in &mut r.stages {
        if !matches!(
            s.state,
            StageState::Running | StageState::Soaking | StageState::Failed
        ) {
            continue;
        }
        if let Some(d) = s.deadline_at_ms.as_mut() {
            *d += paused_for;
        }
        if let Some(u) = s.soak_until_ms.as_mut() {
            *u += paused_for;
        }
        // A failed stage continues from where it stopped; the failures the operator
        // saw are accepted by resuming.
        if s.state == StageState::Failed {
            s.state = StageState::Running;
            s.failure_reason = None;
            s.finished_at_ms = None;
            s.failures_accepted_at_ms = Some(at);
        }
    }
}

impl RolloutView {
    /// A new draft.
    fn created(id: &str, e: &RolloutCreated, meta: &EventMeta) -> Self {
        RolloutView {
            id: id.to_string(),
            spec: e.spec.clone(),
            state: RolloutState::Draft,
            state_reason: String::new(),
            created_at_ms: meta.recorded_at_ms,
            created_by: meta.actor.clone(),
            started_at_ms: None,
            finished_at_ms: None,
            stages: Vec::new(),
            exclusions: Vec::new(),
            batch_check: None,
            tasks_by_device: HashMap::new(),
            paused_at_ms: None,
            failures_accepted_at_ms: None,
            approval: Approval::NotRequired,
            rolled_back_by: None,
            tally: Tally::default(),
        }
    }
}

/// An event of one of the rollout's stages.
fn stage_event(r: &mut RolloutView, event: &DomainEvent, at: UnixMillis) {
    match event {
        DomainEvent::StageStarted(e) => {
            if let Some(s) = r.stages.get_mut(e.index as usize) {
                s.state = StageState::Running;
                s.started_at_ms = Some(at);
                s.deadline_at_ms = e.deadline_at_ms;
            }
        }
        DomainEvent::StageDevicesExcluded(e) => {
            let excluded: std::collections::HashSet<&str> =
                e.excluded.iter().map(|x| x.device_id.as_str()).collect();
            if let Some(s) = r.stages.get_mut(e.index as usize) {
                s.device_ids.retain(|d| !excluded.contains(d.as_str()));
            }
            r.exclusions.extend(e.excluded.iter().cloned());
        }
        DomainEvent::StageSoaking(e) => {
            if let Some(s) = r.stages.get_mut(e.index as usize) {
                s.state = StageState::Soaking;
                s.soak_until_ms = Some(e.until_ms);
            }
        }
        DomainEvent::StageSucceeded(e) => {
            if let Some(s) = r.stages.get_mut(e.index as usize) {
                s.state = StageState::Succeeded;
                s.finished_at_ms = Some(at);
            }
        }
        DomainEvent::StageFailed(e) => {
            if let Some(s) = r.stages.get_mut(e.index as usize) {
                s.state = StageState::Failed;
                s.finished_at_ms = Some(at);
                s.failure_reason = Some(e.reason.clone());
            }
        }
        _ => {}
    }
}

/// A new attempt went to the agent: its transfer budget runs from now.
fn dispatched(task: &mut TaskView, e: &TaskDispatched, at: UnixMillis) {
    task.phase = TaskPhase::AgentPreparing;
    task.attempt = e.attempt;
    task.command_id = Some(e.command_id);
    task.timeout_at_ms = Some(e.timeout_at_ms);
    task.transfer_started_ms = None;
    task.waiting_since_ms = None;
    task.transfer_from_ms = Some(at);
    task.transfer_took_ms = None;
    task.scheduled = e.schedule;
    task.started_at_ms.get_or_insert(at);
    task.next_attempt_at_ms = None;
    task.error = None;
    task.remind.clear();
    task.progress = 0.0;
    task.remaining_s = None;
}

/// The current attempt failed: queued again for its retry, or ended.
fn failed(task: &mut TaskView, e: &TaskFailed, at: UnixMillis) {
    task.error = Some(e.error.clone());
    task.verifying_until_ms = None;
    task.remaining_s = None;
    task.timeout_at_ms = None;
    task.transfer_started_ms = None;
    task.waiting_since_ms = None;
    if e.retry_at_ms.is_some() {
        task.phase = TaskPhase::Queued;
        task.next_attempt_at_ms = e.retry_at_ms;
    } else {
        task.phase = if e.timed_out {
            TaskPhase::TimedOut
        } else {
            TaskPhase::Failed
        };
        task.ended_by_server = e.source.is_none();
        task.awaiting_confirmation = false;
        task.finished_at_ms = Some(at);
    }
}

/// A progress report of the task's current attempt: its phase, and the phase's budget.
fn progressed(task: &mut TaskView, e: &TaskProgressed, at: UnixMillis, transfer_budget: Duration) {
    let wake_budget = Duration::from_secs(u64::from(effective_wake_timeout_s(&task.created)));
    task.phase = match e.status {
        UpgradeStatus::WaitingForWakeup => TaskPhase::WaitingForWakeup,
        UpgradeStatus::Queued => TaskPhase::SiteQueued,
        UpgradeStatus::Updating => TaskPhase::Updating,
        UpgradeStatus::Downloaded => TaskPhase::Downloaded,
        _ => TaskPhase::AgentPreparing,
    };
    // Phase budgets: waiting (for a wake-up or the site's slot) runs the wake-up
    // budget from when it began; the transfer budget starts with the transfer.
    match task.phase {
        TaskPhase::WaitingForWakeup | TaskPhase::SiteQueued => {
            let since = *task.waiting_since_ms.get_or_insert(at);
            task.transfer_started_ms = None;
            task.transfer_from_ms = None;
            task.timeout_at_ms = Some(since + wake_budget);
        }
        TaskPhase::Updating | TaskPhase::Downloaded => {
            task.waiting_since_ms = None;
            if task.transfer_started_ms.is_none() {
                task.transfer_started_ms = Some(at);
                task.transfer_from_ms = Some(at);
                task.timeout_at_ms = Some(at + transfer_budget);
            }
        }
        _ => {
            // Preparing again after a wait (the device woke, the slot is free): a
            // fresh transfer budget.
            if task.waiting_since_ms.take().is_some() {
                task.timeout_at_ms = Some(at + transfer_budget);
                task.transfer_from_ms = Some(at);
            }
        }
    }
    task.progress = e.progress;
    task.remaining_s = e.remaining_s;
    task.bytes_sent = e.bytes_sent;
    task.bytes_total = e.bytes_total;
}

/// How long after a health window ends the server waits for the site's verdict before the task
/// times out (a verdict that comes later still counts).
pub const VERDICT_GRACE: Duration = Duration::from_secs(300);

/// The device reports the target version; its site watches its health until `until_ms`. The
/// phase's budget is the window plus [`VERDICT_GRACE`].
fn verifying(task: &mut TaskView, e: &TaskVerifying, at: UnixMillis) {
    task.transfer_took_ms = task
        .transfer_from_ms
        .map(|from| u64::try_from(at.since(from).as_millis()).unwrap_or(u64::MAX));
    task.phase = TaskPhase::Verifying;
    task.progress = 100.0;
    task.remaining_s = None;
    task.waiting_since_ms = None;
    task.verifying_until_ms = Some(e.until_ms);
    task.timeout_at_ms = Some(e.until_ms + VERDICT_GRACE);
    task.to = Some(e.to.clone());
}

fn succeed(task: &mut TaskView, e: &TaskSucceeded, at: UnixMillis) {
    task.phase = TaskPhase::Succeeded;
    task.health = e.health;
    task.verifying_until_ms = None;
    task.progress = 100.0;
    task.remaining_s = None;
    task.timeout_at_ms = None;
    task.from = Some(e.from.clone());
    task.to = Some(e.to.clone());
    task.finished_at_ms = Some(at);
}

/// A task's transfer budget in seconds, the transport's default resolved.
pub fn effective_timeout_s(c: &TaskCreated, transport: model::Transport) -> u32 {
    if c.timeout_s == 0 {
        crate::rollout::spec::default_device_timeout_s(transport)
    } else {
        c.timeout_s
    }
}

/// A task's wake-up budget in seconds, the default resolved.
pub fn effective_wake_timeout_s(c: &TaskCreated) -> u32 {
    if c.wake_timeout_s == 0 {
        crate::rollout::spec::DEFAULT_WAKE_TIMEOUT_S
    } else {
        c.wake_timeout_s
    }
}

/// The shape of the projection as stored in snapshots (postcard: not self-describing). Bump it
/// whenever a type of this module changes shape: a snapshot of another shape is ignored and the
/// state is rebuilt from the log. `tests/golden_events.rs` fails when the shape changes without
/// a bump.
pub const SNAPSHOT_SCHEMA: u32 = 10;

/// Everything the server knows, as of `last_seq`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// Last applied event.
    pub last_seq: u64,
    /// Firmware by id.
    pub firmware: BTreeMap<String, FirmwareView>,
    /// Devices by id (removed devices stay, flagged). Boxed: the map's nodes and spare room
    /// then hold a pointer per device, not a whole view.
    pub devices: BTreeMap<String, Box<DeviceView>>,
    /// Tasks by id. Boxed for the same reason: a hash table keeps up to half its slots free.
    pub tasks: HashMap<String, Box<TaskView>>,
    /// Ids of the tasks that have not ended, kept as events are applied: the dispatcher looks
    /// at these, not at every task ever created.
    pub open_tasks: BTreeSet<String>,
    /// Rollouts by id.
    pub rollouts: BTreeMap<String, RolloutView>,
    /// Sites by id.
    pub sites: BTreeMap<String, SiteView>,
    /// Highest applied journal seq per agent installation.
    pub agent_seqs: HashMap<String, u64>,
    /// Tokens by id.
    pub tokens: BTreeMap<String, TokenView>,
    /// Recent transfer times of successful updates per device model and transport, for the
    /// learned ETA ([`crate::rollout::eta`]).
    pub transfer_times: TransferTimes,
}

impl FleetState {
    /// Folds one event into the state. Never fails; ignores what it cannot place.
    pub fn apply(&mut self, meta: &EventMeta, stream: &str, event: &DomainEvent) {
        self.last_seq = self.last_seq.max(meta.seq);
        if let Some(source) = event.agent_source() {
            let seen = self.agent_seqs.entry(source.agent_id.clone()).or_default();
            *seen = (*seen).max(source.seq);
        }
        if let Some(id) = stream.strip_prefix(streams::FIRMWARE_PREFIX) {
            self.apply_firmware(meta, id, event);
        } else if let Some(id) = stream.strip_prefix(streams::DEVICE_PREFIX) {
            self.apply_device(meta, id, event);
        } else if let Some(id) = stream.strip_prefix(streams::TASK_PREFIX) {
            self.apply_task(meta, id, event);
        } else if let Some(id) = stream.strip_prefix(streams::ROLLOUT_PREFIX) {
            self.apply_rollout(meta, id, event);
        } else if let Some(id) = stream.strip_prefix(streams::SITE_PREFIX) {
            self.apply_site(meta, id, event);
        } else if stream == streams::ACCESS {
            self.apply_access(meta, event);
        }
    }

    /// The version of `stream` when the projection keeps it: task and device streams (one or
    /// two per device, millions on a large fleet) keep theirs in their view, so the server's
    /// map of stream versions holds only the few others. `None`: not kept here.
    pub fn stream_version(&self, stream: &str) -> Option<u64> {
        if let Some(id) = stream.strip_prefix(streams::TASK_PREFIX) {
            self.tasks.get(id).map(|t| t.stream_version)
        } else if let Some(id) = stream.strip_prefix(streams::DEVICE_PREFIX) {
            self.devices.get(id).map(|d| d.stream_version)
        } else {
            None
        }
    }

    /// Keeps `version` as the version of `stream` (after its event was applied) when the stream
    /// is a task's or a device's that the projection holds; false: the caller keeps it.
    pub fn keep_stream_version(&mut self, stream: &str, version: u64) -> bool {
        let kept = if let Some(id) = stream.strip_prefix(streams::TASK_PREFIX) {
            self.tasks.get_mut(id).map(|t| &mut t.stream_version)
        } else if let Some(id) = stream.strip_prefix(streams::DEVICE_PREFIX) {
            self.devices.get_mut(id).map(|d| &mut d.stream_version)
        } else {
            None
        };
        match kept {
            Some(v) => {
                *v = version;
                true
            }
            None => false,
        }
    }

    fn apply_firmware(&mut self, meta: &EventMeta, id: &str, event: &DomainEvent) {
        match event {
            DomainEvent::FirmwareRegistered(e) => {
                self.firmware.insert(
                    id.to_string(),
                    FirmwareView {
                        registered: e.clone(),
                        created_at_ms: meta.recorded_at_ms,
                        created_by: meta.actor.clone(),
                        signatures: Vec::new(),
                    },
                );
            }
            DomainEvent::FirmwareSignatureAdded(e) => {
                if let Some(fw) = self.firmware.get_mut(id) {
                    fw.signatures.retain(|s| s.key_id != e.key_id);
                    fw.signatures.push(SignatureView {
                        key_id: e.key_id.clone(),
                        signature: e.signature.clone(),
                        added_at_ms: meta.recorded_at_ms,
                        added_by: meta.actor.clone(),
                    });
                }
            }
            DomainEvent::FirmwareDeleted(_) => {
                self.firmware.remove(id);
            }
            _ => {}
        }
    }

    fn apply_device(&mut self, meta: &EventMeta, id: &str, event: &DomainEvent) {
        let Some((site, local)) = model::split_device_id(id) else {
            return;
        };
        match event {
            DomainEvent::DeviceReported(e) => {
                let device = self.devices.entry(id.to_string()).or_insert_with(|| {
                    Box::new(DeviceView {
                        id: id.to_string(),
                        site_id: site.to_string(),
                        local_id: local.to_string(),
                        facts: DeviceFacts::default(),
                        first_seen_ms: meta.recorded_at_ms,
                        last_seen_ms: meta.recorded_at_ms,
                        auto_upgrade: false,
                        removed: false,
                        last_check: None,
                        current_task: None,
                        stream_version: 0,
                    })
                });
                device.facts = e.facts.clone();
                device.last_seen_ms = meta.recorded_at_ms;
                device.removed = false;
            }
            DomainEvent::DeviceRemoved(_) => {
                if let Some(d) = self.devices.get_mut(id) {
                    d.removed = true;
                    d.facts.reachable = false;
                }
            }
            DomainEvent::DeviceChecked(e) => {
                if let Some(d) = self.devices.get_mut(id) {
                    if e.reachable && !e.current.version.is_empty() {
                        d.facts.current = e.current.clone();
                    }
                    d.last_check = Some((e.clone(), meta.recorded_at_ms));
                }
            }
            DomainEvent::AutoUpgradeSet(e) => {
                if let Some(d) = self.devices.get_mut(id) {
                    d.auto_upgrade = e.enabled;
                }
            }
            _ => {}
        }
    }

    /// A task's event, and what it changes in the counts ([`Tally`]) and the open tasks.
    fn apply_task(&mut self, meta: &EventMeta, id: &str, event: &DomainEvent) {
        if let DomainEvent::TaskCreated(e) = event {
            if let Some(old) = self.tasks.get(id).map(|t| TaskMark::of(t)) {
                // A second creation of the same id (only a damaged log has one) replaces it.
                self.retally(id, Some(&old), None);
            }
            self.task_created(meta, id, e);
            let created = self.tasks.get(id).map(|t| TaskMark::of(t));
            self.retally(id, None, created.as_ref());
            self.reopen(id);
            return;
        }
        let before = self.tasks.get(id).map(|t| TaskMark::of(t));
        self.apply_task_event(meta, id, event);
        let after = self.tasks.get(id).map(|t| TaskMark::of(t));
        if before != after {
            self.retally(id, before.as_ref(), after.as_ref());
            self.reopen(id);
        }
    }

    /// Moves a task of a rollout from the `before` bucket of its stage's and its rollout's
    /// tallies to the `after` one. Tasks not of a rollout (single updates, auto-upgrades), or
    /// not the rollout's task of their device, are not counted.
    fn retally(&mut self, id: &str, before: Option<&TaskMark>, after: Option<&TaskMark>) {
        let Some(t) = self.tasks.get(id).map(Box::as_ref) else {
            return;
        };
        let c = &t.created;
        let Some(rollout_id) = c.rollout_id.as_deref().filter(|_| !c.auto) else {
            return;
        };
        let Some(r) = self.rollouts.get_mut(rollout_id) else {
            return;
        };
        if r.tasks_by_device.get(&c.device_id).map(String::as_str) != Some(id) {
            return;
        }
        let mut stage = r.stages.get_mut(c.stage as usize);
        for (mark, sign) in [(before, -1), (after, 1)] {
            let Some(mark) = mark else { continue };
            r.tally.count(mark, r.failures_accepted_at_ms, sign);
            if let Some(s) = stage.as_deref_mut() {
                s.tally.count(mark, s.failures_accepted_at_ms, sign);
            }
        }
    }

    /// Keeps [`FleetState::open_tasks`] true for the task `id`.
    fn reopen(&mut self, id: &str) {
        match self.tasks.get(id).map(Box::as_ref) {
            Some(t) if !t.phase.is_terminal() => {
                if !self.open_tasks.contains(id) {
                    self.open_tasks.insert(id.to_string());
                }
            }
            _ => {
                self.open_tasks.remove(id);
            }
        }
    }

    fn apply_task_event(&mut self, meta: &EventMeta, id: &str, event: &DomainEvent) {
        let transfer_budget = {
            let Some(task) = self.tasks.get(id).map(Box::as_ref) else {
                return;
            };
            let transport = self
                .devices
                .get(&task.created.device_id)
                .and_then(|d| d.facts.transport)
                .unwrap_or(model::Transport::Esphome);
            Duration::from_secs(u64::from(effective_timeout_s(&task.created, transport)))
        };
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let at = meta.recorded_at_ms;
        if task.phase.is_terminal() {
            // A late report for an ended task changes nothing — except a success for the attempt
            // the server itself ended (timeout, deadline, cancel): the device is the truth.
            if let DomainEvent::TaskSucceeded(e) = event
                && e.late
                && e.attempt == task.attempt
                && task.ended_by_server
            {
                task.updated_at_ms = at;
                task.late = true;
                task.error = None;
                task.remind.clear();
                let device_id = task.created.device_id.clone();
                succeed(task, e, at);
                if let Some(d) = self.devices.get_mut(&device_id) {
                    d.facts.current = e.to.clone();
                }
            }
            return;
        }
        task.updated_at_ms = at;
        match event {
            DomainEvent::TaskPreparing(_) => {
                task.phase = TaskPhase::Preparing;
            }
            DomainEvent::TaskHeld(e) => {
                task.phase = TaskPhase::Held;
                task.error = Some(e.error.clone());
                task.remind = e.remind.clone();
                task.awaiting_confirmation = e.needs_confirmation;
                task.next_attempt_at_ms = e.retry_at_ms;
            }
            DomainEvent::TaskConfirmed(e) => {
                task.awaiting_confirmation = false;
                if e.proceed {
                    task.signal_confirmed = true;
                    task.phase = TaskPhase::Queued;
                    task.error = None;
                    task.remind.clear();
                    task.next_attempt_at_ms = None;
                } else {
                    task.phase = TaskPhase::Cancelled;
                    task.remind = "cancelled after the weak-signal warning".into();
                    task.finished_at_ms = Some(at);
                }
            }
            DomainEvent::TaskSkipped(e) => {
                task.phase = TaskPhase::Skipped;
                task.error = Some(TaskError::new(e.code, e.remind.clone()));
                task.remind = e.remind.clone();
                task.finished_at_ms = Some(at);
            }
            DomainEvent::TaskDispatched(e) => dispatched(task, e, at),
            DomainEvent::TaskProgressed(e) if e.attempt == task.attempt => {
                progressed(task, e, at, transfer_budget);
            }
            DomainEvent::TaskSucceeded(e) => {
                if e.attempt != task.attempt {
                    return;
                }
                task.error = None;
                task.late = e.late;
                let device_id = task.created.device_id.clone();
                let took = task
                    .transfer_took_ms
                    .map(Duration::from_millis)
                    .or_else(|| task.transfer_from_ms.map(|from| at.since(from)));
                succeed(task, e, at);
                if let Some(d) = self.devices.get_mut(&device_id) {
                    d.facts.current = e.to.clone();
                    if let (Some(took), Some(transport)) = (took, d.facts.transport) {
                        self.transfer_times.record(&d.facts.model, transport, took);
                    }
                }
            }
            DomainEvent::TaskVerifying(e) if e.attempt == task.attempt => verifying(task, e, at),
            DomainEvent::TaskFailed(e) if e.attempt == task.attempt => failed(task, e, at),
            DomainEvent::TaskCancelled(e) => {
                // Only a task its site has can still succeed there.
                task.ended_by_server = task.phase.is_at_site();
                task.phase = TaskPhase::Cancelled;
                task.remind = e.reason.clone();
                task.awaiting_confirmation = false;
                task.timeout_at_ms = None;
                task.finished_at_ms = Some(at);
            }
            _ => {}
        }
    }

    fn task_created(&mut self, meta: &EventMeta, id: &str, e: &TaskCreated) {
        if let Some(d) = self.devices.get_mut(&e.device_id) {
            d.current_task = Some(id.to_string());
        }
        if let Some(rollout_id) = &e.rollout_id
            && !e.auto
            && let Some(r) = self.rollouts.get_mut(rollout_id)
        {
            r.tasks_by_device
                .insert(e.device_id.clone(), id.to_string());
        }
        self.tasks.insert(
            id.to_string(),
            Box::new(TaskView::queued(
                e.clone(),
                meta.recorded_at_ms,
                meta.actor.clone(),
            )),
        );
    }

    fn apply_rollout(&mut self, meta: &EventMeta, id: &str, event: &DomainEvent) {
        if let DomainEvent::RolloutCreated(e) = event {
            self.rollouts
                .insert(id.to_string(), RolloutView::created(id, e, meta));
            return;
        }
        let Some(r) = self.rollouts.get_mut(id) else {
            return;
        };
        let at = meta.recorded_at_ms;
        match event {
            DomainEvent::RolloutStarted(_) | DomainEvent::RolloutPlanContinued(_) => {
                planned(r, event, at, &self.tasks);
            }
            DomainEvent::BatchCheckStarted(e) => {
                r.batch_check = Some(BatchCheckView {
                    check_id: e.check_id.clone(),
                    device_ids: e.device_ids.clone(),
                    deadline_at_ms: e.deadline_at_ms,
                    completed: false,
                    timed_out: Vec::new(),
                });
            }
            DomainEvent::BatchCheckContinued(e) => {
                if let Some(bc) = r.batch_check.as_mut().filter(|b| b.check_id == e.check_id) {
                    bc.device_ids.extend(e.device_ids.iter().cloned());
                }
                batch_check_outcomes(r, &e.timed_out, &e.excluded);
            }
            DomainEvent::BatchCheckCompleted(e) => {
                if let Some(bc) = r.batch_check.as_mut() {
                    bc.completed = true;
                }
                batch_check_outcomes(r, &e.timed_out, &e.excluded);
            }
            DomainEvent::StageStarted(_)
            | DomainEvent::StageDevicesExcluded(_)
            | DomainEvent::StageSoaking(_)
            | DomainEvent::StageSucceeded(_)
            | DomainEvent::StageFailed(_) => stage_event(r, event, at),
            DomainEvent::RolloutPaused(e) => {
                r.state = RolloutState::Paused;
                r.state_reason = e.reason.clone();
                r.paused_at_ms = Some(at);
            }
            DomainEvent::RolloutResumed(e) => {
                resumed(r, e, at);
                // Which failures count as accepted moved: count again, once.
                recount(r, &self.tasks);
            }
            DomainEvent::RolloutCompleted(e) => {
                r.state = RolloutState::Completed;
                r.state_reason = e.summary.clone();
                r.finished_at_ms = Some(at);
            }
            DomainEvent::RolloutAborted(e) => {
                r.state = RolloutState::Aborted;
                r.state_reason = e.reason.clone();
                r.finished_at_ms = Some(at);
            }
            DomainEvent::RolloutApprovalRequired(e) => {
                r.approval = Approval::Pending {
                    required_by: e.required_by.clone(),
                };
            }
            DomainEvent::RolloutApproved(e) => {
                r.approval = Approval::Approved(ApprovalVerdict {
                    by: meta.actor.clone(),
                    at_ms: at,
                    reason: e.reason.clone(),
                });
            }
            DomainEvent::RolloutDenied(e) => {
                r.approval = Approval::Denied(ApprovalVerdict {
                    by: meta.actor.clone(),
                    at_ms: at,
                    reason: e.reason.clone(),
                });
                r.state = RolloutState::Aborted;
                r.state_reason = format!("denied by {}: {}", meta.actor, e.reason);
                r.finished_at_ms = Some(at);
            }
            DomainEvent::RolloutRolledBack(e) => {
                r.rolled_back_by = Some(RollbackLink {
                    rollout_id: e.rollback_id.clone(),
                    scope: e.scope,
                    automatic: e.automatic,
                    by: meta.actor.clone(),
                    at_ms: at,
                    reason: e.reason.clone(),
                });
            }
            _ => {}
        }
    }

    fn apply_site(&mut self, meta: &EventMeta, id: &str, event: &DomainEvent) {
        let site = self
            .sites
            .entry(id.to_string())
            .or_insert_with(|| SiteView {
                id: id.to_string(),
                ..SiteView::default()
            });
        match event {
            DomainEvent::AgentConnected(e) => {
                site.connected = true;
                site.agent_id = e.agent_id.clone();
                site.agent_version = e.agent_version.clone();
                site.timezone = e.timezone.clone();
                site.utc_offset_minutes = e.utc_offset_minutes;
                site.transports = e.transports.clone();
                site.connected_since_ms = meta.recorded_at_ms;
                site.peer = e.peer.clone();
            }
            DomainEvent::AgentDisconnected(e) => {
                site.connected = false;
                site.last_disconnect_reason = e.reason.clone();
            }
            _ => {}
        }
    }

    fn apply_access(&mut self, meta: &EventMeta, event: &DomainEvent) {
        match event {
            DomainEvent::TokenCreated(e) => {
                self.tokens.insert(
                    e.id.clone(),
                    TokenView {
                        id: e.id.clone(),
                        name: e.name.clone(),
                        role: e.role.clone(),
                        secret_hash: e.secret_hash.clone(),
                        expires_at_ms: e.expires_at_ms,
                        created_at_ms: meta.recorded_at_ms,
                        created_by: meta.actor.clone(),
                        revoked: false,
                    },
                );
            }
            DomainEvent::TokenRevoked(e) => {
                if let Some(t) = self.tokens.get_mut(&e.id) {
                    t.revoked = true;
                }
            }
            _ => {}
        }
    }

    /// Rollouts that are not completed or aborted and use this firmware.
    pub fn active_rollouts_using(&self, firmware_id: &str) -> Vec<String> {
        self.rollouts
            .values()
            .filter(|r| !r.state.is_terminal() && r.spec.uses_firmware(firmware_id))
            .map(|r| r.id.clone())
            .collect()
    }

    /// The device's task if it has not ended.
    pub fn active_task_of(&self, device_id: &str) -> Option<&TaskView> {
        let id = self
            .devices
            .get(device_id)
            .map(Box::as_ref)?
            .current_task
            .as_ref()?;
        self.tasks
            .get(id)
            .map(Box::as_ref)
            .filter(|t| !t.phase.is_terminal())
    }

    /// A task's error code or 0.
    pub fn error_code_of(task: &TaskView) -> Option<ErrorCode> {
        task.error.as_ref().map(|e| e.code)
    }
}

#[cfg(test)]
mod memory_probe_tests;

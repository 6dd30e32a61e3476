//! The rollout scheduler: what a running rollout should do next, decided from the fleet state
//! and `now` alone.
//!
//! [`reconcile`] is level-triggered and idempotent, like a kube controller's reconcile: it
//! ignores why it was called, looks at the rollout as the projection shows it, and returns the
//! events that move it one step further plus the time it wants to look again. Called twice on the
//! same state it returns the same decision; once the decision is recorded, calling it again does
//! not repeat it (tasks have ids derived from the rollout and the device, so a repeated creation
//! would be refused by the store anyway).
//!
//! # A rollout's life, step by step
//! ```text
//!  RolloutStarted (plan fixed)
//!     │
//!     ├─ batch check (unless skipped): BatchCheckStarted … DeviceChecked × n … BatchCheckCompleted
//!     │    (5019 devices are listed and stay in their stage; devices now on target or not fitting
//!     │     are excluded; an upgrade type "check" rollout completes here)
//!     ▼
//!  stage i: StageStarted (+ TaskCreated per device, StageDevicesExcluded for busy/removed ones)
//!     │   the dispatcher runs the tasks; every pass re-counts the stage:
//!     ├─ failures ≥ failure threshold ───────► StageFailed + RolloutPaused | RolloutAborted
//!     ├─ deadline passed ────────────────────► TaskFailed 5016 (timed out) for unfinished tasks
//!     ├─ success threshold met ──► StageSoaking ─(soak over, threshold still not crossed)─┐
//!     │                            (soak 0: straight on)                                  │
//!     │                                                                                   ▼
//!     │                                                                    StageSucceeded → stage i+1
//!     └─ every device ended, success threshold not met ──► StageFailed + pause | abort
//!  last stage succeeded and every task ended ──► RolloutCompleted (summary)
//! ```
//!
//! # Counting
//! - **Failures** are tasks that failed (4) or timed out (7), including timeouts recorded at the
//!   stage deadline. **Skips do not count** (battery too low, already on target, firmware does
//!   not fit: a precondition, not a sign that the firmware is bad), and neither do cancellations.
//! - The **failure threshold** is a count, or a percentage of the stage's devices (rounded up);
//!   unset it is 10 % of the stage's devices, at least 1 (so 1 for stages of up to 10 devices). A
//!   threshold of 0 is taken as 1: the first failure stops the stage.
//! - The **success threshold** is a count, or a percentage of the stage's *eligible* devices
//!   (neither skipped nor cancelled), capped at the eligible devices. Unset, it means "every
//!   eligible device has ended": a stage below its failure threshold advances once all its
//!   devices are done, even if some of them failed.
//! - After an operator **resumes** a stage that failed, the failures recorded until then are
//!   accepted: they no longer count against the failure threshold nor towards the success target.
//!   The stage is re-evaluated from its current counts and continues where it stopped.
//! - After a pass that did not stop the rollout, the rollout-wide checks, in order: the **abort
//!   criteria** (shares of the devices that *finished*, see [`super::abort`]), then the
//!   **failure budget** (a count over all targets). Either pauses (or, for a criterion with
//!   `action = abort`, aborts) instead of taking the step.
//! - A stop by a stage threshold, the failure budget or an abort criterion also records the
//!   **automatic rollback** when the spec asks for one (`rollback = "failed" | "all"`, or a
//!   criterion's `action = rollback`): `RolloutRolledBack` after the stop and the linked
//!   rollout's creation (started, unless approval is required) in the same append, at most once
//!   per rollout (see [`super::rollback`]).
//!
//! # Timers
//! - The **stage deadline** (`deadline_s`, sometimes called the stage's "batch-check timeout") runs
//!   from `StageStarted`; tasks of the stage that have not ended by then get
//!   `TaskFailed { timed_out, 5016, retry: none }`. Tasks that only wait (queued, held, waiting
//!   for wake-up) are thereby stopped; waiting-for-wake-up ones also get a `CancelCommand`.
//!   Transfers already running are not interrupted (cancelling mid-transfer is not safe): their
//!   late result is ignored, and the device's next inventory shows what it runs.
//! - **Soak** runs from `StageSoaking` to its `until_ms`.
//! - Both are stored in events and shifted by the time a rollout spent paused (see the
//!   projection), so after a restart or a resume they continue from the recorded times.
//!
//! # Maintenance window
//! A stage (and the batch check) starts only while the window is open at one or more of its
//! devices' sites; the dispatcher then releases each task only while its own site's window is
//! open. The deadline runs in wall time: choose it no longer than the window.
//!
//! # Upgrade types
//! Within a rollout, notify (0) and forced (2) both install: starting the rollout is the
//! operator's go-ahead. The type travels to the agent in each `UpdateCommand` (weak-signal
//! confirmations apply to both). Check (3) runs the batch check only and completes with what
//! it found; it creates no task.
//!
//! # Busy and removed devices
//! A device that already has an unfinished task when its stage starts (a single-device update,
//! an auto-upgrade, another rollout) is excluded from the stage with 5002, and a device its
//! site no longer reports is excluded with 5012 (`StageDevicesExcluded`), so no device ever has
//! two tasks at once and none is dropped silently.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::decision::Change;
use crate::events::streams;
use crate::events::{
    BatchCheckCompleted, BatchCheckStarted, DomainEvent, Exclusion, RolloutAborted,
    RolloutCompleted, RolloutPaused, StageDevicesExcluded, StageFailed, StageSoaking, StageStarted,
    StageSucceeded, TaskCancelled, TaskCreated, TaskFailed,
};
use crate::projection::Approval;
use crate::projection::{
    FleetState, RolloutState, RolloutView, StageState, StageView, Tally, TaskPhase, TaskView,
};
use crate::rollout::abort::{self, AbortAction, AbortOn, Finished};
use crate::rollout::approval;
use crate::rollout::plan::exclusion_reason;
use crate::rollout::rollback::{self, Ask, RollbackScope};
use crate::rollout::spec::{
    FailureAction, FailureBudget, OnAsleep, StageSpec, Threshold, UpgradeType,
};
use crate::rollout::window::{self, SiteZone};
use crate::status::{ErrorCode, TaskError, UpgradeStatus};
use crate::tasks::target_version;
use crate::time::UnixMillis;

/// How long after a batch check's deadline the scheduler looks again if the check has not
/// reported (it normally reports at its deadline at the latest).
pub const BATCH_CHECK_GRACE: Duration = Duration::from_secs(10);

/// A `CancelCommand` to send to a site once the decision is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    /// Site.
    pub site_id: String,
    /// Task.
    pub task_id: String,
    /// Why.
    pub reason: String,
}

/// What one reconcile decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconcile {
    /// Events for the rollout's stream, in order (record with the stream unchanged).
    pub rollout_events: Vec<DomainEvent>,
    /// Tasks to create (each on its own new stream).
    pub new_tasks: Vec<TaskCreated>,
    /// Events for existing tasks: `(task id, event)`.
    pub task_events: Vec<(String, DomainEvent)>,
    /// Cancel commands to send after recording.
    pub cancels: Vec<CancelOrder>,
    /// An automatic rollback this step records with the stop that triggered it: the linked
    /// rollout's id and events (its own new stream); `RolloutRolledBack` is in `rollout_events`.
    pub new_rollouts: Vec<(String, Vec<DomainEvent>)>,
    /// Look again at this time at the latest (events also trigger a look).
    pub requeue_at: Option<UnixMillis>,
}

impl Reconcile {
    /// Nothing to record.
    pub fn is_empty(&self) -> bool {
        self.rollout_events.is_empty()
            && self.new_tasks.is_empty()
            && self.task_events.is_empty()
            && self.new_rollouts.is_empty()
    }

    fn requeue(&mut self, at: UnixMillis) {
        self.requeue_at = Some(self.requeue_at.map_or(at, |t| t.min(at)));
    }

    /// The decision as changes to the log. Every write of a step depends on the rollout stream
    /// being as the step saw it (its events, or a guard when it has none): an abort or pause
    /// recorded meanwhile makes the whole step be decided again, so no task is created or
    /// changed for a rollout in a state the step did not see.
    pub fn changes(&self, rollout_id: &str) -> Vec<Change> {
        let mut out = Vec::new();
        if self.is_empty() {
            return out;
        }
        out.push(Change::unchanged(
            streams::rollout(rollout_id),
            self.rollout_events.clone(),
        ));
        for t in &self.new_tasks {
            out.push(Change::new_stream(
                streams::task(&t.task_id),
                vec![t.clone().into()],
            ));
        }
        for (task_id, e) in &self.task_events {
            out.push(Change::unchanged(streams::task(task_id), vec![e.clone()]));
        }
        for (id, events) in &self.new_rollouts {
            out.push(Change::new_stream(streams::rollout(id), events.clone()));
        }
        out
    }

    /// The batch check this decision starts, if any, with all its devices (also when they
    /// are split over several events).
    pub fn batch_check_started(&self) -> Option<BatchCheckStarted> {
        let started = self.rollout_events.iter().find_map(|e| match e {
            DomainEvent::BatchCheckStarted(b) => Some(b.clone()),
            _ => None,
        })?;
        Some(started.joined(&self.rollout_events))
    }
}

/// What [`reconcile`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The rollout.
    pub rollout: &'a RolloutView,
    /// Everything else.
    pub state: &'a FleetState,
    /// Now.
    pub now_ms: UnixMillis,
    /// A batch check of this rollout is running in this server process (its answers are being
    /// awaited). After a restart none is, and an unfinished check is started again.
    pub batch_check_in_flight: bool,
    /// Most tasks one step creates ([`MAX_NEW_TASKS_PER_STEP`]; tests lower it to exercise the
    /// steps that create the rest of a stage).
    pub max_new_tasks: usize,
    /// otad's `require_approval` setting: an automatic rollback then waits for a second
    /// person's approval before it starts (so does the rollback of a rollout that needed one).
    pub require_approval: bool,
}

// === ids ===

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The id of a device's task in a rollout. Derived, not random: a second creation for the same
/// device in the same rollout hits an existing stream and is refused by the store.
pub fn rollout_task_id(rollout_id: &str, device_id: &str) -> String {
    format!(
        "task-{}-{:016x}",
        rollout_id.strip_prefix("ro-").unwrap_or(rollout_id),
        fnv1a(device_id.as_bytes())
    )
}

/// The id of a device's auto-upgrade task to a firmware: at most one per device and firmware.
pub fn auto_task_id(device_id: &str, firmware_id: &str) -> String {
    format!(
        "task-auto-{:016x}",
        fnv1a(format!("{device_id}\n{firmware_id}").as_bytes())
    )
}

// === counting ===

/// Where the tasks of one stage are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Devices in the stage.
    pub devices: u32,
    /// Devices that have no task yet.
    pub without_task: u32,
    /// Tasks that have not ended (the asleep ones included).
    pub unfinished: u32,
    /// Unfinished tasks waiting for their device to wake up (status 5): never failures.
    pub asleep: u32,
    /// Succeeded (3) and healthy, or not health-checked.
    pub succeeded: u32,
    /// Wrote the target version, but the site cannot confirm the device's health (no API, and
    /// the spec does not accept reachability): ended, not a success.
    pub unconfirmed: u32,
    /// Failed (4).
    pub failed: u32,
    /// Timed out (7).
    pub timed_out: u32,
    /// Skipped by a precondition.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Failures accepted by an operator's resume.
    pub accepted_failures: u32,
}

impl StageCounts {
    /// Failures that count against the failure threshold.
    pub fn failures(&self) -> u32 {
        (self.failed + self.timed_out).saturating_sub(self.accepted_failures)
    }

    /// Devices the success threshold is measured against.
    pub fn eligible(&self) -> u32 {
        self.devices
            .saturating_sub(self.skipped + self.cancelled + self.accepted_failures)
    }

    /// Every device has a task and every task ended.
    pub fn all_ended(&self) -> bool {
        self.without_task == 0 && self.unfinished == 0
    }

    /// Every device has a task and every task ended, or only waits for its device to wake up.
    pub fn all_ended_but_asleep(&self) -> bool {
        self.without_task == 0 && self.unfinished == self.asleep
    }
}

fn rollout_task<'a>(r: &RolloutView, state: &'a FleetState, device: &str) -> Option<&'a TaskView> {
    r.tasks_by_device
        .get(device)
        .and_then(|id| state.tasks.get(id).map(Box::as_ref))
}

impl StageCounts {
    /// The counts of a stage of `devices` devices from its tally.
    pub fn from_tally(devices: usize, t: &Tally) -> StageCounts {
        StageCounts {
            devices: devices as u32,
            without_task: (devices as u32).saturating_sub(t.tasks),
            unfinished: t.unfinished(),
            asleep: t.phase(TaskPhase::WaitingForWakeup),
            succeeded: t.phase(TaskPhase::Succeeded).saturating_sub(t.unconfirmed),
            unconfirmed: t.unconfirmed,
            failed: t.phase(TaskPhase::Failed),
            timed_out: t.phase(TaskPhase::TimedOut),
            skipped: t.phase(TaskPhase::Skipped),
            cancelled: t.phase(TaskPhase::Cancelled),
            accepted_failures: t.accepted_failed + t.accepted_timed_out,
        }
    }
}

/// Counts the tasks of stage `index`, from the tally the projection keeps (O(1)).
pub fn stage_counts(r: &RolloutView, _state: &FleetState, index: usize) -> StageCounts {
    match r.stages.get(index) {
        Some(stage) => StageCounts::from_tally(stage.device_ids.len(), &stage.tally),
        None => StageCounts::default(),
    }
}

/// Counts the tasks of stage `index` by walking its devices: what [`stage_counts`] reads from
/// the tally, for tests that check the two agree.
pub fn stage_counts_walked(r: &RolloutView, state: &FleetState, index: usize) -> StageCounts {
    match r.stages.get(index) {
        Some(stage) => StageCounts::from_tally(
            stage.device_ids.len(),
            &Tally::of(
                stage
                    .device_ids
                    .iter()
                    .filter_map(|d| rollout_task(r, state, d)),
                stage.failures_accepted_at_ms,
            ),
        ),
        None => StageCounts::default(),
    }
}

/// Failures that stop a stage of `devices` devices.
pub fn failure_limit(stage: &StageSpec, devices: u32) -> u32 {
    stage
        .failure_threshold
        .unwrap_or(Threshold::Percent(10.0))
        .of(devices)
        .max(1)
}

fn describe_threshold(t: Threshold) -> String {
    match t {
        Threshold::Count(c) => format!("{c}"),
        Threshold::Percent(p) => format!("{p} %"),
    }
}

/// The outcome of counting a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The failure threshold is crossed, or the success threshold can no longer be met.
    Failed(String),
    /// The success threshold is met.
    SuccessMet,
    /// Keep going.
    Undecided,
}

/// Judges a stage from its counts. With `asleep_done`, devices waiting for a wake-up count as
/// ended for the stage (`on_asleep = "continue"`, or the stage's deadline has passed): the stage
/// can advance without them; they finish later.
pub fn verdict(stage: &StageSpec, c: &StageCounts, asleep_done: bool) -> Verdict {
    let ended = if asleep_done {
        c.all_ended_but_asleep()
    } else {
        c.all_ended()
    };
    let limit = failure_limit(stage, c.devices);
    let failures = c.failures();
    if failures >= limit {
        let accepted = if c.accepted_failures > 0 {
            format!(", {} earlier failure(s) accepted", c.accepted_failures)
        } else {
            String::new()
        };
        return Verdict::Failed(format!(
            "stage {}: {failures} failure(s) ≥ threshold {limit} ({} failed, {} timed out, of {} devices{accepted})",
            stage.name, c.failed, c.timed_out, c.devices
        ));
    }
    match stage.success_threshold {
        None => {
            if ended {
                Verdict::SuccessMet
            } else {
                Verdict::Undecided
            }
        }
        Some(t) => {
            // Devices the stage does not wait for are not measured either.
            let eligible = if asleep_done {
                c.eligible().saturating_sub(c.asleep)
            } else {
                c.eligible()
            };
            let needed = t.of(eligible).min(eligible);
            if c.succeeded >= needed {
                Verdict::SuccessMet
            } else if ended {
                let asleep = if asleep_done && c.asleep > 0 {
                    format!(", {} asleep not counted", c.asleep)
                } else {
                    String::new()
                };
                let unconfirmed = if c.unconfirmed > 0 {
                    format!(", {} unconfirmed not counted", c.unconfirmed)
                } else {
                    String::new()
                };
                Verdict::Failed(format!(
                    "stage {}: every device has ended but only {} succeeded, {needed} needed (success threshold {} of {eligible} eligible devices{asleep}{unconfirmed})",
                    stage.name,
                    c.succeeded,
                    describe_threshold(t)
                ))
            } else {
                Verdict::Undecided
            }
        }
    }
}

// === the reconcile ===

/// Distinct zones of the sites of `devices`, for this rollout.
fn zones<'a>(
    r: &RolloutView,
    state: &FleetState,
    devices: impl IntoIterator<Item = &'a String>,
) -> Vec<SiteZone> {
    let sites: BTreeSet<&str> = devices
        .into_iter()
        .filter_map(|d| crate::model::split_device_id(d).map(|(site, _)| site))
        .collect();
    let mut out: Vec<SiteZone> = Vec::new();
    for site in sites {
        let z = window::site_zone(state, Some(&r.spec), site);
        if !out.contains(&z) {
            out.push(z);
        }
    }
    out
}

/// Whether the window (if any) is open in one or more of these zones; else when it next opens.
fn window_gate(
    r: &RolloutView,
    zones: &[SiteZone],
    now: UnixMillis,
) -> Result<(), Option<UnixMillis>> {
    let Some(w) = &r.spec.window else {
        return Ok(());
    };
    if zones.is_empty() || zones.iter().any(|z| window::is_open(w, *z, now)) {
        return Ok(());
    }
    Err(zones
        .iter()
        .filter_map(|z| window::next_open(w, *z, now))
        .min())
}

/// The rollout-wide failure budget in devices (`None`: off), resolved against today's plan.
pub fn failure_budget(r: &RolloutView) -> Option<u32> {
    let targets: u32 = r.stages.iter().map(|s| s.device_ids.len() as u32).sum();
    match r.spec.failure_budget {
        FailureBudget::Off => None,
        FailureBudget::Limit(t) => Some(t.of(targets).max(1)),
        FailureBudget::Default => {
            let largest_stage_limit = r
                .stages
                .iter()
                .zip(&r.spec.stages)
                .map(|(s, spec)| failure_limit(spec, s.device_ids.len() as u32))
                .max()
                .unwrap_or(1);
            Some(
                Threshold::Percent(10.0)
                    .of(targets)
                    .max(largest_stage_limit)
                    .max(1),
            )
        }
    }
}

/// Failures across the rollout that count against its budget: failed or timed-out tasks of
/// every stage (stragglers of finished stages included), except those an operator accepted by
/// resuming after they ended.
pub fn budget_failures(r: &RolloutView, _state: &FleetState) -> u32 {
    Finished::from_tally(&r.tally).matching(AbortOn::Any)
}

fn all_stage_devices(r: &RolloutView) -> Vec<String> {
    r.stages
        .iter()
        .flat_map(|s| s.device_ids.iter().cloned())
        .collect()
}

/// Decides the next step of a rollout. See the module documentation.
///
/// After the steps, the rollout-wide failure budget: when the failures across the rollout
/// (stragglers of finished stages included) reach it and the step itself did not stop or end the
/// rollout (a stage's own threshold, with its own action, goes first), the rollout pauses instead
/// of taking the step.
pub fn reconcile(input: Input<'_>) -> Reconcile {
    let out = steps(input);
    let r = input.rollout;
    if r.state != RolloutState::Running {
        return out;
    }
    let stops = out.rollout_events.iter().any(|e| {
        matches!(
            e,
            DomainEvent::StageFailed(_)
                | DomainEvent::RolloutPaused(_)
                | DomainEvent::RolloutAborted(_)
                | DomainEvent::RolloutCompleted(_)
        )
    });
    if stops {
        let mut out = out;
        if out
            .rollout_events
            .iter()
            .any(|e| matches!(e, DomainEvent::StageFailed(_)))
        {
            auto_rollback(input, r.spec.rollback, &mut out);
        }
        return out;
    }
    if let Some(mut stop) = abort_criteria_step(r, input.state) {
        let scope = match (stop.rollback, r.spec.rollback) {
            (true, RollbackScope::None) => RollbackScope::Failed,
            (_, scope) => scope,
        };
        auto_rollback(input, scope, &mut stop.decision);
        return stop.decision;
    }
    if let Some(budget) = failure_budget(r) {
        let failures = budget_failures(r, input.state);
        if failures >= budget {
            let mut paused = Reconcile::default();
            paused.rollout_events.push(
                RolloutPaused {
                    reason: format!(
                        "failure budget: {failures} device(s) failed or timed out across the rollout ≥ budget {budget}; resume to accept them and go on"
                    ),
                    automatic: true,
                }
                .into(),
            );
            auto_rollback(input, r.spec.rollback, &mut paused);
            return paused;
        }
    }
    out
}

/// The automatic rollback (see [`super::rollback`]) of a step that stops the rollout by its
/// thresholds or criteria, recorded with the stop: `RolloutRolledBack` on this rollout's stream
/// and the linked rollout on its own, in the same append. Nothing when `scope` is none, the
/// rollout was rolled back already, or no device is to be reverted.
fn auto_rollback(input: Input<'_>, scope: RollbackScope, out: &mut Reconcile) {
    if scope == RollbackScope::None {
        return;
    }
    let r = input.rollout;
    let stop = out.rollout_events.iter().rev().find_map(|e| match e {
        DomainEvent::RolloutPaused(p) => Some(&p.reason),
        DomainEvent::RolloutAborted(a) => Some(&a.reason),
        _ => None,
    });
    let Some(stop) = stop else {
        return;
    };
    let approval = approval::required(input.require_approval, r.approval != Approval::NotRequired);
    let ask = Ask {
        scope,
        automatic: true,
        reason: format!("rollout {} stopped: {stop}", r.id),
        approval,
        start: true,
    };
    if let Ok(rb) = rollback::rollback(r, input.state, ask) {
        out.rollout_events.push(rb.marker.into());
        out.new_rollouts.push((rb.id, rb.events));
    }
}

/// What a tripped abort criterion decided, and whether its action asks for a rollback.
struct CriterionStop {
    decision: Reconcile,
    rollback: bool,
}

/// The rollout's abort criteria over its finished devices (see [`super::abort`]): the first
/// that trips pauses or aborts (and maybe rolls back) the rollout instead of the step.
fn abort_criteria_step(r: &RolloutView, state: &FleetState) -> Option<CriterionStop> {
    if r.spec.abort_criteria.is_empty() {
        return None;
    }
    let finished = Finished::from_tally(&r.tally);
    let tripped = abort::tripped(&r.spec.abort_criteria, &finished)?;
    let decision = match tripped.action {
        AbortAction::Pause => {
            let mut paused = Reconcile::default();
            paused.rollout_events.push(
                RolloutPaused {
                    reason: format!("{}; resume to accept them and go on", tripped.reason),
                    automatic: true,
                }
                .into(),
            );
            paused
        }
        AbortAction::Abort | AbortAction::Rollback => abort(r, state, &tripped.reason, true),
    };
    Some(CriterionStop {
        decision,
        rollback: tripped.action == AbortAction::Rollback,
    })
}

/// The steps in order; the first one that decides something ends the pass.
fn steps(input: Input<'_>) -> Reconcile {
    let mut out = Reconcile::default();
    if input.rollout.state != RolloutState::Running {
        return out;
    }
    if batch_check_step(input, &mut out).is_break() || stage_deadlines(input, &mut out).is_break() {
        return out;
    }
    current_stage_step(input, &mut out);
    out
}

/// What a step function tells [`steps`]: stop here (`Break`) or go on to the next step.
type Step = std::ops::ControlFlow<()>;
const DONE: Step = Step::Break(());
const GO_ON: Step = Step::Continue(());

/// Step 1: the batch check before the first stage (and all a "check" rollout does).
fn batch_check_step(input: Input<'_>, out: &mut Reconcile) -> Step {
    let Input {
        rollout: r,
        state,
        now_ms: now,
        batch_check_in_flight,
        ..
    } = input;
    let check_only = r.spec.upgrade_type == UpgradeType::Check;
    if !(r.spec.batch_check || check_only) {
        return GO_ON;
    }
    let completed = r.batch_check.as_ref().is_some_and(|b| b.completed);
    if completed {
        if check_only {
            out.rollout_events.push(
                RolloutCompleted {
                    summary: check_summary(r, state),
                }
                .into(),
            );
            return DONE;
        }
        return GO_ON;
    }
    if let (Some(bc), true) = (&r.batch_check, batch_check_in_flight) {
        out.requeue(bc.deadline_at_ms + BATCH_CHECK_GRACE);
        return DONE;
    }
    let targets = all_stage_devices(r);
    if !check_only && let Err(next) = window_gate(r, &zones(r, state, &targets), now) {
        if let Some(at) = next {
            out.requeue(at);
        }
        return DONE;
    }
    let check_id = format!("chk-{}-{now}", r.id);
    out.rollout_events.extend(
        BatchCheckStarted {
            check_id: check_id.clone(),
            device_ids: targets.clone(),
            deadline_at_ms: now.plus_secs(u64::from(r.spec.batch_check_timeout_s)),
        }
        .into_events(),
    );
    if targets.is_empty() {
        out.rollout_events.push(
            BatchCheckCompleted {
                check_id,
                timed_out: Vec::new(),
                excluded: Vec::new(),
            }
            .into(),
        );
    } else {
        out.requeue(now.plus_secs(u64::from(r.spec.batch_check_timeout_s)));
    }
    DONE
}

/// Step 2: stage deadlines. Unfinished tasks of every started stage time out — except those
/// asleep (waiting for a wake-up): they are not failures, they finish later within their
/// wake-up budget, and the stage goes on without them. When any timed out, the pass ends here
/// and the next one re-counts with the timeouts recorded.
fn stage_deadlines(input: Input<'_>, out: &mut Reconcile) -> Step {
    let Input {
        rollout: r,
        state,
        now_ms: now,
        ..
    } = input;
    for (index, stage) in r.stages.iter().enumerate() {
        if !matches!(
            stage.state,
            StageState::Running | StageState::Soaking | StageState::Succeeded
        ) {
            continue;
        }
        let Some(deadline) = stage.deadline_at_ms else {
            continue;
        };
        // From the tally: nothing to time out, or not yet — no need to look at the devices.
        let t = &stage.tally;
        if t.unfinished() == t.phase(TaskPhase::WaitingForWakeup) {
            continue;
        }
        if deadline > now {
            out.requeue(deadline);
            continue;
        }
        let unfinished: Vec<&TaskView> = stage
            .device_ids
            .iter()
            .filter_map(|d| rollout_task(r, state, d))
            .filter(|t| !t.phase.is_terminal() && !t.phase.is_asleep())
            .collect();
        let deadline_s = r.spec.stages.get(index).map_or(0, |s| s.deadline_s);
        for t in unfinished {
            if out.task_events.len() >= MAX_TASK_EVENTS_PER_STEP {
                // One append holds a bounded number of events: the next step ends the rest.
                out.requeue(now);
                break;
            }
            time_out_task(stage, deadline_s, t, out);
        }
    }
    if out.task_events.is_empty() {
        GO_ON
    } else {
        DONE
    }
}

/// A task that was still unfinished at its stage's deadline: failed (timed out), and cancelled
/// at its site when that is still safe.
fn time_out_task(stage: &StageView, deadline_s: u32, t: &TaskView, out: &mut Reconcile) {
    let reason = format!(
        "stage {} deadline ({} s after the stage started) passed while the task was {}",
        stage.name,
        deadline_s,
        t.phase.name()
    );
    out.task_events.push((
        t.created.task_id.clone(),
        TaskFailed {
            attempt: t.attempt,
            error: TaskError::new(ErrorCode::Timeout, reason.clone()),
            timed_out: true,
            retry_at_ms: None,
            source: None,
        }
        .into(),
    ));
    if t.phase.is_at_site() && t.phase.is_cancellable() {
        // The agent stops what it can stop safely (before the first byte). A transfer
        // already running is not interrupted: it finishes, and its success still counts
        // (late).
        out.cancels.push(CancelOrder {
            site_id: t.created.site_id.clone(),
            task_id: t.created.task_id.clone(),
            reason,
        });
    }
}

/// Step 3: the first stage that has not succeeded moves on by its state; when every stage
/// succeeded, the rollout completes once its stragglers have ended.
fn current_stage_step(input: Input<'_>, out: &mut Reconcile) {
    let Input {
        rollout: r, state, ..
    } = input;
    let Some(index) = r
        .stages
        .iter()
        .position(|s| s.state != StageState::Succeeded)
    else {
        if r.tally.unfinished() == 0 {
            out.rollout_events.push(
                RolloutCompleted {
                    summary: summary(r, state),
                }
                .into(),
            );
        }
        return;
    };
    // The plan has one stage per spec stage; a log that disagrees is not acted on.
    let Some(spec) = r.spec.stages.get(index) else {
        return;
    };
    let step = StageStep {
        r,
        state,
        now: input.now_ms,
        max_new_tasks: input.max_new_tasks,
        index,
        idx: index as u32,
        stage: &r.stages[index],
        spec,
    };
    match step.stage.state {
        StageState::Pending => start_stage(&step, out),
        StageState::Running | StageState::Failed => run_stage(&step, out),
        StageState::Soaking => soak_stage(&step, out),
        StageState::Succeeded => {}
    }
}

/// The current stage, for the step that moves it on.
struct StageStep<'a> {
    r: &'a RolloutView,
    state: &'a FleetState,
    /// Now, Unix ms.
    now: UnixMillis,
    /// See [`Input::max_new_tasks`].
    max_new_tasks: usize,
    /// The stage's index, as a position and as events carry it.
    index: usize,
    idx: u32,
    stage: &'a StageView,
    spec: &'a StageSpec,
}

impl StageStep<'_> {
    /// Creates the stage's missing tasks; see [`ensure_tasks`].
    fn ensure_tasks(&self, out: &mut Reconcile) -> usize {
        ensure_tasks(
            self.r,
            self.state,
            self.index,
            self.now,
            self.max_new_tasks,
            out,
        )
    }
}

/// A pending stage starts once its window is open (at one or more of its devices' sites) and
/// creates its tasks.
fn start_stage(s: &StageStep<'_>, out: &mut Reconcile) {
    let (now, deadline_s) = (s.now, s.spec.deadline_s);
    if !s.stage.device_ids.is_empty()
        && let Err(next) = window_gate(s.r, &zones(s.r, s.state, &s.stage.device_ids), now)
    {
        if let Some(at) = next {
            out.requeue(at);
        }
        return;
    }
    out.rollout_events.push(
        StageStarted {
            index: s.idx,
            deadline_at_ms: (deadline_s > 0).then(|| now.plus_secs(u64::from(deadline_s))),
        }
        .into(),
    );
    let remaining = s.ensure_tasks(out);
    if remaining == 0 {
        out.rollout_events
            .push(StageSucceeded { index: s.idx }.into());
    } else if deadline_s > 0 {
        out.requeue(now.plus_secs(u64::from(deadline_s)));
    }
}

/// A running stage (or one resumed after it failed): first the rest of its tasks, then its
/// verdict — fail, soak, succeed, or wait.
fn run_stage(s: &StageStep<'_>, out: &mut Reconcile) {
    let before = out.rollout_events.len() + out.new_tasks.len();
    s.ensure_tasks(out);
    if out.rollout_events.len() + out.new_tasks.len() != before {
        return;
    }
    let counts = stage_counts(s.r, s.state, s.index);
    match verdict(s.spec, &counts, asleep_done(s.r, s.stage, s.now)) {
        Verdict::Failed(reason) => fail_stage(s.r, s.state, s.idx, s.spec, reason, out),
        Verdict::SuccessMet if s.spec.soak_s > 0 => {
            let until = s.now.plus_secs(u64::from(s.spec.soak_s));
            out.rollout_events.push(
                StageSoaking {
                    index: s.idx,
                    until_ms: until,
                }
                .into(),
            );
            out.requeue(until);
        }
        Verdict::SuccessMet => out
            .rollout_events
            .push(StageSucceeded { index: s.idx }.into()),
        Verdict::Undecided => requeue_window(s.r, s.state, s.index, s.now, out),
    }
}

/// A soaking stage fails when its failures cross the threshold meanwhile, else succeeds when
/// the soak is over.
fn soak_stage(s: &StageStep<'_>, out: &mut Reconcile) {
    let counts = stage_counts(s.r, s.state, s.index);
    let limit = failure_limit(s.spec, counts.devices);
    if counts.failures() >= limit {
        let reason = match verdict(s.spec, &counts, asleep_done(s.r, s.stage, s.now)) {
            Verdict::Failed(reason) => format!("{reason}, while soaking"),
            _ => format!(
                "stage {}: {} failure(s) ≥ threshold {limit} while soaking",
                s.stage.name,
                counts.failures()
            ),
        };
        fail_stage(s.r, s.state, s.idx, s.spec, reason, out);
        return;
    }
    match s.stage.soak_until_ms {
        Some(until) if until > s.now => {
            out.requeue(until);
            requeue_window(s.r, s.state, s.index, s.now, out);
        }
        _ => out
            .rollout_events
            .push(StageSucceeded { index: s.idx }.into()),
    }
}

/// While tasks of the stage wait for a window, look again when a window opens or closes so the
/// dispatcher is nudged on time.
fn requeue_window(
    r: &RolloutView,
    state: &FleetState,
    index: usize,
    now: UnixMillis,
    out: &mut Reconcile,
) {
    let Some(w) = &r.spec.window else {
        return;
    };
    for z in zones(r, state, &r.stages[index].device_ids) {
        if let Some(at) = window::next_change(w, z, now) {
            out.requeue(at);
        }
    }
}

/// Whether a stage no longer waits for its devices that sleep: the spec says so
/// (`on_asleep = "continue"`), or the stage's deadline has passed.
fn asleep_done(r: &RolloutView, stage: &StageView, now: UnixMillis) -> bool {
    r.spec.on_asleep == OnAsleep::Continue || stage.deadline_at_ms.is_some_and(|d| d <= now)
}

/// At most this many tasks are created by one step. A step is one append to the log, which holds
/// at most 65,536 events; a larger stage gets its tasks over several steps (each step creates
/// the ones still missing), so a stage of any size starts.
pub const MAX_NEW_TASKS_PER_STEP: usize = 10_000;

/// At most this many existing tasks are ended (timed out at a stage deadline) by one step, for
/// the same reason; the next step ends the rest.
pub const MAX_TASK_EVENTS_PER_STEP: usize = 30_000;

/// Creates the missing tasks of a started stage, excluding busy and removed devices, at most
/// [`MAX_NEW_TASKS_PER_STEP`] per step (with a requeue at `now` for the rest). Returns the number
/// of devices that have (or now or soon get) a task.
fn ensure_tasks(
    r: &RolloutView,
    state: &FleetState,
    index: usize,
    now: UnixMillis,
    max_new_tasks: usize,
    out: &mut Reconcile,
) -> usize {
    let stage = &r.stages[index];
    if stage.tally.tasks as usize >= stage.device_ids.len() {
        // Every device has its task (the tally counts them): nothing to create or exclude.
        return stage.device_ids.len();
    }
    let mut excluded = Vec::new();
    let mut with_task = 0usize;
    let mut missing_firmware: Option<&str> = None;
    for device_id in &stage.device_ids {
        if r.tasks_by_device.contains_key(device_id) {
            with_task += 1;
            continue;
        }
        let device = state.devices.get(device_id).map(Box::as_ref);
        let why = match device {
            None => Some((
                ErrorCode::Offline,
                "no site reports this device any more".to_string(),
            )),
            Some(d) if d.removed => Some((
                ErrorCode::Offline,
                "its site no longer reports this device".to_string(),
            )),
            Some(d) => state.active_task_of(&d.id).map(|t| {
                let owner = match (&t.created.rollout_id, t.created.auto) {
                    (_, true) => "an auto-upgrade".to_string(),
                    (Some(other), false) => format!("rollout {other}"),
                    (None, false) => "a single-device update".to_string(),
                };
                (
                    ErrorCode::OneAtATime,
                    format!(
                        "the device already has task {} ({}, from {owner}): one update at a time, so this rollout leaves it alone",
                        t.created.task_id,
                        t.phase.name()
                    ),
                )
            }),
        };
        if let Some((code, reason)) = why {
            excluded.push(Exclusion {
                device_id: device_id.clone(),
                code,
                reason,
            });
            continue;
        }
        let firmware_id = r.spec.firmware_for(device_id);
        let fw = state.firmware.get(firmware_id).map(|f| &f.registered);
        if fw.is_none() {
            missing_firmware.get_or_insert(firmware_id);
        }
        let (Some(d), Some(fw)) = (device, fw) else {
            continue;
        };
        let (from, from_firmware_id) = rollback::before_update(state, &d.facts);
        with_task += 1;
        if out.new_tasks.len() >= max_new_tasks.max(1) {
            // The next step creates it.
            out.requeue(now);
            continue;
        }
        let spec = &r.spec;
        out.new_tasks.push(TaskCreated {
            task_id: rollout_task_id(&r.id, device_id),
            device_id: device_id.clone(),
            site_id: d.site_id.clone(),
            rollout_id: Some(r.id.clone()),
            stage: index as u32,
            firmware_id: fw.id.clone(),
            target: target_version(fw),
            upgrade_type: spec.upgrade_type,
            downgrade: spec.allow_downgrade,
            max_attempts: spec.retry.max_attempts,
            initial_backoff_s: spec.retry.initial_backoff_s,
            max_backoff_s: spec.retry.max_backoff_s,
            timeout_s: spec.device_timeout_s,
            flash_offset: None,
            auto: false,
            wake_timeout_s: spec.wake_timeout_s,
            from,
            from_firmware_id,
        });
    }
    if let Some(missing) = missing_firmware {
        // The firmware vanished from the catalog (deletion is refused while a rollout uses it,
        // so this is damage): stop rather than guess.
        out.new_tasks.clear();
        out.rollout_events.push(
            RolloutPaused {
                reason: format!(
                    "firmware {missing} is no longer in the catalog: no task can be created"
                ),
                automatic: true,
            }
            .into(),
        );
        return usize::MAX;
    }
    if !excluded.is_empty() {
        out.rollout_events.extend(
            StageDevicesExcluded {
                index: index as u32,
                excluded,
            }
            .into_events(),
        );
    }
    with_task
}

fn fail_stage(
    r: &RolloutView,
    state: &FleetState,
    index: u32,
    spec: &StageSpec,
    reason: String,
    out: &mut Reconcile,
) {
    out.rollout_events.push(
        StageFailed {
            index,
            reason: reason.clone(),
        }
        .into(),
    );
    match spec.on_failure {
        FailureAction::Pause => out.rollout_events.push(
            RolloutPaused {
                reason,
                automatic: true,
            }
            .into(),
        ),
        FailureAction::Abort => {
            let abort = abort(r, state, &reason, true);
            out.rollout_events.extend(abort.rollout_events);
            out.task_events.extend(abort.task_events);
            out.cancels.extend(abort.cancels);
        }
    }
}

/// Aborting a rollout: `RolloutAborted`, and every task of it that is safe to cancel — queued,
/// held, waiting for a wake-up or the site's slot, or still being prepared by the agent
/// (downloading, connecting) — is cancelled; those its site has also get a `CancelCommand` (the
/// agent stops before the first byte reaches the device; if it was too late, it reports the real
/// outcome and a success still counts). Running transfers are left to finish and report.
pub fn abort(r: &RolloutView, state: &FleetState, reason: &str, automatic: bool) -> Reconcile {
    let mut out = Reconcile::default();
    out.rollout_events.push(
        RolloutAborted {
            reason: reason.to_string(),
            automatic,
        }
        .into(),
    );
    let mut tasks: Vec<&TaskView> = r
        .tasks_by_device
        .values()
        .filter_map(|id| state.tasks.get(id).map(Box::as_ref))
        .filter(|t| !t.phase.is_terminal() && t.phase.is_cancellable())
        .collect();
    tasks.sort_by(|a, b| a.created.task_id.cmp(&b.created.task_id));
    let why = format!("rollout {} aborted: {reason}", r.id);
    for t in tasks {
        out.task_events.push((
            t.created.task_id.clone(),
            TaskCancelled {
                reason: why.clone(),
            }
            .into(),
        ));
        if t.phase.is_at_site() {
            out.cancels.push(CancelOrder {
                site_id: t.created.site_id.clone(),
                task_id: t.created.task_id.clone(),
                reason: why.clone(),
            });
        }
    }
    out
}

/// What the batch check found: devices that did not answer (5019) are listed; devices whose
/// fresh answer shows they no longer need or take the firmware, and devices their site no
/// longer reports, are excluded. Reads the `DeviceChecked` events of `check_id` from the state.
pub fn batch_check_completed(
    r: &RolloutView,
    state: &FleetState,
    check_id: &str,
) -> BatchCheckCompleted {
    let mut timed_out = Vec::new();
    let mut excluded = Vec::new();
    let devices = r
        .batch_check
        .as_ref()
        .filter(|b| b.check_id == check_id)
        .map(|b| b.device_ids.clone())
        .unwrap_or_else(|| all_stage_devices(r));
    for id in &devices {
        let Some(d) = state.devices.get(id).map(Box::as_ref) else {
            excluded.push(Exclusion {
                device_id: id.clone(),
                code: ErrorCode::Offline,
                reason: "no site reports this device any more".into(),
            });
            continue;
        };
        let answer = d
            .last_check
            .as_ref()
            .map(|(c, _)| c)
            .filter(|c| c.check_id == check_id);
        if answer
            .and_then(|c| c.error.as_ref())
            .is_some_and(|e| e.code == ErrorCode::BulkCheckTimeout)
        {
            timed_out.push(id.clone());
        }
        if r.spec.upgrade_type == UpgradeType::Check {
            continue;
        }
        let firmware_id = r.spec.firmware_for(id);
        let why = match state.firmware.get(firmware_id) {
            Some(fw) => exclusion_reason(&r.spec, &fw.registered, d),
            None => Some((
                ErrorCode::NoFirmware,
                format!("firmware {firmware_id} is not in the catalog"),
            )),
        };
        if let Some((code, reason)) = why {
            excluded.push(Exclusion {
                device_id: id.clone(),
                code,
                reason: format!("batch check: {reason}"),
            });
        }
    }
    BatchCheckCompleted {
        check_id: check_id.to_string(),
        timed_out,
        excluded,
    }
}

/// "10 devices: 8 updated, 1 skipped, 1 failed, 0 timed out, 0 cancelled; 3 excluded; 1 did not
/// answer the batch check (5019)".
pub fn summary(r: &RolloutView, state: &FleetState) -> String {
    let mut c = StageCounts::default();
    for i in 0..r.stages.len() {
        let s = stage_counts(r, state, i);
        c.devices += s.devices;
        c.succeeded += s.succeeded;
        c.failed += s.failed;
        c.timed_out += s.timed_out;
        c.skipped += s.skipped;
        c.cancelled += s.cancelled;
    }
    let mut out = format!(
        "{} devices: {} updated, {} skipped, {} failed, {} timed out, {} cancelled",
        c.devices, c.succeeded, c.skipped, c.failed, c.timed_out, c.cancelled
    );
    if !r.exclusions.is_empty() {
        out.push_str(&format!("; {} excluded", r.exclusions.len()));
    }
    let no_answer = r.batch_check.as_ref().map_or(0, |b| b.timed_out.len());
    if no_answer > 0 {
        out.push_str(&format!(
            "; {no_answer} did not answer the batch check (5019)"
        ));
    }
    out
}

/// The outcome of a check-only rollout.
pub fn check_summary(r: &RolloutView, state: &FleetState) -> String {
    let Some(bc) = &r.batch_check else {
        return "check only: nothing was checked".into();
    };
    let (mut available, mut current, mut no_answer, mut failed) = (0, 0, 0, 0);
    for id in &bc.device_ids {
        let answer = state
            .devices
            .get(id)
            .and_then(|d| d.last_check.as_ref())
            .map(|(c, _)| c)
            .filter(|c| c.check_id == bc.check_id);
        match answer {
            Some(c) if c.error.as_ref().map(|e| e.code) == Some(ErrorCode::BulkCheckTimeout) => {
                no_answer += 1
            }
            Some(c) if c.error.is_some() => failed += 1,
            Some(c) if c.status == UpgradeStatus::Available => available += 1,
            Some(_) => current += 1,
            None => failed += 1,
        }
    }
    format!(
        "check only, nothing installed: {} checked: {available} can take the firmware, {current} need nothing, {no_answer} did not answer (5019), {failed} could not be checked; {} excluded at planning",
        bc.device_ids.len(),
        r.exclusions.len()
    )
}

#[cfg(test)]
mod tests;

//! The dispatch decision: for every unfinished task, what should happen now.
//!
//! [`decide`] is the pure core of otad's dispatcher loop (`server/src/dispatch.rs`), in the style
//! of [`crate::rollout::scheduler::reconcile`]: the fleet state, `now`, which sites have an agent
//! connected and a little memory of probes in; the events to record, the commands to send once
//! they are durable, and the time to look again out. Called twice on the same input it decides
//! the same; once its decision is recorded, calling it again does not repeat it.
//!
//! # Per task, in order
//! 1. **At its site, past the budget of its phase** → `TaskFailed` 5016 (status 7) and a cancel
//!    to the agent. The budgets are phases of the attempt (see [`crate::projection::TaskView`]):
//!    the *transfer budget* runs from dispatch while the site prepares and restarts with the
//!    transfer (first progress 2 or 6); the *wake-up budget* (7 days by default) runs while the
//!    site waits for a sleepy device to wake up (5) or for its network's update slot (13). A
//!    success the site reports after such a timeout still turns the task into a success (late).
//! 2. **Waiting** (queued, or held and not waiting for a person) and due → released by its
//!    rollout (running, its stage started, the maintenance window open in the site's zone)? →
//!    **fleet-wide limits**: per site, per zigbee2mqtt network and per ESPHome site across every
//!    rollout and single update, plus its rollout's own global limit; a single update that must
//!    wait says so once (`TaskHeld` 5002 "queued behind task … on network …") → its
//!    rollout's **rate** for a first dispatch (`crate::rollout::rate`: starts in the last
//!    minute, from the log; when none is left, look again when the next slot opens) →
//!    preflight (`crate::tasks::preflight`) → dispatch, hold or skip.
//! 3. **Held because the device is unreachable** (5012) → a `Probe` command to its agent now,
//!    then again after 2 s, 4 s, … up to 5 minutes, so the update starts as soon as the device
//!    answers (the agent reports it reachable; that event wakes the dispatcher).
//!
//! Tasks waiting for a wake-up or for their site's slot hold no slot of their network: a
//! sleeping battery remote never blocks the other devices of its zigbee2mqtt network.
//!
//! # Airtight against pause and abort
//! Every change to a rollout's task carries a guard on the rollout's stream
//! ([`crate::decision::Change::guard`]): a dispatch decided before a pause or an abort was
//! recorded is refused by the store and decided again, so nothing is dispatched for a rollout
//! once its pause or abort is durable.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::decision::{Change, ensure_guard};
use crate::events::{TaskDispatched, TaskFailed, TaskHeld, TaskSkipped, streams};
use crate::model::Transport;
use crate::projection::{
    FleetState, RolloutState, StageState, TaskPhase, TaskView, effective_timeout_s,
    effective_wake_timeout_s,
};
use crate::rollout::rate::{self, Allowance};
use crate::rollout::spec::{Concurrency, Preconditions};
use crate::rollout::window;
use crate::status::{ErrorCode, TaskError};
use crate::tasks::{Preflight, PreflightInput, preflight};
use crate::time::UnixMillis;

/// First probe interval for a device a task waits for.
pub const PROBE_FIRST: Duration = Duration::from_secs(2);
/// Longest probe interval (an agent's default inventory interval).
pub const PROBE_MAX: Duration = Duration::from_secs(300);

/// A command for an agent, decided by [`decide`]; the server turns it into the wire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send the task's current attempt.
    Update {
        /// Site.
        site_id: String,
        /// Task.
        task_id: String,
        /// Attempt.
        attempt: u32,
        /// Command id (recorded in `TaskDispatched`).
        command_id: u64,
        /// Scheduled for a sleepy device's wake-up.
        schedule: bool,
    },
    /// Stop the task where it is safe to stop.
    Cancel {
        /// Site.
        site_id: String,
        /// Task.
        task_id: String,
        /// Attempt.
        attempt: u32,
        /// Command id.
        command_id: u64,
        /// Why.
        reason: String,
    },
    /// Look at these devices now and report what is found.
    Probe {
        /// Site.
        site_id: String,
        /// Local ids of the devices.
        device_local_ids: Vec<String>,
        /// Command id.
        command_id: u64,
    },
}

/// When each device a task waits for was last probed, and how often in a row. Memory of the
/// dispatcher loop, not of the log: probes are hints, and after a restart the first pass simply
/// probes again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeMemory {
    last: HashMap<String, (UnixMillis, u32)>,
}

impl ProbeMemory {
    /// When the next probe of `device_id` is due, if it was probed before.
    pub fn next_due(&self, device_id: &str) -> Option<UnixMillis> {
        self.last
            .get(device_id)
            .map(|(at, n)| *at + probe_interval(*n))
    }

    /// Devices remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// The interval after the `n`-th probe in a row (1-based): 2 s, 4 s, 8 s, … up to 5 minutes.
pub fn probe_interval(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(20);
    (PROBE_FIRST * (1 << doublings)).min(PROBE_MAX)
}

/// What [`decide`] looks at.
pub struct DispatchInput<'a> {
    /// The fleet.
    pub state: &'a FleetState,
    /// Now.
    pub now_ms: UnixMillis,
    /// Whether a site has an agent session now.
    pub connected: &'a dyn Fn(&str) -> bool,
    /// A fresh command id per call.
    pub next_command_id: &'a dyn Fn() -> u64,
    /// The probes sent so far.
    pub probes: &'a ProbeMemory,
}

impl std::fmt::Debug for DispatchInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchInput")
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

/// What [`decide`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DispatchDecision {
    /// Record these first (one atomic append).
    pub changes: Vec<Change>,
    /// Then send these.
    pub commands: Vec<Command>,
    /// Look again at this time at the latest (events also trigger a look).
    pub next_due_ms: Option<UnixMillis>,
    /// The probe memory once the decision is recorded.
    pub probes: ProbeMemory,
}

/// Most task events one decision records: it is one append, and an append holds a bounded
/// number of events. A pass that reaches it stops there and asks to run again at once; the next
/// pass takes the tasks that are left, in the same order.
pub const MAX_TASK_EVENTS_PER_PASS: usize = 30_000;

impl DispatchDecision {
    /// The decision holds as many task events as one append may; the rest waits for the next
    /// pass, due now.
    fn is_full(&mut self, now: UnixMillis) -> bool {
        // One event per change (guards have none): the count of changes bounds the events.
        let full = self.changes.len() >= MAX_TASK_EVENTS_PER_PASS;
        if full {
            self.next_due_ms = Some(now);
        }
        full
    }

    fn due(&mut self, at: UnixMillis, now: UnixMillis) {
        if at > now {
            self.next_due_ms = Some(self.next_due_ms.map_or(at, |d| d.min(at)));
        }
    }
}

/// The limits of a task: its rollout's, or the defaults (no global limit) for single updates.
fn single_update_limits() -> Concurrency {
    Concurrency {
        global: u32::MAX,
        ..Concurrency::default()
    }
}

/// Whether a task's rollout lets it go now, and under which limits: the rollout runs and the
/// task's stage has started (running, soaking, or succeeded with stragglers still to go) — or,
/// for an auto-upgrade task, its source rollout completed — and the rollout's maintenance window
/// is open in the task's site's zone. Single updates go any time, under the default limits.
pub fn released_by_rollout(
    state: &FleetState,
    task: &TaskView,
    now_ms: UnixMillis,
) -> Option<Concurrency> {
    let Some(rollout_id) = &task.created.rollout_id else {
        return Some(single_update_limits());
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
        let zone = window::site_zone(state, Some(&r.spec), &task.created.site_id);
        if !window::is_open(w, zone, now_ms) {
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

/// Where a task would take slots.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    rollout: Option<&'a str>,
    site: &'a str,
    network: &'a str,
    transport: Option<Transport>,
}

fn slot_of<'a>(state: &'a FleetState, task: &'a TaskView) -> Slot<'a> {
    let device = state.devices.get(&task.created.device_id).map(Box::as_ref);
    Slot {
        rollout: task.created.rollout_id.as_deref(),
        site: &task.created.site_id,
        network: device.map_or("", |d| d.facts.network.as_str()),
        transport: device.and_then(|d| d.facts.transport),
    }
}

/// What blocks a task: the limit and the task holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blocked {
    what: String,
    behind: String,
}

/// Slots taken, fleet-wide. Keys borrow from the state the pass looks at.
#[derive(Debug, Default)]
struct Load<'a> {
    /// Per rollout (its global limit).
    rollout: HashMap<&'a str, u32>,
    /// Per site, every task.
    site: HashMap<&'a str, (u32, &'a str)>,
    /// Per (site, zigbee2mqtt network).
    zigbee: HashMap<(&'a str, &'a str), (u32, &'a str)>,
    /// ESPHome devices per site.
    esphome: HashMap<&'a str, (u32, &'a str)>,
}

impl<'a> Load<'a> {
    fn add(&mut self, s: &Slot<'a>, task_id: &'a str) {
        if let Some(r) = s.rollout {
            *self.rollout.entry(r).or_default() += 1;
        }
        let bump = |e: &mut (u32, &'a str)| {
            e.0 += 1;
            if e.1.is_empty() {
                e.1 = task_id;
            }
        };
        bump(self.site.entry(s.site).or_default());
        match s.transport {
            Some(Transport::Zigbee2Mqtt) => {
                bump(self.zigbee.entry((s.site, s.network)).or_default())
            }
            Some(Transport::Esphome) => bump(self.esphome.entry(s.site).or_default()),
            _ => {}
        }
    }

    fn check(&self, s: &Slot<'a>, limits: &Concurrency) -> Result<(), Blocked> {
        if let Some(r) = s.rollout
            && self.rollout.get(r).copied().unwrap_or(0) >= limits.global
        {
            return Err(Blocked {
                what: format!("rollout {r}'s limit of {} at once", limits.global),
                behind: String::new(),
            });
        }
        let full = |e: Option<&(u32, &'a str)>, limit: u32| match e {
            Some((n, holder)) if *n >= limit => Some(holder.to_string()),
            None if limit == 0 => Some(String::new()),
            _ => None,
        };
        if let Some(behind) = full(self.site.get(s.site), limits.per_site) {
            return Err(Blocked {
                what: format!("site {} ({} at once)", s.site, limits.per_site),
                behind,
            });
        }
        match s.transport {
            Some(Transport::Zigbee2Mqtt) => {
                if let Some(behind) = full(
                    self.zigbee.get(&(s.site, s.network)),
                    limits.per_zigbee_network,
                ) {
                    return Err(Blocked {
                        what: format!(
                            "zigbee2mqtt network {} of site {} ({} at once)",
                            s.network, s.site, limits.per_zigbee_network
                        ),
                        behind,
                    });
                }
            }
            Some(Transport::Esphome) => {
                if let Some(behind) = full(self.esphome.get(s.site), limits.per_esphome_site) {
                    return Err(Blocked {
                        what: format!(
                            "the ESPHome devices of site {} ({} at once)",
                            s.site, limits.per_esphome_site
                        ),
                        behind,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The message of a phase-budget timeout.
fn timeout_error(t: &TaskView, transport: Transport) -> TaskError {
    let minutes = |s: u32| match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 7_200 => format!("{} h", s / 3_600),
        s => format!("{} min", (s / 60).max(1)),
    };
    let wake = effective_wake_timeout_s(&t.created);
    let transfer = effective_timeout_s(&t.created, transport);
    let message = match t.phase {
        TaskPhase::WaitingForWakeup => format!(
            "the device did not wake up within the wake-up budget ({}); the update was unscheduled",
            minutes(wake)
        ),
        TaskPhase::SiteQueued => format!(
            "the site's network was busy for the whole wake-up budget ({}); the update was cancelled",
            minutes(wake)
        ),
        TaskPhase::AgentPreparing => format!(
            "the site did not start the transfer within the transfer budget ({}); it was asked to stop",
            minutes(transfer)
        ),
        TaskPhase::Verifying => format!(
            "the device reported the target version, but its site gave no health verdict within {} after the health window ended; a later verdict still counts",
            minutes(crate::projection::VERDICT_GRACE.as_secs() as u32)
        ),
        _ => format!(
            "no result within the transfer budget ({}); the update was cancelled where the device allows it, and a later success still counts",
            minutes(transfer)
        ),
    };
    TaskError::new(ErrorCode::Timeout, message)
}

/// The unfinished tasks a pass looks at: those at a site first (they hold slots), by id; then
/// the waiting ones that may go now or have a time to come back at, oldest first: fair, and
/// deterministic for tests.
fn open_tasks(state: &FleetState, now: UnixMillis) -> (Vec<&TaskView>, Vec<&TaskView>) {
    let mut at_site: Vec<&TaskView> = Vec::new();
    let mut waiting: Vec<&TaskView> = Vec::new();
    let open = state
        .open_tasks
        .iter()
        .filter_map(|id| state.tasks.get(id).map(Box::as_ref));
    for t in open.filter(|t| !t.phase.is_terminal()) {
        if t.phase.is_at_site() {
            at_site.push(t);
        } else if t.next_attempt_at_ms.is_some_and(|at| at > now)
            || released_by_rollout(state, t, now).is_some()
        {
            waiting.push(t);
        }
    }
    at_site.sort_by(|a, b| a.created.task_id.cmp(&b.created.task_id));
    waiting.sort_by(|a, b| {
        (a.created_at_ms, &a.created.task_id).cmp(&(b.created_at_ms, &b.created.task_id))
    });
    (at_site, waiting)
}

/// Decides the next step of every unfinished task. See the module documentation.
pub fn decide(input: &DispatchInput<'_>) -> DispatchDecision {
    let DispatchInput {
        state,
        now_ms: now,
        connected,
        next_command_id,
        probes,
    } = *input;
    let mut out = DispatchDecision::default();
    let (at_site, waiting) = open_tasks(state, now);
    let mut load = Load::default();
    for t in &at_site {
        if t.phase.holds_slot() {
            load.add(&slot_of(state, t), &t.created.task_id);
        }
    }
    let mut rates = Rates::default();
    let mut probing = Probing {
        before: probes,
        probed: BTreeMap::new(),
        still_probing: HashMap::new(),
    };

    for t in &at_site {
        if out.is_full(now) {
            break;
        }
        time_out_if_due(state, t, now, next_command_id, &mut out);
    }
    for t in &waiting {
        if out.is_full(now) {
            break;
        }
        let waits = match t.phase {
            TaskPhase::Queued => true,
            TaskPhase::Held => !t.awaiting_confirmation,
            _ => false,
        };
        if !waits {
            continue;
        }
        if let Some(at) = t.next_attempt_at_ms
            && at > now
        {
            out.due(at, now);
            continue;
        }
        let Some(limits) = released_by_rollout(state, t, now) else {
            continue;
        };
        let slot = slot_of(state, t);
        if let Err(blocked) = load.check(&slot, &limits) {
            if t.created.rollout_id.is_none() {
                say_queued_behind(t, &blocked, &mut out);
            }
            continue;
        }
        if !rates.allows(state, t, now, &mut out) {
            continue;
        }
        let (Some(device), Some(fw)) = (
            state.devices.get(&t.created.device_id).map(Box::as_ref),
            state.firmware.get(&t.created.firmware_id),
        ) else {
            push_task_change(
                t,
                TaskSkipped {
                    code: ErrorCode::NoFirmware,
                    remind: "the device or the firmware is no longer known".into(),
                }
                .into(),
                &mut out,
            );
            continue;
        };
        let site_connected = connected(&t.created.site_id);
        let preconditions = preconditions_of(state, t);
        match preflight(PreflightInput {
            task: t,
            device: &device.facts,
            device_removed: device.removed,
            firmware: &fw.registered,
            site_connected,
            preconditions: &preconditions,
        }) {
            Preflight::Dispatch { schedule } => {
                let transport = device.facts.transport.unwrap_or(Transport::Esphome);
                send_update(t, transport, schedule, now, next_command_id, &mut out);
                load.add(&slot, &t.created.task_id);
                rates.took(t, now);
            }
            Preflight::Hold {
                error,
                remind,
                needs_confirmation,
            } => {
                let offline = error.code == ErrorCode::Offline && !device.removed;
                hold(t, error, remind, needs_confirmation, &mut out);
                if offline && site_connected {
                    probing.offline(t, &device.local_id, now, &mut out);
                }
            }
            Preflight::Skip { code, remind } => {
                push_task_change(t, TaskSkipped { code, remind }.into(), &mut out);
            }
        }
    }
    probing.finish(next_command_id, &mut out);
    out
}

/// The rollouts' rates during one pass: what each allowed at the start of the pass, less the
/// devices this pass started.
#[derive(Debug, Default)]
struct Rates<'a> {
    left: HashMap<&'a str, Option<Allowance>>,
}

impl<'a> Rates<'a> {
    /// The rollout task a rate limits: a first dispatch of one of its own devices (retries and
    /// auto-upgrades that name the rollout as their source are not limited).
    fn limited(t: &'a TaskView) -> Option<&'a str> {
        t.created
            .rollout_id
            .as_deref()
            .filter(|_| !t.created.auto && t.started_at_ms.is_none())
    }

    /// Whether `t`'s rollout rate lets it start now; when not, look again when a slot opens.
    fn allows(
        &mut self,
        state: &'a FleetState,
        t: &'a TaskView,
        now: UnixMillis,
        out: &mut DispatchDecision,
    ) -> bool {
        let Some(id) = Self::limited(t) else {
            return true;
        };
        let entry = self.left.entry(id).or_insert_with(|| {
            state
                .rollouts
                .get(id)
                .and_then(|r| rate::rollout_allowance(r, state, now))
        });
        match entry {
            None => true,
            Some(a) if a.allowed > 0 => true,
            Some(a) => {
                if let Some(at) = a.next_slot_at {
                    out.due(at, now);
                }
                false
            }
        }
    }

    /// `t` was dispatched now.
    fn took(&mut self, t: &'a TaskView, now: UnixMillis) {
        if let Some(Some(a)) = Self::limited(t).and_then(|id| self.left.get_mut(id)) {
            a.started(now);
        }
    }
}

/// Step 2, a task that may go: its next attempt is recorded and its update command sent.
fn send_update(
    t: &TaskView,
    transport: Transport,
    schedule: bool,
    now: UnixMillis,
    next_command_id: &dyn Fn() -> u64,
    out: &mut DispatchDecision,
) {
    let attempt = t.attempt + 1;
    let command_id = next_command_id();
    let timeout_at_ms = now.plus_secs(u64::from(effective_timeout_s(&t.created, transport)));
    push_task_change(
        t,
        TaskDispatched {
            attempt,
            command_id,
            timeout_at_ms,
            schedule,
        }
        .into(),
        out,
    );
    out.commands.push(Command::Update {
        site_id: t.created.site_id.clone(),
        task_id: t.created.task_id.clone(),
        attempt,
        command_id,
        schedule,
    });
    out.due(timeout_at_ms, now);
}

/// Step 2, a task that must wait: held, unless it already is for the same reason.
fn hold(
    t: &TaskView,
    error: TaskError,
    remind: String,
    needs_confirmation: bool,
    out: &mut DispatchDecision,
) {
    let same_hold = t.phase == TaskPhase::Held
        && t.error.as_ref().map(|e| e.code) == Some(error.code)
        && t.next_attempt_at_ms.is_none();
    if !same_hold {
        push_task_change(
            t,
            TaskHeld {
                error,
                remind,
                needs_confirmation,
                retry_at_ms: None,
            }
            .into(),
            out,
        );
    }
}

/// The probes of one pass: offline devices of connected sites, each asked again after a
/// growing interval.
struct Probing<'a> {
    /// What earlier passes probed.
    before: &'a ProbeMemory,
    /// Local device ids to probe now, per site.
    probed: BTreeMap<String, Vec<String>>,
    /// The memory the next pass starts from.
    still_probing: HashMap<String, (UnixMillis, u32)>,
}

impl Probing<'_> {
    /// A task held because its device is offline, at a connected site.
    fn offline(
        &mut self,
        t: &TaskView,
        local_id: &str,
        now: UnixMillis,
        out: &mut DispatchDecision,
    ) {
        let id = &t.created.device_id;
        let (last_at, n) = self
            .before
            .last
            .get(id)
            .copied()
            .unwrap_or((UnixMillis::MIN, 0));
        let due_at = if n == 0 {
            now
        } else {
            last_at + probe_interval(n)
        };
        if due_at <= now {
            self.probed
                .entry(t.created.site_id.clone())
                .or_default()
                .push(local_id.to_string());
            self.still_probing.insert(id.clone(), (now, n + 1));
            out.due(now + probe_interval(n + 1), now);
        } else {
            self.still_probing.insert(id.clone(), (last_at, n));
            out.due(due_at, now);
        }
    }

    /// One probe command per site, and the memory for the next pass.
    fn finish(self, next_command_id: &dyn Fn() -> u64, out: &mut DispatchDecision) {
        for (site_id, mut locals) in self.probed {
            locals.sort();
            locals.dedup();
            out.commands.push(Command::Probe {
                site_id,
                device_local_ids: locals,
                command_id: next_command_id(),
            });
        }
        out.probes = ProbeMemory {
            last: self.still_probing,
        };
    }
}

/// Step 1: an at-site task past the budget of its phase times out.
fn time_out_if_due(
    state: &FleetState,
    t: &TaskView,
    now: UnixMillis,
    next_command_id: &dyn Fn() -> u64,
    out: &mut DispatchDecision,
) {
    let Some(at) = t.timeout_at_ms else {
        return;
    };
    if at > now {
        out.due(at, now);
        return;
    }
    let transport = state
        .devices
        .get(&t.created.device_id)
        .and_then(|d| d.facts.transport)
        .unwrap_or(Transport::Esphome);
    let error = timeout_error(t, transport);
    let reason = error.message.clone();
    push_task_change(
        t,
        TaskFailed {
            attempt: t.attempt,
            error,
            timed_out: true,
            retry_at_ms: None,
            source: None,
        }
        .into(),
        out,
    );
    out.commands.push(Command::Cancel {
        site_id: t.created.site_id.clone(),
        task_id: t.created.task_id.clone(),
        attempt: t.attempt,
        command_id: next_command_id(),
        reason,
    });
}

/// A single update that must wait for a slot says so once (and again if what it waits for
/// changes).
fn say_queued_behind(t: &TaskView, blocked: &Blocked, out: &mut DispatchDecision) {
    let remind = if blocked.behind.is_empty() {
        format!("queued: {} is busy", blocked.what)
    } else {
        format!("queued behind task {} on {}", blocked.behind, blocked.what)
    };
    if t.phase == TaskPhase::Held && t.remind == remind {
        return;
    }
    out.changes.push(Change::unchanged(
        streams::task(&t.created.task_id),
        vec![
            TaskHeld {
                error: TaskError::new(ErrorCode::OneAtATime, remind.clone()),
                remind,
                needs_confirmation: false,
                retry_at_ms: None,
            }
            .into(),
        ],
    ));
}

/// Records one event on a task's stream, guarded by its rollout's stream.
fn push_task_change(t: &TaskView, event: crate::events::DomainEvent, out: &mut DispatchDecision) {
    out.changes.push(Change::unchanged(
        streams::task(&t.created.task_id),
        vec![event],
    ));
    if let Some(r) = &t.created.rollout_id {
        ensure_guard(&mut out.changes, &streams::rollout(r));
    }
}

#[cfg(test)]
mod airtight;
#[cfg(test)]
mod tests;

//! Running counts of a rollout's tasks, kept by the projection as events are applied.
//!
//! Every stage and every rollout carries a [`Tally`] of its tasks by phase (plus the few facts
//! the scheduler and the API count besides the phase: unconfirmed successes, failures an
//! operator accepted by resuming, rejections). [`FleetState::apply`](super::FleetState::apply)
//! moves a task from one bucket to another when one of its events changes what it counts as,
//! so a stage's counts, a rollout's failure budget and abort criteria, and the API's totals are
//! read in O(1) instead of walking every device of the rollout at every look.
//!
//! What it does not do: decide anything. The scheduler reads [`Tally`] through
//! `scheduler::stage_counts` and friends exactly as it read the walk before; a resume (which
//! moves the moment failures count as accepted) and a rollout's start recount by walking once.

use serde::{Deserialize, Serialize};

use super::{TaskPhase, TaskView};
use crate::rollout::abort::{accepted_by_resume, is_rejection};
use crate::time::UnixMillis;

/// Number of [`TaskPhase`]s.
pub const PHASES: usize = 14;

impl TaskPhase {
    /// Every phase, in declaration order ([`TaskPhase::index`]).
    pub const ALL: [TaskPhase; PHASES] = [
        TaskPhase::Queued,
        TaskPhase::Preparing,
        TaskPhase::Held,
        TaskPhase::AgentPreparing,
        TaskPhase::SiteQueued,
        TaskPhase::WaitingForWakeup,
        TaskPhase::Updating,
        TaskPhase::Downloaded,
        TaskPhase::Verifying,
        TaskPhase::Succeeded,
        TaskPhase::Failed,
        TaskPhase::TimedOut,
        TaskPhase::Skipped,
        TaskPhase::Cancelled,
    ];

    /// Position in [`TaskPhase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What about a task counts, as of one moment: its phase and the facts beside it that the
/// counts split on. Two marks that are equal count the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMark {
    phase: TaskPhase,
    awaiting_confirmation: bool,
    healthy: bool,
    finished_at_ms: Option<UnixMillis>,
    rejection: bool,
}

impl TaskMark {
    /// The mark of a task as it is.
    pub fn of(t: &TaskView) -> TaskMark {
        TaskMark {
            phase: t.phase,
            awaiting_confirmation: t.awaiting_confirmation,
            healthy: t.health.is_success(),
            finished_at_ms: t.finished_at_ms,
            rejection: t.error.as_ref().is_some_and(|e| is_rejection(e.code)),
        }
    }
}

/// Tasks counted by phase, with the splits the scheduler and the API need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Tasks counted.
    pub tasks: u32,
    /// Tasks per phase ([`TaskPhase::index`]).
    pub phases: [u32; PHASES],
    /// Held tasks waiting for a person's weak-signal confirmation.
    pub awaiting_confirmation: u32,
    /// Succeeded without a healthy (or not checked) verdict: written, not confirmed.
    pub unconfirmed: u32,
    /// Failed (4) and accepted by a resume.
    pub accepted_failed: u32,
    /// Timed out (7) and accepted by a resume.
    pub accepted_timed_out: u32,
    /// Failed because the device did not take the image, not accepted.
    pub rejected: u32,
}

impl Tally {
    /// Adds (`sign` 1) or removes (`sign` -1) a task of this mark; failures that ended at or
    /// before `accepted_at` count as accepted.
    pub fn count(&mut self, m: &TaskMark, accepted_at: Option<UnixMillis>, sign: i32) {
        let bump = |v: &mut u32| *v = v.wrapping_add_signed(sign);
        bump(&mut self.tasks);
        bump(&mut self.phases[m.phase.index()]);
        let accepted = accepted_by_resume(m.finished_at_ms, accepted_at);
        match m.phase {
            TaskPhase::Held if m.awaiting_confirmation => bump(&mut self.awaiting_confirmation),
            TaskPhase::Succeeded if !m.healthy => bump(&mut self.unconfirmed),
            TaskPhase::Failed if accepted => bump(&mut self.accepted_failed),
            TaskPhase::Failed if m.rejection => bump(&mut self.rejected),
            TaskPhase::TimedOut if accepted => bump(&mut self.accepted_timed_out),
            _ => {}
        }
    }

    /// Counts `tasks` from scratch.
    pub fn of<'a>(
        tasks: impl IntoIterator<Item = &'a TaskView>,
        accepted_at: Option<UnixMillis>,
    ) -> Tally {
        let mut t = Tally::default();
        for task in tasks {
            t.count(&TaskMark::of(task), accepted_at, 1);
        }
        t
    }

    /// Tasks in `phase`.
    pub fn phase(&self, phase: TaskPhase) -> u32 {
        self.phases[phase.index()]
    }

    /// Tasks that have not ended (asleep ones included).
    pub fn unfinished(&self) -> u32 {
        TaskPhase::ALL
            .iter()
            .filter(|p| !p.is_terminal())
            .map(|p| self.phase(*p))
            .sum()
    }
}

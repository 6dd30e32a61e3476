//! Abort criteria: rules over the devices of a rollout that have *finished*, in the manner of
//! AWS IoT Jobs' `abortConfig`.
//!
//! A criterion says "once at least `min_finished` devices have finished, if `percent` % or more
//! of them ended this way, `action`". It differs from a stage's failure threshold in what it
//! divides by: the devices that finished, not the planned stage size, so a rollout that fails
//! on 3 of its first 4 devices stops there, while a threshold over a 1,000-device wave would
//! wait for 100 failures.
//!
//! - *Finished* means succeeded, failed or timed out. Devices waiting for a wake-up, queued,
//!   held or transferring have not finished; skipped (a precondition) and cancelled devices
//!   were never tried and do not count at all.
//! - *Rejected* failures are those where the device did not take the image: 5013 (the firmware
//!   does not fit the device) and 5018 (the device reported a failure with its reason, or came
//!   back on its old version). See `status-model` in ARCHITECTURE.md.
//! - Failures an operator accepted by resuming after they ended still count as finished but no
//!   longer as failures, so a resumed rollout is not stopped again by the same devices.
//!
//! This module only counts and decides; the scheduler ([`super::scheduler::reconcile`]) turns
//! the decision into `RolloutPaused` or `RolloutAborted` (and, for `rollback`, the linked rollout
//! of [`super::rollback`]).

use serde::{Deserialize, Serialize};

use crate::projection::{TaskPhase, TaskView};
use crate::status::ErrorCode;
use crate::time::UnixMillis;

/// Which finished devices a criterion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortOn {
    /// Failed (status 4), whatever the reason.
    Failed,
    /// Timed out (status 7).
    TimedOut,
    /// Failed because the device did not take the image (5013, 5018).
    Rejected,
    /// Failed or timed out.
    Any,
}

impl AbortOn {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [AbortOn; 4] = [Self::Failed, Self::TimedOut, Self::Rejected, Self::Any];

    /// The name in specs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Rejected => "rejected",
            Self::Any => "any",
        }
    }

    /// From its name (`timed-out` is accepted for `timed_out`).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.replace('-', "_");
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// What a criterion does when it trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AbortAction {
    /// Pause the rollout (an operator resumes, accepting the failures, or aborts).
    #[default]
    Pause,
    /// Abort the rollout: nothing more is dispatched, waiting tasks are cancelled.
    Abort,
    /// Abort the rollout and roll it back (`crate::rollout::rollback`): the devices of the
    /// spec's `rollback` scope, the failed ones when it is none.
    Rollback,
}

impl AbortAction {
    /// The name in specs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
        }
    }

    /// From its name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Pause, Self::Abort, Self::Rollback]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// One abort criterion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AbortCriterion {
    /// Which finished devices count.
    pub on: AbortOn,
    /// Trips at this share (0 < percent ≤ 100) of the finished devices.
    pub percent: f64,
    /// Not evaluated before this many devices finished (≥ 1).
    pub min_finished: u32,
    /// What tripping does.
    pub action: AbortAction,
}

impl std::fmt::Display for AbortCriterion {
    /// `failed ≥ 20% of ≥ 10 finished → pause`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ≥ {}% of ≥ {} finished → {}",
            self.on.name(),
            self.percent,
            self.min_finished,
            self.action.name()
        )
    }
}

/// The finished devices of a rollout, by how they ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Finished {
    /// Succeeded, failed or timed out.
    pub finished: u32,
    /// Failed, not accepted.
    pub failed: u32,
    /// Timed out, not accepted.
    pub timed_out: u32,
    /// Failed because the device did not take the image, not accepted.
    pub rejected: u32,
}

impl Finished {
    /// Counts `tasks`; failures that ended at or before `accepted_at_ms` count as finished only.
    pub fn count<'a>(
        tasks: impl IntoIterator<Item = &'a TaskView>,
        accepted_at_ms: Option<UnixMillis>,
    ) -> Self {
        let mut c = Self::default();
        for t in tasks {
            let accepted = accepted_by_resume(t.finished_at_ms, accepted_at_ms);
            match t.phase {
                TaskPhase::Succeeded => c.finished += 1,
                TaskPhase::Failed => {
                    c.finished += 1;
                    if !accepted {
                        c.failed += 1;
                        if t.error.as_ref().is_some_and(|e| is_rejection(e.code)) {
                            c.rejected += 1;
                        }
                    }
                }
                TaskPhase::TimedOut => {
                    c.finished += 1;
                    if !accepted {
                        c.timed_out += 1;
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The same counts from a rollout's tally (`RolloutView::tally`), without walking its tasks.
    pub fn from_tally(t: &crate::projection::Tally) -> Self {
        let failed = t.phase(TaskPhase::Failed).saturating_sub(t.accepted_failed);
        let timed_out = t
            .phase(TaskPhase::TimedOut)
            .saturating_sub(t.accepted_timed_out);
        Self {
            finished: t.phase(TaskPhase::Succeeded)
                + t.phase(TaskPhase::Failed)
                + t.phase(TaskPhase::TimedOut),
            failed,
            timed_out,
            rejected: t.rejected,
        }
    }

    /// The devices `on` counts.
    pub fn matching(&self, on: AbortOn) -> u32 {
        match on {
            AbortOn::Failed => self.failed,
            AbortOn::TimedOut => self.timed_out,
            AbortOn::Rejected => self.rejected,
            AbortOn::Any => self.failed + self.timed_out,
        }
    }
}

/// A failure that ended at `finished_at` was accepted by a resume at `accepted_at` (it ended
/// before the operator resumed): it no longer counts as a failure, only as finished.
pub fn accepted_by_resume(
    finished_at: Option<UnixMillis>,
    accepted_at: Option<UnixMillis>,
) -> bool {
    matches!((accepted_at, finished_at), (Some(accepted), Some(finished)) if finished <= accepted)
}

/// The device did not take the image.
pub fn is_rejection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::PrevalidationFailed | ErrorCode::DeviceReportedFailure
    )
}

/// A criterion that tripped, and the words that say why.
#[derive(Debug, Clone, PartialEq)]
pub struct Tripped {
    /// Its position in the spec (0-based).
    pub index: usize,
    /// What to do.
    pub action: AbortAction,
    /// "abort criterion 1 (failed ≥ 20% of ≥ 10 finished → pause): 3 of 12 finished devices failed (25%)".
    pub reason: String,
}

/// The first criterion, in spec order, that trips on `finished`; `None` when none does.
pub fn tripped(criteria: &[AbortCriterion], finished: &Finished) -> Option<Tripped> {
    if finished.finished == 0 {
        return None;
    }
    criteria.iter().enumerate().find_map(|(index, c)| {
        if finished.finished < c.min_finished.max(1) {
            return None;
        }
        let matching = finished.matching(c.on);
        // matching / finished ≥ percent / 100, with a tolerance so exact shares such as 1 of 5
        // at 20 % trip despite float noise.
        let share = f64::from(matching) * 100.0 / f64::from(finished.finished);
        if matching == 0 || share + 1e-9 < c.percent {
            return None;
        }
        let verb = match c.on {
            AbortOn::Failed => "failed",
            AbortOn::TimedOut => "timed out",
            AbortOn::Rejected => "rejected the image",
            AbortOn::Any => "failed or timed out",
        };
        Some(Tripped {
            index,
            action: c.action,
            reason: format!(
                "abort criterion {} ({c}): {matching} of {} finished devices {verb} ({}%)",
                index + 1,
                finished.finished,
                (share * 10.0).round() / 10.0
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn criterion(on: AbortOn, percent: f64, min_finished: u32) -> AbortCriterion {
        AbortCriterion {
            on,
            percent,
            min_finished,
            action: AbortAction::Pause,
        }
    }

    fn finished(finished: u32, failed: u32, timed_out: u32, rejected: u32) -> Finished {
        Finished {
            finished,
            failed,
            timed_out,
            rejected,
        }
    }

    #[test]
    fn nothing_trips_before_min_finished() {
        let c = [criterion(AbortOn::Failed, 20.0, 10)];
        // 9 of 9 failed, but only 9 finished.
        assert_eq!(tripped(&c, &finished(9, 9, 0, 0)), None);
        let t = tripped(&c, &finished(10, 2, 0, 0)).expect("2 of 10 is 20 %");
        assert_eq!(t.index, 0);
        assert_eq!(
            t.reason,
            "abort criterion 1 (failed ≥ 20% of ≥ 10 finished → pause): 2 of 10 finished devices failed (20%)"
        );
    }

    #[test]
    fn the_share_is_of_finished_devices_not_of_the_plan() {
        let c = [criterion(AbortOn::Any, 50.0, 4)];
        assert!(tripped(&c, &finished(4, 1, 1, 0)).is_some());
        assert_eq!(tripped(&c, &finished(5, 1, 1, 0)), None, "2 of 5 is 40 %");
    }

    #[test]
    fn each_kind_counts_its_own_devices() {
        let f = finished(10, 3, 4, 1);
        for (on, trips_at_30) in [
            (AbortOn::Failed, true),
            (AbortOn::TimedOut, true),
            (AbortOn::Rejected, false),
            (AbortOn::Any, true),
        ] {
            let c = [criterion(on, 30.0, 1)];
            assert_eq!(tripped(&c, &f).is_some(), trips_at_30, "{on:?}");
        }
        assert!(tripped(&[criterion(AbortOn::Rejected, 10.0, 1)], &f).is_some());
    }

    #[test]
    fn the_first_tripping_criterion_in_spec_order_decides() {
        let c = [
            criterion(AbortOn::TimedOut, 90.0, 1),
            AbortCriterion {
                action: AbortAction::Abort,
                ..criterion(AbortOn::Failed, 10.0, 1)
            },
            criterion(AbortOn::Any, 10.0, 1),
        ];
        let t = tripped(&c, &finished(10, 2, 0, 0)).expect("trips");
        assert_eq!((t.index, t.action), (1, AbortAction::Abort));
    }

    #[test]
    fn no_failures_never_trip_even_at_zero_percent() {
        let c = [criterion(AbortOn::Failed, 0.0, 1)];
        assert_eq!(tripped(&c, &finished(10, 0, 0, 0)), None);
    }

    #[test]
    fn names_round_trip() {
        for on in AbortOn::ALL {
            assert_eq!(AbortOn::from_name(on.name()), Some(on));
        }
        assert_eq!(AbortOn::from_name("timed-out"), Some(AbortOn::TimedOut));
        assert_eq!(AbortOn::from_name("late"), None);
        for a in [
            AbortAction::Pause,
            AbortAction::Abort,
            AbortAction::Rollback,
        ] {
            assert_eq!(AbortAction::from_name(a.name()), Some(a));
        }
    }
}

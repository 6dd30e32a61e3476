//! The rollout rate: how many devices a rollout may start per minute, with an optional
//! exponential ramp, in the manner of AWS IoT Jobs' `rolloutConfig` (`maximumPerMinute`,
//! `exponentialRate`).
//!
//! - A **start** is a task's first dispatch (`TaskView::started_at_ms`, set by the first
//!   `TaskDispatched`). Retries of a task that already started are not counted and not limited
//!   (their backoff paces them), so the rate counts devices, as AWS counts notified things.
//! - The limit is a **sliding minute**: at `now` a rollout may start `rate − (starts in the last
//!   60 s)` more devices. The next slot opens when enough of those starts are a minute old.
//! - The **ramp** starts at `start` per minute and multiplies the rate by `factor` each time
//!   another `after_successes` devices of the rollout succeeded (or another `after_percent` % of
//!   its planned targets, rounded up, at least 1), up to `max_per_minute`:
//!   `rate = min(max, ⌊start × factor^⌊succeeded / step⌋⌋)`.
//!
//! Everything is derived from the projection (start instants and successes recorded in the
//! log), never from the dispatcher's memory, so a restarted otad keeps the same rate.
//!
//! This module only counts and decides; the dispatcher ([`crate::dispatch::decide`]) holds back
//! the first dispatches the rate does not allow and looks again when the next slot opens, and
//! the plan's estimate ([`super::plan::estimate_s`]) paces the starts the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::projection::{FleetState, RolloutView, TaskPhase};
use crate::time::UnixMillis;

/// The window the rate counts starts in.
pub const MINUTE: Duration = Duration::from_secs(60);

/// When the ramp raises the rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RampAfter {
    /// Every time this many more devices succeeded (≥ 1).
    Successes(u32),
    /// Every time this share of the rollout's targets more succeeded (0 < percent ≤ 100).
    Percent(f64),
}

/// An exponential ramp up to the rollout's `max_per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    /// The rate at the beginning, per minute (1 ≤ start ≤ `max_per_minute`).
    pub start_per_minute: u32,
    /// The rate is multiplied by this at each step (1 < factor ≤ 5).
    pub factor: f64,
    /// What makes a step.
    pub after: RampAfter,
}

/// How fast a rollout starts devices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Most devices started in any minute (≥ 1).
    pub max_per_minute: u32,
    /// Start slower and speed up while devices succeed.
    pub ramp: Option<Ramp>,
}

impl Rate {
    /// Successes per ramp step for a rollout of `targets` devices (`None`: no ramp).
    pub fn step(&self, targets: u32) -> Option<u32> {
        let ramp = self.ramp?;
        Some(match ramp.after {
            RampAfter::Successes(n) => n.max(1),
            RampAfter::Percent(p) => ((f64::from(targets) * p / 100.0).ceil() as u32).max(1),
        })
    }

    /// The rate per minute once `succeeded` of `targets` devices succeeded.
    pub fn per_minute(&self, succeeded: u32, targets: u32) -> u32 {
        let max = self.max_per_minute.max(1);
        let (Some(ramp), Some(step)) = (self.ramp, self.step(targets)) else {
            return max;
        };
        let steps = i32::try_from(succeeded / step).unwrap_or(i32::MAX);
        let rate = f64::from(ramp.start_per_minute.max(1)) * ramp.factor.powi(steps);
        if rate >= f64::from(max) {
            max
        } else {
            (rate.floor() as u32).clamp(1, max)
        }
    }
}

impl std::fmt::Display for Rate {
    /// `30/min` or `30/min, ramp from 2/min ×2 every 5 successes`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/min", self.max_per_minute)?;
        if let Some(r) = &self.ramp {
            write!(
                f,
                ", ramp from {}/min ×{} every ",
                r.start_per_minute, r.factor
            )?;
            match r.after {
                RampAfter::Successes(n) => write!(f, "{n} successes")?,
                RampAfter::Percent(p) => write!(f, "{p}% of the targets succeeded")?,
            }
        }
        Ok(())
    }
}

/// What the rate allows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// The rate in force, per minute.
    pub per_minute: u32,
    /// When the devices started in the last minute started, oldest first.
    pub recent_starts: Vec<UnixMillis>,
    /// More devices that may start now.
    pub allowed: u32,
    /// When one more may start, if none may now.
    pub next_slot_at: Option<UnixMillis>,
}

impl Allowance {
    fn new(per_minute: u32, mut recent_starts: Vec<UnixMillis>) -> Self {
        recent_starts.sort_unstable();
        let n = recent_starts.len();
        let allowed = (per_minute as usize).saturating_sub(n) as u32;
        // Once the oldest `n - per_minute + 1` starts are a minute old, one more may start.
        let next_slot_at = (allowed == 0)
            .then(|| recent_starts.get(n - per_minute as usize))
            .flatten()
            .map(|s| *s + MINUTE);
        Self {
            per_minute,
            recent_starts,
            allowed,
            next_slot_at,
        }
    }

    /// Devices started in the last minute.
    pub fn started_last_minute(&self) -> u32 {
        u32::try_from(self.recent_starts.len()).unwrap_or(u32::MAX)
    }

    /// One more device started at `at` (within the minute this allowance looks at).
    pub fn started(&mut self, at: UnixMillis) {
        let mut starts = std::mem::take(&mut self.recent_starts);
        starts.push(at);
        *self = Self::new(self.per_minute, starts);
    }
}

/// What `rate` allows at `now`, given the instants devices started (any order) and how many of
/// the rollout's `targets` succeeded.
pub fn allowance(
    rate: &Rate,
    starts: impl IntoIterator<Item = UnixMillis>,
    succeeded: u32,
    targets: u32,
    now: UnixMillis,
) -> Allowance {
    let since = now - MINUTE;
    let recent = starts.into_iter().filter(|s| *s > since).collect();
    Allowance::new(rate.per_minute(succeeded, targets), recent)
}

/// What a rollout's rate allows at `now`, from its tasks in the projection; `None` when its
/// spec sets no rate.
pub fn rollout_allowance(
    r: &RolloutView,
    state: &FleetState,
    now: UnixMillis,
) -> Option<Allowance> {
    let rate = r.spec.rate.as_ref()?;
    let targets: usize = r.stages.iter().map(|s| s.device_ids.len()).sum();
    let tasks = r
        .tasks_by_device
        .values()
        .filter_map(|id| state.tasks.get(id).map(Box::as_ref));
    let mut starts = Vec::new();
    let mut succeeded = 0u32;
    for t in tasks {
        if let Some(at) = t.started_at_ms {
            starts.push(at);
        }
        if t.phase == TaskPhase::Succeeded {
            succeeded += 1;
        }
    }
    Some(allowance(
        rate,
        starts,
        succeeded,
        u32::try_from(targets).unwrap_or(u32::MAX),
        now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> UnixMillis {
        UnixMillis::from_unix_ms(1_000_000_000 + s * 1000)
    }

    fn ramp(start: u32, factor: f64, after: RampAfter) -> Rate {
        Rate {
            max_per_minute: 30,
            ramp: Some(Ramp {
                start_per_minute: start,
                factor,
                after,
            }),
        }
    }

    #[test]
    fn a_sliding_minute_allows_the_rest_and_says_when_the_next_slot_opens() {
        let rate = Rate {
            max_per_minute: 6,
            ramp: None,
        };
        let a = allowance(&rate, [], 0, 20, at(0));
        assert_eq!((a.allowed, a.next_slot_at), (6, None));
        let starts = [at(0), at(0), at(10), at(20), at(30), at(40)];
        let a = allowance(&rate, starts, 0, 20, at(45));
        assert_eq!(a.started_last_minute(), 6);
        assert_eq!((a.allowed, a.next_slot_at), (0, Some(at(60))));
        // At 60 s the two starts at 0 s are a minute old.
        let a = allowance(&rate, starts, 0, 20, at(60));
        assert_eq!((a.allowed, a.next_slot_at), (2, None));
        // More starts than the rate (a lower rate after a restart with another spec is not
        // possible, but a ramp never falls either): the slot opens when enough have aged.
        let seven = [at(0), at(1), at(2), at(3), at(4), at(5), at(6)];
        let a = allowance(&rate, seven, 0, 20, at(10));
        assert_eq!((a.allowed, a.next_slot_at), (0, Some(at(61))));
        // Starting the last allowed ones now: the next slot opens a minute after the oldest.
        let mut a = allowance(&rate, [at(30)], 0, 20, at(40));
        assert_eq!(a.allowed, 5);
        for _ in 0..5 {
            a.started(at(40));
        }
        assert_eq!((a.allowed, a.next_slot_at), (0, Some(at(90))));
    }

    #[test]
    fn the_ramp_multiplies_the_rate_per_step_up_to_the_maximum() {
        let r = ramp(2, 2.0, RampAfter::Successes(5));
        let rates: Vec<u32> = [0, 4, 5, 9, 10, 15, 20, 1000]
            .iter()
            .map(|s| r.per_minute(*s, 100))
            .collect();
        assert_eq!(rates, [2, 2, 4, 4, 8, 16, 30, 30]);
        let r = ramp(3, 1.5, RampAfter::Percent(10.0));
        // 10 % of 25 targets is 3 successes per step (rounded up).
        assert_eq!(r.step(25), Some(3));
        assert_eq!(r.per_minute(2, 25), 3);
        assert_eq!(r.per_minute(3, 25), 4);
        assert_eq!(r.per_minute(6, 25), 6);
        assert_eq!(r.step(0), Some(1));
        let flat = Rate {
            max_per_minute: 7,
            ramp: None,
        };
        assert_eq!((flat.step(10), flat.per_minute(9, 10)), (None, 7));
        assert_eq!(
            r.to_string(),
            "30/min, ramp from 3/min ×1.5 every 10% of the targets succeeded"
        );
        assert_eq!(
            ramp(2, 2.0, RampAfter::Successes(5)).to_string(),
            "30/min, ramp from 2/min ×2 every 5 successes"
        );
    }
}

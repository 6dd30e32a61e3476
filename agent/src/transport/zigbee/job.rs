//! What a zigbee2mqtt update looks like from its state messages: a pure tracker.
//!
//! What it does: turn the `update` block of each state message of the device into the
//! product's progress (`scheduled` → 5 waiting for wake-up; `updating` with `progress` < 100 →
//! 2 with percent and remaining seconds; `updating` at 100 → 6 downloaded, the device applies the
//! image and zigbee2mqtt waits up to 120 s for it to come back, which is not a stall) and spot
//! the state-only outcomes: `installed_version` equal to the target (success; the only sign for
//! a scheduled run), a scheduled run that failed (`updating` → `scheduled`), and a scheduled
//! run that found no image (`updating` → `idle` on the old version).
//!
//! ```text
//!  request ──► [scheduled] ──wake──► [updating p<100] ──► [updating 100] ──► idle @ target ✔
//!                  ▲                        │                                  
//!                  └──── run failed ◄───────┘   idle @ old version after updating ✘
//! ```
//!
//! An *attached* tracker follows a transfer it did not start (after an agent restart, when no
//! response will come): it starts as if `updating` was seen, and `idle`, `available` or
//! `scheduled` on another version than the target is the end of the run without the image.
//!
//! What it does not do: read responses, clocks or connections (the transport does).

use ota_devproto::z2m::{OtaState, UpdateState};
use ota_domain::status::UpgradeStatus;

use crate::transport::TransferProgress;

/// What the tracker concluded from one state message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Nothing final.
    Pending,
    /// `installed_version` is the target.
    ReachedTarget,
    /// A scheduled run failed; zigbee2mqtt keeps it scheduled.
    ScheduledRunFailed,
    /// A scheduled run ended on the old version (no usable image; zigbee2mqtt unscheduled it).
    ScheduledRunFoundNoImage,
    /// An attached tracker saw the run end without the target.
    EndedWithoutTarget,
}

/// Follows one update through the device's state messages.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    target: u32,
    total_bytes: u64,
    scheduled_mode: bool,
    attached: bool,
    seen_updating: bool,
    last: Option<TransferProgress>,
    max_percent: f64,
}

impl Tracker {
    pub(crate) fn new(target: u32, total_bytes: u64, scheduled_mode: bool) -> Self {
        Self {
            target,
            total_bytes,
            scheduled_mode,
            attached: false,
            seen_updating: false,
            last: None,
            max_percent: 0.0,
        }
    }

    /// A tracker for a transfer that runs already and whose response will not come.
    pub(crate) fn attached(target: u32, total_bytes: u64) -> Self {
        Self {
            attached: true,
            seen_updating: true,
            ..Self::new(target, total_bytes, true)
        }
    }

    /// The transfer has started (zigbee2mqtt said `updating`).
    pub(crate) fn started(&self) -> bool {
        self.seen_updating
    }

    /// Highest percentage seen.
    pub(crate) fn max_percent(&self) -> f64 {
        self.max_percent
    }

    /// Whether the device got the whole image (progress 100 seen).
    pub(crate) fn downloaded(&self) -> bool {
        self.max_percent >= 100.0
    }

    /// Feeds one state; returns the progress to report (when it changed) and the verdict.
    pub(crate) fn on_state(&mut self, u: &UpdateState) -> (Option<TransferProgress>, Verdict) {
        if u.installed_version == Some(self.target)
            && matches!(u.state, Some(OtaState::Idle | OtaState::Available) | None)
        {
            return (None, Verdict::ReachedTarget);
        }
        if self.attached
            && matches!(
                u.state,
                Some(OtaState::Idle | OtaState::Available | OtaState::Scheduled)
            )
        {
            return (None, Verdict::EndedWithoutTarget);
        }
        let progress = match u.state {
            Some(OtaState::Updating) => {
                self.seen_updating = true;
                let p = u.progress.unwrap_or(0.0).clamp(0.0, 100.0);
                self.max_percent = self.max_percent.max(p);
                Some(if p >= 100.0 {
                    self.progress(
                        UpgradeStatus::Downloaded,
                        Some(100.0),
                        Some(0),
                        "image transferred; the device applies it and restarts (zigbee2mqtt \
                         waits up to 120 s for it)",
                    )
                } else {
                    self.progress(
                        UpgradeStatus::Updating,
                        Some(p as f32),
                        u.remaining,
                        "zigbee2mqtt is sending the image",
                    )
                })
            }
            Some(OtaState::Scheduled) if self.scheduled_mode => {
                if self.seen_updating {
                    return (None, Verdict::ScheduledRunFailed);
                }
                Some(self.progress(
                    UpgradeStatus::WaitingForWakeup,
                    None,
                    None,
                    "scheduled: waiting for the device to wake up and ask for its image",
                ))
            }
            Some(OtaState::Idle) if self.scheduled_mode && self.seen_updating => {
                return (None, Verdict::ScheduledRunFoundNoImage);
            }
            _ => None,
        };
        let changed = progress.filter(|p| self.last.as_ref() != Some(p));
        if let Some(p) = &changed {
            self.last = Some(p.clone());
        }
        (changed, Verdict::Pending)
    }

    fn progress(
        &self,
        status: UpgradeStatus,
        percent: Option<f32>,
        remaining_s: Option<u32>,
        detail: &str,
    ) -> TransferProgress {
        let sent = percent.map_or(0, |p| {
            (f64::from(p) / 100.0 * self.total_bytes as f64) as u64
        });
        TransferProgress {
            status,
            percent,
            remaining_s,
            bytes_sent: sent,
            bytes_total: self.total_bytes,
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(
        state: OtaState,
        installed: u32,
        progress: Option<f64>,
        remaining: Option<u32>,
    ) -> UpdateState {
        UpdateState {
            state: Some(state),
            installed_version: Some(installed),
            latest_version: Some(installed),
            progress,
            remaining,
            ..UpdateState::default()
        }
    }

    #[test]
    fn mains_update_progress_sequence() {
        let mut t = Tracker::new(90, 30_000, false);
        let (p, v) = t.on_state(&st(OtaState::Updating, 1, Some(0.0), Some(150)));
        let p = p.unwrap();
        assert_eq!(
            (p.status, p.percent, p.remaining_s),
            (UpgradeStatus::Updating, Some(0.0), Some(150))
        );
        assert_eq!(v, Verdict::Pending);
        // The same state again reports nothing new.
        assert_eq!(
            t.on_state(&st(OtaState::Updating, 1, Some(0.0), Some(150)))
                .0,
            None
        );
        let (p, _) = t.on_state(&st(OtaState::Updating, 1, Some(40.0), Some(90)));
        assert_eq!(p.unwrap().bytes_sent, 12_000);
        let (p, _) = t.on_state(&st(OtaState::Updating, 1, Some(100.0), Some(0)));
        assert_eq!(p.unwrap().status, UpgradeStatus::Downloaded);
        assert!(t.downloaded());
        assert_eq!(
            t.on_state(&st(OtaState::Idle, 90, None, None)).1,
            Verdict::ReachedTarget
        );
    }

    #[test]
    fn failure_states_in_update_mode_wait_for_the_response() {
        let mut t = Tracker::new(90, 1, false);
        t.on_state(&st(OtaState::Updating, 1, Some(50.0), Some(9)));
        assert_eq!(
            t.on_state(&st(OtaState::Available, 1, None, None)),
            (None, Verdict::Pending)
        );
        assert_eq!(
            t.on_state(&st(OtaState::Idle, 1, None, None)),
            (None, Verdict::Pending)
        );
    }

    #[test]
    fn scheduled_runs() {
        let mut t = Tracker::new(7, 100, true);
        // Idle before anything happened is the old state, not an outcome.
        assert_eq!(
            t.on_state(&st(OtaState::Idle, 6, None, None)).1,
            Verdict::Pending
        );
        let (p, _) = t.on_state(&st(OtaState::Scheduled, 6, None, None));
        assert_eq!(p.unwrap().status, UpgradeStatus::WaitingForWakeup);
        t.on_state(&st(OtaState::Updating, 6, Some(10.0), Some(50)));
        assert_eq!(
            t.clone()
                .on_state(&st(OtaState::Scheduled, 6, None, None))
                .1,
            Verdict::ScheduledRunFailed
        );
        assert_eq!(
            t.clone().on_state(&st(OtaState::Idle, 6, None, None)).1,
            Verdict::ScheduledRunFoundNoImage
        );
        assert_eq!(
            t.on_state(&st(OtaState::Idle, 7, None, None)).1,
            Verdict::ReachedTarget
        );
    }

    #[test]
    fn an_attached_tracker_needs_no_response() {
        let mut t = Tracker::attached(7, 100);
        assert!(t.started());
        let (p, v) = t.on_state(&st(OtaState::Updating, 6, Some(60.0), Some(5)));
        assert_eq!(p.unwrap().status, UpgradeStatus::Updating);
        assert_eq!(v, Verdict::Pending);
        assert_eq!(
            t.clone()
                .on_state(&st(OtaState::Available, 6, None, None))
                .1,
            Verdict::EndedWithoutTarget
        );
        assert_eq!(
            t.clone()
                .on_state(&st(OtaState::Scheduled, 6, None, None))
                .1,
            Verdict::EndedWithoutTarget
        );
        assert_eq!(
            t.on_state(&st(OtaState::Idle, 7, None, None)).1,
            Verdict::ReachedTarget
        );
    }
}

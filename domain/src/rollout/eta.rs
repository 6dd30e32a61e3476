//! Durations learned from the log: how long a transfer of a device model over a transport
//! takes, as the median of its recent successful updates, and what that makes of a plan.
//!
//! - [`TransferTimes`] is a fold over the log, kept in the projection
//!   ([`crate::projection::FleetState::transfer_times`]): every `TaskSucceeded` of an attempt
//!   adds the time from the attempt's transfer start (its first progress 2 or 6, else its
//!   dispatch, or the end of its last wait for a wake-up or the site's slot) to the device's
//!   report of the target version (`TaskVerifying`, so a health window is not transfer time;
//!   else the success), on otad's clock, to the samples of the device's (model, transport). A
//!   late success (after the server had ended the attempt) is not learned. Memory is bounded: the last [`SAMPLES`] per kind, at most [`MAX_KINDS`] kinds
//!   (later ones are not learned), model names clipped to [`MAX_MODEL`] bytes. Waiting for a
//!   wake-up or for the network's slot is not transfer time.
//! - [`transfer_estimate`] gives the median of a kind's samples, or the fixed guess of its
//!   transport ([`super::plan::typical_transfer_s`]) when nothing was learned, with a note.
//! - [`Estimates`] holds the estimate of every kind among a plan's targets, and its notes.
//! - [`remaining_s`] is the remaining time of a running rollout (`Watch`), with the same
//!   medians.
//! - [`wall_clock_s`] turns working seconds into wall-clock seconds from `now` under a
//!   maintenance window (time while it is closed passes without work).
//!
//! Pure: no clock, no I/O. The planner ([`super::plan`]) and the server's `Watch` use it. It
//! does not pace the remaining time by the rollout's rate (the plan does).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Transport;
use crate::projection::{DeviceView, FleetState, RolloutView, StageState};
use crate::rollout::plan::{self, typical_transfer_s};
use crate::rollout::spec::MaintenanceWindow;
use crate::rollout::window::{self, SiteZone};
use crate::time::UnixMillis;

/// Samples kept per (model, transport): the most recent successes.
pub const SAMPLES: usize = 15;
/// Kinds learned at most.
pub const MAX_KINDS: usize = 1000;
/// Longest model name kept (longer names are clipped).
pub const MAX_MODEL: usize = 64;

/// The transport's name in notes.
fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Zigbee2Mqtt => "zigbee2mqtt",
        Transport::Esphome => "esphome",
        Transport::Serial => "serial",
    }
}

fn clip(model: &str) -> String {
    let mut end = model.len().min(MAX_MODEL);
    while !model.is_char_boundary(end) {
        end -= 1;
    }
    model[..end].to_string()
}

/// Recent transfer times per (model, transport), in milliseconds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTimes {
    by_kind: BTreeMap<(String, Transport), VecDeque<u64>>,
}

impl TransferTimes {
    /// A successful transfer of a `model` device over `transport` took `took`.
    pub fn record(&mut self, model: &str, transport: Transport, took: Duration) {
        let key = (clip(model), transport);
        if !self.by_kind.contains_key(&key) && self.by_kind.len() >= MAX_KINDS {
            return;
        }
        let samples = self.by_kind.entry(key).or_default();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
    }

    /// The median of the kind's samples and how many there are; `None` before any.
    pub fn median(&self, model: &str, transport: Transport) -> Option<(Duration, usize)> {
        let samples = self.by_kind.get(&(clip(model), transport))?;
        let mut sorted: Vec<u64> = samples.iter().copied().collect();
        sorted.sort_unstable();
        let n = sorted.len();
        let mid = match n {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => sorted[n / 2 - 1].saturating_add(sorted[n / 2]) / 2,
        };
        Some((Duration::from_millis(mid), n))
    }
}

/// How long one transfer of a kind of device is expected to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferEstimate {
    /// Device model ("" when its site does not say).
    pub model: String,
    /// Transport.
    pub transport: Transport,
    /// Expected seconds per device (at least 1).
    pub seconds: u64,
    /// Past successes the median is taken over; 0: the transport's fixed guess.
    pub samples: usize,
}

impl TransferEstimate {
    /// Learned from the log (not the fixed guess).
    pub fn learned(&self) -> bool {
        self.samples > 0
    }

    /// `model X over zigbee2mqtt: 4 min, the median of 12 past updates` or the fallback note.
    pub fn note(&self) -> String {
        let model = if self.model.is_empty() {
            "devices without a model".to_string()
        } else {
            format!("model {}", self.model)
        };
        let t = transport_name(self.transport);
        if self.learned() {
            format!(
                "{model} over {t}: {} s, the median of {} past update(s)",
                self.seconds, self.samples
            )
        } else {
            format!(
                "{model} over {t}: no past update in the log, assumed {} s (the typical {t} transfer)",
                self.seconds
            )
        }
    }
}

/// The expected transfer time of a `model` device over `transport`: the learned median, else
/// the transport's fixed guess.
pub fn transfer_estimate(
    times: &TransferTimes,
    model: &str,
    transport: Option<Transport>,
) -> TransferEstimate {
    let t = transport.unwrap_or(Transport::Esphome);
    let (seconds, samples) = match times.median(model, t) {
        Some((d, n)) => (d.as_millis().div_ceil(1000).max(1) as u64, n),
        None => (typical_transfer_s(transport), 0),
    };
    TransferEstimate {
        model: clip(model),
        transport: t,
        seconds,
        samples,
    }
}

/// The transfer estimate of every kind (model, transport) among some devices.
#[derive(Debug, Clone, Default)]
pub struct Estimates(BTreeMap<(Option<Transport>, String), TransferEstimate>);

impl Estimates {
    /// The estimates of the kinds of `devices`.
    pub fn learn(times: &TransferTimes, devices: &[&DeviceView]) -> Self {
        let mut kinds = BTreeMap::new();
        for d in devices {
            let (t, model) = (d.facts.transport, d.facts.model.as_str());
            kinds
                .entry((t, model.to_string()))
                .or_insert_with(|| transfer_estimate(times, model, t));
        }
        Self(kinds)
    }

    /// Expected transfer seconds of `d` (the typical guess for a kind not learned here).
    pub fn seconds(&self, d: &DeviceView) -> u64 {
        self.0
            .get(&(d.facts.transport, d.facts.model.clone()))
            .map_or_else(|| typical_transfer_s(d.facts.transport), |e| e.seconds)
    }

    /// One note per kind: learned kinds first, then those that fell back to the fixed guess.
    pub fn notes(&self) -> Vec<String> {
        let (learned, guessed): (Vec<_>, Vec<_>) = self.0.values().partition(|e| e.learned());
        learned.iter().chain(&guessed).map(|e| e.note()).collect()
    }
}

/// The remaining time of a started rollout `r` at `now`, seconds of wall clock (stretched by
/// its maintenance window): per stage not ended, its devices whose tasks have not ended
/// simulated as the planner does ([`plan::estimate_paced_s`]) with the learned transfer times
/// (a device already transferring counts only what is left of its estimate) followed by the
/// health window of the last one, or until the health windows under way end, capped at the
/// stage's deadline, plus what is left of its soak (and of a batch check still running).
/// `None` before the start (the plan says it), once ended, or when the window never opens.
pub fn remaining_s(r: &RolloutView, state: &FleetState, now: UnixMillis) -> Option<u64> {
    if r.stages.is_empty() || r.state.is_terminal() {
        return None;
    }
    let all: Vec<&DeviceView> = r
        .stages
        .iter()
        .flat_map(|s| &s.device_ids)
        .filter_map(|id| state.devices.get(id).map(Box::as_ref))
        .collect();
    let kinds = Estimates::learn(&state.transfer_times, &all);
    let task_of = |d: &DeviceView| {
        r.tasks_by_device
            .get(&d.id)
            .and_then(|t| state.tasks.get(t).map(Box::as_ref))
    };
    let left = |d: &DeviceView| {
        let est = kinds.seconds(d);
        match task_of(d).and_then(|t| t.transfer_from_ms) {
            Some(from) => est.saturating_sub(now.since(from).as_secs()).max(1),
            None => est,
        }
    };
    let secs_until = |at: Option<UnixMillis>| at.map(|at| at.since(now).as_secs());
    // A batch check still running: until its deadline.
    let mut total = r
        .batch_check
        .as_ref()
        .filter(|b| !b.completed)
        .and_then(|b| secs_until(Some(b.deadline_at_ms)))
        .unwrap_or(0);
    for (i, stage) in r.stages.iter().enumerate() {
        let soak = u64::from(r.spec.stages.get(i).map_or(0, |s| s.soak_s));
        total += match stage.state {
            StageState::Succeeded | StageState::Failed => 0,
            StageState::Soaking => secs_until(stage.soak_until_ms).unwrap_or(0),
            StageState::Pending | StageState::Running => {
                let open: Vec<&DeviceView> = stage
                    .device_ids
                    .iter()
                    .filter_map(|id| state.devices.get(id).map(Box::as_ref))
                    .filter(|d| task_of(d).is_none_or(|t| !t.phase.is_terminal()))
                    .collect();
                // Devices in their health window hold no slot: they end when it does. The
                // others transfer, then the last of them verifies for its window.
                let verifying = open
                    .iter()
                    .filter_map(|d| secs_until(task_of(d)?.verifying_until_ms))
                    .max()
                    .unwrap_or(0);
                let transferring: Vec<&DeviceView> = open
                    .iter()
                    .copied()
                    .filter(|d| task_of(d).is_none_or(|t| t.verifying_until_ms.is_none()))
                    .collect();
                let simulated = if transferring.is_empty() {
                    verifying
                } else {
                    (plan::estimate_s(&transferring, &r.spec.concurrency, &left)
                        + plan::verification_s(&r.spec, &transferring))
                    .max(verifying)
                };
                let deadline = match stage.deadline_at_ms {
                    Some(at) => secs_until(Some(at)),
                    None => r
                        .spec
                        .stages
                        .get(i)
                        .filter(|s| s.deadline_s > 0)
                        .map(|s| u64::from(s.deadline_s)),
                };
                deadline.map_or(simulated, |d| simulated.min(d)) + soak
            }
        };
    }
    plan::makespan_s(&r.spec, state, &all, total, Some(now))
}

/// Wall-clock seconds from `now` until `working_s` seconds of work are done when work happens
/// only while `window` is open in `zone` (`None`: always). A window that never opens gives
/// `None`.
pub fn wall_clock_s(
    working_s: u64,
    window: Option<&MaintenanceWindow>,
    zone: SiteZone,
    now: UnixMillis,
) -> Option<u64> {
    let Some(w) = window else {
        return Some(working_s);
    };
    let mut at = now;
    let mut left = Duration::from_secs(working_s);
    // Each turn crosses one opening or closing: a few per day; a bound keeps it finite.
    for _ in 0..100_000 {
        let open = window::is_open(w, zone, at);
        let change = window::next_change(w, zone, at);
        if open {
            let until = change.map_or(left, |c| c.since(at));
            if until >= left {
                return Some((at + left).since(now).as_secs());
            }
            left -= until;
        }
        at = change?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_the_recent_samples_per_kind() {
        let mut t = TransferTimes::default();
        assert_eq!(t.median("bulb", Transport::Zigbee2Mqtt), None);
        for s in [300, 100, 200] {
            t.record("bulb", Transport::Zigbee2Mqtt, Duration::from_secs(s));
        }
        assert_eq!(
            t.median("bulb", Transport::Zigbee2Mqtt),
            Some((Duration::from_secs(200), 3))
        );
        t.record("bulb", Transport::Zigbee2Mqtt, Duration::from_secs(500));
        assert_eq!(
            t.median("bulb", Transport::Zigbee2Mqtt),
            Some((Duration::from_secs(250), 4))
        );
        // Another transport of the same model is another kind.
        assert_eq!(t.median("bulb", Transport::Esphome), None);
        // Only the last SAMPLES count: 20 fast ones push the slow ones out.
        for _ in 0..20 {
            t.record("bulb", Transport::Zigbee2Mqtt, Duration::from_secs(60));
        }
        assert_eq!(
            t.median("bulb", Transport::Zigbee2Mqtt),
            Some((Duration::from_secs(60), SAMPLES))
        );
    }

    #[test]
    fn without_history_the_transport_guess_and_a_note() {
        let mut t = TransferTimes::default();
        let e = transfer_estimate(&t, "bulb", Some(Transport::Zigbee2Mqtt));
        assert_eq!(
            (e.seconds, e.samples),
            (super::super::plan::ZIGBEE_TRANSFER_S, 0)
        );
        assert_eq!(
            e.note(),
            "model bulb over zigbee2mqtt: no past update in the log, assumed 1200 s (the typical zigbee2mqtt transfer)"
        );
        t.record(
            "bulb",
            Transport::Zigbee2Mqtt,
            Duration::from_millis(400_500),
        );
        let e = transfer_estimate(&t, "bulb", Some(Transport::Zigbee2Mqtt));
        assert_eq!((e.seconds, e.samples), (401, 1));
        assert_eq!(
            e.note(),
            "model bulb over zigbee2mqtt: 401 s, the median of 1 past update(s)"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = TransferTimes::default();
        for i in 0..MAX_KINDS + 5 {
            t.record(&format!("m{i}"), Transport::Esphome, Duration::from_secs(1));
        }
        assert_eq!(t.by_kind.len(), MAX_KINDS);
        t.record(&"x".repeat(500), Transport::Esphome, Duration::from_secs(1));
        assert!(t.by_kind.keys().all(|(m, _)| m.len() <= MAX_MODEL));
    }

    mod fold {
        use std::time::Duration;

        use crate::events::*;
        use crate::fixture::{FW, Log, S, T0, esp_device};
        use crate::health::Health;
        use crate::model::{Transport, VersionInfo};
        use crate::rollout::spec::UpgradeType;
        use crate::status::UpgradeStatus;
        use crate::time::UnixMillis;

        fn created(log: &mut Log, task: &str, device: &str) {
            log.event(
                T0,
                &streams::task(task),
                TaskCreated {
                    task_id: task.into(),
                    device_id: device.into(),
                    site_id: "a".into(),
                    rollout_id: None,
                    stage: 0,
                    firmware_id: FW.into(),
                    target: VersionInfo::default(),
                    upgrade_type: UpgradeType::Forced,
                    downgrade: false,
                    max_attempts: 3,
                    initial_backoff_s: 1,
                    max_backoff_s: 1,
                    timeout_s: 0,
                    flash_offset: None,
                    auto: false,
                    wake_timeout_s: 0,
                    from: None,
                    from_firmware_id: None,
                },
            );
        }

        fn progress(log: &mut Log, at: UnixMillis, task: &str, status: UpgradeStatus) {
            log.event(
                at,
                &streams::task(task),
                TaskProgressed {
                    attempt: 1,
                    status,
                    progress: 0.0,
                    remaining_s: None,
                    bytes_sent: 0,
                    bytes_total: 0,
                    detail: String::new(),
                    source: None,
                },
            );
        }

        fn dispatched(log: &mut Log, at: UnixMillis, task: &str) {
            let e = TaskDispatched {
                attempt: 1,
                command_id: 1,
                timeout_at_ms: at + 600 * S,
                schedule: false,
            };
            log.event(at, &streams::task(task), e);
        }

        fn succeeded(log: &mut Log, at: UnixMillis, task: &str) {
            let e = TaskSucceeded {
                attempt: 1,
                from: VersionInfo::default(),
                to: VersionInfo::default(),
                duration_ms: 1,
                wire_bytes: 1,
                source: None,
                late: false,
                health: Health::NotChecked,
            };
            log.event(at, &streams::task(task), e);
        }

        #[test]
        fn a_running_rollout_has_the_remaining_time_of_its_open_devices() {
            use std::collections::HashMap;

            use crate::fixture::{esp_firmware, spec, stage, start_rollout};
            use crate::rollout::scheduler::{self, Input, MAX_NEW_TASKS_PER_STEP};
            use crate::rollout::spec::StageSize;

            let mut log = Log::default();
            log.event(T0, &streams::firmware(FW), esp_firmware(FW, "2.0.0"));
            for i in 0..4 {
                let mut r = esp_device("1.0.0");
                r.facts.model = "esp32dev".into();
                log.event(T0, &streams::device(&format!("a/e{i}")), r);
            }
            log.state.transfer_times.record(
                "esp32dev",
                Transport::Esphome,
                Duration::from_secs(30),
            );
            let mut s = spec(vec![stage("all", StageSize::CumulativePercent(100.0))]);
            s.concurrency.per_esphome_site = 2;
            s.stages[0].soak_s = 100;
            let mut with_health = log.clone();
            let mut gated = s.clone();
            gated.health.esphome_window_s = 45;
            start_rollout(&mut with_health, T0, "ro", gated);
            start_rollout(&mut log, T0, "ro", s);
            let remaining = |log: &Log, at| {
                super::super::remaining_s(&log.state.rollouts["ro"], &log.state, at)
            };
            // Four devices two at a time, 30 s each, then the soak.
            assert_eq!(remaining(&log, T0), Some(60 + 100));
            // With a health window, the last device verifies for it before the soak.
            assert_eq!(remaining(&with_health, T0), Some(60 + 45 + 100));
            let d = scheduler::reconcile(Input {
                rollout: &log.state.rollouts["ro"],
                state: &log.state,
                now_ms: T0,
                batch_check_in_flight: false,
                max_new_tasks: MAX_NEW_TASKS_PER_STEP,
                require_approval: false,
            });
            let seen: HashMap<String, u64> = log.versions.clone();
            log.commit(T0, &d.changes("ro"), &seen).expect("commit");
            let task = |log: &Log, d: &str| log.state.rollouts["ro"].tasks_by_device[d].clone();
            let (t0, t1) = (task(&log, "a/e0"), task(&log, "a/e1"));
            dispatched(&mut log, T0, &t0);
            dispatched(&mut log, T0 + 20 * S, &t1);
            succeeded(&mut log, T0 + 30 * S, &t0);
            // At 40 s: a/e1 has 10 s left; a/e2 runs beside it, a/e3 after a/e1 (10 + 30 s).
            assert_eq!(remaining(&log, T0 + 40 * S), Some(40 + 100));
            assert_eq!(
                log.state
                    .transfer_times
                    .median("esp32dev", Transport::Esphome),
                Some((Duration::from_secs(30), 2))
            );
        }

        #[test]
        fn successes_teach_the_transfer_time_without_waits_and_health_windows() {
            let mut log = Log::default();
            for d in ["a/1", "a/2", "a/3"] {
                let mut r = esp_device("1.0.0");
                r.facts.model = "esp32dev".into();
                log.event(T0, &streams::device(d), r);
            }
            // a/1: dispatched at 0, updating from 10 s, success at 100 s: 90 s.
            created(&mut log, "t1", "a/1");
            dispatched(&mut log, T0, "t1");
            progress(&mut log, T0 + 10 * S, "t1", UpgradeStatus::Updating);
            succeeded(&mut log, T0 + 100 * S, "t1");
            // a/2: no progress at all: from its dispatch, 70 s.
            created(&mut log, "t2", "a/2");
            dispatched(&mut log, T0, "t2");
            succeeded(&mut log, T0 + 70 * S, "t2");
            // a/3: waits 1000 s for a wake-up, prepares, updates for 50 s, then a 120 s health
            // window: 50 s.
            created(&mut log, "t3", "a/3");
            dispatched(&mut log, T0, "t3");
            progress(&mut log, T0 + S, "t3", UpgradeStatus::WaitingForWakeup);
            progress(&mut log, T0 + 1000 * S, "t3", UpgradeStatus::Updating);
            let verifying = TaskVerifying {
                attempt: 1,
                until_ms: T0 + 1170 * S,
                to: VersionInfo::default(),
                source: None,
            };
            log.event(T0 + 1050 * S, &streams::task("t3"), verifying);
            succeeded(&mut log, T0 + 1170 * S, "t3");
            let times = &log.state.transfer_times;
            assert_eq!(
                times.median("esp32dev", Transport::Esphome),
                Some((Duration::from_secs(70), 3)),
                "the median of 90, 70 and 50 s"
            );
            assert_eq!(times.median("esp32dev", Transport::Zigbee2Mqtt), None);
        }
    }

    #[test]
    fn closed_window_time_passes_without_work() {
        let w = MaintenanceWindow {
            start_minute: 22 * 60,
            end_minute: 23 * 60,
            weekdays: vec![],
        };
        // 2026-01-05 00:00 UTC (a Monday): the window opens at 22:00.
        let monday = UnixMillis::from_unix_ms(1_767_571_200_000);
        let zone = SiteZone::Offset(0);
        assert_eq!(wall_clock_s(5400, None, zone, monday), Some(5400));
        // 1 h on Monday night, the other 30 min on Tuesday night.
        assert_eq!(
            wall_clock_s(5400, Some(&w), zone, monday),
            Some((24 + 22) * 3600 + 1800)
        );
    }
}

//! Given a fleet, when the dispatcher decides at `now`, then these events and commands.

use std::cell::Cell;
use std::time::Duration;

use super::*;
use crate::events::*;
use crate::fixture::*;
use crate::rollout::scheduler::{Input, MAX_NEW_TASKS_PER_STEP, reconcile};
use crate::rollout::spec::*;
use crate::status::UpgradeStatus;

const RO: &str = "ro-1";

struct World {
    log: Log,
    ids: Cell<u64>,
    probes: ProbeMemory,
    offline_sites: Vec<String>,
}

impl World {
    fn new() -> Self {
        let mut log = Log::default();
        log.event(T0, &streams::firmware(FW), esp_firmware(FW, "2.0.0"));
        log.event(T0, &streams::firmware("fw-zb"), zigbee_firmware("fw-zb"));
        connected(&mut log, T0, "a");
        connected(&mut log, T0, "b");
        World {
            log,
            ids: Cell::new(1),
            probes: ProbeMemory::default(),
            offline_sites: Vec::new(),
        }
    }

    fn device(&mut self, id: &str, report: DeviceReported) -> &mut Self {
        self.log.event(T0, &streams::device(id), report);
        self
    }

    fn decide(&self, now: UnixMillis) -> DispatchDecision {
        let offline = self.offline_sites.clone();
        let connected = move |site: &str| !offline.iter().any(|s| s == site);
        let next = || {
            let id = self.ids.get();
            self.ids.set(id + 1);
            id
        };
        decide(&DispatchInput {
            state: &self.log.state,
            now_ms: now,
            connected: &connected,
            next_command_id: &next,
            probes: &self.probes,
        })
    }

    /// Decides and records, as the server does.
    fn step(&mut self, now: UnixMillis) -> DispatchDecision {
        let d = self.decide(now);
        let seen = self.log.versions.clone();
        self.log
            .commit(now, &d.changes, &seen)
            .expect("no conflict");
        self.probes = d.probes.clone();
        d
    }

    /// Runs the rollout scheduler once at `now` and records it.
    fn schedule(&mut self, now: UnixMillis) {
        let d = reconcile(Input {
            rollout: &self.log.state.rollouts[RO],
            state: &self.log.state,
            now_ms: now,
            batch_check_in_flight: false,
            max_new_tasks: MAX_NEW_TASKS_PER_STEP,
            require_approval: false,
        });
        let seen = self.log.versions.clone();
        self.log
            .commit(now, &d.changes(RO), &seen)
            .expect("no conflict");
    }

    fn single_update(&mut self, task_id: &str, device: &str, firmware: &str) {
        let site = device.split('/').next().unwrap_or_default().to_string();
        self.log.event(
            T0,
            &streams::task(task_id),
            TaskCreated {
                task_id: task_id.into(),
                device_id: device.into(),
                site_id: site,
                rollout_id: None,
                stage: 0,
                firmware_id: firmware.into(),
                target: VersionInfo::default(),
                upgrade_type: UpgradeType::Forced,
                downgrade: false,
                max_attempts: 3,
                initial_backoff_s: 30,
                max_backoff_s: 900,
                timeout_s: 0,
                flash_offset: None,
                auto: false,
                wake_timeout_s: 0,
                from: None,
                from_firmware_id: None,
            },
        );
    }

    fn progress(&mut self, at: UnixMillis, task: &str, status: UpgradeStatus) {
        let attempt = self.log.state.tasks[task].attempt;
        self.log.event(
            at,
            &streams::task(task),
            TaskProgressed {
                attempt,
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

    fn phase(&self, task: &str) -> TaskPhase {
        self.log.state.tasks[task].phase
    }
}

use crate::model::VersionInfo;

fn dispatched_tasks(d: &DispatchDecision) -> Vec<String> {
    d.commands
        .iter()
        .filter_map(|c| match c {
            Command::Update { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rollout_task_is_dispatched_guarded_by_its_rollout() {
    let mut w = World::new();
    w.device("a/1", esp_device("1.0.0"));
    start_rollout(
        &mut w.log,
        T0,
        RO,
        spec(vec![stage("all", StageSize::CumulativePercent(100.0))]),
    );
    w.schedule(T0);
    let d = w.decide(T0 + S);
    assert_eq!(d.commands.len(), 1);
    let Command::Update {
        attempt, schedule, ..
    } = &d.commands[0]
    else {
        panic!("{:?}", d.commands)
    };
    assert_eq!((*attempt, *schedule), (1, false));
    let guard = d
        .changes
        .iter()
        .find(|c| c.stream == streams::rollout(RO))
        .expect("a guard on the rollout");
    assert!(guard.is_guard());
    // The transfer budget (ESPHome default, 10 min) is when it looks again.
    assert_eq!(d.next_due_ms, Some(T0 + S + 600 * S));
    // A pause recorded between the decision and its append refuses the whole append.
    let seen = w.log.versions.clone();
    w.log.event(
        T0 + S,
        &streams::rollout(RO),
        RolloutPaused {
            reason: "operator".into(),
            automatic: false,
        },
    );
    assert!(w.log.commit(T0 + S, &d.changes, &seen).is_err());
    // Decided again on the paused rollout: nothing goes.
    assert!(w.decide(T0 + 2 * S).commands.is_empty());
}

#[test]
fn one_zigbee_update_per_network_across_rollouts_and_single_updates() {
    let mut w = World::new();
    w.device("a/bulb1", zigbee_device("zb", false))
        .device("a/bulb2", zigbee_device("zb", false))
        .device("a/bulb3", zigbee_device("zb", false))
        .device("a/other", zigbee_device("zb2", false));
    w.single_update("t-1", "a/bulb1", "fw-zb");
    w.single_update("t-2", "a/bulb2", "fw-zb");
    w.single_update("t-3", "a/other", "fw-zb");
    let d = w.step(T0 + S);
    // t-1 and t-3 are on different networks; t-2 waits behind t-1 and says so.
    assert_eq!(dispatched_tasks(&d), ["t-1", "t-3"]);
    assert_eq!(w.phase("t-2"), TaskPhase::Held);
    let held = &w.log.state.tasks["t-2"];
    assert_eq!(
        held.error.as_ref().map(|e| e.code),
        Some(ErrorCode::OneAtATime)
    );
    assert!(
        held.remind.contains("queued behind task t-1") && held.remind.contains("network zb"),
        "{}",
        held.remind
    );
    // Said once: the next pass records nothing for it.
    let again = w.step(T0 + 2 * S);
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    // A rollout's task on the same network waits too (no word: rollouts wait for slots).
    let mut s = spec(vec![stage("all", StageSize::CumulativePercent(100.0))]);
    s.firmware_id = "fw-zb".into();
    s.selector.device_ids = vec!["a/bulb3".into()];
    start_rollout(&mut w.log, T0 + 3 * S, RO, s);
    w.schedule(T0 + 3 * S);
    assert!(dispatched_tasks(&w.step(T0 + 4 * S)).is_empty());
    // t-1 ends: the oldest waiting task on the network goes next.
    w.log.event(
        T0 + 5 * S,
        &streams::task("t-1"),
        TaskSucceeded {
            attempt: 1,
            from: VersionInfo::default(),
            to: VersionInfo::default(),
            duration_ms: 1,
            wire_bytes: 1,
            source: None,
            late: false,
            health: crate::health::Health::NotChecked,
        },
    );
    assert_eq!(dispatched_tasks(&w.step(T0 + 6 * S)), ["t-2"]);
}

#[test]
fn a_task_waiting_for_a_wake_up_holds_no_slot_of_its_network() {
    let mut w = World::new();
    w.device("a/remote", zigbee_device("zb", true))
        .device("a/bulb", zigbee_device("zb", false));
    w.single_update("t-sleepy", "a/remote", "fw-zb");
    let d = w.step(T0 + S);
    let Command::Update { schedule, .. } = &d.commands[0] else {
        panic!()
    };
    assert!(*schedule, "a sleepy device is scheduled for its wake-up");
    w.progress(T0 + 2 * S, "t-sleepy", UpgradeStatus::WaitingForWakeup);
    w.single_update("t-bulb", "a/bulb", "fw-zb");
    assert_eq!(dispatched_tasks(&w.step(T0 + 3 * S)), ["t-bulb"]);
}

#[test]
fn phase_budgets_wake_up_then_transfer() {
    let mut w = World::new();
    w.device("a/remote", zigbee_device("zb", true));
    w.single_update("t", "a/remote", "fw-zb");
    w.step(T0);
    // Preparing: the transfer budget from dispatch (30 min for Zigbee).
    assert_eq!(w.log.state.tasks["t"].timeout_at_ms, Some(T0 + 1800 * S));
    // Asleep: the wake-up budget (7 days) from when it began.
    w.progress(T0 + 60 * S, "t", UpgradeStatus::WaitingForWakeup);
    let week = 7 * 24 * 3600 * S;
    assert_eq!(
        w.log.state.tasks["t"].timeout_at_ms,
        Some(T0 + 60 * S + week)
    );
    // Six hours later nothing has timed out.
    let six_h = 6 * 3600 * S;
    let d = w.step(T0 + six_h);
    assert!(d.changes.is_empty() && d.commands.is_empty(), "{d:?}");
    assert_eq!(d.next_due_ms, Some(T0 + 60 * S + week));
    // It wakes up and the transfer starts: a fresh transfer budget.
    w.progress(T0 + six_h, "t", UpgradeStatus::Updating);
    assert_eq!(
        w.log.state.tasks["t"].timeout_at_ms,
        Some(T0 + six_h + 1800 * S)
    );
    // Past it: 5016 and a cancel to the site.
    let d = w.step(T0 + six_h + 1800 * S);
    assert_eq!(w.phase("t"), TaskPhase::TimedOut);
    assert!(matches!(d.commands.as_slice(), [Command::Cancel { .. }]));
    let e = w.log.state.tasks["t"].error.clone().unwrap();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(
        e.message.contains("transfer budget (30 min)"),
        "{}",
        e.message
    );
}

#[test]
fn a_device_that_never_wakes_times_out_at_the_wake_up_budget() {
    let mut w = World::new();
    w.device("a/remote", zigbee_device("zb", true));
    w.single_update("t", "a/remote", "fw-zb");
    w.step(T0);
    w.progress(T0 + S, "t", UpgradeStatus::WaitingForWakeup);
    let week = 7 * 24 * 3600 * S;
    assert!(
        w.step(T0 + S + week - Duration::from_millis(1))
            .changes
            .is_empty()
    );
    w.step(T0 + S + week);
    let t = &w.log.state.tasks["t"];
    assert_eq!(t.phase, TaskPhase::TimedOut);
    assert!(
        t.error
            .as_ref()
            .unwrap()
            .message
            .contains("did not wake up"),
        "{:?}",
        t.error
    );
}

#[test]
fn an_unreachable_device_is_probed_with_a_growing_interval() {
    let mut w = World::new();
    let mut off = esp_device("1.0.0");
    off.facts.reachable = false;
    w.device("a/plug", off);
    w.single_update("t", "a/plug", FW);
    let probe_at = |d: &DispatchDecision| {
        d.commands
            .iter()
            .any(|c| matches!(c, Command::Probe { device_local_ids, site_id, .. } if device_local_ids == &["plug".to_string()] && site_id == "a"))
    };
    let d = w.step(T0);
    assert!(probe_at(&d), "probed at once: {:?}", d.commands);
    assert_eq!(w.phase("t"), TaskPhase::Held);
    assert_eq!(d.next_due_ms, Some(T0 + 2 * S));
    let mut probes = vec![T0];
    let mut now = T0;
    while now < T0 + 20 * 60 * S {
        now += S;
        let d = w.step(now);
        assert!(
            d.changes.is_empty(),
            "the hold is recorded once, not per probe: {:?}",
            d.changes
        );
        if probe_at(&d) {
            probes.push(now);
        }
    }
    let gaps: Vec<u64> = probes
        .windows(2)
        .map(|p| p[1].since(p[0]).as_secs())
        .collect();
    assert_eq!(&gaps[..8], &[2, 4, 8, 16, 32, 64, 128, 256]);
    assert!(gaps[8..].iter().all(|g| *g == 300), "{gaps:?}");
    // The device answers: the next pass dispatches and forgets the probes.
    w.device("a/plug", esp_device("1.0.0"));
    let d = w.step(now + S);
    assert_eq!(dispatched_tasks(&d), ["t"]);
    assert!(d.probes.is_empty());
}

#[test]
fn no_probe_while_the_site_is_disconnected() {
    let mut w = World::new();
    let mut off = esp_device("1.0.0");
    off.facts.reachable = false;
    w.device("b/plug", off);
    w.single_update("t", "b/plug", FW);
    w.offline_sites = vec!["b".into()];
    let d = w.step(T0);
    assert!(d.commands.is_empty());
    assert_eq!(
        w.log.state.tasks["t"].error.as_ref().map(|e| e.code),
        Some(ErrorCode::AgentDisconnected)
    );
}

#[test]
fn a_success_after_the_server_timed_the_task_out_counts_late() {
    let mut w = World::new();
    w.device("a/1", esp_device("1.0.0"));
    w.single_update("t", "a/1", FW);
    w.step(T0);
    w.progress(T0 + S, "t", UpgradeStatus::Updating);
    w.step(T0 + S + 600 * S);
    assert_eq!(w.phase("t"), TaskPhase::TimedOut);
    assert!(w.log.state.tasks["t"].ended_by_server);
    let success = |late| TaskSucceeded {
        attempt: 1,
        from: VersionInfo::default(),
        to: VersionInfo {
            version: "2.0.0".into(),
            ..Default::default()
        },
        duration_ms: 700_000,
        wire_bytes: 1000,
        source: None,
        late,
        health: crate::health::Health::NotChecked,
    };
    // Only a success marked late moves an ended task.
    w.log
        .event(T0 + 700 * S, &streams::task("t"), success(false));
    assert_eq!(w.phase("t"), TaskPhase::TimedOut);
    w.log
        .event(T0 + 700 * S, &streams::task("t"), success(true));
    let t = &w.log.state.tasks["t"];
    assert_eq!(t.phase, TaskPhase::Succeeded);
    assert!(t.late && t.error.is_none());
    assert_eq!(w.log.state.devices["a/1"].facts.current.version, "2.0.0");
}

#[test]
fn probe_intervals() {
    assert_eq!(probe_interval(1), Duration::from_millis(2_000));
    assert_eq!(probe_interval(2), Duration::from_millis(4_000));
    assert_eq!(probe_interval(9), Duration::from_millis(300_000));
    assert_eq!(probe_interval(u32::MAX), Duration::from_millis(300_000));
}

/// A rollout of `n` ESPHome devices at site `a` (no concurrency limit to speak of) with `rate`.
fn rated_world(n: usize, rate: crate::rollout::rate::Rate) -> World {
    let mut w = World::new();
    for i in 0..n {
        w.device(&format!("a/{i:02}"), esp_device("1.0.0"));
    }
    let mut s = spec(vec![stage("all", StageSize::CumulativePercent(100.0))]);
    s.concurrency = Concurrency {
        global: 1000,
        per_site: 1000,
        per_zigbee_network: 1,
        per_esphome_site: 1000,
    };
    s.rate = Some(rate);
    start_rollout(&mut w.log, T0, RO, s);
    w.schedule(T0);
    w
}

impl World {
    /// Runs the dispatcher every second from `T0` for `secs` seconds; every dispatched task
    /// succeeds `success_after` later. The seconds (from `T0`) of each dispatch, and the times
    /// the dispatcher asked to look again while tasks waited for the rate.
    fn run_rated(&mut self, secs: u64, success_after: Duration) -> (Vec<u64>, Vec<u64>) {
        let (mut at, mut wake_ups) = (Vec::new(), Vec::new());
        let mut pending: Vec<(UnixMillis, String)> = Vec::new();
        for s in 0..=secs {
            let now = T0 + S * u32::try_from(s).unwrap();
            for (_, task) in pending.iter().filter(|(due, _)| *due == now) {
                self.log.event(
                    now,
                    &streams::task(task),
                    TaskSucceeded {
                        attempt: 1,
                        from: VersionInfo::default(),
                        to: VersionInfo::default(),
                        duration_ms: 1,
                        wire_bytes: 1,
                        source: None,
                        late: false,
                        health: crate::health::Health::NotChecked,
                    },
                );
            }
            let d = self.step(now);
            for task in dispatched_tasks(&d) {
                at.push(s);
                pending.push((now + success_after, task));
            }
            let waiting = self
                .log
                .state
                .tasks
                .values()
                .map(Box::as_ref)
                .any(|t| t.attempt == 0);
            if waiting && let Some(due) = d.next_due_ms.filter(|due| *due < now + 600 * S) {
                wake_ups.push(due.since(T0).as_secs());
            }
        }
        wake_ups.dedup();
        (at, wake_ups)
    }
}

#[test]
fn a_rate_of_6_per_minute_starts_20_devices_in_4_minutes() {
    use crate::rollout::rate::Rate;
    let mut w = rated_world(
        20,
        Rate {
            max_per_minute: 6,
            ramp: None,
        },
    );
    let (at, wake_ups) = w.run_rated(300, 10 * S);
    let per_minute: Vec<usize> = (0..5)
        .map(|m| at.iter().filter(|s| **s / 60 == m).count())
        .collect();
    assert_eq!(per_minute, [6, 6, 6, 2, 0], "{at:?}");
    assert!(
        at.iter().all(|s| s % 60 == 0),
        "each minute's starts go at once: {at:?}"
    );
    // While devices wait for the rate, the dispatcher asks to look again when the next slot
    // opens: a minute after the starts that used the rate up.
    assert_eq!(wake_ups, [60, 120, 180], "{wake_ups:?}");
    // Retries are not limited: a failed first attempt goes again at its retry time even when
    // the minute's rate is used up (asserted via the starts: exactly 20 devices started).
    assert_eq!(at.len(), 20);
}

#[test]
fn the_ramp_raises_the_rate_as_devices_succeed() {
    use crate::rollout::rate::{Ramp, RampAfter, Rate};
    let mut w = rated_world(
        20,
        Rate {
            max_per_minute: 30,
            ramp: Some(Ramp {
                start_per_minute: 2,
                factor: 2.0,
                after: RampAfter::Successes(5),
            }),
        },
    );
    let (at, _) = w.run_rated(600, 10 * S);
    // 2/min until 5 succeeded (at 130 s: 6), then 4/min (two more at once, two at 180 s when
    // the 120 s starts are a minute old); 8/min from 10 successes (190 s), 16/min from 15
    // (200 s). A flat 2/min would need 10 minutes.
    let mut starts: Vec<(u64, usize)> = Vec::new();
    for s in at {
        match starts.last_mut() {
            Some((t, n)) if *t == s => *n += 1,
            _ => starts.push((s, 1)),
        }
    }
    assert_eq!(
        starts,
        [
            (0, 2),
            (60, 2),
            (120, 2),
            (130, 2),
            (180, 2),
            (190, 6),
            (200, 4)
        ]
    );
}

#[test]
fn the_rate_is_read_from_the_log_so_a_new_dispatcher_keeps_it() {
    use crate::rollout::rate::Rate;
    let mut w = rated_world(
        10,
        Rate {
            max_per_minute: 4,
            ramp: None,
        },
    );
    assert_eq!(dispatched_tasks(&w.step(T0)).len(), 4);
    // A dispatcher with no memory at all (otad restarted) half a minute later: the four starts
    // are in the projection of the log, so nothing more goes until the minute is over.
    let fresh = World {
        log: w.log.clone(),
        ids: Cell::new(100),
        probes: ProbeMemory::default(),
        offline_sites: Vec::new(),
    };
    let d = fresh.decide(T0 + 30 * S);
    assert!(dispatched_tasks(&d).is_empty(), "{:?}", d.commands);
    assert_eq!(d.next_due_ms, Some(T0 + 60 * S));
    assert_eq!(dispatched_tasks(&fresh.decide(T0 + 60 * S)).len(), 4);
}

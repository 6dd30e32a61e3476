//! Given events, when the scheduler looks at `now`, then these decisions.

use super::*;
use crate::events::*;
use crate::model::{
    AgentSource, DeviceFacts, EspFacts, FirmwareFormat, PowerSource, Signal, Transport, VersionInfo,
};
use crate::projection::{EventMeta, FleetState};
use crate::rollout::spec::*;
use crate::rollout::{auto, plan};
use crate::time::UnixMillis;
use std::time::Duration;

/// 2026-01-05 00:00 UTC, a Monday.
const T0: UnixMillis = UnixMillis::from_unix_ms(1_767_571_200_000);
const S: Duration = Duration::from_secs(1);
const RO: &str = "ro-1";
const FW: &str = "fw-new";

struct Given {
    state: FleetState,
    seq: u64,
}

fn esp_firmware(id: &str, version: &str) -> FirmwareRegistered {
    FirmwareRegistered {
        id: id.into(),
        name: "node".into(),
        version: version.into(),
        format: FirmwareFormat::EspApp,
        channel: 0,
        size: 1000,
        sha256: String::new(),
        md5: String::new(),
        sha512: String::new(),
        zigbee: None,
        esp: Some(EspFacts {
            chip: "esp32".into(),
            app_version: version.into(),
            ..Default::default()
        }),
        labels: Default::default(),
        release_notes: String::new(),
    }
}

fn esp_device(version: &str) -> DeviceReported {
    DeviceReported {
        facts: DeviceFacts {
            transport: Some(Transport::Esphome),
            network: "esphome".into(),
            chip: "esp32".into(),
            current: VersionInfo {
                version: version.into(),
                ..Default::default()
            },
            power_source: PowerSource::Mains,
            signal: Some(Signal::RssiDbm(-50)),
            reachable: true,
            supports_ota: true,
            ..Default::default()
        },
        source: None,
    }
}

fn stage(name: &str, size: StageSize) -> StageSpec {
    StageSpec {
        name: name.into(),
        size,
        success_threshold: None,
        failure_threshold: None,
        on_failure: FailureAction::Pause,
        deadline_s: 0,
        soak_s: 0,
    }
}

fn spec(stages: Vec<StageSpec>) -> RolloutSpec {
    RolloutSpec {
        name: "spring".into(),
        firmware_id: FW.into(),
        selector: Selector::default(),
        stages,
        concurrency: Concurrency::default(),
        device_timeout_s: 0,
        retry: RetryPolicy::default(),
        window: None,
        upgrade_type: UpgradeType::Forced,
        allow_downgrade: false,
        preconditions: Preconditions::default(),
        batch_check: false,
        batch_check_timeout_s: 60,
        wake_timeout_s: 0,
        on_asleep: OnAsleep::Wait,
        failure_budget: FailureBudget::Default,
        site_timezones: Default::default(),
        abort_criteria: Vec::new(),
        rate: None,
        canary_per_site: 0,
        rollback: RollbackScope::None,
        reverts: None,
        health: crate::health::HealthPolicy::OFF,
    }
}

fn agent_connected(offset: i32) -> AgentConnected {
    AgentConnected {
        agent_id: "agent".into(),
        agent_version: "test".into(),
        timezone: String::new(),
        utc_offset_minutes: offset,
        transports: vec![],
        peer: String::new(),
    }
}

impl Given {
    /// A firmware and `devices` ESPHome devices on version 1.0.0, on sites `a` and `b`.
    fn fleet(devices: &[&str]) -> Given {
        let mut g = Given {
            state: FleetState::default(),
            seq: 0,
        };
        g.event(T0, &streams::firmware(FW), esp_firmware(FW, "2.0.0"));
        for d in devices {
            g.event(T0, &streams::device(d), esp_device("1.0.0"));
        }
        g
    }

    fn event(&mut self, at: UnixMillis, stream: &str, e: impl Into<DomainEvent>) -> &mut Self {
        self.seq += 1;
        let meta = EventMeta {
            seq: self.seq,
            recorded_at_ms: at,
            actor: "test".into(),
        };
        self.state.apply(&meta, stream, &e.into());
        self
    }

    fn rollout(&self) -> &RolloutView {
        &self.state.rollouts[RO]
    }

    /// Created and started with today's plan.
    fn started(&mut self, at: UnixMillis, spec: RolloutSpec) -> &mut Self {
        let p = plan::plan(&spec, &self.state);
        self.event(
            at,
            &streams::rollout(RO),
            RolloutCreated {
                id: RO.into(),
                spec,
            },
        );
        self.event(at, &streams::rollout(RO), p.started_event())
    }

    fn when(&self, now: UnixMillis) -> Reconcile {
        reconcile(Input {
            rollout: self.rollout(),
            state: &self.state,
            now_ms: now,
            batch_check_in_flight: false,
            max_new_tasks: MAX_NEW_TASKS_PER_STEP,
            require_approval: false,
        })
    }

    /// Records a decision as the server would.
    fn record(&mut self, at: UnixMillis, d: &Reconcile) -> &mut Self {
        for e in &d.rollout_events {
            self.event(at, &streams::rollout(RO), e.clone());
        }
        for t in &d.new_tasks {
            self.event(at, &streams::task(&t.task_id), t.clone());
        }
        for (id, e) in &d.task_events {
            self.event(at, &streams::task(id), e.clone());
        }
        for (id, events) in &d.new_rollouts {
            for e in events {
                self.event(at, &streams::rollout(id), e.clone());
            }
        }
        self
    }

    /// Decides at `now` and records it.
    fn step(&mut self, now: UnixMillis) -> Reconcile {
        let d = self.when(now);
        self.record(now, &d);
        d
    }

    fn task_of(&self, device: &str) -> String {
        self.rollout().tasks_by_device[device].clone()
    }

    fn dispatched(&mut self, at: UnixMillis, device: &str) -> &mut Self {
        let id = self.task_of(device);
        self.event(
            at,
            &streams::task(&id),
            TaskDispatched {
                attempt: 1,
                command_id: 1,
                timeout_at_ms: at + 600 * S,
                schedule: false,
            },
        )
    }

    fn progress(&mut self, at: UnixMillis, device: &str, status: UpgradeStatus) -> &mut Self {
        let id = self.task_of(device);
        self.event(
            at,
            &streams::task(&id),
            TaskProgressed {
                attempt: 1,
                status,
                progress: 10.0,
                remaining_s: None,
                bytes_sent: 0,
                bytes_total: 0,
                detail: String::new(),
                source: None,
            },
        )
    }

    fn succeeded(&mut self, at: UnixMillis, device: &str) -> &mut Self {
        self.dispatched(at, device);
        self.verdict(at, device, crate::health::Health::NotChecked)
    }

    /// The device reports the target version; its site watches it until `until`.
    fn verifying(&mut self, at: UnixMillis, device: &str, until: UnixMillis) -> &mut Self {
        self.dispatched(at, device);
        let id = self.task_of(device);
        self.event(
            at,
            &streams::task(&id),
            TaskVerifying {
                attempt: 1,
                until_ms: until,
                to: VersionInfo {
                    version: "2.0.0".into(),
                    ..Default::default()
                },
                source: None,
            },
        )
    }

    /// The attempt sent earlier succeeds with `health`.
    fn verdict(
        &mut self,
        at: UnixMillis,
        device: &str,
        health: crate::health::Health,
    ) -> &mut Self {
        let id = self.task_of(device);
        self.event(
            at,
            &streams::task(&id),
            TaskSucceeded {
                attempt: 1,
                from: VersionInfo::default(),
                to: VersionInfo {
                    version: "2.0.0".into(),
                    ..Default::default()
                },
                duration_ms: 1000,
                wire_bytes: 1000,
                late: false,
                health,
                source: Some(AgentSource {
                    agent_id: "agent".into(),
                    seq: self.seq,
                }),
            },
        )
    }

    fn failed(&mut self, at: UnixMillis, device: &str, code: ErrorCode) -> &mut Self {
        self.dispatched(at, device);
        let id = self.task_of(device);
        self.event(
            at,
            &streams::task(&id),
            TaskFailed {
                attempt: 1,
                error: TaskError::new(code, "the device said no"),
                timed_out: false,
                retry_at_ms: None,
                source: None,
            },
        )
    }
}

fn names(events: &[DomainEvent]) -> Vec<&'static str> {
    events.iter().map(DomainEvent::type_name).collect()
}

const FOUR: [&str; 4] = ["a/1", "a/2", "b/1", "b/2"];

#[test]
fn draft_and_paused_rollouts_do_nothing() {
    let mut g = Given::fleet(&FOUR);
    g.event(
        T0,
        &streams::rollout(RO),
        RolloutCreated {
            id: RO.into(),
            spec: spec(vec![stage("all", StageSize::CumulativePercent(100.0))]),
        },
    );
    assert!(g.when(T0).is_empty());
    g.event(
        T0,
        &streams::rollout(RO),
        RolloutStarted {
            stages: vec![PlannedStage {
                name: "all".into(),
                device_ids: FOUR.iter().map(|s| s.to_string()).collect(),
            }],
            exclusions: vec![],
        },
    );
    g.event(
        T0,
        &streams::rollout(RO),
        RolloutPaused {
            reason: "operator".into(),
            automatic: false,
        },
    );
    assert!(g.when(T0).is_empty());
}

#[test]
fn batch_check_runs_first_and_lists_devices_that_did_not_answer() {
    let mut g = Given::fleet(&FOUR);
    let mut s = spec(vec![
        stage("canary", StageSize::Count(1)),
        stage("all", StageSize::CumulativePercent(100.0)),
    ]);
    s.batch_check = true;
    s.batch_check_timeout_s = 30;
    g.started(T0, s);

    let d = g.when(T0 + S);
    assert_eq!(names(&d.rollout_events), ["BatchCheckStarted"]);
    let started = d.batch_check_started().unwrap();
    assert_eq!(started.device_ids, ["a/1", "b/1", "a/2", "b/2"]);
    assert_eq!(started.deadline_at_ms, T0 + 31 * S);
    assert!(d.new_tasks.is_empty());
    g.record(T0 + S, &d);

    // While the check runs in this process, the scheduler waits for it.
    let waiting = reconcile(Input {
        rollout: g.rollout(),
        state: &g.state,
        now_ms: T0 + 2 * S,
        batch_check_in_flight: true,
        max_new_tasks: MAX_NEW_TASKS_PER_STEP,
        require_approval: false,
    });
    assert!(waiting.is_empty());
    assert_eq!(waiting.requeue_at, Some(T0 + 31 * S + BATCH_CHECK_GRACE));
    // After a restart nothing is in flight: the check starts again.
    assert_eq!(
        names(&g.when(T0 + 40 * S).rollout_events),
        ["BatchCheckStarted"]
    );

    // Answers: b/2 did not answer (5019), a/2 turns out to run 2.0.0 already.
    let checked = |status, current: &str, error: Option<TaskError>| DeviceChecked {
        check_id: started.check_id.clone(),
        firmware_id: Some(FW.into()),
        status,
        reachable: error.is_none(),
        current: VersionInfo {
            version: current.into(),
            ..Default::default()
        },
        update_available: None,
        error,
        source: None,
    };
    g.event(
        T0 + 5 * S,
        &streams::device("a/1"),
        checked(UpgradeStatus::Available, "1.0.0", None),
    );
    g.event(
        T0 + 5 * S,
        &streams::device("b/1"),
        checked(UpgradeStatus::Available, "1.0.0", None),
    );
    g.event(
        T0 + 5 * S,
        &streams::device("a/2"),
        checked(UpgradeStatus::None, "2.0.0", None),
    );
    g.event(
        T0 + 31 * S,
        &streams::device("b/2"),
        checked(
            UpgradeStatus::Failure,
            "",
            Some(TaskError::new(
                ErrorCode::BulkCheckTimeout,
                "no answer within 30s",
            )),
        ),
    );
    let done = batch_check_completed(g.rollout(), &g.state, &started.check_id);
    assert_eq!(done.timed_out, ["b/2"]);
    assert_eq!(done.excluded.len(), 1);
    assert_eq!(done.excluded[0].device_id, "a/2");
    assert_eq!(done.excluded[0].code, ErrorCode::AlreadyOnTarget);
    g.event(T0 + 31 * S, &streams::rollout(RO), done);
    let r = g.rollout();
    assert_eq!(r.batch_check.as_ref().unwrap().timed_out, ["b/2"]);
    assert!(r.exclusions.iter().any(|e| e.device_id == "a/2"));

    // Then the canary starts; the 5019 device stays in its stage.
    let d = g.step(T0 + 32 * S);
    assert_eq!(names(&d.rollout_events), ["StageStarted"]);
    assert_eq!(d.new_tasks.len(), 1);
    let t = &d.new_tasks[0];
    assert_eq!(t.device_id, "a/1");
    assert_eq!(t.rollout_id.as_deref(), Some(RO));
    assert_eq!(t.stage, 0);
    assert_eq!(t.task_id, rollout_task_id(RO, "a/1"));
    assert_eq!(t.upgrade_type, UpgradeType::Forced);
    assert_eq!(
        (t.max_attempts, t.initial_backoff_s, t.max_backoff_s),
        (3, 30, 900)
    );
    assert_eq!(t.target.version, "2.0.0");
    assert!(!t.auto && !t.downgrade);
    assert_eq!(g.rollout().stages[1].device_ids, ["b/1", "b/2"]);
}

#[test]
fn canary_soaks_then_the_next_wave_starts() {
    let mut g = Given::fleet(&FOUR);
    let mut canary = stage("canary", StageSize::Count(1));
    canary.soak_s = 600;
    g.started(
        T0,
        spec(vec![
            canary,
            stage("all", StageSize::CumulativePercent(100.0)),
        ]),
    );

    let d = g.step(T0);
    assert_eq!(names(&d.rollout_events), ["StageStarted"]);
    assert_eq!(d.new_tasks.len(), 1);
    // Recorded: doing it again creates nothing twice.
    let again = g.when(T0 + S);
    assert!(again.is_empty(), "{again:?}");

    g.succeeded(T0 + 60 * S, "a/1");
    let d = g.step(T0 + 61 * S);
    assert_eq!(names(&d.rollout_events), ["StageSoaking"]);
    assert_eq!(d.requeue_at, Some(T0 + 661 * S));
    // During the soak nothing moves; the next wave has no tasks.
    let d = g.when(T0 + 300 * S);
    assert!(d.is_empty());
    assert_eq!(d.requeue_at, Some(T0 + 661 * S));
    assert_eq!(g.rollout().tasks_by_device.len(), 1);

    let d = g.step(T0 + 661 * S);
    assert_eq!(names(&d.rollout_events), ["StageSucceeded"]);
    let d = g.step(T0 + 662 * S);
    assert_eq!(names(&d.rollout_events), ["StageStarted"]);
    let mut devices: Vec<&str> = d.new_tasks.iter().map(|t| t.device_id.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["a/2", "b/1", "b/2"]);
    assert!(d.new_tasks.iter().all(|t| t.stage == 1));

    for dev in ["a/2", "b/1", "b/2"] {
        g.succeeded(T0 + 700 * S, dev);
    }
    let d = g.step(T0 + 701 * S);
    assert_eq!(names(&d.rollout_events), ["StageSucceeded"]);
    let d = g.step(T0 + 702 * S);
    let [DomainEvent::RolloutCompleted(done)] = d.rollout_events.as_slice() else {
        panic!("{d:?}");
    };
    assert_eq!(
        done.summary,
        "4 devices: 4 updated, 0 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
    assert_eq!(g.rollout().state, RolloutState::Completed);
    assert!(g.when(T0 + 800 * S).is_empty());
}

#[test]
fn failure_threshold_pauses_with_the_numbers_and_resume_continues() {
    let mut g = Given::fleet(&FOUR);
    let mut canary = stage("canary", StageSize::Count(2));
    canary.failure_threshold = Some(Threshold::Count(1));
    g.started(
        T0,
        spec(vec![
            canary,
            stage("all", StageSize::CumulativePercent(100.0)),
        ]),
    );
    g.step(T0);

    g.failed(T0 + 10 * S, "a/1", ErrorCode::DeviceReportedFailure);
    let d = g.when(T0 + 11 * S);
    // Deciding twice on the same state gives the same answer.
    assert_eq!(d, g.when(T0 + 11 * S));
    let [
        DomainEvent::StageFailed(failed),
        DomainEvent::RolloutPaused(paused),
    ] = d.rollout_events.as_slice()
    else {
        panic!("{d:?}");
    };
    assert_eq!(
        failed.reason,
        "stage canary: 1 failure(s) ≥ threshold 1 (1 failed, 0 timed out, of 2 devices)"
    );
    assert!(paused.automatic);
    assert_eq!(paused.reason, failed.reason);
    g.record(T0 + 11 * S, &d);
    assert_eq!(g.rollout().state, RolloutState::Paused);
    assert_eq!(g.rollout().state_reason, failed.reason);

    // While paused nothing moves, even when the other canary device finishes.
    g.succeeded(T0 + 20 * S, "b/1");
    assert!(g.when(T0 + 21 * S).is_empty());

    // The operator resumes: the failure seen is accepted, the stage is re-evaluated and
    // continues.
    g.event(
        T0 + 100 * S,
        &streams::rollout(RO),
        RolloutResumed {
            reason: "flaky unit, replaced".into(),
        },
    );
    let counts = stage_counts(g.rollout(), &g.state, 0);
    assert_eq!((counts.failures(), counts.accepted_failures), (0, 1));
    let d = g.step(T0 + 101 * S);
    assert_eq!(names(&d.rollout_events), ["StageSucceeded"]);
    let d = g.step(T0 + 102 * S);
    assert_eq!(names(&d.rollout_events), ["StageStarted"]);
    assert_eq!(d.new_tasks.len(), 2);
}

#[test]
fn explicit_success_threshold_that_cannot_be_met_fails_the_stage() {
    let mut g = Given::fleet(&FOUR);
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.success_threshold = Some(Threshold::Percent(100.0));
    all.failure_threshold = Some(Threshold::Count(3));
    g.started(T0, spec(vec![all]));
    g.step(T0);
    g.succeeded(T0 + S, "a/1");
    g.succeeded(T0 + S, "a/2");
    g.succeeded(T0 + S, "b/1");
    g.failed(T0 + S, "b/2", ErrorCode::ChecksumMismatch);
    let d = g.when(T0 + 2 * S);
    let [DomainEvent::StageFailed(f), DomainEvent::RolloutPaused(_)] = d.rollout_events.as_slice()
    else {
        panic!("{d:?}");
    };
    assert_eq!(
        f.reason,
        "stage all: every device has ended but only 3 succeeded, 4 needed (success threshold 100 % of 4 eligible devices)"
    );
}

#[test]
fn abort_on_failure_cancels_only_what_is_safe() {
    let mut g = Given::fleet(&FOUR);
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.failure_threshold = Some(Threshold::Count(1));
    all.on_failure = FailureAction::Abort;
    g.started(T0, spec(vec![all]));
    g.step(T0);
    g.failed(T0 + S, "a/1", ErrorCode::DeviceReportedFailure);
    g.dispatched(T0 + S, "a/2")
        .progress(T0 + S, "a/2", UpgradeStatus::Updating);
    g.dispatched(T0 + S, "b/1")
        .progress(T0 + S, "b/1", UpgradeStatus::WaitingForWakeup);
    // b/2 stays queued.
    let d = g.when(T0 + 2 * S);
    assert_eq!(names(&d.rollout_events), ["StageFailed", "RolloutAborted"]);
    let DomainEvent::RolloutAborted(aborted) = &d.rollout_events[1] else {
        unreachable!()
    };
    assert!(aborted.automatic);
    let mut cancelled: Vec<&str> = d
        .task_events
        .iter()
        .filter(|(_, e)| matches!(e, DomainEvent::TaskCancelled(_)))
        .map(|(id, _)| id.as_str())
        .collect();
    cancelled.sort_unstable();
    let mut expected = [g.task_of("b/1"), g.task_of("b/2")];
    expected.sort();
    assert_eq!(cancelled, expected);
    // Only the waiting-for-wake-up task needs a word to its site.
    assert_eq!(d.cancels.len(), 1);
    assert_eq!(d.cancels[0].task_id, g.task_of("b/1"));
    assert_eq!(d.cancels[0].site_id, "b");
    g.record(T0 + 2 * S, &d);
    assert_eq!(g.rollout().state, RolloutState::Aborted);
    // The running transfer goes on and its result still counts.
    let updating = g.task_of("a/2");
    assert_eq!(g.state.tasks[&updating].phase, TaskPhase::Updating);
}

#[test]
fn stage_deadline_times_out_unfinished_tasks_with_5016() {
    let mut g = Given::fleet(&FOUR);
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.deadline_s = 600;
    all.failure_threshold = Some(Threshold::Count(4));
    g.started(T0, spec(vec![all]));
    let d = g.step(T0);
    assert_eq!(d.requeue_at, Some(T0 + 600 * S));
    let DomainEvent::StageStarted(s) = &d.rollout_events[0] else {
        panic!()
    };
    assert_eq!(s.deadline_at_ms, Some(T0 + 600 * S));

    g.succeeded(T0 + 60 * S, "a/1");
    g.dispatched(T0 + 60 * S, "a/2")
        .progress(T0 + 60 * S, "a/2", UpgradeStatus::Updating);
    g.dispatched(T0 + 60 * S, "b/1")
        .progress(T0 + 60 * S, "b/1", UpgradeStatus::WaitingForWakeup);
    // b/2 never left the queue (say, offline).
    let before = g.when(T0 + 599 * S);
    assert!(before.is_empty());
    assert_eq!(before.requeue_at, Some(T0 + 600 * S));

    let d = g.step(T0 + 600 * S);
    assert!(d.rollout_events.is_empty());
    // The device asleep (b/1) is not a failure: it keeps waiting for its wake-up.
    assert_eq!(d.task_events.len(), 2);
    for (_, e) in &d.task_events {
        let DomainEvent::TaskFailed(f) = e else {
            panic!("{e:?}")
        };
        assert!(f.timed_out);
        assert_eq!(f.retry_at_ms, None);
        assert_eq!(f.error.code, ErrorCode::Timeout);
        assert!(
            f.error.message.contains("stage all deadline"),
            "{}",
            f.error.message
        );
    }
    // The running transfer is not interrupted (its late success would still count).
    assert!(d.cancels.is_empty());
    for dev in ["a/2", "b/2"] {
        assert_eq!(g.state.tasks[&g.task_of(dev)].phase, TaskPhase::TimedOut);
    }
    assert_eq!(
        g.state.tasks[&g.task_of("b/1")].phase,
        TaskPhase::WaitingForWakeup
    );
    // Two timeouts stay below the threshold of 4 and the stage no longer waits for the sleeper
    // after its deadline: it ends; the rollout completes once the sleeper has ended too.
    let c = stage_counts(g.rollout(), &g.state, 0);
    assert_eq!((c.succeeded, c.timed_out, c.asleep), (1, 2, 1));
    assert_eq!(
        names(&g.step(T0 + 601 * S).rollout_events),
        ["StageSucceeded"]
    );
    assert!(g.step(T0 + 602 * S).rollout_events.is_empty());
    g.succeeded(T0 + 3 * 3600 * S, "b/1");
    let d = g.step(T0 + 3 * 3600 * S + S);
    let [DomainEvent::RolloutCompleted(done)] = d.rollout_events.as_slice() else {
        panic!("{d:?}")
    };
    assert!(
        done.summary.contains("2 updated") && done.summary.contains("2 timed out"),
        "{}",
        done.summary
    );
}

#[test]
fn busy_and_removed_devices_are_excluded_when_their_stage_starts() {
    let mut g = Given::fleet(&FOUR);
    g.started(
        T0,
        spec(vec![stage("all", StageSize::CumulativePercent(100.0))]),
    );
    // After the plan: a/2 got a single-device update, b/2 disappeared from its site.
    g.event(
        T0 + S,
        &streams::task("task-manual"),
        TaskCreated {
            task_id: "task-manual".into(),
            device_id: "a/2".into(),
            site_id: "a".into(),
            rollout_id: None,
            stage: 0,
            firmware_id: FW.into(),
            target: VersionInfo::default(),
            upgrade_type: UpgradeType::Forced,
            downgrade: false,
            max_attempts: 1,
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
    g.event(
        T0 + S,
        &streams::device("b/2"),
        DeviceRemoved { source: None },
    );
    let d = g.step(T0 + 2 * S);
    assert_eq!(
        names(&d.rollout_events),
        ["StageStarted", "StageDevicesExcluded"]
    );
    let DomainEvent::StageDevicesExcluded(x) = &d.rollout_events[1] else {
        unreachable!()
    };
    let codes: Vec<(&str, ErrorCode)> = x
        .excluded
        .iter()
        .map(|e| (e.device_id.as_str(), e.code))
        .collect();
    assert_eq!(
        codes,
        [("a/2", ErrorCode::OneAtATime), ("b/2", ErrorCode::Offline)]
    );
    assert!(x.excluded[0].reason.contains("task-manual"));
    assert_eq!(d.new_tasks.len(), 2);
    let r = g.rollout();
    assert_eq!(r.stages[0].device_ids, ["a/1", "b/1"]);
    assert_eq!(r.exclusions.len(), 2);
}

#[test]
fn percent_success_threshold_advances_early_but_completion_waits_for_stragglers() {
    let mut g = Given::fleet(&FOUR);
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.success_threshold = Some(Threshold::Percent(50.0));
    g.started(T0, spec(vec![all]));
    g.step(T0);
    g.succeeded(T0 + S, "a/1");
    assert!(g.step(T0 + 2 * S).is_empty());
    g.succeeded(T0 + 3 * S, "b/1");
    assert_eq!(
        names(&g.step(T0 + 4 * S).rollout_events),
        ["StageSucceeded"]
    );
    // Every stage succeeded, but two tasks still run: no completion yet.
    assert!(g.step(T0 + 5 * S).is_empty());
    g.succeeded(T0 + 6 * S, "a/2");
    let id = g.task_of("b/2");
    g.event(
        T0 + 6 * S,
        &streams::task(&id),
        TaskSkipped {
            code: ErrorCode::Other,
            remind: "battery at 40 %".into(),
        },
    );
    let d = g.step(T0 + 7 * S);
    let [DomainEvent::RolloutCompleted(done)] = d.rollout_events.as_slice() else {
        panic!("{d:?}")
    };
    assert_eq!(
        done.summary,
        "4 devices: 3 updated, 1 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
}

#[test]
fn maintenance_window_gates_the_stage_start_in_site_local_time() {
    let mut g = Given::fleet(&FOUR);
    g.event(T0, &streams::site("a"), agent_connected(60));
    g.event(T0, &streams::site("b"), agent_connected(60));
    let mut s = spec(vec![stage("all", StageSize::CumulativePercent(100.0))]);
    // 22:00-23:00 local, sites at UTC+1.
    s.window = Some(MaintenanceWindow {
        start_minute: 22 * 60,
        end_minute: 23 * 60,
        weekdays: vec![],
    });
    g.started(T0, s);
    let h = 3600 * S;
    // 20:00 UTC is 21:00 local: closed, look again at 21:00 UTC.
    let d = g.when(T0 + 20 * h);
    assert!(d.is_empty());
    assert_eq!(d.requeue_at, Some(T0 + 21 * h));
    // 21:00 UTC is 22:00 local: the stage starts; the scheduler looks again at the close.
    let d = g.step(T0 + 21 * h);
    assert_eq!(names(&d.rollout_events), ["StageStarted"]);
    let d = g.when(T0 + 21 * h + S);
    assert_eq!(d.requeue_at, Some(T0 + 22 * h));
}

#[test]
fn pausing_stops_the_clocks_of_the_stage() {
    let mut g = Given::fleet(&FOUR);
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.deadline_s = 600;
    g.started(T0, spec(vec![all]));
    g.step(T0);
    g.event(
        T0 + 100 * S,
        &streams::rollout(RO),
        RolloutPaused {
            reason: "lunch".into(),
            automatic: false,
        },
    );
    g.event(
        T0 + 1100 * S,
        &streams::rollout(RO),
        RolloutResumed {
            reason: String::new(),
        },
    );
    // 100 s ran before the pause; 500 s remain after the resume.
    assert_eq!(g.rollout().stages[0].deadline_at_ms, Some(T0 + 1600 * S));
    assert!(g.when(T0 + 1599 * S).task_events.is_empty());
    assert_eq!(g.when(T0 + 1600 * S).task_events.len(), 4);
}

#[test]
fn check_only_rollout_completes_after_the_batch_check_without_tasks() {
    let mut g = Given::fleet(&FOUR);
    let mut s = spec(vec![stage("all", StageSize::CumulativePercent(100.0))]);
    s.upgrade_type = UpgradeType::Check;
    g.started(T0, s);
    let d = g.step(T0);
    let check_id = d.batch_check_started().unwrap().check_id.clone();
    for dev in FOUR {
        g.event(
            T0 + S,
            &streams::device(dev),
            DeviceChecked {
                check_id: check_id.clone(),
                firmware_id: Some(FW.into()),
                status: UpgradeStatus::Available,
                reachable: true,
                current: VersionInfo {
                    version: "1.0.0".into(),
                    ..Default::default()
                },
                update_available: None,
                error: None,
                source: None,
            },
        );
    }
    let done = batch_check_completed(g.rollout(), &g.state, &check_id);
    assert!(done.excluded.is_empty());
    g.event(T0 + S, &streams::rollout(RO), done);
    let d = g.step(T0 + 2 * S);
    let [DomainEvent::RolloutCompleted(c)] = d.rollout_events.as_slice() else {
        panic!("{d:?}")
    };
    assert!(
        c.summary
            .starts_with("check only, nothing installed: 4 checked: 4 can take"),
        "{}",
        c.summary
    );
    assert!(d.new_tasks.is_empty());
    assert!(g.rollout().tasks_by_device.is_empty());
}

#[test]
fn plan_lists_exclusions_with_reasons_and_spreads_sites() {
    let mut g = Given::fleet(&["a/1", "a/2", "a/3", "b/1", "c/1"]);
    g.event(T0, &streams::device("a/4"), esp_device("2.0.0"));
    g.event(T0, &streams::device("b/2"), esp_device("3.0.0"));
    let mut c3 = esp_device("1.0.0");
    c3.facts.chip = "esp8266".into();
    g.event(T0, &streams::device("c/3"), c3);
    let mut c4 = esp_device("1.0.0");
    c4.facts.supports_ota = false;
    g.event(T0, &streams::device("c/4"), c4);
    let mut s = spec(vec![
        stage("canary", StageSize::Count(3)),
        stage("all", StageSize::CumulativePercent(100.0)),
    ]);
    s.selector.exclude_device_ids = vec![];
    let p = plan::plan(&s, &g.state);
    assert_eq!(p.target_count, 5);
    assert_eq!(p.stages[0].device_ids, ["a/1", "b/1", "c/1"]);
    assert_eq!(p.stages[1].device_ids, ["a/2", "a/3"]);
    let ex: Vec<(&str, u32)> = p
        .exclusions
        .iter()
        .map(|e| (e.device_id.as_str(), e.code.code()))
        .collect();
    assert_eq!(
        ex,
        [("a/4", 5000), ("b/2", 5013), ("c/3", 5013), ("c/4", 5013)]
    );
    assert!(p.exclusions[1].reason.contains("downgrade"));
    assert!(p.exclusions[2].reason.contains("esp8266"));
    assert!(p.exclusions[3].reason.contains("does not support OTA"));
    // 3 ESPHome devices on 3 sites at once: 1 min; then 2 on site a: 1 min.
    assert_eq!(p.stages[0].estimated_s, 60);
    assert_eq!(p.stages[1].estimated_s, 60);
    assert_eq!(p.estimated_s, 120);
    assert!(p.warnings.iter().any(|w| w.contains("selector is empty")));
}

#[test]
fn auto_upgrade_follows_the_latest_completed_rollout() {
    let mut g = Given::fleet(&["a/1"]);
    g.started(
        T0,
        spec(vec![stage("all", StageSize::CumulativePercent(100.0))]),
    );
    g.step(T0);
    g.succeeded(T0 + S, "a/1");
    g.step(T0 + 2 * S);
    g.step(T0 + 3 * S);
    assert_eq!(g.rollout().state, RolloutState::Completed);
    // A device appears later on the old version; nothing happens until its switch is on.
    g.event(T0 + 10 * S, &streams::device("b/9"), esp_device("1.0.0"));
    assert!(auto::due(&g.state).is_empty());
    g.event(
        T0 + 11 * S,
        &streams::device("b/9"),
        AutoUpgradeSet { enabled: true },
    );
    let due = auto::due(&g.state);
    assert_eq!(due.len(), 1);
    let t = &due[0];
    assert!(t.auto);
    assert_eq!(t.device_id, "b/9");
    assert_eq!(t.rollout_id.as_deref(), Some(RO));
    assert_eq!(t.firmware_id, FW);
    assert_eq!(t.task_id, auto_task_id("b/9", FW));
    // Recorded, it is the device's task, and the rollout's counts do not change.
    g.event(T0 + 12 * S, &streams::task(&t.task_id), t.clone());
    assert!(auto::due(&g.state).is_empty());
    assert_eq!(g.rollout().tasks_by_device.len(), 1);
    // It failed: auto-upgrade does not try the same firmware again by itself.
    g.event(
        T0 + 13 * S,
        &streams::task(&t.task_id),
        TaskFailed {
            attempt: 0,
            error: TaskError::new(ErrorCode::DeviceReportedFailure, "no"),
            timed_out: false,
            retry_at_ms: None,
            source: None,
        },
    );
    assert!(auto::due(&g.state).is_empty());
    // A device already on the firmware needs nothing.
    g.event(T0 + 14 * S, &streams::device("b/8"), esp_device("2.0.0"));
    g.event(
        T0 + 14 * S,
        &streams::device("b/8"),
        AutoUpgradeSet { enabled: true },
    );
    assert!(auto::due(&g.state).is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Succeed,
        Fail,
        Skip,
        Hang,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            6 => Just(Outcome::Succeed),
            1 => Just(Outcome::Fail),
            1 => Just(Outcome::Skip),
            1 => Just(Outcome::Hang),
        ]
    }

    fn stage_spec() -> impl Strategy<Value = StageSpec> {
        (
            prop_oneof![
                (1u32..4).prop_map(StageSize::Count),
                (1u32..100).prop_map(|p| StageSize::CumulativePercent(f64::from(p))),
            ],
            prop::option::of((0u32..4).prop_map(Threshold::Count)),
            prop::option::of((0u32..101).prop_map(|p| Threshold::Percent(f64::from(p)))),
            any::<bool>(),
            0u32..3,
        )
            .prop_map(|(size, failure, success, abort, soak)| StageSpec {
                name: "s".into(),
                size,
                success_threshold: success,
                failure_threshold: failure,
                on_failure: if abort {
                    FailureAction::Abort
                } else {
                    FailureAction::Pause
                },
                deadline_s: 600,
                soak_s: soak * 60,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the devices do, the scheduler never gives a device two tasks, never leaves
        /// a stage without a verdict, and ends every rollout (completed, or paused/aborted with
        /// a reason that names the stage and the numbers).
        #[test]
        fn every_rollout_ends_and_no_device_gets_two_tasks(
            outcomes in prop::collection::vec(outcome(), 1..16),
            mut stages in prop::collection::vec(stage_spec(), 1..4),
        ) {
            let devices: Vec<String> = (0..outcomes.len())
                .map(|i| format!("{}/d{i:02}", ["a", "b", "c"][i % 3]))
                .collect();
            let refs: Vec<&str> = devices.iter().map(String::as_str).collect();
            let mut g = Given::fleet(&refs);
            let mut last = stage("rest", StageSize::CumulativePercent(100.0));
            last.deadline_s = 600;
            stages.push(last);
            g.started(T0, spec(stages));
            let by_device: HashMap<&str, Outcome> =
                refs.iter().copied().zip(outcomes.iter().copied()).collect();
            let mut created: HashMap<String, u32> = HashMap::new();
            let mut now = T0;
            for _ in 0..400 {
                now += 60 * S;
                let d = g.step(now);
                for t in &d.new_tasks {
                    *created.entry(t.device_id.clone()).or_default() += 1;
                    match by_device[t.device_id.as_str()] {
                        Outcome::Succeed => {
                            g.succeeded(now, &t.device_id);
                        }
                        Outcome::Fail => {
                            g.failed(now, &t.device_id, ErrorCode::DeviceReportedFailure);
                        }
                        Outcome::Skip => {
                            g.event(
                                now,
                                &streams::task(&t.task_id),
                                TaskSkipped {
                                    code: ErrorCode::Other,
                                    remind: "battery".into(),
                                },
                            );
                        }
                        Outcome::Hang => {
                            g.dispatched(now, &t.device_id)
                                .progress(now, &t.device_id, UpgradeStatus::Updating);
                        }
                    }
                }
                if g.rollout().state != RolloutState::Running {
                    break;
                }
            }
            prop_assert!(created.values().all(|n| *n == 1), "{created:?}");
            let r = g.rollout();
            match r.state {
                RolloutState::Completed => {
                    let open = r
                        .tasks_by_device
                        .values()
                        .filter(|id| !g.state.tasks[*id].phase.is_terminal())
                        .count();
                    prop_assert_eq!(open, 0);
                    let planned: usize = r.stages.iter().map(|s| s.device_ids.len()).sum();
                    prop_assert_eq!(planned, r.tasks_by_device.len());
                    let expected = format!("{planned} devices: ");
                    prop_assert!(r.state_reason.starts_with(&expected), "{}", r.state_reason);
                }
                RolloutState::Paused if r.state_reason.starts_with("failure budget: ") => {
                    // Failures spread over stages, each below its stage's threshold, reached the
                    // rollout-wide budget.
                    let budget = failure_budget(r).expect("the default budget is on");
                    prop_assert!(budget_failures(r, &g.state) >= budget);
                }
                RolloutState::Paused | RolloutState::Aborted => {
                    prop_assert!(r.state_reason.starts_with("stage "), "{}", r.state_reason);
                    prop_assert!(r.stages.iter().any(|s| s.state == StageState::Failed));
                }
                other => prop_assert!(false, "rollout still {other:?} after 400 steps"),
            }
        }
    }
}

#[test]
fn a_stage_larger_than_one_append_gets_its_tasks_over_several_steps() {
    let ids: Vec<String> = (0..MAX_NEW_TASKS_PER_STEP * 2 + 5)
        .map(|i| format!("a/{i}"))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut g = Given::fleet(&refs);
    g.started(
        T0,
        spec(vec![stage("all", StageSize::CumulativePercent(100.0))]),
    );

    let first = g.step(T0);
    assert_eq!(names(&first.rollout_events), ["StageStarted"]);
    assert_eq!(first.new_tasks.len(), MAX_NEW_TASKS_PER_STEP);
    assert_eq!(first.requeue_at, Some(T0), "the rest is created right away");
    let second = g.step(T0);
    assert!(
        second.rollout_events.is_empty(),
        "{:?}",
        names(&second.rollout_events)
    );
    assert_eq!(second.new_tasks.len(), MAX_NEW_TASKS_PER_STEP);
    let third = g.step(T0);
    assert_eq!(third.new_tasks.len(), 5);
    assert_eq!(third.requeue_at, None);
    assert_eq!(
        g.rollout().tasks_by_device.len(),
        ids.len(),
        "one task per device"
    );
    assert!(g.step(T0).new_tasks.is_empty());
}

const EIGHT: [&str; 8] = ["a/1", "a/2", "b/1", "b/2", "c/1", "c/2", "d/1", "d/2"];

/// One stage of eight devices whose own failure threshold never trips, no failure budget: only
/// the abort criteria act.
fn spec_with_criteria(criteria: Vec<crate::rollout::abort::AbortCriterion>) -> RolloutSpec {
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.failure_threshold = Some(Threshold::Count(8));
    let mut s = spec(vec![all]);
    s.failure_budget = FailureBudget::Off;
    s.abort_criteria = criteria;
    s
}

fn paused_reason(d: &Reconcile) -> Option<&str> {
    d.rollout_events.iter().find_map(|e| match e {
        DomainEvent::RolloutPaused(p) => Some(p.reason.as_str()),
        _ => None,
    })
}

#[test]
fn abort_criteria_count_finished_devices_and_accept_failures_on_resume() {
    use crate::rollout::abort::{AbortAction, AbortCriterion, AbortOn};
    let mut g = Given::fleet(&EIGHT);
    g.started(
        T0,
        spec_with_criteria(vec![AbortCriterion {
            on: AbortOn::Failed,
            percent: 50.0,
            min_finished: 4,
            action: AbortAction::Pause,
        }]),
    );
    g.step(T0);
    g.failed(T0 + S, "a/1", ErrorCode::DeviceReportedFailure);
    g.failed(T0 + S, "a/2", ErrorCode::SendFailed);
    // Asleep is not finished: 2 of 2 finished failed, but fewer than 4 have finished.
    g.dispatched(T0 + S, "b/1")
        .progress(T0 + S, "b/1", UpgradeStatus::WaitingForWakeup);
    g.succeeded(T0 + S, "b/2");
    assert_eq!(paused_reason(&g.when(T0 + 2 * S)), None);

    // The fourth finished device: 2 of 4 failed, 50 %.
    g.succeeded(T0 + 3 * S, "c/1");
    let d = g.when(T0 + 4 * S);
    assert_eq!(
        d,
        g.when(T0 + 4 * S),
        "deciding twice gives the same answer"
    );
    assert_eq!(names(&d.rollout_events), ["RolloutPaused"]);
    assert_eq!(
        paused_reason(&d),
        Some(
            "abort criterion 1 (failed ≥ 50% of ≥ 4 finished → pause): 2 of 4 finished devices failed (50%); resume to accept them and go on"
        )
    );
    g.record(T0 + 4 * S, &d);
    assert_eq!(g.rollout().state, RolloutState::Paused);

    // Resuming accepts the two failures: they still count as finished, no longer as failures.
    g.event(
        T0 + 10 * S,
        &streams::rollout(RO),
        RolloutResumed {
            reason: "two bad units".into(),
        },
    );
    assert_eq!(paused_reason(&g.when(T0 + 11 * S)), None);
    g.failed(T0 + 12 * S, "c/2", ErrorCode::SendFailed);
    g.failed(T0 + 12 * S, "d/1", ErrorCode::SendFailed);
    g.failed(T0 + 12 * S, "d/2", ErrorCode::SendFailed);
    // 3 new failures of 7 finished: 43 %.
    assert_eq!(paused_reason(&g.when(T0 + 13 * S)), None);
    // The sleeper wakes up and fails: 4 of 8.
    g.failed(T0 + 14 * S, "b/1", ErrorCode::SendFailed);
    let reason = paused_reason(&g.when(T0 + 15 * S)).map(str::to_string);
    assert_eq!(
        reason.as_deref(),
        Some(
            "abort criterion 1 (failed ≥ 50% of ≥ 4 finished → pause): 4 of 8 finished devices failed (50%); resume to accept them and go on"
        )
    );
}

#[test]
fn an_abort_criterion_on_rejections_aborts_and_cancels_what_waits() {
    use crate::rollout::abort::{AbortAction, AbortCriterion, AbortOn};
    let mut g = Given::fleet(&EIGHT);
    g.started(
        T0,
        spec_with_criteria(vec![AbortCriterion {
            on: AbortOn::Rejected,
            percent: 25.0,
            min_finished: 2,
            action: AbortAction::Abort,
        }]),
    );
    g.step(T0);
    // A checksum mismatch is a failure but not a rejection.
    g.failed(T0 + S, "a/1", ErrorCode::ChecksumMismatch);
    g.succeeded(T0 + S, "a/2");
    g.succeeded(T0 + S, "b/1");
    assert!(g.when(T0 + 2 * S).rollout_events.is_empty());
    // 1 rejection of 4 finished: 25 %.
    g.failed(T0 + 3 * S, "b/2", ErrorCode::PrevalidationFailed);
    let d = g.when(T0 + 4 * S);
    let [DomainEvent::RolloutAborted(aborted)] = d.rollout_events.as_slice() else {
        panic!("{d:?}");
    };
    assert!(aborted.automatic);
    assert_eq!(
        aborted.reason,
        "abort criterion 1 (rejected ≥ 25% of ≥ 2 finished → abort): 1 of 4 finished devices rejected the image (25%)"
    );
    // The four queued devices are cancelled.
    assert_eq!(
        d.task_events
            .iter()
            .filter(|(_, e)| matches!(e, DomainEvent::TaskCancelled(_)))
            .count(),
        4
    );
    g.record(T0 + 4 * S, &d);
    assert_eq!(g.rollout().state, RolloutState::Aborted);
}

#[test]
fn a_stage_threshold_goes_before_the_abort_criteria() {
    use crate::rollout::abort::{AbortAction, AbortCriterion, AbortOn};
    let mut g = Given::fleet(&EIGHT);
    let mut s = spec_with_criteria(vec![AbortCriterion {
        on: AbortOn::Any,
        percent: 10.0,
        min_finished: 1,
        action: AbortAction::Abort,
    }]);
    s.stages[0].failure_threshold = Some(Threshold::Count(1));
    g.started(T0, s);
    g.step(T0);
    g.failed(T0 + S, "a/1", ErrorCode::SendFailed);
    let d = g.when(T0 + 2 * S);
    assert_eq!(
        names(&d.rollout_events),
        ["StageFailed", "RolloutPaused"],
        "the stage's own threshold and action decide first"
    );
}

// === automatic rollback ===

/// The fleet of [`FOUR`] with the image they run (1.0.0) in the catalog too.
fn fleet_with_old_image() -> Given {
    let mut g = Given::fleet(&FOUR);
    g.event(
        T0,
        &streams::firmware("fw-old"),
        esp_firmware("fw-old", "1.0.0"),
    );
    g
}

fn canary_then_all(rollback: RollbackScope) -> RolloutSpec {
    let mut canary = stage("canary", StageSize::Count(2));
    canary.failure_threshold = Some(Threshold::Count(1));
    let mut s = spec(vec![
        canary,
        stage("all", StageSize::CumulativePercent(100.0)),
    ]);
    s.rollback = rollback;
    s
}

fn linked(d: &Reconcile) -> (&str, &[DomainEvent]) {
    let [(id, events)] = d.new_rollouts.as_slice() else {
        panic!("one linked rollout expected: {d:?}");
    };
    (id.as_str(), events.as_slice())
}

#[test]
fn a_canary_failure_with_rollback_failed_records_the_linked_rollout_with_the_pause() {
    let mut g = fleet_with_old_image();
    g.started(T0, canary_then_all(RollbackScope::Failed));
    g.step(T0);
    g.succeeded(T0 + 5 * S, "b/1");
    // a/1 took part of the image and came back on a broken build before its task failed.
    g.event(
        T0 + 9 * S,
        &streams::device("a/1"),
        esp_device("2.0.0-broken"),
    );
    g.failed(T0 + 10 * S, "a/1", ErrorCode::DeviceReportedFailure);
    let d = g.when(T0 + 11 * S);
    assert_eq!(
        d,
        g.when(T0 + 11 * S),
        "deciding twice gives the same answer"
    );
    assert_eq!(
        names(&d.rollout_events),
        ["StageFailed", "RolloutPaused", "RolloutRolledBack"]
    );
    let DomainEvent::RolloutRolledBack(marker) = &d.rollout_events[2] else {
        unreachable!()
    };
    assert!(marker.automatic);
    assert_eq!(marker.scope, RollbackScope::Failed);
    assert_eq!(
        marker.reason,
        "rollout ro-1 stopped: stage canary: 1 failure(s) ≥ threshold 1 (1 failed, 0 timed out, of 2 devices)"
    );
    let (id, events) = linked(&d);
    assert_eq!(id, "ro-1-rollback");
    assert_eq!(names(events), ["RolloutCreated", "RolloutStarted"]);
    let DomainEvent::RolloutStarted(started) = &events[1] else {
        unreachable!()
    };
    assert_eq!(
        started.stages[0].device_ids,
        ["a/1"],
        "only the failed device"
    );
    // Both streams in one append: the rollout as the step saw it, the linked one new.
    let changes = d.changes(RO);
    assert!(changes.iter().any(|c| c.stream == "rollout/ro-1-rollback"));
    g.record(T0 + 11 * S, &d);
    assert_eq!(
        g.rollout()
            .rolled_back_by
            .as_ref()
            .map(|l| l.rollout_id.as_str()),
        Some(id)
    );

    // The linked rollout installs the previous image on its device, as a downgrade.
    let rb = g.state.rollouts[id].clone();
    let step = reconcile(Input {
        rollout: &rb,
        state: &g.state,
        now_ms: T0 + 12 * S,
        batch_check_in_flight: false,
        max_new_tasks: MAX_NEW_TASKS_PER_STEP,
        require_approval: false,
    });
    let [task] = step.new_tasks.as_slice() else {
        panic!("{step:?}");
    };
    assert_eq!(
        (
            task.device_id.as_str(),
            task.firmware_id.as_str(),
            task.downgrade
        ),
        ("a/1", "fw-old", true)
    );
    assert_eq!(task.target.version, "1.0.0");

    // Resumed and stopped again: never a second rollback.
    g.event(
        T0 + 100 * S,
        &streams::rollout(RO),
        RolloutResumed {
            reason: "go on".into(),
        },
    );
    g.step(T0 + 101 * S);
    g.step(T0 + 102 * S);
    g.failed(T0 + 110 * S, "a/2", ErrorCode::DeviceReportedFailure);
    let d = g.when(T0 + 111 * S);
    assert!(names(&d.rollout_events).contains(&"RolloutPaused"), "{d:?}");
    assert!(d.new_rollouts.is_empty());
    assert!(!names(&d.rollout_events).contains(&"RolloutRolledBack"));
}

#[test]
fn rollback_all_also_reverts_the_succeeded_devices_and_approval_keeps_it_a_draft() {
    let mut g = fleet_with_old_image();
    g.started(T0, canary_then_all(RollbackScope::All));
    g.step(T0);
    g.succeeded(T0 + 5 * S, "b/1");
    g.failed(T0 + 10 * S, "a/1", ErrorCode::DeviceReportedFailure);
    let d = reconcile(Input {
        rollout: g.rollout(),
        state: &g.state,
        now_ms: T0 + 11 * S,
        batch_check_in_flight: false,
        max_new_tasks: MAX_NEW_TASKS_PER_STEP,
        require_approval: true,
    });
    let (_, events) = linked(&d);
    assert_eq!(names(events), ["RolloutCreated", "RolloutApprovalRequired"]);
    let DomainEvent::RolloutCreated(created) = &events[0] else {
        unreachable!()
    };
    let reverts = created.spec.reverts.as_ref().expect("a rollback");
    assert_eq!(
        reverts
            .firmware
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["a/1", "b/1"]
    );
}

#[test]
fn no_rollback_without_the_setting_and_none_for_an_operator_stop() {
    let mut g = fleet_with_old_image();
    g.started(T0, canary_then_all(RollbackScope::None));
    g.step(T0);
    g.failed(T0 + 10 * S, "a/1", ErrorCode::DeviceReportedFailure);
    let d = g.when(T0 + 11 * S);
    assert_eq!(names(&d.rollout_events), ["StageFailed", "RolloutPaused"]);
    assert!(d.new_rollouts.is_empty());
}

#[test]
fn an_abort_criterion_with_action_rollback_aborts_and_reverts_the_failed_devices() {
    let mut g = fleet_with_old_image();
    let mut s = spec_with_criteria(vec![crate::rollout::abort::AbortCriterion {
        on: AbortOn::Failed,
        percent: 50.0,
        min_finished: 2,
        action: AbortAction::Rollback,
    }]);
    s.rollback = RollbackScope::None;
    g.started(T0, s);
    g.step(T0);
    g.failed(T0 + S, "a/1", ErrorCode::DeviceReportedFailure);
    g.succeeded(T0 + S, "a/2");
    let d = g.when(T0 + 2 * S);
    assert_eq!(
        names(&d.rollout_events),
        ["RolloutAborted", "RolloutRolledBack"],
        "{d:?}"
    );
    let (_, events) = linked(&d);
    let DomainEvent::RolloutCreated(created) = &events[0] else {
        unreachable!()
    };
    assert_eq!(
        created.spec.reverts.as_ref().map(|r| r.scope),
        Some(RollbackScope::Failed)
    );
}

#[test]
fn only_healthy_successes_count_and_verifying_devices_are_unfinished() {
    use crate::health::Health;
    let mut g = Given::fleet(&["a/1", "a/2", "b/1"]);
    let mut all = stage("all", StageSize::CumulativePercent(100.0));
    all.success_threshold = Some(Threshold::Percent(100.0));
    g.started(T0, spec(vec![all]));
    g.step(T0 + S);
    g.verifying(T0 + 10 * S, "a/1", T0 + 130 * S);
    g.verifying(T0 + 10 * S, "a/2", T0 + 130 * S);
    g.succeeded(T0 + 10 * S, "b/1");
    let task = &g.state.tasks[&g.task_of("a/1")];
    assert_eq!(task.phase, TaskPhase::Verifying);
    assert!(!task.phase.holds_slot() && !task.phase.is_cancellable());
    assert_eq!(
        task.timeout_at_ms,
        Some(T0 + 130 * S + crate::projection::VERDICT_GRACE)
    );
    let c = stage_counts(g.rollout(), &g.state, 0);
    assert_eq!((c.unfinished, c.succeeded), (2, 1));
    let d = g.when(T0 + 60 * S);
    assert!(d.rollout_events.is_empty(), "{d:?}");

    g.verdict(T0 + 130 * S, "a/1", Health::Healthy);
    g.verdict(T0 + 130 * S, "a/2", Health::Unconfirmed);
    let c = stage_counts(g.rollout(), &g.state, 0);
    assert_eq!((c.unfinished, c.succeeded, c.unconfirmed), (0, 2, 1));
    let d = g.step(T0 + 131 * S);
    let Some(DomainEvent::StageFailed(f)) = d.rollout_events.first() else {
        panic!("{d:?}");
    };
    assert!(
        f.reason.contains("only 2 succeeded, 3 needed")
            && f.reason.contains("1 unconfirmed not counted"),
        "{}",
        f.reason
    );
}

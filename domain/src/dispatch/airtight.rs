//! Abort and pause are airtight: a property test over random interleavings.
//!
//! The scheduler and the dispatcher each read the state (a snapshot with its stream versions),
//! decide, and commit later — with operators pausing, resuming and aborting, agents reporting
//! progress and results, and time passing in between, in any order. The log applies every
//! commit the way otad's store does (optimistic checks, all or nothing). Whatever the order:
//! - no task of a rollout is created or dispatched after its abort is in the log, and none is
//!   dispatched while its pause is the rollout's latest word;
//! - once the rollout is aborted, every one of its tasks ends (the loops and the agents keep
//!   running, nothing else happens).

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::events::*;
use crate::fixture::*;
use crate::model::VersionInfo;
use crate::projection::{RolloutState, Tally};
use crate::rollout::scheduler::{self, Input, Reconcile, reconcile};
use crate::rollout::spec::*;
use crate::status::UpgradeStatus;

const RO: &str = "ro-1";

#[derive(Debug, Clone, Copy)]
enum Op {
    SchedulerReads,
    SchedulerCommits,
    DispatcherReads,
    DispatcherCommits,
    Abort,
    Pause,
    Resume,
    /// An agent reports progress of the n-th task at its site.
    Progress(u8, bool),
    /// An agent reports the result of the n-th task at its site.
    Finish(u8, bool),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::SchedulerReads),
        3 => Just(Op::SchedulerCommits),
        3 => Just(Op::DispatcherReads),
        3 => Just(Op::DispatcherCommits),
        1 => Just(Op::Abort),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(n, asleep)| Op::Progress(n, asleep)),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(n, ok)| Op::Finish(n, ok)),
        2 => Just(Op::Tick),
    ]
}

struct Run {
    log: Log,
    now: UnixMillis,
    ids: std::cell::Cell<u64>,
    scheduler: Option<(HashMap<String, u64>, Reconcile)>,
    dispatcher: Option<(HashMap<String, u64>, DispatchDecision)>,
}

impl Run {
    fn new(devices: usize) -> Run {
        let mut log = Log::default();
        log.event(T0, &streams::firmware(FW), esp_firmware(FW, "2.0.0"));
        connected(&mut log, T0, "a");
        connected(&mut log, T0, "b");
        for i in 0..devices {
            let site = ["a", "b"][i % 2];
            log.event(
                T0,
                &streams::device(&format!("{site}/d{i}")),
                esp_device("1.0.0"),
            );
        }
        let mut s = spec(vec![
            stage("canary", StageSize::Count(2)),
            stage("rest", StageSize::CumulativePercent(100.0)),
        ]);
        s.concurrency = Concurrency {
            global: 3,
            per_site: 2,
            per_zigbee_network: 1,
            per_esphome_site: 2,
        };
        s.failure_budget = FailureBudget::Off;
        for st in &mut s.stages {
            st.failure_threshold = Some(Threshold::Count(100));
        }
        start_rollout(&mut log, T0, RO, s);
        Run {
            log,
            now: T0,
            ids: std::cell::Cell::new(1),
            scheduler: None,
            dispatcher: None,
        }
    }

    fn rollout_state(&self) -> RolloutState {
        self.log.state.rollouts[RO].state
    }

    fn scheduler_reads(&mut self) {
        let d = reconcile(Input {
            rollout: &self.log.state.rollouts[RO],
            state: &self.log.state,
            now_ms: self.now,
            batch_check_in_flight: false,
            max_new_tasks: 1,
            require_approval: false,
        });
        self.scheduler = Some((self.log.versions.clone(), d));
    }

    fn scheduler_commits(&mut self) {
        if let Some((seen, d)) = self.scheduler.take() {
            let _ = self.log.commit(self.now, &d.changes(RO), &seen);
        }
    }

    fn dispatcher_reads(&mut self) {
        let next = || {
            let id = self.ids.get();
            self.ids.set(id + 1);
            id
        };
        let d = decide(&DispatchInput {
            state: &self.log.state,
            now_ms: self.now,
            connected: &|_| true,
            next_command_id: &next,
            probes: &ProbeMemory::default(),
        });
        self.dispatcher = Some((self.log.versions.clone(), d));
    }

    fn dispatcher_commits(&mut self) {
        if let Some((seen, d)) = self.dispatcher.take() {
            let _ = self.log.commit(self.now, &d.changes, &seen);
        }
    }

    fn operator(&mut self, action: Op) {
        let r = &self.log.state.rollouts[RO];
        let changes = match (action, r.state) {
            (Op::Abort, RolloutState::Running | RolloutState::Paused) => {
                scheduler::abort(r, &self.log.state, "operator", false).changes(RO)
            }
            (Op::Pause, RolloutState::Running) => vec![Change::unchanged(
                streams::rollout(RO),
                vec![
                    RolloutPaused {
                        reason: "operator".into(),
                        automatic: false,
                    }
                    .into(),
                ],
            )],
            (Op::Resume, RolloutState::Paused) => vec![Change::unchanged(
                streams::rollout(RO),
                vec![
                    RolloutResumed {
                        reason: "operator".into(),
                    }
                    .into(),
                ],
            )],
            _ => return,
        };
        let seen = self.log.versions.clone();
        self.log
            .commit(self.now, &changes, &seen)
            .expect("an operator's own read-and-write does not conflict");
    }

    fn at_site(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .log
            .state
            .tasks
            .values()
            .filter(|t| t.phase.is_at_site())
            .map(|t| t.created.task_id.clone())
            .collect();
        v.sort();
        v
    }

    /// An agent's report, recorded as `api::agents` does (the task's stream unchanged, guarded
    /// by the rollout's); refused reports are resent later, as agents do.
    fn agent(&mut self, op: Op) {
        let tasks = self.at_site();
        if tasks.is_empty() {
            return;
        }
        let (n, event): (u8, DomainEvent) = match op {
            Op::Progress(n, asleep) => {
                let id = &tasks[n as usize % tasks.len()];
                let t = &self.log.state.tasks[id];
                (
                    n,
                    TaskProgressed {
                        attempt: t.attempt,
                        status: if asleep {
                            UpgradeStatus::WaitingForWakeup
                        } else {
                            UpgradeStatus::Updating
                        },
                        progress: 10.0,
                        remaining_s: None,
                        bytes_sent: 1,
                        bytes_total: 10,
                        detail: String::new(),
                        source: None,
                    }
                    .into(),
                )
            }
            Op::Finish(n, ok) => {
                let id = &tasks[n as usize % tasks.len()];
                let t = &self.log.state.tasks[id];
                let event = if ok {
                    TaskSucceeded {
                        attempt: t.attempt,
                        from: VersionInfo::default(),
                        to: VersionInfo {
                            version: "2.0.0".into(),
                            ..Default::default()
                        },
                        duration_ms: 1,
                        wire_bytes: 1,
                        source: None,
                        late: false,
                        health: crate::health::Health::NotChecked,
                    }
                    .into()
                } else {
                    TaskFailed {
                        attempt: t.attempt,
                        error: crate::status::TaskError::new(ErrorCode::ChecksumMismatch, "md5"),
                        timed_out: false,
                        retry_at_ms: None,
                        source: Some(crate::model::AgentSource {
                            agent_id: "agent".into(),
                            seq: 1,
                        }),
                    }
                    .into()
                };
                (n, event)
            }
            _ => return,
        };
        let id = tasks[n as usize % tasks.len()].clone();
        let mut changes = vec![Change::unchanged(streams::task(&id), vec![event])];
        crate::decision::ensure_guard(&mut changes, &streams::rollout(RO));
        let seen = self.log.versions.clone();
        let _ = self.log.commit(self.now, &changes, &seen);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::SchedulerReads => self.scheduler_reads(),
            Op::SchedulerCommits => self.scheduler_commits(),
            Op::DispatcherReads => self.dispatcher_reads(),
            Op::DispatcherCommits => self.dispatcher_commits(),
            Op::Abort | Op::Pause | Op::Resume => self.operator(op),
            Op::Progress(..) | Op::Finish(..) => self.agent(op),
            Op::Tick => self.now += 90 * S,
        }
    }

    /// No task is created or dispatched after the abort is in the log, nor dispatched while a
    /// pause is the rollout's latest word.
    fn check_log(&self) -> Result<(), String> {
        let mut aborted_at = None;
        let mut paused = false;
        for (seq, stream, e) in &self.log.events {
            match e {
                DomainEvent::RolloutAborted(_) => aborted_at = Some(*seq),
                DomainEvent::RolloutPaused(_) => paused = true,
                DomainEvent::RolloutResumed(_) => paused = false,
                DomainEvent::TaskCreated(t) if t.rollout_id.as_deref() == Some(RO) => {
                    if let Some(a) = aborted_at {
                        return Err(format!(
                            "task {} created at {seq} after the abort at {a}",
                            t.task_id
                        ));
                    }
                }
                DomainEvent::TaskDispatched(_) if stream.starts_with(streams::TASK_PREFIX) => {
                    if let Some(a) = aborted_at {
                        return Err(format!(
                            "{stream} dispatched at {seq} after the abort at {a}"
                        ));
                    }
                    if paused {
                        return Err(format!("{stream} dispatched at {seq} while paused"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The counts the projection keeps as events are applied (stage and rollout tallies, the
    /// open tasks) are what walking every task gives.
    fn check_counts(&self) -> Result<(), String> {
        let state = &self.log.state;
        for r in state.rollouts.values() {
            for i in 0..r.stages.len() {
                let kept = scheduler::stage_counts(r, state, i);
                let walked = scheduler::stage_counts_walked(r, state, i);
                if kept != walked {
                    return Err(format!("stage {i}: kept {kept:?}, walked {walked:?}"));
                }
            }
            let walked = Tally::of(
                r.tasks_by_device
                    .values()
                    .filter_map(|id| state.tasks.get(id).map(Box::as_ref)),
                r.failures_accepted_at_ms,
            );
            if r.tally != walked {
                return Err(format!(
                    "rollout {}: kept {:?}, walked {walked:?}",
                    r.id, r.tally
                ));
            }
        }
        let open: std::collections::BTreeSet<String> = state
            .tasks
            .iter()
            .filter(|(_, t)| !t.phase.is_terminal())
            .map(|(id, _)| id.clone())
            .collect();
        if open != state.open_tasks {
            return Err(format!(
                "open tasks kept {:?}, walked {open:?}",
                state.open_tasks
            ));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn no_dispatch_after_a_durable_abort_and_every_task_of_an_aborted_rollout_ends(
        devices in 2usize..7,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut run = Run::new(devices);
        for op in ops {
            run.apply(op);
            if let Err(e) = run.check_log().and_then(|()| run.check_counts()) {
                prop_assert!(false, "{e}");
            }
        }
        // Abort now (unless it has ended already), then let the loops and the agents run on.
        run.operator(Op::Abort);
        prop_assert!(
            matches!(run.rollout_state(), RolloutState::Aborted | RolloutState::Completed),
            "{:?}",
            run.rollout_state()
        );
        for _ in 0..40 {
            for op in [Op::SchedulerReads, Op::SchedulerCommits, Op::DispatcherReads, Op::DispatcherCommits] {
                run.apply(op);
            }
            for _ in 0..run.at_site().len() {
                run.apply(Op::Finish(0, true));
            }
            run.apply(Op::Tick);
            prop_assert!(run.check_log().is_ok(), "{:?}", run.check_log());
            prop_assert!(run.check_counts().is_ok(), "{:?}", run.check_counts());
        }
        let open: Vec<String> = run
            .log
            .state
            .tasks
            .values()
            .filter(|t| !t.phase.is_terminal())
            .map(|t| format!("{} {}", t.created.task_id, t.phase.name()))
            .collect();
        prop_assert!(open.is_empty(), "tasks of the aborted rollout still open: {open:?}");
    }
}

//! The rollout loop: drives every running rollout through its batch check and stages, and
//! creates auto-upgrade tasks.
//!
//! A level-triggered reconcile loop in the style of a kube controller, next to the task
//! dispatcher (`dispatch`): each pass re-reads the fleet state and, for every running rollout,
//! asks the pure scheduler (`ota_domain::rollout::scheduler::reconcile`) what to do now, records
//! its decision through `Core::execute` (the rollout stream and touched task streams expected
//! unchanged, new task streams expected absent), and only then acts outside the log: sends
//! `CancelCommand`s and starts batch checks. A pass runs when something relevant was recorded,
//! when the earliest wake-up a decision asked for is due (stage deadline, end of soak, batch
//! check deadline, a maintenance window opening or closing), and every 30 s as a safety net.
//! Running a pass twice changes nothing. A step that stops a rollout by its thresholds or
//! criteria also records its automatic rollback (the linked rollout's stream is created in the
//! same append); the next pass runs the linked rollout like any other.
//!
//! The loop and the dispatcher split the work: the loop decides *which* tasks exist and when a
//! stage starts, succeeds or fails; the dispatcher decides *when each task is sent* (rollout
//! running, stage started, window open at the task's site, concurrency limits, preflight).
//!
//! **Restart safety.** Everything the loop knows is in the log: after a restart a stage in
//! progress continues, and soak and deadline timers continue from their recorded times. The only
//! in-memory state is which batch checks this process is waiting for; a check that was running
//! when otad stopped is started again (new check id). Task ids are derived from the rollout and
//! the device, and task streams are created with "must not exist", so a device never gets a
//! second task in a rollout, whatever interleaving of passes and restarts happens. Task creation
//! also holds `App::task_creation`, like single-device updates, so a device never has two
//! unfinished tasks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_domain::events::{BatchCheckStarted, DomainEvent, streams};
use ota_domain::model::Actor;
use ota_domain::projection::RolloutState;
use ota_domain::rollout::scheduler::{self, CancelOrder, Input, Reconcile};
use ota_domain::rollout::{auto, scheduler::batch_check_completed};
use ota_domain::status::UpgradeStatus;
use ota_domain::time::UnixMillis;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::app::App;
use crate::checks;
use crate::core::{Change, CoreError};
use crate::lock::MutexExt;
use crate::reconcile_loop::{self, LoopSpec, Passed, Woke};

/// The shortest sleep between passes that were asked for by time.
const MIN_SLEEP: Duration = Duration::from_millis(50);
/// After a batch check could not run, wait this long before trying again.
const CHECK_RETRY: Duration = Duration::from_secs(5);

/// Starts the rollout loop.
pub fn spawn(app: Arc<App>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let rollouts = Rollouts {
        app,
        checks_in_flight: Arc::new(Mutex::new(HashSet::new())),
        wake: Arc::new(Notify::new()),
    };
    tokio::spawn(async move { rollouts.run(shutdown).await }.instrument(info_span!("rollouts")))
}

/// Events that cannot change what a rollout or auto-upgrade should do.
fn is_relevant(e: &DomainEvent) -> bool {
    !matches!(
        e,
        DomainEvent::TaskDispatched(_)
            | DomainEvent::TaskHeld(_)
            | DomainEvent::TaskPreparing(_)
            | DomainEvent::FirmwareSignatureAdded(_)
            | DomainEvent::TokenCreated(_)
            | DomainEvent::TokenRevoked(_)
            | DomainEvent::DeviceChecked(_)
    ) && !matches!(e, DomainEvent::TaskProgressed(p) if p.status != UpgradeStatus::WaitingForWakeup)
}

#[derive(Debug, Clone)]
struct Rollouts {
    app: Arc<App>,
    /// Rollouts whose batch check this process is waiting for.
    checks_in_flight: Arc<Mutex<HashSet<String>>>,
    /// Wakes the loop from its own background work (a batch check that could not run).
    wake: Arc<Notify>,
}

impl Rollouts {
    async fn run(self, shutdown: CancellationToken) {
        let spec = LoopSpec {
            name: "rollouts",
            relevant: is_relevant,
            min_sleep: MIN_SLEEP,
        };
        let app = self.app.clone();
        let dispatch_wake = app.dispatch_wake.clone();
        reconcile_loop::run(
            app,
            spec,
            self.wake.clone(),
            shutdown,
            || self.pass(),
            |woke| {
                if woke == Woke::Timer {
                    // A deadline, soak end or window change is due: the dispatcher may have
                    // tasks to release that no event will tell it about (a window that opened).
                    dispatch_wake.notify_one();
                }
            },
        )
        .await;
        debug!("rollout loop stopped");
    }

    fn in_flight(&self, rollout_id: &str) -> bool {
        self.checks_in_flight.locked().contains(rollout_id)
    }

    /// One pass over every running rollout, then auto-upgrade. Returns the next wake-up and how
    /// long it was busy deciding.
    async fn pass(&self) -> Result<Passed, CoreError> {
        let app = &self.app;
        let running: Vec<String> = {
            let state = app.core.read();
            state
                .rollouts
                .values()
                .filter(|r| r.state == RolloutState::Running)
                .map(|r| r.id.clone())
                .collect()
        };
        let mut next: Option<UnixMillis> = None;
        let mut busy = Duration::ZERO;
        let _creating = app.task_creation.lock().await;
        for id in running {
            let now = app.now();
            let in_flight = self.in_flight(&id);
            let mut decision = Reconcile::default();
            let recorded = app
                .core
                .execute::<CoreError, _>(&Actor::system(), |state| {
                    let deciding = tokio::time::Instant::now();
                    decision = match state.rollouts.get(&id) {
                        Some(r) => scheduler::reconcile(Input {
                            rollout: r,
                            state,
                            now_ms: now,
                            batch_check_in_flight: in_flight,
                            max_new_tasks: scheduler::MAX_NEW_TASKS_PER_STEP,
                            require_approval: app.config.require_approval,
                        }),
                        None => Reconcile::default(),
                    };
                    let changes = decision.changes(&id);
                    busy += deciding.elapsed();
                    Ok(changes)
                })
                .await;
            if let Err(e) = recorded {
                // One rollout's trouble (say, contention with agents' reports on its tasks) does
                // not hold up the others; it is looked at again shortly.
                warn!(rollout.id = %id, error = %e, "could not record the rollout's next step; retrying soon");
                let soon = app.now() + Duration::from_secs(1);
                next = Some(next.map_or(soon, |n| n.min(soon)));
                continue;
            }
            if let Some(at) = decision.requeue_at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            let span = step_span(&id, &decision);
            let _entered = span.enter();
            log_decision(&id, &decision);
            // Tasks created by this step dispatch in its trace.
            if !decision.new_tasks.is_empty() {
                let cx = ota_telemetry::traces::inject(&span);
                for t in &decision.new_tasks {
                    app.sessions.remember_trace(&t.task_id, cx.clone());
                }
            }
            send_cancels(app, &decision.cancels);
            if let Some(bc) = decision.batch_check_started()
                && !bc.device_ids.is_empty()
                && !decision
                    .rollout_events
                    .iter()
                    .any(|e| matches!(e, DomainEvent::BatchCheckCompleted(_)))
            {
                self.start_batch_check(&id, bc);
            }
        }
        let created = app
            .core
            .execute::<CoreError, _>(&Actor::system(), |state| {
                let deciding = tokio::time::Instant::now();
                let changes = auto::due(state)
                    .into_iter()
                    .map(|t| Change::new_stream(streams::task(&t.task_id), vec![t.into()]))
                    .collect();
                busy += deciding.elapsed();
                Ok(changes)
            })
            .await?;
        if created.last_seq > 0 {
            info!(
                tasks = created.last_seq - created.first_seq + 1,
                "auto-upgrade created tasks"
            );
        }
        Ok(Passed {
            next_due: next,
            busy,
        })
    }

    /// Runs a rollout's batch check in the background: one check of all its targets through
    /// their agents with one timeout (`checks::check_devices`, which records a
    /// `DeviceChecked` per device, 5019 for those that do not answer), then
    /// `BatchCheckCompleted`.
    fn start_batch_check(&self, rollout_id: &str, bc: BatchCheckStarted) {
        self.checks_in_flight
            .locked()
            .insert(rollout_id.to_string());
        let this = self.clone();
        let rollout_id = rollout_id.to_string();
        let span = info_span!("rollout.batch_check", rollout.id = %rollout_id, check.id = %bc.check_id, devices = bc.device_ids.len());
        tokio::spawn(
            async move {
                let outcome = this.run_batch_check(&rollout_id, &bc).await;
                this.checks_in_flight.locked().remove(&rollout_id);
                if let Err(e) = outcome {
                    warn!(error = %e, "batch check could not run; it will be started again");
                    tokio::time::sleep(CHECK_RETRY).await;
                    this.wake.notify_one();
                }
            }
            .instrument(span),
        );
    }

    async fn run_batch_check(
        &self,
        rollout_id: &str,
        bc: &BatchCheckStarted,
    ) -> Result<(), CoreError> {
        let app = &self.app;
        let (firmware_id, live) = {
            let state = app.core.read();
            let Some(r) = state.rollouts.get(rollout_id) else {
                return Ok(());
            };
            // Devices their site no longer reports are excluded at completion, not asked.
            let live: Vec<String> = bc
                .device_ids
                .iter()
                .filter(|d| {
                    state
                        .devices
                        .get(*d)
                        .map(Box::as_ref)
                        .is_some_and(|d| !d.removed)
                })
                .cloned()
                .collect();
            (r.spec.firmware_id.clone(), live)
        };
        let timeout = bc.deadline_at_ms.since(app.now());
        info!(
            devices = live.len(),
            timeout_ms = timeout.as_millis() as u64,
            "batch check started"
        );
        let checks = checks::check_devices(
            app,
            &Actor::system(),
            &bc.check_id,
            &live,
            Some(&firmware_id),
            timeout,
        )
        .await?;
        let no_answer = checks
            .iter()
            .filter(|c| {
                c.error.as_ref().map(|e| e.code)
                    == Some(ota_domain::status::ErrorCode::BulkCheckTimeout)
            })
            .count();
        app.core
            .execute::<CoreError, _>(&Actor::system(), |state| {
                let Some(r) = state.rollouts.get(rollout_id) else {
                    return Ok(vec![]);
                };
                match &r.batch_check {
                    Some(cur) if cur.check_id == bc.check_id && !cur.completed => {}
                    // Superseded (a newer check) or already completed.
                    _ => return Ok(vec![]),
                }
                let done = batch_check_completed(r, state, &bc.check_id);
                Ok(vec![Change::unchanged(
                    streams::rollout(rollout_id),
                    done.into_events(),
                )])
            })
            .await?;
        info!(
            answered = checks.len() - no_answer,
            no_answer, "batch check completed"
        );
        Ok(())
    }
}

/// The span of a rollout step that changed something (a stage transition, tasks created or
/// ended), a new root per step; `Span::none()` for a pass that changed nothing, so idle passes
/// cost no traces. Its events are the log lines of [`log_decision`].
fn step_span(rollout_id: &str, d: &Reconcile) -> tracing::Span {
    if d.rollout_events.is_empty() && d.new_tasks.is_empty() && d.task_events.is_empty() {
        return tracing::Span::none();
    }
    let stage = d.rollout_events.iter().find_map(|e| match e {
        DomainEvent::StageStarted(s) => Some(s.index),
        DomainEvent::StageDevicesExcluded(s) => Some(s.index),
        DomainEvent::StageSoaking(s) => Some(s.index),
        DomainEvent::StageSucceeded(s) => Some(s.index),
        DomainEvent::StageFailed(s) => Some(s.index),
        _ => None,
    });
    let events: Vec<&str> = d.rollout_events.iter().map(|e| e.type_name()).collect();
    info_span!(
        parent: None,
        "rollout.step",
        rollout.id = %rollout_id,
        stage,
        events = %events.join(","),
        tasks.created = d.new_tasks.len(),
        tasks.ended = d.task_events.len(),
    )
}

fn log_decision(rollout_id: &str, d: &Reconcile) {
    for e in &d.rollout_events {
        match e {
            DomainEvent::StageFailed(f) => {
                warn!(rollout.id = %rollout_id, stage = f.index, reason = %f.reason, "stage failed")
            }
            DomainEvent::RolloutPaused(p) => {
                warn!(rollout.id = %rollout_id, reason = %p.reason, "rollout paused")
            }
            DomainEvent::RolloutAborted(a) => {
                warn!(rollout.id = %rollout_id, reason = %a.reason, "rollout aborted")
            }
            DomainEvent::RolloutRolledBack(b) => {
                warn!(rollout.id = %rollout_id, rollback.id = %b.rollback_id, scope = b.scope.name(), reason = %b.reason, "rollout rolled back automatically")
            }
            other => info!(rollout.id = %rollout_id, event = other.type_name(), "rollout moved"),
        }
    }
    if !d.new_tasks.is_empty() {
        info!(rollout.id = %rollout_id, tasks = d.new_tasks.len(), "tasks created");
    }
    if !d.task_events.is_empty() {
        info!(rollout.id = %rollout_id, tasks = d.task_events.len(), "tasks ended by the rollout");
    }
}

/// Sends `CancelCommand`s; an agent that is not connected learns at its next hello, where the
/// welcome no longer lists the task.
pub fn send_cancels(app: &App, cancels: &[CancelOrder]) {
    for c in cancels {
        let msg = crate::to_agent::cancel(&c.task_id, &c.reason, app.sessions.next_command_id());
        if let Err(e) = app.sessions.send(&c.site_id, msg) {
            debug!(task.id = %c.task_id, error = %e, "cancel not delivered");
        }
    }
}

//! otad's metrics: the instruments of the metric catalog (see `ota_telemetry::metrics`) and
//! where their values come from.
//!
//! - Counters and histograms are recorded where things happen: the gRPC layer
//!   (`api::rpc_metrics`), task results and store appends reported by the core
//!   ([`crate::core::CoreObserver`], live events only: replay at startup counts nothing), and
//!   firmware downloads (`api::firmware`), agent reports refused (`api::agents`).
//! - Gauges are observed at collection time from the projection ([`FleetState`]), the live
//!   sessions and the store, so a scrape always shows the current state and nothing has to be
//!   kept in sync.
//!
//! What this module does not do: serve `/metrics` (that is `ota_telemetry::prometheus`, started
//! by [`crate::wiring::Otad::start`]) or decide anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use ota_domain::projection::{FleetState, RolloutView, StageView, TaskPhase, TaskView};
use ota_domain::time::UnixMillis;
use ota_telemetry::metrics::{APPEND_SECONDS, Metrics, RPC_SECONDS, UPDATE_SECONDS};

use crate::core::{Applied, Core, CoreObserver};
use crate::sessions::Sessions;

/// Rollouts that ended longer ago than this leave the per-stage gauges.
const FINISHED_ROLLOUT_KEPT: Duration = Duration::from_secs(3_600);

/// otad's instruments on its own meter provider.
#[derive(Debug)]
pub struct ServerMetrics {
    metrics: Metrics,
    rpc_requests: Counter<u64>,
    rpc_duration: Histogram<f64>,
    tasks_finished: Counter<u64>,
    update_duration: Histogram<f64>,
    firmware_download_bytes: Counter<u64>,
    append_duration: Histogram<f64>,
    appended_events: Counter<u64>,
    reports_refused: Counter<u64>,
}

impl ServerMetrics {
    /// Creates the instruments that are recorded as things happen.
    pub fn new(metrics: Metrics) -> Arc<ServerMetrics> {
        let meter = metrics.meter("otad");
        Arc::new(ServerMetrics {
            rpc_requests: meter
                .u64_counter("ota_rpc_requests")
                .with_description("gRPC requests by method and gRPC status code.")
                .build(),
            rpc_duration: meter
                .f64_histogram("ota_rpc_duration_seconds")
                .with_description("gRPC latency until the response starts (for streams: until the stream opened).")
                .with_unit("s")
                .with_boundaries(RPC_SECONDS.to_vec())
                .build(),
            tasks_finished: meter
                .u64_counter("ota_tasks_finished")
                .with_description("Tasks that reached a final result, by result and error code (0: none).")
                .build(),
            update_duration: meter
                .f64_histogram("ota_update_duration_seconds")
                .with_description("Device updates from the first dispatch to the final result.")
                .with_unit("s")
                .with_boundaries(UPDATE_SECONDS.to_vec())
                .build(),
            firmware_download_bytes: meter
                .u64_counter("ota_firmware_download_bytes")
                .with_description("Firmware bytes served to agents.")
                .with_unit("By")
                .build(),
            append_duration: meter
                .f64_histogram("ota_store_append_duration_seconds")
                .with_description("Event store appends, from the call until durable.")
                .with_unit("s")
                .with_boundaries(APPEND_SECONDS.to_vec())
                .build(),
            appended_events: meter
                .u64_counter("ota_store_appended_events")
                .with_description("Events appended to the log by this process.")
                .build(),
            reports_refused: meter
                .u64_counter("ota_reports_refused")
                .with_description("Journaled agent reports refused (never recorded), by site and report kind.")
                .build(),
            metrics,
        })
    }

    /// The provider (for the `/metrics` endpoint and shutdown).
    pub fn provider(&self) -> &Metrics {
        &self.metrics
    }

    /// One gRPC request ended (`code` is the gRPC code name, e.g. `Ok`).
    pub fn rpc_finished(&self, rpc: &str, code: &str) {
        self.rpc_requests.add(
            1,
            &[
                KeyValue::new("rpc", rpc.to_string()),
                KeyValue::new("code", code.to_string()),
            ],
        );
    }

    /// How long a gRPC request took until its response started.
    pub fn rpc_latency(&self, rpc: &str, elapsed: Duration) {
        self.rpc_duration.record(
            elapsed.as_secs_f64(),
            &[KeyValue::new("rpc", rpc.to_string())],
        );
    }

    /// Firmware bytes sent to the agent of `site`.
    pub fn firmware_served(&self, site: &str, bytes: u64) {
        self.firmware_download_bytes
            .add(bytes, &[KeyValue::new("site", site.to_string())]);
    }

    /// A journaled report of `site`'s agent was refused; `kind` is `inventory`, `progress`,
    /// `result`, `check_result` or `unknown`.
    pub fn report_refused(&self, site: &str, kind: &'static str) {
        self.reports_refused.add(
            1,
            &[
                KeyValue::new("site", site.to_string()),
                KeyValue::new("kind", kind),
            ],
        );
    }

    /// Registers the gauges computed at collection time. They hold the core and the sessions
    /// weakly: the provider must not keep a stopped server alive.
    pub fn observe(&self, core: &Arc<Core>, sessions: &Arc<Sessions>) {
        let meter = self.metrics.meter("otad");
        register_gauges(&meter, Arc::downgrade(core), Arc::downgrade(sessions));
    }
}

/// The `result` label of a final phase.
fn result_of(phase: TaskPhase) -> &'static str {
    match phase {
        TaskPhase::Succeeded => "success",
        TaskPhase::TimedOut => "timeout",
        TaskPhase::Skipped | TaskPhase::Cancelled => "cancelled",
        _ => "failure",
    }
}

/// The `code` label: the task's error code, `0` for success or when there is none.
fn code_of(task: &TaskView) -> String {
    match (task.phase, &task.error) {
        (TaskPhase::Succeeded, _) | (_, None) => "0".into(),
        (_, Some(e)) => e.code.code().to_string(),
    }
}

fn transport_of(state: &FleetState, task: &TaskView) -> &'static str {
    state
        .devices
        .get(&task.created.device_id)
        .and_then(|d| d.facts.transport)
        .map_or("unknown", |t| t.name())
}

/// A phase name as a label value (`agent-preparing` → `agent_preparing`).
fn status_label(phase: TaskPhase) -> String {
    phase.name().replace('-', "_")
}

impl CoreObserver for ServerMetrics {
    fn appended(&self, events: usize, elapsed: Duration) {
        self.append_duration.record(elapsed.as_secs_f64(), &[]);
        self.appended_events.add(events as u64, &[]);
    }

    fn applied(&self, state: &FleetState, applied: &Applied, task_before: Option<TaskPhase>) {
        let Some(before) = task_before else {
            return;
        };
        let Some(task) = applied
            .stream
            .strip_prefix(ota_domain::events::streams::TASK_PREFIX)
            .and_then(|id| state.tasks.get(id).map(Box::as_ref))
        else {
            return;
        };
        if before.is_terminal() || !task.phase.is_terminal() {
            return;
        }
        let transport = transport_of(state, task);
        let result = result_of(task.phase);
        self.tasks_finished.add(
            1,
            &[
                KeyValue::new("site", task.created.site_id.clone()),
                KeyValue::new("transport", transport),
                KeyValue::new("result", result),
                KeyValue::new("code", code_of(task)),
            ],
        );
        if let (Some(started), Some(finished)) = (task.started_at_ms, task.finished_at_ms) {
            self.update_duration.record(
                finished.since(started).as_secs_f64(),
                &[
                    KeyValue::new("transport", transport),
                    KeyValue::new("result", result),
                ],
            );
        }
    }
}

/// The state of one device of a rollout stage, as the stage gauge names it.
fn stage_device_state(rollout: &RolloutView, device_id: &str, state: &FleetState) -> &'static str {
    let phase = rollout
        .tasks_by_device
        .get(device_id)
        .and_then(|t| state.tasks.get(t).map(Box::as_ref))
        .map(|t| t.phase);
    match phase {
        None | Some(TaskPhase::Queued | TaskPhase::Preparing | TaskPhase::Held) => "pending",
        Some(
            TaskPhase::AgentPreparing
            | TaskPhase::SiteQueued
            | TaskPhase::WaitingForWakeup
            | TaskPhase::Updating
            | TaskPhase::Downloaded
            | TaskPhase::Verifying,
        ) => "running",
        Some(TaskPhase::Succeeded) => "succeeded",
        Some(TaskPhase::Failed | TaskPhase::TimedOut) => "failed",
        Some(TaskPhase::Skipped | TaskPhase::Cancelled) => "skipped",
    }
}

const STAGE_DEVICE_STATES: [&str; 5] = ["pending", "running", "succeeded", "failed", "skipped"];

fn shown(rollout: &RolloutView, now: UnixMillis) -> bool {
    !(rollout.state.is_terminal()
        && rollout
            .finished_at_ms
            .is_some_and(|at| now.since(at) > FINISHED_ROLLOUT_KEPT))
}

fn stage_counts(
    rollout: &RolloutView,
    stage: &StageView,
    state: &FleetState,
) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> =
        STAGE_DEVICE_STATES.iter().map(|s| (*s, 0)).collect();
    for d in &stage.device_ids {
        *counts
            .entry(stage_device_state(rollout, d, state))
            .or_default() += 1;
    }
    counts
}

/// One gauge's samples: label sets and values.
type Samples<T> = Vec<(Vec<KeyValue>, T)>;

/// The gauges derived from the fleet state, computed in one place so tests can check them
/// without a provider.
#[derive(Debug, Default)]
pub struct StateGauges {
    /// `ota_tasks`.
    pub tasks: Samples<u64>,
    /// `ota_rollouts`.
    pub rollouts: Samples<u64>,
    /// `ota_rollout_stage_devices`.
    pub stage_devices: Samples<u64>,
    /// `ota_rollout_progress_ratio`.
    pub progress: Samples<f64>,
    /// `ota_devices`.
    pub devices: Samples<u64>,
    /// `ota_devices_by_version`.
    pub by_version: Samples<u64>,
    /// `ota_dispatch_queue_depth`.
    pub queue_depth: Samples<u64>,
}

fn kv(k: &'static str, v: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(k, v)
}

/// Computes the state gauges at `now`.
pub fn state_gauges(state: &FleetState, now: UnixMillis) -> StateGauges {
    let mut g = StateGauges::default();

    let mut tasks: BTreeMap<(String, &'static str, String), u64> = BTreeMap::new();
    let mut queue: BTreeMap<String, u64> = state.sites.keys().map(|s| (s.clone(), 0)).collect();
    let open = state.open_tasks.iter().filter_map(|id| state.tasks.get(id));
    for t in open.filter(|t| !t.phase.is_terminal()) {
        let transport = transport_of(state, t);
        *tasks
            .entry((t.created.site_id.clone(), transport, status_label(t.phase)))
            .or_default() += 1;
        if t.phase == TaskPhase::Queued
            && t.next_attempt_at_ms.is_none_or(|at| at <= now)
            && ota_domain::dispatch::released_by_rollout(state, t, now).is_some()
        {
            *queue.entry(t.created.site_id.clone()).or_default() += 1;
        }
    }
    g.tasks = tasks
        .into_iter()
        .map(|((site, transport, status), n)| {
            (
                vec![
                    kv("site", site),
                    kv("transport", transport),
                    kv("status", status),
                ],
                n,
            )
        })
        .collect();
    g.queue_depth = queue
        .into_iter()
        .map(|(site, n)| (vec![kv("site", site)], n))
        .collect();

    let mut by_state: BTreeMap<&'static str, u64> =
        ["draft", "running", "paused", "completed", "aborted"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
    for r in state.rollouts.values() {
        *by_state.entry(r.state.name()).or_default() += 1;
        if !shown(r, now) {
            continue;
        }
        let (mut finished, mut all) = (0u64, 0u64);
        for stage in &r.stages {
            let counts = stage_counts(r, stage, state);
            for (s, n) in &counts {
                g.stage_devices.push((
                    vec![
                        kv("rollout", r.id.clone()),
                        kv("stage", stage.name.clone()),
                        kv("state", *s),
                    ],
                    *n,
                ));
            }
            all += stage.device_ids.len() as u64;
            finished += counts["succeeded"] + counts["failed"] + counts["skipped"];
        }
        let ratio = if all == 0 {
            0.0
        } else {
            finished as f64 / all as f64
        };
        g.progress.push((vec![kv("rollout", r.id.clone())], ratio));
    }
    g.rollouts = by_state
        .into_iter()
        .map(|(s, n)| (vec![kv("state", s)], n))
        .collect();

    let mut devices: BTreeMap<(String, &'static str, bool), u64> = BTreeMap::new();
    let mut versions: BTreeMap<(&'static str, String, String), u64> = BTreeMap::new();
    for d in state.devices.values().filter(|d| !d.removed) {
        let transport = d.facts.transport.map_or("unknown", |t| t.name());
        *devices
            .entry((d.site_id.clone(), transport, d.facts.reachable))
            .or_default() += 1;
        *versions
            .entry((
                transport,
                d.facts.model.clone(),
                d.facts.current.version.clone(),
            ))
            .or_default() += 1;
    }
    g.devices = devices
        .into_iter()
        .map(|((site, transport, reachable), n)| {
            (
                vec![
                    kv("site", site),
                    kv("transport", transport),
                    kv("reachable", if reachable { "true" } else { "false" }),
                ],
                n,
            )
        })
        .collect();
    g.by_version = versions
        .into_iter()
        .map(|((transport, model, version), n)| {
            (
                vec![
                    kv("transport", transport),
                    kv("model", model),
                    kv("version", version),
                ],
                n,
            )
        })
        .collect();
    g
}

fn register_gauges(meter: &Meter, core: Weak<Core>, sessions: Weak<Sessions>) {
    register_state_gauges(meter, &core);
    register_agent_gauges(meter, &core, sessions);
    register_store_gauges(meter, &core);
}

/// Every state gauge reads the projection once per collection through this.
fn with_state<R: Default>(core: &Weak<Core>, f: impl FnOnce(StateGauges) -> R) -> R {
    match core.upgrade() {
        Some(core) => {
            let now = core.clock().now();
            let gauges = state_gauges(&core.read(), now);
            f(gauges)
        }
        None => R::default(),
    }
}

/// The gauges computed from the projection (see [`state_gauges`]).
fn register_state_gauges(meter: &Meter, core: &Weak<Core>) {
    macro_rules! state_gauge {
        ($name:literal, $help:literal, $field:ident) => {{
            let core = core.clone();
            meter
                .u64_observable_gauge($name)
                .with_description($help)
                .with_callback(move |o| {
                    with_state(&core, |g| {
                        for (labels, v) in &g.$field {
                            o.observe(*v, labels);
                        }
                    })
                })
                .build();
        }};
    }
    state_gauge!(
        "ota_tasks",
        "Unfinished tasks by site, transport and status.",
        tasks
    );
    state_gauge!("ota_rollouts", "Rollouts by state.", rollouts);
    state_gauge!(
        "ota_rollout_stage_devices",
        "Devices of each stage of current rollouts, by state.",
        stage_devices
    );
    state_gauge!(
        "ota_devices",
        "Devices by site, transport and reachability.",
        devices
    );
    state_gauge!(
        "ota_devices_by_version",
        "Devices by transport, model and current firmware version.",
        by_version
    );
    state_gauge!(
        "ota_dispatch_queue_depth",
        "Released tasks waiting to be sent to their site's agent.",
        queue_depth
    );
    let core = core.clone();
    meter
        .f64_observable_gauge("ota_rollout_progress_ratio")
        .with_description("Finished devices of a rollout over all its devices.")
        .with_callback(move |o| {
            with_state(&core, |g| {
                for (labels, v) in &g.progress {
                    o.observe(*v, labels);
                }
            })
        })
        .build();
}

/// The agents' sessions: how many are open, and per known site whether its agent is up.
fn register_agent_gauges(meter: &Meter, core: &Weak<Core>, sessions: Weak<Sessions>) {
    {
        let sessions = sessions.clone();
        meter
            .u64_observable_gauge("ota_agents_connected")
            .with_description("Agents with an open session.")
            .with_callback(move |o| {
                if let Some(s) = sessions.upgrade() {
                    o.observe(s.connected_count() as u64, &[]);
                }
            })
            .build();
    }
    let core = core.clone();
    meter
        .u64_observable_gauge("ota_agent_up")
        .with_description("1 while the site's agent is connected, 0 otherwise.")
        .with_callback(move |o| {
            let (Some(core), Some(sessions)) = (core.upgrade(), sessions.upgrade()) else {
                return;
            };
            let sites: Vec<String> = core.read().sites.keys().cloned().collect();
            for site in sites {
                let up = u64::from(sessions.is_connected(&site));
                o.observe(up, &[kv("site", site)]);
            }
        })
        .build();
}

/// The event store and the projector: log length, size on disk, events not yet applied.
fn register_store_gauges(meter: &Meter, core: &Weak<Core>) {
    core_gauge(
        meter,
        core,
        "ota_store_log_events",
        "Highest durable sequence number of the event log.",
        None,
        |core| core.store().last_seq(),
    );
    core_gauge(
        meter,
        core,
        "ota_store_log_bytes",
        "Size of the event store on disk.",
        Some("By"),
        |core| core.store().stats().disk_bytes,
    );
    core_gauge(
        meter,
        core,
        "ota_projection_lag_events",
        "Durable events not yet applied to the projection.",
        None,
        |core| core.store().last_seq().saturating_sub(core.applied_seq()),
    );
}

/// A gauge of one unlabelled value read from the core at each collection.
fn core_gauge(
    meter: &Meter,
    core: &Weak<Core>,
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    read: fn(&Core) -> u64,
) {
    let core = core.clone();
    let mut gauge = meter.u64_observable_gauge(name).with_description(help);
    if let Some(unit) = unit {
        gauge = gauge.with_unit(unit);
    }
    gauge
        .with_callback(move |o| {
            if let Some(core) = core.upgrade() {
                o.observe(read(&core), &[]);
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_domain::projection::TaskPhase::*;

    #[test]
    fn phases_map_to_catalog_labels() {
        assert_eq!(status_label(AgentPreparing), "agent_preparing");
        assert_eq!(status_label(WaitingForWakeup), "waiting_for_wakeup");
        assert_eq!(result_of(Succeeded), "success");
        assert_eq!(result_of(Failed), "failure");
        assert_eq!(result_of(TimedOut), "timeout");
        assert_eq!(result_of(Cancelled), "cancelled");
        assert_eq!(result_of(Skipped), "cancelled");
    }

    #[test]
    fn an_empty_fleet_still_reports_every_rollout_state() {
        let g = state_gauges(&FleetState::default(), UnixMillis::EPOCH);
        assert_eq!(g.rollouts.len(), 5);
        assert!(g.rollouts.iter().all(|(_, n)| *n == 0));
        assert!(g.tasks.is_empty() && g.devices.is_empty() && g.queue_depth.is_empty());
    }
}

//! The JSON documents of `otactl rollout ...` (see `crate::views` for the rules).

use ota_proto::v1 as pb;
use serde::Serialize;

use crate::views::{ActorJson, EnumJson, TaskJson, actor};
use crate::vocab;

/// A count or a percentage: `{"count": 2}` or `{"percent": 10.0}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdJson {
    /// Devices.
    Count(u32),
    /// Percent of the stage's devices.
    Percent(f64),
}

fn threshold(t: Option<&pb::Threshold>) -> Option<ThresholdJson> {
    match t.and_then(|t| t.value) {
        Some(pb::threshold::Value::Count(c)) => Some(ThresholdJson::Count(c)),
        Some(pb::threshold::Value::Percent(p)) => Some(ThresholdJson::Percent(p)),
        None => None,
    }
}

/// Which devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectorJson {
    /// Sites.
    pub site_ids: Vec<String>,
    /// Transports.
    pub transports: Vec<EnumJson>,
    /// Models.
    pub models: Vec<String>,
    /// Vendors.
    pub vendors: Vec<String>,
    /// Zigbee manufacturer code.
    pub manufacturer_code: Option<u32>,
    /// Zigbee image type.
    pub image_type: Option<u32>,
    /// Chips.
    pub chips: Vec<String>,
    /// Minimum version.
    pub min_version: String,
    /// Maximum version.
    pub max_version: String,
    /// Tags (all).
    pub tags: Vec<String>,
    /// Explicit devices.
    pub device_ids: Vec<String>,
    /// Excluded devices.
    pub exclude_device_ids: Vec<String>,
    /// Transport instances.
    pub networks: Vec<String>,
}

/// A stage of a spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpecJson {
    /// Name.
    pub name: String,
    /// Devices in this stage, or null.
    pub count: Option<u32>,
    /// Cumulative percent of all targets by the end of this stage, or null.
    pub cumulative_percent: Option<f64>,
    /// Successes needed (null: all not skipped).
    pub success_threshold: Option<ThresholdJson>,
    /// Failures that stop the stage (null: server default).
    pub failure_threshold: Option<ThresholdJson>,
    /// pause or abort.
    pub on_failure: EnumJson,
    /// Stage deadline, seconds (0: none).
    pub deadline_s: u32,
    /// Soak, seconds.
    pub soak_s: u32,
}

/// A rollout spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecJson {
    /// Name.
    pub name: String,
    /// Firmware.
    pub firmware_id: String,
    /// Targets.
    pub selector: Option<SelectorJson>,
    /// Stages.
    pub stages: Vec<StageSpecJson>,
    /// Concurrency limits (0: server default).
    pub concurrency: Option<ConcurrencyJson>,
    /// Transfer budget per device, seconds (0: by transport).
    pub device_timeout_s: u32,
    /// Wake-up budget, seconds.
    pub wake_timeout_s: u32,
    /// wait or continue: whether a stage waits for devices that sleep.
    pub on_asleep: &'static str,
    /// Four eyes: another operator must approve it before it starts.
    pub require_approval: bool,
    /// The rollout-wide failure budget: a threshold, or null for the default or when off
    /// (see `failure_budget_off`).
    pub failure_budget: Option<ThresholdJson>,
    /// No rollout-wide failure budget.
    pub failure_budget_off: bool,
    /// IANA zone per site for the window.
    pub site_timezones: std::collections::BTreeMap<String, String>,
    /// Retries.
    pub retry: Option<RetryJson>,
    /// Maintenance window.
    pub maintenance_window: Option<WindowJson>,
    /// How updates are offered.
    pub upgrade_type: EnumJson,
    /// Downgrades allowed.
    pub allow_downgrade: bool,
    /// Preconditions (0: the gate is off).
    pub preconditions: Option<PreconditionsJson>,
    /// No batch check first.
    pub skip_batch_check: bool,
    /// Batch check timeout, seconds.
    pub batch_check_timeout_s: u32,
    /// Abort criteria over the devices that finished, in the order they are checked.
    pub abort_criteria: Vec<AbortCriterionJson>,
    /// Devices started per minute, or null: no limit beyond the concurrency.
    pub rate: Option<RateJson>,
    /// Per-site canaries: devices the first stage takes from every site and zigbee2mqtt network
    /// (0: off).
    pub canary_per_site: u32,
    /// What otad rolls back when a threshold or criterion stops the rollout: none, failed or
    /// all.
    pub rollback: &'static str,
    /// The health gate (null: the server's defaults).
    pub health: Option<HealthJson>,
}

/// How many devices a rollout starts per minute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateJson {
    /// Most devices started in any minute.
    pub max_per_minute: u32,
    /// The ramp up to it, or null.
    pub ramp: Option<RampJson>,
}

/// A rate's exponential ramp: one of `after_successes` and `after_percent` is set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RampJson {
    /// The rate to begin with, per minute.
    pub start_per_minute: u32,
    /// Multiplier per step.
    pub factor: f64,
    /// A step every this many more successes, or null.
    pub after_successes: Option<u32>,
    /// A step every this share of the targets succeeded, or null.
    pub after_percent: Option<f64>,
}

impl RateJson {
    fn new(r: &pb::RolloutRate) -> Self {
        use pb::rate_ramp::After;
        Self {
            max_per_minute: r.max_per_minute,
            ramp: r.ramp.as_ref().map(|ramp| RampJson {
                start_per_minute: ramp.start_per_minute,
                factor: ramp.factor,
                after_successes: match ramp.after {
                    Some(After::AfterSuccesses(n)) => Some(n),
                    _ => None,
                },
                after_percent: match ramp.after {
                    Some(After::AfterPercent(p)) => Some(p),
                    _ => None,
                },
            }),
        }
    }
}

impl std::fmt::Display for RateJson {
    /// `30/min, ramp from 2/min ×2 every 5 successes`, as otad words it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/min", self.max_per_minute)?;
        if let Some(r) = &self.ramp {
            write!(
                f,
                ", ramp from {}/min ×{} every ",
                r.start_per_minute, r.factor
            )?;
            match (r.after_successes, r.after_percent) {
                (Some(n), _) => write!(f, "{n} successes")?,
                (None, Some(p)) => write!(f, "{p}% of the targets succeeded")?,
                (None, None) => write!(f, "?")?,
            }
        }
        Ok(())
    }
}

/// A rollback scope by name.
pub fn rollback_scope_name(scope: i32) -> &'static str {
    match pb::RollbackScope::try_from(scope) {
        Ok(pb::RollbackScope::Failed) => "failed",
        Ok(pb::RollbackScope::All) => "all",
        _ => "none",
    }
}

/// The health gate: how long a device must stay healthy on the target version before its task
/// counts as succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HealthJson {
    /// ESPHome and serial devices, seconds (0: no gate).
    pub esphome_window_s: u32,
    /// Zigbee devices, seconds (0: no gate).
    pub zigbee_window_s: u32,
    /// Devices without an API succeed when reachable (else they end unconfirmed).
    pub accept_reachability: bool,
}

impl std::fmt::Display for HealthJson {
    /// `ESPHome 2m, Zigbee 10m; devices without an API end unconfirmed`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = |s: u32| match s {
            0 => "off".to_string(),
            s => crate::values::fmt_secs(u64::from(s)),
        };
        write!(
            f,
            "ESPHome {}, Zigbee {}; devices without an API {}",
            w(self.esphome_window_s),
            w(self.zigbee_window_s),
            if self.accept_reachability {
                "succeed when reachable"
            } else {
                "end unconfirmed"
            }
        )
    }
}

/// One abort criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbortCriterionJson {
    /// failed, timed_out, rejected or any.
    pub on: &'static str,
    /// Share of the finished devices that trips it.
    pub percent: f64,
    /// Finished devices before it is evaluated.
    pub min_finished: u32,
    /// pause or abort.
    pub action: &'static str,
}

impl AbortCriterionJson {
    fn new(c: &pb::AbortCriterion) -> Self {
        use pb::abort_criterion::{Action, On};
        Self {
            on: match On::try_from(c.on) {
                Ok(On::Failed) => "failed",
                Ok(On::TimedOut) => "timed_out",
                Ok(On::Rejected) => "rejected",
                Ok(On::Any) => "any",
                _ => "unknown",
            },
            percent: c.percent,
            min_finished: c.min_finished,
            action: match Action::try_from(c.action) {
                Ok(Action::Abort) => "abort",
                Ok(Action::Rollback) => "rollback",
                _ => "pause",
            },
        }
    }
}

impl std::fmt::Display for AbortCriterionJson {
    /// `failed ≥ 20% of ≥ 10 finished → pause`, as otad words it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ≥ {}% of ≥ {} finished → {}",
            self.on, self.percent, self.min_finished, self.action
        )
    }
}

/// Concurrency limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConcurrencyJson {
    /// Across the rollout.
    pub global: u32,
    /// Per site.
    pub per_site: u32,
    /// Per zigbee2mqtt network.
    pub per_zigbee_network: u32,
    /// ESPHome devices per site.
    pub per_esphome_site: u32,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryJson {
    /// Attempts including the first.
    pub max_attempts: u32,
    /// First backoff, seconds.
    pub initial_backoff_s: u32,
    /// Backoff cap, seconds.
    pub max_backoff_s: u32,
}

/// Maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowJson {
    /// "HH:MM".
    pub start: String,
    /// "HH:MM".
    pub end: String,
    /// 0 Sunday .. 6 Saturday; empty: every day.
    pub weekdays: Vec<u32>,
}

/// Preconditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreconditionsJson {
    /// Battery minimum.
    pub min_battery_percent: u32,
    /// Zigbee link quality minimum.
    pub min_linkquality: u32,
    /// Wi-Fi RSSI minimum.
    pub min_rssi_dbm: i32,
}

impl SpecJson {
    /// From the API.
    pub fn new(s: &pb::RolloutSpec) -> Self {
        Self {
            name: s.name.clone(),
            firmware_id: s.firmware_id.clone(),
            selector: s.selector.as_ref().map(|x| SelectorJson {
                site_ids: x.site_ids.clone(),
                transports: x
                    .transports
                    .iter()
                    .map(|t| EnumJson::new(*t, vocab::transport_name))
                    .collect(),
                models: x.models.clone(),
                vendors: x.vendors.clone(),
                manufacturer_code: x.manufacturer_code,
                image_type: x.image_type,
                chips: x.chips.clone(),
                min_version: x.min_version.clone(),
                max_version: x.max_version.clone(),
                tags: x.tags.clone(),
                device_ids: x.device_ids.clone(),
                exclude_device_ids: x.exclude_device_ids.clone(),
                networks: x.networks.clone(),
            }),
            stages: s
                .stages
                .iter()
                .map(|st| StageSpecJson {
                    name: st.name.clone(),
                    count: match st.size {
                        Some(pb::stage::Size::Count(c)) => Some(c),
                        _ => None,
                    },
                    cumulative_percent: match st.size {
                        Some(pb::stage::Size::CumulativePercent(p)) => Some(p),
                        _ => None,
                    },
                    success_threshold: threshold(st.success_threshold.as_ref()),
                    failure_threshold: threshold(st.failure_threshold.as_ref()),
                    on_failure: EnumJson::new(st.on_failure, vocab::failure_action_name),
                    deadline_s: st.deadline_s.unwrap_or_default(),
                    soak_s: st.soak_s,
                })
                .collect(),
            concurrency: s.concurrency.as_ref().map(|c| ConcurrencyJson {
                global: c.global,
                per_site: c.per_site,
                per_zigbee_network: c.per_zigbee_network,
                per_esphome_site: c.per_esphome_site,
            }),
            device_timeout_s: s.device_timeout_s,
            wake_timeout_s: s.wake_timeout_s,
            on_asleep: match pb::OnAsleep::try_from(s.on_asleep) {
                Ok(pb::OnAsleep::Continue) => "continue",
                _ => "wait",
            },
            require_approval: s.require_approval,
            failure_budget: match s.failure_budget.as_ref().and_then(|b| b.budget.as_ref()) {
                Some(pb::failure_budget::Budget::Limit(t)) => threshold(Some(t)),
                _ => None,
            },
            failure_budget_off: matches!(
                s.failure_budget.as_ref().and_then(|b| b.budget.as_ref()),
                Some(pb::failure_budget::Budget::Off(true))
            ),
            site_timezones: s
                .site_timezones
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            retry: s.retry.as_ref().map(|r| RetryJson {
                max_attempts: r.max_attempts,
                initial_backoff_s: r.initial_backoff_s,
                max_backoff_s: r.max_backoff_s,
            }),
            maintenance_window: s.maintenance_window.as_ref().map(|w| WindowJson {
                start: w.start.clone(),
                end: w.end.clone(),
                weekdays: w.weekdays.clone(),
            }),
            upgrade_type: EnumJson::new(s.upgrade_type, vocab::upgrade_type_name),
            allow_downgrade: s.allow_downgrade,
            preconditions: s.preconditions.as_ref().map(|p| PreconditionsJson {
                min_battery_percent: p.min_battery_percent.unwrap_or_default(),
                min_linkquality: p.min_linkquality.unwrap_or_default(),
                min_rssi_dbm: p.min_rssi_dbm.unwrap_or_default(),
            }),
            skip_batch_check: s.skip_batch_check,
            batch_check_timeout_s: s.batch_check_timeout_s,
            abort_criteria: s
                .abort_criteria
                .iter()
                .map(AbortCriterionJson::new)
                .collect(),
            rate: s.rate.as_ref().map(RateJson::new),
            canary_per_site: s.canary_per_site,
            rollback: rollback_scope_name(s.rollback),
            health: s.health.map(|h| HealthJson {
                esphome_window_s: h.esphome_window_s,
                zigbee_window_s: h.zigbee_window_s,
                accept_reachability: h.accept_reachability,
            }),
        }
    }
}

/// Task counts by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountsJson {
    /// All.
    pub total: u32,
    /// Queued.
    pub queued: u32,
    /// Preparing at the server or the site.
    pub preparing: u32,
    /// Updating.
    pub updating: u32,
    /// Waiting for a sleepy device.
    pub waiting_for_wakeup: u32,
    /// Waiting for `device confirm`.
    pub awaiting_confirmation: u32,
    /// On the device, applying.
    pub downloaded: u32,
    /// On the target version; its site watches its health.
    pub verifying: u32,
    /// Succeeded (healthy, or not health-checked).
    pub succeeded: u32,
    /// Target version written, health unknown (no API): not a success.
    pub unconfirmed: u32,
    /// Failed.
    pub failed: u32,
    /// Timed out.
    pub timed_out: u32,
    /// Skipped.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
}

impl CountsJson {
    /// From the API (absent: zeros).
    pub fn new(c: Option<&pb::TaskCounts>) -> Self {
        c.map(|c| Self {
            total: c.total,
            queued: c.queued,
            preparing: c.preparing,
            updating: c.updating,
            waiting_for_wakeup: c.waiting_for_wakeup,
            awaiting_confirmation: c.awaiting_confirmation,
            downloaded: c.downloaded,
            verifying: c.verifying,
            succeeded: c.succeeded,
            unconfirmed: c.unconfirmed,
            failed: c.failed,
            timed_out: c.timed_out,
            skipped: c.skipped,
            cancelled: c.cancelled,
        })
        .unwrap_or_default()
    }

    /// Tasks that ended one way or another.
    pub fn done(&self) -> u32 {
        self.succeeded
            + self.unconfirmed
            + self.failed
            + self.timed_out
            + self.skipped
            + self.cancelled
    }

    /// Non-zero counts as (name, count), in a fixed order, for compact display.
    pub fn nonzero(&self) -> Vec<(&'static str, u32)> {
        [
            ("updating", self.updating),
            ("preparing", self.preparing),
            ("queued", self.queued),
            ("waiting-for-wakeup", self.waiting_for_wakeup),
            ("awaiting-confirmation", self.awaiting_confirmation),
            ("downloaded", self.downloaded),
            ("verifying", self.verifying),
            ("succeeded", self.succeeded),
            ("unconfirmed", self.unconfirmed),
            ("failed", self.failed),
            ("timed-out", self.timed_out),
            ("skipped", self.skipped),
            ("cancelled", self.cancelled),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// A stage's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageStatusJson {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// pending, running, soaking, succeeded, failed.
    pub state: EnumJson,
    /// Devices assigned: the first 10,000 (the server lists no more).
    pub device_ids: Vec<String>,
    /// All devices assigned.
    pub device_count: u32,
    /// Counts by status.
    pub counts: CountsJson,
    /// Started.
    pub started_at_ms: i64,
    /// Deadline.
    pub deadline_at_ms: i64,
    /// Soak end.
    pub soak_until_ms: i64,
    /// Ended.
    pub finished_at_ms: i64,
}

/// A device excluded from a rollout, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExclusionJson {
    /// Device.
    pub device_id: String,
    /// Error code and name.
    pub code: EnumJson,
    /// Why, in words.
    pub reason: String,
}

/// The whole number of a list the server cut at 10,000 entries: its count (an older server
/// sends none, and lists everything).
fn whole<T>(count: u32, listed: &[T]) -> u32 {
    count.max(u32::try_from(listed.len()).unwrap_or(u32::MAX))
}

fn exclusion(e: &pb::Exclusion) -> ExclusionJson {
    ExclusionJson {
        device_id: e.device_id.clone(),
        code: EnumJson::new(e.code, vocab::error_name),
        reason: e.reason.clone(),
    }
}

/// A rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutJson {
    /// Id.
    pub id: String,
    /// The spec.
    pub spec: Option<SpecJson>,
    /// draft, running, paused, completed, aborted.
    pub state: EnumJson,
    /// Why paused, completed or aborted.
    pub state_reason: String,
    /// Index of the current stage.
    pub current_stage: u32,
    /// Stages.
    pub stages: Vec<StageStatusJson>,
    /// Counts over all stages.
    pub totals: CountsJson,
    /// Devices the batch check found not answering (5019): the first 10,000.
    pub batch_check_timed_out: Vec<String>,
    /// All devices the batch check found not answering.
    pub batch_check_timed_out_count: u32,
    /// Creator.
    pub created_by: Option<ActorJson>,
    /// Created.
    pub created_at_ms: i64,
    /// Started.
    pub started_at_ms: i64,
    /// Ended.
    pub finished_at_ms: i64,
    /// Devices excluded at planning, with reasons: the first 10,000.
    pub exclusions: Vec<ExclusionJson>,
    /// All devices excluded.
    pub exclusion_count: u32,
    /// The rollout-wide failure budget in devices (0: off).
    pub failure_budget: u32,
    /// Failures counted against it.
    pub failures: u32,
    /// Four eyes; null when the rollout needs no approval.
    pub approval: Option<ApprovalJson>,
    /// The rollout this one rolls back; null when it is no rollback.
    pub rollback_of: Option<RollbackLinkJson>,
    /// The rollout that rolled this one back; null when it was not rolled back.
    pub rolled_back_by: Option<RollbackLinkJson>,
    /// A rollback's devices with the image each gets back.
    pub revert_targets: Vec<RevertTargetJson>,
}

/// A rollback between two rollouts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackLinkJson {
    /// The other rollout.
    pub rollout_id: String,
    /// failed or all.
    pub scope: &'static str,
    /// Triggered by the rollout's own thresholds or criteria.
    pub automatic: bool,
    /// Who asked (the system when automatic).
    pub by: Option<ActorJson>,
    /// Why.
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: i64,
}

impl RollbackLinkJson {
    fn new(l: &pb::RollbackLink) -> Self {
        Self {
            rollout_id: l.rollout_id.clone(),
            scope: rollback_scope_name(l.scope),
            automatic: l.automatic,
            by: actor(l.by.as_ref()),
            reason: l.reason.clone(),
            at_ms: l.at_ms,
        }
    }
}

/// A device of a rollback and its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevertTargetJson {
    /// Device.
    pub device_id: String,
    /// The image it gets back.
    pub firmware_id: String,
}

/// A rollout's four-eyes approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalJson {
    /// pending, approved or denied.
    pub state: &'static str,
    /// What requires it (while pending).
    pub required_by: String,
    /// Who approved or denied it.
    pub decided_by: Option<ActorJson>,
    /// When (Unix ms; 0 while pending).
    pub decided_at_ms: i64,
    /// Why.
    pub reason: String,
}

impl ApprovalJson {
    fn new(a: &pb::Approval) -> Self {
        Self {
            state: match pb::approval::State::try_from(a.state) {
                Ok(pb::approval::State::Approved) => "approved",
                Ok(pb::approval::State::Denied) => "denied",
                _ => "pending",
            },
            required_by: a.required_by.clone(),
            decided_by: actor(a.decided_by.as_ref()),
            decided_at_ms: a.decided_at_ms,
            reason: a.reason.clone(),
        }
    }
}

impl RolloutJson {
    /// From the API.
    pub fn new(r: &pb::Rollout) -> Self {
        Self {
            id: r.id.clone(),
            spec: r.spec.as_ref().map(SpecJson::new),
            state: EnumJson::new(r.state, vocab::rollout_state_name),
            state_reason: r.state_reason.clone(),
            current_stage: r.current_stage,
            stages: r
                .stages
                .iter()
                .map(|s| StageStatusJson {
                    index: s.index,
                    name: s.name.clone(),
                    state: EnumJson::new(s.state, vocab::stage_state_name),
                    device_ids: s.device_ids.clone(),
                    device_count: whole(s.device_count, &s.device_ids),
                    counts: CountsJson::new(s.counts.as_ref()),
                    started_at_ms: s.started_at_ms,
                    deadline_at_ms: s.deadline_at_ms,
                    soak_until_ms: s.soak_until_ms,
                    finished_at_ms: s.finished_at_ms,
                })
                .collect(),
            totals: CountsJson::new(r.totals.as_ref()),
            batch_check_timed_out: r.batch_check_timed_out.clone(),
            batch_check_timed_out_count: whole(
                r.batch_check_timed_out_count,
                &r.batch_check_timed_out,
            ),
            created_by: actor(r.created_by.as_ref()),
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            exclusions: r.exclusions.iter().map(exclusion).collect(),
            exclusion_count: whole(r.exclusion_count, &r.exclusions),
            failure_budget: r.failure_budget,
            failures: r.failures,
            approval: r.approval.as_ref().map(ApprovalJson::new),
            rollback_of: r.rollback_of.as_ref().map(RollbackLinkJson::new),
            rolled_back_by: r.rolled_back_by.as_ref().map(RollbackLinkJson::new),
            revert_targets: r
                .revert_targets
                .iter()
                .map(|t| RevertTargetJson {
                    device_id: t.device_id.clone(),
                    firmware_id: t.firmware_id.clone(),
                })
                .collect(),
        }
    }
}

/// `rollout list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutListJson {
    /// Rollouts.
    pub rollouts: Vec<RolloutJson>,
}

/// A planned stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStageJson {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Devices in dispatch order: the first 10,000.
    pub device_ids: Vec<String>,
    /// All devices of the stage.
    pub device_count: u32,
    /// Estimated seconds.
    pub estimated_s: u32,
    /// The per-site canaries when `canary_per_site` fills this stage, by site and network.
    pub canaries: Vec<CanaryGroupJson>,
}

/// The canaries of one transport instance of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryGroupJson {
    /// Site.
    pub site_id: String,
    /// Transport.
    pub transport: EnumJson,
    /// Transport instance (zigbee2mqtt network, ESPHome instance, serial port).
    pub network: String,
    /// The canaries, best first.
    pub device_ids: Vec<String>,
    /// Targets the instance has (fewer than canary_per_site: all are canaries).
    pub available: u32,
}

/// The expected Zigbee transfer time of one zigbee2mqtt network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AirtimeJson {
    /// Site.
    pub site_id: String,
    /// The zigbee2mqtt network.
    pub network: String,
    /// Expected Zigbee transfer seconds of its targets.
    pub airtime_s: u32,
    /// Share of the makespan, percent.
    pub share_percent: f64,
}

/// `rollout plan`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanJson {
    /// Devices targeted.
    pub target_count: u32,
    /// Estimated working time, seconds (batch check, stages paced by the rate, soaks).
    pub estimated_duration_s: u32,
    /// The expected makespan: the working time stretched by the maintenance window; `null`
    /// when the window never opens.
    pub makespan_s: Option<u32>,
    /// How each kind of device (model, transport) was estimated.
    pub notes: Vec<String>,
    /// Zigbee airtime per network.
    pub zigbee_airtime: Vec<AirtimeJson>,
    /// Stages with their devices.
    pub stages: Vec<PlannedStageJson>,
    /// Devices left out, with why: the first 10,000.
    pub exclusions: Vec<ExclusionJson>,
    /// All devices left out.
    pub exclusion_count: u32,
    /// Things to know.
    pub warnings: Vec<String>,
    /// The rollout-wide policies in effect, one line each.
    pub policies: Vec<String>,
}

impl PlanJson {
    /// From the API.
    pub fn new(p: &pb::RolloutPlan) -> Self {
        Self {
            target_count: p.target_count,
            estimated_duration_s: p.estimated_duration_s,
            makespan_s: p.makespan_s,
            notes: p.notes.clone(),
            zigbee_airtime: p
                .zigbee_airtime
                .iter()
                .map(|a| AirtimeJson {
                    site_id: a.site_id.clone(),
                    network: a.network.clone(),
                    airtime_s: a.airtime_s,
                    share_percent: a.share_percent,
                })
                .collect(),
            stages: p
                .stages
                .iter()
                .map(|s| PlannedStageJson {
                    index: s.index,
                    name: s.name.clone(),
                    device_ids: s.device_ids.clone(),
                    device_count: whole(s.device_count, &s.device_ids),
                    estimated_s: s.estimated_s,
                    canaries: s
                        .canaries
                        .iter()
                        .map(|g| CanaryGroupJson {
                            site_id: g.site_id.clone(),
                            transport: EnumJson::new(g.transport, vocab::transport_name),
                            network: g.network.clone(),
                            device_ids: g.device_ids.clone(),
                            available: g.available,
                        })
                        .collect(),
                })
                .collect(),
            exclusions: p.exclusions.iter().map(exclusion).collect(),
            exclusion_count: whole(p.exclusion_count, &p.exclusions),
            warnings: p.warnings.clone(),
            policies: p.policies.clone(),
        }
    }
}

/// One line of `rollout watch -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressJson {
    /// Event sequence number this reflects.
    pub seq: u64,
    /// The rollout now.
    pub rollout: Option<RolloutJson>,
    /// Tasks changed since the previous line.
    pub tasks: Vec<TaskJson>,
    /// Expected remaining time, seconds (learned transfer times); `null` when unknown.
    pub remaining_s: Option<u32>,
}

impl ProgressJson {
    /// From the API.
    pub fn new(p: &pb::RolloutProgress) -> Self {
        Self {
            seq: p.seq,
            rollout: p.rollout.as_ref().map(RolloutJson::new),
            tasks: p.tasks.iter().map(TaskJson::new).collect(),
            remaining_s: p.remaining_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_shapes() {
        let r = pb::Rollout {
            id: "ro-1".into(),
            state: 3,
            state_reason: "stage canary: 2 failures >= threshold 1".into(),
            spec: Some(pb::RolloutSpec {
                name: "n".into(),
                firmware_id: "fw-1".into(),
                stages: vec![pb::Stage {
                    name: "canary".into(),
                    size: Some(pb::stage::Size::Count(5)),
                    failure_threshold: Some(pb::Threshold {
                        value: Some(pb::threshold::Value::Percent(10.0)),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            totals: Some(pb::TaskCounts {
                total: 5,
                succeeded: 3,
                failed: 2,
                ..Default::default()
            }),
            exclusions: vec![pb::Exclusion {
                device_id: "home/x".into(),
                code: 5000,
                reason: "already on 2.3".into(),
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(RolloutJson::new(&r)).unwrap();
        assert_eq!(v["state"], serde_json::json!({"code": 3, "name": "paused"}));
        assert_eq!(
            v["spec"]["stages"][0],
            serde_json::json!({"name": "canary", "count": 5, "cumulative_percent": null,
                "success_threshold": null, "failure_threshold": {"percent": 10.0},
                "on_failure": {"code": 0, "name": "pause"}, "deadline_s": 0, "soak_s": 0})
        );
        assert_eq!(v["totals"]["failed"], 2);
        assert_eq!(
            v["exclusions"][0],
            serde_json::json!({"device_id": "home/x",
                "code": {"code": 5000, "name": "already-on-target"}, "reason": "already on 2.3"})
        );
        let counts = CountsJson::new(r.totals.as_ref());
        assert_eq!(counts.done(), 5);
        assert_eq!(counts.nonzero(), vec![("succeeded", 3), ("failed", 2)]);
    }
}

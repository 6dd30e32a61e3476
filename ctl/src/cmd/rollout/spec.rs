//! Rollout specs: the TOML file format (and the flag form) turned into `ota.v1.RolloutSpec`.
//!
//! The file mirrors `RolloutSpec` with friendlier values: durations as humantime strings
//! ("30m") or seconds, thresholds as a count ("2") or a percentage ("10%"), enums by name.
//! Unknown keys are errors, so a typo never silently drops a setting. Every problem is
//! reported with the field it is about (`stages[1].percent: ...`), all at once, on one line.
//! The format is shown in `otactl rollout create --help` and in `ctl/README.md`.

use std::fmt;

use ota_proto::v1 as pb;
use serde::Deserialize;

use super::args::{FailureActionArg, OnAsleepArg, RollbackArg, SpecFlags};
use crate::cli::{SelectorArgs, TransportArg, UpgradeTypeArg};
use crate::values;

mod rate;
pub use rate::RawRate;

/// A spec file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Human name (required).
    pub name: Option<String>,
    /// Firmware id (required).
    pub firmware: Option<String>,
    /// notify | forced | check.
    pub upgrade_type: Option<String>,
    /// Allow older versions.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Transfer budget per device.
    pub device_timeout: Option<DurationValue>,
    /// Wake-up budget.
    pub wake_timeout: Option<DurationValue>,
    /// wait | continue.
    pub on_asleep: Option<String>,
    /// A count, a percentage or "none".
    pub failure_budget: Option<ThresholdValue>,
    /// IANA zone per site.
    #[serde(default)]
    pub site_timezones: std::collections::BTreeMap<String, String>,
    /// Four eyes: another operator must approve it before it starts.
    #[serde(default)]
    pub require_approval: bool,
    /// Run the batch check first (default true).
    pub batch_check: Option<bool>,
    /// Its timeout.
    pub batch_check_timeout: Option<DurationValue>,
    /// Targets.
    #[serde(default)]
    pub selector: RawSelector,
    /// Stages, in order.
    #[serde(default)]
    pub stages: Vec<RawStage>,
    /// Concurrency limits.
    pub concurrency: Option<RawConcurrency>,
    /// Retries.
    pub retry: Option<RawRetry>,
    /// Maintenance window.
    pub window: Option<RawWindow>,
    /// Preconditions.
    pub preconditions: Option<RawPreconditions>,
    /// Abort criteria, in order.
    #[serde(default)]
    pub abort: Vec<RawAbort>,
    /// Starts per minute, with an optional ramp.
    pub rate: Option<RawRate>,
    /// Per-site canaries: the first stage takes this many devices from every site and network.
    pub canary_per_site: Option<i64>,
    /// none | failed | all.
    pub rollback: Option<String>,
    /// The health gate.
    pub health: Option<RawHealth>,
}

/// `[health]`: how long a device must stay healthy on the target version before its task
/// counts as succeeded.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// ESPHome (and serial) devices; absent: 2 minutes; "none" or 0: no gate.
    pub esphome_window: Option<DurationValue>,
    /// Zigbee devices; absent: 10 minutes; "none" or 0: no gate.
    pub zigbee_window: Option<DurationValue>,
    /// Devices without an API succeed when reachable rather than ending unconfirmed.
    #[serde(default)]
    pub accept_reachability: bool,
}

/// `[[abort]]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbort {
    /// failed | timed_out | rejected | any.
    pub on: Option<String>,
    /// Share of the finished devices: 20 or "20%".
    pub percent: Option<PercentValue>,
    /// Finished devices before it is evaluated.
    pub min_finished: Option<i64>,
    /// pause | abort | rollback.
    pub action: Option<String>,
}

/// A percentage as a number or as text ("20%").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PercentValue {
    /// 20.
    Number(f64),
    /// "20%".
    Text(String),
}

/// `[selector]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    /// Sites.
    #[serde(default)]
    pub sites: Vec<String>,
    /// Transports by name.
    #[serde(default)]
    pub transports: Vec<String>,
    /// Models.
    #[serde(default)]
    pub models: Vec<String>,
    /// Vendors.
    #[serde(default)]
    pub vendors: Vec<String>,
    /// Chips.
    #[serde(default)]
    pub chips: Vec<String>,
    /// Transport instances.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Tags (all required).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Explicit devices.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Excluded devices.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Minimum version.
    pub min_version: Option<String>,
    /// Maximum version.
    pub max_version: Option<String>,
    /// Zigbee manufacturer code.
    pub manufacturer_code: Option<i64>,
    /// Zigbee image type.
    pub image_type: Option<i64>,
}

/// `[[stages]]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// Name (default "stage-N").
    pub name: Option<String>,
    /// Devices in this stage.
    pub count: Option<i64>,
    /// Cumulative percent of all targets.
    pub percent: Option<f64>,
    /// Failures that stop the stage.
    pub failure_threshold: Option<ThresholdValue>,
    /// Successes needed.
    pub success_threshold: Option<ThresholdValue>,
    /// pause | abort.
    pub on_failure: Option<String>,
    /// Stage deadline.
    pub deadline: Option<DurationValue>,
    /// Soak time.
    pub soak: Option<DurationValue>,
}

/// `[concurrency]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    /// Across the rollout.
    pub global: Option<i64>,
    /// Per site.
    pub per_site: Option<i64>,
    /// Per zigbee2mqtt network.
    pub per_zigbee_network: Option<i64>,
    /// ESPHome devices per site.
    pub per_esphome_site: Option<i64>,
}

/// `[retry]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts including the first.
    pub max_attempts: Option<i64>,
    /// First backoff.
    pub initial_backoff: Option<DurationValue>,
    /// Backoff cap.
    pub max_backoff: Option<DurationValue>,
}

/// `[window]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// "HH:MM".
    pub start: Option<String>,
    /// "HH:MM".
    pub end: Option<String>,
    /// Names or numbers.
    #[serde(default)]
    pub weekdays: Vec<WeekdayValue>,
}

/// `[preconditions]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreconditions {
    /// Battery minimum.
    pub min_battery_percent: Option<i64>,
    /// Link quality minimum.
    pub min_linkquality: Option<i64>,
    /// RSSI minimum (dBm).
    pub min_rssi_dbm: Option<i64>,
}

/// A duration as text ("30m") or seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    /// Seconds.
    Seconds(i64),
    /// humantime text.
    Text(String),
}

/// A threshold as text ("2", "10%") or a bare count.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ThresholdValue {
    /// A count.
    Count(i64),
    /// Text.
    Text(String),
}

/// A weekday as a number or a name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum WeekdayValue {
    /// 0 (Sunday) .. 6.
    Number(i64),
    /// "mon", "Tuesday".
    Name(String),
}

/// Everything wrong with a spec, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Where the spec came from ("rollout.toml", "flags").
    pub source: String,
    /// `(field, problem)` pairs.
    pub problems: Vec<(String, String)>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid rollout spec in {}: ", self.source)?;
        for (i, (field, problem)) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if field.is_empty() {
                f.write_str(problem)?;
            } else {
                write!(f, "{field}: {problem}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Parses a TOML spec file's text. `source` names the file in messages.
pub fn parse_toml(text: &str, source: &str) -> Result<pb::RolloutSpec, SpecError> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|sp| {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
                format!("line {line}, column {col}")
            })
            .unwrap_or_default();
        SpecError {
            source: source.to_string(),
            problems: vec![(at, crate::client::one_line(e.message()))],
        }
    })?;
    validate(&raw, source)
}

/// Builds the raw spec the flag form describes.
pub fn from_flags(f: &SpecFlags) -> RawSpec {
    let secs = |d: std::time::Duration| {
        DurationValue::Seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    let threshold = |t: values::Threshold| match t {
        values::Threshold::Count(c) => ThresholdValue::Count(i64::from(c)),
        values::Threshold::Percent(p) => ThresholdValue::Text(format!("{p}%")),
    };
    let stage = |name: String, count: Option<i64>, percent: Option<f64>| RawStage {
        name: Some(name),
        count,
        percent,
        failure_threshold: f.failure_threshold.map(threshold),
        success_threshold: f.success_threshold.map(threshold),
        on_failure: f.on_failure.map(|a| {
            match a {
                FailureActionArg::Pause => "pause",
                FailureActionArg::Abort => "abort",
            }
            .to_string()
        }),
        deadline: f.deadline.map(|d| {
            if d.is_zero() {
                DurationValue::Text("none".into())
            } else {
                secs(d)
            }
        }),
        soak: f.soak.map(secs),
    };
    let mut stages = Vec::new();
    if let Some(n) = f.canary {
        stages.push(stage("canary".into(), Some(i64::from(n)), None));
    }
    if f.canary_per_site.is_some() {
        // Filled by the per-site canaries: no size of its own.
        stages.push(stage("canary".into(), None, None));
    }
    for (i, p) in f.waves.iter().flat_map(|w| w.0.iter()).enumerate() {
        stages.push(stage(format!("wave-{}", i + 1), None, Some(*p)));
    }
    let window = f.window.as_deref().map(window_from_flag);
    RawSpec {
        name: f.name.clone(),
        firmware: f.firmware.clone(),
        upgrade_type: f.upgrade_type.map(|u| upgrade_type_text(u).to_string()),
        allow_downgrade: f.allow_downgrade,
        device_timeout: f.device_timeout.map(secs),
        wake_timeout: f.wake_timeout.map(secs),
        on_asleep: f.on_asleep.map(|a| {
            match a {
                OnAsleepArg::Wait => "wait",
                OnAsleepArg::Continue => "continue",
            }
            .to_string()
        }),
        failure_budget: f.failure_budget.map(|b| match b {
            values::Limit::Off => ThresholdValue::Text("none".into()),
            values::Limit::At(t) => threshold(t),
        }),
        site_timezones: Default::default(),
        require_approval: f.require_approval,
        batch_check: f.skip_batch_check.then_some(false),
        batch_check_timeout: None,
        selector: selector_from_flags(&f.selector),
        stages,
        concurrency: f.concurrency.map(|g| RawConcurrency {
            global: Some(i64::from(g)),
            ..Default::default()
        }),
        retry: f.max_attempts.map(|m| RawRetry {
            max_attempts: Some(i64::from(m)),
            ..Default::default()
        }),
        window,
        preconditions: None,
        abort: f
            .abort
            .iter()
            .map(|a| RawAbort {
                on: Some(a.on.clone()),
                percent: Some(PercentValue::Number(a.percent)),
                min_finished: a.min_finished.map(i64::from),
                action: a.action.clone(),
            })
            .collect(),
        rate: f.max_per_minute.map(|n| RawRate {
            max_per_minute: Some(i64::from(n)),
            ramp: None,
        }),
        canary_per_site: f.canary_per_site.map(i64::from),
        rollback: f.rollback.map(|r| rollback_name(r).to_string()),
        health: (f.health_window.is_some() || f.accept_reachability).then(|| RawHealth {
            esphome_window: f.health_window.map(secs),
            zigbee_window: f.health_window.map(secs),
            accept_reachability: f.accept_reachability,
        }),
    }
}

/// `--window HH:MM-HH:MM` as a spec window; text that does not parse is kept, so validation
/// reports it against `window`.
fn window_from_flag(w: &str) -> RawWindow {
    match values::parse_window(w) {
        Ok((start, end)) => RawWindow {
            start: Some(start),
            end: Some(end),
            weekdays: Vec::new(),
        },
        Err(_) => RawWindow {
            start: Some(w.to_string()),
            end: None,
            weekdays: Vec::new(),
        },
    }
}

/// The selector the flags describe.
fn selector_from_flags(s: &SelectorArgs) -> RawSelector {
    RawSelector {
        sites: s.sites.clone(),
        transports: s
            .transports
            .iter()
            .map(|t| transport_text(*t).to_string())
            .collect(),
        models: s.models.clone(),
        vendors: s.vendors.clone(),
        chips: s.chips.clone(),
        networks: s.networks.clone(),
        tags: s.tags.clone(),
        devices: s.devices.clone(),
        exclude: s.excludes.clone(),
        min_version: s.min_version.clone(),
        max_version: s.max_version.clone(),
        manufacturer_code: s.manufacturer_code.map(i64::from),
        image_type: s.image_type.map(i64::from),
    }
}

/// The spec-file name of a rollback scope.
pub fn rollback_name(r: RollbackArg) -> &'static str {
    match r {
        RollbackArg::None => "none",
        RollbackArg::Failed => "failed",
        RollbackArg::All => "all",
    }
}

/// A rollback scope on the wire.
pub fn rollback_scope(r: RollbackArg) -> pb::RollbackScope {
    match r {
        RollbackArg::None => pb::RollbackScope::None,
        RollbackArg::Failed => pb::RollbackScope::Failed,
        RollbackArg::All => pb::RollbackScope::All,
    }
}

fn rollback(p: &mut Problems, raw: Option<&str>) -> pb::RollbackScope {
    match raw.map(str::trim) {
        None | Some("none") => pb::RollbackScope::None,
        Some("failed") => pb::RollbackScope::Failed,
        Some("all") => pb::RollbackScope::All,
        Some(other) => {
            p.add(
                "rollback".to_string(),
                format!("{other:?} is not one of none, failed, all"),
            );
            pb::RollbackScope::None
        }
    }
}

/// Whether any spec flag was given (to tell the flag form from a file or an id).
pub fn flags_given(f: &SpecFlags) -> bool {
    let s = &f.selector;
    f.name.is_some()
        || f.firmware.is_some()
        || f.canary.is_some()
        || f.canary_per_site.is_some()
        || f.waves.is_some()
        || f.deadline.is_some()
        || f.soak.is_some()
        || f.failure_threshold.is_some()
        || f.success_threshold.is_some()
        || f.on_failure.is_some()
        || f.device_timeout.is_some()
        || f.wake_timeout.is_some()
        || f.on_asleep.is_some()
        || f.failure_budget.is_some()
        || f.max_attempts.is_some()
        || f.require_approval
        || !f.abort.is_empty()
        || f.max_per_minute.is_some()
        || f.rollback.is_some()
        || f.health_window.is_some()
        || f.accept_reachability
        || f.concurrency.is_some()
        || f.window.is_some()
        || f.upgrade_type.is_some()
        || f.allow_downgrade
        || f.skip_batch_check
        || !s.sites.is_empty()
        || !s.transports.is_empty()
        || !s.models.is_empty()
        || !s.vendors.is_empty()
        || !s.chips.is_empty()
        || !s.networks.is_empty()
        || !s.tags.is_empty()
        || !s.devices.is_empty()
        || !s.excludes.is_empty()
        || s.min_version.is_some()
        || s.max_version.is_some()
        || s.manufacturer_code.is_some()
        || s.image_type.is_some()
}

/// The CLI name of a transport, as the spec file writes it.
pub fn transport_text(t: TransportArg) -> &'static str {
    match t {
        TransportArg::Zigbee2mqtt => "zigbee2mqtt",
        TransportArg::Esphome => "esphome",
        TransportArg::Serial => "serial",
    }
}

/// The CLI name of an upgrade type.
pub fn upgrade_type_text(u: UpgradeTypeArg) -> &'static str {
    match u {
        UpgradeTypeArg::Notify => "notify",
        UpgradeTypeArg::Forced => "forced",
        UpgradeTypeArg::Check => "check",
    }
}

/// Collects problems while building the spec.
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push((field.into(), problem.into()));
    }

    fn u32_in(&mut self, field: &str, v: Option<i64>, min: i64, max: i64) -> u32 {
        match v {
            None => 0,
            Some(n) if n < min || n > max => {
                self.add(field, format!("{n} is outside {min}-{max}"));
                0
            }
            Some(n) => u32::try_from(n).unwrap_or(0),
        }
    }

    fn secs(&mut self, field: &str, v: Option<&DurationValue>) -> u32 {
        let d = match v {
            None => return 0,
            Some(DurationValue::Seconds(n)) if *n < 0 => {
                self.add(field, format!("{n} is negative"));
                return 0;
            }
            Some(DurationValue::Seconds(n)) => {
                std::time::Duration::from_secs(u64::try_from(*n).unwrap_or(0))
            }
            Some(DurationValue::Text(t)) => match values::parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.add(field, e);
                    return 0;
                }
            },
        };
        values::duration_secs(d).unwrap_or_else(|e| {
            self.add(field, e);
            0
        })
    }

    fn threshold(&mut self, field: &str, v: Option<&ThresholdValue>) -> Option<pb::Threshold> {
        let t = match v? {
            ThresholdValue::Count(n) => match u32::try_from(*n) {
                Ok(c) => values::Threshold::Count(c),
                Err(_) => {
                    self.add(field, format!("{n} is not a count of devices"));
                    return None;
                }
            },
            ThresholdValue::Text(s) => match values::parse_threshold(s) {
                Ok(t) => t,
                Err(e) => {
                    self.add(field, e);
                    return None;
                }
            },
        };
        Some(pb::Threshold {
            value: Some(match t {
                values::Threshold::Count(c) => pb::threshold::Value::Count(c),
                values::Threshold::Percent(p) => pb::threshold::Value::Percent(p),
            }),
        })
    }

    /// A required text field, trimmed; `why` when it is absent or blank.
    fn required(&mut self, field: &str, value: Option<&str>, why: &str) -> String {
        let value = value.map(str::trim).unwrap_or_default();
        if value.is_empty() {
            self.add(field, why);
        }
        value.to_string()
    }

    fn nonempty_list(&mut self, field: &str, list: &[String]) -> Vec<String> {
        for (i, v) in list.iter().enumerate() {
            if v.trim().is_empty() {
                self.add(format!("{field}[{i}]"), "is empty");
            }
        }
        list.iter().map(|v| v.trim().to_string()).collect()
    }
}

/// Checks a raw spec and builds the API message.
pub fn validate(raw: &RawSpec, source: &str) -> Result<pb::RolloutSpec, SpecError> {
    let mut p = Problems(Vec::new());
    let name = p.required(
        "name",
        raw.name.as_deref(),
        "is required (a human name for the rollout)",
    );
    let firmware = p.required(
        "firmware",
        raw.firmware.as_deref(),
        "is required (a firmware id, see `otactl firmware list`)",
    );
    let upgrade_type = upgrade_type(&mut p, raw.upgrade_type.as_deref());
    let selector = selector(&mut p, &raw.selector);
    let canary_per_site = p.u32_in(
        "canary_per_site",
        raw.canary_per_site,
        0,
        MAX_CANARY_PER_SITE,
    );
    let stages = stages(&mut p, &raw.stages, canary_per_site);
    let concurrency = raw.concurrency.as_ref().map(|c| concurrency(&mut p, c));
    let retry = raw.retry.as_ref().map(|r| retry(&mut p, r));
    let window = raw.window.as_ref().map(|w| window(&mut p, w));
    // Absent: the server's default; 0: the gate is off.
    let preconditions = raw.preconditions.as_ref().map(|c| preconditions(&mut p, c));
    let on_asleep = on_asleep(&mut p, raw.on_asleep.as_deref());
    let failure_budget = failure_budget(&mut p, raw.failure_budget.as_ref());
    let site_timezones = site_timezones(&mut p, &raw.site_timezones);
    let abort_criteria = abort_criteria(&mut p, &raw.abort);
    let rate = raw.rate.as_ref().map(|r| rate::rate(&mut p, r));
    let rollback = rollback(&mut p, raw.rollback.as_deref());
    let health = raw.health.as_ref().map(|h| health(&mut p, h));

    let spec = pb::RolloutSpec {
        name,
        firmware_id: firmware,
        selector: Some(selector),
        stages,
        concurrency,
        device_timeout_s: p.secs("device_timeout", raw.device_timeout.as_ref()),
        wake_timeout_s: p.secs("wake_timeout", raw.wake_timeout.as_ref()),
        on_asleep: on_asleep as i32,
        failure_budget,
        site_timezones,
        retry,
        maintenance_window: window,
        upgrade_type: upgrade_type as i32,
        allow_downgrade: raw.allow_downgrade,
        preconditions,
        skip_batch_check: raw.batch_check == Some(false),
        batch_check_timeout_s: p.secs("batch_check_timeout", raw.batch_check_timeout.as_ref()),
        require_approval: raw.require_approval,
        abort_criteria,
        rate,
        canary_per_site,
        rollback: rollback as i32,
        health,
    };
    if p.0.is_empty() {
        Ok(spec)
    } else {
        Err(SpecError {
            source: source.to_string(),
            problems: p.0,
        })
    }
}

fn upgrade_type(p: &mut Problems, raw: Option<&str>) -> pb::UpgradeType {
    match raw {
        None | Some("notify") => pb::UpgradeType::Notify,
        Some("forced") => pb::UpgradeType::Forced,
        Some("check") => pb::UpgradeType::Check,
        Some(other) => {
            p.add(
                "upgrade_type",
                format!("\"{other}\" is not one of notify, forced, check"),
            );
            pb::UpgradeType::Notify
        }
    }
}

fn concurrency(p: &mut Problems, c: &RawConcurrency) -> pb::ConcurrencyLimits {
    pb::ConcurrencyLimits {
        global: p.u32_in("concurrency.global", c.global, 0, 100_000),
        per_site: p.u32_in("concurrency.per_site", c.per_site, 0, 100_000),
        per_zigbee_network: p.u32_in(
            "concurrency.per_zigbee_network",
            c.per_zigbee_network,
            0,
            1000,
        ),
        per_esphome_site: p.u32_in("concurrency.per_esphome_site", c.per_esphome_site, 0, 1000),
    }
}

fn retry(p: &mut Problems, r: &RawRetry) -> pb::RetryPolicy {
    let retry = pb::RetryPolicy {
        max_attempts: p.u32_in("retry.max_attempts", r.max_attempts, 0, 100),
        initial_backoff_s: p.secs("retry.initial_backoff", r.initial_backoff.as_ref()),
        max_backoff_s: p.secs("retry.max_backoff", r.max_backoff.as_ref()),
    };
    if retry.max_backoff_s != 0 && retry.max_backoff_s < retry.initial_backoff_s {
        p.add("retry.max_backoff", "is shorter than retry.initial_backoff");
    }
    retry
}

fn preconditions(p: &mut Problems, c: &RawPreconditions) -> pb::Preconditions {
    pb::Preconditions {
        min_battery_percent: c
            .min_battery_percent
            .map(|v| p.u32_in("preconditions.min_battery_percent", Some(v), 0, 100)),
        min_linkquality: c
            .min_linkquality
            .map(|v| p.u32_in("preconditions.min_linkquality", Some(v), 0, 255)),
        min_rssi_dbm: match c.min_rssi_dbm {
            None => None,
            Some(v) if (-120..=0).contains(&v) => Some(i32::try_from(v).unwrap_or(0)),
            Some(v) => {
                p.add(
                    "preconditions.min_rssi_dbm",
                    format!("{v} is outside -120..-1 (dBm are negative), or 0 (off)"),
                );
                None
            }
        },
    }
}

fn on_asleep(p: &mut Problems, raw: Option<&str>) -> pb::OnAsleep {
    match raw {
        None | Some("wait") => pb::OnAsleep::Wait,
        Some("continue") => pb::OnAsleep::Continue,
        Some(other) => {
            p.add(
                "on_asleep",
                format!("{other:?} is not one of wait, continue"),
            );
            pb::OnAsleep::Wait
        }
    }
}

fn failure_budget(p: &mut Problems, raw: Option<&ThresholdValue>) -> Option<pb::FailureBudget> {
    match raw {
        None => None,
        Some(ThresholdValue::Text(t)) if matches!(t.trim(), "none" | "off") => {
            Some(pb::FailureBudget {
                budget: Some(pb::failure_budget::Budget::Off(true)),
            })
        }
        Some(v) => p
            .threshold("failure_budget", Some(v))
            .map(|t| pb::FailureBudget {
                budget: Some(pb::failure_budget::Budget::Limit(t)),
            }),
    }
}

/// The longest health window (otad's bound): a day.
const MAX_HEALTH_WINDOW_S: u32 = 24 * 3600;

/// `[health]`: absent windows are the defaults (2 minutes ESPHome, 10 minutes Zigbee); "none"
/// or 0 switches the gate off for that transport.
fn health(p: &mut Problems, raw: &RawHealth) -> pb::HealthPolicy {
    let mut window = |field: &str, v: Option<&DurationValue>, default: u32| {
        let s = match v {
            None => default,
            Some(DurationValue::Text(t)) if matches!(t.trim(), "none" | "off") => 0,
            Some(d) => p.secs(field, Some(d)),
        };
        if s > MAX_HEALTH_WINDOW_S {
            p.add(
                field,
                format!("{} is longer than a day", values::fmt_secs(u64::from(s))),
            );
        }
        s
    };
    pb::HealthPolicy {
        esphome_window_s: window("health.esphome_window", raw.esphome_window.as_ref(), 120),
        zigbee_window_s: window("health.zigbee_window", raw.zigbee_window.as_ref(), 600),
        accept_reachability: raw.accept_reachability,
    }
}

/// Most abort criteria a spec may hold (otad's bound).
const MAX_ABORT_CRITERIA: usize = 10;

fn abort_criteria(p: &mut Problems, raw: &[RawAbort]) -> Vec<pb::AbortCriterion> {
    use pb::abort_criterion::{Action, On};
    if raw.len() > MAX_ABORT_CRITERIA {
        p.add(
            "abort",
            format!("has {} criteria: at most {MAX_ABORT_CRITERIA}", raw.len()),
        );
    }
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let field = |name: &str| format!("abort[{i}].{name}");
        let on = match a.on.as_deref().map(|o| o.trim().replace('-', "_")) {
            Some(o) if o == "failed" => On::Failed,
            Some(o) if o == "timed_out" => On::TimedOut,
            Some(o) if o == "rejected" => On::Rejected,
            Some(o) if o == "any" => On::Any,
            None => {
                p.add(
                    field("on"),
                    "is required: failed, timed_out, rejected or any",
                );
                On::Unspecified
            }
            Some(other) => {
                p.add(
                    field("on"),
                    format!("{other:?} is not one of failed, timed_out, rejected, any"),
                );
                On::Unspecified
            }
        };
        let percent = match &a.percent {
            None => {
                p.add(
                    field("percent"),
                    "is required: the share of the finished devices that trips it",
                );
                0.0
            }
            Some(PercentValue::Number(n)) => *n,
            Some(PercentValue::Text(t)) => match t.trim().trim_end_matches('%').trim().parse() {
                Ok(n) => n,
                Err(_) => {
                    p.add(field("percent"), format!("{t:?} is not a percentage"));
                    0.0
                }
            },
        };
        if a.percent.is_some() && !(percent > 0.0 && percent <= 100.0) {
            p.add(
                field("percent"),
                format!("{percent} is not above 0 and at most 100"),
            );
        }
        let min_finished = p.u32_in(&field("min_finished"), a.min_finished, 1, 10_000_000);
        let action = match a.action.as_deref().map(str::trim) {
            None | Some("pause") => Action::Pause,
            Some("abort") => Action::Abort,
            Some("rollback") => Action::Rollback,
            Some(other) => {
                p.add(
                    field("action"),
                    format!("{other:?} is not one of pause, abort, rollback"),
                );
                Action::Pause
            }
        };
        out.push(pb::AbortCriterion {
            on: on as i32,
            percent,
            min_finished,
            action: action as i32,
        });
    }
    out
}

fn site_timezones(
    p: &mut Problems,
    raw: &std::collections::BTreeMap<String, String>,
) -> std::collections::HashMap<String, String> {
    let mut site_timezones = std::collections::HashMap::new();
    for (site, zone) in raw {
        if zone.trim().is_empty() {
            p.add(
                format!("site_timezones.{site}"),
                "is empty (an IANA zone such as Europe/Berlin)",
            );
        }
        site_timezones.insert(site.clone(), zone.trim().to_string());
    }
    site_timezones
}

fn selector(p: &mut Problems, s: &RawSelector) -> pb::DeviceSelector {
    let mut transports = Vec::new();
    for (i, t) in s.transports.iter().enumerate() {
        match t.trim().to_ascii_lowercase().as_str() {
            "zigbee2mqtt" | "zigbee" | "z2m" => transports.push(pb::Transport::Zigbee2mqtt as i32),
            "esphome" => transports.push(pb::Transport::Esphome as i32),
            "serial" => transports.push(pb::Transport::Serial as i32),
            other => p.add(
                format!("selector.transports[{i}]"),
                format!("\"{other}\" is not one of zigbee2mqtt, esphome, serial"),
            ),
        }
    }
    let code = |p: &mut Problems, field: &str, v: Option<i64>| {
        v.and_then(|n| match u32::try_from(n) {
            Ok(c) if c <= 0xFFFF => Some(c),
            _ => {
                p.add(field, format!("{n} is not a 16-bit number"));
                None
            }
        })
    };
    let devices = p.nonempty_list("selector.devices", &s.devices);
    let exclude = p.nonempty_list("selector.exclude", &s.exclude);
    for d in &devices {
        if exclude.contains(d) {
            p.add(
                "selector.exclude",
                format!("{d} is both selected and excluded"),
            );
        }
    }
    pb::DeviceSelector {
        site_ids: p.nonempty_list("selector.sites", &s.sites),
        transports,
        models: p.nonempty_list("selector.models", &s.models),
        vendors: p.nonempty_list("selector.vendors", &s.vendors),
        manufacturer_code: code(p, "selector.manufacturer_code", s.manufacturer_code),
        image_type: code(p, "selector.image_type", s.image_type),
        chips: p.nonempty_list("selector.chips", &s.chips),
        min_version: s.min_version.clone().unwrap_or_default(),
        max_version: s.max_version.clone().unwrap_or_default(),
        tags: p.nonempty_list("selector.tags", &s.tags),
        device_ids: devices,
        exclude_device_ids: exclude,
        networks: p.nonempty_list("selector.networks", &s.networks),
    }
}

/// Most per-site canaries a spec may ask for (otad's bound).
const MAX_CANARY_PER_SITE: i64 = 1000;

/// The stages; with `canary_per_site` the first one has no size (the canaries fill it).
fn stages(p: &mut Problems, raw: &[RawStage], canary_per_site: u32) -> Vec<pb::Stage> {
    if raw.is_empty() && canary_per_site > 0 {
        // The canaries' stage; otad adds the one for the rest.
        return vec![pb::Stage {
            name: "canary".into(),
            ..Default::default()
        }];
    }
    if raw.is_empty() {
        p.add(
            "stages",
            "at least one stage is required ([[stages]] with count or percent; --canary/--waves)",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut last_percent: Option<f64> = None;
    let mut names: Vec<String> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let at = |f: &str| format!("stages[{i}].{f}");
        let name = s
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("stage-{}", i + 1), str::to_string);
        if names.contains(&name) {
            p.add(
                at("name"),
                format!("\"{name}\" is used by an earlier stage"),
            );
        }
        names.push(name.clone());
        let size = match (s.count, s.percent) {
            (None, None) if i == 0 && canary_per_site > 0 => None,
            _ if i == 0 && canary_per_site > 0 => {
                p.add(
                    "stages[0]",
                    format!(
                        "sets count or percent, but canary_per_site = {canary_per_site} fills the \
                         first stage ({canary_per_site} device(s) from every site and zigbee2mqtt \
                         network): leave them out, or drop canary_per_site"
                    ),
                );
                None
            }
            (Some(_), Some(_)) => {
                p.add(format!("stages[{i}]"), "set count or percent, not both");
                None
            }
            (None, None) => {
                p.add(
                    format!("stages[{i}]"),
                    "needs count (devices in this stage) or percent (cumulative share of all targets)",
                );
                None
            }
            (Some(c), None) => match u32::try_from(c) {
                Ok(c) if c > 0 => Some(pb::stage::Size::Count(c)),
                _ => {
                    p.add(
                        at("count"),
                        format!("{c} is not a positive number of devices"),
                    );
                    None
                }
            },
            (None, Some(pct)) => {
                if !(pct > 0.0 && pct <= 100.0) {
                    p.add(at("percent"), format!("{pct} is outside 1-100"));
                    None
                } else if let Some(prev) = last_percent.filter(|prev| pct <= *prev) {
                    p.add(
                        at("percent"),
                        format!(
                            "{pct} is not more than the earlier stage's {prev} (percentages are \
                             cumulative)"
                        ),
                    );
                    None
                } else {
                    last_percent = Some(pct);
                    Some(pb::stage::Size::CumulativePercent(pct))
                }
            }
        };
        let on_failure = match s.on_failure.as_deref() {
            None | Some("pause") => pb::FailureAction::Pause,
            Some("abort") => pb::FailureAction::Abort,
            Some(other) => {
                p.add(
                    at("on_failure"),
                    format!("\"{other}\" is not one of pause, abort"),
                );
                pb::FailureAction::Pause
            }
        };
        out.push(pb::Stage {
            name,
            success_threshold: p.threshold(&at("success_threshold"), s.success_threshold.as_ref()),
            failure_threshold: p.threshold(&at("failure_threshold"), s.failure_threshold.as_ref()),
            on_failure: on_failure as i32,
            // Absent: the server's default (24 h); "none" or 0: no deadline.
            deadline_s: match &s.deadline {
                None => None,
                Some(DurationValue::Text(t)) if matches!(t.trim(), "none" | "off") => Some(0),
                Some(d) => Some(p.secs(&at("deadline"), Some(d))),
            },
            soak_s: p.secs(&at("soak"), s.soak.as_ref()),
            size,
        });
    }
    out
}

fn window(p: &mut Problems, w: &RawWindow) -> pb::MaintenanceWindow {
    let mut hhmm = |field: &str, v: Option<&String>| match v {
        None => {
            p.add(field, "is required (HH:MM, 24 h)");
            String::new()
        }
        Some(t) => match values::check_hhmm(t.trim()) {
            Ok(()) => t.trim().to_string(),
            Err(e) => {
                p.add(field, e);
                String::new()
            }
        },
    };
    let start = hhmm("window.start", w.start.as_ref());
    let end = hhmm("window.end", w.end.as_ref());
    if !start.is_empty() && start == end {
        p.add(
            "window",
            "start and end are equal: the window would never open",
        );
    }
    let mut weekdays = Vec::new();
    for (i, d) in w.weekdays.iter().enumerate() {
        let parsed = match d {
            WeekdayValue::Number(n) => values::parse_weekday(&n.to_string()),
            WeekdayValue::Name(s) => values::parse_weekday(s),
        };
        match parsed {
            Ok(n) if weekdays.contains(&n) => {
                p.add(format!("window.weekdays[{i}]"), "is listed twice");
            }
            Ok(n) => weekdays.push(n),
            Err(e) => p.add(format!("window.weekdays[{i}]"), e),
        }
    }
    pb::MaintenanceWindow {
        start,
        end,
        weekdays,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "hue-switch 2.3.093"
firmware = "fw-1a2b3c4d5e6f7a8b"
upgrade_type = "forced"
allow_downgrade = true
device_timeout = "30m"
batch_check = false
batch_check_timeout = 90

[selector]
sites = ["home"]
transports = ["zigbee2mqtt"]
models = ["324131092621"]
manufacturer_code = 0x100B
image_type = 1
tags = ["attic"]
exclude = ["home/0x01"]
min_version = "0x01000000"

[[stages]]
name = "canary"
count = 5
failure_threshold = "1"
success_threshold = "100%"
on_failure = "abort"
deadline = "1h"
soak = "10m"

[[stages]]
percent = 25
failure_threshold = 2

[[stages]]
name = "everyone"
percent = 100

[concurrency]
global = 20
per_zigbee_network = 1

[retry]
max_attempts = 5
initial_backoff = "30s"
max_backoff = "15m"

[window]
start = "22:00"
end = "05:00"
weekdays = ["mon", "tue", 3]

[preconditions]
min_battery_percent = 60
min_linkquality = 40
min_rssi_dbm = -80
"#;

    fn errors(text: &str) -> Vec<(String, String)> {
        parse_toml(text, "t.toml").unwrap_err().problems
    }

    fn minimal(extra: &str) -> String {
        format!("name = \"n\"\nfirmware = \"fw-1\"\n{extra}\n[[stages]]\npercent = 100\n")
    }

    #[test]
    fn a_full_spec_maps_onto_the_api() {
        let s = parse_toml(FULL, "t.toml").unwrap();
        assert_eq!(s.name, "hue-switch 2.3.093");
        assert_eq!(s.firmware_id, "fw-1a2b3c4d5e6f7a8b");
        assert_eq!(s.upgrade_type, pb::UpgradeType::Forced as i32);
        assert!(s.allow_downgrade && s.skip_batch_check);
        assert_eq!(s.device_timeout_s, 1800);
        assert_eq!(s.batch_check_timeout_s, 90);
        let sel = s.selector.as_ref().unwrap();
        assert_eq!(sel.transports, [pb::Transport::Zigbee2mqtt as i32]);
        assert_eq!(sel.manufacturer_code, Some(0x100B));
        assert_eq!(sel.exclude_device_ids, ["home/0x01"]);
        assert_eq!(s.stages.len(), 3);
        let canary = &s.stages[0];
        assert_eq!(canary.size, Some(pb::stage::Size::Count(5)));
        assert_eq!(
            canary.failure_threshold,
            Some(pb::Threshold {
                value: Some(pb::threshold::Value::Count(1))
            })
        );
        assert_eq!(
            canary.success_threshold,
            Some(pb::Threshold {
                value: Some(pb::threshold::Value::Percent(100.0))
            })
        );
        assert_eq!(canary.on_failure, pb::FailureAction::Abort as i32);
        assert_eq!((canary.deadline_s, canary.soak_s), (Some(3600), 600));
        assert_eq!(s.stages[1].name, "stage-2");
        assert_eq!(
            s.stages[1].size,
            Some(pb::stage::Size::CumulativePercent(25.0))
        );
        assert_eq!(s.concurrency.unwrap().global, 20);
        assert_eq!(s.retry.unwrap().max_backoff_s, 900);
        let w = s.maintenance_window.as_ref().unwrap();
        assert_eq!((w.start.as_str(), w.end.as_str()), ("22:00", "05:00"));
        assert_eq!(w.weekdays, [1, 2, 3]);
        assert_eq!(s.preconditions.unwrap().min_rssi_dbm, Some(-80));
    }

    #[test]
    fn a_minimal_spec_uses_server_defaults() {
        let s = parse_toml(&minimal(""), "t.toml").unwrap();
        assert_eq!(s.upgrade_type, 0);
        assert!(!s.skip_batch_check);
        assert!(s.concurrency.is_none() && s.retry.is_none() && s.preconditions.is_none());
        assert_eq!(s.stages[0].name, "stage-1");
    }

    #[test]
    fn required_fields_are_named() {
        let e = errors("[[stages]]\ncount = 1\n");
        assert_eq!(e[0].0, "name");
        assert_eq!(e[1].0, "firmware");
        let e = errors("name = \"n\"\nfirmware = \"f\"\n");
        assert_eq!(e[0].0, "stages");
    }

    #[test]
    fn unknown_keys_and_bad_toml_say_where() {
        let e = parse_toml(&minimal("stagez = 1"), "t.toml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid rollout spec in t.toml: line 3"),
            "{msg}"
        );
        assert!(msg.contains("stagez"), "{msg}");
        assert!(!msg.contains('\n'));
        let e = parse_toml("name = ", "t.toml").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = errors("name = \"n\"\nfirmware = \"f\"\n[[stages]]\ncount = 1\nsoke = \"1m\"\n");
        assert!(e[0].1.contains("soke"), "{e:?}");
    }

    #[test]
    fn stage_errors_name_the_stage() {
        let e = errors("name = \"n\"\nfirmware = \"f\"\n[[stages]]\ncount = 1\npercent = 5\n");
        assert_eq!(
            e,
            [("stages[0]".into(), "set count or percent, not both".into())]
        );
        let e = errors("name = \"n\"\nfirmware = \"f\"\n[[stages]]\nname = \"x\"\n");
        assert_eq!(e[0].0, "stages[0]");
        let e = errors("name = \"n\"\nfirmware = \"f\"\n[[stages]]\ncount = 0\n");
        assert_eq!(e[0].0, "stages[0].count");
        let e = errors(
            "name = \"n\"\nfirmware = \"f\"\n[[stages]]\npercent = 50\n[[stages]]\npercent = 20\n",
        );
        assert_eq!(e[0].0, "stages[1].percent");
        assert!(e[0].1.contains("cumulative"));
        let e = errors("name = \"n\"\nfirmware = \"f\"\n[[stages]]\npercent = 120\n");
        assert_eq!(
            e[0],
            ("stages[0].percent".into(), "120 is outside 1-100".into())
        );
        let e = errors(
            "name = \"n\"\nfirmware = \"f\"\n[[stages]]\nname = \"a\"\ncount = 1\n[[stages]]\nname = \"a\"\npercent = 100\n",
        );
        assert_eq!(e[0].0, "stages[1].name");
    }

    #[test]
    fn threshold_and_duration_errors_name_the_field() {
        let e = errors(
            "name = \"n\"\nfirmware = \"f\"\n[[stages]]\ncount = 3\nfailure_threshold = \"ten\"\n\
             success_threshold = \"150%\"\ndeadline = \"soon\"\nsoak = -5\non_failure = \"stop\"\n",
        );
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "stages[0].on_failure",
                "stages[0].success_threshold",
                "stages[0].failure_threshold",
                "stages[0].deadline",
                "stages[0].soak"
            ]
        );
        let e = errors(&minimal("device_timeout = \"1 fortnight\""));
        assert_eq!(e[0].0, "device_timeout");
    }

    #[test]
    fn other_sections_are_checked() {
        let e = errors(&minimal(
            "upgrade_type = \"now\"\n[selector]\ntransports = [\"lora\"]\nmanufacturer_code = 70000\ndevices = [\"a\"]\nexclude = [\"a\"]",
        ));
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "upgrade_type",
                "selector.transports[0]",
                "selector.exclude",
                "selector.manufacturer_code"
            ]
        );
        let text = "name = \"n\"\nfirmware = \"f\"\n[[stages]]\npercent = 100\n\
                    [window]\nstart = \"25:00\"\nweekdays = [\"someday\", 1, 1]\n\
                    [preconditions]\nmin_battery_percent = 101\nmin_rssi_dbm = 10\n\
                    [retry]\ninitial_backoff = \"10m\"\nmax_backoff = \"1m\"\n";
        let e = errors(text);
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "retry.max_backoff",
                "window.start",
                "window.end",
                "window.weekdays[0]",
                "window.weekdays[2]",
                "preconditions.min_battery_percent",
                "preconditions.min_rssi_dbm"
            ]
        );
    }

    #[test]
    fn the_flag_form_builds_canary_and_waves() {
        let flags = SpecFlags {
            name: Some("r".into()),
            firmware: Some("fw-1".into()),
            canary: Some(5),
            waves: Some(values::Percents(vec![25.0, 100.0])),
            deadline: Some(std::time::Duration::from_secs(3600)),
            soak: Some(std::time::Duration::from_secs(600)),
            failure_threshold: Some(values::Threshold::Percent(10.0)),
            window: Some("22:00-05:00".into()),
            skip_batch_check: true,
            selector: crate::cli::SelectorArgs {
                transports: vec![TransportArg::Esphome],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(flags_given(&flags));
        assert!(!flags_given(&SpecFlags::default()));
        let s = validate(&from_flags(&flags), "flags").unwrap();
        let names: Vec<&str> = s.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["canary", "wave-1", "wave-2"]);
        assert!(
            s.stages
                .iter()
                .all(|s| s.deadline_s == Some(3600) && s.soak_s == 600)
        );
        assert_eq!(
            s.stages[2].failure_threshold,
            Some(pb::Threshold {
                value: Some(pb::threshold::Value::Percent(10.0))
            })
        );
        assert_eq!(
            s.selector.unwrap().transports,
            [pb::Transport::Esphome as i32]
        );
        assert!(s.skip_batch_check);
        assert_eq!(s.maintenance_window.unwrap().end, "05:00");

        let bad = SpecFlags {
            window: Some("late".into()),
            ..Default::default()
        };
        let e = validate(&from_flags(&bad), "flags").unwrap_err();
        let fields: Vec<&str> = e.problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "firmware", "stages", "window.start", "window.end"]
        );
        assert!(
            e.to_string()
                .starts_with("invalid rollout spec in flags: name: is required")
        );
    }

    #[test]
    fn per_site_canaries_fill_a_first_stage_without_a_size() {
        let head = "name = \"n\"\nfirmware = \"fw-1\"\ncanary_per_site = 2\n";
        // The first stage leaves its size out; the later ones are as usual.
        let s = parse_toml(
            &format!("{head}[[stages]]\nname = \"canary\"\n[[stages]]\npercent = 100\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(s.canary_per_site, 2);
        assert_eq!(s.stages[0].size, None);
        assert_eq!(
            s.stages[1].size,
            Some(pb::stage::Size::CumulativePercent(100.0))
        );
        // No stages at all: one canary stage (otad adds the one for the rest).
        let s = parse_toml(head, "t.toml").unwrap();
        let names: Vec<&str> = s.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["canary"]);
        assert_eq!(s.stages[0].size, None);
        // A first stage with its own size says something else: refused.
        assert_eq!(
            errors(&format!("{head}[[stages]]\ncount = 5\n")),
            [(
                "stages[0]".to_string(),
                "sets count or percent, but canary_per_site = 2 fills the first stage (2 \
                 device(s) from every site and zigbee2mqtt network): leave them out, or drop \
                 canary_per_site"
                    .to_string()
            )]
        );
        assert_eq!(
            errors(&minimal("canary_per_site = 1001")),
            [(
                "canary_per_site".to_string(),
                "1001 is outside 0-1000".to_string()
            )]
        );
        // Only the first stage may go without a size.
        let e = errors(&format!("{head}[[stages]]\n[[stages]]\nname = \"b\"\n"));
        assert_eq!(e[0].0, "stages[1]");
        // The flag form: a canary stage, then the waves.
        let flags = SpecFlags {
            name: Some("n".into()),
            firmware: Some("fw-1".into()),
            canary_per_site: Some(3),
            waves: Some(values::Percents(vec![50.0, 100.0])),
            ..Default::default()
        };
        assert!(flags_given(&flags));
        let s = validate(&from_flags(&flags), "flags").unwrap();
        assert_eq!(s.canary_per_site, 3);
        let sizes: Vec<_> = s.stages.iter().map(|s| (s.name.as_str(), s.size)).collect();
        assert_eq!(
            sizes,
            [
                ("canary", None),
                ("wave-1", Some(pb::stage::Size::CumulativePercent(50.0))),
                ("wave-2", Some(pb::stage::Size::CumulativePercent(100.0)))
            ]
        );
    }

    #[test]
    fn abort_criteria_map_onto_the_api_with_defaults() {
        let s = parse_toml(
            &minimal(
                "[[abort]]\non = \"failed\"\npercent = 20\nmin_finished = 10\naction = \"abort\"\n\
                 [[abort]]\non = \"timed-out\"\npercent = \"12.5%\"",
            ),
            "t.toml",
        )
        .unwrap();
        use pb::abort_criterion::{Action, On};
        assert_eq!(
            s.abort_criteria,
            [
                pb::AbortCriterion {
                    on: On::Failed as i32,
                    percent: 20.0,
                    min_finished: 10,
                    action: Action::Abort as i32,
                },
                pb::AbortCriterion {
                    on: On::TimedOut as i32,
                    percent: 12.5,
                    min_finished: 0,
                    action: Action::Pause as i32,
                },
            ]
        );
    }

    #[test]
    fn abort_criteria_errors_name_the_criterion() {
        let e = errors(&minimal(
            "[[abort]]\npercent = 0\nmin_finished = 0\naction = \"rollback-now\"\n\
             [[abort]]\non = \"late\"\npercent = \"lots\"",
        ));
        assert_eq!(
            e,
            [
                (
                    "abort[0].on".to_string(),
                    "is required: failed, timed_out, rejected or any".to_string()
                ),
                (
                    "abort[0].percent".to_string(),
                    "0 is not above 0 and at most 100".to_string()
                ),
                (
                    "abort[0].min_finished".to_string(),
                    "0 is outside 1-10000000".to_string()
                ),
                (
                    "abort[0].action".to_string(),
                    "\"rollback-now\" is not one of pause, abort, rollback".to_string()
                ),
                (
                    "abort[1].on".to_string(),
                    "\"late\" is not one of failed, timed_out, rejected, any".to_string()
                ),
                (
                    "abort[1].percent".to_string(),
                    "\"lots\" is not a percentage".to_string()
                ),
                (
                    "abort[1].percent".to_string(),
                    "0 is not above 0 and at most 100".to_string()
                ),
            ]
        );
    }
}

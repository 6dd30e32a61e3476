//! Health-gated success (issue 15 item 4): after a device reports the target version it must
//! stay healthy for a window before its task counts as succeeded.
//!
//! What it does: the rollout's [`HealthPolicy`] (a window per transport, and whether a device
//! the site can only reach, not ask, may count as succeeded), and the judgement itself, a pure
//! state machine ([`HealthWatch`]): samples and `now` in, a [`Verdict`] out. The agent's
//! transports take the samples (ESPHome: the native API's version and uptime; zigbee2mqtt: when
//! it last saw the device and on which version; devices without an API: reachability only) and
//! the agent's core feeds them in; otad records the phases (`TaskVerifying`, then
//! `TaskSucceeded` with its [`Health`] or `TaskFailed` with [`ErrorCode::Unhealthy`]).
//!
//! The rules:
//! - **API devices (ESPHome)**: every answer must name an expected version (the previous
//!   version means the device rolled back: "the device rolled back to 1.0.0"), must not come
//!   from safe mode, and its uptime must keep rising (an uptime lower than the one before is a
//!   reboot: a crash, or a reboot loop). At the end of the window the last sample must be such
//!   an answer: a device that went silent (safe mode runs no API) fails.
//! - **Presence devices (zigbee2mqtt)**: the bridge must see the device after the window began
//!   (`last_seen`), and never on another version.
//! - **Devices the site cannot ask** (no API configured, serial): "unconfirmed" at once, or, when
//!   the spec accepts reachability, succeeded if still reachable at the end of the window.
//!
//! What it does not do: sample, sleep or read the clock (the caller does), or decide the window
//! (the spec does, through [`HealthPolicy::window_s`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Transport;
use crate::projection::{FleetState, TaskView};
use crate::status::{ErrorCode, TaskError};
use crate::time::UnixMillis;

/// The default health window of ESPHome (and serial) devices, seconds.
pub const DEFAULT_ESPHOME_WINDOW_S: u32 = 120;
/// The default health window of Zigbee devices, seconds.
pub const DEFAULT_ZIGBEE_WINDOW_S: u32 = 600;

/// A rollout's health gate (`[health]` in the spec). A window of 0 switches the gate off for
/// that transport: the first report of the target version is the success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthPolicy {
    /// ESPHome and serial devices, seconds.
    pub esphome_window_s: u32,
    /// Zigbee devices, seconds.
    pub zigbee_window_s: u32,
    /// A device the site cannot ask (no native API, serial) succeeds when it is still reachable
    /// at the end of its window, rather than ending "unconfirmed".
    pub accept_reachability: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            esphome_window_s: DEFAULT_ESPHOME_WINDOW_S,
            zigbee_window_s: DEFAULT_ZIGBEE_WINDOW_S,
            accept_reachability: false,
        }
    }
}

impl HealthPolicy {
    /// No gate: what rollouts created before health gating keep.
    pub const OFF: Self = Self {
        esphome_window_s: 0,
        zigbee_window_s: 0,
        accept_reachability: false,
    };

    /// The window of a device of `transport`, seconds (0: no gate).
    pub fn window_s(&self, transport: Transport) -> u32 {
        match transport {
            Transport::Zigbee2Mqtt => self.zigbee_window_s,
            Transport::Esphome | Transport::Serial => self.esphome_window_s,
        }
    }

    /// One line for `plan` and `rollout show`.
    pub fn describe(&self) -> String {
        if *self == Self::OFF {
            return "off (the first report of the target version is the success)".into();
        }
        let reach = if self.accept_reachability {
            "devices without an API succeed when reachable"
        } else {
            "devices without an API end unconfirmed"
        };
        format!(
            "ESPHome {}, Zigbee {}; {reach}",
            window_words(self.esphome_window_s),
            window_words(self.zigbee_window_s)
        )
    }
}

/// The health window (seconds, 0: none) and whether reachability is accepted, for a task: its
/// rollout's policy for its device's transport. Single updates have no window.
pub fn task_window(state: &FleetState, task: &TaskView) -> (u32, bool) {
    let c = &task.created;
    let Some(r) = c.rollout_id.as_ref().and_then(|id| state.rollouts.get(id)) else {
        return (0, false);
    };
    let transport = state
        .devices
        .get(&c.device_id)
        .and_then(|d| d.facts.transport)
        .unwrap_or(Transport::Esphome);
    let policy = r.spec.health;
    (policy.window_s(transport), policy.accept_reachability)
}

fn window_words(s: u32) -> String {
    match s {
        0 => "off".into(),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// How a succeeded task's health was established (stored in `TaskSucceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Health {
    /// No window applied (the gate is off, a single update, or an agent that does not verify).
    #[default]
    NotChecked,
    /// Healthy for the whole window.
    Healthy,
    /// The site could only reach the device, and the spec accepts that.
    Reachable,
    /// The site cannot ask the device: the version was written, its health is unknown. Not a
    /// success for the stage.
    Unconfirmed,
}

impl Health {
    /// Counts as a success for stages and thresholds.
    pub fn is_success(self) -> bool {
        self != Self::Unconfirmed
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotChecked => "not-checked",
            Self::Healthy => "healthy",
            Self::Reachable => "reachable",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

/// What the site can find out about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// It answers an API with its version and uptime (ESPHome native API).
    Api,
    /// A bridge sees it talk (zigbee2mqtt `last_seen`) and knows its version.
    Presence,
    /// Reachability only (no API configured, serial).
    Reachability,
}

/// One look at the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    /// The API answered.
    Api {
        /// The version it runs (`None`: it names none, e.g. no project version).
        version: Option<String>,
        /// Seconds since it booted, when known.
        uptime_s: Option<u64>,
        /// It runs in safe mode.
        safe_mode: bool,
    },
    /// The bridge's view.
    Seen {
        /// When the bridge last heard from the device.
        last_seen: Option<UnixMillis>,
        /// The version the bridge knows it runs.
        version: Option<String>,
    },
    /// Reachable (or not) by the lower-level means.
    Reachable(bool),
    /// Nothing answered.
    Silent,
}

/// The outcome of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The task succeeded with this health.
    Succeeded(Health),
    /// The device did not stay healthy ([`ErrorCode::Unhealthy`]).
    Failed(TaskError),
}

/// The judgement of one device's health window. Feed it every sample with
/// [`HealthWatch::observe`]; it has a verdict as soon as a sample fails the device, or once the
/// window is over ([`HealthWatch::verdict`]).
#[derive(Debug, Clone)]
pub struct HealthWatch {
    observation: Observation,
    expected: Vec<String>,
    previous: Vec<String>,
    accept_reachability: bool,
    started: UnixMillis,
    until: UnixMillis,
    uptime_s: Option<u64>,
    last_good: bool,
    seen: bool,
    failed: Option<TaskError>,
}

impl HealthWatch {
    /// A window of `window` from `started` for a device that should run one of `expected` and
    /// ran one of `previous` before (its version as a string, its Zigbee file version, ...).
    pub fn new(
        observation: Observation,
        expected: Vec<String>,
        previous: Vec<String>,
        accept_reachability: bool,
        started: UnixMillis,
        window: Duration,
    ) -> Self {
        let mut expected = expected;
        expected.retain(|e| !e.is_empty());
        Self {
            observation,
            previous: previous
                .into_iter()
                .filter(|p| !p.is_empty() && !expected.contains(p))
                .collect(),
            expected,
            accept_reachability,
            started,
            until: started + window,
            uptime_s: None,
            last_good: false,
            seen: false,
            failed: None,
        }
    }

    /// When the window ends.
    pub fn until(&self) -> UnixMillis {
        self.until
    }

    /// How often to sample: a tenth of the window, between 1 and 10 seconds.
    pub fn interval(&self) -> Duration {
        (self.until.since(self.started) / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    fn target(&self) -> &str {
        self.expected.first().map_or("the target", String::as_str)
    }

    fn on_target(&self, version: &str) -> Result<(), TaskError> {
        if self.expected.iter().any(|e| e == version) {
            return Ok(());
        }
        let msg = if self.previous.iter().any(|p| p == version) {
            format!("the device rolled back to {version}")
        } else {
            format!(
                "the device runs {version}, not {}, during its health window",
                self.target()
            )
        };
        Err(TaskError::new(ErrorCode::Unhealthy, msg))
    }

    fn fail(&mut self, e: TaskError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// Takes one sample made at `now`.
    pub fn observe(&mut self, sample: Sample, now: UnixMillis) {
        if self.failed.is_some() {
            return;
        }
        self.last_good = false;
        match sample {
            Sample::Api {
                version,
                uptime_s,
                safe_mode,
            } => self.api(version.as_deref(), uptime_s, safe_mode, now),
            Sample::Seen { last_seen, version } => {
                if let Some(v) = version.as_deref().filter(|v| !v.is_empty())
                    && let Err(e) = self.on_target(v)
                {
                    return self.fail(e);
                }
                if last_seen.is_some_and(|s| s > self.started) {
                    self.seen = true;
                }
                self.last_good = self.seen;
            }
            Sample::Reachable(r) => self.last_good = r,
            Sample::Silent => {}
        }
    }

    fn api(
        &mut self,
        version: Option<&str>,
        uptime_s: Option<u64>,
        safe_mode: bool,
        now: UnixMillis,
    ) {
        if safe_mode {
            return self.fail(TaskError::new(
                ErrorCode::Unhealthy,
                "the device fell back to safe mode",
            ));
        }
        if let Some(v) = version.filter(|v| !v.is_empty())
            && let Err(e) = self.on_target(v)
        {
            return self.fail(e);
        }
        if let Some(up) = uptime_s {
            if let Some(before) = self.uptime_s
                && up < before
            {
                return self.fail(TaskError::new(
                    ErrorCode::Unhealthy,
                    format!(
                        "the device rebooted {}s into its health window (uptime fell from \
                         {before}s to {up}s): a crash or a reboot loop",
                        now.since(self.started).as_secs()
                    ),
                ));
            }
            self.uptime_s = Some(up);
        }
        self.last_good = true;
    }

    /// The verdict at `now`: a failure as soon as a sample showed one, else once the window is
    /// over. `None`: keep sampling.
    pub fn verdict(&self, now: UnixMillis) -> Option<Verdict> {
        if let Some(e) = &self.failed {
            return Some(Verdict::Failed(e.clone()));
        }
        if self.observation == Observation::Reachability && !self.accept_reachability {
            return Some(Verdict::Succeeded(Health::Unconfirmed));
        }
        if now < self.until {
            return None;
        }
        let window = window_words(self.until.since(self.started).as_secs() as u32);
        Some(match (self.observation, self.last_good) {
            (Observation::Api, true) | (Observation::Presence, true) => {
                Verdict::Succeeded(Health::Healthy)
            }
            (Observation::Reachability, true) => Verdict::Succeeded(Health::Reachable),
            (Observation::Api, false) => Verdict::Failed(TaskError::new(
                ErrorCode::Unhealthy,
                format!(
                    "the device stopped answering its API during its {window} health window \
                     (safe mode or a reboot loop?)"
                ),
            )),
            (Observation::Presence, false) => Verdict::Failed(TaskError::new(
                ErrorCode::Unhealthy,
                format!("zigbee2mqtt did not see the device during its {window} health window"),
            )),
            (Observation::Reachability, false) => Verdict::Failed(TaskError::new(
                ErrorCode::Unhealthy,
                format!("the device was not reachable at the end of its {window} health window"),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis::from_unix_ms(1_000_000);

    fn at(s: u64) -> UnixMillis {
        T0.plus_secs(s)
    }

    fn api(version: &str, uptime_s: u64) -> Sample {
        Sample::Api {
            version: Some(version.into()),
            uptime_s: Some(uptime_s),
            safe_mode: false,
        }
    }

    fn watch(observation: Observation, accept: bool) -> HealthWatch {
        HealthWatch::new(
            observation,
            vec!["2.0.0".into()],
            vec!["1.0.0".into()],
            accept,
            T0,
            Duration::from_secs(120),
        )
    }

    #[test]
    fn a_healthy_api_device_succeeds_only_after_the_window() {
        let mut w = watch(Observation::Api, false);
        for s in (0..=110).step_by(10) {
            w.observe(api("2.0.0", 3 + s), at(s));
            assert_eq!(w.verdict(at(s)), None, "at {s}s");
        }
        w.observe(api("2.0.0", 123), at(120));
        assert_eq!(
            w.verdict(at(120)),
            Some(Verdict::Succeeded(Health::Healthy))
        );
        assert_eq!(w.interval(), Duration::from_secs(10));
    }

    #[test]
    fn a_reboot_fails_at_once() {
        let mut w = watch(Observation::Api, false);
        w.observe(api("2.0.0", 3), at(0));
        w.observe(api("2.0.0", 13), at(10));
        // A sensor that has not published again is no reboot.
        w.observe(api("2.0.0", 13), at(21));
        assert_eq!(w.verdict(at(21)), None);
        w.observe(api("2.0.0", 2), at(30));
        let Some(Verdict::Failed(e)) = w.verdict(at(30)) else {
            panic!("{:?}", w.verdict(at(30)));
        };
        assert_eq!(e.code, ErrorCode::Unhealthy);
        assert_eq!(
            e.message,
            "the device rebooted 30s into its health window (uptime fell from 13s to 2s): a \
             crash or a reboot loop"
        );
    }

    #[test]
    fn a_fallback_to_the_previous_image_is_a_rollback() {
        let mut w = watch(Observation::Api, false);
        w.observe(api("2.0.0", 3), at(0));
        w.observe(api("1.0.0", 4), at(50));
        // Later samples do not change the verdict.
        w.observe(api("2.0.0", 60), at(110));
        assert_eq!(
            w.verdict(at(50)),
            Some(Verdict::Failed(TaskError::new(
                ErrorCode::Unhealthy,
                "the device rolled back to 1.0.0"
            )))
        );
        let mut w = watch(Observation::Api, false);
        w.observe(api("3.1.0", 3), at(0));
        let Some(Verdict::Failed(e)) = w.verdict(at(0)) else {
            panic!()
        };
        assert!(e.message.contains("runs 3.1.0, not 2.0.0"), "{}", e.message);
    }

    #[test]
    fn safe_mode_and_silence_at_the_end_fail() {
        let mut w = watch(Observation::Api, false);
        w.observe(
            Sample::Api {
                version: None,
                uptime_s: None,
                safe_mode: true,
            },
            at(5),
        );
        assert!(
            matches!(w.verdict(at(5)), Some(Verdict::Failed(e)) if e.message.contains("safe mode"))
        );
        let mut w = watch(Observation::Api, false);
        w.observe(api("2.0.0", 3), at(0));
        w.observe(Sample::Silent, at(120));
        assert!(
            matches!(w.verdict(at(120)), Some(Verdict::Failed(e)) if e.message.contains("stopped answering its API during its 2 min"))
        );
        // Silence in between is tolerated when the device answers again, same boot.
        let mut w = watch(Observation::Api, false);
        w.observe(api("2.0.0", 3), at(0));
        w.observe(Sample::Silent, at(60));
        w.observe(api("2.0.0", 123), at(120));
        assert_eq!(
            w.verdict(at(120)),
            Some(Verdict::Succeeded(Health::Healthy))
        );
    }

    #[test]
    fn zigbee_must_be_seen_during_the_window_on_the_target() {
        let seen = |s: u64, v: &str| Sample::Seen {
            last_seen: Some(at(s)),
            version: Some(v.into()),
        };
        let mut w = watch(Observation::Presence, false);
        w.observe(seen(0, "2.0.0"), at(10));
        w.observe(seen(0, "2.0.0"), at(120));
        assert!(
            matches!(w.verdict(at(120)), Some(Verdict::Failed(e)) if e.message == "zigbee2mqtt did not see the device during its 2 min health window")
        );
        let mut w = watch(Observation::Presence, false);
        w.observe(seen(30, "2.0.0"), at(40));
        assert_eq!(w.verdict(at(40)), None);
        w.observe(seen(30, "2.0.0"), at(120));
        assert_eq!(
            w.verdict(at(120)),
            Some(Verdict::Succeeded(Health::Healthy))
        );
        let mut w = watch(Observation::Presence, false);
        w.observe(seen(30, "1.0.0"), at(40));
        assert!(
            matches!(w.verdict(at(40)), Some(Verdict::Failed(e)) if e.message == "the device rolled back to 1.0.0")
        );
    }

    #[test]
    fn devices_without_an_api_are_unconfirmed_unless_reachability_is_accepted() {
        let w = watch(Observation::Reachability, false);
        assert_eq!(
            w.verdict(at(0)),
            Some(Verdict::Succeeded(Health::Unconfirmed))
        );
        let mut w = watch(Observation::Reachability, true);
        w.observe(Sample::Reachable(true), at(0));
        assert_eq!(w.verdict(at(60)), None);
        w.observe(Sample::Reachable(true), at(120));
        assert_eq!(
            w.verdict(at(120)),
            Some(Verdict::Succeeded(Health::Reachable))
        );
        let mut w = watch(Observation::Reachability, true);
        w.observe(Sample::Reachable(false), at(120));
        assert!(matches!(w.verdict(at(120)), Some(Verdict::Failed(_))));
        assert!(!Health::Unconfirmed.is_success());
        assert!(Health::Reachable.is_success() && Health::NotChecked.is_success());
    }

    #[test]
    fn policy_windows_and_words() {
        let p = HealthPolicy::default();
        assert_eq!(p.window_s(Transport::Esphome), 120);
        assert_eq!(p.window_s(Transport::Serial), 120);
        assert_eq!(p.window_s(Transport::Zigbee2Mqtt), 600);
        assert_eq!(
            p.describe(),
            "ESPHome 2 min, Zigbee 10 min; devices without an API end unconfirmed"
        );
        assert!(HealthPolicy::OFF.describe().starts_with("off"));
    }
}

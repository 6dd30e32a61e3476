//! Planning: which devices a rollout targets, which stage each one falls in, which are left out
//! and why, and about how long it takes. Used by `RolloutService.Plan` (a dry run) and by
//! `Start`, which records the result in `RolloutStarted`.
//!
//! # Targets and exclusions
//! The selector is applied to the fleet (see [`crate::rollout::select`]). A selected device is
//! left out, with a code and a reason, when:
//! - its site no longer reports it (5012) — listed when the selector names it explicitly; other
//!   removed devices are only counted in a warning, so an old fleet's history does not flood
//!   every plan;
//! - the selector names a device no site ever reported (5099);
//! - the firmware does not fit it: manufacturer code, image type, hardware version, chip, no
//!   OTA support, wrong transport (5013);
//! - it already runs the firmware's version (5000);
//! - it runs a newer version and the spec does not allow downgrades (5013).
//!
//! A rollback (`spec.reverts`) checks each device against its own previous image and lists the
//! devices whose previous image is not in the catalog (5001, resolved when it was created).
//!
//! # Stage assignment
//! Targets are ordered so that every stage spreads over the sites: devices are sorted by
//! (network, id) within their site, then taken round-robin across the sites in site-id order.
//! A canary of N devices therefore lands on N different sites when there are that many, and
//! each later wave takes a similar share of every site. The order is deterministic: the same
//! fleet and spec give the same plan.
//!
//! A stage sized `count` takes the next `count` devices; a stage sized `cumulative_percent`
//! takes devices until that share of all targets is reached, rounding up (5 % of 10 devices is 1
//! device, never 0). The last stage takes everything left.
//!
//! # Per-site canaries
//! With `canary_per_site = N` ([`RolloutSpec::canary_per_site`]) the first stage is exactly the
//! per-site picks ([`canaries`]): N targets from every *canary group*, a site's transport
//! instance (each zigbee2mqtt network; a site's ESPHome devices; each serial port), or every
//! target of a group that has fewer. So every site and every zigbee2mqtt network has canaries,
//! and a problem of one site (its Wi-Fi, its zigbee2mqtt version) shows before the waves. The
//! first stage's own size is not used (the API refuses a spec that sets both). Within a group the
//! canaries are the devices most likely to answer at once: mains-powered before unknown before
//! battery, reachable before unreachable, stronger signal before weaker, then by id; the stage
//! dispatches them round-robin over the groups (sites in id order, then transport, network).
//! The later stages cut the remaining targets, spread across the sites as above; their
//! cumulative percentages still count all targets, canaries included.
//!
//! # Estimate
//! Each stage is simulated with greedy list scheduling under the spec's concurrency limits
//! (global, per site, per zigbee2mqtt network, ESPHome devices per site). A device takes the
//! median transfer time of the past successful updates of its model over its transport, learned
//! from the log ([`crate::rollout::eta`], kept in the projection); a kind with no past update
//! takes the typical transfer time of its transport, and the plan's notes say which kinds did:
//! - Zigbee (zigbee2mqtt): [`ZIGBEE_TRANSFER_S`] = 20 min per device (seen: 10–30 min; the
//!   radio is shared, so zigbee2mqtt advises one device per network at a time);
//! - ESPHome (network OTA): [`ESPHOME_TRANSFER_S`] = 1 min;
//! - serial (ROM bootloader): [`SERIAL_TRANSFER_S`] = 1 min.
//!
//! A rollout's rate ([`crate::rollout::rate`]) paces the simulated starts the same way the
//! dispatcher does (a sliding minute; a ramp steps up as the simulated devices succeed, every
//! device of earlier stages counted as a success).
//!
//! A stage ends when its last device has stayed healthy for its health window
//! ([`crate::health`]): the longest window among the stage's transports is added to it.
//!
//! A stage with a deadline is estimated at most at its deadline (unfinished devices time out
//! then). The rollout's estimate is the batch-check timeout (when a batch check runs) plus, per
//! stage, its estimate and its soak time. Time outside a maintenance window is not counted; a
//! warning says so. The makespan ([`Plan::makespan_s`]) is that working time stretched by the
//! window from the time of planning ([`plan_at`]), for the site where that takes longest. The
//! Zigbee airtime ([`Plan::airtime`]) is the sum of the expected Zigbee transfer seconds per
//! (site, zigbee2mqtt network), which shows how much of the makespan each radio is busy.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use crate::events::{Exclusion, FirmwareRegistered, PlannedStage, RolloutStarted};
use crate::model::{PowerSource, Signal, Transport};
use crate::projection::{DeviceView, FleetState};
use crate::rollout::eta;
use crate::rollout::rate::{self, Allowance, Rate};
use crate::rollout::rollback::RollbackScope;
use crate::rollout::select;
use crate::rollout::spec::{
    Concurrency, RolloutSpec, StageSize, Threshold, UpgradeType, default_device_timeout_s,
};
use crate::rollout::window;
use crate::status::ErrorCode;
use crate::tasks::{firmware_fits, is_downgrade, is_on_target, target_version};
use crate::time::UnixMillis;

/// Typical time to update one Zigbee device, seconds.
pub const ZIGBEE_TRANSFER_S: u64 = 20 * 60;
/// Typical time to update one ESPHome device over the network, seconds.
pub const ESPHOME_TRANSFER_S: u64 = 60;
/// Typical time to flash one device on a serial port, seconds.
pub const SERIAL_TRANSFER_S: u64 = 60;

/// Typical update time for a transport (unknown transports count as ESPHome).
pub fn typical_transfer_s(t: Option<Transport>) -> u64 {
    match t {
        Some(Transport::Zigbee2Mqtt) => ZIGBEE_TRANSFER_S,
        Some(Transport::Serial) => SERIAL_TRANSFER_S,
        Some(Transport::Esphome) | None => ESPHOME_TRANSFER_S,
    }
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    /// Stage name.
    pub name: String,
    /// Devices, in dispatch order.
    pub device_ids: Vec<String>,
    /// Estimated duration of the stage (without soak), seconds.
    pub estimated_s: u64,
    /// The per-site canaries, by group, when this stage is filled by `canary_per_site` (the
    /// first stage); empty otherwise.
    pub canaries: Vec<CanaryGroup>,
}

/// The canaries of one canary group: a transport instance of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryGroup {
    /// Site.
    pub site_id: String,
    /// Transport of the instance.
    pub transport: Option<Transport>,
    /// Transport instance (the zigbee2mqtt network, the ESPHome instance, the serial port).
    pub network: String,
    /// The canaries, best first (at most `canary_per_site`).
    pub device_ids: Vec<String>,
    /// Targets the group has (fewer than `canary_per_site`: all of them are canaries).
    pub available: u32,
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Stages with their devices.
    pub stages: Vec<StagePlan>,
    /// Devices left out, with why, ordered by device id.
    pub exclusions: Vec<Exclusion>,
    /// Things the operator should know.
    pub warnings: Vec<String>,
    /// The rollout-wide policies in effect, one line each ("abort criterion 1: …").
    pub policies: Vec<String>,
    /// Devices that will get a task (the sum of the stages).
    pub target_count: u32,
    /// Estimated duration of the whole rollout, seconds of working time (batch check, stages
    /// paced by the rate, soaks).
    pub estimated_s: u64,
    /// The expected makespan: [`Self::estimated_s`] stretched by the maintenance window from
    /// the time of planning (the slowest site's zone); `None` when the window never opens.
    /// Without a time of planning ([`plan`]) the window is not applied.
    pub makespan_s: Option<u64>,
    /// How each kind of device (model, transport) among the targets was estimated: the median
    /// of its past updates, or the transport's fixed guess ([`eta::TransferEstimate::note`]).
    pub notes: Vec<String>,
    /// Zigbee airtime per network: the targets' Zigbee transfer seconds, by (site, network).
    pub airtime: Vec<ZigbeeAirtime>,
}

/// The Zigbee transfer time a plan spends on one zigbee2mqtt network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZigbeeAirtime {
    /// Site.
    pub site_id: String,
    /// The zigbee2mqtt network.
    pub network: String,
    /// Sum of the expected transfer seconds of its targets.
    pub airtime_s: u64,
}

impl ZigbeeAirtime {
    /// Its share of a makespan, percent (0 for an empty makespan).
    pub fn share_percent(&self, makespan_s: u64) -> f64 {
        if makespan_s == 0 {
            0.0
        } else {
            self.airtime_s as f64 * 100.0 / makespan_s as f64
        }
    }
}

impl Plan {
    /// The events that fix this plan when the rollout starts, to append together: one
    /// `RolloutStarted`, followed by `RolloutPlanContinued` events when the plan is too large
    /// for one event ([`crate::events::split`]).
    pub fn started_events(&self) -> Vec<crate::events::DomainEvent> {
        self.started_event().into_events()
    }

    /// The plan as one `RolloutStarted`, however large (split by [`Plan::started_events`]).
    pub(crate) fn started_event(&self) -> RolloutStarted {
        RolloutStarted {
            stages: self
                .stages
                .iter()
                .map(|s| PlannedStage {
                    name: s.name.clone(),
                    device_ids: s.device_ids.clone(),
                })
                .collect(),
            exclusions: self.exclusions.clone(),
        }
    }
}

/// Why a live device selected by the spec cannot take the firmware, or `None`.
pub fn exclusion_reason(
    spec: &RolloutSpec,
    fw: &FirmwareRegistered,
    d: &DeviceView,
) -> Option<(ErrorCode, String)> {
    if d.removed {
        return Some((
            ErrorCode::Offline,
            "its site no longer reports this device".into(),
        ));
    }
    if let Err(why) = firmware_fits(fw, &d.facts) {
        return Some((ErrorCode::PrevalidationFailed, why));
    }
    if is_on_target(fw, &d.facts) {
        return Some((
            ErrorCode::AlreadyOnTarget,
            format!("already on {}", target_version(fw).version),
        ));
    }
    if is_downgrade(fw, &d.facts) && !spec.allow_downgrade {
        return Some((
            ErrorCode::PrevalidationFailed,
            format!(
                "runs {}, newer than {}: a downgrade must be requested explicitly (allow_downgrade)",
                d.facts.current.version,
                target_version(fw).version
            ),
        ));
    }
    None
}

fn exclusion(device_id: &str, code: ErrorCode, reason: impl Into<String>) -> Exclusion {
    Exclusion {
        device_id: device_id.to_string(),
        code,
        reason: reason.into(),
    }
}

/// Share of `total` reached by a cumulative percentage, rounded up.
fn cumulative(total: usize, percent: f64) -> usize {
    Threshold::Percent(percent).of(total as u32) as usize
}

/// Devices in each stage, for `total` ordered targets.
pub fn stage_sizes(sizes: &[StageSize], total: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(sizes.len());
    let mut assigned = 0usize;
    for (i, size) in sizes.iter().enumerate() {
        let left = total - assigned;
        let want = if i + 1 == sizes.len() {
            left
        } else {
            match *size {
                StageSize::Count(c) => c as usize,
                StageSize::CumulativePercent(p) => cumulative(total, p).saturating_sub(assigned),
            }
        };
        let n = want.min(left);
        out.push(n);
        assigned += n;
    }
    out
}

/// Orders targets round-robin across sites (site ids ascending), by (network, id) within a site.
pub fn spread_across_sites<'a>(targets: &[&'a DeviceView]) -> Vec<&'a DeviceView> {
    let mut by_site: BTreeMap<&str, Vec<&'a DeviceView>> = BTreeMap::new();
    for d in targets {
        by_site.entry(d.site_id.as_str()).or_default().push(d);
    }
    for list in by_site.values_mut() {
        list.sort_by(|a, b| (&a.facts.network, &a.id).cmp(&(&b.facts.network, &b.id)));
    }
    let mut queues: Vec<std::vec::IntoIter<&'a DeviceView>> =
        by_site.into_values().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(targets.len());
    loop {
        let before = out.len();
        for q in &mut queues {
            if let Some(d) = q.next() {
                out.push(d);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// How a rollout's rate paces the starts of a simulated stage.
#[derive(Debug, Clone, Copy)]
pub struct Pace<'a> {
    /// The rollout's rate.
    pub rate: &'a Rate,
    /// The rollout's targets (for a ramp stepped by a share of them).
    pub targets: u32,
    /// Devices of earlier stages, all assumed to succeed (the ramp goes on from there).
    pub succeeded_before: u32,
}

impl Pace<'_> {
    /// What the rate allows at `now_s` (seconds into the stage) after `starts` and `done`
    /// successes in the stage.
    fn allowance(&self, starts: &[u64], done: u32, now_s: u64) -> Allowance {
        let ms = |s: u64| {
            UnixMillis::from_unix_ms(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
        };
        rate::allowance(
            self.rate,
            starts.iter().map(|s| ms(*s)),
            self.succeeded_before.saturating_add(done),
            self.targets,
            ms(now_s),
        )
    }
}

/// How likely a device is to take an update at once, for choosing canaries: smaller is better.
/// Mains before unknown before battery power, reachable first, stronger signal first (link
/// quality and RSSI are compared within a group, which has one transport), then by id.
fn canary_rank(d: &DeviceView) -> (u8, bool, Reverse<i32>, &str) {
    let power = match d.facts.power_source {
        PowerSource::Mains => 0,
        PowerSource::Unknown => 1,
        PowerSource::Battery => 2,
    };
    let signal = match d.facts.signal {
        Some(Signal::LinkQuality(q)) => i32::from(q),
        Some(Signal::RssiDbm(r)) => i32::from(r),
        None => i32::MIN,
    };
    (power, !d.facts.reachable, Reverse(signal), d.id.as_str())
}

/// The per-site canaries: up to `per_group` targets of every canary group (a site's transport
/// instance), best first (see the module docs), groups by (site, transport, network). Pure and
/// deterministic: the input order does not matter.
pub fn canaries(targets: &[&DeviceView], per_group: u32) -> Vec<CanaryGroup> {
    let mut groups: BTreeMap<(&str, Option<Transport>, &str), Vec<&DeviceView>> = BTreeMap::new();
    for d in targets {
        groups
            .entry((
                d.site_id.as_str(),
                d.facts.transport,
                d.facts.network.as_str(),
            ))
            .or_default()
            .push(d);
    }
    groups
        .into_iter()
        .map(|((site, transport, network), mut list)| {
            list.sort_by(|a, b| canary_rank(a).cmp(&canary_rank(b)));
            CanaryGroup {
                site_id: site.to_string(),
                transport,
                network: network.to_string(),
                available: list.len() as u32,
                device_ids: list
                    .iter()
                    .take(per_group as usize)
                    .map(|d| d.id.clone())
                    .collect(),
            }
        })
        .collect()
}

/// Targets in stage order and the canary groups: with per-site canaries, the canaries
/// round-robin over their groups first, then the rest spread across the sites; otherwise all
/// targets spread across the sites.
fn order_targets<'a>(
    spec: &RolloutSpec,
    targets: &[&'a DeviceView],
) -> (Vec<&'a DeviceView>, Vec<CanaryGroup>) {
    if spec.canary_per_site == 0 {
        return (spread_across_sites(targets), Vec::new());
    }
    let groups = canaries(targets, spec.canary_per_site);
    let by_id: HashMap<&str, &'a DeviceView> =
        targets.iter().map(|d| (d.id.as_str(), *d)).collect();
    let mut ordered: Vec<&'a DeviceView> = Vec::with_capacity(targets.len());
    let depth = groups.iter().map(|g| g.device_ids.len()).max().unwrap_or(0);
    for rank in 0..depth {
        for g in &groups {
            if let Some(d) = g.device_ids.get(rank).and_then(|id| by_id.get(id.as_str())) {
                ordered.push(d);
            }
        }
    }
    let picked: HashSet<&str> = ordered.iter().map(|d| d.id.as_str()).collect();
    let rest: Vec<&'a DeviceView> = targets
        .iter()
        .copied()
        .filter(|d| !picked.contains(d.id.as_str()))
        .collect();
    ordered.extend(spread_across_sites(&rest));
    (ordered, groups)
}

/// How long one device's transfer is expected to take, seconds.
pub type TransferS<'a> = &'a dyn Fn(&DeviceView) -> u64;

/// The typical transfer time of the device's transport (the fixed guess, nothing learned).
pub fn typical(d: &DeviceView) -> u64 {
    typical_transfer_s(d.facts.transport)
}

/// Estimated time to update `devices` under `limits`, seconds: greedy list scheduling with
/// each device taking `duration` (the learned median or the typical guess, see [`eta`]).
pub fn estimate_s(devices: &[&DeviceView], limits: &Concurrency, duration: TransferS<'_>) -> u64 {
    estimate_paced_s(devices, limits, None, duration)
}

/// [`estimate_s`], with the starts also paced by a rollout's rate (and its ramp, every device
/// assumed to succeed).
pub fn estimate_paced_s(
    devices: &[&DeviceView],
    limits: &Concurrency,
    pace: Option<Pace<'_>>,
    duration: TransferS<'_>,
) -> u64 {
    let mut sim = Simulation::new(devices, limits, duration);
    let mut now = 0u64;
    let mut starts: Vec<u64> = Vec::new();
    let mut done = 0u32;
    loop {
        let allowed = pace.map(|p| p.allowance(&starts, done, now));
        let mut budget = allowed.as_ref().map_or(u32::MAX, |a| a.allowed);
        let started = sim.start_what_fits(now, &mut budget);
        starts.extend(std::iter::repeat_n(now, started as usize));
        starts.retain(|s| s + 60 > now);
        let next_slot = match (pace, sim.waiting()) {
            (Some(p), true) if budget == 0 => p
                .allowance(&starts, done, now)
                .next_slot_at
                .map(|at| u64::try_from(at.as_i64() / 1000).unwrap_or(u64::MAX)),
            _ => None,
        };
        let next_end = sim.next_end();
        let Some(at) = [next_end, next_slot].into_iter().flatten().min() else {
            break;
        };
        now = at;
        if next_end == Some(at) {
            done += sim.finish_at(at);
        }
    }
    now
}

/// Devices with the same site, transport and network are interchangeable for the limits.
#[derive(Debug)]
struct Class {
    site: usize,
    network: Option<usize>,
    esphome: bool,
    remaining: u32,
    duration: u64,
}

/// The greedy list scheduling of one stage: classes of devices, the slots they hold, and when
/// the running ones end.
struct Simulation {
    classes: Vec<Class>,
    limits: Concurrency,
    running_global: u32,
    running_site: Vec<u32>,
    running_esphome: Vec<u32>,
    running_network: Vec<u32>,
    ends: BinaryHeap<Reverse<(u64, usize)>>,
}

impl Simulation {
    fn new(devices: &[&DeviceView], limits: &Concurrency, duration: TransferS<'_>) -> Self {
        let mut sites: HashMap<&str, usize> = HashMap::new();
        let mut networks: HashMap<(&str, &str), usize> = HashMap::new();
        let mut classes: BTreeMap<(&str, u8, &str, u64), Class> = BTreeMap::new();
        for d in devices {
            let next_site = sites.len();
            let site = *sites.entry(d.site_id.as_str()).or_insert(next_site);
            let t = d.facts.transport;
            let network = (t == Some(Transport::Zigbee2Mqtt)).then(|| {
                let next = networks.len();
                *networks
                    .entry((d.site_id.as_str(), d.facts.network.as_str()))
                    .or_insert(next)
            });
            let tag = match t {
                Some(Transport::Zigbee2Mqtt) => 0,
                Some(Transport::Esphome) => 1,
                Some(Transport::Serial) => 2,
                None => 3,
            };
            let took = duration(d).max(1);
            classes
                .entry((d.site_id.as_str(), tag, d.facts.network.as_str(), took))
                .or_insert(Class {
                    site,
                    network,
                    esphome: t == Some(Transport::Esphome),
                    remaining: 0,
                    duration: took,
                })
                .remaining += 1;
        }
        Self {
            classes: classes.into_values().collect(),
            limits: *limits,
            running_global: 0,
            running_site: vec![0; sites.len()],
            running_esphome: vec![0; sites.len()],
            running_network: vec![0; networks.len()],
            ends: BinaryHeap::new(),
        }
    }

    fn fits(&self, c: &Class) -> bool {
        let lim = |v: u32| v.max(1);
        let l = &self.limits;
        c.remaining > 0
            && self.running_global < lim(l.global)
            && self.running_site[c.site] < lim(l.per_site)
            && c.network
                .is_none_or(|n| self.running_network[n] < lim(l.per_zigbee_network))
            && (!c.esphome || self.running_esphome[c.site] < lim(l.per_esphome_site))
    }

    /// Starts at `now` every device the limits and `budget` let start; returns how many.
    fn start_what_fits(&mut self, now: u64, budget: &mut u32) -> u32 {
        let mut started = 0;
        for i in 0..self.classes.len() {
            while *budget > 0 && self.fits(&self.classes[i]) {
                *budget -= 1;
                started += 1;
                let c = &mut self.classes[i];
                c.remaining -= 1;
                let (site, network, esphome, duration) = (c.site, c.network, c.esphome, c.duration);
                self.running_global += 1;
                self.running_site[site] += 1;
                if let Some(n) = network {
                    self.running_network[n] += 1;
                }
                if esphome {
                    self.running_esphome[site] += 1;
                }
                self.ends.push(Reverse((now + duration, i)));
            }
        }
        started
    }

    /// Devices not started yet.
    fn waiting(&self) -> bool {
        self.classes.iter().any(|c| c.remaining > 0)
    }

    fn next_end(&self) -> Option<u64> {
        self.ends.peek().map(|Reverse((at, _))| *at)
    }

    /// Ends the devices that end at `at`; returns how many.
    fn finish_at(&mut self, at: u64) -> u32 {
        let mut n = 0;
        while let Some(Reverse((end, i))) = self.ends.peek().copied() {
            if end != at {
                break;
            }
            self.ends.pop();
            n += 1;
            let c = &self.classes[i];
            self.running_global -= 1;
            self.running_site[c.site] -= 1;
            if let Some(n) = c.network {
                self.running_network[n] -= 1;
            }
            if c.esphome {
                self.running_esphome[c.site] -= 1;
            }
        }
        n
    }
}

fn duration(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s.div_ceil(60)),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// The rollout-wide policies of `spec` in words: the rate, the per-site canaries, the abort
/// criteria in the order they are checked, rollback, then the health window.
pub fn policies(spec: &RolloutSpec) -> Vec<String> {
    let mut out: Vec<String> = spec
        .rate
        .iter()
        .map(|r| format!("rate: at most {r}"))
        .collect();
    if spec.canary_per_site > 0
        && let Some(first) = spec.stages.first()
    {
        out.push(format!(
            "canaries: stage {} takes {} device(s) from every site and zigbee2mqtt network",
            first.name, spec.canary_per_site
        ));
    }
    out.extend(
        spec.abort_criteria
            .iter()
            .enumerate()
            .map(|(i, c)| format!("abort criterion {}: {c}", i + 1)),
    );
    if spec.rollback != RollbackScope::None {
        out.push(format!(
            "rollback: when a threshold or criterion stops the rollout, otad reverts its {} devices to the image each ran before",
            match spec.rollback {
                RollbackScope::All => "failed and updated",
                _ => "failed",
            }
        ));
    }
    if let Some(r) = &spec.reverts {
        out.push(format!(
            "reverts rollout {} ({} devices): each device gets the image it ran before, downgrades allowed",
            r.rollout_id,
            r.scope.name()
        ));
    }
    out.push(format!("health window: {}", spec.health.describe()));
    out
}

/// Plans `spec` against today's fleet, without a time of planning (the makespan ignores the
/// maintenance window). Pure: the same state gives the same plan.
pub fn plan(spec: &RolloutSpec, state: &FleetState) -> Plan {
    plan_at(spec, state, None)
}

/// Plans `spec` against today's fleet at `now` (when given, the makespan is stretched by the
/// maintenance window from then). Pure: the same state and `now` give the same plan.
pub fn plan_at(spec: &RolloutSpec, state: &FleetState, now: Option<UnixMillis>) -> Plan {
    let mut warnings = Vec::new();
    if spec.reverts.is_none() && select::is_empty(&spec.selector) {
        warnings.push("the selector is empty: it selects every device of the fleet".into());
    }
    if spec.reverts.is_none() && !state.firmware.contains_key(&spec.firmware_id) {
        warnings.push(format!(
            "firmware {} is not in the catalog: nothing can be installed",
            spec.firmware_id
        ));
    }
    let (targets, exclusions) = select_targets(spec, state, &mut warnings);
    let (ordered, canary_groups) = order_targets(spec, &targets);
    let canary_count = canary_groups.iter().map(|g| g.device_ids.len()).sum();
    let kinds = eta::Estimates::learn(&state.transfer_times, &ordered);
    let per_device = |d: &DeviceView| kinds.seconds(d);
    let (mut stages, estimated_s) =
        plan_stages(spec, &ordered, canary_count, &per_device, &mut warnings);
    if let Some(first) = stages.first_mut() {
        first.canaries = canary_groups;
    }
    target_warnings(spec, state, &ordered, &mut warnings);
    let check_only = spec.upgrade_type == UpgradeType::Check;
    Plan {
        policies: policies(spec),
        target_count: ordered.len() as u32,
        makespan_s: makespan_s(spec, state, &ordered, estimated_s, now),
        notes: if check_only {
            Vec::new()
        } else {
            kinds.notes()
        },
        airtime: if check_only {
            Vec::new()
        } else {
            airtime(&ordered, &per_device)
        },
        stages,
        exclusions,
        warnings,
        estimated_s,
    }
}

/// The Zigbee transfer seconds of the targets per (site, network).
fn airtime(targets: &[&DeviceView], per_device: TransferS<'_>) -> Vec<ZigbeeAirtime> {
    let mut by_network: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for d in targets {
        if d.facts.transport == Some(Transport::Zigbee2Mqtt) {
            *by_network
                .entry((d.site_id.as_str(), d.facts.network.as_str()))
                .or_default() += per_device(d);
        }
    }
    by_network
        .into_iter()
        .map(|((site, network), airtime_s)| ZigbeeAirtime {
            site_id: site.to_string(),
            network: network.to_string(),
            airtime_s,
        })
        .collect()
}

/// The working time stretched by the maintenance window from `now`, for the target site whose
/// window makes it longest (UTC when there are no targets); `None`: the window never opens.
pub(crate) fn makespan_s(
    spec: &RolloutSpec,
    state: &FleetState,
    targets: &[&DeviceView],
    working_s: u64,
    now: Option<UnixMillis>,
) -> Option<u64> {
    let (Some(w), Some(now)) = (&spec.window, now) else {
        return Some(working_s);
    };
    let mut sites: Vec<&str> = targets.iter().map(|d| d.site_id.as_str()).collect();
    sites.sort_unstable();
    sites.dedup();
    if sites.is_empty() {
        return eta::wall_clock_s(working_s, Some(w), window::SiteZone::Offset(0), now);
    }
    let mut longest = 0;
    for site in sites {
        let zone = window::site_zone(state, Some(spec), site);
        longest = longest.max(eta::wall_clock_s(working_s, Some(w), zone, now)?);
    }
    Some(longest)
}

/// The devices the selector matches that can take the firmware, and the exclusions (sorted by
/// device) of those that cannot or that no site reports.
fn select_targets<'a>(
    spec: &RolloutSpec,
    state: &'a FleetState,
    warnings: &mut Vec<String>,
) -> (Vec<&'a DeviceView>, Vec<Exclusion>) {
    let sel = &spec.selector;
    // A rollback lists the devices whose previous image is not in the catalog.
    let mut exclusions: Vec<Exclusion> = spec
        .reverts
        .as_ref()
        .map(|r| r.excluded.clone())
        .unwrap_or_default();
    let named: HashSet<&str> = sel.device_ids.iter().map(String::as_str).collect();
    for id in &sel.device_ids {
        if !state.devices.contains_key(id) && !sel.exclude_device_ids.contains(id) {
            exclusions.push(exclusion(
                id,
                ErrorCode::Other,
                "no site has reported this device",
            ));
        }
    }
    let mut removed_unnamed = 0usize;
    let mut targets: Vec<&DeviceView> = Vec::new();
    for d in state.devices.values().map(Box::as_ref) {
        // A rollback targets its map's devices only (an empty map selects nothing).
        let reverted = spec
            .reverts
            .as_ref()
            .is_none_or(|r| r.firmware.contains_key(&d.id));
        if !reverted || !select::matches_ignoring_removal(sel, d) {
            continue;
        }
        if d.removed && !named.contains(d.id.as_str()) {
            removed_unnamed += 1;
            continue;
        }
        let firmware_id = spec.firmware_for(&d.id);
        let reason = match state.firmware.get(firmware_id).map(|f| &f.registered) {
            None => Some((
                ErrorCode::NoFirmware,
                format!("firmware {firmware_id} is not in the catalog"),
            )),
            Some(fw) => exclusion_reason(spec, fw, d),
        };
        match reason {
            Some((code, why)) => exclusions.push(exclusion(&d.id, code, why)),
            None => targets.push(d),
        }
    }
    exclusions.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    if removed_unnamed > 0 {
        warnings.push(format!(
            "{removed_unnamed} device(s) the selector matches are no longer reported by their sites and are left out"
        ));
    }

    (targets, exclusions)
}

/// The stages cut from the ordered targets, each with its estimate, and the whole estimate
/// (batch check, stages, soaks). With per-site canaries the first stage is the canaries, the
/// first `canary_count` of `ordered`.
fn plan_stages(
    spec: &RolloutSpec,
    ordered: &[&DeviceView],
    canary_count: usize,
    per_device: TransferS<'_>,
    warnings: &mut Vec<String>,
) -> (Vec<StagePlan>, u64) {
    let mut sizes: Vec<StageSize> = spec.stages.iter().map(|s| s.size).collect();
    if spec.canary_per_site > 0
        && let Some(first) = sizes.first_mut()
    {
        *first = StageSize::Count(canary_count as u32);
    }
    let counts = stage_sizes(&sizes, ordered.len());
    let check_only = spec.upgrade_type == UpgradeType::Check;
    let mut stages = Vec::with_capacity(spec.stages.len());
    let mut at = 0usize;
    let mut total_s: u64 = if spec.batch_check || check_only {
        u64::from(spec.batch_check_timeout_s)
    } else {
        0
    };
    for (stage, n) in spec.stages.iter().zip(counts) {
        let devices = &ordered[at..at + n];
        at += n;
        let pace = spec.rate.as_ref().map(|rate| Pace {
            rate,
            targets: u32::try_from(ordered.len()).unwrap_or(u32::MAX),
            succeeded_before: u32::try_from(at - n).unwrap_or(u32::MAX),
        });
        let simulated = if check_only {
            0
        } else {
            estimate_paced_s(devices, &spec.concurrency, pace, per_device)
                + verification_s(spec, devices)
        };
        let deadline = u64::from(stage.deadline_s);
        let estimated_s = if deadline > 0 {
            simulated.min(deadline)
        } else {
            simulated
        };
        if !check_only {
            if n == 0 && !ordered.is_empty() {
                warnings.push(format!(
                    "stage {} gets no devices: the stages before it already reach all {} targets",
                    stage.name,
                    ordered.len()
                ));
            }
            if deadline > 0 && simulated > deadline {
                warnings.push(format!(
                    "stage {} needs about {} at the concurrency limits, but its deadline is {}: devices not finished by then time out (5016)",
                    stage.name,
                    duration(simulated),
                    duration(deadline)
                ));
            }
            total_s += estimated_s + u64::from(stage.soak_s);
        }
        stages.push(StagePlan {
            name: stage.name.clone(),
            device_ids: devices.iter().map(|d| d.id.clone()).collect(),
            estimated_s,
            canaries: Vec::new(),
        });
    }

    (stages, total_s)
}

/// The longest health window among `devices`' transports: the last device of a stage verifies
/// after its transfer.
pub(crate) fn verification_s(spec: &RolloutSpec, devices: &[&DeviceView]) -> u64 {
    devices
        .iter()
        .filter_map(|d| d.facts.transport)
        .map(|t| u64::from(spec.health.window_s(t)))
        .max()
        .unwrap_or(0)
}

/// Warnings about the targets as a whole: none, sleepy devices, short timeouts, the window.
fn target_warnings(
    spec: &RolloutSpec,
    state: &FleetState,
    ordered: &[&DeviceView],
    warnings: &mut Vec<String>,
) {
    let check_only = spec.upgrade_type == UpgradeType::Check;
    if ordered.is_empty() {
        warnings.push(
            "no device needs this firmware: the rollout would complete without updating anything"
                .into(),
        );
    }
    if check_only {
        warnings.push(
            "upgrade type check: the rollout runs the batch check only and installs nothing".into(),
        );
    }
    if !check_only {
        let sleepy = ordered
            .iter()
            .filter(|d| {
                d.facts.transport == Some(Transport::Zigbee2Mqtt)
                    && d.facts.power_source == PowerSource::Battery
            })
            .count();
        if sleepy > 0 {
            warnings.push(format!(
                "{sleepy} battery-powered Zigbee device(s) update when they next wake up: their timing is not predictable"
            ));
        }
        if spec.device_timeout_s > 0
            && ordered.iter().any(|d| {
                d.facts.transport == Some(Transport::Zigbee2Mqtt)
                    && u64::from(spec.device_timeout_s) < ZIGBEE_TRANSFER_S
            })
        {
            warnings.push(format!(
                "the per-device timeout ({}) is shorter than a typical Zigbee update ({}; default timeout {})",
                duration(u64::from(spec.device_timeout_s)),
                duration(ZIGBEE_TRANSFER_S),
                duration(u64::from(default_device_timeout_s(Transport::Zigbee2Mqtt)))
            ));
        }
    }
    if let Some(w) = &spec.window {
        let per_week = window::open_minutes_per_week(w);
        warnings.push(format!(
            "updates start only inside the maintenance window {} (each site's local time, from the UTC offset its agent reports): about {:.1} h per week; the estimate counts working time only",
            window::describe(w),
            f64::from(per_week) / 60.0
        ));
        if per_week == 0 {
            warnings.push("the maintenance window never opens".into());
        }
        let mut unknown: Vec<&str> = ordered
            .iter()
            .map(|d| d.site_id.as_str())
            .filter(|s| !state.sites.contains_key(*s))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            warnings.push(format!(
                "site(s) {} have not reported their time zone: their window is taken in UTC",
                unknown.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceFacts, VersionInfo};

    fn device(id: &str, transport: Transport, network: &str) -> DeviceView {
        let facts = DeviceFacts {
            transport: Some(transport),
            network: network.into(),
            current: VersionInfo {
                version: "1.0.0".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        crate::fixture::device_view(id, facts)
    }

    #[test]
    fn cumulative_percentages_round_up_and_the_last_stage_takes_the_rest() {
        use StageSize::*;
        assert_eq!(
            stage_sizes(
                &[
                    Count(1),
                    CumulativePercent(5.0),
                    CumulativePercent(25.0),
                    CumulativePercent(100.0)
                ],
                100
            ),
            [1, 4, 20, 75]
        );
        // 5 % of 10 devices is 1 device, which the canary already covers.
        assert_eq!(
            stage_sizes(
                &[Count(1), CumulativePercent(5.0), CumulativePercent(100.0)],
                10
            ),
            [1, 0, 9]
        );
        assert_eq!(
            stage_sizes(&[Count(5), Count(5), CumulativePercent(100.0)], 3),
            [3, 0, 0]
        );
        assert_eq!(stage_sizes(&[CumulativePercent(100.0)], 0), [0]);
    }

    #[test]
    fn sites_are_spread_round_robin() {
        let a1 = device("a/1", Transport::Esphome, "esphome");
        let a2 = device("a/2", Transport::Esphome, "esphome");
        let a3 = device("a/3", Transport::Esphome, "esphome");
        let b1 = device("b/1", Transport::Esphome, "esphome");
        let c1 = device("c/1", Transport::Esphome, "esphome");
        let c2 = device("c/2", Transport::Esphome, "esphome");
        let ordered = spread_across_sites(&[&c2, &a3, &a1, &b1, &c1, &a2]);
        let ids: Vec<&str> = ordered.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a/1", "b/1", "c/1", "a/2", "c/2", "a/3"]);
    }

    #[test]
    fn estimates_follow_the_limits() {
        let limits = Concurrency::default(); // 50 global, 10 per site, 1 per zigbee network, 4 esphome per site
        // 6 Zigbee devices on one network: strictly one after the other.
        let z: Vec<DeviceView> = (0..6)
            .map(|i| device(&format!("a/z{i}"), Transport::Zigbee2Mqtt, "zb"))
            .collect();
        let refs: Vec<&DeviceView> = z.iter().collect();
        assert_eq!(estimate_s(&refs, &limits, &typical), 6 * ZIGBEE_TRANSFER_S);
        // Two networks halve it.
        let z2: Vec<DeviceView> = (0..6)
            .map(|i| {
                device(
                    &format!("a/z{i}"),
                    Transport::Zigbee2Mqtt,
                    if i % 2 == 0 { "zb1" } else { "zb2" },
                )
            })
            .collect();
        let refs: Vec<&DeviceView> = z2.iter().collect();
        assert_eq!(estimate_s(&refs, &limits, &typical), 3 * ZIGBEE_TRANSFER_S);
        // 10 ESPHome devices at 4 per site: 3 rounds of a minute.
        let e: Vec<DeviceView> = (0..10)
            .map(|i| device(&format!("a/e{i}"), Transport::Esphome, "esphome"))
            .collect();
        let refs: Vec<&DeviceView> = e.iter().collect();
        assert_eq!(estimate_s(&refs, &limits, &typical), 3 * ESPHOME_TRANSFER_S);
        // Mixed on one site with per_site 2: the Zigbee network and ESPHome share two slots.
        let tight = Concurrency {
            per_site: 2,
            ..limits
        };
        let mut mixed: Vec<&DeviceView> = z.iter().take(2).collect();
        mixed.extend(e.iter().take(4));
        // Zigbee one at a time in one slot (2 × 20 min); ESPHome in the other (4 × 1 min).
        assert_eq!(estimate_s(&mixed, &tight, &typical), 2 * ZIGBEE_TRANSFER_S);
        assert_eq!(estimate_s(&[], &limits, &typical), 0);
    }

    #[test]
    fn a_rate_paces_the_estimate() {
        use crate::rollout::rate::{Ramp, RampAfter};
        let wide = Concurrency {
            global: 1000,
            per_site: 1000,
            per_zigbee_network: 1,
            per_esphome_site: 1000,
        };
        let e: Vec<DeviceView> = (0..20)
            .map(|i| device(&format!("a/e{i}"), Transport::Esphome, "esphome"))
            .collect();
        let refs: Vec<&DeviceView> = e.iter().collect();
        assert_eq!(estimate_s(&refs, &wide, &typical), ESPHOME_TRANSFER_S);
        let flat = Rate {
            max_per_minute: 6,
            ramp: None,
        };
        let pace = |rate| Pace {
            rate,
            targets: 20,
            succeeded_before: 0,
        };
        // Starts at 0, 60, 120 and 180 s (6, 6, 6, 2); the last ones take a minute.
        assert_eq!(
            estimate_paced_s(&refs, &wide, Some(pace(&flat)), &typical),
            240
        );
        // A ramp from 1/min, ×2 after every 2 successes, as the minute-long transfers succeed:
        // 1 start at 0 s, 1 at 60 s, 2 at 120 s (2 succeeded), 4 at 180 s (4), the last 12 at
        // 240 s (8 succeeded: 16/min).
        let ramp = Rate {
            max_per_minute: 30,
            ramp: Some(Ramp {
                start_per_minute: 1,
                factor: 2.0,
                after: RampAfter::Successes(2),
            }),
        };
        assert_eq!(
            estimate_paced_s(&refs, &wide, Some(pace(&ramp)), &typical),
            300
        );
        // Devices of earlier stages count as successes: the ramp goes on from there.
        let later = Pace {
            succeeded_before: 8,
            ..pace(&ramp)
        };
        assert_eq!(estimate_paced_s(&refs, &wide, Some(later), &typical), 120);
    }

    mod canaries {
        use super::super::*;
        use crate::events::streams;
        use crate::fixture::{FW, Log, T0, spec, stage, zigbee_device, zigbee_firmware};
        use crate::model::Signal;

        /// Sites a, b, c, each with zigbee2mqtt networks zb1 and zb2 of `per_network` mains
        /// devices (`<site>/<net>-<i>`), and firmware [`FW`] for them.
        fn fleet(per_network: usize) -> Log {
            let mut log = Log::default();
            log.event(T0, &streams::firmware(FW), zigbee_firmware(FW));
            for site in ["a", "b", "c"] {
                for net in ["zb1", "zb2"] {
                    for i in 0..per_network {
                        let id = format!("{site}/{net}-{i}");
                        log.event(T0, &streams::device(&id), zigbee_device(net, false));
                    }
                }
            }
            log
        }

        fn per_site(n: u32) -> RolloutSpec {
            let mut s = spec(vec![
                stage("canary", StageSize::Count(0)),
                stage("half", StageSize::CumulativePercent(50.0)),
                stage("all", StageSize::CumulativePercent(100.0)),
            ]);
            s.canary_per_site = n;
            s
        }

        fn groups(p: &Plan) -> Vec<(String, Vec<String>, u32)> {
            p.stages[0]
                .canaries
                .iter()
                .map(|g| {
                    (
                        format!("{}/{}", g.site_id, g.network),
                        g.device_ids.clone(),
                        g.available,
                    )
                })
                .collect()
        }

        #[test]
        fn the_first_stage_takes_n_from_every_site_and_network() {
            let log = fleet(3);
            let p = plan(&per_site(2), &log.state);
            assert_eq!(p.target_count, 18);
            let g = groups(&p);
            assert_eq!(g.len(), 6, "3 sites × 2 networks");
            for (name, ids, available) in &g {
                assert_eq!(ids.len(), 2, "{name}");
                assert_eq!(*available, 3, "{name}");
                assert!(
                    ids.iter().all(|id| id.starts_with(&format!("{name}-"))),
                    "{name}"
                );
            }
            assert_eq!(
                g[0],
                ("a/zb1".into(), vec!["a/zb1-0".into(), "a/zb1-1".into()], 3)
            );
            assert_eq!(g[5].0, "c/zb2");
            // Dispatch order: the best canary of every group, then the second of every group.
            assert_eq!(
                p.stages[0].device_ids,
                [
                    "a/zb1-0", "a/zb2-0", "b/zb1-0", "b/zb2-0", "c/zb1-0", "c/zb2-0", "a/zb1-1",
                    "a/zb2-1", "b/zb1-1", "b/zb2-1", "c/zb1-1", "c/zb2-1"
                ]
            );
            // The later stages count all 18 targets: 50 % is 9, the canaries already passed it.
            assert!(p.stages[1].device_ids.is_empty());
            assert_eq!(
                p.stages[2].device_ids,
                [
                    "a/zb1-2", "b/zb1-2", "c/zb1-2", "a/zb2-2", "b/zb2-2", "c/zb2-2"
                ]
            );
            assert!(p.stages[1].canaries.is_empty() && p.stages[2].canaries.is_empty());
            assert_eq!(
                p.policies,
                [
                    "canaries: stage canary takes 2 device(s) from every site and zigbee2mqtt network",
                    "health window: off (the first report of the target version is the success)"
                ]
            );
            // The started rollout's first stage is the plan's.
            assert_eq!(
                p.started_event().stages[0].device_ids,
                p.stages[0].device_ids
            );
        }

        #[test]
        fn a_group_with_fewer_devices_than_n_gives_what_it_has() {
            let mut log = fleet(3);
            log.event(T0, &streams::device("d/only"), zigbee_device("zb9", false));
            let p = plan(&per_site(4), &log.state);
            let g = groups(&p);
            assert_eq!(g.len(), 7);
            for (name, ids, available) in &g[..6] {
                assert_eq!((ids.len(), *available), (3, 3), "{name}: all of it");
            }
            assert_eq!(g[6], ("d/zb9".into(), vec!["d/only".into()], 1));
            assert_eq!(p.stages[0].device_ids.len(), 19, "every target is a canary");
            assert!(p.stages[1].device_ids.is_empty() && p.stages[2].device_ids.is_empty());
        }

        #[test]
        fn the_choice_prefers_mains_reachable_strong_devices_and_is_stable() {
            let mut log = Log::default();
            log.event(T0, &streams::firmware(FW), zigbee_firmware(FW));
            let mut add = |id: &str, battery: bool, lqi: Option<u8>, reachable: bool| {
                let mut d = zigbee_device("zb", battery);
                d.facts.signal = lqi.map(Signal::LinkQuality);
                d.facts.reachable = reachable;
                log.event(T0, &streams::device(id), d);
            };
            add("s/a-battery", true, Some(250), true);
            add("s/b-weak", false, Some(20), true);
            add("s/c-offline", false, Some(255), false);
            add("s/d-strong", false, Some(200), true);
            add("s/e-strong", false, Some(200), true);
            add("s/f-nosignal", false, None, true);
            let p = plan(&per_site(6), &log.state);
            let order = [
                "s/d-strong",
                "s/e-strong",
                "s/b-weak",
                "s/f-nosignal",
                "s/c-offline",
                "s/a-battery",
            ];
            assert_eq!(p.stages[0].device_ids, order);
            let p2 = plan(&per_site(2), &log.state);
            assert_eq!(p2.stages[0].device_ids, order[..2]);
            assert_eq!(
                p2,
                plan(&per_site(2), &log.state),
                "the same fleet, the same plan"
            );
            // The input order does not matter.
            let views: Vec<&DeviceView> = log.state.devices.values().map(Box::as_ref).collect();
            let mut reversed = views.clone();
            reversed.reverse();
            assert_eq!(canaries(&views, 3), canaries(&reversed, 3));
        }

        #[test]
        fn without_the_setting_the_first_stage_keeps_its_size() {
            let log = fleet(3);
            let mut s = per_site(0);
            s.stages[0].size = StageSize::Count(2);
            let p = plan(&s, &log.state);
            assert_eq!(p.stages[0].device_ids, ["a/zb1-0", "b/zb1-0"]);
            assert!(p.stages[0].canaries.is_empty());
            assert!(!p.policies.iter().any(|l| l.starts_with("canaries")));
        }

        #[test]
        fn a_stage_waits_for_the_health_window_of_its_last_device() {
            let log = fleet(1);
            let mut s = per_site(0);
            s.stages[0].size = StageSize::Count(2);
            let without = plan(&s, &log.state);
            s.health = crate::health::HealthPolicy {
                esphome_window_s: 120,
                zigbee_window_s: 600,
                accept_reachability: false,
            };
            let with = plan(&s, &log.state);
            for (a, b) in without.stages.iter().zip(&with.stages) {
                assert_eq!(b.estimated_s, a.estimated_s + 600, "stage {}", a.name);
            }
            assert_eq!(with.estimated_s, without.estimated_s + 3 * 600);
        }
    }

    mod learned {
        use std::time::Duration;

        use super::super::*;
        use crate::events::streams;
        use crate::fixture::{FW, Log, T0, esp_device, esp_firmware, spec, stage};
        use crate::fixture::{zigbee_device, zigbee_firmware};
        use crate::rollout::spec::MaintenanceWindow;

        /// `n` ESPHome esp32dev devices on site a, and firmware for them.
        fn esphome(n: usize) -> Log {
            let mut log = Log::default();
            log.event(T0, &streams::firmware(FW), esp_firmware(FW, "2.0.0"));
            for i in 0..n {
                let mut d = esp_device("1.0.0");
                d.facts.model = "esp32dev".into();
                log.event(T0, &streams::device(&format!("a/e{i}")), d);
            }
            log
        }

        fn learn(log: &mut Log, model: &str, t: Transport, secs: &[u64]) {
            for s in secs {
                log.state
                    .transfer_times
                    .record(model, t, Duration::from_secs(*s));
            }
        }

        fn one_stage(per_esphome_site: u32) -> RolloutSpec {
            let mut s = spec(vec![stage("all", StageSize::CumulativePercent(100.0))]);
            s.concurrency.per_esphome_site = per_esphome_site;
            s
        }

        #[test]
        fn past_updates_give_the_median() {
            let mut log = esphome(4);
            learn(&mut log, "esp32dev", Transport::Esphome, &[20, 30, 400]);
            let p = plan(&one_stage(4), &log.state);
            assert_eq!(
                p.stages[0].estimated_s, 30,
                "the median, not the typical minute"
            );
            assert_eq!((p.estimated_s, p.makespan_s), (30, Some(30)));
            assert_eq!(
                p.notes,
                ["model esp32dev over esphome: 30 s, the median of 3 past update(s)"]
            );
            assert!(p.airtime.is_empty(), "no Zigbee");
        }

        #[test]
        fn without_history_the_typical_guess_and_a_note() {
            let mut log = esphome(4);
            // Another model's history does not count.
            learn(&mut log, "esp8266", Transport::Esphome, &[5]);
            let p = plan(&one_stage(4), &log.state);
            assert_eq!(p.stages[0].estimated_s, ESPHOME_TRANSFER_S);
            assert_eq!(
                p.notes,
                [
                    "model esp32dev over esphome: no past update in the log, assumed 60 s (the typical esphome transfer)"
                ]
            );
        }

        #[test]
        fn the_makespan_follows_the_concurrency_and_the_window() {
            let mut log = esphome(4);
            learn(&mut log, "esp32dev", Transport::Esphome, &[30]);
            let one = plan(&one_stage(1), &log.state);
            let two = plan(&one_stage(2), &log.state);
            assert_eq!(one.makespan_s, Some(4 * 30));
            assert_eq!(two.makespan_s, Some(2 * 30));
            // A soak and a batch check count too.
            let mut s = one_stage(2);
            s.stages[0].soak_s = 100;
            s.batch_check = true;
            let p = plan(&s, &log.state);
            assert_eq!(p.makespan_s, Some(60 + 60 + 100));
            // A window from 22:00 UTC, planned at Monday 00:00 UTC: 22 h pass first.
            s.window = Some(MaintenanceWindow {
                start_minute: 22 * 60,
                end_minute: 23 * 60,
                weekdays: vec![],
            });
            let p = plan_at(&s, &log.state, Some(T0));
            assert_eq!(p.estimated_s, 220, "working time");
            assert_eq!(p.makespan_s, Some(22 * 3600 + 220));
            // A window that never opens: no makespan.
            s.window = Some(MaintenanceWindow {
                start_minute: 60,
                end_minute: 60,
                weekdays: vec![],
            });
            assert_eq!(plan_at(&s, &log.state, Some(T0)).makespan_s, None);
        }

        #[test]
        fn zigbee_airtime_per_network_and_its_share() {
            let mut log = Log::default();
            log.event(T0, &streams::firmware(FW), zigbee_firmware(FW));
            for (id, net) in [("a/1", "zb1"), ("a/2", "zb1"), ("a/3", "zb2")] {
                log.event(T0, &streams::device(id), zigbee_device(net, false));
            }
            learn(&mut log, "bulb", Transport::Zigbee2Mqtt, &[400]);
            let p = plan(&one_stage(4), &log.state);
            // One device per network at a time: zb1's two bulbs make the makespan.
            assert_eq!(p.makespan_s, Some(800));
            let rows: Vec<(&str, &str, u64, f64)> = p
                .airtime
                .iter()
                .map(|a| {
                    let share = a.share_percent(p.makespan_s.unwrap_or(0));
                    (a.site_id.as_str(), a.network.as_str(), a.airtime_s, share)
                })
                .collect();
            assert_eq!(rows, [("a", "zb1", 800, 100.0), ("a", "zb2", 400, 50.0)]);
            assert_eq!(
                p.notes,
                ["model bulb over zigbee2mqtt: 400 s, the median of 1 past update(s)"]
            );
        }
    }
}

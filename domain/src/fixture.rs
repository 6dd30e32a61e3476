//! Test fixtures: a small event log with stream versions that applies [`Change`]s the way otad's
//! store does (optimistic checks, all or nothing), a fleet to start from, and rollout specs.
//!
//! Only compiled for tests.

use std::collections::HashMap;
use std::time::Duration;

use crate::decision::{Change, Expect};
use crate::events::*;
use crate::model::{
    DeviceFacts, EspFacts, FirmwareFormat, PowerSource, Signal, Transport, VersionInfo,
};
use crate::projection::{DeviceView, EventMeta, FleetState};
use crate::rollout::spec::*;
use crate::time::UnixMillis;

/// 2026-01-05 00:00 UTC, a Monday.
pub const T0: UnixMillis = UnixMillis::from_unix_ms(1_767_571_200_000);
/// A second.
pub const S: Duration = Duration::from_secs(1);
/// The firmware of the fixtures.
pub const FW: &str = "fw-new";

/// An event log: the projection, each stream's version, every event in order.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// The projection.
    pub state: FleetState,
    /// Version of every stream.
    pub versions: HashMap<String, u64>,
    /// Every event with its seq and stream.
    pub events: Vec<(u64, String, DomainEvent)>,
}

impl Log {
    /// Appends one event without a check.
    pub fn event(&mut self, at: UnixMillis, stream: &str, e: impl Into<DomainEvent>) -> &mut Self {
        let e = e.into();
        let seq = self.events.len() as u64 + 1;
        let meta = EventMeta {
            seq,
            recorded_at_ms: at,
            actor: "test".into(),
        };
        self.state.apply(&meta, stream, &e);
        *self.versions.entry(stream.to_string()).or_default() += 1;
        self.events.push((seq, stream.to_string(), e));
        self
    }

    /// Appends `changes` as one atomic append, checked against the versions the decision saw
    /// (`seen`), like `Core::execute` and the store do. Refused as a whole on any conflict.
    pub fn commit(
        &mut self,
        at: UnixMillis,
        changes: &[Change],
        seen: &HashMap<String, u64>,
    ) -> Result<(), String> {
        if changes.iter().all(Change::is_guard) {
            return Ok(());
        }
        for c in changes {
            let actual = self.versions.get(&c.stream).copied().unwrap_or(0);
            let ok = match c.expect {
                Expect::Any => true,
                Expect::New => actual == 0,
                Expect::Unchanged => actual == seen.get(&c.stream).copied().unwrap_or(0),
            };
            if !ok {
                return Err(format!("conflict on {}", c.stream));
            }
        }
        for c in changes {
            for e in &c.events {
                self.event(at, &c.stream, e.clone());
            }
        }
        Ok(())
    }
}

/// An ESP application firmware.
pub fn esp_firmware(id: &str, version: &str) -> FirmwareRegistered {
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

/// A reachable ESPHome device on `version`.
pub fn esp_device(version: &str) -> DeviceReported {
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

/// A Zigbee device of network `net` on file version 1 (battery: sleepy).
pub fn zigbee_device(net: &str, battery: bool) -> DeviceReported {
    DeviceReported {
        facts: DeviceFacts {
            transport: Some(Transport::Zigbee2Mqtt),
            network: net.into(),
            model: "bulb".into(),
            current: VersionInfo {
                version: "1".into(),
                file_version: Some(1),
                ..Default::default()
            },
            power_source: if battery {
                PowerSource::Battery
            } else {
                PowerSource::Mains
            },
            battery_percent: battery.then_some(90),
            signal: Some(Signal::LinkQuality(200)),
            reachable: !battery,
            supports_ota: true,
            ..Default::default()
        },
        source: None,
    }
}

/// A Zigbee OTA firmware at file version 2.
pub fn zigbee_firmware(id: &str) -> FirmwareRegistered {
    FirmwareRegistered {
        format: FirmwareFormat::ZigbeeOta,
        zigbee: Some(crate::model::ZigbeeFacts {
            manufacturer_code: 0xFFFF,
            image_type: 0xFFFF,
            file_version: 2,
            ..Default::default()
        }),
        esp: None,
        ..esp_firmware(id, "2")
    }
}

/// A stage.
pub fn stage(name: &str, size: StageSize) -> StageSpec {
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

/// A spec of firmware [`FW`] with these stages and defaults elsewhere (no batch check).
pub fn spec(stages: Vec<StageSpec>) -> RolloutSpec {
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
        rollback: crate::rollout::rollback::RollbackScope::None,
        reverts: None,
        health: crate::health::HealthPolicy::OFF,
    }
}

/// A site's agent said hello.
pub fn connected(log: &mut Log, at: UnixMillis, site: &str) {
    log.event(
        at,
        &streams::site(site),
        AgentConnected {
            agent_id: format!("agent-{site}"),
            agent_version: "test".into(),
            timezone: String::new(),
            utc_offset_minutes: 0,
            transports: vec![],
            peer: String::new(),
        },
    );
}

/// Creates rollout `id` with `spec` and starts it with today's plan.
pub fn start_rollout(log: &mut Log, at: UnixMillis, id: &str, spec: RolloutSpec) {
    let p = crate::rollout::plan::plan(&spec, &log.state);
    log.event(
        at,
        &streams::rollout(id),
        RolloutCreated {
            id: id.into(),
            spec,
        },
    );
    log.event(at, &streams::rollout(id), p.started_event());
}

/// A device view `<site>/<local>` with `facts`, never seen, checked or updated.
pub fn device_view(id: &str, facts: DeviceFacts) -> DeviceView {
    let (site, local) = id.split_once('/').expect("<site>/<local>");
    DeviceView {
        id: id.into(),
        site_id: site.into(),
        local_id: local.into(),
        facts,
        first_seen_ms: UnixMillis::EPOCH,
        last_seen_ms: UnixMillis::EPOCH,
        auto_upgrade: false,
        removed: false,
        last_check: None,
        current_task: None,
        stream_version: 0,
    }
}

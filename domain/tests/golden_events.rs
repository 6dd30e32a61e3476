//! Stored events must stay readable forever.
//!
//! `golden/events.txt` holds, for every event type and every schema version ever written, the
//! payload bytes of a sample event. This test decodes each line (upcasting old versions) and
//! checks that today's encoding of the samples is byte-identical to the current-version lines.
//! Changing a payload struct without a new schema version and an upcaster fails here.
//!
//! After *adding* an event type or a schema version (never after editing one), refresh with
//! `OTA_UPDATE_GOLDEN=1 cargo test -p ota-domain --test golden_events`: existing lines are kept,
//! missing ones appended.

use std::collections::BTreeMap;

use ota_domain::events::*;
use ota_domain::health::{Health, HealthPolicy};
use ota_domain::model::*;
use ota_domain::rollout::abort::*;
use ota_domain::rollout::rate::*;
use ota_domain::rollout::rollback::*;
use ota_domain::rollout::spec::*;
use ota_domain::status::*;
use ota_domain::time::UnixMillis;

fn version(v: &str) -> VersionInfo {
    VersionInfo {
        version: v.into(),
        file_version: Some(0x0201_0230),
        software_build_id: Some("2.1.0".into()),
        date_code: Some("20260101".into()),
    }
}

fn source() -> Option<AgentSource> {
    Some(AgentSource {
        agent_id: "agent-1".into(),
        seq: 42,
    })
}

fn facts() -> DeviceFacts {
    DeviceFacts {
        transport: Some(Transport::Zigbee2Mqtt),
        network: "zigbee-main".into(),
        name: "hall-switch".into(),
        model: "RODRET".into(),
        vendor: "IKEA".into(),
        manufacturer_code: Some(0x117C),
        image_type: Some(0x2803),
        chip: String::new(),
        platform: String::new(),
        current: version("1.0"),
        power_source: PowerSource::Battery,
        battery_percent: Some(88),
        signal: Some(Signal::LinkQuality(120)),
        reachable: true,
        supports_ota: true,
        hardware_version: Some(1),
        z2m_state: "idle".into(),
        tags: vec!["floor-1".into()],
    }
}

fn spec() -> RolloutSpec {
    RolloutSpec {
        name: "hue spring".into(),
        firmware_id: "fw-0123456789abcdef".into(),
        selector: Selector {
            site_ids: vec!["home".into()],
            transports: vec![Transport::Zigbee2Mqtt],
            manufacturer_code: Some(0x100B),
            min_version: Some("1".into()),
            ..Default::default()
        },
        stages: vec![
            StageSpec {
                name: "canary".into(),
                size: StageSize::Count(2),
                success_threshold: None,
                failure_threshold: Some(Threshold::Count(1)),
                on_failure: FailureAction::Pause,
                deadline_s: 3600,
                soak_s: 600,
            },
            StageSpec {
                name: "all".into(),
                size: StageSize::CumulativePercent(100.0),
                success_threshold: Some(Threshold::Percent(95.0)),
                failure_threshold: Some(Threshold::Percent(10.0)),
                on_failure: FailureAction::Abort,
                deadline_s: 0,
                soak_s: 0,
            },
        ],
        concurrency: Concurrency::default(),
        device_timeout_s: 0,
        retry: RetryPolicy::default(),
        window: Some(MaintenanceWindow {
            start_minute: 22 * 60,
            end_minute: 5 * 60,
            weekdays: vec![1, 2, 3],
        }),
        upgrade_type: UpgradeType::Forced,
        allow_downgrade: false,
        preconditions: Preconditions {
            min_battery_percent: Some(60),
            min_linkquality: None,
            min_rssi_dbm: Some(-80),
        },
        batch_check: true,
        batch_check_timeout_s: 60,
        wake_timeout_s: 86_400,
        on_asleep: OnAsleep::Continue,
        failure_budget: FailureBudget::Limit(Threshold::Percent(5.0)),
        site_timezones: [("home".to_string(), "Europe/Berlin".to_string())]
            .into_iter()
            .collect(),
        abort_criteria: vec![AbortCriterion {
            on: AbortOn::Rejected,
            percent: 20.0,
            min_finished: 10,
            action: AbortAction::Abort,
        }],
        rate: Some(Rate {
            max_per_minute: 30,
            ramp: Some(Ramp {
                start_per_minute: 2,
                factor: 2.0,
                after: RampAfter::Percent(12.5),
            }),
        }),
        canary_per_site: 2,
        rollback: RollbackScope::All,
        reverts: Some(Revert {
            rollout_id: "ro-0".into(),
            scope: RollbackScope::Failed,
            firmware: [(
                "home/kitchen".to_string(),
                "fw-00000000000000aa".to_string(),
            )]
            .into_iter()
            .collect(),
            excluded: vec![Exclusion {
                device_id: "home/hall".into(),
                code: ErrorCode::NoFirmware,
                reason: "the image it ran before (version 1.0.0) is not in the catalog".into(),
            }],
        }),
        health: HealthPolicy {
            esphome_window_s: 90,
            zigbee_window_s: 0,
            accept_reachability: true,
        },
    }
}

/// One sample per event type at its current version.
fn samples() -> Vec<DomainEvent> {
    vec![
        FirmwareRegistered {
            id: "fw-0123456789abcdef".into(),
            name: "hue-switch".into(),
            version: "2.1.0".into(),
            format: FirmwareFormat::ZigbeeOta,
            channel: 3,
            size: 1000,
            sha256: "ab".repeat(32),
            md5: "cd".repeat(16),
            sha512: "ef".repeat(64),
            zigbee: Some(ZigbeeFacts {
                manufacturer_code: 0x100B,
                image_type: 0x0119,
                file_version: 0x0200_2100,
                header_version: 0x0100,
                header_length: 56,
                field_control: 0,
                stack_version: 2,
                header_string: "hue".into(),
                total_image_size: 1000,
                sub_element_tags: vec![0, 3],
                ..Default::default()
            }),
            esp: None,
            labels: labels([("team", "lights")]),
            release_notes: "fixes".into(),
        }
        .into(),
        FirmwareSignatureAdded {
            key_id: "release-2026".into(),
            signature: vec![7; 64],
        }
        .into(),
        FirmwareDeleted {
            reason: "superseded".into(),
        }
        .into(),
        AgentConnected {
            agent_id: "agent-1".into(),
            agent_version: "0.1.0".into(),
            timezone: "Europe/Berlin".into(),
            utc_offset_minutes: 60,
            transports: vec![TransportInstance {
                kind: Transport::Esphome,
                name: "esphome".into(),
                device_count: 3,
                connected: true,
            }],
            peer: "127.0.0.1:5000".into(),
        }
        .into(),
        AgentDisconnected {
            agent_id: "agent-1".into(),
            reason: "no heartbeat for 45 s".into(),
        }
        .into(),
        DeviceReported {
            facts: facts(),
            source: source(),
        }
        .into(),
        DeviceRemoved { source: source() }.into(),
        DeviceChecked {
            check_id: "chk-1".into(),
            firmware_id: Some("fw-0123456789abcdef".into()),
            status: UpgradeStatus::Failure,
            reachable: false,
            current: version("1.0"),
            update_available: None,
            error: Some(TaskError::new(
                ErrorCode::BulkCheckTimeout,
                "no answer in 60 s",
            )),
            source: None,
        }
        .into(),
        AutoUpgradeSet { enabled: true }.into(),
        TaskCreated {
            task_id: "task-1".into(),
            device_id: "home/0x0017880100000001".into(),
            site_id: "home".into(),
            rollout_id: Some("ro-1".into()),
            stage: 0,
            firmware_id: "fw-0123456789abcdef".into(),
            target: version("2.1.0"),
            upgrade_type: UpgradeType::Notify,
            downgrade: false,
            max_attempts: 3,
            initial_backoff_s: 30,
            max_backoff_s: 900,
            timeout_s: 1800,
            flash_offset: None,
            auto: false,
            wake_timeout_s: 604_800,
            from: Some(version("2.0.0")),
            from_firmware_id: Some("fw-00000000000000aa".into()),
        }
        .into(),
        TaskPreparing {}.into(),
        TaskHeld {
            error: TaskError::new(ErrorCode::WeakSignal, "linkquality 12 < 30"),
            remind: "confirm to continue".into(),
            needs_confirmation: true,
            retry_at_ms: None,
        }
        .into(),
        TaskConfirmed { proceed: true }.into(),
        TaskSkipped {
            code: ErrorCode::Other,
            remind: "battery 40 % < 70 %".into(),
        }
        .into(),
        TaskDispatched {
            attempt: 1,
            command_id: 9,
            timeout_at_ms: UnixMillis::from_unix_ms(1_800_000),
            schedule: true,
        }
        .into(),
        TaskProgressed {
            attempt: 1,
            status: UpgradeStatus::Updating,
            progress: 42.17,
            remaining_s: Some(527),
            bytes_sent: 1000,
            bytes_total: 2000,
            detail: "transferring".into(),
            source: source(),
        }
        .into(),
        TaskSucceeded {
            attempt: 1,
            from: version("1.0"),
            to: version("2.1.0"),
            duration_ms: 600_000,
            wire_bytes: 2000,
            source: source(),
            late: true,
            health: Health::Unconfirmed,
        }
        .into(),
        TaskFailed {
            attempt: 1,
            error: TaskError::new(
                ErrorCode::ConnectFailed,
                "Device didn't respond to OTA request",
            ),
            timed_out: false,
            retry_at_ms: Some(UnixMillis::from_unix_ms(30_000)),
            source: source(),
        }
        .into(),
        TaskCancelled {
            reason: "operator".into(),
        }
        .into(),
        RolloutCreated {
            id: "ro-1".into(),
            spec: spec(),
        }
        .into(),
        RolloutStarted {
            stages: vec![PlannedStage {
                name: "canary".into(),
                device_ids: vec!["home/a".into(), "home/b".into()],
            }],
            exclusions: vec![Exclusion {
                device_id: "home/c".into(),
                code: ErrorCode::AlreadyOnTarget,
                reason: "already on 2.1.0".into(),
            }],
        }
        .into(),
        RolloutPlanContinued {
            stage: 0,
            device_ids: vec!["home/e".into()],
            exclusions: vec![Exclusion {
                device_id: "home/f".into(),
                code: ErrorCode::AlreadyOnTarget,
                reason: "already on 2.1.0".into(),
            }],
        }
        .into(),
        BatchCheckStarted {
            check_id: "chk-1".into(),
            device_ids: vec!["home/a".into()],
            deadline_at_ms: UnixMillis::from_unix_ms(60_000),
        }
        .into(),
        BatchCheckContinued {
            check_id: "chk-1".into(),
            device_ids: vec!["home/e".into()],
            timed_out: vec!["home/e".into()],
            excluded: vec![Exclusion {
                device_id: "home/f".into(),
                code: ErrorCode::AlreadyOnTarget,
                reason: "already on 2.1.0".into(),
            }],
        }
        .into(),
        BatchCheckCompleted {
            check_id: "chk-1".into(),
            timed_out: vec!["home/a".into()],
            excluded: vec![],
        }
        .into(),
        StageStarted {
            index: 0,
            deadline_at_ms: Some(UnixMillis::from_unix_ms(3_600_000)),
        }
        .into(),
        StageDevicesExcluded {
            index: 1,
            excluded: vec![Exclusion {
                device_id: "home/d".into(),
                code: ErrorCode::OneAtATime,
                reason: "the device already has task task-9 (updating)".into(),
            }],
        }
        .into(),
        StageSoaking {
            index: 0,
            until_ms: UnixMillis::from_unix_ms(4_000_000),
        }
        .into(),
        StageSucceeded { index: 0 }.into(),
        StageFailed {
            index: 1,
            reason: "2 failures >= 1".into(),
        }
        .into(),
        RolloutPaused {
            reason: "stage canary failed".into(),
            automatic: true,
        }
        .into(),
        RolloutResumed {
            reason: "fixed".into(),
        }
        .into(),
        RolloutCompleted {
            summary: "2 updated".into(),
        }
        .into(),
        RolloutAborted {
            reason: "operator".into(),
            automatic: false,
        }
        .into(),
        RolloutApprovalRequired {
            required_by: "otad setting require_approval".into(),
        }
        .into(),
        RolloutApproved {
            reason: "release notes read".into(),
        }
        .into(),
        RolloutDenied {
            reason: "not before the holidays".into(),
        }
        .into(),
        TokenCreated {
            id: "tok-1".into(),
            name: "alice".into(),
            role: "operator".into(),
            secret_hash: "00".repeat(32),
            expires_at_ms: UnixMillis::from_unix_ms(0),
        }
        .into(),
        TokenRevoked { id: "tok-1".into() }.into(),
        RolloutRolledBack {
            rollback_id: "ro-1-rollback".into(),
            scope: RollbackScope::Failed,
            automatic: true,
            reason: "stage canary failed".into(),
        }
        .into(),
        TaskVerifying {
            attempt: 1,
            until_ms: UnixMillis::from_unix_ms(720_000),
            to: version("2.1.0"),
            source: source(),
        }
        .into(),
    ]
}

fn golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events.txt")
}

/// (type, version) -> hex payload, in file order.
fn read_golden() -> BTreeMap<(String, u16), String> {
    let text = std::fs::read_to_string(golden_path()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let ty = parts.next().expect("type").to_string();
            let v: u16 = parts
                .next()
                .expect("version")
                .parse()
                .expect("numeric version");
            let hex = parts.next().unwrap_or("").to_string();
            ((ty, v), hex)
        })
        .collect()
}

#[test]
fn every_event_type_has_a_sample() {
    let sampled: Vec<&str> = samples().iter().map(|e| e.type_name()).collect();
    for (ty, _) in DomainEvent::TYPES {
        assert!(
            sampled.contains(ty),
            "no golden sample for {ty}: add one to samples()"
        );
    }
}

#[test]
fn golden_payloads_decode_and_current_encoding_is_unchanged() {
    let mut golden = read_golden();
    if std::env::var_os("OTA_UPDATE_GOLDEN").is_some() {
        let mut text = String::from(
            "# Golden payloads of stored events: <type> <schema version> <postcard hex>.\n\
             # Never edit or delete a line; see tests/golden_events.rs.\n",
        );
        for e in samples() {
            golden
                .entry((e.type_name().to_string(), e.schema_version()))
                .or_insert_with(|| hex(&e.encode()));
        }
        for ((ty, v), h) in &golden {
            text.push_str(&format!("{ty} {v} {h}\n"));
        }
        std::fs::write(golden_path(), text).expect("write golden file");
    }

    for ((ty, v), h) in &golden {
        let bytes = unhex(h);
        DomainEvent::decode(ty, *v, &bytes)
            .unwrap_or_else(|e| panic!("golden {ty} v{v} no longer decodes: {e}"));
    }
    for e in samples() {
        let key = (e.type_name().to_string(), e.schema_version());
        let expected = golden.get(&key).unwrap_or_else(|| {
            panic!(
                "no golden bytes for {} v{}: run with OTA_UPDATE_GOLDEN=1 after adding a type or version",
                key.0, key.1
            )
        });
        assert_eq!(
            &hex(&e.encode()),
            expected,
            "{} v{} encodes differently than the stored golden bytes: a payload struct changed \
             without a new schema version",
            key.0,
            key.1
        );
        let back = DomainEvent::decode(&key.0, key.1, &e.encode()).expect("round trip");
        assert_eq!(back, e);
    }
}

#[test]
fn device_reported_v1_golden_upcasts() {
    let golden = read_golden();
    let h = golden
        .get(&("DeviceReported".to_string(), 1))
        .expect("DeviceReported v1 golden line exists");
    let DomainEvent::DeviceReported(e) =
        DomainEvent::decode("DeviceReported", 1, &unhex(h)).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(e.facts.name, "kitchen");
    assert!(e.facts.tags.is_empty());
}

#[test]
fn version_1_of_tasks_and_rollouts_upcasts_to_the_old_behaviour() {
    let golden = read_golden();
    let line = |ty: &str| unhex(&golden[&(ty.to_string(), 1)]);
    let DomainEvent::TaskCreated(t) =
        DomainEvent::decode("TaskCreated", 1, &line("TaskCreated")).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(
        (t.timeout_s, t.wake_timeout_s),
        (1800, 0),
        "0: the default wake-up budget"
    );
    let DomainEvent::TaskSucceeded(s) =
        DomainEvent::decode("TaskSucceeded", 1, &line("TaskSucceeded")).unwrap()
    else {
        panic!("wrong variant");
    };
    assert!(!s.late);
    let DomainEvent::RolloutCreated(r) =
        DomainEvent::decode("RolloutCreated", 1, &line("RolloutCreated")).unwrap()
    else {
        panic!("wrong variant");
    };
    // Old rollouts keep their behaviour: every gate on, no rollout-wide budget, deadlines as
    // written (0 was "none").
    assert_eq!(r.spec.preconditions, Preconditions::default());
    assert_eq!(r.spec.failure_budget, FailureBudget::Off);
    assert_eq!(r.spec.on_asleep, OnAsleep::Wait);
    assert_eq!(r.spec.stages[1].deadline_s, 0);
    assert!(r.spec.site_timezones.is_empty());
    assert_eq!(r.spec.canary_per_site, 0);
}

#[test]
fn version_2_of_rollouts_upcasts_without_abort_criteria() {
    let golden = read_golden();
    let DomainEvent::RolloutCreated(r) = DomainEvent::decode(
        "RolloutCreated",
        2,
        &unhex(&golden[&("RolloutCreated".to_string(), 2)]),
    )
    .unwrap() else {
        panic!("wrong variant");
    };
    assert!(r.spec.abort_criteria.is_empty());
    assert_eq!(r.spec.canary_per_site, 0);
    assert_eq!(r.spec.health, HealthPolicy::OFF);
    assert_eq!(
        r.spec.failure_budget,
        spec().failure_budget,
        "the rest is kept"
    );
    assert_eq!(r.spec.site_timezones, spec().site_timezones);
}

#[test]
fn version_3_of_rollouts_upcasts_without_per_site_canaries() {
    let golden = read_golden();
    let DomainEvent::RolloutCreated(r) = DomainEvent::decode(
        "RolloutCreated",
        3,
        &unhex(&golden[&("RolloutCreated".to_string(), 3)]),
    )
    .unwrap() else {
        panic!("wrong variant");
    };
    assert_eq!(r.spec.canary_per_site, 0);
    assert_eq!(
        (r.spec.rollback, r.spec.reverts),
        (RollbackScope::None, None)
    );
    assert_eq!(
        r.spec.abort_criteria,
        spec().abort_criteria,
        "the rest is kept"
    );
    assert_eq!(r.spec.stages, spec().stages);
}

#[test]
fn version_4_of_rollouts_upcasts_without_per_site_canaries() {
    let golden = read_golden();
    let DomainEvent::RolloutCreated(r) = DomainEvent::decode(
        "RolloutCreated",
        4,
        &unhex(&golden[&("RolloutCreated".to_string(), 4)]),
    )
    .unwrap() else {
        panic!("wrong variant");
    };
    assert_eq!(r.spec.canary_per_site, 0);
    assert_eq!(r.spec.rate, spec().rate, "the rest is kept");
}

#[test]
fn version_5_of_rollouts_and_2_of_tasks_upcast_without_rollback() {
    let golden = read_golden();
    let line = |ty: &str, v: u16| unhex(&golden[&(ty.to_string(), v)]);
    let DomainEvent::RolloutCreated(r) =
        DomainEvent::decode("RolloutCreated", 5, &line("RolloutCreated", 5)).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(
        (r.spec.rollback, r.spec.reverts),
        (RollbackScope::None, None)
    );
    assert_eq!(
        r.spec.canary_per_site,
        spec().canary_per_site,
        "the rest is kept"
    );
    for v in [1, 2] {
        let DomainEvent::TaskCreated(t) =
            DomainEvent::decode("TaskCreated", v, &line("TaskCreated", v)).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!((t.from, t.from_firmware_id), (None, None), "v{v}");
        assert_eq!(t.timeout_s, 1800, "v{v}: the rest is kept");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn rollouts_and_successes_before_the_health_gate_upcast_without_it() {
    let golden = read_golden();
    let DomainEvent::RolloutCreated(r) = DomainEvent::decode(
        "RolloutCreated",
        3,
        &unhex(&golden[&("RolloutCreated".to_string(), 3)]),
    )
    .unwrap() else {
        panic!("wrong variant");
    };
    assert_eq!(
        r.spec.health,
        HealthPolicy::OFF,
        "old rollouts keep their behaviour"
    );
    assert_eq!(
        r.spec.abort_criteria,
        spec().abort_criteria,
        "the rest is kept"
    );
    let DomainEvent::TaskSucceeded(t) = DomainEvent::decode(
        "TaskSucceeded",
        2,
        &unhex(&golden[&("TaskSucceeded".to_string(), 2)]),
    )
    .unwrap() else {
        panic!("wrong variant");
    };
    assert_eq!(t.health, Health::NotChecked);
    assert!(t.late, "the rest is kept");
}

#[test]
fn version_6_of_rollouts_upcasts_without_the_health_gate() {
    let golden = read_golden();
    let DomainEvent::RolloutCreated(r) = DomainEvent::decode(
        "RolloutCreated",
        6,
        &unhex(&golden[&("RolloutCreated".to_string(), 6)]),
    )
    .unwrap() else {
        panic!("wrong variant");
    };
    assert_eq!(r.spec.health, HealthPolicy::OFF);
    assert_eq!(
        (r.spec.rollback, r.spec.reverts),
        (spec().rollback, spec().reverts),
        "the rest is kept"
    );
}

// === the projection's snapshot shape ===

fn projection_golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/projection.txt")
}

/// Every sample folded into a state, once on each kind of stream (the projection ignores what
/// it cannot place), so most fields of the state hold something.
fn sample_state() -> ota_domain::projection::FleetState {
    use ota_domain::projection::{EventMeta, FleetState};
    let streams = [
        "firmware/fw-1",
        "device/home/hall-switch",
        "site/home",
        "rollout/ro-1",
        "task/task-1",
        "access/tokens",
    ];
    let mut state = FleetState::default();
    let mut seq = 0;
    for stream in streams {
        for e in samples() {
            seq += 1;
            let meta = EventMeta {
                seq,
                recorded_at_ms: UnixMillis::from_unix_ms(1_790_000_000_000 + seq as i64),
                actor: "golden".into(),
            };
            state.apply(&meta, stream, &e);
        }
    }
    state
}

/// Snapshots (otad's `snapshot` module) store the projection with postcard, which is not
/// self-describing: a snapshot is only readable by a build whose projection has the same shape
/// and folds events the same way. This golden line holds the encoding of a state built from
/// every sample; when it changes, bump `projection::SNAPSHOT_SCHEMA` (old snapshots are then
/// ignored and the state is rebuilt from the log) and refresh with
/// `OTA_UPDATE_GOLDEN=1 cargo test -p ota-domain --test golden_events`.
#[test]
fn the_snapshot_shape_changes_only_with_a_new_schema_number() {
    use ota_domain::projection::{FleetState, SNAPSHOT_SCHEMA};
    let state = sample_state();
    let bytes = postcard::to_stdvec(&state).expect("encode");
    let back: FleetState = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(
        back, state,
        "the projection does not round-trip through postcard"
    );
    assert!(state.tasks.len() + state.devices.len() + state.rollouts.len() >= 3);

    let line = format!("{SNAPSHOT_SCHEMA} {}", hex(&bytes));
    if std::env::var_os("OTA_UPDATE_GOLDEN").is_some() {
        std::fs::write(
            projection_golden_path(),
            format!(
                "# The projection as a snapshot stores it: <SNAPSHOT_SCHEMA> <postcard hex>.\n\
                 # See the_snapshot_shape_changes_only_with_a_new_schema_number.\n{line}\n"
            ),
        )
        .expect("write the golden projection");
        return;
    }
    let golden = std::fs::read_to_string(projection_golden_path()).unwrap_or_default();
    let golden = golden
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap_or_default();
    let (golden_schema, golden_hex) = golden.split_once(' ').unwrap_or(("", ""));
    if golden_hex == hex(&bytes) {
        assert_eq!(
            golden_schema,
            SNAPSHOT_SCHEMA.to_string(),
            "SNAPSHOT_SCHEMA changed but the shape did not: refresh the golden line"
        );
        return;
    }
    assert_ne!(
        golden_schema,
        SNAPSHOT_SCHEMA.to_string(),
        "the projection's stored shape (or how it folds events) changed, but \
         projection::SNAPSHOT_SCHEMA is still {SNAPSHOT_SCHEMA}: bump it so old snapshots are \
         ignored, then refresh with OTA_UPDATE_GOLDEN=1"
    );
    panic!("SNAPSHOT_SCHEMA is new: refresh the golden line with OTA_UPDATE_GOLDEN=1");
}

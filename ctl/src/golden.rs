//! Golden output: every view's JSON document and every human rendering of a fixed set of
//! answers, byte for byte, against `tests/golden/render.txt`.
//!
//! The JSON shapes are a contract and the tables are what people read; a change to either must
//! be deliberate. Run with `OTACTL_UPDATE_GOLDEN=1` to rewrite the file, then review the diff.
//! Times are fixed and "how long ago" values are left at 0 ("never"), so nothing depends on
//! the clock.

use std::fmt::Write as _;
use std::path::PathBuf;

use ota_proto::v1 as pb;
use serde::Serialize;

use crate::cmd::device::view::*;
use crate::cmd::events::EventJson;
use crate::cmd::firmware::view::*;
use crate::cmd::rollout::view::*;
use crate::cmd::server::ServerStatusJson;
use crate::cmd::site::{SiteJson, SiteListJson};
use crate::cmd::token::{CreatedTokenJson, TokenJson, TokenListJson};
use crate::cmd::{device, events, firmware, rollout, server, site, token};
use crate::views::TaskJson;

const T0: i64 = 1_700_000_000_000;

fn actor(name: &str, role: &str) -> Option<pb::Actor> {
    Some(pb::Actor {
        name: name.into(),
        role: role.into(),
    })
}

fn version(v: &str, file_version: Option<u32>) -> Option<pb::VersionInfo> {
    Some(pb::VersionInfo {
        version: v.into(),
        file_version,
        software_build_id: "2.3.093".into(),
        date_code: "20231105".into(),
    })
}

fn zigbee_firmware() -> pb::Firmware {
    pb::Firmware {
        id: "fw-0011223344556677".into(),
        name: "hue-switch".into(),
        version: "2.3.093".into(),
        format: pb::FirmwareFormat::ZigbeeOta as i32,
        channel: 3,
        size: 262_144,
        sha256: "ab".repeat(32),
        md5: "cd".repeat(16),
        sha512: "ef".repeat(64),
        zigbee: Some(pb::ZigbeeImageInfo {
            manufacturer_code: 0x100B,
            image_type: 0x0001,
            file_version: 0x0203_0093,
            header_version: 0x0100,
            header_length: 56,
            field_control: 0x0004,
            stack_version: 2,
            header_string: "Hue switch".into(),
            total_image_size: 262_144,
            security_credential_version: Some(1),
            destination: Some(0x0017_8801_099a_1b2c),
            min_hardware_version: Some(1),
            max_hardware_version: Some(3),
            prefix_length: 0,
            trailing_length: 16,
            sub_element_tags: vec![0, 0xF000],
        }),
        esp: None,
        labels: [
            ("vendor".to_string(), "signify".to_string()),
            ("models".to_string(), "9290022166".to_string()),
        ]
        .into(),
        release_notes: "fixes pairing\nsee https://example.net/notes".into(),
        created_at_ms: T0,
        created_by: actor("alice", "admin"),
        signatures: vec![pb::FirmwareSignature {
            key_id: "release-2026".into(),
            signature: vec![0xde; 64],
            added_at_ms: T0 + 60_000,
            added_by: actor("ci", "operator"),
        }],
        active_rollouts: vec!["ro-1".into(), "ro-2".into()],
    }
}

fn esp_firmware() -> pb::Firmware {
    pb::Firmware {
        id: "fw-8899aabbccddeeff".into(),
        name: "kitchen-esp32".into(),
        version: "2026.11.1".into(),
        format: pb::FirmwareFormat::EspFactory as i32,
        channel: 1,
        size: 1_048_576,
        sha256: "12".repeat(32),
        esp: Some(pb::EspImageInfo {
            chip: "esp32c3".into(),
            chip_id: Some(5),
            app_version: "2026.11.1".into(),
            project_name: "kitchen".into(),
            idf_version: "v5.1".into(),
            build_date: "Nov 24 2026".into(),
            build_time: "07:30:00".into(),
            secure_version: 0,
            segment_count: 6,
            flash_mode: "dio".into(),
            flash_size: "4MB".into(),
            flash_freq: "80m".into(),
            hash_appended: true,
            app_offset: Some(0x10000),
        }),
        created_at_ms: T0,
        ..Default::default()
    }
}

fn updating_task() -> pb::Task {
    pb::Task {
        id: "t-1".into(),
        device_id: "home/0x00178801099a1b2c".into(),
        site_id: "home".into(),
        rollout_id: "ro-1".into(),
        stage: 0,
        firmware_id: "fw-0011223344556677".into(),
        target: version("", Some(0x0203_0093)),
        status: pb::UpgradeStatus::Updating as i32,
        progress: 45.5,
        remaining_s: Some(80),
        attempt: 2,
        max_attempts: 3,
        upgrade_type: 2,
        from: version("2.2.0", Some(0x0202_0000)),
        created_at_ms: T0,
        started_at_ms: T0 + 1_000,
        requested_by: actor("otad", ""),
        bytes_sent: 119_000,
        bytes_total: 262_144,
        ..Default::default()
    }
}

fn failed_task() -> pb::Task {
    pb::Task {
        id: "t-2".into(),
        device_id: "home/kitchen-esp32".into(),
        site_id: "home".into(),
        firmware_id: "fw-8899aabbccddeeff".into(),
        status: pb::UpgradeStatus::Failure as i32,
        progress: 12.0,
        error: Some(pb::TaskError {
            code: 5006,
            message: "Device didn't respond to OTA request".into(),
        }),
        remind: "retrying".into(),
        attempt: 1,
        max_attempts: 3,
        upgrade_type: 2,
        downgrade: true,
        from: version("2026.10.0", None),
        created_at_ms: T0,
        started_at_ms: T0 + 1_000,
        finished_at_ms: T0 + 9_000,
        next_attempt_at_ms: T0 + 39_000,
        requested_by: actor("alice", "operator"),
        ..Default::default()
    }
}

fn succeeded_task() -> pb::Task {
    pb::Task {
        id: "t-3".into(),
        device_id: "home/lamp".into(),
        status: pb::UpgradeStatus::Success as i32,
        progress: 100.0,
        from: version("1.0", None),
        to: version("1.1", None),
        ..Default::default()
    }
}

fn confirm_task() -> pb::Task {
    pb::Task {
        id: "t-4".into(),
        device_id: "home/0x01".into(),
        status: 13,
        awaiting_confirmation: true,
        error: Some(pb::TaskError {
            code: 5005,
            message: "linkquality 12 < 30".into(),
        }),
        ..Default::default()
    }
}

fn zigbee_device() -> pb::Device {
    pb::Device {
        id: "home/0x00178801099a1b2c".into(),
        site_id: "home".into(),
        local_id: "0x00178801099a1b2c".into(),
        transport: pb::Transport::Zigbee2mqtt as i32,
        network: "zigbee-attic".into(),
        name: "hall switch".into(),
        model: "324131092621".into(),
        vendor: "Signify".into(),
        manufacturer_code: Some(0x100B),
        image_type: Some(1),
        current: version("", Some(0x0202_0000)),
        power_source: 2,
        battery_percent: Some(87),
        signal: Some(pb::Signal {
            kind: 1,
            value: 120,
        }),
        reachable: true,
        supports_ota: true,
        hardware_version: Some(1),
        z2m_state: 2,
        tags: vec!["attic".into(), "hall".into()],
        auto_upgrade: true,
        status: pb::UpgradeStatus::Updating as i32,
        current_task: Some(updating_task()),
        ..Default::default()
    }
}

fn esp_device() -> pb::Device {
    pb::Device {
        id: "home/kitchen-esp32".into(),
        site_id: "home".into(),
        local_id: "kitchen-esp32".into(),
        transport: pb::Transport::Esphome as i32,
        network: "esphome".into(),
        name: "kitchen".into(),
        model: "esp32-c3-devkitm-1".into(),
        vendor: "Espressif".into(),
        chip: "esp32c3".into(),
        platform: "ESP32".into(),
        current: version("2026.10.0", None),
        power_source: 1,
        signal: Some(pb::Signal {
            kind: 2,
            value: -67,
        }),
        reachable: false,
        supports_ota: true,
        status: pb::UpgradeStatus::Failure as i32,
        current_task: Some(failed_task()),
        ..Default::default()
    }
}

fn stage_spec(name: &str, size: pb::stage::Size) -> pb::Stage {
    pb::Stage {
        name: name.into(),
        size: Some(size),
        failure_threshold: Some(pb::Threshold {
            value: Some(pb::threshold::Value::Count(1)),
        }),
        success_threshold: Some(pb::Threshold {
            value: Some(pb::threshold::Value::Percent(90.0)),
        }),
        on_failure: 1,
        deadline_s: Some(3_600),
        soak_s: 600,
    }
}

fn spec() -> pb::RolloutSpec {
    pb::RolloutSpec {
        name: "hue-switch 2.3.093".into(),
        firmware_id: "fw-0011223344556677".into(),
        selector: Some(pb::DeviceSelector {
            site_ids: vec!["home".into()],
            transports: vec![pb::Transport::Zigbee2mqtt as i32],
            models: vec!["324131092621".into()],
            manufacturer_code: Some(0x100B),
            min_version: "0x01000000".into(),
            tags: vec!["attic".into()],
            exclude_device_ids: vec!["home/0x02".into()],
            ..Default::default()
        }),
        stages: vec![
            stage_spec("canary", pb::stage::Size::Count(1)),
            stage_spec("wave-1", pb::stage::Size::Count(5)),
            pb::Stage {
                name: "everyone".into(),
                size: Some(pb::stage::Size::CumulativePercent(100.0)),
                ..Default::default()
            },
        ],
        concurrency: Some(pb::ConcurrencyLimits {
            global: 50,
            per_site: 10,
            per_zigbee_network: 1,
            per_esphome_site: 4,
        }),
        device_timeout_s: 1_800,
        retry: Some(pb::RetryPolicy {
            max_attempts: 3,
            initial_backoff_s: 30,
            max_backoff_s: 900,
        }),
        maintenance_window: Some(pb::MaintenanceWindow {
            start: "22:00".into(),
            end: "05:00".into(),
            weekdays: vec![1, 2, 3],
        }),
        upgrade_type: 0,
        allow_downgrade: false,
        preconditions: Some(pb::Preconditions {
            min_battery_percent: Some(70),
            min_linkquality: Some(30),
            min_rssi_dbm: Some(-85),
        }),
        skip_batch_check: false,
        batch_check_timeout_s: 60,
        wake_timeout_s: 604_800,
        on_asleep: pb::OnAsleep::Wait as i32,
        failure_budget: Some(pb::FailureBudget {
            budget: Some(pb::failure_budget::Budget::Limit(pb::Threshold {
                value: Some(pb::threshold::Value::Percent(10.0)),
            })),
        }),
        require_approval: true,
        site_timezones: [("home".to_string(), "Europe/Berlin".to_string())]
            .into_iter()
            .collect(),
        abort_criteria: vec![
            pb::AbortCriterion {
                on: pb::abort_criterion::On::Failed as i32,
                percent: 20.0,
                min_finished: 10,
                action: pb::abort_criterion::Action::Pause as i32,
            },
            pb::AbortCriterion {
                on: pb::abort_criterion::On::Rejected as i32,
                percent: 5.0,
                min_finished: 1,
                action: pb::abort_criterion::Action::Abort as i32,
            },
            pb::AbortCriterion {
                on: pb::abort_criterion::On::Any as i32,
                percent: 50.0,
                min_finished: 4,
                action: pb::abort_criterion::Action::Rollback as i32,
            },
        ],
        rate: Some(pb::RolloutRate {
            max_per_minute: 30,
            ramp: Some(pb::RateRamp {
                start_per_minute: 2,
                factor: 2.0,
                after: Some(pb::rate_ramp::After::AfterSuccesses(5)),
            }),
        }),
        canary_per_site: 0,
        rollback: pb::RollbackScope::Failed as i32,
        health: Some(pb::HealthPolicy {
            esphome_window_s: 120,
            zigbee_window_s: 0,
            accept_reachability: true,
        }),
    }
}

fn running_rollout() -> pb::Rollout {
    let counts = |total, succeeded, failed, updating| pb::TaskCounts {
        total,
        succeeded,
        failed,
        updating,
        queued: total - succeeded - failed - updating,
        ..Default::default()
    };
    pb::Rollout {
        id: "ro-1".into(),
        spec: Some(spec()),
        state: pb::RolloutState::Running as i32,
        state_reason: String::new(),
        current_stage: 1,
        stages: vec![
            pb::StageStatus {
                index: 0,
                name: "canary".into(),
                state: 4,
                device_ids: vec!["home/a".into()],
                device_count: 1,
                counts: Some(counts(1, 1, 0, 0)),
                started_at_ms: T0,
                finished_at_ms: T0 + 60_000,
                ..Default::default()
            },
            pb::StageStatus {
                index: 1,
                name: "wave-1".into(),
                state: 2,
                device_ids: (0..5).map(|i| format!("home/w{i}")).collect(),
                device_count: 5,
                counts: Some(counts(5, 2, 1, 1)),
                started_at_ms: T0 + 120_000,
                deadline_at_ms: T0 + 3_720_000,
                ..Default::default()
            },
        ],
        totals: Some(pb::TaskCounts {
            total: 6,
            succeeded: 3,
            failed: 1,
            updating: 1,
            verifying: 1,
            ..Default::default()
        }),
        batch_check_timed_out: vec!["home/late".into()],
        batch_check_timed_out_count: 1,
        created_by: actor("alice", "operator"),
        created_at_ms: T0,
        started_at_ms: T0 + 1_000,
        finished_at_ms: 0,
        exclusions: vec![pb::Exclusion {
            device_id: "home/x".into(),
            code: 5000,
            reason: "already on 2.3".into(),
        }],
        exclusion_count: 1,
        failure_budget: 1,
        failures: 0,
        approval: Some(pb::Approval {
            state: pb::approval::State::Approved as i32,
            required_by: String::new(),
            decided_by: Some(pb::Actor {
                name: "bob".into(),
                role: "operator".into(),
            }),
            decided_at_ms: 1_790_000_000_000,
            reason: "release notes read".into(),
        }),
        rollback_of: None,
        rolled_back_by: None,
        revert_targets: vec![],
    }
}

fn draft_rollout() -> pb::Rollout {
    // A draft with per-site canaries: its first stage has no size of its own.
    let mut spec = spec();
    spec.canary_per_site = 2;
    spec.stages[0].size = None;
    pb::Rollout {
        id: "ro-2".into(),
        spec: Some(spec),
        state: pb::RolloutState::Draft as i32,
        created_at_ms: T0,
        ..Default::default()
    }
}

/// ro-1, paused by its canary and rolled back automatically.
fn rolled_back_rollout() -> pb::Rollout {
    pb::Rollout {
        state: pb::RolloutState::Paused as i32,
        state_reason: "stage canary: 1 failure(s) ≥ threshold 1".into(),
        rolled_back_by: Some(rollback_link("ro-1-rollback")),
        ..running_rollout()
    }
}

fn rollback_link(other: &str) -> pb::RollbackLink {
    pb::RollbackLink {
        rollout_id: other.into(),
        scope: pb::RollbackScope::Failed as i32,
        automatic: true,
        by: actor("system", "system"),
        reason: "rollout ro-1 stopped: stage canary: 1 failure(s) ≥ threshold 1".into(),
        at_ms: T0 + 600_000,
    }
}

/// The linked rollout that reverts ro-1's failed devices.
fn rollback_rollout() -> pb::Rollout {
    let mut spec = spec();
    spec.name = "rollback of hue".into();
    spec.firmware_id = "fw-old".into();
    spec.allow_downgrade = true;
    spec.abort_criteria.clear();
    spec.rollback = pb::RollbackScope::None as i32;
    pb::Rollout {
        id: "ro-1-rollback".into(),
        spec: Some(spec),
        state: pb::RolloutState::Running as i32,
        created_by: actor("system", "system"),
        created_at_ms: T0 + 600_000,
        started_at_ms: T0 + 600_000,
        exclusions: vec![pb::Exclusion {
            device_id: "home/w4".into(),
            code: pb::ErrorCode::NoFirmware as i32,
            reason: "the image it ran before (version 2.2) is not in the catalog".into(),
        }],
        rollback_of: Some(rollback_link("ro-1")),
        revert_targets: vec![pb::RevertTarget {
            device_id: "home/w2".into(),
            firmware_id: "fw-old".into(),
        }],
        ..Default::default()
    }
}

fn plan() -> pb::RolloutPlan {
    pb::RolloutPlan {
        stages: vec![
            pb::PlannedStage {
                index: 0,
                name: "canary".into(),
                device_ids: vec!["home/a".into(), "home/0x01".into(), "home/b".into()],
                device_count: 3,
                estimated_s: 600,
                canaries: vec![
                    pb::CanaryGroup {
                        site_id: "home".into(),
                        transport: pb::Transport::Esphome as i32,
                        network: "esphome".into(),
                        device_ids: vec!["home/a".into(), "home/b".into()],
                        available: 9,
                    },
                    pb::CanaryGroup {
                        site_id: "home".into(),
                        transport: pb::Transport::Zigbee2mqtt as i32,
                        network: "zigbee-attic".into(),
                        device_ids: vec!["home/0x01".into()],
                        available: 1,
                    },
                ],
            },
            pb::PlannedStage {
                index: 1,
                name: "everyone".into(),
                device_ids: (0..11).map(|i| format!("home/d{i:02}")).collect(),
                device_count: 11,
                estimated_s: 3_600,
                canaries: vec![],
            },
        ],
        exclusions: vec![pb::Exclusion {
            device_id: "home/c".into(),
            code: 5000,
            reason: "already on 2.3".into(),
        }],
        exclusion_count: 1,
        estimated_duration_s: 4_200,
        warnings: vec!["stage wave-1 has no devices".into()],
        policies: vec![
            "rate: at most 30/min, ramp from 2/min ×2 every 5 successes".into(),
            "canaries: stage canary takes 2 device(s) from every site and zigbee2mqtt network"
                .into(),
            "abort criterion 1: failed ≥ 20% of ≥ 10 finished → pause".into(),
            "health window: ESPHome 2 min, Zigbee 10 min; devices without an API end unconfirmed"
                .into(),
        ],
        target_count: 14,
        makespan_s: Some(86_400 + 4_200),
        notes: vec![
            "model esp32dev over esphome: 42 s, the median of 15 past update(s)".into(),
            "model TRADFRI bulb over zigbee2mqtt: no past update in the log, assumed 1200 s (the typical zigbee2mqtt transfer)".into(),
        ],
        zigbee_airtime: vec![pb::ZigbeeAirtime {
            site_id: "home".into(),
            network: "zigbee-attic".into(),
            airtime_s: 1_200,
            share_percent: 1.3,
        }],
    }
}

fn site() -> pb::Site {
    pb::Site {
        id: "home".into(),
        agent_connected: true,
        agent_version: "0.4.0".into(),
        agent_id: "agent-1".into(),
        connected_since_ms: T0,
        last_heartbeat_ms: 0,
        timezone: "Europe/Berlin".into(),
        transports: vec![
            pb::TransportInstance {
                kind: pb::Transport::Zigbee2mqtt as i32,
                name: "zigbee-attic".into(),
                device_count: 12,
                connected: true,
                detail: "mqtt://broker:1883".into(),
            },
            pb::TransportInstance {
                kind: pb::Transport::Serial as i32,
                name: "serial".into(),
                device_count: 0,
                connected: false,
                detail: String::new(),
            },
        ],
        device_count: 13,
        reachable_count: 11,
        running_tasks: 2,
        peer: "10.0.0.7:50123".into(),
    }
}

fn tokens() -> Vec<pb::TokenInfo> {
    vec![
        pb::TokenInfo {
            id: "tok-1".into(),
            name: "ci".into(),
            role: 2,
            created_at_ms: T0,
            expires_at_ms: 4_000_000_000_000,
            revoked: false,
            created_by: actor("admin", "admin"),
        },
        pb::TokenInfo {
            id: "tok-2".into(),
            name: "old".into(),
            role: 1,
            created_at_ms: T0,
            expires_at_ms: T0 + 1,
            ..Default::default()
        },
        pb::TokenInfo {
            id: "tok-3".into(),
            name: "gone".into(),
            role: 3,
            created_at_ms: T0,
            revoked: true,
            ..Default::default()
        },
    ]
}

/// Appends one case: the JSON document and the human text.
fn case<T: Serialize>(out: &mut String, name: &str, view: &T, human: impl FnOnce(&T) -> String) {
    let json = serde_json::to_string_pretty(view).expect("serialize");
    let _ = writeln!(out, "=== {name} (json)\n{json}");
    let _ = writeln!(out, "=== {name} (table)\n{}", human(view));
}

/// Appends a human text only.
fn text(out: &mut String, name: &str, text: &str) {
    let _ = writeln!(out, "=== {name}\n{text}");
}

fn render_server(o: &mut String) {
    for (name, tls) in [("server status", false), ("server status tls", true)] {
        let s = pb::ServerStatus {
            version: "0.4.0".into(),
            started_at_ms: T0,
            uptime_s: 93_784,
            event_log: Some(pb::EventLogStatus {
                last_seq: 1234,
                size_bytes: 5_000_000,
                replay_ms: 42,
            }),
            connected_agents: 1,
            sites: 2,
            devices: 13,
            firmware: 4,
            rollouts_running: 1,
            tasks_active: 3,
            tls,
            auth_required: tls,
            caller: actor("alice", "admin"),
        };
        case(
            o,
            name,
            &ServerStatusJson::new("http://127.0.0.1:7600", &s),
            server::status,
        );
    }
}

fn render_firmware(o: &mut String) {
    let fws = [zigbee_firmware(), esp_firmware()];
    for f in &fws {
        case(
            o,
            "firmware show",
            &FirmwareJson::new(f),
            firmware::render::firmware,
        );
    }
    case(
        o,
        "firmware list",
        &FirmwareListJson {
            firmware: fws.iter().map(FirmwareJson::new).collect(),
        },
        firmware::render::firmware_list,
    );
    case(
        o,
        "firmware list empty",
        &FirmwareListJson { firmware: vec![] },
        firmware::render::firmware_list,
    );
    for already_existed in [false, true] {
        case(
            o,
            "firmware upload",
            &UploadJson {
                firmware: Some(FirmwareJson::new(&esp_firmware())),
                already_existed,
            },
            firmware::render::upload,
        );
    }
    case(
        o,
        "firmware upload without details",
        &UploadJson {
            firmware: None,
            already_existed: false,
        },
        firmware::render::upload,
    );
}

fn render_device(o: &mut String) {
    let devices = [zigbee_device(), esp_device()];
    for d in &devices {
        case(
            o,
            "device show",
            &DeviceJson::new(d),
            device::render::device,
        );
    }
    let mut bare = esp_device();
    bare.current_task = None;
    bare.signal = None;
    case(
        o,
        "device show bare",
        &DeviceJson::new(&bare),
        device::render::device,
    );
    case(
        o,
        "device list",
        &DeviceListJson {
            devices: devices.iter().map(DeviceJson::new).collect(),
            total: 40,
        },
        device::render::device_list,
    );
    case(
        o,
        "device list empty",
        &DeviceListJson {
            devices: vec![],
            total: 0,
        },
        device::render::device_list,
    );
}

fn render_device_check(o: &mut String) {
    let batch = pb::BatchCheckResponse {
        checks: vec![
            pb::DeviceCheck {
                device_id: "home/a".into(),
                status: 1,
                current: version("1.0", None),
                available_firmware_id: "fw-1".into(),
                available: version("2.0", None),
                can_upgrade: true,
                reachable: true,
                checked_at_ms: T0,
                ..Default::default()
            },
            pb::DeviceCheck {
                device_id: "home/b".into(),
                status: 4,
                error: Some(pb::TaskError {
                    code: 5019,
                    message: String::new(),
                }),
                ..Default::default()
            },
            pb::DeviceCheck {
                device_id: "home/c".into(),
                status: 0,
                current: version("2.0", None),
                remind: "up to date".into(),
                reachable: true,
                ..Default::default()
            },
            pb::DeviceCheck {
                device_id: "home/remote".into(),
                status: 5,
                current: version("1.0", None),
                reachable: true,
                ..Default::default()
            },
        ],
        available: 1,
        up_to_date: 1,
        timed_out: 1,
        failed: 0,
        asleep: 1,
    };
    case(
        o,
        "device check batch",
        &CheckReportJson::batch(&batch),
        device::render::checks,
    );
    case(
        o,
        "device check single",
        &CheckReportJson::single(&batch.checks[0]),
        device::render::checks,
    );
}

fn render_device_update(o: &mut String) {
    for t in [succeeded_task(), failed_task(), updating_task()] {
        case(
            o,
            "device update",
            &UpdateJson::from_task(&t),
            device::render::update,
        );
    }
    let started = pb::UpdateDeviceResponse {
        task: Some(updating_task()),
        from: version("2.2.0", None),
        to: None,
    };
    case(
        o,
        "device update started",
        &UpdateJson::new(&started),
        device::render::update,
    );
    case(
        o,
        "device update no task",
        &UpdateJson::new(&pb::UpdateDeviceResponse::default()),
        device::render::update,
    );
    for t in [confirm_task(), failed_task()] {
        case(o, "device task", &TaskJson::new(&t), device::render::task);
    }
    for supported in [true, false] {
        case(
            o,
            "device auto-upgrade",
            &AutoUpgradeJson {
                device_id: "home/kitchen-esp32".into(),
                supported,
                enabled: supported,
            },
            device::render::auto_upgrade,
        );
    }
}

fn render_rollout(o: &mut String) {
    for r in [
        running_rollout(),
        draft_rollout(),
        rolled_back_rollout(),
        rollback_rollout(),
    ] {
        case(
            o,
            "rollout show",
            &RolloutJson::new(&r),
            rollout::render::rollout,
        );
        text(
            o,
            "rollout progress line",
            &rollout::render::progress_line(&RolloutJson::new(&r)),
        );
    }
    case(
        o,
        "rollout list",
        &RolloutListJson {
            rollouts: vec![
                RolloutJson::new(&running_rollout()),
                RolloutJson::new(&draft_rollout()),
            ],
        },
        rollout::render::rollout_list,
    );
    case(
        o,
        "rollout list empty",
        &RolloutListJson { rollouts: vec![] },
        rollout::render::rollout_list,
    );
    case(
        o,
        "rollout plan",
        &PlanJson::new(&plan()),
        rollout::render::plan,
    );
    let progress = pb::RolloutProgress {
        seq: 77,
        rollout: Some(running_rollout()),
        tasks: vec![updating_task()],
        remaining_s: Some(1_830),
    };
    let json = serde_json::to_string(&ProgressJson::new(&progress)).expect("serialize");
    text(o, "rollout watch line (json)", &json);
}

fn render_events(o: &mut String) {
    text(o, "events header", &events::event_header());
    for payload_json in [r#"{"id":"fw-1","size":3}"#, "", "not json"] {
        let e = pb::Event {
            seq: 7,
            stream: "firmware/fw-1".into(),
            stream_version: 1,
            r#type: "FirmwareRegistered".into(),
            schema_version: 1,
            recorded_at_ms: T0 + 123,
            actor: "alice".into(),
            payload_json: payload_json.into(),
        };
        let view = EventJson::new(&e);
        let json = serde_json::to_string(&view).expect("serialize");
        text(o, "events line (json)", &json);
        text(o, "events line (table)", &events::event_line(&view));
    }
}

fn render_site(o: &mut String) {
    case(o, "site show", &SiteJson::new(&site()), site::site);
    case(
        o,
        "site list",
        &SiteListJson {
            sites: vec![
                SiteJson::new(&site()),
                SiteJson::new(&pb::Site {
                    id: "lab".into(),
                    ..Default::default()
                }),
            ],
        },
        site::site_list,
    );
    case(
        o,
        "site list empty",
        &SiteListJson { sites: vec![] },
        site::site_list,
    );
}

fn render_token(o: &mut String) {
    let toks = tokens();
    case(
        o,
        "token list",
        &TokenListJson {
            tokens: toks.iter().map(TokenJson::new).collect(),
        },
        token::token_list,
    );
    case(
        o,
        "token list empty",
        &TokenListJson { tokens: vec![] },
        token::token_list,
    );
    for t in &toks {
        case(o, "token revoke", &TokenJson::new(t), token::token);
    }
    case(
        o,
        "token create",
        &CreatedTokenJson {
            token: "tok-1.s3cr3t".into(),
            info: Some(TokenJson::new(&toks[0])),
        },
        token::created_token,
    );
}

fn render_all() -> String {
    let mut out = String::new();
    render_server(&mut out);
    render_firmware(&mut out);
    render_device(&mut out);
    render_device_check(&mut out);
    render_device_update(&mut out);
    render_rollout(&mut out);
    render_events(&mut out);
    render_site(&mut out);
    render_token(&mut out);
    out
}

#[test]
fn views_and_renderings_are_unchanged() {
    let all = render_all();
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/render.txt");
    if std::env::var_os("OTACTL_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(&golden, &all).expect("write golden output");
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (OTACTL_UPDATE_GOLDEN=1 writes it)",
            golden.display()
        )
    });
    if expected != all {
        let first = expected
            .lines()
            .zip(all.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(all.lines().count()));
        panic!(
            "otactl output changed (first difference at line {}):\n  golden: {:?}\n  now:    {:?}\n\
             Run with OTACTL_UPDATE_GOLDEN=1 to accept the change, then review the diff of {}.",
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            all.lines().nth(first).unwrap_or("<end>"),
            golden.display()
        );
    }
}

//! A memory probe (ignored test): the projection of a bench-shaped fleet — N ESPHome devices
//! reported, batch-checked, updated by one rollout — and the resident memory it takes per
//! device. `cargo test -p ota-domain --release --lib memory_probe -- --ignored --nocapture`.

use crate::events::*;
use crate::fixture::*;
use crate::health::Health;
use crate::model::{AgentSource, VersionInfo};
use crate::projection::EventMeta;
use crate::rollout::scheduler::rollout_task_id;
use crate::rollout::spec::StageSize;
use crate::status::UpgradeStatus;
use crate::tasks::target_version;

/// otad's allocator (`server/src/main.rs`), so the probe measures what otad holds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "memory probe, run by hand"]
fn probe_projection_memory_per_device() {
    let n: usize = std::env::var("PROBE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sites = (n / 1000).max(1);
    let mut state = crate::projection::FleetState::default();
    let mut seq = 0u64;
    let mut apply = |state: &mut crate::projection::FleetState, stream: &str, e: DomainEvent| {
        seq += 1;
        let meta = EventMeta {
            seq,
            recorded_at_ms: T0,
            actor: "agent:site-000 (agent)".into(),
        };
        state.apply(&meta, stream, &e);
    };
    let ids: Vec<String> = (0..n)
        .map(|i| format!("site-{:03}/node-{:05}", i % sites, i / sites))
        .collect();
    let fw = esp_firmware("fw-9c2f3e4a5b6c7d8e", "2.0.0");
    apply(&mut state, &streams::firmware(&fw.id), fw.clone().into());
    let base = rss_kib();
    for (i, id) in ids.iter().enumerate() {
        let mut d = esp_device("1.0.0");
        d.facts.name = id
            .split_once('/')
            .map(|(_, l)| l.to_string())
            .unwrap_or_default();
        d.facts.platform = "ESP32".into();
        d.source = Some(AgentSource {
            agent_id: format!("agent-site-{:03}", i % sites),
            seq: i as u64,
        });
        apply(&mut state, &streams::device(id), d.into());
    }
    let reported = rss_kib();
    let mut sp = spec(vec![
        stage("canary", StageSize::Count(100)),
        stage("all", StageSize::CumulativePercent(100.0)),
    ]);
    sp.firmware_id = fw.id.clone();
    sp.batch_check = true;
    let rid = "ro-0123456789abcdef";
    apply(
        &mut state,
        &streams::rollout(rid),
        RolloutCreated {
            id: rid.into(),
            spec: sp.clone(),
        }
        .into(),
    );
    let started = crate::rollout::plan::plan(&sp, &state).started_event();
    apply(&mut state, &streams::rollout(rid), started.into());
    let check_id = format!("chk-{rid}-1790000000000");
    apply(
        &mut state,
        &streams::rollout(rid),
        BatchCheckStarted {
            check_id: check_id.clone(),
            device_ids: ids.clone(),
            deadline_at_ms: T0,
        }
        .into(),
    );
    for (i, id) in ids.iter().enumerate() {
        let e = DeviceChecked {
            check_id: check_id.clone(),
            firmware_id: Some(fw.id.clone()),
            status: UpgradeStatus::Available,
            reachable: true,
            current: VersionInfo {
                version: "1.0.0".into(),
                ..Default::default()
            },
            update_available: None,
            error: None,
            source: Some(AgentSource {
                agent_id: format!("agent-site-{:03}", i % sites),
                seq: 1,
            }),
        };
        apply(&mut state, &streams::device(id), e.into());
    }
    apply(
        &mut state,
        &streams::rollout(rid),
        BatchCheckCompleted {
            check_id,
            timed_out: vec![],
            excluded: vec![],
        }
        .into(),
    );
    let checked = rss_kib();
    for index in 0..2u32 {
        apply(
            &mut state,
            &streams::rollout(rid),
            StageStarted {
                index,
                deadline_at_ms: None,
            }
            .into(),
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let task_id = rollout_task_id(rid, id);
        let stream = streams::task(&task_id);
        let source = || {
            Some(AgentSource {
                agent_id: format!("agent-site-{:03}", i % sites),
                seq: 2,
            })
        };
        let created = TaskCreated {
            task_id: task_id.clone(),
            device_id: id.clone(),
            site_id: id
                .split_once('/')
                .map(|(s, _)| s.to_string())
                .unwrap_or_default(),
            rollout_id: Some(rid.into()),
            stage: u32::from(i >= 100),
            firmware_id: fw.id.clone(),
            target: target_version(&fw),
            upgrade_type: sp.upgrade_type,
            downgrade: false,
            max_attempts: 3,
            initial_backoff_s: 30,
            max_backoff_s: 600,
            timeout_s: 0,
            flash_offset: None,
            auto: false,
            wake_timeout_s: 0,
            from: Some(VersionInfo {
                version: "1.0.0".into(),
                ..Default::default()
            }),
            from_firmware_id: None,
        };
        apply(&mut state, &stream, created.into());
        state.keep_stream_version(&stream, 1);
        apply(
            &mut state,
            &stream,
            TaskDispatched {
                attempt: 1,
                command_id: i as u64,
                timeout_at_ms: T0,
                schedule: false,
            }
            .into(),
        );
        for (status, p) in [
            (UpgradeStatus::AgentPreparing, 0.0),
            (UpgradeStatus::Updating, 0.0),
            (UpgradeStatus::Updating, 100.0),
        ] {
            apply(
                &mut state,
                &stream,
                TaskProgressed {
                    attempt: 1,
                    status,
                    progress: p,
                    remaining_s: None,
                    bytes_sent: 4096,
                    bytes_total: 4096,
                    detail: "downloading the firmware from the server".into(),
                    source: source(),
                }
                .into(),
            );
        }
        apply(
            &mut state,
            &stream,
            TaskSucceeded {
                attempt: 1,
                from: VersionInfo {
                    version: "1.0.0".into(),
                    ..Default::default()
                },
                to: VersionInfo {
                    version: "2.0.0".into(),
                    ..Default::default()
                },
                duration_ms: 5,
                wire_bytes: 4096,
                source: source(),
                late: false,
                health: Health::NotChecked,
            }
            .into(),
        );
        let mut d = esp_device("2.0.0");
        d.facts.name = id
            .split_once('/')
            .map(|(_, l)| l.to_string())
            .unwrap_or_default();
        d.facts.platform = "ESP32".into();
        d.source = source();
        apply(&mut state, &streams::device(id), d.into());
    }
    let updated = rss_kib();
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 * 1024.0 / n as f64;
    println!(
        "probe {n} devices: reported {:.0} B/device, batch check {:.0} B/device, tasks {:.0} B/device, total {:.0} B/device ({} MiB)",
        per(base, reported),
        per(reported, checked),
        per(checked, updated),
        per(base, updated),
        (updated - base) / 1024
    );
    println!(
        "sizes: DeviceView {} TaskView {} TaskCreated {} DeviceFacts {} DeviceChecked {} VersionInfo {}",
        std::mem::size_of::<crate::projection::DeviceView>(),
        std::mem::size_of::<crate::projection::TaskView>(),
        std::mem::size_of::<TaskCreated>(),
        std::mem::size_of::<crate::model::DeviceFacts>(),
        std::mem::size_of::<DeviceChecked>(),
        std::mem::size_of::<VersionInfo>(),
    );
    let bytes = postcard::to_allocvec(&state).map(|v| v.len()).unwrap_or(0);
    println!("snapshot body {:.0} B/device", bytes as f64 / n as f64);
    assert_eq!(state.tasks.len(), n);
}

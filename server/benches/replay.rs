//! Startup replay benchmark: how fast otad rebuilds its state from a realistic event log.
//!
//! `cargo bench -p ota-server --bench replay [-- --events 1000000 --writers 256]`
//!
//! Builds a log shaped like a busy fleet — devices reported by their sites, then update tasks
//! (created, dispatched, eight progress reports, succeeded) — written by many concurrent writers
//! as the server writes it, closes it, and times what `otad` does at startup: open the sled store,
//! read every event, decode it (postcard, upcasting) and fold it into the fleet projection.
//! Prints events per second and peak memory. Figures are for this machine only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ota_domain::events::*;
use ota_domain::model::*;
use ota_domain::rollout::spec::UpgradeType;
use ota_domain::status::UpgradeStatus;
use ota_server::core::{Clock, Core, SnapshotSettings};
use ota_server::store::{
    EventStore, ExpectedVersion, NewEvent, SledEventStore, SledOptions, StreamAppend,
};
// tokio's Instant is std's unless time is paused, which it never is here.
use tokio::time::Instant;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn new_event(e: DomainEvent) -> NewEvent {
    NewEvent {
        event_type: e.type_name().to_string(),
        schema_version: e.schema_version(),
        payload: e.encode(),
        actor: "agent:site-1 (agent)".into(),
        recorded_at_ms: 1_790_000_000_000,
    }
}

fn device_event(i: u64) -> DomainEvent {
    DeviceReported {
        facts: DeviceFacts {
            transport: Some(if i.is_multiple_of(3) {
                Transport::Esphome
            } else {
                Transport::Zigbee2Mqtt
            }),
            network: format!("zigbee-{}", i % 20),
            name: format!("device-{i}"),
            model: "LCA001".into(),
            vendor: "Signify".into(),
            manufacturer_code: Some(0x100B),
            image_type: Some(0x0119),
            current: VersionInfo {
                version: "33562880".into(),
                file_version: Some(33_562_880),
                ..Default::default()
            },
            power_source: PowerSource::Mains,
            signal: Some(Signal::LinkQuality(120)),
            reachable: true,
            supports_ota: true,
            ..Default::default()
        },
        source: Some(AgentSource {
            agent_id: format!("agent-{}", i % 20),
            seq: i + 1,
        }),
    }
    .into()
}

fn task_events(task: u64, devices: u64) -> Vec<DomainEvent> {
    let id = format!("task-{task:016x}");
    let device = task % devices;
    let mut v: Vec<DomainEvent> = vec![
        TaskCreated {
            task_id: id,
            device_id: format!("site-{}/device-{device}", device % 20),
            site_id: format!("site-{}", device % 20),
            rollout_id: Some(format!("ro-{}", task % 5)),
            stage: (task % 3) as u32,
            firmware_id: "fw-0123456789abcdef".into(),
            target: VersionInfo {
                version: "33562881".into(),
                file_version: Some(33_562_881),
                ..Default::default()
            },
            upgrade_type: UpgradeType::Notify,
            downgrade: false,
            max_attempts: 3,
            initial_backoff_s: 30,
            max_backoff_s: 900,
            timeout_s: 1800,
            flash_offset: None,
            wake_timeout_s: 0,
            from: None,
            from_firmware_id: None,
            auto: false,
        }
        .into(),
        TaskDispatched {
            attempt: 1,
            command_id: task,
            timeout_at_ms: ota_domain::time::UnixMillis::from_unix_ms(1_790_000_000_000),
            schedule: false,
        }
        .into(),
    ];
    for p in 1..=8u32 {
        v.push(
            TaskProgressed {
                attempt: 1,
                status: UpgradeStatus::Updating,
                progress: p as f32 * 12.5,
                remaining_s: Some(600 - p * 60),
                bytes_sent: u64::from(p) * 20_000,
                bytes_total: 160_000,
                detail: String::new(),
                source: Some(AgentSource {
                    agent_id: "agent-1".into(),
                    seq: task * 10 + u64::from(p),
                }),
            }
            .into(),
        );
    }
    v.push(
        TaskSucceeded {
            attempt: 1,
            from: VersionInfo {
                version: "33562880".into(),
                ..Default::default()
            },
            to: VersionInfo {
                version: "33562881".into(),
                ..Default::default()
            },
            duration_ms: 600_000,
            wire_bytes: 160_000,
            late: false,
            health: ota_domain::health::Health::NotChecked,
            source: Some(AgentSource {
                agent_id: "agent-1".into(),
                seq: task * 10 + 9,
            }),
        }
        .into(),
    );
    v
}

fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |f: &str| {
        status
            .lines()
            .find(|l| l.starts_with(f))
            .map(|l| l.trim_start_matches(f).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "peak RSS (VmHWM) {}, current RSS {}",
        get("VmHWM:"),
        get("VmRSS:")
    )
}

fn main() {
    let target = arg("--events", 1_000_000);
    let writers = arg("--writers", 256);
    let devices = 20_000u64.min(target / 10).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events");
    let written = rt.block_on(async {
        let store = Arc::new(SledEventStore::open(&path, SledOptions::default()).expect("open"));
        let started = Instant::now();
        // Devices first, as sites report them.
        let batch: Vec<StreamAppend> = (0..devices)
            .map(|i| {
                StreamAppend::new(
                    format!("device/site-{}/device-{i}", i % 20),
                    ExpectedVersion::Any,
                    vec![new_event(device_event(i))],
                )
            })
            .collect();
        for chunk in batch.chunks(500) {
            store.append(chunk.to_vec()).await.expect("append devices");
        }
        // Then tasks, each stream written event by event by one of many concurrent writers.
        let per_task = 11u64;
        let tasks = (target.saturating_sub(devices)) / per_task;
        let next = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let (store, next) = (store.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let t = next.fetch_add(1, Ordering::Relaxed);
                        if t >= tasks {
                            break;
                        }
                        let stream = format!("task/task-{t:016x}");
                        for (v, e) in task_events(t, devices).into_iter().enumerate() {
                            store
                                .append(vec![StreamAppend::new(
                                    &stream,
                                    ExpectedVersion::Exact(v as u64),
                                    vec![new_event(e)],
                                )])
                                .await
                                .expect("append task event");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("writer");
        }
        let n = store.last_seq();
        println!(
            "wrote {n} events ({devices} devices, {tasks} tasks) with {writers} writers in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        store.flush().await.expect("flush");
        n
    });
    // Let sled's background threads let go of the directory.
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(async {
        let started = Instant::now();
        let store: Arc<dyn EventStore> =
            Arc::new(SledEventStore::open(&path, SledOptions::default()).expect("reopen"));
        let opened = started.elapsed();
        let core = Core::start(store, Clock::new()).await.expect("replay");
        let total = started.elapsed();
        let replay = core.replay_duration();
        let state = core.read();
        assert_eq!(state.last_seq, written);
        println!("\n== startup replay of {written} events ==");
        println!("open store:            {:.3} s", opened.as_secs_f64());
        println!(
            "read+decode+project:   {:.3} s  ({:.0} events/s)",
            replay.as_secs_f64(),
            written as f64 / replay.as_secs_f64()
        );
        println!(
            "total to ready:        {:.3} s  ({:.0} events/s)",
            total.as_secs_f64(),
            written as f64 / total.as_secs_f64()
        );
        println!(
            "state: {} devices, {} tasks",
            state.devices.len(),
            state.tasks.len()
        );
        println!("{}", rss());
        drop(state);

        // The same start from a projection snapshot taken at the end of the log.
        let snap_dir = path.with_file_name("snapshots");
        let written_at = Instant::now();
        core.write_snapshot(&snap_dir)
            .await
            .expect("write a snapshot")
            .expect("a non-empty log");
        let write_s = written_at.elapsed().as_secs_f64();
        let bytes: u64 = std::fs::read_dir(&snap_dir)
            .expect("snapshot dir")
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        drop(core);
        let started = Instant::now();
        let store: Arc<dyn EventStore> =
            Arc::new(SledEventStore::open(&path, SledOptions::default()).expect("reopen"));
        let snapshots = SnapshotSettings {
            dir: snap_dir.clone(),
            every_events: 0,
        };
        let core = Core::start_with_snapshots(store, Clock::new(), Some(snapshots))
            .await
            .expect("start from the snapshot");
        let from_snapshot = started.elapsed();
        assert_eq!(core.started_from_snapshot(), Some(written));
        println!("\n== startup from a snapshot at event {written} ==");
        println!(
            "snapshot: {:.1} MiB written in {:.3} s",
            bytes as f64 / (1024.0 * 1024.0),
            write_s
        );
        println!(
            "total to ready:        {:.3} s  (without the snapshot: {:.3} s)",
            from_snapshot.as_secs_f64(),
            total.as_secs_f64()
        );
        println!("{}", rss());
    });
}

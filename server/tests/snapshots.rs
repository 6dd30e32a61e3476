//! Projection snapshots: a start from a snapshot gives exactly the state a full replay gives,
//! and a snapshot that is damaged, of another log or ahead of the log is ignored.

use std::sync::Arc;
use std::time::Duration;

use ota_domain::events::*;
use ota_domain::model::*;
use ota_domain::rollout::spec::UpgradeType;
use ota_domain::status::UpgradeStatus;
use ota_domain::time::UnixMillis;
use ota_server::core::{Clock, Core, SnapshotSettings};
use ota_server::store::{EventStore, ExpectedVersion, MemEventStore, NewEvent, StreamAppend};

fn new_event(e: DomainEvent) -> NewEvent {
    NewEvent {
        event_type: e.type_name().to_string(),
        schema_version: e.schema_version(),
        payload: e.encode(),
        actor: "agent:home (agent)".into(),
        recorded_at_ms: 1_790_000_000_000,
    }
}

fn device(i: u64, version: &str) -> DomainEvent {
    DeviceReported {
        facts: DeviceFacts {
            transport: Some(Transport::Esphome),
            name: format!("node-{i}"),
            model: "esp32dev".into(),
            current: VersionInfo {
                version: version.into(),
                ..Default::default()
            },
            reachable: true,
            supports_ota: true,
            ..Default::default()
        },
        source: Some(AgentSource {
            agent_id: "agent-1".into(),
            seq: i + 1,
        }),
    }
    .into()
}

fn task(i: u64) -> Vec<DomainEvent> {
    vec![
        TaskCreated {
            task_id: format!("task-{i}"),
            device_id: format!("home/node-{i}"),
            site_id: "home".into(),
            rollout_id: None,
            stage: 0,
            firmware_id: "fw-1".into(),
            target: VersionInfo {
                version: "2.0.0".into(),
                ..Default::default()
            },
            upgrade_type: UpgradeType::Notify,
            downgrade: false,
            max_attempts: 3,
            initial_backoff_s: 30,
            max_backoff_s: 900,
            timeout_s: 600,
            flash_offset: None,
            wake_timeout_s: 0,
            from: None,
            from_firmware_id: None,
            auto: false,
        }
        .into(),
        TaskDispatched {
            attempt: 1,
            command_id: i + 1,
            timeout_at_ms: UnixMillis::from_unix_ms(1_790_000_600_000),
            schedule: false,
        }
        .into(),
        TaskProgressed {
            attempt: 1,
            status: UpgradeStatus::Updating,
            progress: 50.0,
            remaining_s: Some(10),
            bytes_sent: 1000,
            bytes_total: 2000,
            detail: String::new(),
            source: None,
        }
        .into(),
    ]
}

/// Devices `from..to`, then three task events for each.
async fn fill(store: &Arc<dyn EventStore>, from: u64, to: u64, version: &str) {
    for i in from..to {
        store
            .append(vec![StreamAppend::new(
                format!("device/home/node-{i}"),
                ExpectedVersion::Any,
                vec![new_event(device(i, version))],
            )])
            .await
            .unwrap();
    }
    for i in from..to {
        let events = task(i).into_iter().map(new_event).collect();
        store
            .append(vec![StreamAppend::new(
                format!("task/task-{i}"),
                ExpectedVersion::Any,
                events,
            )])
            .await
            .unwrap();
    }
}

fn settings(dir: &std::path::Path, every_events: u64) -> Option<SnapshotSettings> {
    Some(SnapshotSettings {
        dir: dir.to_owned(),
        every_events,
    })
}

async fn full_replay(store: &Arc<dyn EventStore>) -> ota_domain::projection::FleetState {
    let core = Core::start(store.clone(), Clock::new()).await.unwrap();
    core.read().clone()
}

#[tokio::test]
async fn a_start_from_a_snapshot_equals_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemEventStore::new());
    fill(&store, 0, 40, "1.0.0").await;
    let first = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    assert_eq!(first.started_from_snapshot(), None);
    let point = first.write_snapshot(dir.path()).await.unwrap().unwrap();
    assert_eq!(point.seq, store.last_seq());
    drop(first);

    // More happens after the snapshot: new devices, newer versions of old ones.
    fill(&store, 30, 60, "2.0.0").await;
    let again = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    assert_eq!(again.started_from_snapshot(), Some(point.seq));
    let from_snapshot = again.read().clone();
    assert_eq!(from_snapshot, full_replay(&store).await);
    assert_eq!(from_snapshot.devices.len(), 60);
    assert_eq!(
        from_snapshot.devices["home/node-35"].facts.current.version,
        "2.0.0"
    );

    // Stream versions came through too: the next append to a task stream expects version 6
    // (3 events before and 3 after the snapshot), and the core agrees.
    assert_eq!(again.stream_version("task/task-35"), 6);
    assert_eq!(again.stream_version("task/task-5"), 3);
}

#[tokio::test]
async fn a_damaged_snapshot_is_ignored_and_the_log_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemEventStore::new());
    fill(&store, 0, 20, "1.0.0").await;
    let core = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    core.write_snapshot(dir.path()).await.unwrap().unwrap();
    drop(core);
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();

    let core = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    assert_eq!(core.started_from_snapshot(), None);
    assert_eq!(*core.read(), full_replay(&store).await);
}

#[tokio::test]
async fn a_snapshot_of_another_log_or_ahead_of_the_log_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemEventStore::new());
    fill(&store, 0, 20, "1.0.0").await;
    let core = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    core.write_snapshot(dir.path()).await.unwrap().unwrap();
    drop(core);

    // Another log, longer, whose event at the snapshot's sequence number is another one.
    let other: Arc<dyn EventStore> = Arc::new(MemEventStore::new());
    fill(&other, 100, 130, "1.0.0").await;
    let core = Core::start_with_snapshots(other.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    assert_eq!(core.started_from_snapshot(), None);
    assert_eq!(*core.read(), full_replay(&other).await);

    // A log that ends before the snapshot (restored from an older backup).
    let shorter: Arc<dyn EventStore> = Arc::new(MemEventStore::new());
    fill(&shorter, 0, 5, "1.0.0").await;
    let core = Core::start_with_snapshots(shorter.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    assert_eq!(core.started_from_snapshot(), None);
    assert_eq!(core.read().devices.len(), 5);
}

#[tokio::test]
async fn the_core_writes_a_snapshot_every_n_events_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemEventStore::new());
    let core = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 25))
        .await
        .unwrap();
    fill(&store, 0, 10, "1.0.0").await; // 40 events
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let newest = loop {
        let files = ota_server::snapshot::list(dir.path()).unwrap();
        if let Some(&(n, _)) = files.first() {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(newest >= 25, "a snapshot at {newest}, before 25 events");
    drop(core);
    let again = Core::start_with_snapshots(store.clone(), Clock::new(), settings(dir.path(), 0))
        .await
        .unwrap();
    assert_eq!(again.started_from_snapshot(), Some(newest));
    assert_eq!(*again.read(), full_replay(&store).await);
}

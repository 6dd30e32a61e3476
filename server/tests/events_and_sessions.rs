//! The event log as a stream, and agent sessions: hello, inventory, acknowledgements, duplicates,
//! disconnects.

use std::time::Duration;

use futures::StreamExt;
use ota_firmware::builders::ZigbeeOtaBuilder;
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::session::*;
use ota_testkit::site::esphome;
use ota_testkit::upload::*;
use tonic::Code;

#[tokio::test]
async fn tail_catches_up_then_follows() {
    let ts = TestOtad::start().await;
    let f1 = ZigbeeOtaBuilder::new(1, 2, 3).upgrade_image(100).build();
    ts.try_upload(meta("a", "1"), &f1).await.unwrap();

    let all = ts.all_events().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].seq, 1);
    assert_eq!(all[0].r#type, "FirmwareRegistered");
    assert!(all[0].stream.starts_with("firmware/fw-"));
    assert_eq!(all[0].actor, "local (admin)");
    let payload: serde_json::Value = serde_json::from_str(&all[0].payload_json).unwrap();
    assert_eq!(payload["name"], "a");
    assert_eq!(payload["zigbee"]["file_version"], 3);

    let mut live = ts
        .events()
        .tail(pb::TailEventsRequest {
            from_seq: 1,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.next().await.unwrap().unwrap().seq, 1);
    let f2 = ZigbeeOtaBuilder::new(1, 2, 4).upgrade_image(100).build();
    ts.try_upload(meta("b", "1"), &f2).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 2);

    // Filters.
    let none = all_events(
        &ts.channel,
        pb::TailEventsRequest {
            types: vec!["TaskCreated".into()],
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn inventory_becomes_devices_once_and_disconnect_makes_them_unreachable() {
    let ts = TestOtad::start().await;
    let (mut agent, welcome) = AgentSession::connect(&ts.channel, "home", "agent-1", 0)
        .await
        .unwrap();
    assert_eq!(welcome.acked_seq, 0);
    let inv = pb::agent_message::Body::Inventory(pb::Inventory {
        full: true,
        devices: vec![esphome("kitchen", "1.0.0"), esphome("garage", "1.0.0")],
        removed_local_ids: vec![],
    });
    agent.send(1, inv.clone()).await;
    assert_eq!(agent.acked().await, 1);
    let list = ts
        .devices()
        .list(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 2);
    assert!(
        list.devices
            .iter()
            .all(|d| d.reachable && d.site_id == "home")
    );
    assert_eq!(list.devices[1].id, "home/kitchen");
    let events_before = ts.app().core.store().last_seq();

    // An identical inventory under a new seq is acknowledged and records nothing. (The same
    // seq again would break the session's rules: `agent_session.rs`.)
    agent.send(2, inv).await;
    assert_eq!(agent.acked().await, 2);
    assert_eq!(ts.app().core.store().last_seq(), events_before);

    // A full inventory without "garage" removes it.
    agent
        .send(
            3,
            pb::agent_message::Body::Inventory(pb::Inventory {
                full: true,
                devices: vec![esphome("kitchen", "1.0.1")],
                removed_local_ids: vec![],
            }),
        )
        .await;
    assert_eq!(agent.acked().await, 3);
    let list = ts
        .devices()
        .list(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 1);
    assert_eq!(list.devices[0].current.as_ref().unwrap().version, "1.0.1");

    // Closing the stream disconnects the site: devices are unreachable, the site shows it.
    drop(agent);
    let app = ts.app();
    tokio::time::timeout(Duration::from_secs(10), async {
        while app.sessions.is_connected("home") {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let d = ts
        .devices()
        .get(pb::GetDeviceRequest {
            id: "home/kitchen".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.reachable);

    // Reconnecting: the welcome carries the acknowledged seq, so the agent resends only newer reports.
    let (_agent, welcome) = AgentSession::connect(&ts.channel, "home", "agent-1", 0)
        .await
        .unwrap();
    assert_eq!(welcome.acked_seq, 3);
    let site = ts
        .sites()
        .get(pb::GetSiteRequest { id: "home".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(site.agent_connected);
    assert_eq!(site.device_count, 1);
    assert_eq!(site.timezone, "Europe/Berlin");
}

#[tokio::test]
async fn bad_hellos_are_refused() {
    let ts = TestOtad::start().await;
    let err = AgentSession::connect(&ts.channel, "../x", "a", 0)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("site id"), "{}", err.message());
    let err = AgentSession::connect(&ts.channel, "home", "", 0)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn reports_for_tasks_of_other_sites_are_refused() {
    let ts = TestOtad::start().await;
    // A task at "away": its lamp is updated.
    let (mut away, _) = AgentSession::connect(&ts.channel, "away", "agent-away", 0)
        .await
        .unwrap();
    away.send(1, inventory(vec![esphome("lamp", "1.0.0")]))
        .await;
    assert_eq!(away.acked().await, 1);
    let fw = upload_firmware(&ts.channel, meta("lamp", "2.0.0"), &esp_image("2.0.0")).await;
    let task = ts
        .devices()
        .update(pb::UpdateDeviceRequest {
            device_id: "away/lamp".into(),
            firmware_id: fw.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let Some(pb::server_message::Body::Update(u)) = away.command().await.body else {
        panic!("expected the update command at away");
    };
    assert_eq!(u.task_id, task.id);

    // The home agent reports progress for away's task, then for a task nobody has: both are
    // refused (so the agent drops them instead of sending them for ever), never acknowledged,
    // and nothing is recorded from them.
    let (mut home, _) = AgentSession::connect(&ts.channel, "home", "agent-home", 0)
        .await
        .unwrap();
    let recorded = ts.app().core.store().last_seq();
    let progress = |task_id: &str| {
        pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: task_id.into(),
            attempt: u.attempt,
            status: pb::UpgradeStatus::Updating as i32,
            progress: 10.0,
            ..Default::default()
        })
    };
    home.send(1, progress(&task.id)).await;
    assert_eq!(
        home.refused().await,
        (1, format!("task {} belongs to another site", task.id))
    );
    home.send(2, progress("task-nope")).await;
    assert_eq!(
        home.refused().await,
        (2, "unknown task \"task-nope\"".to_string())
    );
    assert_eq!(ts.app().core.store().last_seq(), recorded);
    let progress_now = ts.app().core.read().tasks[&task.id].progress;
    assert_eq!(progress_now, 0.0);

    // The same report from away counts.
    away.send(2, progress(&task.id)).await;
    assert_eq!(away.acked().await, 2);
    assert_eq!(ts.app().core.read().tasks[&task.id].progress, 10.0);
}

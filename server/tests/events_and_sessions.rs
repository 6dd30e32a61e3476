//! The event log as a stream, and agent sessions: hello, inventory, acknowledgements, duplicates,
//! disconnects.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use ota_firmware::builders::ZigbeeOtaBuilder;
use ota_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[tokio::test]
async fn tail_catches_up_then_follows() {
    let ts = TestServer::start().await;
    let f1 = ZigbeeOtaBuilder::new(1, 2, 3).upgrade_image(100).build();
    upload(&ts, meta("a", "1"), &f1).await.unwrap();

    let all: Vec<pb::Event> = ts
        .events()
        .tail(pb::TailEventsRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await;
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
    upload(&ts, meta("b", "1"), &f2).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 2);

    // Filters.
    let none: Vec<_> = ts
        .events()
        .tail(pb::TailEventsRequest {
            types: vec!["TaskCreated".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert!(none.is_empty());
}

struct FakeAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::ServerMessage>,
}

impl FakeAgent {
    async fn connect(
        ts: &TestServer,
        site: &str,
        agent_id: &str,
    ) -> Result<(FakeAgent, pb::Welcome), tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::AgentMessage {
            seq: 0,
            body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
                site_id: site.into(),
                agent_version: "test".into(),
                agent_id: agent_id.into(),
                timezone: "Europe/Berlin".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut inbound = ts
            .agent()
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = inbound.next().await.unwrap().unwrap();
        let Some(pb::server_message::Body::Welcome(w)) = first.body else {
            panic!("expected a welcome, got {first:?}");
        };
        Ok((FakeAgent { tx, rx: inbound }, w))
    }

    async fn send(&self, seq: u64, body: pb::agent_message::Body) {
        self.tx
            .send(pb::AgentMessage {
                seq,
                body: Some(body),
            })
            .await
            .unwrap();
    }

    async fn next_ack(&mut self) -> u64 {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.rx.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(pb::server_message::Body::Ack(a)) = m.body {
                return a.acked_seq;
            }
        }
    }
}

fn esphome_device(local: &str, version: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Esphome as i32,
        network: "esphome".into(),
        name: local.into(),
        model: "esp32dev".into(),
        chip: "esp32".into(),
        platform: "esp32".into(),
        current: Some(pb::VersionInfo {
            version: version.into(),
            ..Default::default()
        }),
        power_source: pb::PowerSource::Mains as i32,
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn inventory_becomes_devices_once_and_disconnect_makes_them_unreachable() {
    let ts = TestServer::start().await;
    let (mut agent, welcome) = FakeAgent::connect(&ts, "home", "agent-1").await.unwrap();
    assert_eq!(welcome.acked_seq, 0);
    let inv = pb::agent_message::Body::Inventory(pb::Inventory {
        full: true,
        devices: vec![
            esphome_device("kitchen", "1.0.0"),
            esphome_device("garage", "1.0.0"),
        ],
        removed_local_ids: vec![],
    });
    agent.send(1, inv.clone()).await;
    assert_eq!(agent.next_ack().await, 1);
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
    assert_eq!(agent.next_ack().await, 2);
    assert_eq!(ts.app().core.store().last_seq(), events_before);

    // A full inventory without "garage" removes it.
    agent
        .send(
            3,
            pb::agent_message::Body::Inventory(pb::Inventory {
                full: true,
                devices: vec![esphome_device("kitchen", "1.0.1")],
                removed_local_ids: vec![],
            }),
        )
        .await;
    assert_eq!(agent.next_ack().await, 3);
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
    let (_agent, welcome) = FakeAgent::connect(&ts, "home", "agent-1").await.unwrap();
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
    let ts = TestServer::start().await;
    let err = FakeAgent::connect(&ts, "../x", "a").await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("site id"), "{}", err.message());
    let err = FakeAgent::connect(&ts, "home", "").await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn reports_for_tasks_of_other_sites_are_refused() {
    let ts = TestServer::start().await;
    let (mut agent, _) = FakeAgent::connect(&ts, "home", "agent-1").await.unwrap();
    agent
        .send(
            1,
            pb::agent_message::Body::Progress(pb::TaskProgress {
                task_id: "task-nope".into(),
                attempt: 1,
                status: pb::UpgradeStatus::Updating as i32,
                progress: 10.0,
                ..Default::default()
            }),
        )
        .await;
    // Refused (so the agent drops it instead of sending it for ever), never acknowledged, and
    // nothing recorded.
    let m = tokio::time::timeout(Duration::from_secs(10), agent.rx.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::server_message::Body::Refused(r)) = m.body else {
        panic!("expected a refusal, got {m:?}");
    };
    assert_eq!(r.seq, 1);
    assert_eq!(r.reason, "unknown task \"task-nope\"");
    assert_eq!(ts.app().core.store().last_seq(), 1, "only AgentConnected");
}

//! The zigbee2mqtt simulator against the transcript (reference §2), over the embedded broker.
//!
//! A plain MQTT client plays the part of whoever sends OTA requests, and compares what the
//! simulator publishes byte for byte. The bridge runs on its own paused clock
//! (`Z2mSim::start_virtual`), so 60 s query waits, 30 s progress cadences, 150 s block timeouts
//! and 120 s announce waits pass in milliseconds, and the published log carries the simulated
//! time of every message.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ota_devproto::z2m::{Response, Topics, UpdateData};
use ota_sim::broker::EmbeddedBroker;
use ota_sim::z2m::{Behavior, IndexImage, SimDevice, Z2mSim, Z2mSimConfig, Z2mVersion, image};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::timeout;

const BULB: &str = "0x000b57fffec6a5b2";
const REMOTE: &str = "0x000d6ffffe2b3c4d";
const SWITCH: &str = "0x00158d0001a2b3c4";
const T: Duration = Duration::from_secs(20);

/// 56-byte header + 6-byte element + payload = 30 000 bytes: 600 blocks of 50 B, 150 s at
/// 4 blocks/s.
fn bulb_image(version: u32) -> Vec<u8> {
    image::build(0x117C, 0x2803, version, "sim 2.4.0", 30_000 - 62)
}

struct Peer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, String, bool)>,
    topics: Topics,
}

impl Peer {
    async fn connect(broker: &EmbeddedBroker, base: &str) -> Self {
        Self::connect_as(broker, base, "peer").await
    }

    async fn connect_as(broker: &EmbeddedBroker, base: &str, name: &str) -> Self {
        // rumqttd refuses client ids with `/`, `+`, `#` or `$`.
        let id = format!("{name}-{}-{}", base.replace('/', "-"), broker.port());
        let mut o = MqttOptions::new(id, broker.host(), broker.port());
        o.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut ev) = AsyncClient::new(o, 64);
        client
            .subscribe(format!("{base}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if tx.send((p.topic, text, p.retain)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        timeout(T, subscribed_rx).await.unwrap().unwrap();
        Self {
            client,
            rx,
            topics: Topics::new(base),
        }
    }

    async fn send(&self, path: &str, payload: &str) {
        let topic = format!(
            "{}/bridge/request/device/ota_update/{path}",
            self.topics.base()
        );
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
    }

    /// The next message on `topic` (others are skipped).
    async fn next_on(&mut self, topic: &str) -> String {
        self.next_where(topic).await.1
    }

    async fn next_where(&mut self, topic: &str) -> (String, String, bool) {
        let mut skipped = Vec::new();
        let found = timeout(T, async {
            loop {
                let m = self.rx.recv().await.expect("peer connection ended");
                if m.0 == topic {
                    return m;
                }
                skipped.push(m.0);
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("nothing on {topic}; skipped {skipped:?}"))
    }

    /// Every message until one on `topic` satisfies `stop`, in order.
    async fn until(&mut self, topic: &str, stop: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        timeout(T, async {
            let mut seen = Vec::new();
            loop {
                let (t, p, _) = self.rx.recv().await.expect("peer connection ended");
                let done = t == topic && stop(&p);
                seen.push((t, p));
                if done {
                    return seen;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no matching message on {topic}"))
    }

    fn resp(&self, path: &str) -> String {
        format!(
            "{}/bridge/response/device/ota_update/{path}",
            self.topics.base()
        )
    }
}

fn config(broker: &EmbeddedBroker) -> Z2mSimConfig {
    let mut c = Z2mSimConfig::new(broker.host(), broker.port())
        .with_device(SimDevice::mains_router(BULB, "bulb").with_file_version(1))
        .with_device(SimDevice::sleepy_end_device(REMOTE, "remote", None))
        .with_device(SimDevice::without_ota(SWITCH, "dimmer_wall_switch"));
    c.last_seen = ota_sim::z2m::LastSeen::Disable;
    c
}

async fn start(c: Z2mSimConfig) -> Z2mSim {
    Z2mSim::start_virtual(c).await.unwrap()
}

fn update_of(payload: &str) -> Value {
    let v: Value = serde_json::from_str(payload).unwrap();
    v["update"].clone()
}

#[tokio::test]
async fn startup_publishes_retained_bridge_topics_and_cached_states() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut live = Peer::connect(&broker, "zigbee2mqtt").await;
    let sim = start(config(&broker)).await;
    // Once the startup messages went through the broker …
    live.next_on("zigbee2mqtt/dimmer_wall_switch").await;
    // … a client that connects later still gets the retained bridge topics.
    // (In any order: rumqttd hands out retained messages in hash order.)
    let mut peer = Peer::connect_as(&broker, "zigbee2mqtt", "late").await;
    let mut retained = std::collections::BTreeMap::new();
    while retained.len() < 3 {
        let (topic, payload, flag) = timeout(T, peer.rx.recv()).await.unwrap().unwrap();
        assert!(flag, "{topic} is delivered as retained");
        retained.insert(topic, payload);
    }
    assert_eq!(
        retained.keys().collect::<Vec<_>>(),
        [
            "zigbee2mqtt/bridge/devices",
            "zigbee2mqtt/bridge/info",
            "zigbee2mqtt/bridge/state"
        ]
    );
    assert_eq!(
        retained["zigbee2mqtt/bridge/state"],
        r#"{"state":"online"}"#
    );
    let devices = &retained["zigbee2mqtt/bridge/devices"];
    let devices = ota_devproto::z2m::devices::parse_bridge_devices(devices.as_bytes()).unwrap();
    assert_eq!(devices.len(), 4, "coordinator + 3");
    let bulb = devices.iter().find(|d| d.ieee_address == BULB).unwrap();
    assert!(bulb.supports_ota() && bulb.is_mains());
    let remote = devices.iter().find(|d| d.ieee_address == REMOTE).unwrap();
    assert!(remote.is_sleepy());
    let switch = devices.iter().find(|d| d.ieee_address == SWITCH).unwrap();
    assert!(!switch.supports_ota() && !switch.can_take_image());
    let info = sim.published_on("zigbee2mqtt/bridge/info");
    assert!(info[0].contains(r#""version":"2.14.1""#));
    // Whole cached state, sorted keys.
    assert_eq!(
        sim.published_on("zigbee2mqtt/bulb")[0],
        r#"{"linkquality":120,"update":{"installed_version":1,"latest_release_notes":null,"latest_source":null,"latest_version":1,"state":"idle"}}"#
    );
    assert_eq!(
        sim.published_on("zigbee2mqtt/remote")[0],
        r#"{"battery":87,"linkquality":90,"update":{"installed_version":604176401,"latest_release_notes":null,"latest_source":null,"latest_version":604176401,"state":"idle"}}"#
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn mains_update_with_hex_follows_the_transcript() {
    let broker = EmbeddedBroker::start().unwrap();
    let sim = start(config(&broker)).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    let img = bulb_image(90);
    let payload = format!(
        r#"{{"hex":{{"data":"{}"}},"id":"bulb","transaction":7}}"#,
        hex::encode(&img)
    );
    peer.send("update", &payload).await;
    let resp = peer.next_on(&peer.resp("update")).await;
    assert_eq!(
        resp,
        r#"{"data":{"from":{"date_code":"20220101","file_version":1,"software_build_id":"2.3.093"},"id":"bulb","to":{"date_code":"20220101","file_version":90,"software_build_id":"sim 2.4.0"}},"status":"ok","transaction":7}"#
    );
    let states: Vec<(u64, String)> = sim
        .published()
        .into_iter()
        .filter(|l| l.topic == "zigbee2mqtt/bulb")
        .skip(1)
        .map(|l| (l.at_ms, l.payload))
        .collect();
    let bodies: Vec<&str> = states.iter().map(|(_, p)| p.as_str()).collect();
    let cached = |u: &str| {
        format!(
            r#"{{"linkquality":120,"update":{{"installed_version":1,"latest_release_notes":null,"latest_source":null,"latest_version":1,{u}}}}}"#
        )
    };
    // First estimate: ceil(30000/50) blocks / 4 per s = 150 s; then every 30 s; then 100/0.
    assert_eq!(
        bodies,
        [
            cached(r#""progress":0,"remaining":150,"state":"updating""#).as_str(),
            &cached(r#""progress":20,"remaining":120,"state":"updating""#),
            &cached(r#""progress":40,"remaining":90,"state":"updating""#),
            &cached(r#""progress":60,"remaining":60,"state":"updating""#),
            &cached(r#""progress":80,"remaining":30,"state":"updating""#),
            &cached(r#""progress":100,"remaining":0,"state":"updating""#),
            r#"{"linkquality":120,"update":{"installed_version":90,"latest_release_notes":null,"latest_source":null,"latest_version":90,"state":"idle"}}"#,
        ]
    );
    let t: Vec<u64> = states.iter().map(|(t, _)| *t).collect();
    for w in t[..5].windows(2) {
        assert_eq!(w[1] - w[0], 30_000, "30 s cadence: {t:?}");
    }
    // The device announced 15 s after the upgrade end (within herdsman's 120 s wait).
    assert_eq!(t[6] - t[5], 15_000);
    let bulb = sim.device("bulb").unwrap();
    assert_eq!(bulb.installed_version, 90);
    assert_eq!(bulb.received_images, vec![img]);
    sim.shutdown().await;
}

#[tokio::test]
async fn update_from_url_installs_exactly_the_fetched_bytes() {
    let broker = EmbeddedBroker::start().unwrap();
    let img = bulb_image(0x0203_0000);
    let body = img.clone();
    let app = Router::new().route("/fw/bulb.ota", get(move || async move { body.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sim = start(config(&broker)).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    peer.send(
        "update",
        &format!(r#"{{"id":"{BULB}","transaction":"t-1","url":"http://{http}/fw/bulb.ota"}}"#),
    )
    .await;
    let resp = Response::parse(peer.next_on(&peer.resp("update")).await.as_bytes()).unwrap();
    assert!(resp.is_ok());
    assert_eq!(resp.transaction, Some(Value::from("t-1")));
    let data = UpdateData::from_value(&resp.data).unwrap();
    assert_eq!(data.to.unwrap().file_version, Some(0x0203_0000));
    assert_eq!(sim.device(BULB).unwrap().received_images, vec![img]);

    // A 404 is "No image currently available", the device stays as it was.
    peer.send(
        "update",
        &format!(r#"{{"id":"bulb","transaction":2,"url":"http://{http}/missing.ota"}}"#),
    )
    .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"Update of 'bulb' failed (No image currently available)","status":"error","transaction":2}"#
    );
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/bulb").last().unwrap()),
        serde_json::json!({"installed_version": 0x0203_0000, "latest_version": 0x0203_0000,
            "latest_source": null, "latest_release_notes": null, "state": "idle"})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn error_cases_of_the_transcript() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut c = config(&broker);
    c.devices[0].hold_at = Some(50.0);
    let sim = start(c).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;

    // 8: unknown device.
    peer.send("check", r#"{"id":"not_existing_deviceooo"}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("check")).await,
        r#"{"data":{},"error":"Device 'not_existing_deviceooo' does not exist","status":"error"}"#
    );
    // 9: no OTA support, object and string form, on check/update/schedule.
    for (path, payload) in [
        ("check", r#"{"id":"dimmer_wall_switch"}"#),
        ("update", "dimmer_wall_switch"),
        ("schedule", r#"{"id":"dimmer_wall_switch"}"#),
    ] {
        peer.send(path, payload).await;
        assert_eq!(
            peer.next_on(&peer.resp(path)).await,
            r#"{"data":{},"error":"Device 'dimmer_wall_switch' does not support OTA updates","status":"error"}"#
        );
    }
    // An object without id gets no answer at all; the next request is answered normally.
    peer.send("check", r#"{"transaction":1}"#).await;
    // 15: abort with nothing running: on `…/update`.
    peer.send("update/abort", r#"{"id":"bulb","transaction":"a0"}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"No OTA in progress to abort for device 'bulb'","status":"error","transaction":"a0"}"#
    );
    // 11: busy while an update runs (held at 50 %), for every other request type.
    let img = hex::encode(bulb_image(2));
    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{img}"}},"id":"bulb","transaction":"u1"}}"#),
    )
    .await;
    timeout(T, sim.wait_until(|s| s.device("bulb").unwrap().held))
        .await
        .unwrap();
    for path in [
        "check",
        "check/downgrade",
        "update",
        "update/downgrade",
        "schedule",
        "schedule/downgrade",
        "unschedule",
    ] {
        peer.send(path, r#"{"id":"bulb"}"#).await;
        let topic = peer.resp(path.trim_end_matches("/downgrade"));
        assert_eq!(
            peer.next_on(&topic).await,
            r#"{"data":{},"error":"OTA update or check for update already in progress for 'bulb'","status":"error"}"#,
            "{path}"
        );
    }
    // 14: abort while running: `available`, ok on `…/update/abort`, then the update's error.
    peer.send("update/abort", r#"{"id":"bulb","transaction":"a1"}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("update/abort")).await,
        r#"{"data":{"id":"bulb"},"status":"ok","transaction":"a1"}"#
    );
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/bulb").last().unwrap())["state"],
        "available"
    );
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        format!(
            r#"{{"data":{{}},"error":"OTA update of 'bulb' failed (OTA for device {BULB} was aborted)","status":"error","transaction":"u1"}}"#
        )
    );
    assert_eq!(sim.device("bulb").unwrap().installed_version, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn device_failures_never_respond_stall_abort_and_wrong_image() {
    let broker = EmbeddedBroker::start().unwrap();
    let c = Z2mSimConfig::new(broker.host(), broker.port())
        .with_device(
            SimDevice::mains_router("0x0000000000000001", "mute")
                .with_behavior(Behavior::NeverResponds),
        )
        .with_device(
            SimDevice::mains_router("0x0000000000000002", "staller")
                .with_behavior(Behavior::StallAt(30.0)),
        )
        .with_device(
            SimDevice::mains_router("0x0000000000000003", "aborter")
                .with_behavior(Behavior::abort_at_end()),
        )
        .with_device(SimDevice::mains_router("0x0000000000000004", "picky"));
    let sim = start(c).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    let img = hex::encode(image::build(0x117C, 0x2803, 0x2309_9999, "x", 3000));

    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{img}"}},"id":"mute","transaction":1}}"#),
    )
    .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"OTA update of 'mute' failed (Device didn't respond to OTA request)","status":"error","transaction":1}"#
    );
    let req_at = sim.requests()[0].at_ms;
    let err_at = sim
        .published()
        .iter()
        .rev()
        .find(|l| l.topic.ends_with("/update"))
        .unwrap()
        .at_ms;
    assert_eq!(err_at - req_at, 60_000, "the 60 s query wait");

    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{img}"}},"id":"staller","transaction":2}}"#),
    )
    .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"OTA update of 'staller' failed (Device 0x0000000000000002 did not start/finish firmware download after being notified. (Timeout after 150000ms [address=2 endpoint=1 clusterId=25 cmdId=3 tsn=undefined]))","status":"error","transaction":2}"#
    );
    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{img}"}},"id":"aborter","transaction":3}}"#),
    )
    .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"OTA update of 'aborter' failed (OTA update of 0x0000000000000003 failed with reason: ABORT)","status":"error","transaction":3}"#
    );
    // After a failed update the state is `available`.
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/aborter").last().unwrap())["state"],
        "available"
    );
    // An image for another image type is no image for this device.
    let other = hex::encode(image::build(0x117C, 0x0001, 0x2309_9999, "x", 3000));
    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{other}"}},"id":"picky","transaction":4}}"#),
    )
    .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"Update of 'picky' failed (No image currently available)","status":"error","transaction":4}"#
    );
    // So is one that is not newer.
    let old = hex::encode(image::build(0x117C, 0x2803, 0x2309_3620, "x", 3000));
    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{old}"}},"id":"picky","transaction":5}}"#),
    )
    .await;
    assert!(
        peer.next_on(&peer.resp("update"))
            .await
            .contains("No image currently available")
    );
    for ieee in [
        "0x0000000000000001",
        "0x0000000000000002",
        "0x0000000000000003",
        "0x0000000000000004",
    ] {
        let d = sim.device(ieee).unwrap();
        assert_eq!(d.installed_version, 0x2309_3620);
        assert!(d.received_images.is_empty());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn sleepy_device_schedule_runs_on_wake_and_unschedule_cancels() {
    let broker = EmbeddedBroker::start().unwrap();
    let sim = start(config(&broker)).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    let img = image::build(0x117C, 0x11C1, 0x2404_0000, "24.5.0", 5000);
    let hex = hex::encode(&img);
    // 12: schedule with hex: `scheduled`, then ok with the saved path.
    peer.send(
        "schedule",
        &format!(r#"{{"hex":{{"data":"{hex}"}},"id":"remote","transaction":1}}"#),
    )
    .await;
    assert_eq!(
        peer.next_on(&peer.resp("schedule")).await,
        format!(
            r#"{{"data":{{"id":"remote","url":"/app/data/ota/{REMOTE}_1767225600000"}},"status":"ok","transaction":1}}"#
        )
    );
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/remote").last().unwrap())["state"],
        "scheduled"
    );
    // 13: unschedule: `idle`, ok.
    peer.send("unschedule", r#"{"id":"remote","transaction":2}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("unschedule")).await,
        r#"{"data":{"id":"remote"},"status":"ok","transaction":2}"#
    );
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/remote").last().unwrap())["state"],
        "idle"
    );
    // A wake-up without schedule runs an automatic check (no index here: idle), nothing else.
    let before = sim.published_on("zigbee2mqtt/remote").len();
    sim.wake("remote");
    timeout(
        T,
        sim.wait_until(|s| s.published_on("zigbee2mqtt/remote").len() > before),
    )
    .await
    .unwrap();
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/remote").last().unwrap()),
        serde_json::json!({"installed_version": 0x2403_0011, "latest_version": 0x2403_0011,
            "latest_source": null, "latest_release_notes": null, "state": "idle"})
    );
    // A second wake-up within update_check_interval is silent.
    sim.wake("remote");
    // Schedule again; nothing happens until the device wakes up.
    peer.send(
        "schedule",
        &format!(r#"{{"hex":{{"data":"{hex}"}},"id":"remote","transaction":3}}"#),
    )
    .await;
    peer.next_on(&peer.resp("schedule")).await;
    assert!(sim.device("remote").unwrap().scheduled);
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/remote").last().unwrap())["state"],
        "scheduled"
    );
    sim.wake("remote");
    // 22: scheduled → updating … → idle with the new version, no update response.
    let seen = peer
        .until("zigbee2mqtt/remote", |p| update_of(p)["state"] == "idle")
        .await;
    let states: Vec<String> = seen
        .iter()
        .filter(|(t, _)| t == "zigbee2mqtt/remote")
        .map(|(_, p)| update_of(p)["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states.first().map(String::as_str), Some("updating"));
    assert!(states.contains(&"updating".to_string()));
    assert!(seen.iter().all(|(t, _)| !t.ends_with("ota_update/update")));
    let remote = sim.device("remote").unwrap();
    assert_eq!(remote.installed_version, 0x2404_0000);
    assert_eq!(remote.received_images, vec![img]);
    assert!(!remote.scheduled);
    sim.shutdown().await;
}

#[tokio::test]
async fn sleepy_device_with_wake_interval_answers_a_check_when_it_wakes() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut c = Z2mSimConfig::new(broker.host(), broker.port())
        .with_device(SimDevice::sleepy_end_device(
            REMOTE,
            "remote",
            Some(Duration::from_secs(45)),
        ))
        .with_device(SimDevice::sleepy_end_device(
            "0x0000000000000009",
            "deep",
            Some(Duration::from_secs(3600)),
        ));
    c.index.push(IndexImage {
        url: "https://example.com/my.ota".into(),
        release_notes: Some("New features".into()),
        bytes: image::build(0x117C, 0x11C1, 0x2404_0000, "", 100),
    });
    let sim = start(c).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    peer.send("check", r#"{"id":"remote","transaction":1}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("check")).await,
        r#"{"data":{"downgrade":false,"id":"remote","release_notes":"New features","source":"https://example.com/my.ota","update_available":true},"status":"ok","transaction":1}"#
    );
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/remote").last().unwrap()),
        serde_json::json!({"installed_version": 0x2403_0011, "latest_version": 0x2404_0000,
            "latest_source": "https://example.com/my.ota", "latest_release_notes": "New features",
            "state": "available"})
    );
    // A device that sleeps for an hour misses the 60 s window.
    peer.send("check", r#"{"id":"deep","transaction":2}"#).await;
    assert_eq!(
        peer.next_on(&peer.resp("check")).await,
        r#"{"data":{},"error":"Failed to check if OTA update available for 'deep' (Device didn't respond to OTA request)","status":"error","transaction":2}"#
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn legacy_wording_and_shapes() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut c = Z2mSimConfig::new(broker.host(), broker.port())
        .with_version(Z2mVersion::V2_0To2_7)
        .with_device(
            SimDevice::mains_router(BULB, "bulb")
                .with_file_version(1)
                .held_at(10.0),
        )
        .with_device(
            SimDevice::mains_router("0x0000000000000001", "mute")
                .with_behavior(Behavior::NeverResponds),
        );
    c.last_seen = ota_sim::z2m::LastSeen::Disable;
    c.index.push(IndexImage {
        url: "https://example.com/my.ota".into(),
        release_notes: None,
        bytes: bulb_image(2),
    });
    let sim = start(c).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    assert!(sim.published_on("zigbee2mqtt/bridge/info")[0].contains("2.7.2"));
    assert_eq!(
        sim.published_on("zigbee2mqtt/bulb")[0],
        r#"{"linkquality":120,"update":{"installed_version":1,"latest_version":1,"state":"idle"}}"#
    );
    peer.send("check", r#"{"id":"bulb","transaction":1}"#).await;
    assert_eq!(
        peer.next_on(&peer.resp("check")).await,
        r#"{"data":{"id":"bulb","update_available":true},"status":"ok","transaction":1}"#
    );
    peer.send("update", r#"{"id":"mute","transaction":2}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"Update of 'mute' failed (Device didn't respond to OTA request)","status":"error","transaction":2}"#
    );
    // The image comes from the index (a url is ignored before 2.8).
    peer.send(
        "update",
        r#"{"id":"bulb","transaction":3,"url":"http://127.0.0.1:9/none.ota"}"#,
    )
    .await;
    timeout(T, sim.wait_until(|s| s.device("bulb").unwrap().held))
        .await
        .unwrap();
    // Before 2.12 `update/abort` is just another update request.
    peer.send("update/abort", r#"{"id":"bulb","transaction":4}"#)
        .await;
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{},"error":"Update or check for update already in progress for 'bulb'","status":"error","transaction":4}"#
    );
    sim.release("bulb");
    assert_eq!(
        peer.next_on(&peer.resp("update")).await,
        r#"{"data":{"from":{"date_code":"20220101","software_build_id":"2.3.093"},"id":"bulb","to":{"date_code":"20220101","software_build_id":"sim 2.4.0"}},"status":"ok","transaction":3}"#
    );
    assert_eq!(
        sim.published_on("zigbee2mqtt/bulb").last().unwrap(),
        r#"{"linkquality":120,"update":{"installed_version":2,"latest_version":2,"state":"idle"}}"#
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn restart_mid_update_resets_updating_to_idle() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut c = config(&broker);
    c.devices[0].hold_at = Some(50.0);
    let sim = start(c).await;
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    let img = hex::encode(bulb_image(90));
    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{img}"}},"id":"bulb","transaction":1}}"#),
    )
    .await;
    timeout(T, sim.wait_until(|s| s.device("bulb").unwrap().held))
        .await
        .unwrap();
    assert_eq!(
        update_of(sim.published_on("zigbee2mqtt/bulb").last().unwrap())["state"],
        "updating"
    );
    sim.restart(Duration::from_secs(30)).await;
    peer.until("zigbee2mqtt/bridge/state", |p| p.contains("offline"))
        .await;
    let seen = peer
        .until("zigbee2mqtt/bulb", |p| update_of(p)["state"] == "idle")
        .await;
    let bridge: Vec<&str> = seen
        .iter()
        .filter(|(t, _)| t == "zigbee2mqtt/bridge/state")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(bridge, [r#"{"state":"online"}"#]);
    // 25: the cached `updating` is `idle` again, without progress; no response ever comes.
    assert_eq!(
        seen.last().unwrap().1,
        r#"{"linkquality":120,"update":{"installed_version":1,"latest_release_notes":null,"latest_source":null,"latest_version":1,"state":"idle"}}"#
    );
    assert!(sim.published_on(&peer.resp("update")).is_empty());
    assert_eq!(sim.device("bulb").unwrap().installed_version, 1);

    // A restart during the announce wait: the device already took the image.
    sim.hold("bulb", 100.0);
    peer.send(
        "update",
        &format!(r#"{{"hex":{{"data":"{img}"}},"id":"bulb","transaction":2}}"#),
    )
    .await;
    timeout(T, sim.wait_until(|s| s.device("bulb").unwrap().held))
        .await
        .unwrap();
    sim.restart(Duration::from_secs(5)).await;
    assert_eq!(sim.device("bulb").unwrap().installed_version, 90);
    sim.shutdown().await;
}

#[tokio::test]
async fn bridges_with_different_base_topics_share_a_broker() {
    let broker = EmbeddedBroker::start().unwrap();
    let a = start(
        Z2mSimConfig::new(broker.host(), broker.port())
            .with_base_topic("site/a")
            .with_device(SimDevice::mains_router(BULB, "bulb")),
    )
    .await;
    let b = start(
        Z2mSimConfig::new(broker.host(), broker.port())
            .with_base_topic("site/b")
            .with_device(SimDevice::mains_router(BULB, "bulb")),
    )
    .await;
    let mut peer = Peer::connect(&broker, "site/a").await;
    peer.send("check", r#"{"id":"bulb","transaction":"x"}"#)
        .await;
    let r = peer
        .next_on("site/a/bridge/response/device/ota_update/check")
        .await;
    assert!(r.contains(r#""status":"ok""#));
    assert_eq!(a.requests().len(), 1);
    assert!(b.requests().is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn real_time_bridge_with_short_timings() {
    // `Z2mSim::start` runs on the caller's clock; with zigbee2mqtt's timings shrunk it suits
    // demos that run in real time.
    let broker = EmbeddedBroker::start().unwrap();
    let mut c = config(&broker);
    c.timings = ota_sim::z2m::Timings {
        image_block_response_delay: Duration::from_millis(1),
        default_maximum_data_size: 50,
        image_block_request_timeout: Duration::from_millis(200),
        query_timeout: Duration::from_millis(200),
        announce_wait: Duration::from_millis(50),
        progress_interval: Duration::from_millis(100),
        query_delay: Duration::from_millis(1),
        awake_window: Duration::from_millis(100),
        update_check_interval: Duration::from_secs(60),
    };
    c.devices[0].announce_after = Some(Duration::from_millis(10));
    let sim = Z2mSim::start(c).await.unwrap();
    let mut peer = Peer::connect(&broker, "zigbee2mqtt").await;
    let img = bulb_image(7);
    peer.send(
        "update",
        &format!(
            r#"{{"hex":{{"data":"{}"}},"id":"bulb","transaction":1}}"#,
            hex::encode(&img)
        ),
    )
    .await;
    let resp = peer.next_on(&peer.resp("update")).await;
    assert!(resp.contains(r#""status":"ok""#), "{resp}");
    let progress: Vec<String> = sim
        .published_on("zigbee2mqtt/bulb")
        .into_iter()
        .filter(|p| p.contains("updating"))
        .collect();
    assert!(progress.len() >= 3, "{progress:?}");
    assert_eq!(sim.device("bulb").unwrap().received_images, vec![img]);
    sim.shutdown().await;
}

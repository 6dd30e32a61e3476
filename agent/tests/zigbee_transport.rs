//! The zigbee2mqtt transport against the zigbee2mqtt simulator, over the embedded broker.
//!
//! The transport and the broker run on the test's runtime in real time; the simulated bridge
//! runs on its own paused clock (`Z2mSim::start_virtual`), so zigbee2mqtt's 60 s, 30 s, 120 s
//! and 150 s waits pass at once while every network round trip is real. Where a test needs the
//! transfer to stand still (cancel, one-at-a-time, outages) the simulated device is held at a
//! percentage and released by the test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::Md5;
use ota_agent::transport::zigbee::{ImageEndpoint, RecoveryNote, ZigbeeConfig, ZigbeeTransport};
use ota_agent::transport::{
    CommitLog, CommitStage, Commitment, PowerSource, RecoverJob, Signal, TransferProgress,
    Transport, UpdateJob, UpdateReport, VerifiedImage,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_firmware::builders::ZigbeeOtaBuilder;
use ota_sim::broker::EmbeddedBroker;
use ota_sim::z2m::{Behavior, IndexImage, SimDevice, Z2mSim, Z2mSimConfig, Z2mVersion};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const BULB: &str = "0x000b57fffec6a5b2";
const PLUG: &str = "0x000b57fffec6a5b3";
const REMOTE: &str = "0x000d6ffffe2b3c4d";
const T: Duration = Duration::from_secs(30);

/// The bulb's images: manufacturer 0x117C, image type 0x2803.
fn bulb_image(version: u32, payload: usize) -> Arc<VerifiedImage> {
    verified(
        ZigbeeOtaBuilder::new(0x117C, 0x2803, version)
            .header_string("bulb 2.4.0")
            .upgrade_image(payload)
            .build(),
        version,
    )
}

/// The remote's images: image type 0x11C1.
fn remote_image(version: u32) -> Arc<VerifiedImage> {
    verified(
        ZigbeeOtaBuilder::new(0x117C, 0x11C1, version)
            .header_string("remote 24.5")
            .upgrade_image(20_000)
            .build(),
        version,
    )
}

fn verified(bytes: Vec<u8>, version: u32) -> Arc<VerifiedImage> {
    Arc::new(VerifiedImage {
        firmware_id: format!("fw-{version:x}"),
        sha256: hex::encode(Sha256::digest(&bytes)),
        md5: hex::encode(Md5::digest(&bytes)),
        bytes: Bytes::from(bytes),
        version: format!("{version:#x}"),
        file_version: Some(version),
    })
}

fn job(device: &str, image: Arc<VerifiedImage>) -> UpdateJob {
    UpdateJob {
        task_id: format!("task-{device}"),
        attempt: 1,
        device: device.to_string(),
        image,
        downgrade: false,
        schedule: false,
        timeout: Duration::from_secs(60),
        wake_timeout: ota_agent::transport::DEFAULT_WAKE_TIMEOUT,
        commit: Default::default(),
    }
}

fn transport_config(broker: &EmbeddedBroker, network: &str, base: &str) -> ZigbeeConfig {
    let mut c = ZigbeeConfig::new(network, broker.host(), broker.port());
    c.base_topic = base.to_string();
    c.image_endpoint = Some(ImageEndpoint {
        bind: "127.0.0.1:0".parse().unwrap(),
        advertised_base_url: None,
    });
    c.timeouts.reconnect_delay = Duration::from_millis(100);
    c.timeouts.request = Duration::from_secs(5);
    c.timeouts.completion_grace = Duration::from_secs(2);
    c.timeouts.keep_alive = Duration::from_secs(5);
    c
}

struct Site {
    broker: EmbeddedBroker,
    sim: Z2mSim,
    zigbee: ZigbeeTransport,
}

/// A transport connected before the bridge starts (device states are not retained, so a
/// transport hears them as zigbee2mqtt publishes them).
async fn transport(cfg: ZigbeeConfig) -> ZigbeeTransport {
    let zigbee = ZigbeeTransport::start(cfg).await.unwrap();
    assert!(zigbee.wait_connected(T).await);
    zigbee
}

async fn site(devices: Vec<SimDevice>, tweak: impl FnOnce(&mut ZigbeeConfig)) -> Site {
    let broker = EmbeddedBroker::start().unwrap();
    let mut cfg = transport_config(&broker, "home", "zigbee2mqtt");
    tweak(&mut cfg);
    let zigbee = transport(cfg).await;
    let mut sc = Z2mSimConfig::new(broker.host(), broker.port());
    sc.devices = devices;
    let sim = Z2mSim::start_virtual(sc).await.unwrap();
    for d in sim.devices() {
        zigbee
            .wait_for_device(&d.ieee, T)
            .await
            .expect("the transport learns the device from bridge/devices");
    }
    Site {
        broker,
        sim,
        zigbee,
    }
}

/// Runs a job to its end, collecting its progress.
async fn run(
    zigbee: &ZigbeeTransport,
    job: UpdateJob,
) -> (Result<UpdateReport, TaskError>, Vec<TransferProgress>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = timeout(T, zigbee.update(job, tx, CancellationToken::new()))
        .await
        .expect("the job ends");
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    (r, seen)
}

/// Statuses in order, consecutive repeats collapsed.
fn statuses(p: &[TransferProgress]) -> Vec<UpgradeStatus> {
    let mut out: Vec<UpgradeStatus> = Vec::new();
    for s in p.iter().map(|p| p.status) {
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

fn err_code(r: &Result<UpdateReport, TaskError>) -> ErrorCode {
    r.as_ref().expect_err("the job fails").code
}

async fn held(sim: &Z2mSim, id: &str) {
    timeout(T, sim.wait_until(|s| s.device(id).is_some_and(|d| d.held)))
        .await
        .expect("the device reaches its hold point");
}

fn request_topics(sim: &Z2mSim) -> Vec<String> {
    sim.requests()
        .iter()
        .map(|r| r.topic.rsplit("ota_update/").next().unwrap().to_string())
        .collect()
}

async fn http_get(url: &str) -> u16 {
    // A bare HTTP/1.1 GET, enough for the image endpoint.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..12]).to_string();
    head[9..12].parse().unwrap()
}

#[tokio::test]
async fn inventory_from_bridge_devices_and_states() {
    let s = site(
        vec![
            SimDevice::mains_router(BULB, "bulb"),
            SimDevice::sleepy_end_device(REMOTE, "living/remote", None),
        ],
        |_| {},
    )
    .await;
    let inv = s.zigbee.inventory().borrow().clone();
    assert_eq!(inv.len(), 2, "the coordinator is not a device to update");
    let bulb = inv.iter().find(|d| d.local_id == BULB).unwrap();
    assert_eq!(bulb.network, "home");
    assert_eq!((bulb.name.as_str(), bulb.vendor.as_str()), ("bulb", "IKEA"));
    assert_eq!(bulb.power_source, PowerSource::Mains);
    assert_eq!(bulb.file_version, Some(0x2309_3620));
    assert_eq!(bulb.current_version.as_deref(), Some("587806240"));
    assert_eq!(bulb.signal, Some(Signal::LinkQuality(120)));
    assert_eq!(bulb.software_build_id.as_deref(), Some("2.3.093"));
    assert!(bulb.reachable && bulb.supports_ota);
    assert_eq!(bulb.z2m_state.as_deref(), Some("idle"));
    assert!(bulb.last_seen_ms.is_none() || bulb.last_seen_ms.unwrap() > 1_700_000_000_000);
    let remote = inv.iter().find(|d| d.local_id == REMOTE).unwrap();
    assert_eq!(remote.name, "living/remote");
    assert_eq!(remote.power_source, PowerSource::Battery);
    assert_eq!(remote.battery_percent, Some(87));
    // Found by friendly name too.
    let c = s
        .zigbee
        .check("living/remote", Duration::from_millis(1))
        .await;
    assert_eq!(c.unwrap_err().code, ErrorCode::BulkCheckTimeout);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn mains_update_success_with_progress_sequence() {
    let s = site(vec![SimDevice::mains_router(BULB, "bulb")], |_| {}).await;
    // 100 000 bytes ≥ the 64 KiB hex threshold: served by URL.
    let image = bulb_image(0x2309_9999, 100_000 - 62);
    let (r, progress) = run(&s.zigbee, job(BULB, Arc::clone(&image))).await;
    let report = r.unwrap();
    assert_eq!(
        statuses(&progress),
        [
            UpgradeStatus::AgentPreparing,
            UpgradeStatus::Updating,
            UpgradeStatus::Downloaded
        ]
    );
    // The first estimate is herdsman's: 2000 blocks of 50 B at 4 per second.
    let first = progress
        .iter()
        .find(|p| p.status == UpgradeStatus::Updating)
        .unwrap();
    assert_eq!((first.percent, first.remaining_s), (Some(0.0), Some(500)));
    let percents: Vec<f32> = progress.iter().filter_map(|p| p.percent).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert!(
        percents.len() >= 10,
        "a report every 30 s of a 500 s transfer: {percents:?}"
    );
    assert_eq!(report.from.file_version, Some(0x2309_3620));
    assert_eq!(report.from.software_build_id.as_deref(), Some("2.3.093"));
    assert_eq!(report.to.file_version, Some(0x2309_9999));
    assert_eq!(report.to.software_build_id.as_deref(), Some("bulb 2.4.0"));
    assert_eq!(report.wire_bytes, 100_000);
    let bulb = s.sim.device(BULB).unwrap();
    assert_eq!(bulb.installed_version, 0x2309_9999);
    assert_eq!(bulb.received_images, vec![image.bytes.to_vec()]);
    // Object form with a transaction, by IEEE address, image by URL on the agent's endpoint.
    let req = &s.sim.requests()[0];
    assert!(req.topic.ends_with("ota_update/update"));
    let v: serde_json::Value = serde_json::from_str(&req.payload).unwrap();
    assert_eq!(v["id"], BULB);
    assert!(v["transaction"].as_str().unwrap().starts_with("ota-"));
    let url = v["url"].as_str().unwrap();
    let port = s.zigbee.image_endpoint().unwrap().port();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/ota/")),
        "{url}"
    );
    // The inventory follows.
    timeout(T, async {
        let mut rx = s.zigbee.inventory();
        loop {
            let v = rx
                .borrow_and_update()
                .iter()
                .find(|d| d.local_id == BULB)
                .and_then(|d| d.file_version);
            if v == Some(0x2309_9999) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    s.sim.shutdown().await;
}

#[tokio::test]
async fn url_or_hex_by_size_and_the_token_is_one_time() {
    let s = site(
        vec![
            SimDevice::mains_router(BULB, "bulb"),
            SimDevice::mains_router(PLUG, "plug").held_at(50.0),
        ],
        |c| c.hex_threshold = 10_000,
    )
    .await;
    // Small: hex inside the request, no URL.
    let small = bulb_image(0x2309_9000, 5_000);
    let (r, _) = run(&s.zigbee, job(BULB, Arc::clone(&small))).await;
    r.unwrap();
    let v: serde_json::Value = serde_json::from_str(&s.sim.requests()[0].payload).unwrap();
    assert_eq!(
        v["hex"]["data"].as_str().unwrap(),
        hex::encode(&small.bytes)
    );
    assert!(v.get("url").is_none());
    assert_eq!(
        s.sim.device(BULB).unwrap().received_images,
        vec![small.bytes.to_vec()]
    );

    // Large: by URL; once zigbee2mqtt fetched it, the token is spent.
    let large = bulb_image(0x2309_9001, 20_000);
    let (tx, _rx) = mpsc::unbounded_channel();
    let zigbee = &s.zigbee;
    let update = zigbee.update(job(PLUG, Arc::clone(&large)), tx, CancellationToken::new());
    let probe = async {
        held(&s.sim, PLUG).await;
        let v: serde_json::Value = serde_json::from_str(&s.sim.requests()[1].payload).unwrap();
        let url = v["url"].as_str().unwrap().to_string();
        assert_eq!(http_get(&url).await, 404, "reuse is refused");
        let base = url.rsplit_once('/').unwrap().0;
        assert_eq!(http_get(&format!("{base}/{}", "0".repeat(64))).await, 404);
        s.sim.release(PLUG);
        url
    };
    let (r, url) = tokio::join!(timeout(T, update), probe);
    r.unwrap().unwrap();
    assert_eq!(
        s.sim.device(PLUG).unwrap().received_images,
        vec![large.bytes.to_vec()]
    );
    // After the task the token is gone too.
    assert_eq!(http_get(&url).await, 404);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn sleepy_device_is_scheduled_then_updated_when_it_wakes() {
    let s = site(
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
        |_| {},
    )
    .await;
    let image = remote_image(0x2404_0000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let update = s.zigbee.update(
        job(REMOTE, Arc::clone(&image)),
        tx,
        CancellationToken::new(),
    );
    let waker = async {
        // Waiting for the wake-up is status 5.
        loop {
            let p: TransferProgress = rx.recv().await.unwrap();
            if p.status == UpgradeStatus::WaitingForWakeup {
                break;
            }
        }
        assert!(s.sim.device(REMOTE).unwrap().scheduled);
        s.sim.wake(REMOTE);
        let mut rest = Vec::new();
        while let Some(p) = rx.recv().await {
            rest.push(p);
        }
        rest
    };
    let (r, rest) = tokio::join!(timeout(T, update), waker);
    let report = r.unwrap().unwrap();
    assert_eq!(report.to.file_version, Some(0x2404_0000));
    assert_eq!(
        statuses(&rest),
        [UpgradeStatus::Updating, UpgradeStatus::Downloaded]
    );
    assert_eq!(request_topics(&s.sim), ["schedule"]);
    let remote = s.sim.device(REMOTE).unwrap();
    assert_eq!(remote.received_images, vec![image.bytes.to_vec()]);
    assert!(!remote.scheduled);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn cancel_while_waiting_for_the_wake_up_unschedules() {
    let s = site(
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
        |_| {},
    )
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let update = s
        .zigbee
        .update(job(REMOTE, remote_image(0x2404_0000)), tx, cancel.clone());
    let canceller = async {
        while rx.recv().await.unwrap().status != UpgradeStatus::WaitingForWakeup {}
        cancel.cancel();
    };
    let (r, ()) = tokio::join!(timeout(T, update), canceller);
    let e = r.unwrap().unwrap_err();
    assert!(e.message.starts_with("cancelled"), "{e}");
    assert_eq!(request_topics(&s.sim), ["schedule", "unschedule"]);
    let remote = s.sim.device(REMOTE).unwrap();
    assert!(!remote.scheduled);
    assert_eq!(remote.state["update"]["state"], "idle");
    // A later wake-up installs nothing.
    s.sim.wake(REMOTE);
    assert_eq!(s.sim.device(REMOTE).unwrap().installed_version, 0x2403_0011);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn device_failures_map_to_their_codes() {
    let s = site(
        vec![
            SimDevice::mains_router("0x0000000000000001", "aborter")
                .with_behavior(Behavior::abort_at_end()),
            SimDevice::mains_router("0x0000000000000002", "mute")
                .with_behavior(Behavior::NeverResponds),
            SimDevice::mains_router("0x0000000000000003", "staller")
                .with_behavior(Behavior::StallAt(40.0)),
            SimDevice::mains_router("0x0000000000000004", "other").with_image_ids(0x117C, 0x0001),
            SimDevice::without_ota("0x0000000000000005", "switch"),
        ],
        |_| {},
    )
    .await;
    let img = || bulb_image(0x2309_9999, 8_000);

    let (r, progress) = run(&s.zigbee, job("0x0000000000000001", img())).await;
    assert_eq!(err_code(&r), ErrorCode::DeviceReportedFailure);
    let e = r.unwrap_err();
    assert!(
        e.message.contains("failed with reason: ABORT") && e.message.contains("power-cycle"),
        "{e}"
    );
    assert!(progress.iter().any(|p| p.percent.is_some_and(|x| x > 50.0)));
    assert!(
        !progress
            .iter()
            .any(|p| p.status == UpgradeStatus::Downloaded)
    );

    let (r, _) = run(&s.zigbee, job("0x0000000000000002", img())).await;
    assert_eq!(err_code(&r), ErrorCode::ConnectFailed);
    let e = r.unwrap_err();
    assert!(
        e.message.contains("Device didn't respond to OTA request"),
        "{e}"
    );
    assert!(
        e.message.contains("wake it") && e.message.contains("power-cycle"),
        "{e}"
    );

    let (r, _) = run(&s.zigbee, job("0x0000000000000003", img())).await;
    assert_eq!(err_code(&r), ErrorCode::Timeout);
    assert!(
        r.unwrap_err()
            .message
            .contains("did not start/finish firmware download")
    );

    let (r, _) = run(&s.zigbee, job("0x0000000000000004", img())).await;
    assert_eq!(err_code(&r), ErrorCode::NoFirmware);
    assert!(
        r.unwrap_err()
            .message
            .contains("No image currently available")
    );

    // No OTA support and no OTA cluster: refused without asking zigbee2mqtt.
    let before = s.sim.requests().len();
    let (r, _) = run(&s.zigbee, job("0x0000000000000005", img())).await;
    assert_eq!(err_code(&r), ErrorCode::PrevalidationFailed);
    assert_eq!(s.sim.requests().len(), before);

    // Unknown device.
    let (r, _) = run(&s.zigbee, job("0x00000000000000ff", img())).await;
    assert_eq!(err_code(&r), ErrorCode::Offline);

    for d in s.sim.devices() {
        assert!(
            d.received_images.is_empty(),
            "{} installed nothing",
            d.friendly_name
        );
    }
    s.sim.shutdown().await;
}

#[tokio::test]
async fn one_update_at_a_time_per_network() {
    let s = site(
        vec![
            SimDevice::mains_router(BULB, "bulb").held_at(50.0),
            SimDevice::mains_router(PLUG, "plug"),
        ],
        |_| {},
    )
    .await;
    let (tx_a, _rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let a = s.zigbee.update(
        job(BULB, bulb_image(0x2309_9999, 8_000)),
        tx_a,
        CancellationToken::new(),
    );
    let b = s.zigbee.update(
        job(PLUG, bulb_image(0x2309_9998, 8_000)),
        tx_b,
        CancellationToken::new(),
    );
    let watch = async {
        held(&s.sim, BULB).await;
        // The second job waits for the slot: it says so (13, queued at the site), and
        // zigbee2mqtt has heard nothing.
        let queued: TransferProgress = timeout(T, rx_b.recv()).await.unwrap().unwrap();
        assert_eq!(queued.status, UpgradeStatus::Queued);
        assert!(queued.detail.starts_with("queued"), "{}", queued.detail);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(request_topics(&s.sim), ["update"]);
        assert!(rx_b.try_recv().is_err(), "nothing more while queued");
        s.sim.release(BULB);
    };
    let (ra, rb, ()) = tokio::join!(timeout(T, a), timeout(T, b), watch);
    ra.unwrap().unwrap();
    rb.unwrap().unwrap();
    // The plug's request came only after the bulb's update response.
    let requests = s.sim.requests();
    assert_eq!(requests.len(), 2);
    let bulb_done = s
        .sim
        .published()
        .into_iter()
        .find(|l| l.topic.ends_with("response/device/ota_update/update"))
        .unwrap();
    assert!(requests[1].payload.contains(PLUG));
    assert!(requests[1].at_ms >= bulb_done.at_ms);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn two_networks_update_in_parallel() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut sims = Vec::new();
    let mut transports = Vec::new();
    for (net, base) in [("north", "site/north"), ("south", "site/south")] {
        let t = transport(transport_config(&broker, net, base)).await;
        let sim = Z2mSim::start_virtual(
            Z2mSimConfig::new(broker.host(), broker.port())
                .with_base_topic(base)
                .with_device(SimDevice::mains_router(BULB, "bulb").held_at(50.0)),
        )
        .await
        .unwrap();
        t.wait_for_device(BULB, T).await.unwrap();
        sims.push(sim);
        transports.push(t);
    }
    let (tx1, _r1) = mpsc::unbounded_channel();
    let (tx2, _r2) = mpsc::unbounded_channel();
    let a = transports[0].update(
        job(BULB, bulb_image(0x2309_9999, 8_000)),
        tx1,
        CancellationToken::new(),
    );
    let b = transports[1].update(
        job(BULB, bulb_image(0x2309_9999, 8_000)),
        tx2,
        CancellationToken::new(),
    );
    let both_running = async {
        // Both transfers are under way at the same time.
        held(&sims[0], BULB).await;
        held(&sims[1], BULB).await;
        sims[0].release(BULB);
        sims[1].release(BULB);
    };
    let (ra, rb, ()) = tokio::join!(timeout(T, a), timeout(T, b), both_running);
    assert_eq!(ra.unwrap().unwrap().to.file_version, Some(0x2309_9999));
    assert_eq!(rb.unwrap().unwrap().to.file_version, Some(0x2309_9999));
    for sim in sims {
        assert_eq!(sim.device(BULB).unwrap().installed_version, 0x2309_9999);
        sim.shutdown().await;
    }
}

/// Updates the bulb to 0x2309_9999 while the bridge restarts (down for 20 s) once the bulb's
/// transfer reached `held_at` percent; the site and the update's outcome.
async fn update_across_a_bridge_restart(held_at: f64) -> (Site, Result<UpdateReport, TaskError>) {
    let s = site(
        vec![SimDevice::mains_router(BULB, "bulb").held_at(held_at)],
        |_| {},
    )
    .await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let update = s.zigbee.update(
        job(BULB, bulb_image(0x2309_9999, 8_000)),
        tx,
        CancellationToken::new(),
    );
    let restart = async {
        held(&s.sim, BULB).await;
        s.sim.restart(Duration::from_secs(20)).await;
    };
    let (r, ()) = tokio::join!(timeout(T, update), restart);
    (s, r.unwrap())
}

#[tokio::test]
async fn bridge_restart_mid_transfer_fails_for_a_retry() {
    let (s, r) = update_across_a_bridge_restart(50.0).await;
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::SendFailed, "{e}");
    assert!(e.code.is_transient());
    assert!(e.message.contains("still reports version 587806240"), "{e}");
    // The transport asked zigbee2mqtt again after it came back.
    assert_eq!(request_topics(&s.sim), ["update", "check"]);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn bridge_restart_while_the_device_restarts_learns_success_from_state() {
    let (s, r) = update_across_a_bridge_restart(100.0).await;
    let report = r.unwrap();
    assert_eq!(report.to.file_version, Some(0x2309_9999));
    assert_eq!(s.sim.device(BULB).unwrap().installed_version, 0x2309_9999);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn broker_restart_mid_transfer_is_survived() {
    let mut s = site(
        vec![SimDevice::mains_router(BULB, "bulb").held_at(50.0)],
        |_| {},
    )
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let zigbee = &s.zigbee;
    let update = zigbee.update(
        job(BULB, bulb_image(0x2309_9999, 8_000)),
        tx,
        CancellationToken::new(),
    );
    let sim = &s.sim;
    let broker = &mut s.broker;
    let outage = async {
        held(sim, BULB).await;
        broker.stop();
        // Both clients notice, then the broker is back (empty: no retained messages).
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.start_again().unwrap();
        // The bridge announces itself again on the new broker; then the device goes on.
        timeout(
            T,
            sim.wait_until(|s| s.published_on("zigbee2mqtt/bridge/state").len() >= 2),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        sim.release(BULB);
        let mut after = Vec::new();
        while let Some(p) = rx.recv().await {
            after.push(p);
        }
        after
    };
    let (r, after) = tokio::join!(timeout(T, update), outage);
    let report = r.unwrap().unwrap();
    assert_eq!(report.to.file_version, Some(0x2309_9999));
    // Progress kept coming after the reconnect, up to the restart of the device.
    assert!(
        after.iter().any(|p| p.status == UpgradeStatus::Downloaded),
        "{after:?}"
    );
    // The transport asked whether its transfer survived ("already in progress": yes).
    assert!(request_topics(&s.sim).contains(&"check".to_string()));
    assert_eq!(s.sim.device(BULB).unwrap().installed_version, 0x2309_9999);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn check_reports_zigbee2mqtts_opinion_and_errors() {
    let broker = EmbeddedBroker::start().unwrap();
    let mut sc = Z2mSimConfig::new(broker.host(), broker.port())
        .with_device(SimDevice::mains_router(BULB, "bulb"))
        .with_device(SimDevice::mains_router(PLUG, "plug").with_behavior(Behavior::NeverResponds));
    sc.index.push(IndexImage {
        url: "https://example.com/bulb.ota".into(),
        release_notes: None,
        bytes: bulb_image(0x2309_9999, 100).bytes.to_vec(),
    });
    let zigbee = transport(transport_config(&broker, "home", "zigbee2mqtt")).await;
    let sim = Z2mSim::start_virtual(sc).await.unwrap();
    zigbee.wait_for_device(PLUG, T).await.unwrap();
    let c = zigbee.check(BULB, T).await.unwrap();
    assert!(c.reachable);
    assert_eq!(c.update_available, Some(true));
    assert_eq!(c.device.file_version, Some(0x2309_3620));
    assert_eq!(c.device.z2m_state.as_deref(), Some("available"));
    let e = zigbee.check(PLUG, T).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ConnectFailed);
    assert!(
        e.message
            .contains("Failed to check if OTA update available for 'plug'"),
        "{e}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn cancel_before_the_transfer_moves_aborts_it() {
    let s = site(
        vec![SimDevice::mains_router(BULB, "bulb").held_at(0.0)],
        |_| {},
    )
    .await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let update = s.zigbee.update(
        job(BULB, bulb_image(0x2309_9999, 8_000)),
        tx,
        cancel.clone(),
    );
    let canceller = async {
        held(&s.sim, BULB).await;
        cancel.cancel();
    };
    let (r, ()) = tokio::join!(timeout(T, update), canceller);
    let e = r.unwrap().unwrap_err();
    assert!(e.message.starts_with("cancelled"), "{e}");
    assert_eq!(request_topics(&s.sim), ["update", "update/abort"]);
    assert_eq!(s.sim.device(BULB).unwrap().installed_version, 0x2309_3620);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn nothing_is_sent_when_already_on_target_or_to_an_old_zigbee2mqtt() {
    let s = site(
        vec![SimDevice::mains_router(BULB, "bulb").with_file_version(0x2309_9999)],
        |_| {},
    )
    .await;
    let (r, _) = run(&s.zigbee, job(BULB, bulb_image(0x2309_9999, 1_000))).await;
    assert_eq!(r.unwrap().wire_bytes, 0);
    assert!(s.sim.requests().is_empty());
    // A corrupted image never leaves the agent.
    let mut bad = (*bulb_image(0x2309_9998, 1_000)).clone();
    bad.sha256 = "00".repeat(32);
    let (r, _) = run(&s.zigbee, job(BULB, Arc::new(bad))).await;
    assert_eq!(err_code(&r), ErrorCode::ChecksumMismatch);
    s.sim.shutdown().await;

    let broker = EmbeddedBroker::start().unwrap();
    let zigbee = transport(transport_config(&broker, "old", "zigbee2mqtt")).await;
    let sim = Z2mSim::start_virtual(
        Z2mSimConfig::new(broker.host(), broker.port())
            .with_version(Z2mVersion::V2_0To2_7)
            .with_device(SimDevice::mains_router(BULB, "bulb")),
    )
    .await
    .unwrap();
    zigbee.wait_for_device(BULB, T).await.unwrap();
    let (r, _) = run(&zigbee, job(BULB, bulb_image(0x2309_9999, 1_000))).await;
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::GatewayRequired);
    assert!(e.message.contains("2.7.2"), "{e}");
    assert!(sim.requests().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn task_timeout_aborts_the_transfer_and_reports_5016() {
    let s = site(
        vec![SimDevice::mains_router(BULB, "bulb").held_at(50.0)],
        |_| {},
    )
    .await;
    let mut j = job(BULB, bulb_image(0x2309_9999, 8_000));
    j.timeout = Duration::from_secs(1);
    let (r, _) = run(&s.zigbee, j).await;
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(e.message.contains("last progress"), "{e}");
    // The abort was sent on the way out; zigbee2mqtt stops the transfer.
    timeout(
        T,
        s.sim
            .wait_until(|s| s.device(BULB).is_some_and(|d| d.in_progress.is_none())),
    )
    .await
    .unwrap();
    assert_eq!(request_topics(&s.sim), ["update", "update/abort"]);
    assert_eq!(s.sim.device(BULB).unwrap().installed_version, 0x2309_3620);
    s.sim.shutdown().await;
}

/// The remote's images for a second remote of another image type.
fn other_remote_image(version: u32) -> Arc<VerifiedImage> {
    verified(
        ZigbeeOtaBuilder::new(0x117C, 0x11C2, version)
            .header_string("remote 24.5")
            .upgrade_image(20_000)
            .build(),
        version,
    )
}

/// When the device's transfer began and ended, in simulated ms: its first `updating` and its
/// last state message before it was idle on a new version.
fn transfer_window(sim: &Z2mSim, name: &str) -> (u64, u64) {
    let topic = format!("zigbee2mqtt/{name}");
    let states: Vec<_> = sim
        .published()
        .into_iter()
        .filter(|l| l.topic == topic)
        .collect();
    let start = states
        .iter()
        .find(|l| l.payload.contains("\"state\":\"updating\""))
        .expect("a transfer")
        .at_ms;
    let end = states
        .iter()
        .rev()
        .find(|l| l.payload.contains("\"state\":\"updating\""))
        .expect("a transfer")
        .at_ms;
    (start, end)
}

#[tokio::test]
async fn a_sleepy_device_that_wakes_after_six_hours_completes() {
    let six_hours = Duration::from_secs(6 * 3600);
    let s = site(
        vec![SimDevice::sleepy_end_device(
            REMOTE,
            "remote",
            Some(six_hours),
        )],
        |_| {},
    )
    .await;
    let image = remote_image(0x2404_0000);
    // Six hours pass on the bridge's virtual clock (its schedule stays armed, no block timeout
    // runs); the agent's budgets run in real time here, see the next test.
    let mut j = job(REMOTE, Arc::clone(&image));
    j.timeout = Duration::from_secs(20);
    let (r, progress) = run(&s.zigbee, j).await;
    let report = r.unwrap();
    assert_eq!(report.to.file_version, Some(0x2404_0000));
    assert_eq!(
        statuses(&progress),
        [
            UpgradeStatus::WaitingForWakeup,
            UpgradeStatus::Updating,
            UpgradeStatus::Downloaded
        ]
    );
    let remote = s.sim.device(REMOTE).unwrap();
    assert_eq!(remote.received_images, vec![image.bytes.to_vec()]);
    assert_eq!(remote.wakes, 1);
    let (start, _) = transfer_window(&s.sim, "remote");
    assert!(
        start >= six_hours.as_millis() as u64,
        "the transfer began at the wake-up, {start} ms in"
    );
    assert_eq!(request_topics(&s.sim), ["schedule"]);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn the_transfer_budget_starts_with_the_transfer_not_with_the_wait_for_the_wake_up() {
    let s = site(
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
        |_| {},
    )
    .await;
    let image = remote_image(0x2404_0000);
    // The device sleeps (real time) for longer than the whole transfer budget.
    let mut j = job(REMOTE, Arc::clone(&image));
    j.timeout = Duration::from_secs(1);
    j.wake_timeout = Duration::from_secs(5);
    let wake = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.sim.wake(REMOTE);
    };
    let ((r, progress), ()) = tokio::join!(run(&s.zigbee, j), wake);
    r.unwrap();
    assert_eq!(
        statuses(&progress),
        [
            UpgradeStatus::WaitingForWakeup,
            UpgradeStatus::Updating,
            UpgradeStatus::Downloaded
        ]
    );
    assert_eq!(
        s.sim.device(REMOTE).unwrap().received_images,
        vec![image.bytes.to_vec()]
    );
    s.sim.shutdown().await;
}

#[tokio::test]
async fn the_wake_up_budget_ends_a_job_whose_device_sleeps_on() {
    let s = site(
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
        |_| {},
    )
    .await;
    let mut j = job(REMOTE, remote_image(0x2404_0000));
    j.wake_timeout = Duration::from_millis(500);
    let (r, progress) = run(&s.zigbee, j).await;
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(e.message.contains("did not wake up"), "{e}");
    assert_eq!(statuses(&progress), [UpgradeStatus::WaitingForWakeup]);
    assert_eq!(request_topics(&s.sim), ["schedule", "unschedule"]);
    assert!(!s.sim.device(REMOTE).unwrap().scheduled);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn a_sleeping_device_does_not_block_a_mains_device_on_the_same_network() {
    let s = site(
        vec![
            SimDevice::sleepy_end_device(REMOTE, "remote", None),
            SimDevice::mains_router(BULB, "bulb"),
        ],
        |_| {},
    )
    .await;
    let remote_img = remote_image(0x2404_0000);
    let bulb_img = bulb_image(0x2309_9999, 8_000);
    let (tx_r, mut rx_r) = mpsc::unbounded_channel();
    let sleeper = s.zigbee.update(
        job(REMOTE, Arc::clone(&remote_img)),
        tx_r,
        CancellationToken::new(),
    );
    let script = async {
        // The remote's schedule is armed: it holds no slot.
        while rx_r.recv().await.unwrap().status != UpgradeStatus::WaitingForWakeup {}
        assert!(s.sim.device(REMOTE).unwrap().scheduled);
        // A mains update on the same network runs now: the schedule is withdrawn first, so
        // a wake-up meanwhile cannot start a second transfer.
        let (bulb, bulb_progress) = run(&s.zigbee, job(BULB, Arc::clone(&bulb_img))).await;
        bulb.unwrap();
        assert_eq!(
            statuses(&bulb_progress)[..2],
            [UpgradeStatus::Queued, UpgradeStatus::AgentPreparing]
        );
        // Meanwhile the remote waited for the slot (13), and is armed again (5).
        let mut seen = Vec::new();
        loop {
            let p: TransferProgress = rx_r.recv().await.unwrap();
            seen.push(p.status);
            if p.status == UpgradeStatus::WaitingForWakeup {
                break;
            }
        }
        assert_eq!(
            seen,
            [UpgradeStatus::Queued, UpgradeStatus::WaitingForWakeup]
        );
        assert!(s.sim.device(REMOTE).unwrap().scheduled);
        s.sim.wake(REMOTE);
    };
    let (r, ()) = tokio::join!(timeout(T, sleeper), script);
    r.unwrap().unwrap();
    assert_eq!(
        request_topics(&s.sim),
        ["schedule", "unschedule", "update", "schedule"]
    );
    assert_eq!(
        s.sim.device(REMOTE).unwrap().received_images,
        vec![remote_img.bytes.to_vec()]
    );
    assert_eq!(
        s.sim.device(BULB).unwrap().received_images,
        vec![bulb_img.bytes.to_vec()]
    );
    let (_, bulb_end) = transfer_window(&s.sim, "bulb");
    let (remote_start, _) = transfer_window(&s.sim, "remote");
    assert!(remote_start > bulb_end, "never side by side");
    s.sim.shutdown().await;
}

/// The bridge's requests and device states, in simulated ms (for failure messages).
fn sim_log(sim: &Z2mSim) -> String {
    let mut all: Vec<_> = sim
        .published()
        .into_iter()
        .filter(|l| !l.topic.contains("/bridge/"))
        .map(|l| (l.at_ms, format!("state {} {}", l.topic, l.payload)))
        .collect();
    all.extend(
        sim.requests()
            .into_iter()
            .map(|l| (l.at_ms, format!("request {} {:.120}", l.topic, l.payload))),
    );
    all.sort_by_key(|x| x.0);
    all.iter()
        .map(|(t, l)| format!("{t:>10} {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The device's transfers, in simulated ms: each run of consecutive `updating` states (first,
/// last) and the highest progress it reported.
fn transfer_runs(sim: &Z2mSim, name: &str) -> Vec<(u64, u64, f64)> {
    let topic = format!("zigbee2mqtt/{name}");
    let mut runs: Vec<(u64, u64, f64)> = Vec::new();
    let mut open = false;
    for l in sim.published().into_iter().filter(|l| l.topic == topic) {
        let v: serde_json::Value = serde_json::from_str(&l.payload).unwrap();
        let u = &v["update"];
        if u["state"] == "updating" {
            let p = u["progress"].as_f64().unwrap_or(0.0);
            match runs.last_mut() {
                Some(r) if open => {
                    r.1 = l.at_ms;
                    r.2 = r.2.max(p);
                }
                _ => runs.push((l.at_ms, l.at_ms, p)),
            }
            open = true;
        } else {
            open = false;
        }
    }
    runs
}

#[tokio::test]
async fn two_devices_that_wake_at_once_take_turns() {
    const REMOTE2: &str = "0x000d6ffffe2b3c4e";
    // Both are woken by the test, at the same simulated instant; both hold their transfer at
    // 1 % until the test lets it go on.
    let s = site(
        vec![
            SimDevice::sleepy_end_device(REMOTE, "remote", None).held_at(1.0),
            SimDevice::sleepy_end_device(REMOTE2, "remote2", None)
                .with_image_ids(0x117C, 0x11C2)
                .held_at(1.0),
        ],
        |_| {},
    )
    .await;
    let img1 = remote_image(0x2404_0000);
    let img2 = other_remote_image(0x2404_0000);
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let a = s.zigbee.update(
        job(REMOTE, Arc::clone(&img1)),
        tx1,
        CancellationToken::new(),
    );
    let b = s.zigbee.update(
        job(REMOTE2, Arc::clone(&img2)),
        tx2,
        CancellationToken::new(),
    );
    let script = async {
        // With the network free, both schedules are armed.
        timeout(
            T,
            s.sim
                .wait_until(|s| s.devices().iter().filter(|d| d.scheduled).count() == 2),
        )
        .await
        .expect("both armed");
        s.sim.wake(REMOTE);
        s.sim.wake(REMOTE2);
        // Both woke and started; the agent lets one go on, aborts the other's run and
        // withdraws its schedule.
        timeout(
            T,
            s.sim.wait_until(|s| {
                let d = s.devices();
                let held: Vec<_> = d.iter().filter(|d| d.held).collect();
                held.len() == 1
                    && d.iter().all(|d| d.held || !d.scheduled)
                    && s.requests()
                        .iter()
                        .any(|r| r.topic.ends_with("update/abort"))
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "one run aborted and unscheduled, one held:\n{}",
                sim_log(&s.sim)
            )
        });
        let winner = if s.sim.device(REMOTE).unwrap().held {
            REMOTE
        } else {
            REMOTE2
        };
        let (loser, loser_rx) = if winner == REMOTE {
            (REMOTE2, &mut rx2)
        } else {
            (REMOTE, &mut rx1)
        };
        // The loser waits for the slot (13), holding nothing armed.
        let mut last = None;
        while let Ok(p) = loser_rx.try_recv() {
            last = Some(p.status);
        }
        assert_eq!(
            last,
            Some(UpgradeStatus::Queued),
            "{loser} waits for the slot"
        );
        // Nothing is armed while the winner runs: the loser's device may wake freely.
        s.sim.release(loser);
        s.sim.wake(loser);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!s.sim.device(loser).unwrap().scheduled);
        assert_eq!(
            transfer_runs(&s.sim, if loser == REMOTE { "remote" } else { "remote2" }).len(),
            1
        );
        // The winner finishes; the loser's schedule is armed again and runs at its next wake-up.
        s.sim.release(winner);
        timeout(
            T,
            s.sim
                .wait_until(|s| s.device(loser).is_some_and(|d| d.scheduled)),
        )
        .await
        .expect("armed again once the network is free");
        s.sim.wake(loser);
        (winner, loser)
    };
    let (ra, rb, (winner, _loser)) = tokio::join!(timeout(T, a), timeout(T, b), script);
    ra.unwrap().unwrap();
    rb.unwrap().unwrap();
    for (id, img) in [(REMOTE, &img1), (REMOTE2, &img2)] {
        assert_eq!(
            s.sim.device(id).unwrap().received_images,
            vec![img.bytes.to_vec()],
            "{id} installed its image once"
        );
    }
    let (w, l) = if winner == REMOTE {
        ("remote", "remote2")
    } else {
        ("remote2", "remote")
    };
    let won = transfer_runs(&s.sim, w);
    let lost = transfer_runs(&s.sim, l);
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert!(
        lost[0].2 <= 1.0,
        "the aborted run went no further: {lost:?}"
    );
    assert!(lost[1].0 > won[0].1, "never side by side: {won:?} {lost:?}");
    s.sim.shutdown().await;
}

#[tokio::test]
async fn a_sleepy_device_is_seen_waking_by_its_own_messages() {
    let s = site(
        vec![
            SimDevice::sleepy_end_device(REMOTE, "remote", None),
            SimDevice::mains_router(BULB, "bulb"),
        ],
        |_| {},
    )
    .await;
    assert!(s.zigbee.is_sleepy(REMOTE) && s.zigbee.is_sleepy("remote"));
    assert!(!s.zigbee.is_sleepy(BULB) && !s.zigbee.is_sleepy("nobody"));
    // What zigbee2mqtt publishes on its own (a schedule's state) is not the device talking.
    let contact = s.zigbee.next_contact(REMOTE);
    tokio::pin!(contact);
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let job_cancel = cancel.clone();
    let scheduled = s
        .zigbee
        .update(job(REMOTE, remote_image(0x2404_0000)), tx, job_cancel);
    tokio::pin!(scheduled);
    tokio::select! {
        () = &mut contact => panic!("a schedule's state is not a wake-up"),
        _ = &mut scheduled => panic!("the job waits for the wake-up"),
        () = async {
            timeout(T, s.sim.wait_until(|s| s.device(REMOTE).is_some_and(|d| d.scheduled)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        } => {}
    }
    cancel.cancel();
    assert!(scheduled.await.is_err());
    // The device wakes up: its message is the contact.
    s.sim.wake(REMOTE);
    timeout(T, contact).await.expect("the wake-up is seen");
    s.sim.shutdown().await;
}

// ----- recovery after an agent restart -----

/// The journal's marks, as the core would keep them.
#[derive(Debug, Default)]
struct Marks(std::sync::Mutex<Vec<(&'static str, serde_json::Value)>>);

impl CommitLog for Marks {
    fn committing(
        &self,
        note: serde_json::Value,
    ) -> futures::future::BoxFuture<'_, Result<(), String>> {
        self.0.lock().unwrap().push(("committing", note));
        Box::pin(async { Ok(()) })
    }
    fn committed(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        self.0
            .lock()
            .unwrap()
            .push(("committed", serde_json::Value::Null));
        Box::pin(async { Ok(()) })
    }
}

impl Marks {
    fn kinds(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|m| m.0).collect()
    }
    fn note(&self) -> Option<serde_json::Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.0 == "committing")
            .map(|m| m.1.clone())
    }
}

/// What the core hands a transport for an attempt the journal holds unfinished.
fn recover_job(
    device: &str,
    image: &VerifiedImage,
    stage: CommitStage,
    note: Option<serde_json::Value>,
) -> (RecoverJob, Arc<Marks>) {
    let marks = Arc::new(Marks::default());
    let job = RecoverJob {
        task_id: format!("task-{device}"),
        attempt: 1,
        device: device.to_string(),
        target_version: image.version.clone(),
        target_file_version: image.file_version,
        note,
        timeout: Duration::from_secs(60),
        wake_timeout: ota_agent::transport::DEFAULT_WAKE_TIMEOUT,
        commit: Commitment::new(marks.clone(), stage),
    };
    (job, marks)
}

fn note(target: u32, before: u32, schedule: bool) -> serde_json::Value {
    serde_json::to_value(RecoveryNote {
        target,
        before: Some(before),
        schedule,
        url: false,
    })
    .unwrap()
}

async fn recover(
    zigbee: &ZigbeeTransport,
    job: RecoverJob,
) -> (Result<UpdateReport, TaskError>, Vec<TransferProgress>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = timeout(T, zigbee.recover(job, tx, CancellationToken::new()))
        .await
        .expect("the recovery ends");
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    (r, seen)
}

#[tokio::test]
async fn a_restarted_agent_follows_the_transfer_zigbee2mqtt_still_runs() {
    let Site {
        broker,
        sim,
        zigbee,
    } = site(
        vec![SimDevice::mains_router(BULB, "bulb").held_at(30.0)],
        |_| {},
    )
    .await;
    let image = bulb_image(0x2309_9999, 8_000);
    // The first agent sends the update and dies mid-transfer.
    let marks = Arc::new(Marks::default());
    let mut j = job(BULB, Arc::clone(&image));
    j.commit = Commitment::new(marks.clone(), CommitStage::Before);
    {
        let (tx, _rx) = mpsc::unbounded_channel();
        let running = zigbee.update(j, tx, CancellationToken::new());
        tokio::select! {
            _ = running => panic!("the transfer is held"),
            () = held(&sim, BULB) => {}
        }
    }
    drop(zigbee);
    assert_eq!(marks.kinds(), ["committing"]);
    // The restarted agent: zigbee2mqtt still runs the transfer ("in progress" to a check).
    let zigbee = transport(transport_config(&broker, "home", "zigbee2mqtt")).await;
    zigbee.wait_for_device(BULB, T).await.unwrap();
    let (job, marks2) = recover_job(BULB, &image, CommitStage::Committing, marks.note());
    let commit = job.commit.clone();
    let recovering = recover(&zigbee, job);
    let release = async {
        timeout(
            T,
            sim.wait_until(|s| s.requests().iter().any(|r| r.topic.ends_with("check"))),
        )
        .await
        .unwrap();
        sim.release(BULB);
    };
    let ((r, progress), ()) = tokio::join!(recovering, release);
    let report = r.unwrap();
    assert_eq!(report.to.file_version, Some(0x2309_9999));
    assert!(statuses(&progress).contains(&UpgradeStatus::Updating));
    assert_eq!(marks2.kinds(), ["committed"]);
    assert_eq!(commit.stage(), CommitStage::Committed);
    assert_eq!(
        sim.device(BULB).unwrap().received_images,
        vec![image.bytes.to_vec()]
    );
    assert_eq!(
        request_topics(&sim),
        ["update", "check"],
        "nothing sent again"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_reports_what_the_device_runs_when_nothing_runs() {
    let s = site(
        vec![
            SimDevice::mains_router(BULB, "bulb"),
            SimDevice::mains_router(PLUG, "plug").with_file_version(0x2309_9999),
        ],
        |_| {},
    )
    .await;
    let image = bulb_image(0x2309_9999, 8_000);
    let old = 0x2309_3620;

    // The device had the whole image (committed) but runs its old version: final 5018.
    let (j, _) = recover_job(
        BULB,
        &image,
        CommitStage::Committed,
        Some(note(0x2309_9999, old, false)),
    );
    let commit = j.commit.clone();
    let e = recover(&s.zigbee, j).await.0.unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceReportedFailure, "{e}");
    assert!(commit.may_have_image(), "never retried automatically");

    // The request may have gone, nothing ran, the device runs its old version: 5010, retryable.
    let (j, _) = recover_job(
        BULB,
        &image,
        CommitStage::Committing,
        Some(note(0x2309_9999, old, false)),
    );
    let commit = j.commit.clone();
    let e = recover(&s.zigbee, j).await.0.unwrap_err();
    assert_eq!(e.code, ErrorCode::SendFailed, "{e}");
    assert!(!commit.may_have_image(), "the device did not take it");

    // A device on the target: success, whatever the mark.
    for stage in [CommitStage::Before, CommitStage::Committing] {
        let n = (stage != CommitStage::Before).then(|| note(0x2309_9999, old, false));
        let (j, _) = recover_job(PLUG, &image, stage, n);
        let report = recover(&s.zigbee, j).await.0.unwrap();
        assert_eq!(
            (report.to.file_version, report.wire_bytes),
            (Some(0x2309_9999), 0)
        );
    }
    // No mark, old version: nothing was sent, 5010 without asking zigbee2mqtt.
    let before = s.sim.requests().len();
    let (j, _) = recover_job(BULB, &image, CommitStage::Before, None);
    let e = recover(&s.zigbee, j).await.0.unwrap_err();
    assert_eq!(e.code, ErrorCode::SendFailed, "{e}");
    assert_eq!(s.sim.requests().len(), before);
    assert!(s.sim.devices().iter().all(|d| d.received_images.is_empty()));
    s.sim.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_follows_an_armed_schedule_it_heard() {
    let Site {
        broker,
        sim,
        zigbee,
    } = site(
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
        |_| {},
    )
    .await;
    let image = remote_image(0x2404_0000);
    // A transport that hears the schedule being armed (as one running beside the first would).
    let listener = transport(transport_config(&broker, "home", "zigbee2mqtt")).await;
    listener.wait_for_device(REMOTE, T).await.unwrap();
    // The first agent arms the schedule (hex) and dies.
    let marks = Arc::new(Marks::default());
    let mut j = job(REMOTE, Arc::clone(&image));
    j.commit = Commitment::new(marks.clone(), CommitStage::Before);
    {
        let (tx, _rx) = mpsc::unbounded_channel();
        let running = zigbee.update(j, tx, CancellationToken::new());
        tokio::select! {
            _ = running => panic!("the device sleeps"),
            () = async {
                timeout(T, sim.wait_until(|s| s.device(REMOTE).is_some_and(|d| d.scheduled)))
                    .await
                    .unwrap();
                // The listener has heard the state too.
                tokio::time::sleep(Duration::from_millis(200)).await;
            } => {}
        }
    }
    drop(zigbee);
    let note = marks.note();
    assert!(note.is_some());

    // It heard the armed schedule: it waits for the wake-up and follows the run.
    let (j, marks2) = recover_job(REMOTE, &image, CommitStage::Committing, note.clone());
    let recovering = recover(&listener, j);
    let wake = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sim.wake(REMOTE);
    };
    let ((r, progress), ()) = tokio::join!(recovering, wake);
    r.unwrap();
    assert_eq!(
        statuses(&progress),
        [
            UpgradeStatus::WaitingForWakeup,
            UpgradeStatus::Updating,
            UpgradeStatus::Downloaded
        ]
    );
    assert_eq!(marks2.kinds(), ["committed"]);
    assert_eq!(
        request_topics(&sim),
        ["schedule"],
        "the schedule was not sent again"
    );
    assert_eq!(
        sim.device(REMOTE).unwrap().received_images,
        vec![image.bytes.to_vec()]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_restarted_agent_withdraws_a_schedule_it_did_not_hear_and_the_update_is_sent_again() {
    let s = site(
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
        |_| {},
    )
    .await;
    let image = remote_image(0x2404_0000);
    // The first agent's schedule, armed before this transport started (states are not
    // retained: it never heard it).
    let first = transport(transport_config(&s.broker, "home", "zigbee2mqtt")).await;
    first.wait_for_device(REMOTE, T).await.unwrap();
    let marks = Arc::new(Marks::default());
    let mut j = job(REMOTE, Arc::clone(&image));
    j.commit = Commitment::new(marks.clone(), CommitStage::Before);
    {
        let (tx, _rx) = mpsc::unbounded_channel();
        let running = first.update(j, tx, CancellationToken::new());
        tokio::select! {
            _ = running => panic!("the device sleeps"),
            () = async {
                timeout(T, s.sim.wait_until(|s| s.device(REMOTE).is_some_and(|d| d.scheduled)))
                    .await
                    .unwrap();
            } => {}
        }
    }
    drop(first);
    let fresh = transport(transport_config(&s.broker, "home", "zigbee2mqtt")).await;
    fresh.wait_for_device(REMOTE, T).await.unwrap();
    let (j, _) = recover_job(REMOTE, &image, CommitStage::Committing, marks.note());
    let commit = j.commit.clone();
    let e = recover(&fresh, j).await.0.unwrap_err();
    assert_eq!(e.code, ErrorCode::SendFailed, "{e}");
    assert!(
        !commit.may_have_image(),
        "retryable: the device took nothing"
    );
    assert!(!s.sim.device(REMOTE).unwrap().scheduled);
    assert_eq!(request_topics(&s.sim), ["schedule", "unschedule"]);
    // Woken now, it installs nothing: the retry will schedule it again.
    s.sim.wake(REMOTE);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.sim.device(REMOTE).unwrap().received_images.is_empty());
    s.sim.shutdown().await;
}

/// The health window after an update (issue 15 item 4): zigbee2mqtt must see the device during
/// it. A mains device that stays silent is asked at the window's end (an OTA check); one that
/// does not answer fails. `ota_agent::health::HealthRun` is what the core runs after a success.
#[tokio::test]
async fn the_health_window_needs_zigbee2mqtt_to_see_the_device() {
    use ota_agent::health::{HealthJob, HealthRun};
    use ota_domain::health::Health;
    let s = site(
        vec![
            SimDevice::mains_router(BULB, "bulb").with_file_version(2),
            SimDevice::mains_router(PLUG, "plug")
                .with_file_version(2)
                .with_behavior(Behavior::NeverResponds),
        ],
        |_| {},
    )
    .await;
    let job = |device: &str| HealthJob {
        device: device.into(),
        window: Duration::from_secs(2),
        accept_reachability: false,
        expected: vec!["2".into()],
        previous: vec!["1".into()],
    };
    // Silent during the window, the plug is asked at its end and does not answer.
    let e = HealthRun::start(&s.zigbee, job(PLUG))
        .run()
        .await
        .unwrap_err();
    assert_eq!(
        e,
        TaskError::new(
            ErrorCode::Unhealthy,
            "zigbee2mqtt did not see the device during its 2 s health window"
        )
    );
    // A bulb that talks during the window is not asked.
    let talks = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.sim.wake(BULB);
    };
    let before = request_topics(&s.sim).len();
    let (verdict, ()) = tokio::join!(HealthRun::start(&s.zigbee, job(BULB)).run(), talks);
    assert_eq!(verdict, Ok(Health::Healthy));
    assert_eq!(request_topics(&s.sim).len(), before, "heard: no check");
    // Silent during the next window, it answers the check at the window's end.
    let verdict = HealthRun::start(&s.zigbee, job(BULB)).run().await;
    assert_eq!(verdict, Ok(Health::Healthy));
    assert_eq!(request_topics(&s.sim)[before..], ["check"]);
}

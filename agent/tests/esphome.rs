//! The ESPHome transport against the simulated ESPHome node (native OTA, native API and
//! web_server on loopback TCP): the real drivers, the real protocol machines, the real image
//! checks, the real reboot.
//!
//! Time is real (sockets and tokio's paused clock race); reboots take 300 ms and the transport's
//! timeouts are shortened so the fault cases finish in about a second each.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use ota_agent::secret::Secret;
use ota_agent::transport::esphome::{
    EsphomeConfig, EsphomeDeviceConfig, EsphomePlatform, EsphomeTransport, Method, WebServerConfig,
};
use ota_agent::transport::{
    TransferProgress, Transport, TransportKind, UpdateJob, UpdateReport, VerifiedImage,
};
use ota_devproto::esphome::{Compression, DeviceAuth, OtaVersion};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder};
use ota_sim::esphome::{Fault, Platform, UploadOutcome};
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use ota_sim::esphome_web::WebConfig;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "correct-horse";
const KEY: [u8; 32] = [0x5A; 32];

/// An ESP32 application of about `len` bytes, half of it compressible like real firmware.
fn app(version: &str, len: usize) -> Vec<u8> {
    let text: Vec<u8> = b"[I][wifi:290]: WiFi Connected! SSID 'greenhouse' channel 6\n"
        .iter()
        .copied()
        .cycle()
        .take(len / 2)
        .collect();
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("acme.plug")
        .payload_size(len / 2)
        .segment(0x3FFB_0000, text)
        .build()
}

fn verified(bytes: Vec<u8>, version: &str) -> Arc<VerifiedImage> {
    Arc::new(VerifiedImage {
        firmware_id: "fw-2".into(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        md5: hex::encode(Md5::digest(&bytes)),
        bytes: Bytes::from(bytes),
        version: version.into(),
        file_version: None,
    })
}

fn job(image: Arc<VerifiedImage>) -> UpdateJob {
    UpdateJob {
        task_id: "task-1".into(),
        attempt: 1,
        device: "plug".into(),
        image,
        downgrade: false,
        schedule: false,
        timeout: Duration::from_secs(60),
        wake_timeout: ota_agent::transport::DEFAULT_WAKE_TIMEOUT,
        commit: Default::default(),
    }
}

/// An ESP32 node on ESPHome 2026.10 running 1.0.0 of acme.plug, rebooting in 300 ms.
fn node_config() -> NodeConfig {
    let mut c = NodeConfig::new("plug", Platform::Esp32);
    c.ota.version = "1.0.0".into();
    c.ota.project_name = "acme.plug".into();
    c.ota.reboot_time = Duration::from_millis(300);
    c
}

fn start(config: NodeConfig) -> EsphomeNode {
    EsphomeNode::start(config).expect("bind loopback ports")
}

/// The device entry for `node`, on its loopback ports.
fn device(node: &EsphomeNode) -> EsphomeDeviceConfig {
    EsphomeDeviceConfig {
        port: Some(node.ota_addr().port()),
        api_port: node.api_addr().port(),
        ..EsphomeDeviceConfig::new("plug", "127.0.0.1", EsphomePlatform::Esp32)
    }
}

/// Shortened timeouts, so failures take about a second.
fn quick(devices: Vec<EsphomeDeviceConfig>) -> EsphomeConfig {
    EsphomeConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        data_timeout: Duration::from_secs(2),
        web_read_timeout: Duration::from_secs(2),
        reboot_timeout: Duration::from_secs(3),
        reboot_poll: Duration::from_millis(50),
        reboot_settle: Duration::from_secs(1),
        retries: 2,
        retry_delay: Duration::from_millis(100),
        devices,
        ..EsphomeConfig::default()
    }
}

fn transport(dev: EsphomeDeviceConfig) -> EsphomeTransport {
    EsphomeTransport::new(quick(vec![dev])).expect("valid config")
}

async fn update_with(
    t: &EsphomeTransport,
    job: UpdateJob,
    cancel: CancellationToken,
) -> (Result<UpdateReport, TaskError>, Vec<TransferProgress>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = tokio::time::timeout(Duration::from_secs(60), t.update(job, tx, cancel))
        .await
        .expect("update finished within a minute");
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    (result, progress)
}

async fn update(
    t: &EsphomeTransport,
    image: Arc<VerifiedImage>,
) -> (Result<UpdateReport, TaskError>, Vec<TransferProgress>) {
    update_with(t, job(image), CancellationToken::new()).await
}

/// The statuses in order, repeats collapsed.
fn phases(progress: &[TransferProgress]) -> Vec<u32> {
    let mut v: Vec<u32> = progress.iter().map(|p| p.status.code()).collect();
    v.dedup();
    v
}

fn assert_success_progress(progress: &[TransferProgress]) {
    assert_eq!(phases(progress), vec![100, 2, 6], "{progress:#?}");
    let updating: Vec<_> = progress
        .iter()
        .filter(|p| p.status == UpgradeStatus::Updating)
        .collect();
    let percents: Vec<f32> = updating.iter().filter_map(|p| p.percent).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100.0));
    assert!(
        percents.iter().any(|&p| p > 0.0 && p < 100.0),
        "intermediate percents: {percents:?}"
    );
    assert!(
        updating.iter().any(|p| p.remaining_s.is_some()),
        "a remaining-time estimate"
    );
}

fn err(r: Result<UpdateReport, TaskError>) -> TaskError {
    r.expect_err("the update must fail")
}

#[tokio::test]
async fn native_update_with_password_reboots_into_the_new_version() {
    let mut c = node_config();
    c.ota.password = Some(PASSWORD.into());
    let node = start(c);
    let t = transport(EsphomeDeviceConfig {
        password: Some(Secret::new(PASSWORD)),
        ..device(&node)
    });
    let image = app("2.0.0", 200_000);
    let (result, progress) = update(&t, verified(image.clone(), "2.0.0")).await;
    let report = result.expect("update succeeds");
    assert_eq!(report.from.version.as_deref(), Some("1.0.0"));
    assert_eq!(report.to.version.as_deref(), Some("2.0.0"));
    assert_eq!(
        report.to.software_build_id.as_deref(),
        Some("ESPHome 2026.10.0")
    );
    assert!(
        report.wire_bytes > 0 && report.wire_bytes < image.len() as u64,
        "deflate"
    );
    assert_success_progress(&progress);
    assert!(
        progress.iter().any(|p| p.detail.contains("authenticating")),
        "{progress:#?}"
    );
    let snap = node.device().snapshot();
    assert_eq!(snap.uploads, 1);
    assert_eq!(snap.version, "2.0.0");
    assert_eq!(snap.boots, 2);
    assert_eq!(snap.received[0].image, Bytes::from(image));
    assert_eq!(snap.received[0].compression, Compression::Deflate);
    // The inventory already knows.
    let inv = t.inventory().borrow().clone();
    assert_eq!(inv[0].current_version.as_deref(), Some("2.0.0"));
    assert!(inv[0].reachable);
    // Nothing secret in what the transport shows of itself.
    let shown = format!("{t:?} {progress:?} {report:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[tokio::test]
async fn legacy_md5_device_without_extended_protocol() {
    let mut c = node_config();
    c.ota.password = Some(PASSWORD.into());
    c.ota.auth = DeviceAuth::Md5;
    c.ota.extended_protocol = false;
    c.ota.ota_version = OtaVersion::V1;
    let node = start(c);
    let t = transport(EsphomeDeviceConfig {
        password: Some(Secret::new(PASSWORD)),
        ..device(&node)
    });
    let (result, progress) = update(&t, verified(app("2.0.0", 120_000), "2.0.0")).await;
    let report = result.expect("update succeeds");
    assert_eq!(report.to.version.as_deref(), Some("2.0.0"));
    assert_eq!(phases(&progress), vec![100, 2, 6]);
    assert!(
        progress.iter().any(|p| p.detail.contains("OTA version 1")),
        "{progress:#?}"
    );
    assert_eq!(
        node.device().snapshot().received[0].compression,
        Compression::None
    );
}

#[tokio::test]
async fn noise_encrypted_device_with_the_api_key() {
    let node = start(node_config().encrypted(KEY, true));
    let key = base64::engine::general_purpose::STANDARD.encode(KEY);
    let t = transport(EsphomeDeviceConfig {
        api_key: Some(Secret::new(key.clone())),
        ..device(&node)
    });
    let (result, progress) = update(&t, verified(app("2.0.0", 150_000), "2.0.0")).await;
    let report = result.expect("update succeeds");
    assert_eq!(report.from.version.as_deref(), Some("1.0.0"));
    assert_eq!(report.to.version.as_deref(), Some("2.0.0"));
    assert!(
        progress.iter().any(|p| p.detail.contains("encrypted")),
        "{progress:#?}"
    );
    assert!(!format!("{t:?} {progress:?}").contains(&key));
    // Without the key the device refuses the upload with 0x94, and the API with a reject.
    let t = transport(device(&node));
    let e = err(update(&t, verified(app("3.0.0", 10_000), "3.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::ConnectFailed);
    assert!(e.message.contains("encryption required"), "{}", e.message);
}

#[tokio::test]
async fn wrong_password_is_5006_and_never_shows_the_password() {
    let mut c = node_config();
    c.ota.password = Some(PASSWORD.into());
    let node = start(c);
    let t = transport(EsphomeDeviceConfig {
        password: Some(Secret::new("wrong-battery")),
        ..device(&node)
    });
    let (result, progress) = update(&t, verified(app("2.0.0", 50_000), "2.0.0")).await;
    let e = err(result);
    assert_eq!(e.code, ErrorCode::ConnectFailed);
    assert!(
        e.message
            .contains("check the device's OTA password (the password of the firmware running now"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("wrong-battery") && !e.message.contains(PASSWORD));
    assert!(!format!("{progress:?}").contains("wrong-battery"));
    assert_eq!(phases(&progress), vec![100], "no data was sent");
    let snap = node.device().snapshot();
    assert_eq!(
        (snap.attempts, snap.uploads),
        (0, 0),
        "not retried, nothing sent"
    );
}

#[tokio::test]
async fn not_enough_space_is_5013() {
    let mut c = node_config();
    c.ota.max_image_size = 64 * 1024;
    let node = start(c);
    let t = transport(device(&node));
    let e = err(update(&t, verified(app("2.0.0", 100_000), "2.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::PrevalidationFailed);
    assert!(e.message.contains("not enough space"), "{}", e.message);
    assert!(e.message.contains("0x89"), "{}", e.message);
    assert_eq!(node.device().snapshot().uploads, 0);
}

#[tokio::test]
async fn md5_mismatch_at_the_end_is_5009_without_retry() {
    let node = start(node_config());
    node.device().inject(Fault::Md5MismatchAtEnd);
    let t = transport(device(&node));
    let e = err(update(&t, verified(app("2.0.0", 60_000), "2.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
    assert!(e.message.contains("0x8B"), "{}", e.message);
    let snap = node.device().snapshot();
    assert_eq!(snap.attempts, 1, "device errors are never retried");
    assert_eq!(
        snap.received[0].outcome,
        UploadOutcome::Failed(ota_devproto::esphome::ErrorCode::Md5Mismatch)
    );
    assert_eq!(snap.version, "1.0.0");
}

#[tokio::test]
async fn connection_dropped_mid_transfer_is_retried_and_succeeds() {
    let node = start(node_config());
    node.device()
        .inject_once(Fault::DropAfter { bytes: 40_000 });
    let t = transport(device(&node));
    let (result, progress) = update(&t, verified(app("2.0.0", 300_000), "2.0.0")).await;
    let report = result.expect("the retry succeeds");
    assert_eq!(report.to.version.as_deref(), Some("2.0.0"));
    let snap = node.device().snapshot();
    assert_eq!((snap.attempts, snap.uploads), (2, 1));
    assert!(
        progress.iter().any(|p| p.detail.contains("attempt 2 of 3")),
        "{progress:#?}"
    );
}

#[tokio::test]
async fn connection_dropped_after_the_last_chunk_is_not_retried() {
    let mut c = node_config();
    c.ota.compression = false;
    let node = start(c);
    let image = app("2.0.0", 50_000);
    // Magic, features, OTA type, size, MD5: 43 bytes; then the image. The device reads all of
    // it and drops the connection before answering.
    node.device().inject_once(Fault::DropAfter {
        bytes: 43 + image.len(),
    });
    let t = transport(device(&node));
    let e = err(update(&t, verified(image, "2.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::SendFailed);
    assert!(
        e.message.contains("did not install the image"),
        "{}",
        e.message
    );
    assert!(e.message.contains("still runs 1.0.0"), "{}", e.message);
    let snap = node.device().snapshot();
    assert_eq!((snap.attempts, snap.uploads), (1, 0), "never retried");
}

#[tokio::test]
async fn a_device_that_does_not_come_back_fails_with_a_reason() {
    let node = start(node_config());
    node.device().inject_once(Fault::StaysDownAfterReboot);
    let t = transport(device(&node));
    let (result, progress) = update(&t, verified(app("2.0.0", 40_000), "2.0.0")).await;
    let e = err(result);
    assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
    assert!(
        e.message
            .contains("did not come back within 3s after accepting the image"),
        "{}",
        e.message
    );
    assert!(e.message.contains("ESP32 rolls back"), "{}", e.message);
    assert_eq!(*phases(&progress).last().unwrap(), 6);
    assert_eq!(node.device().snapshot().uploads, 1);
}

#[tokio::test]
async fn a_device_that_comes_back_on_the_old_version_was_rolled_back() {
    let node = start(node_config());
    node.device().inject_once(Fault::RollbackAfterReboot);
    let t = transport(device(&node));
    let e = err(update(&t, verified(app("2.0.0", 40_000), "2.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::DeviceReportedFailure);
    assert!(
        e.message
            .contains("came back on 1.0.0: the new firmware was rolled back"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn web_server_fallback_with_basic_auth() {
    let mut c = node_config();
    c.web = Some(WebConfig::new(Platform::Esp32).with_auth("admin", "s3cret-web"));
    let node = start(c);
    let web_port = node.web_addr().unwrap().port();
    let dev = |password: &str| EsphomeDeviceConfig {
        method: Method::WebServer,
        web: Some(WebServerConfig {
            port: web_port,
            username: Some("admin".into()),
            password: Some(Secret::new(password)),
            password_file: None,
        }),
        ..device(&node)
    };
    // Wrong credentials: 401 is 5006, the password is nowhere.
    let t = transport(dev("guess"));
    let e = err(update(&t, verified(app("2.0.0", 1_000_000), "2.0.0"))
        .await
        .0);
    assert_eq!(e.code, ErrorCode::ConnectFailed);
    assert!(e.message.contains("HTTP 401"), "{}", e.message);
    assert!(!e.message.contains("guess") && !e.message.contains("s3cret-web"));
    assert_eq!(node.web.as_ref().unwrap().unauthorized(), 1, "not retried");

    let t = transport(dev("s3cret-web"));
    let image = app("2.0.0", 200_000);
    let (result, progress) = update(&t, verified(image.clone(), "2.0.0")).await;
    let report = result.expect("update succeeds");
    assert_eq!(report.from.version.as_deref(), Some("1.0.0"));
    assert_eq!(report.to.version.as_deref(), Some("2.0.0"));
    assert_success_progress(&progress);
    let snap = node.device().snapshot();
    assert_eq!(snap.received.last().unwrap().via, "web_server");
    assert_eq!(snap.received.last().unwrap().image, Bytes::from(image));
    assert_eq!(snap.version, "2.0.0");
    assert!(!format!("{t:?} {progress:?}").contains("s3cret-web"));
}

#[tokio::test]
async fn factory_image_is_refused_before_connecting() {
    let node = start(node_config());
    let t = transport(device(&node));
    let factory = FactoryImageBuilder::new(Chip::Esp32)
        .app(app("2.0.0", 20_000))
        .build();
    let (result, progress) = update(&t, verified(factory, "2.0.0")).await;
    let e = err(result);
    assert_eq!(e.code, ErrorCode::PrevalidationFailed);
    assert!(e.message.contains("factory image"), "{}", e.message);
    assert!(
        e.message.contains("never be sent over the air"),
        "{}",
        e.message
    );
    assert!(progress.is_empty());
    assert_eq!(node.api.connections(), 0, "no connection at all");
    assert_eq!(node.device().snapshot().attempts, 0);
    // An image for another chip is refused the same way.
    let c3 = EspAppBuilder::new(Chip::Esp32C3).version("2.0.0").build();
    let t = transport(EsphomeDeviceConfig {
        chip: Some(Chip::Esp32),
        ..device(&node)
    });
    let e = err(update(&t, verified(c3, "2.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::PrevalidationFailed);
    assert!(e.message.contains("ESP32-C3"), "{}", e.message);
}

#[tokio::test]
async fn cancel_is_honoured_before_data_and_ignored_after() {
    let node = start(node_config());
    // The device answers so slowly that no image byte can go before the cancel, whenever the
    // cancel comes: it is sent with the job's first progress report.
    node.device().inject_once(Fault::Slow {
        per_response: Duration::from_secs(120),
    });
    let t = transport(device(&node));
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<TransferProgress>();
    let c = cancel.clone();
    let canceller = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(p) = rx.recv().await {
            c.cancel();
            seen.push(p);
        }
        seen
    });
    let image = verified(app("2.0.0", 100_000), "2.0.0");
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        t.update(job(image.clone()), tx, cancel),
    )
    .await
    .expect("a cancel does not wait for the slow device");
    let progress = canceller.await.unwrap();
    let e = err(result);
    assert!(
        e.message.contains("cancelled before any image byte"),
        "{}",
        e.message
    );
    assert!(!phases(&progress).contains(&2));
    assert_eq!(node.device().snapshot().attempts, 0);

    // The slow answers were for that job only (it may have ended before it connected).
    node.device().clear_faults();

    // Once data flows, a cancel changes nothing: the update completes.
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<TransferProgress>();
    let c = cancel.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(p) = rx.recv().await {
            if p.status == UpgradeStatus::Updating {
                c.cancel();
            }
            seen.push(p);
        }
        seen
    });
    let r = t.update(job(image), tx, cancel).await;
    let seen = watcher.await.unwrap();
    assert_eq!(
        r.expect("not cancelled").to.version.as_deref(),
        Some("2.0.0")
    );
    assert_eq!(phases(&seen), vec![100, 2, 6]);
}

#[tokio::test]
async fn check_and_inventory_read_the_api() {
    let node = start(node_config());
    let t = transport(device(&node));
    assert_eq!(t.kind(), TransportKind::Esphome);
    assert_eq!(t.instance(), "esphome");
    let before = t.inventory().borrow().clone();
    assert!(!before[0].reachable && before[0].current_version.is_none());
    let c = t
        .check("plug", Duration::from_secs(5))
        .await
        .expect("answers");
    assert!(c.reachable);
    assert_eq!(c.device.current_version.as_deref(), Some("1.0.0"));
    assert_eq!(c.device.model, "esp32dev");
    assert_eq!(c.device.vendor, "Espressif");
    assert_eq!(c.device.platform.as_deref(), Some("esp32"));
    assert_eq!(c.device.date_code.as_deref(), Some("Nov 24 2026, 08:00:00"));
    // Safe mode: only the OTA port answers; reachable, last version kept.
    node.api.set_enabled(false);
    let r = t.refresh().await;
    assert!(r[0].reachable);
    assert_eq!(r[0].current_version.as_deref(), Some("1.0.0"));
    // Off: not reachable, and a check says so.
    node.device().power_off();
    let r = t.refresh().await;
    assert!(!r[0].reachable);
    let e = t.check("plug", Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Offline);
    let e = t.check("nope", Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Offline);
}

#[tokio::test]
async fn an_unreachable_device_is_retried_then_5006() {
    let node = start(node_config());
    let dev = device(&node);
    drop(node);
    let t = transport(dev);
    let (result, progress) = update(&t, verified(app("2.0.0", 10_000), "2.0.0")).await;
    let e = err(result);
    assert_eq!(e.code, ErrorCode::ConnectFailed);
    assert!(e.message.contains("could not connect"), "{}", e.message);
    assert!(
        progress.iter().any(|p| p.detail.contains("attempt 3 of 3")),
        "{progress:#?}"
    );
}

#[tokio::test]
async fn a_stalled_device_times_out_in_the_data_phase() {
    let node = start(node_config());
    node.device().inject(Fault::Stall { after: 20_000 });
    let t = EsphomeTransport::new(EsphomeConfig {
        retries: 0,
        ..quick(vec![device(&node)])
    })
    .unwrap();
    let e = err(update(&t, verified(app("2.0.0", 100_000), "2.0.0")).await.0);
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(
        e.message.contains("stopped answering for 2s"),
        "{}",
        e.message
    );
}

// === the health window after an update (issue 15 item 4) ===
//
// `ota_agent::health::HealthRun` with this transport: the core runs exactly this after a
// success when the command carries a health window. Windows of a few seconds (real time: the
// node's sockets), sampled every second.

mod health {
    use super::*;
    use ota_agent::health::{HealthJob, HealthRun};
    use ota_domain::health::Health;

    fn window(secs: u64, accept_reachability: bool) -> HealthJob {
        HealthJob {
            device: "plug".into(),
            window: Duration::from_secs(secs),
            accept_reachability,
            expected: vec!["2.0.0".into()],
            previous: vec!["1.0.0".into()],
        }
    }

    /// A node updated from 1.0.0 to 2.0.0 (with `fault` armed for the boot into it), and its
    /// transport.
    async fn updated(fault: Option<Fault>) -> (EsphomeNode, EsphomeTransport) {
        let node = start(node_config());
        if let Some(f) = fault {
            node.device().inject_once(f);
        }
        let t = transport(device(&node));
        update(&t, verified(app("2.0.0", 20_000), "2.0.0"))
            .await
            .0
            .expect("the device came back on 2.0.0");
        (node, t)
    }

    #[tokio::test]
    async fn a_healthy_device_succeeds_only_after_the_window() {
        let (node, t) = updated(None).await;
        let run = HealthRun::start(&t, window(3, false));
        assert!(run.verdict_now().is_none());
        let began = tokio::time::Instant::now();
        assert_eq!(run.run().await, Ok(Health::Healthy));
        assert!(
            began.elapsed() >= Duration::from_secs(3),
            "the whole window"
        );
        assert!(node.device().uptime() >= Duration::from_secs(3));
        assert_eq!(
            node.device().snapshot().boots,
            2,
            "one reboot: into the image"
        );
    }

    #[tokio::test]
    async fn a_reboot_loop_fails_with_5022() {
        let after = Duration::from_millis(1500);
        let (node, t) = updated(Some(Fault::RebootLoop { after })).await;
        let e = HealthRun::start(&t, window(6, false))
            .run()
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unhealthy);
        assert!(
            e.message.contains("rebooted") && e.message.contains("reboot loop"),
            "{}",
            e.message
        );
        assert!(node.device().snapshot().boots >= 3);
        node.device().clear_faults();
    }

    #[tokio::test]
    async fn a_fallback_to_the_previous_image_fails_with_its_own_message() {
        let after = Duration::from_millis(1500);
        let (node, t) = updated(Some(Fault::FallBackAfter { after })).await;
        let e = HealthRun::start(&t, window(6, false))
            .run()
            .await
            .unwrap_err();
        assert_eq!(
            e,
            TaskError::new(ErrorCode::Unhealthy, "the device rolled back to 1.0.0")
        );
        assert_eq!(node.device().current_version(), "1.0.0");
    }

    #[tokio::test]
    async fn safe_mode_fails_with_5022() {
        let (node, t) = updated(None).await;
        node.api.set_enabled(false);
        let e = HealthRun::start(&t, window(4, false))
            .run()
            .await
            .unwrap_err();
        assert_eq!(
            e,
            TaskError::new(ErrorCode::Unhealthy, "the device fell back to safe mode")
        );
    }

    #[tokio::test]
    async fn a_device_without_an_api_is_unconfirmed_unless_reachability_is_accepted() {
        let node = start(node_config());
        let mut dev = device(&node);
        dev.api_port = 0;
        let t = transport(dev);
        let run = HealthRun::start(&t, window(2, false));
        assert_eq!(run.verdict_now(), Some(Ok(Health::Unconfirmed)));
        let run = HealthRun::start(&t, window(2, true));
        assert!(run.verdict_now().is_none());
        assert_eq!(run.run().await, Ok(Health::Reachable));
        node.device().power_off();
        let e = HealthRun::start(&t, window(2, true))
            .run()
            .await
            .unwrap_err();
        assert!(
            e.message.contains("not reachable at the end"),
            "{}",
            e.message
        );
    }
}

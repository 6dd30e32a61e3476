#![cfg(feature = "conformance")]
//! Tier 2: the zigbee2mqtt transport and the zigbee2mqtt simulator on Debian's mosquitto.
//!
//! Each test starts its own mosquitto (found on PATH or in /usr/sbin; the test fails when it is
//! missing) on a free loopback port with a throwaway config, then runs the agent's
//! `ZigbeeTransport` against `ota_sim::z2m` on it: a mains update with progress, a sleepy
//! device scheduled and woken, a device that aborts at 100 %, a broker restart in the middle of
//! a transfer, image delivery by hex, and MQTT over TLS with a client certificate. The bridge
//! runs on a paused clock (`Z2mSim::start_virtual`); MQTT traffic is real.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::Md5;
use ota_agent::transport::zigbee::{ImageEndpoint, MqttTls, ZigbeeConfig, ZigbeeTransport};
use ota_agent::transport::{TransferProgress, Transport, UpdateJob, UpdateReport, VerifiedImage};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_firmware::builders::ZigbeeOtaBuilder;
use ota_sim::z2m::{Behavior, SimDevice, Z2mSim, Z2mSimConfig};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const BULB: &str = "0x000b57fffec6a5b2";
const REMOTE: &str = "0x000d6ffffe2b3c4d";
const T: Duration = Duration::from_secs(60);

// ----- mosquitto -----

fn mosquitto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .expect("mosquitto is not installed (scripts/conformance.sh installs Debian's package)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto of our own: throwaway config in a temporary directory, loopback only, no
/// persistence. Killed (by its own pid) when dropped.
struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

struct TlsFiles {
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Mosquitto {
    fn start() -> Self {
        Self::start_with(false).0
    }

    /// With `tls`, a second listener that requires a client certificate from a test CA.
    fn start_with(tls: bool) -> (Self, Option<TlsFiles>) {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             log_dest file {}\nlog_type all\nlistener {port} 127.0.0.1\n",
            dir.path().join("mosquitto.log").display()
        );
        let (tls_port, files) = if tls {
            let files = make_pki(dir.path());
            let p = free_port();
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                files.ca.display(),
                dir.path().join("server.pem").display(),
                dir.path().join("server.key").display(),
            ));
            (Some(p), Some(files))
        } else {
            (None, None)
        };
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Self {
            dir,
            port,
            tls_port,
            child: None,
        };
        m.spawn();
        (m, files)
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        for _ in 0..200 {
            let up = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .tls_port
                    .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mosquitto exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("mosquitto did not listen on {}: {}", self.port, self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again on the same port(s): an empty broker (no persistence).
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA (valid 2024–2099), a server certificate for 127.0.0.1/localhost and a client
/// certificate it signed, generated once with rcgen. Test-only keys for loopback brokers.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBezCCASCgAwIBAgIUcI94L+CUlIZf+r2BlYeLOMRi+EwwCgYIKoZIzj0EAwIw\nIjEgMB4GA1UEAwwXb3RhIGNvbmZvcm1hbmNlIHRlc3QgQ0EwIBcNMjQwMTAxMDAw\nMDAwWhgPMjA5OTAxMDEwMDAwMDBaMCIxIDAeBgNVBAMMF290YSBjb25mb3JtYW5j\nZSB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAERZL3IHHGjYtBPGrY\npv4WeoYB0iVTanikKbuY2dDgr706w6Jh5ERXCVL+3Tn6L1oru+5nJ9tI8k8beNAp\nZe3a76MyMDAwHQYDVR0OBBYEFJ950ETv9M2uyaHMknPC3e41SZuaMA8GA1UdEwEB\n/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhANCnHfwUqiQRzBhuvB90tzeMozUW\nDOyBFsj81+o56ltoAiEAzxVRBGxEPaKGvJ5fIWyB9Y1E7rS0OwHunutq48PiUfk=\n-----END CERTIFICATE-----\n";
const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBVjCB/qADAgECAhRjw/oOktU15pcBjZwooXPgF8mYVzAKBggqhkjOPQQDAjAi\nMSAwHgYDVQQDDBdvdGEgY29uZm9ybWFuY2UgdGVzdCBDQTAgFw0yNDAxMDEwMDAw\nMDBaGA8yMDk5MDEwMTAwMDAwMFowFDESMBAGA1UEAwwJbW9zcXVpdHRvMFkwEwYH\nKoZIzj0CAQYIKoZIzj0DAQcDQgAE7sxc/ZGf1svrQwl8RwKFBQpzjvbiTfCzLMSz\ncgqrWpU3bOF+IjX1C44sQFly2JXS0SkelulREC1Fogl3CZC3fqMeMBwwGgYDVR0R\nBBMwEYcEfwAAAYIJbG9jYWxob3N0MAoGCCqGSM49BAMCA0cAMEQCICA7uZH4pfsn\ny5tDouzgd5eteje7Z/cG1INwuM7fyJwYAiAluF4xfqODsOfThv4M44yksW7nSfJp\nJo8Uos9vHGiheA==\n-----END CERTIFICATE-----\n";
const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8u49i+ylZcay6uKS\nj5qI2M1q+i6lTIPhOTpoubqsIxqhRANCAATuzFz9kZ/Wy+tDCXxHAoUFCnOO9uJN\n8LMsxLNyCqtalTds4X4iNfULjixAWXLYldLRKR6W6VEQLUWiCXcJkLd+\n-----END PRIVATE KEY-----\n";
const CLIENT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBODCB3qADAgECAhQbgRcmqMv5stUqP8ljEnw4Dp3ZOjAKBggqhkjOPQQDAjAi\nMSAwHgYDVQQDDBdvdGEgY29uZm9ybWFuY2UgdGVzdCBDQTAgFw0yNDAxMDEwMDAw\nMDBaGA8yMDk5MDEwMTAwMDAwMFowFDESMBAGA1UEAwwJb3RhLWFnZW50MFkwEwYH\nKoZIzj0CAQYIKoZIzj0DAQcDQgAEKJRHk9RQkvo1MYolIcBXC0XnxDcilQFAT3Sm\n3qh+zfzK0raYlMBk7bhX6pR6vv4BgY1etwipb2NoEFtIrNzdEzAKBggqhkjOPQQD\nAgNJADBGAiEAsAi7aPckeAXWgeqKDGW6tQi89TVEqYSsGXPlUgsL7akCIQCY+TIv\n6/MHhsmnIYCPIrjcA6SMme1etmc4aUNq37x7ZA==\n-----END CERTIFICATE-----\n";
const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0u80J06Eze5O0JVP\nejU1ERZWKpTxQW3L0fP5v0MWMtWhRANCAAQolEeT1FCS+jUxiiUhwFcLRefENyKV\nAUBPdKbeqH7N/MrStpiUwGTtuFfqlHq+/gGBjV63CKlvY2gQW0is3N0T\n-----END PRIVATE KEY-----\n";

/// Writes the test PKI as PEM files into `dir`.
fn make_pki(dir: &Path) -> TlsFiles {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    write("server.pem", SERVER_PEM);
    write("server.key", SERVER_KEY);
    TlsFiles {
        ca: write("ca.pem", CA_PEM),
        client_cert: write("client.pem", CLIENT_PEM),
        client_key: write("client.key", CLIENT_KEY),
    }
}

// ----- the site -----

fn image(image_type: u16, version: u32, payload: usize) -> Arc<VerifiedImage> {
    let bytes = ZigbeeOtaBuilder::new(0x117C, image_type, version)
        .header_string("conformance")
        .upgrade_image(payload)
        .build();
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
        task_id: format!("conf-{device}"),
        attempt: 1,
        device: device.into(),
        image,
        downgrade: false,
        schedule: false,
        timeout: Duration::from_secs(120),
        wake_timeout: ota_agent::transport::DEFAULT_WAKE_TIMEOUT,
        commit: Default::default(),
    }
}

fn transport_config(port: u16) -> ZigbeeConfig {
    let mut c = ZigbeeConfig::new("conformance", "127.0.0.1", port);
    c.image_endpoint = Some(ImageEndpoint {
        bind: "127.0.0.1:0".parse().unwrap(),
        advertised_base_url: None,
    });
    c.timeouts.reconnect_delay = Duration::from_millis(100);
    c.timeouts.request = Duration::from_secs(10);
    c.timeouts.completion_grace = Duration::from_secs(2);
    c.timeouts.keep_alive = Duration::from_secs(5);
    c
}

async fn site(
    broker_port: u16,
    cfg: ZigbeeConfig,
    devices: Vec<SimDevice>,
) -> (ZigbeeTransport, Z2mSim) {
    let zigbee = ZigbeeTransport::start(cfg).await.unwrap();
    assert!(
        zigbee.wait_connected(T).await,
        "the transport connects to mosquitto"
    );
    let mut sc = Z2mSimConfig::new("127.0.0.1", broker_port);
    sc.devices = devices;
    let sim = Z2mSim::start_virtual(sc).await.unwrap();
    for d in sim.devices() {
        zigbee.wait_for_device(&d.ieee, T).await.unwrap();
    }
    (zigbee, sim)
}

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

fn statuses(p: &[TransferProgress]) -> Vec<UpgradeStatus> {
    let mut out: Vec<UpgradeStatus> = Vec::new();
    for s in p.iter().map(|p| p.status) {
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

// ----- the scenarios -----

#[tokio::test]
async fn mains_update_with_progress_on_mosquitto() {
    let broker = Mosquitto::start();
    let (zigbee, sim) = site(
        broker.port,
        transport_config(broker.port),
        vec![SimDevice::mains_router(BULB, "bulb")],
    )
    .await;
    let img = image(0x2803, 0x2309_9999, 100_000);
    let (r, progress) = run(&zigbee, job(BULB, Arc::clone(&img))).await;
    let report = r.unwrap();
    assert_eq!(
        statuses(&progress),
        [
            UpgradeStatus::AgentPreparing,
            UpgradeStatus::Updating,
            UpgradeStatus::Downloaded
        ]
    );
    let percents: Vec<f32> = progress.iter().filter_map(|p| p.percent).collect();
    assert!(
        percents.len() >= 10 && percents.windows(2).all(|w| w[0] <= w[1]),
        "{percents:?}"
    );
    assert_eq!(report.to.file_version, Some(0x2309_9999));
    assert_eq!(report.to.software_build_id.as_deref(), Some("conformance"));
    let bulb = sim.device(BULB).unwrap();
    assert_eq!(bulb.received_images, vec![img.bytes.to_vec()]);
    // By URL (100 kB is over the hex threshold).
    assert!(
        sim.requests()[0]
            .payload
            .contains("\"url\":\"http://127.0.0.1:")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn small_image_goes_as_hex_on_mosquitto() {
    let broker = Mosquitto::start();
    let mut cfg = transport_config(broker.port);
    cfg.image_endpoint = None;
    let (zigbee, sim) = site(
        broker.port,
        cfg,
        vec![SimDevice::mains_router(BULB, "bulb")],
    )
    .await;
    let img = image(0x2803, 0x2309_9999, 40_000);
    let (r, _) = run(&zigbee, job(BULB, Arc::clone(&img))).await;
    r.unwrap();
    assert!(sim.requests()[0].payload.contains(&hex::encode(&img.bytes)));
    assert_eq!(
        sim.device(BULB).unwrap().received_images,
        vec![img.bytes.to_vec()]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn sleepy_device_scheduled_then_woken_on_mosquitto() {
    let broker = Mosquitto::start();
    let (zigbee, sim) = site(
        broker.port,
        transport_config(broker.port),
        vec![SimDevice::sleepy_end_device(REMOTE, "remote", None)],
    )
    .await;
    let img = image(0x11C1, 0x2404_0000, 20_000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let update = zigbee.update(job(REMOTE, Arc::clone(&img)), tx, CancellationToken::new());
    let waker = async {
        while rx.recv().await.unwrap().status != UpgradeStatus::WaitingForWakeup {}
        assert!(sim.device(REMOTE).unwrap().scheduled);
        sim.wake(REMOTE);
        let mut rest = Vec::new();
        while let Some(p) = rx.recv().await {
            rest.push(p);
        }
        rest
    };
    let (r, rest) = tokio::join!(timeout(T, update), waker);
    assert_eq!(r.unwrap().unwrap().to.file_version, Some(0x2404_0000));
    assert_eq!(
        statuses(&rest),
        [UpgradeStatus::Updating, UpgradeStatus::Downloaded]
    );
    assert!(sim.requests()[0].topic.ends_with("ota_update/schedule"));
    assert_eq!(
        sim.device(REMOTE).unwrap().received_images,
        vec![img.bytes.to_vec()]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn abort_at_the_end_is_5018_on_mosquitto() {
    let broker = Mosquitto::start();
    let (zigbee, sim) = site(
        broker.port,
        transport_config(broker.port),
        vec![SimDevice::mains_router(BULB, "bulb").with_behavior(Behavior::abort_at_end())],
    )
    .await;
    let (r, _) = run(&zigbee, job(BULB, image(0x2803, 0x2309_9999, 8_000))).await;
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceReportedFailure, "{e}");
    assert!(
        e.message
            .contains(&format!("OTA update of {BULB} failed with reason: ABORT")),
        "{e}"
    );
    assert!(sim.device(BULB).unwrap().received_images.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn mosquitto_restart_mid_transfer_is_survived() {
    let mut broker = Mosquitto::start();
    let (zigbee, sim) = site(
        broker.port,
        transport_config(broker.port),
        vec![SimDevice::mains_router(BULB, "bulb").held_at(50.0)],
    )
    .await;
    let img = image(0x2803, 0x2309_9999, 8_000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let update = zigbee.update(job(BULB, Arc::clone(&img)), tx, CancellationToken::new());
    let outage = async {
        timeout(
            T,
            sim.wait_until(|s| s.device(BULB).is_some_and(|d| d.held)),
        )
        .await
        .unwrap();
        broker.restart();
        // The bridge is back on the new (empty) broker, then the device goes on.
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
    assert_eq!(r.unwrap().unwrap().to.file_version, Some(0x2309_9999));
    assert!(after.iter().any(|p| p.status == UpgradeStatus::Downloaded));
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.topic.ends_with("ota_update/check"))
    );
    assert_eq!(
        sim.device(BULB).unwrap().received_images,
        vec![img.bytes.to_vec()]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn mosquitto_tls_with_a_client_certificate() {
    let (broker, files) = Mosquitto::start_with(true);
    let files = files.unwrap();
    let tls_port = broker.tls_port.unwrap();
    let mut cfg = transport_config(tls_port);
    cfg.tls = Some(MqttTls {
        ca_file: files.ca.clone(),
        client_cert_file: Some(files.client_cert.clone()),
        client_key_file: Some(files.client_key.clone()),
    });
    // The bridge uses the plain listener; the agent only the TLS one.
    let (zigbee, sim) = site(
        broker.port,
        cfg,
        vec![SimDevice::mains_router(BULB, "bulb")],
    )
    .await;
    let img = image(0x2803, 0x2309_9999, 8_000);
    let (r, _) = run(&zigbee, job(BULB, Arc::clone(&img))).await;
    assert_eq!(r.unwrap().to.file_version, Some(0x2309_9999));
    // Without the client certificate mosquitto refuses the agent.
    let mut no_cert = transport_config(tls_port);
    no_cert.tls = Some(MqttTls {
        ca_file: files.ca,
        client_cert_file: None,
        client_key_file: None,
    });
    let refused = ZigbeeTransport::start(no_cert).await.unwrap();
    assert!(!refused.wait_connected(Duration::from_secs(3)).await);
    sim.shutdown().await;
}

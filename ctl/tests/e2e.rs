//! End to end: the real `otactl` binary against a real `otad` process.
//!
//! Each test starts its own `otad --insecure-plaintext --listen 127.0.0.1:0 --data-dir <tmp>`
//! (development mode) and waits for its `otad listening on <addr>` line, then runs `otactl` as a
//! child process and checks its exit code, stdout and stderr. Firmware files are synthesised
//! with `ota-firmware`'s builders. Devices come from a fake site agent that this file plays
//! over `AgentService.Connect`, so checks and updates run through the server's real dispatch.
//!
//! `otad` is built by cargo first, once per run (`ota_testkit::bins::otad`), so it is never stale.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, ZigbeeOtaBuilder};
use ota_proto::v1 as pb;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use ota_testkit::bins::{OtadProcess, otad as otad_binary};

// === harness ===

/// A running otad (killed on drop) and the URL otactl is given.
struct Otad {
    process: OtadProcess,
    url: String,
}

impl Otad {
    fn start() -> Otad {
        let process = OtadProcess::start(&otad_binary());
        let url = process.url();
        Otad { process, url }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_otactl"));
        c.arg("--server")
            .arg(&self.url)
            .args(args)
            .env_remove("OTACTL_SERVER")
            .env_remove("OTACTL_TOKEN")
            .env_remove("OTACTL_CA_CERT")
            .stdin(Stdio::null());
        c
    }

    /// Runs otactl to the end.
    fn ctl(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run otactl"))
    }

    /// Runs otactl while the caller's async work (a fake agent) goes on.
    async fn ctl_async(&self, args: &[&str]) -> Run {
        let out = tokio::process::Command::from(self.command(args))
            .output()
            .await
            .expect("run otactl");
        Run::from(out)
    }

    /// Uploads a Zigbee bulb image (file version 0x0100_0002) as `bulb` `version` with
    /// `otactl firmware upload`; its id.
    async fn upload_bulb(&self, version: &str) -> String {
        let file = self.write("bulb.ota", &zigbee_file(0x0100_0002));
        let up = self
            .ctl_async(&[
                "firmware",
                "upload",
                &file,
                "--name",
                "bulb",
                "--version",
                version,
                "-o",
                "json",
            ])
            .await
            .ok()
            .json();
        up["firmware"]["id"].as_str().expect("id").to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.process.dir().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write test file");
        p.display().to_string()
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect to otad")
    }
}

/// What an otactl run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(o: std::process::Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "otactl failed: {self:#?}");
        self
    }

    #[track_caller]
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    #[track_caller]
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?} in {self:#?}"))
            })
            .collect()
    }

    /// The error line: exactly one line on stderr, starting with `error: `.
    #[track_caller]
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:#?}");
        lines[0]
            .strip_prefix("error: ")
            .unwrap_or_else(|| panic!("stderr does not start with 'error: ': {self:#?}"))
    }
}

fn zigbee_file(file_version: u32) -> Vec<u8> {
    ZigbeeOtaBuilder::new(0x117C, 0x2803, file_version)
        .header_string("TRADFRI bulb")
        .upgrade_image(40_000)
        .build()
}

fn esp_app() -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32C3)
        .version("2026.11.1")
        .project_name("kitchen")
        .payload_size(50_000)
        .build()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// === server, firmware, events ===

#[test]
fn server_status_as_table_and_json() {
    let otad = Otad::start();
    let run = otad.ctl(&["server", "status"]).ok();
    assert!(run.stdout.contains("Version"), "{run:#?}");
    assert!(run.stdout.contains(&otad.url), "{run:#?}");
    assert!(run.stderr.is_empty(), "{run:#?}");
    let json = otad.ctl(&["server", "status", "-o", "json"]).ok().json();
    assert_eq!(json["server"], otad.url.as_str());
    assert_eq!(json["firmware"], 0);
    assert!(json["event_log"]["last_seq"].is_u64());
    assert!(json["caller"]["role"].is_string());
}

#[test]
fn an_absent_server_is_exit_code_2_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_otactl"))
        .args(["server", "status"])
        .env("OTACTL_SERVER", format!("http://127.0.0.1:{port}"))
        .env_remove("OTACTL_TOKEN")
        .output()
        .expect("run otactl");
    let run = Run::from(out);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.error_line().starts_with(&format!(
            "cannot reach otad at http://127.0.0.1:{port}: is it running? (set --server or \
             OTACTL_SERVER)"
        )),
        "{run:#?}"
    );
}

#[test]
fn usage_errors_are_exit_code_2() {
    let otad = Otad::start();
    let run = otad.ctl(&["firmware", "upload", "x.bin"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("--name"), "{run:#?}");
    let run = otad.ctl(&["device", "check"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.error_line().starts_with("say which devices to check"),
        "{run:#?}"
    );
    let help = otad.ctl(&["--help"]).ok();
    assert!(help.stdout.contains("Exit codes"));
}

#[test]
fn zigbee_upload_list_show_download_and_rm() {
    let otad = Otad::start();
    let bytes = zigbee_file(0x0100_0002);
    let file = otad.write("bulb.ota", &bytes);

    let up = otad
        .ctl(&[
            "firmware",
            "upload",
            &file,
            "--name",
            "tradfri-bulb",
            "--version",
            "1.0.2",
            "--manufacturer-code",
            "0x117C",
            "--label",
            "vendor=ikea",
            "-o",
            "json",
        ])
        .ok();
    let j = up.json();
    assert_eq!(j["already_existed"], false);
    let fw = &j["firmware"];
    let id = fw["id"].as_str().expect("firmware id").to_string();
    assert!(id.starts_with("fw-"));
    assert_eq!(
        fw["format"],
        serde_json::json!({"code": 1, "name": "zigbee-ota"})
    );
    assert_eq!(fw["sha256"], sha256_hex(&bytes).as_str());
    assert_eq!(fw["size"], bytes.len());
    assert_eq!(fw["zigbee"]["manufacturer_code"], 0x117C);
    assert_eq!(fw["zigbee"]["file_version"], 0x0100_0002);
    assert_eq!(fw["labels"]["vendor"], "ikea");
    assert!(
        up.stderr.is_empty(),
        "no progress bars without a terminal: {up:#?}"
    );

    // The same upload again is recognised.
    let again = otad
        .ctl(&[
            "firmware",
            "upload",
            &file,
            "--name",
            "tradfri-bulb",
            "--version",
            "1.0.2",
        ])
        .ok();
    assert!(again.stdout.starts_with("Already registered"), "{again:#?}");

    let list = otad.ctl(&["firmware", "list"]).ok();
    assert!(list.stdout.starts_with("ID"), "{list:#?}");
    assert!(list.stdout.contains(&id) && list.stdout.contains("zigbee-ota"));
    assert!(
        list.stdout
            .contains("mfr 0x117C type 0x2803 file 0x01000002"),
        "{list:#?}"
    );
    let listed = otad.ctl(&["firmware", "list", "-o", "json"]).ok().json();
    assert_eq!(listed["firmware"].as_array().map(Vec::len), Some(1));
    let none = otad
        .ctl(&["firmware", "list", "--format", "esp-app", "-o", "json"])
        .ok()
        .json();
    assert_eq!(none["firmware"], serde_json::json!([]));

    // Show by a prefix of the id.
    let show = otad.ctl(&["firmware", "show", &id[..8]]).ok();
    for needle in [
        id.as_str(),
        "Zigbee OTA header",
        "0x117C",
        "TRADFRI bulb",
        "Signatures",
    ] {
        assert!(
            show.stdout.contains(needle),
            "missing {needle:?}: {show:#?}"
        );
    }

    // Download verifies the sha256 and refuses to clobber.
    let dest = otad.path("back.ota").display().to_string();
    let dl = otad
        .ctl(&["firmware", "download", &id, "-O", &dest, "-o", "json"])
        .ok()
        .json();
    assert_eq!(dl["sha256"], sha256_hex(&bytes).as_str());
    assert_eq!(std::fs::read(&dest).expect("downloaded file"), bytes);
    let again = otad.ctl(&["firmware", "download", &id, "-O", &dest]);
    assert_eq!(again.code, 2);
    assert!(again.error_line().contains("already exists"), "{again:#?}");

    // rm needs --yes without a terminal.
    let refused = otad.ctl(&["firmware", "rm", &id]);
    assert_eq!(refused.code, 2);
    assert_eq!(
        refused.error_line(),
        format!("not deleting {id} without confirmation: pass --yes")
    );
    let rm = otad
        .ctl(&["firmware", "rm", &id, "--yes", "-o", "json"])
        .ok()
        .json();
    assert_eq!(rm, serde_json::json!({"deleted": id}));
    let gone = otad.ctl(&["firmware", "show", &id]);
    assert_eq!(gone.code, 2, "{gone:#?}");
    assert!(gone.error_line().contains(&id), "{gone:#?}");
}

#[test]
fn esp_upload_with_signing_and_a_second_signature() {
    let otad = Otad::start();
    let bytes = esp_app();
    let file = otad.write("firmware.ota.bin", &bytes);
    let prefix = otad.path("release").display().to_string();
    let keygen = otad
        .ctl(&["firmware", "keygen", "--out", &prefix, "-o", "json"])
        .ok()
        .json();
    let public = keygen["public_key"]
        .as_str()
        .expect("public key")
        .to_string();
    let key_file = format!("{prefix}.key");

    let up = otad
        .ctl(&[
            "firmware",
            "upload",
            &file,
            "--name",
            "kitchen-esp32",
            "--version",
            "2026.11.1",
            "--chip",
            "esp32c3",
            "--sign-key",
            &key_file,
            "--key-id",
            "release-2026",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let fw = &up["firmware"];
    let id = fw["id"].as_str().expect("id").to_string();
    assert_eq!(fw["format"]["name"], "esp-app");
    assert_eq!(fw["esp"]["chip"], "esp32c3");
    assert_eq!(fw["esp"]["app_version"], "2026.11.1");
    assert_eq!(fw["esp"]["project_name"], "kitchen");
    let sig = &fw["signatures"][0];
    assert_eq!(sig["key_id"], "release-2026");

    // The signature verifies with the public key over the raw sha256 digest.
    use base64::Engine as _;
    let pk: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&public)
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("public key");
    let sig_bytes = hex::decode(sig["signature"].as_str().expect("hex")).expect("hex");
    let sig = ed25519_dalek::Signature::from_slice(&sig_bytes).expect("64 bytes");
    let digest = Sha256::digest(&bytes);
    vk.verify_strict(&digest, &sig).expect("signature verifies");

    // A second key signs afterwards.
    let prefix2 = otad.path("ops").display().to_string();
    otad.ctl(&["firmware", "keygen", "--out", &prefix2]).ok();
    let signed = otad
        .ctl(&[
            "firmware",
            "sign",
            &id,
            "--key",
            &format!("{prefix2}.key"),
            "--key-id",
            "ops",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let ids: Vec<&str> = signed["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .filter_map(|s| s["key_id"].as_str())
        .collect();
    assert_eq!(ids, ["release-2026", "ops"]);
    let show = otad.ctl(&["firmware", "show", &id]).ok();
    assert!(
        show.stdout.contains("ESP image") && show.stdout.contains("esp32c3"),
        "{show:#?}"
    );
}

#[test]
fn a_rejected_upload_shows_the_servers_reason_and_exits_2() {
    let otad = Otad::start();
    let file = otad.write("firmware.ota.bin", &esp_app());
    let run = otad.ctl(&[
        "firmware",
        "upload",
        &file,
        "--name",
        "kitchen",
        "--version",
        "1",
        "--chip",
        "esp32",
    ]);
    assert_eq!(run.code, 2, "{run:#?}");
    let line = run.error_line();
    assert!(
        line.contains("claimed ESP32") && line.contains("ESP32-C3"),
        "{run:#?}"
    );
    assert!(run.stdout.is_empty(), "{run:#?}");

    let junk = otad.write("junk.bin", b"definitely not firmware");
    let run = otad.ctl(&[
        "firmware",
        "upload",
        &junk,
        "--name",
        "junk",
        "--version",
        "1",
    ]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(!run.error_line().is_empty());

    // Nothing was stored.
    let list = otad.ctl(&["firmware", "list", "-o", "json"]).ok().json();
    assert_eq!(list["firmware"], serde_json::json!([]));
}

#[test]
fn events_tail_shows_firmware_registered() {
    let otad = Otad::start();
    let file = otad.write("bulb.ota", &zigbee_file(0x0100_0002));
    let up = otad
        .ctl(&[
            "firmware",
            "upload",
            &file,
            "--name",
            "bulb",
            "--version",
            "1",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let id = up["firmware"]["id"].as_str().expect("id").to_string();

    let table = otad.ctl(&["events", "tail", "--from", "1"]).ok();
    let mut lines = table.stdout.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.contains("SEQ") && h.contains("PAYLOAD"))
    );
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("FirmwareRegistered") && l.contains(&format!("firmware/{id}"))),
        "{table:#?}"
    );

    let events = otad
        .ctl(&[
            "events",
            "tail",
            "--from",
            "1",
            "--type",
            "FirmwareRegistered",
            "-o",
            "json",
        ])
        .ok()
        .json_lines();
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["type"], "FirmwareRegistered");
    assert_eq!(e["stream"], format!("firmware/{id}"));
    assert!(e["seq"].as_u64().is_some_and(|s| s >= 1));
    assert!(e["payload"].is_object(), "{e:#?}");

    let limited = otad
        .ctl(&[
            "events", "tail", "--from", "1", "--limit", "1", "-o", "json",
        ])
        .ok()
        .json_lines();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["seq"], 1);
}

// === devices through a fake site agent ===

/// What the fake agent does with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers checks; updates succeed.
    Good,
    /// Answers checks; updates fail with 5018.
    Fails,
    /// Never answers checks.
    Silent,
}

fn bulb(local: &str, file_version: u32) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Zigbee2mqtt as i32,
        network: "zigbee2mqtt".into(),
        name: format!("bulb {local}"),
        model: "LED1836G9".into(),
        vendor: "IKEA".into(),
        manufacturer_code: Some(0x117C),
        image_type: Some(0x2803),
        current: Some(pb::VersionInfo {
            version: String::new(),
            file_version: Some(file_version),
            ..Default::default()
        }),
        power_source: pb::PowerSource::Mains as i32,
        signal: Some(pb::Signal {
            kind: pb::SignalKind::Linkquality as i32,
            value: 120,
        }),
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

/// Plays a site agent: inventory first, then answers checks and runs updates.
/// A running fake agent: its task, and the update commands it received.
struct Agent {
    task: tokio::task::JoinHandle<()>,
    updates: Arc<Mutex<Vec<pb::UpdateCommand>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_agent(otad: &Otad, site: &str, devices: Vec<(pb::DeviceReport, Behaviour)>) -> Agent {
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
    tx.send(pb::AgentMessage {
        seq: 0,
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            site_id: site.into(),
            agent_version: "e2e".into(),
            agent_id: format!("{site}-agent"),
            timezone: "Europe/Berlin".into(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue hello");
    let mut client = pb::agent_service_client::AgentServiceClient::new(otad.channel().await);
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect("agent connects")
        .into_inner();
    let reports: Vec<pb::DeviceReport> = devices.iter().map(|(d, _)| d.clone()).collect();
    let behaviour: HashMap<String, (pb::DeviceReport, Behaviour)> = devices
        .into_iter()
        .map(|(d, b)| (d.local_id.clone(), (d, b)))
        .collect();
    tx.send(pb::AgentMessage {
        seq: 1,
        body: Some(pb::agent_message::Body::Inventory(pb::Inventory {
            full: true,
            devices: reports,
            removed_local_ids: vec![],
        })),
    })
    .await
    .expect("queue inventory");
    // Wait until the inventory is durable before any otactl command runs.
    loop {
        let m = inbound
            .next()
            .await
            .expect("server stream open")
            .expect("server message");
        if let Some(pb::server_message::Body::Ack(a)) = m.body
            && a.acked_seq >= 1
        {
            break;
        }
    }
    let updates = Arc::new(Mutex::new(Vec::new()));
    let seen = updates.clone();
    let task = tokio::spawn(async move {
        let mut seq = 1;
        let mut send = |body: pb::agent_message::Body| {
            seq += 1;
            tx.try_send(pb::AgentMessage {
                seq,
                body: Some(body),
            })
            .expect("agent outbox has room");
        };
        while let Some(Ok(m)) = inbound.next().await {
            match m.body {
                Some(pb::server_message::Body::Check(c)) => {
                    for local in &c.device_local_ids {
                        let Some((report, b)) = behaviour.get(local) else {
                            continue;
                        };
                        if *b == Behaviour::Silent {
                            continue;
                        }
                        send(pb::agent_message::Body::CheckResult(pb::CheckResult {
                            check_id: c.check_id.clone(),
                            device_local_id: local.clone(),
                            reachable: true,
                            device: Some(report.clone()),
                            update_available: None,
                            error: None,
                            awaiting_wakeup: false,
                        }));
                    }
                }
                Some(pb::server_message::Body::Update(u)) => {
                    seen.lock().expect("updates").push(u.clone());
                    send(pb::agent_message::Body::CommandAck(pb::CommandAck {
                        command_id: m.command_id,
                        accepted: true,
                        error: None,
                    }));
                    let progress = |status: pb::UpgradeStatus, pct: f32, left: Option<u32>| {
                        pb::agent_message::Body::Progress(pb::TaskProgress {
                            task_id: u.task_id.clone(),
                            attempt: u.attempt,
                            status: status as i32,
                            progress: pct,
                            remaining_s: left,
                            bytes_sent: 0,
                            bytes_total: 0,
                            detail: String::new(),
                            at_ms: 0,
                            verify_until_ms: 0,
                        })
                    };
                    send(progress(pb::UpgradeStatus::AgentPreparing, 0.0, None));
                    send(progress(pb::UpgradeStatus::Updating, 50.0, Some(30)));
                    let from = behaviour
                        .get(&u.device_local_id)
                        .and_then(|(d, _)| d.current.clone());
                    let failing = behaviour
                        .get(&u.device_local_id)
                        .is_some_and(|(_, b)| *b == Behaviour::Fails);
                    let result = if failing {
                        pb::TaskResult {
                            task_id: u.task_id.clone(),
                            attempt: u.attempt,
                            status: pb::UpgradeStatus::Failure as i32,
                            error: Some(pb::TaskError {
                                code: pb::ErrorCode::DeviceReportedFailure as i32,
                                message: "failed with reason: INVALID_IMAGE".into(),
                            }),
                            from,
                            ..Default::default()
                        }
                    } else {
                        send(progress(pb::UpgradeStatus::Downloaded, 100.0, None));
                        pb::TaskResult {
                            task_id: u.task_id.clone(),
                            attempt: u.attempt,
                            status: pb::UpgradeStatus::Success as i32,
                            error: None,
                            from,
                            // Like the transports: Zigbee reports a file version, ESP a
                            // version string.
                            to: u.firmware.as_ref().map(|f| pb::VersionInfo {
                                version: if f.file_version.is_some() {
                                    String::new()
                                } else {
                                    f.version.clone()
                                },
                                file_version: f.file_version,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }
                    };
                    send(pb::agent_message::Body::Result(result));
                }
                _ => {}
            }
        }
    });
    Agent { task, updates }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_checks_and_updates_through_a_fake_site() {
    let otad = Otad::start();
    let fw = otad.upload_bulb("1.0.2").await;

    let agent = fake_agent(
        &otad,
        "home",
        vec![
            (bulb("0x000b57fffe000001", 0x0100_0001), Behaviour::Good),
            (bulb("0x000b57fffe000002", 0x0100_0001), Behaviour::Fails),
            (bulb("0x000b57fffe000003", 0x0100_0001), Behaviour::Silent),
        ],
    )
    .await;

    // Lists and details.
    let list = otad.ctl_async(&["device", "list"]).await.ok();
    assert!(list.stdout.contains("home/0x000b57fffe000001"), "{list:#?}");
    assert!(list.stdout.contains("lqi 120"), "{list:#?}");
    assert!(list.stdout.contains("3 of 3 devices"), "{list:#?}");
    let json = otad
        .ctl_async(&["device", "list", "--site", "home", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["total"], 3);
    let d0 = &json["devices"][0];
    assert_eq!(
        d0["transport"],
        serde_json::json!({"code": 1, "name": "zigbee2mqtt"})
    );
    assert_eq!(d0["signal"]["kind"]["name"], "linkquality");
    assert!(d0["status"]["code"].is_i64() && d0["status"]["name"].is_string());
    let show = otad
        .ctl_async(&["device", "show", "home/0x000b57fffe000001"])
        .await
        .ok();
    assert!(
        show.stdout.contains("Manufacturer code  0x117C"),
        "{show:#?}"
    );
    let missing = otad.ctl_async(&["device", "show", "home/nope"]).await;
    assert_eq!(missing.code, 2, "{missing:#?}");

    // One device answers its check.
    let check = otad
        .ctl_async(&["device", "check", "home/0x000b57fffe000001", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(check["checks"][0]["status"]["name"], "available");
    assert_eq!(check["checks"][0]["available_firmware_id"], fw.as_str());
    assert_eq!(check["available"], 1);

    // A batch where one device stays silent: 5019 listed, exit 1.
    let batch = otad
        .ctl_async(&["device", "check", "--all", "--timeout", "2s"])
        .await;
    assert_eq!(batch.code, 1, "{batch:#?}");
    assert!(
        batch
            .stdout
            .contains("No answer within the timeout (5019): home/0x000b57fffe000003"),
        "{batch:#?}"
    );
    assert!(batch.stdout.contains("2 available"), "{batch:#?}");
    assert_eq!(
        batch.error_line(),
        "1 of 3 checks failed: home/0x000b57fffe000003"
    );

    // An update that succeeds, followed to the end.
    let ok = otad
        .ctl_async(&[
            "device",
            "update",
            "home/0x000b57fffe000001",
            "--firmware",
            &fw,
        ])
        .await
        .ok();
    assert!(
        ok.stdout.starts_with(
            "Device home/0x000b57fffe000001 was updated from 0x01000001 to 0x01000002"
        ),
        "{ok:#?}"
    );

    // An update that fails: the error code and message, exit 1.
    let failed = otad
        .ctl_async(&[
            "device",
            "update",
            "home/0x000b57fffe000002",
            "--firmware",
            &fw,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(failed.code, 1, "{failed:#?}");
    let j = failed.json();
    assert_eq!(
        j["task"]["status"],
        serde_json::json!({"code": 4, "name": "failure"})
    );
    assert_eq!(j["task"]["error"]["code"], 5018);
    assert_eq!(
        failed.error_line(),
        "update of home/0x000b57fffe000002 ended in failure (4): 5018 the device reported a \
         failure: failed with reason: INVALID_IMAGE"
    );

    // A refused update shows the server's reason verbatim.
    let refused = otad
        .ctl_async(&[
            "device",
            "update",
            "home/0x000b57fffe000001",
            "--firmware",
            &fw,
        ])
        .await;
    assert_eq!(refused.code, 2, "{refused:#?}");
    assert!(refused.error_line().starts_with("5000: "), "{refused:#?}");

    // --no-wait returns the task at once.
    let queued = otad
        .ctl_async(&[
            "device",
            "update",
            "home/0x000b57fffe000003",
            "--firmware",
            &fw,
            "--no-wait",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert!(
        queued["task"]["id"]
            .as_str()
            .is_some_and(|t| t.starts_with("task"))
    );

    // Sites and auto-upgrade.
    let sites = otad
        .ctl_async(&["site", "list", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(sites["sites"][0]["id"], "home");
    assert_eq!(sites["sites"][0]["agent_connected"], true);
    let auto = otad
        .ctl_async(&[
            "device",
            "auto-upgrade",
            "home/0x000b57fffe000001",
            "on",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(auto["enabled"], true);
    drop(agent);
}

/// Follows a task over gRPC until `done` says so; returns that state.
async fn wait_for_task(otad: &Otad, task_id: &str, done: impl Fn(&pb::Task) -> bool) -> pb::Task {
    let mut client = pb::device_service_client::DeviceServiceClient::new(otad.channel().await);
    let mut stream = client
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.into(),
            device_id: String::new(),
        })
        .await
        .expect("watch task")
        .into_inner();
    while let Some(t) = stream.next().await {
        let t = t.expect("task update");
        if done(&t) {
            return t;
        }
    }
    panic!("task {task_id} ended without reaching the expected state");
}

fn weak(local: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        signal: Some(pb::Signal {
            kind: pb::SignalKind::Linkquality as i32,
            value: 10,
        }),
        ..bulb(local, 0x0100_0001)
    }
}

fn serial(local: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Serial as i32,
        network: "serial".into(),
        name: local.into(),
        chip: "esp32c3".into(),
        platform: "esp32".into(),
        current: Some(pb::VersionInfo {
            version: "2026.10.0".into(),
            ..Default::default()
        }),
        power_source: pb::PowerSource::Mains as i32,
        reachable: true,
        supports_ota: false,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_signal_confirmation_cancel_and_serial_flash() {
    let otad = Otad::start();
    let zigbee = otad.write("bulb.ota", &zigbee_file(0x0100_0002));
    let esp = otad.write("firmware.ota.bin", &esp_app());
    let mut ids = Vec::new();
    for (file, name, version) in [(&zigbee, "bulb", "1.0.2"), (&esp, "kitchen", "2026.11.1")] {
        let up = otad
            .ctl_async(&[
                "firmware",
                "upload",
                file,
                "--name",
                name,
                "--version",
                version,
                "-o",
                "json",
            ])
            .await
            .ok()
            .json();
        ids.push(up["firmware"]["id"].as_str().expect("id").to_string());
    }
    let (fw, fw_esp) = (ids[0].clone(), ids[1].clone());
    let agent = fake_agent(
        &otad,
        "lab",
        vec![
            (weak("0x000b57fffe0000a1"), Behaviour::Good),
            (weak("0x000b57fffe0000a2"), Behaviour::Good),
            (serial("serial-ttyUSB0"), Behaviour::Good),
        ],
    )
    .await;

    // A weak signal holds the task until someone answers.
    let queued = otad
        .ctl_async(&[
            "device",
            "update",
            "lab/0x000b57fffe0000a1",
            "--firmware",
            &fw,
            "--no-wait",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let task_id = queued["task"]["id"].as_str().expect("task id").to_string();
    wait_for_task(&otad, &task_id, |t| t.awaiting_confirmation).await;
    let show = otad
        .ctl_async(&["device", "show", "lab/0x000b57fffe0000a1"])
        .await
        .ok();
    assert!(
        show.stdout.contains("Awaiting confirmation  yes"),
        "{show:#?}"
    );
    let busy = otad
        .ctl_async(&[
            "device",
            "update",
            "lab/0x000b57fffe0000a1",
            "--firmware",
            &fw,
        ])
        .await;
    assert_eq!(busy.code, 2, "{busy:#?}");
    assert!(busy.error_line().contains("already has task"), "{busy:#?}");
    let go = otad
        .ctl_async(&["device", "confirm", "lab/0x000b57fffe0000a1", "--continue"])
        .await
        .ok();
    assert!(
        go.stdout
            .starts_with("The update of lab/0x000b57fffe0000a1 continues despite the weak signal."),
        "{go:#?}"
    );
    let done = wait_for_task(&otad, &task_id, |t| {
        t.status == pb::UpgradeStatus::Success as i32
            || t.status == pb::UpgradeStatus::Failure as i32
    })
    .await;
    assert_eq!(done.status, pb::UpgradeStatus::Success as i32, "{done:?}");

    // Another weak device: cancel instead.
    let queued = otad
        .ctl_async(&[
            "device",
            "update",
            "lab/0x000b57fffe0000a2",
            "--firmware",
            &fw,
            "--no-wait",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let task_id = queued["task"]["id"].as_str().expect("task id").to_string();
    wait_for_task(&otad, &task_id, |t| t.awaiting_confirmation).await;
    let cancelled = otad
        .ctl_async(&["device", "cancel", "lab/0x000b57fffe0000a2", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(cancelled["id"], task_id.as_str());
    let nothing = otad
        .ctl_async(&["device", "confirm", "lab/0x000b57fffe0000a2", "--cancel"])
        .await;
    assert_eq!(nothing.code, 2, "{nothing:#?}");
    assert_eq!(
        nothing.error_line(),
        "device lab/0x000b57fffe0000a2 has no task waiting for a weak-signal confirmation (5005)"
    );

    // Serial flashing at an explicit offset, followed to the end.
    let flash = otad
        .ctl_async(&[
            "device",
            "flash",
            "lab/serial-ttyUSB0",
            "--firmware",
            &fw_esp,
            "--offset",
            "0x10000",
        ])
        .await
        .ok();
    assert!(
        flash
            .stdout
            .starts_with("Device lab/serial-ttyUSB0 was updated from 2026.10.0 to 2026.11.1"),
        "{flash:#?}"
    );
    let offsets: Vec<Option<u32>> = agent
        .updates
        .lock()
        .expect("updates")
        .iter()
        .filter(|u| u.device_local_id == "serial-ttyUSB0")
        .map(|u| u.flash_offset)
        .collect();
    assert_eq!(offsets, [Some(0x10000)]);
    // Flash offsets are for serial devices only: the server's reason, exit 2.
    let wrong = otad
        .ctl_async(&[
            "device",
            "flash",
            "lab/0x000b57fffe0000a2",
            "--firmware",
            &fw,
            "--offset",
            "0",
        ])
        .await;
    assert_eq!(wrong.code, 2, "{wrong:#?}");
    assert_eq!(
        wrong.error_line(),
        "flash_offset is only for serial devices"
    );
    drop(agent);
}

// === rollouts ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_plan_create_start_watch_and_lifecycle_errors() {
    let otad = Otad::start();
    let fw = otad.upload_bulb("1.0.2").await;
    let agent = fake_agent(
        &otad,
        "home",
        (1..=4)
            .map(|i| {
                (
                    bulb(&format!("0x000b57fffe0001{i:02}"), 0x0100_0001),
                    Behaviour::Good,
                )
            })
            .collect(),
    )
    .await;

    // Plan from flags: a canary of one, then everyone.
    let plan = otad
        .ctl_async(&[
            "rollout",
            "plan",
            "--name",
            "hue",
            "--firmware",
            &fw,
            "--model",
            "LED1836G9",
            "--canary",
            "1",
            "--waves",
            "100",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(plan["target_count"], 4, "{plan:#}");
    let sizes: Vec<usize> = plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["device_ids"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, [1, 3], "{plan:#}");

    // Create a draft from a spec file, then start it.
    let spec = otad.write(
        "hue.toml",
        format!(
            "name = \"hue 1.0.2\"\nfirmware = \"{fw}\"\n[selector]\nmodels = [\"LED1836G9\"]\n\
             [[stages]]\nname = \"canary\"\ncount = 1\n[[stages]]\nname = \"everyone\"\npercent = 100\n"
        )
        .as_bytes(),
    );
    let created = otad
        .ctl_async(&["rollout", "create", "-f", &spec, "-o", "json"])
        .await
        .ok()
        .json();
    let id = created["id"].as_str().expect("rollout id").to_string();
    assert_eq!(created["state"]["name"], "draft", "{created:#}");
    let drafts = otad
        .ctl_async(&["rollout", "list", "--state", "draft", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(
        drafts["rollouts"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["id"] == id.as_str())),
        "{drafts:#}"
    );
    let replan = otad.ctl_async(&["rollout", "plan", &id]).await.ok();
    assert!(replan.stdout.contains("Target devices"), "{replan:#?}");
    let started = otad.ctl_async(&["rollout", "start", &id]).await.ok();
    assert!(
        started
            .stdout
            .starts_with(&format!("Rollout {id} is running")),
        "{started:#?}"
    );

    // Watch it to the end: JSON lines, the last one completed.
    let watch = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        otad.ctl_async(&["rollout", "watch", &id, "-o", "json"]),
    )
    .await
    .expect("the rollout completes")
    .ok();
    let lines = watch.json_lines();
    let last = lines.last().expect("at least one progress line");
    assert_eq!(last["rollout"]["state"]["name"], "completed", "{last:#}");
    assert_eq!(last["rollout"]["totals"]["succeeded"], 4, "{last:#}");
    let show = otad.ctl_async(&["rollout", "show", &id]).await.ok();
    assert!(
        show.stdout
            .lines()
            .any(|l| l.starts_with("State ") && l.trim_end().ends_with(" completed")),
        "{show:#?}"
    );

    // Lifecycle errors are the server's words, exit 2.
    let pause = otad.ctl_async(&["rollout", "pause", &id]).await;
    assert_eq!(pause.code, 2, "{pause:#?}");
    assert!(pause.error_line().contains(&id), "{pause:#?}");

    // A second draft, aborted: watching it reports the abort with exit 1.
    let second = otad
        .ctl_async(&["rollout", "create", "-f", &spec, "-o", "json"])
        .await
        .ok()
        .json();
    let id2 = second["id"].as_str().expect("rollout id").to_string();
    let aborted = otad
        .ctl_async(&["rollout", "abort", &id2, "--reason", "changed our mind"])
        .await
        .ok();
    assert!(
        aborted
            .stdout
            .starts_with(&format!("Rollout {id2} is aborted")),
        "{aborted:#?}"
    );
    let watch2 = otad.ctl_async(&["rollout", "watch", &id2]).await;
    assert_eq!(watch2.code, 1, "{watch2:#?}");
    assert!(
        watch2
            .error_line()
            .starts_with(&format!("rollout {id2} aborted")),
        "{watch2:#?}"
    );
    drop(agent);
}

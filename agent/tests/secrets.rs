//! Secrets stay at the edge: a whole run — otad with TLS, an agent configured from a TOML file
//! with distinctive secrets (its TLS key, signing trust, a serial port on the ROM simulator),
//! the ESPHome and zigbee2mqtt transport configurations with passwords, Noise keys and MQTT
//! credentials, operator tokens, refused requests and a refused update — and then a search of
//! everything that could carry a secret: every log line (tracing into a buffer, at trace level
//! for our crates), the whole event log (Tail), every error message, and the `Debug` output of
//! every configuration. None may contain any secret.
//!
//! One test in this binary: it installs the global tracing subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use ota_agent::agent::Agent;
use ota_agent::config::AgentConfig;
use ota_agent::site::Site;
use ota_agent::transport::esphome::EsphomeConfig;
use ota_agent::transport::zigbee::ZigbeeConfig;
use ota_devproto::serial::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_sim::esprom::{EspRomSim, RomConfig};
use ota_testkit::otad::{update_and_wait, wait_for_state};
use ota_testkit::pki::{Pki, operator_channel, start_tls_server, write_pair};
use ota_testkit::upload::{authed, signature, upload_app_as};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// Everything written through tracing.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const ESPHOME_PASSWORD: &str = "esphome-pw-Quokka-7731";
const ESPHOME_FILE_PASSWORD: &str = "esphome-file-pw-Numbat-8642";
const WEB_PASSWORD: &str = "web-pw-Platypus-5150";
const MQTT_PASSWORD: &str = "mqtt-pw-Echidna-2468";
const BAD_NOISE_KEY: &str = "not-a-key-but-secret-Kiwi-9911";
/// 32 bytes whose base64 is a Noise key.
const NOISE_BYTES: &[u8; 32] = b"noise-key-Wombat-0042-abcdefghij";
const API_BYTES: &[u8; 32] = b"api-key-Bilby-0077-abcdefghijklm";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_events_or_errors() {
    let logs = Capture::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,ota_server=trace,ota_agent=trace,ota_devproto=trace,ota_sim=debug",
        ))
        .init();

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test CA");
    let (server, admin) = start_tls_server(dir.path(), &pki).await;
    let op = operator_channel(&server, &pki).await;

    // The agent's files: client certificate, CA, trusted key, device secret files.
    let agent_dir = dir.path().join("agent");
    let site = pki.site("lab");
    write_pair(&agent_dir, "site-lab", &site);
    std::fs::write(agent_dir.join("ca.pem"), pki.ca_pem()).unwrap();
    let release = SigningKey::from_bytes(&[21; 32]);
    std::fs::write(
        agent_dir.join("release.pub"),
        format!("{}\n", STANDARD.encode(release.verifying_key().to_bytes())),
    )
    .unwrap();
    std::fs::write(
        agent_dir.join("lamp.pw"),
        format!("{ESPHOME_FILE_PASSWORD}\n"),
    )
    .unwrap();
    let noise = STANDARD.encode(NOISE_BYTES);
    let api = STANDARD.encode(API_BYTES);

    let rom = EspRomSim::start(RomConfig::esp32()).unwrap();
    let config_text = format!(
        r#"
site_id = "lab"
server = "https://{addr}"
data_dir = "{data}"
[reconnect]
min = "20ms"
max = "200ms"
[tls]
ca = "ca.pem"
cert = "site-lab.pem"
key = "site-lab.key"
server_name = "localhost"
[trust.key_files]
release = "release.pub"
[serial]
[[serial.port]]
name = "bench"
port = "{port}"
chip = "esp32"
flash_size = "4MB"
"#,
        addr = server.addr,
        data = agent_dir.join("data").display(),
        port = rom.path().display(),
    );
    let config = AgentConfig::parse_in(&config_text, &agent_dir).unwrap();
    let mut debug_output = vec![format!("{config:?}")];

    // The other transports' configurations: parsed, resolved, printed, and refused.
    let esphome: EsphomeConfig = toml::from_str(&format!(
        r#"
[[device]]
name = "lamp"
host = "127.0.0.1"
platform = "esp32"
password_file = "lamp.pw"
api_key = "{api}"
[[device]]
name = "plug"
host = "127.0.0.1"
platform = "esp8266"
password = "{ESPHOME_PASSWORD}"
noise_key = "{noise}"
[device.web]
username = "admin"
password = "{WEB_PASSWORD}"
"#
    ))
    .unwrap();
    esphome.validate().unwrap();
    let resolved = esphome.resolve(Some(&agent_dir)).unwrap();
    debug_output.push(format!("{esphome:?}"));
    debug_output.push(format!("{resolved:?}"));
    let mut errors = Vec::new();
    let bad: EsphomeConfig = toml::from_str(&format!(
        "[[device]]\nname = \"x\"\nhost = \"h\"\nplatform = \"esp32\"\nnoise_key = \"{BAD_NOISE_KEY}\"\n"
    ))
    .unwrap();
    errors.push(bad.resolve(Some(&agent_dir)).unwrap_err().to_string());
    let zigbee: ZigbeeConfig = toml::from_str(&format!(
        "network = \"home\"\nhost = \"127.0.0.1\"\nusername = \"ota\"\npassword = \"{MQTT_PASSWORD}\"\n"
    ))
    .unwrap();
    debug_output.push(format!("{zigbee:?}"));
    tracing::info!(config = ?zigbee, esphome = ?esphome, "transport configurations (as a careless log line would print them)");

    // The agent, exactly as the binary builds it.
    let cancel = CancellationToken::new();
    let site_transports = Site::start(&config, cancel.clone()).await.unwrap();
    let agent = Agent::with_trust(
        Site::agent_options(&config, Duration::from_millis(20)),
        site_transports.transports.clone(),
        config.trust_policy().unwrap(),
    )
    .unwrap();
    let tls = config
        .tls
        .as_ref()
        .unwrap()
        .client_config(&config.base_dir)
        .unwrap();
    let channel = Endpoint::from_shared(config.server.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let running = tokio::spawn(agent.clone().run(channel, cancel.clone()));
    wait_for_state(&server, "the serial device", |s| {
        s.devices.contains_key("lab/serial-bench")
    })
    .await;

    // A signed image is flashed; an unsigned one is refused and nothing reaches the chip.
    let signed = EspAppBuilder::new(Chip::Esp32)
        .version("2026.11.1")
        .payload_size(40_000)
        .build();
    let fw = upload_app_as(
        &op,
        &admin,
        "bench",
        "2026.11.1",
        &signed,
        Some(signature(&release, "release", &signed)),
    )
    .await;
    let t = update_and_wait(&op, &admin, "lab/serial-bench", &fw.id).await;
    assert_eq!(t.status, pb::UpgradeStatus::Success as i32, "{t:?}");
    assert_eq!(rom.flash_range(0x10000, signed.len()), signed);
    let traffic = rom.traffic().0;
    let unsigned = EspAppBuilder::new(Chip::Esp32)
        .version("2026.11.2")
        .payload_size(40_000)
        .build();
    let fw = upload_app_as(&op, &admin, "bench", "2026.11.2", &unsigned, None).await;
    let t = update_and_wait(&op, &admin, "lab/serial-bench", &fw.id).await;
    let e = t.error.expect("refused");
    assert_eq!(e.code, pb::ErrorCode::PrevalidationFailed as i32);
    errors.push(e.message);
    assert_eq!(rom.traffic().0, traffic, "not a byte went to the chip");
    assert_eq!(rom.flash_range(0x10000, signed.len()), signed);

    // Operators: a token, a wrong token, a too-small role.
    let viewer = pb::access_service_client::AccessServiceClient::new(op.clone())
        .create_token(authed(
            pb::CreateTokenRequest {
                name: "vera".into(),
                role: pb::Role::Viewer as i32,
                ttl_s: 0,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let wrong = format!(
        "{}.{}",
        viewer.split_once('.').unwrap().0,
        "5ec7e7".repeat(10)
    );
    let mut system = pb::system_service_client::SystemServiceClient::new(op.clone());
    for token in [wrong.as_str(), "not-even-a-token-Wallaby-3141"] {
        let s = system
            .status(authed(pb::StatusRequest {}, token))
            .await
            .unwrap_err();
        errors.push(format!("{s:?}"));
    }
    let s = pb::firmware_service_client::FirmwareServiceClient::new(op.clone())
        .delete(authed(
            pb::DeleteFirmwareRequest { id: fw.id.clone() },
            &viewer,
        ))
        .await
        .unwrap_err();
    errors.push(format!("{s:?}"));

    // The whole event log.
    let events: Vec<String> = pb::event_service_client::EventServiceClient::new(op.clone())
        .tail(authed(pb::TailEventsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner()
        .map(|e| format!("{:?}", e.unwrap()))
        .collect()
        .await;
    assert!(events.iter().any(|e| e.contains("TaskSucceeded")));

    cancel.cancel();
    running.await.unwrap();
    site_transports.join().await;
    server.shutdown().await.unwrap();
    rom.shutdown().await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("firmware signature verified")
            && logs.contains("refused by this site's signature policy")
            && logs.contains("token refused"),
        "the capture misses the run's log lines"
    );
    let mut secrets: Vec<String> = [
        ESPHOME_PASSWORD,
        ESPHOME_FILE_PASSWORD,
        WEB_PASSWORD,
        MQTT_PASSWORD,
        BAD_NOISE_KEY,
        "Wombat-0042",
        "Bilby-0077",
        "Wallaby-3141",
        &noise,
        &api,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for token in [&admin, &viewer, &wrong] {
        secrets.push(token.split_once('.').unwrap().1.to_string());
    }
    // The agent's private key, line by line.
    secrets.extend(
        site.key
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string),
    );
    let haystacks = [
        ("logs", logs),
        ("events", events.join("\n")),
        ("errors", errors.join("\n")),
        ("debug output", debug_output.join("\n")),
    ];
    for (what, text) in &haystacks {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret ({}…) appears in the {what}",
                &secret[..6]
            );
        }
    }
}

#![cfg(feature = "conformance")]
//! Conformance of the simulated ESPHome node's HTTP and API side with ESPHome's own clients,
//! run with `$OTA_CONFORMANCE_PYTHON` (set by scripts/conformance.sh, esphome 2026.10.0):
//!
//! - `esphome.web_server_ota.run_ota` (the web_server `/update` uploader, signature checked)
//!   against the simulated web_server: with and without basic auth, wrong credentials (HTTP
//!   401), an image the ESP32 backend refuses ("Update Failed!"), an ESP8266; every success
//!   checks that the simulator received exactly the image and rebooted into its version;
//! - aioesphomeapi (the native API client ESPHome and Home Assistant use, installed with
//!   esphome) against the simulated native API, plaintext and Noise-encrypted: after an upload it
//!   reads the new project version, the version the agent confirms updates with; with a wrong key
//!   it reports an invalid encryption key.
//!
//! These tests fail, never skip, when the Python peer is missing.

use std::process::Stdio;
use std::time::Duration;

use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder};
use ota_sim::esphome::{Platform, Power, UploadOutcome};
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use ota_sim::esphome_web::WebConfig;
use tokio::process::Command;
use tokio::time::timeout;

/// Runs `web_server_ota.run_ota(host, port, username, password, path)` and prints its result.
const WEB_DRIVER: &str = r#"
import inspect, logging, pathlib, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(message)s")
import esphome.const
from esphome import web_server_ota
params = list(inspect.signature(web_server_ota.run_ota).parameters)
assert params == ["remote_hosts", "remote_port", "username", "password", "filename"], params
host, port, user, password, path = sys.argv[1:6]
rc, used = web_server_ota.run_ota(host, int(port), user or None, password or None, pathlib.Path(path))
print(f"esphome {esphome.const.__version__} rc={rc} host={used}")
sys.exit(rc)
"#;

/// Connects with aioesphomeapi and prints the device info, or the error's class and text.
const API_DRIVER: &str = r#"
import asyncio, base64, sys
from aioesphomeapi import APIClient
async def main():
    host, port, key_hex = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    psk = base64.b64encode(bytes.fromhex(key_hex)).decode() if key_hex else None
    cli = APIClient(host, port, None, client_info="ota-conformance", noise_psk=psk)
    try:
        await asyncio.wait_for(cli.connect(login=False), 20)
        info = await asyncio.wait_for(cli.device_info(), 20)
    except Exception as e:
        print(f"error={type(e).__name__}: {e}")
        sys.exit(1)
    print(f"name={info.name}|mac={info.mac_address}|esphome={info.esphome_version}|"
          f"model={info.model}|manufacturer={info.manufacturer}|project={info.project_name}|"
          f"version={info.project_version}|web={info.webserver_port}")
    await cli.disconnect()
asyncio.run(main())
"#;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn python(script: &str, args: &[String]) -> Run {
    let python = std::env::var("OTA_CONFORMANCE_PYTHON").expect(
        "OTA_CONFORMANCE_PYTHON must name a Python with esphome installed: run \
         scripts/conformance.sh",
    );
    let child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let out = timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the Python peer finishes within 120 s")
        .expect("the Python peer's output");
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("Traceback") && !run.stderr.contains("AssertionError"),
        "the driver crashed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

/// ESPHome's web_server uploader, with `image` in a temporary file.
async fn web_upload(node: &EsphomeNode, user: &str, password: &str, image: &[u8]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("firmware.ota.bin");
    std::fs::write(&file, image).expect("write image");
    let addr = node.web_addr().expect("a web_server");
    let run = python(
        WEB_DRIVER,
        &[
            addr.ip().to_string(),
            addr.port().to_string(),
            user.into(),
            password.into(),
            file.display().to_string(),
        ],
    )
    .await;
    assert!(
        run.stdout.contains("esphome 2026.10.0") || !run.ok,
        "unexpected esphome version or output:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

/// aioesphomeapi's device info, as `key=value` pairs.
async fn api_info(
    node: &EsphomeNode,
    key: Option<[u8; 32]>,
) -> Result<Vec<(String, String)>, String> {
    let addr = node.api_addr();
    let run = python(
        API_DRIVER,
        &[
            addr.ip().to_string(),
            addr.port().to_string(),
            key.map(hex::encode).unwrap_or_default(),
        ],
    )
    .await;
    if !run.ok {
        return Err(format!("{}{}", run.stdout, run.stderr));
    }
    Ok(run
        .stdout
        .trim()
        .split('|')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn field<'a>(info: &'a [(String, String)], key: &str) -> &'a str {
    info.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {info:?}"))
}

fn esp32_app(version: &str) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("conformance.web")
        .payload_size(300 * 1024)
        .build()
}

fn node(platform: Platform, web: WebConfig, key: Option<[u8; 32]>) -> EsphomeNode {
    let mut c = NodeConfig::new("webnode", platform);
    c.ota.version = "1.0.0".into();
    c.ota.project_name = "conformance.web".into();
    c.ota.reboot_time = Duration::from_millis(300);
    c.web = Some(web);
    if let Some(k) = key {
        c = c.encrypted(k, false);
    }
    EsphomeNode::start(c).expect("bind loopback ports")
}

/// Waits (real time) until the device is back up on the new image: its second boot (a fresh
/// node has booted once), whatever the machine's load.
async fn back_up(node: &EsphomeNode) {
    let device = node.device();
    let mut power = device.watch_power();
    timeout(Duration::from_secs(10), async {
        loop {
            let snap = device.snapshot();
            if snap.boots >= 2 && snap.power == Power::Up {
                return;
            }
            if power.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .expect("the device comes back");
    assert!(device.snapshot().boots >= 2, "the device rebooted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_ota_with_basic_auth_then_the_api_reports_the_new_version() {
    let node = node(
        Platform::Esp32,
        WebConfig::new(Platform::Esp32).with_auth("admin", "web-pw"),
        None,
    );
    let before = api_info(&node, None).await.expect("aioesphomeapi connects");
    assert_eq!(field(&before, "name"), "webnode");
    assert_eq!(field(&before, "version"), "1.0.0");
    assert_eq!(field(&before, "project"), "conformance.web");
    assert_eq!(field(&before, "esphome"), "2026.10.0");
    assert_eq!(field(&before, "model"), "esp32dev");
    assert_eq!(field(&before, "manufacturer"), "Espressif");
    assert_eq!(
        field(&before, "web"),
        node.web_addr().unwrap().port().to_string()
    );
    assert_eq!(field(&before, "mac").len(), 17);

    let image = esp32_app("2.0.0");
    let run = web_upload(&node, "admin", "web-pw", &image).await;
    assert!(run.ok, "run_ota failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("Update Successful!"), "{}", run.stderr);
    let snap = node.device().snapshot();
    assert_eq!(snap.received.len(), 1);
    assert_eq!(snap.received[0].via, "web_server");
    assert_eq!(
        &snap.received[0].image[..],
        &image[..],
        "byte-identical image"
    );
    assert_eq!(snap.received[0].outcome, UploadOutcome::Committed);
    back_up(&node).await;
    let after = api_info(&node, None).await.expect("aioesphomeapi connects");
    assert_eq!(field(&after, "version"), "2.0.0");
    assert_eq!(node.device().snapshot().boots, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_ota_without_auth_and_on_esp8266() {
    let node = node(Platform::Esp8266, WebConfig::new(Platform::Esp8266), None);
    let image = EspAppBuilder::new(Chip::Esp8266)
        .payload_size(200 * 1024)
        .build();
    let run = web_upload(&node, "", "", &image).await;
    assert!(run.ok, "run_ota failed:\n{}\n{}", run.stdout, run.stderr);
    let snap = node.device().snapshot();
    assert_eq!(&snap.received[0].image[..], &image[..]);
    assert_eq!(snap.received[0].outcome, UploadOutcome::Committed);
    back_up(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_ota_wrong_credentials_is_401() {
    let node = node(
        Platform::Esp32,
        WebConfig::new(Platform::Esp32).with_auth("admin", "web-pw"),
        None,
    );
    let run = web_upload(&node, "admin", "guess", &esp32_app("2.0.0")).await;
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr.contains("Authentication failed (HTTP 401)"),
        "{}",
        run.stderr
    );
    assert_eq!(node.web.as_ref().unwrap().unauthorized(), 1);
    assert!(node.device().snapshot().received.is_empty());
    assert_eq!(node.device().current_version(), "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_ota_factory_image_is_update_failed() {
    let node = node(Platform::Esp32, WebConfig::new(Platform::Esp32), None);
    let factory = FactoryImageBuilder::new(Chip::Esp32)
        .app(esp32_app("2.0.0"))
        .build();
    let run = web_upload(&node, "", "", &factory).await;
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("Device reported OTA failure: Update Failed!"),
        "{}",
        run.stderr
    );
    assert_eq!(node.device().power(), Power::Up, "no reboot");
    assert_eq!(node.device().current_version(), "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioesphomeapi_over_noise_and_with_a_wrong_key() {
    let key = [0x33; 32];
    let node = node(Platform::Esp32, WebConfig::new(Platform::Esp32), Some(key));
    let info = api_info(&node, Some(key))
        .await
        .expect("encrypted connection");
    assert_eq!(field(&info, "version"), "1.0.0");
    assert_eq!(field(&info, "name"), "webnode");
    let err = api_info(&node, Some([0x34; 32])).await.unwrap_err();
    assert!(err.contains("InvalidEncryptionKeyAPIError"), "{err}");
    let err = api_info(&node, None).await.unwrap_err();
    assert!(
        err.contains("RequiresEncryptionAPIError") || err.contains("encrypt"),
        "{err}"
    );
}

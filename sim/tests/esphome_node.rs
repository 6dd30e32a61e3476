//! The simulated ESPHome node's native API and web_server over loopback TCP: what they report,
//! and that both follow the device's power (gone while it reboots, back on the same ports with
//! the new version). A small driver around `ota_devproto::esphome_api::Client` plays the API
//! client; raw HTTP/1.1 plays the web_server client.
//!
//! Time is real (real sockets); reboots take 200 ms.

use std::net::SocketAddr;
use std::time::Duration;

use ota_devproto::esphome::NoiseKey;
use ota_devproto::esphome_api::{
    ApiError, Client, ClientConfig, ClientEvent, DeviceInfoResponse, Message,
};
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_sim::esphome::{Platform, Power, UploadOutcome};
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use ota_sim::esphome_web::WebConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[derive(Debug)]
enum Probe {
    Refused,
    Api(ApiError),
}

async fn device_info(addr: SocketAddr, key: Option<[u8; 32]>) -> Result<DeviceInfoResponse, Probe> {
    let mut stream = TcpStream::connect(addr).await.map_err(|_| Probe::Refused)?;
    let mut c = Client::new(
        ClientConfig {
            client_info: "sim-test".into(),
            noise_key: key.map(NoiseKey::new),
        },
        [7; 32],
    );
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(ev) = c.poll_event() {
            match ev {
                ClientEvent::Connected(hello) => {
                    assert_eq!(hello.server_info, "2026.10.0");
                    c.send(&Message::DeviceInfoRequest).unwrap();
                }
                ClientEvent::Message(Message::DeviceInfoResponse(info)) => return Ok(*info),
                _ => {}
            }
        }
        while let Some(b) = c.poll_transmit() {
            let _ = stream.write_all(&b).await;
        }
        let r = match timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => c.handle_eof(),
            Ok(Ok(n)) => c.handle_input(&buf[..n]),
            Err(_) => c.handle_timeout(),
        };
        r.map_err(Probe::Api)?;
    }
}

fn config() -> NodeConfig {
    let mut c = NodeConfig::new("hall", Platform::Esp32);
    c.ota.version = "1.0.0".into();
    c.ota.project_name = "acme.hall".into();
    c.ota.reboot_time = Duration::from_millis(200);
    c
}

fn app(version: &str) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("acme.hall")
        .payload_size(20_000)
        .build()
}

async fn wait_up(node: &EsphomeNode) {
    timeout(Duration::from_secs(5), node.device().wait_for(Power::Up))
        .await
        .expect("back up");
}

#[tokio::test]
async fn api_reports_what_the_device_runs_and_follows_its_reboots() {
    let node = EsphomeNode::start(config()).unwrap();
    let info = device_info(node.api_addr(), None).await.unwrap();
    assert_eq!(info.name, "hall");
    assert_eq!(info.project_name, "acme.hall");
    assert_eq!(info.project_version, "1.0.0");
    assert_eq!(
        (info.model.as_str(), info.manufacturer.as_str()),
        ("esp32dev", "Espressif")
    );
    assert!(
        info.mac_address.starts_with("24:0A:C4:"),
        "{}",
        info.mac_address
    );
    assert_eq!(info.webserver_port, 0);
    assert_eq!(node.api.device_infos(), 1);

    let api = node.api_addr();
    node.device().install(&app("2.0.0"));
    assert!(
        matches!(device_info(api, None).await, Err(Probe::Refused)),
        "gone while rebooting"
    );
    wait_up(&node).await;
    let info = timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(info) = device_info(api, None).await {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the API is back on the same port");
    assert_eq!(info.project_version, "2.0.0");
}

#[tokio::test]
async fn encrypted_api_and_safe_mode() {
    let key = [9; 32];
    let node = EsphomeNode::start(config().encrypted(key, false)).unwrap();
    let info = device_info(node.api_addr(), Some(key)).await.unwrap();
    assert!(info.api_encryption_supported);
    assert!(matches!(
        device_info(node.api_addr(), Some([8; 32])).await,
        Err(Probe::Api(ApiError::WrongKey))
    ));
    assert!(matches!(
        device_info(node.api_addr(), None).await,
        Err(Probe::Api(ApiError::EncryptionRequired))
    ));
    // Safe mode: the API goes away, native OTA stays.
    node.api.set_enabled(false);
    timeout(Duration::from_secs(5), async {
        while !matches!(
            device_info(node.api_addr(), Some(key)).await,
            Err(Probe::Refused)
        ) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the API refuses connections in safe mode");
    assert!(TcpStream::connect(node.ota_addr()).await.is_ok());
    node.api.set_enabled(true);
    timeout(Duration::from_secs(5), async {
        while device_info(node.api_addr(), Some(key)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the API answers again after safe mode");
}

/// One `POST /update` with a multipart body; returns status line and body.
async fn post_update(addr: SocketAddr, auth: Option<&str>, file: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut body =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"update\"; filename=\"f.bin\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let mut head = format!(
        "POST /update HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; \
         boundary=XyZ\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: Basic {a}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    (status, body)
}

#[tokio::test]
async fn web_server_update_like_ota_web_server() {
    let mut c = config();
    // admin:pw
    c.web = Some(WebConfig::new(Platform::Esp32).with_auth("admin", "pw"));
    let node = EsphomeNode::start(c).unwrap();
    let web = node.web_addr().unwrap();
    let info = device_info(node.api_addr(), None).await.unwrap();
    assert_eq!(info.webserver_port, u32::from(web.port()));

    assert_eq!(post_update(web, None, &app("2.0.0")).await.0, 401);
    assert_eq!(
        post_update(web, Some("YWRtaW46eA=="), &app("2.0.0"))
            .await
            .0,
        401
    );
    assert_eq!(node.web.as_ref().unwrap().unauthorized(), 2);

    // Not an application image: the ESP32 backend refuses the first byte; no reboot.
    let (status, body) = post_update(web, Some("YWRtaW46cHc="), &[0xFF; 4096]).await;
    assert_eq!((status, body.as_str()), (200, "Update Failed!"));
    assert_eq!(node.device().power(), Power::Up);

    let image = app("2.0.0");
    let (status, body) = post_update(web, Some("YWRtaW46cHc="), &image).await;
    assert_eq!((status, body.as_str()), (200, "Update Successful!"));
    let snap = node.device().snapshot();
    let last = snap.received.last().unwrap();
    assert_eq!(
        (last.via, last.outcome),
        ("web_server", UploadOutcome::Committed)
    );
    assert_eq!(&last.image[..], &image[..]);
    // 100 ms later the device reboots; every port goes away and comes back.
    timeout(
        Duration::from_secs(2),
        node.device().wait_for(Power::Rebooting),
    )
    .await
    .expect("reboots");
    wait_up(&node).await;
    assert_eq!(node.device().current_version(), "2.0.0");
}

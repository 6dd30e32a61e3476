//! A serial device is a first-class device: it appears in the site's inventory, an operator
//! updates it with `DeviceService.Update` (what `otactl device flash` calls), the image goes through
//! the real agent core, the real serial transport and a pseudo-terminal into the ROM simulator,
//! and progress and the result reach the server like every other transport's.

use std::sync::Arc;
use std::time::Duration;

use ota_agent::agent::{Agent, AgentOptions};
use ota_agent::transport::Transport;
use ota_agent::transport::serial::{SerialConfig, SerialPortConfig, SerialTransport};
use ota_devproto::serial::Chip;
use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder};
use ota_proto::v1 as pb;
use ota_server::core::Clock;
use ota_sim::esprom::{EspRomSim, RomConfig};
use ota_testkit::agent::options;
use ota_testkit::otad::{all_events, config, lazy_channel, start_server};
use ota_testkit::upload::{meta, upload_firmware};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Uploads `bytes` as `format`.
async fn upload(
    channel: &Channel,
    name: &str,
    version: &str,
    bytes: &[u8],
    format: pb::FirmwareFormat,
) -> pb::Firmware {
    let meta = pb::UploadMetadata {
        format: format as i32,
        ..meta(name, version)
    };
    upload_firmware(channel, meta, bytes).await
}

/// `DeviceService.Update` of the bench's port to `firmware_id`, waiting for the outcome (at most
/// a minute).
async fn flash(
    devices: &mut pb::device_service_client::DeviceServiceClient<Channel>,
    firmware_id: &str,
) -> pb::UpdateDeviceResponse {
    tokio::time::timeout(
        Duration::from_secs(60),
        devices.update(pb::UpdateDeviceRequest {
            device_id: "lab/serial-bench".into(),
            firmware_id: firmware_id.into(),
            wait: true,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flashing_a_serial_device_through_the_whole_system() {
    let server_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let server = start_server(config(server_dir.path()), Clock::new()).await;
    let channel = lazy_channel(server.addr);

    let rom = EspRomSim::start(RomConfig::esp32()).unwrap();
    let serial = Arc::new(
        SerialTransport::new(SerialConfig {
            ports: vec![SerialPortConfig {
                chip: Some(Chip::Esp32),
                flash_size: Some(4 << 20),
                ..SerialPortConfig::new("bench", rom.path())
            }],
            ..SerialConfig::default()
        })
        .unwrap(),
    );
    serial.refresh().await;
    let agent = Agent::new(
        AgentOptions {
            progress_interval: Duration::from_millis(5),
            ..options("lab", agent_dir.path())
        },
        vec![serial.clone() as Arc<dyn Transport>],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel.clone(), stop.clone()));

    let mut devices = pb::device_service_client::DeviceServiceClient::new(channel.clone());
    let device = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(d) = devices
                .get(pb::GetDeviceRequest {
                    id: "lab/serial-bench".into(),
                })
                .await
            {
                break d.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the serial port shows up as a device");
    assert_eq!(device.transport, pb::Transport::Serial as i32);
    assert_eq!(device.chip, "esp32");
    assert!(device.reachable);

    // An application image goes to 0x10000.
    let app = EspAppBuilder::new(Chip::Esp32)
        .version("2026.11.1")
        .payload_size(120_000)
        .build();
    let fw = upload(
        &channel,
        "bench-app",
        "2026.11.1",
        &app,
        pb::FirmwareFormat::EspApp,
    )
    .await;
    let resp = flash(&mut devices, &fw.id).await;
    let task = resp.task.unwrap();
    assert_eq!(task.status, pb::UpgradeStatus::Success as i32, "{task:?}");
    assert_eq!(resp.to.unwrap().version, "2026.11.1");
    assert_eq!(
        rom.flash_range(0x10000, app.len()),
        app,
        "the flash holds exactly the image"
    );

    // Progress streamed like any transport's: preparing, updating, downloaded.
    let progress = all_events(
        &channel,
        pb::TailEventsRequest {
            types: vec!["TaskProgressed".into()],
            ..Default::default()
        },
    )
    .await;
    let statuses: Vec<serde_json::Value> = progress
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap()["status"].clone()
        })
        .collect();
    for wanted in ["AgentPreparing", "Updating", "Downloaded"] {
        assert!(
            statuses.iter().any(|s| s == wanted),
            "no {wanted} progress in {statuses:?}"
        );
    }

    // A factory image (declared as such) goes to 0x0.
    rom.reset_into_bootloader();
    let app2 = EspAppBuilder::new(Chip::Esp32)
        .version("2026.11.2")
        .payload_size(40_000)
        .build();
    let factory = FactoryImageBuilder::new(Chip::Esp32).app(app2).build();
    let fw2 = upload(
        &channel,
        "bench-factory",
        "2026.11.2",
        &factory,
        pb::FirmwareFormat::EspFactory,
    )
    .await;
    let resp = flash(&mut devices, &fw2.id).await;
    assert_eq!(resp.task.unwrap().status, pb::UpgradeStatus::Success as i32);
    assert_eq!(rom.flash_range(0, factory.len()), factory);

    stop.cancel();
    running.await.unwrap();
    server.shutdown().await.unwrap();
    rom.shutdown().await;
}

//! The native API port (6053 on a real device) of a simulated ESPHome device, built on the device
//! machine of `ota_devproto::esphome_api`: `Hello`, `DeviceInfo`, `Ping`, `Disconnect`, in
//! plaintext or Noise-encrypted.
//!
//! What it does: serve many clients at once on a port that follows the [`DeviceModel`]'s power
//! (closed while it reboots or is off, every open connection cut); answer `DeviceInfo` with the
//! device's node name, a MAC, the board, the ESPHome version and, as project name and
//! **project version**, what the device runs right now (after an OTA reboot: the uploaded
//! image's); count the `DeviceInfo` answers for tests. [`EsphomeApiSim::set_enabled`] takes the
//! API away while the device stays up, as safe mode does (only the OTA port answers then). One
//! entity: an `uptime` sensor (ESPHome's `uptime` platform, unless [`ApiConfig::uptime_sensor`]
//! is off) whose state, sent on `SubscribeStates`, is the running image's uptime.
//! What it does not do: other entities, state updates after the first, logs, the pre-2026.1 API
//! password, or API idle timeouts.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use md5::{Digest, Md5};
use ota_devproto::esphome::NoiseKey;
use ota_devproto::esphome_api::{
    DeviceInfoResponse, ListEntitiesSensorResponse, SensorStateResponse, Server, ServerConfig,
    ServerEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::esphome::Platform;
use crate::esphome::listener;
use crate::esphome::model::DeviceModel;
use crate::esphome_node::serve_many_while_up;

/// The native API port of a real device.
pub const API_PORT: u16 = 6053;

/// How the API port behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where it listens: `127.0.0.1:0` (a free port) by default, for tests; [`API_PORT`] for a
    /// simulated device that should look like a real one.
    pub bind: SocketAddr,
    /// `api: encryption: key:`; `None` for a plaintext API.
    pub noise_key: Option<NoiseKey>,
    /// The MAC; `None` derives one from the node name.
    pub mac: Option<[u8; 6]>,
    /// The ESPHome version the firmware was built with.
    pub esphome_version: String,
    /// The board, reported as the model.
    pub board: String,
    /// The manufacturer, by platform.
    pub manufacturer: String,
    /// `esphome: friendly_name:`.
    pub friendly_name: String,
    /// Build time of the running firmware.
    pub compilation_time: String,
    /// Port of the web_server, 0 without one (the node fills it in).
    pub webserver_port: u16,
    /// The firmware has an `uptime` sensor.
    pub uptime_sensor: bool,
}

/// The key of the simulated `uptime` sensor.
pub const UPTIME_KEY: u32 = 0x7570_7469;

impl ApiConfig {
    /// A plaintext API of an ESPHome 2026.10 device on `127.0.0.1:0`, with the platform's
    /// usual board and manufacturer.
    pub fn new(platform: Platform) -> Self {
        let (board, manufacturer) = match platform {
            Platform::Esp32 => ("esp32dev", "Espressif"),
            Platform::Esp8266 => ("nodemcuv2", "Espressif"),
            Platform::Rp2040 => ("rpipicow", "Raspberry Pi"),
            Platform::Bk72xx => ("cb2s", "Beken"),
        };
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            noise_key: None,
            mac: None,
            esphome_version: "2026.10.0".into(),
            board: board.into(),
            manufacturer: manufacturer.into(),
            friendly_name: String::new(),
            compilation_time: "Nov 24 2026, 08:00:00".into(),
            webserver_port: 0,
            uptime_sensor: true,
        }
    }
}

/// A MAC for a simulated node: Espressif's `24:0A:C4` prefix and three bytes from its name.
pub fn mac_for(name: &str) -> [u8; 6] {
    let d = Md5::digest(name.as_bytes());
    [0x24, 0x0A, 0xC4, d[0], d[1], d[2]]
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU32,
    device_infos: AtomicU32,
}

/// A running API port. Dropping it closes the port.
#[derive(Debug)]
pub struct EsphomeApiSim {
    addr: SocketAddr,
    enabled: watch::Sender<bool>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl EsphomeApiSim {
    /// Binds the API port and serves it for `model`. Must be called inside a tokio runtime.
    pub fn start(model: DeviceModel, config: ApiConfig) -> io::Result<Self> {
        let listener = listener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let (enabled, enabled_rx) = watch::channel(true);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let m = model.clone();
        let task = serve_many_while_up(model, listener, enabled_rx, "api", move |stream, _| {
            c.connections.fetch_add(1, Ordering::Relaxed);
            connection(stream, server_config(&m, &config), m.clone(), c.clone())
        });
        Ok(Self {
            addr,
            enabled,
            counters,
            task,
        })
    }

    /// The API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the API away (false) while the device stays up, as in safe mode, or brings it back.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.send_replace(enabled);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// `DeviceInfoResponse`s sent so far.
    pub fn device_infos(&self) -> u32 {
        self.counters.device_infos.load(Ordering::Relaxed)
    }
}

impl Drop for EsphomeApiSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the device says about itself now: firmware facts are fixed at build time, so a
/// connection's snapshot stays true until the next reboot (which cuts the connection).
fn server_config(model: &DeviceModel, config: &ApiConfig) -> ServerConfig {
    let snap = model.snapshot();
    let mac = config.mac.unwrap_or_else(|| mac_for(&snap.name));
    ServerConfig {
        name: snap.name.clone(),
        mac,
        server_info: config.esphome_version.clone(),
        noise_key: config.noise_key.clone(),
        device_info: DeviceInfoResponse {
            esphome_version: config.esphome_version.clone(),
            compilation_time: config.compilation_time.clone(),
            model: config.board.clone(),
            project_name: snap.project_name,
            project_version: snap.version,
            webserver_port: u32::from(config.webserver_port),
            manufacturer: config.manufacturer.clone(),
            friendly_name: config.friendly_name.clone(),
            api_encryption_supported: config.noise_key.is_some(),
            ..DeviceInfoResponse::default()
        },
        sensors: if config.uptime_sensor {
            vec![ListEntitiesSensorResponse {
                object_id: "uptime".into(),
                key: UPTIME_KEY,
                name: "Uptime".into(),
                unit_of_measurement: "s".into(),
                accuracy_decimals: 0,
                device_class: "duration".into(),
                state_class: 2,
                entity_category: 2,
            }]
        } else {
            Vec::new()
        },
    }
}

/// Serves one API connection until either side ends it.
async fn connection(
    mut stream: TcpStream,
    config: ServerConfig,
    model: DeviceModel,
    counters: Arc<Counters>,
) {
    let uptime = !config.sensors.is_empty();
    let _ = stream.set_nodelay(true);
    let mut server = Server::new(config, rand::random());
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(ev) = server.poll_event() {
            if ev == ServerEvent::Served("DeviceInfoRequest") {
                counters.device_infos.fetch_add(1, Ordering::Relaxed);
            }
            if ev == ServerEvent::SubscribeStates && uptime {
                server.send_state(SensorStateResponse {
                    key: UPTIME_KEY,
                    state: model.uptime().as_secs() as f32,
                    missing_state: false,
                });
            }
            tracing::trace!(?ev, "esphome sim: api");
        }
        while let Some(bytes) = server.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if server.is_closed() {
            break;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => server.handle_eof(),
            Ok(n) => server.handle_input(&buf[..n]),
        }
    }
    let _ = stream.shutdown().await;
}

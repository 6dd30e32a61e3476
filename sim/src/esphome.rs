//! A simulated ESPHome device serving native OTA on TCP, built on the device machine of
//! `ota_devproto::esphome`.
//!
//! What it does: listen on a TCP port (bind `127.0.0.1:0` in tests), one client at a time, and
//! behave like an ESPHome device of a chosen platform and generation: OTA version 1 or 2,
//! password with SHA256 or legacy MD5 challenges, Noise offered or required, gzip (ESP8266,
//! RP2040) or deflate (ESP32, BK72xx), a maximum image size (`0x88`/`0x89`/`0x8C`), image
//! checks as the platform's backend makes them. After a committed upload it reboots: the port
//! goes away for the reboot time (tokio time: pausable), then comes back running the new
//! version, read from the image's ESP-IDF application description. Faults are injected on the
//! [`DeviceModel`]: MD5 mismatch at the end, flash write error at an offset, invalid
//! bootstrapping, connection dropped after N bytes, stall, slow device, stays down after the
//! reboot, rollback to the old version.
//!
//! What it does not do (yet): the native API on port 6053 and the web_server `/update`
//! endpoint. Both can be added as further listeners of the same [`DeviceModel`]: serve them with
//! [`listener::serve_while_up`] (the port then follows the device's power), call
//! [`DeviceModel::install`] after an accepted upload and read [`DeviceModel::current_version`]
//! for version queries.
//!
//! # Layout
//! - [`model`]: the device (identity, version, power and reboots, faults, upload record).
//! - [`listener`]: ports that exist only while the device is up.
//! - `native`: the native OTA connection driver and the platform backend.

pub mod listener;
pub mod model;
mod native;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ota_devproto::esphome::{
    DeviceAuth, DeviceConfig, DeviceNoise, ErrorCode, NoiseKey, OtaVersion, Password,
};
use tokio::task::JoinHandle;

pub use model::{DeviceModel, Fault, Power, ReceivedUpload, Snapshot, UploadOutcome};

/// The chip family; decides the default port, the compression offered, the not-enough-space
/// error and the image checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// ESP32 family (ESP-IDF backend): deflate, `0x89`, first byte and full image checks.
    Esp32,
    /// ESP8266: gzip stored and inflated at boot, `0x88`, 0xE9 header check.
    Esp8266,
    /// RP2040: gzip (2026.10), `0x8C`.
    Rp2040,
    /// Beken BK72xx (LibreTiny): deflate, `0x89`.
    Bk72xx,
}

impl Platform {
    /// ESPHome's default native OTA port.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Esp32 => 3232,
            Self::Esp8266 => 8266,
            Self::Rp2040 => 2040,
            Self::Bk72xx => 8892,
        }
    }

    /// The backend stores gzip (offered as gzip compression).
    pub fn stores_gzip(self) -> bool {
        matches!(self, Self::Esp8266 | Self::Rp2040)
    }

    /// The device inflates deflate on the fly (offered as deflate).
    pub fn inflates_deflate(self) -> bool {
        matches!(self, Self::Esp32 | Self::Bk72xx)
    }

    /// The error `begin()` reports for an image that does not fit.
    pub fn not_enough_space(self) -> ErrorCode {
        match self {
            Self::Esp8266 => ErrorCode::Esp8266NotEnoughSpace,
            Self::Rp2040 => ErrorCode::Rp2040NotEnoughSpace,
            Self::Esp32 | Self::Bk72xx => ErrorCode::Esp32NotEnoughSpace,
        }
    }

    /// ESPHome's platform name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Esp32 => "esp32",
            Self::Esp8266 => "esp8266",
            Self::Rp2040 => "rp2040",
            Self::Bk72xx => "bk72xx",
        }
    }
}

/// Noise on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// An `api: encryption:` key: Noise is offered, plaintext still accepted.
    Offered(NoiseKey),
    /// `ota: encryption:`: uploads without Noise get `0x94`.
    Required(NoiseKey),
}

/// How the simulated device is built. [`EsphomeConfig::new`] gives an ESPHome 2026.10 device.
#[derive(Debug, Clone)]
pub struct EsphomeConfig {
    /// Node name.
    pub name: String,
    /// Platform.
    pub platform: Platform,
    /// Version of the firmware it runs at start.
    pub version: String,
    /// Project name of the firmware it runs at start.
    pub project_name: String,
    /// OTA protocol version.
    pub ota_version: OtaVersion,
    /// OTA password.
    pub password: Option<String>,
    /// Which challenge it sends ([`DeviceAuth::Md5`] for devices up to 2025.9).
    pub auth: DeviceAuth,
    /// Extended protocol (2026.5+); off for older devices (legacy `40`/`46` acks).
    pub extended_protocol: bool,
    /// Offer the platform's compression (off: a device before 2021.11, or an ESP32 before
    /// 2026.10, which had no deflate).
    pub compression: bool,
    /// Noise.
    pub encryption: Option<Encryption>,
    /// `allow_partition_access: true` (ESP32 only).
    pub partition_access: bool,
    /// Largest image `begin()` accepts (bytes given to `begin()`: inflated for deflate, the
    /// gzip file for gzip).
    pub max_image_size: usize,
    /// Check images as the platform's backend does (ESP32: first byte 0xE9 and a valid image;
    /// ESP8266: 0xE9 header). Off: accept any bytes.
    pub validate_images: bool,
    /// How long a reboot keeps the ports closed.
    pub reboot_time: Duration,
    /// Where the native OTA port listens.
    pub bind: SocketAddr,
}

impl EsphomeConfig {
    /// An ESPHome 2026.10 device: OTA version 2, no password, no encryption, the platform's
    /// compression, a 1.75 MiB OTA slot (1 MiB on ESP8266), 2 s reboots, `127.0.0.1:0`.
    pub fn new(name: impl Into<String>, platform: Platform) -> Self {
        Self {
            name: name.into(),
            platform,
            version: "2026.10.0".into(),
            project_name: "esphome.sim".into(),
            ota_version: OtaVersion::V2,
            password: None,
            auth: DeviceAuth::Sha256,
            extended_protocol: true,
            compression: true,
            encryption: None,
            partition_access: false,
            max_image_size: match platform {
                Platform::Esp8266 => 1 << 20,
                _ => 0x1C_0000,
            },
            validate_images: true,
            reboot_time: Duration::from_secs(2),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// The device machine's configuration.
    pub fn device_config(&self) -> DeviceConfig {
        DeviceConfig {
            version: self.ota_version,
            password: self.password.as_deref().map(Password::new),
            auth: self.auth,
            extended: self.extended_protocol,
            gzip: self.compression && self.platform.stores_gzip(),
            deflate: self.compression && self.platform.inflates_deflate() && self.extended_protocol,
            partition_access: self.partition_access && self.platform == Platform::Esp32,
            noise: self.encryption.as_ref().map(|e| match e {
                Encryption::Offered(key) => DeviceNoise {
                    key: key.clone(),
                    required: false,
                },
                Encryption::Required(key) => DeviceNoise {
                    key: key.clone(),
                    required: true,
                },
            }),
        }
    }
}

/// A running simulated device. Dropping it stops the listener.
#[derive(Debug)]
pub struct EsphomeSim {
    model: DeviceModel,
    ota_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EsphomeSim {
    /// Binds the native OTA port and starts serving. Must be called inside a tokio runtime.
    pub fn start(config: EsphomeConfig) -> io::Result<Self> {
        let model = DeviceModel::new(
            config.name.clone(),
            config.platform,
            config.version.clone(),
            config.project_name.clone(),
            config.reboot_time,
        );
        let listener = listener::bind(config.bind)?;
        let ota_addr = listener.local_addr()?;
        let device_config = config.device_config();
        let (max, validate) = (config.max_image_size, config.validate_images);
        let m = model.clone();
        let task = listener::serve_while_up(model.clone(), listener, move |stream, peer| {
            tracing::debug!(%peer, "esphome sim: OTA connection");
            native::serve_connection(stream, m.clone(), device_config.clone(), max, validate)
        });
        tracing::debug!(%ota_addr, name = %config.name, "esphome sim listening");
        Ok(Self {
            model,
            ota_addr,
            task,
        })
    }

    /// The native OTA address.
    pub fn ota_addr(&self) -> SocketAddr {
        self.ota_addr
    }

    /// The device: state, power, faults.
    pub fn device(&self) -> &DeviceModel {
        &self.model
    }

    /// Everything tests may want to look at.
    pub fn snapshot(&self) -> Snapshot {
        self.model.snapshot()
    }

    /// Version of the running firmware.
    pub fn current_version(&self) -> String {
        self.model.current_version()
    }

    /// Whether the device is up.
    pub fn is_up(&self) -> bool {
        self.model.is_up()
    }

    /// Committed uploads.
    pub fn uploads(&self) -> u32 {
        self.model.snapshot().uploads
    }

    /// Every image received in full (as it boots), committed or not, oldest first.
    pub fn received_images(&self) -> Vec<bytes::Bytes> {
        self.model
            .snapshot()
            .received
            .into_iter()
            .map(|u| u.image)
            .collect()
    }
}

impl Drop for EsphomeSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Configuration of the ESPHome transport: the `[esphome]` section (timeouts, retries) and one
//! `[[esphome.device]]` per device. See the example in the [module documentation](super).
//!
//! What it does: the serde shapes (TOML or JSON), defaults by platform (native OTA port, vendor),
//! durations as `"20s"`/`"2m"` or seconds, a check that names are unique and that every secret
//! is given at most once, and [`EsphomeConfig::resolve`], which reads secret files and decodes
//! the base64 Noise keys. Errors name the device and the field, never a secret's value.
//!
//! What it does not do: touch the network (that is the transport).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ota_devproto::esphome::{NoiseKey, Password};
use ota_firmware::Chip;
use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::secret::Secret;

/// Default native API port.
pub const DEFAULT_API_PORT: u16 = 6053;

/// Default web_server port.
pub const DEFAULT_WEB_PORT: u16 = 80;

/// The platform an ESPHome device is built for (`esp32:`, `esp8266:`, … in its YAML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EsphomePlatform {
    /// ESP32 family (any variant; `chip` narrows it).
    Esp32,
    /// ESP8266.
    Esp8266,
    /// Raspberry Pi RP2040 (`rp2040:`).
    Rp2040,
    /// Beken BK72xx (LibreTiny).
    Bk72xx,
    /// Realtek RTL87xx (LibreTiny).
    Rtl87xx,
    /// Lightning LN882x (LibreTiny).
    Ln882x,
    /// The `host` platform (ESPHome running on a computer).
    Host,
}

impl EsphomePlatform {
    /// Every platform.
    pub const ALL: [Self; 7] = [
        Self::Esp32,
        Self::Esp8266,
        Self::Rp2040,
        Self::Bk72xx,
        Self::Rtl87xx,
        Self::Ln882x,
        Self::Host,
    ];

    /// ESPHome's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Esp32 => "esp32",
            Self::Esp8266 => "esp8266",
            Self::Rp2040 => "rp2040",
            Self::Bk72xx => "bk72xx",
            Self::Rtl87xx => "rtl87xx",
            Self::Ln882x => "ln882x",
            Self::Host => "host",
        }
    }

    /// ESPHome's default native OTA port (`components/esphome/ota/__init__.py`).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Esp32 => 3232,
            Self::Esp8266 => 8266,
            Self::Rp2040 => 2040,
            Self::Bk72xx | Self::Rtl87xx => 8892,
            Self::Ln882x => 8820,
            Self::Host => 8082,
        }
    }

    /// The manufacturer ESPHome reports for the platform.
    pub fn vendor(self) -> &'static str {
        match self {
            Self::Esp32 | Self::Esp8266 => "Espressif",
            Self::Rp2040 => "Raspberry Pi",
            Self::Bk72xx => "Beken",
            Self::Rtl87xx => "Realtek",
            Self::Ln882x => "Lightning",
            Self::Host => "Host",
        }
    }

    /// Whether OTA images are ESP application images (0xE9), checked before upload.
    pub fn takes_esp_images(self) -> bool {
        matches!(self, Self::Esp32 | Self::Esp8266)
    }
}

impl fmt::Display for EsphomePlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EsphomePlatform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        if t == "rp2" {
            return Ok(Self::Rp2040);
        }
        Self::ALL
            .into_iter()
            .find(|p| p.name() == t)
            .ok_or_else(|| {
                format!(
                    "unknown platform {s:?}: expected one of esp32, esp8266, rp2040, bk72xx, \
                     rtl87xx, ln882x, host"
                )
            })
    }
}

/// How images reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// ESPHome's native OTA protocol (`ota: - platform: esphome`).
    #[default]
    Native,
    /// The web_server's `/update` (`ota: - platform: web_server`).
    WebServer,
}

/// The transport's configuration: the `[esphome]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsphomeConfig {
    /// Instance name, reported as the devices' network.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// TCP connect timeout (native OTA, API, web_server). ESPHome: 20 s.
    #[serde(default = "secs::<20>", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Time for the native OTA handshake up to authentication, and for a whole API exchange.
    /// ESPHome: 20 s.
    #[serde(default = "secs::<20>", deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// Longest silence in the native OTA data phase (per read or write). ESPHome: 160 s.
    #[serde(default = "secs::<160>", deserialize_with = "de_duration")]
    pub data_timeout: Duration,
    /// web_server upload: longest wait for the device while sending and for its answer.
    /// ESPHome: 120 s.
    #[serde(default = "secs::<120>", deserialize_with = "de_duration")]
    pub web_read_timeout: Duration,
    /// How long a device may take to come back after accepting an image.
    #[serde(default = "secs::<120>", deserialize_with = "de_duration")]
    pub reboot_timeout: Duration,
    /// How often the API is asked while waiting for the device to come back.
    #[serde(default = "secs::<1>", deserialize_with = "de_duration")]
    pub reboot_poll: Duration,
    /// After accepting an image a device that still answers on its old version without having
    /// gone away for this long did not reboot into the new one.
    #[serde(default = "secs::<15>", deserialize_with = "de_duration")]
    pub reboot_settle: Duration,
    /// Extra attempts after network failures before the last image byte (ESPHome: 2).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause before a retry (ESPHome: 5 s).
    #[serde(default = "secs::<5>", deserialize_with = "de_duration")]
    pub retry_delay: Duration,
    /// How often the inventory asks every idle device what it runs.
    #[serde(default = "secs::<300>", deserialize_with = "de_duration")]
    pub inventory_interval: Duration,
    /// The devices.
    #[serde(default, rename = "device")]
    pub devices: Vec<EsphomeDeviceConfig>,
}

impl Default for EsphomeConfig {
    fn default() -> Self {
        Self {
            instance: default_instance(),
            connect_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(20),
            data_timeout: Duration::from_secs(160),
            web_read_timeout: Duration::from_secs(120),
            reboot_timeout: Duration::from_secs(120),
            reboot_poll: Duration::from_secs(1),
            reboot_settle: Duration::from_secs(15),
            retries: default_retries(),
            retry_delay: Duration::from_secs(5),
            inventory_interval: Duration::from_secs(300),
            devices: Vec::new(),
        }
    }
}

fn default_instance() -> String {
    "esphome".into()
}

fn default_retries() -> u32 {
    2
}

fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}

/// One ESPHome device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsphomeDeviceConfig {
    /// The device's local id at this site (unique; no whitespace).
    pub name: String,
    /// Host name or IP address.
    pub host: String,
    /// The platform (`esp32`, `esp8266`, `rp2040`, `bk72xx`, `rtl87xx`, `ln882x`, `host`).
    #[serde(deserialize_with = "de_platform")]
    pub platform: EsphomePlatform,
    /// The exact chip (`esp32c3`, `ESP32-S3`, …); images for other chips are refused.
    #[serde(default, deserialize_with = "de_chip")]
    pub chip: Option<Chip>,
    /// Native OTA port; default by platform.
    #[serde(default)]
    pub port: Option<u16>,
    /// OTA password of the firmware running now.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the OTA password (one trailing newline is dropped).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OTA Noise key (`ota: encryption: key:`), base64 of 32 bytes.
    #[serde(default)]
    pub noise_key: Option<Secret>,
    /// File holding the OTA Noise key.
    #[serde(default)]
    pub noise_key_file: Option<PathBuf>,
    /// Native API Noise key (`api: encryption: key:`), base64 of 32 bytes.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// File holding the API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// With a Noise key: still upload in plaintext to a device that does not offer encryption
    /// (ESPHome's `allow_plaintext_upload`, for the one install that migrates it).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Native API port; 0 when the device has no `api:` (then only the OTA port is watched and
    /// the version after an update cannot be confirmed).
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// `native` (default) or `web_server`.
    #[serde(default)]
    pub method: Method,
    /// The web_server, for `method = "web_server"`.
    #[serde(default)]
    pub web: Option<WebServerConfig>,
    /// Labels for rollout selectors.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl EsphomeDeviceConfig {
    /// A device with defaults for everything but its name, host and platform.
    pub fn new(
        name: impl Into<String>,
        host: impl Into<String>,
        platform: EsphomePlatform,
    ) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            platform,
            chip: None,
            port: None,
            password: None,
            password_file: None,
            noise_key: None,
            noise_key_file: None,
            api_key: None,
            api_key_file: None,
            allow_plaintext: false,
            api_port: DEFAULT_API_PORT,
            method: Method::Native,
            web: None,
            tags: Vec::new(),
        }
    }

    /// The native OTA port: configured, or the platform's default.
    pub fn ota_port(&self) -> u16 {
        self.port.unwrap_or(self.platform.default_port())
    }

    /// The chip images must be built for: configured, or implied by the platform.
    pub fn expected_chip(&self) -> Option<Chip> {
        self.chip.or(match self.platform {
            EsphomePlatform::Esp8266 => Some(Chip::Esp8266),
            _ => None,
        })
    }
}

/// The web_server of a device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebServerConfig {
    /// Port (default 80).
    #[serde(default = "default_web_port")]
    pub port: u16,
    /// `web_server: auth: username:`.
    #[serde(default)]
    pub username: Option<String>,
    /// `web_server: auth: password:`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding that password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl Default for WebServerConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_WEB_PORT,
            username: None,
            password: None,
            password_file: None,
        }
    }
}

fn default_web_port() -> u16 {
    DEFAULT_WEB_PORT
}

/// The secrets of one device, read and decoded.
#[derive(Debug, Clone, Default)]
pub struct DeviceSecrets {
    /// OTA password.
    pub password: Option<Password>,
    /// Noise key for OTA uploads.
    pub ota_key: Option<NoiseKey>,
    /// Whether the OTA key is only the API key (then plaintext is the fallback for devices that
    /// do not offer encryption, as ESPHome's uploader does).
    pub ota_key_from_api: bool,
    /// Noise key for the native API.
    pub api_key: Option<NoiseKey>,
    /// web_server basic-auth password.
    pub web_password: Option<Secret>,
}

/// A configuration that cannot work. Never contains a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EsphomeConfigError {
    /// A name that cannot be a device id.
    #[error("ESPHome device name {0:?} must be non-empty and contain no whitespace")]
    BadName(String),
    /// Two devices share a name.
    #[error("ESPHome device name {0:?} is used twice")]
    DuplicateName(String),
    /// No host.
    #[error("ESPHome device {0:?} has no host")]
    NoHost(String),
    /// Port 0.
    #[error("ESPHome device {0:?}: port 0 is not a port")]
    BadPort(String),
    /// A chip that does not belong to the platform.
    #[error("ESPHome device {device:?}: chip {chip} does not belong to platform {platform}")]
    ChipPlatform {
        /// The device.
        device: String,
        /// The chip.
        chip: Chip,
        /// The platform.
        platform: EsphomePlatform,
    },
    /// A secret given inline and as a file.
    #[error("ESPHome device {device:?}: give either {field} or {field}_file, not both")]
    TwoSources {
        /// The device.
        device: String,
        /// The field.
        field: &'static str,
    },
    /// A secret file that cannot be read.
    #[error("ESPHome device {device:?}: cannot read {field}_file {path}: {reason}")]
    SecretFile {
        /// The device.
        device: String,
        /// The field.
        field: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A Noise key that is not base64 of 32 bytes.
    #[error(
        "ESPHome device {device:?}: {field} is not the base64 of 32 bytes (as in the device's YAML)"
    )]
    BadKey {
        /// The device.
        device: String,
        /// The field.
        field: &'static str,
    },
    /// web_server auth with only a username or only a password.
    #[error("ESPHome device {0:?}: web_server auth needs both username and password")]
    HalfAuth(String),
}

impl EsphomeConfig {
    /// Checks names, hosts, ports, chips and that each secret has one source; reports the first
    /// problem. Secret files are read by [`Self::resolve`].
    pub fn validate(&self) -> Result<(), EsphomeConfigError> {
        let mut names = HashSet::new();
        for d in &self.devices {
            if d.name.is_empty() || d.name.chars().any(char::is_whitespace) {
                return Err(EsphomeConfigError::BadName(d.name.clone()));
            }
            if !names.insert(d.name.as_str()) {
                return Err(EsphomeConfigError::DuplicateName(d.name.clone()));
            }
            if d.host.trim().is_empty() {
                return Err(EsphomeConfigError::NoHost(d.name.clone()));
            }
            if d.port == Some(0) || d.web.as_ref().is_some_and(|w| w.port == 0) {
                return Err(EsphomeConfigError::BadPort(d.name.clone()));
            }
            if let Some(chip) = d.chip {
                let fits = match d.platform {
                    EsphomePlatform::Esp32 => chip.is_esp32_family(),
                    EsphomePlatform::Esp8266 => chip == Chip::Esp8266,
                    _ => false,
                };
                if !fits {
                    return Err(EsphomeConfigError::ChipPlatform {
                        device: d.name.clone(),
                        chip,
                        platform: d.platform,
                    });
                }
            }
            let two = |field| EsphomeConfigError::TwoSources {
                device: d.name.clone(),
                field,
            };
            if d.password.is_some() && d.password_file.is_some() {
                return Err(two("password"));
            }
            if d.noise_key.is_some() && d.noise_key_file.is_some() {
                return Err(two("noise_key"));
            }
            if d.api_key.is_some() && d.api_key_file.is_some() {
                return Err(two("api_key"));
            }
            if let Some(w) = &d.web {
                if w.password.is_some() && w.password_file.is_some() {
                    return Err(two("web.password"));
                }
                let has_password = w.password.is_some() || w.password_file.is_some();
                if w.username.is_some() != has_password {
                    return Err(EsphomeConfigError::HalfAuth(d.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Reads the secret files of every device (relative paths against `base`) and decodes the
    /// keys.
    pub fn resolve(&self, base: Option<&Path>) -> Result<Vec<DeviceSecrets>, EsphomeConfigError> {
        self.validate()?;
        self.devices
            .iter()
            .map(|d| resolve_device(d, base))
            .collect()
    }

    /// The tags of every device, by local id.
    pub fn tags(&self) -> BTreeMap<String, Vec<String>> {
        self.devices
            .iter()
            .filter(|d| !d.tags.is_empty())
            .map(|d| (d.name.clone(), d.tags.clone()))
            .collect()
    }
}

fn read_secret(
    device: &str,
    field: &'static str,
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    base: Option<&Path>,
) -> Result<Option<Secret>, EsphomeConfigError> {
    if let Some(s) = inline {
        return Ok(Some(s.clone()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let full = match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path.clone(),
    };
    Secret::from_file(&full)
        .map(Some)
        .map_err(|e| EsphomeConfigError::SecretFile {
            device: device.into(),
            field,
            path: full.display().to_string(),
            reason: e.kind().to_string(),
        })
}

fn decode_key(
    device: &str,
    field: &'static str,
    secret: Option<Secret>,
) -> Result<Option<NoiseKey>, EsphomeConfigError> {
    let Some(s) = secret else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(s.expose().trim())
        .ok()
        .and_then(|raw| NoiseKey::from_slice(&raw))
        .map(Some)
        .ok_or(EsphomeConfigError::BadKey {
            device: device.into(),
            field,
        })
}

fn resolve_device(
    d: &EsphomeDeviceConfig,
    base: Option<&Path>,
) -> Result<DeviceSecrets, EsphomeConfigError> {
    let n = d.name.as_str();
    let password = read_secret(n, "password", &d.password, &d.password_file, base)?
        .filter(|p| !p.is_empty())
        .map(|p| Password::new(p.expose()));
    let ota = decode_key(
        n,
        "noise_key",
        read_secret(n, "noise_key", &d.noise_key, &d.noise_key_file, base)?,
    )?;
    let api = decode_key(
        n,
        "api_key",
        read_secret(n, "api_key", &d.api_key, &d.api_key_file, base)?,
    )?;
    let web_password = match &d.web {
        Some(w) => read_secret(n, "web.password", &w.password, &w.password_file, base)?,
        None => None,
    };
    Ok(DeviceSecrets {
        password,
        ota_key_from_api: ota.is_none() && api.is_some(),
        ota_key: ota.clone().or_else(|| api.clone()),
        api_key: api.or(ota),
        web_password,
    })
}

fn de_platform<'de, D: Deserializer<'de>>(d: D) -> Result<EsphomePlatform, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

fn de_chip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Chip>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(de::Error::custom)
}

/// A duration as `"20s"`, `"2m"`, `"1500ms"` (humantime) or a number of seconds.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"20s\" or \"2m\", or a number of seconds")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|e| E::custom(e.to_string()))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v.trim())
                .map_err(|e| E::custom(format!("{v:?} is not a duration: {e}")))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Root {
        esphome: EsphomeConfig,
    }

    const KEY_B64: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

    #[test]
    fn toml_example_parses_with_defaults_by_platform() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("garage.pw"), "s3cret\n").unwrap();
        let root: Root = toml::from_str(&format!(
            r#"
            [esphome]
            data_timeout = "3m"
            reboot_timeout = 90
            retries = 1

            [[esphome.device]]
            name = "kitchen-plug"
            host = "192.168.1.40"
            platform = "esp32"
            chip = "ESP32-C3"
            password = "hunter2"
            api_key = "{KEY_B64}"
            tags = ["kitchen", "plugs"]

            [[esphome.device]]
            name = "garage"
            host = "garage.lan"
            platform = "esp8266"
            password_file = "garage.pw"

            [[esphome.device]]
            name = "pico"
            host = "10.0.0.9"
            platform = "rp2"
            port = 3000
            api_port = 0
            method = "web_server"
            web = {{ port = 8080, username = "admin", password = "pw" }}
            "#
        ))
        .expect("parses");
        let c = root.esphome;
        assert_eq!(c.instance, "esphome");
        assert_eq!(c.connect_timeout, Duration::from_secs(20));
        assert_eq!(c.handshake_timeout, Duration::from_secs(20));
        assert_eq!(c.data_timeout, Duration::from_secs(180));
        assert_eq!(c.reboot_timeout, Duration::from_secs(90));
        assert_eq!(c.retries, 1);
        assert_eq!(c.retry_delay, Duration::from_secs(5));
        let [k, g, p] = &c.devices[..] else { panic!() };
        assert_eq!((k.ota_port(), k.api_port), (3232, 6053));
        assert_eq!(k.expected_chip(), Some(Chip::Esp32C3));
        assert_eq!(g.ota_port(), 8266);
        assert_eq!(g.expected_chip(), Some(Chip::Esp8266));
        assert_eq!(
            (p.platform, p.ota_port(), p.api_port),
            (EsphomePlatform::Rp2040, 3000, 0)
        );
        assert_eq!(p.method, Method::WebServer);
        assert_eq!(p.web.as_ref().unwrap().port, 8080);
        assert_eq!(c.tags()["kitchen-plug"], vec!["kitchen", "plugs"]);

        let secrets = c.resolve(Some(dir.path())).expect("resolves");
        assert!(secrets[0].password.is_some());
        assert!(secrets[0].ota_key.is_some() && secrets[0].ota_key_from_api);
        assert_eq!(secrets[0].api_key, Some(NoiseKey::new([0x42; 32])));
        assert!(secrets[1].password.is_some() && secrets[1].ota_key.is_none());
        assert_eq!(secrets[2].web_password.as_ref().unwrap().expose(), "pw");
        // Nothing secret in the Debug output of the config or the secrets.
        let shown = format!("{c:?} {secrets:?}");
        for secret in ["hunter2", "s3cret", KEY_B64, "\"pw\""] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn default_ports_by_platform() {
        let ports: Vec<_> = EsphomePlatform::ALL
            .iter()
            .map(|p| (p.name(), p.default_port()))
            .collect();
        assert_eq!(
            ports,
            [
                ("esp32", 3232),
                ("esp8266", 8266),
                ("rp2040", 2040),
                ("bk72xx", 8892),
                ("rtl87xx", 8892),
                ("ln882x", 8820),
                ("host", 8082)
            ]
        );
    }

    #[test]
    fn refusals_name_the_device_and_never_the_secret() {
        let bad = |d: EsphomeDeviceConfig| {
            EsphomeConfig {
                devices: vec![d],
                ..EsphomeConfig::default()
            }
            .resolve(None)
            .unwrap_err()
        };
        let base = || EsphomeDeviceConfig::new("plug", "10.0.0.2", EsphomePlatform::Esp32);
        let e = bad(EsphomeDeviceConfig {
            noise_key: Some(Secret::new("not-a-key-hunter2")),
            ..base()
        });
        assert_eq!(
            e,
            EsphomeConfigError::BadKey {
                device: "plug".into(),
                field: "noise_key"
            }
        );
        assert!(!e.to_string().contains("hunter2"));
        let e = bad(EsphomeDeviceConfig {
            password: Some(Secret::new("a")),
            password_file: Some("/x".into()),
            ..base()
        });
        assert!(
            e.to_string().contains("either password or password_file"),
            "{e}"
        );
        let e = bad(EsphomeDeviceConfig {
            password_file: Some("/nonexistent/pw".into()),
            ..base()
        });
        assert!(e.to_string().contains("/nonexistent/pw"), "{e}");
        let e = bad(EsphomeDeviceConfig {
            chip: Some(Chip::Esp8266),
            ..base()
        });
        assert!(
            e.to_string().contains("does not belong to platform esp32"),
            "{e}"
        );
        let e = bad(EsphomeDeviceConfig {
            web: Some(WebServerConfig {
                username: Some("admin".into()),
                ..WebServerConfig::default()
            }),
            ..base()
        });
        assert_eq!(e, EsphomeConfigError::HalfAuth("plug".into()));
        let e = EsphomeConfig {
            devices: vec![base(), base()],
            ..EsphomeConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e, EsphomeConfigError::DuplicateName("plug".into()));
        let err = toml::from_str::<Root>(
            "[esphome]\n[[esphome.device]]\nname='a'\nhost='h'\nplatform='esp33'\n",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("unknown platform"), "{err}");
        let err = toml::from_str::<Root>("[esphome]\nreboot_timeout = 'soon'\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}

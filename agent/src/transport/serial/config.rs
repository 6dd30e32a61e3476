//! Configuration of the serial transport: one entry per serial port.
//!
//! What it does: the serde shapes of the `[serial]` section (TOML or JSON), with chips by
//! esptool or human name (`esp32c3`, `ESP32-C3`), flash sizes as bytes or `"4MB"`, offsets as
//! integers (TOML `0x10000`) or `"0x10000"`, reset modes `classic`, `usb-jtag`, `no-reset`; and
//! a check that names and ports are unique.
//!
//! What it does not do: open ports or look for them (that is the transport's inventory).
//!
//! ```toml
//! [serial]
//! [[serial.port]]
//! name = "kitchen-plug"          # device id serial-kitchen-plug
//! port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102-if00-port0"
//! chip = "esp32"                 # expected chip; images for others are refused
//! flash_size = "4MB"
//! baud = 460800                  # optional: switch to this after connecting at 115200
//! reset = "classic"              # classic | usb-jtag | no-reset
//! app_offset = 0x10000           # where application images go (factory images go to 0x0)
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use ota_devproto::serial::{Chip, ResetMode};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Default offset of an application image: the `factory`/`ota_0` partition of the ESP-IDF and
/// ESPHome partition tables.
pub const DEFAULT_APP_OFFSET: u32 = 0x10000;

/// The serial transport's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Instance name reported as the devices' network (`serial`).
    #[serde(default = "default_instance")]
    pub instance: String,
    /// The ports, one device each.
    #[serde(default, rename = "port")]
    pub ports: Vec<SerialPortConfig>,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            instance: default_instance(),
            ports: Vec::new(),
        }
    }
}

fn default_instance() -> String {
    "serial".into()
}

/// One ESP chip on one serial port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// Short name; the device's local id is `serial-<name>`.
    pub name: String,
    /// The port: `/dev/ttyUSB0`, preferably a stable `/dev/serial/by-id/...` link.
    pub port: PathBuf,
    /// The chip expected on the port. Images for another chip are refused before connecting,
    /// and a different detected chip before anything is written.
    #[serde(default, deserialize_with = "de_chip")]
    pub chip: Option<Chip>,
    /// Flash size in bytes (`4194304` or `"4MB"`). Images that do not fit are refused.
    #[serde(default, deserialize_with = "de_size")]
    pub flash_size: Option<u32>,
    /// A faster baud rate to switch to after connecting at 115200 (e.g. 460800, 921600).
    #[serde(default)]
    pub baud: Option<u32>,
    /// How the chip is put into its bootloader and reset afterwards.
    #[serde(default, deserialize_with = "de_reset")]
    pub reset: ResetMode,
    /// Where application images are written. Default 0x10000 (0x0 on the ESP8266, whose
    /// application starts the flash). Factory images always go to 0x0.
    #[serde(default, deserialize_with = "de_offset")]
    pub app_offset: Option<u32>,
    /// Send images compressed (the ROM inflates them) when the chip's ROM can.
    #[serde(default = "yes")]
    pub compress: bool,
}

fn yes() -> bool {
    true
}

impl SerialPortConfig {
    /// A port with defaults for everything but its name and path.
    pub fn new(name: impl Into<String>, port: impl Into<PathBuf>) -> Self {
        SerialPortConfig {
            name: name.into(),
            port: port.into(),
            chip: None,
            flash_size: None,
            baud: None,
            reset: ResetMode::Classic,
            app_offset: None,
            compress: true,
        }
    }

    /// The device's local id: `serial-<name>`.
    pub fn local_id(&self) -> String {
        format!("serial-{}", self.name)
    }

    /// Where an application image for `chip` goes.
    pub fn app_offset_for(&self, chip: Chip) -> u32 {
        self.app_offset.unwrap_or(if chip == Chip::Esp8266 {
            0
        } else {
            DEFAULT_APP_OFFSET
        })
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialConfigError {
    /// Two ports share a name.
    #[error("serial port name {0:?} is used twice")]
    DuplicateName(String),
    /// Two entries name the same port.
    #[error("serial port {0} is configured twice")]
    DuplicatePort(String),
    /// A name that cannot be part of a device id.
    #[error("serial port name {0:?} must be non-empty and contain no whitespace")]
    BadName(String),
    /// An application offset that is not sector aligned.
    #[error("app_offset 0x{offset:X} of serial port {name:?} is not a multiple of 4 KiB")]
    BadOffset {
        /// The port's name.
        name: String,
        /// The offset.
        offset: u32,
    },
}

impl SerialConfig {
    /// Checks names, ports and offsets; reports the first problem.
    pub fn validate(&self) -> Result<(), SerialConfigError> {
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        for p in &self.ports {
            if p.name.is_empty() || p.name.chars().any(char::is_whitespace) {
                return Err(SerialConfigError::BadName(p.name.clone()));
            }
            if !names.insert(p.name.as_str()) {
                return Err(SerialConfigError::DuplicateName(p.name.clone()));
            }
            if !ports.insert(p.port.as_path()) {
                return Err(SerialConfigError::DuplicatePort(
                    p.port.display().to_string(),
                ));
            }
            if let Some(offset) = p.app_offset
                && !offset.is_multiple_of(0x1000)
            {
                return Err(SerialConfigError::BadOffset {
                    name: p.name.clone(),
                    offset,
                });
            }
        }
        Ok(())
    }
}

fn de_chip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Chip>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(de::Error::custom)
}

fn de_reset<'de, D: Deserializer<'de>>(d: D) -> Result<ResetMode, D::Error> {
    let s = String::deserialize(d)?;
    [ResetMode::Classic, ResetMode::UsbJtag, ResetMode::NoReset]
        .into_iter()
        .find(|m| m.name() == s.to_ascii_lowercase().replace('_', "-"))
        .ok_or_else(|| {
            de::Error::custom(format!(
                "unknown reset mode {s:?}: expected classic, usb-jtag or no-reset"
            ))
        })
}

/// Parses `4194304`, `"4MB"`, `"4M"`, `"512KB"`, `"512K"` (binary units).
pub fn parse_size(s: &str) -> Option<u32> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("MB").or_else(|| t.strip_suffix('M')) {
        (n, 1u64 << 20)
    } else if let Some(n) = t.strip_suffix("KB").or_else(|| t.strip_suffix('K')) {
        (n, 1 << 10)
    } else {
        (t.strip_suffix('B').unwrap_or(&t), 1)
    };
    let v = parse_int(num.trim())?.checked_mul(mult)?;
    u32::try_from(v).ok()
}

/// Parses a decimal or `0x` hexadecimal integer.
fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

struct IntOrString {
    what: &'static str,
    parse: fn(&str) -> Option<u32>,
}

impl<'de> Visitor<'de> for IntOrString {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large for {}", self.what)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| E::custom(format!("{v} is not {}", self.what)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        (self.parse)(v).ok_or_else(|| E::custom(format!("{v:?} is not {}", self.what)))
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    d.deserialize_any(IntOrString {
        what: "a flash size in bytes or like \"4MB\"",
        parse: parse_size,
    })
    .map(Some)
}

fn de_offset<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    d.deserialize_any(IntOrString {
        what: "a flash offset like 0x10000",
        parse: |s| parse_int(s.trim()).and_then(|v| u32::try_from(v).ok()),
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_example_parses() {
        #[derive(Deserialize)]
        struct Root {
            serial: SerialConfig,
        }
        let root: Root = toml::from_str(
            r#"
            [serial]
            [[serial.port]]
            name = "kitchen-plug"
            port = "/dev/ttyUSB0"
            chip = "ESP32-C3"
            flash_size = "4MB"
            baud = 460800
            reset = "usb-jtag"
            app_offset = 0x20000

            [[serial.port]]
            name = "garage"
            port = "/dev/ttyUSB1"
            flash_size = 1048576
            reset = "no-reset"
            compress = false
            "#,
        )
        .expect("parses");
        let c = root.serial;
        assert_eq!(c.instance, "serial");
        assert_eq!(c.ports.len(), 2);
        let p = &c.ports[0];
        assert_eq!(p.local_id(), "serial-kitchen-plug");
        assert_eq!(p.chip, Some(Chip::Esp32C3));
        assert_eq!(p.flash_size, Some(4 << 20));
        assert_eq!(p.baud, Some(460_800));
        assert_eq!(p.reset, ResetMode::UsbJtag);
        assert_eq!(p.app_offset_for(Chip::Esp32C3), 0x20000);
        assert!(p.compress);
        let g = &c.ports[1];
        assert_eq!(g.chip, None);
        assert_eq!(g.flash_size, Some(1 << 20));
        assert_eq!(g.reset, ResetMode::NoReset);
        assert_eq!(g.app_offset_for(Chip::Esp32), 0x10000);
        assert_eq!(g.app_offset_for(Chip::Esp8266), 0);
        assert!(!g.compress);
        c.validate().expect("valid");
    }

    #[test]
    fn json_and_defaults() {
        let p: SerialPortConfig = serde_json::from_str(
            r#"{"name": "a", "port": "/dev/ttyACM0", "app_offset": "0x10000", "flash_size": "512KB"}"#,
        )
        .expect("parses");
        assert_eq!(p.reset, ResetMode::Classic);
        assert_eq!(p.app_offset, Some(0x10000));
        assert_eq!(p.flash_size, Some(512 << 10));
        assert_eq!(
            p,
            SerialPortConfig {
                app_offset: Some(0x10000),
                flash_size: Some(512 << 10),
                ..SerialPortConfig::new("a", "/dev/ttyACM0")
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_reasons() {
        let err = serde_json::from_str::<SerialPortConfig>(
            r#"{"name": "a", "port": "/dev/x", "chip": "esp33"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown chip"), "{err}");
        let err = serde_json::from_str::<SerialPortConfig>(
            r#"{"name": "a", "port": "/dev/x", "reset": "dtr"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("classic, usb-jtag or no-reset"),
            "{err}"
        );
        let err = serde_json::from_str::<SerialPortConfig>(
            r#"{"name": "a", "port": "/dev/x", "flash_size": "lots"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("flash size"), "{err}");
        let err = serde_json::from_str::<SerialPortConfig>(
            r#"{"name": "a", "port": "/dev/x", "speed": 9600}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation() {
        let mut c = SerialConfig {
            ports: vec![
                SerialPortConfig::new("a", "/dev/ttyUSB0"),
                SerialPortConfig::new("a", "/dev/ttyUSB1"),
            ],
            ..SerialConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(SerialConfigError::DuplicateName("a".into()))
        );
        c.ports[1].name = "b".into();
        c.ports[1].port = "/dev/ttyUSB0".into();
        assert!(matches!(
            c.validate(),
            Err(SerialConfigError::DuplicatePort(_))
        ));
        c.ports[1].port = "/dev/ttyUSB1".into();
        c.ports[1].app_offset = Some(0x10010);
        assert!(matches!(
            c.validate(),
            Err(SerialConfigError::BadOffset { .. })
        ));
        c.ports[1].app_offset = None;
        c.ports[1].name = "two words".into();
        assert!(matches!(c.validate(), Err(SerialConfigError::BadName(_))));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MB"), Some(4 << 20));
        assert_eq!(parse_size("16m"), Some(16 << 20));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("0x400000"), Some(4 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("8GB"), None);
        assert_eq!(parse_size("4096MB"), None);
    }
}

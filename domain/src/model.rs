//! Value types shared by events, projections and planning.
//!
//! These types are stored inside events (see [`crate::events`]), so they follow the same rule:
//! fields are never renamed, reordered or removed; a change means a new event schema version
//! with an upcaster. They derive `Serialize` for that reason only.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How a site reaches a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transport {
    /// Zigbee through a zigbee2mqtt instance over MQTT.
    Zigbee2Mqtt,
    /// ESPHome native network OTA.
    Esphome,
    /// ESP chip on a serial port.
    Serial,
}

impl Transport {
    /// Lowercase name used in tables, selectors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zigbee2Mqtt => "zigbee2mqtt",
            Self::Esphome => "esphome",
            Self::Serial => "serial",
        }
    }

    /// Parses the lowercase name (also accepts `zigbee` and `z2m`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "zigbee2mqtt" | "zigbee" | "z2m" => Some(Self::Zigbee2Mqtt),
            "esphome" => Some(Self::Esphome),
            "serial" => Some(Self::Serial),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a device is powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PowerSource {
    /// Not known.
    #[default]
    Unknown,
    /// Mains or DC.
    Mains,
    /// Battery; possibly sleepy.
    Battery,
}

/// A signal reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// Zigbee link quality, 0–255.
    LinkQuality(u8),
    /// Wi-Fi RSSI in dBm.
    RssiDbm(i16),
}

/// A firmware version as a device reports it (like zigbee2mqtt's `from`/`to`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Human version string.
    pub version: String,
    /// Zigbee OTA file version.
    pub file_version: Option<u32>,
    /// Zigbee genBasic swBuildId.
    pub software_build_id: Option<String>,
    /// Zigbee genBasic dateCode.
    pub date_code: Option<String>,
}

/// What a firmware file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FirmwareFormat {
    /// Zigbee OTA upgrade file.
    ZigbeeOta,
    /// ESP application image (network OTA or serial at the app offset).
    EspApp,
    /// Merged ESP factory image (serial at 0x0 only).
    EspFactory,
}

impl FirmwareFormat {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ZigbeeOta => "zigbee-ota",
            Self::EspApp => "esp-app",
            Self::EspFactory => "esp-factory",
        }
    }

    /// Transports that can install this format.
    pub fn fits_transport(self, transport: Transport) -> bool {
        matches!(
            (self, transport),
            (Self::ZigbeeOta, Transport::Zigbee2Mqtt)
                | (Self::EspApp, Transport::Esphome)
                | (Self::EspApp, Transport::Serial)
                | (Self::EspFactory, Transport::Serial)
        )
    }
}

/// Facts parsed from a Zigbee OTA upgrade file header.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ZigbeeFacts {
    /// Manufacturer code.
    pub manufacturer_code: u16,
    /// Image type.
    pub image_type: u16,
    /// File version.
    pub file_version: u32,
    /// Header version (0x0100).
    pub header_version: u16,
    /// Header length.
    pub header_length: u16,
    /// Header field control.
    pub field_control: u16,
    /// Zigbee stack version.
    pub stack_version: u16,
    /// Header string without NUL padding.
    pub header_string: String,
    /// Total image size (header plus sub-elements).
    pub total_image_size: u32,
    /// Security credential version, if present.
    pub security_credential_version: Option<u8>,
    /// Upgrade file destination, if present.
    pub destination: Option<u64>,
    /// Minimum hardware version, if present.
    pub min_hardware_version: Option<u16>,
    /// Maximum hardware version, if present.
    pub max_hardware_version: Option<u16>,
    /// Bytes before the magic.
    pub prefix_length: u32,
    /// Bytes after the image proper.
    pub trailing_length: u32,
    /// Sub-element tags in file order.
    pub sub_element_tags: Vec<u16>,
}

/// Facts parsed from an ESP image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EspFacts {
    /// Chip name (`esp32`, `esp32c3`, `esp8266`, ...).
    pub chip: String,
    /// Extended-header chip id (ESP32 family).
    pub chip_id: Option<u16>,
    /// App description version.
    pub app_version: String,
    /// App description project name.
    pub project_name: String,
    /// ESP-IDF version.
    pub idf_version: String,
    /// Build date.
    pub build_date: String,
    /// Build time.
    pub build_time: String,
    /// Secure version.
    pub secure_version: u32,
    /// Number of segments.
    pub segment_count: u8,
    /// Flash mode name.
    pub flash_mode: String,
    /// Flash size name.
    pub flash_size: String,
    /// Flash frequency name.
    pub flash_freq: String,
    /// SHA256 appended.
    pub hash_appended: bool,
    /// Application offset inside a factory image.
    pub app_offset: Option<u32>,
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Actor {
    /// Token name, `agent:<site>`, or `otad`.
    pub name: String,
    /// viewer, operator, admin, agent, system.
    pub role: String,
}

impl Actor {
    /// The server itself (scheduler decisions, timeouts).
    pub fn system() -> Self {
        Self {
            name: "otad".into(),
            role: "system".into(),
        }
    }

    /// A site's agent.
    pub fn agent(site_id: &str) -> Self {
        Self {
            name: format!("agent:{site_id}"),
            role: "agent".into(),
        }
    }

    /// The form stored in the event envelope: `name (role)`.
    pub fn label(&self) -> String {
        if self.role.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.role)
        }
    }

    /// The actor of an envelope label (the inverse of [`Actor::label`]).
    pub fn from_label(label: &str) -> Self {
        match label.rsplit_once(" (") {
            Some((name, role)) if role.ends_with(')') => Self {
                name: name.to_string(),
                role: role.trim_end_matches(')').to_string(),
            },
            _ => Self {
                name: label.to_string(),
                role: String::new(),
            },
        }
    }
}

/// What a site reported about one device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Transport (`None` never happens for agent reports; kept optional for forward safety).
    pub transport: Option<Transport>,
    /// Transport instance name.
    pub network: String,
    /// Human name.
    pub name: String,
    /// Model id.
    pub model: String,
    /// Vendor.
    pub vendor: String,
    /// Zigbee manufacturer code.
    pub manufacturer_code: Option<u16>,
    /// Zigbee image type.
    pub image_type: Option<u16>,
    /// ESP chip.
    pub chip: String,
    /// ESPHome platform.
    pub platform: String,
    /// Current version.
    pub current: VersionInfo,
    /// Power source.
    pub power_source: PowerSource,
    /// Battery percent.
    pub battery_percent: Option<u8>,
    /// Signal.
    pub signal: Option<Signal>,
    /// Reachable from the site now.
    pub reachable: bool,
    /// Supports OTA at all.
    pub supports_ota: bool,
    /// Hardware version.
    pub hardware_version: Option<u16>,
    /// zigbee2mqtt `update.state`, lowercase, if any.
    pub z2m_state: String,
    /// Tags from the site's configuration.
    pub tags: Vec<String>,
}

/// Where an agent report came from: used to apply each report at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSource {
    /// Agent installation id.
    pub agent_id: String,
    /// The agent's journal sequence number of the report.
    pub seq: u64,
}

/// A transport instance at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportInstance {
    /// Kind.
    pub kind: Transport,
    /// Instance name.
    pub name: String,
    /// Devices it has.
    pub device_count: u32,
    /// Its own link is up.
    pub connected: bool,
}

/// Labels on firmware.
pub type Labels = BTreeMap<String, String>;

/// The id of a device: `<site>/<local>`.
pub fn device_id(site_id: &str, local_id: &str) -> String {
    format!("{site_id}/{local_id}")
}

/// Splits a device id into site and local id.
pub fn split_device_id(id: &str) -> Option<(&str, &str)> {
    let (site, local) = id.split_once('/')?;
    (!site.is_empty() && !local.is_empty()).then_some((site, local))
}

/// Compares two version strings the way operators expect: Zigbee file versions numerically
/// (decimal or `0x` hex), dotted versions component by component numerically, falling back to
/// text comparison for non-numeric parts.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn as_int(s: &str) -> Option<u64> {
        let s = s.trim();
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            u64::from_str_radix(hex, 16).ok()
        } else {
            s.parse().ok()
        }
    }
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x.cmp(&y);
    }
    let trim_v = |s: &str| s.trim().trim_start_matches(['v', 'V']).to_string();
    let (a, b) = (trim_v(a), trim_v(b));
    let mut pa = a.split(['.', '-', '+', '_']);
    let mut pb = b.split(['.', '-', '+', '_']);
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Greater);
        assert_eq!(compare_versions("2026.11.1", "2026.11.1"), Equal);
        assert_eq!(compare_versions("v1.2", "1.2.1"), Less);
        assert_eq!(compare_versions("0x23093631", "587806257"), Equal);
        assert_eq!(compare_versions("0x23093630", "587806257"), Less);
        assert_eq!(compare_versions("587806258", "0x23093631"), Greater);
        assert_eq!(compare_versions("1.2.0-beta", "1.2.0-rc"), Less);
    }

    #[test]
    fn device_ids_round_trip() {
        let id = device_id("home", "0x000b57fffec6a5b2");
        assert_eq!(split_device_id(&id), Some(("home", "0x000b57fffec6a5b2")));
        assert_eq!(split_device_id("nosite"), None);
        assert_eq!(split_device_id("/x"), None);
    }
}

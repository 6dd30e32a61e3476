//! `bridge/devices`, `bridge/state` and `bridge/info`: parsing (agent) and building (simulator).
//!
//! What it does: read each device's IEEE address, friendly name, type (Coordinator, Router,
//! EndDevice), power source, model id, manufacturer, software build id, date code, manufacturer
//! code when present, and `definition.{model,vendor,description,supports_ota}`; build the same
//! list with sorted keys; the bridge's online state (`{"state":"online"}` or legacy `online`)
//! and version from `bridge/info`.
//! What it does not do: keep inventory over time (the agent's transport does).

use serde_json::{Map, Value, json};

use crate::z2m::Z2mVersion;
use crate::z2m::json::stable_stringify;

/// A device's Zigbee logical type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceType {
    /// The coordinator (the adapter).
    Coordinator,
    /// A router: mains powered, always listening.
    Router,
    /// An end device: may sleep.
    EndDevice,
    /// A Green Power device.
    GreenPower,
    /// Missing or unknown.
    #[default]
    Unknown,
}

impl DeviceType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "Coordinator",
            Self::Router => "Router",
            Self::EndDevice => "EndDevice",
            Self::GreenPower => "GreenPower",
            Self::Unknown => "Unknown",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "Coordinator" => Self::Coordinator,
            "Router" => Self::Router,
            "EndDevice" => Self::EndDevice,
            "GreenPower" => Self::GreenPower,
            _ => Self::Unknown,
        }
    }
}

/// `definition` of a supported device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Definition {
    /// `model` (zigbee2mqtt's model name, e.g. `LED1545G12`).
    pub model: String,
    /// `vendor`.
    pub vendor: String,
    /// `description`.
    pub description: String,
    /// `supports_ota` (`!!definition.ota`).
    pub supports_ota: bool,
}

/// One entry of `bridge/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeDevice {
    /// `ieee_address`, `0x…`.
    pub ieee_address: String,
    /// `friendly_name`.
    pub friendly_name: String,
    /// `type`.
    pub device_type: DeviceType,
    /// `network_address`.
    pub network_address: Option<u16>,
    /// `power_source` (`Mains (single phase)`, `Battery`, `DC Source`, …).
    pub power_source: Option<String>,
    /// `model_id` (the device's genBasic modelId).
    pub model_id: Option<String>,
    /// `manufacturer` (genBasic manufacturerName).
    pub manufacturer: Option<String>,
    /// `software_build_id`.
    pub software_build_id: Option<String>,
    /// `date_code`.
    pub date_code: Option<String>,
    /// `manufacturer_code`, when the bridge publishes it (zigbee2mqtt does not by default).
    pub manufacturer_code: Option<u16>,
    /// `definition`, for supported devices.
    pub definition: Option<Definition>,
    /// Whether an endpoint lists `genOta` among its output clusters; `None` when the entry has
    /// no `endpoints`.
    pub ota_cluster: Option<bool>,
    /// `supported`.
    pub supported: bool,
    /// `disabled`.
    pub disabled: bool,
    /// `interview_completed`.
    pub interview_completed: bool,
}

/// Whether a power source string means battery.
pub fn is_battery_power(power_source: &str) -> bool {
    power_source.to_ascii_lowercase().contains("battery")
}

impl BridgeDevice {
    /// Powered by a battery.
    pub fn is_battery(&self) -> bool {
        self.power_source.as_deref().is_some_and(is_battery_power)
    }

    /// Powered by mains or DC.
    pub fn is_mains(&self) -> bool {
        self.power_source.as_deref().is_some_and(|p| {
            let p = p.to_ascii_lowercase();
            p.contains("mains") || p.contains("dc")
        })
    }

    /// A sleepy device: an end device on battery. It only listens when it wakes up, so an
    /// update must be scheduled for its next wake-up.
    pub fn is_sleepy(&self) -> bool {
        self.device_type == DeviceType::EndDevice && self.is_battery()
    }

    /// zigbee2mqtt can update it from its own index (`definition.supports_ota`).
    pub fn supports_ota(&self) -> bool {
        self.definition.as_ref().is_some_and(|d| d.supports_ota)
    }

    /// zigbee2mqtt ≥ 2.8 can update it with a given image: its definition supports OTA, or
    /// it has an OTA client cluster (or its endpoints are not known).
    pub fn can_take_image(&self) -> bool {
        self.supports_ota() || self.ota_cluster != Some(false)
    }

    fn from_value(v: &Value) -> Option<Self> {
        let o = v.as_object()?;
        let s = |k: &str| -> Option<String> {
            match o.get(k)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let definition = o.get("definition").and_then(Value::as_object).map(|d| {
            let ds = |k: &str| {
                d.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Definition {
                model: ds("model"),
                vendor: ds("vendor"),
                description: ds("description"),
                supports_ota: d
                    .get("supports_ota")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        });
        let ota_cluster = o.get("endpoints").and_then(Value::as_object).map(|eps| {
            eps.values().any(|ep| {
                ep.pointer("/clusters/output")
                    .and_then(Value::as_array)
                    .is_some_and(|out| out.iter().any(|c| c.as_str() == Some("genOta")))
            })
        });
        let u16_of = |k: &str| {
            o.get(k)
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
        };
        Some(Self {
            ieee_address: s("ieee_address")?,
            friendly_name: s("friendly_name").unwrap_or_default(),
            device_type: o
                .get("type")
                .and_then(Value::as_str)
                .map(DeviceType::parse)
                .unwrap_or_default(),
            network_address: u16_of("network_address"),
            power_source: s("power_source"),
            model_id: s("model_id"),
            manufacturer: s("manufacturer"),
            software_build_id: s("software_build_id"),
            date_code: s("date_code"),
            manufacturer_code: u16_of("manufacturer_code"),
            definition,
            ota_cluster,
            supported: o.get("supported").and_then(Value::as_bool).unwrap_or(false),
            disabled: o.get("disabled").and_then(Value::as_bool).unwrap_or(false),
            interview_completed: o
                .get("interview_completed")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The entry as the simulator publishes it.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        m.insert("date_code".into(), opt(&self.date_code));
        m.insert(
            "definition".into(),
            self.definition.as_ref().map_or(Value::Null, |d| {
                json!({"description": d.description, "model": d.model,
                       "supports_ota": d.supports_ota, "vendor": d.vendor})
            }),
        );
        m.insert("disabled".into(), Value::Bool(self.disabled));
        if let Some(ota) = self.ota_cluster {
            let output: Vec<&str> = if ota { vec!["genOta"] } else { vec![] };
            m.insert(
                "endpoints".into(),
                json!({"1": {"bindings": [], "clusters": {"input": ["genBasic"], "output": output}}}),
            );
        }
        m.insert(
            "friendly_name".into(),
            Value::from(self.friendly_name.as_str()),
        );
        m.insert(
            "ieee_address".into(),
            Value::from(self.ieee_address.as_str()),
        );
        m.insert(
            "interview_completed".into(),
            Value::Bool(self.interview_completed),
        );
        m.insert("interviewing".into(), Value::Bool(false));
        if let Some(code) = self.manufacturer_code {
            m.insert("manufacturer_code".into(), Value::from(code));
        }
        m.insert("manufacturer".into(), opt(&self.manufacturer));
        m.insert("model_id".into(), opt(&self.model_id));
        if let Some(n) = self.network_address {
            m.insert("network_address".into(), Value::from(n));
        }
        if self.device_type != DeviceType::Coordinator || self.power_source.is_some() {
            m.insert("power_source".into(), opt(&self.power_source));
        }
        m.insert("software_build_id".into(), opt(&self.software_build_id));
        m.insert("supported".into(), Value::Bool(self.supported));
        m.insert("type".into(), Value::from(self.device_type.as_str()));
        Value::Object(m)
    }
}

/// Parses `bridge/devices` (a JSON array); entries without an IEEE address are skipped.
pub fn parse_bridge_devices(payload: &[u8]) -> Option<Vec<BridgeDevice>> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(BridgeDevice::from_value)
            .collect(),
    )
}

/// Builds `bridge/devices`.
pub fn bridge_devices_payload(devices: &[BridgeDevice]) -> String {
    stable_stringify(&Value::Array(
        devices.iter().map(BridgeDevice::to_value).collect(),
    ))
}

/// Parses `bridge/state`: `{"state":"online"}` (≥ 1.29) or the legacy bare `online`.
pub fn parse_bridge_state(payload: &[u8]) -> Option<bool> {
    crate::z2m::state::parse_availability(payload)
}

/// Builds `bridge/state`.
pub fn bridge_state_payload(online: bool) -> String {
    stable_stringify(&json!({"state": if online { "online" } else { "offline" }}))
}

/// What the agent needs from `bridge/info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeInfo {
    /// `version`, e.g. `2.14.1`.
    pub version: Option<String>,
}

impl BridgeInfo {
    /// Parses `bridge/info`.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        Some(Self {
            version: v.get("version").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Which generation of the OTA API the version speaks; `None` when unknown or 1.x.
    pub fn api(&self) -> Option<Z2mVersion> {
        let v = self.version.as_deref()?;
        let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
        let (major, minor) = (parts.next()??, parts.next()??);
        match (major, minor) {
            (2, 0..=7) => Some(Z2mVersion::V2_0To2_7),
            (2, _) | (3.., _) => Some(Z2mVersion::V2_8Plus),
            _ => None,
        }
    }

    /// Builds a minimal `bridge/info` for `version`.
    pub fn payload(version: &str) -> String {
        stable_stringify(
            &json!({"version": version, "config": {}, "coordinator": {"type": "simulated"}}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_shaped_devices() {
        let payload = br#"[
          {"ieee_address":"0x00124b0000000000","type":"Coordinator","network_address":0,"friendly_name":"Coordinator","definition":null,"supported":true,"disabled":false,"interview_completed":true},
          {"ieee_address":"0x000b57fffec6a5b2","type":"Router","network_address":40369,"friendly_name":"bulb","power_source":"Mains (single phase)","model_id":"TRADFRI bulb E27 CWS opal 600lm","manufacturer":"IKEA of Sweden","software_build_id":"2.3.093","date_code":"20200101","supported":true,"disabled":false,"interview_completed":true,
           "definition":{"model":"LED1624G9","vendor":"IKEA","description":"TRADFRI bulb","supports_ota":true,"exposes":[]}},
          {"ieee_address":"0x00158d0001a2b3c4","type":"EndDevice","friendly_name":"living/remote","power_source":"Battery","software_build_id":12,"manufacturer_code":4447,
           "endpoints":{"1":{"clusters":{"input":["genBasic"],"output":["genOnOff"]}}},
           "definition":{"model":"WXKG01LM","vendor":"Aqara","description":"switch","supports_ota":false}},
          {"type":"Router"}
        ]"#;
        let d = parse_bridge_devices(payload).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].device_type, DeviceType::Coordinator);
        assert!(d[1].supports_ota() && d[1].is_mains() && !d[1].is_sleepy());
        assert_eq!(d[1].software_build_id.as_deref(), Some("2.3.093"));
        assert_eq!(d[1].definition.as_ref().unwrap().vendor, "IKEA");
        assert_eq!(d[2].friendly_name, "living/remote");
        assert!(d[2].is_sleepy() && !d[2].supports_ota());
        assert_eq!(d[2].ota_cluster, Some(false));
        assert!(!d[2].can_take_image());
        assert_eq!(d[1].ota_cluster, None);
        assert!(d[1].can_take_image());
        assert_eq!(d[2].manufacturer_code, Some(4447));
        assert_eq!(d[2].software_build_id.as_deref(), Some("12"));
        let again = parse_bridge_devices(bridge_devices_payload(&d).as_bytes()).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn bridge_state_and_info() {
        assert_eq!(bridge_state_payload(true), r#"{"state":"online"}"#);
        assert_eq!(parse_bridge_state(b"offline"), Some(false));
        let api = |v: &str| {
            BridgeInfo {
                version: Some(v.into()),
            }
            .api()
        };
        assert_eq!(api("2.14.1"), Some(Z2mVersion::V2_8Plus));
        assert_eq!(api("2.7.2"), Some(Z2mVersion::V2_0To2_7));
        assert_eq!(api("1.42.0"), None);
        assert_eq!(
            BridgeInfo::parse(BridgeInfo::payload("2.8.0").as_bytes())
                .unwrap()
                .api(),
            Some(Z2mVersion::V2_8Plus)
        );
    }
}

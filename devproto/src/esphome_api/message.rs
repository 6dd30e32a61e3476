//! The API messages the agent and the simulator exchange, with ESPHome's message type ids and
//! field numbers (`api.proto`, as generated into `api_pb2.cpp` of ESPHome 2026.10):
//!
//! | id | message | fields |
//! |---|---|---|
//! | 1 | `HelloRequest` | 1 `client_info`, 2 `api_version_major`, 3 `api_version_minor` |
//! | 2 | `HelloResponse` | 1 `api_version_major`, 2 `api_version_minor`, 3 `server_info`, 4 `name` |
//! | 5 | `DisconnectRequest` | 1 `reason` (2026) |
//! | 6 | `DisconnectResponse` | — |
//! | 7 / 8 | `PingRequest` / `PingResponse` | — |
//! | 9 | `DeviceInfoRequest` | — |
//! | 10 | `DeviceInfoResponse` | 1 `uses_password` (before 2026.1), 2 `name`, 3 `mac_address`, 4 `esphome_version`, 5 `compilation_time`, 6 `model`, 7 `has_deep_sleep`, 8 `project_name`, 9 `project_version`, 10 `webserver_port`, 12 `manufacturer`, 13 `friendly_name`, 16 `suggested_area`, 19 `api_encryption_supported` |
//! | 11 | `ListEntitiesRequest` | — |
//! | 16 | `ListEntitiesSensorResponse` | 1 `object_id`, 2 `key` (fixed32), 3 `name`, 6 `unit_of_measurement`, 7 `accuracy_decimals`, 9 `device_class`, 10 `state_class`, 13 `entity_category` |
//! | 19 | `ListEntitiesDoneResponse` | — |
//! | 20 | `SubscribeStatesRequest` | — |
//! | 25 | `SensorStateResponse` | 1 `key` (fixed32), 2 `state` (float), 3 `missing_state` |
//!
//! The sensor messages are there for one sensor: the device's `uptime` (ESPHome's `uptime`
//! sensor platform: seconds, device class `duration`), which the agent reads during an update's
//! health window to see a reboot.//!
//! The payloads are `#[derive(prost::Message)]` structs. Presence follows ESPHome's encoder, so
//! our bytes are ESPHome's: the strings ESPHome writes even when empty (`encode_string(.., true)`:
//! `HelloResponse`'s and most of `DeviceInfoResponse`'s) are `required` fields, which prost
//! always writes; every other field is proto3 (written only when not 0, false or empty). ESPHome
//! writes `project_name`/`project_version` only with a project; here an empty `project_name`
//! means none, so `project_version` is then left out too (a project with an empty version is
//! sent without field 9, which every decoder reads as the same empty string).
//!
//! Decoding is prost's: unknown fields (and groups) are skipped, repeated scalars keep the last
//! value, varints are truncated to `uint32`; a truncated payload, invalid UTF-8 in a string, or a
//! known field with the wrong wire type is a [`prost::DecodeError`].
//!
//! What it does not do: entities other than sensors, states other than sensor states, logs,
//! services or any other message; a message with another id decodes as [`Message::Other`] and
//! is left to the caller (which ignores it).

use bytes::{Bytes, BytesMut};
use prost::{DecodeError, Message as _};

/// Message type ids.
pub mod msg_type {
    /// `HelloRequest`.
    pub const HELLO_REQUEST: u16 = 1;
    /// `HelloResponse`.
    pub const HELLO_RESPONSE: u16 = 2;
    /// `DisconnectRequest`.
    pub const DISCONNECT_REQUEST: u16 = 5;
    /// `DisconnectResponse`.
    pub const DISCONNECT_RESPONSE: u16 = 6;
    /// `PingRequest`.
    pub const PING_REQUEST: u16 = 7;
    /// `PingResponse`.
    pub const PING_RESPONSE: u16 = 8;
    /// `DeviceInfoRequest`.
    pub const DEVICE_INFO_REQUEST: u16 = 9;
    /// `DeviceInfoResponse`.
    pub const DEVICE_INFO_RESPONSE: u16 = 10;
    /// `ListEntitiesRequest`.
    pub const LIST_ENTITIES_REQUEST: u16 = 11;
    /// `ListEntitiesSensorResponse`.
    pub const LIST_ENTITIES_SENSOR_RESPONSE: u16 = 16;
    /// `ListEntitiesDoneResponse`.
    pub const LIST_ENTITIES_DONE_RESPONSE: u16 = 19;
    /// `SubscribeStatesRequest`.
    pub const SUBSCRIBE_STATES_REQUEST: u16 = 20;
    /// `SensorStateResponse`.
    pub const SENSOR_STATE_RESPONSE: u16 = 25;
}

/// API version ESPHome 2026.10 announces in its `HelloResponse` (and aioesphomeapi in its
/// `HelloRequest`): 1.19.
pub const API_VERSION: (u32, u32) = (1, 19);

/// The first message of a connection, from the client.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HelloRequest {
    /// Who is asking ("ota-agent 0.1.0"); the device only logs it.
    #[prost(string, tag = "1")]
    pub client_info: String,
    /// The client's API major version.
    #[prost(uint32, tag = "2")]
    pub api_version_major: u32,
    /// The client's API minor version.
    #[prost(uint32, tag = "3")]
    pub api_version_minor: u32,
}

/// The device's answer to [`HelloRequest`]; since 2026.1 it also authenticates the connection.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HelloResponse {
    /// The device's API major version (1).
    #[prost(uint32, tag = "1")]
    pub api_version_major: u32,
    /// The device's API minor version.
    #[prost(uint32, tag = "2")]
    pub api_version_minor: u32,
    /// The ESPHome version ("2026.10.0"); older devices sent "ESPHome v… on …".
    #[prost(string, required, tag = "3")]
    pub server_info: String,
    /// The node name.
    #[prost(string, required, tag = "4")]
    pub name: String,
}

/// Either side asks to close the connection.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct DisconnectRequest {
    /// Why (ESPHome 2026 `DisconnectReason`; 0 when unspecified).
    #[prost(uint32, tag = "1")]
    pub reason: u32,
}

/// What the device says about itself.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeviceInfoResponse {
    /// Whether the API has a password (field 1; devices before 2026.1 only).
    #[prost(bool, tag = "1")]
    pub uses_password: bool,
    /// Node name (`esphome: name:`).
    #[prost(string, required, tag = "2")]
    pub name: String,
    /// Wi-Fi or Ethernet MAC, `AC:BC:32:89:0E:A9`.
    #[prost(string, required, tag = "3")]
    pub mac_address: String,
    /// ESPHome version the firmware was built with.
    #[prost(string, required, tag = "4")]
    pub esphome_version: String,
    /// Build time of the firmware.
    #[prost(string, required, tag = "5")]
    pub compilation_time: String,
    /// The board (`esp32dev`, `nodemcuv2`, …).
    #[prost(string, required, tag = "6")]
    pub model: String,
    /// The firmware has deep sleep.
    #[prost(bool, tag = "7")]
    pub has_deep_sleep: bool,
    /// `esphome: project: name:`; empty without a project.
    #[prost(string, tag = "8")]
    pub project_name: String,
    /// `esphome: project: version:`; empty without a project. What the device runs.
    #[prost(string, tag = "9")]
    pub project_version: String,
    /// Port of the `web_server`, 0 without one.
    #[prost(uint32, tag = "10")]
    pub webserver_port: u32,
    /// "Espressif", "Raspberry Pi", "Beken", …
    #[prost(string, required, tag = "12")]
    pub manufacturer: String,
    /// `esphome: friendly_name:`.
    #[prost(string, required, tag = "13")]
    pub friendly_name: String,
    /// `esphome: area:`.
    #[prost(string, tag = "16")]
    pub suggested_area: String,
    /// The firmware can do Noise encryption of the API.
    #[prost(bool, tag = "19")]
    pub api_encryption_supported: bool,
}

/// A sensor the device has (an answer to `ListEntitiesRequest`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ListEntitiesSensorResponse {
    /// `uptime`, `wifi_signal`, ...
    #[prost(string, tag = "1")]
    pub object_id: String,
    /// The key its states carry.
    #[prost(fixed32, tag = "2")]
    pub key: u32,
    /// Its name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `s`, `dBm`, ...
    #[prost(string, tag = "6")]
    pub unit_of_measurement: String,
    /// Decimals shown.
    #[prost(int32, tag = "7")]
    pub accuracy_decimals: i32,
    /// `duration`, `signal_strength`, ...
    #[prost(string, tag = "9")]
    pub device_class: String,
    /// 0 none, 1 measurement, 2 total increasing, 3 total.
    #[prost(uint32, tag = "10")]
    pub state_class: u32,
    /// 0 none, 1 config, 2 diagnostic.
    #[prost(uint32, tag = "13")]
    pub entity_category: u32,
}

impl ListEntitiesSensorResponse {
    /// The device's uptime sensor (ESPHome's `uptime` platform): seconds, named "uptime".
    pub fn is_uptime(&self) -> bool {
        self.unit_of_measurement == "s"
            && (self.object_id.contains("uptime") || self.name.to_lowercase().contains("uptime"))
    }
}

/// A sensor's state (after `SubscribeStatesRequest`, the device sends every state, then changes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SensorStateResponse {
    /// The sensor's key.
    #[prost(fixed32, tag = "1")]
    pub key: u32,
    /// The value.
    #[prost(float, tag = "2")]
    pub state: f32,
    /// The sensor has no value yet.
    #[prost(bool, tag = "3")]
    pub missing_state: bool,
}

/// One API message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Type 1.
    HelloRequest(HelloRequest),
    /// Type 2.
    HelloResponse(HelloResponse),
    /// Type 5.
    DisconnectRequest(DisconnectRequest),
    /// Type 6.
    DisconnectResponse,
    /// Type 7.
    PingRequest,
    /// Type 8.
    PingResponse,
    /// Type 9.
    DeviceInfoRequest,
    /// Type 10.
    DeviceInfoResponse(Box<DeviceInfoResponse>),
    /// Type 11.
    ListEntitiesRequest,
    /// Type 16.
    ListEntitiesSensorResponse(Box<ListEntitiesSensorResponse>),
    /// Type 19.
    ListEntitiesDoneResponse,
    /// Type 20.
    SubscribeStatesRequest,
    /// Type 25.
    SensorStateResponse(SensorStateResponse),
    /// Any other message, undecoded.
    Other {
        /// Its type id.
        msg_type: u16,
        /// Its protobuf payload.
        payload: Bytes,
    },
}

impl Message {
    /// The message type id.
    pub fn msg_type(&self) -> u16 {
        match self {
            Self::HelloRequest(_) => msg_type::HELLO_REQUEST,
            Self::HelloResponse(_) => msg_type::HELLO_RESPONSE,
            Self::DisconnectRequest(_) => msg_type::DISCONNECT_REQUEST,
            Self::DisconnectResponse => msg_type::DISCONNECT_RESPONSE,
            Self::PingRequest => msg_type::PING_REQUEST,
            Self::PingResponse => msg_type::PING_RESPONSE,
            Self::DeviceInfoRequest => msg_type::DEVICE_INFO_REQUEST,
            Self::DeviceInfoResponse(_) => msg_type::DEVICE_INFO_RESPONSE,
            Self::ListEntitiesRequest => msg_type::LIST_ENTITIES_REQUEST,
            Self::ListEntitiesSensorResponse(_) => msg_type::LIST_ENTITIES_SENSOR_RESPONSE,
            Self::ListEntitiesDoneResponse => msg_type::LIST_ENTITIES_DONE_RESPONSE,
            Self::SubscribeStatesRequest => msg_type::SUBSCRIBE_STATES_REQUEST,
            Self::SensorStateResponse(_) => msg_type::SENSOR_STATE_RESPONSE,
            Self::Other { msg_type, .. } => *msg_type,
        }
    }

    /// ESPHome's name of the message, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HelloRequest(_) => "HelloRequest",
            Self::HelloResponse(_) => "HelloResponse",
            Self::DisconnectRequest(_) => "DisconnectRequest",
            Self::DisconnectResponse => "DisconnectResponse",
            Self::PingRequest => "PingRequest",
            Self::PingResponse => "PingResponse",
            Self::DeviceInfoRequest => "DeviceInfoRequest",
            Self::DeviceInfoResponse(_) => "DeviceInfoResponse",
            Self::ListEntitiesRequest => "ListEntitiesRequest",
            Self::ListEntitiesSensorResponse(_) => "ListEntitiesSensorResponse",
            Self::ListEntitiesDoneResponse => "ListEntitiesDoneResponse",
            Self::SubscribeStatesRequest => "SubscribeStatesRequest",
            Self::SensorStateResponse(_) => "SensorStateResponse",
            Self::Other { .. } => "other",
        }
    }

    /// Appends the protobuf payload (not the frame), as ESPHome's encoder writes it (see the
    /// module docs for field presence).
    pub fn encode_payload(&self, dst: &mut BytesMut) {
        match self {
            Self::HelloRequest(m) => put(m, dst),
            Self::HelloResponse(m) => put(m, dst),
            Self::DisconnectRequest(m) => put(m, dst),
            Self::DeviceInfoResponse(m)
                if m.project_name.is_empty() && !m.project_version.is_empty() =>
            {
                // No project: ESPHome writes neither field 8 nor 9.
                let without = DeviceInfoResponse {
                    project_version: String::new(),
                    ..(**m).clone()
                };
                put(&without, dst);
            }
            Self::DeviceInfoResponse(m) => put(m.as_ref(), dst),
            Self::ListEntitiesSensorResponse(m) => put(m.as_ref(), dst),
            Self::SensorStateResponse(m) => put(m, dst),
            Self::Other { payload, .. } => dst.extend_from_slice(payload),
            Self::DisconnectResponse
            | Self::PingRequest
            | Self::PingResponse
            | Self::DeviceInfoRequest
            | Self::ListEntitiesRequest
            | Self::ListEntitiesDoneResponse
            | Self::SubscribeStatesRequest => {}
        }
    }

    /// Decodes a payload of type `msg_type`. Unknown fields are skipped; empty messages ignore
    /// their payload, as protobuf does.
    pub fn decode(msg_type: u16, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match msg_type {
            msg_type::HELLO_REQUEST => Self::HelloRequest(HelloRequest::decode(payload)?),
            msg_type::HELLO_RESPONSE => Self::HelloResponse(HelloResponse::decode(payload)?),
            msg_type::DISCONNECT_REQUEST => {
                Self::DisconnectRequest(DisconnectRequest::decode(payload)?)
            }
            msg_type::DEVICE_INFO_RESPONSE => {
                Self::DeviceInfoResponse(Box::new(DeviceInfoResponse::decode(payload)?))
            }
            msg_type::LIST_ENTITIES_SENSOR_RESPONSE => Self::ListEntitiesSensorResponse(Box::new(
                ListEntitiesSensorResponse::decode(payload)?,
            )),
            msg_type::SENSOR_STATE_RESPONSE => {
                Self::SensorStateResponse(SensorStateResponse::decode(payload)?)
            }
            msg_type::LIST_ENTITIES_REQUEST => Self::ListEntitiesRequest,
            msg_type::LIST_ENTITIES_DONE_RESPONSE => Self::ListEntitiesDoneResponse,
            msg_type::SUBSCRIBE_STATES_REQUEST => Self::SubscribeStatesRequest,
            msg_type::DISCONNECT_RESPONSE => Self::DisconnectResponse,
            msg_type::PING_REQUEST => Self::PingRequest,
            msg_type::PING_RESPONSE => Self::PingResponse,
            msg_type::DEVICE_INFO_REQUEST => Self::DeviceInfoRequest,
            other => Self::Other {
                msg_type: other,
                payload: Bytes::copy_from_slice(payload),
            },
        })
    }

    /// The payload alone, encoded.
    pub fn payload(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode_payload(&mut b);
        b
    }
}

/// Appends one message's fields.
fn put(m: &impl prost::Message, dst: &mut BytesMut) {
    dst.extend_from_slice(&m.encode_to_vec());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn uptime_sensor_and_state_golden_bytes() {
        let sensor = Message::ListEntitiesSensorResponse(Box::new(ListEntitiesSensorResponse {
            object_id: "uptime".into(),
            key: 0x0102_0304,
            name: "Uptime".into(),
            unit_of_measurement: "s".into(),
            accuracy_decimals: 0,
            device_class: "duration".into(),
            state_class: 2,
            entity_category: 2,
        }));
        assert_eq!(
            &sensor.payload()[..],
            &h(concat!(
                "0a 06 757074696d65",     // 1 object_id
                "15 04030201",            // 2 key, fixed32 little-endian
                "1a 06 557074696d65",     // 3 name
                "32 01 73",               // 6 unit "s"
                "4a 08 6475726174696f6e", // 9 device_class
                "50 02",                  // 10 state_class
                "68 02",                  // 13 entity_category
            ))[..]
        );
        let Message::ListEntitiesSensorResponse(back) =
            Message::decode(16, &sensor.payload()).unwrap()
        else {
            panic!()
        };
        assert!(back.is_uptime());
        let state = Message::SensorStateResponse(SensorStateResponse {
            key: 0x0102_0304,
            state: 90.0,
            missing_state: false,
        });
        assert_eq!(&state.payload()[..], &h("0d 04030201 15 0000b442")[..]);
        assert_eq!(Message::decode(25, &state.payload()).unwrap(), state);
        assert_eq!(
            Message::decode(20, &[]).unwrap(),
            Message::SubscribeStatesRequest
        );
        assert_eq!(
            Message::decode(11, &[]).unwrap().name(),
            "ListEntitiesRequest"
        );
    }

    #[test]
    fn hello_request_golden_bytes() {
        let m = Message::HelloRequest(HelloRequest {
            client_info: "ota-agent".into(),
            api_version_major: 1,
            api_version_minor: 19,
        });
        assert_eq!(
            &m.payload()[..],
            &h("0a 09 6f74612d6167656e74  10 01  18 13")[..]
        );
        assert_eq!(Message::decode(1, &m.payload()).unwrap(), m);
    }

    #[test]
    fn device_info_response_decodes_what_esphome_encodes() {
        // As ESPHome 2026.10's encoder writes it for an ESP32 with a project, a web_server on
        // port 80 and Noise support: forced strings, then the flags and numbers that are set.
        let wire = h(concat!(
            "12 07 6b69746368656e",                             // 2 name "kitchen"
            "1a 11 41413a42423a43433a44443a45453a4646",         // 3 mac
            "22 09 323032362e31302e30",                         // 4 esphome_version
            "2a 15 4e6f7620323420323032362c2030383a30303a3030", // 5 compilation_time
            "32 08 6573703332646576",                           // 6 model "esp32dev"
            "42 09 61636d652e706c7567",                         // 8 project_name "acme.plug"
            "4a 05 312e322e33",                                 // 9 project_version "1.2.3"
            "50 50",                                            // 10 webserver_port 80
            "62 09 457370726573736966",                         // 12 manufacturer "Espressif"
            "6a 0c 4b69746368656e20706c7567",                   // 13 friendly_name
            "98 01 01",                                         // 19 api_encryption_supported
            "a0 01 05",                                         // 20: unknown varint, skipped
        ));
        let m = Message::decode(10, &wire).unwrap();
        let Message::DeviceInfoResponse(info) = &m else {
            panic!("{m:?}")
        };
        assert_eq!(info.name, "kitchen");
        assert_eq!(info.mac_address, "AA:BB:CC:DD:EE:FF");
        assert_eq!(info.esphome_version, "2026.10.0");
        assert_eq!(info.compilation_time, "Nov 24 2026, 08:00:00");
        assert_eq!(info.model, "esp32dev");
        assert_eq!(info.project_name, "acme.plug");
        assert_eq!(info.project_version, "1.2.3");
        assert_eq!(info.webserver_port, 80);
        assert_eq!(info.manufacturer, "Espressif");
        assert_eq!(info.friendly_name, "Kitchen plug");
        assert!(info.api_encryption_supported);
        assert!(!info.uses_password && !info.has_deep_sleep);
        // Our encoder writes the same bytes (less the unknown field).
        assert_eq!(&m.payload()[..], &wire[..wire.len() - 3]);
    }

    #[test]
    fn empty_messages_and_others() {
        for (t, m) in [
            (6, Message::DisconnectResponse),
            (7, Message::PingRequest),
            (8, Message::PingResponse),
            (9, Message::DeviceInfoRequest),
        ] {
            assert_eq!(Message::decode(t, &[]).unwrap(), m);
            assert_eq!(m.msg_type(), t);
            assert!(m.payload().is_empty());
        }
        let d = Message::DisconnectRequest(DisconnectRequest { reason: 2 });
        assert_eq!(&d.payload()[..], &[0x08, 0x02]);
        assert_eq!(Message::decode(5, &[0x08, 0x02]).unwrap(), d);
        let o = Message::decode(42, &[1, 2, 3]).unwrap();
        assert_eq!(o.msg_type(), 42);
        assert_eq!(&o.payload()[..], &[1, 2, 3]);
        assert!(Message::decode(10, &[0x12, 0x09, b'a']).is_err());
    }

    #[test]
    fn field_presence_follows_esphome() {
        // Forced strings are written empty; numbers, flags and optional strings are not.
        let hello = Message::HelloResponse(HelloResponse::default());
        assert_eq!(&hello.payload()[..], &h("1a00 2200")[..]);
        let info = DeviceInfoResponse {
            project_version: "1.0".into(),
            ..DeviceInfoResponse::default()
        };
        let forced = h("1200 1a00 2200 2a00 3200 6200 6a00");
        // Without a project name there is no project: the version is not sent either.
        assert_eq!(
            &Message::DeviceInfoResponse(Box::new(info.clone())).payload()[..],
            &forced[..]
        );
        let with_project = Message::DeviceInfoResponse(Box::new(DeviceInfoResponse {
            project_name: "p".into(),
            ..info
        }));
        assert_eq!(
            &with_project.payload()[..],
            &h("1200 1a00 2200 2a00 3200 4201 70 4a03 312e30 6200 6a00")[..]
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        // Truncated field, invalid UTF-8 in a string, a known field with the wrong wire type.
        for bad in ["1205 61", "1201 ff", "1501020304"] {
            assert!(Message::decode(10, &h(bad)).is_err(), "{bad}");
        }
        // Unknown fields of every wire type are skipped; a uint32 keeps the low 32 bits.
        let m = Message::decode(5, &h("08 ffffffff7f 1d01020304 210102030405060708 2a00")).unwrap();
        assert_eq!(
            m,
            Message::DisconnectRequest(DisconnectRequest { reason: u32::MAX })
        );
    }
}

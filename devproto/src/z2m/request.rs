//! OTA request payloads (`lib/types/api.ts`): building them (agent) and parsing them (simulator).
//!
//! What it does: the object form `{"id": …, "transaction": …, "url"|"hex": …}` with a
//! transaction always present when built here, serialized with sorted keys; parsing accepts the
//! object form and the deprecated bare-string form exactly as zigbee2mqtt does (a payload that
//! is not JSON is the id itself; an object without a truthy `id` gets no response at all).
//! What it does not do: choose transactions (see [`crate::z2m::Correlator`]) or fetch URLs.

use serde_json::{Map, Value};

use crate::z2m::json::stable_stringify;

/// Where zigbee2mqtt gets the image for an update or schedule (zigbee2mqtt ≥ 2.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `url`: an http(s) URL or a path; a `*.json` URL is an index, anything else a file.
    Url(String),
    /// `hex`: the whole file as hex, optionally with the file name zigbee2mqtt saves it under.
    Hex {
        /// Hex of the whole file (lowercase when built here).
        data: String,
        /// `file_name`, when given.
        file_name: Option<String>,
    },
}

impl ImageSource {
    /// The `hex` form of `bytes`.
    pub fn hex(bytes: &[u8], file_name: Option<String>) -> Self {
        Self::Hex {
            data: hex::encode(bytes),
            file_name,
        }
    }

    /// The image bytes of a `hex` source; `None` for a URL or invalid hex.
    pub fn decode_hex(&self) -> Option<Vec<u8>> {
        match self {
            Self::Hex { data, .. } => hex::decode(data).ok(),
            Self::Url(_) => None,
        }
    }
}

/// Per-request transfer settings (zigbee2mqtt ≥ 2.8); 0 or absent means the bridge's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataSettings {
    /// `image_block_request_timeout` in ms.
    pub image_block_request_timeout: Option<u64>,
    /// `image_block_response_delay` in ms.
    pub image_block_response_delay: Option<u64>,
    /// `default_maximum_data_size` in bytes.
    pub default_maximum_data_size: Option<u64>,
}

/// An OTA request payload.
#[derive(Debug, Clone, PartialEq)]
pub struct OtaRequest {
    /// Friendly name or IEEE address of the device.
    pub id: String,
    /// Echoed in the response with its JSON type; absent in the bare-string form.
    pub transaction: Option<Value>,
    /// `url` or `hex`, for update and schedule.
    pub image: Option<ImageSource>,
    /// Per-request transfer settings.
    pub data_settings: DataSettings,
    /// The request came in the deprecated bare-string form.
    pub bare: bool,
}

/// Why a request payload gets no answer from zigbee2mqtt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// An object without a truthy `id`: zigbee2mqtt logs `Invalid payload` and publishes
    /// nothing.
    #[error("Invalid payload")]
    InvalidPayload,
}

impl OtaRequest {
    /// An object-form request for `id` with a transaction.
    pub fn new(id: impl Into<String>, transaction: impl Into<Value>) -> Self {
        Self {
            id: id.into(),
            transaction: Some(transaction.into()),
            image: None,
            data_settings: DataSettings::default(),
            bare: false,
        }
    }

    /// With `url`.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.image = Some(ImageSource::Url(url.into()));
        self
    }

    /// With the whole file as `hex`.
    pub fn with_hex(mut self, bytes: &[u8], file_name: Option<String>) -> Self {
        self.image = Some(ImageSource::hex(bytes, file_name));
        self
    }

    /// The payload: always the object form, keys sorted.
    pub fn to_payload(&self) -> String {
        stable_stringify(&self.to_value())
    }

    /// The payload as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.clone()));
        if let Some(t) = &self.transaction {
            m.insert("transaction".into(), t.clone());
        }
        match &self.image {
            Some(ImageSource::Url(url)) => {
                m.insert("url".into(), Value::String(url.clone()));
            }
            Some(ImageSource::Hex { data, file_name }) => {
                let mut h = Map::new();
                h.insert("data".into(), Value::String(data.clone()));
                if let Some(f) = file_name {
                    h.insert("file_name".into(), Value::String(f.clone()));
                }
                m.insert("hex".into(), Value::Object(h));
            }
            None => {}
        }
        let ds = &self.data_settings;
        for (key, v) in [
            (
                "image_block_request_timeout",
                ds.image_block_request_timeout,
            ),
            ("image_block_response_delay", ds.image_block_response_delay),
            ("default_maximum_data_size", ds.default_maximum_data_size),
        ] {
            if let Some(v) = v {
                m.insert(key.into(), Value::from(v));
            }
        }
        Value::Object(m)
    }

    /// Parses a request payload as zigbee2mqtt does (`utils.parseJSON(message, message)`):
    /// a JSON object is the object form, anything else (a JSON string, a number, text that is
    /// not JSON) is the bare id.
    pub fn parse(payload: &[u8]) -> Result<Self, RequestError> {
        let text = String::from_utf8_lossy(payload);
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => return Ok(Self::bare(text.into_owned())),
        };
        let obj = match value {
            Value::Object(obj) => obj,
            Value::String(s) => return Ok(Self::bare(s)),
            other => return Ok(Self::bare(other.to_string())),
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.as_f64() != Some(0.0) => n.to_string(),
            Some(Value::Bool(true)) => "true".to_string(),
            Some(v @ (Value::Object(_) | Value::Array(_))) => v.to_string(),
            _ => return Err(RequestError::InvalidPayload),
        };
        let image = match (obj.get("url"), obj.get("hex")) {
            (Some(Value::String(url)), _) if !url.is_empty() => Some(ImageSource::Url(url.clone())),
            (_, Some(Value::Object(h))) => {
                h.get("data")
                    .and_then(Value::as_str)
                    .map(|d| ImageSource::Hex {
                        data: d.to_string(),
                        file_name: h
                            .get("file_name")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    })
            }
            _ => None,
        };
        let setting = |key: &str| obj.get(key).and_then(Value::as_u64).filter(|v| *v != 0);
        Ok(Self {
            id,
            transaction: obj.get("transaction").cloned(),
            image,
            data_settings: DataSettings {
                image_block_request_timeout: setting("image_block_request_timeout"),
                image_block_response_delay: setting("image_block_response_delay"),
                default_maximum_data_size: setting("default_maximum_data_size"),
            },
            bare: false,
        })
    }

    fn bare(id: String) -> Self {
        Self {
            id,
            transaction: None,
            image: None,
            data_settings: DataSettings::default(),
            bare: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_object_form_with_sorted_keys() {
        let r = OtaRequest::new("0x000b57fffec6a5b2", "t-1");
        assert_eq!(
            r.to_payload(),
            r#"{"id":"0x000b57fffec6a5b2","transaction":"t-1"}"#
        );
        let r = OtaRequest::new("bulb", 7).with_url("https://example.com/myremote.ota");
        assert_eq!(
            r.to_payload(),
            r#"{"id":"bulb","transaction":7,"url":"https://example.com/myremote.ota"}"#
        );
        let r = OtaRequest::new("bulb", "x").with_hex(&[1, 2, 3], Some("my.ota".into()));
        assert_eq!(
            r.to_payload(),
            r#"{"hex":{"data":"010203","file_name":"my.ota"},"id":"bulb","transaction":"x"}"#
        );
    }

    #[test]
    fn parses_object_and_bare_forms() {
        let r = OtaRequest::parse(br#"{"id":"bulb","hex":{"data":"010203"}}"#).unwrap();
        assert_eq!(r.id, "bulb");
        assert_eq!(r.transaction, None);
        assert_eq!(r.image.as_ref().unwrap().decode_hex(), Some(vec![1, 2, 3]));
        assert!(!r.bare);

        let r = OtaRequest::parse(
            br#"{"id":"bulb","transaction":{"a":1},"image_block_request_timeout":200000,"image_block_response_delay":50,"default_maximum_data_size":0}"#,
        )
        .unwrap();
        assert_eq!(r.transaction, Some(json!({"a": 1})));
        assert_eq!(
            r.data_settings,
            DataSettings {
                image_block_request_timeout: Some(200000),
                image_block_response_delay: Some(50),
                default_maximum_data_size: None,
            }
        );

        let r = OtaRequest::parse(b"bulb").unwrap();
        assert!(r.bare);
        assert_eq!((r.id.as_str(), r.transaction), ("bulb", None));
        assert_eq!(OtaRequest::parse(br#""bulb""#).unwrap().id, "bulb");
        assert_eq!(
            OtaRequest::parse(br#"{"transaction":1}"#),
            Err(RequestError::InvalidPayload)
        );
        assert_eq!(
            OtaRequest::parse(br#"{"id":""}"#),
            Err(RequestError::InvalidPayload)
        );
    }

    #[test]
    fn round_trips() {
        let r = OtaRequest::new("bulb", "t").with_hex(&[0xab, 0xcd], None);
        assert_eq!(OtaRequest::parse(r.to_payload().as_bytes()).unwrap(), r);
    }
}

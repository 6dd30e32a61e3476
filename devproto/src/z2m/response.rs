//! OTA response envelopes (`utils.getResponse`) and their correlation to requests.
//!
//! What it does: parse and build `{"data":…,"status":"ok"}` / `{"data":{},"error":…,
//! "status":"error"}` with the `transaction` echoed in its JSON type; typed `data` for check,
//! update, schedule, unschedule and abort in both the 2.8+ and the 2.0–2.7 shapes; a
//! [`Correlator`] that hands out unique transactions and matches responses to requests by
//! transaction (abort errors arrive on `…/update`).
//! What it does not do: wait for responses or time them out (the driver does, with its clock).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::z2m::Z2mVersion;
use crate::z2m::json::stable_stringify;
use crate::z2m::topic::OtaOp;

/// `status` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    /// `"ok"`.
    Ok,
    /// `"error"`.
    Error,
}

/// A response envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// ok or error.
    pub status: ResponseStatus,
    /// `data` (`{}` for errors).
    pub data: Value,
    /// `error`, for errors.
    pub error: Option<String>,
    /// The request's `transaction`, echoed with its JSON type.
    pub transaction: Option<Value>,
}

/// A payload that is not a response envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON, but not the expected shape.
    #[error("unexpected payload: {0}")]
    Shape(&'static str),
}

impl Response {
    /// An ok response.
    pub fn ok(data: Value, transaction: Option<Value>) -> Self {
        Self {
            status: ResponseStatus::Ok,
            data,
            error: None,
            transaction,
        }
    }

    /// An error response with zigbee2mqtt's message.
    pub fn error(message: impl Into<String>, transaction: Option<Value>) -> Self {
        Self {
            status: ResponseStatus::Error,
            data: Value::Object(Map::new()),
            error: Some(message.into()),
            transaction,
        }
    }

    /// Whether the status is ok.
    pub fn is_ok(&self) -> bool {
        self.status == ResponseStatus::Ok
    }

    /// The payload exactly as zigbee2mqtt publishes it (sorted keys, no spaces).
    pub fn to_payload(&self) -> String {
        let mut m = Map::new();
        m.insert("data".into(), self.data.clone());
        if let Some(e) = &self.error {
            m.insert("error".into(), Value::String(e.clone()));
        }
        m.insert(
            "status".into(),
            Value::String(if self.is_ok() { "ok" } else { "error" }.into()),
        );
        if let Some(t) = &self.transaction {
            m.insert("transaction".into(), t.clone());
        }
        stable_stringify(&Value::Object(m))
    }

    /// Parses a response envelope.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let v: Value =
            serde_json::from_slice(payload).map_err(|e| ParseError::Json(e.to_string()))?;
        let Value::Object(mut obj) = v else {
            return Err(ParseError::Shape("response is not an object"));
        };
        let status = match obj.get("status").and_then(Value::as_str) {
            Some("ok") => ResponseStatus::Ok,
            Some("error") => ResponseStatus::Error,
            _ => return Err(ParseError::Shape("status is neither ok nor error")),
        };
        let error = match obj.get("error") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let error = match (status, error) {
            (ResponseStatus::Error, None) => Some(String::new()),
            (_, e) => e,
        };
        Ok(Self {
            status,
            data: obj.remove("data").unwrap_or(Value::Null),
            error,
            transaction: obj.remove("transaction"),
        })
    }
}

/// `from`/`to` of an update response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VersionData {
    /// OTA file version (2.8+).
    pub file_version: Option<u32>,
    /// genBasic `swBuildId`, as read (a string on real devices; any JSON value passes through).
    pub software_build_id: Option<Value>,
    /// genBasic `dateCode`.
    pub date_code: Option<String>,
}

impl VersionData {
    /// The software build id as text.
    pub fn software_build_id_string(&self) -> Option<String> {
        self.software_build_id.as_ref().map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    fn from_value(v: Option<&Value>) -> Option<Self> {
        let obj = v?.as_object()?;
        Some(Self {
            file_version: obj
                .get("file_version")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            software_build_id: obj
                .get("software_build_id")
                .filter(|v| !v.is_null())
                .cloned(),
            date_code: obj
                .get("date_code")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    fn to_value(&self, version: Z2mVersion) -> Value {
        let mut m = Map::new();
        if version == Z2mVersion::V2_8Plus
            && let Some(fv) = self.file_version
        {
            m.insert("file_version".into(), Value::from(fv));
        }
        if let Some(s) = &self.software_build_id {
            m.insert("software_build_id".into(), s.clone());
        }
        if let Some(d) = &self.date_code {
            m.insert("date_code".into(), Value::String(d.clone()));
        }
        Value::Object(m)
    }
}

/// `data` of a check response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckData {
    /// The id as sent.
    pub id: String,
    /// zigbee2mqtt's index has a newer (or, for a downgrade, older) image.
    pub update_available: bool,
    /// The check was a downgrade check (2.8+).
    pub downgrade: Option<bool>,
    /// The matching index entry's URL (2.8+), also when nothing is available.
    pub source: Option<String>,
    /// Its release notes (2.8+).
    pub release_notes: Option<String>,
}

impl CheckData {
    /// Reads the data of an ok check response.
    pub fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        Some(Self {
            id: id_of(obj),
            update_available: obj.get("update_available")?.as_bool()?,
            downgrade: obj.get("downgrade").and_then(Value::as_bool),
            source: obj
                .get("source")
                .and_then(Value::as_str)
                .map(str::to_string),
            release_notes: obj
                .get("release_notes")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The data as zigbee2mqtt `version` publishes it (2.0–2.7: `id` and `update_available`).
    pub fn to_value(&self, version: Z2mVersion) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert(
            "update_available".into(),
            Value::Bool(self.update_available),
        );
        if version == Z2mVersion::V2_8Plus {
            m.insert(
                "downgrade".into(),
                Value::Bool(self.downgrade.unwrap_or(false)),
            );
            if let Some(s) = &self.source {
                m.insert("source".into(), Value::String(s.clone()));
            }
            if let Some(n) = &self.release_notes {
                m.insert("release_notes".into(), Value::String(n.clone()));
            }
        }
        Value::Object(m)
    }
}

/// `data` of an update response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateData {
    /// The id as sent.
    pub id: String,
    /// Before the update (absent in some 2.0–2.7 responses).
    pub from: Option<VersionData>,
    /// After the update.
    pub to: Option<VersionData>,
}

impl UpdateData {
    /// Reads the data of an ok update response.
    pub fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        Some(Self {
            id: id_of(obj),
            from: VersionData::from_value(obj.get("from")),
            to: VersionData::from_value(obj.get("to")),
        })
    }

    /// The data as zigbee2mqtt `version` publishes it (2.0–2.7: no `file_version`).
    pub fn to_value(&self, version: Z2mVersion) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.clone()));
        for (key, vd) in [("from", &self.from), ("to", &self.to)] {
            if let Some(vd) = vd {
                let v = vd.to_value(version);
                if v.as_object().is_some_and(|o| !o.is_empty()) {
                    m.insert(key.into(), v);
                }
            }
        }
        Value::Object(m)
    }
}

/// `data` of a schedule response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScheduleData {
    /// The id as sent.
    pub id: String,
    /// The given URL, or the path the hex file was saved to.
    pub url: Option<String>,
}

impl ScheduleData {
    /// Reads the data of an ok schedule response.
    pub fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        Some(Self {
            id: id_of(obj),
            url: obj.get("url").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// The data as zigbee2mqtt publishes it.
    pub fn to_value(&self) -> Value {
        match &self.url {
            Some(url) => json!({"id": self.id, "url": url}),
            None => json!({"id": self.id}),
        }
    }
}

/// `data` of unschedule and abort responses: `{"id":…}`.
pub fn id_data(id: &str) -> Value {
    json!({ "id": id })
}

fn id_of(obj: &Map<String, Value>) -> String {
    match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// What a transaction was sent for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The operation.
    pub op: OtaOp,
    /// The device id sent.
    pub device: String,
}

/// Hands out unique transactions and matches responses to them.
///
/// Transactions are `<prefix>-<n>` strings; give each connection a prefix nobody else uses
/// (the agent uses a random one) so that responses to other clients are never mistaken for
/// ours. A response matches when its transaction is pending and it arrived on the topic
/// zigbee2mqtt uses for that operation: the operation's own topic, or `…/update` for an abort
/// error.
#[derive(Debug, Clone)]
pub struct Correlator {
    prefix: String,
    next: u64,
    pending: HashMap<String, Pending>,
}

impl Correlator {
    /// A correlator whose transactions start with `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            next: 1,
            pending: HashMap::new(),
        }
    }

    /// Registers a request and returns its fresh transaction.
    pub fn begin(&mut self, op: OtaOp, device: impl Into<String>) -> String {
        let tx = format!("{}-{}", self.prefix, self.next);
        self.next += 1;
        self.pending.insert(
            tx.clone(),
            Pending {
                op,
                device: device.into(),
            },
        );
        tx
    }

    /// If `response`, received on the response topic of `topic_op`, answers a pending
    /// request, removes and returns its transaction and what it was for.
    pub fn correlate(&mut self, topic_op: OtaOp, response: &Response) -> Option<(String, Pending)> {
        let tx = response.transaction.as_ref()?.as_str()?;
        let pending = self.pending.get(tx)?;
        let expected = if response.is_ok() {
            pending.op
        } else {
            pending.op.error_op()
        };
        if expected != topic_op {
            return None;
        }
        self.pending.remove_entry(tx)
    }

    /// Forgets a transaction (its waiter gave up).
    pub fn forget(&mut self, transaction: &str) -> Option<Pending> {
        self.pending.remove(transaction)
    }

    /// Number of requests still waiting for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_byte_for_byte() {
        let data = UpdateData {
            id: "bulb".into(),
            from: Some(VersionData {
                file_version: Some(1),
                software_build_id: Some(json!(11)),
                date_code: Some("20190111".into()),
            }),
            to: Some(VersionData {
                file_version: Some(90),
                software_build_id: Some(json!(12)),
                date_code: Some("20190112".into()),
            }),
        };
        assert_eq!(
            Response::ok(data.to_value(Z2mVersion::V2_8Plus), None).to_payload(),
            r#"{"data":{"from":{"date_code":"20190111","file_version":1,"software_build_id":11},"id":"bulb","to":{"date_code":"20190112","file_version":90,"software_build_id":12}},"status":"ok"}"#
        );
        assert_eq!(
            Response::error("Device 'x' does not exist", Some(json!(7))).to_payload(),
            r#"{"data":{},"error":"Device 'x' does not exist","status":"error","transaction":7}"#
        );
    }

    #[test]
    fn parses_and_keeps_transaction_type() {
        let r = Response::parse(br#"{"data":{"id":"bulb"},"status":"ok","transaction":"t-1"}"#)
            .unwrap();
        assert!(r.is_ok());
        assert_eq!(r.transaction, Some(json!("t-1")));
        let r = Response::parse(br#"{"data":{},"error":"boom","status":"error","transaction":7}"#)
            .unwrap();
        assert_eq!(r.error.as_deref(), Some("boom"));
        assert_eq!(r.transaction, Some(json!(7)));
        assert!(Response::parse(b"nope").is_err());
        assert!(Response::parse(br#"{"status":"maybe"}"#).is_err());
    }

    #[test]
    fn correlates_abort_errors_on_the_update_topic() {
        let mut c = Correlator::new("a1");
        let upd = c.begin(OtaOp::Update, "0x1");
        let abort = c.begin(OtaOp::Abort, "0x1");
        assert_ne!(upd, abort);
        let abort_err = Response::error("No OTA in progress", Some(json!(abort)));
        // Not on its own topic …
        assert_eq!(c.correlate(OtaOp::Abort, &abort_err), None);
        // … but on `…/update`.
        let (tx, p) = c.correlate(OtaOp::Update, &abort_err).unwrap();
        assert_eq!((tx.as_str(), p.op), (abort.as_str(), OtaOp::Abort));
        // Someone else's transaction, or a number, is not ours.
        assert_eq!(
            c.correlate(OtaOp::Update, &Response::ok(json!({}), Some(json!("b-1")))),
            None
        );
        assert_eq!(
            c.correlate(OtaOp::Update, &Response::ok(json!({}), Some(json!(1)))),
            None
        );
        assert!(
            c.correlate(OtaOp::Update, &Response::ok(json!({}), Some(json!(upd))))
                .is_some()
        );
        assert_eq!(c.pending(), 0);
    }
}

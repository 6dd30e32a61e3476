//! zigbee2mqtt MQTT topics for OTA: builders and a parser.
//!
//! What it does: build the request and response topics under a base topic
//! (`<base>/bridge/request/device/ota_update/{check,update,schedule,unschedule,update/abort}` and
//! the `/downgrade` variants), the bridge topics and the per-device state topics; parse a topic
//! back into what it is. Request topics are matched like zigbee2mqtt's regex
//! `^<base>/bridge/request/device/ota_update/(update|check|schedule|unschedule)/?(downgrade|abort)?`
//! (case-insensitive, not anchored at the end).
//! What it does not do: know friendly names (a device topic is returned as the raw remainder)
//! or touch MQTT.

use crate::z2m::Z2mVersion;

/// zigbee2mqtt's default base topic.
pub const DEFAULT_BASE_TOPIC: &str = "zigbee2mqtt";

const OTA_REQUEST: &str = "bridge/request/device/ota_update/";
const OTA_RESPONSE: &str = "bridge/response/device/ota_update/";

/// One OTA operation of zigbee2mqtt's MQTT API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtaOp {
    /// `ota_update/check`: ask the device for its version and look it up in the index.
    Check,
    /// `ota_update/update`: run the transfer now.
    Update,
    /// `ota_update/schedule`: run the update at the device's next own image request.
    Schedule,
    /// `ota_update/unschedule`: cancel a schedule.
    Unschedule,
    /// `ota_update/update/abort` (zigbee2mqtt ≥ 2.12): abort a running transfer.
    Abort,
}

impl OtaOp {
    /// Every operation.
    pub const ALL: [OtaOp; 5] = [
        Self::Check,
        Self::Update,
        Self::Schedule,
        Self::Unschedule,
        Self::Abort,
    ];

    /// The topic suffix after `ota_update/` (`update/abort` for [`OtaOp::Abort`]).
    pub fn path(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Update => "update",
            Self::Schedule => "schedule",
            Self::Unschedule => "unschedule",
            Self::Abort => "update/abort",
        }
    }

    /// Whether a `/downgrade` variant of the request exists.
    pub fn has_downgrade(self) -> bool {
        matches!(self, Self::Check | Self::Update | Self::Schedule)
    }

    /// The operation whose response topic carries this operation's errors: zigbee2mqtt
    /// publishes abort errors on `…/update`.
    pub fn error_op(self) -> OtaOp {
        match self {
            Self::Abort => Self::Update,
            other => other,
        }
    }
}

/// A parsed OTA request topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTopic {
    /// The operation.
    pub op: OtaOp,
    /// The `/downgrade` variant.
    pub downgrade: bool,
}

/// What a topic under the base topic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Z2mTopic<'a> {
    /// An OTA request (what the bridge listens to).
    OtaRequest(RequestTopic),
    /// An OTA response; [`OtaOp::Abort`] for `…/update/abort`.
    OtaResponse(OtaOp),
    /// `bridge/devices` (retained).
    BridgeDevices,
    /// `bridge/state` (retained).
    BridgeState,
    /// `bridge/info` (retained).
    BridgeInfo,
    /// Another `bridge/…` topic; the part after `bridge/`.
    BridgeOther(&'a str),
    /// A device topic: the remainder after `<base>/`, a friendly name possibly followed by a
    /// sub-topic such as `/availability` (friendly names may contain `/`).
    Device(&'a str),
}

/// The topics of one zigbee2mqtt instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(DEFAULT_BASE_TOPIC)
    }
}

impl Topics {
    /// Topics under `base` (trailing `/` removed).
    pub fn new(base: impl Into<String>) -> Self {
        let mut base = base.into();
        while base.ends_with('/') {
            base.pop();
        }
        Self { base }
    }

    /// The base topic.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The request topic of `op`, with `/downgrade` when asked and the operation has it.
    pub fn request(&self, op: OtaOp, downgrade: bool) -> String {
        let suffix = if downgrade && op.has_downgrade() {
            "/downgrade"
        } else {
            ""
        };
        format!("{}/{OTA_REQUEST}{}{suffix}", self.base, op.path())
    }

    /// The topic of a successful response to `op`.
    pub fn response(&self, op: OtaOp) -> String {
        format!("{}/{OTA_RESPONSE}{}", self.base, op.path())
    }

    /// The topic of an error response to `op` (`…/update` for an abort).
    pub fn error_response(&self, op: OtaOp) -> String {
        self.response(op.error_op())
    }

    /// `<base>/bridge/devices`.
    pub fn bridge_devices(&self) -> String {
        format!("{}/bridge/devices", self.base)
    }

    /// `<base>/bridge/state`.
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }

    /// `<base>/bridge/info`.
    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }

    /// `<base>/bridge/logging`.
    pub fn bridge_logging(&self) -> String {
        format!("{}/bridge/logging", self.base)
    }

    /// `<base>/<friendly_name>`: the device's state.
    pub fn device(&self, friendly_name: &str) -> String {
        format!("{}/{friendly_name}", self.base)
    }

    /// `<base>/<friendly_name>/availability`.
    pub fn availability(&self, friendly_name: &str) -> String {
        format!("{}/{friendly_name}/availability", self.base)
    }

    /// `<base>/#`: everything of this instance.
    pub fn all(&self) -> String {
        format!("{}/#", self.base)
    }

    /// `<base>/bridge/request/device/ota_update/#`: what a bridge subscribes to for OTA.
    pub fn request_filter(&self) -> String {
        format!("{}/{OTA_REQUEST}#", self.base)
    }

    /// What `topic` is, or `None` when it is not under the base topic. Request topics are
    /// parsed for zigbee2mqtt 2.8+; use [`Topics::parse_for`] for the older API.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<Z2mTopic<'a>> {
        self.parse_for(topic, Z2mVersion::V2_8Plus)
    }

    /// Like [`Topics::parse`], matching request topics as zigbee2mqtt `version` does: before
    /// 2.12 there is no `/abort` suffix, so `…/update/abort` is a plain update request there.
    pub fn parse_for<'a>(&self, topic: &'a str, version: Z2mVersion) -> Option<Z2mTopic<'a>> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        if let Some(req) = strip_prefix_ci(rest, OTA_REQUEST) {
            return parse_request(req, version).map(Z2mTopic::OtaRequest);
        }
        if let Some(resp) = rest.strip_prefix(OTA_RESPONSE) {
            return OtaOp::ALL
                .into_iter()
                .find(|op| op.path() == resp)
                .map(Z2mTopic::OtaResponse);
        }
        if let Some(bridge) = rest.strip_prefix("bridge/") {
            return Some(match bridge {
                "devices" => Z2mTopic::BridgeDevices,
                "state" => Z2mTopic::BridgeState,
                "info" => Z2mTopic::BridgeInfo,
                other => Z2mTopic::BridgeOther(other),
            });
        }
        if rest.is_empty() {
            return None;
        }
        Some(Z2mTopic::Device(rest))
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_request(rest: &str, version: Z2mVersion) -> Option<RequestTopic> {
    // The regex alternation order: update|check|schedule|unschedule.
    let (op, after) = [
        ("update", OtaOp::Update),
        ("check", OtaOp::Check),
        ("schedule", OtaOp::Schedule),
        ("unschedule", OtaOp::Unschedule),
    ]
    .into_iter()
    .find_map(|(word, op)| strip_prefix_ci(rest, word).map(|after| (op, after)))?;
    let after = after.strip_prefix('/').unwrap_or(after);
    let downgrade = strip_prefix_ci(after, "downgrade").is_some();
    let abort = version.has_abort() && strip_prefix_ci(after, "abort").is_some();
    Some(match (op, abort) {
        (OtaOp::Update, true) => RequestTopic {
            op: OtaOp::Abort,
            downgrade: false,
        },
        (op, _) => RequestTopic { op, downgrade },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_request_and_response_topics() {
        let t = Topics::default();
        assert_eq!(
            t.request(OtaOp::Update, false),
            "zigbee2mqtt/bridge/request/device/ota_update/update"
        );
        assert_eq!(
            t.request(OtaOp::Check, true),
            "zigbee2mqtt/bridge/request/device/ota_update/check/downgrade"
        );
        assert_eq!(
            t.request(OtaOp::Schedule, true),
            "zigbee2mqtt/bridge/request/device/ota_update/schedule/downgrade"
        );
        assert_eq!(
            t.request(OtaOp::Unschedule, true),
            "zigbee2mqtt/bridge/request/device/ota_update/unschedule"
        );
        assert_eq!(
            t.request(OtaOp::Abort, false),
            "zigbee2mqtt/bridge/request/device/ota_update/update/abort"
        );
        assert_eq!(
            t.response(OtaOp::Abort),
            "zigbee2mqtt/bridge/response/device/ota_update/update/abort"
        );
        assert_eq!(
            t.error_response(OtaOp::Abort),
            "zigbee2mqtt/bridge/response/device/ota_update/update"
        );
        assert_eq!(Topics::new("site/z2m/").device("bulb"), "site/z2m/bulb");
    }

    #[test]
    fn parses_every_topic_it_builds() {
        let t = Topics::new("z");
        for op in OtaOp::ALL {
            for downgrade in [false, true] {
                let topic = t.request(op, downgrade);
                let parsed = t.parse(&topic);
                assert_eq!(
                    parsed,
                    Some(Z2mTopic::OtaRequest(RequestTopic {
                        op,
                        downgrade: downgrade && op.has_downgrade()
                    })),
                    "{topic}"
                );
            }
            assert_eq!(t.parse(&t.response(op)), Some(Z2mTopic::OtaResponse(op)));
        }
        assert_eq!(t.parse("z/bridge/devices"), Some(Z2mTopic::BridgeDevices));
        assert_eq!(t.parse("z/bridge/state"), Some(Z2mTopic::BridgeState));
        assert_eq!(t.parse("z/bridge/info"), Some(Z2mTopic::BridgeInfo));
        assert_eq!(
            t.parse("z/bridge/logging"),
            Some(Z2mTopic::BridgeOther("logging"))
        );
        assert_eq!(
            t.parse("z/living/lamp"),
            Some(Z2mTopic::Device("living/lamp"))
        );
        assert_eq!(t.parse("zz/bulb"), None);
        assert_eq!(t.parse("z/"), None);
    }

    #[test]
    fn request_matching_follows_the_regex() {
        let t = Topics::default();
        let req = |s: &str| match t.parse(s) {
            Some(Z2mTopic::OtaRequest(r)) => Some(r),
            _ => None,
        };
        let upd = RequestTopic {
            op: OtaOp::Update,
            downgrade: false,
        };
        // Case-insensitive, not anchored at the end.
        assert_eq!(
            req("zigbee2mqtt/bridge/request/device/OTA_UPDATE/Update"),
            Some(upd)
        );
        assert_eq!(
            req("zigbee2mqtt/bridge/request/device/ota_update/updatedowngrade"),
            Some(RequestTopic {
                op: OtaOp::Update,
                downgrade: true
            })
        );
        assert_eq!(
            req("zigbee2mqtt/bridge/request/device/ota_update/update/whatever"),
            Some(upd)
        );
        assert_eq!(
            req("zigbee2mqtt/bridge/request/device/ota_update/flash"),
            None
        );
        // Before 2.12, `update/abort` is an update request.
        assert_eq!(
            t.parse_for(
                "zigbee2mqtt/bridge/request/device/ota_update/update/abort",
                Z2mVersion::V2_0To2_7
            ),
            Some(Z2mTopic::OtaRequest(upd))
        );
    }
}

//! Device state messages (`<base>/<friendly_name>`): parsing them (agent) and building them the
//! way zigbee2mqtt's state cache does (simulator).
//!
//! What it does: read `update.{state,installed_version,latest_version,latest_source,
//! latest_release_notes,progress,remaining}`, `battery`, `linkquality`, `last_seen` (epoch ms or
//! ISO 8601) and keep the whole cached state; build the `update` patches of every OTA event
//! (progress, scheduled, success, failure, check result) in the 2.8+ and 2.0–2.7 shapes and merge
//! them into a cached state like zigbee2mqtt (deep merge; `progress`/`remaining` dropped outside
//! `updating`); parse availability payloads.
//! What it does not do: decide when to publish, or publish.

use serde_json::{Map, Value, json};

use crate::z2m::Z2mVersion;
use crate::z2m::json::{number, stable_stringify};

/// zigbee2mqtt's `update.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtaState {
    /// `idle`: nothing available or running.
    Idle,
    /// `available`: the index has an image (also published after a failed or aborted update).
    Available,
    /// `updating`: a transfer runs; `progress` and `remaining` are present.
    Updating,
    /// `scheduled`: the update runs at the device's next own image request.
    Scheduled,
}

impl OtaState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Available => "available",
            Self::Updating => "updating",
            Self::Scheduled => "scheduled",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "idle" => Some(Self::Idle),
            "available" => Some(Self::Available),
            "updating" => Some(Self::Updating),
            "scheduled" => Some(Self::Scheduled),
            _ => None,
        }
    }
}

/// The `update` block of a device state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateState {
    /// `state`; `None` when missing or not one of the four values.
    pub state: Option<OtaState>,
    /// `installed_version`: the OTA file version the device reported.
    pub installed_version: Option<u32>,
    /// `latest_version`.
    pub latest_version: Option<u32>,
    /// `latest_source` (2.8+).
    pub latest_source: Option<String>,
    /// `latest_release_notes` (2.8+).
    pub latest_release_notes: Option<String>,
    /// `progress` in percent (2 decimals), only while updating.
    pub progress: Option<f64>,
    /// `remaining` seconds, only while updating.
    pub remaining: Option<u32>,
}

impl UpdateState {
    fn from_value(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let u32_of = |k: &str| {
            obj.get(k)
                .and_then(Value::as_f64)
                .filter(|f| *f >= 0.0 && *f <= f64::from(u32::MAX))
                .map(|f| f.round() as u32)
        };
        let str_of = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Self {
            state: obj
                .get("state")
                .and_then(Value::as_str)
                .and_then(OtaState::parse),
            installed_version: u32_of("installed_version"),
            latest_version: u32_of("latest_version"),
            latest_source: str_of("latest_source"),
            latest_release_notes: str_of("latest_release_notes"),
            progress: obj.get("progress").and_then(Value::as_f64),
            remaining: u32_of("remaining"),
        })
    }
}

/// A parsed device state message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceState {
    /// The `update` block, when present.
    pub update: Option<UpdateState>,
    /// `battery` in percent.
    pub battery: Option<f64>,
    /// `linkquality`, 0–255.
    pub linkquality: Option<u8>,
    /// `last_seen` in Unix milliseconds (from epoch or ISO 8601 form).
    pub last_seen_ms: Option<i64>,
    /// The whole message.
    pub raw: Map<String, Value>,
}

impl DeviceState {
    /// Parses a state message; `None` when it is not a JSON object (e.g. a plain `ON`).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let Value::Object(raw) = serde_json::from_slice(payload).ok()? else {
            return None;
        };
        Some(Self::from_map(raw))
    }

    /// Reads a state already held as a JSON object (e.g. a [`StateCache`]).
    pub fn from_map(raw: Map<String, Value>) -> Self {
        Self {
            update: raw.get("update").and_then(UpdateState::from_value),
            battery: raw.get("battery").and_then(Value::as_f64),
            linkquality: raw
                .get("linkquality")
                .and_then(Value::as_f64)
                .filter(|f| (0.0..=255.0).contains(f))
                .map(|f| f as u8),
            last_seen_ms: raw.get("last_seen").and_then(parse_last_seen),
            raw,
        }
    }
}

/// `last_seen` as Unix ms: a number (`epoch`) or an ISO 8601 string (`ISO_8601`,
/// `ISO_8601_local`).
pub fn parse_last_seen(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => parse_iso8601_ms(s),
        _ => None,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` into Unix ms (no time zone means UTC).
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        let frac = &s[start..end.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10_i64.pow(3 - frac.len() as u32);
        i = end;
    }
    let offset_min = match b.get(i) {
        None => 0,
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let m = num(i + 1, 2)? * 60 + num(i + 4, 2)?;
            if *sign == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats Unix ms as zigbee2mqtt's `ISO_8601` `last_seen` (`2026-01-02T03:04:05.678Z`).
pub fn format_iso8601_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Availability (`<base>/<name>/availability`): `{"state":"online"}` or the legacy bare
/// `online`/`offline`. `None` when it is neither.
pub fn parse_availability(payload: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    let state = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o.get("state")?.as_str()?.to_string(),
        Ok(Value::String(s)) => s,
        _ => text.to_string(),
    };
    match state.as_str() {
        "online" => Some(true),
        "offline" => Some(false),
        _ => None,
    }
}

/// The `update` patches zigbee2mqtt publishes for OTA events, as `{"update":{…}}` values.
pub mod patch {
    use super::*;

    /// `{"update":{"progress":p,"remaining":r,"state":"updating"}}`; `remaining` is rounded
    /// like `Math.round`.
    pub fn progress(progress: f64, remaining_s: f64) -> Value {
        json!({"update": {
            "progress": number(progress),
            "remaining": number(remaining_s.max(0.0).round()),
            "state": "updating",
        }})
    }

    /// `{"update":{"state":…}}`: scheduled, unschedule → idle, failure → available, abort →
    /// available, scheduled run failed → scheduled.
    pub fn state(state: OtaState) -> Value {
        json!({"update": {"state": state.as_str()}})
    }

    /// The state with version fields, after a check (`available`/`idle`).
    /// 2.0–2.7 have no `latest_source`/`latest_release_notes`.
    pub fn versions(
        version: Z2mVersion,
        state: OtaState,
        installed: u32,
        latest: u32,
        source: Option<&str>,
        release_notes: Option<&str>,
    ) -> Value {
        let mut u = Map::new();
        u.insert("installed_version".into(), Value::from(installed));
        u.insert("latest_version".into(), Value::from(latest));
        if version == Z2mVersion::V2_8Plus {
            u.insert(
                "latest_source".into(),
                source.map_or(Value::Null, Value::from),
            );
            u.insert(
                "latest_release_notes".into(),
                release_notes.map_or(Value::Null, Value::from),
            );
        }
        u.insert("state".into(), Value::from(state.as_str()));
        json!({ "update": u })
    }

    /// After a successful update, or when no image was found: `idle` with both versions set
    /// to `version_now` and the source fields `null` (2.8+).
    pub fn finished(version: Z2mVersion, version_now: u32) -> Value {
        versions(
            version,
            OtaState::Idle,
            version_now,
            version_now,
            None,
            None,
        )
    }
}

/// A device's cached state, merged and published like zigbee2mqtt with `cache_state: true`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateCache {
    state: Map<String, Value>,
}

impl StateCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache holding `state`.
    pub fn from_map(state: Map<String, Value>) -> Self {
        Self { state }
    }

    /// The cached state.
    pub fn map(&self) -> &Map<String, Value> {
        &self.state
    }

    /// Deep-merges `patch` (an object) into the cache. Outside `updating`, `progress` and
    /// `remaining` are removed from `update`, as zigbee2mqtt does.
    pub fn apply(&mut self, patch: &Value) {
        if let Value::Object(p) = patch {
            deep_merge(&mut self.state, p);
        }
        if let Some(Value::Object(u)) = self.state.get_mut("update")
            && u.get("state").and_then(Value::as_str) != Some("updating")
        {
            u.remove("progress");
            u.remove("remaining");
        }
    }

    /// What zigbee2mqtt does with a cached `updating` at startup: `idle`, without progress.
    pub fn reset_at_startup(&mut self) {
        if let Some(Value::Object(u)) = self.state.get_mut("update")
            && u.get("state").and_then(Value::as_str) == Some("updating")
        {
            u.insert("state".into(), Value::from("idle"));
        }
        self.apply(&Value::Object(Map::new()));
    }

    /// The whole cached state, serialized like zigbee2mqtt.
    pub fn to_payload(&self) -> String {
        stable_stringify(&Value::Object(self.state.clone()))
    }
}

fn deep_merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (target.get_mut(k), v) {
            (Some(Value::Object(t)), Value::Object(p)) => deep_merge(t, p),
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(v: &Value) -> String {
        stable_stringify(v)
    }

    #[test]
    fn patches_match_the_transcript() {
        let v = Z2mVersion::V2_8Plus;
        assert_eq!(
            payload(&patch::progress(0.0, 36000.5678)),
            r#"{"update":{"progress":0,"remaining":36001,"state":"updating"}}"#
        );
        assert_eq!(
            payload(&patch::progress(10.0, 3600.2123)),
            r#"{"update":{"progress":10,"remaining":3600,"state":"updating"}}"#
        );
        assert_eq!(
            payload(&patch::finished(v, 90)),
            r#"{"update":{"installed_version":90,"latest_release_notes":null,"latest_source":null,"latest_version":90,"state":"idle"}}"#
        );
        assert_eq!(
            payload(&patch::state(OtaState::Scheduled)),
            r#"{"update":{"state":"scheduled"}}"#
        );
        assert_eq!(
            payload(&patch::versions(
                v,
                OtaState::Available,
                33,
                34,
                Some("https://example.com/my.ota"),
                None
            )),
            r#"{"update":{"installed_version":33,"latest_release_notes":null,"latest_source":"https://example.com/my.ota","latest_version":34,"state":"available"}}"#
        );
        assert_eq!(
            payload(&patch::finished(Z2mVersion::V2_0To2_7, 2)),
            r#"{"update":{"installed_version":2,"latest_version":2,"state":"idle"}}"#
        );
    }

    #[test]
    fn cache_merges_and_drops_progress_outside_updating() {
        let mut c = StateCache::new();
        c.apply(&json!({"brightness": 50, "state": "ON", "linkquality": 120}));
        c.apply(&patch::versions(
            Z2mVersion::V2_8Plus,
            OtaState::Available,
            587806256,
            587806257,
            Some("https://x/ota.ota.signed"),
            Some("https://x/notes"),
        ));
        c.apply(&patch::progress(42.17, 527.0));
        assert_eq!(
            c.to_payload(),
            r#"{"brightness":50,"linkquality":120,"state":"ON","update":{"installed_version":587806256,"latest_release_notes":"https://x/notes","latest_source":"https://x/ota.ota.signed","latest_version":587806257,"progress":42.17,"remaining":527,"state":"updating"}}"#
        );
        c.apply(&patch::state(OtaState::Available));
        assert!(!c.to_payload().contains("progress"));
        c.apply(&patch::progress(100.0, 10.0));
        c.reset_at_startup();
        assert_eq!(
            payload(&Value::Object(
                c.map()["update"].as_object().unwrap().clone()
            )),
            r#"{"installed_version":587806256,"latest_release_notes":"https://x/notes","latest_source":"https://x/ota.ota.signed","latest_version":587806257,"state":"idle"}"#
        );
    }

    #[test]
    fn parses_state_messages() {
        let s = DeviceState::parse(
            br#"{"battery":87,"linkquality":96,"last_seen":"2026-03-01T10:00:00.250+01:00","update":{"installed_version":587806256,"latest_version":587806257,"progress":42.17,"remaining":527,"state":"updating"}}"#,
        )
        .unwrap();
        let u = s.update.clone().unwrap();
        assert_eq!(u.state, Some(OtaState::Updating));
        assert_eq!(u.installed_version, Some(587806256));
        assert_eq!(u.progress, Some(42.17));
        assert_eq!(u.remaining, Some(527));
        assert_eq!(s.battery, Some(87.0));
        assert_eq!(s.linkquality, Some(96));
        assert_eq!(s.last_seen_ms, parse_iso8601_ms("2026-03-01T09:00:00.250Z"));
        assert_eq!(
            DeviceState::parse(br#"{"last_seen":1700000000000}"#)
                .unwrap()
                .last_seen_ms,
            Some(1_700_000_000_000)
        );
        assert!(DeviceState::parse(b"ON").is_none());
        let s = DeviceState::parse(br#"{"update":{"state":"weird"}}"#).unwrap();
        assert_eq!(s.update.unwrap().state, None);
    }

    #[test]
    fn iso8601_round_trips() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso8601_ms("2000-03-01T00:00:00.5Z"),
            Some(951_868_800_500)
        );
        for ms in [0, 951_868_800_500, 1_767_225_600_123, 4_102_444_799_999] {
            assert_eq!(parse_iso8601_ms(&format_iso8601_ms(ms)), Some(ms));
        }
        assert_eq!(
            format_iso8601_ms(1_767_225_600_123),
            "2026-01-01T00:00:00.123Z"
        );
        assert_eq!(parse_iso8601_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_iso8601_ms("yesterday"), None);
    }

    #[test]
    fn availability_both_forms() {
        assert_eq!(parse_availability(br#"{"state":"online"}"#), Some(true));
        assert_eq!(parse_availability(b"offline"), Some(false));
        assert_eq!(parse_availability(b"maybe"), None);
    }
}

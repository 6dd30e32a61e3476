//! Bounds on every field of every request, checked before a handler runs.
//!
//! The guard in front of every service (`guard`) hands every single-message request here with
//! its gRPC path. The message is decoded as its type — malformed protobuf becomes `InvalidArgument`
//! instead of tonic's `Internal` — and every string, list and enum is checked against a bound:
//! ids have no spaces or control characters, names and labels are bounded, enums must be
//! values this server knows. The handlers still check meaning (which firmware, which state);
//! this module only keeps sizes and shapes sane, so nothing unbounded reaches the log.
//!
//! The two streaming requests are checked where they are read: `FirmwareService.Upload`
//! (metadata in `firmware`, total size against `max_firmware_bytes`) and `AgentService.Connect`
//! (hello and reports in `agents`).

use ota_proto::v1 as pb;
use prost::Message;

use super::error::{ApiError, ApiResult};
use crate::quote::quote;

/// Longest device id (`<site>/<local>`: 64 + 1 + 128).
pub const MAX_DEVICE_ID: usize = 200;
/// Longest id of a firmware, task, rollout or token.
pub const MAX_ID: usize = 128;
/// Longest site id.
pub const MAX_SITE_ID: usize = 64;
/// Longest free-form single-line value (model, vendor, tag, ...).
pub const MAX_LINE: usize = 256;
/// Longest reason an operator gives.
pub const MAX_REASON: usize = 500;
/// Most values one selector may list.
pub const MAX_SELECTOR_VALUES: usize = 10_000;
/// Longest token lifetime: ten years.
pub const MAX_TOKEN_TTL_S: u64 = 10 * 366 * 24 * 3600;

// Rollout specs (sizes here; `convert::spec_from_pb` checks the numbers and the meaning).
/// Longest rollout name.
pub const MAX_SPEC_NAME: usize = 200;
/// Most stages of one rollout.
pub const MAX_STAGES: usize = 50;
/// Longest stage deadline, soak time or retry backoff, seconds (7 days).
pub const MAX_STAGE_TIMER_S: u32 = 7 * 24 * 3600;
/// Most devices (or sites, networks) a rollout may update at once, per limit.
pub const MAX_CONCURRENCY: u32 = 100_000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// Longest time one device may take, seconds (24 h).
pub const MAX_DEVICE_TIMEOUT_S: u32 = 24 * 3600;
/// Longest wait for the batch check's answers, seconds (1 h).
pub const MAX_BATCH_CHECK_TIMEOUT_S: u32 = 3600;
/// Longest wake-up budget for sleeping devices, seconds (30 days).
pub const MAX_WAKE_TIMEOUT_S: u32 = 30 * 24 * 3600;
/// Longest health window, seconds (a day).
pub const MAX_HEALTH_WINDOW_S: u32 = 24 * 3600;
/// Most per-site time zones one spec may name.
pub const MAX_SITE_TIMEZONES: usize = 1000;
/// Abort criteria in a rollout spec.
pub const MAX_ABORT_CRITERIA: usize = 10;
/// An abort criterion's `min_finished`.
pub const MAX_MIN_FINISHED: u32 = 10_000_000;
/// A rollout's `rate.max_per_minute`.
pub const MAX_RATE_PER_MINUTE: u32 = 10_000;
/// A rate ramp's factor (it must also be above 1).
pub const MAX_RAMP_FACTOR: f64 = 5.0;
/// A rate ramp's `after_successes`.
pub const MAX_RAMP_AFTER_SUCCESSES: u32 = 1_000_000;
/// Per-site canaries: devices per site and transport instance in the first stage.
pub const MAX_CANARY_PER_SITE: u32 = 1000;

fn too_long(field: &str, max: usize) -> ApiError {
    ApiError::invalid(format!("{field} is longer than {max} bytes"))
}

/// An identifier: no whitespace, no control characters, at most `max` bytes.
fn ident(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.len() > max {
        return Err(too_long(field, max));
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::invalid(format!(
            "{field} {} contains spaces or control characters",
            quote(v)
        )));
    }
    Ok(())
}

/// One line of text: no control characters, at most `max` bytes.
fn line(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.len() > max {
        return Err(too_long(field, max));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Free text: tabs and newlines allowed, other control characters not.
fn text(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.len() > max {
        return Err(too_long(field, max));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize) -> ApiResult<()> {
    if n > max {
        return Err(ApiError::invalid(format!(
            "{field} has {n} values: at most {max}"
        )));
    }
    Ok(())
}

fn known<E>(
    field: &str,
    v: i32,
    parse: fn(i32) -> Result<E, prost::UnknownEnumValue>,
) -> ApiResult<()> {
    parse(v)
        .map(|_| ())
        .map_err(|_| ApiError::invalid(format!("{field} has the unknown value {v}")))
}

fn page(p: Option<&pb::PageRequest>) -> ApiResult<()> {
    if let Some(p) = p {
        ident("page.page_token", &p.page_token, 32)?;
    }
    Ok(())
}

/// A device selector.
pub fn selector(field: &str, s: &pb::DeviceSelector) -> ApiResult<()> {
    let total = s.site_ids.len()
        + s.transports.len()
        + s.models.len()
        + s.vendors.len()
        + s.chips.len()
        + s.tags.len()
        + s.device_ids.len()
        + s.exclude_device_ids.len()
        + s.networks.len();
    if total > MAX_SELECTOR_VALUES {
        return Err(ApiError::invalid(format!(
            "{field} lists {total} values: at most {MAX_SELECTOR_VALUES} in total"
        )));
    }
    for v in &s.site_ids {
        ident(&format!("{field}.site_ids"), v, MAX_SITE_ID)?;
        if super::agents::validate_site_id(v).is_err() {
            return Err(ApiError::invalid(format!(
                "{field}.site_ids: {} is not a site id (1-64 letters, digits, '-', '_' or '.')",
                quote(v)
            )));
        }
    }
    for t in &s.transports {
        known(&format!("{field}.transports"), *t, pb::Transport::try_from)?;
    }
    for (name, list) in [
        ("models", &s.models),
        ("vendors", &s.vendors),
        ("chips", &s.chips),
        ("tags", &s.tags),
        ("networks", &s.networks),
    ] {
        for v in list {
            line(&format!("{field}.{name}"), v, MAX_LINE)?;
        }
    }
    for (name, list) in [
        ("device_ids", &s.device_ids),
        ("exclude_device_ids", &s.exclude_device_ids),
    ] {
        for v in list {
            ident(&format!("{field}.{name}"), v, MAX_DEVICE_ID)?;
        }
    }
    line(&format!("{field}.min_version"), &s.min_version, 64)?;
    line(&format!("{field}.max_version"), &s.max_version, 64)?;
    Ok(())
}

fn threshold(field: &str, t: Option<&pb::Threshold>) -> ApiResult<()> {
    if let Some(pb::threshold::Value::Percent(p)) = t.and_then(|t| t.value.as_ref())
        && !p.is_finite()
    {
        return Err(ApiError::invalid(format!(
            "{field}.percent is not a number"
        )));
    }
    Ok(())
}

/// A rollout spec (the meaning is checked by `convert::spec_from_pb`).
pub fn spec(s: &pb::RolloutSpec) -> ApiResult<()> {
    line("spec.name", &s.name, MAX_SPEC_NAME)?;
    ident("spec.firmware_id", &s.firmware_id, MAX_ID)?;
    if let Some(sel) = &s.selector {
        selector("spec.selector", sel)?;
    }
    count("spec.stages", s.stages.len(), MAX_STAGES)?;
    for (i, st) in s.stages.iter().enumerate() {
        let label = format!("spec.stages[{i}]");
        line(&format!("{label}.name"), &st.name, 64)?;
        threshold(
            &format!("{label}.success_threshold"),
            st.success_threshold.as_ref(),
        )?;
        threshold(
            &format!("{label}.failure_threshold"),
            st.failure_threshold.as_ref(),
        )?;
        if let Some(pb::stage::Size::CumulativePercent(p)) = st.size
            && !p.is_finite()
        {
            return Err(ApiError::invalid(format!(
                "{label}.cumulative_percent is not a number"
            )));
        }
        known(
            &format!("{label}.on_failure"),
            st.on_failure,
            pb::FailureAction::try_from,
        )?;
    }
    known(
        "spec.upgrade_type",
        s.upgrade_type,
        pb::UpgradeType::try_from,
    )?;
    if let Some(w) = &s.maintenance_window {
        line("spec.maintenance_window.start", &w.start, 5)?;
        line("spec.maintenance_window.end", &w.end, 5)?;
        count("spec.maintenance_window.weekdays", w.weekdays.len(), 7)?;
    }
    Ok(())
}

fn decode<M: Message + Default>(bytes: &[u8]) -> ApiResult<M> {
    M::decode(bytes).map_err(|e| ApiError::invalid(format!("malformed request: {e}")))
}

/// Checks a single-message request for the RPC at `path`. `None` when the path is not one of
/// this server's single-message RPCs (streaming requests, unknown paths).
// long-fn: one table, an arm per RPC naming its fields' bounds; split, it would be harder to see that every RPC has one.
pub fn check(path: &str, bytes: &[u8]) -> Option<ApiResult<()>> {
    let dev = |f: &str, v: &str| ident(f, v, MAX_DEVICE_ID);
    let id = |f: &str, v: &str| ident(f, v, MAX_ID);
    let r: ApiResult<()> = match path.strip_prefix("/ota.v1.")? {
        "SystemService/Status" => decode::<pb::StatusRequest>(bytes).map(|_| ()),
        "SiteService/List" => decode::<pb::ListSitesRequest>(bytes).map(|_| ()),
        "SiteService/Get" => {
            decode::<pb::GetSiteRequest>(bytes).and_then(|m| ident("id", &m.id, MAX_SITE_ID))
        }
        "AccessService/CreateToken" => decode::<pb::CreateTokenRequest>(bytes).and_then(|m| {
            line("name", &m.name, 64)?;
            known("role", m.role, pb::Role::try_from)?;
            if m.ttl_s > MAX_TOKEN_TTL_S {
                return Err(ApiError::invalid(format!(
                    "ttl_s is {}: at most {MAX_TOKEN_TTL_S} (ten years)",
                    m.ttl_s
                )));
            }
            Ok(())
        }),
        "AccessService/ListTokens" => decode::<pb::ListTokensRequest>(bytes).map(|_| ()),
        "AccessService/RevokeToken" => {
            decode::<pb::RevokeTokenRequest>(bytes).and_then(|m| id("id", &m.id))
        }
        "DeviceService/List" => decode::<pb::ListDevicesRequest>(bytes).and_then(|m| {
            page(m.page.as_ref())?;
            ident("site_id", &m.site_id, MAX_SITE_ID)?;
            known("transport", m.transport, pb::Transport::try_from)?;
            line("model", &m.model, MAX_LINE)?;
            line("version", &m.version, 64)?;
            line("tag", &m.tag, MAX_LINE)?;
            if let Some(s) = m.status {
                known("status", s, pb::UpgradeStatus::try_from)?;
            }
            Ok(())
        }),
        "DeviceService/Get" => decode::<pb::GetDeviceRequest>(bytes).and_then(|m| dev("id", &m.id)),
        "DeviceService/Check" => decode::<pb::CheckDeviceRequest>(bytes).and_then(|m| {
            dev("device_id", &m.device_id)?;
            id("firmware_id", &m.firmware_id)
        }),
        "DeviceService/BatchCheck" => decode::<pb::BatchCheckRequest>(bytes).and_then(|m| {
            count("device_ids", m.device_ids.len(), MAX_SELECTOR_VALUES)?;
            for d in &m.device_ids {
                dev("device_ids", d)?;
            }
            if let Some(s) = &m.selector {
                selector("selector", s)?;
            }
            id("firmware_id", &m.firmware_id)
        }),
        "DeviceService/Update" => decode::<pb::UpdateDeviceRequest>(bytes).and_then(|m| {
            dev("device_id", &m.device_id)?;
            id("firmware_id", &m.firmware_id)?;
            known("upgrade_type", m.upgrade_type, pb::UpgradeType::try_from)
        }),
        "DeviceService/WatchTask" => decode::<pb::WatchTaskRequest>(bytes).and_then(|m| {
            id("task_id", &m.task_id)?;
            dev("device_id", &m.device_id)
        }),
        "DeviceService/Cancel" => decode::<pb::CancelTaskRequest>(bytes).and_then(|m| {
            dev("device_id", &m.device_id)?;
            id("task_id", &m.task_id)
        }),
        "DeviceService/ConfirmWarning" => {
            decode::<pb::ConfirmWarningRequest>(bytes).and_then(|m| dev("device_id", &m.device_id))
        }
        "DeviceService/GetAutoUpgrade" => {
            decode::<pb::GetAutoUpgradeRequest>(bytes).and_then(|m| dev("device_id", &m.device_id))
        }
        "DeviceService/SetAutoUpgrade" => {
            decode::<pb::SetAutoUpgradeRequest>(bytes).and_then(|m| dev("device_id", &m.device_id))
        }
        "EventService/Tail" => decode::<pb::TailEventsRequest>(bytes).and_then(|m| {
            count("stream_prefixes", m.stream_prefixes.len(), 64)?;
            count("types", m.types.len(), 64)?;
            for p in &m.stream_prefixes {
                ident("stream_prefixes", p, MAX_LINE)?;
            }
            for t in &m.types {
                ident("types", t, 64)?;
            }
            Ok(())
        }),
        "FirmwareService/List" => decode::<pb::ListFirmwareRequest>(bytes).and_then(|m| {
            page(m.page.as_ref())?;
            known("format", m.format, pb::FirmwareFormat::try_from)?;
            line("name_contains", &m.name_contains, 64)
        }),
        "FirmwareService/Get" => {
            decode::<pb::GetFirmwareRequest>(bytes).and_then(|m| id("id", &m.id))
        }
        "FirmwareService/Delete" => {
            decode::<pb::DeleteFirmwareRequest>(bytes).and_then(|m| id("id", &m.id))
        }
        "FirmwareService/AddSignature" => decode::<pb::AddSignatureRequest>(bytes).and_then(|m| {
            id("firmware_id", &m.firmware_id)?;
            if let Some(s) = &m.signature {
                ident("signature.key_id", &s.key_id, 64)?;
                if s.signature.len() > 64 {
                    return Err(ApiError::invalid(format!(
                        "signature is {} bytes; an ed25519 signature is 64 bytes",
                        s.signature.len()
                    )));
                }
            }
            Ok(())
        }),
        "FirmwareService/Download" => decode::<pb::DownloadFirmwareRequest>(bytes).and_then(|m| {
            id("firmware_id", &m.firmware_id)?;
            id("task_id", &m.task_id)
        }),
        "RolloutService/Create" => decode::<pb::CreateRolloutRequest>(bytes)
            .and_then(|m| m.spec.as_ref().map_or(Ok(()), spec)),
        "RolloutService/Plan" => {
            decode::<pb::PlanRolloutRequest>(bytes).and_then(|m| match &m.subject {
                Some(pb::plan_rollout_request::Subject::Spec(s)) => spec(s),
                Some(pb::plan_rollout_request::Subject::RolloutId(r)) => id("rollout_id", r),
                None => Ok(()),
            })
        }
        "RolloutService/Start"
        | "RolloutService/Pause"
        | "RolloutService/Resume"
        | "RolloutService/Abort" => decode::<pb::RolloutActionRequest>(bytes).and_then(|m| {
            id("id", &m.id)?;
            text("reason", &m.reason, MAX_REASON)
        }),
        "RolloutService/Rollback" => decode::<pb::RollbackRolloutRequest>(bytes).and_then(|m| {
            id("id", &m.id)?;
            text("reason", &m.reason, MAX_REASON)?;
            known("scope", m.scope, pb::RollbackScope::try_from)
        }),
        "RolloutService/Get" => {
            decode::<pb::GetRolloutRequest>(bytes).and_then(|m| id("id", &m.id))
        }
        "RolloutService/Watch" => {
            decode::<pb::WatchRolloutRequest>(bytes).and_then(|m| id("id", &m.id))
        }
        "RolloutService/List" => decode::<pb::ListRolloutsRequest>(bytes).and_then(|m| {
            page(m.page.as_ref())?;
            known("state", m.state, pb::RolloutState::try_from)
        }),
        _ => return None,
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<M: Message>(path: &str, m: &M) -> ApiResult<()> {
        check(path, &m.encode_to_vec()).expect("a known path")
    }

    #[test]
    fn malformed_protobuf_is_invalid_argument() {
        let err = check("/ota.v1.DeviceService/Get", &[0x0a, 0xff, 0xff]).unwrap();
        assert!(
            matches!(&err, Err(ApiError::InvalidArgument(m)) if m.starts_with("malformed request")),
            "{err:?}"
        );
        // A string that is not UTF-8.
        let err = check("/ota.v1.DeviceService/Get", &[0x0a, 0x02, 0xc3, 0x28]).unwrap();
        assert!(matches!(err, Err(ApiError::InvalidArgument(_))));
        assert!(check("/ota.v1.FirmwareService/Upload", &[]).is_none());
        assert!(check("/other.Service/Call", &[]).is_none());
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let e = run(
            "/ota.v1.DeviceService/List",
            &pb::ListDevicesRequest {
                transport: 42,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "transport has the unknown value 42");
        assert!(
            run(
                "/ota.v1.AccessService/CreateToken",
                &pb::CreateTokenRequest {
                    name: "ci".into(),
                    role: 9,
                    ttl_s: 0
                }
            )
            .is_err()
        );
        let spec = pb::RolloutSpec {
            name: "r".into(),
            firmware_id: "fw-1".into(),
            upgrade_type: 1,
            ..Default::default()
        };
        assert!(
            run(
                "/ota.v1.RolloutService/Create",
                &pb::CreateRolloutRequest {
                    spec: Some(spec),
                    start: false
                }
            )
            .unwrap_err()
            .to_string()
            .contains("upgrade_type")
        );
    }

    #[test]
    fn strings_and_lists_are_bounded() {
        assert!(
            run(
                "/ota.v1.DeviceService/Get",
                &pb::GetDeviceRequest {
                    id: "home/lamp".into()
                }
            )
            .is_ok()
        );
        assert!(
            run(
                "/ota.v1.DeviceService/Get",
                &pb::GetDeviceRequest {
                    id: "x".repeat(201)
                }
            )
            .is_err()
        );
        assert!(
            run(
                "/ota.v1.FirmwareService/Get",
                &pb::GetFirmwareRequest {
                    id: "fw 1\n".into()
                }
            )
            .is_err()
        );
        let big = pb::DeviceSelector {
            tags: vec!["t".into(); MAX_SELECTOR_VALUES + 1],
            ..Default::default()
        };
        assert!(
            run(
                "/ota.v1.DeviceService/BatchCheck",
                &pb::BatchCheckRequest {
                    selector: Some(big),
                    ..Default::default()
                }
            )
            .unwrap_err()
            .to_string()
            .contains("at most 10000")
        );
        assert!(
            run(
                "/ota.v1.RolloutService/Abort",
                &pb::RolloutActionRequest {
                    id: "ro-1".into(),
                    reason: "r".repeat(501)
                }
            )
            .is_err()
        );
        assert!(
            run(
                "/ota.v1.EventService/Tail",
                &pb::TailEventsRequest {
                    types: vec!["TaskCreated".into(); 65],
                    ..Default::default()
                }
            )
            .is_err()
        );
        let nan = pb::RolloutSpec {
            name: "r".into(),
            firmware_id: "fw-1".into(),
            stages: vec![pb::Stage {
                size: Some(pb::stage::Size::CumulativePercent(f64::NAN)),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            run(
                "/ota.v1.RolloutService/Plan",
                &pb::PlanRolloutRequest {
                    subject: Some(pb::plan_rollout_request::Subject::Spec(nan))
                }
            )
            .is_err()
        );
    }
}

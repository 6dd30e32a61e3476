//! Names for the API's enums, as otactl shows and accepts them.
//!
//! Every enum value is shown as its number plus a short lowercase name derived from the proto
//! name (`UPGRADE_STATUS_WAITING_FOR_WAKEUP` → `waiting-for-wakeup`), so the names match the
//! product's status model and stay stable as long as the .proto does. Values a newer server
//! sends that this otactl does not know are shown as `unknown` with their number.

use ota_proto::v1 as pb;

/// Status names in numeric order, as accepted by `--status`.
pub const STATUS_NAMES: [&str; 11] = [
    "none",
    "available",
    "updating",
    "success",
    "failure",
    "waiting-for-wakeup",
    "downloaded",
    "timeout",
    "queued",
    "preparing",
    "agent-preparing",
];

/// Turns a proto enum value name into otactl's name: strip the prefix, lowercase, `_` → `-`.
pub fn short_name(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

macro_rules! namer {
    ($(#[$doc:meta])* $fn:ident, $ty:ty, $prefix:literal) => {
        $(#[$doc])*
        pub fn $fn(v: i32) -> String {
            match <$ty>::try_from(v) {
                Ok(e) => short_name(e.as_str_name(), $prefix),
                Err(_) => "unknown".to_string(),
            }
        }
    };
}

namer!(
    /// Update status name (Tuya `upgradeStatus`).
    status_name,
    pb::UpgradeStatus,
    "UPGRADE_STATUS_"
);
namer!(
    /// Error code name.
    error_name,
    pb::ErrorCode,
    "ERROR_CODE_"
);
namer!(
    /// Upgrade type name.
    upgrade_type_name,
    pb::UpgradeType,
    "UPGRADE_TYPE_"
);
namer!(
    /// Channel (module) name.
    channel_name,
    pb::ChannelType,
    "CHANNEL_TYPE_"
);
namer!(
    /// zigbee2mqtt update state name.
    z2m_state_name,
    pb::Z2mUpdateState,
    "Z2M_UPDATE_STATE_"
);
namer!(
    /// Transport name.
    transport_name,
    pb::Transport,
    "TRANSPORT_"
);
namer!(
    /// Power source name.
    power_name,
    pb::PowerSource,
    "POWER_SOURCE_"
);
namer!(
    /// Firmware format name.
    format_name,
    pb::FirmwareFormat,
    "FIRMWARE_FORMAT_"
);
namer!(
    /// Signal kind name.
    signal_kind_name,
    pb::SignalKind,
    "SIGNAL_KIND_"
);
namer!(
    /// Rollout state name.
    rollout_state_name,
    pb::RolloutState,
    "ROLLOUT_STATE_"
);
namer!(
    /// Stage state name.
    stage_state_name,
    pb::StageState,
    "STAGE_STATE_"
);
namer!(
    /// Failure action name.
    failure_action_name,
    pb::FailureAction,
    "FAILURE_ACTION_"
);
namer!(
    /// How a success's health was established.
    health_name,
    pb::TaskHealth,
    "TASK_HEALTH_"
);
namer!(
    /// Role name.
    role_name,
    pb::Role,
    "ROLE_"
);

/// Parses a status name or number.
pub fn parse_status(s: &str) -> Option<i32> {
    let t = s.trim().to_ascii_lowercase();
    if let Ok(n) = t.parse::<i32>() {
        return pb::UpgradeStatus::try_from(n).ok().map(|e| e as i32);
    }
    let t = t.replace('_', "-");
    [
        pb::UpgradeStatus::None,
        pb::UpgradeStatus::Available,
        pb::UpgradeStatus::Updating,
        pb::UpgradeStatus::Success,
        pb::UpgradeStatus::Failure,
        pb::UpgradeStatus::WaitingForWakeup,
        pb::UpgradeStatus::Downloaded,
        pb::UpgradeStatus::Timeout,
        pb::UpgradeStatus::Queued,
        pb::UpgradeStatus::Preparing,
        pb::UpgradeStatus::AgentPreparing,
    ]
    .into_iter()
    .find(|e| status_name(*e as i32) == t)
    .map(|e| e as i32)
}

/// Whether a task in this status will not change any more.
pub fn is_terminal(status: i32) -> bool {
    status == pb::UpgradeStatus::Success as i32
        || status == pb::UpgradeStatus::Failure as i32
        || status == pb::UpgradeStatus::Timeout as i32
}

/// What an error code means, in a few words for a table.
pub fn error_text(code: i32) -> &'static str {
    use pb::ErrorCode as E;
    match E::try_from(code) {
        Ok(E::None) => "no error",
        Ok(E::AlreadyOnTarget) => "already on the target version",
        Ok(E::NoFirmware) => "no firmware found for this device",
        Ok(E::OneAtATime) => "another update runs on this network",
        Ok(E::DownloadFailed) => "the site could not download the firmware",
        Ok(E::SignalUnknown) => "signal strength unknown",
        Ok(E::WeakSignal) => "signal too weak: confirm to continue",
        Ok(E::ConnectFailed) => "could not connect to the device",
        Ok(E::UnbindTimeout) => "timed out unbinding from the gateway",
        Ok(E::ChecksumMismatch) => "checksum mismatch",
        Ok(E::SendFailed) => "failed to send the firmware",
        Ok(E::Offline) => "device offline",
        Ok(E::PrevalidationFailed) => "firmware does not fit this device",
        Ok(E::RadioDisabled) => "radio disabled",
        Ok(E::FirmwareListFailed) => "could not list available firmware",
        Ok(E::Timeout) => "the update timed out",
        Ok(E::ServerRefused) => "the server refused the update",
        Ok(E::DeviceReportedFailure) => "the device reported a failure",
        Ok(E::BulkCheckTimeout) => "no answer within the check timeout",
        Ok(E::AgentDisconnected) => "the site's agent is disconnected",
        Ok(E::GatewayRequired) => "must be updated through its gateway",
        Ok(E::Unhealthy) => "did not stay healthy after the update",
        Ok(E::Other) => "other error",
        Err(_) => "unknown error",
    }
}

/// "5019 no answer within the check timeout: <message>" (message omitted when empty).
pub fn describe_error(e: &pb::TaskError) -> String {
    let base = format!("{} {}", e.code, error_text(e.code));
    if e.message.trim().is_empty() {
        base
    } else {
        format!("{base}: {}", e.message.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_status_model() {
        let names: Vec<String> = [0, 1, 2, 3, 4, 5, 6, 7, 13, 14, 100]
            .into_iter()
            .map(status_name)
            .collect();
        assert_eq!(names, STATUS_NAMES);
        assert_eq!(status_name(42), "unknown");
        assert_eq!(error_name(5019), "bulk-check-timeout");
        assert_eq!(error_name(5005), "weak-signal");
        assert_eq!(transport_name(1), "zigbee2mqtt");
        assert_eq!(format_name(3), "esp-factory");
        assert_eq!(format_name(1), "zigbee-ota");
        assert_eq!(rollout_state_name(2), "running");
        assert_eq!(role_name(2), "operator");
        assert_eq!(channel_name(3), "zigbee");
        assert_eq!(z2m_state_name(4), "scheduled");
        assert_eq!(signal_kind_name(2), "rssi-dbm");
    }

    #[test]
    fn statuses_parse_by_name_or_number() {
        assert_eq!(parse_status("Waiting_For_Wakeup"), Some(5));
        assert_eq!(parse_status("100"), Some(100));
        assert_eq!(parse_status("8"), None);
        assert_eq!(parse_status("nope"), None);
        assert!(is_terminal(3) && is_terminal(4) && is_terminal(7));
        assert!(!is_terminal(2) && !is_terminal(6));
    }

    #[test]
    fn errors_read_well() {
        let e = pb::TaskError {
            code: 5019,
            message: "no answer from home in 60s".into(),
        };
        assert_eq!(
            describe_error(&e),
            "5019 no answer within the check timeout: no answer from home in 60s"
        );
        let e = pb::TaskError {
            code: 5012,
            message: String::new(),
        };
        assert_eq!(describe_error(&e), "5012 device offline");
    }
}

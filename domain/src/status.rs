//! The one status and error vocabulary of the product.
//!
//! Numbers follow Tuya's firmware-update model (`upgradeStatus`, error codes 5000–5099); the
//! meaning is widened so zigbee2mqtt, ESPHome and serial outcomes map onto the same codes (see
//! `ARCHITECTURE.md`, "Status model"). These numbers are part of the stored events and of the
//! gRPC API: never renumber a variant.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Status of a device's update, numbered like Tuya's `upgradeStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u32)]
pub enum UpgradeStatus {
    /// 0: no update available (or nothing in progress).
    None = 0,
    /// 1: an update is available.
    Available = 1,
    /// 2: updating; progress and remaining seconds are known.
    Updating = 2,
    /// 3: success: the device is back on the target version.
    Success = 3,
    /// 4: failure, with an [`ErrorCode`].
    Failure = 4,
    /// 5: waiting for the (sleepy) device to wake up and ask for its image.
    WaitingForWakeup = 5,
    /// 6: the image is on the device, which is applying it or rebooting.
    Downloaded = 6,
    /// 7: the update timed out.
    Timeout = 7,
    /// 13: queued at the server.
    Queued = 13,
    /// 14: the server is preparing (firmware, preconditions).
    Preparing = 14,
    /// 100: the site is preparing (agent downloading the image, connecting to the device).
    AgentPreparing = 100,
}

impl UpgradeStatus {
    /// Every status, in numeric order.
    pub const ALL: [UpgradeStatus; 11] = [
        Self::None,
        Self::Available,
        Self::Updating,
        Self::Success,
        Self::Failure,
        Self::WaitingForWakeup,
        Self::Downloaded,
        Self::Timeout,
        Self::Queued,
        Self::Preparing,
        Self::AgentPreparing,
    ];

    /// The Tuya number.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The status with this Tuya number, if there is one.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// A task in this status will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Timeout)
    }

    /// Short lowercase name, as shown in tables and used in filters.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Available => "available",
            Self::Updating => "updating",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::WaitingForWakeup => "waiting-for-wakeup",
            Self::Downloaded => "downloaded",
            Self::Timeout => "timeout",
            Self::Queued => "queued",
            Self::Preparing => "preparing",
            Self::AgentPreparing => "agent-preparing",
        }
    }
}

impl fmt::Display for UpgradeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an update or check did not succeed, numbered like Tuya's OTA error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// 5000: already on the latest / target version.
    AlreadyOnTarget = 5000,
    /// 5001: no firmware found for this device.
    NoFirmware = 5001,
    /// 5002: one update at a time on this network or link.
    OneAtATime = 5002,
    /// 5003: the site could not download the firmware from the server.
    DownloadFailed = 5003,
    /// 5004: the signal check could not be made (no linkquality / RSSI known).
    SignalUnknown = 5004,
    /// 5005: signal too weak; an operator must confirm to continue.
    WeakSignal = 5005,
    /// 5006: could not connect to the device.
    ConnectFailed = 5006,
    /// 5007: timed out unbinding the device from its gateway (Tuya; kept for numbering).
    UnbindTimeout = 5007,
    /// 5009: checksum mismatch.
    ChecksumMismatch = 5009,
    /// 5010: failed to send the firmware to the device.
    SendFailed = 5010,
    /// 5012: the device is offline.
    Offline = 5012,
    /// 5013: pre-validation failed: the firmware does not fit this device.
    PrevalidationFailed = 5013,
    /// 5014: the local radio needed for the update is disabled (Tuya; kept for numbering).
    RadioDisabled = 5014,
    /// 5015: could not get the list of available firmware.
    FirmwareListFailed = 5015,
    /// 5016: the update timed out.
    Timeout = 5016,
    /// 5017: the server refused to start the update.
    ServerRefused = 5017,
    /// 5018: the device reported a failure, with its reason.
    DeviceReportedFailure = 5018,
    /// 5019: the bulk check timed out for this device.
    BulkCheckTimeout = 5019,
    /// 5020: the site's agent is disconnected from the server.
    AgentDisconnected = 5020,
    /// 5021: the device must be updated through its gateway, which is not configured.
    GatewayRequired = 5021,
    /// 5099: anything else; the message carries the transport's own words.
    Other = 5099,
    /// 5022: the device took the image but did not stay healthy for its health window: it
    /// rolled back to its previous image, rebooted (a reboot loop), fell back to safe mode, or
    /// was no longer seen (`ota_domain::health`). Declared last: stored events encode a code by
    /// its position here, so new codes go at the end whatever their number.
    Unhealthy = 5022,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 22] = [
        Self::AlreadyOnTarget,
        Self::NoFirmware,
        Self::OneAtATime,
        Self::DownloadFailed,
        Self::SignalUnknown,
        Self::WeakSignal,
        Self::ConnectFailed,
        Self::UnbindTimeout,
        Self::ChecksumMismatch,
        Self::SendFailed,
        Self::Offline,
        Self::PrevalidationFailed,
        Self::RadioDisabled,
        Self::FirmwareListFailed,
        Self::Timeout,
        Self::ServerRefused,
        Self::DeviceReportedFailure,
        Self::BulkCheckTimeout,
        Self::AgentDisconnected,
        Self::GatewayRequired,
        Self::Unhealthy,
        Self::Other,
    ];

    /// The Tuya number.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The error with this number, if there is one.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// One line saying what the code means here.
    pub fn description(self) -> &'static str {
        match self {
            Self::AlreadyOnTarget => "already on the target version",
            Self::NoFirmware => "no firmware found for this device",
            Self::OneAtATime => "only one update at a time on this network",
            Self::DownloadFailed => "the site could not download the firmware from the server",
            Self::SignalUnknown => "signal strength is unknown, so it could not be checked",
            Self::WeakSignal => "signal too weak: confirm to continue or cancel",
            Self::ConnectFailed => "could not connect to the device",
            Self::UnbindTimeout => "timed out unbinding the device from its gateway",
            Self::ChecksumMismatch => "checksum mismatch",
            Self::SendFailed => "failed to send the firmware to the device",
            Self::Offline => "the device is offline",
            Self::PrevalidationFailed => "the firmware does not fit this device",
            Self::RadioDisabled => "the radio needed for this update is disabled",
            Self::FirmwareListFailed => "could not get the list of available firmware",
            Self::Timeout => "the update timed out",
            Self::ServerRefused => "the server refused to start the update",
            Self::DeviceReportedFailure => "the device reported a failure",
            Self::BulkCheckTimeout => "no answer within the batch-check timeout",
            Self::AgentDisconnected => "the site's agent is disconnected from the server",
            Self::GatewayRequired => "the device must be updated through its gateway",
            Self::Unhealthy => "the device did not stay healthy after the update",
            Self::Other => "other error",
        }
    }

    /// Transient errors may be retried automatically with backoff; the others need a person.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::DownloadFailed
                | Self::ConnectFailed
                | Self::SendFailed
                | Self::Offline
                | Self::Timeout
                | Self::AgentDisconnected
                | Self::OneAtATime
                | Self::BulkCheckTimeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.description())
    }
}

/// A failure with its code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The product-wide code.
    pub code: ErrorCode,
    /// What happened, in the transport's words where it has them, and what to do about it.
    pub message: String,
}

impl TaskError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.code(), self.message)
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_follow_tuya() {
        let codes: Vec<u32> = UpgradeStatus::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7, 13, 14, 100]);
        for s in UpgradeStatus::ALL {
            assert_eq!(UpgradeStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(UpgradeStatus::from_code(8), None);
    }

    #[test]
    fn error_numbers_follow_tuya() {
        for e in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(e.code()), Some(e));
            assert!((5000..=5099).contains(&e.code()));
        }
        assert_eq!(ErrorCode::WeakSignal.code(), 5005);
        assert_eq!(ErrorCode::Offline.code(), 5012);
        assert_eq!(ErrorCode::Timeout.code(), 5016);
        assert_eq!(ErrorCode::BulkCheckTimeout.code(), 5019);
        assert_eq!(ErrorCode::from_code(5008), None);
    }

    #[test]
    fn terminal_statuses() {
        let terminal: Vec<_> = UpgradeStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                UpgradeStatus::Success,
                UpgradeStatus::Failure,
                UpgradeStatus::Timeout
            ]
        );
    }
}

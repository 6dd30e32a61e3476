//! zigbee2mqtt OTA error strings: classification into the product's status model, and the
//! exact strings per zigbee2mqtt version (for the simulator).
//!
//! What it does: map an error message of zigbee2mqtt 2.8+ or 2.0–2.7 (and the 1.x "aborted by
//! device") to a [`Z2mErrorKind`] and a [`TaskError`] whose message keeps zigbee2mqtt's words and
//! says what to do; build every error message the way each version words it ([`ErrorText`]).
//!
//! | zigbee2mqtt says | kind | code |
//! |---|---|---|
//! | `Device '…' does not exist` | [`Z2mErrorKind::NotFound`] | 5012: the site does not see the device |
//! | `… does not support OTA updates`, `No endpoint found with OTA cluster support` | [`Z2mErrorKind::NotSupported`] | 5013 |
//! | `… already in progress for '…'` | [`Z2mErrorKind::InProgress`] | 5002 |
//! | `No image currently available` | [`Z2mErrorKind::NoImage`] | 5001 |
//! | `Device didn't respond to OTA request` | [`Z2mErrorKind::NoResponse`] | 5006, with advice |
//! | `did not start/finish firmware download` | [`Z2mErrorKind::DownloadTimeout`] | 5016 |
//! | `failed with reason: <ZCL status>`, `aborted by device` | [`Z2mErrorKind::DeviceRefused`] | 5018 |
//! | `OTA for device … was aborted` | [`Z2mErrorKind::Aborted`] | 5099 |
//! | `No OTA in progress to abort …` | [`Z2mErrorKind::NothingToAbort`] | 5099 |
//! | anything else | [`Z2mErrorKind::Other`] | 5099, original text |
//!
//! "does not exist" is 5012 (offline / not seen by its site): zigbee2mqtt is reachable but no
//! longer knows the device (removed from the network, or renamed and addressed by its old
//! name), which for the product is a device its site does not see.
//!
//! What it does not do: decide retries (see `ErrorCode::is_transient`).

use ota_domain::status::{ErrorCode, TaskError};

use crate::z2m::Z2mVersion;

/// What a zigbee2mqtt OTA error means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Z2mErrorKind {
    /// The id is not a device zigbee2mqtt knows.
    NotFound,
    /// The device has no OTA support (no definition `ota`, or no OTA cluster).
    NotSupported,
    /// Another check or update for the same device runs.
    InProgress,
    /// No usable image: none in the index, or the given one could not be downloaded, parsed or
    /// is not newer than the device's.
    NoImage,
    /// The device did not answer the image notify within 60 s (asleep, out of range).
    NoResponse,
    /// The device stopped asking for image blocks.
    DownloadTimeout,
    /// The device ended the transfer with a ZCL status other than SUCCESS.
    DeviceRefused {
        /// The status name (`ABORT`, `INVALID_IMAGE`, …) or `aborted by device`.
        reason: String,
    },
    /// Someone aborted the transfer through the abort API.
    Aborted,
    /// An abort found no transfer to abort.
    NothingToAbort,
    /// Anything else.
    Other,
}

impl Z2mErrorKind {
    /// The product-wide error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::Offline,
            Self::NotSupported => ErrorCode::PrevalidationFailed,
            Self::InProgress => ErrorCode::OneAtATime,
            Self::NoImage => ErrorCode::NoFirmware,
            Self::NoResponse => ErrorCode::ConnectFailed,
            Self::DownloadTimeout => ErrorCode::Timeout,
            Self::DeviceRefused { .. } => ErrorCode::DeviceReportedFailure,
            Self::Aborted | Self::NothingToAbort | Self::Other => ErrorCode::Other,
        }
    }

    /// What to do about it, when there is something to say.
    pub fn advice(&self) -> Option<&'static str> {
        Some(match self {
            Self::NotFound => {
                "zigbee2mqtt does not know this device any more (removed or re-paired?)"
            }
            Self::NotSupported => "zigbee2mqtt cannot update this device over the air",
            Self::InProgress => {
                "zigbee2mqtt is already running an OTA check or update for this device; \
                 wait for it to finish"
            }
            Self::NoImage => {
                "zigbee2mqtt found no usable image: it could not fetch or parse it, or it does \
                 not match the device (manufacturer, image type, newer file version)"
            }
            Self::NoResponse => {
                "the device did not answer: wake it (press a button) or power-cycle it, then \
                 retry; for a sleepy battery device schedule the update instead"
            }
            Self::DownloadTimeout => {
                "the transfer stalled: the device stopped asking for image blocks; move it \
                 closer to a router or power-cycle it, then retry"
            }
            Self::DeviceRefused { .. } => {
                "the device rejected the image: power-cycle it, keep its battery above 70 %, \
                 then retry"
            }
            Self::Aborted | Self::NothingToAbort | Self::Other => return None,
        })
    }
}

/// Classifies a zigbee2mqtt OTA error message of any supported version.
pub fn classify(message: &str) -> Z2mErrorKind {
    let m = message;
    if m.starts_with("Device '") && m.ends_with("' does not exist") {
        return Z2mErrorKind::NotFound;
    }
    if m.contains("does not support OTA updates")
        || m.contains("No endpoint found with OTA cluster support")
    {
        return Z2mErrorKind::NotSupported;
    }
    if m.contains("already in progress for '") {
        return Z2mErrorKind::InProgress;
    }
    if m.contains("No image currently available") || m.contains("No image available") {
        return Z2mErrorKind::NoImage;
    }
    if m.contains("didn't respond to OTA request") {
        return Z2mErrorKind::NoResponse;
    }
    if m.contains("did not start/finish firmware download") {
        return Z2mErrorKind::DownloadTimeout;
    }
    if let Some(pos) = m.find("failed with reason: ") {
        let rest = &m[pos + "failed with reason: ".len()..];
        let reason = rest
            .trim_end_matches(')')
            .trim_matches('\'')
            .trim()
            .to_string();
        return Z2mErrorKind::DeviceRefused { reason };
    }
    if m.contains("aborted by device") {
        return Z2mErrorKind::DeviceRefused {
            reason: "aborted by device".into(),
        };
    }
    if m.starts_with("No OTA in progress to abort") {
        return Z2mErrorKind::NothingToAbort;
    }
    if m.contains("OTA for device ") && m.contains(" was aborted") {
        return Z2mErrorKind::Aborted;
    }
    Z2mErrorKind::Other
}

/// The [`TaskError`] for a zigbee2mqtt error message: its code, and a message that keeps
/// zigbee2mqtt's words and adds what to do.
pub fn to_task_error(message: &str) -> TaskError {
    let kind = classify(message);
    let text = match kind.advice() {
        Some(advice) => format!("zigbee2mqtt: {message} ({advice})"),
        None => format!("zigbee2mqtt: {message}"),
    };
    TaskError::new(kind.code(), text)
}

/// The exact error strings of one zigbee2mqtt version (`'X'` = friendly name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorText(pub Z2mVersion);

impl ErrorText {
    /// `Device '<id>' does not exist`.
    pub fn does_not_exist(self, id: &str) -> String {
        format!("Device '{id}' does not exist")
    }

    /// `Device 'X' does not support OTA updates`.
    pub fn not_supported(self, name: &str) -> String {
        format!("Device '{name}' does not support OTA updates")
    }

    /// The "already in progress" error.
    pub fn in_progress(self, name: &str) -> String {
        match self.0 {
            Z2mVersion::V2_8Plus => {
                format!("OTA update or check for update already in progress for '{name}'")
            }
            Z2mVersion::V2_0To2_7 => {
                format!("Update or check for update already in progress for '{name}'")
            }
        }
    }

    /// A failed check with its cause.
    pub fn check_failed(self, name: &str, cause: &str) -> String {
        match self.0 {
            Z2mVersion::V2_8Plus => {
                format!("Failed to check if OTA update available for '{name}' ({cause})")
            }
            Z2mVersion::V2_0To2_7 => {
                format!("Failed to check if update available for '{name}' ({cause})")
            }
        }
    }

    /// A failed update with its cause.
    pub fn update_failed(self, name: &str, cause: &str) -> String {
        match self.0 {
            Z2mVersion::V2_8Plus => format!("OTA update of '{name}' failed ({cause})"),
            Z2mVersion::V2_0To2_7 => format!("Update of '{name}' failed ({cause})"),
        }
    }

    /// Nothing to install (same wording in both versions).
    pub fn no_image(self, name: &str) -> String {
        format!("Update of '{name}' failed (No image currently available)")
    }

    /// An abort with nothing running (2.12+).
    pub fn nothing_to_abort(self, name: &str) -> String {
        format!("No OTA in progress to abort for device '{name}'")
    }

    /// Cause: the device did not answer the image notify within 60 s.
    pub fn cause_no_response(self) -> String {
        "Device didn't respond to OTA request".to_string()
    }

    /// Cause: no block request within the block timeout.
    pub fn cause_download_timeout(
        self,
        ieee: &str,
        model: &str,
        timeout_ms: u64,
        network_address: u16,
    ) -> String {
        let waitress = format!(
            "Timeout after {timeout_ms}ms [address={network_address} endpoint=1 clusterId=25 \
             cmdId=3 tsn=undefined]"
        );
        match self.0 {
            Z2mVersion::V2_8Plus => format!(
                "Device {ieee} did not start/finish firmware download after being notified. \
                 ({waitress})"
            ),
            Z2mVersion::V2_0To2_7 => format!(
                "[{ieee} | {model}] Timeout. Device did not start/finish firmware download \
                 after being notified. ({waitress})"
            ),
        }
    }

    /// Cause: the device's upgradeEndRequest carried `status` (e.g. `ABORT`).
    pub fn cause_end_status(self, ieee: &str, status: &str) -> String {
        match self.0 {
            Z2mVersion::V2_8Plus => format!("OTA update of {ieee} failed with reason: {status}"),
            Z2mVersion::V2_0To2_7 => format!("Update failed with reason: {status}"),
        }
    }

    /// Cause: the abort API stopped the transfer (2.12+).
    pub fn cause_aborted(self, ieee: &str) -> String {
        format!("OTA for device {ieee} was aborted")
    }

    /// Cause: no OTA cluster on the device (a url/hex request to an unsupported device).
    pub fn cause_no_ota_endpoint(self, ieee: &str) -> String {
        format!("No endpoint found with OTA cluster support for {ieee}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let current = ErrorText(Z2mVersion::V2_8Plus);
        let legacy = ErrorText(Z2mVersion::V2_0To2_7);
        let ieee = "0x000b57fffec6a5b2";
        let cases: Vec<(String, ErrorCode)> = vec![
            (current.does_not_exist("nope"), ErrorCode::Offline),
            (current.not_supported("sw"), ErrorCode::PrevalidationFailed),
            (
                current.update_failed("b", &current.cause_no_ota_endpoint(ieee)),
                ErrorCode::PrevalidationFailed,
            ),
            (current.in_progress("bulb"), ErrorCode::OneAtATime),
            (legacy.in_progress("bulb"), ErrorCode::OneAtATime),
            (current.no_image("bulb"), ErrorCode::NoFirmware),
            (
                current.update_failed("bulb", &current.cause_no_response()),
                ErrorCode::ConnectFailed,
            ),
            (
                legacy.update_failed("bulb", &legacy.cause_no_response()),
                ErrorCode::ConnectFailed,
            ),
            (
                current.check_failed("bulb", &current.cause_no_response()),
                ErrorCode::ConnectFailed,
            ),
            (
                current.update_failed(
                    "bulb",
                    &current.cause_download_timeout(ieee, "LED1624G9", 150000, 40369),
                ),
                ErrorCode::Timeout,
            ),
            (
                legacy.update_failed(
                    "bulb",
                    &legacy.cause_download_timeout(ieee, "LED1624G9", 150000, 40369),
                ),
                ErrorCode::Timeout,
            ),
            (
                current.update_failed("bulb", &current.cause_end_status(ieee, "ABORT")),
                ErrorCode::DeviceReportedFailure,
            ),
            (
                legacy.update_failed("bulb", &legacy.cause_end_status(ieee, "INVALID_IMAGE")),
                ErrorCode::DeviceReportedFailure,
            ),
            (
                "Update of 'plug' failed (Update failed with reason: 'aborted by device')"
                    .to_string(),
                ErrorCode::DeviceReportedFailure,
            ),
            (
                current.update_failed("bulb", &current.cause_aborted(ieee)),
                ErrorCode::Other,
            ),
            (current.nothing_to_abort("bulb"), ErrorCode::Other),
            (
                "OTA update of 'bulb' failed (Update failed)".to_string(),
                ErrorCode::Other,
            ),
            (
                current.check_failed("bulb", "RF signals disturbed because of dogs barking"),
                ErrorCode::Other,
            ),
        ];
        for (text, code) in cases {
            let e = to_task_error(&text);
            assert_eq!(e.code, code, "{text}");
            assert!(e.message.contains(&text), "{} lacks {text}", e.message);
        }
    }

    #[test]
    fn exact_strings_of_both_versions() {
        let c = ErrorText(Z2mVersion::V2_8Plus);
        let l = ErrorText(Z2mVersion::V2_0To2_7);
        assert_eq!(
            c.in_progress("bulb"),
            "OTA update or check for update already in progress for 'bulb'"
        );
        assert_eq!(
            l.in_progress("bulb"),
            "Update or check for update already in progress for 'bulb'"
        );
        assert_eq!(
            c.update_failed("bulb", "Update failed"),
            "OTA update of 'bulb' failed (Update failed)"
        );
        assert_eq!(
            c.check_failed("bulb", "RF signals disturbed because of dogs barking"),
            "Failed to check if OTA update available for 'bulb' (RF signals disturbed because of dogs barking)"
        );
        assert_eq!(
            l.check_failed("bulb", "x"),
            "Failed to check if update available for 'bulb' (x)"
        );
        assert_eq!(
            c.does_not_exist("not_existing_deviceooo"),
            "Device 'not_existing_deviceooo' does not exist"
        );
        assert_eq!(
            c.not_supported("dimmer_wall_switch"),
            "Device 'dimmer_wall_switch' does not support OTA updates"
        );
        assert_eq!(
            c.nothing_to_abort("bulb"),
            "No OTA in progress to abort for device 'bulb'"
        );
        assert_eq!(
            c.no_image("bulb"),
            "Update of 'bulb' failed (No image currently available)"
        );
        assert_eq!(
            c.cause_end_status("0x1", "ABORT"),
            "OTA update of 0x1 failed with reason: ABORT"
        );
        assert_eq!(
            l.cause_end_status("0x1", "ABORT"),
            "Update failed with reason: ABORT"
        );
    }

    #[test]
    fn advice_for_no_response_and_refusal() {
        let e = to_task_error("OTA update of 'r' failed (Device didn't respond to OTA request)");
        assert!(e.message.contains("wake it") && e.message.contains("power-cycle"));
        assert_eq!(
            classify("OTA update of 'b' failed (OTA update of 0x1 failed with reason: ABORT)"),
            Z2mErrorKind::DeviceRefused {
                reason: "ABORT".into()
            }
        );
        assert_eq!(classify("something new"), Z2mErrorKind::Other);
        assert_eq!(
            to_task_error("something new").message,
            "zigbee2mqtt: something new"
        );
    }
}

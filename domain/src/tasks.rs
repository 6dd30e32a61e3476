//! Decisions about one device update: does the firmware fit the device, may the task be sent to
//! its site now, and what an agent's result means (success, retry later, or final failure).
//!
//! Pure functions over the projection's views; the server turns their answers into events.
//! The task's life, with Tuya status numbers:
//!
//! ```text
//!            created
//!               │
//!               ▼
//!        ┌── queued 13 ◄──────────────── retry after backoff (transient error)
//!        │      │ preflight                      ▲
//!        │      ├─► skipped (5000 on target, 5013 does not fit, battery low → reminder)
//!        │      ├─► held 14 (5005 weak signal: waits for confirm; 5012/5020: retried later)
//!        │      ▼
//!        │  dispatched 100 ──► waiting for wake-up 5 ──► updating 2 ──► downloaded 6
//!        │      │                                            │              │
//!        │      └──────────────┬─────────────────────────────┴──────────────┘
//!        │                     ▼
//!        │        success 3 | failure 4 (+ code) | timeout 7
//!        └─► cancelled (only from queued, held, waiting for wake-up)
//! ```

use std::time::Duration;

use crate::events::FirmwareRegistered;
use crate::model::{DeviceFacts, FirmwareFormat, PowerSource, Signal, Transport, compare_versions};
use crate::projection::TaskView;
use crate::rollout::spec::Preconditions;
use crate::status::{ErrorCode, TaskError, UpgradeStatus};
use crate::time::UnixMillis;

/// The firmware label that lists the device models an image is for (comma-separated, compared
/// case-insensitively). Without it, only the image's own facts (Zigbee manufacturer code and image
/// type where the device reports them, ESP chip) decide.
pub const MODELS_LABEL: &str = "models";

/// Whether a device can be updated at all: it supports OTA, or it is an ESP chip on a serial
/// port (its ROM bootloader takes an image whatever the running firmware says). Firmware fit,
/// the auto-upgrade switch and its "supported" answer all ask this.
pub fn can_update(device: &DeviceFacts) -> bool {
    device.supports_ota || device.transport == Some(Transport::Serial)
}

/// Why a firmware does not fit a device (→ 5013), or `Ok`.
pub fn firmware_fits(fw: &FirmwareRegistered, device: &DeviceFacts) -> Result<(), String> {
    let Some(transport) = device.transport else {
        return Err("the site did not say how it reaches this device".into());
    };
    if !can_update(device) {
        return Err(format!(
            "{} does not support OTA updates",
            display_name(device)
        ));
    }
    if !fw.format.fits_transport(transport) {
        return Err(format!(
            "a {} image cannot be installed over {}",
            fw.format.name(),
            transport
        ));
    }
    // zigbee2mqtt does not publish a device's manufacturer code or image type, so for its devices
    // the operator names the models an image is for with the label `models` (comma-separated).
    if let Some(models) = fw.labels.get(MODELS_LABEL) {
        let listed = || models.split(',').map(str::trim).filter(|m| !m.is_empty());
        if !listed().any(|m| m.eq_ignore_ascii_case(device.model.trim())) {
            let model = if device.model.is_empty() {
                "an unknown model".to_string()
            } else {
                format!("{:?}", device.model)
            };
            return Err(format!(
                "the firmware is labelled for models {models:?}; {} is {model}",
                display_name(device)
            ));
        }
    }
    match fw.format {
        FirmwareFormat::ZigbeeOta => {
            let Some(z) = &fw.zigbee else {
                return Err("the firmware has no Zigbee header facts".into());
            };
            if let Some(code) = device.manufacturer_code
                && z.manufacturer_code != 0xFFFF
                && code != z.manufacturer_code
            {
                return Err(format!(
                    "manufacturer code 0x{:04X} of the image does not match the device's 0x{code:04X}",
                    z.manufacturer_code
                ));
            }
            if let Some(ty) = device.image_type
                && z.image_type != 0xFFFF
                && ty != z.image_type
            {
                return Err(format!(
                    "image type 0x{:04X} of the image does not match the device's 0x{ty:04X}",
                    z.image_type
                ));
            }
            if let Some(hw) = device.hardware_version {
                if let Some(min) = z.min_hardware_version
                    && hw < min
                {
                    return Err(format!(
                        "the image needs hardware version ≥ {min}, the device has {hw}"
                    ));
                }
                if let Some(max) = z.max_hardware_version
                    && hw > max
                {
                    return Err(format!(
                        "the image needs hardware version ≤ {max}, the device has {hw}"
                    ));
                }
            }
            Ok(())
        }
        FirmwareFormat::EspApp | FirmwareFormat::EspFactory => {
            let Some(e) = &fw.esp else {
                return Err("the firmware has no ESP image facts".into());
            };
            if !device.chip.is_empty()
                && !e.chip.is_empty()
                && !device.chip.eq_ignore_ascii_case(&e.chip)
            {
                return Err(format!(
                    "the image is built for {}, the device is an {}",
                    e.chip, device.chip
                ));
            }
            Ok(())
        }
    }
}

fn display_name(d: &DeviceFacts) -> String {
    if d.name.is_empty() {
        "the device".into()
    } else {
        format!("{:?}", d.name)
    }
}

/// The version a firmware installs, as devices report it.
pub fn target_version(fw: &FirmwareRegistered) -> crate::model::VersionInfo {
    crate::model::VersionInfo {
        version: match (&fw.zigbee, &fw.esp) {
            (Some(z), _) => z.file_version.to_string(),
            (None, Some(e)) if !e.app_version.is_empty() => e.app_version.clone(),
            _ => fw.version.clone(),
        },
        file_version: fw.zigbee.as_ref().map(|z| z.file_version),
        software_build_id: None,
        date_code: None,
    }
}

/// How the device's current version compares with the firmware's.
pub fn compare_with_device(
    fw: &FirmwareRegistered,
    device: &DeviceFacts,
) -> Option<std::cmp::Ordering> {
    if let (Some(z), Some(current)) = (&fw.zigbee, device.current.file_version) {
        return Some(current.cmp(&z.file_version));
    }
    let target = target_version(fw).version;
    if device.current.version.is_empty() || target.is_empty() {
        return None;
    }
    Some(compare_versions(&device.current.version, &target))
}

/// The device already runs the firmware's version.
pub fn is_on_target(fw: &FirmwareRegistered, device: &DeviceFacts) -> bool {
    compare_with_device(fw, device) == Some(std::cmp::Ordering::Equal)
}

/// Installing the firmware would go back to an older version.
pub fn is_downgrade(fw: &FirmwareRegistered, device: &DeviceFacts) -> bool {
    compare_with_device(fw, device) == Some(std::cmp::Ordering::Greater)
}

/// A battery device that is probably asleep most of the time: update by schedule.
pub fn is_sleepy(device: &DeviceFacts) -> bool {
    device.transport == Some(Transport::Zigbee2Mqtt) && device.power_source == PowerSource::Battery
}

/// What to do with a queued task right before dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// Send it to the site; `schedule` for sleepy devices.
    Dispatch {
        /// Schedule for the device's next wake-up.
        schedule: bool,
    },
    /// Hold it: weak signal waits for confirmation; offline / disconnected is retried.
    Hold {
        /// Why.
        error: TaskError,
        /// Words for a person.
        remind: String,
        /// Needs `ConfirmWarning`.
        needs_confirmation: bool,
    },
    /// End it without an update.
    Skip {
        /// Code.
        code: ErrorCode,
        /// Words for a person.
        remind: String,
    },
}

/// Everything preflight looks at.
#[derive(Debug, Clone, Copy)]
pub struct PreflightInput<'a> {
    /// The task.
    pub task: &'a TaskView,
    /// The device's facts.
    pub device: &'a DeviceFacts,
    /// The device is gone from its site.
    pub device_removed: bool,
    /// The firmware.
    pub firmware: &'a FirmwareRegistered,
    /// The site's agent is connected.
    pub site_connected: bool,
    /// Thresholds.
    pub preconditions: &'a Preconditions,
}

/// Checks the preconditions of a task in the order an operator expects: the firmware must fit,
/// the device must not already be on it, the site and device must be there, the battery must
/// be charged, the signal strong enough (unless confirmed).
pub fn preflight(input: PreflightInput<'_>) -> Preflight {
    let PreflightInput {
        task,
        device,
        device_removed,
        firmware,
        site_connected,
        preconditions,
    } = input;
    if let Err(why) = firmware_fits(firmware, device) {
        return Preflight::Skip {
            code: ErrorCode::PrevalidationFailed,
            remind: why,
        };
    }
    if is_on_target(firmware, device) {
        return Preflight::Skip {
            code: ErrorCode::AlreadyOnTarget,
            remind: format!("already on {}", target_version(firmware).version),
        };
    }
    if is_downgrade(firmware, device) && !task.created.downgrade {
        return Preflight::Skip {
            code: ErrorCode::PrevalidationFailed,
            remind: format!(
                "the device runs {}, newer than {}: a downgrade must be requested explicitly",
                device.current.version,
                target_version(firmware).version
            ),
        };
    }
    if !site_connected {
        return Preflight::Hold {
            error: TaskError::new(
                ErrorCode::AgentDisconnected,
                format!("site {} has no agent connected", task.created.site_id),
            ),
            remind: "waiting for the site's agent to reconnect".into(),
            needs_confirmation: false,
        };
    }
    let sleepy = is_sleepy(device);
    if device_removed || (!device.reachable && !sleepy) {
        return Preflight::Hold {
            error: TaskError::new(ErrorCode::Offline, "the device is offline"),
            remind: "waiting for the device to come online".into(),
            needs_confirmation: false,
        };
    }
    if device.power_source == PowerSource::Battery
        && let Some(battery) = device.battery_percent
        && let Some(min) = preconditions.min_battery_percent
        && battery < min
    {
        return Preflight::Skip {
            code: ErrorCode::Other,
            remind: format!(
                "battery at {battery} %, below the {min} % an OTA update needs: charge or replace the battery, then update again"
            ),
        };
    }
    if !task.signal_confirmed {
        let weak = match (
            device.signal,
            preconditions.min_linkquality,
            preconditions.min_rssi_dbm,
        ) {
            (Some(Signal::LinkQuality(lq)), Some(min), _) if lq < min => {
                Some(format!("link quality {lq} is below {min}"))
            }
            (Some(Signal::RssiDbm(rssi)), _, Some(min)) if rssi < min => {
                Some(format!("Wi-Fi signal {rssi} dBm is below {min} dBm"))
            }
            _ => None,
        };
        if let Some(why) = weak {
            return Preflight::Hold {
                error: TaskError::new(ErrorCode::WeakSignal, format!("{why}: the update may fail")),
                remind: format!(
                    "signal too weak; `otactl device confirm {} --continue` or `--cancel`",
                    task.created.device_id
                ),
                needs_confirmation: true,
            };
        }
    }
    Preflight::Dispatch { schedule: sleepy }
}

/// What an attempt's failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time.
    RetryAt(UnixMillis),
    /// The task ends.
    Final,
}

/// Backoff before attempt `next_attempt` (2 for the first retry): `initial · 2^(n-2)` capped at
/// `max`, then shortened by up to a quarter by `jitter` (0.0..1.0) so retries of many devices
/// spread out.
pub fn backoff(initial_s: u32, max_s: u32, next_attempt: u32, jitter: f64) -> Duration {
    let exp = next_attempt.saturating_sub(2).min(30);
    let base = u64::from(initial_s)
        .saturating_mul(1u64 << exp)
        .min(u64::from(max_s))
        * 1000;
    let jitter = jitter.clamp(0.0, 1.0);
    Duration::from_millis((base as f64 * (1.0 - 0.25 * jitter)) as u64)
}

/// Decides whether a failed attempt is retried.
pub fn after_failure(
    task: &TaskView,
    error: &TaskError,
    now: UnixMillis,
    jitter: f64,
) -> AfterFailure {
    let c = &task.created;
    if error.code.is_transient() && task.attempt < c.max_attempts {
        AfterFailure::RetryAt(
            now + backoff(
                c.initial_backoff_s,
                c.max_backoff_s,
                task.attempt + 1,
                jitter,
            ),
        )
    } else {
        AfterFailure::Final
    }
}

/// Maps an agent's final status into success or a failure with a code.
pub fn result_error(status: UpgradeStatus, error: Option<TaskError>) -> Result<(), TaskError> {
    match status {
        UpgradeStatus::Success => Ok(()),
        UpgradeStatus::Timeout => Err(error.unwrap_or_else(|| {
            TaskError::new(ErrorCode::Timeout, "the site reports the update timed out")
        })),
        _ => Err(error.unwrap_or_else(|| {
            TaskError::new(
                ErrorCode::Other,
                "the site reports a failure without a reason",
            )
        })),
    }
}

/// The newest firmware in the catalog that fits the device and is newer than what it runs.
pub fn best_firmware<'a>(
    catalog: impl IntoIterator<Item = &'a FirmwareRegistered>,
    device: &DeviceFacts,
) -> Option<&'a FirmwareRegistered> {
    catalog
        .into_iter()
        .filter(|fw| firmware_fits(fw, device).is_ok())
        .filter(|fw| compare_with_device(fw, device) == Some(std::cmp::Ordering::Less))
        .max_by(|a, b| match (&a.zigbee, &b.zigbee) {
            (Some(x), Some(y)) => x.file_version.cmp(&y.file_version),
            _ => compare_versions(&target_version(a).version, &target_version(b).version),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TaskCreated;
    use crate::model::{EspFacts, VersionInfo, ZigbeeFacts};
    use crate::rollout::spec::UpgradeType;

    fn zigbee_fw(version: u32) -> FirmwareRegistered {
        FirmwareRegistered {
            id: "fw-1".into(),
            name: "hue".into(),
            version: "x".into(),
            format: FirmwareFormat::ZigbeeOta,
            channel: 3,
            size: 10,
            sha256: String::new(),
            md5: String::new(),
            sha512: String::new(),
            zigbee: Some(ZigbeeFacts {
                manufacturer_code: 0x100B,
                image_type: 0x0119,
                file_version: version,
                min_hardware_version: Some(1),
                max_hardware_version: Some(5),
                ..Default::default()
            }),
            esp: None,
            labels: Default::default(),
            release_notes: String::new(),
        }
    }

    fn zigbee_device(version: u32) -> DeviceFacts {
        DeviceFacts {
            transport: Some(Transport::Zigbee2Mqtt),
            manufacturer_code: Some(0x100B),
            image_type: Some(0x0119),
            current: VersionInfo {
                version: version.to_string(),
                file_version: Some(version),
                ..Default::default()
            },
            power_source: PowerSource::Mains,
            signal: Some(Signal::LinkQuality(200)),
            reachable: true,
            supports_ota: true,
            hardware_version: Some(2),
            ..Default::default()
        }
    }

    fn task() -> TaskView {
        TaskView::queued(
            TaskCreated {
                task_id: "t".into(),
                device_id: "home/d".into(),
                site_id: "home".into(),
                rollout_id: None,
                stage: 0,
                firmware_id: "fw-1".into(),
                target: VersionInfo::default(),
                upgrade_type: UpgradeType::Notify,
                downgrade: false,
                max_attempts: 3,
                initial_backoff_s: 30,
                max_backoff_s: 900,
                timeout_s: 600,
                flash_offset: None,
                auto: false,
                wake_timeout_s: 0,
                from: None,
                from_firmware_id: None,
            },
            UnixMillis::EPOCH,
            String::new(),
        )
    }

    fn run(
        task: &TaskView,
        device: &DeviceFacts,
        fw: &FirmwareRegistered,
        connected: bool,
    ) -> Preflight {
        preflight(PreflightInput {
            task,
            device,
            device_removed: false,
            firmware: fw,
            site_connected: connected,
            preconditions: &Preconditions::default(),
        })
    }

    #[test]
    fn the_models_label_restricts_an_image_to_the_listed_models() {
        // zigbee2mqtt reports no manufacturer code or image type: only the label can tell.
        let mut device = zigbee_device(1);
        device.manufacturer_code = None;
        device.image_type = None;
        device.model = "LED1623G12".into();
        let mut fw = zigbee_fw(2);
        assert_eq!(
            firmware_fits(&fw, &device),
            Ok(()),
            "no label: the header decides"
        );
        fw.labels
            .insert(MODELS_LABEL.into(), "929002335001, 9290022166 ".into());
        let err = firmware_fits(&fw, &device).unwrap_err();
        assert!(
            err.contains("929002335001") && err.contains("LED1623G12"),
            "{err}"
        );
        assert!(best_firmware([&fw], &device).is_none());
        device.model = "9290022166".into();
        assert_eq!(firmware_fits(&fw, &device), Ok(()));
        device.model = "led1623g12".into();
        fw.labels.insert(MODELS_LABEL.into(), "LED1623G12".into());
        assert_eq!(
            firmware_fits(&fw, &device),
            Ok(()),
            "models compare case-insensitively"
        );
    }

    #[test]
    fn dispatches_a_fitting_update() {
        assert_eq!(
            run(&task(), &zigbee_device(1), &zigbee_fw(2), true),
            Preflight::Dispatch { schedule: false }
        );
    }

    #[test]
    fn each_precondition_in_order() {
        let t = task();
        let fw = zigbee_fw(2);
        // Wrong manufacturer → 5013.
        let mut d = zigbee_device(1);
        d.manufacturer_code = Some(0x1234);
        assert!(
            matches!(run(&t, &d, &fw, true), Preflight::Skip { code: ErrorCode::PrevalidationFailed, remind } if remind.contains("0x100B"))
        );
        // Hardware out of range → 5013.
        let mut d = zigbee_device(1);
        d.hardware_version = Some(9);
        assert!(matches!(
            run(&t, &d, &fw, true),
            Preflight::Skip {
                code: ErrorCode::PrevalidationFailed,
                ..
            }
        ));
        // Already on target → 5000.
        assert!(matches!(
            run(&t, &zigbee_device(2), &fw, true),
            Preflight::Skip {
                code: ErrorCode::AlreadyOnTarget,
                ..
            }
        ));
        // Downgrade without permission → 5013; with it → dispatch.
        assert!(
            matches!(run(&t, &zigbee_device(3), &fw, true), Preflight::Skip { code: ErrorCode::PrevalidationFailed, remind } if remind.contains("downgrade"))
        );
        let mut down = task();
        down.created.downgrade = true;
        assert_eq!(
            run(&down, &zigbee_device(3), &fw, true),
            Preflight::Dispatch { schedule: false }
        );
        // Site disconnected → hold 5020.
        assert!(
            matches!(run(&t, &zigbee_device(1), &fw, false), Preflight::Hold { error, .. } if error.code == ErrorCode::AgentDisconnected)
        );
        // Offline mains device → hold 5012.
        let mut d = zigbee_device(1);
        d.reachable = false;
        assert!(
            matches!(run(&t, &d, &fw, true), Preflight::Hold { error, needs_confirmation: false, .. } if error.code == ErrorCode::Offline)
        );
        // Battery low → skipped with a reminder.
        let mut d = zigbee_device(1);
        d.power_source = PowerSource::Battery;
        d.battery_percent = Some(40);
        assert!(
            matches!(run(&t, &d, &fw, true), Preflight::Skip { remind, .. } if remind.contains("40 %"))
        );
        // Sleepy and charged → scheduled, even when not reachable right now.
        d.battery_percent = Some(90);
        d.reachable = false;
        assert_eq!(
            run(&t, &d, &fw, true),
            Preflight::Dispatch { schedule: true }
        );
        // Weak signal → waits for confirmation, unless confirmed.
        let mut d = zigbee_device(1);
        d.signal = Some(Signal::LinkQuality(10));
        assert!(
            matches!(run(&t, &d, &fw, true), Preflight::Hold { error, needs_confirmation: true, .. } if error.code == ErrorCode::WeakSignal)
        );
        let mut confirmed = task();
        confirmed.signal_confirmed = true;
        assert_eq!(
            run(&confirmed, &d, &fw, true),
            Preflight::Dispatch { schedule: false }
        );
    }

    #[test]
    fn esp_chip_must_match() {
        let fw = FirmwareRegistered {
            format: FirmwareFormat::EspApp,
            zigbee: None,
            esp: Some(EspFacts {
                chip: "esp32c3".into(),
                app_version: "2026.11.1".into(),
                ..Default::default()
            }),
            ..zigbee_fw(1)
        };
        let device = DeviceFacts {
            transport: Some(Transport::Esphome),
            chip: "esp32".into(),
            supports_ota: true,
            reachable: true,
            current: VersionInfo {
                version: "2026.10.0".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(firmware_fits(&fw, &device).unwrap_err().contains("esp32c3"));
        let device = DeviceFacts {
            chip: "esp32c3".into(),
            ..device
        };
        assert!(firmware_fits(&fw, &device).is_ok());
        assert!(!is_on_target(&fw, &device));
        assert!(!is_downgrade(&fw, &device));
        // An ESP image never goes to a Zigbee device.
        assert!(firmware_fits(&fw, &zigbee_device(1)).is_err());
    }

    #[test]
    fn retries_only_transient_errors_with_growing_backoff() {
        let mut t = task();
        t.attempt = 1;
        let transient = TaskError::new(ErrorCode::ConnectFailed, "no answer");
        assert_eq!(
            after_failure(&t, &transient, UnixMillis::from_unix_ms(1000), 0.0),
            AfterFailure::RetryAt(UnixMillis::from_unix_ms(31_000))
        );
        t.attempt = 2;
        assert_eq!(
            after_failure(&t, &transient, UnixMillis::from_unix_ms(1000), 0.0),
            AfterFailure::RetryAt(UnixMillis::from_unix_ms(61_000))
        );
        t.attempt = 3;
        assert_eq!(
            after_failure(&t, &transient, UnixMillis::from_unix_ms(1000), 0.0),
            AfterFailure::Final
        );
        t.attempt = 1;
        let permanent = TaskError::new(ErrorCode::ChecksumMismatch, "md5");
        assert_eq!(
            after_failure(&t, &permanent, UnixMillis::from_unix_ms(1000), 0.0),
            AfterFailure::Final
        );
    }

    #[test]
    fn backoff_is_capped_and_jitter_only_shortens() {
        assert_eq!(backoff(30, 900, 2, 0.0), Duration::from_millis(30_000));
        assert_eq!(backoff(30, 900, 3, 0.0), Duration::from_millis(60_000));
        assert_eq!(backoff(30, 900, 10, 0.0), Duration::from_millis(900_000));
        assert_eq!(backoff(30, 900, 40, 0.0), Duration::from_millis(900_000));
        assert_eq!(backoff(30, 900, 2, 1.0), Duration::from_millis(22_500));
    }
}

//! Native OTA failures in the product's status model: every device response code and every
//! uploader failure becomes a [`TaskError`] whose message says what ESPHome means and what to do.
//!
//! | failure | code |
//! |---|---|
//! | 0x82 wrong password, 0x85 ESP8266 in serial bootloader mode, 0x94 encryption required, no password or key configured, wrong Noise key, connect or handshake failure | 5006 |
//! | 0x8B MD5 mismatch | 5009 |
//! | 0x83 flash write error, connection reset mid-transfer | 5010 |
//! | 0x88 / 0x89 / 0x8C not enough space, 0x80 bad image start, 0x86 / 0x87 flash config, 0x8A no OTA partition, 0x8E unsupported type | 5013 |
//! | data-phase timeout | 5016 |
//! | 0x84 end failed, 0x8D signature, 0x93 downgrade, 0x81, 0x8F–0x92, 0xFF, unexpected bytes | 5018 |
//!
//! Messages never contain a password or a key.

use ota_devproto::esphome::{ClientError, ErrorCode as DeviceCode};
use ota_domain::status::{ErrorCode, TaskError};

use super::native::{AttemptError, Timeouts, in_handshake};

/// What the messages may mention.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The device's local id.
    pub device: &'a str,
    /// `host:port` of its OTA port.
    pub addr: &'a str,
    /// The timeouts in force.
    pub timeouts: Timeouts,
    /// Bytes of the image.
    pub image_len: usize,
}

/// The task error for a failed attempt.
pub fn task_error(ctx: &Context<'_>, err: &AttemptError) -> TaskError {
    let Context { device, addr, .. } = *ctx;
    match err {
        AttemptError::Connect(e) => TaskError::new(
            ErrorCode::ConnectFailed,
            format!(
                "could not connect to {device}'s OTA port {addr} ({e}): is the device on, on \
                 this address, and does its firmware have `ota: - platform: esphome` on this port?"
            ),
        ),
        AttemptError::ConnectTimeout(t) => TaskError::new(
            ErrorCode::ConnectFailed,
            format!("no answer from {device}'s OTA port {addr} within {t:?}: is it online?"),
        ),
        AttemptError::Cancelled => TaskError::new(
            ErrorCode::Other,
            format!("cancelled before any image byte was sent to {device}; it keeps its firmware"),
        ),
        AttemptError::Ota(e) => client_error(ctx, e),
        AttemptError::NotCommitted(why) => TaskError::new(
            ErrorCode::SendFailed,
            format!(
                "the upload to {device} stopped before its last block ({why}); the device keeps \
                 its firmware"
            ),
        ),
    }
}

fn client_error(ctx: &Context<'_>, e: &ClientError) -> TaskError {
    let Context {
        device,
        addr,
        timeouts,
        image_len,
    } = *ctx;
    let (code, msg) = match e {
        ClientError::Device { code, .. } => return device_error(ctx, *code),
        ClientError::PasswordRequired => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} asks for an OTA password but none is configured: set password or \
                 password_file (the password of the firmware running now)"
            ),
        ),
        ClientError::EncryptionNotOffered => (
            ErrorCode::ConnectFailed,
            format!(
                "{device}: an OTA encryption key is configured but the device does not offer \
                 encryption (firmware before ESPHome 2026.9, or without an api encryption key); \
                 the image was not sent. Set allow_plaintext = true for the one install that \
                 migrates it"
            ),
        ),
        ClientError::NoiseWrongKey => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} rejected the encrypted OTA handshake: the configured noise key (or api \
                 key) is not the device's key"
            ),
        ),
        ClientError::NoiseRejected(reason) => (
            ErrorCode::ConnectFailed,
            format!("{device} rejected the encrypted OTA handshake: {reason}"),
        ),
        ClientError::Noise { .. } => (
            ErrorCode::SendFailed,
            format!("{device}: the encrypted OTA session failed ({e}); upload again"),
        ),
        ClientError::UnsupportedVersion(v) => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} speaks OTA protocol version {v}, which this agent does not know \
                 (it speaks 1 and 2): is {addr} an ESPHome OTA port?"
            ),
        ),
        ClientError::Unsupported(why) => (
            ErrorCode::PrevalidationFailed,
            format!("{device} cannot take this upload: {why}"),
        ),
        ClientError::InvalidImage(why) => (
            ErrorCode::PrevalidationFailed,
            format!("the image cannot be sent to {device}: {why}"),
        ),
        ClientError::Unexpected { got, waiting } if in_handshake(*waiting) => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} answered 0x{got:02X} while we waited for {waiting}: is {addr} an \
                 ESPHome native OTA port?"
            ),
        ),
        ClientError::Unexpected { .. } => (
            ErrorCode::DeviceReportedFailure,
            format!("{device}: {e}; the update was not applied"),
        ),
        ClientError::ConnectionClosed { waiting, .. } if in_handshake(*waiting) => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} closed the OTA connection while we waited for {waiting} (another \
                 upload in progress, or not an ESPHome OTA port?)"
            ),
        ),
        ClientError::ConnectionClosed { waiting, .. } => (
            ErrorCode::SendFailed,
            format!(
                "the connection to {device} was reset while sending the firmware (waiting for \
                 {waiting}): the device may have crashed or lost Wi-Fi; it keeps its old \
                 firmware, upload again"
            ),
        ),
        ClientError::Timeout { waiting, .. } if in_handshake(*waiting) => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} did not finish the OTA handshake within {:?} (waiting for {waiting})",
                timeouts.handshake
            ),
        ),
        ClientError::Timeout { waiting, .. } => (
            ErrorCode::Timeout,
            format!(
                "{device} stopped answering for {:?} while we waited for {waiting} ({image_len} \
                 byte image): slow flash, weak Wi-Fi or a wedged device; it keeps its old firmware",
                timeouts.data
            ),
        ),
    };
    TaskError::new(code, msg)
}

/// The task error for a device response code.
pub fn device_error(ctx: &Context<'_>, code: DeviceCode) -> TaskError {
    let device = ctx.device;
    let byte = code.byte();
    let (status, msg) = match code {
        DeviceCode::AuthInvalid => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} refused the OTA password (0x{byte:02X}, authentication invalid): check \
                 the device's OTA password (the password of the firmware running now, not the \
                 one the new firmware sets)"
            ),
        ),
        DeviceCode::InvalidBootstrapping => (
            ErrorCode::ConnectFailed,
            format!(
                "{device}: ESP8266 still in serial bootloader mode (0x{byte:02X}): power-cycle \
                 it once, then update again"
            ),
        ),
        DeviceCode::EncryptionRequired => (
            ErrorCode::ConnectFailed,
            format!(
                "{device} requires an encrypted upload (0x{byte:02X}, encryption required): \
                 configure its noise_key (the base64 key of `ota: encryption:` or `api: \
                 encryption:` in its YAML)"
            ),
        ),
        DeviceCode::Md5Mismatch => (
            ErrorCode::ChecksumMismatch,
            format!(
                "{device} received an image whose MD5 does not match (0x{byte:02X}): it was \
                 corrupted in transit; the device keeps its old firmware"
            ),
        ),
        DeviceCode::WritingFlash => (
            ErrorCode::SendFailed,
            format!(
                "{device} could not write the image to its flash (0x{byte:02X}); it keeps its old \
                 firmware; the device log has the details"
            ),
        ),
        c if c.is_not_enough_space() => (
            ErrorCode::PrevalidationFailed,
            format!(
                "not enough space on {device} for the {} byte image (0x{byte:02X}): {c}",
                ctx.image_len
            ),
        ),
        DeviceCode::Magic
        | DeviceCode::WrongCurrentFlashConfig
        | DeviceCode::WrongNewFlashConfig
        | DeviceCode::NoUpdatePartition
        | DeviceCode::UnsupportedOtaType => (
            ErrorCode::PrevalidationFailed,
            format!("{device} refused the image: {code}"),
        ),
        _ => (
            ErrorCode::DeviceReportedFailure,
            format!("{device} reported a failure: {code}"),
        ),
    };
    TaskError::new(status, msg)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ota_devproto::esphome::ClientState;

    use super::*;

    fn ctx() -> Context<'static> {
        Context {
            device: "kitchen",
            addr: "10.0.0.2:3232",
            timeouts: Timeouts {
                connect: Duration::from_secs(20),
                handshake: Duration::from_secs(20),
                data: Duration::from_secs(160),
            },
            image_len: 1000,
        }
    }

    #[test]
    fn every_device_code_has_the_status_model_code() {
        let expect = |c: DeviceCode| match c.byte() {
            0x82 | 0x85 | 0x94 => ErrorCode::ConnectFailed,
            0x8B => ErrorCode::ChecksumMismatch,
            0x83 => ErrorCode::SendFailed,
            0x80 | 0x86..=0x8A | 0x8C | 0x8E => ErrorCode::PrevalidationFailed,
            _ => ErrorCode::DeviceReportedFailure,
        };
        for c in DeviceCode::ALL {
            let e = device_error(&ctx(), c);
            assert_eq!(e.code, expect(c), "{c:?}");
            assert!(e.message.contains("kitchen"), "{}", e.message);
            assert!(
                e.message.contains(&format!("0x{:02X}", c.byte())),
                "{}",
                e.message
            );
        }
        assert!(
            device_error(&ctx(), DeviceCode::AuthInvalid)
                .message
                .contains(
                    "check the device's OTA password (the password of the firmware running now"
                )
        );
        assert!(
            device_error(&ctx(), DeviceCode::InvalidBootstrapping)
                .message
                .contains("ESP8266 still in serial bootloader mode")
        );
        assert!(
            device_error(&ctx(), DeviceCode::EncryptionRequired)
                .message
                .contains("encryption required")
        );
    }

    #[test]
    fn network_failures_by_phase() {
        let err = |e| task_error(&ctx(), &AttemptError::Ota(e));
        let closed_data = err(ClientError::ConnectionClosed {
            waiting: ClientState::AwaitChunkAck,
            may_have_committed: false,
        });
        assert_eq!(closed_data.code, ErrorCode::SendFailed);
        let closed_hs = err(ClientError::ConnectionClosed {
            waiting: ClientState::AwaitFeatureAck,
            may_have_committed: false,
        });
        assert_eq!(closed_hs.code, ErrorCode::ConnectFailed);
        let slow_hs = err(ClientError::Timeout {
            waiting: ClientState::AwaitAuthResult,
            may_have_committed: false,
        });
        assert_eq!(slow_hs.code, ErrorCode::ConnectFailed);
        let slow_data = err(ClientError::Timeout {
            waiting: ClientState::AwaitChunkAck,
            may_have_committed: false,
        });
        assert_eq!(slow_data.code, ErrorCode::Timeout);
        assert!(slow_data.message.contains("160s"), "{}", slow_data.message);
        let refused = task_error(
            &ctx(),
            &AttemptError::Connect(std::io::ErrorKind::ConnectionRefused.into()),
        );
        assert_eq!(refused.code, ErrorCode::ConnectFailed);
        assert!(refused.message.contains("10.0.0.2:3232"));
        assert_eq!(
            err(ClientError::PasswordRequired).code,
            ErrorCode::ConnectFailed
        );
        assert_eq!(
            err(ClientError::NoiseWrongKey).code,
            ErrorCode::ConnectFailed
        );
        assert_eq!(
            err(ClientError::EncryptionNotOffered).code,
            ErrorCode::ConnectFailed
        );
    }
}

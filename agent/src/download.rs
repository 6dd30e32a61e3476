//! Fetching a firmware image from the server and verifying it before any byte reaches a device.
//!
//! The image streams from `FirmwareService.Download` (resuming from the last byte received after
//! a broken stream), must have exactly the announced size, and its SHA-256 must equal the one
//! the server's command named. A mismatch is 5009 and the image is discarded; a download that
//! keeps failing is 5003.
//!
//! Tracing: a `firmware.download` span (firmware, task, bytes, attempts, outcome) whose context
//! goes with every `Download` request as `traceparent` metadata, so otad's side of the download
//! is in the same trace as the task.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use md5::Digest as _;
use ota_domain::status::{ErrorCode, TaskError};
use ota_proto::v1 as pb;
use sha2::Sha256;
use tonic::transport::Channel;
use tracing::{Instrument, debug, field, warn};

use crate::transport::VerifiedImage;

/// How often a broken download is resumed before giving up.
const ATTEMPTS: u32 = 4;

/// Downloads and verifies `firmware`.
pub async fn fetch(
    channel: Channel,
    firmware: &pb::FirmwareRef,
    task_id: &str,
) -> Result<VerifiedImage, TaskError> {
    let span = tracing::info_span!(
        "firmware.download",
        otel.kind = "client",
        firmware.id = %firmware.id,
        task.id = %task_id,
        bytes.total = firmware.size,
        bytes = field::Empty,
        attempts = field::Empty,
        outcome = field::Empty,
        error.code = field::Empty,
        otel.status_code = field::Empty,
    );
    let result = fetch_traced(channel, firmware, task_id, &span)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(image) => {
            span.record("bytes", image.bytes.len() as u64);
            span.record("outcome", "ok");
        }
        Err(e) => {
            span.record("outcome", "error");
            span.record("error.code", e.code.code());
            span.record("otel.status_code", "error");
        }
    }
    result
}

async fn fetch_traced(
    channel: Channel,
    firmware: &pb::FirmwareRef,
    task_id: &str,
    span: &tracing::Span,
) -> Result<VerifiedImage, TaskError> {
    if firmware.sha256.len() != 64 {
        return Err(TaskError::new(
            ErrorCode::ServerRefused,
            "the command names no valid sha256 for the image",
        ));
    }
    let mut client = pb::firmware_service_client::FirmwareServiceClient::new(channel)
        .max_decoding_message_size(4 * 1024 * 1024);
    let mut buf = BytesMut::with_capacity(firmware.size.min(64 * 1024 * 1024) as usize);
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        span.record("attempts", attempt);
        let mut request = tonic::Request::new(pb::DownloadFirmwareRequest {
            firmware_id: firmware.id.clone(),
            offset: buf.len() as u64,
            task_id: task_id.to_string(),
        });
        ota_telemetry::traces::inject_metadata(span, request.metadata_mut());
        let mut stream = match client.download(request).await {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(TaskError::new(
                    ErrorCode::DownloadFailed,
                    format!("the server no longer has firmware {}", firmware.id),
                ));
            }
            Err(status) => {
                last_error = status.message().to_string();
                warn!(attempt, error = %last_error, "firmware download failed to start");
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if chunk.offset != buf.len() as u64 {
                        return Err(TaskError::new(
                            ErrorCode::DownloadFailed,
                            format!(
                                "the server sent bytes at {} while {} were expected",
                                chunk.offset,
                                buf.len()
                            ),
                        ));
                    }
                    if buf.len() as u64 + chunk.data.len() as u64 > firmware.size {
                        return Err(TaskError::new(
                            ErrorCode::ChecksumMismatch,
                            format!(
                                "the image is larger than the announced {} bytes",
                                firmware.size
                            ),
                        ));
                    }
                    buf.extend_from_slice(&chunk.data);
                }
                Ok(None) => break,
                Err(status) => {
                    last_error = status.message().to_string();
                    warn!(attempt, received = buf.len(), error = %last_error, "firmware download broke; resuming");
                    break;
                }
            }
        }
        if buf.len() as u64 == firmware.size {
            return verify(buf.freeze(), firmware);
        }
    }
    Err(TaskError::new(
        ErrorCode::DownloadFailed,
        format!(
            "could not download firmware {} from the server after {ATTEMPTS} attempts ({} of {} bytes): {last_error}",
            firmware.id,
            buf.len(),
            firmware.size
        ),
    ))
}

/// Checks size and SHA-256 of a downloaded image.
pub fn verify(bytes: Bytes, firmware: &pb::FirmwareRef) -> Result<VerifiedImage, TaskError> {
    if bytes.len() as u64 != firmware.size {
        return Err(TaskError::new(
            ErrorCode::ChecksumMismatch,
            format!(
                "the image has {} bytes, {} were announced",
                bytes.len(),
                firmware.size
            ),
        ));
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if !sha256.eq_ignore_ascii_case(&firmware.sha256) {
        return Err(TaskError::new(
            ErrorCode::ChecksumMismatch,
            format!(
                "sha256 of the downloaded image is {sha256}, the server announced {}; nothing was sent to the device",
                firmware.sha256
            ),
        ));
    }
    let md5 = hex::encode(md5::Md5::digest(&bytes));
    debug!(firmware.id = %firmware.id, size = bytes.len(), "image verified");
    Ok(VerifiedImage {
        firmware_id: firmware.id.clone(),
        bytes,
        sha256,
        md5,
        version: firmware.version.clone(),
        file_version: firmware.file_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_refuses_tampered_images() {
        let bytes = Bytes::from_static(b"firmware");
        let good = pb::FirmwareRef {
            id: "fw-1".into(),
            sha256: hex::encode(Sha256::digest(b"firmware")),
            size: 8,
            ..Default::default()
        };
        assert!(verify(bytes.clone(), &good).is_ok());
        let tampered = Bytes::from_static(b"firmwarE");
        let e = verify(tampered, &good).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChecksumMismatch);
        assert!(e.message.contains("nothing was sent"));
        let short = pb::FirmwareRef { size: 9, ..good };
        assert_eq!(
            verify(bytes, &short).unwrap_err().code,
            ErrorCode::ChecksumMismatch
        );
    }
}

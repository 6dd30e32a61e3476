//! Firmware uploads as `FirmwareService.Upload` streams (metadata first, then the bytes in
//! chunks), and bearer tokens on requests.

use ota_proto::v1 as pb;
use tonic::Request;
use tonic::transport::Channel;

/// The chunk size of [`upload`] (what `otactl firmware upload` sends).
pub const CHUNK: usize = 64 * 1024;

/// Upload metadata with a name and version, the rest default (format detected by otad).
pub fn meta(name: &str, version: &str) -> pb::UploadMetadata {
    pb::UploadMetadata {
        name: name.into(),
        version: version.into(),
        ..Default::default()
    }
}

/// Upload messages: `meta`, then `bytes` in chunks of `chunk`.
pub fn upload_messages(
    meta: pb::UploadMetadata,
    bytes: &[u8],
    chunk: usize,
) -> Vec<pb::UploadFirmwareRequest> {
    let mut msgs = vec![pb::UploadFirmwareRequest {
        part: Some(pb::upload_firmware_request::Part::Metadata(meta)),
    }];
    for c in bytes.chunks(chunk) {
        msgs.push(pb::UploadFirmwareRequest {
            part: Some(pb::upload_firmware_request::Part::Chunk(c.to_vec())),
        });
    }
    msgs
}

/// A request carrying `Authorization: Bearer <token>`.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Uploads `bytes` with `meta` (with `token`, when given); otad's answer.
pub async fn upload(
    ch: &Channel,
    token: Option<&str>,
    meta: pb::UploadMetadata,
    bytes: &[u8],
) -> Result<pb::UploadFirmwareResponse, tonic::Status> {
    let stream = futures::stream::iter(upload_messages(meta, bytes, CHUNK));
    let request = match token {
        Some(t) => authed(stream, t),
        None => Request::new(stream),
    };
    pb::firmware_service_client::FirmwareServiceClient::new(ch.clone())
        .upload(request)
        .await
        .map(|r| r.into_inner())
}

/// Uploads `bytes` with `meta` (development mode: no token), which must be accepted; the
/// firmware.
pub async fn upload_firmware(ch: &Channel, meta: pb::UploadMetadata, bytes: &[u8]) -> pb::Firmware {
    upload(ch, None, meta, bytes)
        .await
        .unwrap()
        .firmware
        .unwrap()
}

/// Uploads `bytes` with `meta` as `token`'s holder, which must be accepted; the firmware.
pub async fn upload_firmware_as(
    ch: &Channel,
    token: &str,
    meta: pb::UploadMetadata,
    bytes: &[u8],
) -> pb::Firmware {
    upload(ch, Some(token), meta, bytes)
        .await
        .unwrap()
        .firmware
        .unwrap()
}

/// The ed25519 signature over the raw sha256 of `bytes`, as `otactl firmware sign` makes it.
pub fn signature(
    key: &ed25519_dalek::SigningKey,
    key_id: &str,
    bytes: &[u8],
) -> pb::FirmwareSignature {
    use ed25519_dalek::Signer as _;
    use sha2::Digest as _;
    pb::FirmwareSignature {
        key_id: key_id.into(),
        signature: key.sign(&sha2::Sha256::digest(bytes)).to_bytes().to_vec(),
        ..Default::default()
    }
}

/// An ESP32 application image of `version` with `payload` bytes of payload.
pub fn esp_app(version: &str, payload: usize) -> Vec<u8> {
    ota_firmware::builders::EspAppBuilder::new(ota_firmware::Chip::Esp32)
        .version(version)
        .payload_size(payload)
        .build()
}

/// Uploads [`esp_app`]`(version, 30_000)` as firmware "lamp" (development mode); the firmware.
pub async fn upload_lamp_app(ch: &Channel, version: &str) -> pb::Firmware {
    upload_firmware(ch, meta("lamp", version), &esp_app(version, 30_000)).await
}

/// Metadata of an ESP application image, signed when `signature` is given.
pub fn app_meta(
    name: &str,
    version: &str,
    signature: Option<pb::FirmwareSignature>,
) -> pb::UploadMetadata {
    pb::UploadMetadata {
        format: pb::FirmwareFormat::EspApp as i32,
        signature,
        ..meta(name, version)
    }
}

/// Uploads an ESP application image as `token`'s holder, optionally signed, which must be
/// accepted; the firmware.
pub async fn upload_app_as(
    ch: &Channel,
    token: &str,
    name: &str,
    version: &str,
    bytes: &[u8],
    signature: Option<pb::FirmwareSignature>,
) -> pb::Firmware {
    upload_firmware_as(ch, token, app_meta(name, version, signature), bytes).await
}

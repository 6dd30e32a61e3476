//! Sample firmware: one newer image per device model of the simulated site (and for the ESPHome
//! models also the image their devices run at first start, which a rollback puts back), synthesised with
//! `ota_firmware::builders` and registered through the public `FirmwareService.Upload`, exactly
//! as `otactl firmware upload` would.
//!
//! What it does: Zigbee OTA files with the model's manufacturer code, image type and a newer
//! file version; ESP application images for the ESP32 (with the ESP-IDF application description
//! carrying the ESPHome project name and version) and the ESP8266. Firmware already in the
//! catalog under the same name and version is reused, never uploaded twice.
//!
//! What it does not do: make runnable firmware (the payload is filler the simulators accept).
//!
//! ESP8266 images have no application description; a real ESP8266 reports the project version
//! its firmware was compiled with. The ESPHome simulator learns the version of an installed
//! image from an `esp_app_desc_t`-shaped record at file offset 0x20 (where ESP32 images carry
//! theirs), so the ESP8266 sample carries one inside its first segment's data, with the image
//! checksum fixed up. otad and the agent see an ordinary ESP8266 image.

use anyhow::Context as _;
use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, ZigbeeOtaBuilder};
use ota_proto::v1 as pb;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

use crate::fleet::{EspKind, ZigbeeModel};

/// A firmware of the quickstart's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFirmware {
    /// Firmware id at otad (`fw-…`).
    pub id: String,
    /// Catalog name.
    pub name: String,
    /// Human version.
    pub version: String,
    /// `zigbee2mqtt` or `esphome`.
    pub transport: &'static str,
    /// The device model it is for (zigbee2mqtt model, or ESPHome board).
    pub model: String,
    /// Uploaded by this start (false: it was already in the catalog).
    pub uploaded: bool,
}

/// A synthesised image and what to claim about it.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub name: String,
    pub version: String,
    pub transport: &'static str,
    pub model: String,
    pub bytes: Vec<u8>,
    pub meta: pb::UploadMetadata,
}

impl Sample {
    /// The sample of `bytes` for `transport` and `model`, claiming `meta` (its name, version and
    /// format) with the size and sha256 of `bytes`.
    fn new(transport: &'static str, model: &str, bytes: Vec<u8>, meta: pb::UploadMetadata) -> Self {
        let meta = pb::UploadMetadata {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            ..meta
        };
        Self {
            name: meta.name.clone(),
            version: meta.version.clone(),
            transport,
            model: model.into(),
            bytes,
            meta,
        }
    }
}

/// The Zigbee OTA file for `m`, with an upgrade image of `payload` bytes.
pub(crate) fn zigbee_sample(m: &ZigbeeModel, payload: usize) -> Sample {
    let (name, version, file_version) = m.firmware;
    let bytes = ZigbeeOtaBuilder::new(m.manufacturer_code, m.image_type, file_version)
        .header_string(&format!("{} {version}", m.model))
        .upgrade_image(payload)
        .build();
    Sample::new(
        "zigbee2mqtt",
        m.model,
        bytes,
        pb::UploadMetadata {
            name: name.into(),
            version: version.into(),
            format: pb::FirmwareFormat::ZigbeeOta as i32,
            manufacturer_code: Some(u32::from(m.manufacturer_code)),
            image_type: Some(u32::from(m.image_type)),
            file_version: Some(file_version),
            // zigbee2mqtt does not report manufacturer codes: the label says which model it is for.
            labels: [
                ("vendor".to_string(), m.vendor.to_lowercase()),
                (
                    ota_domain::tasks::MODELS_LABEL.to_string(),
                    m.model.to_string(),
                ),
            ]
            .into(),
            release_notes: format!(
                "Sample firmware of ota-quickstart for {} {}.",
                m.vendor, m.model
            ),
            ..Default::default()
        },
    )
}

/// The ESPHome application image for `k` at `version`: the sample version, or the version the
/// devices run at first start ([`crate::fleet::ESP_INSTALLED_VERSION`]), so that a rollback has
/// an image to put back.
pub(crate) fn esp_sample(k: &EspKind, version: &str, payload: usize) -> Sample {
    let name = k.firmware.0;
    let (chip, bytes) = match k.platform {
        ota_sim::esphome::Platform::Esp8266 => (
            Chip::Esp8266,
            esp8266_with_version(
                EspAppBuilder::new(Chip::Esp8266)
                    .payload_size(payload)
                    .build(),
                version,
                k.project,
            ),
        ),
        _ => (
            Chip::Esp32,
            EspAppBuilder::new(Chip::Esp32)
                .version(version)
                .project_name(k.project)
                .idf_ver("v5.4.2")
                .build_time("Nov 24 2026", "08:00:00")
                .payload_size(payload)
                .build(),
        ),
    };
    Sample::new(
        "esphome",
        k.board,
        bytes,
        pb::UploadMetadata {
            name: name.into(),
            version: version.into(),
            format: pb::FirmwareFormat::EspApp as i32,
            chip: chip.esptool_name().into(),
            labels: [("project".to_string(), k.project.to_string())].into(),
            release_notes: if version == k.firmware.1 {
                format!("Sample ESPHome firmware of ota-quickstart ({}).", k.project)
            } else {
                format!(
                    "The firmware the ota-quickstart's {} devices run at first start: what a rollback puts back.",
                    k.project
                )
            },
            ..Default::default()
        },
    )
}

/// Writes an `esp_app_desc_t`-shaped record (magic, version at +16, project name at +48) at
/// file offset 0x20 of an ESP8266 image (inside its first segment's data) and fixes the image
/// checksum (the last byte: XOR of all segment data with 0xEF). See the module documentation.
fn esp8266_with_version(mut image: Vec<u8>, version: &str, project: &str) -> Vec<u8> {
    const AT: usize = 0x20;
    let mut record = [0u8; 80];
    record[..4].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    record[16..16 + version.len()].copy_from_slice(version.as_bytes());
    record[48..48 + project.len()].copy_from_slice(project.as_bytes());
    let last = image.len() - 1;
    let mut checksum = image[last];
    for (i, b) in record.iter().enumerate() {
        checksum ^= image[AT + i] ^ b;
        image[AT + i] = *b;
    }
    image[last] = checksum;
    image
}

/// Registers `sample` unless the catalog has its name and version already.
pub(crate) async fn ensure_uploaded(
    channel: Channel,
    catalog: &[pb::Firmware],
    sample: Sample,
) -> anyhow::Result<SampleFirmware> {
    let known = catalog
        .iter()
        .find(|f| f.name == sample.name && f.version == sample.version);
    let (id, uploaded) = match known {
        Some(f) => {
            if f.sha256 != sample.meta.sha256 {
                tracing::warn!(
                    firmware.id = %f.id,
                    "the catalog's {} {} differs from this quickstart's sample; using the catalog's",
                    f.name,
                    f.version
                );
            }
            (f.id.clone(), false)
        }
        None => {
            let mut msgs = vec![pb::UploadFirmwareRequest {
                part: Some(pb::upload_firmware_request::Part::Metadata(
                    sample.meta.clone(),
                )),
            }];
            msgs.extend(
                sample
                    .bytes
                    .chunks(256 * 1024)
                    .map(|c| pb::UploadFirmwareRequest {
                        part: Some(pb::upload_firmware_request::Part::Chunk(c.to_vec())),
                    }),
            );
            let resp = pb::firmware_service_client::FirmwareServiceClient::new(channel)
                .upload(futures::stream::iter(msgs))
                .await
                .with_context(|| format!("uploading the sample firmware {}", sample.name))?
                .into_inner();
            let fw = resp
                .firmware
                .context("otad answered the upload without the firmware")?;
            (fw.id, !resp.already_existed)
        }
    };
    Ok(SampleFirmware {
        id,
        name: sample.name,
        version: sample.version,
        transport: sample.transport,
        model: sample.model,
        uploaded,
    })
}

/// Every firmware in the catalog.
pub(crate) async fn catalog(channel: Channel) -> anyhow::Result<Vec<pb::Firmware>> {
    let mut client = pb::firmware_service_client::FirmwareServiceClient::new(channel);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListFirmwareRequest {
                page: Some(pb::PageRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .context("listing the firmware catalog")?
            .into_inner();
        out.extend(page.firmware);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{MAINS_MODELS, MULTISENSOR, SMART_PLUG};
    use ota_firmware::{Expected, FirmwareImage, inspect};

    #[test]
    fn samples_are_what_they_claim() {
        let z = zigbee_sample(&MAINS_MODELS[0], 4096);
        let Ok(FirmwareImage::Zigbee(file)) = inspect(&z.bytes, Expected::Auto) else {
            panic!("not a Zigbee OTA file")
        };
        assert_eq!(file.header.manufacturer_code, 0x117C);
        assert_eq!(file.header.file_version, MAINS_MODELS[0].firmware.2);

        let e = esp_sample(&MULTISENSOR, MULTISENSOR.firmware.1, 8192);
        let Ok(FirmwareImage::EspApp(img)) = inspect(&e.bytes, Expected::Auto) else {
            panic!("not an ESP application")
        };
        assert_eq!(img.version(), Some("1.1.0"));

        let p = esp_sample(&SMART_PLUG, SMART_PLUG.firmware.1, 8192);
        let Ok(FirmwareImage::EspApp(img)) = inspect(&p.bytes, Expected::Auto) else {
            panic!("the patched ESP8266 image must stay valid")
        };
        assert_eq!(img.chip, Chip::Esp8266);
        let (version, project) = ota_sim::esphome::model::image_identity(&p.bytes);
        assert_eq!(version, "1.1.0");
        assert_eq!(project.as_deref(), Some("acme.smart-plug"));

        // The installed version, for rollbacks: the same kind, an older version.
        for k in [&MULTISENSOR, &SMART_PLUG] {
            let old = esp_sample(k, crate::fleet::ESP_INSTALLED_VERSION, 8192);
            assert_eq!(
                (old.name.as_str(), old.version.as_str()),
                (k.firmware.0, "1.0.0")
            );
            let (version, _) = ota_sim::esphome::model::image_identity(&old.bytes);
            assert_eq!(version, "1.0.0");
        }
    }
}

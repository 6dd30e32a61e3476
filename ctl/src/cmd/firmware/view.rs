//! The JSON documents of `otactl firmware ...` (see `crate::views` for the rules).

use std::collections::BTreeMap;

use ota_proto::v1 as pb;
use serde::Serialize;

use crate::views::{ActorJson, EnumJson, actor};
use crate::vocab;

/// A firmware in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareJson {
    /// "fw-" + 16 hex digits.
    pub id: String,
    /// Catalog name.
    pub name: String,
    /// Human version.
    pub version: String,
    /// What the file is.
    pub format: EnumJson,
    /// The module it is for.
    pub channel: EnumJson,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex digests.
    pub sha256: String,
    /// MD5.
    pub md5: String,
    /// SHA-512.
    pub sha512: String,
    /// Facts from a Zigbee OTA file.
    pub zigbee: Option<ZigbeeJson>,
    /// Facts from an ESP image.
    pub esp: Option<EspJson>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Release notes.
    pub release_notes: String,
    /// Registration time.
    pub created_at_ms: i64,
    /// Uploader.
    pub created_by: Option<ActorJson>,
    /// Signatures.
    pub signatures: Vec<SignatureJson>,
    /// Rollouts using it that are not completed or aborted.
    pub active_rollouts: Vec<String>,
}

/// Zigbee OTA header facts (numbers as numbers; tables show hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZigbeeJson {
    /// Manufacturer code.
    pub manufacturer_code: u32,
    /// Image type.
    pub image_type: u32,
    /// File version.
    pub file_version: u32,
    /// Header version.
    pub header_version: u32,
    /// Header length.
    pub header_length: u32,
    /// Field control bits.
    pub field_control: u32,
    /// Zigbee stack version.
    pub stack_version: u32,
    /// Header string.
    pub header_string: String,
    /// Total image size.
    pub total_image_size: u32,
    /// Security credential version.
    pub security_credential_version: Option<u32>,
    /// Destination IEEE address.
    pub destination: Option<u64>,
    /// Minimum hardware version.
    pub min_hardware_version: Option<u32>,
    /// Maximum hardware version.
    pub max_hardware_version: Option<u32>,
    /// Vendor prefix bytes.
    pub prefix_length: u32,
    /// Trailing bytes.
    pub trailing_length: u32,
    /// Sub-element tags.
    pub sub_element_tags: Vec<u32>,
}

/// ESP image facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspJson {
    /// Chip name.
    pub chip: String,
    /// Extended header chip id.
    pub chip_id: Option<u32>,
    /// App version.
    pub app_version: String,
    /// Project name.
    pub project_name: String,
    /// ESP-IDF version.
    pub idf_version: String,
    /// Build date.
    pub build_date: String,
    /// Build time.
    pub build_time: String,
    /// Secure version.
    pub secure_version: u32,
    /// Segments.
    pub segment_count: u32,
    /// Flash mode.
    pub flash_mode: String,
    /// Flash size.
    pub flash_size: String,
    /// Flash frequency.
    pub flash_freq: String,
    /// SHA-256 appended to the image.
    pub hash_appended: bool,
    /// Application offset in factory images.
    pub app_offset: Option<u32>,
}

impl ZigbeeJson {
    /// From the API.
    pub fn new(z: &pb::ZigbeeImageInfo) -> Self {
        Self {
            manufacturer_code: z.manufacturer_code,
            image_type: z.image_type,
            file_version: z.file_version,
            header_version: z.header_version,
            header_length: z.header_length,
            field_control: z.field_control,
            stack_version: z.stack_version,
            header_string: z.header_string.clone(),
            total_image_size: z.total_image_size,
            security_credential_version: z.security_credential_version,
            destination: z.destination,
            min_hardware_version: z.min_hardware_version,
            max_hardware_version: z.max_hardware_version,
            prefix_length: z.prefix_length,
            trailing_length: z.trailing_length,
            sub_element_tags: z.sub_element_tags.clone(),
        }
    }
}

impl EspJson {
    /// From the API.
    pub fn new(e: &pb::EspImageInfo) -> Self {
        Self {
            chip: e.chip.clone(),
            chip_id: e.chip_id,
            app_version: e.app_version.clone(),
            project_name: e.project_name.clone(),
            idf_version: e.idf_version.clone(),
            build_date: e.build_date.clone(),
            build_time: e.build_time.clone(),
            secure_version: e.secure_version,
            segment_count: e.segment_count,
            flash_mode: e.flash_mode.clone(),
            flash_size: e.flash_size.clone(),
            flash_freq: e.flash_freq.clone(),
            hash_appended: e.hash_appended,
            app_offset: e.app_offset,
        }
    }
}

/// A recorded signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureJson {
    /// Key name.
    pub key_id: String,
    /// 64-byte ed25519 signature, hex.
    pub signature: String,
    /// When recorded.
    pub added_at_ms: i64,
    /// By whom.
    pub added_by: Option<ActorJson>,
}

impl FirmwareJson {
    /// From the API.
    pub fn new(f: &pb::Firmware) -> Self {
        Self {
            id: f.id.clone(),
            name: f.name.clone(),
            version: f.version.clone(),
            format: EnumJson::new(f.format, vocab::format_name),
            channel: EnumJson::new(f.channel, vocab::channel_name),
            size: f.size,
            sha256: f.sha256.clone(),
            md5: f.md5.clone(),
            sha512: f.sha512.clone(),
            zigbee: f.zigbee.as_ref().map(ZigbeeJson::new),
            esp: f.esp.as_ref().map(EspJson::new),
            labels: f
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            release_notes: f.release_notes.clone(),
            created_at_ms: f.created_at_ms,
            created_by: actor(f.created_by.as_ref()),
            signatures: f
                .signatures
                .iter()
                .map(|s| SignatureJson {
                    key_id: s.key_id.clone(),
                    signature: hex::encode(&s.signature),
                    added_at_ms: s.added_at_ms,
                    added_by: actor(s.added_by.as_ref()),
                })
                .collect(),
            active_rollouts: f.active_rollouts.clone(),
        }
    }
}

/// `firmware upload`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadJson {
    /// The registered firmware.
    pub firmware: Option<FirmwareJson>,
    /// The same bytes, name and version were already registered; nothing new was recorded.
    pub already_existed: bool,
}

/// `firmware list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareListJson {
    /// Newest first.
    pub firmware: Vec<FirmwareJson>,
}

/// `firmware rm`, `token revoke` and similar: what was acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedJson {
    /// The id deleted.
    pub deleted: String,
}

/// `firmware download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadJson {
    /// Firmware id.
    pub firmware_id: String,
    /// Where the file was written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// sha256 of the written file (equal to the catalog's).
    pub sha256: String,
}

/// `firmware keygen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeygenJson {
    /// The private key file.
    pub private_key_path: String,
    /// The public key file.
    pub public_key_path: String,
    /// The public key, base64.
    pub public_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_shape() {
        let f = pb::Firmware {
            id: "fw-0011223344556677".into(),
            name: "hue".into(),
            version: "2.3".into(),
            format: 1,
            channel: 3,
            size: 1024,
            sha256: "ab".into(),
            zigbee: Some(pb::ZigbeeImageInfo {
                manufacturer_code: 4107,
                image_type: 1,
                file_version: 0x0203_0093,
                ..Default::default()
            }),
            labels: [("vendor".to_string(), "signify".to_string())].into(),
            signatures: vec![pb::FirmwareSignature {
                key_id: "k".into(),
                signature: vec![0xde, 0xad],
                added_at_ms: 5,
                added_by: Some(pb::Actor {
                    name: "alice".into(),
                    role: "admin".into(),
                }),
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(FirmwareJson::new(&f)).unwrap();
        assert_eq!(
            v["format"],
            serde_json::json!({"code": 1, "name": "zigbee-ota"})
        );
        assert_eq!(
            v["channel"],
            serde_json::json!({"code": 3, "name": "zigbee"})
        );
        assert_eq!(v["zigbee"]["manufacturer_code"], 4107);
        assert_eq!(v["esp"], serde_json::Value::Null);
        assert_eq!(v["labels"], serde_json::json!({"vendor": "signify"}));
        assert_eq!(
            v["signatures"],
            serde_json::json!([{"key_id": "k", "signature": "dead", "added_at_ms": 5,
                "added_by": {"name": "alice", "role": "admin"}}])
        );
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "id",
            "name",
            "version",
            "format",
            "channel",
            "size",
            "sha256",
            "md5",
            "sha512",
            "zigbee",
            "esp",
            "labels",
            "release_notes",
            "created_at_ms",
            "created_by",
            "signatures",
            "active_rollouts",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}

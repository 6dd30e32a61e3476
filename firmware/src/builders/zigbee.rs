//! Builder for Zigbee OTA upgrade files.
//!
//! What it does: writes the header (with the optional fields the field control announces),
//! sub-elements, and an optional vendor prefix and trailer; overrides let tests write
//! inconsistent headers. What it does not do: validate (use [`crate::zigbee::parse`]).

use crate::zigbee::{
    BASE_HEADER_LEN, FC_HARDWARE_VERSIONS, FC_SECURITY_CREDENTIAL_VERSION,
    FC_UPGRADE_FILE_DESTINATION, HEADER_VERSION, MAGIC_BYTES, TELINK_AES_TAG,
};

use super::deterministic_payload;

/// A sub-element to write.
#[derive(Debug, Clone)]
struct Element {
    tag: u16,
    telink_info: Option<[u8; 2]>,
    data: Vec<u8>,
    declared_len: Option<u32>,
}

/// What comes before the magic.
#[derive(Debug, Clone)]
enum Prefix {
    None,
    Bytes(Vec<u8>),
    /// IKEA's `NGIS` block of this length: u32 at 16 = magic offset, u32 at 20 = image length.
    Ikea(usize),
}

/// Builds a Zigbee OTA upgrade file.
///
/// Starts with no sub-elements; add an upgrade image with [`Self::upgrade_image`] or any
/// element with [`Self::element`].
#[derive(Debug, Clone)]
pub struct ZigbeeOtaBuilder {
    header_version: u16,
    manufacturer_code: u16,
    image_type: u16,
    file_version: u32,
    stack_version: u16,
    header_string: Vec<u8>,
    security_credential_version: Option<u8>,
    upgrade_file_destination: Option<u64>,
    hardware_versions: Option<(u16, u16)>,
    elements: Vec<Element>,
    prefix: Prefix,
    trailer: Vec<u8>,
    field_control_override: Option<u16>,
    header_len_override: Option<u16>,
    total_image_size_override: Option<u32>,
}

impl ZigbeeOtaBuilder {
    /// A file for this manufacturer code, image type and file version: header version 0x0100,
    /// stack version 2 (PRO), empty header string, no optional fields, no elements.
    pub fn new(manufacturer_code: u16, image_type: u16, file_version: u32) -> Self {
        Self {
            header_version: HEADER_VERSION,
            manufacturer_code,
            image_type,
            file_version,
            stack_version: 2,
            header_string: Vec::new(),
            security_credential_version: None,
            upgrade_file_destination: None,
            hardware_versions: None,
            elements: Vec::new(),
            prefix: Prefix::None,
            trailer: Vec::new(),
            field_control_override: None,
            header_len_override: None,
            total_image_size_override: None,
        }
    }

    /// Header string (at most 32 bytes; NUL-padded).
    pub fn header_string(mut self, s: &str) -> Self {
        assert!(s.len() <= 32, "header string {s:?} is longer than 32 bytes");
        self.header_string = s.as_bytes().to_vec();
        self
    }

    /// Raw 32-byte header string field (for padding and encoding tests).
    pub fn header_string_raw(mut self, raw: [u8; 32]) -> Self {
        self.header_string = raw.to_vec();
        self
    }

    /// Zigbee stack version.
    pub fn stack_version(mut self, v: u16) -> Self {
        self.stack_version = v;
        self
    }

    /// Adds the security credential version (field-control bit 0).
    pub fn security_credential_version(mut self, v: u8) -> Self {
        self.security_credential_version = Some(v);
        self
    }

    /// Adds the upgrade file destination (field-control bit 1).
    pub fn upgrade_file_destination(mut self, ieee: u64) -> Self {
        self.upgrade_file_destination = Some(ieee);
        self
    }

    /// Adds hardware versions (field-control bit 2).
    pub fn hardware_versions(mut self, min: u16, max: u16) -> Self {
        self.hardware_versions = Some((min, max));
        self
    }

    /// Appends an upgrade image element (tag 0x0000) of `len` deterministic bytes.
    pub fn upgrade_image(self, len: usize) -> Self {
        let seed = self.file_version ^ u32::from(self.image_type);
        self.element(0x0000, deterministic_payload(len, seed))
    }

    /// Appends a sub-element.
    pub fn element(mut self, tag: u16, data: impl Into<Vec<u8>>) -> Self {
        self.elements.push(Element {
            tag,
            telink_info: None,
            data: data.into(),
            declared_len: None,
        });
        self
    }

    /// Appends a sub-element whose header declares `declared_len` instead of the data length
    /// (the malformed vendor elements of some real files, or a broken file).
    pub fn element_with_declared_len(
        mut self,
        tag: u16,
        data: impl Into<Vec<u8>>,
        declared_len: u32,
    ) -> Self {
        self.elements.push(Element {
            tag,
            telink_info: None,
            data: data.into(),
            declared_len: Some(declared_len),
        });
        self
    }

    /// Appends a Telink AES element (tag 0xF000, 8-byte element header with two information
    /// bytes).
    pub fn telink_element(mut self, info: [u8; 2], data: impl Into<Vec<u8>>) -> Self {
        self.elements.push(Element {
            tag: TELINK_AES_TAG,
            telink_info: Some(info),
            data: data.into(),
            declared_len: None,
        });
        self
    }

    /// Puts these bytes before the magic (they must not contain the magic themselves).
    pub fn prefix(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        let bytes = bytes.into();
        assert!(
            crate::zigbee::find_magic(&bytes).is_none(),
            "a prefix must not contain the OTA magic"
        );
        self.prefix = Prefix::Bytes(bytes);
        self
    }

    /// Puts an IKEA-style `NGIS` block of `len` bytes (at least 24) before the magic, with the
    /// magic offset at byte 16 and the image length at byte 20, like real IKEA files.
    pub fn ikea_prefix(mut self, len: usize) -> Self {
        assert!(len >= 24, "an IKEA prefix has at least 24 bytes");
        self.prefix = Prefix::Ikea(len);
        self
    }

    /// Puts these bytes after the image.
    pub fn trailer(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.trailer = bytes.into();
        self
    }

    /// Overrides the header version.
    pub fn header_version(mut self, v: u16) -> Self {
        self.header_version = v;
        self
    }

    /// Overrides the field control written to the header (the optional fields written are still
    /// those set on the builder).
    pub fn field_control(mut self, fc: u16) -> Self {
        self.field_control_override = Some(fc);
        self
    }

    /// Overrides the header length written to the header (sub-elements still start after the
    /// fields actually written).
    pub fn header_len(mut self, len: u16) -> Self {
        self.header_len_override = Some(len);
        self
    }

    /// Overrides the total image size written to the header.
    pub fn total_image_size(mut self, size: u32) -> Self {
        self.total_image_size_override = Some(size);
        self
    }

    /// Field control the optional fields call for.
    pub fn field_control_value(&self) -> u16 {
        let mut fc = 0;
        if self.security_credential_version.is_some() {
            fc |= FC_SECURITY_CREDENTIAL_VERSION;
        }
        if self.upgrade_file_destination.is_some() {
            fc |= FC_UPGRADE_FILE_DESTINATION;
        }
        if self.hardware_versions.is_some() {
            fc |= FC_HARDWARE_VERSIONS;
        }
        fc
    }

    /// The image proper (magic .. end of the last element), without prefix and trailer.
    pub fn build_image(&self) -> Vec<u8> {
        let mut optional = Vec::new();
        if let Some(v) = self.security_credential_version {
            optional.push(v);
        }
        if let Some(ieee) = self.upgrade_file_destination {
            optional.extend_from_slice(&ieee.to_le_bytes());
        }
        if let Some((min, max)) = self.hardware_versions {
            optional.extend_from_slice(&min.to_le_bytes());
            optional.extend_from_slice(&max.to_le_bytes());
        }
        let header_len = usize::from(BASE_HEADER_LEN) + optional.len();
        let mut elements = Vec::new();
        for e in &self.elements {
            let declared = e
                .declared_len
                .unwrap_or_else(|| u32::try_from(e.data.len()).expect("element under 4 GiB"));
            elements.extend_from_slice(&e.tag.to_le_bytes());
            elements.extend_from_slice(&declared.to_le_bytes());
            if let Some(info) = e.telink_info {
                elements.extend_from_slice(&info);
            }
            elements.extend_from_slice(&e.data);
        }
        let total = u32::try_from(header_len + elements.len()).expect("image under 4 GiB");

        let mut string = [0u8; 32];
        string[..self.header_string.len()].copy_from_slice(&self.header_string);
        let mut out = Vec::with_capacity(header_len + elements.len());
        out.extend_from_slice(&MAGIC_BYTES);
        out.extend_from_slice(&self.header_version.to_le_bytes());
        let written_len = u16::try_from(header_len).expect("header under 64 KiB");
        out.extend_from_slice(
            &self
                .header_len_override
                .unwrap_or(written_len)
                .to_le_bytes(),
        );
        let fc = self
            .field_control_override
            .unwrap_or_else(|| self.field_control_value());
        out.extend_from_slice(&fc.to_le_bytes());
        out.extend_from_slice(&self.manufacturer_code.to_le_bytes());
        out.extend_from_slice(&self.image_type.to_le_bytes());
        out.extend_from_slice(&self.file_version.to_le_bytes());
        out.extend_from_slice(&self.stack_version.to_le_bytes());
        out.extend_from_slice(&string);
        out.extend_from_slice(
            &self
                .total_image_size_override
                .unwrap_or(total)
                .to_le_bytes(),
        );
        out.extend_from_slice(&optional);
        out.extend_from_slice(&elements);
        out
    }

    /// The whole file: prefix, image, trailer.
    pub fn build(&self) -> Vec<u8> {
        let image = self.build_image();
        let mut out = match &self.prefix {
            Prefix::None => Vec::new(),
            Prefix::Bytes(bytes) => bytes.clone(),
            Prefix::Ikea(len) => {
                let mut p = vec![0u8; *len];
                p[..4].copy_from_slice(b"NGIS");
                p[16..20].copy_from_slice(&u32::try_from(*len).expect("small").to_le_bytes());
                let image_len = u32::try_from(image.len()).expect("image under 4 GiB");
                p[20..24].copy_from_slice(&image_len.to_le_bytes());
                p
            }
        };
        out.extend_from_slice(&image);
        out.extend_from_slice(&self.trailer);
        out
    }
}

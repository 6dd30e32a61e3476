//! How the results of `otactl firmware ...` read in a terminal.

use super::view::{
    DeletedJson, DownloadJson, EspJson, FirmwareJson, FirmwareListJson, KeygenJson, SignatureJson,
    UploadJson, ZigbeeJson,
};
use crate::output::{fields, fmt_bytes, fmt_time, hex, render, section, table, yes_no};
use crate::views::{when_by, who};

fn fw_facts(f: &FirmwareJson) -> String {
    if let Some(z) = &f.zigbee {
        format!(
            "mfr {} type {} file {}",
            hex(z.manufacturer_code, 4),
            hex(z.image_type, 4),
            hex(z.file_version, 8)
        )
    } else if let Some(e) = &f.esp {
        let mut s = e.chip.clone();
        if !e.app_version.is_empty() {
            s.push_str(&format!(" app {}", e.app_version));
        }
        if let Some(o) = e.app_offset {
            s.push_str(&format!(" at {}", hex(o, 5)));
        }
        s
    } else {
        String::new()
    }
}

/// `firmware list`.
pub fn firmware_list(l: &FirmwareListJson) -> String {
    let mut t = table(&[
        "id", "name", "version", "format", "size", "facts", "signed", "created",
    ]);
    for f in &l.firmware {
        t.add_row(vec![
            f.id.clone(),
            f.name.clone(),
            f.version.clone(),
            f.format.name.clone(),
            fmt_bytes(f.size),
            fw_facts(f),
            if f.signatures.is_empty() {
                "-".to_string()
            } else {
                f.signatures
                    .iter()
                    .map(|s| s.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            fmt_time(f.created_at_ms),
        ]);
    }
    render(&t, "no firmware (upload one with `otactl firmware upload`)")
}

/// `firmware show` (and the result of upload and sign).
pub fn firmware(f: &FirmwareJson) -> String {
    let mut labels: Vec<String> = f.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let mut out = fields(&[
        ("ID", f.id.clone()),
        ("Name", f.name.clone()),
        ("Version", f.version.clone()),
        ("Format", f.format.name.clone()),
        ("Module", f.channel.name.clone()),
        ("Size", format!("{} ({} bytes)", fmt_bytes(f.size), f.size)),
        ("SHA-256", f.sha256.clone()),
        ("MD5", f.md5.clone()),
        ("SHA-512", f.sha512.clone()),
        ("Labels", labels.join(", ")),
        ("Release notes", f.release_notes.clone()),
        ("Created", when_by(f.created_at_ms, f.created_by.as_ref())),
    ]);
    if let Some(z) = &f.zigbee {
        section(&mut out, "Zigbee OTA header", &zigbee_header(z));
    }
    if let Some(e) = &f.esp {
        section(&mut out, "ESP image", &esp_image(e));
    }
    section(&mut out, "Signatures", &signatures(&f.signatures));
    section(
        &mut out,
        "Active rollouts",
        &if f.active_rollouts.is_empty() {
            "none".to_string()
        } else {
            f.active_rollouts.join("\n")
        },
    );
    out
}

/// The facts of a Zigbee OTA header, codes in hex.
fn zigbee_header(z: &ZigbeeJson) -> String {
    let opt = |v: Option<u32>| v.map_or_else(String::new, |n| n.to_string());
    fields(&[
        ("Manufacturer code", hex(z.manufacturer_code, 4)),
        ("Image type", hex(z.image_type, 4)),
        (
            "File version",
            format!("{} ({})", hex(z.file_version, 8), z.file_version),
        ),
        ("Header version", hex(z.header_version, 4)),
        ("Header length", z.header_length.to_string()),
        ("Field control", hex(z.field_control, 4)),
        ("Stack version", hex(z.stack_version, 4)),
        ("Header string", z.header_string.clone()),
        ("Total image size", z.total_image_size.to_string()),
        ("Security credential", opt(z.security_credential_version)),
        (
            "Destination",
            z.destination.map_or_else(String::new, |d| hex(d, 16)),
        ),
        (
            "Hardware versions",
            match (z.min_hardware_version, z.max_hardware_version) {
                (None, None) => String::new(),
                (a, b) => format!("{} - {}", opt(a), opt(b)),
            },
        ),
        ("Prefix bytes", z.prefix_length.to_string()),
        ("Trailing bytes", z.trailing_length.to_string()),
        (
            "Sub-elements",
            z.sub_element_tags
                .iter()
                .map(|t| hex(*t, 4))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ])
}

/// The facts of an ESP image.
fn esp_image(e: &EspJson) -> String {
    fields(&[
        ("Chip", e.chip.clone()),
        ("Chip id", e.chip_id.map_or_else(String::new, |c| hex(c, 4))),
        ("App version", e.app_version.clone()),
        ("Project", e.project_name.clone()),
        ("IDF version", e.idf_version.clone()),
        (
            "Built",
            format!("{} {}", e.build_date, e.build_time)
                .trim()
                .to_string(),
        ),
        ("Secure version", e.secure_version.to_string()),
        ("Segments", e.segment_count.to_string()),
        (
            "Flash",
            format!("{} {} {}", e.flash_mode, e.flash_size, e.flash_freq)
                .trim()
                .to_string(),
        ),
        ("Hash appended", yes_no(e.hash_appended)),
        (
            "App offset",
            e.app_offset.map_or_else(String::new, |o| hex(o, 5)),
        ),
    ])
}

/// The signatures as a table, each shortened to its first 16 hex digits.
fn signatures(list: &[SignatureJson]) -> String {
    let mut sigs = table(&["key id", "added", "by", "signature"]);
    for s in list {
        let short = if s.signature.len() > 16 {
            format!("{}…", &s.signature[..16])
        } else {
            s.signature.clone()
        };
        sigs.add_row(vec![
            s.key_id.clone(),
            fmt_time(s.added_at_ms),
            who(s.added_by.as_ref()),
            short,
        ]);
    }
    render(&sigs, "none")
}

/// `firmware upload`.
pub fn upload(u: &UploadJson) -> String {
    match (&u.firmware, u.already_existed) {
        (Some(f), true) => format!(
            "Already registered as {} (same name, version and bytes); nothing new recorded.\n\n{}",
            f.id,
            firmware(f)
        ),
        (Some(f), false) => format!(
            "Uploaded {} {} as {}.\n\n{}",
            f.name,
            f.version,
            f.id,
            firmware(f)
        ),
        (None, _) => "Uploaded (otad returned no details).".to_string(),
    }
}

/// `firmware rm`.
pub fn deleted(d: &DeletedJson) -> String {
    format!("Deleted firmware {}.", d.deleted)
}

/// `firmware download`.
pub fn downloaded(d: &DownloadJson) -> String {
    format!(
        "Wrote {} ({}), sha256 {} verified.",
        d.path,
        fmt_bytes(d.size),
        d.sha256
    )
}

/// `firmware keygen`.
pub fn keygen(k: &KeygenJson) -> String {
    format!(
        "Wrote the private key to {} (keep it secret) and the public key to {}.\nPublic key: \
         {}\nSign with: otactl firmware sign <FW> --key {} --key-id <NAME>",
        k.private_key_path, k.public_key_path, k.public_key, k.private_key_path
    )
}

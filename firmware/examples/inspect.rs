//! Prints what `ota-firmware` makes of firmware files: digests, format and parsed facts, or the
//! reason the file is refused.
//!
//! ```text
//! cargo run -p ota-firmware --example inspect -- [--expect auto|zigbee|esp-app|esp-factory]
//!     [--chip esp32c3] [--json] FILE...
//! ```
//!
//! Exits with 0 when every file parses, 1 when any is refused, 2 on bad arguments or unreadable
//! files.

use std::fs::File;
use std::io::Read;
use std::process::ExitCode;

use ota_firmware::esp::{EspFactoryImage, EspImage};
use ota_firmware::zigbee::ZigbeeOtaFile;
use ota_firmware::{Chip, Digests, Expected, FirmwareHasher, FirmwareImage, inspect};

/// Exit status when at least one file is refused.
const EXIT_REFUSED: u8 = 1;
/// Exit status for bad arguments or an unreadable file.
const EXIT_USAGE: u8 = 2;

struct Args {
    expect: Expected,
    json: bool,
    files: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut expect = "auto".to_owned();
    let mut chip: Option<Chip> = None;
    let mut json = false;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--expect" => expect = args.next().ok_or("--expect needs a value")?,
            "--chip" => {
                let name = args.next().ok_or("--chip needs a value")?;
                chip = Some(name.parse().map_err(|e| format!("{e}"))?);
            }
            "--json" => json = true,
            "-h" | "--help" => {
                return Err("usage: inspect [--expect auto|zigbee|esp-app|esp-factory] \
                            [--chip NAME] [--json] FILE..."
                    .to_owned());
            }
            _ => files.push(arg),
        }
    }
    let expect = match expect.as_str() {
        "auto" => Expected::Auto,
        "zigbee" => Expected::Zigbee,
        "esp-app" => Expected::EspApp { chip },
        "esp-factory" => Expected::EspFactory { chip },
        other => return Err(format!("unknown --expect {other:?}")),
    };
    if files.is_empty() {
        return Err("no files given".to_owned());
    }
    Ok(Args {
        expect,
        json,
        files,
    })
}

/// Reads a file in chunks, hashing as it goes (the way an upload is handled).
fn read_and_hash(path: &str) -> std::io::Result<(Vec<u8>, Digests)> {
    let mut file = File::open(path)?;
    let mut hasher = FirmwareHasher::new();
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        let part = &chunk[..n];
        hasher.update(part);
        bytes.extend_from_slice(part);
    }
    Ok((bytes, hasher.finish()))
}

fn print_zigbee(f: &ZigbeeOtaFile) {
    let h = &f.header;
    println!(
        "  manufacturer code: 0x{:04X} ({})",
        h.manufacturer_code, h.manufacturer_code
    );
    println!(
        "  image type:        0x{:04X} ({})",
        h.image_type, h.image_type
    );
    println!(
        "  file version:      0x{:08X} ({})",
        h.file_version, h.file_version
    );
    println!(
        "  header:            version 0x{:04X}, length {}, field control 0x{:04X}, stack version {}",
        h.header_version, h.header_len, h.field_control, h.stack_version
    );
    println!("  header string:     {:?}", h.header_string);
    println!("  total image size:  {}", h.total_image_size);
    if let Some(v) = h.security_credential_version {
        println!("  security credential version: {v}");
    }
    if let Some(ieee) = h.upgrade_file_destination {
        println!("  upgrade file destination:    0x{ieee:016x}");
    }
    match h.hardware_versions {
        Some(hw) => println!("  hardware versions: {}..={}", hw.min, hw.max),
        None => println!("  hardware versions: any"),
    }
    println!(
        "  prefix:            {} bytes; trailing: {} bytes",
        f.prefix_len, f.trailing_len
    );
    println!("  sub-elements:");
    for e in &f.elements {
        let telink = e
            .telink_info
            .map(|i| format!(", info {:02x}{:02x}", i[0], i[1]))
            .unwrap_or_default();
        let clamped = if e.is_clamped() {
            format!(" (declares {}, clamped at the image end)", e.declared_len)
        } else {
            String::new()
        };
        println!(
            "    0x{:04X} {:<28} at {:>7}: {} bytes{telink}{clamped}",
            e.tag,
            e.tag_name(),
            e.offset,
            e.len
        );
    }
}

fn print_esp(image: &EspImage, indent: &str) {
    println!("{indent}chip:        {}", image.chip);
    println!(
        "{indent}flash:       {} {} {}; entry 0x{:08X}",
        image.flash_mode.name(),
        image.flash_size.name(),
        image.flash_freq.name(),
        image.entry_addr
    );
    if let Some(ext) = &image.extended {
        println!(
            "{indent}extended:    chip id {}, wp pin 0x{:02X}, chip rev {}..{}, hash appended {}",
            ext.chip_id,
            ext.wp_pin,
            ext.min_chip_rev_full,
            ext.max_chip_rev_full,
            ext.hash_appended
        );
    }
    for (i, s) in image.segments.iter().enumerate() {
        println!(
            "{indent}segment {i:>2}:  load 0x{:08X}, {} bytes at 0x{:X}",
            s.load_addr, s.len, s.data_offset
        );
    }
    println!("{indent}checksum:    0x{:02X} (ok)", image.checksum);
    if let Some(sha) = &image.sha256 {
        println!("{indent}sha256:      {sha} (ok)");
    }
    println!(
        "{indent}length:      {} bytes of image, {} trailing",
        image.image_len, image.trailing_len
    );
    if let Some(app) = &image.app {
        println!("{indent}project:     {}", app.project_name);
        println!("{indent}version:     {}", app.version);
        println!("{indent}built:       {} {}", app.date, app.time);
        println!("{indent}idf:         {}", app.idf_ver);
        println!("{indent}secure ver:  {}", app.secure_version);
    }
}

fn print_factory(f: &EspFactoryImage) {
    println!("  chip:        {}", f.chip);
    println!("  bootloader at 0x{:X}:", f.bootloader_offset);
    print_esp(&f.bootloader, "    ");
    println!(
        "  partition table at 0x{:X} (md5 {}):",
        f.partition_table_offset,
        if f.partition_table_md5 {
            "ok"
        } else {
            "absent"
        }
    );
    for p in &f.partitions {
        println!(
            "    {:<16} {:<5} {:<9} 0x{:08X} 0x{:08X}",
            p.name,
            p.type_name(),
            p.subtype_name(),
            p.offset,
            p.size
        );
    }
    println!("  app at 0x{:X}:", f.app_offset);
    print_esp(&f.app, "    ");
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut status = ExitCode::SUCCESS;
    for path in &args.files {
        let (bytes, digests) = match read_and_hash(path) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("{path}: cannot read: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let result = inspect(&bytes, args.expect);
        if args.json {
            let value = match &result {
                Ok(image) => serde_json::json!({
                    "file": path, "digests": digests, "image": image,
                }),
                Err(e) => serde_json::json!({
                    "file": path, "digests": digests, "error": e.to_string(),
                }),
            };
            println!("{value}");
        } else {
            println!("{path}");
            println!("  size:   {} bytes", digests.len());
            println!("  sha256: {}", digests.sha256_hex());
            println!("  md5:    {}", digests.md5_hex());
            println!("  sha512: {}", digests.sha512_hex());
            match &result {
                Ok(image) => {
                    println!("  format: {}", image.format_name());
                    match image {
                        FirmwareImage::Zigbee(f) => print_zigbee(f),
                        FirmwareImage::EspApp(i) => print_esp(i, "  "),
                        FirmwareImage::EspFactory(f) => print_factory(f),
                    }
                }
                Err(e) => println!("  REFUSED: {e}"),
            }
        }
        if result.is_err() {
            status = ExitCode::from(EXIT_REFUSED);
        }
    }
    status
}

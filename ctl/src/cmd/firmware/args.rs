//! The arguments of `otactl firmware ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::cli::IdArg;
use crate::values;

/// `otactl firmware ...`
#[derive(Debug, Subcommand)]
pub enum FirmwareCmd {
    /// Upload a firmware image (Zigbee OTA file or ESP image) to the catalog
    ///
    /// The file is hashed locally (sha256, sent for the server to verify) and streamed in 1 MiB
    /// chunks with a progress bar. otad parses the file and refuses it when it is not what it
    /// claims to be; every --manufacturer-code/--image-type/--file-version/--chip claim must
    /// match the file. ESP factory images must be declared with --format esp-factory.
    /// zigbee2mqtt does not report a device's manufacturer code, so label Zigbee images with the
    /// models they are for (--label models=A,B); checks and rollouts then offer them only there.
    ///
    /// Example:
    ///   otactl firmware upload hue-2.3.093.ota --name hue-switch --version 2.3.093 \
    ///       --manufacturer-code 0x100B --label vendor=signify --label models=9290022166
    ///   otactl firmware upload firmware.ota.bin --name kitchen-esp32 --version 2026.11.1 \
    ///       --chip esp32c3 --sign-key release.key --key-id release-2026
    #[command(verbatim_doc_comment)]
    Upload(UploadArgs),
    /// List the firmware in the catalog, newest first
    ///
    /// Example:
    ///   otactl firmware list --format zigbee-ota --name hue
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List(FirmwareListArgs),
    /// Show everything about one firmware: facts parsed from the file, signatures, rollouts
    ///
    /// The id may be a unique prefix ("fw-1a2b").
    ///
    /// Example:
    ///   otactl firmware show fw-1a2b3c4d5e6f7a8b
    #[command(verbatim_doc_comment, visible_alias = "get")]
    Show(IdArg),
    /// Delete a firmware from the catalog
    ///
    /// Asks for confirmation when stdin is a terminal; scripts must pass --yes. otad refuses
    /// while a rollout that is not completed or aborted uses the firmware.
    ///
    /// Example:
    ///   otactl firmware rm fw-1a2b3c4d5e6f7a8b --yes
    #[command(verbatim_doc_comment, visible_alias = "delete")]
    Rm(FirmwareRmArgs),
    /// Download a firmware image to a file and verify its sha256
    ///
    /// The file is written next to its destination as `<FILE>.part` and renamed only once its
    /// sha256 matches the catalog. The destination flag is -O/--out because -o is the output
    /// format everywhere.
    ///
    /// Example:
    ///   otactl firmware download fw-1a2b3c4d5e6f7a8b -O hue-2.3.093.ota
    #[command(verbatim_doc_comment)]
    Download(FirmwareDownloadArgs),
    /// Sign a firmware's sha256 with an ed25519 key and record the signature
    ///
    /// The signature covers the raw 32-byte sha256 digest of the file. Agents verify it with the
    /// public key they know under the same key id. Create a key pair with `firmware keygen`.
    ///
    /// Example:
    ///   otactl firmware sign fw-1a2b3c4d5e6f7a8b --key release.key --key-id release-2026
    #[command(verbatim_doc_comment)]
    Sign(FirmwareSignArgs),
    /// Create an ed25519 key pair for signing firmware (no server needed)
    ///
    /// Writes <PREFIX>.key (the private key, mode 0600) and <PREFIX>.pub (the public key). Each
    /// file holds one line: the standard base64 (with padding) of 32 bytes: the private key's
    /// seed, or the public key. Give the .pub file to the sites' trust store; keep the .key file
    /// secret.
    ///
    /// Example:
    ///   otactl firmware keygen --out release-2026
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
}

/// Firmware formats a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Detect from the content (not for factory images).
    Auto,
    /// Zigbee OTA upgrade file.
    ZigbeeOta,
    /// ESP application image (ESPHome's firmware.ota.bin).
    EspApp,
    /// Merged ESP factory image (firmware.factory.bin), for serial flashing only.
    EspFactory,
}

/// `firmware upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The firmware file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Catalog name: letters, digits, '.', '_', '-' ("hue-switch").
    #[arg(long)]
    pub name: String,
    /// Human version ("2.3.093", "2026.11.1").
    #[arg(long)]
    pub version: String,
    /// What the file is.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// A label, as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = values::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Release notes (text or URL).
    #[arg(long)]
    pub notes: Option<String>,
    /// Zigbee claim: manufacturer code (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "CODE")]
    pub manufacturer_code: Option<u32>,
    /// Zigbee claim: image type (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "TYPE")]
    pub image_type: Option<u32>,
    /// Zigbee claim: file version (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "VERSION")]
    pub file_version: Option<u32>,
    /// ESP claim: chip name (esp32, esp32c3, esp8266, ...).
    #[arg(long)]
    pub chip: Option<String>,
    /// Sign the upload with this ed25519 private key file (see `firmware keygen`).
    #[arg(long, value_name = "FILE", requires = "key_id")]
    pub sign_key: Option<PathBuf>,
    /// Key id for --sign-key, as the agents' trust store knows it.
    #[arg(long, value_name = "NAME", requires = "sign_key")]
    pub key_id: Option<String>,
}

/// `firmware list`.
#[derive(Debug, Args)]
pub struct FirmwareListArgs {
    /// Only this format.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Only firmware whose name contains this text.
    #[arg(long)]
    pub name: Option<String>,
}

/// `firmware rm`.
#[derive(Debug, Args)]
pub struct FirmwareRmArgs {
    /// Firmware id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// `firmware download`.
#[derive(Debug, Args)]
pub struct FirmwareDownloadArgs {
    /// Firmware id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Where to write the image (default: <name>-<version>.bin in the current directory).
    #[arg(short = 'O', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite the destination if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `firmware sign`.
#[derive(Debug, Args)]
pub struct FirmwareSignArgs {
    /// Firmware id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// ed25519 private key file (see `firmware keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Key id, as the agents' trust store knows it.
    #[arg(long, value_name = "NAME")]
    pub key_id: String,
}

/// `firmware keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path prefix: writes <PREFIX>.key and <PREFIX>.pub.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, OutputFormat, parse};

    #[test]
    fn upload_takes_claims_labels_and_signing() {
        let cli = parse(&[
            "firmware",
            "upload",
            "a.ota",
            "--name",
            "hue",
            "--version",
            "2.3",
            "--format",
            "zigbee-ota",
            "--label",
            "vendor=signify",
            "--label",
            "ring=beta",
            "--manufacturer-code",
            "0x100B",
            "--file-version",
            "16777216",
            "--sign-key",
            "k.key",
            "--key-id",
            "release",
        ])
        .unwrap();
        let Command::Firmware(FirmwareCmd::Upload(a)) = cli.command else {
            panic!("not an upload");
        };
        assert_eq!(a.format, FormatArg::ZigbeeOta);
        assert_eq!(a.manufacturer_code, Some(0x100B));
        assert_eq!(a.file_version, Some(16_777_216));
        assert_eq!(
            a.labels,
            vec![
                ("vendor".to_string(), "signify".to_string()),
                ("ring".to_string(), "beta".to_string())
            ]
        );
        assert_eq!(a.key_id.as_deref(), Some("release"));
    }

    #[test]
    fn upload_requires_name_version_and_both_signing_flags() {
        assert!(parse(&["firmware", "upload", "a.ota", "--version", "1"]).is_err());
        // A named and versioned upload, with one more flag.
        let upload = |more: [&str; 2]| {
            let mut argv = vec!["firmware", "upload", "a", "--name", "n", "--version", "1"];
            argv.extend(more);
            parse(&argv)
        };
        let err = upload(["--sign-key", "k"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(upload(["--label", "novalue"]).is_err());
    }

    #[test]
    fn download_uses_capital_o_for_the_file() {
        let cli = parse(&["firmware", "download", "fw-1", "-O", "x.bin", "-o", "json"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        let Command::Firmware(FirmwareCmd::Download(a)) = cli.command else {
            panic!("not a download");
        };
        assert_eq!(a.out, Some(PathBuf::from("x.bin")));
    }
}

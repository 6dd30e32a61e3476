//! `otactl firmware upload|list|show|rm|download|sign|keygen`.
//!
//! `args` are the flags, `view` the JSON documents, `render` the tables; `transfer` moves the
//! bytes. Upload hashes the file locally first (the sha256 goes into the metadata, so the
//! server can refuse a corrupted transfer), then streams it in 1 MiB chunks. Download writes
//! to `<FILE>.part` and renames only after the sha256 matched.

pub mod args;
pub mod render;
mod transfer;
pub mod view;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use ota_proto::v1 as pb;

pub use self::args::FirmwareCmd;
use self::args::{
    FirmwareListArgs, FirmwareRmArgs, FirmwareSignArgs, FormatArg, KeygenArgs, UploadArgs,
};
use self::view::{DeletedJson, FirmwareJson, FirmwareListJson, KeygenJson};
use super::{Ctx, Failed, all_pages, id};
use crate::client::Api;
use crate::{keys, output};

/// Maps a format flag.
pub fn format(f: FormatArg) -> pb::FirmwareFormat {
    match f {
        FormatArg::Auto => pb::FirmwareFormat::Unspecified,
        FormatArg::ZigbeeOta => pb::FirmwareFormat::ZigbeeOta,
        FormatArg::EspApp => pb::FirmwareFormat::EspApp,
        FormatArg::EspFactory => pb::FirmwareFormat::EspFactory,
    }
}

/// Checks a catalog name: letters, digits, '.', '_', '-'.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        anyhow::bail!("--name is empty");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        anyhow::bail!(
            "--name {name:?} contains {c:?}: use letters, digits, '.', '_' and '-' (e.g. \
             \"hue-switch\")"
        );
    }
    Ok(())
}

/// A resolved upload: the file, the metadata (without size, digest and signature, which come
/// from reading the file), and the signing key to use.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadPlan {
    /// The file.
    pub path: PathBuf,
    /// Name, version, format, claims, labels, notes.
    pub metadata: pb::UploadMetadata,
    /// Key file and key id.
    pub sign: Option<(PathBuf, String)>,
}

/// Resolves `firmware upload`.
pub fn resolve_upload(a: &UploadArgs) -> anyhow::Result<UploadPlan> {
    let name = a.name.trim();
    check_name(name)?;
    let version = a.version.trim();
    if version.is_empty() {
        anyhow::bail!("--version is empty");
    }
    let mut labels = std::collections::HashMap::new();
    for (k, v) in &a.labels {
        if labels.insert(k.clone(), v.clone()).is_some() {
            anyhow::bail!("--label {k} is given twice");
        }
    }
    let zigbee_claims =
        a.manufacturer_code.is_some() || a.image_type.is_some() || a.file_version.is_some();
    if zigbee_claims && matches!(a.format, FormatArg::EspApp | FormatArg::EspFactory) {
        anyhow::bail!(
            "--manufacturer-code/--image-type/--file-version are Zigbee claims; they do not fit \
             --format {}",
            crate::vocab::format_name(format(a.format) as i32)
        );
    }
    let chip = a
        .chip
        .as_deref()
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !chip.is_empty() && a.format == FormatArg::ZigbeeOta {
        anyhow::bail!("--chip is an ESP claim; it does not fit --format zigbee-ota");
    }
    let sign = match (&a.sign_key, &a.key_id) {
        (Some(k), Some(id)) if !id.trim().is_empty() => Some((k.clone(), id.trim().to_string())),
        (Some(_), _) => anyhow::bail!("--key-id is empty"),
        _ => None,
    };
    Ok(UploadPlan {
        path: a.file.clone(),
        metadata: pb::UploadMetadata {
            name: name.to_string(),
            version: version.to_string(),
            format: format(a.format) as i32,
            size: 0,
            sha256: String::new(),
            manufacturer_code: a.manufacturer_code,
            image_type: a.image_type,
            file_version: a.file_version,
            chip,
            labels,
            release_notes: a.notes.clone().unwrap_or_default(),
            signature: None,
        },
        sign,
    })
}

/// The firmware `fw_id` names (a full id, or a prefix otad resolves).
pub(super) async fn get(api: &Api, fw_id: String) -> anyhow::Result<pb::Firmware> {
    Ok(api
        .call(
            api.firmware()
                .get(api.unary(pb::GetFirmwareRequest { id: fw_id })),
        )
        .await?)
}

/// Runs a `firmware` command.
pub async fn run(ctx: &Ctx, cmd: FirmwareCmd) -> anyhow::Result<()> {
    match cmd {
        FirmwareCmd::Upload(a) => transfer::upload(ctx, resolve_upload(&a)?).await,
        FirmwareCmd::List(a) => list(ctx, &a).await,
        FirmwareCmd::Show(a) => {
            let fw_id = id("firmware", &a.id)?;
            let api = ctx.api().await?;
            let f = get(api, fw_id).await?;
            ctx.out.show(&FirmwareJson::new(&f), render::firmware)?;
            Ok(())
        }
        FirmwareCmd::Rm(a) => rm(ctx, &a).await,
        FirmwareCmd::Download(a) => transfer::download(ctx, &a).await,
        FirmwareCmd::Sign(a) => sign(ctx, &a).await,
        FirmwareCmd::Keygen(a) => keygen(ctx, &a),
    }
}

/// Resolves `firmware list`.
pub fn resolve_list(a: &FirmwareListArgs) -> pb::ListFirmwareRequest {
    pb::ListFirmwareRequest {
        page: None,
        format: a.format.map_or(0, |f| format(f) as i32),
        name_contains: a.name.clone().unwrap_or_default(),
    }
}

async fn list(ctx: &Ctx, a: &FirmwareListArgs) -> anyhow::Result<()> {
    let api = ctx.api().await?;
    let pages = all_pages(
        resolve_list(a),
        |r, p| r.page = p,
        async |req| Ok(api.call(api.firmware().list(api.unary(req))).await?),
        |r| &r.next_page_token,
    )
    .await?;
    let all = pages
        .iter()
        .flat_map(|r| &r.firmware)
        .map(FirmwareJson::new)
        .collect();
    ctx.out
        .show(&FirmwareListJson { firmware: all }, render::firmware_list)?;
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn rm(ctx: &Ctx, a: &FirmwareRmArgs) -> anyhow::Result<()> {
    let fw_id = id("firmware", &a.id)?;
    if !a.yes && !output::stdin_is_tty() {
        anyhow::bail!("not deleting {fw_id} without confirmation: pass --yes");
    }
    let api = ctx.api().await?;
    // Resolve a prefix to the full id, and show what is about to go.
    let f = get(api, fw_id).await?;
    if !a.yes {
        let q = format!(
            "Delete firmware {} ({} {}, {})?",
            f.id,
            f.name,
            f.version,
            output::fmt_bytes(f.size)
        );
        if !confirm(&q)? {
            return Err(Failed(format!("{} was not deleted", f.id)).into());
        }
    }
    api.call(
        api.firmware()
            .delete(api.unary(pb::DeleteFirmwareRequest { id: f.id.clone() })),
    )
    .await?;
    ctx.out
        .show(&DeletedJson { deleted: f.id }, render::deleted)?;
    Ok(())
}

async fn sign(ctx: &Ctx, a: &FirmwareSignArgs) -> anyhow::Result<()> {
    let fw_id = id("firmware", &a.id)?;
    let key_id = a.key_id.trim().to_string();
    if key_id.is_empty() {
        anyhow::bail!("--key-id is empty");
    }
    let key = keys::read_signing_key(&a.key)?;
    let api = ctx.api().await?;
    let f = get(api, fw_id).await?;
    let sig = keys::sign_sha256_hex(&key, &f.sha256)?;
    let signed = api
        .call(
            api.firmware()
                .add_signature(api.unary(pb::AddSignatureRequest {
                    firmware_id: f.id.clone(),
                    signature: Some(pb::FirmwareSignature {
                        key_id,
                        signature: sig.to_bytes().to_vec(),
                        added_at_ms: 0,
                        added_by: None,
                    }),
                })),
        )
        .await?;
    ctx.out
        .show(&FirmwareJson::new(&signed), render::firmware)?;
    Ok(())
}

fn keygen(ctx: &Ctx, a: &KeygenArgs) -> anyhow::Result<()> {
    let key = keys::generate()?;
    let (private, public) = keys::write_pair(&a.out, &key, a.force)?;
    let view = KeygenJson {
        private_key_path: private.display().to_string(),
        public_key_path: public.display().to_string(),
        public_key: keys::encode_key_text(&key.verifying_key().to_bytes())
            .trim()
            .to_string(),
    };
    ctx.out.show(&view, render::keygen)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::transfer::{default_download_name, part_path};
    use super::*;
    use clap::Parser as _;
    use std::path::Path;

    fn upload_args(extra: &[&str]) -> UploadArgs {
        let mut args = vec![
            "otactl",
            "firmware",
            "upload",
            "f.bin",
            "--name",
            "hue",
            "--version",
            "1.0",
        ];
        args.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(args).unwrap().command {
            crate::cli::Command::Firmware(FirmwareCmd::Upload(a)) => a,
            _ => unreachable!("parsed an upload"),
        }
    }

    #[test]
    fn upload_metadata_carries_claims_and_labels() {
        let p = resolve_upload(&upload_args(&[
            "--format",
            "zigbee-ota",
            "--manufacturer-code",
            "0x100B",
            "--label",
            "a=b",
            "--notes",
            "fixes",
        ]))
        .unwrap();
        assert_eq!(p.metadata.name, "hue");
        assert_eq!(p.metadata.format, pb::FirmwareFormat::ZigbeeOta as i32);
        assert_eq!(p.metadata.manufacturer_code, Some(0x100B));
        assert_eq!(p.metadata.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(p.metadata.release_notes, "fixes");
        assert!(p.sign.is_none());
        let p = resolve_upload(&upload_args(&[
            "--chip",
            " ESP32C3 ",
            "--sign-key",
            "k",
            "--key-id",
            "rel",
        ]))
        .unwrap();
        assert_eq!(p.metadata.chip, "esp32c3");
        assert_eq!(p.sign, Some((PathBuf::from("k"), "rel".to_string())));
    }

    #[test]
    fn upload_refuses_claims_that_cannot_fit() {
        let e = resolve_upload(&upload_args(&["--format", "esp-app", "--image-type", "1"]))
            .unwrap_err();
        assert!(e.to_string().contains("Zigbee claims"), "{e}");
        assert!(
            resolve_upload(&upload_args(&["--format", "zigbee-ota", "--chip", "esp32"])).is_err()
        );
        assert!(resolve_upload(&upload_args(&["--label", "a=1", "--label", "a=2"])).is_err());
        let mut a = upload_args(&[]);
        a.name = "hue switch".into();
        assert!(resolve_upload(&a).unwrap_err().to_string().contains("' '"));
        a.name = "hue".into();
        a.version = " ".into();
        assert!(resolve_upload(&a).is_err());
    }

    #[test]
    fn list_requests_and_download_names() {
        let r = resolve_list(&FirmwareListArgs {
            format: Some(FormatArg::EspFactory),
            name: Some("kitchen".into()),
        });
        assert_eq!(r.format, 3);
        assert_eq!(r.name_contains, "kitchen");
        let f = pb::Firmware {
            name: "hue".into(),
            version: "2.3 beta/1".into(),
            format: 1,
            ..Default::default()
        };
        assert_eq!(
            default_download_name(&f),
            PathBuf::from("hue-2.3_beta_1.ota")
        );
        assert_eq!(
            part_path(Path::new("a/b.bin")),
            PathBuf::from("a/b.bin.part")
        );
    }
}

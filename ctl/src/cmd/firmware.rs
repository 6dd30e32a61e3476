//! `otactl firmware upload|list|show|rm|download|sign|keygen`.
//!
//! Upload hashes the file locally first (the sha256 goes into the metadata, so the server can
//! refuse a corrupted transfer), then streams it in 1 MiB chunks. Download writes to
//! `<FILE>.part` and renames only after the sha256 matched.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ota_proto::v1 as pb;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::{Ctx, Failed, id};
use crate::cli::{
    FirmwareCmd, FirmwareDownloadArgs, FirmwareListArgs, FirmwareRmArgs, FirmwareSignArgs,
    FormatArg, KeygenArgs, UploadArgs,
};
use crate::views::{
    DeletedView, DownloadView, FirmwareListView, FirmwareView, KeygenView, UploadView,
};
use crate::{human, keys, output, progress};

/// Largest chunk the API accepts.
pub const CHUNK: usize = 1024 * 1024;

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

/// Runs a `firmware` command.
pub async fn run(ctx: &Ctx, cmd: FirmwareCmd) -> anyhow::Result<()> {
    match cmd {
        FirmwareCmd::Upload(a) => upload(ctx, resolve_upload(&a)?).await,
        FirmwareCmd::List(a) => list(ctx, &a).await,
        FirmwareCmd::Show(a) => {
            let fw_id = id("firmware", &a.id)?;
            let api = ctx.api().await?;
            let f = api
                .call(
                    api.firmware()
                        .get(api.unary(pb::GetFirmwareRequest { id: fw_id })),
                )
                .await?;
            ctx.out.show(&FirmwareView::new(&f), human::firmware)?;
            Ok(())
        }
        FirmwareCmd::Rm(a) => rm(ctx, &a).await,
        FirmwareCmd::Download(a) => download(ctx, &a).await,
        FirmwareCmd::Sign(a) => sign(ctx, &a).await,
        FirmwareCmd::Keygen(a) => keygen(ctx, &a),
    }
}

/// sha256 of a file, with a progress bar.
fn hash_file(path: &Path, bar: &indicatif::ProgressBar) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(hex::encode(h.finalize()))
}

async fn upload(ctx: &Ctx, mut plan: UploadPlan) -> anyhow::Result<()> {
    let path = plan.path.clone();
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a file", path.display());
    }
    let size = meta.len();
    if size == 0 {
        anyhow::bail!("{} is empty", path.display());
    }
    // Read the key before the (possibly long) hashing, so a bad key file fails at once.
    let key = match &plan.sign {
        Some((key_path, _)) => Some(keys::read_signing_key(key_path)?),
        None => None,
    };
    // Connect before hashing too: an absent server should not cost a full read of the file.
    let api = ctx.api().await?;
    let bars = progress::enabled(&ctx.out);

    let hash_bar = progress::bytes(bars, size, "hashing");
    let sha256 = hash_file(&path, &hash_bar)?;
    hash_bar.finish_and_clear();

    plan.metadata.size = size;
    plan.metadata.sha256 = sha256.clone();
    if let (Some(key), Some((_, key_id))) = (&key, &plan.sign) {
        let sig = keys::sign_sha256_hex(key, &sha256)?;
        plan.metadata.signature = Some(pb::FirmwareSignature {
            key_id: key_id.clone(),
            signature: sig.to_bytes().to_vec(),
            added_at_ms: 0,
            added_by: None,
        });
    }

    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let bar = progress::bytes(bars, size, "uploading");
    let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::new(Mutex::new(None));
    let first = pb::UploadFirmwareRequest {
        part: Some(pb::upload_firmware_request::Part::Metadata(plan.metadata)),
    };
    let chunks = futures::stream::unfold(
        (file, bar.clone(), read_error.clone()),
        |(mut file, bar, slot)| async move {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    let msg = pb::UploadFirmwareRequest {
                        part: Some(pb::upload_firmware_request::Part::Chunk(buf)),
                    };
                    Some((msg, (file, bar, slot)))
                }
                Err(e) => {
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(e);
                    }
                    None
                }
            }
        },
    );
    let stream = futures::StreamExt::chain(futures::stream::iter([first]), chunks);
    let result = api.call(api.firmware().upload(api.streaming(stream))).await;
    bar.finish_and_clear();
    if let Some(e) = read_error.lock().ok().and_then(|mut s| s.take()) {
        return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())));
    }
    let r = result?;
    let view = UploadView {
        firmware: r.firmware.as_ref().map(FirmwareView::new),
        already_existed: r.already_existed,
    };
    ctx.out.show(&view, human::upload)?;
    Ok(())
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
    let mut req = resolve_list(a);
    let api = ctx.api().await?;
    let mut all = Vec::new();
    loop {
        let r = api
            .call(api.firmware().list(api.unary(req.clone())))
            .await?;
        all.extend(r.firmware.iter().map(FirmwareView::new));
        if r.next_page_token.is_empty() {
            break;
        }
        req.page = Some(pb::PageRequest {
            page_size: 0,
            page_token: r.next_page_token,
        });
    }
    ctx.out
        .show(&FirmwareListView { firmware: all }, human::firmware_list)?;
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
    let f = api
        .call(
            api.firmware()
                .get(api.unary(pb::GetFirmwareRequest { id: fw_id })),
        )
        .await?;
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
    ctx.out.show(&DeletedView { deleted: f.id }, |d| {
        format!("Deleted firmware {}.", d.deleted)
    })?;
    Ok(())
}

/// Default file name for a download: `<name>-<version>.bin`, with unsafe characters replaced.
pub fn default_download_name(f: &pb::Firmware) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let ext = match pb::FirmwareFormat::try_from(f.format) {
        Ok(pb::FirmwareFormat::ZigbeeOta) => "ota",
        _ => "bin",
    };
    PathBuf::from(format!("{}-{}.{ext}", clean(&f.name), clean(&f.version)))
}

fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

async fn download(ctx: &Ctx, a: &FirmwareDownloadArgs) -> anyhow::Result<()> {
    let fw_id = id("firmware", &a.id)?;
    let api = ctx.api().await?;
    let f = api
        .call(
            api.firmware()
                .get(api.unary(pb::GetFirmwareRequest { id: fw_id })),
        )
        .await?;
    let dest = a.out.clone().unwrap_or_else(|| default_download_name(&f));
    if dest.exists() && !a.force {
        anyhow::bail!(
            "{} already exists (pass --force to overwrite)",
            dest.display()
        );
    }
    let part = part_path(&dest);
    let mut file = std::fs::File::create(&part)
        .with_context(|| format!("cannot create {}", part.display()))?;
    let bar = progress::bytes(progress::enabled(&ctx.out), f.size, "download");
    let outcome = async {
        let mut stream = api
            .call(
                api.firmware()
                    .download(api.streaming(pb::DownloadFirmwareRequest {
                        firmware_id: f.id.clone(),
                        offset: 0,
                        task_id: String::new(),
                    })),
            )
            .await?;
        let mut h = Sha256::new();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.message().await.map_err(|s| api.error(&s))? {
            if chunk.offset != written {
                return Err(Failed(format!(
                    "otad sent bytes at offset {} when {written} was expected; nothing written",
                    chunk.offset
                ))
                .into());
            }
            if chunk.total_size > 0 {
                bar.set_length(chunk.total_size);
            }
            file.write_all(&chunk.data)
                .with_context(|| format!("cannot write {}", part.display()))?;
            h.update(&chunk.data);
            written += chunk.data.len() as u64;
            bar.set_position(written);
        }
        file.flush()
            .with_context(|| format!("cannot write {}", part.display()))?;
        Ok::<_, anyhow::Error>((written, hex::encode(h.finalize())))
    }
    .await;
    bar.finish_and_clear();
    let (written, sha256) = match outcome {
        Ok(v) => v,
        Err(e) => {
            std::fs::remove_file(&part).ok();
            return Err(e);
        }
    };
    if sha256 != f.sha256 || written != f.size {
        std::fs::remove_file(&part).ok();
        return Err(Failed(format!(
            "downloaded {} of {} bytes with sha256 {sha256}, but the catalog says {}; nothing \
             written",
            written, f.size, f.sha256
        ))
        .into());
    }
    std::fs::rename(&part, &dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
    let view = DownloadView {
        firmware_id: f.id.clone(),
        path: dest.display().to_string(),
        size: written,
        sha256,
    };
    ctx.out.show(&view, |d| {
        format!(
            "Wrote {} ({}), sha256 {} verified.",
            d.path,
            output::fmt_bytes(d.size),
            d.sha256
        )
    })?;
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
    let f = api
        .call(
            api.firmware()
                .get(api.unary(pb::GetFirmwareRequest { id: fw_id })),
        )
        .await?;
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
    ctx.out.show(&FirmwareView::new(&signed), human::firmware)?;
    Ok(())
}

fn keygen(ctx: &Ctx, a: &KeygenArgs) -> anyhow::Result<()> {
    let key = keys::generate()?;
    let (private, public) = keys::write_pair(&a.out, &key, a.force)?;
    let view = KeygenView {
        private_key_path: private.display().to_string(),
        public_key_path: public.display().to_string(),
        public_key: keys::encode_key_text(&key.verifying_key().to_bytes())
            .trim()
            .to_string(),
    };
    ctx.out.show(&view, |k| {
        format!(
            "Wrote the private key to {} (keep it secret) and the public key to {}.\nPublic key: \
             {}\nSign with: otactl firmware sign <FW> --key {} --key-id <NAME>",
            k.private_key_path, k.public_key_path, k.public_key, k.private_key_path
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

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

    #[test]
    fn hashing_matches_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let bar = progress::bytes(false, 3, "hashing");
        assert_eq!(
            hash_file(&p, &bar).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(bar.position(), 3);
    }
}

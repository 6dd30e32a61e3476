//! The bytes of `firmware upload` and `firmware download`: local hashing with a progress bar,
//! the chunked upload stream, and the download into `<FILE>.part`, renamed only after its
//! sha256 matched the catalog.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ota_proto::v1 as pb;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::args::FirmwareDownloadArgs;
use super::view::{DownloadJson, FirmwareJson, UploadJson};
use super::{UploadPlan, render};
use crate::cmd::{Ctx, Failed, id};
use crate::{keys, progress};

/// Largest chunk the API accepts.
pub const CHUNK: usize = 1024 * 1024;

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

/// Runs `firmware upload`.
pub async fn upload(ctx: &Ctx, mut plan: UploadPlan) -> anyhow::Result<()> {
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
    let view = UploadJson {
        firmware: r.firmware.as_ref().map(FirmwareJson::new),
        already_existed: r.already_existed,
    };
    ctx.out.show(&view, render::upload)?;
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

/// Where a download is written until its sha256 matched: `<FILE>.part`.
pub fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Runs `firmware download`.
pub async fn download(ctx: &Ctx, a: &FirmwareDownloadArgs) -> anyhow::Result<()> {
    let fw_id = id("firmware", &a.id)?;
    let api = ctx.api().await?;
    let f = super::get(api, fw_id).await?;
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
    let view = DownloadJson {
        firmware_id: f.id.clone(),
        path: dest.display().to_string(),
        size: written,
        sha256,
    };
    ctx.out.show(&view, render::downloaded)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

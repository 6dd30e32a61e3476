//! `FirmwareService`: the firmware catalog.
//!
//! An upload streams into a temporary file while SHA-256, MD5 and SHA-512 are computed; the
//! whole file is then validated by format (`ota_firmware::inspect`), every claim of the uploader
//! is compared with what the file says, and only then is the blob made durable and the
//! `FirmwareRegistered` event recorded. A refused or interrupted upload leaves nothing behind.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use ota_domain::events::{FirmwareDeleted, FirmwareRegistered, FirmwareSignatureAdded, streams};
use ota_domain::model::{EspFacts, FirmwareFormat, ZigbeeFacts};
use ota_firmware::{Expected, FirmwareHasher, FirmwareImage};
use ota_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span};

use super::caller::{Caller, Role, caller};
use super::convert;
use super::error::{ApiError, ApiResult, stream_status};
use super::paging::Page;
use crate::app::App;
use crate::core::Change;
use crate::quote::quote;

/// Largest chunk a client may send in one message.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Chunk size of downloads.
pub const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// The service.
#[derive(Debug, Clone)]
pub struct FirmwareApi {
    app: Arc<App>,
}

impl FirmwareApi {
    /// A service over the app.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

/// Names: letters, digits, '.', '_', '-'; 1-64 characters; not path-like.
pub fn validate_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "firmware name {} is not valid: 1-64 letters, digits, '.', '_' or '-', not starting with '.' (no paths)",
            quote(name)
        )))
    }
}

fn validate_version(v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err(ApiError::invalid(format!(
            "firmware version {} is not valid: 1-64 printable characters without slashes",
            quote(v)
        )));
    }
    Ok(())
}

fn validate_signature(s: &pb::FirmwareSignature) -> ApiResult<()> {
    if s.key_id.is_empty()
        || s.key_id.len() > 64
        || !s
            .key_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ApiError::invalid(format!(
            "signature key_id {} is not valid: 1-64 letters, digits, '.', '_' or '-'",
            quote(&s.key_id)
        )));
    }
    if s.signature.len() != 64 {
        return Err(ApiError::invalid(format!(
            "signature is {} bytes; an ed25519 signature is 64 bytes",
            s.signature.len()
        )));
    }
    Ok(())
}

fn validate_metadata(m: &pb::UploadMetadata, max_bytes: u64) -> ApiResult<Option<FirmwareFormat>> {
    validate_name(&m.name)?;
    validate_version(&m.version)?;
    let format = convert::format_from(m.format).map_err(ApiError::invalid)?;
    if m.size > max_bytes {
        return Err(ApiError::ResourceExhausted(format!(
            "the file is {} bytes; this server accepts firmware up to {max_bytes} bytes (otad --max-firmware-bytes)",
            m.size
        )));
    }
    if !m.sha256.is_empty()
        && (m.sha256.len() != 64 || !m.sha256.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ApiError::invalid("metadata.sha256 must be 64 hex digits"));
    }
    if m.labels.len() > 32 {
        return Err(ApiError::invalid("at most 32 labels"));
    }
    for (k, v) in &m.labels {
        if k.is_empty()
            || k.len() > 64
            || v.len() > 256
            || k.chars().any(char::is_control)
            || v.chars().any(char::is_control)
        {
            return Err(ApiError::invalid(format!(
                "label {} is not valid: keys 1-64 characters, values up to 256, no control characters",
                quote(k)
            )));
        }
    }
    if m.release_notes.len() > 8192 {
        return Err(ApiError::invalid("release_notes is at most 8192 bytes"));
    }
    if !m.chip.is_empty() {
        m.chip
            .parse::<ota_firmware::Chip>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    if let Some(s) = &m.signature {
        validate_signature(s)?;
    }
    Ok(format)
}

/// Turns the parsed image into domain facts, checking the uploader's claims against it.
fn facts_from_image(
    image: &FirmwareImage,
    m: &pb::UploadMetadata,
) -> ApiResult<(FirmwareFormat, Option<ZigbeeFacts>, Option<EspFacts>)> {
    let mut mismatch = Vec::new();
    match image {
        FirmwareImage::Zigbee(z) => {
            let h = &z.header;
            if let Some(c) = m.manufacturer_code
                && c != u32::from(h.manufacturer_code)
            {
                mismatch.push(format!(
                    "manufacturer code: claimed 0x{c:04X}, the file says 0x{:04X}",
                    h.manufacturer_code
                ));
            }
            if let Some(t) = m.image_type
                && t != u32::from(h.image_type)
            {
                mismatch.push(format!(
                    "image type: claimed 0x{t:04X}, the file says 0x{:04X}",
                    h.image_type
                ));
            }
            if let Some(v) = m.file_version
                && v != h.file_version
            {
                mismatch.push(format!(
                    "file version: claimed 0x{v:08X}, the file says 0x{:08X}",
                    h.file_version
                ));
            }
            if !m.chip.is_empty() {
                mismatch.push("chip: claimed for a Zigbee OTA file, which has no chip".into());
            }
            if !mismatch.is_empty() {
                return Err(ApiError::invalid(format!(
                    "the file does not match the upload's claims: {}",
                    mismatch.join("; ")
                )));
            }
            Ok((
                FirmwareFormat::ZigbeeOta,
                Some(ZigbeeFacts {
                    manufacturer_code: h.manufacturer_code,
                    image_type: h.image_type,
                    file_version: h.file_version,
                    header_version: h.header_version,
                    header_length: h.header_len,
                    field_control: h.field_control,
                    stack_version: h.stack_version,
                    header_string: h.header_string.clone(),
                    total_image_size: h.total_image_size,
                    security_credential_version: h.security_credential_version,
                    destination: h.upgrade_file_destination,
                    min_hardware_version: h.hardware_versions.as_ref().map(|v| v.min),
                    max_hardware_version: h.hardware_versions.as_ref().map(|v| v.max),
                    prefix_length: u32::try_from(z.prefix_len).unwrap_or(u32::MAX),
                    trailing_length: u32::try_from(z.trailing_len).unwrap_or(u32::MAX),
                    sub_element_tags: z.elements.iter().map(|e| e.tag).collect(),
                }),
                None,
            ))
        }
        FirmwareImage::EspApp(_) | FirmwareImage::EspFactory(_) => {
            let e = match image {
                FirmwareImage::EspFactory(f) => &f.app,
                FirmwareImage::EspApp(e) => e,
                FirmwareImage::Zigbee(_) => unreachable!("matched above"),
            };
            if m.manufacturer_code.is_some() || m.image_type.is_some() || m.file_version.is_some() {
                mismatch.push("Zigbee header values were claimed for an ESP image".to_string());
            }
            if !m.chip.is_empty()
                && let Ok(claimed) = m.chip.parse::<ota_firmware::Chip>()
                && claimed != e.chip
            {
                mismatch.push(format!(
                    "chip: claimed {}, the image is built for {}",
                    claimed.name(),
                    e.chip.name()
                ));
            }
            if !mismatch.is_empty() {
                return Err(ApiError::invalid(format!(
                    "the file does not match the upload's claims: {}",
                    mismatch.join("; ")
                )));
            }
            let app = e.app.as_ref();
            let (format, app_offset) = match image {
                FirmwareImage::EspFactory(f) => (FirmwareFormat::EspFactory, Some(f.app_offset)),
                _ => (FirmwareFormat::EspApp, None),
            };
            Ok((
                format,
                None,
                Some(EspFacts {
                    chip: e.chip.esptool_name().to_string(),
                    chip_id: e.extended.as_ref().map(|x| x.chip_id),
                    app_version: app.map(|a| a.version.clone()).unwrap_or_default(),
                    project_name: app.map(|a| a.project_name.clone()).unwrap_or_default(),
                    idf_version: app.map(|a| a.idf_ver.clone()).unwrap_or_default(),
                    build_date: app.map(|a| a.date.clone()).unwrap_or_default(),
                    build_time: app.map(|a| a.time.clone()).unwrap_or_default(),
                    secure_version: app.map(|a| a.secure_version).unwrap_or_default(),
                    segment_count: e.segments.len() as u8,
                    flash_mode: e.flash_mode.name().to_string(),
                    flash_size: e.flash_size.name().to_string(),
                    flash_freq: e.flash_freq.name().to_string(),
                    hash_appended: e.extended.as_ref().is_some_and(|x| x.hash_appended),
                    app_offset,
                }),
            ))
        }
    }
}

fn expected_for(format: Option<FirmwareFormat>, chip: &str) -> Expected {
    let chip = chip.parse::<ota_firmware::Chip>().ok();
    match format {
        None => Expected::Auto,
        Some(FirmwareFormat::ZigbeeOta) => Expected::Zigbee,
        Some(FirmwareFormat::EspApp) => Expected::EspApp { chip },
        Some(FirmwareFormat::EspFactory) => Expected::EspFactory { chip },
    }
}

/// The firmware with this id, or the only one whose id starts with it.
fn resolve_id(state: &ota_domain::projection::FleetState, id: &str) -> ApiResult<String> {
    if id.is_empty() {
        return Err(ApiError::invalid("firmware id is required"));
    }
    if state.firmware.contains_key(id) {
        return Ok(id.to_string());
    }
    let matches: Vec<&String> = state
        .firmware
        .keys()
        .filter(|k| k.starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::not_found(format!(
            "no firmware {}: `otactl firmware list` shows the catalog",
            quote(id)
        ))),
        many => Err(ApiError::invalid(format!(
            "{} matches {} firmware ids; give more of the id",
            quote(id),
            many.len()
        ))),
    }
}

fn firmware_pb(state: &ota_domain::projection::FleetState, id: &str) -> Option<pb::Firmware> {
    state
        .firmware
        .get(id)
        .map(|fw| convert::firmware(fw, state.active_rollouts_using(id)))
}

/// The answer to an upload that stalled.
fn idle_error(idle: std::time::Duration) -> Status {
    ApiError::DeadlineExceeded(format!(
        "the upload sent nothing for {}; it was dropped (otad upload_idle_timeout)",
        humantime::format_duration(idle)
    ))
    .into()
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::FirmwareChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::firmware_service_server::FirmwareService for FirmwareApi {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadFirmwareRequest>>,
    ) -> Result<Response<pb::UploadFirmwareResponse>, Status> {
        let who = caller(&request);
        who.require(Role::Admin)?;
        let mut stream = request.into_inner();
        let max = self.app.config.max_firmware_bytes;
        let idle = self.app.config.upload_idle_timeout;
        let first = tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| idle_error(idle))?
            .map_err(stream_status)?;
        let metadata = match first {
            Some(pb::UploadFirmwareRequest {
                part: Some(pb::upload_firmware_request::Part::Metadata(m)),
            }) => m,
            _ => {
                return Err(
                    ApiError::invalid("the first upload message must carry the metadata").into(),
                );
            }
        };
        let format = validate_metadata(&metadata, max)?;
        let span = info_span!("firmware.upload", firmware.name = %metadata.name, firmware.version = %metadata.version);
        self.receive(who, metadata, format, stream)
            .instrument(span)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        request: Request<pb::ListFirmwareRequest>,
    ) -> Result<Response<pb::ListFirmwareResponse>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        let page = Page::from_pb(req.page.as_ref())?;
        let format = convert::format_from(req.format).map_err(ApiError::invalid)?;
        let state = self.app.core.read();
        let mut all: Vec<&ota_domain::projection::FirmwareView> = state
            .firmware
            .values()
            .filter(|f| format.is_none_or(|x| f.registered.format == x))
            .filter(|f| {
                req.name_contains.is_empty() || f.registered.name.contains(&req.name_contains)
            })
            .collect();
        all.sort_by(|a, b| {
            (b.created_at_ms, &b.registered.id).cmp(&(a.created_at_ms, &a.registered.id))
        });
        let items: Vec<pb::Firmware> = all
            .into_iter()
            .map(|f| convert::firmware(f, state.active_rollouts_using(&f.registered.id)))
            .collect();
        let (firmware, next_page_token) = page.apply(items);
        Ok(Response::new(pb::ListFirmwareResponse {
            firmware,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(firmware.id = %request.get_ref().id))]
    async fn get(
        &self,
        request: Request<pb::GetFirmwareRequest>,
    ) -> Result<Response<pb::Firmware>, Status> {
        caller(&request).require(Role::Viewer)?;
        let state = self.app.core.read();
        let id = resolve_id(&state, &request.get_ref().id)?;
        firmware_pb(&state, &id)
            .map(Response::new)
            .ok_or_else(|| ApiError::not_found("firmware vanished").into())
    }

    #[tracing::instrument(skip_all, fields(firmware.id = %request.get_ref().id))]
    async fn delete(
        &self,
        request: Request<pb::DeleteFirmwareRequest>,
    ) -> Result<Response<pb::DeleteFirmwareResponse>, Status> {
        let who = caller(&request);
        who.require(Role::Admin)?;
        let mut sha = String::new();
        let requested = request.into_inner().id;
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                let id = resolve_id(state, &requested)?;
                let rollouts = state.active_rollouts_using(&id);
                if !rollouts.is_empty() {
                    return Err(ApiError::precondition(format!(
                        "firmware {id} is used by rollout(s) {} that are not completed or aborted; abort them first",
                        rollouts.join(", ")
                    )));
                }
                let tasks: Vec<&str> = state
                    .tasks
                    .values()
                    .filter(|t| t.created.firmware_id == id && !t.phase.is_terminal())
                    .map(|t| t.created.task_id.as_str())
                    .take(5)
                    .collect();
                if !tasks.is_empty() {
                    return Err(ApiError::precondition(format!(
                        "firmware {id} is being installed by task(s) {}; wait for them or cancel them first",
                        tasks.join(", ")
                    )));
                }
                sha = state.firmware[&id].registered.sha256.clone();
                Ok(vec![Change::unchanged(
                    streams::firmware(&id),
                    vec![FirmwareDeleted { reason: String::new() }.into()],
                )])
            })
            .await?;
        // The event is durable: the blob may go (a crash here leaves it for the startup GC).
        let still_used = self
            .app
            .core
            .read()
            .firmware
            .values()
            .any(|f| f.registered.sha256 == sha);
        if !still_used {
            let _ = tokio::fs::remove_file(self.app.blobs.path_of(&sha)).await;
        }
        Ok(Response::new(pb::DeleteFirmwareResponse {}))
    }

    #[tracing::instrument(skip_all, fields(firmware.id = %request.get_ref().firmware_id))]
    async fn add_signature(
        &self,
        request: Request<pb::AddSignatureRequest>,
    ) -> Result<Response<pb::Firmware>, Status> {
        let who = caller(&request);
        who.require(Role::Admin)?;
        let req = request.into_inner();
        let sig = req
            .signature
            .ok_or_else(|| ApiError::invalid("signature is required"))?;
        validate_signature(&sig)?;
        let mut id = String::new();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                id = resolve_id(state, &req.firmware_id)?;
                // The same signature again changes nothing and records nothing; a new signature
                // under a known key replaces the old one.
                let known = state.firmware[&id]
                    .signatures
                    .iter()
                    .any(|s| s.key_id == sig.key_id && s.signature == sig.signature);
                if known {
                    return Ok(vec![]);
                }
                Ok(vec![Change::any(
                    streams::firmware(&id),
                    vec![
                        FirmwareSignatureAdded {
                            key_id: sig.key_id.clone(),
                            signature: sig.signature.clone(),
                        }
                        .into(),
                    ],
                )])
            })
            .await?;
        let state = self.app.core.read();
        firmware_pb(&state, &id)
            .map(Response::new)
            .ok_or_else(|| ApiError::not_found("firmware vanished").into())
    }

    type DownloadStream = ChunkStream;

    async fn download(
        &self,
        request: Request<pb::DownloadFirmwareRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let who = caller(&request);
        if !matches!(who, Caller::Agent { .. }) {
            who.require(Role::Viewer)?;
        }
        let req = request.into_inner();
        let (id, sha, size, task_site) = {
            let state = self.app.core.read();
            let id = resolve_id(&state, &req.firmware_id)?;
            // For the span: the site of the task the download is for.
            let task_site = state
                .tasks
                .get(&req.task_id)
                .map(|t| t.created.site_id.clone())
                .unwrap_or_default();
            // An agent downloads only what a task at its site is installing.
            if let Caller::Agent { site_id } = &who
                && !state.tasks.values().map(Box::as_ref).any(|t| {
                    t.created.site_id == *site_id
                        && t.created.firmware_id == id
                        && t.phase.is_at_site()
                })
            {
                return Err(ApiError::PermissionDenied(
                    "no task at this site installs this firmware".into(),
                )
                .into());
            }
            let r = &state.firmware[&id].registered;
            (id, r.sha256.clone(), r.size, task_site)
        };
        if req.offset > size {
            return Err(ApiError::invalid(format!(
                "offset {} is past the end ({size} bytes)",
                req.offset
            ))
            .into());
        }
        let path = self.app.blobs.path_of(&sha);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            tracing::error!(firmware.id = %id, error = %e, "firmware blob missing");
            ApiError::Internal(format!(
                "the image of {id} is missing on the server; upload it again"
            ))
        })?;
        file.seek(std::io::SeekFrom::Start(req.offset))
            .await
            .map_err(ApiError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // Bytes served to agents are counted per site (`ota_firmware_download_bytes_total`): the
        // caller's site, or (development mode has no agent identities) the named task's site.
        let site = match &who {
            Caller::Agent { site_id } => Some(site_id.clone()),
            _ => self
                .app
                .core
                .read()
                .tasks
                .get(&req.task_id)
                .map(|t| t.created.site_id.clone()),
        };
        let metered = site.map(|site| (self.app.metrics.clone(), site));
        let site = match &who {
            Caller::Agent { site_id } => site_id.as_str(),
            _ => task_site.as_str(),
        };
        // A child of the call's span, which continues the agent's download trace.
        let span = info_span!(
            "firmware.download",
            firmware.id = %id,
            task.id = %req.task_id,
            site.id = %site,
            offset = req.offset,
            bytes = tracing::field::Empty,
        );
        tokio::spawn(
            async move {
                let mut offset = req.offset;
                let mut buf = vec![0u8; DOWNLOAD_CHUNK];
                loop {
                    let n = match file.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!("reading the image: {e}"))))
                                .await;
                            return;
                        }
                    };
                    let chunk = pb::FirmwareChunk {
                        offset,
                        data: buf[..n].to_vec(),
                        total_size: size,
                    };
                    offset += n as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                    if let Some((metrics, site)) = &metered {
                        metrics.firmware_served(site, n as u64);
                    }
                }
                tracing::Span::current().record("bytes", offset - req.offset);
                tracing::debug!(bytes = offset - req.offset, "download served");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// An upload received, checked and parsed, not yet committed.
struct Received {
    id: String,
    sha256: String,
    digests: ota_firmware::Digests,
    format: FirmwareFormat,
    zigbee: Option<ZigbeeFacts>,
    esp: Option<EspFacts>,
}

impl FirmwareApi {
    /// Receives the chunks after the metadata, then registers the image: read, check and
    /// parse the bytes, decide (the same bytes again, or a name and version taken), then make
    /// the blob durable and record the event. Whatever is refused before the commit leaves no
    /// file behind.
    async fn receive(
        &self,
        who: Caller,
        metadata: pb::UploadMetadata,
        format: Option<FirmwareFormat>,
        stream: Streaming<pb::UploadFirmwareRequest>,
    ) -> Result<Response<pb::UploadFirmwareResponse>, Status> {
        // Dropped with this future (a client that cancels, a stream error, the idle timeout), the
        // writer removes its temporary file.
        let mut writer = self.app.blobs.begin().await.map_err(ApiError::from)?;
        let received = async {
            let received = self
                .read_and_parse(&mut writer, &metadata, format, stream)
                .await?;
            let already = already_registered(&self.app.core.read(), &received.id, &metadata)?;
            Ok::<_, Status>((received, already))
        }
        .await;
        let (received, already) = match received {
            Ok(r) => r,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        if already {
            writer.abort().await;
            let state = self.app.core.read();
            return Ok(Response::new(pb::UploadFirmwareResponse {
                firmware: firmware_pb(&state, &received.id),
                already_existed: true,
            }));
        }
        self.app
            .blobs
            .commit(writer, &received.sha256)
            .await
            .map_err(ApiError::from)?;
        let id = self.register(&who, &metadata, received).await?;
        let state = self.app.core.read();
        Ok(Response::new(pb::UploadFirmwareResponse {
            firmware: firmware_pb(&state, &id),
            already_existed: false,
        }))
    }

    /// Reads the chunks into `writer` (bounded by `max_firmware_bytes`, each read by the idle
    /// timeout), checks them against the metadata's size and digest and parses the image.
    async fn read_and_parse(
        &self,
        writer: &mut crate::blobs::BlobWriter,
        metadata: &pb::UploadMetadata,
        format: Option<FirmwareFormat>,
        mut stream: Streaming<pb::UploadFirmwareRequest>,
    ) -> Result<Received, Status> {
        let max = self.app.config.max_firmware_bytes;
        let idle = self.app.config.upload_idle_timeout;
        let mut hasher = FirmwareHasher::new();
        loop {
            let next = tokio::time::timeout(idle, stream.message())
                .await
                .map_err(|_| idle_error(idle))?
                .map_err(stream_status)?;
            let Some(msg) = next else { break };
            let chunk = match msg.part {
                Some(pb::upload_firmware_request::Part::Chunk(c)) => c,
                Some(pb::upload_firmware_request::Part::Metadata(_)) => {
                    return Err(ApiError::invalid("metadata may only be sent once, first").into());
                }
                None => continue,
            };
            if chunk.len() > MAX_CHUNK {
                return Err(ApiError::ResourceExhausted(format!(
                    "chunks are at most {MAX_CHUNK} bytes"
                ))
                .into());
            }
            if writer.written() + chunk.len() as u64 > max {
                return Err(ApiError::ResourceExhausted(format!(
                    "the file is larger than {max} bytes, the most this server accepts (otad --max-firmware-bytes)"
                )).into());
            }
            hasher.update(&chunk);
            writer.write(&chunk).await.map_err(ApiError::from)?;
        }
        let digests = hasher.finish();
        let sha256 = digests.sha256_hex();
        let bytes = check_received(writer, metadata, &sha256).await?;
        let image = ota_firmware::inspect(&bytes, expected_for(format, &metadata.chip))
            .map_err(|e| ApiError::invalid(format!("not a valid firmware image: {e}")))?;
        let (format, zigbee, esp) = facts_from_image(&image, metadata)?;
        Ok(Received {
            id: format!("fw-{}", &sha256[..16]),
            sha256,
            digests,
            format,
            zigbee,
            esp,
        })
    }

    /// Records the committed image (and its signature, when the upload carried one).
    async fn register(
        &self,
        who: &Caller,
        metadata: &pb::UploadMetadata,
        received: Received,
    ) -> ApiResult<String> {
        let Received {
            id,
            sha256,
            digests,
            format,
            zigbee,
            esp,
        } = received;
        let registered = FirmwareRegistered {
            id: id.clone(),
            name: metadata.name.clone(),
            version: metadata.version.clone(),
            format,
            channel: if format == FirmwareFormat::ZigbeeOta {
                3
            } else {
                0
            },
            size: digests.len(),
            sha256,
            md5: digests.md5_hex(),
            sha512: digests.sha512_hex(),
            zigbee,
            esp,
            labels: metadata.labels.clone().into_iter().collect(),
            release_notes: metadata.release_notes.clone(),
        };
        let signature = metadata.signature.clone();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                if state.firmware.contains_key(&id) {
                    return Err(ApiError::AlreadyExists(format!(
                        "{id} was registered concurrently"
                    )));
                }
                let mut events = vec![registered.clone().into()];
                if let Some(s) = &signature {
                    events.push(
                        FirmwareSignatureAdded {
                            key_id: s.key_id.clone(),
                            signature: s.signature.clone(),
                        }
                        .into(),
                    );
                }
                Ok(vec![Change::unchanged(streams::firmware(&id), events)])
            })
            .await?;
        info!(firmware.id = %id, format = format.name(), size = registered.size, "firmware registered");
        Ok(id)
    }
}

/// The received bytes, read back, when they are not empty and match the size and SHA-256 the
/// metadata announced.
async fn check_received(
    writer: &mut crate::blobs::BlobWriter,
    metadata: &pb::UploadMetadata,
    sha256: &str,
) -> ApiResult<Vec<u8>> {
    if writer.written() == 0 {
        return Err(ApiError::invalid("the upload has no bytes"));
    }
    if metadata.size != 0 && metadata.size != writer.written() {
        return Err(ApiError::invalid(format!(
            "the upload announced {} bytes but sent {}",
            metadata.size,
            writer.written()
        )));
    }
    if !metadata.sha256.is_empty() && !metadata.sha256.eq_ignore_ascii_case(sha256) {
        return Err(ApiError::invalid(format!(
            "sha256 mismatch: the upload announced {}, the bytes received hash to {sha256}",
            metadata.sha256
        )));
    }
    Ok(writer.read_back().await?)
}

/// Decides before the blob is made durable, so a refused upload stores nothing: `true` when
/// these bytes are already registered under the same name and version; refused when they are
/// registered under another, or the name and version hold other bytes.
fn already_registered(
    state: &ota_domain::projection::FleetState,
    id: &str,
    metadata: &pb::UploadMetadata,
) -> ApiResult<bool> {
    if let Some(existing) = state.firmware.get(id) {
        let r = &existing.registered;
        if r.name == metadata.name && r.version == metadata.version {
            Ok(true)
        } else {
            Err(ApiError::AlreadyExists(format!(
                "these bytes are already registered as {} {} ({id})",
                r.name, r.version
            )))
        }
    } else if let Some(other) = state
        .firmware
        .values()
        .find(|f| f.registered.name == metadata.name && f.registered.version == metadata.version)
    {
        Err(ApiError::AlreadyExists(format!(
            "{} {} is already registered with different content ({}); upload under another version",
            metadata.name, metadata.version, other.registered.id
        )))
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_not_paths() {
        assert!(validate_name("hue-switch_2.1").is_ok());
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            ".hidden",
            "a..b",
            "x y",
            &"n".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn metadata_limits() {
        let m = pb::UploadMetadata {
            name: "x".into(),
            version: "1".into(),
            size: 100,
            ..Default::default()
        };
        assert!(validate_metadata(&m, 1000).is_ok());
        assert!(matches!(
            validate_metadata(&m, 10),
            Err(ApiError::ResourceExhausted(_))
        ));
        let bad_format = pb::UploadMetadata {
            format: 42,
            ..m.clone()
        };
        assert!(
            validate_metadata(&bad_format, 1000)
                .unwrap_err()
                .to_string()
                .contains("unknown firmware format 42")
        );
        let bad_chip = pb::UploadMetadata {
            chip: "z80".into(),
            ..m.clone()
        };
        assert!(
            validate_metadata(&bad_chip, 1000)
                .unwrap_err()
                .to_string()
                .contains("z80")
        );
        let bad_sig = pb::UploadMetadata {
            signature: Some(pb::FirmwareSignature {
                key_id: "k".into(),
                signature: vec![0; 10],
                ..Default::default()
            }),
            ..m
        };
        assert!(
            validate_metadata(&bad_sig, 1000)
                .unwrap_err()
                .to_string()
                .contains("64 bytes")
        );
    }
}

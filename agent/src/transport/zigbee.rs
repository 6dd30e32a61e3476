//! The zigbee2mqtt transport: Zigbee devices updated through a site's zigbee2mqtt over MQTT.
//!
//! What it does, for one zigbee2mqtt instance (a "network"):
//! - **Inventory** from the retained `bridge/devices`, `bridge/state`, `bridge/info` and every
//!   device state (battery, linkquality, last_seen, `update.installed_version` as the file
//!   version, `update.state`) and availability. Battery end devices are *sleepy*.
//! - **Check**: `ota_update/check` with a unique transaction; zigbee2mqtt's answer (its own index
//!   lookup) and the fresh state become a [`CheckReport`].
//! - **Update**: the verified image goes to zigbee2mqtt (≥ 2.8) either as `hex` inside the
//!   request (images under `hex_threshold`, or when no image endpoint is configured) or as a
//!   `url` on the agent's own HTTP endpoint (`/ota/<one-time token>`, removed when the task ends,
//!   sha256 checked against the job). Mains devices get `ota_update/update`; sleepy devices (end
//!   devices on battery, when `schedule_sleepy`) and jobs asking for it get `ota_update/schedule`,
//!   run by zigbee2mqtt when the device next wakes up.
//! - **Progress** from the device's state: 100 until zigbee2mqtt reports anything (and while a
//!   job queues for the network's update slot), 5 while `scheduled`, 2 while `updating` with
//!   percent and remaining seconds, 6 at 100 % while the device restarts (≤ 120 s; not a stall).
//! - **Completion**: the `update` response, or the state going `idle` with `installed_version`
//!   equal to the image's file version (the only sign for scheduled runs). Errors are classified
//!   by `ota_devproto::z2m::errors` (both zigbee2mqtt wordings).
//! - **One update at a time per network** (configurable): a semaphore in the transport. A
//!   second job waits for the slot, reporting 100 "queued …"; a scheduled job holds the slot
//!   while it waits for the wake-up, because zigbee2mqtt starts it on its own.
//! - **Outages**: reconnects and subscribes again. When the broker connection or zigbee2mqtt
//!   itself went away during a job, the job asks zigbee2mqtt again (`check`): "already in
//!   progress" means the transfer goes on; otherwise the device's reported version decides
//!   (target → success, else 5010, so the core may retry).
//! - **Cancel**: before the request, while queued, or while a schedule waits for the wake-up
//!   (`unschedule`); an update whose transfer has not moved yet is aborted (`update/abort`);
//!   once bytes flow, cancel is ignored and the outcome reported.
//!
//! Decisions worth knowing: a device already on the target version succeeds at once (nothing is
//! sent); zigbee2mqtt older than 2.8 (from `bridge/info`) cannot take a given image and is
//! refused with 5021; a device whose `bridge/devices` entry shows neither OTA support nor an OTA
//! cluster is refused with 5013 without asking.
//!
//! What it does not do: download or verify images from the server (the core hands over a
//! [`VerifiedImage`](crate::transport::VerifiedImage)), retry (the core decides from the error
//! code), or anything but OTA with zigbee2mqtt.
//!
//! # Layout
//! - [`config`] holds [`ZigbeeConfig`].
//! - `net`: the MQTT connection, inventory, request correlation.
//! - `images`: the image HTTP endpoint.
//! - `job`: the pure state-message tracker.

pub mod config;
mod images;
mod job;
mod net;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ota_devproto::z2m::{
    CheckData, ImageSource, OtaOp, Topics, UpdateData, Z2mErrorKind, Z2mVersion, classify,
    to_task_error,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use rumqttc::tokio_rustls::rustls;
use rumqttc::{AsyncClient, MqttOptions, TlsConfiguration, Transport as MqttTransport};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{ImageEndpoint, MqttTls, ZigbeeConfig, ZigbeeTimeouts};

use crate::secret::Secret;
use crate::transport::{
    CheckReport, DeviceReport, ProgressSink, TransferProgress, Transport, TransportKind, UpdateJob,
    UpdateReport, VersionInfo,
};
use images::{ImageServer, sha256_hex};
use job::{Tracker, Verdict};
use net::{Net, NetEvent, PendingRequest};

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum ZigbeeError {
    /// A file named in the configuration could not be read.
    #[error("zigbee network {network}: cannot read {what} {path}: {source}")]
    File {
        /// Network name.
        network: String,
        /// What the file is.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The image endpoint could not be bound.
    #[error("zigbee network {network}: cannot bind the image endpoint on {addr}: {source}")]
    Bind {
        /// Network name.
        network: String,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("zigbee network {network}: {message}")]
    Config {
        /// Network name.
        network: String,
        /// What is wrong.
        message: String,
    },
}

/// The transport of one zigbee2mqtt network.
#[derive(Debug)]
pub struct ZigbeeTransport {
    cfg: ZigbeeConfig,
    net: Arc<Net>,
    slots: Arc<Semaphore>,
    images: Option<ImageServer>,
    _stop: DropGuard,
}

impl ZigbeeTransport {
    /// Connects to the broker (in the background; the connection is retried forever) and
    /// starts the image endpoint. Fails only on configuration problems.
    pub async fn start(cfg: ZigbeeConfig) -> Result<Self, ZigbeeError> {
        let network = cfg.network.clone();
        let file = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ZigbeeError::File {
                network: network.clone(),
                what,
                path: path.display().to_string(),
                source,
            })
        };
        if cfg.max_concurrent_updates == 0 {
            return Err(ZigbeeError::Config {
                network,
                message: "max_concurrent_updates must be at least 1".into(),
            });
        }
        let random = uuid::Uuid::new_v4().simple().to_string();
        let mut opts = MqttOptions::new(cfg.client_id_or(&random[..8]), cfg.host.clone(), cfg.port);
        opts.set_keep_alive(cfg.timeouts.keep_alive.max(Duration::from_secs(1)));
        opts.set_clean_session(true);
        opts.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                Some(Secret::from_file(path).map_err(|source| ZigbeeError::File {
                    network: network.clone(),
                    what: "MQTT password file",
                    path: path.display().to_string(),
                    source,
                })?)
            }
            (None, None) => None,
        };
        if let Some(user) = &cfg.username {
            opts.set_credentials(
                user.clone(),
                password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            );
        }
        if let Some(tls) = &cfg.tls {
            let ca = file("CA file", &tls.ca_file)?;
            let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(c), Some(k)) => {
                    Some((file("client certificate", c)?, file("client key", k)?))
                }
                (None, None) => None,
                _ => {
                    return Err(ZigbeeError::Config {
                        network,
                        message: "tls needs both client_cert_file and client_key_file, or neither"
                            .into(),
                    });
                }
            };
            let tls_config =
                rustls_client_config(&ca, client_auth.as_ref()).map_err(|message| {
                    ZigbeeError::Config {
                        network: network.clone(),
                        message: format!("MQTT TLS: {message}"),
                    }
                })?;
            opts.set_transport(MqttTransport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config),
            )));
        }
        let (client, eventloop) = AsyncClient::new(opts, 1024);
        let images = match &cfg.image_endpoint {
            Some(ep) => Some(
                ImageServer::start(ep.bind, ep.advertised_base_url.clone())
                    .await
                    .map_err(|source| ZigbeeError::Bind {
                        network: network.clone(),
                        addr: ep.bind,
                        source,
                    })?,
            ),
            None => None,
        };
        let net = Net::new(
            network.clone(),
            Topics::new(cfg.base_topic.clone()),
            client,
            format!("ota-{}", &random[8..16]),
        );
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&net).drive(eventloop, cfg.timeouts.reconnect_delay, stop.clone()));
        Ok(Self {
            slots: Arc::new(Semaphore::new(cfg.max_concurrent_updates)),
            cfg,
            net,
            images,
            _stop: stop.drop_guard(),
        })
    }

    /// The image endpoint's bound address, when configured.
    pub fn image_endpoint(&self) -> Option<SocketAddr> {
        self.images.as_ref().map(ImageServer::local_addr)
    }

    /// The configuration.
    pub fn config(&self) -> &ZigbeeConfig {
        &self.cfg
    }

    /// Waits until the transport is connected to the broker and subscribed, up to `within`.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut events = self.net.events.subscribe();
        let deadline = Instant::now() + within;
        loop {
            if self.net.lock().connected {
                return true;
            }
            tokio::select! {
                ev = events.recv() => if matches!(ev, Err(broadcast::error::RecvError::Closed)) {
                    return false;
                },
                _ = sleep_until(deadline) => return false,
            }
        }
    }

    /// Waits until the transport knows `device` (by IEEE address or friendly name) from
    /// `bridge/devices`, up to `within`.
    pub async fn wait_for_device(&self, device: &str, within: Duration) -> Option<DeviceReport> {
        let mut rx = self.net.inventory();
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.net.report(device) {
                return Some(r);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                _ = sleep_until(deadline) => return None,
            }
        }
    }

    async fn run_check(&self, device: &str, deadline: Duration) -> Result<CheckReport, TaskError> {
        let ieee = self
            .net
            .resolve(device)
            .ok_or_else(|| unknown(device, &self.cfg.network))?;
        let mut pending = self.net.request(OtaOp::Check, false, &ieee, None).await?;
        let resp = match tokio::time::timeout(deadline, &mut pending.rx).await {
            Ok(Ok(r)) => r,
            _ => {
                return Err(TaskError::new(
                    ErrorCode::BulkCheckTimeout,
                    format!(
                        "zigbee2mqtt did not answer the check of {device} within {}",
                        humantime::format_duration(deadline)
                    ),
                ));
            }
        };
        if !resp.is_ok() {
            return Err(to_task_error(resp.error.as_deref().unwrap_or_default()));
        }
        let data = CheckData::from_value(&resp.data);
        Ok(CheckReport {
            reachable: true,
            device: self.net.report(&ieee).unwrap_or_default(),
            update_available: data.map(|d| d.update_available),
        })
    }

    async fn run_update(
        &self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> Result<UpdateReport, TaskError> {
        let started = Instant::now();
        let deadline = started + job.timeout;
        let say = |p: TransferProgress| {
            let _ = progress.send(p);
        };
        let image = &job.image;
        let total = image.bytes.len() as u64;
        let preparing = |detail: String| TransferProgress {
            status: UpgradeStatus::AgentPreparing,
            percent: None,
            remaining_s: None,
            bytes_sent: 0,
            bytes_total: total,
            detail,
        };

        // The image: exactly the verified bytes, and a Zigbee OTA file.
        let actual = sha256_hex(&image.bytes);
        if !actual.eq_ignore_ascii_case(&image.sha256) {
            return Err(TaskError::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "image sha256 is {actual}, the task expects {}",
                    image.sha256
                ),
            ));
        }
        let header = ota_firmware::zigbee::parse(&image.bytes).map_err(|e| {
            TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!("the image is not a Zigbee OTA file: {e}"),
            )
        })?;
        let target = header.header.file_version;
        if let Some(expected) = image.file_version
            && expected != target
        {
            return Err(TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!(
                    "the image's header has file version {target}, the firmware record says {expected}"
                ),
            ));
        }

        // The device, as zigbee2mqtt knows it.
        let ieee = self
            .net
            .resolve(&job.device)
            .ok_or_else(|| unknown(&job.device, &self.cfg.network))?;
        let (supports, sleepy) = {
            let st = self.net.lock();
            let e = st
                .devices
                .get(&ieee)
                .ok_or_else(|| unknown(&job.device, &self.cfg.network))?;
            (e.info.can_take_image(), e.info.is_sleepy())
        };
        let before = self.net.report(&ieee).unwrap_or_default();
        if !supports {
            return Err(TaskError::new(
                ErrorCode::PrevalidationFailed,
                format!(
                    "zigbee2mqtt cannot update {} ({}): it has no OTA support and no OTA cluster",
                    before.name, ieee
                ),
            ));
        }
        if let Some((Z2mVersion::V2_0To2_7, version)) = self.net.api() {
            return Err(TaskError::new(
                ErrorCode::GatewayRequired,
                format!(
                    "zigbee2mqtt {version} on network {} cannot install an image given by the \
                     agent (url/hex need zigbee2mqtt 2.8 or later); upgrade zigbee2mqtt",
                    self.cfg.network
                ),
            ));
        }
        let from = VersionInfo {
            version: before.current_version.clone(),
            file_version: before.file_version,
            software_build_id: before.software_build_id.clone(),
            date_code: before.date_code.clone(),
        };
        let to_target = VersionInfo {
            version: Some(image.version.clone()),
            file_version: Some(target),
            ..VersionInfo::default()
        };
        if before.file_version == Some(target) {
            tracing::info!(task.id = %job.task_id, device = %ieee, "already on the target version");
            return Ok(UpdateReport {
                from: from.clone(),
                to: VersionInfo {
                    software_build_id: from.software_build_id.clone(),
                    date_code: from.date_code.clone(),
                    ..to_target
                },
                wire_bytes: 0,
            });
        }

        // One update at a time on this network.
        let _slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                say(preparing(format!(
                    "queued: another update runs on zigbee2mqtt network '{}' (at most {} at a time)",
                    self.cfg.network, self.cfg.max_concurrent_updates
                )));
                tokio::select! {
                    p = Arc::clone(&self.slots).acquire_owned() => p.map_err(|_| {
                        TaskError::new(ErrorCode::Other, "the zigbee transport is shutting down")
                    })?,
                    _ = cancel.cancelled() => return Err(cancelled("while queued; nothing was sent")),
                    _ = sleep_until(deadline) => return Err(TaskError::new(
                        ErrorCode::Timeout,
                        format!("still queued behind other updates on network '{}' after {}",
                            self.cfg.network, humantime::format_duration(job.timeout)),
                    )),
                }
            }
        };
        if cancel.is_cancelled() {
            return Err(cancelled("before anything was sent"));
        }

        // How the image travels.
        let mut lease = None;
        let source = match &self.images {
            Some(server) if image.bytes.len() >= self.cfg.hex_threshold => {
                let l = server.register(&job.task_id, image.bytes.clone(), &image.sha256)?;
                let url = l.url.clone();
                lease = Some(l);
                ImageSource::Url(url)
            }
            _ => ImageSource::hex(&image.bytes, None),
        };
        let schedule = job.schedule || (self.cfg.schedule_sleepy && sleepy);
        let op = if schedule {
            OtaOp::Schedule
        } else {
            OtaOp::Update
        };
        let mut events = self.net.events.subscribe();
        let mut pending = Some(
            self.net
                .request(op, job.downgrade, &ieee, Some(source))
                .await?,
        );
        tracing::info!(
            task.id = %job.task_id, attempt = job.attempt, device = %ieee,
            network = %self.cfg.network, schedule, delivery = if lease.is_some() { "url" } else { "hex" },
            "zigbee2mqtt OTA request sent"
        );
        say(preparing(if schedule {
            "schedule request sent to zigbee2mqtt".into()
        } else {
            "update request sent to zigbee2mqtt".into()
        }));

        let mut tracker = Tracker::new(target, total, schedule);
        let mut grace: Option<Instant> = None;
        let mut verify: Option<PendingRequest> = None;
        let mut suspect = false;
        let mut aborting: Option<Instant> = None;
        let mut cancel_seen = false;
        let report = |update: Option<UpdateData>| {
            let mut from = from.clone();
            let mut to = to_target.clone();
            if let Some(d) = update {
                if let Some(f) = d.from {
                    from.file_version = f.file_version.or(from.file_version);
                    from.software_build_id =
                        f.software_build_id_string().or(from.software_build_id);
                    from.date_code = f.date_code.or(from.date_code);
                }
                if let Some(t) = d.to {
                    to.software_build_id = t.software_build_id_string();
                    to.date_code = t.date_code;
                }
            }
            UpdateReport {
                from,
                to,
                wire_bytes: total,
            }
        };

        loop {
            tokio::select! {
                // State messages first: those that arrived before a response are part of it.
                biased;
                ev = events.recv() => match ev {
                    Ok(NetEvent::State { ieee: who, update: Some(u) }) if who == ieee => {
                        let (p, verdict) = tracker.on_state(&u);
                        if let Some(p) = p {
                            say(p);
                        }
                        match verdict {
                            Verdict::Pending => {}
                            Verdict::ReachedTarget => {
                                if schedule || pending.is_none() {
                                    return Ok(report(None));
                                }
                                // The update response (with build ids) follows right away.
                                grace.get_or_insert(Instant::now() + self.cfg.timeouts.completion_grace);
                            }
                            Verdict::ScheduledRunFailed => {
                                self.unschedule(&ieee).await;
                                return Err(TaskError::new(
                                    ErrorCode::SendFailed,
                                    format!(
                                        "the scheduled update of {} failed when the device woke up (zigbee2mqtt's log has the cause); the agent unscheduled it",
                                        before.name
                                    ),
                                ));
                            }
                            Verdict::ScheduledRunFoundNoImage => {
                                return Err(to_task_error(&format!(
                                    "Update of '{}' failed (No image currently available)",
                                    before.name
                                )));
                            }
                        }
                    }
                    Ok(NetEvent::State { .. }) => {}
                    Ok(NetEvent::Disconnected) => suspect = true,
                    Ok(NetEvent::Bridge { online: false }) => suspect = true,
                    Ok(ev @ (NetEvent::Subscribed { .. } | NetEvent::Bridge { online: true })) => {
                        if let NetEvent::Subscribed { generation } = ev {
                            tracing::info!(task.id = %job.task_id, generation, "zigbee job: MQTT connection is back");
                        }
                        if suspect {
                            if schedule {
                                if tracker.started() {
                                    self.unschedule(&ieee).await;
                                    return Err(TaskError::new(
                                        ErrorCode::SendFailed,
                                        format!(
                                            "zigbee2mqtt or the MQTT broker went away during the scheduled transfer to {}; the agent unscheduled it; retry",
                                            before.name
                                        ),
                                    ));
                                }
                                // The schedule survives restarts (zigbee2mqtt ≥ 2.8 persists it).
                                suspect = false;
                            } else {
                                // Did the transfer survive? Ask again (the previous answer may be lost).
                                verify = Some(self.net.request(OtaOp::Check, false, &ieee, None).await?);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(task.id = %job.task_id, skipped = n, "zigbee job fell behind the network's messages");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(TaskError::new(ErrorCode::Other, "the zigbee transport stopped"));
                    }
                },
                resp = async { (&mut pending.as_mut().expect("guarded").rx).await }, if pending.is_some() => {
                    pending = None;
                    let Ok(resp) = resp else { continue };
                    if resp.is_ok() {
                        if schedule {
                            continue;
                        }
                        let data = UpdateData::from_value(&resp.data);
                        if let Some(v) = data.as_ref().and_then(|d| d.to.as_ref()).and_then(|t| t.file_version)
                            && v != target
                        {
                            return Err(TaskError::new(
                                ErrorCode::DeviceReportedFailure,
                                format!("zigbee2mqtt reports version {v} after the update, expected {target}"),
                            ));
                        }
                        return Ok(report(data));
                    }
                    let msg = resp.error.unwrap_or_default();
                    if aborting.is_some() && classify(&msg) == Z2mErrorKind::Aborted {
                        return Err(cancelled("zigbee2mqtt aborted the transfer before it started"));
                    }
                    return Err(to_task_error(&msg));
                }
                r = async { (&mut verify.as_mut().expect("guarded").rx).await }, if verify.is_some() => {
                    verify = None;
                    let Ok(resp) = r else { continue };
                    if !resp.is_ok() && matches!(classify(resp.error.as_deref().unwrap_or_default()), Z2mErrorKind::InProgress) {
                        // zigbee2mqtt still runs our transfer.
                        suspect = false;
                        continue;
                    }
                    let installed = self.net.report(&ieee).and_then(|r| r.file_version);
                    if installed == Some(target) {
                        return Ok(report(None));
                    }
                    let why = resp.error.map(|e| format!(" ({e})")).unwrap_or_default();
                    return Err(TaskError::new(
                        ErrorCode::SendFailed,
                        format!(
                            "the update of {} did not complete: zigbee2mqtt or the MQTT broker went away during the transfer and the device still reports version {}{why}; retry",
                            before.name,
                            installed.map_or("unknown".to_string(), |v| v.to_string()),
                        ),
                    ));
                }
                _ = async { sleep_until(grace.expect("guarded")).await }, if grace.is_some() => {
                    return Ok(report(None));
                }
                _ = cancel.cancelled(), if !cancel_seen => {
                    cancel_seen = true;
                    if schedule && !tracker.started() {
                        self.unschedule(&ieee).await;
                        return Err(cancelled("the schedule was removed before the device woke up"));
                    }
                    if !schedule && tracker.max_percent() <= 0.0 && pending.is_some() {
                        tracing::info!(task.id = %job.task_id, "cancel: aborting the update before any block was sent");
                        let _ = self.net.request(OtaOp::Abort, false, &ieee, None).await;
                        aborting = Some(Instant::now() + self.cfg.timeouts.request);
                    } else {
                        tracing::info!(task.id = %job.task_id, "cancel ignored: the image is on its way to the device");
                    }
                }
                _ = async { sleep_until(aborting.expect("guarded")).await }, if aborting.is_some() => {
                    return Err(cancelled("the update was aborted before any block was sent"));
                }
                _ = sleep_until(deadline) => {
                    // Stop waiting for the update's response before aborting it.
                    drop(pending.take());
                    if schedule && !tracker.started() {
                        self.unschedule(&ieee).await;
                    } else if !tracker.downloaded() {
                        let _ = self.net.request(OtaOp::Abort, false, &ieee, None).await;
                    }
                    return Err(TaskError::new(
                        ErrorCode::Timeout,
                        format!(
                            "no outcome for {} within the task timeout of {} (last progress {:.2} %)",
                            before.name,
                            humantime::format_duration(job.timeout),
                            tracker.max_percent()
                        ),
                    ));
                }
            }
        }
    }

    /// Removes a schedule, waiting briefly for zigbee2mqtt's answer.
    async fn unschedule(&self, ieee: &str) {
        match self.net.request(OtaOp::Unschedule, false, ieee, None).await {
            Ok(mut p) => {
                if tokio::time::timeout(self.cfg.timeouts.request, &mut p.rx)
                    .await
                    .is_err()
                {
                    tracing::warn!(device = %ieee, "zigbee2mqtt did not confirm the unschedule");
                }
            }
            Err(e) => tracing::warn!(device = %ieee, error = %e, "unschedule not sent"),
        }
    }
}

/// A rustls client configuration with an explicit crypto provider.
///
/// rumqttc's `TlsConfiguration::Simple` asks rustls for the process-wide default provider,
/// which panics inside the MQTT event loop when more than one provider is compiled in (this
/// workspace has both: ring through tonic, aws-lc-rs through rumqttc). Naming the provider here
/// avoids that without installing anything process-wide.
fn rustls_client_config(
    ca_pem: &[u8],
    client_auth: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("CA file: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA file: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
    }
}

fn unknown(device: &str, network: &str) -> TaskError {
    TaskError::new(
        ErrorCode::Offline,
        format!("{device} is not in zigbee2mqtt's device list on network '{network}'"),
    )
}

fn cancelled(detail: &str) -> TaskError {
    TaskError::new(ErrorCode::Other, format!("cancelled: {detail}"))
}

impl Transport for ZigbeeTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Zigbee2Mqtt
    }

    fn instance(&self) -> &str {
        &self.cfg.network
    }

    fn inventory(&self) -> watch::Receiver<Vec<DeviceReport>> {
        self.net.inventory()
    }

    fn inventory_complete(&self) -> bool {
        self.net.lock().devices_known
    }

    fn check<'a>(
        &'a self,
        device: &'a str,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<CheckReport, TaskError>> {
        Box::pin(self.run_check(device, deadline))
    }

    fn update<'a>(
        &'a self,
        job: UpdateJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        Box::pin(self.run_update(job, progress, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_needs_a_ca_certificate() {
        assert!(rustls_client_config(b"not pem", None).is_err());
        let empty = rustls_client_config(b"", None).unwrap_err();
        assert!(empty.contains("no certificate"), "{empty}");
    }
}

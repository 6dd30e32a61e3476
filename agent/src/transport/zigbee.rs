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
//! - **Progress** from the device's state: 100 until zigbee2mqtt reports anything, 13 while a
//!   job waits at the site for the network's update slot, 5 while its schedule waits for the
//!   wake-up, 2 while `updating` with percent and remaining seconds, 6 at 100 % while the device
//!   restarts (≤ 120 s; not a stall).
//! - **Completion**: the `update` response, or the state going `idle` with `installed_version`
//!   equal to the image's file version (the only sign for scheduled runs). Errors are classified
//!   by `ota_devproto::z2m::errors` (both zigbee2mqtt wordings); "no image" for a device that
//!   reports the target is success (an earlier attempt got it).
//! - **Update slots per network** (`max_concurrent_updates`, 1 by default; `slots`): a mains
//!   job waits for a slot (13). A sleepy job holds none while it waits for its wake-up; its
//!   schedule is armed in zigbee2mqtt only while a wake-up could take a slot (no transfer runs
//!   and no mains job waits, with the default limit) and withdrawn (`unschedule`, 13) when
//!   another transfer takes it, then armed again: zigbee2mqtt runs a schedule on the device's
//!   own request whatever else runs, so an armed schedule could start beside another transfer.
//!   When the device wakes its transfer holds a slot; two armed devices that wake in the
//!   moment it takes to withdraw the others: the later run is aborted and waits for the next
//!   wake-up.
//! - **Budgets**: the wake-up budget (`wake_timeout`) runs while a job waits for its slot or its
//!   wake-up (then: unscheduled, 5016); the transfer budget from the `update` request or the
//!   wake-up: before 100 % the transfer is aborted (`update/abort`) and the job ends with 5016;
//!   after 100 % (the device has the whole image) the outcome is awaited.
//! - **Exactly once**: the first `update`/`schedule` request of a job is its point of no return
//!   (zigbee2mqtt then runs the transfer on its own): the job's committing mark comes first,
//!   with a [`RecoveryNote`]; 100 % is the committed mark. **Recover** after an agent restart:
//!   a transfer zigbee2mqtt still runs (its state, or "in progress" to a `check` or an
//!   `unschedule`) is followed to its end; an armed schedule whose image went as hex is waited
//!   for; otherwise the device's installed version decides (target: success; else 5010, or 5018
//!   when it had the whole image). Device states are not retained, so zigbee2mqtt is asked.
//! - **Health** (an update's health window, judged by the core): when the device itself last
//!   talked (a state message that changes more than its `update` block: with zigbee2mqtt's
//!   `advanced.last_seen` on, every message does) and its installed file version.
//! - **Sleepy devices** (battery end devices) are reported as such to the core: a check of one
//!   is answered "awaiting wake-up" and asked again when the device next talks (a state message
//!   that changes more than its `update` block, such as its `last_seen`).
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
//! - `slots`: the network's update slots (pure).
//! - `flow`: the life of one job: waiting, arming, following; recovery's attach.

pub mod config;
mod flow;
mod images;
mod job;
mod net;
mod slots;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ota_devproto::z2m::{
    CheckData, ImageSource, OtaOp, OtaState, Topics, Z2mVersion, to_task_error,
};
use ota_domain::status::{ErrorCode, TaskError};
use rumqttc::tokio_rustls::rustls;
use rumqttc::{AsyncClient, MqttOptions, TlsConfiguration, Transport as MqttTransport};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{ImageEndpoint, MqttTls, ZigbeeConfig, ZigbeeTimeouts};

use crate::secret::Secret;
use crate::sync::LockExt;
use crate::transport::{
    CheckReport, CommitStage, DeviceReport, HealthLook, Observation, ProgressSink, RecoverJob,
    Transport, TransportKind, UpdateJob, UpdateReport, VersionInfo,
};
use flow::Cx;
use images::{ImageServer, sha256_hex};
use job::Tracker;
use net::{Net, NetEvent};
use slots::{Book, JobKey};

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
    /// The network's update slots (see `slots`).
    book: Mutex<Book>,
    /// Bumped on every change of `book`, so waiting jobs look again.
    book_changed: watch::Sender<u64>,
    next_key: AtomicU64,
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
            book: Mutex::new(Book::new(cfg.max_concurrent_updates)),
            book_changed: watch::Sender::new(0),
            next_key: AtomicU64::new(1),
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
        let image = &job.image;
        let total = image.bytes.len() as u64;
        let target = check_image(image)?;
        let (ieee, before, sleepy) = self.device_to_update(&job.device)?;
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
        let note = serde_json::to_value(RecoveryNote {
            target,
            before: before.file_version,
            schedule,
            url: lease.is_some(),
        })
        .unwrap_or_default();
        tracing::info!(
            task.id = %job.task_id, attempt = job.attempt, device = %ieee,
            network = %self.cfg.network, schedule, delivery = if lease.is_some() { "url" } else { "hex" },
            "zigbee2mqtt OTA job"
        );
        let slot = Slot::new(self);
        let cx = Cx {
            task_id: &job.task_id,
            ieee,
            name: before.name.clone(),
            target,
            total,
            timeout: job.timeout,
            wake_timeout: job.wake_timeout,
            downgrade: job.downgrade,
            commit: &job.commit,
            progress: &progress,
            cancel: &cancel,
            from,
            to: to_target,
            key: slot.key,
        };
        let result = if schedule {
            self.run_sleeper(&cx, Some(source), note, false).await
        } else {
            self.run_mains(&cx, source, note).await
        };
        drop(lease);
        result
    }

    /// The device, as zigbee2mqtt knows it: its id, its report, and whether it sleeps. Refused
    /// when zigbee2mqtt cannot update it with an image the agent gives.
    fn device_to_update(&self, device: &str) -> Result<(String, DeviceReport, bool), TaskError> {
        let ieee = self
            .net
            .resolve(device)
            .ok_or_else(|| unknown(device, &self.cfg.network))?;
        let (supports, sleepy) = {
            let st = self.net.lock();
            let e = st
                .devices
                .get(&ieee)
                .ok_or_else(|| unknown(device, &self.cfg.network))?;
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
        Ok((ieee, before, sleepy))
    }

    /// After an agent restart: what became of an interrupted job, from the device's update state
    /// (see the module documentation).
    async fn run_recover(
        &self,
        job: RecoverJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> Result<UpdateReport, TaskError> {
        let note: Option<RecoveryNote> = job
            .note
            .as_ref()
            .and_then(|n| serde_json::from_value(n.clone()).ok());
        let stage = job.commit.stage();
        // zigbee2mqtt's retained device list and the device's state first.
        let ieee = self.wait_until_listed(&job.device).await?;
        let before = self.net.report(&ieee).unwrap_or_default();
        let target = note
            .as_ref()
            .map(|n| n.target)
            .or(job.target_file_version)
            .unwrap_or_default();
        let to = VersionInfo {
            version: Some(job.target_version.clone()),
            file_version: Some(target),
            software_build_id: before.software_build_id.clone(),
            date_code: before.date_code.clone(),
        };
        let from = VersionInfo {
            file_version: note.as_ref().and_then(|n| n.before),
            ..VersionInfo::default()
        };
        let Some(note) = note.filter(|_| stage != CommitStage::Before) else {
            if self.installed(&ieee) == Some(target) {
                return Ok(UpdateReport {
                    from,
                    to,
                    wire_bytes: 0,
                });
            }
            return Err(TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted before anything was sent to zigbee2mqtt for {}; the \
                     update can be sent again",
                    before.name,
                ),
            ));
        };
        let slot = Slot::new(self);
        let cx = Cx {
            task_id: &job.task_id,
            ieee: ieee.clone(),
            name: before.name.clone(),
            target,
            total: 0,
            timeout: job.timeout,
            wake_timeout: job.wake_timeout,
            downgrade: false,
            commit: &job.commit,
            progress: &progress,
            cancel: &cancel,
            from: from.clone(),
            to: to.clone(),
            key: slot.key,
        };
        let mut events = self.net.events.subscribe();
        let cached = self
            .net
            .lock()
            .devices
            .get(&ieee)
            .and_then(|e| e.state.update.as_ref().and_then(|u| u.state));
        match self.what_runs(cached, &note, &ieee, &before.name).await? {
            Runs::ArmedSchedule => {
                tracing::info!(device = %ieee, "the schedule is armed in zigbee2mqtt: waiting for the wake-up");
                self.run_sleeper(&cx, None, serde_json::Value::Null, true)
                    .await
            }
            Runs::Transfer => {
                tracing::info!(device = %ieee, "zigbee2mqtt still runs the transfer: following it");
                self.with_book(|b| b.attach(slot.key));
                self.follow(
                    &cx,
                    None,
                    Tracker::attached(target, 0),
                    &mut events,
                    note.schedule,
                )
                .await
            }
            Runs::Nothing => {
                let Cx { from, to, .. } = cx;
                let report = UpdateReport {
                    from,
                    to,
                    wire_bytes: 0,
                };
                self.nothing_runs(&job, &ieee, &before.name, note.schedule, report)
                    .await
            }
        }
    }

    /// zigbee2mqtt runs nothing for a device whose job an agent restart interrupted after the
    /// committing mark: the installed version decides.
    async fn nothing_runs(
        &self,
        job: &RecoverJob,
        ieee: &str,
        name: &str,
        scheduled: bool,
        report: UpdateReport,
    ) -> Result<UpdateReport, TaskError> {
        let target = report.to.file_version;
        let installed = self.installed(ieee);
        if installed.is_some() && installed == target {
            job.commit.committed().await;
            return Ok(report);
        }
        if job.commit.stage() == CommitStage::Committed {
            return Err(TaskError::new(
                ErrorCode::DeviceReportedFailure,
                format!(
                    "{name} had the whole image before the agent restarted, but reports version {} \
                     now: check it",
                    version_text(installed)
                ),
            ));
        }
        job.commit.not_taken();
        Err(TaskError::new(
            ErrorCode::SendFailed,
            format!(
                "the agent restarted during the update of {name}; zigbee2mqtt runs nothing for it \
                 {}and it reports version {}: the update can be sent again",
                if scheduled {
                    "(its schedule was removed) "
                } else {
                    ""
                },
                version_text(installed)
            ),
        ))
    }

    /// Waits (up to [`RECOVER_WAIT`]) until zigbee2mqtt is connected and lists the device.
    async fn wait_until_listed(&self, device: &str) -> Result<String, TaskError> {
        let known = tokio::time::timeout(RECOVER_WAIT, async {
            loop {
                if let Some(ieee) = self.net.resolve(device)
                    && self.net.lock().connected
                {
                    return ieee;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        known.map_err(|_| {
            TaskError::new(
                ErrorCode::SendFailed,
                format!(
                    "the agent restarted during the update of {}; zigbee2mqtt on network '{}' did \
                     not tell about the device within {}",
                    device,
                    self.cfg.network,
                    humantime::format_duration(RECOVER_WAIT)
                ),
            )
        })
    }

    /// What zigbee2mqtt runs for a device whose job was interrupted by an agent restart.
    async fn what_runs(
        &self,
        cached: Option<OtaState>,
        note: &RecoveryNote,
        ieee: &str,
        name: &str,
    ) -> Result<Runs, TaskError> {
        // Device states are not retained: a state seen since the agent started tells; else
        // zigbee2mqtt is asked. A schedule is withdrawn (it may point at the image endpoint of
        // the agent that stopped): "in progress" means the device woke and its run goes on. A
        // mains update is checked: "in progress" means the transfer goes on. Both requests make
        // zigbee2mqtt publish the device's state (its installed version) before answering.
        Ok(match cached {
            Some(OtaState::Updating) => Runs::Transfer,
            Some(OtaState::Scheduled) if !note.url => Runs::ArmedSchedule,
            _ => {
                let op = if note.schedule {
                    OtaOp::Unschedule
                } else {
                    OtaOp::Check
                };
                match self.ask(op, false, ieee, None).await {
                    flow::Asked::Ok => Runs::Nothing,
                    flow::Asked::Refused(_, ota_devproto::z2m::Z2mErrorKind::InProgress) => {
                        Runs::Transfer
                    }
                    flow::Asked::Refused(e, _) => {
                        return Err(TaskError::new(
                            e.code,
                            format!(
                                "the agent restarted during the update of {} and could not ask \
                                 zigbee2mqtt how it ended: {}",
                                name, e.message
                            ),
                        ));
                    }
                    flow::Asked::NoAnswer => {
                        return Err(TaskError::new(
                            ErrorCode::SendFailed,
                            format!(
                                "the agent restarted during the update of {}; zigbee2mqtt did not \
                                 answer how it ended",
                                name
                            ),
                        ));
                    }
                }
            }
        })
    }

    /// Reads or changes the book; waiting jobs are woken when it changed.
    fn with_book<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        let (r, version) = {
            let mut book = self.book.locked();
            let r = f(&mut book);
            (r, book.version())
        };
        self.book_changed.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
        r
    }
}

/// The image: exactly the verified bytes, and a Zigbee OTA file of the version the firmware
/// record names. Its file version is the target.
fn check_image(image: &crate::transport::VerifiedImage) -> Result<u32, TaskError> {
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
    Ok(target)
}

/// A file version as a message shows it.
fn version_text(v: Option<u32>) -> String {
    v.map_or("unknown".to_string(), |v| v.to_string())
}

/// What zigbee2mqtt runs for a device after an agent restart.
enum Runs {
    /// A transfer (a mains update, or a sleeper that woke): it is followed.
    Transfer,
    /// A schedule the agent armed, still waiting for the wake-up.
    ArmedSchedule,
    /// Nothing: the installed version decides.
    Nothing,
}

/// What a restarted agent needs to find out how a zigbee2mqtt job ended (the committing
/// mark's note).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryNote {
    /// The image's file version.
    pub target: u32,
    /// The device's file version before.
    pub before: Option<u32>,
    /// The job scheduled the update (a sleepy device).
    pub schedule: bool,
    /// The image went as a URL on the agent's endpoint (gone after a restart), not as hex.
    pub url: bool,
}

/// How long a recovery waits for zigbee2mqtt to list the device.
const RECOVER_WAIT: Duration = Duration::from_secs(60);

/// A job's place in the network's book; freed however the job ends.
struct Slot<'a> {
    transport: &'a ZigbeeTransport,
    key: JobKey,
}

impl<'a> Slot<'a> {
    fn new(transport: &'a ZigbeeTransport) -> Self {
        let key = transport.next_key.fetch_add(1, Ordering::Relaxed);
        Self { transport, key }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let key = self.key;
        self.transport.with_book(|b| b.done(key));
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

    fn recover<'a>(
        &'a self,
        job: RecoverJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        Box::pin(self.run_recover(job, progress, cancel))
    }

    fn is_sleepy(&self, device: &str) -> bool {
        let Some(ieee) = self.net.resolve(device) else {
            return false;
        };
        self.net
            .lock()
            .devices
            .get(&ieee)
            .is_some_and(|e| e.info.is_sleepy())
    }

    fn observation(&self, _device: &str) -> Observation {
        Observation::Presence
    }

    fn look<'a>(&'a self, device: &'a str, _deadline: Duration) -> BoxFuture<'a, HealthLook> {
        Box::pin(async move {
            let Some(ieee) = self.net.resolve(device) else {
                return HealthLook::Silent;
            };
            let st = self.net.lock();
            let Some(e) = st.devices.get(&ieee) else {
                return HealthLook::Silent;
            };
            HealthLook::Heard {
                last: e.heard,
                version: e
                    .state
                    .update
                    .as_ref()
                    .and_then(|u| u.installed_version)
                    .map(|v| v.to_string()),
            }
        })
    }

    /// A healthy mains device may stay silent for a whole window (a bulb reports when its
    /// state changes): one zigbee2mqtt did not hear since `since` is asked with an OTA check, as
    /// zigbee2mqtt's own availability pings do; it answers with the image it runs. Sleepy
    /// devices are not asked (they talk when they wake), nor are devices heard already.
    fn last_look<'a>(
        &'a self,
        device: &'a str,
        since: tokio::time::Instant,
        deadline: Duration,
    ) -> BoxFuture<'a, HealthLook> {
        Box::pin(async move {
            let look = self.look(device, deadline).await;
            let heard_since =
                matches!(&look, HealthLook::Heard { last: Some(at), .. } if *at > since);
            if heard_since || self.is_sleepy(device) {
                return look;
            }
            if let Err(e) = self.run_check(device, deadline).await {
                tracing::debug!(device, error = %e.message, "the device did not answer the health check");
                return look;
            }
            match self.look(device, deadline).await {
                HealthLook::Heard { version, .. } => HealthLook::Heard {
                    last: Some(tokio::time::Instant::now()),
                    version,
                },
                other => other,
            }
        })
    }

    fn next_contact<'a>(&'a self, device: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut events = self.net.events.subscribe();
            let Some(ieee) = self.net.resolve(device) else {
                return futures::future::pending().await;
            };
            loop {
                match events.recv().await {
                    // zigbee2mqtt's own OTA state messages (a schedule's state) are not the
                    // device talking: see `NetEvent::State::talked`.
                    Ok(NetEvent::State {
                        ieee: who,
                        talked: true,
                        ..
                    }) if who == ieee => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        return futures::future::pending().await;
                    }
                    _ => {}
                }
            }
        })
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

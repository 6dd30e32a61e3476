//! The real agent core (`ota_agent::agent::Agent`) in a test: its options as the tests set them,
//! and a transport the test scripts and inspects (the core's boundary is the `Transport`
//! trait). Behind the `agent` feature, which only ota-agent's own tests turn on (ota-agent's
//! library does not depend on this crate, so its dev-dependency on it is no cycle; see
//! `Cargo.toml`).
//!
//! What it does not do: speak a device protocol. The real transports are tested against their
//! simulators; [`ScriptedTransport`] only does what the core asks of any transport.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use ota_agent::agent::{Agent, AgentOptions};
use ota_agent::transport::{
    CheckReport, CommitStage, DeviceReport, PowerSource, ProgressSink, RecoverJob,
    TransferProgress, Transport, TransportKind, UpdateJob, UpdateReport, VersionInfo,
};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// The agent's options for `site` with its data in `data_dir`: zone UTC, reconnects after 20 to
/// 200 ms, progress at most every 10 ms, no tags. A test that needs another value says so with
/// `AgentOptions { timezone: …, ..options(site, dir) }`.
pub fn options(site: &str, data_dir: &Path) -> AgentOptions {
    AgentOptions {
        site_id: site.into(),
        data_dir: data_dir.to_path_buf(),
        timezone: "UTC".into(),
        utc_offset_minutes: 0,
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        tags: Default::default(),
        progress_interval: Duration::from_millis(10),
    }
}

/// An ESPHome lamp (`lamp`, esp32dev, mains powered, reachable) running `version`.
pub fn lamp(version: &str) -> DeviceReport {
    DeviceReport {
        local_id: "lamp".into(),
        network: "esphome".into(),
        name: "lamp".into(),
        model: "esp32dev".into(),
        chip: Some("esp32".into()),
        platform: Some("esp32".into()),
        current_version: Some(version.into()),
        power_source: PowerSource::Mains,
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

/// A recovery the transport was asked for: task, attempt, how far it got, its note.
pub type Recovered = (String, u32, CommitStage, Option<serde_json::Value>);

/// An update the transport was handed: task, attempt, the verified image.
pub type Handed = (String, u32, Bytes);

/// A transport scripted by the test. Updates record what they were handed, report half the
/// image, wait for the test's [`ScriptedTransport::release`] when gated, report all of it and
/// leave the device on the new version. Recoveries record what they were asked and answer that
/// the device runs the target. Checks and probes are recorded; a probe finds its devices
/// reachable; sleepy devices talk when the test says [`ScriptedTransport::wake`].
#[derive(Debug)]
pub struct ScriptedTransport {
    kind: TransportKind,
    instance: String,
    inventory: watch::Sender<Vec<DeviceReport>>,
    complete: AtomicBool,
    gated: bool,
    release: Semaphore,
    commits: bool,
    committing_done: AtomicBool,
    update_available: Option<bool>,
    sleepy: Vec<String>,
    talks: Notify,
    updates: Mutex<Vec<Handed>>,
    recovered: Mutex<Vec<Recovered>>,
    probes: Mutex<Vec<Vec<String>>>,
    checks: Mutex<Vec<String>>,
}

impl ScriptedTransport {
    /// A transport of `kind` named `instance` with these devices; updates run through at once.
    pub fn new(kind: TransportKind, instance: &str, devices: Vec<DeviceReport>) -> Self {
        ScriptedTransport {
            kind,
            instance: instance.into(),
            inventory: watch::channel(devices).0,
            complete: true.into(),
            gated: false,
            release: Semaphore::new(0),
            commits: false,
            committing_done: false.into(),
            update_available: None,
            sleepy: Vec::new(),
            talks: Notify::new(),
            updates: Mutex::default(),
            recovered: Mutex::default(),
            probes: Mutex::default(),
            checks: Mutex::default(),
        }
    }

    /// The `esphome` transport with one [`lamp`] running `version`.
    pub fn esphome(version: &str) -> Self {
        Self::new(TransportKind::Esphome, "esphome", vec![lamp(version)])
    }

    /// The `zigbee` zigbee2mqtt network with these devices.
    pub fn zigbee(devices: Vec<DeviceReport>) -> Self {
        Self::new(TransportKind::Zigbee2Mqtt, "zigbee", devices)
    }

    /// Updates wait, after reporting half the image, until the test releases them.
    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }

    /// Updates pass their point of no return (the committing mark, noting
    /// `{"last_block": <image size>}`) before they report progress.
    pub fn committing(mut self) -> Self {
        self.commits = true;
        self
    }

    /// Checks answer that zigbee2mqtt thinks an update is (or is not) available.
    pub fn update_available(mut self, available: bool) -> Self {
        self.update_available = Some(available);
        self
    }

    /// `device` sleeps: checks wait for it to talk ([`ScriptedTransport::wake`]).
    pub fn sleepy(mut self, device: &str) -> Self {
        self.sleepy.push(device.into());
        self
    }

    /// The inventory is not the whole list yet (a bridge before its retained device list),
    /// until [`ScriptedTransport::publish`].
    pub fn incomplete(self) -> Self {
        self.complete.store(false, Ordering::SeqCst);
        self
    }

    /// Lets `n` gated updates finish.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }

    /// Whether an update passed its point of no return.
    pub fn committing_done(&self) -> bool {
        self.committing_done.load(Ordering::SeqCst)
    }

    /// The whole device list: the inventory is complete from now on.
    pub fn publish(&self, devices: Vec<DeviceReport>) {
        self.complete.store(true, Ordering::SeqCst);
        self.inventory.send_replace(devices);
    }

    /// The sleepy devices talk.
    pub fn wake(&self) {
        self.talks.notify_waiters();
    }

    /// How many updates the transport was handed.
    pub fn calls(&self) -> usize {
        self.updates.lock().unwrap().len()
    }

    /// The updates the transport was handed, in order.
    pub fn updates(&self) -> Vec<Handed> {
        self.updates.lock().unwrap().clone()
    }

    /// The images the transport was handed, in order.
    pub fn images(&self) -> Vec<Bytes> {
        self.updates().into_iter().map(|(_, _, b)| b).collect()
    }

    /// The recoveries the transport was asked for, in order.
    pub fn recovered(&self) -> Vec<Recovered> {
        self.recovered.lock().unwrap().clone()
    }

    /// The devices of each probe, in order.
    pub fn probes(&self) -> Vec<Vec<String>> {
        self.probes.lock().unwrap().clone()
    }

    /// The devices checked (asked, not answered from the inventory), in order.
    pub fn checks(&self) -> Vec<String> {
        self.checks.lock().unwrap().clone()
    }

    fn set_version(&self, device: &str, version: &str) {
        self.inventory.send_modify(|list| {
            for d in list.iter_mut().filter(|d| d.local_id == device) {
                d.current_version = Some(version.into());
            }
        });
    }
}

impl Transport for ScriptedTransport {
    fn kind(&self) -> TransportKind {
        self.kind
    }
    fn instance(&self) -> &str {
        &self.instance
    }
    fn inventory(&self) -> watch::Receiver<Vec<DeviceReport>> {
        self.inventory.subscribe()
    }
    fn inventory_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }
    fn check<'a>(
        &'a self,
        device: &'a str,
        _deadline: Duration,
    ) -> BoxFuture<'a, Result<CheckReport, TaskError>> {
        Box::pin(async move {
            self.checks.lock().unwrap().push(device.to_string());
            let d = self
                .inventory
                .borrow()
                .iter()
                .find(|d| d.local_id == device)
                .cloned()
                .ok_or_else(|| TaskError::new(ErrorCode::Offline, "unknown"))?;
            Ok(CheckReport {
                reachable: true,
                device: d,
                update_available: self.update_available,
            })
        })
    }
    fn update<'a>(
        &'a self,
        job: UpdateJob,
        progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        Box::pin(async move {
            let image = job.image.bytes.clone();
            self.updates
                .lock()
                .unwrap()
                .push((job.task_id.clone(), job.attempt, image.clone()));
            let total = image.len() as u64;
            if self.commits {
                job.commit
                    .committing(serde_json::json!({"last_block": total}))
                    .await?;
                self.committing_done.store(true, Ordering::SeqCst);
            }
            let report = |sent: u64, percent: f32| TransferProgress {
                status: UpgradeStatus::Updating,
                percent: Some(percent),
                remaining_s: Some(1),
                bytes_sent: sent,
                bytes_total: total,
                detail: "sending".into(),
            };
            let _ = progress.send(report(total / 2, 50.0));
            if self.gated {
                self.release.acquire().await.unwrap().forget();
            }
            let _ = progress.send(report(total, 100.0));
            let from = self
                .inventory
                .borrow()
                .iter()
                .find(|d| d.local_id == job.device)
                .and_then(|d| d.current_version.clone());
            let to = job.image.version.clone();
            self.set_version(&job.device, &to);
            Ok(UpdateReport {
                from: VersionInfo {
                    version: from,
                    ..Default::default()
                },
                to: VersionInfo {
                    version: Some(to),
                    ..Default::default()
                },
                wire_bytes: total,
            })
        })
    }
    fn recover<'a>(
        &'a self,
        job: RecoverJob,
        _progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<UpdateReport, TaskError>> {
        Box::pin(async move {
            self.recovered.lock().unwrap().push((
                job.task_id.clone(),
                job.attempt,
                job.commit.stage(),
                job.note.clone(),
            ));
            self.set_version(&job.device, &job.target_version);
            Ok(UpdateReport {
                to: VersionInfo {
                    version: Some(job.target_version),
                    ..Default::default()
                },
                ..Default::default()
            })
        })
    }
    fn probe<'a>(&'a self, devices: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.probes.lock().unwrap().push(devices.to_vec());
            self.inventory.send_modify(|list| {
                for d in list.iter_mut().filter(|d| devices.contains(&d.local_id)) {
                    d.reachable = true;
                }
            });
        })
    }
    fn is_sleepy(&self, device: &str) -> bool {
        self.sleepy.iter().any(|d| d == device)
    }
    fn next_contact<'a>(&'a self, device: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            assert!(self.is_sleepy(device), "{device} is not sleepy");
            self.talks.notified().await;
        })
    }
}

/// An agent for `site` with its data in `data_dir` ([`options`]) and these transports.
pub fn agent(site: &str, data_dir: &Path, transports: Vec<Arc<ScriptedTransport>>) -> Arc<Agent> {
    let transports = transports
        .into_iter()
        .map(|t| t as Arc<dyn Transport>)
        .collect();
    Agent::new(options(site, data_dir), transports).unwrap()
}

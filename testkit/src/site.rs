//! Fake sites: agents that speak `AgentService` over real gRPC like an agent would — hello,
//! inventory, answers to check commands, update commands run by simulated devices that take
//! (paused tokio) time and report progress and results, journal sequence numbers resent after a
//! reconnect, and idempotent handling of repeated update commands. Also the device reports and
//! rollout specs the tests give them.
//!
//! A fake site's hello is [`crate::session::hello_message`]'s with its own zone; the session
//! itself is a typed stream, since the site answers by itself (a test that drives a session
//! message by message uses [`crate::session::AgentSession`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ota_proto::v1 as pb;
use ota_server::core::Clock;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::otad::TestOtad;

/// How often fake agents send a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

// === specs ===

pub fn stage(name: &str, size: pb::stage::Size) -> pb::Stage {
    pb::Stage {
        name: name.into(),
        size: Some(size),
        ..Default::default()
    }
}

pub fn count(n: u32) -> pb::stage::Size {
    pb::stage::Size::Count(n)
}

pub fn percent(p: f64) -> pb::stage::Size {
    pb::stage::Size::CumulativePercent(p)
}

pub fn threshold(n: u32) -> Option<pb::Threshold> {
    Some(pb::Threshold {
        value: Some(pb::threshold::Value::Count(n)),
    })
}

/// A spec without a batch check (tests that want one turn it on).
pub fn spec(firmware_id: &str, stages: Vec<pb::Stage>) -> pb::RolloutSpec {
    pb::RolloutSpec {
        name: "test rollout".into(),
        firmware_id: firmware_id.into(),
        stages,
        upgrade_type: pb::UpgradeType::Forced as i32,
        skip_batch_check: true,
        ..Default::default()
    }
}

/// A rollout action (start, pause, resume, abort) on rollout `id`, with `reason`.
pub fn action(id: &str, reason: &str) -> pb::RolloutActionRequest {
    pb::RolloutActionRequest {
        id: id.into(),
        reason: reason.into(),
    }
}

// === devices ===

pub fn esphome(local: &str, version: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Esphome as i32,
        network: "esphome".into(),
        name: local.into(),
        model: "esp32dev".into(),
        chip: "esp32".into(),
        platform: "esp32".into(),
        current: Some(pb::VersionInfo {
            version: version.into(),
            ..Default::default()
        }),
        power_source: pb::PowerSource::Mains as i32,
        signal: Some(pb::Signal {
            kind: pb::SignalKind::RssiDbm as i32,
            value: -50,
        }),
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

pub fn zigbee(local: &str, network: &str, file_version: u32) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: local.into(),
        transport: pb::Transport::Zigbee2mqtt as i32,
        network: network.into(),
        name: local.into(),
        model: "LED1836G9".into(),
        vendor: "IKEA".into(),
        manufacturer_code: Some(0x117C),
        image_type: Some(0x2803),
        current: Some(pb::VersionInfo {
            version: file_version.to_string(),
            file_version: Some(file_version),
            ..Default::default()
        }),
        power_source: pb::PowerSource::Mains as i32,
        signal: Some(pb::Signal {
            kind: pb::SignalKind::Linkquality as i32,
            value: 200,
        }),
        reachable: true,
        supports_ota: true,
        ..Default::default()
    }
}

/// What a simulated device does with an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// Succeeds after the device's duration.
    Succeed,
    /// Every attempt fails with this code after the duration.
    Fail(i32),
    /// The first `n` attempts fail with the code, later ones succeed.
    FailFirst(i32, u32),
    /// Reports updating, then never finishes.
    Hang,
    /// A sleepy device: reports waiting for wake-up (5) and never wakes.
    Sleepy,
    /// A sleepy device that wakes up after this long (waiting for wake-up, 5, meanwhile), then
    /// updates like `Succeed`.
    SleepsFor(Duration),
    /// The agent prepares (100) for ever, as if its download hung; a cancel stops it.
    HangPreparing,
    /// Updates like `Succeed`, then watches the command's health window as the agent does
    /// (progress 6 with `verify_until_ms`) and succeeds with this health when it is over. A
    /// command without a window succeeds at once (not checked).
    Verified(pb::TaskHealth),
    /// Updates like `Succeed`, starts the command's health window, and fails with 5022 and this
    /// message halfway through it ("the device rolled back to 1.0.0").
    Unhealthy(String),
}

#[derive(Debug, Clone)]
pub struct Dev {
    pub report: pb::DeviceReport,
    pub behavior: Behavior,
    pub duration: Duration,
}

pub fn dev(report: pb::DeviceReport, behavior: Behavior, duration: Duration) -> Dev {
    Dev {
        report,
        behavior,
        duration,
    }
}

/// A transfer the agent started.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub task_id: String,
    pub attempt: u32,
    pub local_id: String,
    pub started: Instant,
    pub started_ms: i64,
    pub finished: Option<Instant>,
    /// The command's health window, seconds (0: none).
    pub health_window_s: u32,
}

/// What the site saw and did.
#[derive(Debug, Default)]
pub struct SiteLog {
    pub transfers: Vec<Transfer>,
    /// Update commands for a task attempt the agent already knew (resent after a reconnect).
    pub repeated_updates: usize,
    pub cancels: Vec<pb::CancelCommand>,
    pub check_commands: usize,
    /// Task id → (network key, is ESPHome) of transfers running now.
    pub in_flight: BTreeMap<String, (String, bool)>,
    pub max_in_flight: usize,
    pub max_by_network: BTreeMap<String, usize>,
    pub max_esphome: usize,
    /// Probe commands: when (ms on otad's clock) and which devices.
    pub probes: Vec<(i64, Vec<String>)>,
    /// Command ids of every command received, in order.
    pub command_ids: Vec<u64>,
}

impl SiteLog {
    pub fn transfers_of(&self, local: &str) -> Vec<&Transfer> {
        self.transfers
            .iter()
            .filter(|t| t.local_id == local)
            .collect()
    }
}

#[derive(Debug, Default)]
struct Journal {
    next: u64,
    entries: Vec<pb::AgentMessage>,
}

#[derive(Debug)]
struct Inner {
    site: String,
    agent_id: String,
    offset_minutes: i32,
    devices: Mutex<BTreeMap<String, Dev>>,
    log: Mutex<SiteLog>,
    journal: Mutex<Journal>,
    out: Mutex<Option<mpsc::UnboundedSender<pb::AgentMessage>>>,
    answer_checks: AtomicBool,
    known: Mutex<HashSet<(String, u32)>>,
    /// Sleepy transfers that wait for a wake-up, or preparations (safe to cancel), by task id.
    waiting: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Devices that came back without the agent noticing yet: a probe reports them.
    back_quietly: Mutex<HashSet<String>>,
    /// Sleepy devices asleep for checks, with the check they were asked in (if any).
    asleep: Mutex<HashMap<String, Option<String>>>,
    clock: Mutex<Option<Clock>>,
}

/// A site's agent with its devices.
#[derive(Debug, Clone)]
pub struct FakeSite {
    pub id: String,
    inner: Arc<Inner>,
}

impl FakeSite {
    /// Connects to otad and reports a full inventory.
    pub async fn connect(
        otad: &TestOtad,
        site: &str,
        offset_minutes: i32,
        devices: Vec<Dev>,
    ) -> Self {
        let inner = Arc::new(Inner {
            site: site.into(),
            agent_id: format!("agent-{site}"),
            offset_minutes,
            devices: Mutex::new(
                devices
                    .into_iter()
                    .map(|d| (d.report.local_id.clone(), d))
                    .collect(),
            ),
            log: Mutex::new(SiteLog::default()),
            journal: Mutex::new(Journal {
                next: 1,
                entries: Vec::new(),
            }),
            out: Mutex::new(None),
            answer_checks: AtomicBool::new(true),
            known: Mutex::new(HashSet::new()),
            waiting: Mutex::new(HashMap::new()),
            back_quietly: Mutex::new(HashSet::new()),
            asleep: Mutex::new(HashMap::new()),
            clock: Mutex::new(None),
        });
        let s = FakeSite {
            id: site.into(),
            inner,
        };
        s.open(otad).await;
        let reports: Vec<pb::DeviceReport> = s
            .inner
            .devices
            .lock()
            .unwrap()
            .values()
            .map(|d| d.report.clone())
            .collect();
        s.inner
            .journaled(pb::agent_message::Body::Inventory(pb::Inventory {
                full: true,
                devices: reports,
                removed_local_ids: vec![],
            }));
        // Wait until the server knows the devices.
        let n = s.inner.devices.lock().unwrap().len();
        let site_id = site.to_string();
        otad.until(
            "inventory",
            Duration::from_millis(10),
            Duration::from_secs(60),
            |st| {
                (st.devices
                    .values()
                    .filter(|d| d.site_id == site_id && !d.removed)
                    .count()
                    == n)
                    .then_some(())
            },
        )
        .await;
        s
    }

    /// The agent stops answering check commands (it still runs updates).
    pub fn ignore_checks(&self) {
        self.inner.answer_checks.store(false, Ordering::SeqCst);
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, SiteLog> {
        self.inner.log.lock().unwrap()
    }

    /// A device appears (incremental inventory).
    pub fn add_device(&self, d: Dev) {
        let report = d.report.clone();
        self.inner
            .devices
            .lock()
            .unwrap()
            .insert(report.local_id.clone(), d);
        self.inner
            .journaled(pb::agent_message::Body::Inventory(pb::Inventory {
                full: false,
                devices: vec![report],
                removed_local_ids: vec![],
            }));
    }

    /// The device is gone from the site (full inventory without it).
    pub fn remove_device(&self, local: &str) {
        let reports: Vec<pb::DeviceReport> = {
            let mut devices = self.inner.devices.lock().unwrap();
            devices.remove(local);
            devices.values().map(|d| d.report.clone()).collect()
        };
        self.inner
            .journaled(pb::agent_message::Body::Inventory(pb::Inventory {
                full: true,
                devices: reports,
                removed_local_ids: vec![],
            }));
    }

    /// The device answers again, but the agent does not know yet: it reports the device only
    /// when otad asks it to probe.
    pub fn come_back_quietly(&self, local: &str) {
        self.inner
            .back_quietly
            .lock()
            .unwrap()
            .insert(local.to_string());
    }

    /// The device sleeps: checks are answered "asleep" (status 5) until it wakes.
    pub fn answer_asleep(&self, local: &str) {
        self.inner
            .asleep
            .lock()
            .unwrap()
            .insert(local.to_string(), None);
    }

    /// The sleeping device wakes up: the agent answers the check it was asked in while asleep,
    /// as a journaled report.
    pub fn wake_and_answer(&self, local: &str) {
        let check_id = self.inner.asleep.lock().unwrap().remove(local).flatten();
        let Some(check_id) = check_id else {
            return;
        };
        let report = self.inner.devices.lock().unwrap()[local].report.clone();
        self.inner
            .journaled(pb::agent_message::Body::CheckResult(pb::CheckResult {
                check_id,
                device_local_id: local.to_string(),
                reachable: true,
                device: Some(report),
                update_available: None,
                error: None,
                awaiting_wakeup: false,
            }));
    }

    /// Closes the session (the agent lost its connection).
    pub fn disconnect(&self) {
        self.inner.out.lock().unwrap().take();
    }

    /// Opens a new session to (a restarted) otad and resends what it has not acknowledged.
    pub async fn reconnect(&self, otad: &TestOtad) {
        self.open(otad).await;
    }

    async fn open(&self, otad: &TestOtad) {
        *self.inner.clock.lock().unwrap() = Some(otad.app().core.clock().clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let last_seq = self.inner.journal.lock().unwrap().next - 1;
        let mut hello =
            crate::session::hello_message(&self.inner.site, &self.inner.agent_id, last_seq);
        if let Some(pb::agent_message::Body::Hello(h)) = &mut hello.body {
            h.agent_version = "fake".into();
            h.timezone = "Etc/Test".into();
            h.utc_offset_minutes = self.inner.offset_minutes;
        }
        tx.send(hello).unwrap();
        let mut inbound = otad
            .agent()
            .connect(UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.next().await.unwrap().unwrap();
        let Some(pb::server_message::Body::Welcome(w)) = first.body else {
            panic!("expected a welcome, got {first:?}");
        };
        let session = tx.clone();
        {
            let journal = self.inner.journal.lock().unwrap();
            for m in journal.entries.iter().filter(|m| m.seq > w.acked_seq) {
                tx.send(m.clone()).unwrap();
            }
            *self.inner.out.lock().unwrap() = Some(tx);
        }
        // Heartbeats every second, as a real agent sends them (every 15 s). Under paused time
        // they also keep the HTTP/2 connection moving: without traffic from the agent, otad's
        // messages to it were observed to wait until the agent sent something.
        let beat = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let current = beat
                    .out
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|o| o.same_channel(&session));
                if !current {
                    return;
                }
                let _ = session.send(pb::AgentMessage {
                    seq: 0,
                    body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())),
                });
            }
        });
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if msg.command_id != 0 {
                    inner.log.lock().unwrap().command_ids.push(msg.command_id);
                }
                match msg.body {
                    Some(pb::server_message::Body::Probe(p)) => inner.on_probe(p),
                    Some(pb::server_message::Body::Check(c)) => inner.on_check(c),
                    Some(pb::server_message::Body::Update(u)) => inner.on_update(u),
                    Some(pb::server_message::Body::Cancel(c)) => inner.on_cancel(c),
                    _ => {}
                }
            }
        });
    }
}

impl Inner {
    fn now_ms(&self) -> i64 {
        self.clock
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |c| c.now().as_i64())
    }

    /// Journals a report and sends it if a session is open (it is resent after a reconnect
    /// otherwise).
    fn journaled(&self, body: pb::agent_message::Body) {
        let mut j = self.journal.lock().unwrap();
        let msg = pb::AgentMessage {
            seq: j.next,
            body: Some(body),
        };
        j.next += 1;
        j.entries.push(msg.clone());
        if let Some(tx) = self.out.lock().unwrap().as_ref() {
            let _ = tx.send(msg);
        }
    }

    fn on_check(&self, c: pb::CheckCommand) {
        self.log.lock().unwrap().check_commands += 1;
        if !self.answer_checks.load(Ordering::SeqCst) {
            return;
        }
        let devices = self.devices.lock().unwrap().clone();
        for local in c.device_local_ids {
            let Some(d) = devices.get(&local) else {
                continue;
            };
            if let Some(pending) = self.asleep.lock().unwrap().get_mut(&local) {
                // Asleep: "status 5" now (not journaled, like a real agent's first answer).
                *pending = Some(c.check_id.clone());
                if let Some(tx) = self.out.lock().unwrap().as_ref() {
                    let _ = tx.send(pb::AgentMessage {
                        seq: 0,
                        body: Some(pb::agent_message::Body::CheckResult(pb::CheckResult {
                            check_id: c.check_id.clone(),
                            device_local_id: local.clone(),
                            reachable: false,
                            device: None,
                            update_available: None,
                            error: None,
                            awaiting_wakeup: true,
                        })),
                    });
                }
                continue;
            }
            self.journaled(pb::agent_message::Body::CheckResult(pb::CheckResult {
                check_id: c.check_id.clone(),
                device_local_id: local,
                reachable: d.report.reachable,
                device: Some(d.report.clone()),
                update_available: None,
                error: None,
                awaiting_wakeup: false,
            }));
        }
    }

    fn on_probe(&self, p: pb::ProbeCommand) {
        let now = self.now_ms();
        self.log
            .lock()
            .unwrap()
            .probes
            .push((now, p.device_local_ids.clone()));
        let mut back = self.back_quietly.lock().unwrap();
        let mut found = Vec::new();
        {
            let mut devices = self.devices.lock().unwrap();
            for local in &p.device_local_ids {
                if back.remove(local)
                    && let Some(d) = devices.get_mut(local)
                {
                    d.report.reachable = true;
                    found.push(d.report.clone());
                }
            }
        }
        drop(back);
        if !found.is_empty() {
            self.journaled(pb::agent_message::Body::Inventory(pb::Inventory {
                full: false,
                devices: found,
                removed_local_ids: vec![],
            }));
        }
    }

    fn on_cancel(self: &Arc<Self>, c: pb::CancelCommand) {
        let waiting = self.waiting.lock().unwrap().remove(&c.task_id);
        if let Some(h) = waiting {
            h.abort();
            self.finish(&c.task_id);
        }
        self.log.lock().unwrap().cancels.push(c);
    }

    fn finish(&self, task_id: &str) {
        let mut log = self.log.lock().unwrap();
        log.in_flight.remove(task_id);
        let now = Instant::now();
        if let Some(t) = log
            .transfers
            .iter_mut()
            .rev()
            .find(|t| t.task_id == task_id && t.finished.is_none())
        {
            t.finished = Some(now);
        }
    }

    fn on_update(self: &Arc<Self>, u: pb::UpdateCommand) {
        if !self
            .known
            .lock()
            .unwrap()
            .insert((u.task_id.clone(), u.attempt))
        {
            self.log.lock().unwrap().repeated_updates += 1;
            return;
        }
        let Some(d) = self
            .devices
            .lock()
            .unwrap()
            .get(&u.device_local_id)
            .cloned()
        else {
            self.journaled(pb::agent_message::Body::Result(pb::TaskResult {
                task_id: u.task_id.clone(),
                attempt: u.attempt,
                status: pb::UpgradeStatus::Failure as i32,
                error: Some(pb::TaskError {
                    code: pb::ErrorCode::Offline as i32,
                    message: "no such device here".into(),
                }),
                ..Default::default()
            }));
            return;
        };
        let esphome = d.report.transport == pb::Transport::Esphome as i32;
        let network = format!("{}/{}", d.report.transport, d.report.network);
        let earlier = {
            let mut log = self.log.lock().unwrap();
            let earlier = log.transfers_of(&u.device_local_id).len() as u32;
            log.transfers.push(Transfer {
                task_id: u.task_id.clone(),
                attempt: u.attempt,
                local_id: u.device_local_id.clone(),
                started: Instant::now(),
                started_ms: self.now_ms(),
                finished: None,
                health_window_s: u.health_window_s,
            });
            log.in_flight
                .insert(u.task_id.clone(), (network.clone(), esphome));
            let total = log.in_flight.len();
            log.max_in_flight = log.max_in_flight.max(total);
            let on_network = log
                .in_flight
                .values()
                .filter(|(n, _)| *n == network)
                .count();
            let m = log.max_by_network.entry(network.clone()).or_default();
            *m = (*m).max(on_network);
            let esp = log.in_flight.values().filter(|(_, e)| *e).count();
            log.max_esphome = log.max_esphome.max(esp);
            earlier
        };
        let sleepy = matches!(
            d.behavior,
            Behavior::Sleepy | Behavior::SleepsFor(_) | Behavior::HangPreparing
        );
        let task_id = u.task_id.clone();
        let this = self.clone();
        let handle = tokio::spawn(async move { this.simulate(u, d, earlier + 1).await });
        if sleepy {
            self.waiting
                .lock()
                .unwrap()
                .insert(task_id, handle.abort_handle());
        }
    }

    fn progress(&self, u: &pb::UpdateCommand, status: pb::UpgradeStatus, progress: f32) {
        self.journaled(pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            status: status as i32,
            progress,
            remaining_s: None,
            bytes_sent: 0,
            bytes_total: 0,
            detail: String::new(),
            at_ms: self.now_ms(),
            verify_until_ms: 0,
        }));
    }

    /// The command's health window as the agent runs it: the progress that starts it, then
    /// the wait (all of it, or half for a device that fails it). `None`: no window, or the
    /// behavior watches none.
    async fn health_window(&self, u: &pb::UpdateCommand, d: &Dev) -> Option<pb::TaskHealth> {
        let health = match &d.behavior {
            Behavior::Verified(h) => *h,
            Behavior::Unhealthy(_) => pb::TaskHealth::NotChecked,
            _ => return None,
        };
        if u.health_window_s == 0 {
            return None;
        }
        if health == pb::TaskHealth::Unconfirmed {
            return Some(health);
        }
        let window = Duration::from_secs(u64::from(u.health_window_s));
        let at_ms = self.now_ms();
        self.journaled(pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            status: pb::UpgradeStatus::Downloaded as i32,
            progress: 100.0,
            at_ms,
            verify_until_ms: at_ms + window.as_millis() as i64,
            ..Default::default()
        }));
        match &d.behavior {
            Behavior::Unhealthy(_) => tokio::time::sleep(window / 2).await,
            _ => tokio::time::sleep(window).await,
        }
        Some(health)
    }

    async fn simulate(self: Arc<Self>, u: pb::UpdateCommand, d: Dev, nth: u32) {
        self.progress(&u, pb::UpgradeStatus::AgentPreparing, 0.0);
        match d.behavior {
            Behavior::Sleepy => {
                self.progress(&u, pb::UpgradeStatus::WaitingForWakeup, 0.0);
                std::future::pending::<()>().await;
            }
            Behavior::Hang => {
                self.progress(&u, pb::UpgradeStatus::Updating, 10.0);
                std::future::pending::<()>().await;
            }
            Behavior::HangPreparing => std::future::pending::<()>().await,
            Behavior::SleepsFor(sleep) => {
                self.progress(&u, pb::UpgradeStatus::WaitingForWakeup, 0.0);
                tokio::time::sleep(sleep).await;
                // Awake: from here on nothing can stop the transfer.
                self.waiting.lock().unwrap().remove(&u.task_id);
            }
            _ => {}
        }
        self.progress(&u, pb::UpgradeStatus::Updating, 50.0);
        tokio::time::sleep(d.duration).await;
        let mut failure = match d.behavior {
            Behavior::Fail(code) => Some(code),
            Behavior::FailFirst(code, n) if nth <= n => Some(code),
            _ => None,
        };
        let from = d.report.current.clone();
        self.finish(&u.task_id);
        let health = if failure.is_none() {
            self.health_window(&u, &d).await
        } else {
            None
        };
        let mut message = "simulated failure".to_string();
        if let (Behavior::Unhealthy(why), Some(_)) = (&d.behavior, health) {
            failure = Some(pb::ErrorCode::Unhealthy as i32);
            message = why.clone();
        }
        match failure {
            Some(code) => self.journaled(pb::agent_message::Body::Result(pb::TaskResult {
                task_id: u.task_id.clone(),
                attempt: u.attempt,
                status: pb::UpgradeStatus::Failure as i32,
                error: Some(pb::TaskError { code, message }),
                from,
                at_ms: self.now_ms(),
                ..Default::default()
            })),
            None => {
                let fw = u.firmware.clone().unwrap_or_default();
                let to = pb::VersionInfo {
                    version: match fw.file_version {
                        Some(v) => v.to_string(),
                        None => fw.version.clone(),
                    },
                    file_version: fw.file_version,
                    ..Default::default()
                };
                let report = {
                    let mut devices = self.devices.lock().unwrap();
                    let dev = devices.get_mut(&u.device_local_id).unwrap();
                    dev.report.current = Some(to.clone());
                    dev.report.clone()
                };
                self.journaled(pb::agent_message::Body::Inventory(pb::Inventory {
                    full: false,
                    devices: vec![report],
                    removed_local_ids: vec![],
                }));
                self.journaled(pb::agent_message::Body::Result(pb::TaskResult {
                    task_id: u.task_id.clone(),
                    attempt: u.attempt,
                    status: pb::UpgradeStatus::Success as i32,
                    error: None,
                    from,
                    to: Some(to),
                    duration_ms: d.duration.as_millis() as u64,
                    at_ms: self.now_ms(),
                    wire_bytes: 4096,
                    device_may_have_image: false,
                    health: health.unwrap_or(pb::TaskHealth::NotChecked) as i32,
                }));
            }
        }
    }
}

/// The largest number of transfers running at the same time across sites (intervals from the
/// agents' logs; a transfer ending at the instant another starts does not overlap it).
pub fn max_overlap(sites: &[&FakeSite]) -> usize {
    let mut points: Vec<(Instant, i32)> = Vec::new();
    for s in sites {
        for t in &s.log().transfers {
            points.push((t.started, 1));
            if let Some(f) = t.finished {
                points.push((f, -1));
            }
        }
    }
    points.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in points {
        now += d;
        max = max.max(now);
    }
    max as usize
}

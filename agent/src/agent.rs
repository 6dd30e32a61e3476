//! The agent's core: one site, its transports, its journal, and the session with the server.
//!
//! The core turns server commands into transport calls and transport outcomes into journaled
//! reports. It knows nothing about MQTT, TCP or serial lines (that is `transport`), and the
//! session loop ([`Agent::run`]) is the only code that talks gRPC to the server.
//!
//! # Session
//! The agent always dials out. After every (re)connect it sends a hello, receives the welcome
//! with the server's acknowledged journal seq, resends every journaled report above it, and a
//! full inventory. It then streams reports as they are journaled, heartbeats, and answers
//! commands until the stream breaks; then it waits (exponential backoff with full jitter,
//! 0.5 s doubling to 30 s, reset after a session that lasted a minute) and dials again. A
//! report otad refuses (`Refused`: its content is wrong, and sending it again would be refused
//! again) is logged with its seq and the reason, counted (`ota_agent_reports_refused_total`) and
//! dropped from the journal: it is never sent again. A session otad ends with an error status
//! (a broken session rule) is logged with the status and dialled again like any other.
//!
//! # Commands
//! - check: each device asked through its transport within the command's timeout; answers are
//!   not journaled (a check that loses its answer times out at the server as 5019). A sleepy
//!   device (a battery Zigbee end device) is answered "awaiting wake-up" at once; when it next
//!   talks it is asked, and that answer is journaled (seq != 0) for the same check id.
//! - update: ignored if the journal knows the task attempt (a resend after reconnect); otherwise
//!   marked started in the journal (with the command and the transport instance), the image's
//!   signatures checked against the site's trust policy (`trust`: 5013 if refused), the image
//!   downloaded and verified (5009 if its sha256 differs), handed to the transport with the
//!   attempt's [`Commitment`] (the transport asks it for the durable *committing* mark right
//!   before its point of no return and the *committed* mark when the device accepted the image),
//!   progress forwarded (throttled: on status changes and at most once a second otherwise), and
//!   the result journaled. A failure after the committing mark that did not show the device kept
//!   its firmware is reported with `device_may_have_image` (never retried automatically).
//! - after a restart: every attempt the journal holds unfinished is given to its transport's
//!   `recover` (which looks at the device and never sends the image again) and its result
//!   journaled; meanwhile it counts as running.
//! - cancel: the running job's cancellation token; the transport decides what is safe.
//! - probe: the transports look at the named devices now, and what they find is journaled as an
//!   inventory change even when nothing changed.
//!
//! # Traces
//! Each update runs in an `agent.task` span (and each check in an `agent.check` span) whose
//! parent is the context otad sent with the command (`ServerMessage.trace_context`), so the
//! site's work is part of the trace that scheduled it. Inside it: the firmware download
//! (`download`, which passes the context on to otad) and one `device.transfer` span per
//! transfer, named after the transport (`esphome.transfer`, ...), with bytes and outcome.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_proto::v1 as pb;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::download;
use crate::journal::{Interrupted, Journal, TaskMark};
use crate::report;
use crate::transport::{
    CommitLog, CommitStage, Commitment, DeviceReport, RecoverJob, TransferProgress, Transport,
    UpdateJob,
};
use crate::trust::TrustPolicy;

/// Version reported in the hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This site.
    pub site_id: String,
    /// Where the journal and the agent id live.
    pub data_dir: PathBuf,
    /// IANA time zone of the site.
    pub timezone: String,
    /// UTC offset of the site in minutes.
    pub utc_offset_minutes: i32,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Tags per device local id, from the configuration.
    pub tags: BTreeMap<String, Vec<String>>,
    /// Minimum spacing of progress reports of one task (status changes always go).
    pub progress_interval: Duration,
}

/// Shared state of a running agent.
pub struct Agent {
    opts: AgentOptions,
    agent_id: String,
    transports: Vec<Arc<dyn Transport>>,
    trust: TrustPolicy,
    /// Attempts that were running when the agent last stopped, until `run` recovers them.
    recovering: Mutex<Vec<Interrupted>>,
    journal: Arc<Mutex<Journal>>,
    journaled: Notify,
    jobs: Mutex<HashMap<String, CancellationToken>>,
    session_tx: Mutex<Option<mpsc::Sender<pb::AgentMessage>>>,
    last_inventory: Mutex<HashMap<String, pb::DeviceReport>>,
    /// A session asked for a full inventory while a transport's list was still incomplete.
    full_inventory_owed: AtomicBool,
    /// Checks waiting for a sleepy device to talk, by device.
    sleepy_checks: Mutex<HashMap<String, Vec<String>>>,
    /// Set by `Agent::enable_metrics` (`crate::metrics`).
    instruments: std::sync::OnceLock<Arc<crate::metrics::AgentInstruments>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("site_id", &self.opts.site_id)
            .field("agent_id", &self.agent_id)
            .field("transports", &self.transports.len())
            .finish_non_exhaustive()
    }
}

fn load_agent_id(dir: &std::path::Path) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = format!("agent-{}", uuid::Uuid::new_v4().simple());
    let tmp = dir.join("agent-id.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    crate::journal::fsync_dir(dir)?;
    Ok(id)
}

/// The transport's name in spans (as otad names transports).
fn transport_name(kind: crate::transport::TransportKind) -> &'static str {
    match kind {
        crate::transport::TransportKind::Zigbee2Mqtt => "zigbee2mqtt",
        crate::transport::TransportKind::Esphome => "esphome",
        crate::transport::TransportKind::Serial => "serial",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Agent {
    /// Opens the journal and prepares the agent, with no trusted signing keys (unsigned images
    /// are installed). Attempts that were running when the agent last stopped are recovered by
    /// [`Agent::run`]: their transports look at the devices (see [`Transport::recover`]).
    pub fn new(
        opts: AgentOptions,
        transports: Vec<Arc<dyn Transport>>,
    ) -> anyhow::Result<Arc<Agent>> {
        Self::with_trust(opts, transports, TrustPolicy::default())
    }

    /// Like [`Agent::new`], with the site's firmware trust policy.
    pub fn with_trust(
        opts: AgentOptions,
        transports: Vec<Arc<dyn Transport>>,
        trust: TrustPolicy,
    ) -> anyhow::Result<Arc<Agent>> {
        let agent_id = load_agent_id(&opts.data_dir)?;
        let journal = Journal::open(&opts.data_dir)?;
        Ok(Self::assemble(opts, agent_id, journal, transports, trust))
    }

    /// Like [`Agent::with_trust`], with a [`Failpoint`](crate::journal::Failpoint) watching the
    /// journal (crash-point tests).
    #[cfg(feature = "failpoints")]
    pub fn with_failpoint(
        opts: AgentOptions,
        transports: Vec<Arc<dyn Transport>>,
        trust: TrustPolicy,
        failpoint: Arc<crate::journal::Failpoint>,
    ) -> anyhow::Result<Arc<Agent>> {
        let agent_id = load_agent_id(&opts.data_dir)?;
        let mut journal = Journal::open(&opts.data_dir)?;
        journal.set_failpoint(failpoint);
        Ok(Self::assemble(opts, agent_id, journal, transports, trust))
    }

    fn assemble(
        opts: AgentOptions,
        agent_id: String,
        journal: Journal,
        transports: Vec<Arc<dyn Transport>>,
        trust: TrustPolicy,
    ) -> Arc<Agent> {
        let recovering = journal.interrupted_tasks();
        for i in &recovering {
            warn!(task.id = %i.task, attempt = i.attempt, mark = ?i.mark, "an update was running when the agent stopped; it is looked at once the transports are up");
        }
        Arc::new(Agent {
            opts,
            agent_id,
            transports,
            trust,
            recovering: Mutex::new(recovering),
            journal: Arc::new(Mutex::new(journal)),
            journaled: Notify::new(),
            jobs: Mutex::new(HashMap::new()),
            session_tx: Mutex::new(None),
            last_inventory: Mutex::new(HashMap::new()),
            full_inventory_owed: AtomicBool::new(false),
            sleepy_checks: Mutex::new(HashMap::new()),
            instruments: std::sync::OnceLock::new(),
        })
    }

    /// This installation's id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// This site's id.
    pub fn site_id(&self) -> &str {
        &self.opts.site_id
    }

    /// A session with the server is open (welcomed and not yet ended).
    pub fn is_connected(&self) -> bool {
        self.session_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub(crate) fn transports(&self) -> &[Arc<dyn Transport>] {
        &self.transports
    }

    pub(crate) fn instruments(&self) -> Option<&Arc<crate::metrics::AgentInstruments>> {
        self.instruments.get()
    }

    /// False if metrics were enabled before.
    pub(crate) fn set_instruments(&self, i: Arc<crate::metrics::AgentInstruments>) -> bool {
        self.instruments.set(i).is_ok()
    }

    /// Highest seq acknowledged by the server (for tests and status).
    pub fn acked_seq(&self) -> u64 {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked()
    }

    /// Reports journaled but not acknowledged yet.
    pub fn unacked_count(&self) -> usize {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unacked()
            .len()
    }

    /// Journals a report durably, then wakes the session to send it.
    async fn journal_report(&self, body: pb::agent_message::Body) -> anyhow::Result<()> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append_report(body)
        })
        .await??;
        self.journaled.notify_one();
        Ok(())
    }

    fn send_now(&self, body: pb::agent_message::Body) {
        let tx = self
            .session_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            let _ = tx.try_send(pb::AgentMessage {
                seq: 0,
                body: Some(body),
            });
        }
    }

    fn tags_of(&self, local_id: &str) -> Vec<String> {
        self.opts.tags.get(local_id).cloned().unwrap_or_default()
    }

    /// Every device of every transport, on the wire.
    fn inventory_now(&self) -> HashMap<String, pb::DeviceReport> {
        let mut all = HashMap::new();
        for t in &self.transports {
            for d in t.inventory().borrow().iter() {
                all.insert(
                    d.local_id.clone(),
                    report::device(t.kind(), d, &self.tags_of(&d.local_id)),
                );
            }
        }
        all
    }

    fn find_device(&self, local_id: &str) -> Option<(Arc<dyn Transport>, DeviceReport)> {
        for t in &self.transports {
            if let Some(d) = t
                .inventory()
                .borrow()
                .iter()
                .find(|d| d.local_id == local_id)
            {
                return Some((t.clone(), d.clone()));
            }
        }
        None
    }

    fn transport_instances(&self) -> Vec<pb::TransportInstance> {
        self.transports
            .iter()
            .map(|t| {
                let inv = t.inventory();
                let devices = inv.borrow();
                pb::TransportInstance {
                    kind: report::transport(t.kind()),
                    name: t.instance().to_string(),
                    device_count: devices.len() as u32,
                    connected: true,
                    detail: String::new(),
                }
            })
            .collect()
    }

    /// Journals the inventory changes since the last report (`full`: everything).
    ///
    /// A full report tells otad that unlisted devices are gone, so it is sent only when every
    /// transport knows its whole list; until then the report is a change without removals, and
    /// the full report follows with the first change after the last transport completes.
    async fn report_inventory(&self, full: bool) -> anyhow::Result<()> {
        let complete = self.transports.iter().all(|t| t.inventory_complete());
        let full = if complete {
            full || self.full_inventory_owed.swap(false, Ordering::SeqCst)
        } else {
            if full {
                self.full_inventory_owed.store(true, Ordering::SeqCst);
            }
            false
        };
        let now = self.inventory_now();
        let (devices, removed) = {
            let mut last = self
                .last_inventory
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let changed: Vec<pb::DeviceReport> = if full {
                now.values().cloned().collect()
            } else {
                now.values()
                    .filter(|d| last.get(&d.local_id) != Some(*d))
                    .cloned()
                    .collect()
            };
            let removed: Vec<String> = if full || !complete {
                Vec::new()
            } else {
                last.keys()
                    .filter(|k| !now.contains_key(*k))
                    .cloned()
                    .collect()
            };
            *last = now;
            (changed, removed)
        };
        if !full && devices.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut devices = devices;
        devices.sort_by(|a, b| a.local_id.cmp(&b.local_id));
        self.journal_report(pb::agent_message::Body::Inventory(pb::Inventory {
            full,
            devices,
            removed_local_ids: removed,
        }))
        .await
    }

    /// Runs until `shutdown`: the session loop with reconnects, and the inventory watcher.
    pub async fn run(self: Arc<Self>, channel: Channel, shutdown: CancellationToken) {
        let watcher = tokio::spawn(self.clone().watch_inventory(shutdown.clone()));
        tokio::spawn(self.clone().recover_interrupted());
        let mut delay = self.opts.reconnect_min;
        loop {
            let started = tokio::time::Instant::now();
            let span = info_span!("agent.session", site.id = %self.opts.site_id);
            let outcome = self
                .clone()
                .session(channel.clone(), shutdown.clone())
                .instrument(span)
                .await;
            *self.session_tx.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if shutdown.is_cancelled() {
                break;
            }
            match outcome {
                Ok(()) => info!("session ended; reconnecting"),
                Err(e) => warn!(error = %e, "session failed; reconnecting"),
            }
            if started.elapsed() > Duration::from_secs(60) {
                delay = self.opts.reconnect_min;
            }
            // Full jitter: a fleet of agents does not come back in lockstep after a server restart.
            let wait = delay.mul_f64(rand::random::<f64>().max(0.1));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(self.opts.reconnect_max);
            if let Some(m) = self.instruments() {
                m.reconnecting();
            }
        }
        let jobs: Vec<CancellationToken> = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for j in jobs {
            j.cancel();
        }
        watcher.abort();
    }

    async fn watch_inventory(self: Arc<Self>, shutdown: CancellationToken) {
        let mut receivers: Vec<_> = self.transports.iter().map(|t| t.inventory()).collect();
        loop {
            if receivers.is_empty() {
                shutdown.cancelled().await;
                return;
            }
            let changed =
                futures::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
            tokio::select! {
                () = shutdown.cancelled() => return,
                (res, _, _) = changed => {
                    if res.is_err() {
                        return;
                    }
                }
            }
            // Let a burst of changes settle into one report.
            tokio::time::sleep(Duration::from_millis(250)).await;
            for r in &mut receivers {
                r.borrow_and_update();
            }
            if let Err(e) = self.report_inventory(false).await {
                warn!(error = %e, "could not journal an inventory change");
            }
        }
    }

    async fn session(
        self: Arc<Self>,
        channel: Channel,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(1024);
        let last_seq = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_seq();
        tx.send(pb::AgentMessage {
            seq: 0,
            body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
                site_id: self.opts.site_id.clone(),
                agent_version: AGENT_VERSION.into(),
                agent_id: self.agent_id.clone(),
                last_seq,
                timezone: self.opts.timezone.clone(),
                transports: self.transport_instances(),
                utc_offset_minutes: self.opts.utc_offset_minutes,
            })),
        })
        .await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel.clone());
        let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.next()).await {
            Ok(Some(Ok(pb::ServerMessage {
                body: Some(pb::server_message::Body::Welcome(w)),
                ..
            }))) => w,
            Ok(Some(Err(status))) => {
                anyhow::bail!("server refused the session: {}", status.message())
            }
            _ => anyhow::bail!("no welcome from the server"),
        };
        info!(acked = welcome.acked_seq, server = %welcome.server_version, "connected to otad");
        {
            let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            j.ack(welcome.acked_seq)?;
        }
        *self.session_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        self.report_inventory(true).await?;

        let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_interval_s.max(1)));
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent_upto = welcome.acked_seq;
        loop {
            // Send everything journaled and not yet sent on this session.
            let unsent: Vec<pb::AgentMessage> = self
                .journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unacked()
                .into_iter()
                .filter(|m| m.seq > sent_upto)
                .collect();
            for m in unsent {
                sent_upto = m.seq;
                tx.send(m).await?;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.journaled.notified() => {}
                _ = ticker.tick() => {
                    let running = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).len() as u32;
                    tx.send(pb::AgentMessage {
                        seq: 0,
                        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                            at_ms: now_ms(),
                            running_tasks: running,
                            transports: self.transport_instances(),
                        })),
                    })
                    .await?;
                }
                msg = inbound.next() => match msg {
                    None => return Ok(()),
                    Some(Err(status)) => anyhow::bail!("stream from the server broke: {:?}: {}", status.code(), status.message()),
                    Some(Ok(m)) => self.clone().on_command(m, channel.clone()).await?,
                },
            }
        }
    }

    async fn on_command(
        self: Arc<Self>,
        msg: pb::ServerMessage,
        channel: Channel,
    ) -> anyhow::Result<()> {
        let command_id = msg.command_id;
        let trace = msg.trace_context;
        match msg.body {
            Some(pb::server_message::Body::Ack(a)) => {
                let journal = self.journal.clone();
                tokio::task::spawn_blocking(move || {
                    journal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .ack(a.acked_seq)
                })
                .await??;
            }
            Some(pb::server_message::Body::Refused(r)) => {
                let journal = self.journal.clone();
                let seq = r.seq;
                let kind = tokio::task::spawn_blocking(move || {
                    journal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .refuse(seq)
                })
                .await??;
                let reason: String = r.reason.chars().take(200).collect();
                warn!(
                    seq,
                    kind = kind.unwrap_or("unknown"),
                    %reason,
                    "otad refused a report; it is dropped from the journal and not sent again"
                );
                if let Some(m) = self.instruments() {
                    m.report_refused(kind.unwrap_or("unknown"));
                }
            }
            Some(pb::server_message::Body::Check(c)) => {
                let span = info_span!(parent: None, "agent.check", check.id = %c.check_id, site.id = %self.opts.site_id, devices = c.device_local_ids.len());
                ota_telemetry::traces::set_parent_from(&span, &trace);
                tokio::spawn(self.clone().run_check(c).instrument(span));
            }
            Some(pb::server_message::Body::Update(u)) => {
                self.start_update(command_id, u, channel, &trace).await?
            }
            Some(pb::server_message::Body::Cancel(c)) => {
                let token = self
                    .jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&c.task_id)
                    .cloned();
                match token {
                    Some(t) => {
                        info!(task.id = %c.task_id, reason = %c.reason, "cancel requested");
                        t.cancel();
                    }
                    None => debug!(task.id = %c.task_id, "cancel for a task not running here"),
                }
            }
            Some(pb::server_message::Body::Probe(p)) => {
                debug!(devices = p.device_local_ids.len(), "probe requested");
                tokio::spawn(self.clone().probe(p.device_local_ids));
            }
            Some(pb::server_message::Body::Welcome(_))
            | Some(pb::server_message::Body::Ping(_))
            | None => {}
        }
        Ok(())
    }

    /// Looks at `devices` now (their transports probe them) and journals what is found as an
    /// inventory change, whether or not anything changed: the server waits for the answer.
    async fn probe(self: Arc<Self>, devices: Vec<String>) {
        let mut per_transport: Vec<(Arc<dyn Transport>, Vec<String>)> = Vec::new();
        for d in &devices {
            let Some((t, _)) = self.find_device(d) else {
                continue;
            };
            match per_transport.iter_mut().find(|(u, _)| Arc::ptr_eq(u, &t)) {
                Some((_, ids)) => ids.push(d.clone()),
                None => per_transport.push((t, vec![d.clone()])),
            }
        }
        futures::future::join_all(per_transport.iter().map(|(t, ids)| t.probe(ids))).await;
        let mut found: Vec<pb::DeviceReport> = {
            let now = self.inventory_now();
            let mut last = self
                .last_inventory
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            devices
                .iter()
                .filter_map(|d| now.get(d).cloned())
                .inspect(|r| {
                    last.insert(r.local_id.clone(), r.clone());
                })
                .collect()
        };
        if found.is_empty() {
            return;
        }
        found.sort_by(|a, b| a.local_id.cmp(&b.local_id));
        if let Err(e) = self
            .journal_report(pb::agent_message::Body::Inventory(pb::Inventory {
                full: false,
                devices: found,
                removed_local_ids: Vec::new(),
            }))
            .await
        {
            warn!(error = %e, "could not journal a probe's answer");
        }
    }

    /// A check of a sleepy device: "awaiting wake-up" now; when the device next talks it is
    /// checked again and the real answer is journaled (one look answers every check waiting
    /// for that device).
    fn check_when_awake(
        self: &Arc<Self>,
        transport: Arc<dyn Transport>,
        check_id: String,
        local: String,
        budget: Duration,
    ) {
        {
            let mut waiting = self.sleepy_checks.lock().unwrap_or_else(|p| p.into_inner());
            let ids = waiting.entry(local.clone()).or_default();
            let first = ids.is_empty();
            ids.push(check_id);
            if !first {
                return;
            }
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let woke = tokio::time::timeout(
                crate::transport::DEFAULT_WAKE_TIMEOUT,
                transport.next_contact(&local),
            )
            .await
            .is_ok();
            let answer = if woke {
                debug!(device = %local, "the sleepy device talked; checking it now");
                agent.ask(&transport, &local, budget).await
            } else {
                Err(TaskError::new(
                    ErrorCode::Offline,
                    format!(
                        "{local} did not wake up within {}",
                        humantime::format_duration(crate::transport::DEFAULT_WAKE_TIMEOUT)
                    ),
                ))
            };
            let ids = agent
                .sleepy_checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&local)
                .unwrap_or_default();
            for check_id in ids {
                let body = pb::agent_message::Body::CheckResult(agent.check_result(
                    &transport,
                    check_id,
                    &local,
                    answer.clone(),
                ));
                if let Err(e) = agent.journal_report(body).await {
                    warn!(error = %e, "could not journal a sleepy device's check result");
                }
            }
        });
    }

    async fn ask(
        &self,
        transport: &Arc<dyn Transport>,
        local: &str,
        budget: Duration,
    ) -> Result<crate::transport::CheckReport, TaskError> {
        match tokio::time::timeout(budget, transport.check(local, budget)).await {
            Ok(r) => r,
            Err(_) => Err(TaskError::new(
                ErrorCode::BulkCheckTimeout,
                format!(
                    "no answer from {local} within {}",
                    humantime::format_duration(budget)
                ),
            )),
        }
    }

    fn check_result(
        &self,
        transport: &Arc<dyn Transport>,
        check_id: String,
        local: &str,
        answer: Result<crate::transport::CheckReport, TaskError>,
    ) -> pb::CheckResult {
        match answer {
            Ok(r) => pb::CheckResult {
                check_id,
                device_local_id: local.to_owned(),
                reachable: r.reachable,
                device: Some(report::device(
                    transport.kind(),
                    &r.device,
                    &self.tags_of(local),
                )),
                update_available: r.update_available,
                error: None,
                awaiting_wakeup: false,
            },
            Err(e) => pb::CheckResult {
                check_id,
                device_local_id: local.to_owned(),
                reachable: false,
                device: None,
                update_available: None,
                error: Some(report::error(&e)),
                awaiting_wakeup: false,
            },
        }
    }

    async fn run_check(self: Arc<Self>, c: pb::CheckCommand) {
        let deadline = Duration::from_millis(u64::from(c.timeout_ms.max(1000)));
        let checks = c.device_local_ids.iter().map(|local| {
            let agent = self.clone();
            let check_id = c.check_id.clone();
            let local = local.clone();
            async move {
                if let Some((transport, device)) = agent.find_device(&local)
                    && transport.is_sleepy(&local)
                {
                    // Asking now would wait for a wake-up the check cannot wait for.
                    agent.send_now(pb::agent_message::Body::CheckResult(pb::CheckResult {
                        check_id: check_id.clone(),
                        device_local_id: local.clone(),
                        reachable: device.reachable,
                        device: Some(report::device(
                            transport.kind(),
                            &device,
                            &agent.tags_of(&local),
                        )),
                        update_available: None,
                        error: None,
                        awaiting_wakeup: true,
                    }));
                    let budget = deadline.max(SLEEPY_CHECK_BUDGET);
                    agent.check_when_awake(transport, check_id, local, budget);
                    return;
                }
                let answer = match agent.find_device(&local) {
                    None => pb::CheckResult {
                        check_id,
                        device_local_id: local.clone(),
                        reachable: false,
                        device: None,
                        update_available: None,
                        error: Some(report::error(&TaskError::new(
                            ErrorCode::Offline,
                            format!("this site does not know device {local}"),
                        ))),
                        awaiting_wakeup: false,
                    },
                    Some((transport, _)) => {
                        // Leave a little of the server's timeout for the answer to travel.
                        let budget = deadline.mul_f64(0.9);
                        match tokio::time::timeout(budget, transport.check(&local, budget)).await {
                            Ok(r) => agent.check_result(&transport, check_id, &local, r),
                            Err(_) => return,
                        }
                    }
                };
                agent.send_now(pb::agent_message::Body::CheckResult(answer));
            }
        });
        futures::future::join_all(checks).await;
    }

    async fn start_update(
        self: &Arc<Self>,
        command_id: u64,
        u: pb::UpdateCommand,
        channel: Channel,
        trace: &HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let known = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .task_mark(&u.task_id, u.attempt);
        if let Some(mark) = known {
            debug!(task.id = %u.task_id, attempt = u.attempt, ?mark, "update command for a known attempt ignored");
            if mark != TaskMark::Finished {
                self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                    command_id,
                    accepted: true,
                    error: None,
                }));
            }
            return Ok(());
        }
        let Some((transport, _)) = self.find_device(&u.device_local_id) else {
            self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id,
                accepted: false,
                error: Some(report::error(&TaskError::new(
                    ErrorCode::Offline,
                    format!(
                        "site {} does not know device {}",
                        self.opts.site_id, u.device_local_id
                    ),
                ))),
            }));
            return Ok(());
        };
        let Some(firmware) = u.firmware.clone() else {
            self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id,
                accepted: false,
                error: Some(report::error(&TaskError::new(
                    ErrorCode::ServerRefused,
                    "update command without firmware",
                ))),
            }));
            return Ok(());
        };
        let started = {
            let journal = self.journal.clone();
            let (cmd, instance) = (u.clone(), transport.instance().to_owned());
            tokio::task::spawn_blocking(move || {
                journal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .start_attempt(&cmd, &instance)
            })
            .await??
        };
        if !started {
            return Ok(());
        }
        self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
            command_id,
            accepted: true,
            error: None,
        }));
        let token = CancellationToken::new();
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(u.task_id.clone(), token.clone());
        let span = self.task_span(&u, transport.kind(), Some(&firmware.id));
        ota_telemetry::traces::set_parent_from(&span, trace);
        let agent = self.clone();
        tokio::spawn(
            async move {
                let commit = agent.commitment(&u.task_id, u.attempt, CommitStage::Before);
                let transfer = agent.instruments().map(|m| m.transfer(transport.kind()));
                let cancelled = token.clone();
                let outcome = agent
                    .run_update(&u, &firmware, transport, token, channel, commit.clone())
                    .await;
                if let Some(t) = transfer {
                    t.finish(outcome.as_ref().err(), cancelled.is_cancelled());
                }
                if let Err(e) = agent
                    .finish_update(&u.task_id, u.attempt, outcome, &commit)
                    .await
                {
                    warn!(error = %e, "could not journal the result; the attempt is recovered after a restart");
                }
                agent.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&u.task_id);
            }
            .instrument(span),
        );
        Ok(())
    }

    /// The `agent.task` span of an attempt. Not a child of the session's span: the task
    /// continues the trace otad sent with it.
    fn task_span(
        &self,
        u: &pb::UpdateCommand,
        kind: crate::transport::TransportKind,
        firmware_id: Option<&str>,
    ) -> tracing::Span {
        info_span!(
            parent: None,
            "agent.task",
            task.id = %u.task_id,
            attempt = u.attempt,
            device.id = %format!("{}/{}", self.opts.site_id, u.device_local_id),
            device.local_id = %u.device_local_id,
            site.id = %self.opts.site_id,
            firmware.id = %firmware_id.unwrap_or_default(),
            transport = transport_name(kind),
            outcome = tracing::field::Empty,
            error.code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// The marks of an attempt, kept in the journal.
    fn commitment(&self, task: &str, attempt: u32, stage: CommitStage) -> Commitment {
        Commitment::new(
            Arc::new(JournalMarks {
                journal: self.journal.clone(),
                task: task.to_owned(),
                attempt,
            }),
            stage,
        )
    }

    async fn progress(&self, task_id: &str, attempt: u32, p: &TransferProgress) {
        let body = pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: task_id.to_owned(),
            attempt,
            status: p.status.code() as i32,
            progress: p.percent.unwrap_or(0.0),
            remaining_s: p.remaining_s,
            bytes_sent: p.bytes_sent,
            bytes_total: p.bytes_total,
            detail: p.detail.clone(),
            at_ms: now_ms(),
        });
        if let Err(e) = self.journal_report(body).await {
            warn!(error = %e, "could not journal progress");
        }
    }

    async fn run_update(
        &self,
        u: &pb::UpdateCommand,
        firmware: &pb::FirmwareRef,
        transport: Arc<dyn Transport>,
        cancel: CancellationToken,
        channel: Channel,
        commit: Commitment,
    ) -> Result<(crate::transport::UpdateReport, u64), TaskError> {
        let started = tokio::time::Instant::now();
        match self.trust.check(firmware)? {
            Some(key) => info!(key.id = %key, "firmware signature verified"),
            None => warn!("installing unsigned firmware: this site's policy allows it"),
        }
        self.progress(
            &u.task_id,
            u.attempt,
            &TransferProgress {
                status: UpgradeStatus::AgentPreparing,
                percent: None,
                remaining_s: None,
                bytes_sent: 0,
                bytes_total: firmware.size,
                detail: "downloading the firmware from the server".into(),
            },
        )
        .await;
        let image = tokio::select! {
            r = download::fetch(channel, firmware, &u.task_id) => r?,
            () = cancel.cancelled() => return Err(TaskError::new(ErrorCode::Other, "cancelled before anything was sent to the device")),
        };
        if let Some(m) = self.instruments() {
            m.downloaded(image.bytes.len() as u64);
        }
        let job = UpdateJob {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            device: u.device_local_id.clone(),
            image: Arc::new(image),
            downgrade: u.downgrade,
            schedule: u.schedule,
            timeout: transfer_budget(u.timeout_s),
            wake_timeout: wake_budget(u.wake_timeout_s),
            commit,
        };
        let transfer = self.transfer_span(&u.task_id, &u.device_local_id, &*transport, firmware);
        let sent_bytes = self.instruments().map(|m| m.bytes(transport.kind()));
        let (ptx, prx) = mpsc::unbounded_channel::<TransferProgress>();
        let update = transport.update(job, ptx, cancel);
        let result = self
            .follow(&u.task_id, u.attempt, update, prx, sent_bytes, transfer)
            .await;
        result.map(|r| (r, started.elapsed().as_millis() as u64))
    }

    fn transfer_span(
        &self,
        task_id: &str,
        device: &str,
        transport: &dyn Transport,
        firmware: &pb::FirmwareRef,
    ) -> tracing::Span {
        let kind = transport_name(transport.kind());
        info_span!(
            "device.transfer",
            otel.name = %format!("{kind}.transfer"),
            transport = kind,
            transport.instance = %transport.instance(),
            device.id = %format!("{}/{}", self.opts.site_id, device),
            site.id = %self.opts.site_id,
            firmware.id = %firmware.id,
            task.id = %task_id,
            bytes.total = firmware.size,
            bytes.sent = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error.code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// Runs a transport's work for an attempt to its end, forwarding its progress (throttled:
    /// status changes at once, otherwise at most once per `progress_interval`).
    async fn follow(
        &self,
        task_id: &str,
        attempt: u32,
        work: futures::future::BoxFuture<'_, Result<crate::transport::UpdateReport, TaskError>>,
        mut prx: mpsc::UnboundedReceiver<TransferProgress>,
        mut sent_bytes: Option<crate::metrics::BytesMeter>,
        transfer: tracing::Span,
    ) -> Result<crate::transport::UpdateReport, TaskError> {
        let mut bytes_sent = 0u64;
        let work = work.instrument(transfer.clone());
        tokio::pin!(work);
        let mut last: Option<(UpgradeStatus, tokio::time::Instant)> = None;
        let mut pending: Option<TransferProgress> = None;
        let mut flush = tokio::time::interval(self.opts.progress_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(p) = prx.recv() => {
                    if let Some(m) = &mut sent_bytes {
                        m.progress(&p);
                    }
                    bytes_sent = bytes_sent.max(p.bytes_sent);
                    let due = match last {
                        None => true,
                        Some((status, at)) => status != p.status || at.elapsed() >= self.opts.progress_interval,
                    };
                    if due {
                        last = Some((p.status, tokio::time::Instant::now()));
                        pending = None;
                        self.progress(task_id, attempt, &p).await;
                    } else {
                        pending = Some(p);
                    }
                }
                _ = flush.tick() => {
                    if let Some(p) = pending.take() {
                        last = Some((p.status, tokio::time::Instant::now()));
                        self.progress(task_id, attempt, &p).await;
                    }
                }
            }
        };
        while let Ok(p) = prx.try_recv() {
            if let Some(m) = &mut sent_bytes {
                m.progress(&p);
            }
            bytes_sent = bytes_sent.max(p.bytes_sent);
            pending = Some(p);
        }
        match &result {
            Ok(r) => {
                transfer.record("bytes.sent", r.wire_bytes.max(bytes_sent));
                transfer.record("outcome", "success");
            }
            Err(e) => {
                transfer.record("bytes.sent", bytes_sent);
                transfer.record("outcome", "failure");
                transfer.record("error.code", e.code.code());
                transfer.record("otel.status_code", "error");
            }
        }
        drop(transfer);
        if let Some(p) = pending.take() {
            self.progress(task_id, attempt, &p).await;
        }
        result
    }

    /// Journals an attempt's result, then its finished mark. A failure after the point of no
    /// return that did not show the device kept its firmware is marked
    /// `device_may_have_image` (the server never retries it automatically).
    async fn finish_update(
        &self,
        task_id: &str,
        attempt: u32,
        outcome: Result<(crate::transport::UpdateReport, u64), TaskError>,
        commit: &Commitment,
    ) -> anyhow::Result<()> {
        let span = tracing::Span::current();
        match &outcome {
            Ok(_) => span.record("outcome", "success"),
            Err(e) => {
                span.record("error.code", e.code.code());
                span.record("otel.status_code", "error");
                span.record("outcome", "failure")
            }
        };
        let result = match outcome {
            Ok((r, duration_ms)) => {
                info!(from = ?r.from.version, to = ?r.to.version, duration_ms, "update succeeded");
                pb::TaskResult {
                    task_id: task_id.to_owned(),
                    attempt,
                    status: UpgradeStatus::Success.code() as i32,
                    error: None,
                    from: Some(report::version(&r.from)),
                    to: Some(report::version(&r.to)),
                    duration_ms,
                    at_ms: now_ms(),
                    wire_bytes: r.wire_bytes,
                    device_may_have_image: false,
                }
            }
            Err(mut e) => {
                let may_have_image = commit.may_have_image();
                if may_have_image {
                    e.message.push_str(
                        "; the device may already run the new image (the attempt passed the \
                         point of no return), so it is not retried automatically: check the \
                         device",
                    );
                }
                warn!(code = e.code.code(), error = %e.message, may_have_image, "update failed");
                pb::TaskResult {
                    task_id: task_id.to_owned(),
                    attempt,
                    status: if e.code == ErrorCode::Timeout {
                        UpgradeStatus::Timeout
                    } else {
                        UpgradeStatus::Failure
                    }
                    .code() as i32,
                    error: Some(report::error(&e)),
                    at_ms: now_ms(),
                    device_may_have_image: may_have_image,
                    ..Default::default()
                }
            }
        };
        self.journal_report(pb::agent_message::Body::Result(result))
            .await?;
        let journal = self.journal.clone();
        let task = task_id.to_owned();
        tokio::task::spawn_blocking(move || {
            journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finish_task(&task, attempt)
        })
        .await??;
        Ok(())
    }

    /// Finds out how the attempts that were running when the agent stopped ended, one task
    /// each, through their transports (which look at the devices and send nothing again). Each
    /// counts as running meanwhile: a resent command for it is ignored, a cancel reaches it.
    async fn recover_interrupted(self: Arc<Self>) {
        let interrupted =
            std::mem::take(&mut *self.recovering.lock().unwrap_or_else(|p| p.into_inner()));
        let mut running = Vec::new();
        for i in interrupted {
            let token = CancellationToken::new();
            self.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(i.task.clone(), token.clone());
            let agent = self.clone();
            running.push(tokio::spawn(async move {
                let task = i.task.clone();
                agent.recover_one(i, token).await;
                agent
                    .jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&task);
            }));
        }
        for r in running {
            let _ = r.await;
        }
    }

    async fn recover_one(self: &Arc<Self>, i: Interrupted, cancel: CancellationToken) {
        let stage = match i.mark {
            TaskMark::Started | TaskMark::Finished => CommitStage::Before,
            TaskMark::Committing => CommitStage::Committing,
            TaskMark::Committed => CommitStage::Committed,
        };
        let commit = self.commitment(&i.task, i.attempt, stage);
        let transport = i.transport.as_deref().and_then(|name| {
            self.transports
                .iter()
                .find(|t| t.instance() == name)
                .cloned()
        });
        let (Some(u), Some(transport)) = (i.command.clone(), transport) else {
            warn!(task.id = %i.task, attempt = i.attempt, mark = ?i.mark, "an update was running when the agent stopped and cannot be looked at; reporting it interrupted");
            let e = TaskError::new(
                ErrorCode::SendFailed,
                "the agent restarted during this update; the device may not have received the whole image",
            );
            if let Err(e) = self
                .finish_update(&i.task, i.attempt, Err(e), &commit)
                .await
            {
                warn!(error = %e, "could not journal the interrupted attempt");
            }
            return;
        };
        let firmware = u.firmware.clone().unwrap_or_default();
        let span = self.task_span(&u, transport.kind(), Some(&firmware.id));
        async {
            info!(mark = ?i.mark, "an update was running when the agent stopped; looking at the device");
            let started = tokio::time::Instant::now();
            let job = RecoverJob {
                task_id: u.task_id.clone(),
                attempt: u.attempt,
                device: u.device_local_id.clone(),
                target_version: firmware.version.clone(),
                target_file_version: firmware.file_version,
                note: i.note.clone(),
                timeout: transfer_budget(u.timeout_s),
                wake_timeout: wake_budget(u.wake_timeout_s),
                commit: commit.clone(),
            };
            let transfer = self.transfer_span(&u.task_id, &u.device_local_id, &*transport, &firmware);
            let (ptx, prx) = mpsc::unbounded_channel::<TransferProgress>();
            let work = transport.recover(job, ptx, cancel);
            let outcome = self
                .follow(&u.task_id, u.attempt, work, prx, None, transfer)
                .await
                .map(|r| (r, started.elapsed().as_millis() as u64));
            if let Err(e) = self
                .finish_update(&u.task_id, u.attempt, outcome, &commit)
                .await
            {
                warn!(error = %e, "could not journal the recovered attempt's result");
            }
        }
        .instrument(span)
        .await
    }
}

/// How long the check of a sleepy device may take once it talked (zigbee2mqtt waits up to 60 s
/// for the device's answer to its image notify).
const SLEEPY_CHECK_BUDGET: Duration = Duration::from_secs(90);

/// The transfer budget of a command (0: 10 minutes).
fn transfer_budget(timeout_s: u32) -> Duration {
    Duration::from_secs(u64::from(if timeout_s == 0 { 600 } else { timeout_s }))
}

/// The wake-up budget of a command (0: 7 days).
fn wake_budget(wake_timeout_s: u32) -> Duration {
    if wake_timeout_s == 0 {
        crate::transport::DEFAULT_WAKE_TIMEOUT
    } else {
        Duration::from_secs(u64::from(wake_timeout_s))
    }
}

/// An attempt's marks in the journal, for its transport's [`Commitment`].
#[derive(Debug)]
struct JournalMarks {
    journal: Arc<Mutex<Journal>>,
    task: String,
    attempt: u32,
}

impl CommitLog for JournalMarks {
    fn committing(
        &self,
        note: serde_json::Value,
    ) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let journal = self.journal.clone();
        let (task, attempt) = (self.task.clone(), self.attempt);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                journal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mark_committing(&task, attempt, note)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        })
    }

    fn committed(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let journal = self.journal.clone();
        let (task, attempt) = (self.task.clone(), self.attempt);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                journal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mark_committed(&task, attempt)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        })
    }
}

//! The agent's core: one site, its transports, its journal, and the session with the server.
//!
//! The core turns server commands into transport calls and transport outcomes into journaled
//! reports. It knows nothing about MQTT, TCP or serial lines (that is `transport`). The session
//! (`session.rs`, [`Agent::run`]) is the only code that holds the gRPC stream; the rest names
//! protobuf types because reports are journaled as the wire messages they are sent as (the
//! journal replays them byte for byte), and commands arrive as wire messages.
//!
//! Files: `session` (dial, hello, resend, heartbeats, the server's messages), `inventory` (the
//! devices on the wire, changes, probes), `checks`, `updates` (update jobs, progress, results,
//! recovery of interrupted attempts); this file holds the shared state and the journal access.
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

mod checks;
mod health;
mod inventory;
mod session;
mod updates;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_proto::v1 as pb;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::journal::{Interrupted, Journal};
use crate::sync::LockExt;
use crate::transport::Transport;
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

/// Runs a journal write (each fsyncs) on the blocking pool, off the session's threads.
pub(crate) async fn write_journal<R: Send + 'static>(
    journal: &Arc<Mutex<Journal>>,
    write: impl FnOnce(&mut Journal) -> std::io::Result<R> + Send + 'static,
) -> std::io::Result<R> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || write(&mut journal.locked()))
        .await
        .map_err(std::io::Error::other)?
}

fn now_ms() -> i64 {
    crate::transport::unix_ms().unwrap_or_default()
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
        self.session_tx.locked().is_some()
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
        self.journal.locked().acked()
    }

    /// Reports journaled but not acknowledged yet.
    pub fn unacked_count(&self) -> usize {
        self.journal.locked().unacked().len()
    }

    /// Journals a report durably, then wakes the session to send it.
    async fn journal_report(&self, body: pb::agent_message::Body) -> anyhow::Result<()> {
        write_journal(&self.journal, move |j| j.append_report(body)).await?;
        self.journaled.notify_one();
        Ok(())
    }

    fn send_now(&self, body: pb::agent_message::Body) {
        let tx = self.session_tx.locked().clone();
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
}

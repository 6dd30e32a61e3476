//! Live agent sessions: who is connected now, how to send them commands, and what they said
//! that is not worth an event (heartbeats, last-seen times, answers being waited for).
//!
//! This is the only in-memory state of the server that is not a projection of the log. It is
//! lost on restart on purpose: agents reconnect and say it again.
//!
//! A session carries what otad says to its agent in the server's own terms
//! ([`crate::to_agent::ToAgent`]); `api::agents` converts each message to protobuf when it writes
//! the stream, and converts the agents' check answers into [`CheckAnswer`]s before they arrive
//! here.
//!
//! Tracing: [`Sessions::send`] stamps every command with the W3C context of the span that sends
//! it (`ToAgent::trace_context`, on the wire `ServerMessage.trace_context`), so the agent's work for a command joins the command's
//! trace. The trace a task was created in (an `Update` call, a rollout step) is remembered here
//! too ([`Sessions::remember_trace`]), so its dispatch, however much later, continues that
//! trace; it is a hint that a restart loses, never an event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ota_domain::model::DeviceFacts;
use ota_domain::status::TaskError;
use ota_domain::time::UnixMillis;
use tokio::sync::{mpsc, oneshot};

use crate::lock::MutexExt;
use crate::to_agent::ToAgent;

/// One connected agent.
#[derive(Debug)]
pub struct Session {
    /// Unique per connection (a reconnect gets a new one).
    pub session_id: u64,
    /// Site.
    pub site_id: String,
    /// Agent installation id.
    pub agent_id: String,
    /// Messages to the agent, in order.
    pub tx: mpsc::Sender<ToAgent>,
    /// Last message from the agent, Unix ms (see [`Session::heard_from`]).
    last_heartbeat_ms: AtomicI64,
    /// Remote address.
    pub peer: String,
}

impl Session {
    /// Records that the agent sent something at `now`.
    pub fn heard_from(&self, now: UnixMillis) {
        self.last_heartbeat_ms
            .store(now.as_i64(), Ordering::Relaxed);
    }

    /// When the agent last sent something.
    pub fn last_heartbeat(&self) -> UnixMillis {
        UnixMillis::from_unix_ms(self.last_heartbeat_ms.load(Ordering::Relaxed))
    }
}

/// A device's answer to a check, as its agent gave it (converted from the wire by
/// `api::agents`).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckAnswer {
    /// The check.
    pub check_id: String,
    /// Device, local to the site.
    pub device_local_id: String,
    /// Whether the site reached the device.
    pub reachable: bool,
    /// Fresh facts about the device, when the agent sent valid ones.
    pub facts: Option<DeviceFacts>,
    /// The bridge's own opinion (zigbee2mqtt check), when it has one.
    pub update_available: Option<bool>,
    /// What went wrong, if anything.
    pub error: Option<TaskError>,
    /// The device is asleep: status 5, not a failure.
    pub awaiting_wakeup: bool,
}

/// All sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    by_site: Mutex<HashMap<String, std::sync::Arc<Session>>>,
    next_session: AtomicU64,
    next_command: AtomicU64,
    /// Device id -> last time its site mentioned it.
    last_seen: Mutex<HashMap<String, UnixMillis>>,
    /// (check id, site, device local id) -> waiter. The site is the asking session's, so an
    /// agent can answer only for devices of its own site.
    check_waiters: Mutex<HashMap<(String, String, String), oneshot::Sender<CheckAnswer>>>,
    /// Task id -> W3C context of the span that created the task (bounded, see
    /// [`MAX_TRACE_LINKS`]).
    trace_links: Mutex<HashMap<String, HashMap<String, String>>>,
}

/// Most task trace contexts remembered; beyond it the map is cleared (tasks then dispatch in
/// traces of their own).
pub const MAX_TRACE_LINKS: usize = 10_000;

/// Why a command could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No agent session for the site.
    #[error("site {0} has no agent connected")]
    NotConnected(String),
    /// The session is closing or its queue is full.
    #[error("the agent of site {0} is not accepting commands")]
    Closed(String),
}

impl Sessions {
    /// A fresh, empty registry whose command ids start at 1 (tests).
    pub fn new() -> Self {
        Self::starting_at(1)
    }

    /// A fresh, empty registry whose command ids start at `first_command_id` (see
    /// `Otad::start`: ids stay unique across restarts).
    pub fn starting_at(first_command_id: u64) -> Self {
        Self {
            next_session: AtomicU64::new(1),
            next_command: AtomicU64::new(first_command_id.max(1)),
            ..Default::default()
        }
    }

    /// Registers a session, replacing (and returning) an older one for the same site.
    pub fn register(
        &self,
        site_id: &str,
        agent_id: &str,
        peer: String,
        tx: mpsc::Sender<ToAgent>,
        now: UnixMillis,
    ) -> (std::sync::Arc<Session>, Option<std::sync::Arc<Session>>) {
        let session = std::sync::Arc::new(Session {
            session_id: self.next_session.fetch_add(1, Ordering::Relaxed),
            site_id: site_id.to_string(),
            agent_id: agent_id.to_string(),
            tx,
            last_heartbeat_ms: AtomicI64::new(now.as_i64()),
            peer,
        });
        let old = self
            .by_site
            .locked()
            .insert(site_id.to_string(), session.clone());
        (session, old)
    }

    /// Removes the session if it is still the current one for its site. Returns whether it was.
    pub fn unregister(&self, session: &Session) -> bool {
        let mut map = self.by_site.locked();
        match map.get(&session.site_id) {
            Some(current) if current.session_id == session.session_id => {
                map.remove(&session.site_id);
                true
            }
            _ => false,
        }
    }

    /// The current session of a site.
    pub fn get(&self, site_id: &str) -> Option<std::sync::Arc<Session>> {
        self.by_site.locked().get(site_id).cloned()
    }

    /// Whether the site has an agent connected now.
    pub fn is_connected(&self, site_id: &str) -> bool {
        self.get(site_id).is_some()
    }

    /// Number of connected agents.
    pub fn connected_count(&self) -> usize {
        self.by_site.locked().len()
    }

    /// A fresh command id.
    pub fn next_command_id(&self) -> u64 {
        self.next_command.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a message to a site's agent without waiting. A message without a trace context
    /// gets the current span's.
    pub fn send(&self, site_id: &str, mut msg: ToAgent) -> Result<(), SendError> {
        let session = self
            .get(site_id)
            .ok_or_else(|| SendError::NotConnected(site_id.to_string()))?;
        if msg.trace_context.is_empty() {
            msg.trace_context = ota_telemetry::traces::inject(&tracing::Span::current());
        }
        session
            .tx
            .try_send(msg)
            .map_err(|_| SendError::Closed(site_id.to_string()))
    }

    /// Remembers the trace a task was created in (a context from
    /// `ota_telemetry::traces::inject`; an empty one is not kept).
    pub fn remember_trace(&self, task_id: &str, context: HashMap<String, String>) {
        if context.is_empty() {
            return;
        }
        let mut links = self.trace_links.locked();
        if links.len() >= MAX_TRACE_LINKS {
            links.clear();
        }
        links.insert(task_id.to_string(), context);
    }

    /// The trace a task was created in, if this process remembers it.
    pub fn trace_of(&self, task_id: &str) -> Option<HashMap<String, String>> {
        self.trace_links.locked().get(task_id).cloned()
    }

    /// Records that a site mentioned a device.
    pub fn touch_device(&self, device_id: &str, now: UnixMillis) {
        self.last_seen.locked().insert(device_id.to_string(), now);
    }

    /// When a site last mentioned a device in this server's lifetime.
    pub fn last_seen(&self, device_id: &str) -> Option<UnixMillis> {
        self.last_seen.locked().get(device_id).copied()
    }

    /// Last heartbeat of a site's agent.
    pub fn last_heartbeat(&self, site_id: &str) -> Option<UnixMillis> {
        self.get(site_id).map(|s| s.last_heartbeat())
    }

    /// Registers interest in a device's answer to a check.
    pub fn wait_check(
        &self,
        check_id: &str,
        site_id: &str,
        local_id: &str,
    ) -> oneshot::Receiver<CheckAnswer> {
        let (tx, rx) = oneshot::channel();
        self.check_waiters.locked().insert(
            (
                check_id.to_string(),
                site_id.to_string(),
                local_id.to_string(),
            ),
            tx,
        );
        rx
    }

    /// Hands the check answer of an agent of `site_id` to whoever waits for it. Gives the answer
    /// back if nobody does (the check already timed out, or it asked another site).
    pub fn answer_check(&self, site_id: &str, answer: CheckAnswer) -> Result<(), Box<CheckAnswer>> {
        let key = (
            answer.check_id.clone(),
            site_id.to_string(),
            answer.device_local_id.clone(),
        );
        let waiter = self.check_waiters.locked().remove(&key);
        match waiter {
            Some(tx) => tx.send(answer).map_err(Box::new),
            None => Err(Box::new(answer)),
        }
    }

    /// Forgets waiters of a check (after its timeout).
    pub fn forget_check(&self, check_id: &str) {
        self.check_waiters
            .locked()
            .retain(|(id, _, _), _| id != check_id);
    }
}

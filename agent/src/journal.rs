//! The agent's on-disk journal: reports that must reach the server exactly once, and which task
//! attempts this agent has started and finished.
//!
//! Every report (inventory, progress, result) gets the next sequence number and is written and
//! fsynced here *before* it is sent. The server acknowledges the highest seq it has made durable;
//! acknowledged reports are dropped. After a reconnect (or an agent restart) everything above the
//! server's acknowledgement is sent again; the server ignores seqs it already applied, so each
//! report takes effect exactly once.
//!
//! A report the server *refuses* (its content is wrong: a task that is unknown or ended, a status
//! out of range, an oversized inventory) is dropped too, with a `refused` record: sending it
//! again would only be refused again, so it is never sent again (the agent logs and counts each
//! refusal). Like acks, refusals are not fsynced: one lost in a crash means the report is sent
//! once more and refused once more. An agent older than this record type stops reading its
//! journal at the first `refused` record (it looks like a torn tail), so downgrading an agent
//! needs a journal without them (one that was compacted, or emptied by acks).
//!
//! Task marks make update commands idempotent: a command for a task attempt the journal already
//! knows is not started again. Each attempt has up to four marks, each fsynced before the agent
//! goes on: *started* (with the command and the transport, so a restarted agent knows what was
//! being installed where), *committing* (right before the transport's point of no return, with
//! the transport's note of what to look at), *committed* (the device accepted the image) and
//! *finished* (its result is journaled). An attempt that was started but never finished (the
//! agent died) is handed to its transport's recovery after a restart instead of being repeated;
//! the marks say how far it got.
//!
//! With the `failpoints` feature, [`Failpoint`] simulates a SIGKILL right after the k-th durable
//! write (crash-point tests): that write reaches the disk, then it and every later journal
//! operation hang for ever.
//!
//! # Format
//! `journal.log` is a sequence of records `u32 LE length | u32 LE crc32 | JSON`. A torn or
//! corrupt record can only be the last one written (the one being written when the process
//! died, never fsynced, never sent): it and anything after it are cut off at open. When the file
//! grows past a threshold it is rewritten with only what is still needed (pending reports and
//! recent task marks) into a temporary file that atomically replaces it.
//!
//! # Durability
//! Reports and task marks are `fdatasync`ed before [`Journal::append_report`],
//! [`Journal::start_task`] and [`Journal::finish_task`] return, so they survive a power cut, not
//! only a crash of the agent. Acks are not synced (losing one means a harmless resend). Names
//! are made durable too: opening fsyncs the data directory's parent (its entry, also for a
//! directory someone else created just before) and, when it creates `journal.log`, the data
//! directory; compaction fsyncs the directory after its rename. [`fsync_dir`] is the helper
//! the agent also uses for its `agent-id` file.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use ota_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

#[cfg(feature = "failpoints")]
use crate::sync::LockExt;

const FILE: &str = "journal.log";
/// Rewrite the file when it is larger than this.
const COMPACT_BYTES: u64 = 4 * 1024 * 1024;
/// Finished task marks kept across compactions (older ones cannot be re-sent by the server).
const KEEP_FINISHED: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Report {
        seq: u64,
        msg: String,
    },
    Acked {
        seq: u64,
    },
    /// The server refused the report with this seq: it is never sent again.
    Refused {
        seq: u64,
    },
    TaskStarted {
        task: String,
        attempt: u32,
        /// The update command (protobuf, base64); absent in journals of older agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmd: Option<String>,
        /// The transport instance that runs it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transport: Option<String>,
    },
    TaskCommitting {
        task: String,
        attempt: u32,
        note: serde_json::Value,
    },
    TaskCommitted {
        task: String,
        attempt: u32,
    },
    TaskFinished {
        task: String,
        attempt: u32,
    },
}

impl Record {
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    fn describe(&self) -> String {
        match self {
            Record::Report { msg, .. } => {
                use pb::agent_message::Body;
                let body = base64::engine::general_purpose::STANDARD
                    .decode(msg)
                    .ok()
                    .and_then(|b| pb::AgentMessage::decode(b.as_slice()).ok())
                    .and_then(|m| m.body);
                match body {
                    Some(Body::Inventory(_)) => "inventory".into(),
                    Some(Body::Progress(p)) => format!("progress {}", p.status),
                    Some(Body::Result(r)) => format!("result {}", r.status),
                    Some(Body::CheckResult(_)) => "check result".into(),
                    _ => "report".into(),
                }
            }
            Record::Acked { seq } => format!("ack {seq}"),
            Record::Refused { seq } => format!("refused {seq}"),
            Record::TaskStarted { .. } => "task started".into(),
            Record::TaskCommitting { .. } => "task committing".into(),
            Record::TaskCommitted { .. } => "task committed".into(),
            Record::TaskFinished { .. } => "task finished".into(),
        }
    }
}

/// What the journal knows about a task attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskMark {
    /// Started here, no result yet.
    Started,
    /// The transport was about to pass its point of no return; no result yet.
    Committing,
    /// The device accepted the image; no result yet.
    Committed,
    /// Its result is journaled.
    Finished,
}

/// An attempt that was started but never finished: the agent stopped during it.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// Task id.
    pub task: String,
    /// Attempt number.
    pub attempt: u32,
    /// How far it got.
    pub mark: TaskMark,
    /// The update command (absent in journals of older agents).
    pub command: Option<pb::UpdateCommand>,
    /// The transport instance that ran it.
    pub transport: Option<String>,
    /// The transport's note from the committing mark.
    pub note: Option<serde_json::Value>,
}

/// What is kept of an unfinished attempt.
#[derive(Debug, Clone, Default)]
struct Open {
    cmd: Option<String>,
    transport: Option<String>,
    note: Option<serde_json::Value>,
}

/// The journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    next_seq: u64,
    acked: u64,
    pending: BTreeMap<u64, pb::AgentMessage>,
    tasks: HashMap<(String, u32), TaskMark>,
    open: HashMap<(String, u32), Open>,
    finished_order: VecDeque<(String, u32)>,
    #[cfg(feature = "failpoints")]
    failpoint: Option<std::sync::Arc<Failpoint>>,
}

/// Fsyncs a directory, making the entries created or renamed in it durable (a file's own fsync
/// does not cover its name).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

fn encode_record(r: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(r).unwrap_or_else(|e| unreachable!("records serialise: {e}"));
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

impl Journal {
    /// Opens (creating) the journal in `dir`, replaying it. A new directory and a new
    /// `journal.log` are made durable (their directory entries fsynced) before it returns.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        let path = dir.join(FILE);
        let mut bytes = Vec::new();
        let existed = path.exists();
        if existed {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !existed {
            fsync_dir(dir)?;
        }
        let mut j = Journal {
            file,
            path,
            size: 0,
            next_seq: 1,
            acked: 0,
            pending: BTreeMap::new(),
            tasks: HashMap::new(),
            open: HashMap::new(),
            finished_order: VecDeque::new(),
            #[cfg(feature = "failpoints")]
            failpoint: None,
        };
        let mut pos = 0usize;
        while pos + 8 <= bytes.len() {
            let len =
                u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap_or_default());
            let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32fast::hash(body) != crc {
                break;
            }
            let Ok(record) = serde_json::from_slice::<Record>(body) else {
                break;
            };
            j.apply(record);
            pos += 8 + len;
        }
        if pos < bytes.len() {
            warn!(
                dropped_bytes = bytes.len() - pos,
                "journal ended with a torn record (the agent stopped while writing it); it was never sent and is dropped"
            );
            let f = OpenOptions::new().write(true).open(&j.path)?;
            f.set_len(pos as u64)?;
            f.sync_all()?;
        }
        j.size = pos as u64;
        info!(
            pending = j.pending.len(),
            acked = j.acked,
            next_seq = j.next_seq,
            "journal opened"
        );
        Ok(j)
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Report { seq, msg } => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(msg)
                    .ok()
                    .and_then(|b| pb::AgentMessage::decode(b.as_slice()).ok());
                if let Some(m) = decoded
                    && seq > self.acked
                {
                    self.pending.insert(seq, m);
                }
                self.next_seq = self.next_seq.max(seq.saturating_add(1));
            }
            Record::Acked { seq } => self.drop_acked(seq),
            Record::Refused { seq } => {
                self.pending.remove(&seq);
            }
            Record::TaskStarted {
                task,
                attempt,
                cmd,
                transport,
            } => {
                let key = (task, attempt);
                self.open.insert(
                    key.clone(),
                    Open {
                        cmd,
                        transport,
                        note: None,
                    },
                );
                self.tasks.insert(key, TaskMark::Started);
            }
            Record::TaskCommitting {
                task,
                attempt,
                note,
            } => {
                let key = (task, attempt);
                if self
                    .tasks
                    .get(&key)
                    .is_some_and(|m| *m < TaskMark::Committing)
                {
                    self.open.entry(key.clone()).or_default().note = Some(note);
                    self.tasks.insert(key, TaskMark::Committing);
                }
            }
            Record::TaskCommitted { task, attempt } => {
                let key = (task, attempt);
                if self
                    .tasks
                    .get(&key)
                    .is_some_and(|m| *m < TaskMark::Committed)
                {
                    self.tasks.insert(key, TaskMark::Committed);
                }
            }
            Record::TaskFinished { task, attempt } => {
                self.open.remove(&(task.clone(), attempt));
                self.finished_order.push_back((task.clone(), attempt));
                self.tasks.insert((task, attempt), TaskMark::Finished);
                while self.finished_order.len() > KEEP_FINISHED {
                    if let Some(old) = self.finished_order.pop_front() {
                        self.tasks.remove(&old);
                    }
                }
            }
        }
    }

    fn drop_acked(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.pending = match self.acked.checked_add(1) {
            Some(above) => self.pending.split_off(&above),
            None => BTreeMap::new(),
        };
    }

    /// With a tripped failpoint, journal operations hang here.
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    fn failpoint_check(&self, durable: bool) {
        #[cfg(feature = "failpoints")]
        if let Some(fp) = &self.failpoint {
            fp.before_operation(durable);
        }
    }

    fn write(&mut self, r: &Record, sync: bool) -> io::Result<()> {
        self.failpoint_check(sync);
        let bytes = encode_record(r);
        self.file.write_all(&bytes)?;
        if sync {
            self.file.sync_data()?;
        }
        self.size += bytes.len() as u64;
        #[cfg(feature = "failpoints")]
        if sync && let Some(fp) = &self.failpoint {
            fp.after_durable_write(r.describe());
        }
        Ok(())
    }

    /// Test support: from now on `failpoint` watches (and may stop) every write.
    #[cfg(feature = "failpoints")]
    pub fn set_failpoint(&mut self, failpoint: std::sync::Arc<Failpoint>) {
        self.failpoint = Some(failpoint);
    }

    /// Journals a report (durably) and returns it with its seq.
    pub fn append_report(&mut self, body: pb::agent_message::Body) -> io::Result<pb::AgentMessage> {
        let seq = self.next_seq;
        let msg = pb::AgentMessage {
            seq,
            body: Some(body),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(msg.encode_to_vec());
        self.write(&Record::Report { seq, msg: encoded }, true)?;
        self.next_seq = self.next_seq.saturating_add(1);
        self.pending.insert(seq, msg.clone());
        Ok(msg)
    }

    /// The server made everything up to `seq` durable.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.acked {
            return Ok(());
        }
        self.drop_acked(seq);
        // Not fsynced: losing an ack only means a harmless resend.
        self.write(&Record::Acked { seq }, false)?;
        if self.size > COMPACT_BYTES {
            self.compact()?;
        }
        Ok(())
    }

    /// The server refused the report `seq`: it is dropped and never sent again. Returns what
    /// kind of report it was (`inventory`, `progress`, `result`, `check_result`), `None` when the
    /// journal holds no such report (already dropped, or seq 0).
    pub fn refuse(&mut self, seq: u64) -> io::Result<Option<&'static str>> {
        let Some(m) = self.pending.remove(&seq) else {
            return Ok(None);
        };
        // Not fsynced, like acks: losing it means one more refusal.
        self.write(&Record::Refused { seq }, false)?;
        use pb::agent_message::Body;
        Ok(Some(match m.body {
            Some(Body::Inventory(_)) => "inventory",
            Some(Body::Progress(_)) => "progress",
            Some(Body::Result(_)) => "result",
            Some(Body::CheckResult(_)) => "check_result",
            _ => "unknown",
        }))
    }

    /// Reports not yet acknowledged, in order.
    pub fn unacked(&self) -> Vec<pb::AgentMessage> {
        self.failpoint_check(false);
        self.pending.values().cloned().collect()
    }

    /// Highest seq written.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Highest seq the server acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// What the journal knows about a task attempt.
    pub fn task_mark(&self, task: &str, attempt: u32) -> Option<TaskMark> {
        self.failpoint_check(false);
        self.tasks.get(&(task.to_string(), attempt)).copied()
    }

    /// Records (durably) that an attempt starts; refuses if it is already known.
    pub fn start_task(&mut self, task: &str, attempt: u32) -> io::Result<bool> {
        self.start(task, attempt, None, None)
    }

    /// Records (durably) that the attempt of `command` starts on the transport instance
    /// `transport`, keeping both for a restarted agent; refuses if it is already known.
    pub fn start_attempt(
        &mut self,
        command: &pb::UpdateCommand,
        transport: &str,
    ) -> io::Result<bool> {
        let cmd = base64::engine::general_purpose::STANDARD.encode(command.encode_to_vec());
        self.start(
            &command.task_id,
            command.attempt,
            Some(cmd),
            Some(transport.to_owned()),
        )
    }

    fn start(
        &mut self,
        task: &str,
        attempt: u32,
        cmd: Option<String>,
        transport: Option<String>,
    ) -> io::Result<bool> {
        if self.task_mark(task, attempt).is_some() {
            return Ok(false);
        }
        let r = Record::TaskStarted {
            task: task.into(),
            attempt,
            cmd,
            transport,
        };
        self.write(&r, true)?;
        self.apply(r);
        Ok(true)
    }

    /// Records (durably) that the attempt is about to pass its transport's point of no return,
    /// with the transport's `note`. Does nothing for an attempt that is not open or got further.
    pub fn mark_committing(
        &mut self,
        task: &str,
        attempt: u32,
        note: serde_json::Value,
    ) -> io::Result<()> {
        if self
            .task_mark(task, attempt)
            .is_none_or(|m| m >= TaskMark::Committing)
        {
            return Ok(());
        }
        let r = Record::TaskCommitting {
            task: task.into(),
            attempt,
            note,
        };
        self.write(&r, true)?;
        self.apply(r);
        Ok(())
    }

    /// Records (durably) that the device accepted the attempt's image.
    pub fn mark_committed(&mut self, task: &str, attempt: u32) -> io::Result<()> {
        if self
            .task_mark(task, attempt)
            .is_none_or(|m| m >= TaskMark::Committed)
        {
            return Ok(());
        }
        let r = Record::TaskCommitted {
            task: task.into(),
            attempt,
        };
        self.write(&r, true)?;
        self.apply(r);
        Ok(())
    }

    /// Records that an attempt's result is journaled.
    pub fn finish_task(&mut self, task: &str, attempt: u32) -> io::Result<()> {
        let r = Record::TaskFinished {
            task: task.into(),
            attempt,
        };
        self.write(&r, true)?;
        self.apply(r);
        Ok(())
    }

    /// Attempts started but never finished (the agent stopped during them), in task order.
    pub fn interrupted_tasks(&self) -> Vec<Interrupted> {
        let mut v: Vec<Interrupted> = self
            .tasks
            .iter()
            .filter(|(_, m)| **m != TaskMark::Finished)
            .map(|((task, attempt), mark)| {
                let open = self
                    .open
                    .get(&(task.clone(), *attempt))
                    .cloned()
                    .unwrap_or_default();
                Interrupted {
                    task: task.clone(),
                    attempt: *attempt,
                    mark: *mark,
                    command: open.cmd.as_deref().and_then(|c| {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(c).ok()?;
                        pb::UpdateCommand::decode(bytes.as_slice()).ok()
                    }),
                    transport: open.transport,
                    note: open.note,
                }
            })
            .collect();
        v.sort_by(|a, b| (&a.task, a.attempt).cmp(&(&b.task, b.attempt)));
        v
    }

    /// Rewrites the file with only what is still needed.
    pub fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut out = Vec::new();
        out.extend(encode_record(&Record::Acked { seq: self.acked }));
        // Keep the seq counter even when nothing is pending.
        if self.pending.is_empty() && self.next_seq > self.acked.saturating_add(1) {
            out.extend(encode_record(&Record::Acked {
                seq: self.next_seq - 1,
            }));
        }
        for (seq, msg) in &self.pending {
            let encoded = base64::engine::general_purpose::STANDARD.encode(msg.encode_to_vec());
            out.extend(encode_record(&Record::Report {
                seq: *seq,
                msg: encoded,
            }));
        }
        for (k, m) in &self.tasks {
            if *m == TaskMark::Finished {
                continue;
            }
            let open = self.open.get(k).cloned().unwrap_or_default();
            out.extend(encode_record(&Record::TaskStarted {
                task: k.0.clone(),
                attempt: k.1,
                cmd: open.cmd,
                transport: open.transport,
            }));
            if *m >= TaskMark::Committing {
                out.extend(encode_record(&Record::TaskCommitting {
                    task: k.0.clone(),
                    attempt: k.1,
                    note: open.note.unwrap_or_default(),
                }));
            }
            if *m >= TaskMark::Committed {
                out.extend(encode_record(&Record::TaskCommitted {
                    task: k.0.clone(),
                    attempt: k.1,
                }));
            }
        }
        for k in &self.finished_order {
            out.extend(encode_record(&Record::TaskFinished {
                task: k.0.clone(),
                attempt: k.1,
            }));
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fsync_dir(dir)?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.size = out.len() as u64;
        Ok(())
    }
}

/// Test support: stands for a SIGKILL of the agent right after its k-th durable journal write
/// (counted from [`Failpoint::arm`]). That write reaches the disk; then the writing thread, and
/// with it every later journal operation (they wait for the journal's lock), hang for ever, so
/// the disk holds exactly what the kill would leave and the agent can take no further step that
/// depends on the journal. The test then drops the agent's runtime and starts a new agent on
/// the same directory.
#[cfg(feature = "failpoints")]
#[derive(Debug, Default)]
pub struct Failpoint {
    state: std::sync::Mutex<FailpointState>,
    tripped: tokio::sync::Notify,
}

/// Where a [`Failpoint`] kills the agent.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillMode {
    /// Right after the write reached the disk: the writer never gets control back.
    #[default]
    AfterWrite,
    /// At the next durable write after that write: the agent goes on (a transport takes the
    /// step after the mark) until it makes something else durable.
    AtNextDurableWrite,
}

#[cfg(feature = "failpoints")]
#[derive(Debug, Default)]
struct FailpointState {
    armed: bool,
    kill_at: Option<(String, usize)>,
    mode: KillMode,
    writes: Vec<String>,
    tripped: Option<String>,
    /// The agent hangs in the journal: it is as good as killed.
    hung: bool,
}

#[cfg(feature = "failpoints")]
impl Failpoint {
    /// A failpoint that counts nothing until armed.
    pub fn new() -> std::sync::Arc<Failpoint> {
        std::sync::Arc::new(Failpoint::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FailpointState> {
        self.state.locked()
    }

    /// Records durable writes from now (described: `task started`, `task committing`,
    /// `task committed`, `task finished`, `progress <status>`, `result <status>`, `inventory`,
    /// `check result`); kills right after the `n`-th (from 1) write described as `kill_at.0`
    /// (`None`: only records).
    pub fn arm(&self, kill_at: Option<(String, usize)>) {
        self.arm_with(kill_at, KillMode::AfterWrite);
    }

    /// [`Failpoint::arm`] with a choice of where exactly the kill happens.
    pub fn arm_with(&self, kill_at: Option<(String, usize)>, mode: KillMode) {
        let mut st = self.lock();
        st.armed = true;
        st.kill_at = kill_at;
        st.mode = mode;
        st.writes.clear();
    }

    /// The durable writes since [`Failpoint::arm`], described.
    pub fn writes(&self) -> Vec<String> {
        self.lock().writes.clone()
    }

    /// The write the agent was killed after, once it was.
    pub fn tripped(&self) -> Option<String> {
        self.lock().tripped.clone()
    }

    /// Waits until the agent hangs in its journal (right after the kill write, or at the
    /// operation after it): from then on it takes no step that depends on the journal, and its
    /// runtime can be dropped. Returns the kill write.
    pub async fn wait_killed(&self) -> String {
        loop {
            let notified = self.tripped.notified();
            {
                let st = self.lock();
                if st.hung
                    && let Some(w) = &st.tripped
                {
                    return w.clone();
                }
            }
            notified.await;
        }
    }

    fn hang_now(&self) -> ! {
        self.lock().hung = true;
        self.tripped.notify_waiters();
        hang()
    }

    fn before_operation(&self, durable: bool) {
        let hang = {
            let st = self.lock();
            st.tripped.is_some() && (durable || st.mode == KillMode::AfterWrite)
        };
        if hang {
            self.hang_now();
        }
    }

    fn after_durable_write(&self, what: String) {
        let (kill, mode) = {
            let mut st = self.lock();
            if !st.armed {
                return;
            }
            st.writes.push(what.clone());
            let nth = st.writes.iter().filter(|w| **w == what).count();
            let kill = st
                .kill_at
                .as_ref()
                .is_some_and(|(w, n)| *w == what && *n == nth);
            if kill {
                st.tripped = Some(format!("{what} #{nth} (write {})", st.writes.len()));
            }
            (kill, st.mode)
        };
        if kill && mode == KillMode::AfterWrite {
            self.hang_now();
        }
    }
}

#[cfg(feature = "failpoints")]
fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> pb::agent_message::Body {
        pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())
    }

    #[test]
    fn reports_survive_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            for _ in 0..5 {
                j.append_report(heartbeat()).unwrap();
            }
            j.ack(2).unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let seqs: Vec<u64> = j.unacked().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(j.last_seq(), 5);
        assert_eq!(j.acked(), 2);
    }

    #[test]
    fn refused_reports_are_dropped_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = || {
            pb::agent_message::Body::Inventory(pb::Inventory {
                full: true,
                ..Default::default()
            })
        };
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.append_report(heartbeat()).unwrap();
            j.append_report(inventory()).unwrap();
            j.append_report(heartbeat()).unwrap();
            assert_eq!(j.refuse(2).unwrap(), Some("inventory"));
            assert_eq!(j.refuse(2).unwrap(), None, "already dropped");
            assert_eq!(j.refuse(0).unwrap(), None);
            assert_eq!(j.refuse(99).unwrap(), None);
            let seqs: Vec<u64> = j.unacked().iter().map(|m| m.seq).collect();
            assert_eq!(seqs, [1, 3]);
        }
        // Not sent again after a restart either, and seqs go on.
        let mut j = Journal::open(dir.path()).unwrap();
        let seqs: Vec<u64> = j.unacked().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(j.append_report(heartbeat()).unwrap().seq, 4);
        j.compact().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let seqs: Vec<u64> = j.unacked().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 3, 4]);
        // An absurd ack (a server that acknowledged u64::MAX before sessions had rules) does not
        // overflow the seq counter.
        let mut j = j;
        j.ack(u64::MAX).unwrap();
        assert!(j.unacked().is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_and_seqs_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.append_report(heartbeat()).unwrap();
            j.append_report(heartbeat()).unwrap();
        }
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full);
        assert_eq!(j.unacked().len(), 2);
        assert_eq!(j.append_report(heartbeat()).unwrap().seq, 3);
    }

    #[test]
    fn task_marks_make_commands_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            assert!(j.start_task("t1", 1).unwrap());
            assert!(!j.start_task("t1", 1).unwrap());
            assert!(j.start_task("t2", 1).unwrap());
            j.finish_task("t2", 1).unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.task_mark("t1", 1), Some(TaskMark::Started));
        assert_eq!(j.task_mark("t2", 1), Some(TaskMark::Finished));
        assert_eq!(j.task_mark("t2", 2), None);
        let interrupted: Vec<_> = j
            .interrupted_tasks()
            .into_iter()
            .map(|i| (i.task, i.attempt, i.mark))
            .collect();
        assert_eq!(interrupted, vec![("t1".to_string(), 1, TaskMark::Started)]);
    }

    #[test]
    fn compaction_keeps_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        for _ in 0..100 {
            j.append_report(heartbeat()).unwrap();
        }
        j.ack(98).unwrap();
        j.start_task("t", 1).unwrap();
        j.finish_task("t", 1).unwrap();
        j.start_task("u", 3).unwrap();
        let before = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        j.compact().unwrap();
        let after = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert!(after < before / 10, "{after} vs {before}");
        drop(j);
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.unacked().iter().map(|m| m.seq).collect::<Vec<_>>(),
            [99, 100]
        );
        assert_eq!(j.task_mark("t", 1), Some(TaskMark::Finished));
        let interrupted: Vec<_> = j
            .interrupted_tasks()
            .into_iter()
            .map(|i| (i.task, i.attempt))
            .collect();
        assert_eq!(interrupted, vec![("u".to_string(), 3)]);
        assert_eq!(j.append_report(heartbeat()).unwrap().seq, 101);
        // With nothing pending, the counter still survives compaction.
        j.ack(101).unwrap();
        j.compact().unwrap();
        drop(j);
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.append_report(heartbeat()).unwrap().seq, 102);
    }

    fn command(task: &str, attempt: u32) -> pb::UpdateCommand {
        pb::UpdateCommand {
            task_id: task.into(),
            attempt,
            device_local_id: "plug".into(),
            firmware: Some(pb::FirmwareRef {
                id: "fw-1".into(),
                version: "2.0.0".into(),
                ..Default::default()
            }),
            timeout_s: 60,
            ..Default::default()
        }
    }

    #[test]
    fn commit_marks_and_what_recovery_needs_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            assert!(j.start_attempt(&command("a", 1), "esphome").unwrap());
            assert!(j.start_attempt(&command("b", 2), "serial").unwrap());
            assert!(j.start_attempt(&command("c", 1), "zigbee").unwrap());
            assert!(!j.start_attempt(&command("c", 1), "zigbee").unwrap());
            j.mark_committing("b", 2, serde_json::json!({"md5": "00ff"}))
                .unwrap();
            j.mark_committing("c", 1, serde_json::json!({"v": 1}))
                .unwrap();
            // A second committing mark keeps the first note.
            j.mark_committing("c", 1, serde_json::json!({"v": 2}))
                .unwrap();
            j.mark_committed("c", 1).unwrap();
            // Marks of unknown or finished attempts are ignored.
            j.mark_committed("nope", 1).unwrap();
            j.start_attempt(&command("d", 1), "esphome").unwrap();
            j.finish_task("d", 1).unwrap();
            j.mark_committing("d", 1, serde_json::Value::Null).unwrap();
            assert_eq!(j.task_mark("d", 1), Some(TaskMark::Finished));
        }
        let check = |j: &Journal| {
            let i = j.interrupted_tasks();
            let marks: Vec<_> = i.iter().map(|i| (i.task.as_str(), i.mark)).collect();
            assert_eq!(
                marks,
                [
                    ("a", TaskMark::Started),
                    ("b", TaskMark::Committing),
                    ("c", TaskMark::Committed)
                ]
            );
            assert_eq!(i[0].command.as_ref().unwrap(), &command("a", 1));
            assert_eq!(i[0].transport.as_deref(), Some("esphome"));
            assert_eq!(i[0].note, None);
            assert_eq!(i[1].note, Some(serde_json::json!({"md5": "00ff"})));
            assert_eq!(i[2].note, Some(serde_json::json!({"v": 1})));
            assert_eq!(i[2].command.as_ref().unwrap().attempt, 1);
        };
        let mut j = Journal::open(dir.path()).unwrap();
        check(&j);
        j.compact().unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        check(&j);
    }

    #[test]
    fn journals_of_older_agents_still_open() {
        // An agent before the commit marks wrote task_started without the command.
        let dir = tempfile::tempdir().unwrap();
        let old = encode_record(&Record::TaskStarted {
            task: "t".into(),
            attempt: 4,
            cmd: None,
            transport: None,
        });
        let json = String::from_utf8(old[8..].to_vec()).unwrap();
        assert_eq!(json, r#"{"t":"task_started","task":"t","attempt":4}"#);
        std::fs::write(dir.path().join(FILE), &old).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let i = j.interrupted_tasks();
        assert_eq!(i.len(), 1);
        assert_eq!((i[0].attempt, i[0].mark), (4, TaskMark::Started));
        assert!(i[0].command.is_none() && i[0].transport.is_none());
    }
}

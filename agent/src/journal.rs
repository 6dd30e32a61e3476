//! The agent's on-disk journal: reports that must reach the server exactly once, and which task
//! attempts this agent has started and finished.
//!
//! Every report (inventory, progress, result) gets the next sequence number and is written and
//! fsynced here *before* it is sent. The server acknowledges the highest seq it has made durable;
//! acknowledged reports are dropped. After a reconnect (or an agent restart) everything above the
//! server's acknowledgement is sent again; the server ignores seqs it already applied, so each
//! report takes effect exactly once.
//!
//! Task marks make update commands idempotent: a command for a task attempt the journal already
//! knows is not started again, and an attempt that was started but never finished (the agent
//! died mid-transfer) is reported as interrupted at startup instead of being silently retried.
//!
//! # Format
//! `journal.log` is a sequence of records `u32 LE length | u32 LE crc32 | JSON`. A torn or
//! corrupt record can only be the last one written (the one being written when the process
//! died, never fsynced, never sent): it and anything after it are cut off at open. When the file
//! grows past a threshold it is rewritten with only what is still needed (pending reports and
//! recent task marks) into a temporary file that atomically replaces it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use ota_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

const FILE: &str = "journal.log";
/// Rewrite the file when it is larger than this.
const COMPACT_BYTES: u64 = 4 * 1024 * 1024;
/// Finished task marks kept across compactions (older ones cannot be re-sent by the server).
const KEEP_FINISHED: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Report { seq: u64, msg: String },
    Acked { seq: u64 },
    TaskStarted { task: String, attempt: u32 },
    TaskFinished { task: String, attempt: u32 },
}

/// What the journal knows about a task attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskMark {
    /// Started here, no result yet.
    Started,
    /// Its result is journaled.
    Finished,
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
    finished_order: VecDeque<(String, u32)>,
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
    /// Opens (creating) the journal in `dir`, replaying it.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let mut j = Journal {
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            path,
            size: 0,
            next_seq: 1,
            acked: 0,
            pending: BTreeMap::new(),
            tasks: HashMap::new(),
            finished_order: VecDeque::new(),
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
                self.next_seq = self.next_seq.max(seq + 1);
            }
            Record::Acked { seq } => self.drop_acked(seq),
            Record::TaskStarted { task, attempt } => {
                self.tasks.insert((task, attempt), TaskMark::Started);
            }
            Record::TaskFinished { task, attempt } => {
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
        self.next_seq = self.next_seq.max(seq + 1);
        self.pending = self.pending.split_off(&(self.acked + 1));
    }

    fn write(&mut self, r: &Record, sync: bool) -> io::Result<()> {
        let bytes = encode_record(r);
        self.file.write_all(&bytes)?;
        if sync {
            self.file.sync_data()?;
        }
        self.size += bytes.len() as u64;
        Ok(())
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
        self.next_seq += 1;
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

    /// Reports not yet acknowledged, in order.
    pub fn unacked(&self) -> Vec<pb::AgentMessage> {
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
        self.tasks.get(&(task.to_string(), attempt)).copied()
    }

    /// Records (durably) that an attempt starts; refuses if it is already known.
    pub fn start_task(&mut self, task: &str, attempt: u32) -> io::Result<bool> {
        if self.task_mark(task, attempt).is_some() {
            return Ok(false);
        }
        self.write(
            &Record::TaskStarted {
                task: task.into(),
                attempt,
            },
            true,
        )?;
        self.tasks.insert((task.into(), attempt), TaskMark::Started);
        Ok(true)
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

    /// Attempts started but never finished (the agent stopped during them).
    pub fn interrupted_tasks(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, m)| **m == TaskMark::Started)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Rewrites the file with only what is still needed.
    pub fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut out = Vec::new();
        out.extend(encode_record(&Record::Acked { seq: self.acked }));
        // Keep the seq counter even when nothing is pending.
        if self.pending.is_empty() && self.next_seq > self.acked + 1 {
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
            if *m == TaskMark::Started {
                out.extend(encode_record(&Record::TaskStarted {
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
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.size = out.len() as u64;
        Ok(())
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
        assert_eq!(j.interrupted_tasks(), vec![("t1".to_string(), 1)]);
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
        assert_eq!(j.interrupted_tasks(), vec![("u".to_string(), 3)]);
        assert_eq!(j.append_report(heartbeat()).unwrap().seq, 101);
        // With nothing pending, the counter still survives compaction.
        j.ack(101).unwrap();
        j.compact().unwrap();
        drop(j);
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.append_report(heartbeat()).unwrap().seq, 102);
    }
}

//! [`SledEventStore`]: the production event store, on sled, with group commit.
//!
//! This module is the only place (with its helpers `codec` and `recover`) that knows
//! sled. It does not interpret payloads, keep projections or snapshot anything.
//!
//! # On-disk format (version 1) — a compatibility commitment
//!
//! One sled database (the directory given to [`SledEventStore::open`], created with
//! sled's default storage parameters) with four trees. All integers are big-endian, so
//! keys sort numerically.
//!
//! | tree           | key                                             | value                      |
//! |----------------|-------------------------------------------------|----------------------------|
//! | `log`          | `first_seq: u64`                                | log record, see below      |
//! | `stream_index` | `len: u16`, stream name (UTF-8), `version: u64` | `seq: u64`, `pos: u32`     |
//! | `stream_heads` | stream name (UTF-8)                             | `version: u64`, `seq: u64` |
//! | `meta`         | `format_version` (ASCII)                        | `u32`, currently 1         |
//! | `meta`         | `acked_seq` (ASCII)                             | `u64`                      |
//!
//! * **`log`** is the truth. A record holds the events of one or more whole appends
//!   (a commit group, see below), which have the consecutive seqs
//!   `first_seq ..= first_seq + count - 1`; the next record's key is `first_seq + count`.
//!   So a gap is detectable from keys and counts alone.
//! * **Log record**: `crc32: u32`, `record_format: u8` (= 1), `count: u32` (>= 1), then
//!   `count` events in seq order, each: `stream_len: u16`, stream, `stream_version: u64`,
//!   `schema_version: u16`, `recorded_at_ms: i64`, `type_len: u16`, event type,
//!   `actor_len: u16`, actor, `payload_len: u32`, payload. Nothing follows the last
//!   event. The crc32 (IEEE, as `crc32fast` computes it) covers the 8-byte key followed
//!   by every record byte after the crc field, so flipped bits and a record stored under
//!   the wrong key are both detected.
//! * **`stream_index`** maps (stream, version) to the event's seq and its position in
//!   its record (`seq - pos` is the record's key). The length prefix makes a stream's
//!   keys a prefix range that no other stream shares. Derived from the log.
//! * **`stream_heads`** holds each stream's current version and the seq of its last
//!   event; the optimistic-concurrency check reads it. Derived from the log.
//! * **`acked_seq`** is a high-water mark of seqs acknowledged as durable, written after
//!   each group-commit flush (so it lags by one flush). A log that ends below it has lost
//!   acknowledged events: a truncated tail.
//!
//! # Writes: one record per commit group, no sled batches
//!
//! sled 0.34's `apply_batch` and transactions switch on a process-wide reader/writer
//! lock that `flush` holds for the whole fsync, so a batch waits for every flush in
//! progress, and each batch also forces out the current I/O buffer. That defeats group
//! commit. Instead atomicity comes from single-key inserts: appends go to one writer
//! thread, which takes everything queued (up to ~8 KiB of events per record), checks
//! each append's expected versions (against the heads and the appends before it in the
//! group; a failed check rejects only that append), and writes the accepted appends as
//! **one** `log` insert, atomic in sled. Then it inserts their `stream_index` entries and
//! `stream_heads`. sled recovers a prefix of its write order, so after a crash only the
//! *last* record's index entries and heads can be missing or stale; open completes
//! exactly those (logged at `warn`). Any other disagreement is corruption.
//!
//! # Group commit
//!
//! A separate flusher thread loops: it takes the highest written seq, calls sled
//! `flush` once for everything written so far, then makes it durable itself (sled's flush
//! ends with `sync_file_range`, which survives a process crash but not a power cut):
//! `fdatasync` of sled's data file and fsync of any new sled blob file and of `blobs/`
//! (module `disk_sync`). Only then it publishes the new durable mark and answers exactly
//! the appenders it covers (a queue ordered by seq). While one flush runs, the writer
//! fills the next records. Readers and subscriptions never look past the durable mark.
//! After a failed insert, flush or sync the store is fail-stop: see [`StoreError::Io`].
//!
//! # Open and recovery
//!
//! Open checks the format version, that the log starts at seq 1, and, fully, the *tail*
//! (the last [`OpenValidation::Tail`] events, 10,000 by default: checksums, decoding,
//! contiguity, every index entry, the heads of the streams written there), and that the
//! log reaches `acked_seq`. That keeps open time independent of the log's length. The
//! rest of the log is verified as it is read: every read checks checksums and contiguity,
//! and the server reads all of it at start (replay), so damage in the middle fails the
//! start with the same typed [`StoreError::Corrupt`] at replay instead of at open.
//! [`OpenValidation::TailAndKeys`] adds a scan of every log key for gaps (reads the
//! whole log from disk, about a second per million records), [`OpenValidation::Full`]
//! checks everything, including orphan index entries and heads.
//!
//! A problem is never repaired silently: open fails with `Corrupt` naming the seq. An
//! operator who accepts losing everything after seq `n` reopens with
//! [`SledOptions::truncate_corrupt_tail_after`] = `Some(n)`; see there.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use ::sled::{Db, IVec, Tree};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn};

use crate::lock::MutexExt;

use super::codec::{
    self, index_key, index_key_into, index_value, log_key, open_record, parse_head_value,
    parse_index_key, parse_index_value, seq_of_log_key,
};
use super::disk_sync::{self, DiskSync, SyncCounters};
use super::recover;
use super::stats::LatencyHistogram;
use super::subscription::DurableLog;
use super::{
    AppendOutcome, Corruption, DurableMark, EventStore, RecordedEvent, StoreError, StoreStats,
    StreamAppend, StreamVersion, Subscription, check_expected, validate_batch,
};

pub(crate) const LOG_TREE: &str = "log";
pub(crate) const INDEX_TREE: &str = "stream_index";
pub(crate) const HEADS_TREE: &str = "stream_heads";
pub(crate) const META_TREE: &str = "meta";
pub(crate) const FORMAT_KEY: &[u8] = b"format_version";
pub(crate) const ACKED_KEY: &[u8] = b"acked_seq";

/// Appends are grouped into one record until it would exceed this many bytes of
/// events (a larger single append gets a record of its own). It keeps a full sled leaf of
/// the `log` tree (at most 17 entries, 20 right after a truncation merged two; sled splits
/// a leaf above 16) below sled's blob threshold (a serialized page of 131,020 bytes with
/// 512 KiB segments), so ordinary appends never make sled write a blob file (see
/// `disk_sync`): 20 × (6,144 + 9 record header + ~20 entry overhead) < 124,000.
const GROUP_RECORD_BYTES: usize = 6 * 1024;
/// Appends queued for the writer thread before `append` waits.
const QUEUE_DEPTH: usize = 4096;
/// Stream heads the writer remembers (see `GroupWriter::heads`); cleared when full.
const HEADS_CACHE: usize = 65_536;

/// How much of the log [`SledEventStore::open`] verifies before returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenValidation {
    /// Checksums, decoding, contiguity, index entries and stream heads of the last
    /// `events` events, plus the start of the log and the acknowledged mark. Open time
    /// does not grow with the log; the rest is verified by reads.
    Tail {
        /// Number of most recent events to verify fully.
        events: u64,
    },
    /// `Tail`, plus a scan of every log key for gaps. Reads the whole log from disk.
    TailAndKeys {
        /// Number of most recent events to verify fully.
        events: u64,
    },
    /// Everything: every record, every index entry and every head, and no orphans.
    /// O(events) point reads and memory proportional to the number of streams: for
    /// audits, not for every start.
    Full,
}

impl Default for OpenValidation {
    fn default() -> Self {
        OpenValidation::Tail { events: 10_000 }
    }
}

/// Options for [`SledEventStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// What to verify at open.
    pub validation: OpenValidation,
    /// Operator override for a damaged log: "I accept losing every event after seq `n`".
    ///
    /// With `Some(n)`, open verifies every record after `n` fully. If it finds problems
    /// and all of them lie after `n`, it deletes every record after `n` together with
    /// their index entries, resets the affected stream heads, logs each step at `warn`,
    /// and opens. If a problem lies at or before `n` open still fails; if nothing is
    /// wrong nothing is deleted. `n` must end a record (the error says which values are
    /// allowed otherwise) and is usually the seq named by the `Corrupt` error minus one.
    /// Truncation scans the whole index and all heads once. Meant to be exposed as a
    /// server flag, used once, then removed.
    pub truncate_corrupt_tail_after: Option<u64>,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// Interval of sled's own background flush and segment cleaning. Appends do not
    /// rely on it (they flush through group commit); it reclaims space.
    pub sled_flush_every_ms: Option<u64>,
    /// How long open waits for the database's file lock. sled finishes some writes on
    /// its own background threads, so a store dropped in this process may hold the lock
    /// for a moment after the drop; a lock held by another process fails open after
    /// this wait.
    pub lock_wait: Duration,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            validation: OpenValidation::default(),
            truncate_corrupt_tail_after: None,
            cache_capacity_bytes: 256 * 1024 * 1024,
            sled_flush_every_ms: Some(1000),
            lock_wait: Duration::from_secs(2),
        }
    }
}

/// The sled trees of one store. (No `Debug`: sled's would print every entry.)
pub(crate) struct Trees {
    pub(crate) db: Db,
    pub(crate) log: Tree,
    pub(crate) index: Tree,
    pub(crate) heads: Tree,
    pub(crate) meta: Tree,
}

/// Maps a sled error to a store error. sled's own corruption report names no seq, so
/// it becomes an I/O error of kind `InvalidData`.
pub(crate) fn sled_error(err: ::sled::Error) -> StoreError {
    match err {
        ::sled::Error::Io(io) => StoreError::from(io),
        other => StoreError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("sled: {other}"),
        )),
    }
}

pub(crate) fn corrupt(seq: u64, reason: Corruption) -> StoreError {
    StoreError::Corrupt { seq, reason }
}

/// The event store on sled. See the module documentation for format and guarantees.
///
/// Dropping it stops the writer and the flusher after a final flush (blocking for at
/// most one fsync) and closes the database; [`SledEventStore::close`] does the same off
/// the async runtime's threads and reports errors. Subscriptions then end with
/// [`StoreError::Closed`].
pub struct SledEventStore {
    shared: Arc<Shared>,
    /// Dropping it stops the writer thread.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
}

struct Shared {
    trees: Trees,
    /// Highest seq inserted into sled (durable or not).
    written: AtomicU64,
    /// The durable mark, for subscriptions and readers. Updated under `waiters`.
    durable: watch::Sender<DurableMark>,
    /// Appends (and flushes) waiting for durability, in seq order.
    waiters: std::sync::Mutex<VecDeque<Waiter>>,
    stop: AtomicBool,
    append_latency: LatencyHistogram,
    flush_latency: LatencyHistogram,
    /// The fsyncs done after sled's flushes.
    sync_counters: Arc<SyncCounters>,
}

/// Work for the writer thread.
enum Request {
    Append {
        batch: Vec<StreamAppend>,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Someone waiting until `seq` is durable.
struct Waiter {
    seq: u64,
    reply: Reply,
}

enum Reply {
    Append {
        outcome: AppendOutcome,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

impl Reply {
    /// Answers; a caller that stopped waiting (dropped its future) is no error.
    fn send(self, result: Result<(), StoreError>) {
        match self {
            Reply::Append { outcome, reply } => {
                let _ = reply.send(result.map(|()| outcome));
            }
            Reply::Flush(reply) => {
                let _ = reply.send(result);
            }
        }
    }
}

impl std::fmt::Debug for SledEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEventStore")
            .field("durable_seq", &self.shared.durable_seq())
            .field("written_seq", &self.shared.written.load(Ordering::Relaxed))
            .field("sync_counters", &self.shared.sync_counters)
            .finish_non_exhaustive()
    }
}

impl SledEventStore {
    /// Opens (or creates) the store in directory `path`, validating it as
    /// `options.validation` says. Fails with `Corrupt` naming the first damaged seq,
    /// `UnsupportedFormat`, or `Io` (also when another process has the store open).
    pub fn open(path: impl AsRef<Path>, options: SledOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let span = info_span!("event_store_open", path = %path.display());
        let _enter = span.enter();
        let started = Instant::now();
        disk_sync::create_dir_all_durable(path)?;
        let db = open_db(path, &options)?;
        let sync_counters = Arc::new(SyncCounters::default());
        let mut sync = DiskSync::open(path, Arc::clone(&sync_counters))?;
        let sled_open = started.elapsed();
        let trees = Trees {
            log: db.open_tree(LOG_TREE).map_err(sled_error)?,
            index: db.open_tree(INDEX_TREE).map_err(sled_error)?,
            heads: db.open_tree(HEADS_TREE).map_err(sled_error)?,
            meta: db.open_tree(META_TREE).map_err(sled_error)?,
            db,
        };
        let recovered = recover::recover(&trees, &mut sync, &options)?;
        let last_seq = recovered.last_seq;
        let (durable, _) = watch::channel(DurableMark {
            seq: last_seq,
            failed: None,
        });
        let shared = Arc::new(Shared {
            trees,
            written: AtomicU64::new(last_seq),
            durable,
            waiters: std::sync::Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            append_latency: LatencyHistogram::default(),
            flush_latency: LatencyHistogram::default(),
            sync_counters,
        });
        let flusher = std::thread::Builder::new()
            .name("event-store-flush".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_flusher(shared, sync)
            })?;
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("event-store-write".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let flusher = flusher.thread().clone();
                move || run_writer(shared, queue, flusher)
            });
        let writer = match writer {
            Ok(writer) => writer,
            Err(err) => {
                shared.stop.store(true, Ordering::Release);
                flusher.thread().unpark();
                let _ = flusher.join();
                return Err(err.into());
            }
        };
        info!(
            last_seq,
            scanned_records = recovered.scanned_records,
            fully_checked_events = recovered.fully_checked_events,
            sled_open_ms = sled_open.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event store open"
        );
        Ok(SledEventStore {
            shared,
            requests: Some(requests),
            writer: Some(writer),
            flusher: Some(flusher),
        })
    }

    /// Flushes, stops the threads and closes the database, off the runtime's threads.
    pub async fn close(self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .map_err(|e| StoreError::from(std::io::Error::other(e.to_string())))?;
        flushed
    }

    async fn submit(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests
            .send(request)
            .await
            .map_err(|_| self.shared.failure_or_closed())
    }
}

impl Drop for SledEventStore {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has handled everything queued;
        // then the flusher makes the rest durable and stops.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            error!("event store writer thread panicked");
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            if flusher.join().is_err() {
                error!("event store flusher thread panicked");
            }
        }
    }
}

/// Opens the sled database, waiting up to `options.lock_wait` for its file lock.
fn open_db(path: &Path, options: &SledOptions) -> Result<Db, StoreError> {
    let config = ::sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_capacity_bytes)
        .flush_every_ms(options.sled_flush_every_ms);
    let deadline = Instant::now() + options.lock_wait;
    let mut pause = Duration::from_millis(1);
    loop {
        match config.open() {
            // sled reports a held lock only through this message (kind `Other`).
            Err(::sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                debug!(error = %err, "event store locked; waiting");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result.map_err(sled_error),
        }
    }
}

/// An accepted append of the group being built.
struct Accepted {
    batch: Vec<StreamAppend>,
    /// Each stream's version before the append.
    before: Vec<u64>,
    outcome: AppendOutcome,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// State of the writer thread.
struct GroupWriter<'a> {
    shared: &'a Shared,
    flusher: Thread,
    next_seq: u64,
    failed: Option<StoreError>,
    group: Vec<Accepted>,
    group_bytes: usize,
    /// Streams written by the group: (version, seq of its last event).
    overlay: HashMap<String, (u64, u64)>,
    /// Heads written by earlier groups of this writer, so the version check of a stream
    /// written recently needs no sled read. Only this thread writes heads while the store
    /// is open, so an entry is never stale; a stream not in it is read from sled.
    heads: HashMap<String, (u64, u64)>,
    record: Vec<u8>,
    key: Vec<u8>,
}

/// The writer thread: groups whatever is queued into records. See the module docs.
fn run_writer(shared: Arc<Shared>, mut queue: mpsc::Receiver<Request>, flusher: Thread) {
    let _guard = PanicGuard {
        shared: &shared,
        thread: "writer",
    };
    let mut writer = GroupWriter::new(&shared, flusher);
    while let Some(request) = queue.blocking_recv() {
        writer.handle(request);
        while let Ok(request) = queue.try_recv() {
            writer.handle(request);
        }
        writer.write_group();
    }
}

impl<'a> GroupWriter<'a> {
    fn new(shared: &'a Shared, flusher: Thread) -> Self {
        GroupWriter {
            next_seq: shared.written.load(Ordering::Acquire) + 1,
            shared,
            flusher,
            failed: None,
            group: Vec::new(),
            group_bytes: 0,
            overlay: HashMap::new(),
            heads: HashMap::new(),
            record: Vec::new(),
            key: Vec::new(),
        }
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed
            .clone()
            .or_else(|| self.shared.durable.borrow().failed.clone())
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Append { batch, reply } => self.accept(batch, reply),
            Request::Flush { reply } => {
                self.write_group();
                let mut waiters = self.shared.waiters();
                let mark = self.shared.durable.borrow().clone();
                let target = self.next_seq - 1;
                if mark.seq >= target {
                    let _ = reply.send(Ok(()));
                } else if let Some(err) = self.failure() {
                    let _ = reply.send(Err(err));
                } else {
                    waiters.push_back(Waiter {
                        seq: target,
                        reply: Reply::Flush(reply),
                    });
                    drop(waiters);
                    self.flusher.unpark();
                }
            }
        }
    }

    /// Checks an append and adds it to the group, or answers it with the error.
    fn accept(
        &mut self,
        batch: Vec<StreamAppend>,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ) {
        if let Some(err) = self.failure() {
            let _ = reply.send(Err(err));
            return;
        }
        let bytes: usize = batch.iter().map(codec::encoded_len).sum();
        if !self.group.is_empty() && self.group_bytes + bytes > GROUP_RECORD_BYTES {
            self.write_group();
            if let Some(err) = self.failure() {
                let _ = reply.send(Err(err));
                return;
            }
        }
        let mut before = Vec::with_capacity(batch.len());
        for sa in &batch {
            let cached = self
                .overlay
                .get(&sa.stream)
                .or_else(|| self.heads.get(&sa.stream));
            let actual = match cached {
                Some(&(version, _)) => version,
                None => match self.shared.written_head(&sa.stream) {
                    Ok(head) => head.map_or(0, |(version, _)| version),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        return;
                    }
                },
            };
            if let Err(err) = check_expected(&sa.stream, sa.expected, actual) {
                let _ = reply.send(Err(err));
                return;
            }
            before.push(actual);
        }
        // Guards (no events) were checked above and write nothing.
        let (batch, before): (Vec<StreamAppend>, Vec<u64>) = batch
            .into_iter()
            .zip(before)
            .filter(|(sa, _)| !sa.events.is_empty())
            .unzip();
        let first_seq = self.next_seq;
        let mut seq = first_seq;
        let mut streams = Vec::with_capacity(batch.len());
        for (sa, &version) in batch.iter().zip(&before) {
            let n = sa.events.len() as u64;
            self.overlay
                .insert(sa.stream.clone(), (version + n, seq + n - 1));
            streams.push(StreamVersion {
                stream: sa.stream.clone(),
                version: version + n,
            });
            seq += n;
        }
        self.next_seq = seq;
        let outcome = AppendOutcome {
            first_seq,
            last_seq: seq - 1,
            streams,
        };
        self.group.push(Accepted {
            batch,
            before,
            outcome,
            reply,
        });
        self.group_bytes += bytes;
    }

    /// Writes the group as one record plus its index entries and heads, hands its
    /// appends to the flusher and starts a new group.
    fn write_group(&mut self) {
        if self.group.is_empty() {
            return;
        }
        let first_seq = self.group[0].outcome.first_seq;
        let last_seq = self.next_seq - 1;
        let parts: Vec<(&StreamAppend, u64)> = self
            .group
            .iter()
            .flat_map(|a| a.batch.iter().zip(a.before.iter().copied()))
            .collect();
        codec::encode_record(first_seq, &parts, &mut self.record);
        let written = insert_group(
            &self.shared.trees,
            first_seq,
            &parts,
            &self.record,
            &self.overlay,
            &mut self.key,
        );
        drop(parts);
        self.group_bytes = 0;
        match written {
            Ok(()) => {
                if self.heads.len() + self.overlay.len() > HEADS_CACHE {
                    self.heads.clear();
                }
                self.heads.extend(self.overlay.drain());
                // Queue the waiters before publishing the seq, so the flush that covers
                // it finds them.
                let mut waiters = self.shared.waiters();
                for a in self.group.drain(..) {
                    let reply = Reply::Append {
                        outcome: a.outcome,
                        reply: a.reply,
                    };
                    waiters.push_back(Waiter {
                        seq: last_seq,
                        reply,
                    });
                }
                drop(waiters);
                self.shared.written.store(last_seq, Ordering::Release);
                self.flusher.unpark();
            }
            Err(err) => {
                self.overlay.clear();
                self.heads.clear();
                let err = sled_error(err);
                error!(first_seq, error = %err, "event store write failed; refusing further appends");
                self.failed = Some(err.clone());
                // Earlier groups are intact and still become durable; mark the store
                // failed for new appends and subscribers.
                self.shared.durable.send_modify(|mark| {
                    mark.failed.get_or_insert_with(|| err.clone());
                });
                for a in self.group.drain(..) {
                    let _ = a.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// The inserts of one group: the record (the atomic commit point), then its index
/// entries, then the heads.
fn insert_group(
    trees: &Trees,
    first_seq: u64,
    parts: &[(&StreamAppend, u64)],
    record: &[u8],
    heads: &HashMap<String, (u64, u64)>,
    key: &mut Vec<u8>,
) -> ::sled::Result<()> {
    trees.log.insert(log_key(first_seq), record)?;
    let mut seq = first_seq;
    let mut pos = 0u32;
    for (sa, before) in parts {
        for version in before + 1..=before + sa.events.len() as u64 {
            index_key_into(key, &sa.stream, version);
            trees
                .index
                .insert(key.as_slice(), &index_value(seq, pos)[..])?;
            seq += 1;
            pos += 1;
        }
    }
    for (stream, &(version, seq)) in heads {
        trees
            .heads
            .insert(stream.as_bytes(), &codec::head_value(version, seq)[..])?;
    }
    Ok(())
}

impl Shared {
    fn durable_seq(&self) -> u64 {
        self.durable.borrow().seq
    }

    fn failure_or_closed(&self) -> StoreError {
        self.durable
            .borrow()
            .failed
            .clone()
            .unwrap_or(StoreError::Closed)
    }

    fn waiters(&self) -> MutexGuard<'_, VecDeque<Waiter>> {
        // Pushing and popping cannot leave the queue half-updated.
        self.waiters.locked()
    }

    /// Publishes `seq` as durable and answers exactly the waiters it covers.
    fn publish_durable(&self, seq: u64) {
        let mut waiters = self.waiters();
        self.durable.send_modify(|mark| mark.seq = seq);
        while waiters.front().is_some_and(|w| w.seq <= seq) {
            if let Some(w) = waiters.pop_front() {
                w.reply.send(Ok(()));
            }
        }
    }

    /// Marks the store failed and fails every waiter.
    fn publish_failure(&self, err: StoreError) {
        let mut waiters = self.waiters();
        self.durable.send_modify(|mark| {
            mark.failed.get_or_insert_with(|| err.clone());
        });
        for w in waiters.drain(..) {
            w.reply.send(Err(err.clone()));
        }
    }

    /// The stream's head as written (durable or not): (version, seq of last event).
    fn written_head(&self, stream: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(value) = self
            .trees
            .heads
            .get(stream.as_bytes())
            .map_err(sled_error)?
        else {
            return Ok(None);
        };
        match parse_head_value(&value) {
            Some(head) => Ok(Some(head)),
            None => Err(corrupt(
                0,
                Corruption::HeadMismatch(format!(
                    "head of stream `{stream}` is {} bytes, not 16",
                    value.len()
                )),
            )),
        }
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let upto = self.durable_seq();
        let Some((version, seq)) = self.written_head(stream)? else {
            return Ok(0);
        };
        if seq <= upto {
            return Ok(version);
        }
        // The head is not durable yet: the durable version is the last indexed version
        // whose seq is durable (at most a flush's worth of entries back).
        let range = index_key(stream, 1)..index_key(stream, version);
        for item in self.trees.index.range(range).rev() {
            let (key, value) = item.map_err(sled_error)?;
            let (seq, _) = parse_index_value(&value).ok_or_else(|| bad_index_value(stream))?;
            if seq <= upto {
                let (_, version) = parse_index_key(&key).ok_or_else(|| bad_index_value(stream))?;
                return Ok(version);
            }
        }
        Ok(0)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let upto = self.durable_seq();
        let first_version = from_version.max(1);
        let range = index_key(stream, first_version)..=index_key(stream, u64::MAX);
        let mut out = Vec::new();
        // Events of the record read last; multi-event records are decoded once.
        let mut cached: Option<(u64, Vec<Option<RecordedEvent>>)> = None;
        for (expected_version, item) in (first_version..).zip(self.trees.index.range(range)) {
            let (key, value) = item.map_err(sled_error)?;
            let (seq, pos) = parse_index_value(&value).ok_or_else(|| bad_index_value(stream))?;
            if seq > upto {
                break;
            }
            let version = parse_index_key(&key).map_or(0, |(_, v)| v);
            if version != expected_version {
                return Err(corrupt(
                    seq,
                    Corruption::IndexMismatch(format!(
                        "stream `{stream}` jumps from version {} to {version}",
                        expected_version - 1
                    )),
                ));
            }
            let record_key = seq - u64::from(pos);
            if cached.as_ref().is_none_or(|(k, _)| *k != record_key) {
                cached = Some((record_key, self.decode_record(record_key, seq)?));
            }
            let event = cached
                .as_mut()
                .and_then(|(_, events)| events.get_mut(pos as usize))
                .and_then(Option::take)
                .filter(|e| e.stream == stream && e.stream_version == version && e.seq == seq)
                .ok_or_else(|| {
                    corrupt(
                        seq,
                        Corruption::IndexMismatch(format!(
                            "index entry for stream `{stream}` version {version} points at \
                             seq {seq}, which holds another event"
                        )),
                    )
                })?;
            out.push(event);
        }
        Ok(out)
    }

    /// All events of the record stored under `record_key`, needed for `seq`.
    fn decode_record(
        &self,
        record_key: u64,
        seq: u64,
    ) -> Result<Vec<Option<RecordedEvent>>, StoreError> {
        let value = self.trees.log.get(log_key(record_key)).map_err(sled_error)?.ok_or_else(|| {
            corrupt(
                seq,
                Corruption::IndexMismatch(format!(
                    "the index points at seq {seq} in a record at {record_key} that does not exist"
                )),
            )
        })?;
        let reader = open_record(record_key, &value).map_err(|r| corrupt(record_key, r))?;
        reader
            .enumerate()
            .map(|(i, ev)| {
                ev.map(|ev| Some(ev.to_recorded(record_key + i as u64)))
                    .map_err(|r| corrupt(record_key, r))
            })
            .collect()
    }
}

fn bad_index_value(stream: &str) -> StoreError {
    corrupt(
        0,
        Corruption::IndexMismatch(format!("unparsable index entry of stream `{stream}`")),
    )
}

/// Up to `limit` events with `seq >= from`, none beyond `upto`, verifying checksums and
/// key contiguity on the way.
pub(crate) fn read_range(
    log: &Tree,
    from: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let from = from.max(1);
    if from > upto || limit == 0 {
        return Ok(Vec::new());
    }
    let want = usize::try_from(upto - from + 1)
        .unwrap_or(usize::MAX)
        .min(limit);
    let mut out = Vec::with_capacity(want.min(64 * 1024));
    // The record holding `from` is the last one whose key is <= from.
    let start = match log.range(..=log_key(from)).next_back() {
        Some(item) => {
            let (key, _) = item.map_err(sled_error)?;
            seq_of_log_key(&key).unwrap_or(from)
        }
        None => {
            let next = first_key(log)?.unwrap_or(upto + 1);
            return Err(corrupt(from, Corruption::Missing { next_present: next }));
        }
    };
    let mut expected = start;
    for item in log.range(log_key(start)..) {
        let (key, value): (IVec, IVec) = item.map_err(sled_error)?;
        let first = seq_of_log_key(&key).ok_or_else(|| {
            corrupt(
                expected,
                Corruption::Undecodable(format!("log key of {} bytes", key.len())),
            )
        })?;
        if first != expected {
            return Err(corrupt(
                expected,
                Corruption::Missing {
                    next_present: first,
                },
            ));
        }
        let reader = open_record(first, &value).map_err(|r| corrupt(first, r))?;
        expected = first + u64::from(reader.event_count());
        for (i, ev) in reader.enumerate() {
            let ev = ev.map_err(|r| corrupt(first, r))?;
            let seq = first + i as u64;
            if seq >= from {
                out.push(ev.to_recorded(seq));
                if out.len() == want {
                    return Ok(out);
                }
            }
        }
    }
    // The log ended although the durable mark says there is more.
    Err(corrupt(
        expected,
        Corruption::TruncatedTail {
            last_present: expected - 1,
            acknowledged: upto,
        },
    ))
}

fn first_key(log: &Tree) -> Result<Option<u64>, StoreError> {
    Ok(log
        .first()
        .map_err(sled_error)?
        .and_then(|(k, _)| seq_of_log_key(&k)))
}

impl DurableLog for Shared {
    fn read_durable(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        read_range(&self.trees.log, from_seq, self.durable_seq(), limit)
    }
}

/// Fails the store if one of its threads panics, so nobody waits forever.
struct PanicGuard<'a> {
    shared: &'a Shared,
    thread: &'static str,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let what = format!("event store {} thread panicked", self.thread);
            error!("{what}");
            self.shared
                .publish_failure(StoreError::from(std::io::Error::other(what)));
        }
    }
}

/// The group-commit loop. See the module documentation.
fn run_flusher(shared: Arc<Shared>, mut sync: DiskSync) {
    let _guard = PanicGuard {
        shared: &shared,
        thread: "flusher",
    };
    let mut durable = shared.durable_seq();
    loop {
        let target = shared.written.load(Ordering::Acquire);
        if target > durable {
            let started = Instant::now();
            match durable_flush(&shared.trees, &mut sync) {
                Ok(bytes) => {
                    let elapsed = started.elapsed();
                    shared.flush_latency.record(elapsed);
                    durable = target;
                    shared.publish_durable(target);
                    debug!(
                        durable_seq = target,
                        bytes,
                        micros = elapsed.as_micros() as u64,
                        "flushed"
                    );
                    // Made durable by the next flush; see `acked_seq` in the format.
                    if let Err(err) = shared
                        .trees
                        .meta
                        .insert(ACKED_KEY, &target.to_be_bytes()[..])
                    {
                        fail(&shared, "recording the acknowledged seq", sled_error(err));
                        return;
                    }
                }
                Err(err) => {
                    fail(&shared, "flush", err);
                    return;
                }
            }
            continue;
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        std::thread::park();
    }
    if let Err(err) = durable_flush(&shared.trees, &mut sync) {
        warn!(error = %err, "final flush of the event store failed");
    }
}

/// sled's flush, then what makes it survive a power cut (see `disk_sync`). Returns the
/// bytes sled wrote.
pub(crate) fn durable_flush(trees: &Trees, sync: &mut DiskSync) -> Result<usize, StoreError> {
    let bytes = trees.db.flush().map_err(sled_error)?;
    sync.sync()?;
    Ok(bytes)
}

fn fail(shared: &Shared, what: &str, err: StoreError) {
    error!(error = %err, "event store {what} failed; refusing further appends");
    shared.publish_failure(err);
}

impl EventStore for SledEventStore {
    fn append(&self, batch: Vec<StreamAppend>) -> BoxFuture<'_, Result<AppendOutcome, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            validate_batch(&batch)?;
            let (reply, outcome) = oneshot::channel();
            self.submit(Request::Append { batch, reply }).await?;
            let outcome = outcome
                .await
                .map_err(|_| self.shared.failure_or_closed())??;
            self.shared.append_latency.record(started.elapsed());
            Ok(outcome)
        })
    }

    fn last_seq(&self) -> u64 {
        self.shared.durable_seq()
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.shared.stream_version(stream)
    }

    fn read_from(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.shared.read_durable(from_seq, limit)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.shared.read_stream(stream, from_version)
    }

    fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription::new(&self.shared, &self.shared.durable, from_seq)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, done) = oneshot::channel();
            self.submit(Request::Flush { reply }).await?;
            done.await.map_err(|_| self.shared.failure_or_closed())?
        })
    }

    fn stats(&self) -> StoreStats {
        let events = self.shared.durable_seq();
        let written = self.shared.written.load(Ordering::Acquire);
        StoreStats {
            events,
            pending_events: written.saturating_sub(events),
            disk_bytes: self.shared.trees.db.size_on_disk().unwrap_or(0),
            append_latency: self.shared.append_latency.snapshot(),
            flush_latency: self.shared.flush_latency.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ExpectedVersion, NewEvent};

    fn shared(dir: &Path) -> Shared {
        let db = ::sled::Config::new().path(dir).open().unwrap();
        let (durable, _) = watch::channel(DurableMark::default());
        Shared {
            trees: Trees {
                log: db.open_tree(LOG_TREE).unwrap(),
                index: db.open_tree(INDEX_TREE).unwrap(),
                heads: db.open_tree(HEADS_TREE).unwrap(),
                meta: db.open_tree(META_TREE).unwrap(),
                db,
            },
            written: AtomicU64::new(0),
            durable,
            waiters: std::sync::Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            append_latency: LatencyHistogram::default(),
            flush_latency: LatencyHistogram::default(),
            sync_counters: Arc::default(),
        }
    }

    fn append(
        stream: &str,
        expected: ExpectedVersion,
        payload_len: usize,
    ) -> (
        Request,
        oneshot::Receiver<Result<AppendOutcome, StoreError>>,
    ) {
        let event = NewEvent {
            event_type: "E".into(),
            schema_version: 1,
            payload: vec![7; payload_len],
            actor: String::new(),
            recorded_at_ms: 0,
        };
        let (reply, rx) = oneshot::channel();
        let batch = vec![StreamAppend::new(stream, expected, vec![event])];
        (Request::Append { batch, reply }, rx)
    }

    fn record_keys(shared: &Shared) -> Vec<u64> {
        shared
            .trees
            .log
            .iter()
            .keys()
            .map(|k| seq_of_log_key(&k.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn queued_appends_become_one_record_and_conflicts_see_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let mut writer = GroupWriter::new(&shared, std::thread::current());
        let (a1, a1_rx) = append("a", ExpectedVersion::NoStream, 10);
        let (b1, b1_rx) = append("b", ExpectedVersion::Any, 10);
        let (a2, a2_rx) = append("a", ExpectedVersion::Exact(1), 10);
        // Checked against the group, which already took `a` to version 2.
        let (stale, mut stale_rx) = append("a", ExpectedVersion::Exact(1), 10);
        for request in [a1, b1, a2, stale] {
            writer.handle(request);
        }
        assert!(matches!(
            stale_rx.try_recv().unwrap(),
            Err(StoreError::Conflict { actual: 2, .. })
        ));
        writer.write_group();
        assert_eq!(record_keys(&shared), vec![1]);
        assert_eq!(shared.written.load(Ordering::Acquire), 3);
        assert_eq!(shared.written_head("a").unwrap(), Some((2, 3)));
        assert_eq!(shared.written_head("b").unwrap(), Some((1, 2)));

        // Nothing is answered before the flusher publishes durability.
        let mut rxs = [a1_rx, b1_rx, a2_rx];
        assert!(rxs.iter_mut().all(|rx| rx.try_recv().is_err()));
        shared.publish_durable(3);
        let outcomes: Vec<(u64, u64)> = rxs
            .iter_mut()
            .map(|rx| {
                let o = rx.try_recv().unwrap().unwrap();
                (o.first_seq, o.streams[0].version)
            })
            .collect();
        assert_eq!(outcomes, vec![(1, 1), (2, 1), (3, 2)]);
        assert_eq!(shared.read_stream("a", 1).unwrap().len(), 2);
    }

    fn one_event(stream: &str, payload_len: usize) -> Vec<StreamAppend> {
        vec![StreamAppend::new(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent {
                event_type: "E".into(),
                schema_version: 1,
                payload: vec![7; payload_len],
                actor: String::new(),
                recorded_at_ms: 0,
            }],
        )]
    }

    #[tokio::test]
    async fn every_acknowledged_append_was_fdatasynced() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledEventStore::open(dir.path().join("events"), SledOptions::default()).unwrap();
        let counters = Arc::clone(&store.shared.sync_counters);
        // Open made the format marker durable through the same path.
        let at_open = counters.data_syncs.load(Ordering::Relaxed);
        assert!(at_open >= 1);
        for i in 0..3 {
            store.append(one_event("s", 10)).await.unwrap();
            // One flush per sequential append, each followed by its fdatasync.
            assert_eq!(counters.data_syncs.load(Ordering::Relaxed), at_open + i + 1);
        }
        assert_eq!(store.stats().flush_latency.count, 3);
        // Small records never make sled write a blob file.
        assert_eq!(counters.blob_syncs.load(Ordering::Relaxed), 0);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn blob_files_of_large_appends_are_synced_before_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let store = SledEventStore::open(&path, SledOptions::default()).unwrap();
        let counters = Arc::clone(&store.shared.sync_counters);
        // Far above sled's blob threshold: sled writes it to `blobs/`.
        store.append(one_event("big", 512 * 1024)).await.unwrap();
        let blobs = std::fs::read_dir(path.join("blobs")).unwrap().count();
        assert!(blobs >= 1, "sled wrote no blob file");
        assert!(counters.blob_syncs.load(Ordering::Relaxed) >= 1);
        store.close().await.unwrap();
        let store = SledEventStore::open(&path, SledOptions::default()).unwrap();
        assert_eq!(store.read_from(1, 10).unwrap()[0].payload.len(), 512 * 1024);
    }

    #[test]
    fn later_groups_check_versions_against_the_written_heads() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let mut writer = GroupWriter::new(&shared, std::thread::current());
        writer.handle(append("a", ExpectedVersion::NoStream, 10).0);
        writer.write_group();
        assert_eq!(writer.heads.get("a"), Some(&(1, 1)));
        // A new group: the check sees the head the first group wrote.
        let (stale, mut stale_rx) = append("a", ExpectedVersion::NoStream, 10);
        writer.handle(stale);
        assert!(matches!(
            stale_rx.try_recv().unwrap(),
            Err(StoreError::Conflict { actual: 1, .. })
        ));
        let (next, mut next_rx) = append("a", ExpectedVersion::Exact(1), 10);
        writer.handle(next);
        writer.write_group();
        shared.publish_durable(2);
        assert_eq!(next_rx.try_recv().unwrap().unwrap().streams[0].version, 2);
        assert_eq!(shared.written_head("a").unwrap(), Some((2, 2)));
        // A stream the writer has not seen is read from sled.
        let mut fresh = GroupWriter::new(&shared, std::thread::current());
        let (again, mut again_rx) = append("a", ExpectedVersion::Exact(1), 10);
        fresh.handle(again);
        assert!(matches!(
            again_rx.try_recv().unwrap(),
            Err(StoreError::Conflict { actual: 2, .. })
        ));
    }

    #[test]
    fn groups_are_split_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let mut writer = GroupWriter::new(&shared, std::thread::current());
        let big = GROUP_RECORD_BYTES / 2 - 100;
        for stream in ["a", "b", "c", "d", "e"] {
            writer.handle(append(stream, ExpectedVersion::Any, big).0);
        }
        writer.write_group();
        // Two appends fit under the limit; a larger single append gets a record of its own.
        assert_eq!(record_keys(&shared), vec![1, 3, 5]);
        writer.handle(append("f", ExpectedVersion::Any, 3 * GROUP_RECORD_BYTES).0);
        writer.handle(append("g", ExpectedVersion::Any, 1).0);
        writer.write_group();
        assert_eq!(record_keys(&shared), vec![1, 3, 5, 6, 7]);
        shared.publish_durable(7);
        let seqs: Vec<u64> = shared
            .read_durable(1, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    }
}

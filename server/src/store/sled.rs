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
//! | `meta`         | `format_version` (ASCII)                        | `u32`, currently 2         |
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
//! * **`acked_seq`** is a high-water mark of seqs acknowledged as durable, written with
//!   each checkpoint (so it lags by up to a write-ahead log segment; the log's own frames
//!   say what was synced after it). A log that ends below it, once the write-ahead log is
//!   applied, has lost acknowledged events: a truncated tail.
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
//! # Group commit, through a write-ahead log
//!
//! The writer puts each record first into the store's own write-ahead log (module `wal`,
//! in `<store>/wal/`), then into sled (record, index entries, heads; in memory). A separate
//! flusher thread loops: it takes the highest seq in the log, `fdatasync`s the log segment
//! once for everything written so far, and publishes the new durable mark — the lower of
//! what is synced in the log and what is inserted into sled — answering exactly the
//! appenders it covers (a queue ordered by seq). While one sync runs, the writer fills the
//! next records. Readers and subscriptions never look past the durable mark. sled itself is
//! made durable by a third thread, the checkpointer, when the log closed a segment and at
//! close: sled's `flush` (which ends with `sync_file_range`, surviving a process crash but
//! not a power cut) plus what `disk_sync` adds (`fdatasync` of sled's data file, fsync of
//! new blob files and `blobs/`). The log reuses a segment only once a checkpoint covers
//! it. After a failed insert, write, sync or checkpoint the store is fail-stop: see
//! [`StoreError::Io`].
//!
//! # Open and recovery
//!
//! Open checks the format version, applies the write-ahead log's records that sled lacks
//! (sled keeps only a prefix of what it wrote when the process or machine dies before a
//! checkpoint) and checkpoints them, then checks that the log starts at seq 1, and, fully,
//! the *tail*
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
use super::wal::{self, Marks, WalSync, WalWriter};
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
    /// Size of a write-ahead log segment (see `wal`); at least 1 MiB.
    pub wal_segment_bytes: u64,
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
            wal_segment_bytes: wal::SEGMENT_BYTES,
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
    checkpointer: Option<JoinHandle<()>>,
    /// The write-ahead log's directory, retired after a clean close.
    wal_dir: std::path::PathBuf,
}

struct Shared {
    trees: Trees,
    /// Highest seq inserted into sled (durable or not), index entries and heads included.
    written: AtomicU64,
    /// Highest seq whose frame is in the write-ahead log (durable or not).
    wal_written: AtomicU64,
    /// Highest seq whose frame the flusher has `fdatasync`ed.
    wal_synced: AtomicU64,
    /// Highest seq sled itself is durable up to (the last checkpoint).
    checkpointed: AtomicU64,
    /// Set by the writer when closed log segments wait for a checkpoint.
    checkpoint_wanted: AtomicBool,
    /// Held while syncing the log: by the flusher, or by the writer when it has nothing
    /// else to do (it then saves the hand-over to the flusher).
    sync_lock: std::sync::Mutex<()>,
    /// The durable mark, for subscriptions and readers. Updated under `waiters`.
    durable: watch::Sender<DurableMark>,
    /// Appends (and flushes) waiting for durability, in seq order.
    waiters: std::sync::Mutex<VecDeque<Waiter>>,
    stop: AtomicBool,
    append_latency: LatencyHistogram,
    flush_latency: LatencyHistogram,
    /// The fsyncs done: of the write-ahead log, and of sled at checkpoints.
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
        recover::check_format(&trees, &mut sync)?;
        let wal_dir = path.join(WAL_DIR);
        let replayed = replay_wal(&trees, &mut sync, &wal_dir)?;
        let recovered = recover::recover(&trees, &mut sync, &options)?;
        let truncated =
            recovered.last_seq < replayed.last_seq || options.truncate_corrupt_tail_after.is_some();
        let wal = WalWriter::start(&wal_dir, truncated, options.wal_segment_bytes)?;
        let last_seq = recovered.last_seq;
        let shared = Arc::new(Shared::new(trees, last_seq, sync_counters));
        let (writer, flusher, checkpointer, requests) = start_threads(&shared, wal, sync)?;
        info!(
            last_seq,
            scanned_records = recovered.scanned_records,
            fully_checked_events = recovered.fully_checked_events,
            wal_records_replayed = replayed.records,
            wal_segments = replayed.segments,
            sled_open_ms = sled_open.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event store open"
        );
        Ok(SledEventStore {
            shared,
            requests: Some(requests),
            writer: Some(writer),
            flusher: Some(flusher),
            checkpointer: Some(checkpointer),
            wal_dir,
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
        // then the flusher makes the rest durable and the checkpointer writes sled out.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            error!("event store writer thread panicked");
        }
        self.shared.stop.store(true, Ordering::Release);
        for (thread, name) in [
            (self.flusher.take(), "flusher"),
            (self.checkpointer.take(), "checkpointer"),
        ] {
            if let Some(thread) = thread {
                thread.thread().unpark();
                if thread.join().is_err() {
                    error!("event store {name} thread panicked");
                }
            }
        }
        // sled holds everything durably only if the final checkpoint covered it all.
        let written = self.shared.written.load(Ordering::Acquire);
        let clean = self.shared.durable.borrow().failed.is_none()
            && self.shared.checkpointed.load(Ordering::Acquire) >= written;
        if clean && let Err(err) = wal::retire(&self.wal_dir) {
            warn!(error = %err, "could not delete the write-ahead log after closing; the next open replays it");
        }
    }
}

/// The store's directory of write-ahead log segments (see `wal`).
const WAL_DIR: &str = "wal";

/// Applies the write-ahead log's records that sled lacks, and makes sled durable with
/// them, so that the log can start over. See `wal::replay`.
fn replay_wal(
    trees: &Trees,
    sync: &mut DiskSync,
    wal_dir: &Path,
) -> Result<wal::Replayed, StoreError> {
    let sled_last = match trees.log.last().map_err(sled_error)? {
        None => None,
        Some((key, value)) => {
            let first = seq_of_log_key(&key).unwrap_or(1);
            let count = codec::peek_count(&value).map_or(1, u64::from).max(1);
            Some((first, first + count - 1))
        }
    };
    let mut failure = None;
    let replayed = wal::replay(wal_dir, sled_last, |first_seq, record| {
        apply_record(trees, first_seq, record).map_err(|err| {
            failure = Some(err);
            std::io::Error::other("applying a logged record to sled failed")
        })
    });
    if let Some(err) = failure {
        return Err(err);
    }
    let replayed = match replayed {
        Ok(replayed) => replayed,
        Err(wal::ReplayError::Io(err)) => return Err(err.into()),
        Err(wal::ReplayError::Hole { after, found }) => {
            error!(
                after,
                found, "write-ahead log lost records that were acknowledged; refusing to open"
            );
            return Err(corrupt(
                after + 1,
                Corruption::Missing {
                    next_present: found,
                },
            ));
        }
    };
    if replayed.records > 0 {
        info!(
            records = replayed.records,
            last_seq = replayed.last_seq,
            "applied the write-ahead log to sled"
        );
        durable_flush(trees, sync)?;
    }
    Ok(replayed)
}

/// Inserts one record with its index entries and heads, as the writer does, from the
/// record alone (idempotent: the same keys get the same values).
fn apply_record(trees: &Trees, first_seq: u64, record: &[u8]) -> Result<(), StoreError> {
    let reader = open_record(first_seq, record).map_err(|r| corrupt(first_seq, r))?;
    let mut heads: HashMap<String, (u64, u64)> = HashMap::new();
    let mut key = Vec::new();
    trees
        .log
        .insert(log_key(first_seq), record)
        .map_err(sled_error)?;
    for (pos, event) in reader.enumerate() {
        let event = event.map_err(|r| corrupt(first_seq, r))?;
        let seq = first_seq + pos as u64;
        index_key_into(&mut key, event.stream, event.stream_version);
        trees
            .index
            .insert(key.as_slice(), &index_value(seq, pos as u32)[..])
            .map_err(sled_error)?;
        heads.insert(event.stream.to_owned(), (event.stream_version, seq));
    }
    for (stream, (version, seq)) in heads {
        trees
            .heads
            .insert(stream.as_bytes(), &codec::head_value(version, seq)[..])
            .map_err(sled_error)?;
    }
    Ok(())
}

impl Shared {
    fn new(trees: Trees, last_seq: u64, sync_counters: Arc<SyncCounters>) -> Shared {
        let (durable, _) = watch::channel(DurableMark {
            seq: last_seq,
            failed: None,
        });
        Shared {
            trees,
            written: AtomicU64::new(last_seq),
            wal_written: AtomicU64::new(last_seq),
            wal_synced: AtomicU64::new(last_seq),
            checkpointed: AtomicU64::new(last_seq),
            checkpoint_wanted: AtomicBool::new(false),
            sync_lock: std::sync::Mutex::new(()),
            durable,
            waiters: std::sync::Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            append_latency: LatencyHistogram::default(),
            flush_latency: LatencyHistogram::default(),
            sync_counters,
        }
    }
}

type Threads = (
    JoinHandle<()>,
    JoinHandle<()>,
    JoinHandle<()>,
    mpsc::Sender<Request>,
);

/// Starts the checkpointer, the flusher and the writer (in that order, each knowing the
/// ones before). If one cannot start, the started ones are stopped.
fn start_threads(
    shared: &Arc<Shared>,
    wal: WalWriter,
    sync: DiskSync,
) -> Result<Threads, StoreError> {
    let stop = |threads: Vec<JoinHandle<()>>| {
        shared.stop.store(true, Ordering::Release);
        for thread in threads {
            thread.thread().unpark();
            let _ = thread.join();
        }
    };
    let checkpointer = std::thread::Builder::new()
        .name("event-store-checkpoint".into())
        .spawn({
            let shared = Arc::clone(shared);
            move || run_checkpointer(shared, sync)
        })?;
    let flusher = std::thread::Builder::new()
        .name("event-store-flush".into())
        .spawn({
            let shared = Arc::clone(shared);
            let wal_sync = wal.sync_handle();
            move || run_flusher(shared, wal_sync)
        });
    let flusher = match flusher {
        Ok(flusher) => flusher,
        Err(err) => {
            stop(vec![checkpointer]);
            return Err(err.into());
        }
    };
    let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
    let writer = std::thread::Builder::new()
        .name("event-store-write".into())
        .spawn({
            let shared = Arc::clone(shared);
            let others = Others {
                flusher: flusher.thread().clone(),
                checkpointer: checkpointer.thread().clone(),
            };
            move || run_writer(shared, queue, wal, others)
        });
    match writer {
        Ok(writer) => Ok((writer, flusher, checkpointer, requests)),
        Err(err) => {
            stop(vec![flusher, checkpointer]);
            Err(err.into())
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
    first_seq: u64,
}

/// The threads the writer wakes.
struct Others {
    flusher: Thread,
    checkpointer: Thread,
}

/// State of the writer thread.
struct GroupWriter<'a> {
    shared: &'a Shared,
    wal: WalWriter,
    wal_sync: WalSync,
    others: Others,
    /// Nothing is queued behind the group being written: the writer syncs the log itself
    /// instead of waking the flusher (one thread hand-over less for a lone appender).
    quiet: bool,
    next_seq: u64,
    failed: Option<StoreError>,
    group: Vec<Accepted>,
    /// The answers owed to the group's appends, in the same order.
    replies: Vec<Reply>,
    group_bytes: usize,
    /// Heads as of the last accepted append, (version, seq of its last event), for the
    /// streams this writer wrote recently, so their version check needs no sled read. Only
    /// this thread writes heads while the store is open, so an entry is never stale; a
    /// stream not in it is read from sled. Trimmed only between groups (the group's streams
    /// are in sled then), cleared on a failed write.
    heads: HashMap<String, (u64, u64)>,
    record: Vec<u8>,
    key: Vec<u8>,
}

/// The writer thread: groups whatever is queued into records. See the module docs.
fn run_writer(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Request>,
    wal: WalWriter,
    others: Others,
) {
    let _guard = PanicGuard {
        shared: &shared,
        thread: "writer",
    };
    let mut writer = GroupWriter::new(&shared, wal, others);
    while let Some(request) = queue.blocking_recv() {
        writer.quiet = false;
        writer.handle(request);
        while let Ok(request) = queue.try_recv() {
            writer.handle(request);
        }
        writer.quiet = queue.is_empty();
        writer.write_group();
    }
}

impl<'a> GroupWriter<'a> {
    fn new(shared: &'a Shared, wal: WalWriter, others: Others) -> Self {
        GroupWriter {
            next_seq: shared.written.load(Ordering::Acquire) + 1,
            shared,
            wal_sync: wal.sync_handle(),
            wal,
            others,
            quiet: false,
            failed: None,
            group: Vec::new(),
            replies: Vec::new(),
            group_bytes: 0,
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
                    self.others.flusher.unpark();
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
            let actual = match self.heads.get(&sa.stream) {
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
            let head = (version + n, seq + n - 1);
            match self.heads.get_mut(&sa.stream) {
                Some(known) => *known = head,
                None => {
                    self.heads.insert(sa.stream.clone(), head);
                }
            }
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
            first_seq,
        });
        self.replies.push(Reply::Append { outcome, reply });
        self.group_bytes += bytes;
    }

    /// Writes the group as one record: first to the write-ahead log (the flusher syncs it
    /// meanwhile), then into sled with its index entries and heads. Its appends are
    /// answered once both are done (see `Shared::publish_durable`).
    fn write_group(&mut self) {
        if self.group.is_empty() {
            return;
        }
        let first_seq = self.group[0].first_seq;
        let last_seq = self.next_seq - 1;
        let parts: Vec<(&StreamAppend, u64)> = self
            .group
            .iter()
            .flat_map(|a| a.batch.iter().zip(a.before.iter().copied()))
            .collect();
        codec::encode_record(first_seq, &parts, &mut self.record);
        let marks = Marks {
            synced: self.shared.wal_synced.load(Ordering::Acquire),
            checkpointed: self.shared.checkpointed.load(Ordering::Acquire),
        };
        let rolled_over = match self.wal.write(first_seq, last_seq, &self.record, marks) {
            Ok(rolled_over) => rolled_over,
            Err(err) => {
                drop(parts);
                self.fail_group(first_seq, err.into());
                return;
            }
        };
        // Queue the waiters before publishing the seq, so the sync that covers it finds
        // them.
        let mut waiters = self.shared.waiters();
        for reply in self.replies.drain(..) {
            waiters.push_back(Waiter {
                seq: last_seq,
                reply,
            });
        }
        drop(waiters);
        self.shared.wal_written.store(last_seq, Ordering::Release);
        if !self.quiet {
            self.others.flusher.unpark();
        }
        if rolled_over {
            // The closed segment is reused once sled is durable past it.
            self.shared.checkpoint_wanted.store(true, Ordering::Release);
            self.others.checkpointer.unpark();
        }
        let written = insert_group(
            &self.shared.trees,
            first_seq,
            &parts,
            &self.record,
            &mut self.key,
        );
        drop(parts);
        self.group.clear();
        self.group_bytes = 0;
        match written {
            Ok(()) => {
                if self.heads.len() > HEADS_CACHE {
                    self.heads.clear();
                }
                self.shared.written.store(last_seq, Ordering::Release);
                self.shared.publish_durable();
                if self.quiet {
                    self.sync_here();
                }
            }
            Err(err) => self.fail_group(first_seq, sled_error(err)),
        }
    }

    /// Syncs the log on this thread if no sync runs; else the flusher does it next.
    fn sync_here(&mut self) {
        let guard = match self.shared.sync_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => {
                self.others.flusher.unpark();
                return;
            }
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        if let Err(err) = sync_wal(self.shared, &self.wal_sync) {
            self.failed = Some(err.clone());
            fail(self.shared, "write-ahead log sync", err);
        }
        drop(guard);
    }

    /// A write failed: the store refuses everything from now on (fail-stop). The group's
    /// appends get the error (whether queued for durability already or not); earlier
    /// groups are intact and still become durable.
    fn fail_group(&mut self, first_seq: u64, err: StoreError) {
        self.heads.clear();
        self.group_bytes = 0;
        error!(first_seq, error = %err, "event store write failed; refusing further appends");
        self.failed = Some(err.clone());
        self.shared.durable.send_modify(|mark| {
            mark.failed.get_or_insert_with(|| err.clone());
        });
        self.group.clear();
        for reply in self.replies.drain(..) {
            reply.send(Err(err.clone()));
        }
        let mut waiters = self.shared.waiters();
        while waiters.back().is_some_and(|w| w.seq >= first_seq) {
            if let Some(w) = waiters.pop_back() {
                w.reply.send(Err(err.clone()));
            }
        }
    }
}

/// The inserts of one group: the record (the atomic commit point), then its index
/// entries, then the heads (a stream written twice in the group gets its later head last).
fn insert_group(
    trees: &Trees,
    first_seq: u64,
    parts: &[(&StreamAppend, u64)],
    record: &[u8],
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
    let mut seq = first_seq;
    for (sa, before) in parts {
        let n = sa.events.len() as u64;
        seq += n;
        trees.heads.insert(
            sa.stream.as_bytes(),
            &codec::head_value(before + n, seq - 1)[..],
        )?;
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

    /// Publishes as durable what is both synced in the write-ahead log and inserted into
    /// sled, and answers exactly the waiters it covers. Called by the flusher after a sync
    /// and by the writer after its inserts; whichever comes second answers.
    fn publish_durable(&self) {
        let mut waiters = self.waiters();
        let seq = self
            .wal_synced
            .load(Ordering::Acquire)
            .min(self.written.load(Ordering::Acquire));
        let seq = seq.max(self.durable.borrow().seq);
        self.durable.send_if_modified(|mark| {
            let advanced = seq > mark.seq;
            mark.seq = seq;
            advanced
        });
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

/// The group-commit loop: syncs the write-ahead log up to what the writer has put into
/// it, then publishes. While one sync runs, the writer fills the next records.
fn run_flusher(shared: Arc<Shared>, wal: WalSync) {
    let _guard = PanicGuard {
        shared: &shared,
        thread: "flusher",
    };
    loop {
        let synced = {
            let _lock = shared.sync_lock.locked();
            sync_wal(&shared, &wal)
        };
        match synced {
            Ok(true) => continue,
            Ok(false) if shared.stop.load(Ordering::Acquire) => break,
            Ok(false) => std::thread::park(),
            Err(err) => {
                fail(&shared, "write-ahead log sync", err);
                return;
            }
        }
    }
}

/// Under `sync_lock`: `fdatasync`s the log if frames were written since the last sync,
/// then publishes what became durable. Returns whether it synced.
fn sync_wal(shared: &Shared, wal: &WalSync) -> Result<bool, StoreError> {
    let target = shared.wal_written.load(Ordering::Acquire);
    if target <= shared.wal_synced.load(Ordering::Acquire) {
        return Ok(false);
    }
    let started = Instant::now();
    wal.sync()?;
    let elapsed = started.elapsed();
    shared.flush_latency.record(elapsed);
    shared
        .sync_counters
        .wal_syncs
        .fetch_add(1, Ordering::Relaxed);
    shared.wal_synced.store(target, Ordering::Release);
    shared.publish_durable();
    debug!(
        synced_seq = target,
        micros = elapsed.as_micros() as u64,
        "write-ahead log synced"
    );
    Ok(true)
}

/// Makes sled durable up to what the writer has inserted, when closed log segments wait
/// for it and once more at close, so that the log can reuse them. Acknowledgements never
/// wait for it.
fn run_checkpointer(shared: Arc<Shared>, mut sync: DiskSync) {
    let _guard = PanicGuard {
        shared: &shared,
        thread: "checkpointer",
    };
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if shared.checkpoint_wanted.swap(false, Ordering::AcqRel) || stopping {
            let target = shared.written.load(Ordering::Acquire);
            let started = Instant::now();
            // See `acked_seq` in the format: a lower bound, durable with this checkpoint.
            let acked = shared.durable_seq().to_be_bytes();
            let checkpoint = shared
                .trees
                .meta
                .insert(ACKED_KEY, &acked[..])
                .map_err(sled_error)
                .and_then(|_| durable_flush(&shared.trees, &mut sync));
            match checkpoint {
                Ok(bytes) => {
                    shared.checkpointed.store(target, Ordering::Release);
                    debug!(
                        checkpointed_seq = target,
                        bytes,
                        millis = started.elapsed().as_millis() as u64,
                        "event store checkpoint"
                    );
                }
                Err(err) if stopping => {
                    warn!(error = %err, "final checkpoint of the event store failed");
                }
                Err(err) => {
                    fail(&shared, "checkpoint", err);
                    return;
                }
            }
        }
        if stopping {
            return;
        }
        std::thread::park();
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
        let trees = Trees {
            log: db.open_tree(LOG_TREE).unwrap(),
            index: db.open_tree(INDEX_TREE).unwrap(),
            heads: db.open_tree(HEADS_TREE).unwrap(),
            meta: db.open_tree(META_TREE).unwrap(),
            db,
        };
        Shared::new(trees, 0, Arc::default())
    }

    /// A writer on `shared` whose log is in `dir/wal`; this thread stands in for the
    /// threads it wakes.
    fn group_writer<'a>(shared: &'a Shared, dir: &Path) -> GroupWriter<'a> {
        let wal = WalWriter::start(&dir.join(WAL_DIR), false, wal::SEGMENT_BYTES).unwrap();
        let others = Others {
            flusher: std::thread::current(),
            checkpointer: std::thread::current(),
        };
        GroupWriter::new(shared, wal, others)
    }

    /// What the flusher does after syncing the log up to `seq`.
    fn synced(shared: &Shared, seq: u64) {
        shared.wal_synced.store(seq, Ordering::Release);
        shared.publish_durable();
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
        let mut writer = group_writer(&shared, dir.path());
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
        synced(&shared, 3);
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
    async fn every_acknowledged_append_was_fdatasynced_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledEventStore::open(dir.path().join("events"), SledOptions::default()).unwrap();
        let counters = Arc::clone(&store.shared.sync_counters);
        // Open made the format marker durable in sled itself.
        let sled_syncs = counters.data_syncs.load(Ordering::Relaxed);
        assert!(sled_syncs >= 1);
        for i in 0..3 {
            store.append(one_event("s", 10)).await.unwrap();
            // One log sync per sequential append; sled is not synced for it.
            assert_eq!(counters.wal_syncs.load(Ordering::Relaxed), i + 1);
            assert_eq!(counters.data_syncs.load(Ordering::Relaxed), sled_syncs);
        }
        assert_eq!(store.stats().flush_latency.count, 3);
        store.close().await.unwrap();
        // Closing checkpoints sled, so the next open has nothing to replay.
        assert_eq!(counters.data_syncs.load(Ordering::Relaxed), sled_syncs + 1);
    }

    #[tokio::test]
    async fn large_appends_are_durable_in_the_log_and_their_blob_files_at_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let store = SledEventStore::open(&path, SledOptions::default()).unwrap();
        let counters = Arc::clone(&store.shared.sync_counters);
        // Far above sled's blob threshold: sled writes it to `blobs/`.
        store.append(one_event("big", 512 * 1024)).await.unwrap();
        assert_eq!(counters.wal_syncs.load(Ordering::Relaxed), 1);
        let blobs = std::fs::read_dir(path.join("blobs")).unwrap().count();
        assert!(blobs >= 1, "sled wrote no blob file");
        store.close().await.unwrap();
        assert!(counters.blob_syncs.load(Ordering::Relaxed) >= 1);
        let store = SledEventStore::open(&path, SledOptions::default()).unwrap();
        assert_eq!(store.read_from(1, 10).unwrap()[0].payload.len(), 512 * 1024);
    }

    #[test]
    fn later_groups_check_versions_against_the_written_heads() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let mut writer = group_writer(&shared, dir.path());
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
        synced(&shared, 2);
        assert_eq!(next_rx.try_recv().unwrap().unwrap().streams[0].version, 2);
        assert_eq!(shared.written_head("a").unwrap(), Some((2, 2)));
        // A stream the writer has not seen is read from sled.
        let mut fresh = group_writer(&shared, dir.path());
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
        let mut writer = group_writer(&shared, dir.path());
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
        synced(&shared, 7);
        let seqs: Vec<u64> = shared
            .read_durable(1, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    }
}

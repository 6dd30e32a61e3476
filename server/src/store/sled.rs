//! [`SledEventStore`]: the production event store, on sled, with group commit.
//!
//! This module is the only place (with its helpers `codec` and `recover`) that knows
//! sled. It does not interpret payloads, keep projections or snapshot anything.
//!
//! # On-disk format (version 1) — a compatibility commitment
//!
//! One sled database (the directory given to [`SledEventStore::open`]) with four trees.
//! All integers are big-endian (keys sort numerically).
//!
//! | tree           | key                                          | value                        |
//! |----------------|----------------------------------------------|------------------------------|
//! | `log`          | `first_seq: u64` (8 bytes)                   | log record, see below        |
//! | `stream_index` | `len: u16`, stream name (UTF-8), `version: u64` | `seq: u64`, `pos: u32`    |
//! | `stream_heads` | stream name (UTF-8)                          | `version: u64`, `seq: u64`   |
//! | `meta`         | `format_version`                             | `u32`, currently 1           |
//! | `meta`         | `acked_seq`                                  | `u64`                        |
//!
//! * **`log`** is the truth. One record per append: the record holds all events of the
//!   append, which got the consecutive seqs `first_seq ..= first_seq + count - 1`; the
//!   next record's key is `first_seq + count`. Keys are therefore contiguous from 1
//!   when read as ranges, and a gap is detectable from the keys alone.
//! * **Log record**: `crc32: u32`, `record_format: u8` (= 1), `count: u32` (>= 1), then
//!   `count` events, each `stream_len: u16`, stream, `stream_version: u64`,
//!   `schema_version: u16`, `recorded_at_ms: i64`, `type_len: u16`, event type,
//!   `actor_len: u16`, actor, `payload_len: u32`, payload. Nothing may follow the last
//!   event. The crc32 (IEEE, as computed by `crc32fast`) covers the 8-byte key followed
//!   by every record byte after the crc field, so a record copied under another key is
//!   detected as well as flipped bits.
//! * **`stream_index`** maps (stream, version) to the event's seq and its position in
//!   its record (`seq - pos` is the record key). The length prefix makes a stream's
//!   keys a prefix range no other stream shares. Derived from the log.
//! * **`stream_heads`** holds each stream's current version and the seq of its last
//!   event: the optimistic-concurrency check reads it. Derived from the log.
//! * **`acked_seq`** is a high-water mark of seqs acknowledged as durable, written after
//!   each group-commit flush (so it lags by one flush). A log ending below it has lost
//!   acknowledged events, which is reported as a truncated tail.
//!
//! # Why one record per append instead of a sled batch or transaction
//!
//! sled 0.34's `apply_batch` and transactions switch on a process-wide reader/writer
//! lock that `flush` holds for the whole fsync, so a batch waits for every flush in
//! progress; a batch also forces a write of the current I/O buffer. That defeats group
//! commit. Instead each append is a single key insert into `log` (atomic in sled),
//! followed, under the same writer lock, by its `stream_index` and `stream_heads`
//! inserts. sled recovers a prefix of its write order, so after a crash only the *last*
//! record's index entries and heads can be missing or stale. Open completes exactly
//! those (logged at `warn`); any other disagreement is corruption.
//!
//! # Group commit
//!
//! Appends are serialised by a mutex (conflict check, seq assignment, the inserts: a few
//! microseconds) and then wait, outside the mutex, on a `watch` channel carrying the
//! durable high-water mark. One flusher thread loops: it takes the highest written seq,
//! calls sled `flush` (write + fsync) once for everything written so far, publishes the
//! new mark, and wakes every appender whose seq it covers. While one flush runs, the next
//! group of appends accumulates. Readers and subscriptions never look past the mark.
//! After a failed insert or flush the store is fail-stop: see [`StoreError::Io`].
//!
//! # Open and recovery
//!
//! Open checks, cheapest first: the format version; that log keys are contiguous from
//! 1 (a key scan over every record, reading only each record's 4-byte event count);
//! checksums, decoding and the index entry of every event in the *tail* (the last
//! [`OpenValidation::Tail`] events, 10,000 by default) and the heads of the streams
//! written there; and that the log reaches `acked_seq`. The rest of the log has its
//! checksums verified lazily by every read (replay reads all of it on server start), so
//! damage in the middle surfaces as a typed `Corrupt` error at the first read of it.
//! [`OpenValidation::Full`] checks everything at open instead (O(events) reads).
//!
//! A problem is never repaired silently: open fails with [`StoreError::Corrupt`] naming
//! the seq. An operator who accepts losing everything after seq `n` reopens with
//! [`SledOptions::truncate_corrupt_tail_after`] = `Some(n)`; see there.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{JoinHandle, Thread};

use ::sled::{Db, IVec, Tree};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn};

use super::codec::{
    self, index_key, index_key_into, index_value, log_key, open_record, parse_head_value,
    parse_index_key, parse_index_value, seq_of_log_key,
};
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

/// How much of the log [`SledEventStore::open`] verifies before returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenValidation {
    /// Key contiguity of the whole log, plus checksums, decoding, index entries and
    /// stream heads of the last `events` events. Open time grows with the log only
    /// through the key scan; the rest is verified lazily by reads.
    Tail {
        /// Number of most recent events to verify fully.
        events: u64,
    },
    /// Everything: every record, every index entry and every head. O(events) point
    /// reads and memory proportional to the number of streams: for audits, not for
    /// every start.
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
    /// wrong nothing is deleted. `n` must end an append (a record boundary) and is
    /// usually the seq named by the `Corrupt` error minus one. Truncation scans the
    /// whole index and all heads once. Meant to be exposed as a server flag, used once,
    /// then removed.
    pub truncate_corrupt_tail_after: Option<u64>,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// Interval of sled's own background flush and segment cleaning. Appends do not
    /// rely on it (they flush through group commit); it reclaims space.
    pub sled_flush_every_ms: Option<u64>,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            validation: OpenValidation::default(),
            truncate_corrupt_tail_after: None,
            cache_capacity_bytes: 256 * 1024 * 1024,
            sled_flush_every_ms: Some(1000),
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
/// Dropping it stops the flusher after a final flush (blocking for at most one fsync)
/// and closes the database; [`SledEventStore::close`] does the same off the async
/// runtime's threads and reports errors. Subscriptions then end with
/// [`StoreError::Closed`].
pub struct SledEventStore {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    flusher_thread: Thread,
}

struct Shared {
    trees: Trees,
    writer: Mutex<Writer>,
    /// Highest seq inserted into sled (durable or not).
    written: AtomicU64,
    durable: watch::Sender<DurableMark>,
    stop: AtomicBool,
    append_latency: LatencyHistogram,
    flush_latency: LatencyHistogram,
}

struct Writer {
    next_seq: u64,
    /// Reused encoding buffers.
    record: Vec<u8>,
    key: Vec<u8>,
    failed: Option<StoreError>,
}

impl std::fmt::Debug for SledEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledEventStore")
            .field("durable_seq", &self.shared.durable_seq())
            .field("written_seq", &self.shared.written.load(Ordering::Relaxed))
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
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(options.sled_flush_every_ms)
            .open()
            .map_err(sled_error)?;
        let trees = Trees {
            log: db.open_tree(LOG_TREE).map_err(sled_error)?,
            index: db.open_tree(INDEX_TREE).map_err(sled_error)?,
            heads: db.open_tree(HEADS_TREE).map_err(sled_error)?,
            meta: db.open_tree(META_TREE).map_err(sled_error)?,
            db,
        };
        let recovered = recover::recover(&trees, &options)?;
        let last_seq = recovered.last_seq;
        let (durable, _) = watch::channel(DurableMark {
            seq: last_seq,
            failed: None,
        });
        let shared = Arc::new(Shared {
            trees,
            writer: Mutex::new(Writer {
                next_seq: last_seq + 1,
                record: Vec::new(),
                key: Vec::new(),
                failed: None,
            }),
            written: AtomicU64::new(last_seq),
            durable,
            stop: AtomicBool::new(false),
            append_latency: LatencyHistogram::default(),
            flush_latency: LatencyHistogram::default(),
        });
        let flusher = std::thread::Builder::new()
            .name("event-store-flush".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_flusher(shared)
            })?;
        let flusher_thread = flusher.thread().clone();
        info!(
            last_seq,
            records = recovered.records,
            fully_checked_events = recovered.fully_checked_events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event store open"
        );
        Ok(SledEventStore {
            shared,
            flusher: Some(flusher),
            flusher_thread,
        })
    }

    /// Flushes, stops the flusher and closes the database, off the runtime's threads.
    pub async fn close(self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .map_err(|e| StoreError::from(std::io::Error::other(e.to_string())))?;
        flushed
    }

    /// Conflict check, seq assignment and the inserts, under the writer lock.
    fn write(&self, batch: &[StreamAppend]) -> Result<AppendOutcome, StoreError> {
        let shared = &*self.shared;
        let mut guard = shared.writer.lock().map_err(|_| {
            StoreError::from(std::io::Error::other("event store writer panicked earlier"))
        })?;
        let writer = &mut *guard;
        if let Some(err) = &writer.failed {
            return Err(err.clone());
        }
        if let Some(err) = &shared.durable.borrow().failed {
            return Err(err.clone());
        }
        let mut before = Vec::with_capacity(batch.len());
        for sa in batch {
            let actual = shared
                .written_head(&sa.stream)?
                .map_or(0, |(version, _)| version);
            check_expected(&sa.stream, sa.expected, actual)?;
            before.push(actual);
        }
        let first_seq = writer.next_seq;
        codec::encode_record(first_seq, batch, &before, &mut writer.record);
        match insert_append(&shared.trees, first_seq, batch, &before, writer) {
            Ok(outcome) => {
                writer.next_seq = outcome.last_seq + 1;
                shared.written.store(outcome.last_seq, Ordering::Release);
                Ok(outcome)
            }
            Err(err) => {
                let err = sled_error(err);
                error!(first_seq, error = %err, "event store write failed; refusing further appends");
                writer.failed = Some(err.clone());
                shared.durable.send_modify(|mark| {
                    mark.failed.get_or_insert_with(|| err.clone());
                });
                Err(err)
            }
        }
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.durable.subscribe();
        let mark = rx
            .wait_for(|mark| mark.seq >= seq || mark.failed.is_some())
            .await
            .map_err(|_| StoreError::Closed)?;
        if mark.seq >= seq {
            Ok(())
        } else {
            Err(mark.failed.clone().unwrap_or(StoreError::Closed))
        }
    }
}

/// The inserts of one append: the record (the atomic commit point), then its index
/// entries, then the heads.
fn insert_append(
    trees: &Trees,
    first_seq: u64,
    batch: &[StreamAppend],
    before: &[u64],
    writer: &mut Writer,
) -> ::sled::Result<AppendOutcome> {
    trees
        .log
        .insert(log_key(first_seq), writer.record.as_slice())?;
    let mut seq = first_seq;
    let mut pos = 0u32;
    for (sa, &version) in batch.iter().zip(before) {
        for v in version + 1..=version + sa.events.len() as u64 {
            index_key_into(&mut writer.key, &sa.stream, v);
            trees
                .index
                .insert(writer.key.as_slice(), &index_value(seq, pos)[..])?;
            seq += 1;
            pos += 1;
        }
    }
    let mut streams = Vec::with_capacity(batch.len());
    let mut seq = first_seq;
    for (sa, &version) in batch.iter().zip(before) {
        let n = sa.events.len() as u64;
        let head = codec::head_value(version + n, seq + n - 1);
        trees.heads.insert(sa.stream.as_bytes(), &head[..])?;
        streams.push(StreamVersion {
            stream: sa.stream.clone(),
            version: version + n,
        });
        seq += n;
    }
    Ok(AppendOutcome {
        first_seq,
        last_seq: seq - 1,
        streams,
    })
}

impl Shared {
    fn durable_seq(&self) -> u64 {
        self.durable.borrow().seq
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

/// Marks the store failed if the flusher thread panics, so appenders do not wait forever.
struct FlusherGuard<'a>(&'a Shared);

impl Drop for FlusherGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let err = StoreError::from(std::io::Error::other("event store flusher panicked"));
            self.0.durable.send_modify(|mark| {
                mark.failed.get_or_insert(err);
            });
        }
    }
}

/// The group-commit loop. See the module documentation.
fn run_flusher(shared: Arc<Shared>) {
    let _guard = FlusherGuard(&shared);
    let mut durable = shared.durable_seq();
    loop {
        let target = shared.written.load(Ordering::Acquire);
        if target > durable {
            let started = Instant::now();
            match shared.trees.db.flush() {
                Ok(bytes) => {
                    let elapsed = started.elapsed();
                    shared.flush_latency.record(elapsed);
                    durable = target;
                    shared.durable.send_modify(|mark| mark.seq = target);
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
                        fail(&shared, "recording the acknowledged seq", err);
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
    if let Err(err) = shared.trees.db.flush() {
        warn!(error = %err, "final flush of the event store failed");
    }
}

fn fail(shared: &Shared, what: &str, err: ::sled::Error) {
    let err = sled_error(err);
    error!(error = %err, "event store {what} failed; refusing further appends");
    shared.durable.send_modify(|mark| {
        mark.failed.get_or_insert(err);
    });
}

impl Drop for SledEventStore {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            if flusher.join().is_err() {
                error!("event store flusher thread panicked");
            }
        }
    }
}

impl EventStore for SledEventStore {
    fn append(&self, batch: Vec<StreamAppend>) -> BoxFuture<'_, Result<AppendOutcome, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            validate_batch(&batch)?;
            let outcome = self.write(&batch)?;
            self.flusher_thread.unpark();
            self.wait_durable(outcome.last_seq).await?;
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
        let log: Weak<dyn DurableLog> = Arc::downgrade(&self.shared) as Weak<dyn DurableLog>;
        Subscription::new(log, self.shared.durable.subscribe(), from_seq)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let target = self.shared.written.load(Ordering::Acquire);
            self.flusher_thread.unpark();
            self.wait_durable(target).await
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

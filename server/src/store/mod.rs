//! The event store: the append-only log that every fact of `otad` is written to.
//!
//! All server state is a projection of this log. The store knows nothing about domain
//! types: a payload is opaque bytes tagged with an `event_type` and a `schema_version`;
//! the domain layer encodes its versioned events into them and upcasts old versions when
//! it loads them. The store does not read the clock either: `recorded_at_ms` is given by
//! the caller.
//!
//! # Model
//!
//! * Every event has a global `seq`, starting at 1, gapless, in append order.
//! * Every event belongs to one *stream* (an aggregate, e.g. `rollout-42`) and has a
//!   `stream_version` within it, starting at 1, gapless. Version 0 means "no stream".
//! * [`EventStore::append`] writes to one or more streams atomically (all or nothing),
//!   with an optimistic-concurrency check per stream ([`ExpectedVersion`]), and resolves
//!   only when the events are durable. A failed check is a typed
//!   [`StoreError::Conflict`] carrying the expected and the actual version.
//! * Readers only ever see durable events: [`EventStore::last_seq`],
//!   [`EventStore::stream_version`], [`EventStore::read_from`],
//!   [`EventStore::read_stream`] and [`Subscription`] all stop at the durable
//!   high-water mark. The optimistic-concurrency check itself compares against every
//!   *accepted* append, durable or not, so a writer racing a not-yet-durable append gets a
//!   `Conflict` (retrying after re-reading resolves within one flush).
//! * [`EventStore::subscribe`] catches up from the log and then follows live appends
//!   without gaps or duplicates. A subscription keeps no queue of its own: it re-reads
//!   the log in bounded chunks whenever the durable mark moves, so a slow subscriber never
//!   blocks appenders and never makes memory grow.
//!
//! # Implementations
//!
//! * [`SledEventStore`] (module `sled`): the production store, with group commit and
//!   validation of the log on open. Its on-disk format is documented there.
//! * [`PostgresEventStore`] (module `postgres`): the same on PostgreSQL, for an existing
//!   database (chosen by otad's `store` setting); its schema is documented there.
//! * [`MemEventStore`] (module `mem`): in memory, **for tests only**, with the same
//!   semantics (minus durability).
//!
//! What this module does not do: snapshots (replay is fast enough for now; if snapshots
//! are added they will be a cache, the log stays the truth), event upcasting (domain
//! layer), retention or deletion of events (the log is append-only).

mod codec;
pub(crate) mod disk_sync;
pub mod mem;
pub mod postgres;
mod recover;
pub mod sled;
mod stats;
mod subscription;
pub(crate) mod wal;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

pub(crate) use self::disk_sync::{create_dir_all_durable, sync_dir};
pub use self::mem::MemEventStore;
pub use self::postgres::{PostgresEventStore, PostgresOptions};
pub use self::sled::{OpenValidation, SledEventStore, SledOptions};
pub use self::stats::{LatencySnapshot, StoreStats};
pub use self::subscription::Subscription;

/// Longest accepted stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 1024;
/// Longest accepted event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Longest accepted actor, in bytes.
pub const MAX_ACTOR_BYTES: usize = 1024;
/// Largest accepted payload of one event, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// Largest accepted sum of payload bytes of one append: room for the plan of a rollout over
/// a few million devices (about 22 bytes each), which is split into events of at most 1 MiB of
/// lists (`ota_domain::events::split`) but appended at once.
pub const MAX_APPEND_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
/// Most events accepted in one append (all streams together).
pub const MAX_EVENTS_PER_APPEND: usize = 65_536;

/// An event to append. The store treats `payload` as opaque bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Name of the event kind, e.g. `RolloutCreated`. Non-empty.
    pub event_type: String,
    /// Version of the payload's schema, used by the domain layer to upcast on load.
    pub schema_version: u16,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// Who caused the event (user, device, `system`...). May be empty.
    pub actor: String,
    /// Wall-clock time in milliseconds since the Unix epoch, chosen by the caller.
    pub recorded_at_ms: i64,
}

/// The version a stream must be at for an append to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be exactly at this version. `Exact(0)` means the same as `NoStream`.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies the expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Events for one stream within an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppend {
    /// Stream name: non-empty UTF-8, at most [`MAX_STREAM_NAME_BYTES`].
    pub stream: String,
    /// Optimistic-concurrency check for this stream.
    pub expected: ExpectedVersion,
    /// The events. Empty makes this a *guard*: nothing is written to the stream, but the append
    /// goes through only if the stream is at `expected` (which must then not be `Any`). A batch
    /// needs at least one event in all.
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    /// Convenience constructor.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        StreamAppend {
            stream: stream.into(),
            expected,
            events,
        }
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position, from 1, gapless.
    pub seq: u64,
    /// The stream the event belongs to.
    pub stream: String,
    /// Position within the stream, from 1, gapless.
    pub stream_version: u64,
    /// See [`NewEvent::event_type`].
    pub event_type: String,
    /// See [`NewEvent::schema_version`].
    pub schema_version: u16,
    /// See [`NewEvent::payload`].
    pub payload: Vec<u8>,
    /// See [`NewEvent::actor`].
    pub actor: String,
    /// See [`NewEvent::recorded_at_ms`].
    pub recorded_at_ms: i64,
}

/// The new version of one stream after an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamVersion {
    /// Stream name.
    pub stream: String,
    /// Its version after the append (the version of its last appended event).
    pub version: u64,
}

/// What a successful append wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Seq of the first event of the append. Events got consecutive seqs in the order
    /// of the batch: streams in batch order, events in order within each stream.
    pub first_seq: u64,
    /// Seq of the last event of the append.
    pub last_seq: u64,
    /// New version per stream, in batch order.
    pub streams: Vec<StreamVersion>,
}

/// What is wrong with the stored log. Carried by [`StoreError::Corrupt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The record's checksum does not match its bytes (bit rot, torn or tampered write).
    ChecksumMismatch {
        /// Checksum stored in the record.
        stored: u32,
        /// Checksum computed over the stored bytes.
        computed: u32,
    },
    /// The record's bytes do not decode although the checksum matched (or no checksum
    /// could be read): a format violation.
    Undecodable(String),
    /// There is no record for this seq although a later one exists (a gap in the log).
    Missing {
        /// The next seq present in the log.
        next_present: u64,
    },
    /// The log ends before the highest seq that was acknowledged as durable.
    TruncatedTail {
        /// Last seq present in the log (0 if empty).
        last_present: u64,
        /// Highest seq recorded as acknowledged.
        acknowledged: u64,
    },
    /// The per-stream index disagrees with the log.
    IndexMismatch(String),
    /// A stream head disagrees with the index or the log.
    HeadMismatch(String),
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Corruption::Undecodable(why) => write!(f, "undecodable record: {why}"),
            Corruption::Missing { next_present } => {
                write!(
                    f,
                    "record missing (gap: the next present seq is {next_present})"
                )
            }
            Corruption::TruncatedTail {
                last_present,
                acknowledged,
            } => write!(
                f,
                "log truncated: it ends at seq {last_present} but seqs up to {acknowledged} \
                 were acknowledged as durable"
            ),
            Corruption::IndexMismatch(why) => write!(f, "stream index inconsistent: {why}"),
            Corruption::HeadMismatch(why) => write!(f, "stream head inconsistent: {why}"),
        }
    }
}

/// Errors of the event store. Each variant says how callers should handle it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// An optimistic-concurrency check failed; nothing was written. Re-read the stream,
    /// re-decide, retry. Surfaces to API clients as "aborted, retry".
    #[error("conflict on stream `{stream}`: expected {expected}, but it is at version {actual}")]
    Conflict {
        /// The stream whose check failed (the first one, in batch order).
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version at the time of the check (0 = no stream).
        actual: u64,
    },
    /// The stored log is damaged at `seq`. Not retryable: an operator must look at it
    /// (see [`SledOptions::truncate_corrupt_tail_after`]). When the damaged record
    /// holds several events (a commit group of one or more appends), `seq` is its
    /// first seq.
    #[error("event log corrupt at seq {seq}: {reason}")]
    Corrupt {
        /// Where the damage is.
        seq: u64,
        /// What is wrong.
        reason: Corruption,
    },
    /// The store was written by a newer (or unknown) version of the format.
    #[error(
        "event log format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat {
        /// Format version found on disk.
        found: u32,
        /// Format version this build writes and reads.
        supported: u32,
    },
    /// The storage failed. After an I/O error during a write or flush the store refuses
    /// further appends (fail-stop): whether the failed write is durable is unknown, so
    /// the process should restart and let recovery decide.
    #[error("event store I/O error: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// The store has been closed (dropped) while the operation was waiting.
    #[error("event store is closed")]
    Closed,
    /// Another writer appended to the same log at the same time (the PostgreSQL store: a
    /// second otad on one database). Nothing of the failed append was written, no seq was
    /// skipped; the store reloaded its position, so a retry after re-reading can succeed.
    /// Until issue 16's leader lease exists this means two otads share a database.
    #[error("another writer appended to the event log; nothing of this append was written: {0}")]
    ConcurrentWriter(String),
    /// The request is malformed (empty batch, oversized payload, duplicate stream...).
    /// A caller bug: surfaces as "invalid argument".
    #[error("invalid append: {0}")]
    Invalid(String),
}

impl From<std::io::Error> for StoreError {
    fn from(err: std::io::Error) -> Self {
        StoreError::Io(Arc::new(err))
    }
}

/// The event store interface, implemented by [`SledEventStore`], [`PostgresEventStore`] and
/// [`MemEventStore`].
///
/// Methods that return plain values read in-memory state; methods that return `Result`
/// may touch storage.
pub trait EventStore: Send + Sync + 'static {
    /// Atomically appends to one or more streams, all or nothing; resolves only once the
    /// events are durable. A stream may appear at most once per batch.
    fn append(&self, batch: Vec<StreamAppend>) -> BoxFuture<'_, Result<AppendOutcome, StoreError>>;

    /// The highest durable seq (0 when the log is empty). Equals the number of events.
    fn last_seq(&self) -> u64;

    /// The durable version of `stream`, 0 when it has no durable event.
    ///
    /// Returns a `Result` (unlike [`EventStore::last_seq`]) because the sled store reads
    /// stream heads from disk instead of keeping every stream in memory.
    fn stream_version(&self, stream: &str) -> Result<u64, StoreError>;

    /// Up to `limit` durable events with `seq >= from_seq`, in seq order (`from_seq` 0
    /// and 1 both mean "from the start"). For replay and paging: call again with
    /// `last.seq + 1` until it returns fewer than `limit` events.
    fn read_from(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The durable events of `stream` with `stream_version >= from_version`, in order.
    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Every event with `seq >= from_seq`: first the ones already in the log, then new
    /// ones as they become durable. No gaps, no duplicates, also while appends race.
    /// Subscribing at `last_seq() + 1` delivers only new events.
    fn subscribe(&self, from_seq: u64) -> Subscription;

    /// Resolves once everything appended before the call is durable (graceful shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Counters for metrics.
    fn stats(&self) -> StoreStats;
}

/// The durable high-water mark shared by a store and its subscriptions.
#[derive(Clone, Debug, Default)]
pub(crate) struct DurableMark {
    /// Every event with a seq up to this one is durable.
    pub(crate) seq: u64,
    /// Set once the store has failed; appends and subscriptions report it.
    pub(crate) failed: Option<StoreError>,
}

/// Checks the shape of a batch: the rules both implementations share.
pub(crate) fn validate_batch(batch: &[StreamAppend]) -> Result<usize, StoreError> {
    if batch.is_empty() {
        return Err(StoreError::Invalid("the batch holds no stream".into()));
    }
    let mut events = 0usize;
    let mut payload_bytes = 0usize;
    for (i, sa) in batch.iter().enumerate() {
        let name = &sa.stream;
        if name.is_empty() || name.len() > MAX_STREAM_NAME_BYTES {
            return Err(StoreError::Invalid(format!(
                "stream name must be 1..={MAX_STREAM_NAME_BYTES} bytes, got {} bytes",
                name.len()
            )));
        }
        if batch[..i].iter().any(|other| other.stream == *name) {
            return Err(StoreError::Invalid(format!(
                "stream `{name}` appears twice in one batch"
            )));
        }
        if sa.events.is_empty() && sa.expected == ExpectedVersion::Any {
            return Err(StoreError::Invalid(format!(
                "stream `{name}`: no events and no expected version"
            )));
        }
        for ev in &sa.events {
            if ev.event_type.is_empty() || ev.event_type.len() > MAX_EVENT_TYPE_BYTES {
                return Err(StoreError::Invalid(format!(
                    "stream `{name}`: event type must be 1..={MAX_EVENT_TYPE_BYTES} bytes"
                )));
            }
            if ev.actor.len() > MAX_ACTOR_BYTES {
                return Err(StoreError::Invalid(format!(
                    "stream `{name}`: actor longer than {MAX_ACTOR_BYTES} bytes"
                )));
            }
            if ev.payload.len() > MAX_PAYLOAD_BYTES {
                return Err(StoreError::Invalid(format!(
                    "stream `{name}`: payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
                    ev.payload.len()
                )));
            }
            payload_bytes += ev.payload.len();
        }
        events += sa.events.len();
    }
    if events == 0 {
        return Err(StoreError::Invalid("the batch holds no event".into()));
    }
    if events > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::Invalid(format!(
            "{events} events in one append exceed {MAX_EVENTS_PER_APPEND}"
        )));
    }
    if payload_bytes > MAX_APPEND_PAYLOAD_BYTES {
        return Err(StoreError::Invalid(format!(
            "{payload_bytes} payload bytes in one append exceed {MAX_APPEND_PAYLOAD_BYTES}"
        )));
    }
    Ok(events)
}

/// The `Conflict` error for `stream` if `expected` does not admit `actual`.
pub(crate) fn check_expected(
    stream: &str,
    expected: ExpectedVersion,
    actual: u64,
) -> Result<(), StoreError> {
    if expected.admits(actual) {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            stream: stream.to_owned(),
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> NewEvent {
        NewEvent {
            event_type: "T".into(),
            schema_version: 1,
            payload: vec![1],
            actor: String::new(),
            recorded_at_ms: 0,
        }
    }

    #[test]
    fn expected_version_admits() {
        assert!(ExpectedVersion::Any.admits(0));
        assert!(ExpectedVersion::Any.admits(7));
        assert!(ExpectedVersion::NoStream.admits(0));
        assert!(!ExpectedVersion::NoStream.admits(1));
        assert!(ExpectedVersion::Exact(0).admits(0));
        assert!(ExpectedVersion::Exact(3).admits(3));
        assert!(!ExpectedVersion::Exact(3).admits(4));
    }

    #[test]
    fn batch_validation_rejects_malformed_batches() {
        let ok = StreamAppend::new("s", ExpectedVersion::Any, vec![ev()]);
        assert_eq!(validate_batch(std::slice::from_ref(&ok)).unwrap(), 1);
        assert!(matches!(validate_batch(&[]), Err(StoreError::Invalid(_))));
        let dup = vec![ok.clone(), ok.clone()];
        assert!(matches!(validate_batch(&dup), Err(StoreError::Invalid(m)) if m.contains("twice")));
        let empty = StreamAppend::new("s", ExpectedVersion::Any, vec![]);
        assert!(matches!(
            validate_batch(&[empty]),
            Err(StoreError::Invalid(_))
        ));
        let unnamed = StreamAppend::new("", ExpectedVersion::Any, vec![ev()]);
        assert!(matches!(
            validate_batch(&[unnamed]),
            Err(StoreError::Invalid(_))
        ));
        let mut untyped = ev();
        untyped.event_type.clear();
        let untyped = StreamAppend::new("s", ExpectedVersion::Any, vec![untyped]);
        assert!(matches!(
            validate_batch(&[untyped]),
            Err(StoreError::Invalid(_))
        ));
        let mut big = ev();
        big.payload = vec![0; MAX_PAYLOAD_BYTES + 1];
        let big = StreamAppend::new("s", ExpectedVersion::Any, vec![big]);
        assert!(matches!(
            validate_batch(&[big]),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let conflict = StoreError::Conflict {
            stream: "rollout-1".into(),
            expected: ExpectedVersion::Exact(3),
            actual: 5,
        };
        assert_eq!(
            conflict.to_string(),
            "conflict on stream `rollout-1`: expected version 3, but it is at version 5"
        );
        let corrupt = StoreError::Corrupt {
            seq: 42,
            reason: Corruption::Missing { next_present: 44 },
        };
        assert_eq!(
            corrupt.to_string(),
            "event log corrupt at seq 42: record missing (gap: the next present seq is 44)"
        );
    }
}

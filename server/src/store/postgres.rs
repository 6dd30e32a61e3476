//! [`PostgresEventStore`]: the event store on PostgreSQL, for operators who run otad on an
//! existing database instead of the embedded sled store.
//!
//! Same contract as the sled store (see the parent module): one global, gap-free `seq`;
//! per-stream versions with optimistic checks; atomic multi-stream appends with group commit;
//! checksummed events; catch-up-then-live subscriptions. It is chosen by otad's `store`
//! setting (`store = "postgres://…"`); sled stays the default.
//!
//! # Schema (version 1) — a compatibility commitment
//!
//! Created at open when missing (`CREATE TABLE IF NOT EXISTS`, under an advisory lock so two
//! otads opening an empty database at once do not race):
//!
//! * `ota_events(seq bigint primary key, stream text, version bigint, event_type text,
//!   schema_version integer, actor text, recorded_at_ms bigint, payload bytea, crc32 bigint,
//!   unique (stream, version))`: one row per event.
//! * `ota_store_meta(key text primary key, value bigint)`: the row `schema_version` = 1. A
//!   later schema change migrates from the version it finds; a newer version than this build
//!   knows fails open with [`StoreError::UnsupportedFormat`].
//!
//! `crc32` is the CRC-32 (IEEE, `crc32fast`) of the event's fields in a fixed binary layout —
//! `seq`, `version`, `schema_version`, `recorded_at_ms`, then `stream`, `event_type`, `actor`
//! and `payload` each with a 4-byte length, integers big-endian — so a changed byte and a row
//! moved to another seq are both detected. Every read verifies it
//! ([`Corruption::ChecksumMismatch`]) and that the seqs (or a stream's versions) it returns
//! have no gap ([`Corruption::Missing`]).
//!
//! # Writes: one writer, one statement per commit group
//!
//! Appends go to one writer task that owns one connection. It takes everything queued (up to
//! [`GROUP_EVENTS`] events) as a commit group, checks every append's expected versions against
//! its cache of stream heads (loaded lazily from the table, one query per group for the streams
//! it has not seen; forgotten when the durable mark shows another process's commit) and the
//! appends before it in the group — a failed check rejects only that
//! append —, gives the accepted events consecutive seqs from its own `last_seq`, and inserts
//! them with **one** statement: an `INSERT … SELECT FROM unnest(…)` of column arrays that also
//! calls `pg_notify('ota_events', <last seq>)`. A single statement is its own transaction, so
//! the group commits all or nothing, in one round trip, with `synchronous_commit = on` (set on
//! the connection). Only then are the group's appenders answered. The leader lease of issue 16
//! will add its fencing-epoch check to that same statement (see `Writer::insert`).
//!
//! `primary key (seq)` and `unique (stream, version)` are the backstop against a second
//! writer on the same database (another otad, until the lease exists): seqs are always the
//! writer's last committed seq plus one, so a second writer collides on the key and can never
//! leave a gap. The colliding group fails with [`StoreError::ConcurrentWriter`], nothing of it
//! is written, and the writer reloads its `last_seq` and forgets its heads. Any other error the
//! server reports fails the group with `Io` (the statement rolled back). A lost connection
//! leaves the group's fate unknown: the store is then fail-stop like sled's after an I/O error
//! (restart and reopen).
//!
//! # Reads and subscriptions
//!
//! The durable mark ([`DurableMark`]) is the highest seq known committed. The writer advances
//! it after each commit; a LISTEN task on its own connection advances it on every
//! `ota_events` notification, so appends of another process (a future follower replica tailing
//! the leader's log) reach this process's subscriptions too. After (re)connecting it reads
//! `max(seq)` once, so a notification lost while it was disconnected is never missed.
//! Subscriptions re-read the log by seq range (module `subscription`), which keeps delivery
//! gap-free and in order whatever the notifications do.
//!
//! The trait's reads are synchronous. They are served by a dedicated thread that runs the
//! store's own small tokio runtime (the writer, the listener and a reader connection live
//! there): a read sends its query to that thread and waits for the answer, blocking the
//! caller for one round trip, as a sled read blocks for a disk read. Nothing calls `block_on`
//! on the caller's runtime. Reads stop at the durable mark, like sled's.
//!
//! What this module does not do (issue 16, later parts): leader election and the fencing
//! epoch, follower replicas, firmware images in PostgreSQL (they stay on local disk), migration
//! from sled, TLS to the database (use a unix socket or a local connection pooler for now),
//! reconnecting the writer (fail-stop instead), and the on-disk size in
//! [`StoreStats::disk_bytes`] (0).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::stats::LatencyHistogram;
use super::subscription::DurableLog;
use super::{
    AppendOutcome, Corruption, DurableMark, EventStore, RecordedEvent, StoreError, StoreStats,
    StreamAppend, StreamVersion, Subscription, check_expected, validate_batch,
};

/// The schema version this build creates, reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// The notification channel every commit notifies with its last seq.
pub const NOTIFY_CHANNEL: &str = "ota_events";
/// Most events in one commit group (a larger single append gets a group of its own).
pub const GROUP_EVENTS: usize = 8192;
/// Most payload bytes in one commit group (idem).
const GROUP_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Appends queued for the writer before `append` waits.
const QUEUE_DEPTH: usize = 4096;
/// Stream heads the writer remembers; cleared when full.
const HEADS_CACHE: usize = 65_536;
/// Events at the log's end that open reads back and verifies (checksums, no gap).
const OPEN_TAIL_CHECK: u64 = 10_000;
/// Serializes schema creation between processes (`pg_advisory_xact_lock`).
const SCHEMA_LOCK: i64 = 0x6f74_615f_7363_6865; // "ota_sche"

const SCHEMA_SQL: &str = "\
    CREATE TABLE IF NOT EXISTS ota_store_meta (key text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO ota_store_meta (key, value) VALUES ('schema_version', 1) ON CONFLICT (key) DO NOTHING;
    CREATE TABLE IF NOT EXISTS ota_events (
        seq bigint PRIMARY KEY CHECK (seq >= 1),
        stream text NOT NULL,
        version bigint NOT NULL CHECK (version >= 1),
        event_type text NOT NULL,
        schema_version integer NOT NULL,
        actor text NOT NULL,
        recorded_at_ms bigint NOT NULL,
        payload bytea NOT NULL,
        crc32 bigint NOT NULL,
        UNIQUE (stream, version)
    );";

const INSERT_SQL: &str = "\
    WITH ins AS (
        INSERT INTO ota_events
            (seq, stream, version, event_type, schema_version, actor, recorded_at_ms, payload, crc32)
        SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::int4[],
                             $6::text[], $7::int8[], $8::bytea[], $9::int8[])
        RETURNING seq
    )
    SELECT (SELECT count(*) FROM ins), pg_notify('ota_events', $10::text)::text";

const COLUMNS: &str =
    "seq, stream, version, event_type, schema_version, actor, recorded_at_ms, payload, crc32";

/// Options for [`PostgresEventStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// How long a connection attempt may take when the URL sets no `connect_timeout`.
    pub connect_timeout: Duration,
    /// Pause before the LISTEN task reconnects after losing its connection.
    pub listen_retry: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            connect_timeout: Duration::from_secs(10),
            listen_retry: Duration::from_secs(1),
        }
    }
}

/// The event store on PostgreSQL. See the module documentation for schema and guarantees.
///
/// Dropping it lets the writer commit what is queued, then stops its thread (blocking for at
/// most that commit); [`PostgresEventStore::close`] does the same off the async runtime's
/// threads. Subscriptions then end with [`StoreError::Closed`].
pub struct PostgresEventStore {
    shared: Arc<Shared>,
    /// Dropping it stops the writer.
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("durable_seq", &self.shared.durable.borrow().seq)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// The durable mark, for readers and subscriptions.
    durable: watch::Sender<DurableMark>,
    /// Reads for the store's thread.
    reads: mpsc::UnboundedSender<ReadJob>,
    /// Events accepted by `append` and not yet committed or refused.
    pending_events: AtomicU64,
    append_latency: LatencyHistogram,
    commit_latency: LatencyHistogram,
}

/// A read run on the store's thread with its reader connection (or why there is none).
type ReadJob = Box<dyn FnOnce(Result<Arc<Client>, StoreError>) -> BoxFuture<'static, ()> + Send>;

/// Work for the writer.
enum Request {
    Append {
        batch: Vec<StreamAppend>,
        events: usize,
        started: Instant,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Whether `url` parses as a connection string, without connecting; the error does not repeat
/// it (it may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    tokio_postgres::Config::from_str(url)
        .map(drop)
        .map_err(|e| format!("not a valid PostgreSQL connection string: {e}"))
}

impl PostgresEventStore {
    /// Connects to the database at `url` (a `postgres://` URL or `key=value` pairs, as libpq
    /// takes them), creates the schema if missing, checks its version and the log's tail (the
    /// last 10,000 events: checksums, no gap), and starts the writer, the listener and the
    /// reader on the store's own thread. Blocks the calling thread until that is done, like
    /// `SledEventStore::open`.
    pub fn open(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL store URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        let (reads_tx, reads_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            durable: watch::Sender::new(DurableMark::default()),
            reads: reads_tx,
            pending_events: AtomicU64::new(0),
            append_latency: LatencyHistogram::default(),
            commit_latency: LatencyHistogram::default(),
        });
        let (requests_tx, requests_rx) = mpsc::channel(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let shared = Arc::clone(&shared);
            let parts = ThreadParts {
                config,
                options,
                shared,
                requests: requests_rx,
                reads: reads_rx,
                ready: ready_tx,
            };
            std::thread::Builder::new()
                .name("ota-postgres".into())
                .spawn(move || parts.run())?
        };
        let started = ready_rx.recv().unwrap_or(Err(StoreError::Closed));
        if let Err(err) = started {
            let _ = thread.join();
            return Err(err);
        }
        Ok(PostgresEventStore {
            shared,
            requests: Some(requests_tx),
            thread: Some(thread),
        })
    }

    /// Commits what is queued, stops the store's thread, off the runtime's threads.
    pub async fn close(self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .map_err(|e| StoreError::from(std::io::Error::other(e.to_string())))?;
        flushed
    }

    fn failure_or_closed(&self) -> StoreError {
        self.shared
            .durable
            .borrow()
            .failed
            .clone()
            .unwrap_or(StoreError::Closed)
    }

    async fn submit(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests
            .send(request)
            .await
            .map_err(|_| self.failure_or_closed())
    }
}

impl Drop for PostgresEventStore {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the PostgreSQL store's thread panicked");
        }
    }
}

impl EventStore for PostgresEventStore {
    fn append(&self, batch: Vec<StreamAppend>) -> BoxFuture<'_, Result<AppendOutcome, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let events = validate_batch(&batch)?;
            let (reply, answer) = oneshot::channel();
            self.shared
                .pending_events
                .fetch_add(events as u64, Ordering::Relaxed);
            let request = Request::Append {
                batch,
                events,
                started,
                reply,
            };
            if let Err(err) = self.submit(request).await {
                self.shared
                    .pending_events
                    .fetch_sub(events as u64, Ordering::Relaxed);
                return Err(err);
            }
            answer.await.map_err(|_| self.failure_or_closed())?
        })
    }

    fn last_seq(&self) -> u64 {
        self.shared.durable.borrow().seq
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let stream = stream.to_owned();
        let upto = self.last_seq();
        self.shared.blocking_read(move |client| {
            Box::pin(async move {
                let row = client
                    .query_one(
                        "SELECT coalesce(max(version), 0) FROM ota_events \
                         WHERE stream = $1 AND seq <= $2",
                        &[&stream, &sql_int(upto)],
                    )
                    .await
                    .map_err(|e| db_error("reading a stream's version", &e))?;
                let version: i64 = row
                    .try_get(0)
                    .map_err(|e| db_error("reading a stream's version", &e))?;
                Ok(u64::try_from(version).unwrap_or(0))
            })
        })
    }

    fn read_from(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let upto = self.last_seq();
        self.shared.read_seqs(from_seq, limit, upto)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.to_owned();
        let upto = self.last_seq();
        let from_version = from_version.max(1);
        self.shared.blocking_read(move |client| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {COLUMNS} FROM ota_events \
                     WHERE stream = $1 AND version >= $2 AND seq <= $3 ORDER BY version"
                );
                let rows = client
                    .query(&sql, &[&stream, &sql_int(from_version), &sql_int(upto)])
                    .await
                    .map_err(|e| db_error("reading a stream", &e))?;
                let events = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
                check_versions(&stream, from_version, &events)?;
                Ok(events)
            })
        })
    }

    fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription::new(&self.shared, &self.shared.durable, from_seq)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.submit(Request::Flush { reply }).await?;
            answer.await.map_err(|_| self.failure_or_closed())?
        })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            events: self.last_seq(),
            pending_events: self.shared.pending_events.load(Ordering::Relaxed),
            disk_bytes: 0,
            append_latency: self.shared.append_latency.snapshot(),
            flush_latency: self.shared.commit_latency.snapshot(),
        }
    }
}

impl Shared {
    /// Runs `read` on the store's thread and waits for its answer (one round trip).
    fn blocking_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(Arc<Client>) -> BoxFuture<'static, Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: ReadJob = Box::new(move |client| {
            Box::pin(async move {
                let result = match client {
                    Ok(client) => read(client).await,
                    Err(err) => Err(err),
                };
                let _ = tx.send(result);
            })
        });
        self.reads.send(job).map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Up to `limit` events from `from_seq` on, none beyond `upto`, checked for gaps.
    fn read_seqs(
        &self,
        from_seq: u64,
        limit: usize,
        upto: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let from_seq = from_seq.max(1);
        if limit == 0 || from_seq > upto {
            return Ok(Vec::new());
        }
        self.blocking_read(move |client| {
            Box::pin(async move { read_seqs(&client, from_seq, limit, upto).await })
        })
    }

    /// Moves the durable mark up to `seq` (never down).
    fn advance(&self, seq: u64) {
        self.durable.send_if_modified(|mark| {
            let moved = seq > mark.seq;
            if moved {
                mark.seq = seq;
            }
            moved
        });
    }
}

impl DurableLog for Shared {
    fn read_durable(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let upto = self.durable.borrow().seq;
        self.read_seqs(from_seq, limit, upto)
    }
}

/// Reads the events `from_seq ..= min(upto, from_seq + limit - 1)` and checks that all are there.
async fn read_seqs(
    client: &Client,
    from_seq: u64,
    limit: usize,
    upto: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let last = upto.min(from_seq.saturating_add(limit as u64 - 1));
    let sql =
        format!("SELECT {COLUMNS} FROM ota_events WHERE seq >= $1 AND seq <= $2 ORDER BY seq");
    let rows = client
        .query(&sql, &[&sql_int(from_seq), &sql_int(last)])
        .await
        .map_err(|e| db_error("reading the log", &e))?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let event = decode_row(row)?;
        let expected = from_seq + events.len() as u64;
        if event.seq != expected {
            return Err(StoreError::Corrupt {
                seq: expected,
                reason: Corruption::Missing {
                    next_present: event.seq,
                },
            });
        }
        events.push(event);
    }
    let end = from_seq + events.len() as u64;
    if end <= last {
        return Err(StoreError::Corrupt {
            seq: end,
            reason: Corruption::TruncatedTail {
                last_present: end - 1,
                acknowledged: upto,
            },
        });
    }
    Ok(events)
}

/// A stream's events must have the versions `from_version, from_version + 1, …`.
fn check_versions(
    stream: &str,
    from_version: u64,
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    for (i, event) in events.iter().enumerate() {
        let expected = from_version + i as u64;
        if event.stream_version != expected {
            return Err(StoreError::Corrupt {
                seq: event.seq,
                reason: Corruption::IndexMismatch(format!(
                    "stream `{stream}` has version {} where version {expected} belongs",
                    event.stream_version
                )),
            });
        }
    }
    Ok(())
}

/// An error of the database (or the connection to it) as an I/O error saying what failed.
fn db_error(doing: &str, err: &tokio_postgres::Error) -> StoreError {
    StoreError::from(std::io::Error::other(format!(
        "PostgreSQL: {doing}: {}",
        describe(err)
    )))
}

/// The server's message when there is one (the driver's `Display` says only "db error").
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The checksum of one event as stored (see the module documentation): over
/// `(seq, version, schema_version, recorded_at_ms)` and `[stream, event_type, actor, payload]`.
fn checksum(numbers: (u64, u64, u16, i64), fields: [&[u8]; 4]) -> u32 {
    let (seq, version, schema_version, recorded_at_ms) = numbers;
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_be_bytes());
    h.update(&version.to_be_bytes());
    h.update(&schema_version.to_be_bytes());
    h.update(&recorded_at_ms.to_be_bytes());
    for field in fields {
        h.update(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(field);
    }
    h.finalize()
}

fn checksum_of(e: &RecordedEvent) -> u32 {
    checksum(
        (e.seq, e.stream_version, e.schema_version, e.recorded_at_ms),
        [
            e.stream.as_bytes(),
            e.event_type.as_bytes(),
            e.actor.as_bytes(),
            &e.payload,
        ],
    )
}

/// A row as an event, its checksum verified.
fn decode_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    let seq: i64 = row.try_get(0).map_err(undecodable(0))?;
    let seq = u64::try_from(seq).map_err(|_| undecodable(0)(format!("negative seq {seq}")))?;
    let get = |e: tokio_postgres::Error| undecodable(seq)(e.to_string());
    let version: i64 = row.try_get(2).map_err(get)?;
    let schema_version: i32 = row.try_get(4).map_err(get)?;
    let stored: i64 = row.try_get(8).map_err(get)?;
    let event = RecordedEvent {
        seq,
        stream: row.try_get(1).map_err(get)?,
        stream_version: u64::try_from(version).unwrap_or(0),
        event_type: row.try_get(3).map_err(get)?,
        schema_version: u16::try_from(schema_version)
            .map_err(|_| undecodable(seq)(format!("schema version {schema_version}")))?,
        actor: row.try_get(5).map_err(get)?,
        recorded_at_ms: row.try_get(6).map_err(get)?,
        payload: row.try_get(7).map_err(get)?,
    };
    let computed = checksum_of(&event);
    if i64::from(computed) != stored {
        return Err(StoreError::Corrupt {
            seq,
            reason: Corruption::ChecksumMismatch {
                stored: u32::try_from(stored).unwrap_or(u32::MAX),
                computed,
            },
        });
    }
    Ok(event)
}

fn undecodable<E: ToString>(seq: u64) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Corrupt {
        seq,
        reason: Corruption::Undecodable(e.to_string()),
    }
}

/// Connects and drives the connection on the current runtime.
async fn connect(config: &tokio_postgres::Config, what: &str) -> Result<Client, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| db_error(&format!("connecting the {what}"), &e))?;
    let what = what.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(connection = %what, error = %describe(&e), "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// What the store's thread needs.
struct ThreadParts {
    config: tokio_postgres::Config,
    options: PostgresOptions,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    reads: mpsc::UnboundedReceiver<ReadJob>,
    ready: std::sync::mpsc::SyncSender<Result<(), StoreError>>,
}

impl ThreadParts {
    /// The store's thread: its own runtime, until the store is dropped.
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ota-postgres-rt")
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = self.ready.send(Err(StoreError::from(e)));
                return;
            }
        };
        runtime.block_on(self.serve());
    }

    async fn serve(self) {
        let ThreadParts {
            config,
            options,
            shared,
            requests,
            reads,
            ready,
        } = self;
        let started = Instant::now();
        let opened = async {
            let writer = Writer::start(&config, Arc::clone(&shared)).await?;
            let reader = connect(&config, "reader").await?;
            Ok::<_, StoreError>((writer, reader))
        }
        .await;
        let (writer, reader) = match opened {
            Ok(parts) => parts,
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        };
        info!(
            last_seq = writer.last_seq,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "PostgreSQL event store open"
        );
        let stop = CancellationToken::new();
        let listener = tokio::spawn(listen(
            config.clone(),
            Arc::clone(&shared),
            stop.clone(),
            options.listen_retry,
        ));
        let reader = tokio::spawn(serve_reads(config, reader, reads, stop.clone()));
        let _ = ready.send(Ok(()));
        writer.run(requests).await;
        stop.cancel();
        let _ = listener.await;
        let _ = reader.await;
    }
}

/// Runs reads as they come, concurrently on one connection (the driver pipelines them);
/// reconnects when the connection is gone.
async fn serve_reads(
    config: tokio_postgres::Config,
    client: Client,
    mut jobs: mpsc::UnboundedReceiver<ReadJob>,
    stop: CancellationToken,
) {
    let mut client = Arc::new(client);
    loop {
        let job = tokio::select! {
            _ = stop.cancelled() => return,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        if client.is_closed() {
            match connect(&config, "reader").await {
                Ok(fresh) => client = Arc::new(fresh),
                Err(err) => {
                    tokio::spawn(job(Err(err)));
                    continue;
                }
            }
        }
        tokio::spawn(job(Ok(Arc::clone(&client))));
    }
}

/// Follows `ota_events` notifications into the durable mark until `stop`, reconnecting after
/// `retry` when the connection is lost.
async fn listen(
    config: tokio_postgres::Config,
    shared: Arc<Shared>,
    stop: CancellationToken,
    retry: Duration,
) {
    loop {
        match listen_once(&config, &shared, &stop).await {
            Ok(()) => return,
            Err(why) => warn!(error = %why, "PostgreSQL LISTEN connection lost; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// One LISTEN connection: `Ok` once stopped, `Err` when the connection failed.
async fn listen_once(
    config: &tokio_postgres::Config,
    shared: &Shared,
    stop: &CancellationToken,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(Ok(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(describe(&e)));
                    return;
                }
            }
        }
        let _ = tx.send(Err("connection closed".to_owned()));
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .map_err(|e| describe(&e))?;
        // Whatever committed before LISTEN took effect (or while disconnected).
        let max = max_seq(&client).await.map_err(|e| describe(&e))?;
        shared.advance(max);
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                message = rx.recv() => message,
            };
            match message {
                Some(Ok(payload)) => match payload.parse::<u64>() {
                    Ok(seq) => shared.advance(seq),
                    Err(_) => {
                        warn!(payload = %payload, "ignoring a malformed ota_events notification")
                    }
                },
                Some(Err(why)) => return Err(why),
                None => return Err("connection driver ended".to_owned()),
            }
        }
    }
    .await;
    drop(client);
    driver.abort();
    result
}

async fn max_seq(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let max: i64 = client
        .query_one("SELECT coalesce(max(seq), 0) FROM ota_events", &[])
        .await?
        .try_get(0)?;
    Ok(u64::try_from(max).unwrap_or(0))
}

/// Creates the schema if missing and checks its version.
async fn prepare_schema(client: &mut Client) -> Result<(), StoreError> {
    let err = |e: tokio_postgres::Error| db_error("preparing the schema", &e);
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute(SCHEMA_SQL).await.map_err(err)?;
    let found: i64 = tx
        .query_one(
            "SELECT value FROM ota_store_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    if found != i64::from(SCHEMA_VERSION) {
        return Err(StoreError::UnsupportedFormat {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The column arrays of one commit group's insert.
#[derive(Default)]
struct Rows {
    seq: Vec<i64>,
    stream: Vec<String>,
    version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    actor: Vec<String>,
    recorded_at_ms: Vec<i64>,
    payload: Vec<Vec<u8>>,
    crc32: Vec<i64>,
}

/// An append of the group that passed its checks, waiting for the commit.
struct Accepted {
    outcome: AppendOutcome,
    events: usize,
    started: Instant,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// A commit group after the version checks.
#[derive(Default)]
struct Planned {
    rows: Rows,
    accepted: Vec<Accepted>,
    /// The heads the group moves, to remember after the commit.
    heads: HashMap<String, u64>,
    last_seq: u64,
}

/// The single writer: one connection, the stream heads cache and the last committed seq.
struct Writer {
    client: Client,
    insert: Statement,
    shared: Arc<Shared>,
    /// Versions of streams this writer has seen (absent: ask the table).
    heads: HashMap<String, u64>,
    last_seq: u64,
    /// Set when a commit's outcome is unknown: the store then refuses every append.
    failed: Option<StoreError>,
}

impl Writer {
    /// Connects, prepares the schema and the insert, checks the log's tail, publishes the mark.
    async fn start(
        config: &tokio_postgres::Config,
        shared: Arc<Shared>,
    ) -> Result<Self, StoreError> {
        let mut client = connect(config, "writer").await?;
        prepare_schema(&mut client).await?;
        let err = |e: tokio_postgres::Error| db_error("opening the log", &e);
        client
            .batch_execute("SET synchronous_commit TO on")
            .await
            .map_err(err)?;
        let insert = client.prepare(INSERT_SQL).await.map_err(err)?;
        let last_seq = max_seq(&client).await.map_err(err)?;
        if last_seq > 0 {
            // The tail is complete and intact (the rest is verified as it is read).
            let from = last_seq.saturating_sub(OPEN_TAIL_CHECK - 1).max(1);
            read_seqs(&client, from, OPEN_TAIL_CHECK as usize, last_seq).await?;
        }
        shared.advance(last_seq);
        Ok(Writer {
            client,
            insert,
            shared,
            heads: HashMap::new(),
            last_seq,
            failed: None,
        })
    }

    /// Takes commit groups off the queue until it is closed and drained.
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(first) = requests.recv().await {
            let mut group = vec![first];
            let (mut events, mut bytes) = (0usize, 0usize);
            loop {
                if let Some(Request::Append {
                    batch, events: n, ..
                }) = group.last()
                {
                    events += n;
                    bytes += batch
                        .iter()
                        .flat_map(|sa| &sa.events)
                        .map(|e| e.payload.len())
                        .sum::<usize>();
                }
                if events >= GROUP_EVENTS || bytes >= GROUP_PAYLOAD_BYTES {
                    break;
                }
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit_group(group).await;
        }
    }

    async fn commit_group(&mut self, group: Vec<Request>) {
        let mut appends = Vec::with_capacity(group.len());
        let mut flushes = Vec::new();
        for request in group {
            match request {
                Request::Append {
                    batch,
                    events,
                    started,
                    reply,
                } => appends.push((batch, events, started, reply)),
                Request::Flush { reply } => flushes.push(reply),
            }
        }
        let result = self.write_appends(appends).await;
        for reply in flushes {
            let _ = reply.send(result.clone());
        }
    }

    /// Checks, inserts and answers the appends of one group; `Err` when the group failed.
    async fn write_appends(
        &mut self,
        appends: Vec<(Vec<StreamAppend>, usize, Instant, AppendReply)>,
    ) -> Result<(), StoreError> {
        let all_events: usize = appends.iter().map(|a| a.1).sum();
        let shared = Arc::clone(&self.shared);
        let pending = &shared.pending_events;
        if let Some(err) = self.failed.clone() {
            pending.fetch_sub(all_events as u64, Ordering::Relaxed);
            answer_all(appends.into_iter().map(|a| a.3), &err);
            return Err(err);
        }
        if self.shared.durable.borrow().seq > self.last_seq
            && let Err(err) = self.resync().await
        {
            pending.fetch_sub(all_events as u64, Ordering::Relaxed);
            let err = self.fail(db_error("reloading after another writer's commit", &err));
            answer_all(appends.into_iter().map(|a| a.3), &err);
            return Err(err);
        }
        if let Err(err) = self.load_heads(&appends).await {
            pending.fetch_sub(all_events as u64, Ordering::Relaxed);
            let err = self.after_failure(err).await;
            answer_all(appends.into_iter().map(|a| a.3), &err);
            return Err(err);
        }
        let planned = self.plan(appends);
        let accepted_events: usize = planned.accepted.iter().map(|a| a.events).sum();
        // Refused appends are answered already.
        pending.fetch_sub((all_events - accepted_events) as u64, Ordering::Relaxed);
        if planned.accepted.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let inserted = self.insert(&planned.rows, planned.last_seq).await;
        pending.fetch_sub(accepted_events as u64, Ordering::Relaxed);
        let result = match inserted {
            Ok(n) if n == planned.rows.seq.len() as u64 => Ok(()),
            Ok(n) => Err(StoreError::ConcurrentWriter(format!(
                "the commit group inserted {n} of {} events",
                planned.rows.seq.len()
            ))),
            Err(err) => Err(self.after_failure(err).await),
        };
        match result {
            Ok(()) => {
                self.shared.commit_latency.record(started.elapsed());
                self.committed(planned);
                Ok(())
            }
            Err(err) => {
                answer_all(planned.accepted.into_iter().map(|a| a.reply), &err);
                Err(err)
            }
        }
    }

    /// Another process committed (the listener moved the mark past this writer's last seq):
    /// its cached heads may be stale, so it forgets them and takes the log's last seq.
    async fn resync(&mut self) -> Result<(), tokio_postgres::Error> {
        self.heads.clear();
        self.last_seq = max_seq(&self.client).await?;
        Ok(())
    }

    /// Reads the heads of the group's streams the cache does not hold, in one query.
    async fn load_heads(
        &mut self,
        appends: &[(Vec<StreamAppend>, usize, Instant, AppendReply)],
    ) -> Result<(), tokio_postgres::Error> {
        let mut missing: Vec<&str> = appends
            .iter()
            .flat_map(|a| &a.0)
            .map(|sa| sa.stream.as_str())
            .filter(|s| !self.heads.contains_key(*s))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        if self.heads.len() + missing.len() > HEADS_CACHE {
            self.heads.clear();
        }
        let rows = self
            .client
            .query(
                "SELECT stream, max(version) FROM ota_events \
                 WHERE stream = ANY($1::text[]) GROUP BY stream",
                &[&missing],
            )
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let stream: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            found.insert(stream, u64::try_from(version).unwrap_or(0));
        }
        for stream in missing {
            let version = found.get(stream).copied().unwrap_or(0);
            self.heads.insert(stream.to_owned(), version);
        }
        Ok(())
    }

    /// Checks each append against the heads and the appends before it in the group; answers
    /// the ones that fail, gives the others their seqs and versions.
    fn plan(&self, appends: Vec<(Vec<StreamAppend>, usize, Instant, AppendReply)>) -> Planned {
        let mut planned = Planned {
            last_seq: self.last_seq,
            ..Planned::default()
        };
        for (batch, events, started, reply) in appends {
            let head = |stream: &str| {
                planned
                    .heads
                    .get(stream)
                    .or_else(|| self.heads.get(stream))
                    .copied()
                    .unwrap_or(0)
            };
            let checked: Result<Vec<u64>, StoreError> = batch
                .iter()
                .map(|sa| {
                    let actual = head(&sa.stream);
                    check_expected(&sa.stream, sa.expected, actual).map(|()| actual)
                })
                .collect();
            let before = match checked {
                Ok(before) => before,
                Err(err) => {
                    let _ = reply.send(Err(err));
                    continue;
                }
            };
            let outcome = planned.add(batch, before);
            planned.accepted.push(Accepted {
                outcome,
                events,
                started,
                reply,
            });
        }
        planned
    }

    /// Inserts the group in one statement (its own transaction); the number of rows inserted.
    async fn insert(&self, rows: &Rows, last_seq: u64) -> Result<u64, tokio_postgres::Error> {
        // Issue 16's leader lease adds its fencing check here, in the same statement: the
        // INSERT's SELECT gets `WHERE EXISTS (SELECT 1 FROM <lease> WHERE epoch = $11)`, and
        // 0 rows inserted means this writer was deposed.
        let row = self
            .client
            .query_one(
                &self.insert,
                &[
                    &rows.seq,
                    &rows.stream,
                    &rows.version,
                    &rows.event_type,
                    &rows.schema_version,
                    &rows.actor,
                    &rows.recorded_at_ms,
                    &rows.payload,
                    &rows.crc32,
                    &last_seq.to_string(),
                ],
            )
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// After a commit: remember heads and seq, publish the mark, answer the appenders.
    fn committed(&mut self, planned: Planned) {
        if self.heads.len() + planned.heads.len() > HEADS_CACHE {
            self.heads.clear();
        }
        self.heads.extend(planned.heads);
        self.last_seq = planned.last_seq;
        self.shared.advance(planned.last_seq);
        for accepted in planned.accepted {
            self.shared
                .append_latency
                .record(accepted.started.elapsed());
            let _ = accepted.reply.send(Ok(accepted.outcome));
        }
    }

    /// The error for a failed group. A statement the server refused rolled back: the writer
    /// reloads its seq, forgets its heads and goes on. Otherwise the outcome is unknown and
    /// the store fails (fail-stop).
    async fn after_failure(&mut self, err: tokio_postgres::Error) -> StoreError {
        let reported = if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            warn!(error = %describe(&err), "another writer appended to the event log; reloading");
            StoreError::ConcurrentWriter(describe(&err))
        } else if err.as_db_error().is_some() {
            warn!(error = %describe(&err), "PostgreSQL refused a commit group");
            db_error("committing", &err)
        } else {
            return self.fail(db_error("committing (outcome unknown)", &err));
        };
        self.heads.clear();
        match max_seq(&self.client).await {
            Ok(seq) => {
                self.last_seq = seq;
                reported
            }
            Err(e) => self.fail(db_error("reloading the last seq", &e)),
        }
    }

    fn fail(&mut self, err: StoreError) -> StoreError {
        tracing::error!(error = %err, "the PostgreSQL event store stops accepting appends");
        self.failed = Some(err.clone());
        self.shared
            .durable
            .send_modify(|mark| mark.failed = Some(err.clone()));
        err
    }
}

type AppendReply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

fn answer_all(replies: impl Iterator<Item = AppendReply>, err: &StoreError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

impl Planned {
    /// Adds one checked append (`before`: each stream's version before it); its outcome.
    fn add(&mut self, batch: Vec<StreamAppend>, before: Vec<u64>) -> AppendOutcome {
        let first_seq = self.last_seq + 1;
        let mut streams = Vec::with_capacity(batch.len());
        for (sa, mut version) in batch.into_iter().zip(before) {
            if sa.events.is_empty() {
                continue; // a guard: checked, writes nothing
            }
            for ev in sa.events {
                self.last_seq += 1;
                version += 1;
                let crc = checksum(
                    (self.last_seq, version, ev.schema_version, ev.recorded_at_ms),
                    [
                        sa.stream.as_bytes(),
                        ev.event_type.as_bytes(),
                        ev.actor.as_bytes(),
                        &ev.payload,
                    ],
                );
                let rows = &mut self.rows;
                rows.seq.push(sql_int(self.last_seq));
                rows.stream.push(sa.stream.clone());
                rows.version.push(sql_int(version));
                rows.event_type.push(ev.event_type);
                rows.schema_version.push(i32::from(ev.schema_version));
                rows.actor.push(ev.actor);
                rows.recorded_at_ms.push(ev.recorded_at_ms);
                rows.payload.push(ev.payload);
                rows.crc32.push(i64::from(crc));
            }
            self.heads.insert(sa.stream.clone(), version);
            streams.push(StreamVersion {
                stream: sa.stream,
                version,
            });
        }
        AppendOutcome {
            first_seq,
            last_seq: self.last_seq,
            streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_covers_every_field_and_the_seq() {
        let sum = |n: (u64, u64, u16, i64), f: [&str; 4]| checksum(n, f.map(str::as_bytes));
        let base = sum((1, 1, 1, 5), ["s", "T", "a", "p"]);
        for other in [
            sum((2, 1, 1, 5), ["s", "T", "a", "p"]),
            sum((1, 2, 1, 5), ["s", "T", "a", "p"]),
            sum((1, 1, 2, 5), ["s", "T", "a", "p"]),
            sum((1, 1, 1, 6), ["s", "T", "a", "p"]),
            sum((1, 1, 1, 5), ["t", "T", "a", "p"]),
            sum((1, 1, 1, 5), ["s", "U", "a", "p"]),
            sum((1, 1, 1, 5), ["s", "T", "b", "p"]),
            sum((1, 1, 1, 5), ["s", "T", "a", "q"]),
        ] {
            assert_ne!(base, other);
        }
        // Lengths separate the fields: moving a byte from one to the next changes the sum.
        assert_ne!(
            sum((1, 1, 1, 5), ["ab", "T", "", ""]),
            sum((1, 1, 1, 5), ["a", "bT", "", ""])
        );
    }

    #[test]
    fn a_group_gets_consecutive_seqs_and_versions() {
        let ev = |p: &[u8]| super::super::NewEvent {
            event_type: "E".into(),
            schema_version: 1,
            payload: p.to_vec(),
            actor: String::new(),
            recorded_at_ms: 0,
        };
        let mut planned = Planned {
            last_seq: 10,
            ..Planned::default()
        };
        let first = planned.add(
            vec![
                StreamAppend::new(
                    "a",
                    super::super::ExpectedVersion::Exact(2),
                    vec![ev(b"1"), ev(b"2")],
                ),
                StreamAppend::new("g", super::super::ExpectedVersion::Exact(7), vec![]),
            ],
            vec![2, 7],
        );
        assert_eq!((first.first_seq, first.last_seq), (11, 12));
        assert_eq!(
            first.streams,
            vec![StreamVersion {
                stream: "a".into(),
                version: 4
            }]
        );
        let second = planned.add(
            vec![StreamAppend::new(
                "b",
                super::super::ExpectedVersion::Any,
                vec![ev(b"3")],
            )],
            vec![0],
        );
        assert_eq!((second.first_seq, second.last_seq), (13, 13));
        assert_eq!(planned.rows.seq, vec![11, 12, 13]);
        assert_eq!(planned.rows.version, vec![3, 4, 1]);
        assert_eq!(planned.heads.get("a"), Some(&4));
        assert_eq!(planned.heads.get("g"), None, "a guard moves no head");
    }
}

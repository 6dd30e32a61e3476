//! The server's heart: the event store plus the fleet state projected from it.
//!
//! Writes go through [`Core::execute`]: a decision function looks at the current state and
//! returns the events to record, each stream with the version it expects; the store appends them
//! atomically and durably, or reports a conflict, in which case the decision is re-run on fresher
//! state. Reads go through [`Core::read`], a consistent snapshot of the projection.
//!
//! The projection is updated by one projector task that follows the store's durable tail, so it
//! only ever reflects acknowledged events and applies them strictly in sequence order. After an
//! `execute` returns, the projection already contains its events (read-your-writes).
//!
//! What this module does not do: protobuf (that is `api`), the dispatch and rollout loops (that
//! is `dispatch` and `rollouts`, around `ota_domain::dispatch` and `ota_domain::rollout::scheduler`),
//! or any decision itself.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ota_domain::events::{DomainEvent, streams};
use ota_domain::model::Actor;
use ota_domain::projection::{EventMeta, FleetState, TaskPhase};
use ota_domain::time::UnixMillis;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};

use crate::lock::RwLockExt;
use crate::snapshot;
use crate::store::{
    EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamAppend,
};

/// Wall-clock milliseconds that follow tokio's clock, so tests can pause and advance time.
///
/// The wall time is read once at creation; afterwards time advances with
/// `tokio::time::Instant`, which is monotonic in production and controllable in tests.
#[derive(Debug, Clone)]
pub struct Clock {
    base: UnixMillis,
    base_instant: tokio::time::Instant,
}

impl Clock {
    /// A clock starting at the current wall time.
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(UnixMillis::EPOCH + since_epoch)
    }

    /// A clock starting at a given wall time (tests).
    pub fn starting_at(base: UnixMillis) -> Self {
        Self {
            base,
            base_instant: tokio::time::Instant::now(),
        }
    }

    /// Now, on the wall clock.
    pub fn now(&self) -> UnixMillis {
        self.base + self.base_instant.elapsed()
    }

    /// The tokio instant at which wall time `at` is reached.
    pub fn instant_at(&self, at: UnixMillis) -> tokio::time::Instant {
        self.base_instant + at.since(self.base)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// An event as applied to the projection, for watchers.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Global sequence number.
    pub seq: u64,
    /// Stream.
    pub stream: String,
    /// Version of the stream after this event.
    pub stream_version: u64,
    /// When recorded.
    pub recorded_at_ms: UnixMillis,
    /// Who caused it.
    pub actor: String,
    /// The event.
    pub event: DomainEvent,
}

pub use ota_domain::decision::{Change, Expect};

/// The result of a successful [`Core::execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// First sequence number written (0 if nothing was written).
    pub first_seq: u64,
    /// Last sequence number written (0 if nothing was written).
    pub last_seq: u64,
}

/// Failures of the core itself.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// The log holds an event this build cannot read.
    #[error("event {seq} ({stream}) cannot be read: {reason}")]
    Undecodable {
        /// Sequence number.
        seq: u64,
        /// Stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// Concurrent writers kept winning.
    #[error("too much contention on {0}; try again")]
    Contention(String),
}

/// What the core reports to metrics (`crate::metrics`). Called synchronously on the append and
/// projector paths: implementations only bump counters.
pub trait CoreObserver: Send + Sync + std::fmt::Debug {
    /// An append of `events` events became durable after `elapsed`.
    fn appended(&self, events: usize, elapsed: Duration);
    /// A live event was applied to `state`; `task_before` is the phase its task (for events on
    /// a task stream) had before it.
    fn applied(&self, state: &FleetState, applied: &Applied, task_before: Option<TaskPhase>);
}

/// The fleet state and the version of every stream: task and device streams keep theirs in
/// their views (`FleetState::stream_version`), `versions` holds the others.
struct Projection {
    state: FleetState,
    versions: HashMap<String, u64>,
}

impl Projection {
    fn version_of(&self, stream: &str) -> Option<u64> {
        self.state
            .stream_version(stream)
            .or_else(|| self.versions.get(stream).copied())
    }
}

/// Where and how often the core writes projection snapshots (`crate::snapshot`).
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// The snapshot directory (`<data_dir>/snapshots`).
    pub dir: std::path::PathBuf,
    /// A snapshot after this many new events; 0: never write (an existing one is still used).
    pub every_events: u64,
}

/// The store and the projection.
pub struct Core {
    store: Arc<dyn EventStore>,
    projection: RwLock<Projection>,
    applied_tx: watch::Sender<u64>,
    events_tx: broadcast::Sender<Arc<Applied>>,
    clock: Clock,
    replay: Duration,
    /// The snapshot the startup began from (its sequence number), if any.
    from_snapshot: Option<u64>,
    observer: OnceLock<Arc<dyn CoreObserver>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("applied", &*self.applied_tx.borrow())
            .finish_non_exhaustive()
    }
}

/// Decodes a stored event.
pub fn decode(r: &RecordedEvent) -> Result<DomainEvent, CoreError> {
    DomainEvent::decode(&r.event_type, r.schema_version, &r.payload).map_err(|e| {
        CoreError::Undecodable {
            seq: r.seq,
            stream: r.stream.clone(),
            reason: e.to_string(),
        }
    })
}

fn meta(r: &RecordedEvent) -> EventMeta {
    EventMeta {
        seq: r.seq,
        recorded_at_ms: UnixMillis::from_unix_ms(r.recorded_at_ms),
        actor: r.actor.clone(),
    }
}

impl Core {
    /// Replays the whole log into a fresh projection, then follows the store's tail.
    ///
    /// Fails if any stored event cannot be decoded: the server must not run on a state it
    /// cannot explain.
    pub async fn start(store: Arc<dyn EventStore>, clock: Clock) -> Result<Arc<Core>, CoreError> {
        Self::start_with_snapshots(store, clock, None).await
    }

    /// Like [`Core::start`], but starts from the newest usable snapshot in `snapshots.dir`
    /// (replaying only the events after it) and writes a new snapshot every
    /// `snapshots.every_events` events in the background.
    pub async fn start_with_snapshots(
        store: Arc<dyn EventStore>,
        clock: Clock,
        snapshots: Option<SnapshotSettings>,
    ) -> Result<Arc<Core>, CoreError> {
        let started = tokio::time::Instant::now();
        let loaded = snapshots.as_ref().and_then(|s| {
            snapshot::load_newest(
                &s.dir,
                |point| {
                    let at = store.read_from(point.seq, 1).map_err(|e| e.to_string())?;
                    Ok(at.first().is_some_and(|r| {
                        r.seq == point.seq
                            && r.stream == point.stream
                            && r.stream_version == point.stream_version
                    }))
                },
                |path, why| warn!(path = %path.display(), reason = %why, "projection snapshot not used; replaying the log instead"),
            )
        });
        let from_snapshot = loaded.as_ref().map(|l| l.point.seq);
        let (mut state, mut versions) = match loaded {
            Some(l) => {
                info!(path = %l.path.display(), seq = l.point.seq, "projection snapshot loaded");
                (l.projected.state, l.projected.versions)
            }
            None => (FleetState::default(), HashMap::new()),
        };
        let mut next = from_snapshot.map_or(1, |seq| seq + 1);
        loop {
            let batch = store.read_from(next, 8192)?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                let event = decode(r)?;
                state.apply(&meta(r), &r.stream, &event);
                if !state.keep_stream_version(&r.stream, r.stream_version) {
                    versions.insert(r.stream.clone(), r.stream_version);
                }
                next = r.seq + 1;
            }
        }
        let replay = started.elapsed();
        let last = next - 1;
        info!(
            events = last,
            replayed = last - from_snapshot.unwrap_or(0),
            from_snapshot = from_snapshot.unwrap_or(0),
            replay_ms = replay.as_millis() as u64,
            firmware = state.firmware.len(),
            devices = state.devices.len(),
            rollouts = state.rollouts.len(),
            tasks = state.tasks.len(),
            "event log replayed"
        );
        let (applied_tx, _) = watch::channel(last);
        let (events_tx, _) = broadcast::channel(4096);
        let core = Arc::new(Core {
            store,
            projection: RwLock::new(Projection { state, versions }),
            applied_tx,
            events_tx,
            clock,
            replay,
            from_snapshot,
            observer: OnceLock::new(),
        });
        let projector = Arc::downgrade(&core);
        let mut tail = core.store.subscribe(last + 1);
        tokio::spawn(async move {
            while let Some(item) = tail.next().await {
                let Some(core) = projector.upgrade() else {
                    break;
                };
                match item {
                    Ok(r) => core.apply_recorded(r),
                    Err(e) => {
                        error!(error = %e, "event log tail failed; the projection stops here");
                        break;
                    }
                }
            }
            debug!("projector stopped");
        });
        if let Some(settings) = snapshots.filter(|s| s.every_events > 0) {
            core.spawn_snapshot_writer(settings, from_snapshot.unwrap_or(0));
        }
        Ok(core)
    }

    /// Writes a snapshot whenever `every_events` events were applied since the last one, and
    /// at least as many as the projection holds devices and tasks: a snapshot costs in
    /// proportion to the state (encoding it, its memory, writing it), so on a large fleet it is
    /// written less often, and a restart after a crash replays at most about as many events as
    /// the state holds objects. The projection is encoded under its read lock (writers wait
    /// that long); the file is written on a blocking thread.
    fn spawn_snapshot_writer(self: &Arc<Self>, settings: SnapshotSettings, mut last_written: u64) {
        let core = Arc::downgrade(self);
        let mut applied = self.applied_tx.subscribe();
        let mut every = settings.every_events.max(self.state_size());
        tokio::spawn(async move {
            loop {
                let seq = *applied.borrow_and_update();
                if seq >= last_written.saturating_add(every) {
                    let Some(core) = core.upgrade() else { break };
                    match core.write_snapshot(&settings.dir).await {
                        Ok(Some(point)) => {
                            last_written = point.seq;
                            every = settings.every_events.max(core.state_size());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %e, "could not write a projection snapshot; trying again later");
                            last_written = seq;
                        }
                    }
                }
                if applied.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Devices plus tasks in the projection: what a snapshot's cost grows with.
    fn state_size(&self) -> u64 {
        let p = self.projection.read_locked();
        (p.state.devices.len() + p.state.tasks.len()) as u64
    }

    /// Writes a snapshot of the projection as it is now into `dir`; none for an empty log.
    /// The projection is encoded straight into the snapshot's temporary file under the read
    /// lock (writers wait that long; no copy of the encoding is held in memory); making it
    /// durable runs on a blocking thread.
    pub async fn write_snapshot(
        &self,
        dir: &std::path::Path,
    ) -> std::io::Result<Option<snapshot::SnapshotPoint>> {
        let started = tokio::time::Instant::now();
        let pending = {
            let p = self.projection.read_locked();
            let seq = p.state.last_seq;
            if seq == 0 {
                return Ok(None);
            }
            // The log names the event at that seq (its stream and version, which let a later
            // start recognise the same log): one read, instead of tracking it on every applied
            // event.
            let at = self
                .store
                .read_from(seq, 1)
                .map_err(std::io::Error::other)?;
            let Some(event) = at.first().filter(|r| r.seq == seq) else {
                return Err(std::io::Error::other(format!(
                    "event {seq} is not in the log the projection came from"
                )));
            };
            let point = snapshot::SnapshotPoint {
                seq,
                stream: event.stream.clone(),
                stream_version: event.stream_version,
            };
            let pending = snapshot::write_state(dir, &point, &p.state, &p.versions)?;
            (point, pending)
        };
        let (point, pending) = pending;
        let encoded = started.elapsed();
        let path = tokio::task::spawn_blocking(move || pending.commit())
            .await
            .map_err(std::io::Error::other)??;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        info!(
            path = %path.display(),
            seq = point.seq,
            bytes,
            encode_ms = encoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "projection snapshot written"
        );
        Ok(Some(point))
    }

    fn apply_recorded(&self, r: RecordedEvent) {
        let event = match decode(&r) {
            Ok(e) => e,
            Err(e) => {
                // Only this build writes events, so this means a bug: make it loud.
                error!(error = %e, "cannot decode an event this server just wrote");
                self.applied_tx.send_replace(r.seq);
                return;
            }
        };
        let meta = meta(&r);
        let applied = Arc::new(Applied {
            seq: r.seq,
            stream: r.stream,
            stream_version: r.stream_version,
            recorded_at_ms: meta.recorded_at_ms,
            actor: r.actor,
            event,
        });
        {
            let mut p = self.projection.write_locked();
            let observer = self.observer.get();
            let task_before = observer
                .and_then(|_| applied.stream.strip_prefix(streams::TASK_PREFIX))
                .and_then(|id| p.state.tasks.get(id).map(Box::as_ref))
                .map(|t| t.phase);
            p.state.apply(&meta, &applied.stream, &applied.event);
            if !p
                .state
                .keep_stream_version(&applied.stream, applied.stream_version)
            {
                p.versions
                    .insert(applied.stream.clone(), applied.stream_version);
            }
            if let Some(o) = observer {
                o.applied(&p.state, &applied, task_before);
            }
        }
        self.applied_tx.send_replace(applied.seq);
        let _ = self.events_tx.send(applied);
    }

    /// Reports appends and applied events to `observer` from now on (events replayed at start
    /// are not reported). Only the first observer set counts.
    pub fn set_observer(&self, observer: Arc<dyn CoreObserver>) {
        let _ = self.observer.set(observer);
    }

    /// A snapshot of the state. Keep the guard short: writers wait for it.
    pub fn read(&self) -> StateGuard<'_> {
        StateGuard(self.projection.read_locked())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// How long the startup replay took.
    pub fn replay_duration(&self) -> Duration {
        self.replay
    }

    /// The version of `stream` as the projection knows it (0: no event yet).
    pub fn stream_version(&self, stream: &str) -> u64 {
        self.projection
            .read_locked()
            .version_of(stream)
            .unwrap_or(0)
    }

    /// The sequence number of the snapshot the startup began from; none: the whole log was
    /// replayed.
    pub fn started_from_snapshot(&self) -> Option<u64> {
        self.from_snapshot
    }

    /// Sequence number of the last event applied to the projection.
    pub fn applied_seq(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// Every applied event from now on.
    pub fn subscribe_applied(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.events_tx.subscribe()
    }

    /// A watch of the applied sequence number.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Waits until the projection has applied `seq`.
    pub async fn wait_applied(&self, seq: u64) {
        let mut rx = self.applied_tx.subscribe();
        let _ = rx.wait_for(|applied| *applied >= seq).await;
    }

    /// Decides and records events, retrying the decision on concurrency conflicts. Returns when
    /// the events are durable and applied to the projection.
    pub async fn execute<E, F>(&self, actor: &Actor, mut decide: F) -> Result<Committed, E>
    where
        F: FnMut(&FleetState) -> Result<Vec<Change>, E>,
        E: From<CoreError>,
    {
        let label = actor.label();
        for attempt in 0..8 {
            let batch: Vec<StreamAppend> = {
                let p = self.projection.read_locked();
                let changes = decide(&p.state)?;
                let now = self.clock.now();
                // Guards (no events, an expected version) only matter next to something written.
                if changes.iter().all(Change::is_guard) {
                    Vec::new()
                } else {
                    changes
                        .into_iter()
                        .filter(|c| !c.is_guard() || c.expect != Expect::Any)
                        .map(|c| {
                            let expected = match c.expect {
                                Expect::Any => ExpectedVersion::Any,
                                Expect::New => ExpectedVersion::NoStream,
                                Expect::Unchanged => match p.version_of(&c.stream) {
                                    Some(v) => ExpectedVersion::Exact(v),
                                    None => ExpectedVersion::NoStream,
                                },
                            };
                            StreamAppend {
                                stream: c.stream,
                                expected,
                                events: c
                                    .events
                                    .iter()
                                    .map(|e| NewEvent {
                                        event_type: e.type_name().to_string(),
                                        schema_version: e.schema_version(),
                                        payload: e.encode(),
                                        actor: label.clone(),
                                        recorded_at_ms: now.as_i64(),
                                    })
                                    .collect(),
                            }
                        })
                        .collect()
                }
            };
            if batch.is_empty() {
                return Ok(Committed {
                    first_seq: 0,
                    last_seq: 0,
                });
            }
            let events: usize = batch.iter().map(|sa| sa.events.len()).sum();
            let appending = tokio::time::Instant::now();
            match self.store.append(batch).await {
                Ok(outcome) => {
                    if let Some(o) = self.observer.get() {
                        o.appended(events, appending.elapsed());
                    }
                    self.wait_applied(outcome.last_seq).await;
                    return Ok(Committed {
                        first_seq: outcome.first_seq,
                        last_seq: outcome.last_seq,
                    });
                }
                Err(StoreError::Conflict { stream, .. }) => {
                    debug!(%stream, attempt, "concurrent change; deciding again");
                    self.wait_applied(self.store.last_seq()).await;
                    if attempt == 7 {
                        warn!(%stream, "giving up after repeated conflicts");
                        return Err(CoreError::Contention(stream).into());
                    }
                }
                Err(e) => return Err(CoreError::Store(e).into()),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}

/// A read guard on the fleet state.
pub struct StateGuard<'a>(RwLockReadGuard<'a, Projection>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = FleetState;
    fn deref(&self) -> &FleetState {
        &self.0.state
    }
}

impl std::fmt::Debug for StateGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateGuard")
            .field("last_seq", &self.0.state.last_seq)
            .finish()
    }
}

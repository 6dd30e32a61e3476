//! [`MemEventStore`]: the event store in memory. **For tests only.**
//!
//! Same semantics as the sled store (seqs, versions, optimistic concurrency, atomic
//! multi-stream appends, validation, subscriptions) so other modules can unit-test
//! against it, but nothing survives the process and an append is "durable" as soon as it
//! is in the vector. It keeps every event in memory and never fails with `Io` or
//! `Corrupt`. Cloning gives another handle to the same store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lock::MutexExt;

use super::stats::LatencyHistogram;
use super::subscription::DurableLog;
use super::{
    AppendOutcome, DurableMark, EventStore, RecordedEvent, StoreError, StoreStats, StreamAppend,
    StreamVersion, Subscription, check_expected, validate_batch,
};

/// An in-memory [`EventStore`] for tests.
#[derive(Clone, Debug, Default)]
pub struct MemEventStore {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    durable: watch::Sender<DurableMark>,
    append_latency: LatencyHistogram,
}

#[derive(Debug, Default)]
struct State {
    /// `events[i]` has seq `i + 1`.
    events: Vec<RecordedEvent>,
    /// Seqs of each stream's events; `seqs[v - 1]` is the seq of version `v`.
    streams: HashMap<String, Vec<u64>>,
}

impl MemEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied append: appends
        // check everything before the first push.
        self.state.locked()
    }
}

impl DurableLog for Shared {
    fn read_durable(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state();
        let start = usize::try_from(from_seq.max(1) - 1).unwrap_or(usize::MAX);
        let events = state.events.get(start..).unwrap_or_default();
        Ok(events.iter().take(limit).cloned().collect())
    }
}

impl EventStore for MemEventStore {
    fn append(&self, batch: Vec<StreamAppend>) -> BoxFuture<'_, Result<AppendOutcome, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            validate_batch(&batch)?;
            let outcome = {
                let mut state = self.shared.state();
                let mut before = Vec::with_capacity(batch.len());
                for sa in &batch {
                    let actual = state.streams.get(&sa.stream).map_or(0, |s| s.len() as u64);
                    check_expected(&sa.stream, sa.expected, actual)?;
                    before.push(actual);
                }
                let first_seq = state.events.len() as u64 + 1;
                let mut seq = first_seq;
                let mut streams = Vec::with_capacity(batch.len());
                for (sa, version) in batch.into_iter().zip(before) {
                    if sa.events.is_empty() {
                        // A guard: checked above, writes nothing.
                        continue;
                    }
                    let mut version = version;
                    let mut seqs = Vec::with_capacity(sa.events.len());
                    for ev in sa.events {
                        version += 1;
                        state.events.push(RecordedEvent {
                            seq,
                            stream: sa.stream.clone(),
                            stream_version: version,
                            event_type: ev.event_type,
                            schema_version: ev.schema_version,
                            payload: ev.payload,
                            actor: ev.actor,
                            recorded_at_ms: ev.recorded_at_ms,
                        });
                        seqs.push(seq);
                        seq += 1;
                    }
                    state
                        .streams
                        .entry(sa.stream.clone())
                        .or_default()
                        .extend(seqs);
                    streams.push(StreamVersion {
                        stream: sa.stream,
                        version,
                    });
                }
                let last_seq = seq - 1;
                // Publish while still holding the lock so marks are sent in seq order.
                self.shared.durable.send_modify(|mark| mark.seq = last_seq);
                AppendOutcome {
                    first_seq,
                    last_seq,
                    streams,
                }
            };
            self.shared.append_latency.record(started.elapsed());
            Ok(outcome)
        })
    }

    fn last_seq(&self) -> u64 {
        self.shared.durable.borrow().seq
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self
            .shared
            .state()
            .streams
            .get(stream)
            .map_or(0, |s| s.len() as u64))
    }

    fn read_from(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.shared.read_durable(from_seq, limit)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.shared.state();
        let Some(seqs) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(from_version.max(1) - 1).unwrap_or(usize::MAX);
        Ok(seqs
            .iter()
            .skip(skip)
            .map(|&seq| state.events[(seq - 1) as usize].clone())
            .collect())
    }

    fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription::new(&self.shared, &self.shared.durable, from_seq)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            events: self.last_seq(),
            pending_events: 0,
            disk_bytes: 0,
            append_latency: self.shared.append_latency.snapshot(),
            flush_latency: Default::default(),
        }
    }
}

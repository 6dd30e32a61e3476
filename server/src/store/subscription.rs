//! [`Subscription`]: catch-up then live delivery of events, shared by both stores.
//!
//! A subscription holds no queue fed by appenders. It remembers the next seq it owes
//! and watches the store's durable high-water mark (a `tokio::sync::watch`, which holds
//! one value, so notifications cannot pile up). Whenever the mark is ahead of it, it
//! re-reads the log by seq range in bounded chunks. Catch-up and live mode are therefore
//! the same code path: there is no hand-over point where events could be lost or
//! doubled, a lagging subscriber simply reads more from the log, appenders never wait
//! for subscribers, and memory per subscriber is bounded by one chunk.
//!
//! It does not persist its position: consumers checkpoint the last seq they processed
//! and subscribe again from the next one.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use tokio::sync::watch;

use super::{Corruption, DurableMark, RecordedEvent, StoreError};

/// Events read from the log per chunk.
pub(crate) const CHUNK: usize = 512;

/// Read access to the durable part of a log, implemented by both stores' shared state.
pub(crate) trait DurableLog: Send + Sync + 'static {
    /// Up to `limit` durable events with `seq >= from_seq`, in order.
    fn read_durable(&self, from_seq: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;
}

/// A stream of every event from a starting seq on, first from the log, then live.
///
/// Yields `Ok(event)` with consecutive seqs. Ends after yielding one `Err`: the store's
/// failure (`Io`, `Corrupt`) or [`StoreError::Closed`] once the store is dropped.
/// Use it as a [`futures::Stream`] or through [`Subscription::next`].
pub struct Subscription {
    inner: BoxStream<'static, Result<RecordedEvent, StoreError>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The events of `log` from `from_seq` on, woken by its durable mark `durable`; it holds
    /// the log weakly and ends with [`StoreError::Closed`] once the store is gone.
    pub(crate) fn new<L: DurableLog>(
        log: &Arc<L>,
        durable: &watch::Sender<DurableMark>,
        from_seq: u64,
    ) -> Self {
        let log: Weak<dyn DurableLog> = Arc::downgrade(log) as Weak<dyn DurableLog>;
        let durable = durable.subscribe();
        let state = Cursor {
            log,
            durable,
            next_seq: from_seq.max(1),
            buffer: VecDeque::new(),
        };
        let inner = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next_event().await {
                Ok(event) => Some((Ok(event), Some(state))),
                // Yield the error, then end the stream.
                Err(err) => Some((Err(err), None)),
            }
        });
        Subscription {
            inner: Box::pin(inner),
        }
    }

    /// The next event, or the error that ends the subscription, or `None` after it.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        futures::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for Subscription {
    type Item = Result<RecordedEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct Cursor {
    log: Weak<dyn DurableLog>,
    durable: watch::Receiver<DurableMark>,
    /// The seq of the next event to yield.
    next_seq: u64,
    /// Events read but not yet yielded; at most one chunk.
    buffer: VecDeque<RecordedEvent>,
}

impl Cursor {
    async fn next_event(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            let mark = {
                let mark = self.durable.borrow_and_update();
                if let Some(err) = &mark.failed
                    && mark.seq < self.next_seq
                {
                    return Err(err.clone());
                }
                mark.seq
            };
            if self.next_seq <= mark {
                self.fill(mark)?;
                continue;
            }
            // Nothing durable to deliver: wait for the mark to move. An error means the
            // store's state (and with it the sender) is gone.
            if self.durable.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }

    /// Reads the next chunk, known to be durable up to `mark`, into the buffer.
    fn fill(&mut self, mark: u64) -> Result<(), StoreError> {
        let log = self.log.upgrade().ok_or(StoreError::Closed)?;
        let events = match log.read_durable(self.next_seq, CHUNK) {
            Ok(events) => events,
            // Deliver what precedes the damage first; the next read reports it.
            Err(StoreError::Corrupt { seq, .. }) if seq > self.next_seq => {
                let before = usize::try_from(seq - self.next_seq).map_or(CHUNK, |n| n.min(CHUNK));
                log.read_durable(self.next_seq, before)?
            }
            Err(err) => return Err(err),
        };
        drop(log);
        // The log claims durability up to `mark`, so it must deliver `next_seq` now.
        let first = events.first().map(|e| e.seq);
        if first != Some(self.next_seq) {
            return Err(StoreError::Corrupt {
                seq: self.next_seq,
                reason: Corruption::Missing {
                    next_present: first.unwrap_or(mark + 1),
                },
            });
        }
        for event in events {
            if event.seq != self.next_seq {
                return Err(StoreError::Corrupt {
                    seq: self.next_seq,
                    reason: Corruption::Missing {
                        next_present: event.seq,
                    },
                });
            }
            self.next_seq += 1;
            self.buffer.push_back(event);
        }
        Ok(())
    }
}

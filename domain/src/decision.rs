//! What a decision wants written: events per stream, each with its optimistic-concurrency check.
//!
//! Every decision in this crate (a dispatch pass, a rollout step, a command handler in the
//! server) looks at a [`crate::projection::FleetState`] and answers with [`Change`]s. The server
//! appends them in one atomic append whose checks compare each stream with the version the
//! decision saw; a decision taken on a state that changed meanwhile is refused and taken again.
//! A [`Change::guard`] writes nothing: it only makes the append depend on a stream staying as it
//! was (a dispatch of a rollout's task depends on the rollout not having been paused or aborted
//! since the decision looked at it).

use crate::events::DomainEvent;

/// What a decision wants recorded on one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Stream name (see [`crate::events::streams`]).
    pub stream: String,
    /// Concurrency check.
    pub expect: Expect,
    /// Events, in order; empty for a guard.
    pub events: Vec<DomainEvent>,
}

/// The concurrency check of a [`Change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No check.
    Any,
    /// The stream must not exist yet.
    New,
    /// The stream must be exactly as the decision saw it.
    Unchanged,
}

impl Change {
    /// Events on a stream that must not have changed since the decision looked at it.
    pub fn unchanged(stream: impl Into<String>, events: Vec<DomainEvent>) -> Self {
        Self {
            stream: stream.into(),
            expect: Expect::Unchanged,
            events,
        }
    }

    /// Events on a new stream.
    pub fn new_stream(stream: impl Into<String>, events: Vec<DomainEvent>) -> Self {
        Self {
            stream: stream.into(),
            expect: Expect::New,
            events,
        }
    }

    /// Events without a concurrency check (facts that are true whatever else happened).
    pub fn any(stream: impl Into<String>, events: Vec<DomainEvent>) -> Self {
        Self {
            stream: stream.into(),
            expect: Expect::Any,
            events,
        }
    }

    /// No events: the append goes through only if `stream` is still as the decision saw it.
    pub fn guard(stream: impl Into<String>) -> Self {
        Self::unchanged(stream, Vec::new())
    }

    /// A guard writes nothing.
    pub fn is_guard(&self) -> bool {
        self.events.is_empty()
    }
}

/// Adds a guard on `stream` unless the changes already write (or guard) it.
pub fn ensure_guard(changes: &mut Vec<Change>, stream: &str) {
    if !changes.iter().any(|c| c.stream == stream) {
        changes.push(Change::guard(stream));
    }
}

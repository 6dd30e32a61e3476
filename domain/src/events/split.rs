//! Events with long lists, split so that no event outgrows the store's limit.
//!
//! A rollout names every device it plans (`RolloutStarted`), asks (`BatchCheckStarted`) and
//! leaves out (`BatchCheckCompleted`, `StageDevicesExcluded`): on a fleet of a million devices
//! one such list is tens of megabytes, and the store takes events of at most 4 MiB
//! (`ota_server::store::MAX_PAYLOAD_BYTES`). So one event holds at most
//! [`LIST_BYTES_PER_EVENT`] of lists; the rest goes into continuation events appended with it,
//! in the same atomic append:
//!
//! - `RolloutStarted` (stage names, no devices) then `RolloutPlanContinued` × n;
//! - `BatchCheckStarted` (no devices) then `BatchCheckContinued` × n (devices asked);
//! - `BatchCheckContinued` × n (outcomes) then `BatchCheckCompleted` (no outcomes);
//! - `StageDevicesExcluded` × n.
//!
//! Lists that fit stay one event, exactly as before, and the projection folds the parts to the
//! state one big event would give (tests below). What this module does not do: decide what goes
//! into the lists, or append.

use std::iter;

use super::{
    BatchCheckCompleted, BatchCheckContinued, BatchCheckStarted, DomainEvent, Exclusion,
    PlannedStage, RolloutPlanContinued, RolloutStarted, StageDevicesExcluded,
};

/// At most this many (estimated) payload bytes of lists in one event: a quarter of the store's
/// 4 MiB event limit, so the rest of an event and a margin for the estimate always fit, and
/// `events tail` streams each event in one gRPC message.
pub const LIST_BYTES_PER_EVENT: usize = 1 << 20;

/// Encoded size of an id, at most: postcard's length prefix (a varint, ≤ 5 bytes) and the bytes.
fn id_bytes(id: &str) -> usize {
    id.len() + 5
}

/// Encoded size of an exclusion, at most: two strings with their prefixes and the code.
fn exclusion_bytes(x: &Exclusion) -> usize {
    x.device_id.len() + x.reason.len() + 15
}

/// Cuts `items` into runs of at most `budget` estimated bytes each (an item larger than the
/// budget gets a run of its own), in order.
fn runs<T>(items: Vec<T>, bytes: impl Fn(&T) -> usize, budget: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut used = 0;
    for item in items {
        let size = bytes(&item);
        if !run.is_empty() && used + size > budget {
            out.push(std::mem::take(&mut run));
            used = 0;
        }
        used += size;
        run.push(item);
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

impl RolloutStarted {
    /// This event, split when its lists outgrow [`LIST_BYTES_PER_EVENT`]: append all, in order.
    pub fn into_events(self) -> Vec<DomainEvent> {
        self.into_events_within(LIST_BYTES_PER_EVENT)
    }

    fn into_events_within(self, budget: usize) -> Vec<DomainEvent> {
        let ids: usize = self
            .stages
            .iter()
            .flat_map(|s| &s.device_ids)
            .map(|id| id_bytes(id))
            .sum();
        let excluded: usize = self.exclusions.iter().map(exclusion_bytes).sum();
        if ids + excluded <= budget {
            return vec![self.into()];
        }
        let mut head = RolloutStarted {
            stages: Vec::with_capacity(self.stages.len()),
            exclusions: Vec::new(),
        };
        let mut rest: Vec<DomainEvent> = Vec::new();
        for (index, stage) in self.stages.into_iter().enumerate() {
            head.stages.push(PlannedStage {
                name: stage.name,
                device_ids: Vec::new(),
            });
            rest.extend(
                runs(stage.device_ids, |id| id_bytes(id), budget)
                    .into_iter()
                    .map(|run| {
                        RolloutPlanContinued {
                            stage: index as u32,
                            device_ids: run,
                            exclusions: Vec::new(),
                        }
                        .into()
                    }),
            );
        }
        rest.extend(
            runs(self.exclusions, exclusion_bytes, budget)
                .into_iter()
                .map(|run| {
                    RolloutPlanContinued {
                        stage: 0,
                        device_ids: Vec::new(),
                        exclusions: run,
                    }
                    .into()
                }),
        );
        iter::once(head.into()).chain(rest).collect()
    }
}

impl BatchCheckStarted {
    /// This event, split when its device list outgrows [`LIST_BYTES_PER_EVENT`].
    pub fn into_events(self) -> Vec<DomainEvent> {
        self.into_events_within(LIST_BYTES_PER_EVENT)
    }

    fn into_events_within(mut self, budget: usize) -> Vec<DomainEvent> {
        if self.device_ids.iter().map(|id| id_bytes(id)).sum::<usize>() <= budget {
            return vec![self.into()];
        }
        let ids = std::mem::take(&mut self.device_ids);
        let check_id = self.check_id.clone();
        let rest = runs(ids, |id| id_bytes(id), budget)
            .into_iter()
            .map(move |run| {
                BatchCheckContinued {
                    check_id: check_id.clone(),
                    device_ids: run,
                    timed_out: Vec::new(),
                    excluded: Vec::new(),
                }
                .into()
            });
        iter::once(self.into()).chain(rest).collect()
    }

    /// Folds the devices of the `BatchCheckContinued` events that follow a split start back
    /// into it (the whole start, as [`BatchCheckStarted::into_events`] was given it).
    pub fn joined<'a>(mut self, parts: impl IntoIterator<Item = &'a DomainEvent>) -> Self {
        for part in parts {
            if let DomainEvent::BatchCheckContinued(c) = part
                && c.check_id == self.check_id
            {
                self.device_ids.extend(c.device_ids.iter().cloned());
            }
        }
        self
    }
}

impl BatchCheckCompleted {
    /// This event, split when its lists outgrow [`LIST_BYTES_PER_EVENT`]: the outcomes first,
    /// the completion last.
    pub fn into_events(self) -> Vec<DomainEvent> {
        self.into_events_within(LIST_BYTES_PER_EVENT)
    }

    fn into_events_within(mut self, budget: usize) -> Vec<DomainEvent> {
        let timed_out: usize = self.timed_out.iter().map(|id| id_bytes(id)).sum();
        let excluded: usize = self.excluded.iter().map(exclusion_bytes).sum();
        if timed_out + excluded <= budget {
            return vec![self.into()];
        }
        let part = |timed_out, excluded| -> DomainEvent {
            BatchCheckContinued {
                check_id: self.check_id.clone(),
                device_ids: Vec::new(),
                timed_out,
                excluded,
            }
            .into()
        };
        let mut events: Vec<DomainEvent> = runs(
            std::mem::take(&mut self.timed_out),
            |id| id_bytes(id),
            budget,
        )
        .into_iter()
        .map(|run| part(run, Vec::new()))
        .collect();
        events.extend(
            runs(std::mem::take(&mut self.excluded), exclusion_bytes, budget)
                .into_iter()
                .map(|run| part(Vec::new(), run)),
        );
        events.push(self.into());
        events
    }
}

impl StageDevicesExcluded {
    /// This event, split into several of the same kind when its list outgrows
    /// [`LIST_BYTES_PER_EVENT`].
    pub fn into_events(self) -> Vec<DomainEvent> {
        self.into_events_within(LIST_BYTES_PER_EVENT)
    }

    fn into_events_within(self, budget: usize) -> Vec<DomainEvent> {
        if self.excluded.iter().map(exclusion_bytes).sum::<usize>() <= budget {
            return vec![self.into()];
        }
        let index = self.index;
        runs(self.excluded, exclusion_bytes, budget)
            .into_iter()
            .map(|excluded| StageDevicesExcluded { index, excluded }.into())
            .collect()
    }
}

#[cfg(test)]
mod tests;

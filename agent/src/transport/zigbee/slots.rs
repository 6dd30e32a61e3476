//! The update slots of one zigbee2mqtt network: which jobs transfer now, which wait for a slot,
//! and which sleepy jobs may keep a schedule armed in zigbee2mqtt. Pure: the jobs ask it and
//! act (publish, unschedule, abort); it only keeps the book.
//!
//! zigbee2mqtt runs a scheduled update on its own when the device next asks for an image (its
//! queryNextImageRequest), whatever else runs on the network. So a sleepy job holds no slot
//! while it waits for its wake-up, but its schedule is *armed* in zigbee2mqtt only while a
//! wake-up could take a slot without exceeding the network's limit: while fewer transfers run
//! than the limit allows, counting the mains jobs waiting for a slot first. When a transfer
//! takes the last slot (or a mains job waits for it), every armed schedule is disarmed
//! (`unschedule`); the mains job starts once none is armed; when a slot frees, the schedules are
//! armed again. A sleepy job whose device woke is a transfer like any other. Two armed devices
//! that wake within the moment it takes to disarm the others would run side by side: the
//! later one is over the limit and its job aborts it (`update/abort`, answered at the device's
//! next block request) and waits for the next wake-up.
//!
//! ```text
//!  mains job:   queued (13) ──slot granted──▶ transfer ──▶ done
//!  sleepy job:  disarmed (13) ◀──may_arm──▶ armed (5) ──device wakes──▶ transfer ──▶ done
//!                                                          over the limit: abort, disarmed
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A job on the network.
pub(crate) type JobKey = u64;

/// The book of one network.
#[derive(Debug)]
pub(crate) struct Book {
    capacity: usize,
    /// Jobs whose transfer runs (or is about to start: a granted mains job).
    active: BTreeSet<JobKey>,
    /// Mains jobs waiting for a slot, first come first served.
    queue: VecDeque<JobKey>,
    /// Sleepy jobs waiting for their wake-up, and whether their schedule is armed.
    sleepers: BTreeMap<JobKey, bool>,
    /// Counts changes, so jobs are woken only by real ones.
    version: u64,
}

/// What a sleepy job's wake-up means for the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// It has a slot: follow the transfer.
    Within,
    /// Another transfer took the last slot first: abort this one and wait again.
    OverLimit,
}

impl Book {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            active: BTreeSet::new(),
            queue: VecDeque::new(),
            sleepers: BTreeMap::new(),
            version: 0,
        }
    }

    /// Changes so far.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// A mains job wants a slot; it waits in line.
    pub(crate) fn enqueue(&mut self, key: JobKey) {
        if !self.queue.contains(&key) && !self.active.contains(&key) {
            self.queue.push_back(key);
            self.version += 1;
        }
    }

    /// Gives the job at the head of the line its slot when one is free and no armed schedule
    /// could take the last slot meanwhile. True once the job holds a slot.
    pub(crate) fn try_grant(&mut self, key: JobKey) -> bool {
        if self.active.contains(&key) {
            return true;
        }
        if self.queue.front() != Some(&key) || self.active.len() >= self.capacity {
            return false;
        }
        let fills = self.active.len() + 1 >= self.capacity;
        if fills && self.armed() > 0 {
            return false;
        }
        self.queue.pop_front();
        self.active.insert(key);
        self.version += 1;
        true
    }

    /// A sleepy job starts waiting for its wake-up (disarmed).
    pub(crate) fn add_sleeper(&mut self, key: JobKey) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.sleepers.entry(key) {
            e.insert(false);
            self.version += 1;
        }
    }

    /// Whether sleepy schedules may be armed now.
    pub(crate) fn may_arm(&self) -> bool {
        self.active.len() + self.queue.len().min(1) < self.capacity
    }

    /// Records whether `key`'s schedule is armed in zigbee2mqtt.
    pub(crate) fn set_armed(&mut self, key: JobKey, armed: bool) {
        if let Some(a) = self.sleepers.get_mut(&key)
            && *a != armed
        {
            *a = armed;
            self.version += 1;
        }
    }

    /// Armed schedules.
    pub(crate) fn armed(&self) -> usize {
        self.sleepers.values().filter(|a| **a).count()
    }

    /// `key`'s device woke and its scheduled transfer runs: it takes a slot, or is over the
    /// limit (then it stays a sleeper, counted disarmed: its job aborts the run and withdraws
    /// the schedule).
    pub(crate) fn sleeper_started(&mut self, key: JobKey) -> Started {
        if self.active.contains(&key) {
            return Started::Within;
        }
        if self.active.len() >= self.capacity {
            self.set_armed(key, false);
            return Started::OverLimit;
        }
        self.sleepers.remove(&key);
        self.active.insert(key);
        self.version += 1;
        Started::Within
    }

    /// A transfer that is followed without having asked (a recovered attempt) holds a slot.
    pub(crate) fn attach(&mut self, key: JobKey) {
        self.sleepers.remove(&key);
        self.queue.retain(|k| *k != key);
        self.active.insert(key);
        self.version += 1;
    }

    /// The job ended: whatever it held is free.
    pub(crate) fn done(&mut self, key: JobKey) {
        let before = self.active.len() + self.queue.len() + self.sleepers.len();
        self.active.remove(&key);
        self.queue.retain(|k| *k != key);
        self.sleepers.remove(&key);
        if self.active.len() + self.queue.len() + self.sleepers.len() != before {
            self.version += 1;
        }
    }

    /// Transfers running (or granted).
    pub(crate) fn active(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mains_job_waits_for_armed_schedules_to_be_withdrawn() {
        let mut b = Book::new(1);
        b.add_sleeper(10);
        assert!(b.may_arm());
        b.set_armed(10, true);
        // A mains job arrives: no more arming, and no slot while a schedule is armed.
        b.enqueue(1);
        assert!(!b.may_arm());
        assert!(!b.try_grant(1));
        b.set_armed(10, false);
        assert!(b.try_grant(1));
        assert!(!b.may_arm());
        // The sleeper's device wakes anyway (it was disarmed too late): over the limit.
        assert_eq!(b.sleeper_started(10), Started::OverLimit);
        assert_eq!(b.armed(), 0);
        b.done(1);
        assert!(b.may_arm(), "re-armed once the network is free");
        assert_eq!(b.sleeper_started(10), Started::Within);
        assert_eq!(b.active(), 1);
        assert!(!b.may_arm());
        b.done(10);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn mains_jobs_go_in_order_and_only_one_at_a_time() {
        let mut b = Book::new(1);
        b.enqueue(1);
        b.enqueue(2);
        let v = b.version();
        assert!(!b.try_grant(2), "not its turn");
        b.enqueue(2);
        assert_eq!(b.version(), v, "no change, no wake-up of the waiting jobs");
        assert!(b.try_grant(1));
        assert!(b.try_grant(1), "idempotent");
        assert!(!b.try_grant(2), "the slot is taken");
        b.done(1);
        assert!(b.try_grant(2));
    }

    #[test]
    fn a_larger_limit_keeps_schedules_armed_while_room_is_left() {
        let mut b = Book::new(2);
        b.add_sleeper(10);
        b.add_sleeper(11);
        b.set_armed(10, true);
        b.set_armed(11, true);
        b.enqueue(1);
        // One mains job waiting still leaves a slot for a wake-up.
        assert!(b.may_arm());
        assert!(b.try_grant(1), "the grant does not fill the network");
        assert!(b.may_arm());
        assert_eq!(b.sleeper_started(10), Started::Within);
        assert!(!b.may_arm(), "full: the other schedule must be withdrawn");
        assert_eq!(b.sleeper_started(11), Started::OverLimit);
        b.done(10);
        assert!(b.may_arm());
    }

    #[test]
    fn a_recovered_transfer_holds_a_slot() {
        let mut b = Book::new(1);
        b.attach(7);
        b.add_sleeper(10);
        assert!(!b.may_arm());
        b.enqueue(1);
        assert!(!b.try_grant(1));
        b.done(7);
        assert!(b.try_grant(1));
    }
}

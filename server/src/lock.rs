//! Locks that outlive a panic: a `std::sync` lock whose holder panicked is taken anyway.
//!
//! Every lock in otad guards state that a panicking holder cannot leave half-updated (maps
//! updated by one insert or remove, a projection applied event by event, queues pushed and
//! popped whole), so a poisoned lock is used as it is rather than spreading the panic to every
//! later caller. [`MutexExt::locked`], [`RwLockExt::read_locked`] and
//! [`RwLockExt::write_locked`] are the one place that says so; a lock whose state could be left
//! broken would need its own handling, not these.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], through poisoning.
pub trait MutexExt<T: ?Sized> {
    /// The guard, also when an earlier holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// [`RwLock::read`] and [`RwLock::write`], through poisoning.
pub trait RwLockExt<T: ?Sized> {
    /// A read guard, also when an earlier writer panicked.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// The write guard, also when an earlier writer panicked.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = Arc::new(Mutex::new(1));
        let rw = Arc::new(RwLock::new(1));
        let (m2, rw2) = (m.clone(), rw.clone());
        let panicked = std::thread::spawn(move || {
            let _m = m2.lock().unwrap();
            let _w = rw2.write().unwrap();
            panic!("holder panics");
        })
        .join();
        assert!(panicked.is_err());
        assert!(m.is_poisoned() && rw.is_poisoned());
        *m.locked() += 1;
        *rw.write_locked() += 1;
        assert_eq!((*m.locked(), *rw.read_locked()), (2, 2));
    }
}

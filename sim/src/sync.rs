//! The one place the simulators decide what a poisoned lock means.
//!
//! A `std::sync::Mutex` is poisoned when a thread panicked while holding it. The simulators' locks
//! guard plain device state that stays consistent between
//! statements, so a later holder takes the data as it is instead of panicking in turn. This
//! module does not make a panic safe; it only keeps one panic from spreading to every connection.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `lock()` that takes the data of a poisoned mutex as it is.
pub(crate) trait LockExt<T: ?Sized> {
    /// Locks, recovering the guard if an earlier holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

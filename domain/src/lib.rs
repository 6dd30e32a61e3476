//! Pure domain of the OTA rollout system.
//!
//! What this crate does: the status model, the stored events (versioned, upcast on load), the
//! projections built from them, rollout planning and the scheduling decisions.
//! What it does not do: I/O of any kind, spawning tasks, reading the clock. Callers pass `now`.

pub mod status;

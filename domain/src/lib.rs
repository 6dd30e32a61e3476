//! Pure domain of the OTA rollout system.
//!
//! What this crate does: the status model, the stored events (versioned, upcast on load), the
//! projections built from them, rollout planning and the scheduling decisions.
//! What it does not do: I/O of any kind, spawning tasks, reading the clock. Callers pass `now`.
//!
//! # Layout
//! - [`decision`]: [`decision::Change`], what a decision wants written and its concurrency check.
//! - [`status`]: Tuya-numbered upgrade statuses and error codes, [`status::TaskError`].
//! - [`model`]: value types stored in events (versions, device facts, firmware facts).
//! - [`events`]: every stored event, its schema version and codec, upcasters.
//! - [`projection`]: [`projection::FleetState`], the state folded from the log.
//! - [`tasks`]: decisions about one device update (fit, preflight, retries).
//! - [`dispatch`]: the dispatch decision over every unfinished task (budgets, limits, probes).
//! - [`rollout`]: rollout specification, planning and scheduling.
//! - [`health`]: health-gated success: the rollout's window per transport and the pure judgement
//!   of a device's samples over it (the agent samples, otad records the verdict).
//! - [`time`]: [`time::UnixMillis`], the type of every instant (durations are `Duration`).

pub mod decision;
pub mod dispatch;
pub mod events;
#[cfg(test)]
pub(crate) mod fixture;
pub mod health;
pub mod model;
pub mod projection;
pub mod rollout;
pub mod status;
pub mod tasks;
pub mod time;

//! Pure domain of the OTA rollout system.
//!
//! What this crate does: the status model, the stored events (versioned, upcast on load), the
//! projections built from them, rollout planning and the scheduling decisions.
//! What it does not do: I/O of any kind, spawning tasks, reading the clock. Callers pass `now`.
//!
//! # Layout
//! - [`status`]: Tuya-numbered upgrade statuses and error codes, [`status::TaskError`].
//! - [`model`]: value types stored in events (versions, device facts, firmware facts).
//! - [`events`]: every stored event, its schema version and codec, upcasters.
//! - [`projection`]: [`projection::FleetState`], the state folded from the log.
//! - [`tasks`]: decisions about one device update (fit, preflight, retries).
//! - [`rollout`]: rollout specification, planning and scheduling.

pub mod events;
pub mod model;
pub mod projection;
pub mod rollout;
pub mod status;
pub mod tasks;

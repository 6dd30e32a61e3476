//! Rollouts: the validated specification, target selection, planning and scheduling decisions.
//!
//! - [`spec`]: the validated specification with defaults resolved (stored in `RolloutCreated`).
//! - [`select`]: which devices a selector picks.
//! - [`plan`]: targets, exclusions with reasons, stage assignment and the duration estimate.
//! - [`lifecycle`]: draft → running ⇄ paused → completed | aborted, and the illegal moves.
//! - [`scheduler`]: the level-triggered reconcile of a running rollout (batch check, stages,
//!   thresholds, soak, deadlines, completion) and abort.
//! - [`abort`]: abort criteria over the devices that finished (AWS IoT Jobs' `abortConfig`).
//! - [`rate`]: how many devices may start per minute, with an exponential ramp (AWS IoT Jobs'
//!   `rolloutConfig`).
//! - [`rollback`]: the linked rollout that puts back what each device ran before.
//! - [`window`]: maintenance windows in a site's local time.
//! - [`eta`]: durations learned from the log (median transfer time per model and transport).
//! - [`auto`]: auto-upgrade of devices that appear or fall behind after a rollout completed.
//!
//! Everything here is pure: callers pass the fleet state and `now`.

pub mod abort;
pub mod approval;
pub mod auto;
pub mod eta;
pub mod lifecycle;
pub mod plan;
pub mod rate;
pub mod rollback;
pub mod scheduler;
pub mod select;
pub mod spec;
pub mod window;

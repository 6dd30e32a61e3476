//! Rollouts: the validated specification, target selection, planning and scheduling decisions.

pub mod select;
pub mod spec;

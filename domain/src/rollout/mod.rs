//! Rollouts: the validated specification and (later) planning and scheduling decisions.

pub mod spec;

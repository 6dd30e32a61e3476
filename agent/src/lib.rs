//! ota-agent: the per-site edge agent.

pub mod transport;

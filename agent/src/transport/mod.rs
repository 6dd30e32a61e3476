//! Update transports: each wraps a sans-I/O protocol from `ota-devproto` in a thin tokio driver.

pub mod esphome;
pub mod serial;
pub mod zigbee;

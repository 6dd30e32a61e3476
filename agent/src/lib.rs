//! ota-agent: the per-site edge agent.
//!
//! # Layout
//! - [`transport`]: the update transports (zigbee2mqtt, ESPHome, serial), each a thin tokio
//!   driver around a sans-I/O protocol from `ota-devproto`.
//! - [`secret`]: redacted secret strings for device credentials.

pub mod secret;
pub mod transport;

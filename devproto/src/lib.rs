//! Sans-I/O device protocols.
//!
//! Every protocol here is a state machine fed with bytes and `now`, producing bytes to send,
//! events and timeouts. Nothing here opens a socket, spawns a task or reads the clock; the agent
//! and the simulators wrap these machines in thin tokio drivers.
//!
//! # Layout
//! - [`esphome`]: ESPHome native OTA, uploader (client) and device roles, Noise framing.
//! - [`esphome_api`]: ESPHome native API (device info), client and device roles, plaintext and Noise.
//! - [`z2m`]: zigbee2mqtt OTA MQTT topics and payloads, in both directions.
//! - [`serial`]: ESP ROM bootloader serial protocol: SLIP framing, commands, responses.

pub mod esphome;
pub mod esphome_api;
pub mod serial;
pub mod z2m;

//! Simulators of the devices and bridges the agent talks to, speaking the real wire protocols.
//!
//! # Layout
//! - [`broker`]: an embedded MQTT broker (rumqttd) for the unit tier and the quickstart.
//! - [`esphome`]: an ESPHome device serving native OTA on TCP (and the web_server `/update` path).
//! - [`esphome_api`]: the native API port of that device (device info, project version).
//! - [`esphome_web`]: the web_server `/update` endpoint of that device.
//! - [`esphome_node`]: one device with all three ports.
//! - [`z2m`]: a zigbee2mqtt bridge with simulated Zigbee devices, on a real MQTT broker.
//! - [`esprom`]: an ESP ROM bootloader on a pseudo-terminal.

pub mod broker;
pub mod esphome;
pub mod esphome_api;
pub mod esphome_node;
pub mod esphome_web;
pub mod esprom;
mod sync;
pub mod z2m;

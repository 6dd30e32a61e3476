//! The ESPHome native API (TCP port 6053), the few messages an OTA system needs, without I/O:
//! who a device is and which firmware it runs (`DeviceInfo`: name, MAC, model, ESPHome version,
//! build time, project name and **project version**).
//!
//! What it does: both framings (plaintext `00 ‖ varint length ‖ varint type ‖ protobuf`, and Noise
//! `01 ‖ u16 length ‖ payload` with `Noise_NNpsk0_25519_ChaChaPoly_SHA256`, the prologue
//! `"NoiseAPIInit\0\0"` and the server hello carrying the node name and MAC); the messages
//! `Hello`, `DeviceInfo`, `Ping` and `Disconnect` with ESPHome's ids and field numbers (and the
//! sensor listing and states, for a device's uptime); a client
//! machine ([`Client`], what the agent uses) and a device machine ([`Server`], what the
//! simulator uses).
//!
//! What it does not do: sockets, clocks, randomness of its own (32 bytes of entropy go in),
//! entities, states, logs, services, the pre-2026.1 API password (`ConnectRequest`), or the
//! provisioning hand-off of a device that supports encryption but has no key yet.
//!
//! # Layout
//! - [`message`]: the messages (`prost` structs) and their ids.
//! - [`frame`]: plaintext and Noise frames.
//! - [`noise`]: prologue, server hello, handshake and transport ciphers.
//! - [`client`]: the client machine; diagram on [`ClientState`].
//! - [`server`]: the device machine.
//!
//! # Driving the client
//!
//! ```text
//! let mut c = Client::new(ClientConfig { client_info, noise_key }, os_random_32_bytes);
//! let stream = connect(host:6053) within the deadline;
//! loop {
//!     while let Some(b) = c.poll_transmit() { stream.write_all(&b).await }
//!     while let Some(ev) = c.poll_event() {
//!         match ev {
//!             Connected(_) => c.send(&Message::DeviceInfoRequest)?,
//!             Message(Message::DeviceInfoResponse(info)) => { keep info; c.disconnect() }
//!             Disconnected => return info,
//!             _ => {}
//!         }
//!     }
//!     match read(&mut buf) before the deadline {
//!         Ok(0) | Err(_) => c.handle_eof()?, Ok(n) => c.handle_input(&buf[..n])?,
//!         deadline => c.handle_timeout()?,
//!     }
//! }
//! ```

pub mod client;
pub mod frame;
pub mod message;
pub mod noise;
pub mod server;

#[cfg(test)]
mod tests;

pub use client::{ApiError, Client, ClientConfig, ClientEvent, ClientState};
pub use message::{
    DeviceInfoResponse, HelloRequest, HelloResponse, ListEntitiesSensorResponse, Message,
    SensorStateResponse,
};
pub use server::{Server, ServerConfig, ServerEvent, ServerState};

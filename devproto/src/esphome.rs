//! ESPHome native OTA (`ota: - platform: esphome`), both roles, without I/O.
//!
//! What it does: the uploader ([`Client`], what the agent uses) and the device ([`Device`], what
//! the simulator uses) as pure state machines that speak the protocol of ESPHome 2026.10 and
//! every generation still in the field: OTA versions 1 and 2, legacy (`40`/`46`) and extended
//! (`48 SS`) feature acks, SHA256 and legacy MD5 challenges, gzip and 4 KiB-window deflate,
//! Noise encryption (`Noise_NNpsk0_25519_ChaChaPoly_SHA256`), and every device error byte as a
//! typed [`ErrorCode`] whose message says what ESPHome means.
//!
//! What it does not do: open sockets, read the clock, sleep, retry or draw random numbers. Bytes
//! and 32 bytes of entropy go in; bytes to send, events and "what I am waiting for" come out.
//! Timeouts and retries belong to the driver.
//!
//! # Layout
//! - [`wire`]: magic, response bytes, feature bits, block size, ESPHome's timeouts.
//! - [`error`]: [`ErrorCode`] (device error bytes) and [`ClientError`].
//! - [`client`]: the uploader machine; its state diagram is on [`ClientState`].
//! - [`device`]: the device machine with a pluggable storage [`Backend`]; diagram on
//!   [`DeviceState`].
//! - [`noise`]: the Noise prologue and frame codec.
//! - [`compress`]: gzip and 4 KiB-window raw deflate as ESPHome's uploader makes them.
//! - `inflate`: a raw-deflate decoder as strict as the device's 4 KiB ring window.
//! - `auth`, `entropy`, `secret`: challenge hashes, seeded randomness, redacted secrets.
//!
//! # Driving the uploader
//!
//! One [`Client`] per connection attempt. A tokio driver is a short loop (sketch):
//!
//! ```text
//! let mut c = Client::new(config, image, os_random_32_bytes)?;   // queues the magic
//! let stream = connect(addr) within 20 s;                       // ESPHome: 20 s connect
//! stream.set_nodelay(true);    // control fields are tiny: never wait for a delayed ACK
//! loop {
//!     while let Some(bytes) = c.poll_transmit() { stream.write_all(&bytes).await }
//!     while let Some(ev) = c.poll_event() { report(ev) }        // Progress, LastChunkSent, ...
//!     match c.state() {
//!         ClientState::Done => { flush; close; return Ok }      // final 00 already written
//!         ClientState::Uploading => continue,                   // more blocks to write
//!         s => match timeout(s.timeout().unwrap(), stream.read(&mut buf)).await {
//!             Ok(Ok(0)) => c.handle_eof()?,
//!             Ok(Ok(n)) => c.handle_input(&buf[..n])?,
//!             Ok(Err(io)) => c.handle_eof()?,                   // reset = closed
//!             Err(_elapsed) => c.handle_timeout()?,
//!         },
//!     }
//! }
//! ```
//!
//! On error: [`ClientError::is_retryable`] is true only for network trouble before the last
//! block; once [`Event::LastChunkSent`] was seen ([`Client::may_have_committed`]) never retry:
//! check the device's version instead. Device error bytes are final (ESPHome never retries
//! them). Bound writes too (a device that stops reading stalls `write_all`) and call
//! [`Client::handle_timeout`] when that bound expires. [`Client::handle_input`] may compress the
//! image once (level 9, tens of milliseconds per MiB); drivers that mind can run it in
//! `spawn_blocking`.
//!
//! # Driving the device
//!
//! One [`Device`] per accepted connection: feed reads to [`Device::handle_input`] (EOF to
//! [`Device::handle_eof`]), write everything [`Device::poll_transmit`] yields, watch
//! [`Device::poll_event`], and close the socket once [`Device::is_closed`]. Time out with
//! [`Device::handle_timeout`]: 20 s after accept while [`DeviceState::in_data_phase`] is false,
//! 105 s without input after.

pub mod client;
pub mod compress;
pub mod device;
pub mod error;
pub mod noise;
pub mod wire;

mod auth;
pub(crate) mod entropy;
mod inflate;
mod secret;

#[cfg(test)]
mod tests;

pub use auth::AuthScheme;
pub use client::{Client, ClientConfig, ClientState, Event, Negotiated, Phase, Progress};
pub use device::{
    AcceptAll, Backend, Device, DeviceAuth, DeviceConfig, DeviceEvent, DeviceNoise, DeviceState,
    ReceivedImage,
};
pub use error::{ClientError, ErrorCode};
pub use secret::{NoiseKey, Password};
pub use wire::{Compression, OtaType, OtaVersion};

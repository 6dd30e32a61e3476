//! The `ota.v1` gRPC API.
//!
//! This crate holds only the `.proto` sources (in `proto/ota/v1/`) and the Rust code that
//! `tonic-prost-build` generates from them, checked in under `src/gen/`, plus (with the `domain`
//! feature) the few conversions from `ota-domain` values to wire values that otad and the agent
//! both write, so that each has one definition. No other hand-written logic lives here. `tests/codegen.rs` regenerates the code with `protox` (no system `protoc` needed)
//! and fails when the checked-in copy is stale; run it with `OTA_UPDATE_GENERATED=1` to refresh.
//!
//! Services: `FirmwareService`, `DeviceService`, `RolloutService`, `EventService`,
//! `AgentService`, `SystemService`, `SiteService`, `AccessService`.

/// Package `ota.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod v1 {
    include!("gen/ota.v1.rs");
}

#[cfg(feature = "domain")]
pub mod domain;

//! Test support for the workspace's tests, and nothing else (a dev-dependency only; never
//! published).
//!
//! - [`otad`]: a real otad in-process on loopback (sled in a temporary directory or the
//!   in-memory store, a clock that starts where the test says), its gRPC clients, waiting on
//!   its state.
//! - [`upload`]: firmware uploads as `FirmwareService.Upload` streams, and bearer tokens.
//! - [`session`]: an agent session driven message by message (or byte by byte).
//! - [`site`]: fake sites whose agents answer commands like a real agent, with simulated
//!   devices; device reports and rollout specs.
//! - [`pki`]: a test CA made with rcgen (no key is checked in), certificates for otad and for
//!   sites, TLS configurations and channels.
//! - `agent` (feature `agent`): the real agent core in a test — its options, a scripted
//!   transport, a run the test stops.
//! - [`store_contract`]: the `EventStore` contract as cases every store runs, and
//!   [`store_contract_tests!`] to write one test per case.
//! - [`postgres`]: a throwaway PostgreSQL cluster (initdb, unix socket, fresh databases) for
//!   the conformance tier and the store bench.
//! - [`bins`]: the workspace's executables, built by cargo first so a test never runs a stale one.
//!
//! What it does not do: start outside peers (mosquitto, prometheus: the conformance tier does;
//! `postgres` only starts a cluster when a test asks for one),
//! or hide failures — helpers panic with what they were waiting for.

#[cfg(feature = "agent")]
pub mod agent;
pub mod bins;
pub mod otad;
pub mod pki;
pub mod postgres;
pub mod session;
pub mod site;
pub mod store_contract;
pub mod upload;

pub use otad::{TestOtad, config, wait_until};
pub use upload::{authed, meta, upload, upload_firmware, upload_messages};

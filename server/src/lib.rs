//! otad: the central OTA rollout server.
//!
//! Every OTA fact is an event in an append-only log in sled; all state is a projection of that
//! log, rebuilt by replay at startup. The gRPC API serves operators (otactl) and site agents.
//!
//! # Layout
//! - [`store`]: the event store (trait, sled implementation, in-memory implementation for tests).
//! - [`core`]: the store plus the projected fleet state; every write goes through
//!   [`core::Core::execute`].
//! - [`api`]: the gRPC services, wire conversions and error mapping.
//! - [`dispatch`]: the dispatcher loop around `ota_domain::dispatch::decide` (moves queued tasks
//!   to their sites, times out the ones past their phase budget, probes unreachable devices).
//! - [`rollouts`]: drives running rollouts (batch check, stages, thresholds, soak, deadlines)
//!   and creates auto-upgrade tasks.
//! - [`reconcile_loop`]: the loop skeleton both share.
//! - [`checks`]: checks through the sites (ask, wait with one timeout, record each answer),
//!   for the device API and the rollouts' batch checks.
//! - [`sessions`]: live agent sessions (messages down, heartbeats, check answers).
//! - [`to_agent`]: what otad says to an agent (welcome, acks, commands) in its own terms;
//!   `api::agents` writes it as protobuf.
//! - [`lock`]: taking a `std::sync` lock whose holder panicked.
//! - [`blobs`]: content-addressed firmware images on disk.
//! - [`metrics`]: the OpenTelemetry instruments of the metric catalog and the gauges computed
//!   from the projection at collection time.
//! - [`config`], [`telemetry`]: configuration, logs and traces.
//! - [`wiring`]: [`wiring::Otad`], a running otad: opens the data directory, replays the log,
//!   starts the loops and mounts the api services on the gRPC server.
//! - [`quote`]: the one way errors and logs repeat what a client sent (at most 100 characters).
//! - [`tls`], [`tokens`], [`rate_limit`], [`security`]: the listener's TLS and agent identities,
//!   operator tokens, rate limits, and the access setup at startup (the authentication layer
//!   itself is `api::guard`).
//!
//! **Architecture invariant:** only `api` knows protobuf and `tonic::Status`; only `store`
//! knows sled; decisions live in `ota-domain` and are pure.

pub mod api;
pub mod app;
pub mod blobs;
pub mod checks;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod lock;
pub mod metrics;
pub mod quote;
pub mod rate_limit;
pub mod reconcile_loop;
pub mod rollouts;
pub mod security;
pub mod sessions;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod to_agent;
pub mod tokens;
pub mod wiring;

//! Telemetry shared by `otad` and `ota-agent`.
//!
//! - [`traces`]: logs to stderr and OpenTelemetry spans exported over OTLP/gRPC, configured from
//!   the service's config and the standard `OTEL_*` variables, and the W3C trace context that
//!   carries one trace from otad to the agent.
//! - [`metrics`]: OpenTelemetry instruments, pushed over OTLP and rendered for a Prometheus scrape
//!   endpoint (`/metrics`) for sites without a collector.
//! - [`prometheus`]: the `/metrics` HTTP endpoint serving the Prometheus text format.
//! - [`signal`]: the Ctrl-C / SIGTERM wait the service binaries share, and [`runtime`]: the
//!   tokio runtime their `main` runs in (neither is telemetry; here because they all depend on
//!   this crate).
//!
//! This crate knows nothing about OTA: the services define their own spans and instruments.

pub mod metrics;
pub mod prometheus;
pub mod runtime;
pub mod signal;
pub mod traces;

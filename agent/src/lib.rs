//! ota-agent: the per-site edge agent.
//!
//! One agent runs at each site. It dials out to otad, reports the site's devices, runs updates
//! through the site's transports and streams progress and results back. Reports survive
//! disconnects and restarts in an on-disk journal and reach the server exactly once.
//!
//! # Layout
//! - [`agent`]: the core: session with the server, commands, jobs, inventory.
//! - [`config`]: the configuration file; [`site`]: transports built from it.
//! - [`journal`]: the on-disk journal of reports and task attempts.
//! - [`download`]: fetching and verifying firmware images.
//! - [`health`]: the health window after an update: the transport looks, the domain judges.
//! - [`report`]: transport facts into wire reports.
//! - [`metrics`]: the agent's OpenTelemetry metrics and its Prometheus `/metrics` endpoint.
//! - [`transport`]: the update transports (zigbee2mqtt, ESPHome, serial), each a thin tokio
//!   driver around a sans-I/O protocol from `ota-devproto`.
//! - [`secret`]: redacted secret strings for device credentials.
//! - [`tls`]: the client certificate that binds the agent to its site; [`trust`]: the trusted
//!   firmware signing keys and the site's policy, checked before any image is downloaded.
//!
//! **Architecture invariant:** transports know nothing of the server, the journal or rollouts;
//! the core knows nothing of MQTT, TCP or serial lines.

pub mod agent;
pub mod config;
pub mod download;
pub mod health;
pub mod journal;
pub mod metrics;
pub mod report;
pub mod secret;
pub mod site;
mod sync;
pub mod tls;
pub mod transport;
pub mod trust;

//! What every API handler and background task shares.

use std::sync::Arc;

use ota_domain::time::UnixMillis;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::core::Core;
use crate::metrics::ServerMetrics;
use crate::sessions::Sessions;

/// The running server's shared parts.
#[derive(Debug)]
pub struct App {
    /// Event store and projection.
    pub core: Arc<Core>,
    /// Firmware blobs.
    pub blobs: BlobStore,
    /// Configuration.
    pub config: Config,
    /// Connected agents.
    pub sessions: Arc<Sessions>,
    /// When the server started.
    pub started_at: UnixMillis,
    /// Wakes the task dispatcher after something that may let a task move.
    pub dispatch_wake: Arc<Notify>,
    /// Serialises task creation, so two requests cannot both give a device a task.
    pub task_creation: tokio::sync::Mutex<()>,
    /// Cancelled when the server shuts down: long-lived streams (agent sessions, tails, watches)
    /// end on it so the graceful shutdown does not wait for them forever.
    pub shutdown: CancellationToken,
    /// The instruments (always there; served and pushed only when configured).
    pub metrics: Arc<ServerMetrics>,
}

impl App {
    /// Now, on the server's clock.
    pub fn now(&self) -> UnixMillis {
        self.core.clock().now()
    }
}

//! The health window in the core: once the transport reported that the device runs the target
//! version and the command carries a `health_window_s`, journal a progress report with the
//! window's end (`verify_until_ms`; otad records `TaskVerifying`), run the window
//! ([`crate::health::HealthRun`]) and hand its verdict to the result.
//!
//! What it does not do: judge or look (see [`crate::health`]). An agent restarted during a
//! window watches a whole window again once its transport's `recover` found the device on the
//! target.

use ota_domain::health::Health;
use ota_domain::status::{TaskError, UpgradeStatus};
use ota_proto::v1 as pb;
use std::time::Duration;
use tracing::{info, warn};

use super::{Agent, now_ms};
use crate::health::{HealthJob, HealthRun};
use crate::transport::{Transport, UpdateReport, VersionInfo};

/// The versions a report names: the human version and the Zigbee file version.
fn names(v: &VersionInfo) -> impl Iterator<Item = String> + '_ {
    v.version
        .iter()
        .cloned()
        .chain(v.file_version.map(|f| f.to_string()))
}

impl Agent {
    /// Watches the device of `u` for the command's health window after `report` (the
    /// transport's success). `Ok(Health::NotChecked)` at once without a window.
    pub(super) async fn verify_health(
        &self,
        u: &pb::UpdateCommand,
        transport: &dyn Transport,
        report: &UpdateReport,
    ) -> Result<Health, TaskError> {
        if u.health_window_s == 0 {
            return Ok(Health::NotChecked);
        }
        let firmware = u.firmware.clone().unwrap_or_default();
        let window = Duration::from_secs(u64::from(u.health_window_s));
        let job = HealthJob {
            device: u.device_local_id.clone(),
            window,
            accept_reachability: u.accept_reachability,
            expected: std::iter::once(firmware.version.clone())
                .chain(firmware.file_version.map(|f| f.to_string()))
                .chain(names(&report.to))
                .collect(),
            previous: names(&report.from).collect(),
        };
        let run = HealthRun::start(transport, job);
        if let Some(v) = run.verdict_now() {
            return v;
        }
        self.verifying(u, window).await;
        run.run().await
    }

    /// Journals the progress report that starts the window (status 6, `verify_until_ms`).
    async fn verifying(&self, u: &pb::UpdateCommand, window: Duration) {
        info!(
            window_s = window.as_secs(),
            "the device runs the target version; watching its health"
        );
        let at_ms = now_ms();
        let body = pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            status: UpgradeStatus::Downloaded.code() as i32,
            progress: 100.0,
            remaining_s: None,
            bytes_sent: 0,
            bytes_total: 0,
            detail: format!(
                "on the target version; watching its health for {}",
                humantime::format_duration(window)
            ),
            at_ms,
            // The window's end on this report's clock (otad takes the length and ends it on
            // its own clock).
            verify_until_ms: at_ms + window.as_millis() as i64,
        });
        if let Err(e) = self.journal_report(body).await {
            warn!(error = %e, "could not journal the start of the health window");
        }
    }
}

//! Checks: each device asked through its transport within the command's budget; sleepy devices
//! answered "awaiting wake-up" at once and asked again when they next talk.

use std::sync::Arc;
use std::time::Duration;

use ota_domain::status::{ErrorCode, TaskError};
use ota_proto::v1 as pb;
use tracing::{debug, warn};

use crate::report;
use crate::transport::Transport;

use crate::sync::LockExt;

use super::Agent;

impl Agent {
    /// A check of a sleepy device: "awaiting wake-up" now; when the device next talks it is
    /// checked again and the real answer is journaled (one look answers every check waiting
    /// for that device).
    pub(super) fn check_when_awake(
        self: &Arc<Self>,
        transport: Arc<dyn Transport>,
        check_id: String,
        local: String,
        budget: Duration,
    ) {
        {
            let mut waiting = self.sleepy_checks.locked();
            let ids = waiting.entry(local.clone()).or_default();
            let first = ids.is_empty();
            ids.push(check_id);
            if !first {
                return;
            }
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let woke = tokio::time::timeout(
                crate::transport::DEFAULT_WAKE_TIMEOUT,
                transport.next_contact(&local),
            )
            .await
            .is_ok();
            let answer = if woke {
                debug!(device = %local, "the sleepy device talked; checking it now");
                agent.ask(&transport, &local, budget).await
            } else {
                Err(TaskError::new(
                    ErrorCode::Offline,
                    format!(
                        "{local} did not wake up within {}",
                        humantime::format_duration(crate::transport::DEFAULT_WAKE_TIMEOUT)
                    ),
                ))
            };
            let ids = agent
                .sleepy_checks
                .locked()
                .remove(&local)
                .unwrap_or_default();
            for check_id in ids {
                let body = pb::agent_message::Body::CheckResult(agent.check_result(
                    &transport,
                    check_id,
                    &local,
                    answer.clone(),
                ));
                if let Err(e) = agent.journal_report(body).await {
                    warn!(error = %e, "could not journal a sleepy device's check result");
                }
            }
        });
    }

    pub(super) async fn ask(
        &self,
        transport: &Arc<dyn Transport>,
        local: &str,
        budget: Duration,
    ) -> Result<crate::transport::CheckReport, TaskError> {
        match tokio::time::timeout(budget, transport.check(local, budget)).await {
            Ok(r) => r,
            Err(_) => Err(TaskError::new(
                ErrorCode::BulkCheckTimeout,
                format!(
                    "no answer from {local} within {}",
                    humantime::format_duration(budget)
                ),
            )),
        }
    }

    pub(super) fn check_result(
        &self,
        transport: &Arc<dyn Transport>,
        check_id: String,
        local: &str,
        answer: Result<crate::transport::CheckReport, TaskError>,
    ) -> pb::CheckResult {
        match answer {
            Ok(r) => pb::CheckResult {
                check_id,
                device_local_id: local.to_owned(),
                reachable: r.reachable,
                device: Some(report::device(
                    transport.kind(),
                    &r.device,
                    &self.tags_of(local),
                )),
                update_available: r.update_available,
                error: None,
                awaiting_wakeup: false,
            },
            Err(e) => pb::CheckResult {
                check_id,
                device_local_id: local.to_owned(),
                reachable: false,
                device: None,
                update_available: None,
                error: Some(report::error(&e)),
                awaiting_wakeup: false,
            },
        }
    }

    pub(super) async fn run_check(self: Arc<Self>, c: pb::CheckCommand) {
        let deadline = Duration::from_millis(u64::from(c.timeout_ms.max(1000)));
        let checks = c.device_local_ids.iter().map(|local| {
            let agent = self.clone();
            let check_id = c.check_id.clone();
            let local = local.clone();
            async move {
                if let Some((transport, device)) = agent.find_device(&local)
                    && transport.is_sleepy(&local)
                {
                    // Asking now would wait for a wake-up the check cannot wait for.
                    agent.send_now(pb::agent_message::Body::CheckResult(pb::CheckResult {
                        check_id: check_id.clone(),
                        device_local_id: local.clone(),
                        reachable: device.reachable,
                        device: Some(report::device(
                            transport.kind(),
                            &device,
                            &agent.tags_of(&local),
                        )),
                        update_available: None,
                        error: None,
                        awaiting_wakeup: true,
                    }));
                    let budget = deadline.max(SLEEPY_CHECK_BUDGET);
                    agent.check_when_awake(transport, check_id, local, budget);
                    return;
                }
                let answer = match agent.find_device(&local) {
                    None => pb::CheckResult {
                        check_id,
                        device_local_id: local.clone(),
                        reachable: false,
                        device: None,
                        update_available: None,
                        error: Some(report::error(&TaskError::new(
                            ErrorCode::Offline,
                            format!("this site does not know device {local}"),
                        ))),
                        awaiting_wakeup: false,
                    },
                    Some((transport, _)) => {
                        // Leave a little of the server's timeout for the answer to travel.
                        let budget = deadline.mul_f64(0.9);
                        match tokio::time::timeout(budget, transport.check(&local, budget)).await {
                            Ok(r) => agent.check_result(&transport, check_id, &local, r),
                            Err(_) => return,
                        }
                    }
                };
                agent.send_now(pb::agent_message::Body::CheckResult(answer));
            }
        });
        futures::future::join_all(checks).await;
    }
}

/// How long the check of a sleepy device may take once it talked (zigbee2mqtt waits up to 60 s
/// for the device's answer to its image notify).
const SLEEPY_CHECK_BUDGET: Duration = Duration::from_secs(90);

//! Checks through the sites: ask devices through their agents, wait for the answers with one
//! timeout, record a `DeviceChecked` per device (5019 for a device that did not answer, 5020 for
//! one whose site has no agent connected, 5012 for one its site no longer reports).
//!
//! Used by `DeviceService.Check` and `BatchCheck` (`api::devices`, which only converts) and by
//! the rollout loop's batch check (`rollouts`). A sleepy device's later answer to a check it was
//! asleep for is recorded by `api::agents` through [`answer_to_checked`].
//!
//! What this module does not do: validate a request (the API does) or decide what a rollout does
//! with the answers (`ota_domain::rollout::scheduler`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ota_domain::events::{DeviceChecked, streams};
use ota_domain::model;
use ota_domain::projection::{DeviceView, FleetState};
use ota_domain::status::{ErrorCode, TaskError, UpgradeStatus};
use ota_domain::tasks::{best_firmware, firmware_fits, is_downgrade, is_on_target};

use crate::app::App;
use crate::core::{Change, CoreError};
use crate::sessions::CheckAnswer;
use crate::to_agent::{Body, ToAgent};

/// A device the log knows and its site still reports.
fn live_device<'a>(state: &'a FleetState, id: &str) -> Option<&'a DeviceView> {
    state
        .devices
        .get(id)
        .map(Box::as_ref)
        .filter(|d| !d.removed)
}

/// Asks devices through their sites, waits up to `timeout`, records every answer (and every
/// missing answer as 5019), and returns one check per device, in the order given.
pub async fn check_devices(
    app: &Arc<App>,
    actor: &model::Actor,
    check_id: &str,
    device_ids: &[String],
    firmware_id: Option<&str>,
    timeout: Duration,
) -> Result<Vec<DeviceChecked>, CoreError> {
    // Group by site; answer at once for devices whose site is not connected.
    let mut by_site: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut results: HashMap<String, DeviceChecked> = HashMap::new();
    let mut waiters = Vec::new();
    {
        let state = app.core.read();
        for id in device_ids {
            // A device its site stopped reporting (between the caller's look and now) gets an
            // answer like any other instead of failing the whole check.
            let Some(d) = live_device(&state, id) else {
                results.insert(id.clone(), gone_check(check_id, firmware_id, &state, id));
                continue;
            };
            if !app.sessions.is_connected(&d.site_id) {
                results.insert(
                    id.clone(),
                    failed_check(
                        check_id,
                        firmware_id,
                        d,
                        ErrorCode::AgentDisconnected,
                        format!("site {} has no agent connected", d.site_id),
                    ),
                );
                continue;
            }
            by_site
                .entry(d.site_id.clone())
                .or_default()
                .push(d.local_id.clone());
            waiters.push((
                id.clone(),
                app.sessions.wait_check(check_id, &d.site_id, &d.local_id),
            ));
        }
    }
    for (site, locals) in by_site {
        let msg = ToAgent::command(
            app.sessions.next_command_id(),
            Body::Check {
                check_id: check_id.to_string(),
                device_local_ids: locals,
                timeout_ms: timeout.as_millis() as u32,
            },
        );
        if let Err(e) = app.sessions.send(&site, msg) {
            tracing::warn!(site.id = %site, error = %e, "check not delivered");
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut answers: HashMap<String, CheckAnswer> = HashMap::new();
    for (id, rx) in waiters {
        if let Ok(Ok(answer)) = tokio::time::timeout_at(deadline, rx).await {
            answers.insert(id, answer);
        }
    }
    app.sessions.forget_check(check_id);

    let mut events = Vec::new();
    {
        let state = app.core.read();
        for id in device_ids {
            if let Some(done) = results.get(id) {
                events.push((id.clone(), done.clone()));
                continue;
            }
            let Some(d) = live_device(&state, id) else {
                events.push((id.clone(), gone_check(check_id, firmware_id, &state, id)));
                continue;
            };
            let checked = match answers.remove(id) {
                None => failed_check(
                    check_id,
                    firmware_id,
                    d,
                    ErrorCode::BulkCheckTimeout,
                    format!("no answer within {}", humantime::format_duration(timeout)),
                ),
                Some(a) => answer_to_checked(&state, check_id, firmware_id, d, &a, None),
            };
            events.push((id.clone(), checked));
        }
    }
    // Only devices the log knows get an event: a stream is never named after an id nobody
    // reported (callers refuse such ids; this keeps it so whatever the caller).
    let recorded: Vec<(String, DeviceChecked)> = {
        let state = app.core.read();
        events
            .iter()
            .filter(|(id, _)| state.devices.contains_key(id))
            .cloned()
            .collect()
    };
    // One append per chunk: a check of a large fleet has more devices than one append may hold
    // (`store::MAX_EVENTS_PER_APPEND`); each device's result stands alone.
    for chunk in recorded.chunks(crate::store::MAX_EVENTS_PER_APPEND / 4) {
        app.core
            .execute::<CoreError, _>(actor, |_| {
                Ok(chunk
                    .iter()
                    .map(|(id, e)| Change::any(streams::device(id), vec![e.clone().into()]))
                    .collect())
            })
            .await?;
    }
    Ok(events.into_iter().map(|(_, e)| e).collect())
}

/// What a device's answer to a check means, as the event to record. A sleepy device that did not
/// answer because it sleeps is status 5 (waiting for wake-up), not a failure; its site answers
/// again when it wakes. `source` is the journaled report of such a later answer.
pub fn answer_to_checked(
    state: &FleetState,
    check_id: &str,
    firmware_id: Option<&str>,
    d: &DeviceView,
    a: &CheckAnswer,
    source: Option<model::AgentSource>,
) -> DeviceChecked {
    let error = a.error.clone();
    if a.awaiting_wakeup && error.is_none() {
        return DeviceChecked {
            check_id: check_id.to_string(),
            firmware_id: firmware_id.map(str::to_string),
            status: UpgradeStatus::WaitingForWakeup,
            // Reachable means what the site says of the device, in lists and checks alike: a
            // sleepy device its site knows is reachable, it just sleeps now.
            reachable: d.facts.reachable,
            current: d.facts.current.clone(),
            update_available: None,
            error: None,
            source,
        };
    }
    let catalog: Vec<_> = state.firmware.values().map(|f| &f.registered).collect();
    let facts = a.facts.clone().unwrap_or_else(|| d.facts.clone());
    let target = match firmware_id {
        Some(fid) => state.firmware.get(fid).map(|f| &f.registered),
        None => best_firmware(catalog.iter().copied(), &facts),
    };
    let available = target.is_some_and(|fw| {
        firmware_fits(fw, &facts).is_ok() && !is_on_target(fw, &facts) && !is_downgrade(fw, &facts)
    }) || a.update_available == Some(true)
        && firmware_id.is_none()
        && target.is_some();
    DeviceChecked {
        check_id: check_id.to_string(),
        firmware_id: target.map(|f| f.id.clone()),
        status: if error.is_some() {
            UpgradeStatus::Failure
        } else if available {
            UpgradeStatus::Available
        } else {
            UpgradeStatus::None
        },
        reachable: a.reachable,
        current: facts.current.clone(),
        update_available: a.update_available,
        error,
        source,
    }
}

fn failed_check(
    check_id: &str,
    firmware_id: Option<&str>,
    d: &DeviceView,
    code: ErrorCode,
    message: String,
) -> DeviceChecked {
    unreachable_check(
        check_id,
        firmware_id,
        d.facts.current.clone(),
        code,
        message,
    )
}

/// The answer for a device its site no longer reports (5012).
fn gone_check(
    check_id: &str,
    firmware_id: Option<&str>,
    state: &FleetState,
    id: &str,
) -> DeviceChecked {
    let current = state
        .devices
        .get(id)
        .map(|d| d.facts.current.clone())
        .unwrap_or_default();
    unreachable_check(
        check_id,
        firmware_id,
        current,
        ErrorCode::Offline,
        "its site no longer reports this device".into(),
    )
}

/// A failed check of a device that did not answer, still running `current`.
fn unreachable_check(
    check_id: &str,
    firmware_id: Option<&str>,
    current: model::VersionInfo,
    code: ErrorCode,
    message: String,
) -> DeviceChecked {
    DeviceChecked {
        check_id: check_id.to_string(),
        firmware_id: firmware_id.map(str::to_string),
        status: UpgradeStatus::Failure,
        reachable: false,
        current,
        update_available: None,
        error: Some(TaskError::new(code, message)),
        source: None,
    }
}

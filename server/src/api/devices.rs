//! `DeviceService`: the fleet's devices, checks through their sites, single-device updates.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use ota_domain::events::{
    AutoUpgradeSet, DeviceChecked, TaskCancelled, TaskConfirmed, TaskCreated, streams,
};
use ota_domain::model;
use ota_domain::projection::{DeviceView, FleetState};
use ota_domain::rollout::select;
use ota_domain::rollout::spec::{RetryPolicy, UpgradeType};
use ota_domain::status::{ErrorCode, UpgradeStatus};
use ota_domain::tasks::{can_update, firmware_fits, is_downgrade, is_on_target, target_version};
use ota_domain::time::UnixMillis;
use ota_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use super::bounds::{MAX_DEVICE_TIMEOUT_S, MAX_WAKE_TIMEOUT_S};
use super::caller::{Caller, Role, caller};
use super::convert;
use super::error::{ApiError, ApiResult};
use super::paging::Page;
use crate::app::App;
use crate::checks::check_devices;
use crate::core::Change;
use crate::quote::quote;

/// Largest number of devices one batch check may ask.
pub const MAX_BATCH_CHECK: usize = 10_000;

/// The service.
#[derive(Debug, Clone)]
pub struct DeviceApi {
    app: Arc<App>,
}

impl DeviceApi {
    /// A service over the app.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn device_pb(app: &App, state: &FleetState, d: &DeviceView) -> pb::Device {
    convert::device(
        d,
        state,
        app.sessions.is_connected(&d.site_id),
        app.sessions.last_seen(&d.id),
    )
}

/// A device's auto-upgrade setting, as `GetAutoUpgrade` and `SetAutoUpgrade` answer it.
fn auto_upgrade_setting(d: &DeviceView) -> pb::AutoUpgradeSetting {
    pb::AutoUpgradeSetting {
        device_id: d.id.clone(),
        supported: can_update(&d.facts),
        enabled: d.auto_upgrade,
    }
}

fn find_device<'a>(state: &'a FleetState, id: &str) -> ApiResult<&'a DeviceView> {
    if id.is_empty() {
        return Err(ApiError::invalid(
            "device id is required (\"<site>/<local id>\")",
        ));
    }
    state
        .devices
        .get(id)
        .map(Box::as_ref)
        .filter(|d| !d.removed)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no device {}: `otactl device list` shows the known devices",
                quote(id)
            ))
        })
}

/// A unique id with a prefix.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn check_pb(
    state: &FleetState,
    device_id: &str,
    c: &DeviceChecked,
    at: UnixMillis,
) -> pb::DeviceCheck {
    let fw = c.firmware_id.as_ref().and_then(|id| state.firmware.get(id));
    let device = state.devices.get(device_id).map(Box::as_ref);
    let remind = match (&c.error, c.status, device) {
        (Some(e), _, _) => e.message.clone(),
        (None, UpgradeStatus::Available, Some(d))
            if d.facts.battery_percent.is_some_and(|b| b < 70) =>
        {
            format!(
                "battery at {} %: charge it before updating",
                d.facts.battery_percent.unwrap_or_default()
            )
        }
        _ => String::new(),
    };
    pb::DeviceCheck {
        device_id: device_id.to_string(),
        status: convert::status(c.status),
        current: Some(convert::version(&c.current)),
        available_firmware_id: if c.status == UpgradeStatus::Available {
            c.firmware_id.clone().unwrap_or_default()
        } else {
            String::new()
        },
        available: fw
            .filter(|_| c.status == UpgradeStatus::Available)
            .map(|f| convert::version(&target_version(&f.registered))),
        can_upgrade: c.status == UpgradeStatus::Available && remind.is_empty(),
        remind,
        error: c.error.as_ref().map(convert::task_error),
        reachable: c.reachable,
        checked_at_ms: at.as_i64(),
    }
}

fn selector_from(sel: &pb::DeviceSelector) -> ApiResult<ota_domain::rollout::spec::Selector> {
    convert::selector_from_pb("selector", sel).map_err(|e| ApiError::invalid(e.to_string()))
}

/// The upgrade type of an `UpdateDevice` request (not `check`: that installs nothing) and its
/// timeouts within their bounds.
fn update_request_checked(req: &pb::UpdateDeviceRequest) -> ApiResult<UpgradeType> {
    let upgrade_type = UpgradeType::from_code(req.upgrade_type as u32).ok_or_else(|| {
        ApiError::invalid(format!(
            "upgrade_type {} is unknown: 0 notify, 2 forced, 3 check",
            req.upgrade_type
        ))
    })?;
    if upgrade_type == UpgradeType::Check {
        return Err(ApiError::invalid(
            "upgrade_type check installs nothing: use DeviceService.Check",
        ));
    }
    if req.timeout_s > MAX_DEVICE_TIMEOUT_S {
        return Err(ApiError::invalid(format!(
            "timeout_s is at most {MAX_DEVICE_TIMEOUT_S} (24 h)"
        )));
    }
    if req.wake_timeout_s > MAX_WAKE_TIMEOUT_S {
        return Err(ApiError::invalid(format!(
            "wake_timeout_s is at most {MAX_WAKE_TIMEOUT_S} (30 days)"
        )));
    }
    Ok(upgrade_type)
}

/// Decides an `UpdateDevice`: the device and firmware exist, the device has no active task,
/// the image fits it, is not what it runs, and is older only when allowed; then one task.
fn decide_update(
    state: &FleetState,
    req: &pb::UpdateDeviceRequest,
    task_id: &str,
    upgrade_type: UpgradeType,
) -> ApiResult<Vec<Change>> {
    let d = find_device(state, &req.device_id)?;
    let fw = state.firmware.get(&req.firmware_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no firmware {}: `otactl firmware list` shows the catalog",
            quote(&req.firmware_id)
        ))
    })?;
    if let Some(t) = state.active_task_of(&d.id) {
        return Err(ApiError::precondition(format!(
            "device {} already has task {} ({}); cancel it or wait for it to end",
            d.id,
            t.created.task_id,
            t.phase.name()
        )));
    }
    let fw = &fw.registered;
    if let Err(why) = firmware_fits(fw, &d.facts) {
        return Err(ApiError::precondition(format!("5013: {why}")));
    }
    if is_on_target(fw, &d.facts) {
        return Err(ApiError::precondition(format!(
            "5000: {} already runs {}",
            d.id,
            target_version(fw).version
        )));
    }
    if is_downgrade(fw, &d.facts) && !req.allow_downgrade {
        return Err(ApiError::precondition(format!(
            "{} runs {}, newer than {}: pass allow_downgrade to install an older version",
            d.id,
            d.facts.current.version,
            target_version(fw).version
        )));
    }
    if req.flash_offset.is_some() && d.facts.transport != Some(model::Transport::Serial) {
        return Err(ApiError::invalid("flash_offset is only for serial devices"));
    }
    let retry = RetryPolicy::default();
    let (from, from_firmware_id) = ota_domain::rollout::rollback::before_update(state, &d.facts);
    Ok(vec![Change::new_stream(
        streams::task(task_id),
        vec![
            TaskCreated {
                task_id: task_id.to_string(),
                device_id: d.id.clone(),
                site_id: d.site_id.clone(),
                rollout_id: None,
                stage: 0,
                firmware_id: fw.id.clone(),
                target: target_version(fw),
                upgrade_type,
                downgrade: req.allow_downgrade,
                max_attempts: retry.max_attempts,
                initial_backoff_s: retry.initial_backoff_s,
                max_backoff_s: retry.max_backoff_s,
                timeout_s: req.timeout_s,
                flash_offset: req.flash_offset,
                auto: false,
                wake_timeout_s: req.wake_timeout_s,
                from,
                from_firmware_id,
            }
            .into(),
        ],
    )])
}

impl DeviceApi {
    /// Records what `decide` returns for `who`, then wakes the dispatcher (the change may let a
    /// task go or hold it).
    async fn record(
        &self,
        who: &Caller,
        decide: impl FnMut(&FleetState) -> ApiResult<Vec<Change>>,
    ) -> Result<(), Status> {
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), decide)
            .await?;
        self.app.dispatch_wake.notify_one();
        Ok(())
    }

    /// Waits until the task has ended (or the server shuts down).
    async fn wait_until_ended(&self, task_id: &str) -> Result<(), Status> {
        let mut applied = self.app.core.subscribe_applied();
        let stream = streams::task(task_id);
        loop {
            {
                let state = self.app.core.read();
                if state
                    .tasks
                    .get(task_id)
                    .is_some_and(|t| t.phase.is_terminal())
                {
                    return Ok(());
                }
            }
            let next = tokio::select! {
                () = self.app.shutdown.cancelled() => {
                    return Err(ApiError::Unavailable("the server is shutting down; the task continues after it restarts".into()).into());
                }
                next = applied.recv() => next,
            };
            match next {
                Ok(a) if a.stream == stream => {}
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

#[tonic::async_trait]
impl pb::device_service_server::DeviceService for DeviceApi {
    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        let page = Page::from_pb(req.page.as_ref())?;
        let transport = convert::transport_from(req.transport).map_err(ApiError::invalid)?;
        if let Some(s) = req.status
            && UpgradeStatus::from_code(s as u32).is_none()
        {
            return Err(ApiError::invalid(format!("unknown status {s}")).into());
        }
        let state = self.app.core.read();
        let devices: Vec<pb::Device> = state
            .devices
            .values()
            .filter(|d| !d.removed)
            .filter(|d| req.site_id.is_empty() || d.site_id == req.site_id)
            .filter(|d| transport.is_none() || d.facts.transport == transport)
            .filter(|d| req.model.is_empty() || d.facts.model.eq_ignore_ascii_case(&req.model))
            .filter(|d| req.tag.is_empty() || d.facts.tags.contains(&req.tag))
            .map(|d| device_pb(&self.app, &state, d))
            .filter(|d| {
                req.version.is_empty()
                    || d.current.as_ref().is_some_and(|v| v.version == req.version)
            })
            .filter(|d| req.status.is_none_or(|s| d.status == s))
            .filter(|d| req.reachable.is_none_or(|r| d.reachable == r))
            .collect();
        let total = devices.len() as u32;
        let (devices, next_page_token) = page.apply(devices);
        Ok(Response::new(pb::ListDevicesResponse {
            devices,
            next_page_token,
            total,
        }))
    }

    #[tracing::instrument(skip_all, fields(device.id = %request.get_ref().id))]
    async fn get(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        caller(&request).require(Role::Viewer)?;
        let state = self.app.core.read();
        let d = find_device(&state, &request.get_ref().id)?;
        Ok(Response::new(device_pb(&self.app, &state, d)))
    }

    #[tracing::instrument(skip_all, fields(device.id = %request.get_ref().device_id))]
    async fn check(
        &self,
        request: Request<pb::CheckDeviceRequest>,
    ) -> Result<Response<pb::DeviceCheck>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let timeout = timeout_or(req.timeout_ms, 30_000)?;
        let firmware = self.firmware_arg(&req.firmware_id)?;
        // Like Get and BatchCheck: a device that does not exist (or was removed) is NOT_FOUND,
        // and nothing is recorded for it.
        find_device(&self.app.core.read(), &req.device_id)?;
        let check_id = new_id("chk");
        let ids = vec![req.device_id.clone()];
        let checks = check_devices(
            &self.app,
            &who.actor(),
            &check_id,
            &ids,
            firmware.as_deref(),
            timeout,
        )
        .await
        .map_err(ApiError::from)?;
        let state = self.app.core.read();
        let now = self.app.now();
        Ok(Response::new(check_pb(
            &state,
            &req.device_id,
            &checks[0],
            now,
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let timeout = timeout_or(req.timeout_ms, 60_000)?;
        let firmware = self.firmware_arg(&req.firmware_id)?;
        if req.device_ids.len() > MAX_BATCH_CHECK {
            return Err(ApiError::invalid(format!(
                "at most {MAX_BATCH_CHECK} device ids per batch check"
            ))
            .into());
        }
        let ids: Vec<String> = {
            let state = self.app.core.read();
            let mut ids: Vec<String> = Vec::new();
            for id in &req.device_ids {
                find_device(&state, id)?;
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            if let Some(sel) = &req.selector {
                let sel = selector_from(sel)?;
                for d in state
                    .devices
                    .values()
                    .map(Box::as_ref)
                    .filter(|d| select::matches(&sel, d))
                {
                    if !ids.contains(&d.id) {
                        ids.push(d.id.clone());
                    }
                }
            } else if req.device_ids.is_empty() {
                return Err(ApiError::invalid(
                    "give device_ids or a selector (an empty selector means all devices)",
                )
                .into());
            }
            ids
        };
        if ids.len() > MAX_BATCH_CHECK {
            return Err(ApiError::ResourceExhausted(format!(
                "the selection has {} devices; at most {MAX_BATCH_CHECK} per batch check",
                ids.len()
            ))
            .into());
        }
        let check_id = new_id("chk");
        let span = info_span!("devices.batch_check", check.id = %check_id, devices = ids.len());
        let checks = check_devices(
            &self.app,
            &who.actor(),
            &check_id,
            &ids,
            firmware.as_deref(),
            timeout,
        )
        .instrument(span)
        .await
        .map_err(ApiError::from)?;
        let state = self.app.core.read();
        let now = self.app.now();
        let mut resp = pb::BatchCheckResponse::default();
        for (id, c) in ids.iter().zip(&checks) {
            match (c.status, c.error.as_ref().map(|e| e.code)) {
                (UpgradeStatus::WaitingForWakeup, None) => resp.asleep += 1,
                (_, Some(ErrorCode::BulkCheckTimeout)) => resp.timed_out += 1,
                (_, Some(_)) => resp.failed += 1,
                (UpgradeStatus::Available, None) => resp.available += 1,
                _ => resp.up_to_date += 1,
            }
            resp.checks.push(check_pb(&state, id, c, now));
        }
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all, fields(device.id = %request.get_ref().device_id, firmware.id = %request.get_ref().firmware_id, task.id = tracing::field::Empty))]
    async fn update(
        &self,
        request: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::UpdateDeviceResponse>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let upgrade_type = update_request_checked(&req)?;
        let task_id = new_id("task");
        let span = tracing::Span::current();
        span.record("task.id", task_id.as_str());
        // The dispatch of this task (in the dispatcher's loop) continues this call's trace.
        self.app
            .sessions
            .remember_trace(&task_id, ota_telemetry::traces::inject(&span));
        let _guard = self.app.task_creation.lock().await;
        let from = self
            .app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                decide_update(state, &req, &task_id, upgrade_type)
            })
            .await
            .map(|_| {
                let state = self.app.core.read();
                state
                    .devices
                    .get(&req.device_id)
                    .map(|d| d.facts.current.clone())
                    .unwrap_or_default()
            })?;
        drop(_guard);
        self.app.dispatch_wake.notify_one();

        if req.wait {
            self.wait_until_ended(&task_id).await?;
        }
        let state = self.app.core.read();
        let t = state
            .tasks
            .get(&task_id)
            .ok_or_else(|| ApiError::Internal("task vanished".into()))?;
        Ok(Response::new(pb::UpdateDeviceResponse {
            task: Some(convert::task(t)),
            from: Some(convert::version(t.from.as_ref().unwrap_or(&from))),
            to: t.to.as_ref().map(convert::version),
        }))
    }

    type WatchTaskStream = TaskStream;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        caller(&request).require(Role::Viewer)?;
        let req = request.into_inner();
        let task_id = {
            let state = self.app.core.read();
            if !req.task_id.is_empty() {
                if !state.tasks.contains_key(&req.task_id) {
                    return Err(
                        ApiError::not_found(format!("no task {}", quote(&req.task_id))).into(),
                    );
                }
                req.task_id.clone()
            } else {
                let d = find_device(&state, &req.device_id)?;
                d.current_task
                    .clone()
                    .ok_or_else(|| ApiError::not_found(format!("device {} has no task", d.id)))?
            }
        };
        let app = self.app.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut applied = app.core.subscribe_applied();
        let stream_name = streams::task(&task_id);
        tokio::spawn(
            async move {
                loop {
                    let (snapshot, done) = {
                        let state = app.core.read();
                        match state.tasks.get(&task_id).map(Box::as_ref) {
                            Some(t) => (convert::task(t), t.phase.is_terminal()),
                            None => return,
                        }
                    };
                    if tx.send(Ok(snapshot)).await.is_err() || done {
                        return;
                    }
                    loop {
                        let next = tokio::select! {
                            () = app.shutdown.cancelled() => return,
                            next = applied.recv() => next,
                        };
                        match next {
                            Ok(a) if a.stream == stream_name => break,
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                }
            }
            .instrument(info_span!("devices.watch_task")),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(device.id = %request.get_ref().device_id))]
    async fn cancel(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let reason = format!("cancelled by {}", who.actor().name);
        let mut notify_agent = None;
        let mut task_id = String::new();
        self.app
            .core
            .execute::<ApiError, _>(&who.actor(), |state| {
                notify_agent = None;
                let d = find_device(state, &req.device_id)?;
                let t = state.active_task_of(&d.id).ok_or_else(|| {
                    ApiError::precondition(format!("device {} has no task to cancel", d.id))
                })?;
                if !req.task_id.is_empty() && req.task_id != t.created.task_id {
                    return Err(ApiError::precondition(format!(
                        "the device's current task is {}, not {}",
                        t.created.task_id, req.task_id
                    )));
                }
                if !t.phase.is_cancellable() {
                    return Err(ApiError::precondition(format!(
                        "task {} is {} ({}): cancelling now could leave the device half-updated; wait for it to end or time out",
                        t.created.task_id,
                        t.phase.name(),
                        t.phase.status().code()
                    )));
                }
                if t.phase.is_at_site() {
                    notify_agent = Some((d.site_id.clone(), t.clone()));
                }
                task_id = t.created.task_id.clone();
                let mut changes = vec![Change::unchanged(
                    streams::task(&t.created.task_id),
                    vec![TaskCancelled { reason: reason.clone() }.into()],
                )];
                if let Some(r) = &t.created.rollout_id {
                    ota_domain::decision::ensure_guard(&mut changes, &streams::rollout(r));
                }
                Ok(changes)
            })
            .await?;
        if let Some((site, t)) = notify_agent {
            let msg = crate::to_agent::cancel(
                &t.created.task_id,
                &reason,
                self.app.sessions.next_command_id(),
            );
            if let Err(e) = self.app.sessions.send(&site, msg) {
                tracing::warn!(error = %e, "cancel not delivered to the agent; it will learn at reconnect");
            }
        }
        self.app.dispatch_wake.notify_one();
        let state = self.app.core.read();
        Ok(Response::new(convert::task(&state.tasks[&task_id])))
    }

    #[tracing::instrument(skip_all, fields(device.id = %request.get_ref().device_id))]
    async fn confirm_warning(
        &self,
        request: Request<pb::ConfirmWarningRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        let mut task_id = String::new();
        self.record(&who, |state| {
            let d = find_device(state, &req.device_id)?;
            let t = state
                .active_task_of(&d.id)
                .filter(|t| t.awaiting_confirmation)
                .ok_or_else(|| {
                    ApiError::precondition(format!(
                        "device {} has no task waiting for a weak-signal confirmation (5005)",
                        d.id
                    ))
                })?;
            task_id = t.created.task_id.clone();
            Ok(vec![Change::unchanged(
                streams::task(&task_id),
                vec![
                    TaskConfirmed {
                        proceed: req.proceed,
                    }
                    .into(),
                ],
            )])
        })
        .await?;
        let state = self.app.core.read();
        Ok(Response::new(convert::task(&state.tasks[&task_id])))
    }

    async fn get_auto_upgrade(
        &self,
        request: Request<pb::GetAutoUpgradeRequest>,
    ) -> Result<Response<pb::AutoUpgradeSetting>, Status> {
        caller(&request).require(Role::Viewer)?;
        let state = self.app.core.read();
        let d = find_device(&state, &request.get_ref().device_id)?;
        Ok(Response::new(auto_upgrade_setting(d)))
    }

    #[tracing::instrument(skip_all, fields(device.id = %request.get_ref().device_id))]
    async fn set_auto_upgrade(
        &self,
        request: Request<pb::SetAutoUpgradeRequest>,
    ) -> Result<Response<pb::AutoUpgradeSetting>, Status> {
        let who = caller(&request);
        who.require(Role::Operator)?;
        let req = request.into_inner();
        self.record(&who, |state| {
            let d = find_device(state, &req.device_id)?;
            if !can_update(&d.facts) && req.enabled {
                return Err(ApiError::precondition(format!(
                    "{} does not support OTA updates",
                    d.id
                )));
            }
            if d.auto_upgrade == req.enabled {
                return Ok(vec![]);
            }
            Ok(vec![Change::any(
                streams::device(&d.id),
                vec![
                    AutoUpgradeSet {
                        enabled: req.enabled,
                    }
                    .into(),
                ],
            )])
        })
        .await?;
        let state = self.app.core.read();
        let d = find_device(&state, &req.device_id)?;
        Ok(Response::new(auto_upgrade_setting(d)))
    }
}

impl DeviceApi {
    fn firmware_arg(&self, id: &str) -> ApiResult<Option<String>> {
        if id.is_empty() {
            return Ok(None);
        }
        let state = self.app.core.read();
        if state.firmware.contains_key(id) {
            Ok(Some(id.to_string()))
        } else {
            Err(ApiError::not_found(format!("no firmware {}", quote(id))))
        }
    }
}

fn timeout_or(ms: u32, default_ms: u64) -> ApiResult<Duration> {
    match ms {
        0 => Ok(Duration::from_millis(default_ms)),
        ms if ms > 3_600_000 => Err(ApiError::invalid("timeout_ms is at most 3600000 (1 h)")),
        ms => Ok(Duration::from_millis(u64::from(ms))),
    }
}

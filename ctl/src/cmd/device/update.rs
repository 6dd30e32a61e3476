//! `otactl device update|flash`: start the update with `wait = false` so otactl gets the task
//! at once, then follow `DeviceService.WatchTask` with a progress bar until the task ends.

use std::time::Duration;

use ota_proto::v1 as pb;

use super::args::{FlashArgs, UpdateArgs};
use super::render;
use super::view::UpdateJson;
use crate::cli::upgrade_type;
use crate::client::{Api, DEFAULT_REQUEST_TIMEOUT};
use crate::cmd::{Ctx, Failed, id};
use crate::{output, progress, values, vocab};

/// Resolves `device update`; `timeout` is the global `--timeout` (per-device timeout).
pub fn resolve_update(
    a: &UpdateArgs,
    timeout: Option<Duration>,
) -> anyhow::Result<pb::UpdateDeviceRequest> {
    Ok(pb::UpdateDeviceRequest {
        device_id: id("device", &a.id)?,
        firmware_id: id("firmware", &a.firmware)?,
        upgrade_type: upgrade_type(a.upgrade_type) as i32,
        allow_downgrade: a.allow_downgrade,
        wait: false,
        timeout_s: timeout_s(timeout)?,
        flash_offset: None,
        wake_timeout_s: 0,
    })
}

/// Resolves `device flash`.
pub fn resolve_flash(
    a: &FlashArgs,
    timeout: Option<Duration>,
) -> anyhow::Result<pb::UpdateDeviceRequest> {
    Ok(pb::UpdateDeviceRequest {
        device_id: id("device", &a.id)?,
        firmware_id: id("firmware", &a.firmware)?,
        upgrade_type: pb::UpgradeType::Forced as i32,
        allow_downgrade: true,
        wait: false,
        timeout_s: timeout_s(timeout)?,
        flash_offset: a.offset,
        wake_timeout_s: 0,
    })
}

fn timeout_s(timeout: Option<Duration>) -> anyhow::Result<u32> {
    match timeout {
        None => Ok(0),
        Some(t) if t.as_secs() == 0 => anyhow::bail!("--timeout must be at least one second"),
        Some(t) => values::duration_secs(t).map_err(|e| anyhow::anyhow!("--timeout: {e}")),
    }
}

/// What a failed or timed-out task says, on one line.
pub fn task_failure(t: &pb::Task) -> String {
    let why = t
        .error
        .as_ref()
        .filter(|e| e.code != 0 || !e.message.is_empty())
        .map_or_else(|| "no error reported".to_string(), vocab::describe_error);
    format!(
        "update of {} ended in {} ({}): {why}",
        t.device_id,
        vocab::status_name(t.status),
        t.status
    )
}

pub async fn update(ctx: &Ctx, req: pb::UpdateDeviceRequest, no_wait: bool) -> anyhow::Result<()> {
    let device_id = req.device_id.clone();
    let api = ctx.api().await?;
    let started = api
        .call(
            api.device()
                .update(api.with_deadline(req, DEFAULT_REQUEST_TIMEOUT)),
        )
        .await?;
    let Some(task) = started.task.clone() else {
        anyhow::bail!("otad started no task for {device_id} (and said nothing about why)");
    };
    if no_wait || vocab::is_terminal(task.status) {
        return finish(ctx, &UpdateJson::new(&started), &task);
    }
    output::note(
        &ctx.out,
        &format!(
            "Task {} started; following it (Ctrl-C stops watching, the update goes on).",
            task.id
        ),
    );
    let last = follow(ctx, api, &task).await?;
    let mut view = UpdateJson::from_task(&last);
    if view.from.is_none() {
        view.from = UpdateJson::new(&started).from;
    }
    finish(ctx, &view, &last)
}

fn finish(ctx: &Ctx, view: &UpdateJson, task: &pb::Task) -> anyhow::Result<()> {
    ctx.out.show(view, render::update)?;
    if task.status == pb::UpgradeStatus::Failure as i32
        || task.status == pb::UpgradeStatus::Timeout as i32
    {
        return Err(Failed(task_failure(task)).into());
    }
    Ok(())
}

/// Follows a task until it ends; returns its last state.
async fn follow(ctx: &Ctx, api: &Api, task: &pb::Task) -> anyhow::Result<pb::Task> {
    let bar = progress::task(progress::enabled(&ctx.out), &task.device_id);
    bar.set_message(progress::task_message(task));
    let mut stream = api
        .call(api.device().watch_task(api.streaming(pb::WatchTaskRequest {
            task_id: task.id.clone(),
            device_id: String::new(),
        })))
        .await?;
    let mut last = task.clone();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(t)) => {
                    bar.set_position(progress::percent(t.progress));
                    bar.set_message(progress::task_message(&t));
                    let done = vocab::is_terminal(t.status);
                    last = t;
                    if done {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    bar.abandon();
                    return Err(api.error(&status).into());
                }
            },
            _ = &mut interrupted => {
                bar.abandon();
                anyhow::bail!(
                    "interrupted: task {} goes on at the server; follow it with `otactl device \
                     show {}`",
                    last.id,
                    last.device_id
                );
            }
        }
    }
    bar.finish_and_clear();
    if !vocab::is_terminal(last.status) {
        // The stream ended early; ask once more before giving up.
        let d = api
            .call(api.device().get(api.unary(pb::GetDeviceRequest {
                id: last.device_id.clone(),
            })))
            .await?;
        match d.current_task {
            Some(t) if t.id == last.id && vocab::is_terminal(t.status) => last = t,
            _ => anyhow::bail!(
                "otad stopped sending updates for task {} while it was {}; follow it with \
                 `otactl device show {}`",
                last.id,
                vocab::status_name(last.status),
                last.device_id
            ),
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};
    use crate::cmd::device::DeviceCmd;

    #[test]
    fn update_and_flash_requests() {
        let a = match parse(&[
            "device",
            "update",
            "home/a",
            "--firmware",
            "fw-1",
            "--allow-downgrade",
        ])
        .unwrap()
        .command
        {
            Command::Device(DeviceCmd::Update(a)) => a,
            _ => unreachable!("parsed an update"),
        };
        let r = resolve_update(&a, Some(Duration::from_secs(600))).unwrap();
        assert_eq!(r.device_id, "home/a");
        assert_eq!(r.upgrade_type, pb::UpgradeType::Forced as i32);
        assert!(r.allow_downgrade && !r.wait);
        assert_eq!(r.timeout_s, 600);
        assert!(resolve_update(&a, Some(Duration::from_millis(10))).is_err());

        let f = match parse(&[
            "device",
            "flash",
            "lab/serial-ttyUSB0",
            "--firmware",
            "fw-2",
            "--offset",
            "0x10000",
        ])
        .unwrap()
        .command
        {
            Command::Device(DeviceCmd::Flash(a)) => a,
            _ => unreachable!("parsed a flash"),
        };
        let r = resolve_flash(&f, None).unwrap();
        assert_eq!(r.flash_offset, Some(0x10000));
        assert_eq!(r.timeout_s, 0);
    }

    #[test]
    fn failures_are_one_line() {
        let t = pb::Task {
            device_id: "home/a".into(),
            status: 4,
            error: Some(pb::TaskError {
                code: 5006,
                message: "Device didn't respond to OTA request".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            task_failure(&t),
            "update of home/a ended in failure (4): 5006 could not connect to the device: \
             Device didn't respond to OTA request"
        );
        let t = pb::Task {
            device_id: "home/a".into(),
            status: 7,
            ..Default::default()
        };
        assert_eq!(
            task_failure(&t),
            "update of home/a ended in timeout (7): no error reported"
        );
    }
}

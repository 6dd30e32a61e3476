//! `otactl device list|show|check|update|flash|cancel|confirm|auto-upgrade`.
//!
//! Updates start with `wait = false` so otactl gets the task at once, then follow
//! `DeviceService.WatchTask` with a progress bar until the task ends.

use std::time::Duration;

use ota_proto::v1 as pb;

use super::{Ctx, Failed, id};
use crate::cli::{
    CancelArgs, CheckArgs, DeviceCmd, DeviceListArgs, FlashArgs, OnOff, SelectorArgs, TransportArg,
    UpdateArgs, UpgradeTypeArg,
};
use crate::client::{Api, DEFAULT_REQUEST_TIMEOUT};
use crate::views::{
    AutoUpgradeView, CheckReportView, DeviceListView, DeviceView, TaskView, UpdateView,
};
use crate::{human, output, progress, values, vocab};

/// How much longer than the check timeout otactl waits for the server's answer.
const CHECK_MARGIN: Duration = Duration::from_secs(15);
/// The server's check timeouts when none is given.
const SINGLE_CHECK_DEFAULT: Duration = Duration::from_secs(30);
const BATCH_CHECK_DEFAULT: Duration = Duration::from_secs(60);

/// Maps a transport flag.
pub fn transport(t: TransportArg) -> pb::Transport {
    match t {
        TransportArg::Zigbee2mqtt => pb::Transport::Zigbee2mqtt,
        TransportArg::Esphome => pb::Transport::Esphome,
        TransportArg::Serial => pb::Transport::Serial,
    }
}

/// Maps an upgrade type flag.
pub fn upgrade_type(u: UpgradeTypeArg) -> pb::UpgradeType {
    match u {
        UpgradeTypeArg::Notify => pb::UpgradeType::Notify,
        UpgradeTypeArg::Forced => pb::UpgradeType::Forced,
        UpgradeTypeArg::Check => pb::UpgradeType::Check,
    }
}

/// The selector the flags describe (`None` when no flag was given).
pub fn selector(s: &SelectorArgs) -> Option<pb::DeviceSelector> {
    let sel = pb::DeviceSelector {
        site_ids: s.sites.clone(),
        transports: s.transports.iter().map(|t| transport(*t) as i32).collect(),
        models: s.models.clone(),
        vendors: s.vendors.clone(),
        manufacturer_code: s.manufacturer_code,
        image_type: s.image_type,
        chips: s.chips.clone(),
        min_version: s.min_version.clone().unwrap_or_default(),
        max_version: s.max_version.clone().unwrap_or_default(),
        tags: s.tags.clone(),
        device_ids: Vec::new(),
        exclude_device_ids: s.excludes.clone(),
        networks: s.networks.clone(),
    };
    (sel != pb::DeviceSelector::default()).then_some(sel)
}

/// Resolves `device list`.
pub fn resolve_list(a: &DeviceListArgs) -> pb::ListDevicesRequest {
    pb::ListDevicesRequest {
        page: None,
        site_id: a.site.clone().unwrap_or_default(),
        transport: a.transport.map_or(0, |t| transport(t) as i32),
        model: a.model.clone().unwrap_or_default(),
        version: a.version.clone().unwrap_or_default(),
        status: a.status,
        reachable: if a.reachable {
            Some(true)
        } else if a.unreachable {
            Some(false)
        } else {
            None
        },
        tag: a.tag.clone().unwrap_or_default(),
    }
}

/// A resolved `device check`.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckPlan {
    /// One device.
    Single(pb::CheckDeviceRequest, Duration),
    /// Many devices, one timeout.
    Batch(Box<pb::BatchCheckRequest>, Duration),
}

/// Resolves `device check`; `timeout` is the global `--timeout`.
pub fn resolve_check(a: &CheckArgs, timeout: Option<Duration>) -> anyhow::Result<CheckPlan> {
    let mut ids: Vec<String> = Vec::new();
    for raw in a.ids.iter().chain(&a.selector.devices) {
        let d = id("device", raw)?;
        if !ids.contains(&d) {
            ids.push(d);
        }
    }
    let sel = selector(&a.selector);
    let firmware_id = a
        .firmware
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if a.all && (!ids.is_empty() || sel.is_some()) {
        anyhow::bail!("--all checks every device: leave out device ids and selector flags");
    }
    if !a.all && ids.is_empty() && sel.is_none() {
        anyhow::bail!(
            "say which devices to check: a device id, --all, or selector flags (--site, \
             --transport, --model, --tag, --device ...)"
        );
    }
    let timeout_ms = match timeout {
        Some(t) => values::duration_ms(t).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?,
        None => 0,
    };
    if ids.len() == 1 && sel.is_none() && !a.all {
        let deadline = timeout.unwrap_or(SINGLE_CHECK_DEFAULT) + CHECK_MARGIN;
        return Ok(CheckPlan::Single(
            pb::CheckDeviceRequest {
                device_id: ids.remove(0),
                firmware_id,
                timeout_ms,
            },
            deadline,
        ));
    }
    let deadline = timeout.unwrap_or(BATCH_CHECK_DEFAULT) + CHECK_MARGIN;
    Ok(CheckPlan::Batch(
        Box::new(pb::BatchCheckRequest {
            device_ids: ids,
            // --all: an empty selector matches every device.
            selector: sel.or_else(|| a.all.then(pb::DeviceSelector::default)),
            firmware_id,
            timeout_ms,
        }),
        deadline,
    ))
}

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
    })
}

fn timeout_s(timeout: Option<Duration>) -> anyhow::Result<u32> {
    match timeout {
        None => Ok(0),
        Some(t) if t.as_secs() == 0 => anyhow::bail!("--timeout must be at least one second"),
        Some(t) => values::duration_secs(t).map_err(|e| anyhow::anyhow!("--timeout: {e}")),
    }
}

/// Runs a `device` command.
pub async fn run(ctx: &Ctx, cmd: DeviceCmd) -> anyhow::Result<()> {
    let timeout = ctx.settings.timeout;
    match cmd {
        DeviceCmd::List(a) => list(ctx, resolve_list(&a)).await,
        DeviceCmd::Show(a) => {
            let device_id = id("device", &a.id)?;
            let api = ctx.api().await?;
            let d = api
                .call(
                    api.device()
                        .get(api.unary(pb::GetDeviceRequest { id: device_id })),
                )
                .await?;
            ctx.out.show(&DeviceView::new(&d), human::device)?;
            Ok(())
        }
        DeviceCmd::Check(a) => check(ctx, resolve_check(&a, timeout)?).await,
        DeviceCmd::Update(a) => {
            let req = resolve_update(&a, timeout)?;
            update(ctx, req, a.no_wait).await
        }
        DeviceCmd::Flash(a) => {
            let req = resolve_flash(&a, timeout)?;
            update(ctx, req, a.no_wait).await
        }
        DeviceCmd::Cancel(a) => cancel(ctx, &a).await,
        DeviceCmd::Confirm(a) => {
            let device_id = id("device", &a.id)?;
            let api = ctx.api().await?;
            let t = api
                .call(
                    api.device()
                        .confirm_warning(api.unary(pb::ConfirmWarningRequest {
                            device_id,
                            proceed: a.proceed,
                        })),
                )
                .await?;
            ctx.out.show(&TaskView::new(&t), |t| {
                let verdict = if a.proceed {
                    "continues despite the weak signal"
                } else {
                    "was cancelled"
                };
                format!(
                    "The update of {} {verdict}.\n\n{}",
                    t.device_id,
                    human::task(t)
                )
            })?;
            Ok(())
        }
        DeviceCmd::AutoUpgrade(a) => {
            let device_id = id("device", &a.id)?;
            let api = ctx.api().await?;
            let s = match a.state {
                None => {
                    api.call(
                        api.device()
                            .get_auto_upgrade(api.unary(pb::GetAutoUpgradeRequest { device_id })),
                    )
                    .await?
                }
                Some(state) => {
                    api.call(
                        api.device()
                            .set_auto_upgrade(api.unary(pb::SetAutoUpgradeRequest {
                                device_id,
                                enabled: state == OnOff::On,
                            })),
                    )
                    .await?
                }
            };
            let view = AutoUpgradeView {
                device_id: s.device_id,
                supported: s.supported,
                enabled: s.enabled,
            };
            ctx.out.show(&view, human::auto_upgrade)?;
            Ok(())
        }
    }
}

async fn list(ctx: &Ctx, mut req: pb::ListDevicesRequest) -> anyhow::Result<()> {
    let api = ctx.api().await?;
    let mut devices = Vec::new();
    let total = loop {
        let r = api.call(api.device().list(api.unary(req.clone()))).await?;
        devices.extend(r.devices.iter().map(DeviceView::new));
        if r.next_page_token.is_empty() {
            break r.total;
        }
        req.page = Some(pb::PageRequest {
            page_size: 0,
            page_token: r.next_page_token,
        });
    };
    ctx.out
        .show(&DeviceListView { devices, total }, human::device_list)?;
    Ok(())
}

async fn check(ctx: &Ctx, plan: CheckPlan) -> anyhow::Result<()> {
    let api = ctx.api().await?;
    let bars = progress::enabled(&ctx.out);
    let report = match plan {
        CheckPlan::Single(req, deadline) => {
            let spinner = progress::spinner(bars, &format!("checking {}", req.device_id));
            let r = api
                .call(api.device().check(api.with_deadline(req, deadline)))
                .await;
            spinner.finish_and_clear();
            CheckReportView::single(&r?)
        }
        CheckPlan::Batch(req, deadline) => {
            let spinner =
                progress::spinner(bars, "checking devices (each gets an answer, 5019 if late)");
            let r = api
                .call(api.device().batch_check(api.with_deadline(*req, deadline)))
                .await;
            spinner.finish_and_clear();
            CheckReportView::batch(&r?)
        }
    };
    ctx.out.show(&report, human::checks)?;
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.failed())
        .map(|c| c.device_id.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failed(format!(
            "{} of {} checks failed: {}",
            failed.len(),
            report.checks.len(),
            failed.join(", ")
        ))
        .into())
    }
}

async fn cancel(ctx: &Ctx, a: &CancelArgs) -> anyhow::Result<()> {
    let device_id = id("device", &a.id)?;
    let api = ctx.api().await?;
    let t = api
        .call(api.device().cancel(api.unary(pb::CancelTaskRequest {
            device_id,
            task_id: a.task.clone().unwrap_or_default(),
        })))
        .await?;
    ctx.out.show(&TaskView::new(&t), |t| {
        format!(
            "Task {} of {} is {}.\n\n{}",
            t.id,
            t.device_id,
            t.status.name,
            human::task(t)
        )
    })?;
    Ok(())
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

async fn update(ctx: &Ctx, req: pb::UpdateDeviceRequest, no_wait: bool) -> anyhow::Result<()> {
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
        return finish(ctx, &UpdateView::new(&started), &task);
    }
    output::note(
        &ctx.out,
        &format!(
            "Task {} started; following it (Ctrl-C stops watching, the update goes on).",
            task.id
        ),
    );
    let last = follow(ctx, api, &task).await?;
    let mut view = UpdateView::from_task(&last);
    if view.from.is_none() {
        view.from = UpdateView::new(&started).from;
    }
    finish(ctx, &view, &last)
}

fn finish(ctx: &Ctx, view: &UpdateView, task: &pb::Task) -> anyhow::Result<()> {
    ctx.out.show(view, human::update)?;
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
    use clap::Parser as _;

    fn cli(args: &[&str]) -> crate::cli::Cli {
        let mut full = vec!["otactl"];
        full.extend_from_slice(args);
        crate::cli::Cli::try_parse_from(full).unwrap()
    }

    fn check_args(args: &[&str]) -> CheckArgs {
        let mut full = vec!["device", "check"];
        full.extend_from_slice(args);
        match cli(&full).command {
            crate::cli::Command::Device(DeviceCmd::Check(a)) => *a,
            _ => unreachable!("parsed a check"),
        }
    }

    #[test]
    fn one_device_is_a_single_check() {
        let plan = resolve_check(&check_args(&["home/a", "--firmware", "fw-1"]), None).unwrap();
        assert_eq!(
            plan,
            CheckPlan::Single(
                pb::CheckDeviceRequest {
                    device_id: "home/a".into(),
                    firmware_id: "fw-1".into(),
                    timeout_ms: 0
                },
                Duration::from_secs(45)
            )
        );
    }

    #[test]
    fn selectors_and_many_devices_are_a_batch() {
        let plan = resolve_check(
            &check_args(&["home/a", "--device", "home/b", "--device", "home/a"]),
            Some(Duration::from_secs(120)),
        )
        .unwrap();
        let CheckPlan::Batch(req, deadline) = plan else {
            panic!("expected a batch");
        };
        assert_eq!(req.device_ids, ["home/a", "home/b"]);
        assert_eq!(req.selector, None);
        assert_eq!(req.timeout_ms, 120_000);
        assert_eq!(deadline, Duration::from_secs(135));

        let CheckPlan::Batch(req, _) = resolve_check(
            &check_args(&["--site", "home", "--transport", "zigbee2mqtt"]),
            None,
        )
        .unwrap() else {
            panic!("expected a batch");
        };
        let sel = req.selector.unwrap();
        assert_eq!(sel.site_ids, ["home"]);
        assert_eq!(sel.transports, [pb::Transport::Zigbee2mqtt as i32]);

        let CheckPlan::Batch(req, _) = resolve_check(&check_args(&["--all"]), None).unwrap() else {
            panic!("expected a batch");
        };
        assert_eq!(req.selector, Some(pb::DeviceSelector::default()));
        assert!(req.device_ids.is_empty());
    }

    #[test]
    fn check_needs_a_target_and_all_stands_alone() {
        let e = resolve_check(&check_args(&[]), None).unwrap_err();
        assert!(
            e.to_string().starts_with("say which devices to check"),
            "{e}"
        );
        assert!(resolve_check(&check_args(&["--all", "home/a"]), None).is_err());
        assert!(resolve_check(&check_args(&["--all", "--site", "x"]), None).is_err());
    }

    #[test]
    fn list_filters_map_onto_the_request() {
        let a = match cli(&[
            "device",
            "list",
            "--site",
            "home",
            "--reachable",
            "--status",
            "4",
        ])
        .command
        {
            crate::cli::Command::Device(DeviceCmd::List(a)) => a,
            _ => unreachable!("parsed a list"),
        };
        let r = resolve_list(&a);
        assert_eq!(r.site_id, "home");
        assert_eq!(r.reachable, Some(true));
        assert_eq!(r.status, Some(4));
        assert_eq!(r.transport, 0);
    }

    #[test]
    fn update_and_flash_requests() {
        let a = match cli(&[
            "device",
            "update",
            "home/a",
            "--firmware",
            "fw-1",
            "--allow-downgrade",
        ])
        .command
        {
            crate::cli::Command::Device(DeviceCmd::Update(a)) => a,
            _ => unreachable!("parsed an update"),
        };
        let r = resolve_update(&a, Some(Duration::from_secs(600))).unwrap();
        assert_eq!(r.device_id, "home/a");
        assert_eq!(r.upgrade_type, pb::UpgradeType::Forced as i32);
        assert!(r.allow_downgrade && !r.wait);
        assert_eq!(r.timeout_s, 600);
        assert!(resolve_update(&a, Some(Duration::from_millis(10))).is_err());

        let f = match cli(&[
            "device",
            "flash",
            "lab/serial-ttyUSB0",
            "--firmware",
            "fw-2",
            "--offset",
            "0x10000",
        ])
        .command
        {
            crate::cli::Command::Device(DeviceCmd::Flash(a)) => a,
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

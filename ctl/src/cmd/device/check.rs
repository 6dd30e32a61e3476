//! `otactl device check`: one device, or one batch check with a single timeout.

use std::time::Duration;

use ota_proto::v1 as pb;

use super::args::CheckArgs;
use super::render;
use super::view::CheckReportJson;
use crate::cli::selector;
use crate::cmd::{Ctx, Failed, id};
use crate::{progress, values};

/// How much longer than the check timeout otactl waits for the server's answer.
const CHECK_MARGIN: Duration = Duration::from_secs(15);

/// The server's check timeouts when none is given.
const SINGLE_CHECK_DEFAULT: Duration = Duration::from_secs(30);

const BATCH_CHECK_DEFAULT: Duration = Duration::from_secs(60);

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

/// Runs `device check`.
pub async fn check(ctx: &Ctx, plan: CheckPlan) -> anyhow::Result<()> {
    let api = ctx.api().await?;
    let bars = progress::enabled(&ctx.out);
    let report = match plan {
        CheckPlan::Single(req, deadline) => {
            let spinner = progress::spinner(bars, &format!("checking {}", req.device_id));
            let r = api
                .call(api.device().check(api.with_deadline(req, deadline)))
                .await;
            spinner.finish_and_clear();
            CheckReportJson::single(&r?)
        }
        CheckPlan::Batch(req, deadline) => {
            let spinner =
                progress::spinner(bars, "checking devices (each gets an answer, 5019 if late)");
            let r = api
                .call(api.device().batch_check(api.with_deadline(*req, deadline)))
                .await;
            spinner.finish_and_clear();
            CheckReportJson::batch(&r?)
        }
    };
    ctx.out.show(&report, render::checks)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};
    use crate::cmd::device::DeviceCmd;

    fn check_args(args: &[&str]) -> CheckArgs {
        let mut full = vec!["device", "check"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Device(DeviceCmd::Check(a)) => *a,
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
}

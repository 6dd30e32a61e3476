//! `otactl device list|show|check|update|flash|cancel|confirm|auto-upgrade`.
//!
//! `args` are the flags, `view` the JSON documents, `render` the tables; `check` and `update`
//! are the two commands with more than one step.

pub mod args;
mod check;
pub mod render;
mod update;
pub mod view;

use ota_proto::v1 as pb;

pub use self::args::DeviceCmd;
use self::args::{AutoUpgradeArgs, CancelArgs, ConfirmArgs, DeviceListArgs, OnOff};
use self::view::{AutoUpgradeJson, DeviceJson, DeviceListJson};
use super::{Ctx, all_pages, id};
use crate::cli::{IdArg, transport};
use crate::views::TaskJson;

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

/// Runs a `device` command.
pub async fn run(ctx: &Ctx, cmd: DeviceCmd) -> anyhow::Result<()> {
    let timeout = ctx.settings.timeout;
    match cmd {
        DeviceCmd::List(a) => list(ctx, resolve_list(&a)).await,
        DeviceCmd::Show(a) => show(ctx, &a).await,
        DeviceCmd::Check(a) => check::check(ctx, check::resolve_check(&a, timeout)?).await,
        DeviceCmd::Update(a) => {
            let req = update::resolve_update(&a, timeout)?;
            update::update(ctx, req, a.no_wait).await
        }
        DeviceCmd::Flash(a) => {
            let req = update::resolve_flash(&a, timeout)?;
            update::update(ctx, req, a.no_wait).await
        }
        DeviceCmd::Cancel(a) => cancel(ctx, &a).await,
        DeviceCmd::Confirm(a) => confirm(ctx, &a).await,
        DeviceCmd::AutoUpgrade(a) => auto_upgrade(ctx, &a).await,
    }
}

async fn list(ctx: &Ctx, req: pb::ListDevicesRequest) -> anyhow::Result<()> {
    let api = ctx.api().await?;
    let pages = all_pages(
        req,
        |r, p| r.page = p,
        async |req| Ok(api.call(api.device().list(api.unary(req))).await?),
        |r| &r.next_page_token,
    )
    .await?;
    let devices = pages
        .iter()
        .flat_map(|r| &r.devices)
        .map(DeviceJson::new)
        .collect();
    let total = pages.last().map_or(0, |r| r.total);
    ctx.out
        .show(&DeviceListJson { devices, total }, render::device_list)?;
    Ok(())
}

async fn show(ctx: &Ctx, a: &IdArg) -> anyhow::Result<()> {
    let device_id = id("device", &a.id)?;
    let api = ctx.api().await?;
    let d = api
        .call(
            api.device()
                .get(api.unary(pb::GetDeviceRequest { id: device_id })),
        )
        .await?;
    ctx.out.show(&DeviceJson::new(&d), render::device)?;
    Ok(())
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
    ctx.out.show(&TaskJson::new(&t), render::cancelled)?;
    Ok(())
}

async fn confirm(ctx: &Ctx, a: &ConfirmArgs) -> anyhow::Result<()> {
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
    ctx.out
        .show(&TaskJson::new(&t), |t| render::confirmed(t, a.proceed))?;
    Ok(())
}

async fn auto_upgrade(ctx: &Ctx, a: &AutoUpgradeArgs) -> anyhow::Result<()> {
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
    let view = AutoUpgradeJson {
        device_id: s.device_id,
        supported: s.supported,
        enabled: s.enabled,
    };
    ctx.out.show(&view, render::auto_upgrade)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

    #[test]
    fn list_filters_map_onto_the_request() {
        let a = match parse(&[
            "device",
            "list",
            "--site",
            "home",
            "--reachable",
            "--status",
            "4",
        ])
        .unwrap()
        .command
        {
            Command::Device(DeviceCmd::List(a)) => a,
            _ => unreachable!("parsed a list"),
        };
        let r = resolve_list(&a);
        assert_eq!(r.site_id, "home");
        assert_eq!(r.reachable, Some(true));
        assert_eq!(r.status, Some(4));
        assert_eq!(r.transport, 0);
    }
}

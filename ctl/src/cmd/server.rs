//! `otactl server status`.

use ota_proto::v1 as pb;

use super::Ctx;
use crate::cli::ServerCmd;
use crate::human;
use crate::views::ServerStatusView;

/// Runs a `server` command.
pub async fn run(ctx: &Ctx, cmd: ServerCmd) -> anyhow::Result<()> {
    match cmd {
        ServerCmd::Status => {
            let api = ctx.api().await?;
            let s = api
                .call(api.system().status(api.unary(pb::StatusRequest {})))
                .await?;
            let view = ServerStatusView::new(&api.settings().server, &s);
            ctx.out.show(&view, human::server_status)?;
            Ok(())
        }
    }
}

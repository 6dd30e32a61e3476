//! `otactl site list|show`.

use ota_proto::v1 as pb;

use super::{Ctx, id};
use crate::cli::SiteCmd;
use crate::human;
use crate::views::{SiteListView, SiteView};

/// Runs a `site` command.
pub async fn run(ctx: &Ctx, cmd: SiteCmd) -> anyhow::Result<()> {
    match cmd {
        SiteCmd::List => {
            let api = ctx.api().await?;
            let r = api
                .call(api.site().list(api.unary(pb::ListSitesRequest {})))
                .await?;
            let view = SiteListView {
                sites: r.sites.iter().map(SiteView::new).collect(),
            };
            ctx.out.show(&view, human::site_list)?;
        }
        SiteCmd::Show(a) => {
            let site_id = id("site", &a.id)?;
            let api = ctx.api().await?;
            let s = api
                .call(
                    api.site()
                        .get(api.unary(pb::GetSiteRequest { id: site_id })),
                )
                .await?;
            ctx.out.show(&SiteView::new(&s), human::site)?;
        }
    }
    Ok(())
}

//! `otactl site list|show`: arguments, JSON documents, tables, and the calls.

use clap::Subcommand;
use ota_proto::v1 as pb;
use serde::Serialize;

use super::{Ctx, id};
use crate::cli::IdArg;
use crate::output::{fields, fmt_ago, fmt_time, now_ms, render, section, table};
use crate::views::EnumJson;
use crate::vocab;

// === arguments ===

/// `otactl site ...`
#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// List sites with their agent's connection and device counts
    ///
    /// Example:
    ///   otactl site list
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Show one site: agent, transports, devices, running tasks
    ///
    /// Example:
    ///   otactl site show home
    #[command(verbatim_doc_comment, visible_alias = "get")]
    Show(IdArg),
}

// === command ===

/// Runs a `site` command.
pub async fn run(ctx: &Ctx, cmd: SiteCmd) -> anyhow::Result<()> {
    match cmd {
        SiteCmd::List => {
            let api = ctx.api().await?;
            let r = api
                .call(api.site().list(api.unary(pb::ListSitesRequest {})))
                .await?;
            let view = SiteListJson {
                sites: r.sites.iter().map(SiteJson::new).collect(),
            };
            ctx.out.show(&view, site_list)?;
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
            ctx.out.show(&SiteJson::new(&s), site)?;
        }
    }
    Ok(())
}

// === JSON ===

/// A transport instance at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransportInstanceJson {
    /// Transport.
    pub kind: EnumJson,
    /// Instance name.
    pub name: String,
    /// Devices on it.
    pub device_count: u32,
    /// Its link is up.
    pub connected: bool,
    /// Detail.
    pub detail: String,
}

/// A site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteJson {
    /// Id.
    pub id: String,
    /// Agent connected now.
    pub agent_connected: bool,
    /// Agent version.
    pub agent_version: String,
    /// Agent installation id.
    pub agent_id: String,
    /// Connected since.
    pub connected_since_ms: i64,
    /// Last heartbeat.
    pub last_heartbeat_ms: i64,
    /// Time zone.
    pub timezone: String,
    /// Transports.
    pub transports: Vec<TransportInstanceJson>,
    /// Devices.
    pub device_count: u32,
    /// Reachable devices.
    pub reachable_count: u32,
    /// Tasks running.
    pub running_tasks: u32,
    /// Agent's remote address.
    pub peer: String,
}

impl SiteJson {
    /// From the API.
    pub fn new(s: &pb::Site) -> Self {
        Self {
            id: s.id.clone(),
            agent_connected: s.agent_connected,
            agent_version: s.agent_version.clone(),
            agent_id: s.agent_id.clone(),
            connected_since_ms: s.connected_since_ms,
            last_heartbeat_ms: s.last_heartbeat_ms,
            timezone: s.timezone.clone(),
            transports: s
                .transports
                .iter()
                .map(|t| TransportInstanceJson {
                    kind: EnumJson::new(t.kind, vocab::transport_name),
                    name: t.name.clone(),
                    device_count: t.device_count,
                    connected: t.connected,
                    detail: t.detail.clone(),
                })
                .collect(),
            device_count: s.device_count,
            reachable_count: s.reachable_count,
            running_tasks: s.running_tasks,
            peer: s.peer.clone(),
        }
    }
}

/// `site list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteListJson {
    /// Sites.
    pub sites: Vec<SiteJson>,
}

// === tables ===

/// `site list`.
pub fn site_list(l: &SiteListJson) -> String {
    let now = now_ms();
    let mut t = table(&[
        "site",
        "agent",
        "version",
        "devices",
        "reachable",
        "tasks",
        "heartbeat",
    ]);
    for s in &l.sites {
        t.add_row(vec![
            s.id.clone(),
            if s.agent_connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_string(),
            s.agent_version.clone(),
            s.device_count.to_string(),
            s.reachable_count.to_string(),
            s.running_tasks.to_string(),
            fmt_ago(s.last_heartbeat_ms, now),
        ]);
    }
    render(
        &t,
        "no sites (an agent creates its site when it first connects)",
    )
}

/// `site show`.
pub fn site(s: &SiteJson) -> String {
    let now = now_ms();
    let mut out = fields(&[
        ("Site", s.id.clone()),
        (
            "Agent",
            if s.agent_connected {
                format!("connected since {}", fmt_time(s.connected_since_ms))
            } else {
                "disconnected".to_string()
            },
        ),
        ("Agent version", s.agent_version.clone()),
        ("Agent id", s.agent_id.clone()),
        ("Peer", s.peer.clone()),
        ("Last heartbeat", fmt_ago(s.last_heartbeat_ms, now)),
        ("Time zone", s.timezone.clone()),
        (
            "Devices",
            format!("{} ({} reachable)", s.device_count, s.reachable_count),
        ),
        ("Running tasks", s.running_tasks.to_string()),
    ]);
    let mut t = table(&["transport", "name", "devices", "link", "detail"]);
    for tr in &s.transports {
        t.add_row(vec![
            tr.kind.name.clone(),
            tr.name.clone(),
            tr.device_count.to_string(),
            if tr.connected { "up" } else { "down" }.to_string(),
            tr.detail.clone(),
        ]);
    }
    section(&mut out, "Transports", &render(&t, "none"));
    out
}

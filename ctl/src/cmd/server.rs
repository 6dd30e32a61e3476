//! `otactl server status`: its arguments, its JSON document, its table, and the call.

use clap::Subcommand;
use ota_proto::v1 as pb;
use serde::Serialize;

use super::Ctx;
use crate::output::{fields, fmt_bytes, fmt_secs, fmt_time, yes_no};
use crate::views::{ActorJson, actor, who};

// === arguments ===

/// `otactl server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// Show otad's version, uptime, event log and fleet size
    ///
    /// Also shows who otad recognised you as, which is the quickest way to check a token.
    ///
    /// Example:
    ///   otactl server status
    ///   OTACTL_SERVER=https://ota.example.net:7600 otactl server status -o json
    #[command(verbatim_doc_comment)]
    Status,
}

// === command ===

/// Runs a `server` command.
pub async fn run(ctx: &Ctx, cmd: ServerCmd) -> anyhow::Result<()> {
    match cmd {
        ServerCmd::Status => {
            let api = ctx.api().await?;
            let s = api
                .call(api.system().status(api.unary(pb::StatusRequest {})))
                .await?;
            let view = ServerStatusJson::new(&api.settings().server, &s);
            ctx.out.show(&view, status)?;
            Ok(())
        }
    }
}

// === JSON ===

/// `server status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerStatusJson {
    /// The URL otactl talked to.
    pub server: String,
    /// otad's version.
    pub version: String,
    /// Start time.
    pub started_at_ms: i64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// The event log.
    pub event_log: Option<EventLogJson>,
    /// Agents connected now.
    pub connected_agents: u32,
    /// Counts.
    pub sites: u32,
    /// Devices known.
    pub devices: u32,
    /// Firmware in the catalog.
    pub firmware: u32,
    /// Rollouts running.
    pub rollouts_running: u32,
    /// Tasks not ended.
    pub tasks_active: u32,
    /// Whether the listener uses TLS.
    pub tls: bool,
    /// Whether requests need a token.
    pub auth_required: bool,
    /// Who otad recognised the caller as.
    pub caller: Option<ActorJson>,
}

/// The event log's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLogJson {
    /// Last sequence number.
    pub last_seq: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Startup replay time.
    pub replay_ms: u64,
}

impl ServerStatusJson {
    /// From the API.
    pub fn new(server: &str, s: &pb::ServerStatus) -> Self {
        Self {
            server: server.to_string(),
            version: s.version.clone(),
            started_at_ms: s.started_at_ms,
            uptime_s: s.uptime_s,
            event_log: s.event_log.as_ref().map(|l| EventLogJson {
                last_seq: l.last_seq,
                size_bytes: l.size_bytes,
                replay_ms: l.replay_ms,
            }),
            connected_agents: s.connected_agents,
            sites: s.sites,
            devices: s.devices,
            firmware: s.firmware,
            rollouts_running: s.rollouts_running,
            tasks_active: s.tasks_active,
            tls: s.tls,
            auth_required: s.auth_required,
            caller: actor(s.caller.as_ref()),
        }
    }
}

// === table ===

/// `server status`.
pub fn status(s: &ServerStatusJson) -> String {
    let log = s.event_log.as_ref();
    fields(&[
        ("Server", s.server.clone()),
        ("Version", s.version.clone()),
        (
            "Up since",
            format!("{} ({})", fmt_time(s.started_at_ms), fmt_secs(s.uptime_s)),
        ),
        (
            "Event log",
            log.map_or_else(String::new, |l| {
                format!(
                    "{} events, {}, replayed in {} ms",
                    l.last_seq,
                    fmt_bytes(l.size_bytes),
                    l.replay_ms
                )
            }),
        ),
        (
            "Sites",
            format!("{} ({} agents connected)", s.sites, s.connected_agents),
        ),
        ("Devices", s.devices.to_string()),
        ("Firmware", s.firmware.to_string()),
        ("Rollouts running", s.rollouts_running.to_string()),
        ("Tasks active", s.tasks_active.to_string()),
        (
            "TLS",
            if s.tls {
                yes_no(true)
            } else {
                "NO - WARNING: plaintext; tokens, reports and firmware travel unencrypted".into()
            },
        ),
        (
            "Auth required",
            if s.auth_required {
                yes_no(true)
            } else {
                "NO - WARNING: development mode; every caller is an administrator".into()
            },
        ),
        ("You are", who(s.caller.as_ref())),
    ])
}

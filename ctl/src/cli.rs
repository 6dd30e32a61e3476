//! The top of the command line: `otactl` itself, the global flags, the command groups, and
//! the few arguments several groups share (an id, a transport, an upgrade type, a device
//! selector) with their mapping onto the API.
//!
//! Each group's own arguments live with its command code (`cmd/<group>`). Nothing here talks
//! to the server or combines flags; the command modules resolve the raw arguments into typed
//! requests (`resolve` functions) and report cross-field problems there. Every command has a
//! one-line `about` (the first line of its doc comment) and a longer help with an example (the
//! rest), shown by `otactl <command> --help`; `tests/help.rs` keeps every help text as it is.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ota_proto::v1 as pb;

use crate::cmd::{device, events, firmware, pki, rollout, server, site, token};
use crate::values;

/// Address used when neither `--server` nor `OTACTL_SERVER` is set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7600";

const TOP_LONG_ABOUT: &str = "\
otactl is the operator's command line for otad, the OTA fleet rollout server.

It uploads and signs firmware, inspects and checks devices, updates single devices, plans and \
runs staged rollouts with live progress, and tails the event log.

A short workflow:
  otactl server status
  otactl firmware upload hue-2.3.093.ota --name hue-switch --version 2.3.093
  otactl device check --all
  otactl rollout plan --name hue-2.3 --firmware fw-1a2b3c4d5e6f7a8b --model 324131092621 \\
      --canary 5 --waves 25,100
  otactl rollout create -f hue-2.3.toml --start
  otactl rollout watch ro-0192...
  otactl events tail --follow --stream rollout/

Output: tables for people. `-o json` prints exactly one JSON document per command, and JSON \
lines (one object per line) for the streaming commands `events tail` and `rollout watch`. \
Progress bars go to stderr, only when it is a terminal and the output is a table.

Exit codes:
  0  success
  1  the operation ran but failed (an update ended in failure, a check found errors, a
     rollout aborted, a download did not match its checksum)
  2  usage error, otad could not be reached, or otad refused the request

Errors are one line on stderr, starting with `error:`.";

/// otactl: operate the OTA fleet rollout server (firmware, devices, rollouts, events).
#[derive(Debug, Parser)]
#[command(name = "otactl", version, long_about = TOP_LONG_ABOUT)]
pub struct Cli {
    /// Connection and output settings, accepted anywhere on the command line.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Address of otad (http:// or https://).
    #[arg(
        long,
        env = "OTACTL_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL",
        global = true
    )]
    pub server: String,

    /// Bearer token sent with every request (see `otactl token create`).
    #[arg(
        long,
        env = "OTACTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub token: Option<String>,

    /// Development mode only (otad without TLS and before the first token): act as NAME, an
    /// administrator, instead of the local administrator — to try four eyes without tokens
    /// (`otactl rollout approve ID --reason … --as bob`). otad refuses it otherwise.
    #[arg(long = "as", env = "OTACTL_AS", value_name = "NAME", global = true)]
    pub dev_actor: Option<String>,

    /// PEM file with the CA certificate that signed otad's TLS certificate (https only;
    /// without it the system's trusted roots are used).
    #[arg(long, env = "OTACTL_CA_CERT", value_name = "PEM", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// Output format: `table` for people, `json` for scripts.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value_t = OutputFormat::Table,
        value_name = "FORMAT",
        global = true
    )]
    pub output: OutputFormat,

    /// How long to wait ("10s", "2m"). For most commands: the deadline of each request (default
    /// 30s). For `device check`: how long the server waits for the devices' answers. For
    /// `device update`/`flash`: the per-device update timeout.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION", global = true)]
    pub timeout: Option<Duration>,
}

/// The names of the subcommands given ("rollout list"), for messages.
pub fn command_path(m: &clap::ArgMatches) -> String {
    let mut names = Vec::new();
    let mut cur = m;
    while let Some((name, sub)) = cur.subcommand() {
        names.push(name.to_string());
        cur = sub;
    }
    names.join(" ")
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables and lines.
    Table,
    /// JSON: one document per command, JSON lines for streams.
    Json,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The server itself: health, version and size.
    #[command(subcommand)]
    Server(server::ServerCmd),
    /// The firmware catalog: upload, inspect, sign, download and delete images.
    #[command(subcommand)]
    Firmware(firmware::FirmwareCmd),
    /// Devices: list, inspect, check for updates, update, flash.
    #[command(subcommand)]
    Device(device::DeviceCmd),
    /// Staged rollouts: plan, create, start, pause, resume, abort, watch.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// The event log: every fact otad recorded.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Sites and their agents.
    #[command(subcommand)]
    Site(site::SiteCmd),
    /// Access tokens for otactl.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Certificates: a CA you control, otad's server certificate, agents' site certificates.
    #[command(subcommand)]
    Pki(pki::PkiCmd),
}

// === arguments several groups share ===

/// A single id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The id.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// Transports a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// Zigbee through zigbee2mqtt.
    Zigbee2mqtt,
    /// ESPHome network OTA.
    Esphome,
    /// ESP chip on a serial port.
    Serial,
}

/// Which devices (shared by `device check` and the rollout flags). Every given flag must match;
/// repeated flags match any of their values.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectorArgs {
    /// Devices of this site (repeatable).
    #[arg(long = "site", value_name = "SITE")]
    pub sites: Vec<String>,
    /// Devices on this transport (repeatable).
    #[arg(long = "transport", value_enum, value_name = "TRANSPORT")]
    pub transports: Vec<TransportArg>,
    /// Devices of this model (repeatable).
    #[arg(long = "model", value_name = "MODEL")]
    pub models: Vec<String>,
    /// Devices of this vendor (repeatable).
    #[arg(long = "vendor", value_name = "VENDOR")]
    pub vendors: Vec<String>,
    /// Devices with this ESP chip (repeatable).
    #[arg(long = "chip", value_name = "CHIP")]
    pub chips: Vec<String>,
    /// Devices on this transport instance, e.g. a zigbee2mqtt network (repeatable).
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// Devices carrying this tag (repeatable; all must be present).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// This device (repeatable).
    #[arg(long = "device", value_name = "ID")]
    pub devices: Vec<String>,
    /// Never this device (repeatable).
    #[arg(long = "exclude", value_name = "ID")]
    pub excludes: Vec<String>,
    /// Devices running at least this version.
    #[arg(long, value_name = "VERSION")]
    pub min_version: Option<String>,
    /// Devices running at most this version.
    #[arg(long, value_name = "VERSION")]
    pub max_version: Option<String>,
    /// Zigbee devices with this manufacturer code (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "CODE")]
    pub manufacturer_code: Option<u32>,
    /// Zigbee devices with this image type (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "TYPE")]
    pub image_type: Option<u32>,
}

/// Upgrade types a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpgradeTypeArg {
    /// Offered; runs when a rollout or an operator starts it (Tuya 0).
    Notify,
    /// Runs without further confirmation; weak-signal warnings still apply (Tuya 2).
    Forced,
    /// Only check whether an update is available; install nothing (Tuya 3).
    Check,
}

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

/// Parses `otactl <args>` (for tests of the argument structs).
#[cfg(test)]
pub fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut full = vec!["otactl"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_about_and_a_long_help_with_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{name} has no about");
                if sub.get_subcommands().next().is_none() {
                    let long = sub
                        .get_long_about()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    assert!(long.contains("Example"), "{name} has no example");
                } else {
                    walk(sub, &name);
                }
            }
        }
        walk(&Cli::command(), "otactl");
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "device",
            "list",
            "-o",
            "json",
            "--server",
            "http://h:1",
            "--token",
            "t",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.server, "http://h:1");
        assert_eq!(cli.global.token.as_deref(), Some("t"));
    }

    #[test]
    fn the_command_path_names_the_subcommands() {
        let m = Cli::command()
            .try_get_matches_from([
                "otactl",
                "--timeout",
                "5s",
                "rollout",
                "list",
                "--state",
                "running",
            ])
            .unwrap();
        assert_eq!(command_path(&m), "rollout list");
    }

    #[test]
    fn timeout_parses_humantime() {
        let cli = parse(&["--timeout", "2m", "server", "status"]).unwrap();
        assert_eq!(cli.global.timeout, Some(Duration::from_secs(120)));
        assert!(parse(&["--timeout", "soon", "server", "status"]).is_err());
    }

    #[test]
    fn help_documents_exit_codes_and_json() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes"));
        assert!(help.contains("-o json"));
        assert!(help.contains("OTACTL_SERVER"));
    }
}

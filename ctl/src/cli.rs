//! The command line as clap parses it: raw values, each checked on its own.
//!
//! Nothing here talks to the server or combines flags; the command modules (`cmd/*`) resolve
//! these raw arguments into typed requests (`resolve` functions) and report cross-field
//! problems there. Every command has a one-line `about` (the first line of its doc comment) and
//! a longer help with an example (the rest), shown by `otactl <command> --help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Server(ServerCmd),
    /// The firmware catalog: upload, inspect, sign, download and delete images.
    #[command(subcommand)]
    Firmware(FirmwareCmd),
    /// Devices: list, inspect, check for updates, update, flash.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Staged rollouts: plan, create, start, pause, resume, abort, watch.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The event log: every fact otad recorded.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Sites and their agents.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Access tokens for otactl.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Certificates: a CA you control, otad's server certificate, agents' site certificates.
    #[command(subcommand)]
    Pki(PkiCmd),
}

// === server ===

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

// === firmware ===

/// `otactl firmware ...`
#[derive(Debug, Subcommand)]
pub enum FirmwareCmd {
    /// Upload a firmware image (Zigbee OTA file or ESP image) to the catalog
    ///
    /// The file is hashed locally (sha256, sent for the server to verify) and streamed in 1 MiB
    /// chunks with a progress bar. otad parses the file and refuses it when it is not what it
    /// claims to be; every --manufacturer-code/--image-type/--file-version/--chip claim must
    /// match the file. ESP factory images must be declared with --format esp-factory.
    /// zigbee2mqtt does not report a device's manufacturer code, so label Zigbee images with the
    /// models they are for (--label models=A,B); checks and rollouts then offer them only there.
    ///
    /// Example:
    ///   otactl firmware upload hue-2.3.093.ota --name hue-switch --version 2.3.093 \
    ///       --manufacturer-code 0x100B --label vendor=signify --label models=9290022166
    ///   otactl firmware upload firmware.ota.bin --name kitchen-esp32 --version 2026.11.1 \
    ///       --chip esp32c3 --sign-key release.key --key-id release-2026
    #[command(verbatim_doc_comment)]
    Upload(UploadArgs),
    /// List the firmware in the catalog, newest first
    ///
    /// Example:
    ///   otactl firmware list --format zigbee-ota --name hue
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List(FirmwareListArgs),
    /// Show everything about one firmware: facts parsed from the file, signatures, rollouts
    ///
    /// The id may be a unique prefix ("fw-1a2b").
    ///
    /// Example:
    ///   otactl firmware show fw-1a2b3c4d5e6f7a8b
    #[command(verbatim_doc_comment, visible_alias = "get")]
    Show(IdArg),
    /// Delete a firmware from the catalog
    ///
    /// Asks for confirmation when stdin is a terminal; scripts must pass --yes. otad refuses
    /// while a rollout that is not completed or aborted uses the firmware.
    ///
    /// Example:
    ///   otactl firmware rm fw-1a2b3c4d5e6f7a8b --yes
    #[command(verbatim_doc_comment, visible_alias = "delete")]
    Rm(FirmwareRmArgs),
    /// Download a firmware image to a file and verify its sha256
    ///
    /// The file is written next to its destination as `<FILE>.part` and renamed only once its
    /// sha256 matches the catalog. The destination flag is -O/--out because -o is the output
    /// format everywhere.
    ///
    /// Example:
    ///   otactl firmware download fw-1a2b3c4d5e6f7a8b -O hue-2.3.093.ota
    #[command(verbatim_doc_comment)]
    Download(FirmwareDownloadArgs),
    /// Sign a firmware's sha256 with an ed25519 key and record the signature
    ///
    /// The signature covers the raw 32-byte sha256 digest of the file. Agents verify it with the
    /// public key they know under the same key id. Create a key pair with `firmware keygen`.
    ///
    /// Example:
    ///   otactl firmware sign fw-1a2b3c4d5e6f7a8b --key release.key --key-id release-2026
    #[command(verbatim_doc_comment)]
    Sign(FirmwareSignArgs),
    /// Create an ed25519 key pair for signing firmware (no server needed)
    ///
    /// Writes <PREFIX>.key (the private key, mode 0600) and <PREFIX>.pub (the public key). Each
    /// file holds one line: the standard base64 (with padding) of 32 bytes: the private key's
    /// seed, or the public key. Give the .pub file to the sites' trust store; keep the .key file
    /// secret.
    ///
    /// Example:
    ///   otactl firmware keygen --out release-2026
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
}

/// Firmware formats a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Detect from the content (not for factory images).
    Auto,
    /// Zigbee OTA upgrade file.
    ZigbeeOta,
    /// ESP application image (ESPHome's firmware.ota.bin).
    EspApp,
    /// Merged ESP factory image (firmware.factory.bin), for serial flashing only.
    EspFactory,
}

/// `firmware upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The firmware file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Catalog name: letters, digits, '.', '_', '-' ("hue-switch").
    #[arg(long)]
    pub name: String,
    /// Human version ("2.3.093", "2026.11.1").
    #[arg(long)]
    pub version: String,
    /// What the file is.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// A label, as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = values::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Release notes (text or URL).
    #[arg(long)]
    pub notes: Option<String>,
    /// Zigbee claim: manufacturer code (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "CODE")]
    pub manufacturer_code: Option<u32>,
    /// Zigbee claim: image type (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "TYPE")]
    pub image_type: Option<u32>,
    /// Zigbee claim: file version (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "VERSION")]
    pub file_version: Option<u32>,
    /// ESP claim: chip name (esp32, esp32c3, esp8266, ...).
    #[arg(long)]
    pub chip: Option<String>,
    /// Sign the upload with this ed25519 private key file (see `firmware keygen`).
    #[arg(long, value_name = "FILE", requires = "key_id")]
    pub sign_key: Option<PathBuf>,
    /// Key id for --sign-key, as the agents' trust store knows it.
    #[arg(long, value_name = "NAME", requires = "sign_key")]
    pub key_id: Option<String>,
}

/// `firmware list`.
#[derive(Debug, Args)]
pub struct FirmwareListArgs {
    /// Only this format.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Only firmware whose name contains this text.
    #[arg(long)]
    pub name: Option<String>,
}

/// A single id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The id.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `firmware rm`.
#[derive(Debug, Args)]
pub struct FirmwareRmArgs {
    /// Firmware id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// `firmware download`.
#[derive(Debug, Args)]
pub struct FirmwareDownloadArgs {
    /// Firmware id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Where to write the image (default: <name>-<version>.bin in the current directory).
    #[arg(short = 'O', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite the destination if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `firmware sign`.
#[derive(Debug, Args)]
pub struct FirmwareSignArgs {
    /// Firmware id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// ed25519 private key file (see `firmware keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Key id, as the agents' trust store knows it.
    #[arg(long, value_name = "NAME")]
    pub key_id: String,
}

/// `firmware keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path prefix: writes <PREFIX>.key and <PREFIX>.pub.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

// === device ===

/// `otactl device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// List devices with their version, signal, battery and update status
    ///
    /// Status is the Tuya number and name (0 none, 1 available, 2 updating, 3 success,
    /// 4 failure, 5 waiting-for-wakeup, 6 downloaded, 7 timeout, 13 queued, 14 preparing,
    /// 100 agent-preparing).
    ///
    /// Example:
    ///   otactl device list --site home --transport zigbee2mqtt --unreachable
    ///   otactl device list --status updating -o json
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List(DeviceListArgs),
    /// Show everything about one device, including its current task
    ///
    /// Device ids are "<site>/<local id>" (IEEE address for Zigbee, node name for ESPHome).
    ///
    /// Example:
    ///   otactl device show home/0x00178801099a1b2c
    #[command(verbatim_doc_comment, visible_alias = "get")]
    Show(IdArg),
    /// Ask devices whether an update is available (one device, a selection, or all)
    ///
    /// One device id without selector flags checks that device; anything else runs one batch
    /// check with a single timeout (--timeout, default 60s at the server). Devices that do not
    /// answer in time get 5019 and are listed, never dropped. Exits 1 if any check failed.
    ///
    /// Example:
    ///   otactl device check home/kitchen-esp32
    ///   otactl device check --all --timeout 2m
    ///   otactl device check --site home --transport zigbee2mqtt --firmware fw-1a2b3c4d5e6f7a8b
    #[command(verbatim_doc_comment)]
    Check(Box<CheckArgs>),
    /// Update one device now and follow it to the end
    ///
    /// Starts the update, then shows its status, percent and remaining time until it ends.
    /// Prints the versions before and after, or the error code and message (exit 1). With
    /// --no-wait, prints the task and returns at once. Ctrl-C stops watching; the update goes on
    /// at the server.
    ///
    /// Example:
    ///   otactl device update home/0x00178801099a1b2c --firmware fw-1a2b3c4d5e6f7a8b
    ///   otactl device update home/kitchen-esp32 --firmware fw-9f8e --allow-downgrade --no-wait
    #[command(verbatim_doc_comment)]
    Update(UpdateArgs),
    /// Flash a device on a serial port through its ROM bootloader, and follow it
    ///
    /// Factory images are written at 0x0, application images at the application offset, unless
    /// --offset says otherwise. Flashing writes what it is told, older versions included.
    ///
    /// Example:
    ///   otactl device flash lab/serial-ttyUSB0 --firmware fw-77aa --offset 0x10000
    #[command(verbatim_doc_comment)]
    Flash(FlashArgs),
    /// Cancel a device's current task where that is safe
    ///
    /// Queued tasks, tasks waiting for a sleepy device and tasks waiting for confirmation can
    /// be cancelled; otad explains why otherwise.
    ///
    /// Example:
    ///   otactl device cancel home/0x00178801099a1b2c
    #[command(verbatim_doc_comment)]
    Cancel(CancelArgs),
    /// Answer a weak-signal warning (5005): continue the update anyway, or cancel it
    ///
    /// Example:
    ///   otactl device confirm home/0x00178801099a1b2c --continue
    #[command(verbatim_doc_comment)]
    Confirm(ConfirmArgs),
    /// Show or set a device's auto-upgrade switch
    ///
    /// When on, firmware from completed rollouts is applied to the device when it appears or
    /// falls behind later.
    ///
    /// Example:
    ///   otactl device auto-upgrade home/kitchen-esp32
    ///   otactl device auto-upgrade home/kitchen-esp32 off
    #[command(verbatim_doc_comment)]
    AutoUpgrade(AutoUpgradeArgs),
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

/// `device list`.
#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Only this site.
    #[arg(long)]
    pub site: Option<String>,
    /// Only this transport.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only devices running exactly this version.
    #[arg(long)]
    pub version: Option<String>,
    /// Only devices in this status (name or Tuya number: updating, 2, failure, ...).
    #[arg(long, value_parser = values::parse_status, value_name = "STATUS")]
    pub status: Option<i32>,
    /// Only devices the site can reach now.
    #[arg(long, conflicts_with = "unreachable")]
    pub reachable: bool,
    /// Only devices the site cannot reach now.
    #[arg(long)]
    pub unreachable: bool,
    /// Only devices carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
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

/// `device check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Devices to check.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Check every device.
    #[arg(long)]
    pub all: bool,
    /// Check against this firmware instead of the best match.
    #[arg(long, value_name = "FW")]
    pub firmware: Option<String>,
    /// Which devices.
    #[command(flatten)]
    pub selector: SelectorArgs,
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

/// `device update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Device id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Firmware to install.
    #[arg(long, value_name = "FW")]
    pub firmware: String,
    /// Install an older version on purpose.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// How the update is offered.
    #[arg(long, value_enum, default_value_t = UpgradeTypeArg::Forced)]
    pub upgrade_type: UpgradeTypeArg,
    /// Print the task and return without following it.
    #[arg(long)]
    pub no_wait: bool,
}

/// `device flash`.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// Device id of a serial device ("<site>/serial-<port>").
    #[arg(value_name = "ID")]
    pub id: String,
    /// Firmware to write (ESP factory or application image).
    #[arg(long, value_name = "FW")]
    pub firmware: String,
    /// Flash offset (decimal or 0x hex).
    #[arg(long, value_parser = values::parse_u32, value_name = "OFFSET")]
    pub offset: Option<u32>,
    /// Print the task and return without following it.
    #[arg(long)]
    pub no_wait: bool,
}

/// `device cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Device id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Only cancel if the device's current task is this one.
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
}

/// `device confirm`.
#[derive(Debug, Args)]
pub struct ConfirmArgs {
    /// Device id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Continue the update despite the weak signal.
    #[arg(
        long = "continue",
        conflicts_with = "cancel",
        required_unless_present = "cancel"
    )]
    pub proceed: bool,
    /// Cancel the update.
    #[arg(long)]
    pub cancel: bool,
}

/// on / off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enable.
    On,
    /// Disable.
    Off,
}

/// `device auto-upgrade`.
#[derive(Debug, Args)]
pub struct AutoUpgradeArgs {
    /// Device id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Set the switch; without it, show it.
    #[arg(value_enum)]
    pub state: Option<OnOff>,
}

// === rollout ===

const SPEC_FORMAT_HELP: &str = "\
Spec file format (TOML; durations are \"30s\", \"10m\", \"1h\" or seconds; thresholds are a \
count \"2\" or a percentage \"10%\"):

  name = \"hue-switch 2.3.093\"        # required
  firmware = \"fw-1a2b3c4d5e6f7a8b\"   # required
  upgrade_type = \"notify\"            # notify | forced | check
  allow_downgrade = false
  device_timeout = \"30m\"             # default: 30m for Zigbee, 10m otherwise
  batch_check = true                 # one availability check of all targets first
  batch_check_timeout = \"60s\"

  [selector]                         # every given key must match; lists match any value
  sites = [\"home\"]
  transports = [\"zigbee2mqtt\"]       # zigbee2mqtt | esphome | serial
  models = [\"324131092621\"]
  vendors = []
  chips = []
  networks = []
  tags = []                          # all tags must be present
  devices = []                       # explicit device ids
  exclude = []
  min_version = \"0x01000000\"
  max_version = \"0x02030092\"
  manufacturer_code = 0x100B
  image_type = 0x0001

  [[stages]]                         # at least one; in order
  name = \"canary\"
  count = 5                          # this many devices, or:
  # percent = 25                     # cumulative share of all targets by the end of the stage
  failure_threshold = \"1\"            # default: 1 for stages of <= 10 devices, else \"10%\"
  success_threshold = \"100%\"         # default: every device that was not skipped
  on_failure = \"pause\"               # pause | abort
  deadline = \"1h\"                    # unfinished devices then count as timed out (5016)
  soak = \"10m\"                       # wait after success before the next stage

  [[stages]]
  name = \"everyone\"
  percent = 100

  [concurrency]                      # 0 or absent: server defaults
  global = 50
  per_site = 10
  per_zigbee_network = 1
  per_esphome_site = 4

  [retry]
  max_attempts = 3
  initial_backoff = \"30s\"
  max_backoff = \"15m\"

  [window]                           # maintenance window, site local time
  start = \"22:00\"
  end = \"05:00\"
  weekdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]   # or 0 (Sunday) .. 6

  [preconditions]
  min_battery_percent = 70
  min_linkquality = 30
  min_rssi_dbm = -85";

/// `otactl rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Create a rollout from a TOML spec file or from flags (draft, or running with --start).
    #[command(long_about = ROLLOUT_CREATE_LONG)]
    Create(Box<CreateArgs>),
    /// Dry run: which devices fall in which stage, which are excluded and why, how long
    ///
    /// Plans a spec (file or flags, as for `rollout create`) or re-plans an existing draft or
    /// paused rollout against today's fleet. Records nothing.
    ///
    /// Example:
    ///   otactl rollout plan -f hue-2.3.toml
    ///   otactl rollout plan --name hue --firmware fw-1a2b --model 324131092621 --waves 10,100
    ///   otactl rollout plan ro-0192f3c1
    #[command(verbatim_doc_comment)]
    Plan(Box<PlanArgs>),
    /// Start a draft rollout
    ///
    /// Example:
    ///   otactl rollout start ro-0192f3c1
    #[command(verbatim_doc_comment)]
    Start(RolloutActionArgs),
    /// Pause a running rollout: no new devices are dispatched; running updates finish
    ///
    /// Example:
    ///   otactl rollout pause ro-0192f3c1 --reason "waiting for the vendor's answer"
    #[command(verbatim_doc_comment)]
    Pause(RolloutActionArgs),
    /// Resume a paused rollout where it stopped
    ///
    /// Example:
    ///   otactl rollout resume ro-0192f3c1
    #[command(verbatim_doc_comment)]
    Resume(RolloutActionArgs),
    /// Abort a rollout: stop dispatching and cancel what is safe to cancel
    ///
    /// Transfers already running finish. An aborted rollout cannot be resumed.
    ///
    /// Example:
    ///   otactl rollout abort ro-0192f3c1 --reason "battery drain reported"
    #[command(verbatim_doc_comment)]
    Abort(RolloutActionArgs),
    /// List rollouts
    ///
    /// Example:
    ///   otactl rollout list --state running
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List(RolloutListArgs),
    /// Show a rollout: spec, stages with counts per status, reasons, exclusions
    ///
    /// Example:
    ///   otactl rollout show ro-0192f3c1
    #[command(verbatim_doc_comment, visible_alias = "get")]
    Show(IdArg),
    /// Follow a rollout live until it completes or aborts
    ///
    /// Shows one bar per stage (succeeded+failed of total, and the counts by status) and a line
    /// per updating device (percent, remaining time, status). Exits 0 when the rollout
    /// completes, 1 when it aborts. With -o json, prints one JSON line per progress message.
    ///
    /// Example:
    ///   otactl rollout watch ro-0192f3c1
    ///   otactl rollout watch ro-0192f3c1 -o json | jq -c '.rollout.totals'
    #[command(verbatim_doc_comment)]
    Watch(WatchArgs),
}

const ROLLOUT_CREATE_LONG: &str = "\
Create a rollout from a TOML spec file or from flags (draft, or running with --start).

The flag form covers simple cases: one selector, a canary stage of N devices, then waves \
that reach the given cumulative percentages of all targets, with the same deadline, soak \
and thresholds for every stage. Anything more goes in a spec file.

Example:
  otactl rollout create -f hue-2.3.toml --start
  otactl rollout create --name hue-2.3 --firmware fw-1a2b3c4d5e6f7a8b \\
      --transport zigbee2mqtt --model 324131092621 \\
      --canary 5 --waves 25,100 --deadline 1h --soak 10m --failure-threshold 10%

";

/// A rollout spec: a file, or flags.
#[derive(Debug, Args)]
pub struct SpecSourceArgs {
    /// Rollout spec file (TOML; see `otactl rollout create --help`).
    #[arg(short = 'f', long = "file", value_name = "SPEC.toml")]
    pub file: Option<PathBuf>,
    /// The spec as flags.
    #[command(flatten)]
    pub flags: SpecFlags,
}

/// The flag form of a rollout spec.
#[derive(Debug, Clone, Default, Args)]
pub struct SpecFlags {
    /// Rollout name.
    #[arg(long)]
    pub name: Option<String>,
    /// Firmware to roll out.
    #[arg(long, value_name = "FW")]
    pub firmware: Option<String>,
    /// Which devices.
    #[command(flatten)]
    pub selector: SelectorArgs,
    /// First stage: this many devices ("canary").
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Then waves reaching these cumulative percentages of all targets ("5,25,100").
    #[arg(long, value_parser = values::parse_percent_list, value_name = "P,P,...")]
    pub waves: Option<values::Percents>,
    /// Stage deadline: devices not finished this long after their stage started time out.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub deadline: Option<Duration>,
    /// Soak time after each successful stage.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub soak: Option<Duration>,
    /// Failures that stop a stage: a count ("2") or a percentage ("10%").
    #[arg(long, value_parser = values::parse_threshold, value_name = "N|P%")]
    pub failure_threshold: Option<values::Threshold>,
    /// Successes needed to advance: a count or a percentage.
    #[arg(long, value_parser = values::parse_threshold, value_name = "N|P%")]
    pub success_threshold: Option<values::Threshold>,
    /// What a stage crossing its failure threshold does.
    #[arg(long, value_enum)]
    pub on_failure: Option<FailureActionArg>,
    /// Per-device timeout.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub device_timeout: Option<Duration>,
    /// Attempts per device, including the first.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Devices updating at once across the rollout.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Maintenance window in the sites' local time ("22:00-05:00").
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub window: Option<String>,
    /// How the update is offered.
    #[arg(long, value_enum)]
    pub upgrade_type: Option<UpgradeTypeArg>,
    /// Allow installing an older version than devices run.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Skip the availability check of all targets before the first stage.
    #[arg(long)]
    pub skip_batch_check: bool,
}

/// Failure actions a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureActionArg {
    /// Pause the rollout.
    Pause,
    /// Abort the rollout.
    Abort,
}

/// `rollout create`.
#[derive(Debug, Args)]
#[command(after_long_help = SPEC_FORMAT_HELP)]
pub struct CreateArgs {
    /// The spec.
    #[command(flatten)]
    pub spec: SpecSourceArgs,
    /// Start right away instead of staying in draft.
    #[arg(long)]
    pub start: bool,
}

/// `rollout plan`.
#[derive(Debug, Args)]
#[command(after_long_help = SPEC_FORMAT_HELP)]
pub struct PlanArgs {
    /// An existing rollout to re-plan (instead of a spec).
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// The spec.
    #[command(flatten)]
    pub spec: SpecSourceArgs,
}

/// `rollout start|pause|resume|abort`.
#[derive(Debug, Args)]
pub struct RolloutActionArgs {
    /// Rollout id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Why (recorded in the event log).
    #[arg(long)]
    pub reason: Option<String>,
}

/// Rollout states a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutStateArg {
    /// Created, not started.
    Draft,
    /// Dispatching devices.
    Running,
    /// Paused by an operator or a failure threshold.
    Paused,
    /// Every stage done.
    Completed,
    /// Stopped for good.
    Aborted,
}

/// `rollout list`.
#[derive(Debug, Args)]
pub struct RolloutListArgs {
    /// Only rollouts in this state.
    #[arg(long, value_enum)]
    pub state: Option<RolloutStateArg>,
}

/// `rollout watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Rollout id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Only the rollout summary, without a line per updating device.
    #[arg(long)]
    pub no_devices: bool,
}

// === events ===

/// `otactl events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Print events from the log, and with --follow keep printing new ones
    ///
    /// Columns: sequence number, time (UTC), stream, type, actor, payload (JSON). With -o json,
    /// one JSON object per line.
    ///
    /// Example:
    ///   otactl events tail --from 1 --limit 20
    ///   otactl events tail --follow --stream rollout/ --stream task/
    ///   otactl events tail --type FirmwareRegistered -o json
    #[command(verbatim_doc_comment)]
    Tail(TailArgs),
}

/// `events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// First sequence number to print (1: the beginning).
    #[arg(long, default_value_t = 1, value_name = "SEQ")]
    pub from: u64,
    /// Keep the stream open and print new events as they are recorded.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only streams starting with this prefix ("rollout/", "device/home/"; repeatable).
    #[arg(long = "stream", value_name = "PREFIX")]
    pub streams: Vec<String>,
    /// Only events of this type ("TaskProgressed"; repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Stop after this many events.
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<u32>,
}

// === site ===

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

// === pki ===

/// `otactl pki ...` (local files only; nothing is sent to otad)
#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create the certificate authority that signs otad's and the agents' certificates
    ///
    /// Writes <DIR>/ca.pem (give it to otad as tls_client_ca and to agents as [tls] ca) and
    /// <DIR>/ca.key (mode 0600; keep it offline: whoever has it can make agent certificates).
    ///
    /// Example:
    ///   otactl pki init-ca --dir /etc/ota/pki
    #[command(verbatim_doc_comment)]
    InitCa(PkiInitArgs),
    /// Issue the client certificate of one site's agent
    ///
    /// The certificate names the site as URI:ota-site:<SITE>; otad lets it report only for
    /// that site. Writes <DIR>/site-<SITE>.pem and <DIR>/site-<SITE>.key (mode 0600).
    ///
    /// Example:
    ///   otactl pki issue-site home --dir /etc/ota/pki
    #[command(verbatim_doc_comment)]
    IssueSite(PkiSiteArgs),
    /// Issue otad's server certificate for the names agents and otactl connect to
    ///
    /// Each NAME is a DNS name or an IP address. Writes <DIR>/server.pem and <DIR>/server.key
    /// (mode 0600), for otad's tls_cert and tls_key.
    ///
    /// Example:
    ///   otactl pki issue-server otad.example.net 10.0.0.5 --dir /etc/ota/pki
    #[command(verbatim_doc_comment)]
    IssueServer(PkiServerArgs),
}

/// `pki init-ca`.
#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// Directory of the PKI files (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Common name of the CA.
    #[arg(long, value_name = "NAME", default_value = "OTA fleet CA")]
    pub name: String,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 3650)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// `pki issue-site`.
#[derive(Debug, Args)]
pub struct PkiSiteArgs {
    /// The site id, as in the agent's site_id.
    #[arg(value_name = "SITE")]
    pub site: String,
    /// Directory of the PKI files (holding ca.pem and ca.key).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 825)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// `pki issue-server`.
#[derive(Debug, Args)]
pub struct PkiServerArgs {
    /// DNS names and IP addresses otad is reached at.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    /// Directory of the PKI files (holding ca.pem and ca.key).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 825)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

// === token ===

/// `otactl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a bearer token; the secret is printed once
    ///
    /// Roles: viewer (read and watch), operator (checks, updates, rollouts), admin (firmware,
    /// tokens, sites). otad stores only a hash: copy the secret when it is shown.
    ///
    /// Example:
    ///   otactl token create alice --role operator --ttl 90d
    ///   export OTACTL_TOKEN=<the printed secret>
    #[command(verbatim_doc_comment)]
    Create(TokenCreateArgs),
    /// List tokens (never their secrets)
    ///
    /// Example:
    ///   otactl token list
    #[command(verbatim_doc_comment, visible_alias = "ls")]
    List,
    /// Revoke a token by its id
    ///
    /// Example:
    ///   otactl token revoke tok-3f9a
    #[command(verbatim_doc_comment)]
    Revoke(IdArg),
}

/// Roles a user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read and watch.
    Viewer,
    /// Checks, updates and rollouts.
    Operator,
    /// Firmware, tokens and sites.
    Admin,
}

/// `token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Who the token is for ("alice", "ci").
    #[arg(value_name = "NAME")]
    pub name: String,
    /// What the token may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Lifetime ("30d", "12h"); without it the token never expires.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut full = vec!["otactl"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full)
    }

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
    fn upload_takes_claims_labels_and_signing() {
        let cli = parse(&[
            "firmware",
            "upload",
            "a.ota",
            "--name",
            "hue",
            "--version",
            "2.3",
            "--format",
            "zigbee-ota",
            "--label",
            "vendor=signify",
            "--label",
            "ring=beta",
            "--manufacturer-code",
            "0x100B",
            "--file-version",
            "16777216",
            "--sign-key",
            "k.key",
            "--key-id",
            "release",
        ])
        .unwrap();
        let Command::Firmware(FirmwareCmd::Upload(a)) = cli.command else {
            panic!("not an upload");
        };
        assert_eq!(a.format, FormatArg::ZigbeeOta);
        assert_eq!(a.manufacturer_code, Some(0x100B));
        assert_eq!(a.file_version, Some(16_777_216));
        assert_eq!(
            a.labels,
            vec![
                ("vendor".to_string(), "signify".to_string()),
                ("ring".to_string(), "beta".to_string())
            ]
        );
        assert_eq!(a.key_id.as_deref(), Some("release"));
    }

    #[test]
    fn upload_requires_name_version_and_both_signing_flags() {
        assert!(parse(&["firmware", "upload", "a.ota", "--version", "1"]).is_err());
        let err = parse(&[
            "firmware",
            "upload",
            "a",
            "--name",
            "n",
            "--version",
            "1",
            "--sign-key",
            "k",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(
            parse(&[
                "firmware",
                "upload",
                "a",
                "--name",
                "n",
                "--version",
                "1",
                "--label",
                "novalue"
            ])
            .is_err()
        );
    }

    #[test]
    fn download_uses_capital_o_for_the_file() {
        let cli = parse(&["firmware", "download", "fw-1", "-O", "x.bin", "-o", "json"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        let Command::Firmware(FirmwareCmd::Download(a)) = cli.command else {
            panic!("not a download");
        };
        assert_eq!(a.out, Some(PathBuf::from("x.bin")));
    }

    #[test]
    fn device_list_filters() {
        let cli = parse(&[
            "device",
            "list",
            "--status",
            "updating",
            "--unreachable",
            "--transport",
            "esphome",
        ])
        .unwrap();
        let Command::Device(DeviceCmd::List(a)) = cli.command else {
            panic!("not a device list");
        };
        assert_eq!(a.status, Some(2));
        assert!(a.unreachable && !a.reachable);
        assert_eq!(a.transport, Some(TransportArg::Esphome));
        assert!(parse(&["device", "list", "--reachable", "--unreachable"]).is_err());
        assert!(parse(&["device", "list", "--status", "sleeping"]).is_err());
        let cli = parse(&["device", "list", "--status", "100"]).unwrap();
        let Command::Device(DeviceCmd::List(a)) = cli.command else {
            panic!("not a device list");
        };
        assert_eq!(a.status, Some(100));
    }

    #[test]
    fn confirm_needs_exactly_one_answer() {
        assert!(parse(&["device", "confirm", "s/d"]).is_err());
        assert!(parse(&["device", "confirm", "s/d", "--continue", "--cancel"]).is_err());
        let cli = parse(&["device", "confirm", "s/d", "--continue"]).unwrap();
        let Command::Device(DeviceCmd::Confirm(a)) = cli.command else {
            panic!("not a confirm");
        };
        assert!(a.proceed && !a.cancel);
    }

    #[test]
    fn check_accepts_selectors_and_repeated_devices() {
        let cli = parse(&[
            "device", "check", "--site", "home", "--site", "lab", "--device", "a/b", "--device",
            "a/c", "--tag", "attic",
        ])
        .unwrap();
        let Command::Device(DeviceCmd::Check(a)) = cli.command else {
            panic!("not a check");
        };
        assert_eq!(a.selector.sites, ["home", "lab"]);
        assert_eq!(a.selector.devices, ["a/b", "a/c"]);
        assert!(!a.all);
    }

    #[test]
    fn auto_upgrade_state_is_optional() {
        let cli = parse(&["device", "auto-upgrade", "s/d"]).unwrap();
        let Command::Device(DeviceCmd::AutoUpgrade(a)) = cli.command else {
            panic!("not auto-upgrade");
        };
        assert_eq!(a.state, None);
        let cli = parse(&["device", "auto-upgrade", "s/d", "off"]).unwrap();
        let Command::Device(DeviceCmd::AutoUpgrade(a)) = cli.command else {
            panic!("not auto-upgrade");
        };
        assert_eq!(a.state, Some(OnOff::Off));
    }

    #[test]
    fn rollout_flag_form_parses_waves_thresholds_and_durations() {
        let cli = parse(&[
            "rollout",
            "create",
            "--name",
            "r",
            "--firmware",
            "fw-1",
            "--canary",
            "5",
            "--waves",
            "5,25,100",
            "--deadline",
            "1h",
            "--soak",
            "10m",
            "--failure-threshold",
            "10%",
            "--start",
        ])
        .unwrap();
        let Command::Rollout(RolloutCmd::Create(a)) = cli.command else {
            panic!("not a create");
        };
        assert!(a.start);
        let f = a.spec.flags;
        assert_eq!(f.waves, Some(values::Percents(vec![5.0, 25.0, 100.0])));
        assert_eq!(f.deadline, Some(Duration::from_secs(3600)));
        assert_eq!(f.soak, Some(Duration::from_secs(600)));
        assert_eq!(f.failure_threshold, Some(values::Threshold::Percent(10.0)));
        assert!(parse(&["rollout", "create", "--waves", "50,25"]).is_err());
        assert!(parse(&["rollout", "create", "--failure-threshold", "x"]).is_err());
    }

    #[test]
    fn token_create_needs_a_known_role() {
        assert!(parse(&["token", "create", "alice", "--role", "root"]).is_err());
        let cli = parse(&[
            "token", "create", "alice", "--role", "admin", "--ttl", "30d",
        ])
        .unwrap();
        let Command::Token(TokenCmd::Create(a)) = cli.command else {
            panic!("not a token create");
        };
        assert_eq!(a.role, RoleArg::Admin);
        assert_eq!(a.ttl, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn events_tail_defaults_to_the_beginning() {
        let cli = parse(&["events", "tail"]).unwrap();
        let Command::Events(EventsCmd::Tail(a)) = cli.command else {
            panic!("not a tail");
        };
        assert_eq!(a.from, 1);
        assert!(!a.follow);
        assert_eq!(a.limit, None);
    }

    #[test]
    fn help_documents_exit_codes_and_json() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes"));
        assert!(help.contains("-o json"));
        assert!(help.contains("OTACTL_SERVER"));
    }
}

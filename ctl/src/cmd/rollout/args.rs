//! The arguments of `otactl rollout ...`, and the spec file format its help shows.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::cli::{IdArg, SelectorArgs, UpgradeTypeArg};
use crate::values;

const SPEC_FORMAT_HELP: &str = "\
Spec file format (TOML; durations are \"30s\", \"10m\", \"1h\" or seconds; thresholds are a \
count \"2\" or a percentage \"10%\"):

  name = \"hue-switch 2.3.093\"        # required
  firmware = \"fw-1a2b3c4d5e6f7a8b\"   # required
  upgrade_type = \"notify\"            # notify | forced | check
  allow_downgrade = false
  device_timeout = \"30m\"             # transfer budget, from the start of the transfer;
                                     # default: 30m for Zigbee, 10m otherwise
  wake_timeout = \"7d\"                # how long a sleepy device may sleep before its
                                     # update fails (5016); default 7 days
  on_asleep = \"wait\"                 # wait | continue: does a stage wait for devices that
                                     # sleep? (they never count as failures)
  failure_budget = \"10%\"             # failed + timed-out devices across the rollout that
                                     # pause it (stragglers included); default 10% of the
                                     # targets, at least the largest stage threshold; or none
  require_approval = false           # four eyes: another operator must `otactl rollout
                                     # approve` it before it can start (otad's
                                     # require_approval setting makes it always on)
  rollback = \"none\"                  # none | failed | all: when a threshold or criterion
                                     # stops the rollout, otad creates a linked rollout that
                                     # puts back the image each failed (or each updated)
                                     # device ran before
  batch_check = true                 # one availability check of all targets first
  batch_check_timeout = \"60s\"
  canary_per_site = 2                # the first stage takes 2 devices from every site and
                                     # every zigbee2mqtt network (each transport instance;
                                     # mains-powered, reachable, strong-signal first); that
                                     # stage then has no count or percent

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
  deadline = \"1h\"                    # unfinished devices then time out (5016), sleeping
                                     # ones go on; default 24h (7 days with a window);
                                     # \"none\": no deadline
  soak = \"10m\"                       # wait after success before the next stage

  [[stages]]
  name = \"everyone\"
  percent = 100

  [[abort]]                          # abort criteria over the devices that FINISHED
  on = \"failed\"                      # failed | timed_out | rejected | any (rejected: the
                                     # device did not take the image, 5013/5018)
  percent = 20                       # trips at this share of the finished devices
  min_finished = 10                  # evaluated once this many have finished (default 1)
  action = \"pause\"                   # pause | abort | rollback (default pause; rollback:
                                     # abort and roll back as `rollback` says, else the
                                     # failed devices)

  [rate]                             # devices STARTED per minute (first dispatches, counted
  max_per_minute = 30                # from the log; retries are not counted), 1-10000
  ramp = { start = 2, factor = 2.0, after_successes = 5 }
                                     # optional: start at 2/min, ×2 after every 5 more
                                     # successes (or after_percent = 10: every 10 % of the
                                     # targets), up to max_per_minute; factor > 1 and <= 5

  [health]                           # success only when the device stays healthy this long
  esphome_window = \"2m\"              # after it reports the target version: the API keeps
                                     # answering on it, uptime rising (a rollback, reboot or
                                     # safe mode fails it, 5022); default 2m; \"none\": off
  zigbee_window = \"10m\"              # zigbee2mqtt sees the device on it (a silent mains
                                     # device is asked at the end); default 10m
  accept_reachability = false        # devices without an API (none configured, serial)
                                     # succeed when reachable; else they end \"unconfirmed\",
                                     # which is no success for the stage

  [concurrency]                      # 0 or absent: server defaults
  global = 50
  per_site = 10
  per_zigbee_network = 1
  per_esphome_site = 4

  [retry]
  max_attempts = 3
  initial_backoff = \"30s\"
  max_backoff = \"15m\"

  [window]                           # maintenance window in each site's local time (the
  start = \"22:00\"                    # IANA zone its agent reports, daylight saving
  end = \"05:00\"                      # included)
  weekdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]   # or 0 (Sunday) .. 6

  [site_timezones]                   # zone per site, instead of what its agent reports
  home = \"Europe/Berlin\"

  [preconditions]                    # gates checked right before each dispatch; 0: off
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
    /// Approve a rollout that needs approval (four eyes), so it can start
    ///
    /// Only an operator or admin who did not create it can approve it; the reason is recorded
    /// with the approval. A rollout needs approval when its spec says `require_approval = true`
    /// or otad runs with `require_approval`.
    ///
    /// Example:
    ///   otactl rollout approve ro-0192f3c1 --reason "release notes read, canary size ok"
    #[command(verbatim_doc_comment)]
    Approve(ApprovalArgs),
    /// Deny a rollout that needs approval: it ends without having run
    ///
    /// Example:
    ///   otactl rollout deny ro-0192f3c1 --reason "not before the holidays"
    #[command(verbatim_doc_comment)]
    Deny(ApprovalArgs),
    /// Roll a paused, aborted or completed rollout back: put back the image each device ran before
    ///
    /// Creates a linked rollout (a draft, or running with --start) that installs, on the failed
    /// devices (or, with --devices all, also on those it updated), the firmware each ran
    /// before, with the rollout's gates and limits, downgrades allowed. Devices whose previous
    /// image is not in the catalog are listed as its exclusions, with the reason. A rollout is
    /// rolled back at most once; the link shows in `rollout show` both ways. It needs approval
    /// when otad requires it or the rollout needed it.
    ///
    /// Example:
    ///   otactl rollout rollback ro-0192f3c1 --devices all --start --reason "battery drain"
    #[command(verbatim_doc_comment)]
    Rollback(RollbackArgs),
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
    /// First stage ("canary"): N devices from every site and every zigbee2mqtt network (each
    /// transport instance of a site), mains-powered, reachable and strong-signal devices first.
    #[arg(long, value_name = "N", conflicts_with = "canary")]
    pub canary_per_site: Option<u32>,
    /// Then waves reaching these cumulative percentages of all targets ("5,25,100").
    #[arg(long, value_parser = values::parse_percent_list, value_name = "P,P,...")]
    pub waves: Option<values::Percents>,
    /// Stage deadline: devices not finished this long after their stage started time out
    /// (sleeping ones go on); default 24h; "none" for no deadline.
    #[arg(long, value_parser = values::parse_duration_or_none, value_name = "DURATION|none")]
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
    /// Transfer budget per device, from the start of its transfer.
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub device_timeout: Option<Duration>,
    /// How long a sleepy device may sleep before its update fails (default 7 days).
    #[arg(long, value_parser = values::parse_duration, value_name = "DURATION")]
    pub wake_timeout: Option<Duration>,
    /// Whether a stage waits for devices that sleep (they never count as failures).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub on_asleep: Option<OnAsleepArg>,
    /// Failed or timed-out devices across the rollout that pause it: a count, a percentage of
    /// all targets, or "none" (default: 10%, at least the largest stage threshold).
    #[arg(long, value_parser = values::parse_threshold_or_none, value_name = "N|P%|none")]
    pub failure_budget: Option<values::Limit>,
    /// Four eyes: another operator must approve the rollout (`otactl rollout approve`)
    /// before it can start.
    #[arg(long)]
    pub require_approval: bool,
    /// Abort criterion over the devices that finished (repeatable): ON is failed, timed_out,
    /// rejected or any; once MIN_FINISHED devices finished (default 1), a share of PERCENT or
    /// more pauses (default), aborts, or aborts and rolls back (ACTION pause, abort or
    /// rollback) the rollout. Example: --abort failed:20%:10:pause
    #[arg(long = "abort", value_parser = values::parse_abort_rule, value_name = "ON:P%[:MIN[:ACTION]]")]
    pub abort: Vec<values::AbortRule>,
    /// Most devices the rollout starts per minute (a ramp is set in the spec file's [rate]).
    #[arg(long, value_name = "N")]
    pub max_per_minute: Option<u32>,
    /// When a threshold or criterion stops the rollout, roll these devices back to the image
    /// each ran before (default none).
    #[arg(long, value_enum, value_name = "DEVICES")]
    pub rollback: Option<RollbackArg>,
    /// Health window for every transport (default 2m ESPHome, 10m Zigbee; "none" for off):
    /// after a device reports the target version it must stay healthy this long before its
    /// task counts as succeeded (a rollback, reboot loop or safe mode fails it with 5022).
    #[arg(long, value_parser = values::parse_duration_or_none, value_name = "DURATION|none")]
    pub health_window: Option<Duration>,
    /// Devices without an API (none configured, serial) succeed when reachable at the end of
    /// their health window, rather than ending "unconfirmed" (no success for the stage).
    #[arg(long)]
    pub accept_reachability: bool,
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

/// What a stage does about devices that sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnAsleepArg {
    /// The stage waits for them (within its deadline).
    Wait,
    /// The next stage may start; they finish later.
    Continue,
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

/// `rollout approve|deny`.
#[derive(Debug, Args)]
pub struct ApprovalArgs {
    /// Rollout id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Why (required; recorded in the event log with your name).
    #[arg(long)]
    pub reason: String,
}

/// Which devices a rollback reverts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RollbackArg {
    /// No automatic rollback.
    None,
    /// The devices whose update failed or timed out.
    Failed,
    /// Those and the devices it updated.
    All,
}

/// `rollout rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Rollout id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Which devices (default: the spec's `rollback`, else failed).
    #[arg(long, value_enum, value_name = "DEVICES")]
    pub devices: Option<RollbackArg>,
    /// Start the linked rollout right away (it stays a draft when it needs approval).
    #[arg(long)]
    pub start: bool,
    /// Why (recorded in the event log).
    #[arg(long)]
    pub reason: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

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
            "--abort",
            "failed:20%:10:abort",
            "--abort",
            "any:50",
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
        assert_eq!(
            f.abort,
            [
                values::AbortRule {
                    on: "failed".into(),
                    percent: 20.0,
                    min_finished: Some(10),
                    action: Some("abort".into()),
                },
                values::AbortRule {
                    on: "any".into(),
                    percent: 50.0,
                    min_finished: None,
                    action: None,
                },
            ]
        );
        let cli = parse(&[
            "rollout",
            "plan",
            "--canary-per-site",
            "2",
            "--waves",
            "100",
        ])
        .unwrap();
        let Command::Rollout(RolloutCmd::Plan(a)) = cli.command else {
            panic!("not a plan");
        };
        assert_eq!(a.spec.flags.canary_per_site, Some(2));
        assert!(
            parse(&[
                "rollout",
                "create",
                "--canary",
                "1",
                "--canary-per-site",
                "2"
            ])
            .is_err(),
            "a canary of N devices or N per site, not both"
        );
        assert!(parse(&["rollout", "create", "--waves", "50,25"]).is_err());
        assert!(parse(&["rollout", "create", "--abort", "failed"]).is_err());
        assert!(parse(&["rollout", "create", "--abort", "failed:x%"]).is_err());
        assert!(parse(&["rollout", "create", "--failure-threshold", "x"]).is_err());
    }
}

//! The arguments of `otactl device ...`.

use clap::{Args, Subcommand, ValueEnum};

use crate::cli::{IdArg, SelectorArgs, TransportArg, UpgradeTypeArg};
use crate::values;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse};

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
}

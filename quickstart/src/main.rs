//! `ota-quickstart`: parse the flags, set up logs, start the quickstart, print the banner, run
//! until Ctrl-C or SIGTERM, shut everything down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ota_quickstart::{Quickstart, QuickstartOptions};

/// Exit status when the configuration or the command line cannot be used (`EX_USAGE` of
/// sysexits.h): nothing was started.
const EXIT_USAGE: u8 = 64;

/// ota-quickstart — otad, one ota-agent and a simulated site with sample firmware, in one
/// process, so otactl has a fleet to work on at once.
///
/// The site has ESPHome devices (ESP32 and ESP8266) and a zigbee2mqtt bridge with mains and
/// sleepy Zigbee devices on an embedded MQTT broker; every simulator speaks the real protocol.
/// otad runs in development mode (plaintext, no tokens), like `otad --insecure-plaintext`.
#[derive(Debug, Parser)]
#[command(name = "ota-quickstart", version, about, long_about)]
struct Cli {
    /// Data directory: otad's event log and firmware, the agent's journal, the simulated
    /// devices' versions. Kept across runs.
    #[arg(long, default_value = "ota-quickstart-data")]
    data_dir: PathBuf,
    /// otad's gRPC address (otactl's default server is http://127.0.0.1:7600).
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: SocketAddr,
    /// otad's Prometheus endpoint (/metrics); "off" for none.
    #[arg(long, default_value = "127.0.0.1:9600", value_parser = parse_optional_addr)]
    metrics_listen: OptionalAddr,
    /// The agent's Prometheus endpoint (/metrics); "off" for none.
    #[arg(long, default_value = "127.0.0.1:9601", value_parser = parse_optional_addr)]
    agent_metrics_listen: OptionalAddr,
    /// The site's id.
    #[arg(long, default_value = "home")]
    site: String,
    /// Simulated ESPHome devices (ESP32 multisensors and ESP8266 smart plugs).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=64))]
    esphome: u16,
    /// Simulated mains-powered Zigbee devices (bulbs, plugs).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=64))]
    zigbee_mains: u16,
    /// Simulated sleepy battery Zigbee devices (thermostats, sensors), waking every 30 s.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=64))]
    zigbee_sleepy: u16,
    /// Remove the data directory first (only one an earlier quickstart created).
    #[arg(long)]
    reset: bool,
}

/// A listen address, or none.
#[derive(Debug, Clone, Copy)]
struct OptionalAddr(Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:9600 or \"off\": {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    "warn,ota_quickstart=info,rumqttd=off,rumqttc=error,h2=warn,hyper=warn",
                )
            }),
        )
        .init();
    if cli.reset
        && let Err(e) = ota_quickstart::reset_data_dir(&cli.data_dir)
    {
        eprintln!("ota-quickstart: {e:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    let opts = QuickstartOptions {
        data_dir: cli.data_dir,
        listen: cli.listen,
        metrics_listen: cli.metrics_listen.0,
        agent_metrics_listen: cli.agent_metrics_listen.0,
        site: cli.site,
        esphome_devices: usize::from(cli.esphome),
        zigbee_mains: usize::from(cli.zigbee_mains),
        zigbee_sleepy: usize::from(cli.zigbee_sleepy),
    };
    ota_telemetry::runtime::run_main("ota-quickstart", run(opts))
}

async fn run(opts: QuickstartOptions) -> anyhow::Result<()> {
    eprintln!(
        "ota-quickstart: starting otad on {}, the simulated site and its agent…",
        opts.listen
    );
    let qs = Quickstart::start(opts).await?;
    println!("{}", qs.banner());
    ota_telemetry::signal::shutdown_signal().await;
    eprintln!("ota-quickstart: shutting down…");
    qs.shutdown().await;
    eprintln!("ota-quickstart: stopped; the data directory is kept");
    Ok(())
}

//! `ota-agent`: read the site's configuration, start its transports, dial otad, run until
//! SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ota_agent::agent::Agent;
use ota_agent::config::AgentConfig;
use ota_agent::site::Site;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// Exit status when the configuration or the command line cannot be used (`EX_USAGE` of
/// sysexits.h): nothing was started.
const EXIT_USAGE: u8 = 64;

/// ota-agent — one per site: reports the site's Zigbee (zigbee2mqtt), ESPHome and serial devices
/// to otad and runs the updates it is given.
///
/// The agent dials out to otad (no inbound port), keeps progress and results in an on-disk
/// journal while the server is unreachable, and delivers them exactly once when it is back.
#[derive(Debug, Parser)]
#[command(name = "ota-agent", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML; see agent.example.toml).
    #[arg(long, short, env = "OTA_AGENT_CONFIG", default_value = "agent.toml")]
    config: PathBuf,
    /// Only check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Serve Prometheus metrics on this address (path /metrics); overrides `metrics_listen`.
    #[arg(long, env = "OTA_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ota-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.metrics_listen.is_some() {
        config.metrics_listen = cli.metrics_listen;
    }
    if cli.check_config {
        if let Some(tls) = &config.tls
            && let Err(e) = tls.client_config(&config.base_dir)
        {
            eprintln!("ota-agent: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
        println!(
            "configuration OK: site {} → {}",
            config.site_id, config.server
        );
        return ExitCode::SUCCESS;
    }
    ota_telemetry::runtime::run_main("ota-agent", run(config))
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    // Logs, and traces over OTLP when [telemetry] or OTEL_* name a collector; flushed on drop.
    let tracing = config
        .tracing_config()
        .resolve(ota_agent::config::DEFAULT_SERVICE_NAME)
        .map_err(|e| anyhow::anyhow!("invalid [telemetry]:\n{}", e.join("\n")))?;
    let _telemetry = ota_telemetry::traces::init(&tracing)?;
    let cancel = CancellationToken::new();
    let site = Site::start(&config, cancel.clone()).await?;
    let options = Site::agent_options(&config, Duration::from_secs(1));
    let trust = config.trust_policy()?;
    if trust.require_signed() {
        tracing::info!(keys = ?trust.key_ids(), "only firmware signed by a trusted key is installed");
    } else {
        tracing::warn!(keys = ?trust.key_ids(), "this site installs unsigned firmware ([trust] require_signed is off)");
    }
    let agent = Agent::with_trust(options, site.transports.clone(), trust)?;
    let mut endpoint = Endpoint::from_shared(config.server.clone())?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    match &config.tls {
        Some(tls) => endpoint = endpoint.tls_config(tls.client_config(&config.base_dir)?)?,
        None => tracing::warn!(
            server = %config.server,
            "INSECURE: plaintext connection to otad (development only); use https:// with [tls]"
        ),
    }
    let channel = endpoint.connect_lazy();
    tracing::info!(site.id = %config.site_id, server = %config.server, agent.id = agent.agent_id(), "ota-agent starting");
    let metrics = ota_agent::metrics::start(
        &agent,
        config.metrics_listen,
        config.telemetry.otlp_endpoint.clone(),
        cancel.clone(),
    )
    .await?;
    let running = tokio::spawn(agent.run(channel, cancel.clone()));
    ota_telemetry::signal::shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    let _ = running.await;
    site.join().await;
    metrics.join().await;
    Ok(())
}

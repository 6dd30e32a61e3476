//! The one-command quickstart: a whole OTA fleet in one process, for trying otactl at once.
//!
//! [`Quickstart::start`] runs, in the calling tokio runtime:
//! - **otad** in development mode (plaintext gRPC, no tokens: what `otad --insecure-plaintext`
//!   does), on its sled event log and firmware blobs in the data directory;
//! - an **embedded MQTT broker** (`ota_sim::broker`) and a **zigbee2mqtt simulator**
//!   (`ota_sim::z2m`) with mains-powered routers and sleepy battery devices of real models,
//!   with zigbee2mqtt's timings shortened so an update takes seconds;
//! - several **ESPHome device simulators** (`ota_sim::esphome_node`: native OTA and native API),
//!   ESP32 and ESP8266, one with an OTA password and one with a Noise key;
//! - one **ota-agent** for the site, built from the configuration file an operator would write
//!   (rendered to `<data dir>/agent/agent.toml`), dialling otad like the real binary does;
//! - **sample firmware**: one newer image per device model, and for the ESPHome models the image
//!   their devices run at first start (what a rollback puts back), uploaded through the public
//!   gRPC API unless the catalog has it already.
//!
//! Everything speaks the real protocols over loopback; nothing is mocked. The data directory
//! keeps otad's log, the agent's journal and the simulated devices' versions, so a restart
//! resumes where the last run stopped (the same devices, the same firmware, updated devices on
//! their new versions).
//!
//! What it does not do: TLS, tokens or signed firmware (see `deploy/README.md` for those), or
//! run anything outside the process.
//!
//! # Layout
//! - `fleet`: the devices, their simulators, the agent configuration.
//! - [`samples`]: the sample firmware and its upload.
//! - `state` (private): the simulated devices' versions across restarts.
//! - `banner`: what the binary prints once everything runs ([`Quickstart::banner`]).

mod banner;
mod fleet;
pub mod samples;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ota_agent::agent::Agent;
use ota_agent::config::AgentConfig;
use ota_agent::site::Site;
use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};
use ota_sim::broker::EmbeddedBroker;
use ota_sim::esphome_node::EsphomeNode;
use ota_sim::z2m::{Timings, Z2mSim, Z2mSimConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use samples::SampleFirmware;

use crate::state::{EspState, SimState, ZigbeeState};

/// File that marks a directory as a quickstart data directory (`--reset` wipes only those).
pub const MARKER_FILE: &str = ".ota-quickstart";

/// What to start.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// otad's sled store and firmware blobs; the agent's journal and the simulators' saved
    /// versions live below it.
    pub data_dir: PathBuf,
    /// otad's gRPC address (plaintext, development mode).
    pub listen: SocketAddr,
    /// otad's Prometheus endpoint (`/metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// The agent's Prometheus endpoint, if any.
    pub agent_metrics_listen: Option<SocketAddr>,
    /// The site's id.
    pub site: String,
    /// Simulated ESPHome devices.
    pub esphome_devices: usize,
    /// Simulated mains-powered Zigbee routers.
    pub zigbee_mains: usize,
    /// Simulated sleepy battery Zigbee devices.
    pub zigbee_sleepy: usize,
}

impl Default for QuickstartOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ota-quickstart-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9600))),
            agent_metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9601))),
            site: "home".into(),
            esphome_devices: 4,
            zigbee_mains: 3,
            zigbee_sleepy: 2,
        }
    }
}

/// How fast the simulated world moves. [`Tuning::default`] suits the README's tour (a Zigbee
/// update in about ten seconds, sleepy devices waking every 30 s); [`Tuning::fast`] suits
/// tests.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Upgrade image bytes in each Zigbee OTA sample.
    pub zigbee_image_bytes: usize,
    /// Filler bytes in each ESP sample.
    pub esp_image_bytes: usize,
    /// How often sleepy Zigbee devices wake up.
    pub sleepy_wake_interval: Duration,
    /// How long an ESPHome device takes to reboot.
    pub esphome_reboot: Duration,
    /// zigbee2mqtt's spacing of image blocks.
    pub zigbee_block_delay: Duration,
    /// Minimum spacing of the agent's progress reports of one task.
    pub progress_interval: Duration,
    /// How often the simulated devices' versions are saved.
    pub save_interval: Duration,
    /// How long [`Quickstart::start`] waits for the site to report every device.
    pub ready_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            zigbee_image_bytes: 160 * 1024,
            esp_image_bytes: 600 * 1024,
            sleepy_wake_interval: Duration::from_secs(30),
            esphome_reboot: Duration::from_secs(2),
            zigbee_block_delay: Duration::from_millis(1),
            progress_interval: Duration::from_millis(500),
            save_interval: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl Tuning {
    /// Small images and short waits, for tests.
    pub fn fast() -> Self {
        Self {
            zigbee_image_bytes: 6 * 1024,
            esp_image_bytes: 48 * 1024,
            sleepy_wake_interval: Duration::from_secs(3),
            esphome_reboot: Duration::from_millis(200),
            zigbee_block_delay: Duration::from_millis(1),
            progress_interval: Duration::from_millis(100),
            save_interval: Duration::from_millis(200),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// A simulated device, as the quickstart planned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedDevice {
    /// Device id at otad (`<site>/<local id>`).
    pub id: String,
    /// Friendly or node name.
    pub name: String,
    /// `zigbee2mqtt` or `esphome`.
    pub transport: &'static str,
    /// Model as the site reports it (zigbee2mqtt model, ESPHome board).
    pub model: String,
    /// A battery device that sleeps between wake-ups.
    pub sleepy: bool,
    /// Id of the sample firmware for its model.
    pub firmware_id: String,
}

/// Creates the data directory and marks it as the quickstart's (`--reset` wipes only those).
fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    std::fs::write(
        data_dir.join(MARKER_FILE),
        "ota-quickstart data directory\n",
    )
    .with_context(|| format!("cannot write to {}", data_dir.display()))
}

/// otad, in development mode, on its store in the data directory.
async fn start_server(opts: &QuickstartOptions) -> anyhow::Result<Otad> {
    let config = Config {
        listen: opts.listen,
        data_dir: opts.data_dir.clone(),
        metrics_listen: opts.metrics_listen,
        insecure_plaintext: true,
        ..Config::default()
    };
    let store = open_store(&config)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another otad or quickstart running? try --listen)",
                opts.listen
            )
        })?;
    Otad::start(config, store, Clock::new(), listener).await
}

/// The sample images of the planned devices (see [`samples`]), uploaded unless the catalog has
/// them.
async fn upload_samples(
    channel: &Channel,
    zigbee_plan: &[fleet::ZigbeeDevice],
    esp_plan: &[fleet::EspDevice],
    tuning: &Tuning,
) -> anyhow::Result<Vec<SampleFirmware>> {
    let catalog = samples::catalog(channel.clone()).await?;
    // Keyed by (name, version): one image each.
    let mut wanted: Vec<((&str, &str), _)> = Vec::new();
    for d in zigbee_plan {
        let key = (d.model.firmware.0, d.model.firmware.1);
        if !wanted.iter().any(|(k, _)| *k == key) {
            wanted.push((
                key,
                samples::zigbee_sample(&d.model, tuning.zigbee_image_bytes),
            ));
        }
    }
    for d in esp_plan {
        for version in [d.kind.firmware.1, fleet::ESP_INSTALLED_VERSION] {
            let key = (d.kind.firmware.0, version);
            if !wanted.iter().any(|(k, _)| *k == key) {
                wanted.push((
                    key,
                    samples::esp_sample(&d.kind, version, tuning.esp_image_bytes),
                ));
            }
        }
    }
    let mut firmware = Vec::new();
    for (_, sample) in wanted {
        firmware.push(samples::ensure_uploaded(channel.clone(), &catalog, sample).await?);
    }
    Ok(firmware)
}

/// The devices as the banner and the tests see them, each with the sample firmware it takes.
fn simulated_devices(
    site: &str,
    zigbee_plan: &[fleet::ZigbeeDevice],
    esp_plan: &[fleet::EspDevice],
    firmware: &[SampleFirmware],
) -> Vec<SimulatedDevice> {
    let firmware_of = |(name, version): (&str, &str)| {
        firmware
            .iter()
            .find(|f| f.name == name && f.version == version)
            .map(|f| f.id.clone())
            .unwrap_or_default()
    };
    let zigbee = zigbee_plan.iter().map(|d| SimulatedDevice {
        id: format!("{site}/{}", d.ieee),
        name: d.friendly_name.clone(),
        transport: "zigbee2mqtt",
        model: d.model.model.into(),
        sleepy: d.model.sleepy,
        firmware_id: firmware_of((d.model.firmware.0, d.model.firmware.1)),
    });
    let esphome = esp_plan.iter().map(|d| SimulatedDevice {
        id: format!("{site}/{}", d.name),
        name: d.name.clone(),
        transport: "esphome",
        model: d.kind.board.into(),
        sleepy: false,
        firmware_id: firmware_of(d.kind.firmware),
    });
    zigbee.chain(esphome).collect()
}

/// Each ESPHome device's plan, OTA port and API port, for the agent's configuration file.
type EspPorts = Vec<(fleet::EspDevice, u16, u16)>;

/// The ESPHome simulators, and each device's ports for the agent's file.
fn start_esphome_nodes(
    esp_plan: &[fleet::EspDevice],
    saved: &SimState,
    tuning: &Tuning,
) -> anyhow::Result<(Vec<EsphomeNode>, EspPorts)> {
    let mut nodes = Vec::new();
    let mut esp_ports = Vec::new();
    for d in esp_plan {
        let node = EsphomeNode::start(fleet::esphome_node(d, saved, tuning.esphome_reboot))
            .with_context(|| format!("cannot start the ESPHome simulator {}", d.name))?;
        esp_ports.push((d.clone(), node.ota_addr().port(), node.api_addr().port()));
        nodes.push(node);
    }
    Ok((nodes, esp_ports))
}

/// The zigbee2mqtt simulator on the embedded broker, with timings shortened for the tour.
async fn start_zigbee(
    broker: &EmbeddedBroker,
    zigbee_plan: &[fleet::ZigbeeDevice],
    saved: &SimState,
    tuning: &Tuning,
) -> anyhow::Result<Z2mSim> {
    let mut z2m = Z2mSimConfig::new(broker.host(), broker.port());
    z2m.devices = zigbee_plan
        .iter()
        .map(|d| fleet::zigbee_sim_device(d, saved, tuning.sleepy_wake_interval))
        .collect();
    z2m.timings = Timings {
        image_block_response_delay: tuning.zigbee_block_delay,
        image_block_request_timeout: Duration::from_secs(10),
        query_timeout: Duration::from_secs(10),
        announce_wait: Duration::from_secs(5),
        progress_interval: Duration::from_secs(1),
        query_delay: Duration::from_millis(100),
        awake_window: Duration::from_secs(10),
        ..Timings::default()
    };
    z2m.epoch_ms = now_ms();
    // The agent may subscribe after the bridge published: keep device states retained.
    z2m.retain_device_state = true;
    Ok(Z2mSim::start(z2m).await?)
}

/// The running agent and what it started.
struct StartedAgent {
    agent: JoinHandle<()>,
    metrics: ota_agent::metrics::AgentMetrics,
    site: Site,
}

/// The agent, built from its configuration file like the `ota-agent` binary builds it.
async fn start_agent(
    agent_config: &Path,
    opts: &QuickstartOptions,
    tuning: &Tuning,
    channel: &Channel,
    cancel: &CancellationToken,
) -> anyhow::Result<StartedAgent> {
    let config = AgentConfig::load(agent_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let site = Site::start(&config, cancel.clone()).await?;
    let agent = Agent::with_trust(
        Site::agent_options(&config, tuning.progress_interval),
        site.transports.clone(),
        config.trust_policy()?,
    )?;
    let metrics = ota_agent::metrics::start(
        &agent,
        opts.agent_metrics_listen,
        config.telemetry.otlp_endpoint.clone(),
        cancel.clone(),
    )
    .await?;
    let agent = tokio::spawn(agent.run(channel.clone(), cancel.clone()));
    Ok(StartedAgent {
        agent,
        metrics,
        site,
    })
}

/// The simulators, shared with the task that saves their versions.
#[derive(Debug)]
struct Sims {
    esphome: Vec<EsphomeNode>,
    zigbee: Z2mSim,
}

impl Sims {
    fn snapshot(&self) -> SimState {
        let mut s = SimState::default();
        for n in &self.esphome {
            let snap = n.device().snapshot();
            s.esphome.insert(
                snap.name.clone(),
                EspState {
                    version: snap.version,
                    project: snap.project_name,
                },
            );
        }
        for d in self.zigbee.devices() {
            s.zigbee.insert(
                d.ieee,
                ZigbeeState {
                    file_version: d.installed_version,
                    software_build_id: d.software_build_id,
                },
            );
        }
        s
    }
}

/// A running quickstart.
#[derive(Debug)]
pub struct Quickstart {
    /// otad's gRPC address.
    pub grpc_addr: SocketAddr,
    /// otad's `/metrics` address, when it serves one.
    pub metrics_addr: Option<SocketAddr>,
    /// The agent's `/metrics` address, when it serves one.
    pub agent_metrics_addr: Option<SocketAddr>,
    /// The site's id.
    pub site: String,
    /// The sample firmware: one newer image per device model, and the installed image of each
    /// ESPHome model.
    pub firmware: Vec<SampleFirmware>,
    /// The simulated devices.
    pub devices: Vec<SimulatedDevice>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The agent's configuration file (generated).
    pub agent_config: PathBuf,
    /// The embedded MQTT broker's address (zigbee2mqtt's topics are under `zigbee2mqtt/`).
    pub mqtt_addr: SocketAddr,
    server: Otad,
    cancel: CancellationToken,
    agent: JoinHandle<()>,
    agent_metrics: ota_agent::metrics::AgentMetrics,
    site_tasks: Site,
    sims: Arc<Sims>,
    saver: JoinHandle<()>,
    broker: EmbeddedBroker,
}

impl Quickstart {
    /// Starts everything with the tour's timings.
    pub async fn start(opts: QuickstartOptions) -> anyhow::Result<Quickstart> {
        Self::start_with(opts, Tuning::default()).await
    }

    /// Starts everything with these timings, and returns once the site has reported its devices
    /// (or [`Tuning::ready_timeout`] passed; then it logs a warning and returns anyway).
    pub async fn start_with(opts: QuickstartOptions, tuning: Tuning) -> anyhow::Result<Quickstart> {
        let data_dir = opts.data_dir.clone();
        prepare_data_dir(&data_dir)?;
        let saved = SimState::load(&data_dir);
        let server = start_server(&opts).await?;
        let grpc_addr = server.addr;
        let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();

        // The devices and their sample firmware.
        let esp_plan = fleet::esphome_devices(opts.esphome_devices);
        let zigbee_plan = fleet::zigbee_devices(opts.zigbee_mains, opts.zigbee_sleepy);
        let firmware = upload_samples(&channel, &zigbee_plan, &esp_plan, &tuning).await?;
        let devices = simulated_devices(&opts.site, &zigbee_plan, &esp_plan, &firmware);

        // The simulated site.
        let broker = tokio::task::spawn_blocking(EmbeddedBroker::start)
            .await?
            .context("cannot start the embedded MQTT broker")?;
        let (nodes, esp_ports) = start_esphome_nodes(&esp_plan, &saved, &tuning)?;
        let zigbee = start_zigbee(&broker, &zigbee_plan, &saved, &tuning).await?;

        // The agent, from the configuration file an operator would write.
        let cancel = CancellationToken::new();
        let agent_dir = data_dir.join("agent");
        std::fs::create_dir_all(&agent_dir)?;
        let text = fleet::agent_toml(
            &opts.site,
            &format!("http://{grpc_addr}"),
            &agent_dir,
            &esp_ports,
            (&broker.host(), broker.port()),
        );
        let agent_config = agent_dir.join("agent.toml");
        write_private(&agent_config, &text)?;
        let started = start_agent(&agent_config, &opts, &tuning, &channel, &cancel).await?;

        let sims = Arc::new(Sims {
            esphome: nodes,
            zigbee,
        });
        let saver = tokio::spawn(save_loop(
            sims.clone(),
            data_dir.clone(),
            saved,
            tuning.save_interval,
            cancel.clone(),
        ));

        let qs = Quickstart {
            grpc_addr,
            metrics_addr: server.metrics_addr,
            agent_metrics_addr: started.metrics.addr,
            site: opts.site.clone(),
            firmware,
            devices,
            data_dir,
            agent_config,
            mqtt_addr: broker.addr(),
            server,
            cancel,
            agent: started.agent,
            agent_metrics: started.metrics,
            site_tasks: started.site,
            sims,
            saver,
            broker,
        };
        if let Err(e) = qs.wait_ready(channel, tuning.ready_timeout).await {
            tracing::warn!("{e:#}");
        }
        Ok(qs)
    }

    /// Waits until otad lists every simulated device of the site as reachable.
    async fn wait_ready(&self, channel: Channel, within: Duration) -> anyhow::Result<()> {
        let mut client = pb::device_service_client::DeviceServiceClient::new(channel);
        let want = self.devices.len();
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = 0;
        loop {
            if let Ok(r) = client
                .list(pb::ListDevicesRequest {
                    site_id: self.site.clone(),
                    reachable: Some(true),
                    page: Some(pb::PageRequest {
                        page_size: 1000,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
            {
                seen = r.into_inner().devices.len();
                if seen >= want {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "only {seen} of {want} devices were reported reachable within {}",
                    humanize(within)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text the binary prints once everything runs.
    pub fn banner(&self) -> String {
        banner::render(self)
    }

    /// Stops the agent, the simulators (saving their versions), the broker and otad (flushing
    /// its log), in that order.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.agent.await;
        self.site_tasks.join().await;
        self.agent_metrics.join().await;
        let _ = self.saver.await;
        if let Err(e) = self.sims.snapshot().save(&self.data_dir) {
            tracing::warn!(error = %e, "could not save the simulated devices' versions");
        }
        drop(self.sims);
        let mut broker = self.broker;
        let _ = tokio::task::spawn_blocking(move || broker.stop()).await;
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!("otad: {e:#}");
        }
    }
}

/// Saves the simulated devices' versions whenever they changed.
async fn save_loop(
    sims: Arc<Sims>,
    dir: PathBuf,
    mut last: SimState,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let now = sims.snapshot();
        if now != last {
            match now.save(&dir) {
                Ok(()) => last = now,
                Err(e) => {
                    tracing::warn!(error = %e, "could not save the simulated devices' versions")
                }
            }
        }
    }
}

/// Removes a quickstart data directory (one holding [`MARKER_FILE`]); refuses any other
/// non-empty directory, so a mistyped `--data-dir` never wipes someone's files.
pub fn reset_data_dir(dir: &Path) -> anyhow::Result<()> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if entries.next().is_some() && !dir.join(MARKER_FILE).exists() {
        anyhow::bail!(
            "{} is not an ota-quickstart data directory (no {MARKER_FILE}); not removing it",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn humanize(d: Duration) -> String {
    format!("{} s", d.as_secs_f32())
}

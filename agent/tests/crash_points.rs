//! Crash-point tests: exactly once across agent crashes, for every transport.
//!
//! A real otad runs in-process on a sled store; the agent runs on its own tokio runtime (its
//! "process") against the device simulators: an ESPHome node on loopback TCP, an ESP ROM
//! bootloader on a pseudo-terminal, a zigbee2mqtt bridge on the embedded MQTT broker. A
//! reference run counts the agent's durable journal writes during one update. Then, for each
//! write k in turn, the update is run again on fresh devices with the journal's failpoint set to
//! k: right after write k reaches the disk the agent hangs (its next journal operation never
//! returns), and the test drops its runtime; the disk then holds exactly what a SIGKILL after
//! write k would leave. A new agent starts on the same data directory against the same otad and
//! devices, and the test asserts that
//! - no device received the image twice (the simulators count completed receptions),
//! - the task ends with the right outcome (success: the devices are healthy, so an attempt
//!   interrupted before its point of no return is retried and one interrupted after it is
//!   recovered by looking at the device),
//! - otad recorded exactly one result per attempt it dispatched.
//!
//! Time is real (sockets and ptys race tokio's paused clock); reboots and retries are short.
//! Each scenario prints its matrix (kill point → write → outcome).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ota_agent::agent::{Agent, AgentOptions};
use ota_agent::journal::{Failpoint, KillMode};
use ota_agent::transport::Transport;
use ota_agent::trust::TrustPolicy;
use ota_domain::events::DomainEvent;
use ota_domain::projection::TaskPhase;
use ota_proto::v1 as pb;
use ota_server::core::Clock;
use ota_server::wiring;
use ota_testkit::agent::options;
use ota_testkit::otad::{config, lazy_channel, start_server};
use ota_testkit::upload::{meta, upload_firmware};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Builds a site's transports; called on the agent's runtime (they spawn their loops there).
type MakeTransports = Arc<dyn Fn() -> BoxFuture<'static, Vec<Arc<dyn Transport>>> + Send + Sync>;

/// One agent "process": its own runtime, killed by dropping the runtime without waiting.
struct AgentProcess {
    rt: Option<tokio::runtime::Runtime>,
}

impl AgentProcess {
    async fn start(
        dir: PathBuf,
        server: SocketAddr,
        make: MakeTransports,
        failpoint: Option<Arc<Failpoint>>,
    ) -> AgentProcess {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("agent runtime");
        rt.spawn(async move {
            let transports = make().await;
            let opts = AgentOptions {
                // Progress only on status changes: fewer writes, the same kinds of kill points.
                progress_interval: Duration::from_secs(3600),
                ..options("home", &dir)
            };
            let agent = match failpoint {
                Some(fp) => Agent::with_failpoint(opts, transports, TrustPolicy::default(), fp),
                None => Agent::new(opts, transports),
            }
            .expect("agent");
            let channel = Endpoint::from_shared(format!("http://{server}"))
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            tokio::spawn(agent.run(channel, CancellationToken::new()));
        })
        .await
        .expect("agent started");
        AgentProcess { rt: Some(rt) }
    }

    /// SIGKILL: every task of the agent is dropped where it stands (the thread hung in the
    /// journal stays hung); returns once the tasks are gone, so their ports and sockets are
    /// closed as the kernel would close a killed process's.
    async fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_millis(200)))
                .await
                .expect("runtime shut down");
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Otad {
    server: wiring::Otad,
    channel: Channel,
    _dir: tempfile::TempDir,
}

async fn otad() -> Otad {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(config(dir.path()), Clock::new()).await;
    let channel = lazy_channel(server.addr);
    Otad {
        server,
        channel,
        _dir: dir,
    }
}

impl Otad {
    async fn upload(&self, name: &str, version: &str, bytes: Vec<u8>) -> pb::Firmware {
        upload_firmware(&self.channel, meta(name, version), &bytes).await
    }

    /// A rollout of `firmware` to one device, with quick retries.
    async fn rollout(&self, firmware: &str, device: &str) -> String {
        let spec = pb::RolloutSpec {
            name: "crash".into(),
            firmware_id: firmware.into(),
            selector: Some(pb::DeviceSelector {
                device_ids: vec![device.into()],
                ..Default::default()
            }),
            stages: vec![pb::Stage {
                name: "all".into(),
                size: Some(pb::stage::Size::CumulativePercent(100.0)),
                ..Default::default()
            }],
            device_timeout_s: 120,
            retry: Some(pb::RetryPolicy {
                max_attempts: 3,
                initial_backoff_s: 1,
                max_backoff_s: 1,
            }),
            skip_batch_check: true,
            // No health window: this is about the transfer's points of no return.
            health: Some(pb::HealthPolicy::default()),
            ..Default::default()
        };
        pb::rollout_service_client::RolloutServiceClient::new(self.channel.clone())
            .create(pb::CreateRolloutRequest {
                spec: Some(spec),
                start: true,
            })
            .await
            .expect("rollout")
            .into_inner()
            .id
    }

    /// The task of `device`, once one exists.
    fn task_of(&self, device: &str) -> Option<ota_domain::projection::TaskView> {
        let state = self.server.app.core.read();
        state
            .tasks
            .values()
            .find(|t| t.created.device_id == device)
            .map(|t| (**t).clone())
    }

    /// Attempts dispatched and the agent results recorded, per attempt.
    fn attempts(&self, task: &str) -> (Vec<u32>, BTreeMap<u32, Vec<&'static str>>) {
        let events = self
            .server
            .app
            .core
            .store()
            .read_from(1, 1_000_000)
            .expect("events");
        let mut dispatched = Vec::new();
        let mut results: BTreeMap<u32, Vec<&'static str>> = BTreeMap::new();
        let stream = ota_domain::events::streams::task(task);
        for e in events.iter().filter(|e| e.stream == stream) {
            let Ok(ev) = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload) else {
                continue;
            };
            match ev {
                DomainEvent::TaskDispatched(d) => dispatched.push(d.attempt),
                DomainEvent::TaskSucceeded(s) if s.source.is_some() => {
                    results.entry(s.attempt).or_default().push("success")
                }
                DomainEvent::TaskFailed(f) if f.source.is_some() => {
                    results.entry(f.attempt).or_default().push("failure")
                }
                _ => {}
            }
        }
        (dispatched, results)
    }
}

async fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(within, async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A site for one run: how to build its transports, what to install where, and how many times
/// its device received an image in full.
struct Scenario {
    make: MakeTransports,
    device: String,
    firmware_name: String,
    version: String,
    image: Vec<u8>,
    received: Box<dyn Fn() -> usize + Send + Sync>,
    /// Whether otad knows enough of the device to update it.
    known: fn(&ota_domain::model::DeviceFacts) -> bool,
    /// Makes the device talk, while otad does not know enough of it yet (zigbee2mqtt publishes
    /// a device's state only when it changes or the device talks; states are not retained, so
    /// an agent that connected after the bridge's start has not heard them).
    nudge: Box<dyn Fn() + Send + Sync>,
    /// Keeps the simulators alive.
    _devices: Box<dyn std::any::Any + Send + Sync>,
}

/// What one run saw.
#[derive(Debug)]
struct Run {
    writes: Vec<String>,
    killed_after: Option<String>,
    phase: TaskPhase,
    attempts: Vec<u32>,
    received: usize,
    error: Option<String>,
}

/// One update of the scenario's device, the agent killed right after the durable journal write
/// `kill_at` (its description and occurrence; `None`: a reference run), restarted, and
/// followed to the task's end.
async fn run_once(scenario: Scenario, kill_at: Option<(String, usize)>, mode: KillMode) -> Run {
    let otad = otad().await;
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let fp = Failpoint::new();
    let mut agent = AgentProcess::start(
        agent_dir.path().to_path_buf(),
        otad.server.addr,
        scenario.make.clone(),
        Some(fp.clone()),
    )
    .await;
    let device = scenario.device.clone();
    let known = tokio::time::timeout(Duration::from_secs(20), async {
        let mut polls = 0u32;
        loop {
            let ok = {
                let state = otad.server.app.core.read();
                state
                    .devices
                    .get(&device)
                    .is_some_and(|d| d.facts.reachable && (scenario.known)(&d.facts))
            };
            if ok {
                return;
            }
            polls += 1;
            if polls.is_multiple_of(10) {
                (scenario.nudge)();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if known.is_err() {
        let d = otad.server.app.core.read().devices.get(&device).cloned();
        panic!("timed out waiting for the device at otad: {d:#?}");
    }
    let fw = otad
        .upload(
            &scenario.firmware_name,
            &scenario.version,
            scenario.image.clone(),
        )
        .await;
    let kill = kill_at.is_some();
    fp.arm_with(kill_at, mode);
    otad.rollout(&fw.id, &device).await;

    let ended = |otad: &Otad| {
        otad.task_of(&device).filter(|t| {
            matches!(
                t.phase,
                TaskPhase::Succeeded | TaskPhase::Skipped | TaskPhase::Cancelled
            ) || (matches!(t.phase, TaskPhase::Failed | TaskPhase::TimedOut)
                && t.next_attempt_at_ms.is_none())
        })
    };
    let killed_after = if kill {
        let end = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if ended(&otad).is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        tokio::select! {
            w = fp.wait_killed() => Some(w),
            r = end => {
                if r.is_err() {
                    let t = otad.task_of(&device);
                    panic!("neither killed nor ended (writes {:?}): {t:#?}", fp.writes());
                }
                None
            }
        }
    } else {
        None
    };
    // The restarted agent (also after a run without a kill: an agent restart then changes
    // nothing).
    let _restarted = if killed_after.is_some() {
        agent.kill().await;
        Some(
            AgentProcess::start(
                agent_dir.path().to_path_buf(),
                otad.server.addr,
                scenario.make.clone(),
                None,
            )
            .await,
        )
    } else {
        None
    };
    let task = tokio::time::timeout(
        Duration::from_secs(60),
        wait_for("the task to end", Duration::from_secs(120), || ended(&otad)),
    )
    .await
    .unwrap_or_else(|_| {
        let t = otad.task_of(&device);
        panic!("the task did not end (killed after {killed_after:?}): {t:#?}")
    });
    // Late duplicates would arrive now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = fp.writes();
    let (attempts, results) = otad.attempts(&task.created.task_id);
    for a in &attempts {
        assert_eq!(
            results.get(a).map(Vec::len),
            Some(1),
            "attempt {a} of {attempts:?} must have exactly one result: {results:?} (killed after {killed_after:?})"
        );
    }
    assert_eq!(
        results.keys().copied().collect::<Vec<_>>(),
        attempts,
        "results only for dispatched attempts"
    );
    let received = (scenario.received)();
    otad.server.shutdown().await.expect("otad shutdown");
    drop(agent);
    Run {
        writes,
        killed_after,
        phase: task.phase,
        attempts,
        received,
        error: task.error.map(|e| e.to_string()),
    }
}

/// The whole matrix for one transport: a reference run, then every kill point.
async fn matrix<F, Fut>(name: &str, scenario: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Scenario>,
{
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let reference = run_once(scenario().await, None, KillMode::AfterWrite).await;
    assert_eq!(reference.phase, TaskPhase::Succeeded, "{reference:?}");
    assert_eq!(reference.received, 1);
    let n = reference.writes.len();
    assert!(
        reference.writes.iter().any(|w| w == "task committing")
            && reference.writes.iter().any(|w| w == "task committed"),
        "{:?}",
        reference.writes
    );
    eprintln!(
        "{name}: {n} durable journal writes per update: {:?}",
        reference.writes
    );
    let mut rows = Vec::new();
    // Each write in turn; the point of no return also with the kill one step later (the
    // transport took the irrevocable step, the agent died before its next journal write).
    let mut points: Vec<(usize, String, usize, KillMode)> = Vec::new();
    for (k, what) in reference.writes.iter().enumerate() {
        let nth = reference.writes[..=k].iter().filter(|w| *w == what).count();
        points.push((k + 1, what.clone(), nth, KillMode::AfterWrite));
        if what == "task committing" {
            points.push((k + 1, what.clone(), nth, KillMode::AtNextDurableWrite));
        }
    }
    // CRASH_POINT=k runs only that kill point (debugging).
    let only: Option<usize> = std::env::var("CRASH_POINT")
        .ok()
        .and_then(|k| k.parse().ok());
    for (k, what, nth, mode) in points {
        if only.is_some_and(|o| o != k) {
            continue;
        }
        let run = run_once(scenario().await, Some((what.clone(), nth)), mode).await;
        let row = format!(
            "{name} k={k:>2}{} killed after {:<32} -> {:?} after attempts {:?}, image received {}x{}",
            if mode == KillMode::AtNextDurableWrite {
                "+"
            } else {
                " "
            },
            run.killed_after
                .as_deref()
                .unwrap_or("(not reached in this run)"),
            run.phase,
            run.attempts,
            run.received,
            run.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
        );
        eprintln!("{row}");
        assert_eq!(run.received, 1, "{row}");
        assert_eq!(run.phase, TaskPhase::Succeeded, "{row}");
        rows.push((what.clone(), run.killed_after.is_some()));
    }
    if only.is_some() {
        return;
    }
    // Every point of no return and every result was a kill point.
    for must in [
        "task started",
        "task committing",
        "task committed",
        "task finished",
    ] {
        assert!(
            rows.iter().any(|(w, killed)| w == must && *killed),
            "{name}: never killed after {must}: {rows:?}"
        );
    }
    assert!(
        rows.iter()
            .any(|(w, killed)| w.starts_with("result") && *killed),
        "{name}: never killed after the result: {rows:?}"
    );
}

// ----- ESPHome -----

mod esphome {
    use super::*;
    use ota_agent::transport::esphome::{
        EsphomeConfig, EsphomeDeviceConfig, EsphomePlatform, EsphomeTransport,
    };
    use ota_firmware::Chip;
    use ota_firmware::builders::EspAppBuilder;
    use ota_sim::esphome::Platform;
    use ota_sim::esphome_node::{EsphomeNode, NodeConfig};

    pub(super) async fn scenario() -> Scenario {
        let mut c = NodeConfig::new("plug", Platform::Esp32);
        c.ota.version = "1.0.0".into();
        c.ota.project_name = "acme.plug".into();
        c.ota.reboot_time = Duration::from_millis(200);
        let node = Arc::new(EsphomeNode::start(c).expect("node"));
        let dev = EsphomeDeviceConfig {
            port: Some(node.ota_addr().port()),
            api_port: node.api_addr().port(),
            ..EsphomeDeviceConfig::new("plug", "127.0.0.1", EsphomePlatform::Esp32)
        };
        let config = EsphomeConfig {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            data_timeout: Duration::from_secs(2),
            reboot_timeout: Duration::from_secs(5),
            reboot_poll: Duration::from_millis(50),
            reboot_settle: Duration::from_millis(500),
            retries: 1,
            retry_delay: Duration::from_millis(100),
            devices: vec![dev],
            ..EsphomeConfig::default()
        };
        let make: MakeTransports = Arc::new(move || {
            let config = config.clone();
            Box::pin(async move {
                let t = Arc::new(EsphomeTransport::new(config).expect("config"));
                let bg = t.clone();
                tokio::spawn(async move {
                    bg.run_inventory(Duration::from_secs(1), CancellationToken::new())
                        .await
                });
                vec![t as Arc<dyn Transport>]
            })
        });
        let image = EspAppBuilder::new(Chip::Esp32)
            .version("2.0.0")
            .project_name("acme.plug")
            .payload_size(40_000)
            .build();
        let counted = node.clone();
        Scenario {
            make,
            device: "home/plug".into(),
            firmware_name: "acme.plug".into(),
            version: "2.0.0".into(),
            image,
            received: Box::new(move || counted.device().snapshot().uploads as usize),
            known: |d| !d.current.version.is_empty(),
            nudge: Box::new(|| {}),
            _devices: Box::new(node),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esphome_no_image_twice_whatever_the_kill_point() {
    matrix("esphome", esphome::scenario).await;
}

// ----- serial -----

mod serial {
    use super::*;
    use ota_agent::transport::serial::{SerialConfig, SerialPortConfig, SerialTransport};
    use ota_devproto::serial::{Chip, FlasherConfig};
    use ota_firmware::builders::EspAppBuilder;
    use ota_sim::esprom::{EspRomSim, RomConfig};

    pub(super) async fn scenario() -> Scenario {
        let sim = Arc::new(EspRomSim::start(RomConfig::esp32()).expect("pty"));
        let port = SerialPortConfig {
            chip: Some(Chip::Esp32),
            flash_size: Some(4 << 20),
            ..SerialPortConfig::new("bench", sim.path())
        };
        let make: MakeTransports = Arc::new(move || {
            let port = port.clone();
            Box::pin(async move {
                let t = Arc::new(
                    SerialTransport::new(SerialConfig {
                        ports: vec![port],
                        ..SerialConfig::default()
                    })
                    .expect("config")
                    .with_flasher_defaults(FlasherConfig {
                        connect_attempts: 2,
                        ..FlasherConfig::default()
                    }),
                );
                t.refresh().await;
                vec![t as Arc<dyn Transport>]
            })
        });
        let image = EspAppBuilder::new(Chip::Esp32)
            .version("2.0.0")
            .project_name("acme.bench")
            .payload_size(40_000)
            .build();
        let counted = sim.clone();
        Scenario {
            make,
            device: "home/serial-bench".into(),
            firmware_name: "acme.bench".into(),
            version: "2.0.0".into(),
            image,
            received: Box::new(move || counted.counters().writes_completed as usize),
            known: |_| true,
            nudge: Box::new(|| {}),
            _devices: Box::new(sim),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_no_image_twice_whatever_the_kill_point() {
    matrix("serial", serial::scenario).await;
}

// ----- zigbee2mqtt -----

mod zigbee {
    use super::*;
    use ota_agent::transport::zigbee::{ZigbeeConfig, ZigbeeTransport};
    use ota_firmware::builders::ZigbeeOtaBuilder;
    use ota_sim::broker::EmbeddedBroker;
    use ota_sim::z2m::{SimDevice, Z2mSim, Z2mSimConfig};

    const BULB: &str = "0x000b57fffec6a5b2";
    const REMOTE: &str = "0x000d6ffffe2b3c4d";

    /// The bridge and its broker, kept alive with the scenario.
    struct Bridge {
        _broker: EmbeddedBroker,
        sim: Z2mSim,
    }

    async fn scenario(device: SimDevice, image_type: u16) -> Scenario {
        let broker = EmbeddedBroker::start().expect("broker");
        let mut sc = Z2mSimConfig::new(broker.host(), broker.port());
        let ieee = device.ieee.clone();
        sc.devices = vec![device];
        let sim = Z2mSim::start_virtual(sc)
            .await
            .expect("zigbee2mqtt simulator");
        let mut cfg = ZigbeeConfig::new("home", broker.host(), broker.port());
        cfg.timeouts.reconnect_delay = Duration::from_millis(100);
        cfg.timeouts.request = Duration::from_secs(5);
        cfg.timeouts.completion_grace = Duration::from_secs(1);
        let make: MakeTransports = Arc::new(move || {
            let cfg = cfg.clone();
            Box::pin(async move {
                vec![Arc::new(ZigbeeTransport::start(cfg).await.expect("zigbee"))
                    as Arc<dyn Transport>]
            })
        });
        let version = 0x2404_0000u32;
        let image = ZigbeeOtaBuilder::new(0x117C, image_type, version)
            .header_string("crash")
            .upgrade_image(6_000)
            .build();
        let bridge = Arc::new(Bridge {
            _broker: broker,
            sim,
        });
        let counted = bridge.clone();
        let nudged = bridge.clone();
        let nudged_id = ieee.clone();
        let id = ieee.clone();
        Scenario {
            make,
            device: format!("home/{ieee}"),
            firmware_name: format!("zigbee-{image_type:x}"),
            version: version.to_string(),
            image,
            received: Box::new(move || {
                counted
                    .sim
                    .device(&id)
                    .map_or(0, |d| d.received_images.len())
            }),
            known: |d| !d.current.version.is_empty(),
            nudge: Box::new(move || nudged.sim.wake(&nudged_id)),
            _devices: Box::new(bridge),
        }
    }

    /// A mains bulb: `update`, followed to its end.
    pub(super) async fn mains() -> Scenario {
        scenario(SimDevice::mains_router(BULB, "bulb"), 0x2803).await
    }

    /// A battery remote that wakes every 30 simulated minutes: `schedule`, run at a wake-up.
    pub(super) async fn sleepy() -> Scenario {
        scenario(
            SimDevice::sleepy_end_device(REMOTE, "remote", Some(Duration::from_secs(1800))),
            0x11C1,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zigbee2mqtt_mains_no_image_twice_whatever_the_kill_point() {
    matrix("z2m-mains", zigbee::mains).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zigbee2mqtt_sleepy_no_image_twice_whatever_the_kill_point() {
    matrix("z2m-sleepy", zigbee::sleepy).await;
}

#![cfg(feature = "conformance")]
//! Exactly once under SIGKILL: the real `otad` and `ota-agent` binaries, a staged rollout to 30
//! simulated ESPHome devices, otad killed at least 20 times and the agent at least 5 times at
//! random moments while the rollout runs.
//!
//! What must hold at the end: the rollout completed with every device succeeded, every device
//! received the image in full exactly once (the simulators count complete receptions, committed
//! or not), otad's log holds exactly one `TaskSucceeded` per device, and its sequence numbers
//! have no gaps.
//!
//! The devices run in this test process (`ota_sim::esphome_node`, the real native OTA and API
//! protocols on loopback); otad and the agent are separate processes, killed with SIGKILL and
//! started again on the same data directories and the same port. The kill moments come from a
//! seeded generator: the seed is printed, and `CRASH_FLEET_SEED=<seed>` replays a run's plan
//! (the processes' own timing still varies). A long crash run, so it lives in the conformance
//! tier; it needs no outside peer.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_sim::esphome::Platform;
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use ota_testkit::upload::{app_meta, upload_firmware};
use tokio::time::{Instant, sleep};
use tonic::transport::{Channel, Endpoint};

const SITE: &str = "lab";
const DEVICES: usize = 30;
const OTAD_KILLS: usize = 20;
const AGENT_KILLS: usize = 5;
const PROJECT: &str = "acme.node";

/// A small deterministic generator for the kill plan (xorshift64*).
struct Plan(u64);

impl Plan {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One of the two processes under test, restartable on the same arguments; its stderr goes to
/// one log file across all its lives.
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn new(name: &'static str, program: PathBuf, args: Vec<String>, dir: &Path) -> Process {
        Process {
            name,
            program,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("OTEL_SDK_DISABLED", "true")
            .env_remove("OTAD_CONFIG")
            .env_remove("OTA_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL, and wait until the process is gone (its port and file locks are free).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tail_of_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn node(i: usize) -> EsphomeNode {
    let mut config = NodeConfig::new(format!("n{i:02}"), Platform::Esp32);
    config.ota.version = "1.0.0".into();
    config.ota.project_name = PROJECT.into();
    // Long enough that an agent killed while it waits for the reboot is a common case.
    config.ota.reboot_time = Duration::from_millis(1500);
    EsphomeNode::start(config).expect("bind loopback ports")
}

fn agent_config(url: &str, data_dir: &Path, nodes: &[EsphomeNode]) -> String {
    let mut text = format!(
        "site_id = {SITE:?}\nserver = {url:?}\ndata_dir = {:?}\ntimezone = \"UTC\"\n\n\
         [reconnect]\nmin = \"100ms\"\nmax = \"500ms\"\n\n\
         [esphome]\nreboot_poll = \"200ms\"\nreboot_settle = \"1s\"\nreboot_timeout = \"30s\"\n",
        data_dir.display().to_string(),
    );
    for (i, node) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "\n[[esphome.device]]\nname = \"n{i:02}\"\nhost = \"127.0.0.1\"\nplatform = \"esp32\"\n\
             port = {}\napi_port = {}\n",
            node.ota_addr().port(),
            node.api_addr().port(),
        ));
    }
    text
}

/// Calls `f` until it succeeds (otad may be down or starting), for at most `within`.
async fn retry<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{what}: no success within {within:?}: {e}"),
        }
    }
}

async fn upload(channel: Channel) -> pb::Firmware {
    let image = EspAppBuilder::new(Chip::Esp32)
        .version("2.0.0")
        .project_name(PROJECT)
        .payload_size(48 * 1024)
        .build();
    upload_firmware(&channel, app_meta("acme-node", "2.0.0", None), &image).await
}

fn stage(name: &str, size: pb::stage::Size) -> pb::Stage {
    pb::Stage {
        name: name.into(),
        size: Some(size),
        soak_s: 1,
        ..Default::default()
    }
}

fn spec(firmware_id: &str) -> pb::RolloutSpec {
    pb::RolloutSpec {
        name: "crash-fleet".into(),
        firmware_id: firmware_id.into(),
        selector: Some(pb::DeviceSelector {
            site_ids: vec![SITE.into()],
            ..Default::default()
        }),
        stages: vec![
            stage("canary", pb::stage::Size::Count(3)),
            stage("half", pb::stage::Size::CumulativePercent(50.0)),
            stage("rest", pb::stage::Size::CumulativePercent(100.0)),
        ],
        concurrency: Some(pb::ConcurrencyLimits {
            per_esphome_site: 2,
            ..Default::default()
        }),
        retry: Some(pb::RetryPolicy {
            max_attempts: 10,
            initial_backoff_s: 1,
            max_backoff_s: 2,
        }),
        // No health window: this is about exactly-once delivery under crashes.
        health: Some(pb::HealthPolicy::default()),
        ..Default::default()
    }
}

/// Completed, aborted, or paused (which only an operator ends).
fn is_terminal(state: i32) -> bool {
    [
        pb::RolloutState::Completed,
        pb::RolloutState::Paused,
        pb::RolloutState::Aborted,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

async fn all_events(channel: Channel) -> Vec<pb::Event> {
    let mut client = pb::event_service_client::EventServiceClient::new(channel);
    let mut stream = client
        .tail(pb::TailEventsRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await
        .expect("EventService.Tail")
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.expect("event stream") {
        events.push(e);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_sigkills_of_otad_and_the_agent_and_updates_each_device_once() {
    let (otad_bin, agent_bin) = (ota_testkit::bins::otad(), ota_testkit::bins::agent());
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("CRASH_FLEET_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (wall_ms() as u64) | 1);
    eprintln!("kill plan seed {seed} (CRASH_FLEET_SEED={seed} replays the plan)");
    let mut plan = Plan(seed);

    let nodes: Vec<EsphomeNode> = (0..DEVICES).map(node).collect();
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{addr}");
    let mut otad = Process::new(
        "otad",
        otad_bin,
        vec![
            "--insecure-plaintext".into(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            dir.path().join("otad-data").display().to_string(),
        ],
        dir.path(),
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_config(&url, &dir.path().join("agent-data"), &nodes),
    )
    .unwrap();
    let mut agent = Process::new(
        "agent",
        agent_bin,
        vec!["--config".into(), config.display().to_string()],
        dir.path(),
    );
    otad.start();
    agent.start();
    let channel = Endpoint::from_shared(url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();

    // Every device known and reachable before the rollout starts.
    let devices = pb::device_service_client::DeviceServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = devices
            .clone()
            .list(pb::ListDevicesRequest::default())
            .await
            .map(|r| r.into_inner().devices)
            .unwrap_or_default();
        if listed.iter().filter(|d| d.reachable).count() == DEVICES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not report {DEVICES} reachable devices within 60 s\n{}",
            agent.tail_of_log()
        );
        sleep(Duration::from_millis(100)).await;
    }

    let fw = upload(channel.clone()).await;
    let rollouts = pb::rollout_service_client::RolloutServiceClient::new(channel.clone());
    let rollout = rollouts
        .clone()
        .create(pb::CreateRolloutRequest {
            spec: Some(spec(&fw.id)),
            start: true,
        })
        .await
        .expect("RolloutService.Create")
        .into_inner();

    // The kills, while the rollout runs.
    let started = Instant::now();
    let mut otad_kills = Vec::new();
    let mut agent_kills = Vec::new();
    while otad_kills.len() < OTAD_KILLS || agent_kills.len() < AGENT_KILLS {
        sleep(plan.millis(250, 1100)).await;
        let agent_turn = agent_kills.len() < AGENT_KILLS
            && (otad_kills.len() >= OTAD_KILLS || plan.next().is_multiple_of(5));
        let victim = if agent_turn { &mut agent } else { &mut otad };
        victim.kill();
        if agent_turn {
            agent_kills.push(wall_ms());
        } else {
            otad_kills.push(wall_ms());
        }
        sleep(plan.millis(0, 400)).await;
        victim.start();
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the kill plan did not finish within 240 s"
        );
    }
    eprintln!(
        "killed otad {} and the agent {} times in {:?}",
        otad_kills.len(),
        agent_kills.len(),
        started.elapsed()
    );

    // The rollout ends on its own.
    let deadline = Instant::now() + Duration::from_secs(180);
    let done = loop {
        let r = retry("RolloutService.Get", Duration::from_secs(30), || {
            let mut c = rollouts.clone();
            let id = rollout.id.clone();
            async move { c.get(pb::GetRolloutRequest { id }).await }
        })
        .await
        .into_inner();
        if is_terminal(r.state) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not end within 180 s of the last kill: {:?} {}\n--- otad\n{}\n--- agent\n{}",
            r.state,
            r.state_reason,
            otad.tail_of_log(),
            agent.tail_of_log()
        );
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        done.state,
        pb::RolloutState::Completed as i32,
        "{}\n--- otad\n{}\n--- agent\n{}",
        done.state_reason,
        otad.tail_of_log(),
        agent.tail_of_log()
    );
    let totals = done.totals.unwrap_or_default();
    assert_eq!(totals.succeeded as usize, DEVICES, "{totals:?}");

    // The kills happened while the rollout ran, not after it.
    let finished = done.finished_at_ms;
    let otad_during = otad_kills.iter().filter(|&&t| t < finished).count();
    let agent_during = agent_kills.iter().filter(|&&t| t < finished).count();
    assert!(
        otad_during >= OTAD_KILLS && agent_during >= AGENT_KILLS,
        "only {otad_during} otad and {agent_during} agent kills happened before the rollout \
         finished: make the devices slower"
    );

    // Each device received the image exactly once and runs it.
    for (i, node) in nodes.iter().enumerate() {
        let received = node.ota.received_images().len();
        assert_eq!(
            received, 1,
            "device n{i:02} received the image {received} times"
        );
        assert_eq!(node.ota.current_version(), "2.0.0", "device n{i:02}");
    }

    // otad's log: gapless, one success per device.
    let events = all_events(channel.clone()).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "a gap in the log before {}", e.seq);
    }
    let mut device_of_task = HashMap::new();
    for e in events.iter().filter(|e| e.r#type == "TaskCreated") {
        let body: serde_json::Value = serde_json::from_str(&e.payload_json).unwrap();
        device_of_task.insert(
            e.stream.clone(),
            body["device_id"].as_str().unwrap_or_default().to_owned(),
        );
    }
    let mut successes: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.r#type == "TaskSucceeded") {
        let device = device_of_task
            .get(&e.stream)
            .unwrap_or_else(|| panic!("a success for an unknown task {}", e.stream));
        *successes.entry(device.clone()).or_default() += 1;
    }
    assert_eq!(successes.len(), DEVICES, "{successes:?}");
    for (device, n) in &successes {
        assert_eq!(*n, 1, "{device} has {n} success events");
    }
    eprintln!(
        "{DEVICES} devices updated exactly once; {} events, {otad_during} otad and \
         {agent_during} agent kills during the rollout",
        events.len()
    );
}

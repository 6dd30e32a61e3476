//! Fleet benchmark: whole rollouts through the real `otad` binary, driven by simulated site
//! agents over real gRPC.
//!
//! `cargo bench -p ota-server --bench fleet [-- --devices 100000 --sites 100 --timed-devices 3000
//! --timed-sites 20 --duration-ms 2000 --concurrency 100 --download --only instant|timed
//! --poll-ms 1000 --rollout-devices 1000000]`
//!
//! Two parts, each against a fresh `otad --insecure-plaintext --listen 127.0.0.1:0 --data-dir
//! <tmp>` child process (the binary cargo builds next to this bench), so the server's CPU time
//! and peak memory are read from `/proc/<pid>` apart from the simulated agents':
//!
//! 1. **Instant devices** (`--devices`, `--sites`): one simulated agent per site, each on its
//!    own HTTP/2 connection with its own `AgentService.Connect` stream, reports its inventory,
//!    answers the batch check and runs every update at once. A firmware is uploaded through
//!    `FirmwareService.Upload`, a rollout (canary, then 10 %, 50 %, 100 %, concurrency limits
//!    wide open) is created and started through `RolloutService.Create` and polled with `Get`
//!    until it completes (one rollout for the whole fleet; `--rollout-devices N` splits the
//!    fleet into several rollouts of whole sites of at most N devices, started together) (every
//!    second, or every `devices / 100` ms on larger fleets, since a
//!    `Get` lists every device; `--poll-ms` sets it). Prints wall time, otad CPU per device and
//!    otad peak RSS (`VmHWM`) against the targets (≤ 0.3 ms per device, ≤ 2048 MiB at a million
//!    devices), then stops otad (SIGTERM, so it writes its shutdown snapshot) and starts it
//!    again on the same data directory twice: with that snapshot, and with the snapshots moved
//!    aside (the whole log replayed); prints the time from start to listening for each (target
//!    with a snapshot ≤ 1 s).
//! 2. **Devices that take time** (`--timed-devices`, `--timed-sites`, `--duration-ms`,
//!    `--concurrency`): every update takes the given real time at the agent, the rollout limits
//!    concurrency (global, per site and per ESPHome site all set to `--concurrency`). Prints the
//!    makespan against the lower bound those limits imply: per stage, the number of rounds the
//!    tightest limit forces times the duration, summed over the stages (no soak).
//!
//! The simulated agents send what `ota-agent` sends (`agent/src/agent/`): a hello with the
//! last journal seq, a full inventory after the welcome, heartbeats, a `CheckResult` per device
//! asked about, and per update a `CommandAck`, progress reports (preparing at the site, updating,
//! 100 %), the `TaskResult` and, a quarter of a second later, the changed inventory. Reports are
//! journaled with increasing seqs and kept until the server's `Ack` covers them; update commands
//! for an attempt already known are acknowledged and not run again. `--download` also fetches
//! the image through `FirmwareService.Download` per update and checks its SHA-256, as a real
//! agent does; without it no image is transferred (the server's cost of serving images is then
//! not in the figures).
//!
//! The machine may be shared with other work: figures are noisy, and are for this machine only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
// tokio's Instant is std's unless time is paused, which it never is here.
use ota_testkit::bins::OtadProcess;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

const MIB: f64 = 1024.0 * 1024.0;
/// Rollout responses list every device of every stage.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

// === arguments ===

#[derive(Debug, Clone)]
struct Args {
    devices: u64,
    sites: u64,
    timed_devices: u64,
    timed_sites: u64,
    duration: Duration,
    concurrency: u32,
    download: bool,
    only: Option<String>,
    poll_ms: Option<u64>,
    rollout_devices: u64,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let num = |name: &str, default: u64| {
            value(name)
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name} wants a number, got {v:?}"))
                })
                .unwrap_or(default)
        };
        Args {
            devices: num("--devices", 100_000),
            sites: num("--sites", 100),
            timed_devices: num("--timed-devices", 3_000),
            timed_sites: num("--timed-sites", 20),
            duration: Duration::from_millis(num("--duration-ms", 2_000)),
            concurrency: num("--concurrency", 100) as u32,
            download: args.iter().any(|a| a == "--download"),
            only: value("--only"),
            poll_ms: value("--poll-ms").and_then(|v| v.parse().ok()),
            rollout_devices: num("--rollout-devices", u64::MAX),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == part)
    }
}

// === otad as a child process ===

/// What the bench reads of a running otad (`ota_testkit::bins::OtadProcess`) besides what the
/// kit shows.
trait OtadFigures {
    /// User plus system CPU time of the process so far.
    fn cpu(&self) -> Duration;
    /// Peak resident set size in bytes.
    fn peak_rss(&self) -> u64;
    /// Lines otad logged so far.
    fn log_lines(&self) -> usize;
}

impl OtadFigures for OtadProcess {
    fn cpu(&self) -> Duration {
        proc_cpu(&format!("/proc/{}/stat", self.pid()))
    }

    fn peak_rss(&self) -> u64 {
        proc_status_kb(self.pid(), "VmHWM:") * 1024
    }

    fn log_lines(&self) -> usize {
        self.log().lines().count()
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime from a `/proc/.../stat` file.
fn proc_cpu(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_string())?.connect().await?)
}

// === simulated agents ===

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What all agents of a run saw, together.
#[derive(Debug, Default)]
struct FleetStats {
    /// Update commands run.
    updates: AtomicU64,
    /// Update commands for an attempt already known (acknowledged, not run again).
    repeated: AtomicU64,
    /// Devices asked about by check commands.
    checked: AtomicU64,
    cancels: AtomicU64,
    /// Transfers running now, and the most at once.
    in_flight: AtomicI64,
    max_in_flight: AtomicI64,
    /// Reports journaled.
    reports: AtomicU64,
    /// The run is over and otad is being stopped: broken streams are expected.
    closing: AtomicBool,
}

/// Reports not yet acknowledged by the server, in seq order.
#[derive(Debug)]
struct Journal {
    next: u64,
    unacked: VecDeque<pb::AgentMessage>,
}

/// One site's agent.
struct SiteAgent {
    site: String,
    devices: Mutex<BTreeMap<String, pb::DeviceReport>>,
    journal: Mutex<Journal>,
    out: Mutex<Option<mpsc::UnboundedSender<pb::AgentMessage>>>,
    known: Mutex<HashSet<(String, u32)>>,
    changed: Mutex<HashSet<String>>,
    inventory_due: Notify,
    duration: Duration,
    download: bool,
    channel: Channel,
    stats: Arc<FleetStats>,
}

impl SiteAgent {
    /// Connects one agent for `site` with `n` devices on its own HTTP/2 connection.
    async fn connect(
        url: &str,
        site: String,
        n: u64,
        duration: Duration,
        download: bool,
        stats: Arc<FleetStats>,
    ) -> anyhow::Result<Arc<SiteAgent>> {
        let devices = (0..n)
            .map(|i| {
                let local = format!("node-{i:05}");
                (local.clone(), ota_testkit::site::esphome(&local, "1.0.0"))
            })
            .collect();
        let agent = Arc::new(SiteAgent {
            site,
            devices: Mutex::new(devices),
            journal: Mutex::new(Journal {
                next: 1,
                unacked: VecDeque::new(),
            }),
            out: Mutex::new(None),
            known: Mutex::new(HashSet::new()),
            changed: Mutex::new(HashSet::new()),
            inventory_due: Notify::new(),
            duration,
            download,
            channel: channel(url).await?,
            stats,
        });
        agent.open().await?;
        tokio::spawn(agent.clone().report_inventory_changes());
        Ok(agent)
    }

    async fn open(self: &Arc<Self>) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let last_seq = self.journal.lock().unwrap().next - 1;
        tx.send(pb::AgentMessage {
            seq: 0,
            body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
                site_id: self.site.clone(),
                agent_version: "fleet-bench".into(),
                agent_id: format!("agent-{}", self.site),
                last_seq,
                timezone: "UTC".into(),
                transports: vec![pb::TransportInstance {
                    kind: pb::Transport::Esphome as i32,
                    name: "esphome".into(),
                    device_count: self.devices.lock().unwrap().len() as u32,
                    connected: true,
                    detail: String::new(),
                }],
                utc_offset_minutes: 0,
            })),
        })?;
        let mut inbound = pb::agent_service_client::AgentServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .connect(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = match inbound.message().await? {
            Some(pb::ServerMessage {
                body: Some(pb::server_message::Body::Welcome(w)),
                ..
            }) => w,
            other => bail!("expected a welcome, got {other:?}"),
        };
        {
            let mut j = self.journal.lock().unwrap();
            ack(&mut j, welcome.acked_seq);
            for m in &j.unacked {
                tx.send(m.clone())?;
            }
            *self.out.lock().unwrap() = Some(tx.clone());
        }
        let full: Vec<pb::DeviceReport> = self.devices.lock().unwrap().values().cloned().collect();
        self.journaled(pb::agent_message::Body::Inventory(pb::Inventory {
            full: true,
            devices: full,
            removed_local_ids: vec![],
        }));
        let beat = Duration::from_secs(u64::from(welcome.heartbeat_interval_s.max(1)));
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(beat);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let running = this.stats.in_flight.load(Ordering::Relaxed).max(0) as u32;
                let msg = pb::AgentMessage {
                    seq: 0,
                    body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                        at_ms: now_ms(),
                        running_tasks: running,
                        transports: vec![],
                    })),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match inbound.next().await {
                    Some(Ok(m)) => this.on_command(m),
                    Some(Err(_)) if this.stats.closing.load(Ordering::Relaxed) => return,
                    Some(Err(status)) => {
                        eprintln!("site {}: stream from otad broke: {status}", this.site);
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(())
    }

    /// Journals a report and sends it (the journal lock keeps the wire in seq order).
    fn journaled(&self, body: pb::agent_message::Body) {
        let mut j = self.journal.lock().unwrap();
        let msg = pb::AgentMessage {
            seq: j.next,
            body: Some(body),
        };
        j.next += 1;
        self.stats.reports.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = self.out.lock().unwrap().as_ref() {
            let _ = tx.send(msg.clone());
        }
        j.unacked.push_back(msg);
    }

    /// Sends a message that is not journaled (acks of commands, check answers).
    fn send_now(&self, body: pb::agent_message::Body) {
        if let Some(tx) = self.out.lock().unwrap().as_ref() {
            let _ = tx.send(pb::AgentMessage {
                seq: 0,
                body: Some(body),
            });
        }
    }

    fn unacked(&self) -> usize {
        self.journal.lock().unwrap().unacked.len()
    }

    fn on_command(self: &Arc<Self>, m: pb::ServerMessage) {
        match m.body {
            Some(pb::server_message::Body::Ack(a)) => {
                ack(&mut self.journal.lock().unwrap(), a.acked_seq)
            }
            Some(pb::server_message::Body::Check(c)) => self.on_check(c),
            Some(pb::server_message::Body::Update(u)) => self.on_update(m.command_id, u),
            Some(pb::server_message::Body::Cancel(_)) => {
                self.stats.cancels.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn on_check(&self, c: pb::CheckCommand) {
        let devices = self.devices.lock().unwrap();
        for local in c.device_local_ids {
            self.stats.checked.fetch_add(1, Ordering::Relaxed);
            let answer = match devices.get(&local) {
                Some(d) => pb::CheckResult {
                    check_id: c.check_id.clone(),
                    device_local_id: local,
                    reachable: true,
                    device: Some(d.clone()),
                    update_available: None,
                    error: None,
                    awaiting_wakeup: false,
                },
                None => pb::CheckResult {
                    check_id: c.check_id.clone(),
                    device_local_id: local.clone(),
                    reachable: false,
                    device: None,
                    update_available: None,
                    error: Some(pb::TaskError {
                        code: pb::ErrorCode::Offline as i32,
                        message: format!("this site does not know device {local}"),
                    }),
                    awaiting_wakeup: false,
                },
            };
            self.send_now(pb::agent_message::Body::CheckResult(answer));
        }
    }

    fn on_update(self: &Arc<Self>, command_id: u64, u: pb::UpdateCommand) {
        let refuse = |code: pb::ErrorCode, message: String| {
            self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id,
                accepted: false,
                error: Some(pb::TaskError {
                    code: code as i32,
                    message,
                }),
            }))
        };
        if !self
            .known
            .lock()
            .unwrap()
            .insert((u.task_id.clone(), u.attempt))
        {
            self.stats.repeated.fetch_add(1, Ordering::Relaxed);
            self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
                command_id,
                accepted: true,
                error: None,
            }));
            return;
        }
        let Some(from) = self
            .devices
            .lock()
            .unwrap()
            .get(&u.device_local_id)
            .and_then(|d| d.current.clone())
        else {
            return refuse(
                pb::ErrorCode::Offline,
                format!(
                    "site {} does not know device {}",
                    self.site, u.device_local_id
                ),
            );
        };
        let Some(firmware) = u.firmware.clone() else {
            return refuse(
                pb::ErrorCode::ServerRefused,
                "update command without firmware".into(),
            );
        };
        self.send_now(pb::agent_message::Body::CommandAck(pb::CommandAck {
            command_id,
            accepted: true,
            error: None,
        }));
        self.stats.updates.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move { this.run_update(u, firmware, from).await });
    }

    fn progress(
        &self,
        u: &pb::UpdateCommand,
        status: pb::UpgradeStatus,
        percent: f32,
        size: u64,
        detail: &str,
    ) {
        self.journaled(pb::agent_message::Body::Progress(pb::TaskProgress {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            status: status as i32,
            progress: percent,
            remaining_s: None,
            bytes_sent: (size as f64 * f64::from(percent) / 100.0) as u64,
            bytes_total: size,
            detail: detail.into(),
            at_ms: now_ms(),
            verify_until_ms: 0,
        }));
    }

    async fn run_update(
        self: Arc<Self>,
        u: pb::UpdateCommand,
        fw: pb::FirmwareRef,
        from: pb::VersionInfo,
    ) {
        let started = Instant::now();
        let n = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_in_flight.fetch_max(n, Ordering::Relaxed);
        self.progress(
            &u,
            pb::UpgradeStatus::AgentPreparing,
            0.0,
            fw.size,
            "downloading the firmware from the server",
        );
        if self.download
            && let Err(e) = self.fetch(&fw, &u.task_id).await
        {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.journaled(pb::agent_message::Body::Result(pb::TaskResult {
                task_id: u.task_id.clone(),
                attempt: u.attempt,
                status: pb::UpgradeStatus::Failure as i32,
                error: Some(pb::TaskError {
                    code: pb::ErrorCode::DownloadFailed as i32,
                    message: format!("{e:#}"),
                }),
                at_ms: now_ms(),
                ..Default::default()
            }));
            return;
        }
        self.progress(&u, pb::UpgradeStatus::Updating, 0.0, fw.size, "");
        if !self.duration.is_zero() {
            tokio::time::sleep(self.duration).await;
        }
        self.progress(&u, pb::UpgradeStatus::Updating, 100.0, fw.size, "");
        let to = pb::VersionInfo {
            version: fw.version.clone(),
            file_version: fw.file_version,
            ..Default::default()
        };
        if let Some(d) = self.devices.lock().unwrap().get_mut(&u.device_local_id) {
            d.current = Some(to.clone());
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.journaled(pb::agent_message::Body::Result(pb::TaskResult {
            task_id: u.task_id.clone(),
            attempt: u.attempt,
            status: pb::UpgradeStatus::Success as i32,
            error: None,
            from: Some(from),
            to: Some(to),
            duration_ms: started.elapsed().as_millis() as u64,
            at_ms: now_ms(),
            wire_bytes: fw.size,
            device_may_have_image: false,
            health: pb::TaskHealth::NotChecked as i32,
        }));
        self.changed
            .lock()
            .unwrap()
            .insert(u.device_local_id.clone());
        self.inventory_due.notify_one();
    }

    /// Downloads and checks the image, as `agent/src/download.rs` does (without resuming).
    async fn fetch(&self, fw: &pb::FirmwareRef, task_id: &str) -> anyhow::Result<()> {
        let mut stream =
            pb::firmware_service_client::FirmwareServiceClient::new(self.channel.clone())
                .max_decoding_message_size(4 * 1024 * 1024)
                .download(pb::DownloadFirmwareRequest {
                    firmware_id: fw.id.clone(),
                    offset: 0,
                    task_id: task_id.into(),
                })
                .await?
                .into_inner();
        let mut sha = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.message().await? {
            size += chunk.data.len() as u64;
            sha.update(&chunk.data);
        }
        if size != fw.size || hex::encode(sha.finalize()) != fw.sha256 {
            bail!("image of {size} bytes does not match the command");
        }
        Ok(())
    }

    /// Like the agent's inventory watcher: lets a burst of changes settle for 250 ms, then
    /// journals the changed devices.
    async fn report_inventory_changes(self: Arc<Self>) {
        loop {
            self.inventory_due.notified().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            let changed: Vec<String> = self.changed.lock().unwrap().drain().collect();
            let mut reports: Vec<pb::DeviceReport> = {
                let devices = self.devices.lock().unwrap();
                changed
                    .iter()
                    .filter_map(|l| devices.get(l).cloned())
                    .collect()
            };
            reports.sort_by(|a, b| a.local_id.cmp(&b.local_id));
            for chunk in reports.chunks(10_000) {
                self.journaled(pb::agent_message::Body::Inventory(pb::Inventory {
                    full: false,
                    devices: chunk.to_vec(),
                    removed_local_ids: vec![],
                }));
            }
        }
    }
}

fn ack(j: &mut Journal, acked: u64) {
    while j.unacked.front().is_some_and(|m| m.seq <= acked) {
        j.unacked.pop_front();
    }
}

// === a run ===

struct Fleet {
    otad: OtadProcess,
    channel: Channel,
    agents: Vec<Arc<SiteAgent>>,
    stats: Arc<FleetStats>,
    firmware_id: String,
    /// otad's CPU when the fleet was ready (inventory in, firmware uploaded).
    cpu_ready: Duration,
}

impl Fleet {
    /// otad, a firmware, and `sites` agents with `devices` devices between them, all reported.
    async fn start(
        devices: u64,
        sites: u64,
        duration: Duration,
        download: bool,
    ) -> anyhow::Result<Fleet> {
        let otad = OtadProcess::try_start(&PathBuf::from(env!("CARGO_BIN_EXE_otad")))
            .map_err(anyhow::Error::msg)?;
        let url = otad.url();
        let channel = channel(&url).await?;
        let image = EspAppBuilder::new(Chip::Esp32)
            .version("2.0.0")
            .project_name("node")
            .payload_size(4096)
            .build();
        let firmware_id = upload(&channel, "node", "2.0.0", image).await?;
        let stats = Arc::new(FleetStats::default());
        let started = Instant::now();
        let agents = futures::future::try_join_all((0..sites).map(|s| {
            let n = devices / sites + u64::from(s < devices % sites);
            SiteAgent::connect(
                &url,
                format!("site-{s:03}"),
                n,
                duration,
                download,
                stats.clone(),
            )
        }))
        .await?;
        let mut system = pb::system_service_client::SystemServiceClient::new(channel.clone());
        let give_up = Instant::now() + Duration::from_secs(600);
        loop {
            let s = system.status(pb::StatusRequest {}).await?.into_inner();
            if u64::from(s.devices) >= devices && s.connected_agents as u64 == sites {
                break;
            }
            if Instant::now() > give_up {
                bail!(
                    "otad knows {} of {devices} devices after 10 minutes",
                    s.devices
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "  fleet ready: {devices} devices at {sites} sites reported in {:.1} s; firmware {firmware_id}",
            started.elapsed().as_secs_f64()
        );
        let cpu_ready = otad.cpu();
        Ok(Fleet {
            otad,
            channel,
            agents,
            stats,
            firmware_id,
            cpu_ready,
        })
    }

    fn rollouts(&self) -> pb::rollout_service_client::RolloutServiceClient<Channel> {
        pb::rollout_service_client::RolloutServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Creates and starts a rollout and polls it every `poll` until it ends. Returns the final
    /// rollout and the wall time from the create call to the poll that saw the end.
    async fn run_rollout(
        &self,
        spec: pb::RolloutSpec,
        poll: Duration,
    ) -> anyhow::Result<(pb::Rollout, Duration)> {
        let mut client = self.rollouts();
        let started = Instant::now();
        let created = client
            .create(pb::CreateRolloutRequest {
                spec: Some(spec),
                start: true,
            })
            .await?
            .into_inner();
        let mut last_report = Instant::now();
        loop {
            tokio::time::sleep(poll).await;
            let r = client
                .get(pb::GetRolloutRequest {
                    id: created.id.clone(),
                })
                .await?
                .into_inner();
            let state = pb::RolloutState::try_from(r.state).unwrap_or_default();
            if matches!(
                state,
                pb::RolloutState::Completed | pb::RolloutState::Aborted | pb::RolloutState::Paused
            ) {
                return Ok((r, started.elapsed()));
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                let t = r.totals.unwrap_or_default();
                println!(
                    "  … {:.0} s: stage {}, {} succeeded, {} at the site, {} queued",
                    started.elapsed().as_secs_f64(),
                    r.current_stage,
                    t.succeeded,
                    t.preparing + t.updating + t.downloaded,
                    t.queued
                );
            }
        }
    }

    /// Creates and starts rollouts and polls them every `poll` until every one ended. Returns
    /// the final rollouts and the wall time from the first create call to the poll that saw the
    /// last one end.
    async fn run_rollouts(
        &self,
        specs: Vec<pb::RolloutSpec>,
        poll: Duration,
    ) -> anyhow::Result<(Vec<pb::Rollout>, Duration)> {
        if specs.len() == 1 {
            let spec = specs.into_iter().next().context("one spec")?;
            let (r, wall) = self.run_rollout(spec, poll).await?;
            return Ok((vec![r], wall));
        }
        let mut client = self.rollouts();
        let started = Instant::now();
        let mut ids = Vec::new();
        for spec in specs {
            let created = client
                .create(pb::CreateRolloutRequest {
                    spec: Some(spec),
                    start: true,
                })
                .await?
                .into_inner();
            ids.push(created.id);
        }
        let mut ended: Vec<Option<pb::Rollout>> = vec![None; ids.len()];
        let mut last_report = Instant::now();
        loop {
            tokio::time::sleep(poll).await;
            let mut succeeded = 0;
            let mut queued = 0;
            for (id, end) in ids.iter().zip(ended.iter_mut()) {
                if let Some(r) = end {
                    succeeded += r.totals.unwrap_or_default().succeeded;
                    continue;
                }
                let r = client
                    .get(pb::GetRolloutRequest { id: id.clone() })
                    .await?
                    .into_inner();
                let t = r.totals.unwrap_or_default();
                succeeded += t.succeeded;
                queued += t.queued;
                let state = pb::RolloutState::try_from(r.state).unwrap_or_default();
                if matches!(
                    state,
                    pb::RolloutState::Completed
                        | pb::RolloutState::Aborted
                        | pb::RolloutState::Paused
                ) {
                    *end = Some(r);
                }
            }
            if ended.iter().all(Option::is_some) {
                return Ok((ended.into_iter().flatten().collect(), started.elapsed()));
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "  … {:.0} s: {} of {} rollouts ended, {succeeded} succeeded, {queued} queued",
                    started.elapsed().as_secs_f64(),
                    ended.iter().filter(|e| e.is_some()).count(),
                    ids.len(),
                );
            }
        }
    }

    /// Waits (bounded) until every agent's reports are acknowledged; returns the unacked count.
    async fn settle(&self) -> usize {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let unacked: usize = self.agents.iter().map(|a| a.unacked()).sum();
            if unacked == 0 || Instant::now() > give_up {
                return unacked;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn print_log(&self) -> anyhow::Result<()> {
        let s = pb::system_service_client::SystemServiceClient::new(self.channel.clone())
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        let log = s.event_log.unwrap_or_default();
        println!(
            "  event log: {} events, {:.1} MiB (server's figure), data dir {:.1} MiB on disk; otad wrote {} log lines",
            log.last_seq,
            log.size_bytes as f64 / MIB,
            dir_size(&self.otad.data_dir()) as f64 / MIB,
            self.otad.log_lines()
        );
        Ok(())
    }

    fn print_agents(&self, devices: u64) {
        let unique: usize = self
            .agents
            .iter()
            .map(|a| a.known.lock().unwrap().len())
            .sum();
        println!(
            "  agents: {} updates run ({} distinct task attempts, {} devices), {} repeated commands, {} devices checked, {} cancels, {} reports journaled, at most {} transfers at once",
            self.stats.updates.load(Ordering::Relaxed),
            unique,
            devices,
            self.stats.repeated.load(Ordering::Relaxed),
            self.stats.checked.load(Ordering::Relaxed),
            self.stats.cancels.load(Ordering::Relaxed),
            self.stats.reports.load(Ordering::Relaxed),
            self.stats.max_in_flight.load(Ordering::Relaxed),
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stats.closing.store(true, Ordering::Relaxed);
    }
}

async fn upload(
    channel: &Channel,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<String> {
    let msgs = vec![
        pb::UploadFirmwareRequest {
            part: Some(pb::upload_firmware_request::Part::Metadata(
                pb::UploadMetadata {
                    name: name.into(),
                    version: version.into(),
                    ..Default::default()
                },
            )),
        },
        pb::UploadFirmwareRequest {
            part: Some(pb::upload_firmware_request::Part::Chunk(bytes)),
        },
    ];
    Ok(
        pb::firmware_service_client::FirmwareServiceClient::new(channel.clone())
            .upload(futures::stream::iter(msgs))
            .await?
            .into_inner()
            .firmware
            .context("upload answered without a firmware")?
            .id,
    )
}

fn stage(name: &str, size: pb::stage::Size) -> pb::Stage {
    pb::Stage {
        name: name.into(),
        size: Some(size),
        ..Default::default()
    }
}

fn spec(
    name: &str,
    firmware_id: &str,
    stages: Vec<pb::Stage>,
    concurrency: u32,
    batch_check: bool,
) -> pb::RolloutSpec {
    pb::RolloutSpec {
        name: name.into(),
        firmware_id: firmware_id.into(),
        stages,
        concurrency: Some(pb::ConcurrencyLimits {
            global: concurrency,
            per_site: concurrency,
            per_zigbee_network: 1,
            per_esphome_site: concurrency,
        }),
        upgrade_type: pb::UpgradeType::Forced as i32,
        skip_batch_check: !batch_check,
        batch_check_timeout_s: 120,
        ..Default::default()
    }
}

fn stage_line(r: &pb::Rollout) -> String {
    r.stages
        .iter()
        .map(|s| {
            let secs = if s.finished_at_ms > 0 && s.started_at_ms > 0 {
                format!(
                    " {:.1} s",
                    (s.finished_at_ms - s.started_at_ms) as f64 / 1000.0
                )
            } else {
                String::new()
            };
            format!("{} {}{secs}", s.name, s.device_ids.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_outcome(r: &pb::Rollout, devices: u64) -> anyhow::Result<()> {
    let t = r.totals.unwrap_or_default();
    if r.state != pb::RolloutState::Completed as i32 || u64::from(t.succeeded) != devices {
        bail!(
            "rollout ended {} ({}) with {} of {devices} succeeded: {t:?}",
            r.state,
            r.state_reason,
            t.succeeded
        );
    }
    Ok(())
}

fn check_outcomes(all: &[pb::Rollout], devices: u64) -> anyhow::Result<()> {
    let mut succeeded = 0u64;
    for r in all {
        let t = r.totals.unwrap_or_default();
        if r.state != pb::RolloutState::Completed as i32 {
            bail!(
                "rollout {} ended {} ({}): {t:?}",
                r.id,
                r.state,
                r.state_reason
            );
        }
        succeeded += u64::from(t.succeeded);
    }
    if succeeded != devices {
        bail!("{succeeded} of {devices} devices succeeded");
    }
    Ok(())
}

/// The sites (as `Fleet::start` names and fills them) in groups of at most `most` devices,
/// whole sites each.
fn site_groups(devices: u64, sites: u64, most: u64) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut in_group = 0;
    for s in 0..sites {
        let n = devices / sites + u64::from(s < devices % sites);
        if groups.is_empty() || in_group + n > most.max(1) {
            groups.push(Vec::new());
            in_group = 0;
        }
        in_group += n;
        if let Some(g) = groups.last_mut() {
            g.push(format!("site-{s:03}"));
        }
    }
    groups
}

// === part 1 ===

async fn instant(args: &Args) -> anyhow::Result<()> {
    let (devices, sites) = (args.devices, args.sites);
    println!(
        "== instant devices: {devices} devices at {sites} sites, {sites} agents (one HTTP/2 connection and Connect stream each), download {}",
        if args.download { "on" } else { "off" }
    );
    let mut fleet = Fleet::start(devices, sites, Duration::ZERO, args.download).await?;
    let canary = (devices / 1000).clamp(1, 100) as u32;
    let stages = vec![
        stage("canary", pb::stage::Size::Count(canary)),
        stage("wave-10", pb::stage::Size::CumulativePercent(10.0)),
        stage("wave-50", pb::stage::Size::CumulativePercent(50.0)),
        stage("wave-100", pb::stage::Size::CumulativePercent(100.0)),
    ];
    // Limits wide open (a spec's limit is at most 100,000).
    let wide = devices.min(args.rollout_devices).min(100_000) as u32;
    // One rollout, or several of whole sites started together (`--rollout-devices`).
    let groups = site_groups(devices, sites, args.rollout_devices);
    let specs: Vec<pb::RolloutSpec> = groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let mut s = spec(
                &format!("fleet bench: instant {i}"),
                &fleet.firmware_id,
                stages.clone(),
                wide,
                true,
            );
            if groups.len() > 1 {
                s.selector = Some(pb::DeviceSelector {
                    site_ids: group.clone(),
                    ..Default::default()
                });
            }
            s
        })
        .collect();
    println!(
        "  {} rollout(s) of at most {} devices (whole sites each), started together",
        specs.len(),
        args.rollout_devices.min(devices)
    );
    let agents_cpu0 = proc_cpu("/proc/self/stat");
    // A Get lists every device of every stage: on a large fleet, poll less often so the poll
    // (which an operator would not repeat every second at this size) does not weigh on otad.
    let poll = Duration::from_millis(args.poll_ms.unwrap_or((devices / 100).max(1000)));
    println!(
        "  polling RolloutService.Get every {:.1} s",
        poll.as_secs_f64()
    );
    let (all, wall) = fleet.run_rollouts(specs, poll).await?;
    let cpu = fleet.otad.cpu() - fleet.cpu_ready;
    let agents_cpu = proc_cpu("/proc/self/stat") - agents_cpu0;
    let unacked = fleet.settle().await;
    check_outcomes(&all, devices)?;
    let r = &all[0];
    let started = all.iter().map(|r| r.started_at_ms).min().unwrap_or(0);
    let finished = all.iter().map(|r| r.finished_at_ms).max().unwrap_or(0);
    let server_s = (finished - started) as f64 / 1000.0;
    let per_device_ms = cpu.as_secs_f64() * 1000.0 / devices as f64;
    let rss = fleet.otad.peak_rss() as f64 / MIB;
    println!(
        "  stages{}: {} (batch check of all devices first)",
        if all.len() > 1 {
            " of the first rollout"
        } else {
            ""
        },
        stage_line(r)
    );
    println!(
        "  rollout wall time: {:.1} s from Create to the poll that saw it completed (server: first started → last completed {server_s:.1} s); {:.0} devices/s",
        wall.as_secs_f64(),
        devices as f64 / server_s.max(0.001)
    );
    println!(
        "  otad CPU during the rollout: {:.1} s = {per_device_ms:.3} ms per device (target ≤ 0.3 ms: {}); before it (upload, inventory): {:.1} s",
        cpu.as_secs_f64(),
        if per_device_ms <= 0.3 {
            "met"
        } else {
            "MISSED"
        },
        fleet.cpu_ready.as_secs_f64()
    );
    println!(
        "  otad peak RSS (VmHWM): {rss:.0} MiB (target ≤ 2048 MiB: {})",
        if rss <= 2048.0 { "met" } else { "MISSED" }
    );
    println!(
        "  simulated agents and this bench: {:.1} s CPU during the rollout (not in otad's figure)",
        agents_cpu.as_secs_f64()
    );
    fleet.print_agents(devices);
    println!("  reports still unacknowledged after the run: {unacked}");
    fleet.print_log().await?;
    restart_figures(&mut fleet)?;
    Ok(())
}

/// How long otad takes from its start to listening again, on the data directory the rollout
/// left: with the projection snapshot it writes at shutdown, and without any snapshot (moved
/// aside), so the whole log is replayed.
fn restart_figures(fleet: &mut Fleet) -> anyhow::Result<()> {
    fleet.stats.closing.store(true, Ordering::Relaxed);
    let otad = &mut fleet.otad;
    otad.stop().map_err(anyhow::Error::msg)?;
    let snapshots = otad.data_dir().join("snapshots");
    let snapshot_bytes = dir_size(&snapshots);
    let started = Instant::now();
    otad.start_again().map_err(anyhow::Error::msg)?;
    let with = started.elapsed();
    let with_rss = otad.peak_rss() as f64 / MIB;
    let with_replay = last_replay_line(&otad.log());
    otad.stop().map_err(anyhow::Error::msg)?;
    let aside = otad.data_dir().join("snapshots.aside");
    std::fs::rename(&snapshots, &aside)?;
    let started = Instant::now();
    otad.start_again().map_err(anyhow::Error::msg)?;
    let without = started.elapsed();
    let without_rss = otad.peak_rss() as f64 / MIB;
    let without_replay = last_replay_line(&otad.log());
    println!(
        "  restart on the rollout's data dir, start to listening: {:.3} s with the shutdown snapshot ({:.1} MiB; target ≤ 1 s: {}; peak RSS {with_rss:.0} MiB; {with_replay}), {:.3} s without a snapshot (peak RSS {without_rss:.0} MiB; {without_replay})",
        with.as_secs_f64(),
        snapshot_bytes as f64 / MIB,
        if with <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        },
        without.as_secs_f64(),
    );
    Ok(())
}

/// The figures of otad's last "event log replayed" and "projection snapshot loaded" lines.
fn last_replay_line(log: &str) -> String {
    let plain = strip_ansi(log);
    let lines: Vec<&str> = plain.lines().collect();
    let Some(at) = lines.iter().rposition(|l| l.contains("event log replayed")) else {
        return "no replay line".into();
    };
    let line = lines[at];
    // The start logs the snapshot it loaded right before it replays the rest.
    let loaded = lines[at.saturating_sub(3)..at]
        .iter()
        .any(|l| l.contains("projection snapshot loaded"));
    let mut figures: Vec<String> = ["events", "replayed", "replay_ms"]
        .iter()
        .filter_map(|key| {
            let at = line.find(&format!("{key}="))?;
            let value = line[at + key.len() + 1..].split_whitespace().next()?;
            Some(format!("{key} {value}"))
        })
        .collect();
    if loaded {
        figures.push("from the snapshot".into());
    }
    figures.join(", ")
}

/// `text` without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// === part 2 ===

/// Rounds the limits force on a stage: the global limit over all its devices, and the per-site
/// limit over each site's devices.
fn rounds(device_ids: &[String], global: u32, per_site: u32) -> u64 {
    let mut by_site: HashMap<&str, u64> = HashMap::new();
    for d in device_ids {
        let site = d.split_once('/').map_or(d.as_str(), |(s, _)| s);
        *by_site.entry(site).or_default() += 1;
    }
    let n = device_ids.len() as u64;
    let global_rounds = n.div_ceil(u64::from(global.max(1)));
    let site_rounds = by_site
        .values()
        .map(|c| c.div_ceil(u64::from(per_site.max(1))))
        .max()
        .unwrap_or(0);
    global_rounds.max(site_rounds)
}

async fn timed(args: &Args) -> anyhow::Result<()> {
    let (devices, sites, d, c) = (
        args.timed_devices,
        args.timed_sites,
        args.duration,
        args.concurrency,
    );
    println!(
        "== devices that take time: {devices} devices at {sites} sites, each update {:.1} s at the agent, concurrency {c} (global, per site, per ESPHome site), no soak, no batch check, download {}",
        d.as_secs_f64(),
        if args.download { "on" } else { "off" }
    );
    let fleet = Fleet::start(devices, sites, d, args.download).await?;
    let stages = vec![
        stage("canary", pb::stage::Size::Count(c)),
        stage("wave-25", pb::stage::Size::CumulativePercent(25.0)),
        stage("wave-100", pb::stage::Size::CumulativePercent(100.0)),
    ];
    let s = spec("fleet bench: timed", &fleet.firmware_id, stages, c, false);
    let (r, wall) = fleet.run_rollout(s, Duration::from_millis(100)).await?;
    let cpu = fleet.otad.cpu() - fleet.cpu_ready;
    let unacked = fleet.settle().await;
    check_outcome(&r, devices)?;
    let per_stage: Vec<u64> = r
        .stages
        .iter()
        .map(|s| rounds(&s.device_ids, c, c))
        .collect();
    let lower = d.as_secs_f64() * per_stage.iter().sum::<u64>() as f64;
    let server_s = (r.finished_at_ms - r.started_at_ms) as f64 / 1000.0;
    println!("  stages: {}", stage_line(&r));
    println!(
        "  lower bound: rounds per stage {per_stage:?} × {:.1} s = {lower:.1} s",
        d.as_secs_f64()
    );
    println!(
        "  makespan: {:.2} s from Create to the poll (100 ms) that saw it completed = {:.3}× the lower bound; server: started → completed {server_s:.2} s = {:.3}× (target ≤ 1.05×: {})",
        wall.as_secs_f64(),
        wall.as_secs_f64() / lower,
        server_s / lower,
        if server_s / lower <= 1.05 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  otad CPU during the rollout: {:.1} s; peak RSS {:.0} MiB",
        cpu.as_secs_f64(),
        fleet.otad.peak_rss() as f64 / MIB
    );
    fleet.print_agents(devices);
    println!("  reports still unacknowledged after the run: {unacked}");
    fleet.print_log().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if args.runs("instant") {
            instant(&args).await?;
        }
        if args.runs("timed") {
            timed(&args).await?;
        }
        Ok(())
    })
}

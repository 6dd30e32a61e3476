//! Memory of the real `ota-agent` binary with 1,000 configured ESPHome devices.
//!
//! Run: `cargo bench -p ota-conformance --features conformance --bench agent_rss` (builds
//! `ota-agent` in the bench's profile first). `OTA_BENCH_DEVICES` changes the number of
//! devices (default 1000).
//!
//! This process runs the simulated devices (one [`EsphomeNode`] each: native OTA and native API
//! ports on loopback) and otad in-process (development mode, plaintext); the agent is a child
//! process with a configuration of one `[[esphome.device]]` per simulated node, so only the
//! agent's own memory is measured. The figures are the agent's `VmRSS` (resident now) and
//! `VmHWM` (peak resident) from `/proc/<pid>/status`:
//! 1. once otad lists every device as reachable (the agent probed each one's API and reported
//!    the inventory);
//! 2. after a `BatchCheck` of all of them through otad (each device asked again).
//!
//! Linux only (it reads `/proc`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use ota_proto::v1 as pb;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};
use ota_sim::esphome::Platform;
use ota_sim::esphome_node::{EsphomeNode, NodeConfig};
use pb::device_service_client::DeviceServiceClient;
use tokio::time::Instant;

const SITE: &str = "bench";

fn main() -> anyhow::Result<()> {
    let devices: usize = match std::env::var("OTA_BENCH_DEVICES") {
        Ok(v) => v.parse().context("OTA_BENCH_DEVICES")?,
        Err(_) => 1000,
    };
    let agent_bin = agent_binary()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(agent_bin, devices))
}

/// `ota-agent` next to this executable (`target/<profile>/`), built (or brought up to date)
/// first in the same profile.
fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("target/<profile>/deps")?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile directory")?;
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-q", "-p", "ota-agent", "--bin", "ota-agent"]);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().context("run cargo build for ota-agent")?;
    ensure!(status.success(), "building ota-agent failed");
    let bin = dir.join(format!("ota-agent{}", std::env::consts::EXE_SUFFIX));
    ensure!(bin.exists(), "ota-agent not found at {}", bin.display());
    Ok(bin)
}

/// The agent process, killed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn print_memory(when: &str, pid: u32) -> anyhow::Result<()> {
    let (rss, hwm) = memory(pid)?;
    println!(
        "  {when:<40} VmRSS {:>7.1} MiB   VmHWM {:>7.1} MiB   threads {}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        threads(pid)
    );
    Ok(())
}

async fn run(agent_bin: PathBuf, count: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    let t0 = Instant::now();
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let mut config = NodeConfig::new(format!("node-{i:04}"), Platform::Esp32);
        config.ota.version = "1.0.0".into();
        nodes.push(EsphomeNode::start(config)?);
    }
    println!(
        "agent_rss: {count} simulated ESPHome nodes started in {:.1} s (in the bench process)",
        t0.elapsed().as_secs_f64()
    );

    let cfg = Config {
        data_dir: dir.path().join("otad"),
        insecure_plaintext: true,
        ..Config::default()
    };
    let store = open_store(&cfg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = Otad::start(cfg, store, Clock::new(), listener).await?;
    let url = format!("http://{}", server.addr);

    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        agent_config(&url, &dir.path().join("agent"), &nodes),
    )?;
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let started = Instant::now();
    let agent = AgentProcess(
        Command::new(&agent_bin)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", agent_bin.display()))?,
    );
    let pid = agent.0.id();

    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut devices = DeviceServiceClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = devices
            .list(pb::ListDevicesRequest {
                site_id: SITE.into(),
                reachable: Some(true),
                page: Some(pb::PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        if list.total as usize >= count {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            bail!(
                "otad lists {} of {count} devices as reachable after 300 s; agent log:\n{log}",
                list.total
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  inventory of {count} reachable devices at otad after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    print_memory("inventory reported", pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    print_memory("idle 5 s later", pid)?;

    let t = Instant::now();
    let checks = devices
        .batch_check(pb::BatchCheckRequest {
            selector: Some(pb::DeviceSelector {
                site_ids: vec![SITE.into()],
                ..Default::default()
            }),
            timeout_ms: 120_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "  BatchCheck of {} devices in {:.1} s: {} up to date, {} available, {} timed out, {} failed",
        checks.checks.len(),
        t.elapsed().as_secs_f64(),
        checks.up_to_date,
        checks.available,
        checks.timed_out,
        checks.failed
    );
    print_memory("after BatchCheck", pid)?;

    drop(agent);
    server.shutdown().await?;
    drop(nodes);
    Ok(())
}

fn agent_config(url: &str, data_dir: &Path, nodes: &[EsphomeNode]) -> String {
    let mut s = format!(
        "site_id = \"{SITE}\"\nserver = \"{url}\"\ndata_dir = \"{}\"\n\n[esphome]\n",
        data_dir.display()
    );
    for (i, node) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "\n[[esphome.device]]\nname = \"node-{i:04}\"\nhost = \"127.0.0.1\"\n\
             platform = \"esp32\"\nport = {}\napi_port = {}\n",
            node.ota_addr().port(),
            node.api_addr().port()
        ));
    }
    s
}

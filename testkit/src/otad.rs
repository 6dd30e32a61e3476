//! A real otad in-process: gRPC on 127.0.0.1:0, the sled store in a temporary directory (or the
//! in-memory store), a clock that starts now or where the test says; its clients; waiting on
//! its state.
//!
//! Time-dependent tests run with `start_paused = true` on the in-memory event store
//! ([`TestOtad::in_memory_at`]): the sled store commits on its own threads, and while a paused
//! runtime waits for another thread tokio advances the clock to the next timer, which would make
//! window and deadline tests flaky. Where only durability and order matter, sled
//! ([`TestOtad::start`], [`TestOtad::sled_at`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ota_domain::events::DomainEvent;
use ota_domain::projection::FleetState;
use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, ZigbeeOtaBuilder};
use ota_proto::v1 as pb;
use ota_server::app::App;
use ota_server::config::Config;
use ota_server::core::Clock;
use ota_server::store::{EventStore, MemEventStore};
use ota_server::wiring::{self, open_store};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// 2026-01-05 00:00 UTC, a Monday.
pub const MONDAY: i64 = 1_767_571_200_000;
/// An hour in milliseconds.
pub const HOUR: i64 = 3_600_000;

/// The configuration of a test otad: data in `dir`, listening on loopback, no TLS (development
/// mode), firmware up to 4 MiB.
pub fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_firmware_bytes: 4 * 1024 * 1024,
        ..Config::default()
    }
}

/// [`config`] for fleets of fake sites under paused time: fake agents send no heartbeats
/// otad would wait for, and paused time may run for days.
pub fn fleet_config(dir: &Path) -> Config {
    Config {
        agent_timeout: Duration::from_secs(365 * 24 * 3600),
        heartbeat_interval: Duration::from_secs(24 * 3600),
        ..config(dir)
    }
}

/// Starts otad with `cfg` on its sled store and a listener on 127.0.0.1:0.
pub async fn start_server(cfg: Config, clock: Clock) -> wiring::Otad {
    let store = open_store(&cfg).unwrap();
    start_on(cfg, store, clock).await
}

async fn start_on(cfg: Config, store: Arc<dyn EventStore>, clock: Clock) -> wiring::Otad {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    wiring::Otad::start(cfg, store, clock, listener)
        .await
        .unwrap()
}

/// A plaintext channel to `addr`, connected now.
pub async fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A plaintext channel to `addr` that connects when first used (and again after otad restarts).
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// The bootstrap admin token otad wrote into its data directory.
pub fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// The events `request` selects, as `EventService.Tail` on `channel` shows them, in log order.
/// The request must not follow the log (the answer would never end).
pub async fn all_events(channel: &Channel, request: pb::TailEventsRequest) -> Vec<pb::Event> {
    use futures::StreamExt;
    assert!(!request.follow, "all_events reads to the end of the log");
    pb::event_service_client::EventServiceClient::new(channel.clone())
        .tail(request)
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await
}

/// Polls `f` every 10 ms until it holds, for at most 20 s (then panics naming `what`).
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Waits (on applied events, not on a timer) until `f` holds for the server's state, at most
/// 30 s.
pub async fn wait_for_state(server: &wiring::Otad, what: &str, f: impl Fn(&FleetState) -> bool) {
    let app = server.app.clone();
    let mut applied = app.core.watch_applied();
    tokio::time::timeout(
        Duration::from_secs(30),
        applied.wait_for(|_| f(&app.core.read())),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    .unwrap();
}

/// A running test otad and a channel to it.
#[derive(Debug)]
pub struct TestOtad {
    /// Its data directory.
    pub dir: Arc<tempfile::TempDir>,
    cfg: Config,
    /// The in-memory store (kept across restarts), or `None` for sled.
    mem: Option<MemEventStore>,
    /// Whether its clock was set by the test (a restart continues it) or is the wall clock.
    set_clock: bool,
    pub server: Option<wiring::Otad>,
    pub channel: Channel,
}

impl TestOtad {
    /// otad on sled in a new temporary directory, the wall clock, [`config`].
    pub async fn start() -> TestOtad {
        Self::start_in(tempfile::tempdir().unwrap(), |_| {}).await
    }

    /// otad on sled in `dir`, the wall clock, [`config`] changed by `tweak`.
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestOtad {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        Self::boot(Arc::new(dir), cfg, None, None).await
    }

    /// otad on the in-memory store, [`fleet_config`], its clock at `at_ms`.
    pub async fn in_memory_at(at_ms: i64) -> TestOtad {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fleet_config(dir.path());
        Self::boot(Arc::new(dir), cfg, Some(MemEventStore::new()), Some(at_ms)).await
    }

    /// otad on sled in a temporary directory, [`fleet_config`], its clock at `at_ms`.
    pub async fn sled_at(at_ms: i64) -> TestOtad {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fleet_config(dir.path());
        Self::boot(Arc::new(dir), cfg, None, Some(at_ms)).await
    }

    async fn boot(
        dir: Arc<tempfile::TempDir>,
        cfg: Config,
        mem: Option<MemEventStore>,
        at_ms: Option<i64>,
    ) -> TestOtad {
        let store: Arc<dyn EventStore> = match &mem {
            Some(m) => Arc::new(m.clone()),
            None => open_store(&cfg).unwrap(),
        };
        let clock = at_ms.map_or_else(Clock::new, |ms| {
            Clock::starting_at(ota_domain::time::UnixMillis::from_unix_ms(ms))
        });
        let server = start_on(cfg.clone(), store, clock).await;
        let channel = plain_channel(server.addr).await;
        TestOtad {
            dir,
            cfg,
            mem,
            set_clock: at_ms.is_some(),
            server: Some(server),
            channel,
        }
    }

    /// Stops otad (flushing the store) and starts it again on the same log and configuration;
    /// a clock the test set continues where it was. Agent sessions of the old instance end as
    /// their tasks notice; only then is the event store (and sled's file lock) released, so
    /// this waits for them (at most 10 s: a test that keeps [`TestOtad::app`] keeps it alive).
    pub async fn restart(mut self) -> TestOtad {
        let now = self.set_clock.then(|| self.now_ms());
        let old = Arc::downgrade(&self.app());
        self.server.take().unwrap().shutdown().await.unwrap();
        let give_up = Instant::now() + Duration::from_secs(10);
        while old.strong_count() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self::boot(self.dir.clone(), self.cfg.clone(), self.mem.take(), now).await
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr
    }

    pub fn app(&self) -> Arc<App> {
        self.server.as_ref().unwrap().app.clone()
    }

    /// Milliseconds on otad's clock.
    pub fn now_ms(&self) -> i64 {
        self.app().now().as_i64()
    }

    pub fn firmware(&self) -> pb::firmware_service_client::FirmwareServiceClient<Channel> {
        pb::firmware_service_client::FirmwareServiceClient::new(self.channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024)
    }
    pub fn devices(&self) -> pb::device_service_client::DeviceServiceClient<Channel> {
        pb::device_service_client::DeviceServiceClient::new(self.channel.clone())
    }
    pub fn events(&self) -> pb::event_service_client::EventServiceClient<Channel> {
        pb::event_service_client::EventServiceClient::new(self.channel.clone())
    }
    pub fn system(&self) -> pb::system_service_client::SystemServiceClient<Channel> {
        pb::system_service_client::SystemServiceClient::new(self.channel.clone())
    }
    pub fn sites(&self) -> pb::site_service_client::SiteServiceClient<Channel> {
        pb::site_service_client::SiteServiceClient::new(self.channel.clone())
    }
    pub fn rollouts(&self) -> pb::rollout_service_client::RolloutServiceClient<Channel> {
        pb::rollout_service_client::RolloutServiceClient::new(self.channel.clone())
    }
    pub fn agent(&self) -> pb::agent_service_client::AgentServiceClient<Channel> {
        pb::agent_service_client::AgentServiceClient::new(self.channel.clone())
    }

    /// The task of `device` in rollout `rollout`, from the projection.
    pub fn task_of(&self, rollout: &str, device: &str) -> Option<ota_domain::projection::TaskView> {
        let app = self.app();
        let state = app.core.read();
        let id = state.rollouts.get(rollout)?.tasks_by_device.get(device)?;
        state.tasks.get(id).map(|t| (**t).clone())
    }

    /// Every recorded event, decoded, with its stream and time.
    pub fn recorded(&self) -> Vec<(String, i64, DomainEvent)> {
        let app = self.app();
        let store = app.core.store();
        let mut out = Vec::new();
        let mut next = 1;
        loop {
            let batch = store.read_from(next, 4096).unwrap();
            if batch.is_empty() {
                return out;
            }
            for r in batch {
                next = r.seq + 1;
                let e = ota_server::core::decode(&r).unwrap();
                out.push((r.stream, r.recorded_at_ms, e));
            }
        }
    }

    /// Uploads `bytes` with `meta` in chunks of 64 KiB (development mode: no token); otad's
    /// answer.
    pub async fn try_upload(
        &self,
        meta: pb::UploadMetadata,
        bytes: &[u8],
    ) -> Result<pb::UploadFirmwareResponse, tonic::Status> {
        crate::upload(&self.channel, None, meta, bytes).await
    }

    /// Every event in the log, as `EventService.Tail` shows them, in log order.
    pub async fn all_events(&self) -> Vec<pb::Event> {
        all_events(
            &self.channel,
            pb::TailEventsRequest {
                from_seq: 1,
                ..Default::default()
            },
        )
        .await
    }

    /// The seqs of `agent_id`'s reports that events in the log came from (the events'
    /// `source`), as `EventService.Tail` shows them, in log order (one seq may have several
    /// events).
    pub async fn report_seqs_in_log(&self, agent_id: &str) -> Vec<u64> {
        let events = self.all_events().await;
        events
            .iter()
            .filter_map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.payload_json).ok()?;
                let source = v.get("source")?;
                (source.get("agent_id")?.as_str()? == agent_id)
                    .then(|| source.get("seq")?.as_u64())?
            })
            .collect()
    }

    /// Uploads a firmware under paused time. The upload path does file I/O that a paused clock
    /// would race through (tokio advances paused time while the runtime waits for other
    /// threads), so time runs normally for the few milliseconds of the upload.
    pub async fn upload(&self, name: &str, version: &str, bytes: Vec<u8>) -> String {
        tokio::time::resume();
        let id = self.upload_now(name, version, bytes).await;
        tokio::time::pause();
        id
    }

    /// Uploads a firmware without touching the clock (tests with time running); its id.
    pub async fn upload_now(&self, name: &str, version: &str, bytes: Vec<u8>) -> String {
        crate::upload_firmware(&self.channel, crate::meta(name, version), &bytes)
            .await
            .id
    }

    /// Uploads an ESPHome (ESP32) application image of `version` ([`esp_image`]), paused time.
    pub async fn upload_esp(&self, version: &str) -> String {
        self.upload("node", version, esp_image(version)).await
    }

    /// Uploads a Zigbee OTA file for the devices of [`crate::site::zigbee`], paused time.
    pub async fn upload_zigbee(&self, file_version: u32) -> String {
        let bytes = ZigbeeOtaBuilder::new(0x117C, 0x2803, file_version)
            .upgrade_image(2000)
            .build();
        self.upload("bulb", &file_version.to_string(), bytes).await
    }

    pub async fn rollout(&self, id: &str) -> pb::Rollout {
        self.rollouts()
            .get(pb::GetRolloutRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// `RolloutService.Plan` of `spec` (a dry run; records nothing).
    pub async fn plan(&self, spec: pb::RolloutSpec) -> pb::RolloutPlan {
        self.rollouts()
            .plan(pb::PlanRolloutRequest {
                subject: Some(pb::plan_rollout_request::Subject::Spec(spec)),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Creates and starts a rollout.
    pub async fn create(&self, spec: pb::RolloutSpec) -> pb::Rollout {
        self.rollouts()
            .create(pb::CreateRolloutRequest {
                spec: Some(spec),
                start: true,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls the projection every `step` of (paused) time until `f` answers, at most `within`;
    /// when it gives up it prints the log (hours since [`MONDAY`]) and panics.
    pub async fn until<T>(
        &self,
        what: &str,
        step: Duration,
        within: Duration,
        mut f: impl FnMut(&FleetState) -> Option<T>,
    ) -> T {
        let app = self.app();
        let give_up = Instant::now() + within;
        loop {
            if let Some(v) = f(&app.core.read()) {
                return v;
            }
            if Instant::now() >= give_up {
                for (stream, at, e) in self.recorded() {
                    eprintln!(
                        "{stream} {:.3} h {} {}",
                        (at - MONDAY) as f64 / HOUR as f64,
                        e.type_name(),
                        e.to_json().chars().take(160).collect::<String>()
                    );
                }
                panic!("gave up waiting for {what} after {within:?}");
            }
            tokio::time::sleep(step).await;
        }
    }

    /// Waits until the rollout is in `state` (by name: "running", "paused", ...).
    pub async fn until_rollout(&self, id: &str, state: &str, within: Duration) {
        self.until(
            &format!("rollout {id} {state}"),
            Duration::from_secs(1),
            within,
            |s| {
                s.rollouts
                    .get(id)
                    .filter(|r| r.state.name() == state)
                    .map(|_| ())
            },
        )
        .await
    }
}

/// `n` seconds (test timeouts and fake transfer times, on paused time).
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` minutes.
pub fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

/// `n` hours.
pub fn hours(n: u64) -> Duration {
    Duration::from_secs(3600 * n)
}

/// An ESPHome (ESP32) application image of `version`, project "node", 4 KiB of payload.
pub fn esp_image(version: &str) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .project_name("node")
        .payload_size(4096)
        .build()
}

/// Updates `device` to `firmware_id` as `token`'s holder and waits (at most 60 s) for the task
/// to end; the task.
pub async fn update_and_wait(
    ch: &Channel,
    token: &str,
    device: &str,
    firmware_id: &str,
) -> pb::Task {
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        pb::device_service_client::DeviceServiceClient::new(ch.clone()).update(crate::authed(
            pb::UpdateDeviceRequest {
                device_id: device.into(),
                firmware_id: firmware_id.into(),
                wait: true,
                ..Default::default()
            },
            token,
        )),
    )
    .await
    .expect("the update ends within 60 s")
    .unwrap()
    .into_inner();
    resp.task.unwrap()
}

/// Files in a directory, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

//! A zigbee2mqtt simulator on a real MQTT broker.
//!
//! What it does: connects to a broker like zigbee2mqtt (last will on `bridge/state`), publishes
//! the retained `bridge/state`, `bridge/info` and `bridge/devices` and each device's whole cached
//! state, and answers OTA requests on `<base>/bridge/request/device/ota_update/…` exactly like
//! zigbee2mqtt 2.8+ or 2.0–2.7 (see `ota_devproto::z2m` and the reference transcript): every
//! response and state payload is built with `ota_devproto::z2m`'s stable stringify. Images come
//! from the request's `url` (HTTP GET) or `hex`, or from the simulator's index; each device
//! installs exactly the bytes the bridge fetched, if its manufacturer code, image type and a
//! newer file version match. Devices: mains routers, sleepy end devices (wake interval or woken
//! by the test; a waking device talks, so its state is published with a new `last_seen`),
//! devices that abort at 100 %, never respond, stall, or lack OTA support. Each device counts
//! the images it installed in full (`DeviceSnapshot::received_images`) and its wake-ups.
//! Restarts and broker outages are survived like zigbee2mqtt does.
//!
//! Time: every OTA delay (query wait, block pacing, 30 s progress cadence, 120 s announce wait,
//! block timeout, wake intervals) uses tokio's clock of the runtime the bridge logic runs on.
//! [`Z2mSim::start`] runs it on the caller's runtime; [`Z2mSim::start_virtual`] (feature
//! `virtual-time`) runs it on its own paused clock in a thread, while the MQTT connection and
//! HTTP fetches stay on the caller's (real-time) runtime. On the paused clock, device time flies
//! whenever the bridge waits, so a 20-minute transfer takes milliseconds, and a network round
//! trip can never be overtaken by a timer of the network client.
//!
//! What it does not do: Zigbee frames, the frontend, anything but OTA (no `set`, no groups).
//!
//! # Layout
//! - `config`: [`Z2mSimConfig`], [`SimDevice`], [`Behavior`], [`Timings`].
//! - `bridge`: request handling and the simulated OTA sessions.
//! - `io`: the MQTT connection and HTTP fetches.
//! - [`image`]: OTA file parsing as the simulator needs it, and a builder for test images.

mod bridge;
mod config;
pub mod image;
mod io;

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

pub use bridge::{DeviceSnapshot, Logged};
pub use config::{Behavior, IndexImage, LastSeen, SimDevice, Timings, Z2mSimConfig};
pub use ota_devproto::z2m::Z2mVersion;

use bridge::{Cmd, Shared};

/// Why the simulator did not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// It did not connect and subscribe in time.
    #[error("the zigbee2mqtt simulator could not connect to the broker at {0}")]
    NotConnected(String),
    /// Its thread could not be spawned or its runtime built.
    #[error("the zigbee2mqtt simulator could not start: {0}")]
    Start(String),
}

/// A running zigbee2mqtt simulator. Dropping it stops the bridge.
#[derive(Debug)]
pub struct Z2mSim {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Z2mSim {
    /// Starts the bridge on the current runtime (real time unless the caller paused it) and
    /// returns once it is subscribed and has published its startup messages.
    pub async fn start(config: Z2mSimConfig) -> Result<Self, SimError> {
        let target = format!("{}:{}", config.broker_host, config.broker_port);
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (shared, _) = Shared::new(config, Handle::current(), in_tx);
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(Arc::clone(&shared).run(in_rx, cmd_rx, ready_tx));
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(Self {
                shared,
                cmds: cmd_tx,
                thread: None,
            }),
            _ => Err(SimError::NotConnected(target)),
        }
    }

    /// Starts the bridge logic on its own paused tokio clock in a new thread; the MQTT
    /// connection and image downloads run on the caller's runtime, which must use real time.
    /// Returns once the bridge is subscribed and has published its startup messages.
    #[cfg(feature = "virtual-time")]
    pub async fn start_virtual(config: Z2mSimConfig) -> Result<Self, SimError> {
        let target = format!("{}:{}", config.broker_host, config.broker_port);
        let io = Handle::current();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (shared_tx, shared_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("z2m-sim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "zigbee2mqtt simulator runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let (shared, _) = Shared::new(config, io, in_tx);
                    let _ = shared_tx.send(Arc::clone(&shared));
                    shared.run(in_rx, cmd_rx, ready_tx).await;
                });
            })
            .map_err(|e| SimError::Start(e.to_string()))?;
        let shared = shared_rx
            .await
            .map_err(|_| SimError::Start("the simulator thread ended".into()))?;
        let sim = Self {
            shared,
            cmds: cmd_tx,
            thread: Some(thread),
        };
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(sim),
            _ => Err(SimError::NotConnected(target)),
        }
    }

    /// The topics of this bridge.
    pub fn topics(&self) -> &ota_devproto::z2m::Topics {
        self.shared.topics()
    }

    /// A device by IEEE address or friendly name.
    pub fn device(&self, id: &str) -> Option<DeviceSnapshot> {
        self.shared.snapshot(id)
    }

    /// Every device.
    pub fn devices(&self) -> Vec<DeviceSnapshot> {
        self.shared
            .ieees()
            .iter()
            .filter_map(|i| self.shared.snapshot(i))
            .collect()
    }

    /// Every OTA request received, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.lock().requests.clone()
    }

    /// Everything published, in order.
    pub fn published(&self) -> Vec<Logged> {
        self.shared.lock().published.clone()
    }

    /// Payloads published on `topic`, in order.
    pub fn published_on(&self, topic: &str) -> Vec<String> {
        self.shared
            .lock()
            .published
            .iter()
            .filter(|l| l.topic == topic)
            .map(|l| l.payload.clone())
            .collect()
    }

    /// Whether the bridge is up.
    pub fn is_online(&self) -> bool {
        self.shared.is_online()
    }

    /// Waits (on the caller's clock, without limit) until `pred` holds; re-checked after every
    /// change the bridge makes. Wrap it in a timeout.
    pub async fn wait_until(&self, pred: impl Fn(&Z2mSim) -> bool) {
        let mut rx: watch::Receiver<u64> = self.shared.changed();
        loop {
            if pred(self) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Wakes a device up: it is awake for [`Timings::awake_window`] and sends its own
    /// queryNextImageRequest (running a pending schedule, or an automatic check).
    pub fn wake(&self, id: &str) {
        let _ = self.cmds.send(Cmd::Wake(id.to_string()));
    }

    /// Holds the device's transfers at `percent` (see [`SimDevice::hold_at`]).
    pub fn hold(&self, id: &str, percent: f64) {
        let _ = self.cmds.send(Cmd::Hold(id.to_string(), Some(percent)));
    }

    /// Clears the device's hold; a held transfer goes on.
    pub fn release(&self, id: &str) {
        let _ = self.cmds.send(Cmd::Hold(id.to_string(), None));
    }

    /// Adds an image to the bridge's OTA index.
    pub fn add_index_image(&self, image: IndexImage) {
        let _ = self.cmds.send(Cmd::AddIndex(image));
    }

    /// The bridge goes away: `bridge/state` offline, running sessions lost, disconnected.
    pub async fn stop_bridge(&self) {
        self.command(Cmd::Stop).await;
    }

    /// The bridge comes back (after [`Z2mSim::stop_bridge`]): cached `updating` states become
    /// `idle`, everything is republished.
    pub async fn start_bridge(&self) {
        self.command(Cmd::Start).await;
    }

    /// Stop, `downtime` of simulated time, start.
    pub async fn restart(&self, downtime: Duration) {
        self.command(|tx| Cmd::Restart(downtime, tx)).await;
    }

    /// Stops the bridge and its thread.
    pub async fn shutdown(mut self) {
        self.command(Cmd::Shutdown).await;
        self.join_thread();
    }

    async fn command(&self, make: impl FnOnce(oneshot::Sender<()>) -> Cmd) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(make(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn join_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            // The thread ends when the actor ends (after Shutdown, or when the handle's
            // command channel closes on drop).
            let _ = t.join();
        }
    }
}

impl Drop for Z2mSim {
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::Shutdown(tx));
        if let Some(t) = self.thread.take() {
            // Do not block a runtime thread on the simulator's shutdown: let it finish alone.
            drop(t);
        }
    }
}

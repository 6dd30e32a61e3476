//! The simulated zigbee2mqtt bridge: OTA request handling, simulated OTA sessions, state cache.
//!
//! What it does: everything zigbee2mqtt's `otaUpdate` extension and zigbee-herdsman's OTA
//! session do, as the reference transcript shows them:
//! - validation and its order (unknown id, no OTA support, one operation per device);
//! - `check` (device query, index lookup, state + response), `update` (genBasic reads, image
//!   notify and the 60 s query wait, image fetch/decode and match, block transfer with the first
//!   estimate and 30 s progress cadence, upgrade end, the ≤ 120 s announce wait, success state
//!   and response), `schedule`/`unschedule` (run on the device's next own request), and
//!   `update/abort` (ok at once, the update's error at its next block request);
//! - device-initiated requests on wake-up (scheduled runs, automatic checks within
//!   `update_check_interval`); a device that wakes talks: with `last_seen` published, its state
//!   goes out with the new `last_seen`;
//! - the whole cached device state in every state message, sorted keys;
//! - restarts: offline, running sessions lost, cached `updating` → `idle`, everything
//!   republished.
//!
//! All timing uses tokio's clock of the runtime the logic runs on (pausable); real I/O goes
//! through `io` on the I/O runtime.
//!
//! What it does not do: Zigbee radio frames; a device here is a small model with the
//! behaviours of [`Behavior`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ota_devproto::z2m::devices::{BridgeDevice, Definition, bridge_devices_payload};
use ota_devproto::z2m::devices::{BridgeInfo, bridge_state_payload};
use ota_devproto::z2m::state::{format_iso8601_ms, patch};
use ota_devproto::z2m::{
    CheckData, DeviceType, ErrorText, ImageSource, OtaOp, OtaRequest, OtaState, RequestTopic,
    Response, ScheduleData, StateCache, Topics, UpdateData, VersionData, Z2mTopic, Z2mVersion,
    progress, response,
};
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::sync::LockExt;
use crate::z2m::config::{Behavior, IndexImage, LastSeen, SimDevice, Z2mSimConfig};
use crate::z2m::image::{self, ImageHeader};
use crate::z2m::io::{self, Incoming, Link, LinkCmd};

/// One message in the simulator's logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Simulated milliseconds since the simulator started.
    pub at_ms: u64,
    /// Topic.
    pub topic: String,
    /// Payload as text.
    pub payload: String,
    /// Published retained.
    pub retain: bool,
}

/// What the test sees of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSnapshot {
    /// IEEE address.
    pub ieee: String,
    /// Friendly name.
    pub friendly_name: String,
    /// Installed OTA file version.
    pub installed_version: u32,
    /// genBasic swBuildId now.
    pub software_build_id: Option<String>,
    /// Every file the device installed, exactly as the bridge fetched or decoded it.
    pub received_images: Vec<Vec<u8>>,
    /// Has a pending schedule.
    pub scheduled: bool,
    /// Waits at its test gate ([`SimDevice::hold_at`]).
    pub held: bool,
    /// An operation runs (`check`, `update`).
    pub in_progress: Option<&'static str>,
    /// Times the device woke up (sleepy devices).
    pub wakes: u64,
    /// The cached state zigbee2mqtt publishes.
    pub state: Value,
}

#[derive(Debug)]
struct Dev {
    cfg: SimDevice,
    installed: u32,
    software_build_id: Option<String>,
    cache: StateCache,
    received: Vec<Vec<u8>>,
    hold_at: Option<f64>,
    holding: bool,
    awake_until: Option<Instant>,
    /// Wake-ups so far.
    wakes: u64,
    wake: watch::Sender<u64>,
    release: watch::Sender<u64>,
}

#[derive(Debug)]
struct Op {
    id: u64,
    kind: &'static str,
    task: Option<AbortHandle>,
    abort: CancellationToken,
    is_update: bool,
    /// Set once the device accepted the whole image (upgrade end SUCCESS): a restart now leaves
    /// the device on the new version.
    applied: Option<(u32, Vec<u8>, Option<String>)>,
}

#[derive(Debug)]
struct Schedule {
    image: Option<ImageSource>,
    downgrade: bool,
    waiter: Option<AbortHandle>,
}

#[derive(Debug)]
pub(crate) struct State {
    devices: Vec<Dev>,
    in_progress: HashMap<String, Op>,
    schedules: HashMap<String, Schedule>,
    last_check: HashMap<String, Instant>,
    pub(crate) requests: Vec<Logged>,
    pub(crate) published: Vec<Logged>,
    online: bool,
    index: Vec<IndexImage>,
    link: Option<Link>,
    generation: u64,
    next_op: u64,
}

/// The bridge, shared by the actor, the session tasks and the test handle.
#[derive(Debug)]
pub(crate) struct Shared {
    cfg: Z2mSimConfig,
    topics: Topics,
    text: ErrorText,
    io: Handle,
    start: Instant,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    incoming: mpsc::UnboundedSender<Incoming>,
}

/// Commands from the test handle, executed on the logic runtime.
#[derive(Debug)]
pub(crate) enum Cmd {
    Wake(String),
    Hold(String, Option<f64>),
    Stop(oneshot::Sender<()>),
    Start(oneshot::Sender<()>),
    Restart(Duration, oneshot::Sender<()>),
    AddIndex(IndexImage),
    Shutdown(oneshot::Sender<()>),
}

/// How a session ended.
enum Outcome {
    Success { from: VersionData, to: VersionData },
    NoImage,
    Failed(String),
    Aborted,
}

impl Shared {
    pub(crate) fn new(
        cfg: Z2mSimConfig,
        io: Handle,
        incoming: mpsc::UnboundedSender<Incoming>,
    ) -> (Arc<Self>, watch::Receiver<u64>) {
        let start = Instant::now();
        let topics = Topics::new(cfg.base_topic.clone());
        let devices = cfg
            .devices
            .iter()
            .map(|d| {
                let mut cache = StateCache::new();
                let mut initial = serde_json::Map::new();
                if let Some(b) = d.battery {
                    initial.insert("battery".into(), Value::from(b));
                }
                initial.insert("linkquality".into(), Value::from(d.linkquality));
                cache.apply(&Value::Object(initial));
                if d.supports_ota {
                    cache.apply(&patch::finished(cfg.version, d.file_version));
                }
                Dev {
                    installed: d.file_version,
                    software_build_id: d.software_build_id.clone(),
                    cache,
                    received: Vec::new(),
                    hold_at: d.hold_at,
                    holding: false,
                    awake_until: None,
                    wakes: 0,
                    wake: watch::channel(0).0,
                    release: watch::channel(0).0,
                    cfg: d.clone(),
                }
            })
            .collect();
        let (changed, changed_rx) = watch::channel(0);
        let shared = Arc::new(Self {
            text: ErrorText(cfg.version),
            topics,
            io,
            start,
            state: Mutex::new(State {
                devices,
                in_progress: HashMap::new(),
                schedules: HashMap::new(),
                last_check: HashMap::new(),
                requests: Vec::new(),
                published: Vec::new(),
                online: false,
                index: cfg.index.clone(),
                link: None,
                generation: 0,
                next_op: 0,
            }),
            changed,
            incoming,
            cfg,
        });
        (shared, changed_rx)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    fn elapsed_ms(&self) -> u64 {
        Instant::now().duration_since(self.start).as_millis() as u64
    }

    fn now_ms(&self) -> i64 {
        self.cfg.epoch_ms + self.elapsed_ms() as i64
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    // ----- publishing -----

    fn publish(&self, st: &mut State, topic: String, payload: String, retain: bool) {
        st.published.push(Logged {
            at_ms: self.elapsed_ms(),
            topic: topic.clone(),
            payload: payload.clone(),
            retain,
        });
        if let Some(link) = &st.link {
            let _ = link.tx.send(LinkCmd::Publish {
                topic,
                payload,
                retain,
            });
        }
        self.bump();
    }

    fn respond(&self, st: &mut State, op: OtaOp, resp: Response) {
        let topic = if resp.is_ok() {
            self.topics.response(op)
        } else {
            self.topics.error_response(op)
        };
        self.publish(st, topic, resp.to_payload(), false);
    }

    /// Merges `patch` into the device's cache and publishes its whole state.
    fn publish_device(&self, st: &mut State, idx: usize, patch: &Value) {
        let dev = &mut st.devices[idx];
        dev.cache.apply(patch);
        let topic = self.topics.device(&dev.cfg.friendly_name);
        let payload = dev.cache.to_payload();
        let retain = self.cfg.retain_device_state;
        self.publish(st, topic, payload, retain);
    }

    /// The device talked: `last_seen` moves.
    fn touch(&self, st: &mut State, idx: usize) {
        let v = match self.cfg.last_seen {
            LastSeen::Disable => return,
            LastSeen::Iso8601 => Value::from(format_iso8601_ms(self.now_ms())),
            LastSeen::Epoch => Value::from(self.now_ms()),
        };
        st.devices[idx].cache.apply(&json!({ "last_seen": v }));
    }

    fn bridge_devices(&self, st: &State) -> String {
        let mut list = vec![BridgeDevice {
            ieee_address: "0x00124b0000000001".into(),
            friendly_name: "Coordinator".into(),
            device_type: DeviceType::Coordinator,
            network_address: Some(0),
            supported: true,
            interview_completed: true,
            ..BridgeDevice::default()
        }];
        for d in &st.devices {
            let c = &d.cfg;
            list.push(BridgeDevice {
                ieee_address: c.ieee.clone(),
                friendly_name: c.friendly_name.clone(),
                device_type: c.device_type,
                network_address: Some(c.network_address),
                power_source: Some(c.power_source.clone()),
                model_id: Some(c.model_id.clone()),
                manufacturer: Some(c.manufacturer.clone()),
                software_build_id: d.software_build_id.clone(),
                date_code: c.date_code.clone(),
                manufacturer_code: None,
                definition: Some(Definition {
                    model: c.model.clone(),
                    vendor: c.vendor.clone(),
                    description: format!("{} {}", c.vendor, c.model),
                    supports_ota: c.supports_ota,
                }),
                ota_cluster: Some(c.supports_ota),
                supported: true,
                disabled: false,
                interview_completed: true,
            });
        }
        bridge_devices_payload(&list)
    }

    // ----- lifecycle -----

    /// Connects and publishes what zigbee2mqtt publishes at startup; returns once subscribed.
    pub(crate) async fn start_bridge(
        self: &Arc<Self>,
        incoming: &mut mpsc::UnboundedReceiver<Incoming>,
    ) {
        let generation = {
            let mut st = self.lock();
            st.generation += 1;
            let link = io::connect(
                &self.io,
                &self.cfg,
                &self.topics,
                st.generation,
                self.incoming.clone(),
            );
            st.link = Some(link);
            st.generation
        };
        // Wait for the subscription, dropping anything of older links.
        while let Some(msg) = incoming.recv().await {
            if let Incoming::Connected { generation: g } = msg
                && g == generation
            {
                break;
            }
        }
        let mut st = self.lock();
        st.online = true;
        let base = &self.topics;
        self.publish(
            &mut st,
            base.bridge_state(),
            bridge_state_payload(true),
            true,
        );
        self.publish(
            &mut st,
            base.bridge_info(),
            BridgeInfo::payload(self.cfg.version.sample_version()),
            true,
        );
        let devices = self.bridge_devices(&st);
        self.publish(&mut st, base.bridge_devices(), devices, true);
        for idx in 0..st.devices.len() {
            st.devices[idx].cache.reset_at_startup();
            if !st.devices[idx].cache.map().is_empty() {
                self.publish_device(&mut st, idx, &json!({}));
            }
        }
        let scheduled: Vec<String> = st.schedules.keys().cloned().collect();
        drop(st);
        for ieee in scheduled {
            self.spawn_schedule_waiter(&ieee);
        }
    }

    /// The bridge goes away: offline, sessions lost, disconnected.
    pub(crate) async fn stop_bridge(self: &Arc<Self>) {
        let link = {
            let mut st = self.lock();
            if !st.online {
                return;
            }
            let topic = self.topics.bridge_state();
            self.publish(&mut st, topic, bridge_state_payload(false), true);
            st.online = false;
            let ops: Vec<(String, Op)> = st.in_progress.drain().collect();
            for (ieee, op) in ops {
                if let Some(t) = &op.task {
                    t.abort();
                }
                if let Some((version, bytes, sw)) = op.applied
                    && let Some(idx) = find_idx(&st, &ieee)
                {
                    install(&mut st.devices[idx], version, bytes, sw);
                }
            }
            for s in st.schedules.values_mut() {
                if let Some(w) = s.waiter.take() {
                    w.abort();
                }
            }
            if self.cfg.version == Z2mVersion::V2_0To2_7 {
                // Schedules lived in memory before 2.8.
                st.schedules.clear();
            }
            st.link.take()
        };
        if let Some(link) = link {
            let (tx, rx) = oneshot::channel();
            if link.tx.send(LinkCmd::Stop(tx)).is_ok() {
                let _ = rx.await;
            }
        }
        self.bump();
    }

    /// The actor: requests from MQTT and commands from the test handle.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut incoming: mpsc::UnboundedReceiver<Incoming>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        ready: oneshot::Sender<()>,
    ) {
        self.start_bridge(&mut incoming).await;
        let _ = ready.send(());
        loop {
            tokio::select! {
                msg = incoming.recv() => match msg {
                    Some(Incoming::Message { generation, topic, payload }) => {
                        let current = self.lock().generation;
                        if generation == current {
                            self.on_message(&topic, &payload);
                        }
                    }
                    Some(Incoming::Connected { generation }) => {
                        // The broker came back: zigbee2mqtt announces itself again.
                        let mut st = self.lock();
                        if generation == st.generation && st.online {
                            let topic = self.topics.bridge_state();
                            self.publish(&mut st, topic, bridge_state_payload(true), true);
                        }
                    }
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Wake(ieee)) => self.wake(&ieee),
                    Some(Cmd::Hold(ieee, at)) => {
                        let mut st = self.lock();
                        if let Some(idx) = find_idx(&st, &ieee) {
                            let dev = &mut st.devices[idx];
                            dev.hold_at = at;
                            if at.is_none() {
                                dev.release.send_modify(|v| *v += 1);
                            }
                        }
                    }
                    Some(Cmd::Stop(done)) => {
                        self.stop_bridge().await;
                        let _ = done.send(());
                    }
                    Some(Cmd::Start(done)) => {
                        if !self.lock().online {
                            self.start_bridge(&mut incoming).await;
                        }
                        let _ = done.send(());
                    }
                    Some(Cmd::Restart(downtime, done)) => {
                        self.stop_bridge().await;
                        sleep(downtime).await;
                        self.start_bridge(&mut incoming).await;
                        let _ = done.send(());
                    }
                    Some(Cmd::AddIndex(img)) => self.lock().index.push(img),
                    Some(Cmd::Shutdown(done)) => {
                        self.stop_bridge().await;
                        let _ = done.send(());
                        break;
                    }
                    None => break,
                },
            }
        }
        let mut st = self.lock();
        for op in st.in_progress.values() {
            if let Some(t) = &op.task {
                t.abort();
            }
        }
        for s in st.schedules.values_mut() {
            if let Some(w) = s.waiter.take() {
                w.abort();
            }
        }
    }

    // ----- requests -----

    fn on_message(self: &Arc<Self>, topic: &str, payload: &[u8]) {
        let Some(Z2mTopic::OtaRequest(req_topic)) = self.topics.parse_for(topic, self.cfg.version)
        else {
            return;
        };
        {
            let mut st = self.lock();
            st.requests.push(Logged {
                at_ms: self.elapsed_ms(),
                topic: topic.to_string(),
                payload: String::from_utf8_lossy(payload).into_owned(),
                retain: false,
            });
        }
        self.bump();
        let Ok(req) = OtaRequest::parse(payload) else {
            // zigbee2mqtt: `Invalid payload`, logged; nothing is published.
            return;
        };
        self.on_request(req_topic, req);
    }

    fn on_request(self: &Arc<Self>, t: RequestTopic, req: OtaRequest) {
        let op = t.op;
        let tx = req.transaction.clone();
        let mut st = self.lock();
        let Some(idx) = find_idx(&st, &req.id) else {
            let msg = self.text.does_not_exist(&req.id);
            self.respond(&mut st, op, Response::error(msg, tx));
            return;
        };
        if op == OtaOp::Abort {
            self.on_abort(&mut st, idx, &req);
            return;
        }
        let image = if self.cfg.version.accepts_images() {
            req.image.clone()
        } else {
            None
        };
        if let Some(msg) = self.refusal(&st, idx, op, &req, image.is_some()) {
            self.respond(&mut st, op, Response::error(msg, tx));
            return;
        }
        let ieee = st.devices[idx].cfg.ieee.clone();
        match op {
            OtaOp::Unschedule => {
                if let Some(s) = st.schedules.remove(&ieee)
                    && let Some(w) = s.waiter
                {
                    w.abort();
                }
                self.publish_device(&mut st, idx, &patch::state(OtaState::Idle));
                self.respond(&mut st, op, Response::ok(response::id_data(&req.id), tx));
            }
            OtaOp::Schedule => {
                self.on_schedule(&mut st, idx, &req, image, t.downgrade);
                drop(st);
                self.spawn_schedule_waiter(&ieee);
            }
            OtaOp::Check => {
                let me = Arc::clone(self);
                let (ieee2, downgrade) = (ieee.clone(), t.downgrade);
                start_op(&mut st, ieee, "check", CancellationToken::new(), |id| {
                    tokio::spawn(async move {
                        me.run_check(ieee2, id, req, downgrade).await;
                    })
                });
            }
            OtaOp::Update => {
                let abort = CancellationToken::new();
                let me = Arc::clone(self);
                let (ieee2, abort2) = (ieee.clone(), abort.clone());
                start_op(&mut st, ieee, "update", abort, |id| {
                    tokio::spawn(async move {
                        let outcome = me.session(&ieee2, image, t.downgrade, false, &abort2).await;
                        me.finish_manual(&ieee2, id, &req, outcome);
                    })
                });
            }
            OtaOp::Abort => {}
        }
    }

    /// `update/abort`: stops a running update (the device is `available` again); anything else
    /// has nothing to abort.
    fn on_abort(&self, st: &mut State, idx: usize, req: &OtaRequest) {
        let tx = req.transaction.clone();
        let ieee = st.devices[idx].cfg.ieee.clone();
        let running = st.in_progress.get(&ieee).is_some_and(|o| o.is_update);
        if running {
            if let Some(o) = st.in_progress.remove(&ieee) {
                o.abort.cancel();
            }
            self.publish_device(st, idx, &patch::state(OtaState::Available));
            self.respond(
                st,
                OtaOp::Abort,
                Response::ok(response::id_data(&req.id), tx),
            );
        } else {
            let msg = self
                .text
                .nothing_to_abort(&st.devices[idx].cfg.friendly_name);
            self.respond(st, OtaOp::Abort, Response::error(msg, tx));
        }
    }

    /// Why zigbee2mqtt (of the simulated version) refuses `op` for the device: it does not
    /// support OTA, or another operation runs on it (checked first from 2.8 on).
    fn refusal(
        &self,
        st: &State,
        idx: usize,
        op: OtaOp,
        req: &OtaRequest,
        has_image: bool,
    ) -> Option<String> {
        let ieee = &st.devices[idx].cfg.ieee;
        let name = &st.devices[idx].cfg.friendly_name;
        let supported = st.devices[idx].cfg.supports_ota
            || (has_image && op != OtaOp::Unschedule)
            || (self.cfg.version.accepts_images()
                && op == OtaOp::Check
                && matches!(req.image, Some(ImageSource::Url(_))));
        let busy = st.in_progress.contains_key(ieee);
        match self.cfg.version {
            Z2mVersion::V2_8Plus if busy => Some(self.text.in_progress(name)),
            _ if !supported => Some(self.text.not_supported(name)),
            Z2mVersion::V2_0To2_7 if busy => Some(self.text.in_progress(name)),
            _ => None,
        }
    }

    /// `update/schedule`: replaces the device's schedule and answers with the image's URL (the
    /// caller starts the waiter for the device's next request).
    fn on_schedule(
        &self,
        st: &mut State,
        idx: usize,
        req: &OtaRequest,
        image: Option<ImageSource>,
        downgrade: bool,
    ) {
        let ieee = st.devices[idx].cfg.ieee.clone();
        let url = match &image {
            Some(ImageSource::Url(u)) => Some(u.clone()),
            Some(ImageSource::Hex { file_name, .. }) => Some(format!(
                "{}/ota/{}",
                self.cfg.data_path,
                file_name
                    .clone()
                    .unwrap_or_else(|| format!("{ieee}_{}", self.now_ms()))
            )),
            None => None,
        };
        if let Some(old) = st.schedules.remove(&ieee)
            && let Some(w) = old.waiter
        {
            w.abort();
        }
        st.schedules.insert(
            ieee,
            Schedule {
                image,
                downgrade,
                waiter: None,
            },
        );
        self.publish_device(st, idx, &patch::state(OtaState::Scheduled));
        let data = ScheduleData {
            id: req.id.clone(),
            url,
        };
        self.respond(
            st,
            OtaOp::Schedule,
            Response::ok(data.to_value(), req.transaction.clone()),
        );
    }

    fn finish_manual(&self, ieee: &str, op_id: u64, req: &OtaRequest, outcome: Outcome) {
        let mut st = self.lock();
        let Some(idx) = find_idx(&st, ieee) else {
            return;
        };
        // An aborted session was already removed from the in-progress set by the abort.
        st.remove_op(ieee, op_id);
        let name = st.devices[idx].cfg.friendly_name.clone();
        let tx = req.transaction.clone();
        let version = self.cfg.version;
        match outcome {
            Outcome::Success { from, to } => {
                st.schedules.remove(ieee);
                let now = st.devices[idx].installed;
                self.publish_device(&mut st, idx, &patch::finished(version, now));
                let data = UpdateData {
                    id: req.id.clone(),
                    from: Some(from),
                    to: Some(to),
                };
                self.respond(
                    &mut st,
                    OtaOp::Update,
                    Response::ok(data.to_value(version), tx),
                );
            }
            Outcome::NoImage => {
                let now = st.devices[idx].installed;
                self.publish_device(&mut st, idx, &patch::finished(version, now));
                let msg = self.text.no_image(&name);
                self.respond(&mut st, OtaOp::Update, Response::error(msg, tx));
            }
            Outcome::Failed(cause) => {
                self.publish_device(&mut st, idx, &patch::state(OtaState::Available));
                let msg = self.text.update_failed(&name, &cause);
                self.respond(&mut st, OtaOp::Update, Response::error(msg, tx));
            }
            Outcome::Aborted => {
                let msg = self
                    .text
                    .update_failed(&name, &self.text.cause_aborted(ieee));
                self.respond(&mut st, OtaOp::Update, Response::error(msg, tx));
            }
        }
    }

    async fn run_check(
        self: Arc<Self>,
        ieee: String,
        op_id: u64,
        req: OtaRequest,
        downgrade: bool,
    ) {
        let answered = self.query(&ieee, &CancellationToken::new()).await;
        let mut st = self.lock();
        st.remove_op(&ieee, op_id);
        let Some(idx) = find_idx(&st, &ieee) else {
            return;
        };
        let name = st.devices[idx].cfg.friendly_name.clone();
        let tx = req.transaction.clone();
        if let Err(cause) = answered {
            let msg = self.text.check_failed(&name, &cause);
            self.respond(&mut st, OtaOp::Check, Response::error(msg, tx));
            return;
        }
        self.touch(&mut st, idx);
        let (available, meta) = self.publish_check(&mut st, idx, downgrade);
        let source = meta.as_ref().map(|(m, _)| m.url.clone());
        let notes = meta.as_ref().and_then(|(m, _)| m.release_notes.clone());
        let data = CheckData {
            id: req.id.clone(),
            update_available: available,
            downgrade: Some(downgrade),
            source,
            release_notes: notes,
        };
        self.respond(
            &mut st,
            OtaOp::Check,
            Response::ok(data.to_value(self.cfg.version), tx),
        );
    }

    /// zigbee-OTA index lookup: the first entry for the device's manufacturer code and image
    /// type; available when newer (older for a downgrade).
    fn index_lookup(
        &self,
        st: &State,
        idx: usize,
        downgrade: bool,
    ) -> (bool, Option<(IndexImage, ImageHeader)>) {
        let dev = &st.devices[idx];
        let meta = st.index.iter().find_map(|m| {
            let h = image::parse(&m.bytes).ok()?;
            (h.manufacturer_code == dev.cfg.manufacturer_code && h.image_type == dev.cfg.image_type)
                .then(|| (m.clone(), h))
        });
        let available = meta.as_ref().is_some_and(|(_, h)| {
            if downgrade {
                h.file_version < dev.installed
            } else {
                h.file_version > dev.installed
            }
        });
        (available, meta)
    }

    // ----- the device side -----

    /// Image notify → queryNextImageRequest: `Ok` when the device answered within the query
    /// timeout.
    async fn query(&self, ieee: &str, abort: &CancellationToken) -> Result<(), String> {
        let (behavior, supports, sleepy, mut wake_rx) = {
            let st = self.lock();
            let Some(idx) = find_idx(&st, ieee) else {
                return Err("device gone".into());
            };
            let d = &st.devices[idx];
            (
                d.cfg.behavior.clone(),
                d.cfg.supports_ota,
                d.cfg.sleepy,
                d.wake.subscribe(),
            )
        };
        if !supports {
            return Err(self.text.cause_no_ota_endpoint(ieee));
        }
        let timings = &self.cfg.timings;
        let no_response = self.text.cause_no_response();
        if behavior == Behavior::NeverResponds {
            tokio::select! {
                _ = sleep(timings.query_timeout) => {}
                _ = abort.cancelled() => {}
            }
            return Err(no_response);
        }
        let Some(wake_interval) = sleepy else {
            sleep(timings.query_delay).await;
            return Ok(());
        };
        if self.is_awake(ieee) {
            sleep(timings.query_delay).await;
            return Ok(());
        }
        let now = Instant::now();
        let deadline = now + timings.query_timeout;
        let next = wake_interval
            .map(|i| self.next_wake(i, now))
            .filter(|t| *t <= deadline);
        tokio::select! {
            _ = wake_rx.changed() => {}
            _ = sleep_until(next.unwrap_or(deadline)), if next.is_some() => self.set_awake(ieee),
            _ = sleep_until(deadline) => return Err(no_response),
            _ = abort.cancelled() => return Err(no_response),
        }
        Ok(())
    }

    fn next_wake(&self, interval: Duration, now: Instant) -> Instant {
        let interval_ms = interval.as_millis().max(1) as u64;
        let elapsed = now.duration_since(self.start).as_millis() as u64;
        let k = elapsed / interval_ms + 1;
        self.start + Duration::from_millis(k * interval_ms)
    }

    fn is_awake(&self, ieee: &str) -> bool {
        let st = self.lock();
        find_idx(&st, ieee)
            .and_then(|i| st.devices[i].awake_until)
            .is_some_and(|t| Instant::now() < t)
    }

    /// The device woke up and talks: it is awake for the awake window, and (with `last_seen`
    /// published) zigbee2mqtt publishes its state with the new `last_seen`, the sign a
    /// subscriber sees of a sleepy device being awake.
    fn set_awake(&self, ieee: &str) {
        let mut st = self.lock();
        if let Some(i) = find_idx(&st, ieee) {
            st.devices[i].awake_until = Some(Instant::now() + self.cfg.timings.awake_window);
            st.devices[i].wakes += 1;
            self.touch(&mut st, i);
            if self.cfg.last_seen != LastSeen::Disable && st.online {
                self.publish_device(&mut st, i, &json!({}));
            }
        }
    }

    /// The test wakes a device: it is awake for a while and sends its own
    /// queryNextImageRequest.
    fn wake(self: &Arc<Self>, ieee: &str) {
        self.set_awake(ieee);
        let mut st = self.lock();
        let Some(idx) = find_idx(&st, ieee) else {
            return;
        };
        let dev_ieee = st.devices[idx].cfg.ieee.clone();
        st.devices[idx].wake.send_modify(|v| *v += 1);
        if st.schedules.contains_key(&dev_ieee) || st.in_progress.contains_key(&dev_ieee) {
            // The schedule waiter (or the running operation) takes this wake-up.
            return;
        }
        self.device_initiated_check(&mut st, idx);
    }

    /// A device's own queryNextImageRequest without a schedule: an automatic check, at most
    /// once per `update_check_interval`; otherwise silence.
    fn device_initiated_check(&self, st: &mut State, idx: usize) {
        let dev = &st.devices[idx];
        if !dev.cfg.supports_ota || self.cfg.disable_automatic_update_check {
            return;
        }
        let ieee = dev.cfg.ieee.clone();
        let now = Instant::now();
        if st
            .last_check
            .get(&ieee)
            .is_some_and(|t| now.duration_since(*t) < self.cfg.timings.update_check_interval)
        {
            return;
        }
        st.last_check.insert(ieee, now);
        self.publish_check(st, idx, false);
    }

    /// A check's result as the device's state: the index lookup, published as the device's
    /// versions (state, installed, latest, source, notes); returned for the check's answer.
    fn publish_check(
        &self,
        st: &mut State,
        idx: usize,
        downgrade: bool,
    ) -> (bool, Option<(IndexImage, ImageHeader)>) {
        let (available, meta) = self.index_lookup(st, idx, downgrade);
        let installed = st.devices[idx].installed;
        let latest = meta.as_ref().map_or(installed, |(_, h)| h.file_version);
        let state = if available {
            OtaState::Available
        } else {
            OtaState::Idle
        };
        let p = patch::versions(
            self.cfg.version,
            state,
            installed,
            latest,
            meta.as_ref().map(|(m, _)| m.url.as_str()),
            meta.as_ref().and_then(|(m, _)| m.release_notes.as_deref()),
        );
        self.publish_device(st, idx, &p);
        (available, meta)
    }

    fn spawn_schedule_waiter(self: &Arc<Self>, ieee: &str) {
        let me = Arc::clone(self);
        let ieee2 = ieee.to_string();
        // Subscribe now, so a wake-up right after the schedule response is not missed.
        let Some(wake_rx) = ({
            let st = self.lock();
            find_idx(&st, ieee).map(|i| st.devices[i].wake.subscribe())
        }) else {
            return;
        };
        let task = tokio::spawn(async move { me.schedule_waiter(ieee2, wake_rx).await });
        let mut st = self.lock();
        match st.schedules.get_mut(ieee) {
            Some(s) => s.waiter = Some(task.abort_handle()),
            None => task.abort(),
        }
    }

    /// Waits for the device's own requests and runs the scheduled update on them.
    async fn schedule_waiter(self: Arc<Self>, ieee: String, mut wake_rx: watch::Receiver<u64>) {
        let mut attempts = 0;
        loop {
            let (interval, behavior) = {
                let st = self.lock();
                let Some(idx) = find_idx(&st, &ieee) else {
                    return;
                };
                let d = &st.devices[idx];
                (d.cfg.sleepy.flatten(), d.cfg.behavior.clone())
            };
            match interval {
                Some(i) => {
                    let t = self.next_wake(i, Instant::now());
                    tokio::select! {
                        _ = sleep_until(t) => self.set_awake(&ieee),
                        _ = wake_rx.changed() => {}
                    }
                }
                None => {
                    if wake_rx.changed().await.is_err() {
                        return;
                    }
                }
            }
            if behavior == Behavior::NeverResponds {
                // It never talks to the coordinator.
                continue;
            }
            let (image, downgrade, abort, op_id) = {
                let mut st = self.lock();
                if st.in_progress.contains_key(&ieee) {
                    continue;
                }
                let Some(s) = st.schedules.get(&ieee) else {
                    return;
                };
                let (image, downgrade) = (s.image.clone(), s.downgrade);
                let abort = CancellationToken::new();
                let id = st.new_op_id();
                st.in_progress.insert(
                    ieee.clone(),
                    Op {
                        id,
                        kind: "update",
                        task: None,
                        abort: abort.clone(),
                        is_update: true,
                        applied: None,
                    },
                );
                (image, downgrade, abort, id)
            };
            let outcome = self.session(&ieee, image, downgrade, true, &abort).await;
            let mut st = self.lock();
            st.remove_op(&ieee, op_id);
            let Some(idx) = find_idx(&st, &ieee) else {
                return;
            };
            let version = self.cfg.version;
            match outcome {
                Outcome::Success { .. } => {
                    st.schedules.remove(&ieee);
                    let now = st.devices[idx].installed;
                    self.publish_device(&mut st, idx, &patch::finished(version, now));
                    return;
                }
                Outcome::NoImage => {
                    // "No OTA image currently available for 'X'. Unscheduled."
                    st.schedules.remove(&ieee);
                    let now = st.devices[idx].installed;
                    self.publish_device(&mut st, idx, &patch::finished(version, now));
                    return;
                }
                Outcome::Aborted | Outcome::Failed(_) => {
                    // "If a scheduled update fails, it will remain scheduled." An abort is a
                    // failure of the run too (herdsman throws "OTA … was aborted").
                    self.publish_device(&mut st, idx, &patch::state(OtaState::Scheduled));
                    attempts += 1;
                    if attempts >= self.cfg.scheduled_retry_limit {
                        if let Some(s) = st.schedules.get_mut(&ieee) {
                            s.waiter = None;
                        }
                        return;
                    }
                }
            }
        }
    }

    /// One OTA session (manual or scheduled): query, image, transfer, end, announce wait.
    async fn session(
        &self,
        ieee: &str,
        image: Option<ImageSource>,
        downgrade: bool,
        scheduled: bool,
        abort: &CancellationToken,
    ) -> Outcome {
        // genBasic reads before the update (they fail on a sleeping device).
        let from = self.read_basic(ieee);
        if !scheduled && let Err(cause) = self.query(ieee, abort).await {
            if abort.is_cancelled() {
                return Outcome::Aborted;
            }
            return Outcome::Failed(cause);
        }
        if abort.is_cancelled() {
            return Outcome::Aborted;
        }
        // Resolve the image: given url/hex, else the index.
        let file = match image {
            Some(ImageSource::Url(url)) => match io::fetch(&self.io, url.clone()).await {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::info!(%ieee, error = %e, "simulated zigbee2mqtt: image download failed");
                    None
                }
            },
            Some(hex @ ImageSource::Hex { .. }) => hex.decode_hex(),
            None => {
                let st = self.lock();
                find_idx(&st, ieee).and_then(|idx| {
                    let (available, meta) = self.index_lookup(&st, idx, downgrade);
                    available.then(|| meta.map(|(m, _)| m.bytes)).flatten()
                })
            }
        };
        let Some(file) = file else {
            return Outcome::NoImage;
        };
        let (header, dev) = {
            let st = self.lock();
            let Some(idx) = find_idx(&st, ieee) else {
                return Outcome::Failed("device gone".into());
            };
            let d = &st.devices[idx];
            let Ok(h) = image::parse(&file) else {
                return Outcome::NoImage;
            };
            let fits = (h.manufacturer_code == d.cfg.manufacturer_code
                || h.manufacturer_code == 0xFFFF)
                && (h.image_type == d.cfg.image_type || h.image_type == 0xFFFF);
            let newer = if downgrade {
                h.file_version < d.installed
            } else {
                h.file_version > d.installed
            };
            if !fits || !newer {
                return Outcome::NoImage;
            }
            (h, d.cfg.clone())
        };
        if let Err(cause) = self.transfer(ieee, &dev, &header, abort).await {
            return cause;
        }
        if let Behavior::EndStatus(status) = &dev.behavior {
            return Outcome::Failed(self.text.cause_end_status(ieee, status));
        }
        // upgradeEndResponse sent: final report, then wait for the device announce.
        let new_sw = (!header.header_string.is_empty())
            .then(|| header.header_string.clone())
            .or(from.software_build_id_string());
        {
            let mut st = self.lock();
            let Some(idx) = find_idx(&st, ieee) else {
                return Outcome::Failed("device gone".into());
            };
            if let Some(op) = st.in_progress.get_mut(ieee) {
                op.applied = Some((header.file_version, file.clone(), new_sw.clone()));
            }
            self.touch(&mut st, idx);
            self.publish_device(&mut st, idx, &patch::progress(100.0, 0.0));
        }
        if self.hold_point(ieee, 100.0, abort).await.is_err() {
            // An abort after the upgrade end changes nothing on the device.
        }
        let wait = dev
            .announce_after
            .map_or(self.cfg.timings.announce_wait, |a| {
                a.min(self.cfg.timings.announce_wait)
            });
        sleep(wait).await;
        let to = {
            let mut st = self.lock();
            let Some(idx) = find_idx(&st, ieee) else {
                return Outcome::Failed("device gone".into());
            };
            if let Some(op) = st.in_progress.get_mut(ieee) {
                op.applied = None;
            }
            install(&mut st.devices[idx], header.file_version, file, new_sw);
            self.touch(&mut st, idx);
            drop(st);
            self.read_basic(ieee)
        };
        Outcome::Success { from, to }
    }

    fn read_basic(&self, ieee: &str) -> VersionData {
        let st = self.lock();
        let Some(idx) = find_idx(&st, ieee) else {
            return VersionData::default();
        };
        let d = &st.devices[idx];
        let awake = d.cfg.sleepy.is_none() || d.awake_until.is_some_and(|t| Instant::now() < t);
        VersionData {
            file_version: Some(d.installed),
            software_build_id: awake
                .then(|| d.software_build_id.clone().map(Value::from))
                .flatten(),
            date_code: awake.then(|| d.cfg.date_code.clone()).flatten(),
        }
    }

    /// Waits at the test gate when the device is held at `percent` (or below).
    async fn hold_point(
        &self,
        ieee: &str,
        percent: f64,
        abort: &CancellationToken,
    ) -> Result<(), ()> {
        loop {
            // Subscribing under the lock marks the current release as seen, so a release after
            // this point is never missed.
            let mut rx = {
                let st = self.lock();
                let Some(idx) = find_idx(&st, ieee) else {
                    return Ok(());
                };
                let d = &st.devices[idx];
                match d.hold_at {
                    Some(h) if h <= percent => d.release.subscribe(),
                    _ => return Ok(()),
                }
            };
            // Cleared on every way out, including the task being aborted by a restart.
            let _holding = Holding::new(self, ieee);
            let released = tokio::select! {
                r = rx.changed() => r.is_ok(),
                _ = abort.cancelled() => return Err(()),
            };
            if !released {
                return Ok(());
            }
        }
    }

    fn set_holding(&self, ieee: &str, holding: bool) {
        let mut st = self.lock();
        if let Some(i) = find_idx(&st, ieee) {
            st.devices[i].holding = holding;
        }
        drop(st);
        self.bump();
    }

    /// The block transfer, reporting progress like herdsman's `OtaSession`.
    async fn transfer(
        &self,
        ieee: &str,
        dev: &SimDevice,
        header: &ImageHeader,
        abort: &CancellationToken,
    ) -> Result<(), Outcome> {
        let t = &self.cfg.timings;
        let total = header.total_image_size;
        let base = t.default_maximum_data_size.min(dev.max_data_size).max(1);
        let delay_ms = (t.image_block_response_delay.as_millis() as u64).max(1);
        let blocks = total.div_ceil(base);
        let offset_of = |b: u32| (u64::from(b) * u64::from(base)).min(u64::from(total)) as u32;
        let block_at = |p: f64| ((f64::from(blocks) * p / 100.0).floor() as u32).min(blocks);
        let stall = match dev.behavior {
            Behavior::StallAt(p) => Some(block_at(p)),
            _ => None,
        };
        let interval_ms = t.progress_interval.as_millis() as u64;
        let mut throttle = progress::ProgressThrottle::new(0, interval_ms);
        {
            let mut st = self.lock();
            if let Some(idx) = find_idx(&st, ieee) {
                self.touch(&mut st, idx);
                let est = progress::first_estimate_s(total, base, delay_ms);
                self.publish_device(&mut st, idx, &patch::progress(0.0, est));
            }
        }
        let aborted = || async {
            // The abort is answered at the device's next block request.
            sleep(Duration::from_millis(delay_ms)).await;
            Outcome::Aborted
        };
        let mut b: u32 = 0;
        let mut held_done = false;
        loop {
            let hold_block = {
                let st = self.lock();
                find_idx(&st, ieee)
                    .and_then(|i| st.devices[i].hold_at)
                    .filter(|h| *h < 100.0 && !held_done)
                    .map(block_at)
            };
            let next_report = throttle
                .next_due_ms()
                .div_ceil(delay_ms)
                .max(u64::from(b) + 1);
            let mut target = next_report.min(u64::from(blocks)) as u32;
            if let Some(s) = stall
                && s >= b
            {
                target = target.min(s);
            }
            if let Some(h) = hold_block
                && h >= b
            {
                target = target.min(h);
            }
            if target > b {
                let dur = Duration::from_millis(u64::from(target - b) * delay_ms);
                tokio::select! {
                    _ = sleep(dur) => {}
                    _ = abort.cancelled() => return Err(aborted().await),
                }
                b = target;
            }
            let elapsed_ms = u64::from(b) * delay_ms;
            if stall == Some(b) {
                tokio::select! {
                    _ = sleep(t.image_block_request_timeout) => {}
                    _ = abort.cancelled() => return Err(aborted().await),
                }
                let cause = self.text.cause_download_timeout(
                    ieee,
                    &dev.model,
                    t.image_block_request_timeout.as_millis() as u64,
                    dev.network_address,
                );
                return Err(Outcome::Failed(cause));
            }
            if hold_block == Some(b) {
                held_done = true;
                if self.hold_point(ieee, 99.99, abort).await.is_err() {
                    return Err(aborted().await);
                }
            }
            if b >= blocks {
                return Ok(());
            }
            let offset = offset_of(b);
            if throttle.poll(elapsed_ms, offset) {
                let mut st = self.lock();
                if let Some(idx) = find_idx(&st, ieee)
                    && let Some(rem) = progress::remaining_s(offset, total, elapsed_ms)
                {
                    self.touch(&mut st, idx);
                    let p = progress::percent(offset, total);
                    self.publish_device(&mut st, idx, &patch::progress(p, rem));
                }
            }
        }
    }

    // ----- snapshots -----

    pub(crate) fn snapshot(&self, id: &str) -> Option<DeviceSnapshot> {
        let st = self.lock();
        let idx = find_idx(&st, id)?;
        let d = &st.devices[idx];
        Some(DeviceSnapshot {
            ieee: d.cfg.ieee.clone(),
            friendly_name: d.cfg.friendly_name.clone(),
            installed_version: d.installed,
            software_build_id: d.software_build_id.clone(),
            received_images: d.received.clone(),
            scheduled: st.schedules.contains_key(&d.cfg.ieee),
            held: d.holding,
            in_progress: st.in_progress.get(&d.cfg.ieee).map(|o| o.kind),
            wakes: d.wakes,
            state: Value::Object(d.cache.map().clone()),
        })
    }

    pub(crate) fn ieees(&self) -> Vec<String> {
        self.lock()
            .devices
            .iter()
            .map(|d| d.cfg.ieee.clone())
            .collect()
    }

    pub(crate) fn is_online(&self) -> bool {
        self.lock().online
    }

    pub(crate) fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn topics(&self) -> &Topics {
        &self.topics
    }
}

/// Records a check or an update as the device's running operation; `spawn` starts it with its
/// op id.
fn start_op(
    st: &mut State,
    ieee: String,
    kind: &'static str,
    abort: CancellationToken,
    spawn: impl FnOnce(u64) -> tokio::task::JoinHandle<()>,
) {
    let id = st.new_op_id();
    let task = spawn(id);
    st.in_progress.insert(
        ieee,
        Op {
            id,
            kind,
            task: Some(task.abort_handle()),
            abort,
            is_update: kind == "update",
            applied: None,
        },
    );
}

/// Marks a device as waiting at its test gate for as long as it lives.
struct Holding<'a> {
    shared: &'a Shared,
    ieee: &'a str,
}

impl<'a> Holding<'a> {
    fn new(shared: &'a Shared, ieee: &'a str) -> Self {
        shared.set_holding(ieee, true);
        Self { shared, ieee }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.shared.set_holding(self.ieee, false);
    }
}

impl State {
    fn new_op_id(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    /// Removes the operation `id` of `ieee`, if it is still the one registered.
    fn remove_op(&mut self, ieee: &str, id: u64) {
        if self.in_progress.get(ieee).is_some_and(|o| o.id == id) {
            self.in_progress.remove(ieee);
        }
    }
}

fn install(dev: &mut Dev, version: u32, file: Vec<u8>, sw: Option<String>) {
    dev.installed = version;
    dev.received.push(file);
    if sw.is_some() {
        dev.software_build_id = sw;
    }
}

fn find_idx(st: &State, id: &str) -> Option<usize> {
    st.devices
        .iter()
        .position(|d| d.cfg.friendly_name == id || d.cfg.ieee.eq_ignore_ascii_case(id))
}

//! The MQTT side of one zigbee2mqtt network: connection, subscriptions, what zigbee2mqtt
//! publishes, and request/response correlation.
//!
//! What it does: drive rumqttc's event loop (reconnect after a pause, subscribe to `<base>/#`
//! again after every connect, since sessions are clean); keep the inventory from the retained
//! `bridge/devices`, `bridge/state`, `bridge/info`, each device's state and availability, and
//! publish it as `DeviceReport`s; publish requests with a fresh transaction and hand each
//! response to whoever waits for that transaction; broadcast device states and connection
//! changes to running jobs.
//! What it does not do: decide anything about a job (see `job` and the transport).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ota_devproto::z2m::devices::{BridgeDevice, BridgeInfo, DeviceType, parse_bridge_devices};
use ota_devproto::z2m::state::parse_availability;
use ota_devproto::z2m::{
    Correlator, DeviceState, ImageSource, OtaOp, OtaRequest, Response, StateCache, Topics,
    UpdateState, Z2mTopic, Z2mVersion,
};
use ota_domain::status::{ErrorCode, TaskError};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::sync::LockExt;
use crate::transport::{DeviceReport, PowerSource, Signal};

/// What running jobs hear about.
#[derive(Debug, Clone)]
pub(crate) enum NetEvent {
    /// A device's state changed (its `update` block as now cached).
    State {
        ieee: String,
        update: Option<UpdateState>,
        /// The message changed more than the `update` block (`last_seen`, `linkquality`, an
        /// attribute): the device itself talked. zigbee2mqtt's own OTA state messages (a
        /// schedule, an unschedule) change only the `update` block.
        talked: bool,
    },
    /// Connected and subscribed again (`generation` counts connections).
    Subscribed { generation: u64 },
    /// The connection to the broker dropped.
    Disconnected,
    /// `bridge/state` said online or offline.
    Bridge { online: bool },
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub info: BridgeDevice,
    pub cache: StateCache,
    pub state: DeviceState,
    pub available: Option<bool>,
    /// When the device itself last talked (see `NetEvent::State::talked`).
    pub heard: Option<tokio::time::Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct NetState {
    correlator: Option<Correlator>,
    waiters: HashMap<String, oneshot::Sender<Response>>,
    pub devices: BTreeMap<String, Entry>,
    /// `bridge/devices` arrived at least once: `devices` is the network's list, not a guess.
    pub devices_known: bool,
    names: HashMap<String, String>,
    early: HashMap<String, serde_json::Map<String, Value>>,
    pub bridge_online: Option<bool>,
    pub bridge_info: Option<BridgeInfo>,
    pub connected: bool,
    pub generation: u64,
}

/// The network, shared by the driver task, the jobs and the transport.
#[derive(Debug)]
pub(crate) struct Net {
    pub network: String,
    pub topics: Topics,
    client: AsyncClient,
    state: Mutex<NetState>,
    pub events: broadcast::Sender<NetEvent>,
    inventory: watch::Sender<Vec<DeviceReport>>,
}

/// A request on its way: the transaction and where its response arrives. Dropping it stops
/// waiting for the response (a late answer is then ignored).
#[derive(Debug)]
pub(crate) struct PendingRequest {
    pub transaction: String,
    pub rx: oneshot::Receiver<Response>,
    net: Arc<Net>,
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        self.net.forget(&self.transaction);
    }
}

const EARLY_STATES_MAX: usize = 4096;

impl Net {
    pub(crate) fn new(
        network: String,
        topics: Topics,
        client: AsyncClient,
        transaction_prefix: String,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let (inventory, _) = watch::channel(Vec::new());
        Arc::new(Self {
            network,
            topics,
            client,
            state: Mutex::new(NetState {
                correlator: Some(Correlator::new(transaction_prefix)),
                ..NetState::default()
            }),
            events,
            inventory,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.locked()
    }

    pub(crate) fn inventory(&self) -> watch::Receiver<Vec<DeviceReport>> {
        self.inventory.subscribe()
    }

    /// Drives the connection until `shutdown`.
    pub(crate) async fn drive(
        self: Arc<Self>,
        mut eventloop: EventLoop,
        reconnect_delay: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(network = %self.network, "connected to the MQTT broker");
                    if let Err(e) = self
                        .client
                        .try_subscribe(self.topics.all(), QoS::AtLeastOnce)
                    {
                        tracing::warn!(network = %self.network, error = %e, "subscribe failed");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let generation = {
                        let mut st = self.lock();
                        st.connected = true;
                        st.generation += 1;
                        st.generation
                    };
                    let _ = self.events.send(NetEvent::Subscribed { generation });
                    self.publish_inventory();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(&p.topic, &p.payload),
                Ok(_) => {}
                Err(e) => {
                    let was = std::mem::replace(&mut self.lock().connected, false);
                    if was {
                        tracing::warn!(network = %self.network, error = %e, "MQTT connection lost");
                        let _ = self.events.send(NetEvent::Disconnected);
                        self.publish_inventory();
                    } else {
                        tracing::debug!(network = %self.network, error = %e, "MQTT connect failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(reconnect_delay) => {}
                    }
                }
            }
        }
        let _ = self.client.try_disconnect();
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let Some(kind) = self.topics.parse(topic) else {
            return;
        };
        match kind {
            Z2mTopic::BridgeDevices => {
                if let Some(list) = parse_bridge_devices(payload) {
                    self.set_devices(list);
                }
            }
            Z2mTopic::BridgeState => {
                if let Some(online) = ota_devproto::z2m::devices::parse_bridge_state(payload) {
                    self.lock().bridge_online = Some(online);
                    let _ = self.events.send(NetEvent::Bridge { online });
                    self.publish_inventory();
                }
            }
            Z2mTopic::BridgeInfo => {
                if let Some(info) = BridgeInfo::parse(payload) {
                    self.lock().bridge_info = Some(info);
                }
            }
            Z2mTopic::OtaResponse(op) => {
                let Ok(resp) = Response::parse(payload) else {
                    return;
                };
                let mut st = self.lock();
                let matched = st.correlator.as_mut().and_then(|c| c.correlate(op, &resp));
                if let Some((tx, _)) = matched
                    && let Some(waiter) = st.waiters.remove(&tx)
                {
                    let _ = waiter.send(resp);
                }
            }
            Z2mTopic::Device(rest) => self.on_device_topic(rest, payload),
            Z2mTopic::OtaRequest(_) | Z2mTopic::BridgeOther(_) => {}
        }
    }

    fn on_device_topic(&self, rest: &str, payload: &[u8]) {
        let mut st = self.lock();
        if let Some(ieee) = st.names.get(rest).cloned() {
            let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(payload) else {
                return;
            };
            let (update, talked) = {
                let Some(e) = st.devices.get_mut(&ieee) else {
                    return;
                };
                let without_update = |m: &serde_json::Map<String, Value>| {
                    let mut m = m.clone();
                    m.remove("update");
                    m
                };
                let before = without_update(e.cache.map());
                e.cache.apply(&Value::Object(map));
                // The first state heard (at a start or reconnect) tells nothing new.
                let talked = !before.is_empty() && without_update(e.cache.map()) != before;
                if talked {
                    e.heard = Some(tokio::time::Instant::now());
                }
                e.state = DeviceState::from_map(e.cache.map().clone());
                (e.state.update.clone(), talked)
            };
            drop(st);
            let _ = self.events.send(NetEvent::State {
                ieee,
                update,
                talked,
            });
            self.publish_inventory();
            return;
        }
        if let Some(name) = rest.strip_suffix("/availability")
            && let Some(ieee) = st.names.get(name).cloned()
        {
            if let Some(e) = st.devices.get_mut(&ieee) {
                e.available = parse_availability(payload);
            }
            drop(st);
            self.publish_inventory();
            return;
        }
        // A state before `bridge/devices` told us the names: keep it for later.
        if st.early.len() < EARLY_STATES_MAX
            && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(payload)
        {
            st.early.insert(rest.to_string(), map);
        }
    }

    fn set_devices(&self, list: Vec<BridgeDevice>) {
        {
            let mut st = self.lock();
            st.devices_known = true;
            let mut old = std::mem::take(&mut st.devices);
            st.names.clear();
            for info in list {
                if info.device_type == DeviceType::Coordinator {
                    continue;
                }
                let ieee = info.ieee_address.clone();
                st.names.insert(info.friendly_name.clone(), ieee.clone());
                let entry = match old.remove(&ieee) {
                    Some(mut e) => {
                        e.info = info;
                        e
                    }
                    None => {
                        let mut cache = StateCache::new();
                        if let Some(map) = st.early.remove(&info.friendly_name) {
                            cache.apply(&Value::Object(map));
                        }
                        Entry {
                            state: DeviceState::from_map(cache.map().clone()),
                            cache,
                            info,
                            available: None,
                            heard: None,
                        }
                    }
                };
                st.devices.insert(ieee, entry);
            }
        }
        self.publish_inventory();
    }

    /// Rebuilds the inventory and publishes it when it changed.
    pub(crate) fn publish_inventory(&self) {
        let reports: Vec<DeviceReport> = {
            let st = self.lock();
            st.devices
                .keys()
                .filter_map(|ieee| report_of(&self.network, &st, ieee))
                .collect()
        };
        self.inventory.send_if_modified(|cur| {
            if *cur == reports {
                false
            } else {
                *cur = reports;
                true
            }
        });
    }

    /// The report of one device (by IEEE address or friendly name).
    pub(crate) fn report(&self, id: &str) -> Option<DeviceReport> {
        let st = self.lock();
        let ieee = resolve(&st, id)?;
        report_of(&self.network, &st, &ieee)
    }

    /// The IEEE address of a device known by IEEE address or friendly name.
    pub(crate) fn resolve(&self, id: &str) -> Option<String> {
        resolve(&self.lock(), id)
    }

    /// The API generation `bridge/info` announced, if any.
    pub(crate) fn api(&self) -> Option<(Z2mVersion, String)> {
        let st = self.lock();
        let info = st.bridge_info.as_ref()?;
        Some((info.api()?, info.version.clone().unwrap_or_default()))
    }

    /// Publishes a request for `ieee` with a fresh transaction.
    pub(crate) async fn request(
        self: &Arc<Self>,
        op: OtaOp,
        downgrade: bool,
        ieee: &str,
        image: Option<ImageSource>,
    ) -> Result<PendingRequest, TaskError> {
        let (tx, rx) = oneshot::channel();
        let transaction = {
            let mut st = self.lock();
            let t = st
                .correlator
                .as_mut()
                .map(|c| c.begin(op, ieee))
                .unwrap_or_default();
            st.waiters.insert(t.clone(), tx);
            t
        };
        let mut req = OtaRequest::new(ieee, transaction.clone());
        req.image = image;
        let topic = self.topics.request(op, downgrade);
        tracing::debug!(network = %self.network, %topic, %transaction, "zigbee2mqtt request");
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, req.to_payload())
            .await
        {
            self.forget(&transaction);
            return Err(TaskError::new(
                ErrorCode::SendFailed,
                format!("could not publish the request to the MQTT broker: {e}"),
            ));
        }
        Ok(PendingRequest {
            transaction,
            rx,
            net: Arc::clone(self),
        })
    }

    /// Stops waiting for a transaction.
    pub(crate) fn forget(&self, transaction: &str) {
        let mut st = self.lock();
        st.waiters.remove(transaction);
        if let Some(c) = st.correlator.as_mut() {
            c.forget(transaction);
        }
    }
}

fn resolve(st: &NetState, id: &str) -> Option<String> {
    if let Some(ieee) = st.names.get(id) {
        return Some(ieee.clone());
    }
    st.devices
        .keys()
        .find(|k| k.eq_ignore_ascii_case(id))
        .cloned()
}

fn report_of(network: &str, st: &NetState, ieee: &str) -> Option<DeviceReport> {
    let e = st.devices.get(ieee)?;
    let info = &e.info;
    let def = info.definition.as_ref();
    let update = e.state.update.as_ref();
    let installed = update.and_then(|u| u.installed_version);
    let power_source = if info.is_battery() {
        PowerSource::Battery
    } else if info.is_mains() {
        PowerSource::Mains
    } else {
        PowerSource::Unknown
    };
    Some(DeviceReport {
        local_id: ieee.to_string(),
        network: network.to_string(),
        name: info.friendly_name.clone(),
        model: def
            .map(|d| d.model.clone())
            .or_else(|| info.model_id.clone())
            .unwrap_or_default(),
        vendor: def
            .map(|d| d.vendor.clone())
            .or_else(|| info.manufacturer.clone())
            .unwrap_or_default(),
        manufacturer_code: info.manufacturer_code,
        image_type: None,
        chip: None,
        platform: None,
        current_version: installed.map(|v| v.to_string()),
        file_version: installed,
        software_build_id: info.software_build_id.clone(),
        date_code: info.date_code.clone(),
        hardware_version: None,
        power_source,
        battery_percent: e.state.battery.map(|b| b.round().clamp(0.0, 100.0) as u8),
        signal: e.state.linkquality.map(Signal::LinkQuality),
        reachable: st.connected
            && st.bridge_online != Some(false)
            && e.available != Some(false)
            && !info.disabled,
        supports_ota: info.supports_ota() || info.ota_cluster == Some(true),
        z2m_state: update.and_then(|u| u.state).map(|s| s.as_str().to_string()),
        last_seen_ms: e.state.last_seen_ms,
    })
}

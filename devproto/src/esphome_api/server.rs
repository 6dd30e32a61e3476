//! The device side of the native API as a sans-I/O machine, for simulators: what ESPHome's
//! `APIConnection` and its frame helpers do for the messages of [`super::message`].
//!
//! What it does: a plaintext device (`api:` without a key) or a Noise device (`api: encryption:
//! key:`): the server hello with node name and MAC, the handshake and its rejects ("Handshake MAC
//! failure" for a wrong key, "Bad indicator byte" for a plaintext client), `Hello` (which since
//! 2026.1 also authenticates), `DeviceInfo` only after `Hello`, `Ping`, `Disconnect`, the sensor
//! list (`ListEntities`: the configured sensors, then done) and `SubscribeStates` (reported as
//! [`ServerEvent::SubscribeStates`]: the driver sends the states with [`Server::send_state`],
//! since only it knows their values). Like the device, it closes the connection without a word on
//! anything malformed or out of order.
//! What it does not do: sockets, timers, entities other than sensors, or logs; messages it does
//! not know are reported as [`ServerEvent::Ignored`] and otherwise ignored.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};

use super::frame::{self, RawMessage};
use super::message::{
    API_VERSION, DeviceInfoResponse, HelloRequest, HelloResponse, ListEntitiesSensorResponse,
    Message, SensorStateResponse,
};
use super::noise::{
    self, HANDSHAKE_OK, HANDSHAKE_REJECT, Handshake, MAC_FAILURE_REASON, MAX_HANDSHAKE_LEN,
    ServerHello, Transport,
};
use crate::esphome::NoiseKey;
use crate::esphome::entropy::{Purpose, SeededRng};

/// What the device says about itself.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Node name (in the server hello, `HelloResponse` and `DeviceInfoResponse`).
    pub name: String,
    /// The MAC (server hello as 12 lowercase hex digits; device info as `AA:BB:…`).
    pub mac: [u8; 6],
    /// `HelloResponse.server_info`: the ESPHome version.
    pub server_info: String,
    /// `api: encryption: key:`; `None` for a plaintext API.
    pub noise_key: Option<NoiseKey>,
    /// The answer to `DeviceInfoRequest` (the machine fills in `name` and `mac_address`).
    pub device_info: DeviceInfoResponse,
    /// The sensors `ListEntitiesRequest` lists.
    pub sensors: Vec<ListEntitiesSensorResponse>,
}

/// Where the device's side of one connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Noise: waiting for the client hello frame.
    AwaitClientHello,
    /// Noise: waiting for handshake message 1.
    AwaitHandshake,
    /// Waiting for `HelloRequest` (nothing but hello, ping and disconnect is served).
    AwaitHello,
    /// Hello done: requests are served.
    Connected,
    /// The connection is over: flush what is queued and close the socket.
    Closed,
}

/// What happened on the connection, for the simulator's logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The client said hello.
    Hello(HelloRequest),
    /// A request the machine answered.
    Served(&'static str),
    /// The client subscribed to states: send every sensor's state now
    /// ([`Server::send_state`]).
    SubscribeStates,
    /// A message the machine does not know; ignored.
    Ignored(u16),
    /// The connection ended, and why.
    Closed(String),
}

/// The device machine for one connection. See [`ServerState`].
pub struct Server {
    config: ServerConfig,
    state: ServerState,
    rng: SeededRng,
    handshake: Option<Handshake>,
    session: Option<Transport>,
    rx: BytesMut,
    tx: VecDeque<Bytes>,
    events: VecDeque<ServerEvent>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.config.name)
            .field("state", &self.state)
            .field("encrypted", &self.config.noise_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The device's side of a freshly accepted connection. `entropy` seeds its Noise ephemeral
    /// key.
    pub fn new(config: ServerConfig, entropy: [u8; 32]) -> Self {
        let state = if config.noise_key.is_some() {
            ServerState::AwaitClientHello
        } else {
            ServerState::AwaitHello
        };
        Self {
            config,
            state,
            rng: SeededRng::new(entropy, Purpose::ApiServerNoise),
            handshake: None,
            session: None,
            rx: BytesMut::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Once true, write out what [`Self::poll_transmit`] still yields and close the socket.
    pub fn is_closed(&self) -> bool {
        self.state == ServerState::Closed
    }

    /// Sends a sensor's state (after [`ServerEvent::SubscribeStates`]); nothing unless
    /// connected.
    pub fn send_state(&mut self, state: SensorStateResponse) {
        if self.state == ServerState::Connected {
            self.queue(&Message::SensorStateResponse(state));
        }
    }

    /// The next bytes to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.tx.pop_front()
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Asks the client to disconnect (as a device does before it reboots).
    pub fn request_disconnect(&mut self) {
        if self.state == ServerState::Connected {
            self.queue(&Message::DisconnectRequest(Default::default()));
        }
    }

    /// Feeds bytes read from the client.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.state == ServerState::Closed {
            return;
        }
        self.rx.extend_from_slice(data);
        while self.state != ServerState::Closed && !self.rx.is_empty() {
            if !self.step() {
                break;
            }
        }
    }

    /// The client closed the connection.
    pub fn handle_eof(&mut self) {
        if self.state != ServerState::Closed {
            self.close("the client closed the connection");
        }
    }

    fn close(&mut self, why: impl Into<String>) {
        self.state = ServerState::Closed;
        self.handshake = None;
        self.session = None;
        self.events.push_back(ServerEvent::Closed(why.into()));
    }

    /// A handshake reject frame, then close.
    fn reject(&mut self, reason: &str) {
        let mut payload = Vec::with_capacity(1 + reason.len());
        payload.push(HANDSHAKE_REJECT);
        payload.extend_from_slice(reason.as_bytes());
        let mut out = BytesMut::new();
        frame::encode_noise_frame(&payload, &mut out);
        self.tx.push_back(out.freeze());
        self.close(format!("handshake rejected: {reason}"));
    }

    fn queue(&mut self, message: &Message) {
        let frame = noise::encode_message(self.session.as_mut(), message);
        self.tx.push_back(frame);
    }

    /// One step on the buffered input; false when more input is needed.
    fn step(&mut self) -> bool {
        let Some(key) = self.config.noise_key.clone() else {
            return self.step_plaintext();
        };
        let limit = match self.state {
            ServerState::AwaitClientHello | ServerState::AwaitHandshake => MAX_HANDSHAKE_LEN,
            _ => frame::MAX_MESSAGE_LEN,
        };
        let payload = match frame::decode_noise_frame(&mut self.rx, limit) {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(frame::FrameError::Indicator { .. }) => {
                if self.session.is_none() {
                    self.reject("Bad indicator byte");
                } else {
                    self.close("bad frame indicator");
                }
                return false;
            }
            Err(e) => {
                if self.session.is_none() {
                    self.reject("Bad handshake packet len");
                } else {
                    self.close(e.to_string());
                }
                return false;
            }
        };
        match self.state {
            ServerState::AwaitClientHello => {
                // The client hello's contents are reserved for flags; they bind the prologue.
                let prologue = noise::prologue(&payload);
                match Handshake::responder(&key, &prologue, self.rng.clone()) {
                    Ok(hs) => {
                        let hello = ServerHello::encode(&self.config.name, &self.config.mac);
                        let mut out = BytesMut::new();
                        frame::encode_noise_frame(&hello, &mut out);
                        self.tx.push_back(out.freeze());
                        self.handshake = Some(hs);
                        self.state = ServerState::AwaitHandshake;
                    }
                    Err(e) => self.close(format!("handshake setup failed: {e}")),
                }
            }
            ServerState::AwaitHandshake => self.on_handshake(&payload),
            _ => {
                let Some(session) = self.session.as_mut() else {
                    self.close("no session");
                    return false;
                };
                let Ok(plain) = session.open(&payload) else {
                    self.close("could not decrypt a frame");
                    return false;
                };
                match frame::parse_noise_data(&plain) {
                    Ok(raw) => self.on_message(raw),
                    Err(e) => self.close(e.to_string()),
                }
            }
        }
        true
    }

    fn step_plaintext(&mut self) -> bool {
        match frame::decode_plaintext(&mut self.rx) {
            Ok(Some(raw)) => {
                self.on_message(raw);
                true
            }
            Ok(None) => false,
            Err(frame::FrameError::Indicator { .. }) => {
                // "We must send at least 3 bytes": a plaintext marker and a hint.
                self.tx
                    .push_back(Bytes::from_static(b"\x00Bad indicator byte"));
                self.close("bad indicator byte (an encrypting client?)");
                false
            }
            Err(e) => {
                self.close(e.to_string());
                false
            }
        }
    }

    fn on_handshake(&mut self, payload: &[u8]) {
        let Some((&status, body)) = payload.split_first() else {
            self.reject("Empty handshake message");
            return;
        };
        if status != HANDSHAKE_OK {
            self.reject("Bad handshake error byte");
            return;
        }
        let Some(mut hs) = self.handshake.take() else {
            self.close("no handshake state");
            return;
        };
        match hs.read(body) {
            Ok(()) => {}
            Err(snow::Error::Decrypt) => {
                self.reject(MAC_FAILURE_REASON);
                return;
            }
            Err(_) => {
                self.reject("Handshake error");
                return;
            }
        }
        let answered = hs
            .write()
            .and_then(|msg2| hs.into_transport().map(|s| (msg2, s)));
        match answered {
            Ok((msg2, session)) => {
                let mut payload = Vec::with_capacity(msg2.len() + 1);
                payload.push(HANDSHAKE_OK);
                payload.extend_from_slice(&msg2);
                let mut out = BytesMut::new();
                frame::encode_noise_frame(&payload, &mut out);
                self.tx.push_back(out.freeze());
                self.session = Some(session);
                self.state = ServerState::AwaitHello;
            }
            Err(e) => self.close(format!("handshake failed: {e}")),
        }
    }

    fn device_info(&self) -> DeviceInfoResponse {
        let m = &self.config.mac;
        DeviceInfoResponse {
            name: self.config.name.clone(),
            mac_address: format!(
                "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            api_encryption_supported: self.config.noise_key.is_some()
                || self.config.device_info.api_encryption_supported,
            ..self.config.device_info.clone()
        }
    }

    fn on_message(&mut self, raw: RawMessage) {
        let message = match Message::decode(raw.msg_type, &raw.payload) {
            Ok(m) => m,
            Err(e) => {
                self.close(format!("undecodable {}: {e}", raw.msg_type));
                return;
            }
        };
        match (self.state, message) {
            (_, Message::HelloRequest(hello)) => {
                self.queue(&Message::HelloResponse(HelloResponse {
                    api_version_major: API_VERSION.0,
                    api_version_minor: API_VERSION.1,
                    server_info: self.config.server_info.clone(),
                    name: self.config.name.clone(),
                }));
                self.events.push_back(ServerEvent::Hello(hello));
                self.state = ServerState::Connected;
            }
            (_, Message::PingRequest) => {
                self.queue(&Message::PingResponse);
                self.events.push_back(ServerEvent::Served("PingRequest"));
            }
            (_, Message::DisconnectRequest(_)) => {
                self.queue(&Message::DisconnectResponse);
                self.close("the client asked to disconnect");
            }
            (_, Message::DisconnectResponse) => self.close("the client acknowledged a disconnect"),
            (_, Message::PingResponse) => {}
            (ServerState::Connected, Message::DeviceInfoRequest) => {
                let info = self.device_info();
                self.queue(&Message::DeviceInfoResponse(Box::new(info)));
                self.events
                    .push_back(ServerEvent::Served("DeviceInfoRequest"));
            }
            (ServerState::Connected, Message::ListEntitiesRequest) => {
                for sensor in self.config.sensors.clone() {
                    self.queue(&Message::ListEntitiesSensorResponse(Box::new(sensor)));
                }
                self.queue(&Message::ListEntitiesDoneResponse);
                self.events
                    .push_back(ServerEvent::Served("ListEntitiesRequest"));
            }
            (ServerState::Connected, Message::SubscribeStatesRequest) => {
                self.events.push_back(ServerEvent::SubscribeStates);
            }
            (ServerState::Connected, other) => {
                self.events
                    .push_back(ServerEvent::Ignored(other.msg_type()));
            }
            (_, other) => self.close(format!("{} before the hello", other.name())),
        }
    }
}

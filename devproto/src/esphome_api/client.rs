//! The client side of the native API as a sans-I/O machine: connect (plaintext or Noise),
//! `Hello`, then requests such as `DeviceInfo`, then `Disconnect`.
//!
//! What it does: frame, encrypt and decrypt; check the server hello and the API version; answer
//! the device's pings and disconnect requests by itself; report everything else as events.
//! What it does not do: sockets, timers or randomness (32 bytes of entropy go in at
//! construction); the driver applies one deadline to the whole exchange and calls
//! [`Client::handle_timeout`] when it expires.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::frame::{self, FrameError, RawMessage};
use super::message::{API_VERSION, DisconnectRequest, HelloRequest, HelloResponse, Message};
use super::noise::{self, HANDSHAKE_OK, Handshake, MAC_FAILURE_REASON, ServerHello, Transport};
use crate::esphome::NoiseKey;
use crate::esphome::entropy::{Purpose, SeededRng};

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Sent in the `HelloRequest` ("ota-agent 0.1.0"); the device logs it.
    pub client_info: String,
    /// The device's `api: encryption: key:`; `None` for a plaintext API.
    pub noise_key: Option<NoiseKey>,
}

/// Where the client is. Each `Await…` state waits for the device.
///
/// ```text
///  new(): plaintext: Hello queued ─────────────────────────────────┐
///         noise: client hello + handshake message 1 queued         │
///                │                                                 │
///                ▼                                                 │
///         AwaitServerHello ──server hello──▶ AwaitHandshake        │
///                                              │ message 2:        │
///                                              │ Hello queued      │
///                                              ▼                   ▼
///                                        AwaitHelloResponse ◀──────┘
///                                              │ HelloResponse
///                                              ▼
///                                            Ready ──disconnect()──▶ AwaitDisconnectResponse
///                                              │ DisconnectRequest        │ response or close
///                                              ▼                          ▼
///                                           Closed ◀──────────────────────┘
///  any state ──bad frame, reject, close, timeout──▶ Failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// Noise: waiting for the server hello.
    AwaitServerHello,
    /// Noise: waiting for the device's handshake message.
    AwaitHandshake,
    /// Waiting for `HelloResponse`.
    AwaitHelloResponse,
    /// Connected: requests may be sent.
    Ready,
    /// `DisconnectRequest` sent.
    AwaitDisconnectResponse,
    /// The connection ended in order.
    Closed,
    /// The connection failed; the error was returned.
    Failed,
}

impl fmt::Display for ClientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AwaitServerHello => "the encrypted server hello",
            Self::AwaitHandshake => "the encrypted handshake",
            Self::AwaitHelloResponse => "the hello response",
            Self::Ready => "a response",
            Self::AwaitDisconnectResponse => "the disconnect response",
            Self::Closed => "nothing (closed)",
            Self::Failed => "nothing (failed)",
        })
    }
}

/// Something the driver may act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Noise: the device introduced itself.
    ServerHello(ServerHello),
    /// The connection is ready; the device answered the hello.
    Connected(HelloResponse),
    /// A message from the device the machine does not answer by itself.
    Message(Message),
    /// The connection ended in order (either side asked).
    Disconnected,
}

/// Why a connection failed. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    /// A plaintext client met a device that requires encryption.
    #[error("the device requires an encrypted API connection: configure its api encryption key")]
    EncryptionRequired,
    /// An encrypting client met a plaintext-only device.
    #[error(
        "the device's API is not encrypted (plaintext only), but an api encryption key is \
         configured for it: remove the key, or add `api: encryption:` to the device"
    )]
    DevicePlaintextOnly,
    /// The device rejected the handshake with its MAC-failure reason.
    #[error("the device rejected the encrypted handshake: wrong api encryption key")]
    WrongKey,
    /// The device rejected the handshake for another reason.
    #[error("the device rejected the encrypted handshake: {0}")]
    HandshakeRejected(String),
    /// The handshake failed on our side (the device's message did not verify).
    #[error("encrypted handshake failed: {0}")]
    Handshake(String),
    /// The device chose a protocol other than Noise NNpsk0.
    #[error("the device chose unknown encryption protocol 0x{0:02X}")]
    UnknownProtocol(u8),
    /// A frame from the device could not be decrypted.
    #[error("could not decrypt a message from the device")]
    Decrypt,
    /// Bytes from the device are not a frame.
    #[error("bad frame from the device: {0}")]
    Frame(#[from] FrameError),
    /// A message from the device could not be decoded.
    #[error("bad message from the device: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The device speaks another API major version.
    #[error("the device speaks API version {major}.{minor}; this client speaks 1.x")]
    ApiVersion {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
    },
    /// Something out of order (a request before the hello, an answer nobody asked for).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The device closed the connection.
    #[error("the device closed the connection while we waited for {waiting}")]
    ConnectionClosed {
        /// What the client waited for.
        waiting: ClientState,
    },
    /// The device asked to disconnect before the connection was set up.
    #[error("the device refused the connection (DisconnectRequest, reason {reason})")]
    Refused {
        /// The device's reason code.
        reason: u32,
    },
    /// The driver's deadline expired.
    #[error("no answer from the device while waiting for {waiting}")]
    Timeout {
        /// What the client waited for.
        waiting: ClientState,
    },
    /// The caller sent a request when the connection was not ready.
    #[error("the connection is not ready for requests (it is waiting for {0})")]
    NotReady(ClientState),
}

/// The client machine. See [`ClientState`] for its states.
pub struct Client {
    config: ClientConfig,
    state: ClientState,
    handshake: Option<Handshake>,
    session: Option<Transport>,
    rx: BytesMut,
    tx: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
    error: Option<ApiError>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state)
            .field("encrypted", &self.config.noise_key.is_some())
            .field("buffered", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for one connection; the first bytes to send are queued. `entropy` must be 32
    /// bytes of OS randomness (fixed bytes in tests give byte-exact transcripts).
    pub fn new(config: ClientConfig, entropy: [u8; 32]) -> Self {
        let mut c = Self {
            config,
            state: ClientState::AwaitHelloResponse,
            handshake: None,
            session: None,
            rx: BytesMut::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            error: None,
        };
        match c.config.noise_key.clone() {
            None => c.queue_hello(),
            Some(key) => {
                let rng = SeededRng::new(entropy, Purpose::ApiClientNoise);
                let started = Handshake::initiator(&key, &noise::prologue(&[]), rng)
                    .and_then(|mut hs| hs.write().map(|m| (hs, m)));
                match started {
                    Ok((hs, msg1)) => {
                        let mut out = BytesMut::new();
                        frame::encode_noise_frame(&[], &mut out);
                        let mut payload = Vec::with_capacity(msg1.len() + 1);
                        payload.push(HANDSHAKE_OK);
                        payload.extend_from_slice(&msg1);
                        frame::encode_noise_frame(&payload, &mut out);
                        c.tx.push_back(out.freeze());
                        c.handshake = Some(hs);
                        c.state = ClientState::AwaitServerHello;
                    }
                    Err(e) => c.fail(ApiError::Handshake(e.to_string())),
                }
            }
        }
        c
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether requests may be sent.
    pub fn is_ready(&self) -> bool {
        self.state == ClientState::Ready
    }

    /// The error the connection failed with, if it did.
    pub fn error(&self) -> Option<&ApiError> {
        self.error.as_ref()
    }

    /// The next bytes to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.tx.pop_front()
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues a request. Only once [`ClientState::Ready`].
    pub fn send(&mut self, message: &Message) -> Result<(), ApiError> {
        if self.state != ClientState::Ready {
            return Err(ApiError::NotReady(self.state));
        }
        self.queue(message);
        Ok(())
    }

    /// Asks the device to close the connection (the polite end of a session).
    pub fn disconnect(&mut self) {
        if self.state == ClientState::Ready {
            self.queue(&Message::DisconnectRequest(DisconnectRequest::default()));
            self.state = ClientState::AwaitDisconnectResponse;
        }
    }

    /// Feeds bytes read from the device. An error ends the connection (the same error is
    /// returned on every later call); close the socket.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ApiError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state == ClientState::Closed {
            return Ok(());
        }
        self.rx.extend_from_slice(data);
        let r = self.process();
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }

    /// The device closed the connection: fine after a disconnect, an error before.
    pub fn handle_eof(&mut self) -> Result<(), ApiError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.state {
            ClientState::Closed => Ok(()),
            ClientState::AwaitDisconnectResponse => {
                self.state = ClientState::Closed;
                self.events.push_back(ClientEvent::Disconnected);
                Ok(())
            }
            waiting => {
                let e = ApiError::ConnectionClosed { waiting };
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// The driver's deadline expired.
    pub fn handle_timeout(&mut self) -> Result<(), ApiError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state == ClientState::Closed {
            return Ok(());
        }
        let e = ApiError::Timeout {
            waiting: self.state,
        };
        self.fail(e.clone());
        Err(e)
    }

    fn fail(&mut self, e: ApiError) {
        self.error = Some(e);
        self.state = ClientState::Failed;
        self.tx.clear();
        self.handshake = None;
        self.session = None;
    }

    fn queue_hello(&mut self) {
        self.queue(&Message::HelloRequest(HelloRequest {
            client_info: self.config.client_info.clone(),
            api_version_major: API_VERSION.0,
            api_version_minor: API_VERSION.1,
        }));
        self.state = ClientState::AwaitHelloResponse;
    }

    fn queue(&mut self, message: &Message) {
        let frame = noise::encode_message(self.session.as_mut(), message);
        self.tx.push_back(frame);
    }

    fn process(&mut self) -> Result<(), ApiError> {
        loop {
            if matches!(self.state, ClientState::Closed | ClientState::Failed) {
                return Ok(());
            }
            let Some(first) = self.rx.first().copied() else {
                return Ok(());
            };
            if self.config.noise_key.is_none() {
                if first == frame::NOISE_INDICATOR {
                    return Err(ApiError::EncryptionRequired);
                }
                match frame::decode_plaintext(&mut self.rx)? {
                    Some(raw) => self.on_message(raw)?,
                    None => return Ok(()),
                }
                continue;
            }
            if first == frame::PLAINTEXT_INDICATOR {
                return Err(ApiError::DevicePlaintextOnly);
            }
            let Some(payload) = frame::decode_noise_frame(&mut self.rx, frame::MAX_MESSAGE_LEN)?
            else {
                return Ok(());
            };
            match self.state {
                ClientState::AwaitServerHello => self.on_server_hello(&payload)?,
                ClientState::AwaitHandshake => self.on_handshake(&payload)?,
                _ => {
                    let session = self.session.as_mut().ok_or_else(|| {
                        ApiError::Protocol("an encrypted frame before the handshake".into())
                    })?;
                    let plain = session.open(&payload).map_err(|_| ApiError::Decrypt)?;
                    let raw = frame::parse_noise_data(&plain)?;
                    self.on_message(raw)?;
                }
            }
        }
    }

    fn on_server_hello(&mut self, payload: &[u8]) -> Result<(), ApiError> {
        let hello = ServerHello::parse(payload)
            .ok_or_else(|| ApiError::Protocol("empty server hello".into()))?;
        if hello.protocol != noise::CHOSEN_PROTOCOL {
            return Err(ApiError::UnknownProtocol(hello.protocol));
        }
        self.events.push_back(ClientEvent::ServerHello(hello));
        self.state = ClientState::AwaitHandshake;
        Ok(())
    }

    fn on_handshake(&mut self, payload: &[u8]) -> Result<(), ApiError> {
        let Some((&status, body)) = payload.split_first() else {
            return Err(ApiError::Protocol("empty handshake frame".into()));
        };
        if status != HANDSHAKE_OK {
            let reason = String::from_utf8_lossy(body).into_owned();
            return Err(if reason == MAC_FAILURE_REASON {
                ApiError::WrongKey
            } else {
                ApiError::HandshakeRejected(reason)
            });
        }
        let mut hs = self
            .handshake
            .take()
            .ok_or_else(|| ApiError::Protocol("a second handshake message".into()))?;
        hs.read(body).map_err(|e| {
            ApiError::Handshake(format!("the device's message did not verify ({e})"))
        })?;
        self.session = Some(
            hs.into_transport()
                .map_err(|e| ApiError::Handshake(e.to_string()))?,
        );
        self.queue_hello();
        Ok(())
    }

    fn on_message(&mut self, raw: RawMessage) -> Result<(), ApiError> {
        let message = Message::decode(raw.msg_type, &raw.payload)?;
        match (self.state, message) {
            (ClientState::AwaitHelloResponse, Message::HelloResponse(hello)) => {
                if hello.api_version_major != 1 {
                    return Err(ApiError::ApiVersion {
                        major: hello.api_version_major,
                        minor: hello.api_version_minor,
                    });
                }
                self.state = ClientState::Ready;
                self.events.push_back(ClientEvent::Connected(hello));
            }
            (ClientState::AwaitHelloResponse, Message::DisconnectRequest(d)) => {
                return Err(ApiError::Refused { reason: d.reason });
            }
            (ClientState::AwaitHelloResponse, Message::PingRequest) => {
                self.queue(&Message::PingResponse);
            }
            (ClientState::AwaitHelloResponse, other) => {
                return Err(ApiError::Protocol(format!(
                    "{} before the hello response",
                    other.name()
                )));
            }
            (ClientState::Ready, Message::PingRequest) => self.queue(&Message::PingResponse),
            (
                ClientState::Ready | ClientState::AwaitDisconnectResponse,
                Message::DisconnectRequest(_),
            ) => {
                self.queue(&Message::DisconnectResponse);
                self.state = ClientState::Closed;
                self.events.push_back(ClientEvent::Disconnected);
            }
            (ClientState::AwaitDisconnectResponse, Message::DisconnectResponse) => {
                self.state = ClientState::Closed;
                self.events.push_back(ClientEvent::Disconnected);
            }
            (ClientState::AwaitDisconnectResponse, _) => {}
            (_, message) => self.events.push_back(ClientEvent::Message(message)),
        }
        Ok(())
    }
}

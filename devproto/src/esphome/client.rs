//! The uploader's side of ESPHome native OTA as a sans-I/O state machine: what ESPHome's own
//! `espota2.py` (2026.10) does on the wire, for devices from 2021 to 2026.10.
//!
//! What it does: magic; OTA versions 1 and 2; feature negotiation (legacy `40`/`46`, extended
//! `48 SS`); SHA256 and legacy MD5 challenges; Noise encryption with a fail-closed policy; gzip
//! and 4 KiB-window deflate; size, MD5, 8 KiB blocks and chunk acks; the final `00`.
//! What it does not do: sockets, timers, retries or randomness: see the module documentation
//! of [`super`] for the driver loop. Feeding it bytes may compress the image once (a CPU-bound
//! step of some tens of milliseconds per MiB at level 9).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};

use super::auth::AuthScheme;
use super::compress;
use super::entropy::{Purpose, SeededRng};
use super::error::{ClientError, ErrorCode};
use super::noise::{self, HANDSHAKE_OK, Handshake, MAC_FAILURE_REASON, Transport};
use super::secret::{NoiseKey, Password};
use super::wire::{
    BLOCK_SIZE, CLIENT_DATA_TIMEOUT, CLIENT_HANDSHAKE_TIMEOUT, Compression, MAGIC,
    NOISE_MAX_PLAINTEXT, OtaType, OtaVersion, client_feature, response, server_flag,
};

/// What the uploader knows and may do.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The OTA password of the *running* firmware, if it has one.
    pub password: Option<Password>,
    /// The Noise key. With a key, the upload is encrypted, or refused when the device does not
    /// offer encryption (unless `allow_plaintext`).
    pub noise_key: Option<NoiseKey>,
    /// With a key configured: upload in plaintext to a device that does not offer encryption
    /// (ESPHome's `allow_plaintext_upload`, for the one install that migrates a device).
    pub allow_plaintext: bool,
    /// Offer gzip and deflate (ESPHome always does, and always compresses when the device
    /// accepts). Off: the image goes as is.
    pub compression: bool,
    /// What the upload replaces; anything but [`OtaType::App`] needs the extended protocol and
    /// partition access on the device.
    pub ota_type: OtaType,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            password: None,
            noise_key: None,
            allow_plaintext: false,
            compression: true,
            ota_type: OtaType::App,
        }
    }
}

/// Where the uploader is in the exchange. The machine moves along this diagram; every state
/// named `Await…` waits for the device.
///
/// ```text
///  new(): magic queued
///       │
///       ▼
///  AwaitVersion ──00 VV──▶ AwaitFeatureAck ──40 / 46 / other──────────────────┐
///                               │ 48                                          │
///                               ▼                                             │
///                          AwaitFeatureFlags ──SS──┬──────────────────────────┤
///                                                  │ key, SS offers Noise:    │
///                                                  │ [00 ‖ msg1] sent         │
///                                                  ▼                          ▼
///                                  NoiseHandshake ──[00 ‖ msg2]──▶ AwaitAuthRequest
///                                                                   │ 01/02     │ 41
///                                                                   ▼           │
///                                                               AwaitNonce      │
///                                                                   │ nonce:    │
///                                                                   │ cnonce,   │
///                                                                   │ response  │
///                                                                   ▼           │
///                                                             AwaitAuthResult   │
///                                                                   │ 41        │
///       ┌───────────────────────────────────────────────────────────┴───────────┘
///       │ [type] size [inflated size] sent
///       ▼
///  AwaitPrepare ──42: MD5 sent──▶ AwaitMd5Ack ──43──▶ Uploading ◀──47── AwaitChunkAck
///                                                       │   └──block (v2)──▶┘   │
///                                         last block (v1)│          last ack (v2)│
///                                                       ▼                        │
///                                                 AwaitReceiveOk ◀───────────────┘
///                                                       │ 44
///                                                       ▼
///                                                 AwaitUpdateEnd ──45: 00 sent──▶ Done
///
///  any state ──error byte, unexpected byte, close, timeout, policy──▶ Failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// Waiting for `00 VV` after the magic.
    AwaitVersion,
    /// Waiting for the feature ack (`40`, `46` or `48`).
    AwaitFeatureAck,
    /// Waiting for the server flag byte after `48`.
    AwaitFeatureFlags,
    /// Waiting for the device's Noise handshake frame.
    NoiseHandshake,
    /// Waiting for `41` (no password) or a challenge (`01`, `02`).
    AwaitAuthRequest,
    /// Waiting for the challenge's nonce.
    AwaitNonce,
    /// Waiting for `41` after the challenge response.
    AwaitAuthResult,
    /// Waiting for `42` after the size.
    AwaitPrepare,
    /// Waiting for `43` after the MD5.
    AwaitMd5Ack,
    /// Image blocks to send: call `poll_transmit`; nothing is expected from the device.
    Uploading,
    /// Waiting for the `47` of the block just sent (OTA version 2).
    AwaitChunkAck,
    /// Waiting for `44` after the last image byte.
    AwaitReceiveOk,
    /// Waiting for `45`: the device verifies and commits.
    AwaitUpdateEnd,
    /// The device committed the update; the final `00` is queued. Flush it and close.
    Done,
    /// The upload failed; the error was returned. Close the connection.
    Failed,
}

impl ClientState {
    /// Whether the machine waits for bytes from the device in this state.
    pub fn is_waiting(self) -> bool {
        !matches!(self, Self::Uploading | Self::Done | Self::Failed)
    }

    /// How long ESPHome's uploader waits for the device in this state: 20 s until
    /// authentication is done, then 160 s per read. `None` when nothing is awaited.
    pub fn timeout(self) -> Option<Duration> {
        match self {
            Self::AwaitVersion
            | Self::AwaitFeatureAck
            | Self::AwaitFeatureFlags
            | Self::NoiseHandshake
            | Self::AwaitAuthRequest
            | Self::AwaitNonce
            | Self::AwaitAuthResult => Some(CLIENT_HANDSHAKE_TIMEOUT),
            Self::AwaitPrepare
            | Self::AwaitMd5Ack
            | Self::AwaitChunkAck
            | Self::AwaitReceiveOk
            | Self::AwaitUpdateEnd => Some(CLIENT_DATA_TIMEOUT),
            Self::Uploading | Self::Done | Self::Failed => None,
        }
    }
}

impl fmt::Display for ClientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AwaitVersion => "the OTA version",
            Self::AwaitFeatureAck => "the feature acknowledgement",
            Self::AwaitFeatureFlags => "the feature flags",
            Self::NoiseHandshake => "the encrypted handshake",
            Self::AwaitAuthRequest => "the authentication request",
            Self::AwaitNonce => "the authentication nonce",
            Self::AwaitAuthResult => "the authentication result",
            Self::AwaitPrepare => "the update prepare result",
            Self::AwaitMd5Ack => "the checksum result",
            Self::Uploading => "the upload",
            Self::AwaitChunkAck => "a chunk acknowledgement",
            Self::AwaitReceiveOk => "the receive result",
            Self::AwaitUpdateEnd => "the update end result",
            Self::Done => "nothing (done)",
            Self::Failed => "nothing (failed)",
        })
    }
}

/// A coarse view of the upload for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Magic, version, features, Noise.
    Handshake,
    /// Answering the device's challenge.
    Authenticating,
    /// Size and MD5; the device prepares flash.
    Preparing,
    /// Image bytes on the way.
    Uploading,
    /// All bytes sent; the device verifies and commits.
    Finishing,
    /// Committed.
    Done,
}

/// What was agreed with the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The device's OTA version.
    pub version: OtaVersion,
    /// The device answered with the extended ack (`48 SS`).
    pub extended: bool,
    /// The server flags (`SS`), or the flags a legacy ack stands for.
    pub server_flags: u8,
    /// How the image travels.
    pub compression: Compression,
    /// The session is Noise-encrypted.
    pub encrypted: bool,
    /// Bytes of image data on the wire (after compression).
    pub wire_size: u64,
    /// Bytes of the image itself.
    pub image_size: u64,
}

/// Bytes of the upload, on the wire (after compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Handed to the driver to send.
    pub sent: u64,
    /// Confirmed by the device (chunk acks; on version 1 only at the end).
    pub acked: u64,
    /// In total.
    pub total: u64,
}

/// Something the driver may report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Features are agreed; the upload size is known.
    Negotiated(Negotiated),
    /// A new phase began.
    Phase(Phase),
    /// Bytes were sent or acknowledged.
    Progress(Progress),
    /// The last image block was handed out: from now on the device may commit the update at
    /// any moment, so a failure must not be retried blindly.
    LastChunkSent,
    /// The device answered `45`: verified and committed; it reboots next.
    Completed,
}

/// The uploader machine. See [`ClientState`] for its states and [`super`] for the driver loop.
pub struct Client {
    config: ClientConfig,
    image: Bytes,
    auth_rng: SeededRng,
    noise_rng: SeededRng,
    state: ClientState,
    phase: Phase,
    version: OtaVersion,
    client_features: u8,
    server_flags: u8,
    extended: bool,
    compression: Compression,
    upload: Bytes,
    md5: String,
    handshake: Option<Handshake>,
    transport: Option<Transport>,
    raw: BytesMut,
    plain: BytesMut,
    tx: VecDeque<Bytes>,
    events: VecDeque<Event>,
    sent: usize,
    acked: usize,
    last_chunk_sent: bool,
    auth: Option<AuthScheme>,
    error: Option<ClientError>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("image_len", &self.image.len())
            .field("compression", &self.compression)
            .field("encrypted", &self.transport.is_some())
            .field("sent", &self.sent)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A new upload of `image`. `entropy` must be 32 bytes from the OS's random source (it
    /// seeds the cnonce and the Noise ephemeral key). The magic is queued at once.
    pub fn new(
        config: ClientConfig,
        image: impl Into<Bytes>,
        entropy: [u8; 32],
    ) -> Result<Self, ClientError> {
        let image = image.into();
        if image.is_empty() {
            return Err(ClientError::InvalidImage("the image is empty"));
        }
        if u32::try_from(image.len()).is_err() {
            return Err(ClientError::InvalidImage(
                "the image is larger than the 32-bit size field",
            ));
        }
        let mut client_features = client_feature::SHA256_AUTH | client_feature::EXTENDED;
        if config.compression {
            client_features |= client_feature::COMPRESSION | client_feature::DEFLATE;
        }
        if config.noise_key.is_some() {
            client_features |= client_feature::NOISE;
        }
        let mut tx = VecDeque::new();
        tx.push_back(Bytes::from_static(&MAGIC));
        Ok(Self {
            config,
            upload: image.clone(),
            image,
            auth_rng: SeededRng::new(entropy, Purpose::OtaClientCnonce),
            noise_rng: SeededRng::new(entropy, Purpose::OtaClientNoise),
            state: ClientState::AwaitVersion,
            phase: Phase::Handshake,
            version: OtaVersion::V2,
            client_features,
            server_flags: 0,
            extended: false,
            compression: Compression::None,
            md5: String::new(),
            handshake: None,
            transport: None,
            raw: BytesMut::new(),
            plain: BytesMut::new(),
            tx,
            events: VecDeque::new(),
            sent: 0,
            acked: 0,
            last_chunk_sent: false,
            auth: None,
            error: None,
        })
    }

    /// The current state; [`ClientState::timeout`] says how long to wait for the device.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Bytes sent and acknowledged so far.
    pub fn progress(&self) -> Progress {
        Progress {
            sent: self.sent as u64,
            acked: self.acked as u64,
            total: self.upload.len() as u64,
        }
    }

    /// The last image block was handed out: never retry this upload blindly.
    pub fn may_have_committed(&self) -> bool {
        self.last_chunk_sent
    }

    /// Feeds bytes read from the device. An error ends the upload (the machine is `Failed`
    /// and returns the same error on every later call); close the connection.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state == ClientState::Done {
            return Ok(());
        }
        self.raw.extend_from_slice(data);
        let r = self.process();
        self.check(r)
    }

    /// The device closed the connection. Fine once [`ClientState::Done`]; an error otherwise.
    pub fn handle_eof(&mut self) -> Result<(), ClientError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state == ClientState::Done {
            return Ok(());
        }
        let e = ClientError::ConnectionClosed {
            waiting: self.state,
            may_have_committed: self.last_chunk_sent,
        };
        self.check(Err(e))
    }

    /// The driver's timer for the current wait (see [`ClientState::timeout`]), or for a write
    /// that does not drain, expired. Ends the upload unless it is already done.
    pub fn handle_timeout(&mut self) -> Result<(), ClientError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.state == ClientState::Done {
            return Ok(());
        }
        let e = ClientError::Timeout {
            waiting: self.state,
            may_have_committed: self.last_chunk_sent,
        };
        self.check(Err(e))
    }

    /// The next bytes to write to the device, in order. Call until `None` after every input
    /// and at start. In [`ClientState::Uploading`] every call hands out one 8 KiB block (as
    /// eight frames when encrypted).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(b) = self.tx.pop_front() {
            return Some(b);
        }
        if self.state != ClientState::Uploading {
            return None;
        }
        let total = self.upload.len();
        let end = (self.sent + BLOCK_SIZE).min(total);
        let block = self.upload.slice(self.sent..end);
        let wire = match &mut self.transport {
            Some(t) => {
                let mut out = BytesMut::with_capacity(block.len() + 8 * 19);
                for piece in block.chunks(NOISE_MAX_PLAINTEXT) {
                    t.seal_frame(piece, &mut out);
                }
                out.freeze()
            }
            None => block,
        };
        self.sent = end;
        self.events.push_back(Event::Progress(self.progress()));
        let last = end == total;
        if last {
            self.last_chunk_sent = true;
            self.events.push_back(Event::LastChunkSent);
        }
        if self.version.has_chunk_acks() {
            self.state = ClientState::AwaitChunkAck;
        } else if last {
            self.state = ClientState::AwaitReceiveOk;
            self.set_phase(Phase::Finishing);
        }
        Some(wire)
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn check(&mut self, r: Result<(), ClientError>) -> Result<(), ClientError> {
        if let Err(e) = &r {
            self.error = Some(e.clone());
            self.state = ClientState::Failed;
            self.tx.clear();
        }
        r
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.events.push_back(Event::Phase(phase));
        }
    }

    fn noise_error(&self, detail: impl fmt::Display) -> ClientError {
        ClientError::Noise {
            detail: detail.to_string(),
            may_have_committed: self.last_chunk_sent,
        }
    }

    /// Queues one control field: raw, or as one encrypted frame.
    fn send_field(&mut self, field: &[u8]) {
        match &mut self.transport {
            Some(t) => {
                let mut out = BytesMut::new();
                t.seal_frame(field, &mut out);
                self.tx.push_back(out.freeze());
            }
            None => self.tx.push_back(Bytes::copy_from_slice(field)),
        }
    }

    fn process(&mut self) -> Result<(), ClientError> {
        loop {
            if self.state == ClientState::NoiseHandshake {
                match noise::decode_frame(&mut self.raw) {
                    Ok(Some(payload)) => self.on_handshake_frame(&payload)?,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(self.noise_error(e)),
                }
                continue;
            }
            if let Some(t) = &mut self.transport {
                let mut failure = None;
                loop {
                    match noise::decode_frame(&mut self.raw) {
                        Ok(Some(frame)) => match t.open(&frame) {
                            Ok(plain) if !plain.is_empty() => self.plain.extend_from_slice(&plain),
                            Ok(_) => {
                                failure = Some("the device sent an empty frame".to_owned());
                                break;
                            }
                            Err(_) => {
                                failure = Some("decryption failed (MAC mismatch)".to_owned());
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(detail) = failure {
                    return Err(self.noise_error(detail));
                }
            }
            if !self.step()? {
                return Ok(());
            }
        }
    }

    /// The buffer the protocol reads from: decrypted bytes once encrypted, else the raw input.
    fn rx(&mut self) -> &mut BytesMut {
        if self.transport.is_some() {
            &mut self.plain
        } else {
            &mut self.raw
        }
    }

    /// `byte` as one of `expected`, or the device's error, or an unexpected byte.
    fn expect(&self, byte: u8, expected: &[u8]) -> Result<u8, ClientError> {
        if expected.contains(&byte) {
            return Ok(byte);
        }
        Err(match ErrorCode::from_byte(byte) {
            Some(code) => ClientError::Device {
                code,
                waiting: self.state,
            },
            None => ClientError::Unexpected {
                got: byte,
                waiting: self.state,
            },
        })
    }

    /// The device's error, if `byte` is an error code.
    fn check_error(&self, byte: u8) -> Result<(), ClientError> {
        match ErrorCode::from_byte(byte) {
            Some(code) => Err(ClientError::Device {
                code,
                waiting: self.state,
            }),
            None => Ok(()),
        }
    }

    /// One step on the buffered plaintext; false when more input is needed.
    fn step(&mut self) -> Result<bool, ClientError> {
        let Some(&first) = self.rx().first() else {
            return Ok(false);
        };
        match self.state {
            ClientState::AwaitVersion => {
                self.expect(first, &[response::OK])?;
                if self.rx().len() < 2 {
                    return Ok(false);
                }
                let v = self.rx().split_to(2)[1];
                self.version =
                    OtaVersion::from_byte(v).ok_or(ClientError::UnsupportedVersion(v))?;
                self.tx
                    .push_back(Bytes::copy_from_slice(&[self.client_features]));
                self.state = ClientState::AwaitFeatureAck;
            }
            ClientState::AwaitFeatureAck => {
                self.check_error(first)?;
                let _ = self.rx().split_to(1);
                match first {
                    response::FEATURE_FLAGS => {
                        self.extended = true;
                        self.state = ClientState::AwaitFeatureFlags;
                    }
                    response::SUPPORTS_COMPRESSION => {
                        self.server_flags = server_flag::COMPRESSION;
                        self.negotiate()?;
                    }
                    _ => self.negotiate()?,
                }
            }
            ClientState::AwaitFeatureFlags => {
                self.check_error(first)?;
                let _ = self.rx().split_to(1);
                self.server_flags = first;
                self.negotiate()?;
            }
            ClientState::NoiseHandshake => return Ok(false),
            ClientState::AwaitAuthRequest => self.on_auth_request(first)?,
            ClientState::AwaitNonce => {
                self.check_error(first)?;
                if !self.answer_nonce()? {
                    return Ok(false);
                }
            }
            ClientState::AwaitAuthResult => {
                self.expect(first, &[response::AUTH_OK])?;
                let _ = self.rx().split_to(1);
                self.start_data();
            }
            ClientState::AwaitPrepare => {
                self.expect(first, &[response::UPDATE_PREPARE_OK])?;
                let _ = self.rx().split_to(1);
                let md5 = self.md5.clone();
                self.send_field(md5.as_bytes());
                self.state = ClientState::AwaitMd5Ack;
            }
            ClientState::AwaitMd5Ack => {
                self.expect(first, &[response::BIN_MD5_OK])?;
                let _ = self.rx().split_to(1);
                self.state = ClientState::Uploading;
                self.set_phase(Phase::Uploading);
                self.events.push_back(Event::Progress(self.progress()));
            }
            ClientState::Uploading => {
                // The device says nothing while a block is on its way, except an error.
                self.expect(first, &[])?;
            }
            ClientState::AwaitChunkAck => {
                self.expect(first, &[response::CHUNK_OK])?;
                let _ = self.rx().split_to(1);
                self.acked = (self.acked + BLOCK_SIZE).min(self.sent);
                self.events.push_back(Event::Progress(self.progress()));
                if self.sent == self.upload.len() {
                    self.state = ClientState::AwaitReceiveOk;
                    self.set_phase(Phase::Finishing);
                } else {
                    self.state = ClientState::Uploading;
                }
            }
            ClientState::AwaitReceiveOk => {
                self.expect(first, &[response::RECEIVE_OK])?;
                let _ = self.rx().split_to(1);
                if self.acked != self.sent {
                    self.acked = self.sent;
                    self.events.push_back(Event::Progress(self.progress()));
                }
                self.state = ClientState::AwaitUpdateEnd;
            }
            ClientState::AwaitUpdateEnd => {
                self.expect(first, &[response::UPDATE_END_OK])?;
                let _ = self.rx().split_to(1);
                self.send_field(&[response::OK]);
                self.state = ClientState::Done;
                self.events.push_back(Event::Completed);
                self.set_phase(Phase::Done);
            }
            ClientState::Done | ClientState::Failed => return Ok(false),
        }
        Ok(true)
    }

    /// The device's answer to the hello: no authentication, or a challenge to come.
    fn on_auth_request(&mut self, first: u8) -> Result<(), ClientError> {
        self.expect(
            first,
            &[
                response::AUTH_OK,
                response::REQUEST_AUTH,
                response::REQUEST_SHA256_AUTH,
            ],
        )?;
        let _ = self.rx().split_to(1);
        match AuthScheme::from_request_byte(first) {
            None => self.start_data(),
            Some(scheme) => {
                if self.config.password.is_none() {
                    return Err(ClientError::PasswordRequired);
                }
                self.auth = Some(scheme);
                self.set_phase(Phase::Authenticating);
                self.state = ClientState::AwaitNonce;
            }
        }
        Ok(())
    }

    /// The challenge's nonce: answered with our cnonce and the digest; false while it is
    /// incomplete.
    fn answer_nonce(&mut self) -> Result<bool, ClientError> {
        // Both were checked when the challenge was announced (`on_auth_request`).
        let (Some(scheme), true) = (self.auth, self.config.password.is_some()) else {
            return Err(ClientError::PasswordRequired);
        };
        if self.rx().len() < scheme.hex_len() {
            return Ok(false);
        }
        let nonce = self.rx().split_to(scheme.hex_len());
        let cnonce = scheme.client_cnonce(&mut self.auth_rng);
        let Some(password) = self.config.password.as_ref() else {
            return Err(ClientError::PasswordRequired);
        };
        let answer = scheme.response(password, &nonce, cnonce.as_bytes());
        self.send_field(cnonce.as_bytes());
        self.send_field(answer.as_bytes());
        self.state = ClientState::AwaitAuthResult;
        Ok(true)
    }

    /// After the feature ack: apply the policy, pick the compression, maybe start Noise.
    fn negotiate(&mut self) -> Result<(), ClientError> {
        let flags = self.server_flags;
        let offers_noise = self.extended && flags & server_flag::NOISE != 0;
        let encrypt = match &self.config.noise_key {
            Some(_) if offers_noise => true,
            Some(_) if self.config.allow_plaintext => false,
            Some(_) => return Err(ClientError::EncryptionNotOffered),
            None => false,
        };
        if self.config.ota_type != OtaType::App {
            if !self.extended {
                return Err(ClientError::Unsupported(
                    "partition table and bootloader updates need the extended OTA protocol \
                     (ESPHome 2026.5+ on the device)",
                ));
            }
            if flags & server_flag::PARTITION_ACCESS == 0 {
                return Err(ClientError::Unsupported(
                    "the running firmware was built without allow_partition_access",
                ));
            }
        }
        // Deflate is binding once offered; gzip whenever offered (as ESPHome's uploader does).
        self.compression = if self.extended && flags & server_flag::DEFLATE != 0 {
            self.upload = compress::deflate_4k(&self.image).into();
            Compression::Deflate
        } else if flags & server_flag::COMPRESSION != 0 {
            self.upload = compress::gzip(&self.image).into();
            Compression::Gzip
        } else {
            Compression::None
        };
        if u32::try_from(self.upload.len()).is_err() {
            return Err(ClientError::InvalidImage(
                "the compressed image is larger than the 32-bit size field",
            ));
        }
        let hashed = if self.compression == Compression::Deflate {
            &self.image
        } else {
            &self.upload
        };
        self.md5 = hex::encode(Md5::digest(hashed));
        self.events.push_back(Event::Negotiated(Negotiated {
            version: self.version,
            extended: self.extended,
            server_flags: flags,
            compression: self.compression,
            encrypted: encrypt,
            wire_size: self.upload.len() as u64,
            image_size: self.image.len() as u64,
        }));
        if encrypt {
            let key = self
                .config
                .noise_key
                .as_ref()
                .expect("encrypt implies a key");
            let prologue = noise::prologue(self.version.byte(), self.client_features, flags);
            let mut hs = Handshake::initiator(key, &prologue, self.noise_rng.clone())
                .map_err(|e| self.noise_error(e))?;
            let msg = hs.write().map_err(|e| self.noise_error(e))?;
            let mut payload = Vec::with_capacity(msg.len() + 1);
            payload.push(HANDSHAKE_OK);
            payload.extend_from_slice(&msg);
            let mut frame = BytesMut::new();
            noise::encode_frame(&payload, &mut frame);
            self.tx.push_back(frame.freeze());
            self.handshake = Some(hs);
            self.state = ClientState::NoiseHandshake;
        } else {
            self.state = ClientState::AwaitAuthRequest;
        }
        Ok(())
    }

    fn on_handshake_frame(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        if payload[0] != HANDSHAKE_OK {
            let reason = String::from_utf8_lossy(&payload[1..]).into_owned();
            return Err(if reason == MAC_FAILURE_REASON {
                ClientError::NoiseWrongKey
            } else {
                ClientError::NoiseRejected(reason)
            });
        }
        let mut hs = self
            .handshake
            .take()
            .expect("handshake state in NoiseHandshake");
        // A failure here is a wrong key (or a tampered preamble) on the device's side.
        hs.read(&payload[1..])
            .map_err(|_| ClientError::NoiseWrongKey)?;
        self.transport = Some(hs.into_transport().map_err(|e| self.noise_error(e))?);
        self.state = ClientState::AwaitAuthRequest;
        Ok(())
    }

    /// `41` arrived: send the request fields.
    fn start_data(&mut self) {
        self.set_phase(Phase::Preparing);
        if self.extended {
            self.send_field(&[self.config.ota_type.byte()]);
        }
        let size = (self.upload.len() as u32).to_be_bytes();
        self.send_field(&size);
        if self.compression == Compression::Deflate {
            let image_size = (self.image.len() as u32).to_be_bytes();
            self.send_field(&image_size);
        }
        self.state = ClientState::AwaitPrepare;
    }
}

//! The device's side of ESPHome native OTA as a sans-I/O state machine, for simulators: what
//! `ota_esphome.cpp` does on the wire, configurable back to the protocol generations still in
//! the field (OTA version 1, legacy feature acks, MD5 challenges).
//!
//! What it does: validate the magic, announce the version, answer the features (legacy `40`/`46`
//! or extended `48 SS`), require or offer Noise, challenge for the password, read type, size,
//! inflated size and MD5, receive the image (inflating deflate through a 4 KiB window, exactly
//! as strict as the device), acknowledge chunks, verify the MD5 and answer with the device's
//! response and error bytes. Storage decisions (space, flash errors, image validation) are the
//! [`Backend`]'s.
//! What it does not do: sockets, timers (the driver applies the 20 s handshake and 105 s data
//! timeouts through [`Device::handle_timeout`]), rebooting, or randomness of its own.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};

use super::auth::AuthScheme;
use super::compress;
use super::entropy::{Purpose, SeededRng};
use super::error::ErrorCode;
use super::inflate::{Inflated, Inflater};
use super::noise::{
    self, HANDSHAKE_ERROR_REASON, HANDSHAKE_OK, HANDSHAKE_REJECT, Handshake, MAC_FAILURE_REASON,
    MAX_HANDSHAKE_LEN, Transport,
};
use super::secret::{NoiseKey, Password};
use super::wire::{
    BLOCK_SIZE, Compression, DEFLATE_WINDOW, DEVICE_READ_SIZE, MAGIC, NOISE_MAC_LEN,
    NOISE_MAX_PLAINTEXT, OtaType, OtaVersion, client_feature, response, server_flag,
};

/// Which challenge a device with a password sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceAuth {
    /// SHA256 only (2026.1+): a client without SHA256 support gets `0x82`.
    #[default]
    Sha256,
    /// SHA256 when the client offers it, else MD5 (2025.10–2025.12).
    Sha256OrMd5,
    /// MD5 only (up to 2025.9).
    Md5,
}

/// Noise on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNoise {
    /// The pre-shared key.
    pub key: NoiseKey,
    /// `ota: encryption:` set: a client that does not negotiate Noise gets `0x94`.
    /// Otherwise the device only offers it (an `api: encryption:` key).
    pub required: bool,
}

/// How the device behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// OTA version announced after the magic.
    pub version: OtaVersion,
    /// The OTA password; `None` or empty: no challenge.
    pub password: Option<Password>,
    /// Which challenge to send.
    pub auth: DeviceAuth,
    /// Speaks the extended protocol (2026.5+): `48 SS` and the OTA-type byte for clients that
    /// ask. Off: a legacy device that always answers `40`/`46`.
    pub extended: bool,
    /// The backend stores gzip (ESP8266, RP2040): offered to clients that can send it.
    pub gzip: bool,
    /// The device inflates deflate on the fly (ESP32, LibreTiny, host; 2026.10+).
    pub deflate: bool,
    /// `allow_partition_access: true`.
    pub partition_access: bool,
    /// Noise offered or required.
    pub noise: Option<DeviceNoise>,
}

impl Default for DeviceConfig {
    /// An ESP32 on ESPHome 2026.10 without password or encryption.
    fn default() -> Self {
        Self {
            version: OtaVersion::V2,
            password: None,
            auth: DeviceAuth::Sha256,
            extended: true,
            gzip: false,
            deflate: true,
            partition_access: false,
            noise: None,
        }
    }
}

/// Storage: the device's `OTABackend`. Every method may refuse with the error byte the device
/// then sends. The defaults accept everything.
pub trait Backend {
    /// `begin(size)`: `size` is the inflated size for deflate, else the bytes on the wire.
    fn begin(&mut self, size: usize, ota_type: OtaType) -> Result<(), ErrorCode> {
        let _ = (size, ota_type);
        Ok(())
    }

    /// `write()` of the bytes that go to flash at `offset` (inflated for deflate).
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), ErrorCode> {
        let _ = (offset, data);
        Ok(())
    }

    /// `end()`, called only when the MD5 matched: validate and commit.
    fn end(&mut self, image: &ReceivedImage) -> Result<(), ErrorCode> {
        let _ = image;
        Ok(())
    }
}

/// A backend that accepts every image.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Backend for AcceptAll {}

/// An upload the device received in full, with its verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedImage {
    /// What it replaces.
    pub ota_type: OtaType,
    /// How it travelled.
    pub compression: Compression,
    /// What went to flash: the inflated image for deflate, the gzip file for gzip, else the
    /// bytes as received.
    pub stored: Bytes,
    /// The MD5 the uploader announced.
    pub md5_expected: String,
    /// The MD5 of `stored`.
    pub md5_actual: String,
}

impl ReceivedImage {
    /// The announced MD5 matches what was stored (compared case-insensitively).
    pub fn md5_ok(&self) -> bool {
        self.md5_expected.eq_ignore_ascii_case(&self.md5_actual)
    }

    /// What boots: `stored`, gunzipped when it is a gzip file (the ESP8266 bootloader inflates
    /// it at the next boot). `None` for a gzip file that does not inflate.
    pub fn boot_image(&self) -> Option<Bytes> {
        if compress::is_gzip(&self.stored) {
            compress::gunzip(&self.stored).map(Bytes::from)
        } else {
            Some(self.stored.clone())
        }
    }
}

/// Where the device is. Every state up to `AwaitAuthResponse` belongs to the handshake (20 s
/// from accept on a real device); the rest to the data phase (105 s without data).
///
/// ```text
///  AwaitMagic ──magic: 00 VV──▶ AwaitFeatures ──ff: ack──┬──────────────────────────┐
///      │ bad magic: 80                 │ Noise required,  │ Noise agreed             │
///      ▼                               │ not asked: 94    ▼                          │
///    Closed ◀──────────────────────────┘         NoiseHandshake ──msg1: msg2──┐     │
///                                                      │ bad MAC: reject      │     │
///                                                      ▼                      │     │ password:
///                                                    Closed                   │     │ 01/02 nonce
///                                                                             │     ▼
///                                              Closed ◀──82── AwaitAuthResponse   │
///                                                                  │ ok           │
///       ┌──────────────────────────────────────────────────────────┴──────────────┘
///       │ 41 (start of the data phase; encrypted when Noise was agreed)
///       ▼
///  AwaitOtaType (extended) ──▶ AwaitSize ──▶ AwaitImageSize (deflate) ──begin: 42──▶ AwaitMd5
///       AwaitMd5 ──43──▶ Receiving (47 per 8 KiB on v2) ──all bytes: 44, verify──▶
///       45: AwaitEndAck ──any byte, close or timeout──▶ Closed (committed)
///  data phase, any failure: error byte ──▶ Closed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Reading the 5 magic bytes.
    AwaitMagic,
    /// Reading the client's feature byte.
    AwaitFeatures,
    /// Reading the client's Noise handshake frame.
    NoiseHandshake,
    /// Reading cnonce and response.
    AwaitAuthResponse,
    /// Reading the OTA type byte (extended protocol).
    AwaitOtaType,
    /// Reading the 4-byte size.
    AwaitSize,
    /// Reading the 4-byte inflated size (deflate).
    AwaitImageSize,
    /// Reading the 32-character MD5.
    AwaitMd5,
    /// Reading image bytes.
    Receiving,
    /// Committed; reading the client's final `00` (a missing one is not an error).
    AwaitEndAck,
    /// Done: flush the output and close the connection.
    Closed,
}

impl DeviceState {
    /// The data phase began (the device sent `41`): the 105 s no-data timeout applies, and a
    /// timeout is answered with `0xFF`. Before, the 20 s handshake timeout applies.
    pub fn in_data_phase(self) -> bool {
        !matches!(
            self,
            Self::AwaitMagic | Self::AwaitFeatures | Self::NoiseHandshake | Self::AwaitAuthResponse
        )
    }
}

/// What happened, for the simulator's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The feature ack went out.
    Negotiated {
        /// The client's feature byte.
        client_features: u8,
        /// The extended ack was sent.
        extended: bool,
        /// The server flags sent (extended), or the flags the legacy ack stands for.
        server_flags: u8,
        /// A Noise handshake follows.
        encrypted: bool,
    },
    /// The password challenge was answered correctly.
    Authenticated(AuthScheme),
    /// `begin()` succeeded; the device is about to receive.
    UpdateStarted {
        /// What the upload replaces.
        ota_type: OtaType,
        /// Bytes on the wire.
        wire_size: usize,
        /// Bytes of the (inflated) image as given to `begin()`.
        size: usize,
        /// How the image travels.
        compression: Compression,
    },
    /// Bytes on the wire received so far (after each 8 KiB and at the end).
    Progress {
        /// Received.
        received: usize,
        /// Announced.
        total: usize,
    },
    /// All bytes are in; verification follows.
    ImageReceived(ReceivedImage),
    /// The image verified and the backend committed it (`45` sent); the device reboots next.
    Committed,
    /// The device sent this error byte and closes.
    Failed(ErrorCode),
    /// The device closes without an error byte (handshake timeout, client left, bad handshake).
    Aborted(&'static str),
}

/// The device machine, one per connection. See [`DeviceState`] and [`super`] for the loop.
pub struct Device<B: Backend = AcceptAll> {
    config: DeviceConfig,
    backend: B,
    nonce_rng: SeededRng,
    noise_rng: SeededRng,
    state: DeviceState,
    client_features: u8,
    server_flags: u8,
    extended: bool,
    compression: Compression,
    handshake: Option<Handshake>,
    transport: Option<Transport>,
    auth: Option<(AuthScheme, String)>,
    raw: BytesMut,
    tx: VecDeque<Bytes>,
    events: VecDeque<DeviceEvent>,
    ota_type: OtaType,
    ota_type_byte: u8,
    wire_size: usize,
    image_size: usize,
    md5_expected: String,
    received: usize,
    acked: usize,
    stored: BytesMut,
    md5: Md5,
    inflater: Option<Inflater>,
    request_started: bool,
}

impl<B: Backend> fmt::Debug for Device<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("compression", &self.compression)
            .field("encrypted", &self.transport.is_some())
            .field("received", &self.received)
            .field("wire_size", &self.wire_size)
            .finish_non_exhaustive()
    }
}

/// Why reading a request field failed in the data phase.
struct ReadFailed;

impl<B: Backend> Device<B> {
    /// A device that just accepted a connection. `entropy`: 32 bytes from the OS's random
    /// source (nonce and Noise ephemeral key).
    pub fn new(config: DeviceConfig, backend: B, entropy: [u8; 32]) -> Self {
        Self {
            config,
            backend,
            nonce_rng: SeededRng::new(entropy, Purpose::OtaDeviceNonce),
            noise_rng: SeededRng::new(entropy, Purpose::OtaDeviceNoise),
            state: DeviceState::AwaitMagic,
            client_features: 0,
            server_flags: 0,
            extended: false,
            compression: Compression::None,
            handshake: None,
            transport: None,
            auth: None,
            raw: BytesMut::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            ota_type: OtaType::App,
            ota_type_byte: 0,
            wire_size: 0,
            image_size: 0,
            md5_expected: String::new(),
            received: 0,
            acked: 0,
            stored: BytesMut::new(),
            md5: Md5::new(),
            inflater: None,
            request_started: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// The machine is finished: flush [`Device::poll_transmit`], then close the connection.
    pub fn is_closed(&self) -> bool {
        self.state == DeviceState::Closed
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Bytes of the upload on the wire received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Feeds bytes read from the client. Protocol violations become error bytes (or a silent
    /// close) exactly as the device does; this never fails.
    pub fn handle_input(&mut self, data: &[u8]) {
        if self.state == DeviceState::Closed {
            return;
        }
        self.raw.extend_from_slice(data);
        while self.state != DeviceState::Closed && self.step() {}
    }

    /// The client closed its side.
    pub fn handle_eof(&mut self) {
        match self.state {
            DeviceState::Closed => {}
            DeviceState::AwaitEndAck => self.close_committed(),
            s if !s.in_data_phase() => self.abort("client closed during the handshake"),
            _ if !self.request_started && self.raw.is_empty() => {
                self.abort("client left after the handshake")
            }
            _ => self.fail(ErrorCode::Unknown),
        }
    }

    /// The driver's timer expired: 20 s since accept during the handshake, or 105 s without
    /// data in the data phase.
    pub fn handle_timeout(&mut self) {
        match self.state {
            DeviceState::Closed => {}
            DeviceState::AwaitEndAck => self.close_committed(),
            s if !s.in_data_phase() => self.abort("handshake timeout"),
            _ => self.fail(ErrorCode::Unknown),
        }
    }

    /// The next bytes to write to the client.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.tx.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.events.pop_front()
    }

    fn abort(&mut self, why: &'static str) {
        self.events.push_back(DeviceEvent::Aborted(why));
        self.state = DeviceState::Closed;
    }

    /// Sends an error byte (encrypted in an encrypted data phase) and closes.
    fn fail(&mut self, code: ErrorCode) {
        if self.state.in_data_phase() {
            self.respond(code.byte());
        } else {
            self.tx.push_back(Bytes::copy_from_slice(&[code.byte()]));
        }
        self.events.push_back(DeviceEvent::Failed(code));
        self.state = DeviceState::Closed;
    }

    fn close_committed(&mut self) {
        self.state = DeviceState::Closed;
    }

    /// One data-phase response byte: raw, or its own encrypted frame.
    fn respond(&mut self, byte: u8) {
        match &mut self.transport {
            Some(t) => {
                let mut out = BytesMut::with_capacity(3 + 1 + NOISE_MAC_LEN);
                t.seal_frame(&[byte], &mut out);
                self.tx.push_back(out.freeze());
            }
            None => self.tx.push_back(Bytes::copy_from_slice(&[byte])),
        }
    }

    /// `n` plaintext bytes of one request field: from the raw input, or exactly one encrypted
    /// frame of exactly that length. `Ok(None)`: need more input.
    fn read_field(&mut self, n: usize) -> Result<Option<BytesMut>, ReadFailed> {
        match &mut self.transport {
            None => {
                if self.raw.len() < n {
                    return Ok(None);
                }
                Ok(Some(self.raw.split_to(n)))
            }
            Some(t) => {
                let frame = match noise::decode_frame(&mut self.raw) {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(None),
                    Err(_) => return Err(ReadFailed),
                };
                if frame.len() != n + NOISE_MAC_LEN {
                    return Err(ReadFailed);
                }
                let plain = t.open(&frame).map_err(|_| ReadFailed)?;
                Ok(Some(BytesMut::from(&plain[..])))
            }
        }
    }

    /// Reads a field in the data phase; a failure sends `0xFF`. `None`: wait (or failed).
    fn data_field(&mut self, n: usize) -> Option<BytesMut> {
        match self.read_field(n) {
            Ok(Some(f)) => {
                self.request_started = true;
                Some(f)
            }
            Ok(None) => None,
            Err(ReadFailed) => {
                self.fail(ErrorCode::Unknown);
                None
            }
        }
    }

    /// One step; false when more input is needed or the machine closed.
    fn step(&mut self) -> bool {
        match self.state {
            DeviceState::AwaitMagic => {
                if self.raw.len() < MAGIC.len() {
                    return false;
                }
                let magic = self.raw.split_to(MAGIC.len());
                if magic[..] != MAGIC {
                    self.fail(ErrorCode::Magic);
                    return false;
                }
                self.tx.push_back(Bytes::copy_from_slice(&[
                    response::OK,
                    self.config.version.byte(),
                ]));
                self.state = DeviceState::AwaitFeatures;
            }
            DeviceState::AwaitFeatures => {
                let Some(&features) = self.raw.first() else {
                    return false;
                };
                let _ = self.raw.split_to(1);
                self.on_features(features);
            }
            DeviceState::NoiseHandshake => return self.on_noise_frame(),
            DeviceState::AwaitAuthResponse => {
                let (scheme, _) = self.auth.as_ref().expect("a challenge was sent");
                let n = scheme.hex_len() * 2;
                if self.raw.len() < n {
                    return false;
                }
                let answer = self.raw.split_to(n);
                let (scheme, nonce) = self.auth.take().expect("a challenge was sent");
                let password = self
                    .config
                    .password
                    .as_ref()
                    .expect("challenge means password");
                let (cnonce, resp) = answer.split_at(scheme.hex_len());
                if !scheme.verify(password, nonce.as_bytes(), cnonce, resp) {
                    self.fail(ErrorCode::AuthInvalid);
                    return false;
                }
                self.events.push_back(DeviceEvent::Authenticated(scheme));
                self.start_data();
            }
            DeviceState::AwaitOtaType => {
                let Some(f) = self.data_field(1) else {
                    return false;
                };
                self.ota_type_byte = f[0];
                self.state = DeviceState::AwaitSize;
            }
            DeviceState::AwaitSize => {
                let Some(f) = self.data_field(4) else {
                    return false;
                };
                self.wire_size = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
                self.image_size = self.wire_size;
                if self.compression == Compression::Deflate {
                    self.state = DeviceState::AwaitImageSize;
                } else {
                    self.begin();
                }
            }
            DeviceState::AwaitImageSize => {
                let Some(f) = self.data_field(4) else {
                    return false;
                };
                self.image_size = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
                self.begin();
            }
            DeviceState::AwaitMd5 => {
                let Some(f) = self.data_field(32) else {
                    return false;
                };
                self.md5_expected = String::from_utf8_lossy(&f).into_owned();
                self.respond(response::BIN_MD5_OK);
                self.state = DeviceState::Receiving;
                if self.wire_size == 0 {
                    self.finish_receiving();
                }
            }
            DeviceState::Receiving => return self.receive(),
            DeviceState::AwaitEndAck => {
                if self.read_field(1).map(|f| f.is_none()).unwrap_or(false) {
                    return false;
                }
                self.close_committed();
            }
            DeviceState::Closed => return false,
        }
        true
    }

    fn on_features(&mut self, features: u8) {
        self.client_features = features;
        let wants_noise = client_feature::NOISE | client_feature::EXTENDED;
        let noise_required = self.config.noise.as_ref().is_some_and(|n| n.required);
        if noise_required && features & wants_noise != wants_noise {
            self.fail(ErrorCode::EncryptionRequired);
            return;
        }
        let gzip = features & client_feature::COMPRESSION != 0 && self.config.gzip;
        self.extended =
            noise_required || (self.config.extended && features & client_feature::EXTENDED != 0);
        let mut encrypted = false;
        if self.extended {
            let mut flags = 0;
            if gzip {
                flags |= server_flag::COMPRESSION;
            }
            if self.config.partition_access {
                flags |= server_flag::PARTITION_ACCESS;
            }
            if self.config.noise.is_some() {
                flags |= server_flag::NOISE;
                encrypted = features & wants_noise == wants_noise;
            }
            if self.config.deflate && features & client_feature::DEFLATE != 0 {
                flags |= server_flag::DEFLATE;
            }
            self.server_flags = flags;
            self.tx
                .push_back(Bytes::copy_from_slice(&[response::FEATURE_FLAGS, flags]));
            self.compression = if flags & server_flag::DEFLATE != 0 {
                Compression::Deflate
            } else if gzip {
                Compression::Gzip
            } else {
                Compression::None
            };
        } else {
            let ack = if gzip {
                response::SUPPORTS_COMPRESSION
            } else {
                response::HEADER_OK
            };
            self.server_flags = if gzip { server_flag::COMPRESSION } else { 0 };
            self.tx.push_back(Bytes::copy_from_slice(&[ack]));
            // A legacy backend that stores gzip detects it by its header; no mode to remember.
            self.compression = if gzip {
                Compression::Gzip
            } else {
                Compression::None
            };
        }
        self.events.push_back(DeviceEvent::Negotiated {
            client_features: features,
            extended: self.extended,
            server_flags: self.server_flags,
            encrypted,
        });
        if encrypted {
            let key = &self
                .config
                .noise
                .as_ref()
                .expect("encrypted implies noise")
                .key;
            let prologue = noise::prologue(self.config.version.byte(), features, self.server_flags);
            match Handshake::responder(key, &prologue, self.noise_rng.clone()) {
                Ok(hs) => {
                    self.handshake = Some(hs);
                    self.state = DeviceState::NoiseHandshake;
                }
                Err(_) => self.abort("noise session could not start"),
            }
            return;
        }
        let password = self.config.password.as_ref().filter(|p| !p.is_empty());
        if password.is_none() {
            self.start_data();
            return;
        }
        let sha256 = features & client_feature::SHA256_AUTH != 0;
        let scheme = match self.config.auth {
            DeviceAuth::Sha256 if !sha256 => {
                self.fail(ErrorCode::AuthInvalid);
                return;
            }
            DeviceAuth::Sha256 => AuthScheme::Sha256,
            DeviceAuth::Sha256OrMd5 if sha256 => AuthScheme::Sha256,
            DeviceAuth::Sha256OrMd5 | DeviceAuth::Md5 => AuthScheme::Md5,
        };
        let nonce = scheme.device_nonce(&mut self.nonce_rng);
        let mut challenge = Vec::with_capacity(1 + nonce.len());
        challenge.push(scheme.request_byte());
        challenge.extend_from_slice(nonce.as_bytes());
        self.tx.push_back(challenge.into());
        self.auth = Some((scheme, nonce));
        self.state = DeviceState::AwaitAuthResponse;
    }

    fn on_noise_frame(&mut self) -> bool {
        let payload = match noise::decode_frame(&mut self.raw) {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(_) => {
                self.abort("bad noise frame");
                return false;
            }
        };
        if payload.len() > 1 + MAX_HANDSHAKE_LEN {
            self.abort("bad noise frame");
            return false;
        }
        if payload[0] != HANDSHAKE_OK {
            self.abort("client rejected the handshake");
            return false;
        }
        let mut hs = self
            .handshake
            .take()
            .expect("handshake state in NoiseHandshake");
        if let Err(e) = hs.read(&payload[1..]) {
            let reason = if e == snow::Error::Decrypt {
                MAC_FAILURE_REASON
            } else {
                HANDSHAKE_ERROR_REASON
            };
            let mut p = Vec::with_capacity(1 + reason.len());
            p.push(HANDSHAKE_REJECT);
            p.extend_from_slice(reason.as_bytes());
            let mut frame = BytesMut::new();
            noise::encode_frame(&p, &mut frame);
            self.tx.push_back(frame.freeze());
            self.abort(if reason == MAC_FAILURE_REASON {
                "noise handshake: MAC failure (wrong key)"
            } else {
                "noise handshake failed"
            });
            return false;
        }
        let msg = match hs.write() {
            Ok(m) => m,
            Err(_) => {
                self.abort("noise handshake failed");
                return false;
            }
        };
        let mut p = Vec::with_capacity(1 + msg.len());
        p.push(HANDSHAKE_OK);
        p.extend_from_slice(&msg);
        let mut frame = BytesMut::new();
        noise::encode_frame(&p, &mut frame);
        self.tx.push_back(frame.freeze());
        match hs.into_transport() {
            Ok(t) => self.transport = Some(t),
            Err(_) => {
                self.abort("noise handshake failed");
                return false;
            }
        }
        self.start_data();
        true
    }

    /// `41`, then the request fields.
    fn start_data(&mut self) {
        self.state = DeviceState::AwaitSize;
        self.respond(response::AUTH_OK);
        if self.extended {
            self.state = DeviceState::AwaitOtaType;
        }
    }

    fn begin(&mut self) {
        let ota_type = OtaType::from_byte(self.ota_type_byte);
        let ota_type = match ota_type {
            Some(OtaType::App) => OtaType::App,
            Some(t) if self.config.partition_access => t,
            _ => {
                self.fail(ErrorCode::UnsupportedOtaType);
                return;
            }
        };
        self.ota_type = ota_type;
        if let Err(code) = self.backend.begin(self.image_size, ota_type) {
            self.fail(code);
            return;
        }
        if self.compression == Compression::Deflate {
            self.inflater = Some(Inflater::new(DEFLATE_WINDOW));
        }
        self.events.push_back(DeviceEvent::UpdateStarted {
            ota_type,
            wire_size: self.wire_size,
            size: self.image_size,
            compression: self.compression,
        });
        self.respond(response::UPDATE_PREPARE_OK);
        self.state = DeviceState::AwaitMd5;
    }

    /// Takes the next piece of image data (one read, or one encrypted frame).
    fn next_piece(&mut self) -> Result<Option<Bytes>, ReadFailed> {
        let remaining = self.wire_size - self.received;
        match &mut self.transport {
            None => {
                if self.raw.is_empty() {
                    return Ok(None);
                }
                let n = self.raw.len().min(remaining).min(DEVICE_READ_SIZE);
                Ok(Some(self.raw.split_to(n).freeze()))
            }
            Some(t) => {
                let frame = match noise::decode_frame(&mut self.raw) {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(None),
                    Err(_) => return Err(ReadFailed),
                };
                let max = (remaining.min(NOISE_MAX_PLAINTEXT)) + NOISE_MAC_LEN;
                if frame.len() <= NOISE_MAC_LEN || frame.len() > max {
                    return Err(ReadFailed);
                }
                t.open(&frame)
                    .map(Bytes::from)
                    .map_err(|_| ReadFailed)
                    .map(Some)
            }
        }
    }

    fn receive(&mut self) -> bool {
        let piece = match self.next_piece() {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(ReadFailed) => {
                self.fail(ErrorCode::Unknown);
                return false;
            }
        };
        self.received += piece.len();
        // Chunk acks go out on receipt, before the flash write (ESP32 behaviour).
        let before = self.acked;
        if self.config.version.has_chunk_acks() {
            while self.acked + BLOCK_SIZE <= self.received
                || (self.received == self.wire_size && self.acked < self.wire_size)
            {
                self.respond(response::CHUNK_OK);
                self.acked += BLOCK_SIZE;
            }
        }
        let crossed = self.received / BLOCK_SIZE != (self.received - piece.len()) / BLOCK_SIZE;
        if crossed || self.received == self.wire_size || self.acked != before {
            self.events.push_back(DeviceEvent::Progress {
                received: self.received,
                total: self.wire_size,
            });
        }
        if let Err(code) = self.store(&piece) {
            self.fail(code);
            return false;
        }
        if self.received == self.wire_size {
            self.finish_receiving();
            return false;
        }
        true
    }

    /// Writes received bytes (inflating deflate) to the backend.
    fn store(&mut self, piece: &[u8]) -> Result<(), ErrorCode> {
        let data: Vec<u8>;
        let out: &[u8] = match &mut self.inflater {
            Some(inf) => {
                let mut buf = Vec::with_capacity(piece.len() * 4);
                let status = inf
                    .inflate(piece, &mut buf)
                    .map_err(|_| ErrorCode::Unknown)?;
                if self.stored.len() + buf.len() > self.image_size {
                    return Err(ErrorCode::Unknown);
                }
                if status == Inflated::Done && self.received < self.wire_size {
                    // The stream ended before the announced size: the device reports it.
                    return Err(ErrorCode::Unknown);
                }
                data = buf;
                &data
            }
            None => piece,
        };
        if !out.is_empty() {
            self.backend.write(self.stored.len(), out)?;
            self.md5.update(out);
            self.stored.extend_from_slice(out);
        }
        Ok(())
    }

    fn finish_receiving(&mut self) {
        if let Some(inf) = &self.inflater
            && (!inf.is_done() || self.stored.len() != self.image_size)
        {
            self.fail(ErrorCode::Unknown);
            return;
        }
        self.respond(response::RECEIVE_OK);
        let image = ReceivedImage {
            ota_type: self.ota_type,
            compression: self.compression,
            stored: std::mem::take(&mut self.stored).freeze(),
            md5_expected: std::mem::take(&mut self.md5_expected),
            md5_actual: hex::encode(std::mem::take(&mut self.md5).finalize()),
        };
        self.events
            .push_back(DeviceEvent::ImageReceived(image.clone()));
        if !image.md5_ok() {
            self.fail(ErrorCode::Md5Mismatch);
            return;
        }
        if let Err(code) = self.backend.end(&image) {
            self.fail(code);
            return;
        }
        self.respond(response::UPDATE_END_OK);
        self.events.push_back(DeviceEvent::Committed);
        self.state = DeviceState::AwaitEndAck;
    }
}

//! Noise encryption of ESPHome OTA (2026.9+): `Noise_NNpsk0_25519_ChaChaPoly_SHA256` with a
//! 32-byte pre-shared key, the OTA prologue, and the frame codec.
//!
//! Frames are `0x01 ‖ u16 BE length ‖ payload`. Handshake payloads start with a status byte
//! (`0x00` + Noise message, or `0x01` + a reject reason such as `"Handshake MAC failure"`);
//! transport payloads are ciphertext with a 16-byte tag. Decoding an incomplete frame is
//! "need more bytes" (`Ok(None)`), not an error.
//!
//! What it does not do: decide what goes in which frame (the machines do: one frame per
//! device response byte and per uploader control field, data in frames of at most 1024
//! plaintext bytes), or draw randomness (ephemeral keys come from the machine's entropy).
//!
//! The handshake and transport wrappers around `snow` (`Handshake`, `Transport`) are
//! crate-private and shared with the native API (`crate::esphome_api::noise`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use thiserror::Error;

use super::entropy::SeededRng;
use super::secret::NoiseKey;
use super::wire::{MAGIC, NOISE_MAC_LEN, response};

/// Noise protocol name, as in ESPHome's native API.
pub const PROTOCOL: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

/// First byte of every frame.
pub const FRAME_INDICATOR: u8 = 0x01;

/// Frame header length: indicator and u16 length.
pub const FRAME_HEADER_LEN: usize = 3;

/// Handshake status: a Noise message follows.
pub const HANDSHAKE_OK: u8 = 0x00;

/// Handshake status: a reject reason follows.
pub const HANDSHAKE_REJECT: u8 = 0x01;

/// The reject reason for a wrong key; a wire contract uploaders match on.
pub const MAC_FAILURE_REASON: &str = "Handshake MAC failure";

/// The reject reason for any other handshake failure.
pub const HANDSHAKE_ERROR_REASON: &str = "Handshake error";

/// Largest Noise handshake message the device accepts (after the status byte).
pub const MAX_HANDSHAKE_LEN: usize = 128;

/// `"NoiseOTAInit" ‖ magic ‖ 00 VV ‖ client_features ‖ 48 SS`: every plaintext negotiation
/// byte, so tampering with the preamble breaks the handshake.
pub fn prologue(version: u8, client_features: u8, server_flags: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(22);
    p.extend_from_slice(b"NoiseOTAInit");
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[response::OK, version, client_features]);
    p.extend_from_slice(&[response::FEATURE_FLAGS, server_flags]);
    p
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The first byte is not `0x01`.
    #[error("bad frame indicator 0x{0:02X}")]
    Indicator(u8),
    /// A frame with no payload.
    #[error("empty frame")]
    Empty,
}

/// Appends one frame carrying `payload` (at most 65535 bytes).
pub fn encode_frame(payload: &[u8], dst: &mut BytesMut) {
    let len = u16::try_from(payload.len()).expect("noise frame payload fits in u16");
    dst.reserve(FRAME_HEADER_LEN + payload.len());
    dst.put_u8(FRAME_INDICATOR);
    dst.put_u16(len);
    dst.put_slice(payload);
}

/// Takes one complete frame's payload off the front of `src`; `Ok(None)` if it is incomplete.
pub fn decode_frame(src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    let Some(&indicator) = src.first() else {
        return Ok(None);
    };
    if indicator != FRAME_INDICATOR {
        return Err(FrameError::Indicator(indicator));
    }
    if src.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([src[1], src[2]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if src.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    src.advance(FRAME_HEADER_LEN);
    Ok(Some(src.split_to(len).freeze()))
}

/// Randomness for snow from the machine's entropy; every primitive from snow's default resolver.
struct Seeded(SeededRng);

impl CryptoResolver for Seeded {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(self.0.clone()))
    }
    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// One side of the two-message NNpsk0 handshake, with the ephemeral key drawn from `rng`. The
/// one `snow` wrapper of the crate: ESPHome OTA and the native API (`crate::esphome_api`) run
/// the same handshake and differ only in prologue and framing.
pub(crate) struct Handshake(snow::HandshakeState);

impl Handshake {
    fn build(
        key: &NoiseKey,
        prologue: &[u8],
        rng: SeededRng,
        initiator: bool,
    ) -> Result<Self, snow::Error> {
        let params = PROTOCOL.parse()?;
        let resolver = FallbackResolver::new(Box::new(Seeded(rng)), Box::new(DefaultResolver));
        let builder = snow::Builder::with_resolver(params, Box::new(resolver))
            .psk(0, key.bytes())?
            .prologue(prologue)?;
        let state = if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        };
        Ok(Self(state))
    }

    /// The initiator's side (uploader, API client).
    pub(crate) fn initiator(
        key: &NoiseKey,
        prologue: &[u8],
        rng: SeededRng,
    ) -> Result<Self, snow::Error> {
        Self::build(key, prologue, rng, true)
    }

    /// The responder's side (device).
    pub(crate) fn responder(
        key: &NoiseKey,
        prologue: &[u8],
        rng: SeededRng,
    ) -> Result<Self, snow::Error> {
        Self::build(key, prologue, rng, false)
    }

    /// The next handshake message, with an empty payload.
    pub(crate) fn write(&mut self) -> Result<Vec<u8>, snow::Error> {
        let mut buf = vec![0u8; MAX_HANDSHAKE_LEN];
        let n = self.0.write_message(&[], &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads the peer's handshake message.
    pub(crate) fn read(&mut self, message: &[u8]) -> Result<(), snow::Error> {
        let mut payload = vec![0u8; message.len()];
        self.0.read_message(message, &mut payload).map(|_| ())
    }

    /// The transport ciphers, once both messages went through.
    pub(crate) fn into_transport(self) -> Result<Transport, snow::Error> {
        self.0.into_transport_mode().map(Transport)
    }
}

/// The transport ciphers after the handshake.
pub(crate) struct Transport(snow::TransportState);

impl Transport {
    /// Encrypts one message's plaintext: the ciphertext with its 16-byte tag.
    pub(crate) fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let mut ct = vec![0u8; plaintext.len() + NOISE_MAC_LEN];
        // Encryption fails only for oversized messages or an exhausted nonce (2^64 frames); the
        // callers' frames are at most 65535 bytes.
        let n = self
            .0
            .write_message(plaintext, &mut ct)
            .expect("encrypting a frame below the noise message limit");
        ct.truncate(n);
        ct
    }

    /// Encrypts one OTA frame's plaintext and appends the whole frame to `dst`.
    pub(crate) fn seal_frame(&mut self, plaintext: &[u8], dst: &mut BytesMut) {
        encode_frame(&self.seal(plaintext), dst);
    }

    /// Decrypts one frame's ciphertext.
    pub(crate) fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, snow::Error> {
        let mut pt = vec![0u8; ciphertext.len()];
        let n = self.0.read_message(ciphertext, &mut pt)?;
        pt.truncate(n);
        Ok(pt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esphome::entropy::Purpose;

    #[test]
    fn frames_encode_and_decode_byte_for_byte() {
        let mut b = BytesMut::new();
        encode_frame(&[0xAA, 0xBB], &mut b);
        assert_eq!(&b[..], &[0x01, 0x00, 0x02, 0xAA, 0xBB]);
        let mut partial = BytesMut::from(&b[..4]);
        assert_eq!(decode_frame(&mut partial), Ok(None));
        assert_eq!(partial.len(), 4, "incomplete input is left alone");
        b.extend_from_slice(&[0x01]);
        assert_eq!(
            decode_frame(&mut b).unwrap().unwrap(),
            Bytes::from_static(&[0xAA, 0xBB])
        );
        assert_eq!(decode_frame(&mut b), Ok(None));
        assert_eq!(
            decode_frame(&mut BytesMut::from(&[0x02][..])),
            Err(FrameError::Indicator(2))
        );
        assert_eq!(
            decode_frame(&mut BytesMut::from(&[0x01, 0, 0][..])),
            Err(FrameError::Empty)
        );
    }

    #[test]
    fn prologue_binds_the_negotiation() {
        let p = prologue(2, 0x1F, 0x0D);
        assert_eq!(
            hex::encode(&p),
            format!("{}6c26f75c4500021f480d", hex::encode("NoiseOTAInit"))
        );
    }

    #[test]
    fn handshake_and_transport_between_two_sides() {
        let key = NoiseKey::new([9; 32]);
        let p = prologue(2, 0x1F, 0x04);
        let mut i =
            Handshake::initiator(&key, &p, SeededRng::new([1; 32], Purpose::OtaClientNoise))
                .unwrap();
        let mut r =
            Handshake::responder(&key, &p, SeededRng::new([2; 32], Purpose::OtaDeviceNoise))
                .unwrap();
        let m1 = i.write().unwrap();
        assert_eq!(m1.len(), 48, "ephemeral key + tag of the empty payload");
        r.read(&m1).unwrap();
        let m2 = r.write().unwrap();
        i.read(&m2).unwrap();
        let (mut i, mut r) = (i.into_transport().unwrap(), r.into_transport().unwrap());
        let mut f = BytesMut::new();
        i.seal_frame(b"\x00", &mut f);
        assert_eq!(f.len(), 3 + 17);
        let ct = decode_frame(&mut f).unwrap().unwrap();
        assert_eq!(r.open(&ct).unwrap(), b"\x00");
        assert!(r.open(&ct).is_err(), "replay fails the nonce");
    }

    #[test]
    fn wrong_key_or_prologue_fails_the_responder() {
        let p = prologue(2, 0x1F, 0x04);
        for (key, prol) in [
            (NoiseKey::new([8; 32]), p.clone()),
            (NoiseKey::new([9; 32]), prologue(2, 0x1F, 0x00)),
        ] {
            let mut i = Handshake::initiator(
                &key,
                &prol,
                SeededRng::new([1; 32], Purpose::OtaClientNoise),
            )
            .unwrap();
            let mut r = Handshake::responder(
                &NoiseKey::new([9; 32]),
                &p,
                SeededRng::new([2; 32], Purpose::OtaDeviceNoise),
            )
            .unwrap();
            assert_eq!(r.read(&i.write().unwrap()), Err(snow::Error::Decrypt));
        }
    }
}

//! Noise encryption of the native API: `Noise_NNpsk0_25519_ChaChaPoly_SHA256` with the device's
//! 32-byte key (`api: encryption: key:`), as ESPHome's `api_frame_helper_noise.cpp` and
//! aioesphomeapi run it.
//!
//! The exchange, every piece a Noise frame (`01 ‖ u16 BE length ‖ payload`):
//!
//! ```text
//! C → D   client hello: empty payload (its bytes, if any, extend the prologue)
//! C → D   00 ‖ Noise message 1 (ephemeral key, tag of an empty payload: 48 bytes)
//! D → C   server hello: 01 (chosen protocol) ‖ node name ‖ 00 ‖ MAC (12 lowercase hex) ‖ 00
//! D → C   00 ‖ Noise message 2 (48 bytes), or 01 ‖ reason ("Handshake MAC failure": wrong key)
//! then    ciphertext frames of `u16 type ‖ u16 length ‖ protobuf`, each with a 16-byte tag
//! ```
//!
//! The prologue is `"NoiseAPIInit" ‖ u16 BE length of the client hello ‖ client hello`, which is
//! `"NoiseAPIInit\x00\x00"` for every client in the field.
//!
//! What it does not do: draw randomness. Ephemeral keys come from the 32 bytes of entropy the
//! machine was built with (SHA-256 in counter mode), so tests with fixed entropy get byte-exact
//! handshakes; security rests on the driver passing OS randomness.

use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::esphome::NoiseKey;

/// Noise protocol name.
pub const PROTOCOL: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

/// The fixed start of the prologue.
pub const PROLOGUE_PREFIX: &[u8; 12] = b"NoiseAPIInit";

/// The only protocol a server can choose in its hello (Noise NNpsk0).
pub const CHOSEN_PROTOCOL: u8 = 0x01;

/// Handshake frame status: a Noise message follows.
pub const HANDSHAKE_OK: u8 = 0x00;

/// Handshake frame status: a reject reason follows.
pub const HANDSHAKE_REJECT: u8 = 0x01;

/// The reject reason for a wrong key: a wire contract clients match on.
pub const MAC_FAILURE_REASON: &str = "Handshake MAC failure";

/// Largest handshake frame payload the device accepts (`MAX_HANDSHAKE_SIZE`).
pub const MAX_HANDSHAKE_LEN: usize = 128;

/// Length of the ChaCha20-Poly1305 tag on every encrypted frame.
pub const MAC_LEN: usize = 16;

/// The prologue for a client hello with these bytes (empty in practice).
pub fn prologue(client_hello: &[u8]) -> Vec<u8> {
    let len = u16::try_from(client_hello.len()).expect("a handshake frame fits in u16");
    let mut p = Vec::with_capacity(PROLOGUE_PREFIX.len() + 2 + client_hello.len());
    p.extend_from_slice(PROLOGUE_PREFIX);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(client_hello);
    p
}

/// The server hello: the chosen protocol, and since ESPHome 2022.2 the node name and since
/// 2025.4 the MAC, each NUL-terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The protocol the server chose (must be [`CHOSEN_PROTOCOL`]).
    pub protocol: u8,
    /// The node name, when the server sent one.
    pub name: Option<String>,
    /// The MAC as 12 lowercase hex digits, when the server sent one.
    pub mac: Option<String>,
}

impl ServerHello {
    /// The payload ESPHome sends.
    pub fn encode(name: &str, mac: &[u8; 6]) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + name.len() + 13);
        v.push(CHOSEN_PROTOCOL);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.extend_from_slice(hex::encode(mac).as_bytes());
        v.push(0);
        v
    }

    /// Reads a server hello payload; `None` when it is empty.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let (&protocol, rest) = payload.split_first()?;
        let mut parts = rest.splitn(3, |&b| b == 0);
        let name = parts.next().filter(|_| rest.contains(&0));
        let after_name = name.map_or(0, |n| n.len() + 1);
        let mac = parts.next().filter(|_| rest[after_name..].contains(&0));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some(Self {
            protocol,
            name: name.map(text),
            mac: mac.map(text),
        })
    }
}

/// SHA-256 in counter mode over the machine's entropy and a purpose label.
#[derive(Clone)]
pub(crate) struct SeededRng {
    seed: [u8; 32],
    label: &'static [u8],
    block: u64,
    buffer: [u8; 32],
    offset: usize,
}

impl SeededRng {
    pub(crate) fn new(seed: [u8; 32], label: &'static [u8]) -> Self {
        Self {
            seed,
            label,
            block: 0,
            buffer: [0; 32],
            offset: 32,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.offset == 32 {
                let digest = Sha256::new()
                    .chain_update(self.label)
                    .chain_update(self.block.to_be_bytes())
                    .chain_update(self.seed)
                    .finalize();
                self.buffer.copy_from_slice(&digest);
                self.block += 1;
                self.offset = 0;
            }
            *byte = self.buffer[self.offset];
            self.offset += 1;
        }
    }
}

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest);
        Ok(())
    }
}

/// Randomness from the seed; every primitive from snow's default resolver.
struct Resolver(SeededRng);

impl CryptoResolver for Resolver {
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

/// One side of the two-message handshake.
pub(crate) struct Handshake(snow::HandshakeState);

impl Handshake {
    pub(crate) fn new(
        key: &NoiseKey,
        prologue: &[u8],
        rng: SeededRng,
        initiator: bool,
    ) -> Result<Self, snow::Error> {
        let params = PROTOCOL.parse().expect("a valid noise protocol name");
        let resolver = FallbackResolver::new(Box::new(Resolver(rng)), Box::new(DefaultResolver));
        let builder = snow::Builder::with_resolver(params, Box::new(resolver))
            .psk(0, key.bytes())?
            .prologue(prologue)?;
        Ok(Self(if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        }))
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
    pub(crate) fn into_transport(self) -> Result<Session, snow::Error> {
        self.0.into_transport_mode().map(Session)
    }
}

/// The transport ciphers after the handshake.
pub(crate) struct Session(snow::TransportState);

impl Session {
    /// Encrypts one message's plaintext (`u16 type ‖ u16 len ‖ payload`).
    pub(crate) fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let mut ct = vec![0u8; plaintext.len() + MAC_LEN];
        // Fails only for a message over 65535 bytes or after 2^64 messages.
        let n = self
            .0
            .write_message(plaintext, &mut ct)
            .expect("encrypting a message below the noise limit");
        ct.truncate(n);
        ct
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

    #[test]
    fn prologue_of_the_empty_client_hello() {
        assert_eq!(prologue(&[]), b"NoiseAPIInit\x00\x00".to_vec());
        assert_eq!(prologue(&[7]), b"NoiseAPIInit\x00\x01\x07".to_vec());
    }

    #[test]
    fn server_hello_bytes() {
        let p = ServerHello::encode("kitchen", &[0xAA, 0xBB, 0xCC, 0x01, 0x02, 0x03]);
        assert_eq!(p, b"\x01kitchen\x00aabbcc010203\x00".to_vec());
        assert_eq!(
            ServerHello::parse(&p),
            Some(ServerHello {
                protocol: 1,
                name: Some("kitchen".into()),
                mac: Some("aabbcc010203".into()),
            })
        );
        // Before 2022.2 only the protocol; before 2025.4 no MAC.
        assert_eq!(
            ServerHello::parse(&[1]),
            Some(ServerHello {
                protocol: 1,
                name: None,
                mac: None
            })
        );
        assert_eq!(
            ServerHello::parse(b"\x01node\x00"),
            Some(ServerHello {
                protocol: 1,
                name: Some("node".into()),
                mac: None
            })
        );
        assert_eq!(ServerHello::parse(&[]), None);
    }

    #[test]
    fn seeded_streams_are_deterministic() {
        let mut a = SeededRng::new([3; 32], b"x");
        let mut b = SeededRng::new([3; 32], b"x");
        let mut c = SeededRng::new([3; 32], b"y");
        let (mut x, mut y, mut z) = ([0u8; 70], [0u8; 70], [0u8; 70]);
        a.fill(&mut x);
        b.fill(&mut y[..33]);
        b.fill(&mut y[33..]);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
    }
}

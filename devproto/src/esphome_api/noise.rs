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
//! What it does not do: draw randomness, or run the handshake itself. Ephemeral keys come from
//! the 32 bytes of entropy the machine was built with (a ChaCha20 stream, see
//! `crate::esphome::entropy`), so tests with fixed entropy get byte-exact handshakes; security
//! rests on the driver passing OS randomness. The handshake and transport ciphers are ESPHome
//! OTA's (`crate::esphome::noise`): the same Noise pattern, another prologue.

pub(crate) use crate::esphome::noise::{Handshake, Transport};

use bytes::{Bytes, BytesMut};

use super::frame;
use super::message::Message;

/// `message` as it goes on the wire: sealed in a Noise frame once the handshake set up
/// `session`, a plaintext frame without one.
pub(crate) fn encode_message(session: Option<&mut Transport>, message: &Message) -> Bytes {
    let payload = message.payload();
    let mut out = BytesMut::new();
    match session {
        Some(session) => {
            let ct = session.seal(&frame::noise_data(message.msg_type(), &payload));
            frame::encode_noise_frame(&ct, &mut out);
        }
        None => frame::encode_plaintext(message.msg_type(), &payload, &mut out),
    }
    out.freeze()
}

/// Noise protocol name (the same as ESPHome OTA's).
pub use crate::esphome::noise::PROTOCOL;

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
}

//! Tests of ESPHome OTA across modules: golden transcripts checked byte for byte in both roles,
//! a deterministic two-party simulation over every feature combination, and properties
//! (arbitrary bytes never panic either machine).

mod pair;
mod props;
mod transcripts;

use bytes::Bytes;

use super::{Client, ClientConfig, Device, DeviceConfig, DeviceEvent, Event};

/// Entropy of the uploader in every test.
const CLIENT_ENTROPY: [u8; 32] = [0xC1; 32];
/// Entropy of the device in every test.
const DEVICE_ENTROPY: [u8; 32] = [0xD2; 32];

/// A deterministic test image: an ESP-like header, text that compresses, and noise that does
/// not, so both compressed and plain uploads span several blocks.
fn image(len: usize, seed: u32) -> Bytes {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&[0xE9, 0x06, 0x02, 0x20]);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if x.is_multiple_of(3) {
            v.extend_from_slice(b"ESPHome firmware image text segment ");
        } else {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v.truncate(len);
    Bytes::from(v)
}

/// One direction of a transcript: what the client sends (`C`) or the device sends (`D`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    C(Vec<u8>),
    D(Vec<u8>),
}

fn c(bytes: impl AsRef<[u8]>) -> Seg {
    Seg::C(bytes.as_ref().to_vec())
}

fn d(bytes: impl AsRef<[u8]>) -> Seg {
    Seg::D(bytes.as_ref().to_vec())
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("valid hex in a transcript")
}

/// Plays the device's side of `script` to a client and checks, byte for byte, that the client
/// sends exactly the `C` segments, in order, and nothing else.
fn check_client(config: ClientConfig, image: Bytes, script: &[Seg]) -> (Client, Vec<Event>) {
    let mut client = Client::new(config, image, CLIENT_ENTROPY).unwrap();
    let mut out: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for (i, seg) in script.iter().enumerate() {
        match seg {
            Seg::C(want) => {
                while out.len() < want.len() {
                    let Some(b) = client.poll_transmit() else {
                        break;
                    };
                    out.extend_from_slice(&b);
                }
                assert!(
                    out.len() >= want.len() && out[..want.len()] == want[..],
                    "segment {i}: client sent\n{}\nexpected\n{}",
                    hex::encode(&out[..out.len().min(200)]),
                    hex::encode(&want[..want.len().min(200)])
                );
                out.drain(..want.len());
            }
            Seg::D(bytes) => {
                assert!(
                    out.is_empty(),
                    "segment {i}: client sent extra {}",
                    hex::encode(&out)
                );
                client.handle_input(bytes).unwrap();
            }
        }
        events.extend(std::iter::from_fn(|| client.poll_event()));
    }
    assert!(out.is_empty(), "client sent extra {}", hex::encode(&out));
    assert_eq!(client.poll_transmit(), None, "client has more to send");
    (client, events)
}

/// Plays the client's side of `script` to a device and checks, byte for byte, that the device
/// answers exactly the `D` segments.
fn check_device(config: DeviceConfig, script: &[Seg]) -> (Device, Vec<DeviceEvent>) {
    let mut device = Device::new(config, super::AcceptAll, DEVICE_ENTROPY);
    let mut out: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for (i, seg) in script.iter().enumerate() {
        match seg {
            Seg::D(want) => {
                while out.len() < want.len() {
                    let Some(b) = device.poll_transmit() else {
                        break;
                    };
                    out.extend_from_slice(&b);
                }
                assert!(
                    out.len() >= want.len() && out[..want.len()] == want[..],
                    "segment {i}: device sent\n{}\nexpected\n{}",
                    hex::encode(&out),
                    hex::encode(want)
                );
                out.drain(..want.len());
            }
            Seg::C(bytes) => {
                assert!(
                    out.is_empty(),
                    "segment {i}: device sent extra {}",
                    hex::encode(&out)
                );
                device.handle_input(bytes);
            }
        }
        events.extend(std::iter::from_fn(|| device.poll_event()));
    }
    assert!(out.is_empty(), "device sent extra {}", hex::encode(&out));
    assert_eq!(device.poll_transmit(), None, "device has more to send");
    (device, events)
}

/// The image the device stored, from its events.
fn received(events: &[DeviceEvent]) -> Option<&super::ReceivedImage> {
    events.iter().find_map(|e| match e {
        DeviceEvent::ImageReceived(img) => Some(img),
        _ => None,
    })
}

//! Fuzzes the native API of `ota_devproto::esphome_api` with arbitrary bytes: the message
//! decoder (any type id, any payload; what decodes re-encodes to bytes that decode and
//! re-encode to the same bytes), and both machines, the client (fed as if from a device) and
//! the device (fed as if from a client), plaintext or Noise by the first byte, the rest cut
//! into reads by length-prefixed pieces. Nothing may panic; a failed client stays failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_devproto::esphome::NoiseKey;
use ota_devproto::esphome_api::{
    Client, ClientConfig, ClientState, DeviceInfoResponse, Message, Server, ServerConfig,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let msg_type = u16::from(mode) % 12;
    if let Ok(m) = Message::decode(msg_type, rest) {
        assert_eq!(m.msg_type(), msg_type);
        let bytes = m.payload();
        let again = Message::decode(msg_type, &bytes).expect("our own bytes decode");
        assert_eq!(again.payload(), bytes);
    }
    let key = (mode & 1 != 0).then(|| NoiseKey::new([5; 32]));
    let mut client = Client::new(
        ClientConfig {
            client_info: "fuzz".into(),
            noise_key: key.clone(),
        },
        [7; 32],
    );
    let mut server = Server::new(
        ServerConfig {
            name: "fuzz".into(),
            mac: [1, 2, 3, 4, 5, 6],
            server_info: "2026.10.0".into(),
            noise_key: key,
            device_info: DeviceInfoResponse::default(),
            sensors: Vec::new(),
        },
        [9; 32],
    );
    let mut rest = rest;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let piece = &tail[..n];
        rest = &tail[n..];
        while client.poll_transmit().is_some() {}
        while client.poll_event().is_some() {}
        if client.handle_input(piece).is_err() {
            assert_eq!(client.state(), ClientState::Failed);
            assert!(client.handle_input(b"\x00\x00\x07").is_err());
        }
        server.handle_input(piece);
        while server.poll_transmit().is_some() {}
        while server.poll_event().is_some() {}
    }
    let _ = client.handle_eof();
    server.handle_eof();
});

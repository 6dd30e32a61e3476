//! Fuzzes the uploader of `ota_devproto::esphome` with arbitrary device bytes: the first byte
//! picks the configuration (password, Noise key, plaintext policy, compression), the second a
//! prefix that brings the client to a deeper state, and the rest is cut into reads by
//! length-prefixed pieces. Nothing may panic; after a failure the machine stays failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_devproto::esphome::{Client, ClientConfig, ClientState, NoiseKey, Password};

const PREFIXES: [&[u8]; 6] = [
    b"",
    b"\x00\x02",
    b"\x00\x02\x48\x00",
    b"\x00\x01\x40\x41",
    b"\x00\x02\x48\x08\x41\x42\x43",
    b"\x00\x02\x46\x02",
];

fuzz_target!(|data: &[u8]| {
    let (Some(&config), Some(&prefix)) = (data.first(), data.get(1)) else {
        return;
    };
    let cfg = ClientConfig {
        password: (config & 1 != 0).then(|| Password::new("pw")),
        noise_key: (config & 2 != 0).then(|| NoiseKey::new([5; 32])),
        allow_plaintext: config & 4 != 0,
        compression: config & 8 == 0,
        ..ClientConfig::default()
    };
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut client = Client::new(cfg, image, [7; 32]).expect("valid image");
    let feed = |c: &mut Client, bytes: &[u8]| {
        while c.poll_transmit().is_some() {}
        let r = c.handle_input(bytes);
        while c.poll_event().is_some() {}
        if r.is_err() {
            assert_eq!(c.state(), ClientState::Failed);
            assert!(c.handle_input(b"\x41").is_err());
        }
    };
    feed(&mut client, PREFIXES[prefix as usize % PREFIXES.len()]);
    let mut rest = &data[2..];
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        feed(&mut client, &tail[..n]);
        rest = &tail[n..];
    }
    let _ = client.handle_eof();
    let _ = client.handle_timeout();
});

//! Properties: arbitrary bytes from the device never panic the client, arbitrary bytes from a
//! client never panic the device, in any configuration and any split; and mutations of a valid
//! exchange never panic either side.

use bytes::Bytes;
use proptest::prelude::*;

use super::super::{
    AcceptAll, Client, ClientConfig, Device, DeviceAuth, DeviceConfig, DeviceNoise, NoiseKey,
    OtaVersion, Password,
};
use super::pair::{Wire, run};
use super::{CLIENT_ENTROPY, DEVICE_ENTROPY, Seg, image};

fn client_config(n: u8) -> ClientConfig {
    ClientConfig {
        password: (n & 1 != 0).then(|| Password::new("pw")),
        noise_key: (n & 2 != 0).then(|| NoiseKey::new([5; 32])),
        allow_plaintext: n & 4 != 0,
        compression: n & 8 == 0,
        ..ClientConfig::default()
    }
}

fn device_config(n: u8) -> DeviceConfig {
    DeviceConfig {
        version: if n & 1 != 0 {
            OtaVersion::V1
        } else {
            OtaVersion::V2
        },
        password: (n & 2 != 0).then(|| Password::new("pw")),
        auth: [DeviceAuth::Sha256, DeviceAuth::Sha256OrMd5, DeviceAuth::Md5][(n as usize >> 2) % 3],
        extended: n & 16 == 0,
        gzip: n & 32 != 0,
        deflate: n & 64 != 0,
        partition_access: false,
        noise: (n & 128 != 0).then(|| DeviceNoise {
            key: NoiseKey::new([5; 32]),
            required: n & 8 != 0,
        }),
    }
}

/// Prefixes that bring the client to deeper states before the arbitrary bytes.
const PREFIXES: [&[u8]; 6] = [
    b"",
    b"\x00\x02",
    b"\x00\x02\x48\x00",
    b"\x00\x01\x40\x41",
    b"\x00\x02\x48\x08\x41\x42\x43",
    b"\x00\x02\x46\x02",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_survives_arbitrary_device_bytes(
        config in any::<u8>(),
        prefix in 0usize..PREFIXES.len(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
    ) {
        let mut c = Client::new(client_config(config), image(20_000, 1), CLIENT_ENTROPY).unwrap();
        let feed = |c: &mut Client, bytes: &[u8]| {
            while c.poll_transmit().is_some() {}
            let _ = c.handle_input(bytes);
            while c.poll_event().is_some() {}
        };
        feed(&mut c, PREFIXES[prefix]);
        for chunk in &chunks {
            feed(&mut c, chunk);
        }
        let _ = c.handle_eof();
        let _ = c.handle_timeout();
    }

    #[test]
    fn device_survives_arbitrary_client_bytes(
        config in any::<u8>(),
        valid_prefix in any::<bool>(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12),
    ) {
        let mut d = Device::new(device_config(config), AcceptAll, DEVICE_ENTROPY);
        if valid_prefix {
            d.handle_input(&[0x6C, 0x26, 0xF7, 0x5C, 0x45]);
        }
        for chunk in &chunks {
            d.handle_input(chunk);
            while d.poll_transmit().is_some() {}
            while d.poll_event().is_some() {}
        }
        d.handle_eof();
        d.handle_timeout();
    }

    #[test]
    fn tampered_exchanges_never_panic(
        client in any::<u8>(),
        device in any::<u8>(),
        at in 0usize..20_000,
        x in 1u8..=255,
        split in any::<u32>(),
    ) {
        let img: Bytes = image(12_000, 3);
        let out = run(
            client_config(client),
            device_config(device),
            AcceptAll,
            img.clone(),
            Wire { split: Some(split), tamper: Some((at, x)), cut_after: None },
        );
        // Whatever happened, a committed image is exactly the one sent.
        if out.committed() {
            prop_assert_eq!(out.image().unwrap().boot_image().unwrap(), img);
        }
        prop_assert!(out.log.iter().any(|s| matches!(s, Seg::C(_))));
    }
}

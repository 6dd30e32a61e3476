//! Fuzzes the device of `ota_devproto::esphome` with arbitrary client bytes: the first byte
//! picks the configuration (version, password and challenge, legacy or extended protocol,
//! gzip, deflate, Noise offered or required), an optional valid magic follows, and the rest is
//! cut into reads by length-prefixed pieces. Nothing may panic; once closed, the device sends
//! nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_devproto::esphome::{
    AcceptAll, Device, DeviceAuth, DeviceConfig, DeviceNoise, NoiseKey, OtaVersion, Password,
};

fuzz_target!(|data: &[u8]| {
    let (Some(&n), Some(&magic)) = (data.first(), data.get(1)) else {
        return;
    };
    let cfg = DeviceConfig {
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
        partition_access: magic & 2 != 0,
        noise: (n & 128 != 0).then(|| DeviceNoise {
            key: NoiseKey::new([5; 32]),
            required: n & 8 != 0,
        }),
    };
    let mut device = Device::new(cfg, AcceptAll, [9; 32]);
    if magic & 1 != 0 {
        device.handle_input(&[0x6C, 0x26, 0xF7, 0x5C, 0x45]);
    }
    let mut rest = &data[2..];
    while let Some((&len, tail)) = rest.split_first() {
        let k = (len as usize).min(tail.len());
        device.handle_input(&tail[..k]);
        while device.poll_transmit().is_some() {}
        while device.poll_event().is_some() {}
        rest = &tail[k..];
    }
    device.handle_eof();
    device.handle_timeout();
    while device.poll_transmit().is_some() {}
    assert!(device.is_closed());
    device.handle_input(b"\x00");
    assert!(device.poll_transmit().is_none());
});

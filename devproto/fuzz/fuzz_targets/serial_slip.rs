//! Fuzzes the ESP ROM serial protocol of `ota_devproto::serial` with arbitrary bytes: the SLIP
//! decoder (split at an arbitrary point, so escapes and frames cross reads), the request and
//! response parsers, command parsing, and both state machines (the flasher and the simulated
//! ROM) fed the same bytes. Nothing may panic; every frame the decoder yields re-encodes to
//! bytes that decode to the same frame.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ota_devproto::serial::{
    Command, Flasher, FlasherConfig, Job, Request, Response, RomConfig, RomDevice, SlipDecoder,
    slip,
};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut decoder = SlipDecoder::with_max_frame(4096);
    decoder.push(&data[..cut]);
    decoder.push(&data[cut..]);
    while let Some(frame) = decoder.next_frame() {
        assert!(frame.len() <= 4096);
        let mut again = SlipDecoder::new();
        again.push(&slip::encode(&frame));
        assert_eq!(again.next_frame().as_deref(), Some(frame.as_slice()));
        if let Ok(resp) = Response::parse(&frame) {
            let _ = resp.outcome(32);
            assert_eq!(Response::parse(&resp.encode()), Ok(resp));
        }
        if let Ok(req) = Request::parse(&frame) {
            if let Ok(cmd) = Command::parse(&req) {
                assert_eq!(Command::parse(&cmd.to_request()), Ok(cmd));
            }
        }
    }

    let mut flasher = Flasher::new(FlasherConfig::default(), Job::Detect);
    flasher.reset_done(Duration::ZERO);
    flasher.handle_input(data, Duration::from_millis(1));
    flasher.handle_timeout(Duration::from_secs(10));
    while flasher.poll_event().is_some() {}

    let mut rom = RomDevice::new(RomConfig::esp32());
    rom.handle_input(data);
    while rom.poll_transmit().is_some() {}
});

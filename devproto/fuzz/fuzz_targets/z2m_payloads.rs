//! Fuzzes every zigbee2mqtt payload parser of `ota_devproto::z2m` with arbitrary bytes: request
//! payloads (object and bare forms), response envelopes and their typed data, device state
//! messages, availability, `bridge/devices`, `bridge/info`, topics and error classification.
//! None of them may panic; what parses must serialize again and parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_devproto::z2m::{
    self, BridgeInfo, CheckData, DeviceState, OtaRequest, Response, ScheduleData, Topics,
    UpdateData, Z2mVersion,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = OtaRequest::parse(data)
        && !req.bare
    {
        let again = OtaRequest::parse(req.to_payload().as_bytes()).expect("own payload parses");
        assert_eq!(again.id, req.id);
        assert_eq!(again.transaction, req.transaction);
    }
    if let Ok(resp) = Response::parse(data) {
        let again = Response::parse(resp.to_payload().as_bytes()).expect("own payload parses");
        assert_eq!(again.status, resp.status);
        assert_eq!(again.transaction, resp.transaction);
        let _ = CheckData::from_value(&resp.data).map(|c| c.to_value(Z2mVersion::V2_8Plus));
        let _ = UpdateData::from_value(&resp.data).map(|u| u.to_value(Z2mVersion::V2_0To2_7));
        let _ = ScheduleData::from_value(&resp.data).map(|s| s.to_value());
        if let Some(e) = &resp.error {
            let _ = z2m::to_task_error(e);
        }
    }
    if let Some(state) = DeviceState::parse(data) {
        let mut cache = z2m::StateCache::from_map(state.raw.clone());
        cache.reset_at_startup();
        let _ = DeviceState::parse(cache.to_payload().as_bytes()).expect("own payload parses");
    }
    let _ = z2m::state::parse_availability(data);
    if let Some(devices) = z2m::devices::parse_bridge_devices(data) {
        let payload = z2m::devices::bridge_devices_payload(&devices);
        assert_eq!(
            z2m::devices::parse_bridge_devices(payload.as_bytes()).as_ref(),
            Some(&devices)
        );
    }
    let _ = BridgeInfo::parse(data).map(|i| i.api());
    if let Ok(text) = std::str::from_utf8(data) {
        let topics = Topics::new("zigbee2mqtt");
        let _ = topics.parse(text);
        let _ = topics.parse_for(text, Z2mVersion::V2_0To2_7);
        let _ = z2m::classify(text);
        let _ = z2m::state::parse_iso8601_ms(text);
    }
});

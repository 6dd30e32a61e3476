//! The conformance transcript of zigbee2mqtt's `otaUpdate.test.ts` (reference §2), byte for
//! byte: every payload zigbee2mqtt publishes there is rebuilt here from the typed builders.

use serde_json::json;

use super::state::patch;
use super::*;

const V: Z2mVersion = Z2mVersion::V2_8Plus;

fn s(v: &serde_json::Value) -> String {
    stable_stringify(v)
}

#[test]
fn case_1_update_progress_success_and_response() {
    assert_eq!(
        s(&patch::progress(0.0, 36000.5678)),
        r#"{"update":{"progress":0,"remaining":36001,"state":"updating"}}"#
    );
    assert_eq!(
        s(&patch::progress(10.0, 3600.2123)),
        r#"{"update":{"progress":10,"remaining":3600,"state":"updating"}}"#
    );
    assert_eq!(
        s(&patch::finished(V, 90)),
        r#"{"update":{"installed_version":90,"latest_release_notes":null,"latest_source":null,"latest_version":90,"state":"idle"}}"#
    );
    let data = UpdateData {
        id: "bulb".into(),
        from: Some(VersionData {
            file_version: Some(1),
            software_build_id: Some(json!(11)),
            date_code: Some("20190111".into()),
        }),
        to: Some(VersionData {
            file_version: Some(90),
            software_build_id: Some(json!(12)),
            date_code: Some("20190112".into()),
        }),
    };
    let payload = Response::ok(data.to_value(V), None).to_payload();
    assert_eq!(
        payload,
        r#"{"data":{"from":{"date_code":"20190111","file_version":1,"software_build_id":11},"id":"bulb","to":{"date_code":"20190112","file_version":90,"software_build_id":12}},"status":"ok"}"#
    );
    let parsed = UpdateData::from_value(&Response::parse(payload.as_bytes()).unwrap().data);
    assert_eq!(parsed, Some(data));
}

#[test]
fn case_3_to_5_update_failures_and_missing_basic_reads() {
    assert_eq!(
        s(&patch::state(OtaState::Available)),
        r#"{"update":{"state":"available"}}"#
    );
    assert_eq!(
        Response::error(ErrorText(V).update_failed("bulb", "Update failed"), None).to_payload(),
        r#"{"data":{},"error":"OTA update of 'bulb' failed (Update failed)","status":"error"}"#
    );
    assert_eq!(
        s(&patch::finished(V, 1)),
        r#"{"update":{"installed_version":1,"latest_release_notes":null,"latest_source":null,"latest_version":1,"state":"idle"}}"#
    );
    assert_eq!(
        Response::error(ErrorText(V).no_image("bulb"), None).to_payload(),
        r#"{"data":{},"error":"Update of 'bulb' failed (No image currently available)","status":"error"}"#
    );
    let data = UpdateData {
        id: "bulb".into(),
        from: Some(VersionData {
            file_version: Some(1),
            ..Default::default()
        }),
        to: Some(VersionData {
            file_version: Some(2),
            ..Default::default()
        }),
    };
    assert_eq!(
        Response::ok(data.to_value(V), None).to_payload(),
        r#"{"data":{"from":{"file_version":1},"id":"bulb","to":{"file_version":2}},"status":"ok"}"#
    );
}

#[test]
fn case_6_and_10_check_responses() {
    let check = |update_available, downgrade, source: Option<&str>, notes: Option<&str>| {
        Response::ok(
            CheckData {
                id: "bulb".into(),
                update_available,
                downgrade: Some(downgrade),
                source: source.map(Into::into),
                release_notes: notes.map(Into::into),
            }
            .to_value(V),
            None,
        )
        .to_payload()
    };
    assert_eq!(
        check(false, false, None, None),
        r#"{"data":{"downgrade":false,"id":"bulb","update_available":false},"status":"ok"}"#
    );
    assert_eq!(
        check(true, false, Some("https://example.com/my.ota"), None),
        r#"{"data":{"downgrade":false,"id":"bulb","source":"https://example.com/my.ota","update_available":true},"status":"ok"}"#
    );
    assert_eq!(
        check(false, true, None, None),
        r#"{"data":{"downgrade":true,"id":"bulb","update_available":false},"status":"ok"}"#
    );
    assert_eq!(
        check(true, true, Some("https://example.com/my.ota"), None),
        r#"{"data":{"downgrade":true,"id":"bulb","source":"https://example.com/my.ota","update_available":true},"status":"ok"}"#
    );
    let case10 = Response::ok(
        CheckData {
            id: "dimmer_wall_switch".into(),
            update_available: true,
            downgrade: Some(false),
            source: Some("https://example.com/my.ota".into()),
            release_notes: Some("New features".into()),
        }
        .to_value(V),
        None,
    );
    assert_eq!(
        case10.to_payload(),
        r#"{"data":{"downgrade":false,"id":"dimmer_wall_switch","release_notes":"New features","source":"https://example.com/my.ota","update_available":true},"status":"ok"}"#
    );
    // 2.0–2.7 shape.
    assert_eq!(
        Response::ok(
            CheckData {
                id: "bulb".into(),
                update_available: true,
                ..Default::default()
            }
            .to_value(Z2mVersion::V2_0To2_7),
            None
        )
        .to_payload(),
        r#"{"data":{"id":"bulb","update_available":true},"status":"ok"}"#
    );
}

#[test]
fn case_7_to_11_errors() {
    let e = ErrorText(V);
    assert_eq!(
        Response::error(
            e.check_failed("bulb", "RF signals disturbed because of dogs barking"),
            None
        )
        .to_payload(),
        r#"{"data":{},"error":"Failed to check if OTA update available for 'bulb' (RF signals disturbed because of dogs barking)","status":"error"}"#
    );
    assert_eq!(
        Response::error(e.does_not_exist("not_existing_deviceooo"), None).to_payload(),
        r#"{"data":{},"error":"Device 'not_existing_deviceooo' does not exist","status":"error"}"#
    );
    assert_eq!(
        Response::error(e.not_supported("dimmer_wall_switch"), None).to_payload(),
        r#"{"data":{},"error":"Device 'dimmer_wall_switch' does not support OTA updates","status":"error"}"#
    );
    assert_eq!(
        Response::error(e.in_progress("bulb"), None).to_payload(),
        r#"{"data":{},"error":"OTA update or check for update already in progress for 'bulb'","status":"error"}"#
    );
}

#[test]
fn case_12_to_16_schedule_and_abort() {
    assert_eq!(
        s(&patch::state(OtaState::Scheduled)),
        r#"{"update":{"state":"scheduled"}}"#
    );
    assert_eq!(
        Response::ok(
            ScheduleData {
                id: "bulb".into(),
                url: Some("<data>/ota/0x000b57fffec6a5b2_123401234".into()),
            }
            .to_value(),
            None
        )
        .to_payload(),
        r#"{"data":{"id":"bulb","url":"<data>/ota/0x000b57fffec6a5b2_123401234"},"status":"ok"}"#
    );
    assert_eq!(
        s(&patch::state(OtaState::Idle)),
        r#"{"update":{"state":"idle"}}"#
    );
    let id_ok = r#"{"data":{"id":"bulb"},"status":"ok"}"#;
    assert_eq!(
        Response::ok(response::id_data("bulb"), None).to_payload(),
        id_ok
    );
    assert_eq!(
        Response::ok(
            ScheduleData {
                id: "bulb".into(),
                url: None
            }
            .to_value(),
            None
        )
        .to_payload(),
        id_ok
    );
    assert_eq!(
        Response::error(ErrorText(V).nothing_to_abort("bulb"), None).to_payload(),
        r#"{"data":{},"error":"No OTA in progress to abort for device 'bulb'","status":"error"}"#
    );
    // Topics: abort ok on its own topic, abort error on `…/update`.
    let t = Topics::default();
    assert_eq!(
        t.response(OtaOp::Abort),
        "zigbee2mqtt/bridge/response/device/ota_update/update/abort"
    );
    assert_eq!(
        t.error_response(OtaOp::Abort),
        "zigbee2mqtt/bridge/response/device/ota_update/update"
    );
    // String form (case 16): the request is the bare id, the response has no transaction.
    let r = OtaRequest::parse(b"bulb").unwrap();
    assert!(r.bare && r.transaction.is_none());
}

#[test]
fn case_17_to_25_device_initiated_and_startup() {
    assert_eq!(
        s(&patch::versions(
            V,
            OtaState::Available,
            33,
            34,
            Some("https://example.com/my.ota"),
            None
        )),
        r#"{"update":{"installed_version":33,"latest_release_notes":null,"latest_source":"https://example.com/my.ota","latest_version":34,"state":"available"}}"#
    );
    assert_eq!(
        s(&patch::versions(
            V,
            OtaState::Idle,
            33,
            33,
            Some("https://example.com/my.ota"),
            None
        )),
        r#"{"update":{"installed_version":33,"latest_release_notes":null,"latest_source":"https://example.com/my.ota","latest_version":33,"state":"idle"}}"#
    );
    assert_eq!(
        s(&patch::finished(V, 2)),
        r#"{"update":{"installed_version":2,"latest_release_notes":null,"latest_source":null,"latest_version":2,"state":"idle"}}"#
    );
    // 25: a cached `updating` becomes `idle` at startup.
    let mut c = StateCache::new();
    c.apply(&json!({"update": {"progress": 100, "remaining": 10, "state": "updating"}}));
    c.reset_at_startup();
    assert_eq!(c.to_payload(), r#"{"update":{"state":"idle"}}"#);
}

#[test]
fn transaction_echo_keeps_its_type() {
    for tx in [json!("t-1"), json!(7), json!(null), json!({"n": [1, 2]})] {
        let payload = Response::ok(response::id_data("bulb"), Some(tx.clone())).to_payload();
        assert_eq!(
            Response::parse(payload.as_bytes()).unwrap().transaction,
            Some(tx)
        );
    }
    assert_eq!(
        Response::ok(response::id_data("bulb"), Some(json!(7))).to_payload(),
        r#"{"data":{"id":"bulb"},"status":"ok","transaction":7}"#
    );
}

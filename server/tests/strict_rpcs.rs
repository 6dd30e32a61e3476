//! RPCs refuse what they should, over real gRPC: checks of unknown devices record nothing, a
//! megabyte of input comes back as a short INVALID_ARGUMENT, uploads clean up after a cancel, a
//! stream error and a stall, every size limit answers RESOURCE_EXHAUSTED, stored numbers and ids
//! are bounded, and repeating a signature records nothing.

use std::time::Duration;

use futures::StreamExt;
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::session::*;
use ota_testkit::upload::*;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn last_seq(ts: &TestOtad) -> u64 {
    ts.app().core.store().last_seq()
}

fn tmp_uploads(ts: &TestOtad) -> Vec<std::path::PathBuf> {
    files_under(&ts.dir.path().join("blobs/tmp"))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 10 s"));
}

/// A device `home/lamp` (ESPHome, esp32, 1.0.0) reported by an agent that stays connected
/// while the returned session lives.
async fn with_a_device(
    ts: &TestOtad,
) -> (
    mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::ServerMessage>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::AgentMessage {
        seq: 0,
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            site_id: "home".into(),
            agent_id: "agent-1".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = ts
        .agent()
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::AgentMessage {
        seq: 1,
        body: Some(pb::agent_message::Body::Inventory(pb::Inventory {
            full: false,
            devices: vec![pb::DeviceReport {
                local_id: "lamp".into(),
                transport: pb::Transport::Esphome as i32,
                network: "esphome".into(),
                chip: "esp32".into(),
                current: Some(pb::VersionInfo {
                    version: "1.0.0".into(),
                    ..Default::default()
                }),
                reachable: true,
                supports_ota: true,
                ..Default::default()
            }],
            removed_local_ids: vec![],
        })),
    })
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::server_message::Body::Ack(a)) = m.body {
            assert_eq!(a.acked_seq, 1);
            return (tx, inbound);
        }
    }
}

#[tokio::test]
async fn checking_a_device_that_does_not_exist_is_not_found_and_records_nothing() {
    let ts = TestOtad::start().await;
    let _agent = with_a_device(&ts).await;
    let before = last_seq(&ts);
    for id in ["x", "", "nosite/x", "../../etc/passwd", "home/nothing"] {
        let get = ts
            .devices()
            .get(pb::GetDeviceRequest { id: id.into() })
            .await
            .unwrap_err();
        let check = ts
            .devices()
            .check(pb::CheckDeviceRequest {
                device_id: id.into(),
                firmware_id: String::new(),
                timeout_ms: 1000,
            })
            .await
            .unwrap_err();
        assert_eq!(check.code(), get.code(), "{id:?}: {check:?}");
        assert!(
            matches!(check.code(), Code::NotFound | Code::InvalidArgument),
            "{id:?}: {check:?}"
        );
    }
    assert_eq!(last_seq(&ts), before, "a check of nothing appended events");
    // A device that exists is still checked (and recorded).
    let c = ts
        .devices()
        .check(pb::CheckDeviceRequest {
            device_id: "home/lamp".into(),
            firmware_id: String::new(),
            timeout_ms: 200,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.device_id, "home/lamp");
    assert!(last_seq(&ts) > before);
}

#[tokio::test]
async fn a_megabyte_name_is_a_short_invalid_argument() {
    let ts = TestOtad::start().await;
    let huge = "n".repeat(1024 * 1024);
    let app = EspAppBuilder::new(Chip::Esp32).payload_size(1000).build();
    for m in [meta(&huge, "1"), meta("ok", &huge)] {
        let err = ts.try_upload(m, &app).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().len() < 300, "{} bytes", err.message().len());
        assert!(err.message().contains("nnn…\""), "{}", err.message());
    }
    // A site id in a rollout's zones and selector, and a device id: the same.
    let spec = pb::RolloutSpec {
        name: "r".into(),
        firmware_id: "fw-1".into(),
        selector: Some(pb::DeviceSelector {
            site_ids: vec![huge.clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = ts
        .rollouts()
        .plan(pb::PlanRolloutRequest {
            subject: Some(pb::plan_rollout_request::Subject::Spec(spec)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{}", err.message());
    let err = ts
        .devices()
        .get(pb::GetDeviceRequest { id: huge.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{}", err.message());
    assert_eq!(last_seq(&ts), 0);
}

#[tokio::test]
async fn uploads_leave_no_temporary_file_after_a_cancel_a_stream_error_or_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestOtad::start_in(dir, |c| {
        c.upload_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let app = EspAppBuilder::new(Chip::Esp32)
        .payload_size(200_000)
        .build();
    let msgs = upload_messages(meta("fw", "1"), &app, 64 * 1024);

    // The client cancels half-way.
    let (tx, rx) = mpsc::channel(8);
    tx.send(msgs[0].clone()).await.unwrap();
    tx.send(msgs[1].clone()).await.unwrap();
    let mut client = ts.firmware();
    let call = tokio::spawn(async move { client.upload(ReceiverStream::new(rx)).await });
    until("the upload's temporary file", || {
        !tmp_uploads(&ts).is_empty()
    })
    .await;
    call.abort();
    drop(tx);
    until("the cancelled upload's file removed", || {
        tmp_uploads(&ts).is_empty()
    })
    .await;

    // The stream breaks: bytes that are no upload message after a good chunk.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    tx.send(msgs[0].encode_to_vec()).await.unwrap();
    tx.send(msgs[1].encode_to_vec()).await.unwrap();
    tx.send(vec![0x12, 0xff, 0xff, 0xff, 0x0f]).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ts.channel.clone());
    grpc.ready().await.unwrap();
    let err = grpc
        .client_streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static("/ota.v1.FirmwareService/Upload"),
            RawCodec::<pb::UploadFirmwareResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    until("the broken upload's file removed", || {
        tmp_uploads(&ts).is_empty()
    })
    .await;

    // The client stalls: the server gives up after upload_idle_timeout (300 ms here).
    let (tx, rx) = mpsc::channel(8);
    tx.send(msgs[0].clone()).await.unwrap();
    tx.send(msgs[1].clone()).await.unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        ts.firmware().upload(ReceiverStream::new(rx)),
    )
    .await
    .expect("the server ends a stalled upload")
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("upload_idle_timeout"), "{err:?}");
    assert!(tmp_uploads(&ts).is_empty());
    drop(tx);

    // Nothing was registered, and a complete upload still works.
    assert_eq!(last_seq(&ts), 0);
    ts.try_upload(meta("fw", "1"), &app).await.unwrap();
    assert!(tmp_uploads(&ts).is_empty());
}

#[tokio::test]
async fn every_size_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestOtad::start_in(dir, |c| c.max_message_bytes = 64 * 1024).await;
    let big = "x".repeat(100 * 1024);
    let raw = |m: &dyn Fn() -> Vec<u8>| m();
    // Unary requests of several services, and server-streaming ones.
    let calls: Vec<(&str, Vec<u8>)> = vec![
        (
            "/ota.v1.DeviceService/Get",
            raw(&|| pb::GetDeviceRequest { id: big.clone() }.encode_to_vec()),
        ),
        (
            "/ota.v1.RolloutService/Create",
            raw(&|| {
                pb::CreateRolloutRequest {
                    spec: Some(pb::RolloutSpec {
                        name: big.clone(),
                        ..Default::default()
                    }),
                    start: false,
                }
                .encode_to_vec()
            }),
        ),
        (
            "/ota.v1.EventService/Tail",
            raw(&|| {
                pb::TailEventsRequest {
                    stream_prefixes: vec![big.clone()],
                    ..Default::default()
                }
                .encode_to_vec()
            }),
        ),
        (
            "/ota.v1.FirmwareService/Download",
            raw(&|| {
                pb::DownloadFirmwareRequest {
                    firmware_id: big.clone(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
        ),
        (
            "/ota.v1.AccessService/CreateToken",
            raw(&|| {
                pb::CreateTokenRequest {
                    name: big.clone(),
                    ..Default::default()
                }
                .encode_to_vec()
            }),
        ),
    ];
    for (path, bytes) in calls {
        let mut grpc = tonic::client::Grpc::new(ts.channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::try_from(path).unwrap();
        let err = match grpc
            .server_streaming(
                tonic::Request::new(bytes),
                path.clone(),
                RawCodec::<pb::Event>::default(),
            )
            .await
        {
            Err(e) => e,
            Ok(r) => r
                .into_inner()
                .next()
                .await
                .expect("an answer")
                .expect_err("refused"),
        };
        assert_eq!(err.code(), Code::ResourceExhausted, "{path}: {err:?}");
    }

    // A streamed upload message over the limit (the bug: INVALID_ARGUMENT "upload interrupted"),
    // and a firmware chunk over 1 MiB on a server that accepts such messages.
    let app = EspAppBuilder::new(Chip::Esp32)
        .payload_size(200_000)
        .build();
    let err = ts
        .firmware()
        .upload(futures::stream::iter(upload_messages(
            meta("fw", "1"),
            &app,
            100 * 1024,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let dir = tempfile::tempdir().unwrap();
    let ts2 = TestOtad::start_in(dir, |c| {
        c.max_message_bytes = 4 * 1024 * 1024;
        c.max_firmware_bytes = 8 * 1024 * 1024;
    })
    .await;
    let app = EspAppBuilder::new(Chip::Esp32)
        .payload_size(1_500_000)
        .build();
    let err = ts2
        .firmware()
        .upload(futures::stream::iter(upload_messages(
            meta("fw", "1"),
            &app,
            app.len(),
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("chunks are at most"), "{err:?}");
}

fn spec_with(f: impl FnOnce(&mut pb::RolloutSpec)) -> pb::RolloutSpec {
    let mut s = pb::RolloutSpec {
        name: "spring".into(),
        firmware_id: "fw-1".into(),
        stages: vec![pb::Stage {
            name: "all".into(),
            size: Some(pb::stage::Size::CumulativePercent(100.0)),
            ..Default::default()
        }],
        ..Default::default()
    };
    f(&mut s);
    s
}

#[tokio::test]
async fn stored_numbers_and_ids_are_bounded() {
    let ts = TestOtad::start().await;
    let _agent = with_a_device(&ts).await;
    let before = last_seq(&ts);
    let bad: Vec<(&str, pb::RolloutSpec)> = vec![
        (
            "max_attempts",
            spec_with(|s| {
                s.retry = Some(pb::RetryPolicy {
                    max_attempts: u32::MAX,
                    ..Default::default()
                })
            }),
        ),
        (
            "min_battery_percent",
            spec_with(|s| {
                s.preconditions = Some(pb::Preconditions {
                    min_battery_percent: Some(u32::MAX),
                    ..Default::default()
                })
            }),
        ),
        (
            "site_ids",
            spec_with(|s| {
                s.selector = Some(pb::DeviceSelector {
                    site_ids: vec![String::new()],
                    ..Default::default()
                })
            }),
        ),
        (
            "site_ids",
            spec_with(|s| {
                s.selector = Some(pb::DeviceSelector {
                    site_ids: vec!["../../etc".into()],
                    ..Default::default()
                })
            }),
        ),
        (
            "site_ids",
            spec_with(|s| {
                s.selector = Some(pb::DeviceSelector {
                    site_ids: vec!["a/b".into()],
                    ..Default::default()
                })
            }),
        ),
        (
            "transports",
            spec_with(|s| {
                s.selector = Some(pb::DeviceSelector {
                    transports: vec![999],
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, spec) in bad {
        let err = ts
            .rollouts()
            .create(pb::CreateRolloutRequest {
                spec: Some(spec.clone()),
                start: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
        let err = ts
            .devices()
            .batch_check(pb::BatchCheckRequest {
                selector: spec.selector.clone(),
                ..Default::default()
            })
            .await;
        if spec.selector.is_some() {
            let err = err.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        }
    }
    assert_eq!(last_seq(&ts), before, "refused specs recorded nothing");
}

#[tokio::test]
async fn the_same_signature_twice_records_one_event() {
    let ts = TestOtad::start().await;
    let app = EspAppBuilder::new(Chip::Esp32).payload_size(1000).build();
    let fw = ts
        .try_upload(meta("fw", "1"), &app)
        .await
        .unwrap()
        .firmware
        .unwrap();
    let sig = |byte: u8| pb::AddSignatureRequest {
        firmware_id: fw.id.clone(),
        signature: Some(pb::FirmwareSignature {
            key_id: "release-1".into(),
            signature: vec![byte; 64],
            ..Default::default()
        }),
    };
    ts.firmware().add_signature(sig(1)).await.unwrap();
    let after_first = last_seq(&ts);
    for _ in 0..3 {
        let f = ts
            .firmware()
            .add_signature(sig(1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(f.signatures.len(), 1);
    }
    assert_eq!(
        last_seq(&ts),
        after_first,
        "a repeated signature appended events"
    );
    // Another signature under the same key replaces it: one event.
    let f = ts
        .firmware()
        .add_signature(sig(2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.signatures.len(), 1);
    assert_eq!(f.signatures[0].signature, vec![2; 64]);
    assert_eq!(last_seq(&ts), after_first + 1);
}

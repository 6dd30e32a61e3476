//! The firmware catalog over real gRPC: uploads of every format, refusals with the reason and
//! nothing left behind, downloads, deletes, restarts.

use futures::StreamExt;
use ota_firmware::Chip;
use ota_firmware::builders::{EspAppBuilder, FactoryImageBuilder, ZigbeeOtaBuilder};
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::upload::*;
use tonic::Code;

fn zigbee_file() -> Vec<u8> {
    ZigbeeOtaBuilder::new(0x117C, 0x2803, 0x2309_3631)
        .header_string("TRADFRI bulb")
        .hardware_versions(1, 5)
        .upgrade_image(40_000)
        .ikea_prefix(488)
        .trailer(vec![0xAA; 512])
        .build()
}

#[tokio::test]
async fn zigbee_upload_records_the_parsed_header() {
    let ts = TestOtad::start().await;
    let bytes = zigbee_file();
    let resp = ts
        .try_upload(meta("tradfri-bulb", "2.3.093"), &bytes)
        .await
        .unwrap();
    assert!(!resp.already_existed);
    let fw = resp.firmware.unwrap();
    assert_eq!(fw.format, pb::FirmwareFormat::ZigbeeOta as i32);
    assert_eq!(fw.channel, pb::ChannelType::Zigbee as i32);
    assert_eq!(fw.size, bytes.len() as u64);
    assert!(fw.id.starts_with("fw-") && fw.id.len() == 19);
    assert_eq!(fw.sha256.len(), 64);
    assert_eq!(fw.md5.len(), 32);
    assert_eq!(fw.sha512.len(), 128);
    let z = fw.zigbee.unwrap();
    assert_eq!(z.manufacturer_code, 0x117C);
    assert_eq!(z.image_type, 0x2803);
    assert_eq!(z.file_version, 0x2309_3631);
    assert_eq!(z.header_string, "TRADFRI bulb");
    assert_eq!(z.prefix_length, 488);
    assert_eq!(z.trailing_length, 512);
    assert_eq!(z.min_hardware_version, Some(1));
    assert_eq!(z.max_hardware_version, Some(5));
    assert_eq!(
        u64::from(z.total_image_size),
        bytes.len() as u64 - 488 - 512
    );

    // Listed, found by a prefix of its id, downloadable byte for byte.
    let list = ts
        .firmware()
        .list(pb::ListFirmwareRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.firmware.len(), 1);
    let got = ts
        .firmware()
        .get(pb::GetFirmwareRequest {
            id: fw.id[..8].to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, fw.id);
    let mut chunks = ts
        .firmware()
        .download(pb::DownloadFirmwareRequest {
            firmware_id: fw.id.clone(),
            offset: 0,
            task_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(c) = chunks.next().await {
        let c = c.unwrap();
        assert_eq!(c.offset, back.len() as u64);
        assert_eq!(c.total_size, bytes.len() as u64);
        back.extend_from_slice(&c.data);
    }
    assert_eq!(back, bytes);
}

#[tokio::test]
async fn esp_app_upload_and_claims() {
    let ts = TestOtad::start().await;
    let app = EspAppBuilder::new(Chip::Esp32C3)
        .version("2026.11.1")
        .project_name("kitchen")
        .payload_size(50_000)
        .build();
    // A wrong chip claim is refused, naming both chips.
    let mut m = meta("kitchen", "2026.11.1");
    m.chip = "esp32".into();
    let err = ts.try_upload(m, &app).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("claimed ESP32") && err.message().contains("ESP32-C3"),
        "{}",
        err.message()
    );

    let mut m = meta("kitchen", "2026.11.1");
    m.chip = "esp32c3".into();
    let fw = ts.try_upload(m, &app).await.unwrap().firmware.unwrap();
    assert_eq!(fw.format, pb::FirmwareFormat::EspApp as i32);
    let esp = fw.esp.unwrap();
    assert_eq!(esp.chip, "esp32c3");
    assert_eq!(esp.app_version, "2026.11.1");
    assert_eq!(esp.project_name, "kitchen");
}

#[tokio::test]
async fn factory_images_only_when_declared() {
    let ts = TestOtad::start().await;
    let app = EspAppBuilder::new(Chip::Esp32)
        .version("1.0.0")
        .payload_size(20_000)
        .build();
    let factory = FactoryImageBuilder::new(Chip::Esp32).app(app).build();
    let err = ts
        .try_upload(meta("kitchen", "1.0.0"), &factory)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().to_lowercase().contains("factory"),
        "{}",
        err.message()
    );

    let mut m = meta("kitchen-factory", "1.0.0");
    m.format = pb::FirmwareFormat::EspFactory as i32;
    let fw = ts.try_upload(m, &factory).await.unwrap().firmware.unwrap();
    assert_eq!(fw.format, pb::FirmwareFormat::EspFactory as i32);
    assert_eq!(fw.esp.unwrap().app_offset, Some(0x10000));
}

#[tokio::test]
async fn refused_uploads_leave_nothing_behind() {
    let ts = TestOtad::start().await;
    let cases: Vec<(pb::UploadMetadata, Vec<u8>, Code, &str)> = vec![
        (
            meta("junk", "1"),
            b"\x7fELF not firmware at all".to_vec(),
            Code::InvalidArgument,
            "unrecognised",
        ),
        (
            meta("../etc/passwd", "1"),
            zigbee_file(),
            Code::InvalidArgument,
            "no paths",
        ),
        (
            meta("ok", "1/2"),
            zigbee_file(),
            Code::InvalidArgument,
            "version",
        ),
        (
            pb::UploadMetadata {
                manufacturer_code: Some(0x1234),
                ..meta("ikea", "1")
            },
            zigbee_file(),
            Code::InvalidArgument,
            "manufacturer code",
        ),
        (
            pb::UploadMetadata {
                sha256: "00".repeat(32),
                ..meta("ikea", "1")
            },
            zigbee_file(),
            Code::InvalidArgument,
            "sha256 mismatch",
        ),
        (
            pb::UploadMetadata {
                size: 10,
                ..meta("ikea", "1")
            },
            zigbee_file(),
            Code::InvalidArgument,
            "announced 10 bytes",
        ),
        (
            meta("big", "1"),
            vec![0xE9; 5 * 1024 * 1024],
            Code::ResourceExhausted,
            "larger than",
        ),
        (
            meta("truncated", "1"),
            {
                let mut f = ZigbeeOtaBuilder::new(1, 2, 3).upgrade_image(1000).build();
                f.truncate(500);
                f
            },
            Code::InvalidArgument,
            "",
        ),
    ];
    for (m, bytes, code, words) in cases {
        let name = m.name.clone();
        let err = ts.try_upload(m, &bytes).await.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(
            err.message().contains(words),
            "{name}: {:?} lacks {words:?}",
            err.message()
        );
    }
    assert!(
        files_under(&ts.dir.path().join("blobs")).is_empty(),
        "a refused upload left a file"
    );
    assert_eq!(
        ts.app().core.store().last_seq(),
        0,
        "a refused upload recorded an event"
    );
    let list = ts
        .firmware()
        .list(pb::ListFirmwareRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.firmware.is_empty());
}

#[tokio::test]
async fn duplicates_and_conflicting_versions() {
    let ts = TestOtad::start().await;
    let a = zigbee_file();
    ts.try_upload(meta("bulb", "1"), &a).await.unwrap();
    let again = ts.try_upload(meta("bulb", "1"), &a).await.unwrap();
    assert!(again.already_existed);
    let b = ZigbeeOtaBuilder::new(0x117C, 0x2803, 0x2309_3632)
        .upgrade_image(1000)
        .build();
    let err = ts.try_upload(meta("bulb", "1"), &b).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("different content"),
        "{}",
        err.message()
    );
    let err = ts
        .try_upload(meta("other-name", "9"), &a)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("already registered as bulb 1"),
        "{}",
        err.message()
    );
    assert_eq!(ts.app().core.store().last_seq(), 1);
}

#[tokio::test]
async fn delete_removes_the_blob_and_survives_restart() {
    let ts = TestOtad::start().await;
    let keep = ts
        .try_upload(meta("keep", "1"), &zigbee_file())
        .await
        .unwrap()
        .firmware
        .unwrap();
    let gone_bytes = EspAppBuilder::new(Chip::Esp32)
        .version("1.2.3")
        .payload_size(10_000)
        .build();
    let gone = ts
        .try_upload(meta("gone", "1.2.3"), &gone_bytes)
        .await
        .unwrap()
        .firmware
        .unwrap();
    ts.firmware()
        .delete(pb::DeleteFirmwareRequest {
            id: gone.id.clone(),
        })
        .await
        .unwrap();
    let err = ts
        .firmware()
        .get(pb::GetFirmwareRequest {
            id: gone.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(files_under(&ts.dir.path().join("blobs/sha256")).len(), 1);

    let ts = ts.restart().await;
    let list = ts
        .firmware()
        .list(pb::ListFirmwareRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.firmware
            .iter()
            .map(|f| f.id.clone())
            .collect::<Vec<_>>(),
        vec![keep.id.clone()]
    );
    let got = ts
        .firmware()
        .get(pb::GetFirmwareRequest {
            id: keep.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.zigbee.unwrap().file_version, 0x2309_3631);
    let status = ts
        .system()
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.firmware, 1);
    assert_eq!(status.event_log.unwrap().last_seq, 3);
}

/// A (made-up) 64-byte signature of firmware `id` under `key_id`.
fn signature_of(id: &str, key_id: &str) -> pb::AddSignatureRequest {
    pb::AddSignatureRequest {
        firmware_id: id.into(),
        signature: Some(pb::FirmwareSignature {
            key_id: key_id.into(),
            signature: vec![1; 64],
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn signatures_are_validated_and_recorded() {
    let ts = TestOtad::start().await;
    let fw = ts
        .try_upload(meta("bulb", "1"), &zigbee_file())
        .await
        .unwrap()
        .firmware
        .unwrap();
    let err = ts
        .firmware()
        .add_signature(signature_of(&fw.id, "k/1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let got = ts
        .firmware()
        .add_signature(signature_of(&fw.id, "release-2026"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.signatures.len(), 1);
    assert_eq!(got.signatures[0].key_id, "release-2026");
    assert_eq!(got.signatures[0].added_by.as_ref().unwrap().name, "local");
}

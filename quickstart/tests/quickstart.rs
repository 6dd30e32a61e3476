//! The quickstart as a newcomer uses it, from the outside: every call goes through the public
//! gRPC API, the way otactl makes it (list, batch check, rollout create/start/watch, device
//! update, a health-gated success, a rollback), against the real otad, agent and simulators on
//! loopback, with the tests' short timings. Then a restart on the same data directory must
//! resume: no new firmware, no new devices, devices still on the versions they were left on.

use std::time::Duration;

use futures::StreamExt as _;
use ota_proto::v1 as pb;
use ota_quickstart::{Quickstart, QuickstartOptions, Tuning};
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

fn options(dir: &std::path::Path) -> QuickstartOptions {
    let any = "127.0.0.1:0".parse().unwrap();
    QuickstartOptions {
        data_dir: dir.to_path_buf(),
        listen: any,
        metrics_listen: Some(any),
        agent_metrics_listen: Some(any),
        site: "home".into(),
        esphome_devices: 4,
        zigbee_mains: 2,
        zigbee_sleepy: 1,
    }
}

async fn channel(qs: &Quickstart) -> Channel {
    Channel::from_shared(format!("http://{}", qs.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `GET /metrics` over a plain TCP connection; the whole response.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: quickstart\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out))
        .await
        .expect("the scrape ends")
        .unwrap();
    out
}

async fn devices(ch: &Channel) -> Vec<pb::Device> {
    pb::device_service_client::DeviceServiceClient::new(ch.clone())
        .list(pb::ListDevicesRequest {
            page: Some(pb::PageRequest {
                page_size: 1000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .devices
}

async fn firmware(ch: &Channel) -> Vec<pb::Firmware> {
    pb::firmware_service_client::FirmwareServiceClient::new(ch.clone())
        .list(pb::ListFirmwareRequest::default())
        .await
        .unwrap()
        .into_inner()
        .firmware
}

/// The tour's four eyes: the local administrator (development mode, no token) created the
/// rollout, so it cannot start or approve it itself; "bob" approves it with a reason, as
/// `otactl rollout approve ID --reason … --as bob` does (development mode names callers by the
/// `x-ota-dev-actor` header).
async fn approve_as_another_operator(ch: &Channel, rollout_id: &str) {
    let mut rollouts = pb::rollout_service_client::RolloutServiceClient::new(ch.clone());
    let action = |reason: &str| pb::RolloutActionRequest {
        id: rollout_id.into(),
        reason: reason.into(),
    };
    let refused = rollouts.start(action("")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let refused = rollouts.approve(action("mine")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let mut approve = tonic::Request::new(action("release notes read"));
    approve
        .metadata_mut()
        .insert("x-ota-dev-actor", "bob".parse().unwrap());
    let approved = rollouts.approve(approve).await.unwrap().into_inner();
    let approval = approved.approval.clone().expect("the approval is shown");
    assert_eq!(approval.decided_by.unwrap().name, "bob", "{approved:#?}");
    assert_eq!(approval.reason, "release notes read");
}

/// What `otactl rollout create --canary 1 --waves 100 --soak 0s --require-approval
/// --health-window 3s` sends (ESPHome devices only), then the approval by another operator,
/// `rollout start`, then `rollout watch` until the rollout ends.
async fn staged_rollout(ch: &Channel, firmware_id: &str, model: &str) -> Watched {
    let mut rollouts = pb::rollout_service_client::RolloutServiceClient::new(ch.clone());
    let spec = pb::RolloutSpec {
        name: format!("{model} quickstart test"),
        firmware_id: firmware_id.into(),
        selector: Some(pb::DeviceSelector {
            models: vec![model.into()],
            ..Default::default()
        }),
        stages: vec![
            pb::Stage {
                name: "canary".into(),
                size: Some(pb::stage::Size::Count(1)),
                soak_s: 0,
                ..Default::default()
            },
            pb::Stage {
                name: "wave-1".into(),
                size: Some(pb::stage::Size::CumulativePercent(100.0)),
                soak_s: 0,
                ..Default::default()
            },
        ],
        require_approval: true,
        // Success only after the device stayed healthy for 3 s: its native API answers on the
        // new version with a rising uptime.
        health: Some(pb::HealthPolicy {
            esphome_window_s: 3,
            zigbee_window_s: 0,
            accept_reachability: false,
        }),
        ..Default::default()
    };
    let created = rollouts
        .create(pb::CreateRolloutRequest {
            spec: Some(spec),
            start: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state, pb::RolloutState::Draft as i32);
    approve_and_start(ch, &created.id).await
}

/// Another operator approves the draft rollout `id`, then it is started and watched to its end.
async fn approve_and_start(ch: &Channel, id: &str) -> Watched {
    let mut rollouts = pb::rollout_service_client::RolloutServiceClient::new(ch.clone());
    approve_as_another_operator(ch, id).await;
    rollouts
        .start(pb::RolloutActionRequest {
            id: id.into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    watch_to_the_end(ch, id).await
}

/// What `rollout watch` saw: the last state, whether a device was ever shown verifying, and the
/// last state of every task.
struct Watched {
    last: pb::Rollout,
    saw_verifying: bool,
    tasks: std::collections::BTreeMap<String, pb::Task>,
}

/// `rollout watch ID` until the rollout completes, aborts or pauses.
async fn watch_to_the_end(ch: &Channel, id: &str) -> Watched {
    let mut watch = pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
        .watch(pb::WatchRolloutRequest {
            id: id.into(),
            include_tasks: true,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(T, async {
        let mut last = None;
        let mut saw_verifying = false;
        let mut tasks = std::collections::BTreeMap::new();
        while let Some(p) = watch.next().await {
            let p = p.unwrap();
            tasks.extend(p.tasks.into_iter().map(|t| (t.id.clone(), t)));
            let r = p.rollout.unwrap();
            saw_verifying |= r.totals.as_ref().is_some_and(|t| t.verifying > 0);
            let done = r.state == pb::RolloutState::Completed as i32
                || r.state == pb::RolloutState::Aborted as i32
                || r.state == pb::RolloutState::Paused as i32;
            last = Some(r);
            if done {
                break;
            }
        }
        Watched {
            last: last.expect("the watch streams the rollout"),
            saw_verifying,
            tasks,
        }
    })
    .await
    .expect("the rollout ends in time")
}

async fn esp32_versions(ch: &Channel) -> Vec<(String, i32)> {
    devices(ch)
        .await
        .into_iter()
        .filter(|d| d.model == "esp32dev")
        .map(|d| (d.current.unwrap_or_default().version, d.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_lists_checks_rolls_out_updates_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let qs = Quickstart::start_with(options(dir.path()), Tuning::fast())
        .await
        .unwrap();
    let ch = channel(&qs).await;

    // Both Prometheus endpoints serve.
    for addr in [qs.metrics_addr, qs.agent_metrics_addr] {
        let text = scrape(addr.expect("a metrics endpoint")).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("# TYPE"), "{text}");
    }

    // Every simulated device of both transports is listed, reachable, with its version.
    let listed = devices(&ch).await;
    assert_eq!(listed.len(), 7, "{listed:#?}");
    for d in &qs.devices {
        let got = listed
            .iter()
            .find(|l| l.id == d.id)
            .unwrap_or_else(|| panic!("{} is not listed", d.id));
        assert!(got.reachable, "{got:#?}");
        let current = got.current.as_ref().unwrap();
        assert!(!current.version.is_empty(), "{got:#?}");
        // Before any check, the catalog's newer image already makes the update "available".
        assert_eq!(got.status, pb::UpgradeStatus::Available as i32, "{got:#?}");
        if d.transport == "esphome" {
            assert_eq!(got.transport, pb::Transport::Esphome as i32);
            assert_eq!(current.version, "1.0.0");
        } else {
            assert_eq!(got.transport, pb::Transport::Zigbee2mqtt as i32);
            assert!(current.file_version.is_some(), "{got:#?}");
        }
    }
    assert_eq!(
        listed
            .iter()
            .filter(|d| d.transport == pb::Transport::Zigbee2mqtt as i32)
            .count(),
        3
    );

    // One sample firmware per model (two ESPHome, two mains Zigbee, one sleepy Zigbee), and the
    // image the ESPHome devices run now (1.0.0), for rollbacks.
    assert_eq!(qs.firmware.len(), 7, "{:#?}", qs.firmware);
    assert!(qs.firmware.iter().all(|f| f.uploaded));
    assert_eq!(firmware(&ch).await.len(), 7);

    // A batch check of the site finds updates for every awake device.
    let check = pb::device_service_client::DeviceServiceClient::new(ch.clone())
        .batch_check(pb::BatchCheckRequest {
            selector: Some(pb::DeviceSelector {
                site_ids: vec!["home".into()],
                ..Default::default()
            }),
            timeout_ms: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.checks.len(), 7, "{check:#?}");
    assert!(check.available >= 6, "{check:#?}");
    for c in &check.checks {
        if !c.device_id.contains("0x0014d2") {
            assert!(
                !c.available_firmware_id.is_empty(),
                "{} has no update: {c:#?}",
                c.device_id
            );
        }
        // Every device is offered the image of its own model, never another model's.
        if !c.available_firmware_id.is_empty() {
            let device = qs.devices.iter().find(|d| d.id == c.device_id).unwrap();
            assert_eq!(
                c.available_firmware_id, device.firmware_id,
                "{} ({}) was offered another model's firmware",
                c.device_id, device.model
            );
        }
    }

    // A staged rollout of the ESP32 firmware: a canary of one, then everyone, no soak, each
    // device a success only once it stayed healthy for 3 s.
    let esp32 = qs
        .firmware
        .iter()
        .find(|f| f.model == "esp32dev" && f.version == "1.1.0")
        .unwrap()
        .clone();
    let watched = staged_rollout(&ch, &esp32.id, "esp32dev").await;
    let rollout = watched.last;
    assert_eq!(
        rollout.state,
        pb::RolloutState::Completed as i32,
        "{rollout:#?}"
    );
    assert!(watched.saw_verifying, "watch shows devices verifying");
    assert_eq!(rollout.stages.len(), 2);
    assert_eq!(rollout.stages[0].device_ids.len(), 1);
    assert_eq!(rollout.stages[1].device_ids.len(), 2);
    let totals = rollout.totals.as_ref().unwrap();
    assert_eq!(
        (totals.succeeded, totals.unconfirmed),
        (3, 0),
        "{rollout:#?}"
    );
    assert_eq!(watched.tasks.len(), 3);
    for t in watched.tasks.values() {
        assert_eq!(t.health, pb::TaskHealth::Healthy as i32, "{t:#?}");
    }
    let on_new = esp32_versions(&ch).await;
    assert_eq!(on_new.len(), 3);
    for (version, status) in &on_new {
        assert_eq!(version, "1.1.0");
        // On the newest image: nothing is available any more, whatever the last check said.
        assert_eq!(*status, pb::UpgradeStatus::None as i32);
    }

    // Rollback by hand: 1.0.0 goes back on the three multisensors (its image is in the catalog).
    // The rollout needed four eyes, so its rollback does too.
    let linked = pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
        .rollback(pb::RollbackRolloutRequest {
            id: rollout.id.clone(),
            scope: pb::RollbackScope::All as i32,
            start: true,
            reason: "the tour puts 1.0.0 back".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(linked.id, format!("{}-rollback", rollout.id));
    assert_eq!(linked.state, pb::RolloutState::Draft as i32, "{linked:#?}");
    let reverted = approve_and_start(&ch, &linked.id).await.last;
    assert_eq!(
        reverted.state,
        pb::RolloutState::Completed as i32,
        "{reverted:#?}"
    );
    assert_eq!(reverted.totals.unwrap().succeeded, 3);
    for (version, _) in esp32_versions(&ch).await {
        assert_eq!(version, "1.0.0");
    }
    let original = pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
        .get(pb::GetRolloutRequest {
            id: rollout.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        original.rolled_back_by.map(|l| l.rollout_id),
        Some(linked.id.clone())
    );

    // A Zigbee update of a mains device, as `otactl device update` does it.
    let bulb = qs
        .devices
        .iter()
        .find(|d| d.transport == "zigbee2mqtt" && !d.sleepy)
        .unwrap()
        .clone();
    let fw = pb::firmware_service_client::FirmwareServiceClient::new(ch.clone())
        .get(pb::GetFirmwareRequest {
            id: bulb.firmware_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let target = fw.zigbee.unwrap().file_version;
    let updated = tokio::time::timeout(
        T,
        pb::device_service_client::DeviceServiceClient::new(ch.clone()).update(
            pb::UpdateDeviceRequest {
                device_id: bulb.id.clone(),
                firmware_id: bulb.firmware_id.clone(),
                upgrade_type: pb::UpgradeType::Forced as i32,
                wait: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the Zigbee update ends in time")
    .unwrap()
    .into_inner();
    let task = updated.task.unwrap();
    assert_eq!(task.status, pb::UpgradeStatus::Success as i32, "{task:#?}");
    assert_eq!(updated.to.unwrap().file_version, Some(target));

    // The ESP8266 plug (OTA password) takes its own firmware.
    let plug = qs.devices.iter().find(|d| d.model == "esp01_1m").unwrap();
    let updated = tokio::time::timeout(
        T,
        pb::device_service_client::DeviceServiceClient::new(ch.clone()).update(
            pb::UpdateDeviceRequest {
                device_id: plug.id.clone(),
                firmware_id: plug.firmware_id.clone(),
                upgrade_type: pb::UpgradeType::Forced as i32,
                wait: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the ESPHome update ends in time")
    .unwrap()
    .into_inner();
    let task = updated.task.unwrap();
    assert_eq!(task.status, pb::UpgradeStatus::Success as i32, "{task:#?}");
    assert_eq!(updated.to.unwrap().version, "1.1.0");

    // Restart on the same data directory: the same firmware and devices, nothing new, and the
    // updated devices still run their new versions.
    qs.shutdown().await;
    let qs = Quickstart::start_with(options(dir.path()), Tuning::fast())
        .await
        .unwrap();
    let ch = channel(&qs).await;
    assert!(
        qs.firmware.iter().all(|f| !f.uploaded),
        "{:#?}",
        qs.firmware
    );
    assert_eq!(firmware(&ch).await.len(), 7);
    let listed = devices(&ch).await;
    assert_eq!(listed.len(), 7, "{listed:#?}");
    for d in listed
        .iter()
        .filter(|d| d.transport == pb::Transport::Esphome as i32)
    {
        // The multisensors were rolled back; the plug keeps its update.
        let expected = if d.model == "esp32dev" {
            "1.0.0"
        } else {
            "1.1.0"
        };
        assert_eq!(d.current.as_ref().unwrap().version, expected, "{d:#?}");
        assert!(d.reachable);
    }
    let again = listed.iter().find(|d| d.id == bulb.id).unwrap();
    assert_eq!(again.current.as_ref().unwrap().file_version, Some(target));
    qs.shutdown().await;
}

//! Which devices a rollback takes and which image each gets back.

use std::collections::HashMap;

use super::*;
use crate::events::{
    FirmwareDeleted, FirmwareRegistered, TaskDispatched, TaskFailed, TaskSucceeded,
};
use crate::fixture::{self, FW, Log, S, T0};
use crate::rollout::scheduler::{self, Input, MAX_NEW_TASKS_PER_STEP};
use crate::status::TaskError;
use crate::time::UnixMillis;

const RO: &str = "ro-1";
const OLD: &str = "fw-old";

/// `fw-new` (2.0.0) and `fw-old` (1.0.0); a/1, a/2 and b/1 run 1.0.0, b/2 runs 0.9.0 (no image
/// of it in the catalog). One rollout of every device, its tasks created.
fn fleet() -> Log {
    let mut log = Log::default();
    log.event(
        T0,
        &streams::firmware(FW),
        fixture::esp_firmware(FW, "2.0.0"),
    );
    log.event(
        T0,
        &streams::firmware(OLD),
        fixture::esp_firmware(OLD, "1.0.0"),
    );
    for d in ["a/1", "a/2", "b/1"] {
        log.event(T0, &streams::device(d), fixture::esp_device("1.0.0"));
    }
    log.event(T0, &streams::device("b/2"), fixture::esp_device("0.9.0"));
    let spec = fixture::spec(vec![fixture::stage(
        "all",
        StageSize::CumulativePercent(100.0),
    )]);
    fixture::start_rollout(&mut log, T0, RO, spec);
    step(&mut log, RO, T0);
    log
}

fn step(log: &mut Log, id: &str, now: UnixMillis) -> scheduler::Reconcile {
    let d = scheduler::reconcile(Input {
        rollout: &log.state.rollouts[id],
        state: &log.state,
        now_ms: now,
        batch_check_in_flight: false,
        max_new_tasks: MAX_NEW_TASKS_PER_STEP,
        require_approval: false,
    });
    let seen: HashMap<String, u64> = log.versions.clone();
    log.commit(now, &d.changes(id), &seen).expect("commit");
    d
}

fn task_of(log: &Log, device: &str) -> String {
    log.state.rollouts[RO].tasks_by_device[device].clone()
}

fn ended(log: &mut Log, device: &str, ok: bool) {
    let task = streams::task(&task_of(log, device));
    log.event(
        T0 + S,
        &task,
        TaskDispatched {
            attempt: 1,
            command_id: 1,
            timeout_at_ms: T0 + 600 * S,
            schedule: false,
        },
    );
    if ok {
        log.event(
            T0 + 2 * S,
            &task,
            TaskSucceeded {
                attempt: 1,
                from: VersionInfo::default(),
                to: VersionInfo {
                    version: "2.0.0".into(),
                    ..Default::default()
                },
                duration_ms: 1000,
                wire_bytes: 1000,
                source: None,
                late: false,
                health: crate::health::Health::NotChecked,
            },
        );
    } else {
        // The device took part of the image and came back on a broken build.
        log.event(
            T0 + 2 * S,
            &streams::device(device),
            fixture::esp_device("2.0.0-broken"),
        );
        log.event(
            T0 + 2 * S,
            &task,
            TaskFailed {
                attempt: 1,
                error: TaskError::new(ErrorCode::DeviceReportedFailure, "no"),
                timed_out: false,
                retry_at_ms: None,
                source: None,
            },
        );
    }
}

/// a/1 and b/2 failed, a/2 succeeded, b/1 is still queued; the rollout is aborted.
fn finished_fleet() -> Log {
    let mut log = fleet();
    ended(&mut log, "a/1", false);
    ended(&mut log, "a/2", true);
    ended(&mut log, "b/2", false);
    log.event(
        T0 + 3 * S,
        &streams::rollout(RO),
        crate::events::RolloutAborted {
            reason: "enough".into(),
            automatic: false,
        },
    );
    log
}

fn ask(scope: RollbackScope) -> Ask {
    Ask {
        scope,
        automatic: false,
        reason: "bad batch (alice)".into(),
        approval: None,
        start: true,
    }
}

#[test]
fn tasks_record_what_the_device_ran_and_the_catalog_image_of_it() {
    let log = fleet();
    let t = &log.state.tasks[&task_of(&log, "a/1")].created;
    assert_eq!(t.from.as_ref().map(|v| v.version.as_str()), Some("1.0.0"));
    assert_eq!(t.from_firmware_id.as_deref(), Some(OLD));
    let t = &log.state.tasks[&task_of(&log, "b/2")].created;
    assert_eq!(t.from.as_ref().map(|v| v.version.as_str()), Some("0.9.0"));
    assert_eq!(t.from_firmware_id, None, "no image of 0.9.0 in the catalog");
}

#[test]
fn the_scope_picks_failed_or_every_finished_device() {
    let log = finished_fleet();
    let r = &log.state.rollouts[RO];
    let devices = |scope| -> Vec<String> {
        tasks_to_revert(r, &log.state, scope)
            .iter()
            .map(|t| t.created.device_id.clone())
            .collect()
    };
    assert_eq!(devices(RollbackScope::Failed), ["a/1", "b/2"]);
    assert_eq!(devices(RollbackScope::All), ["a/1", "a/2", "b/2"]);
    assert!(devices(RollbackScope::None).is_empty());
}

#[test]
fn each_device_gets_its_previous_image_and_a_missing_one_is_an_exclusion() {
    let log = finished_fleet();
    let r = &log.state.rollouts[RO];
    let revert = revert(r, &log.state, RollbackScope::All);
    assert_eq!(
        revert.firmware.into_iter().collect::<Vec<_>>(),
        [
            ("a/1".to_string(), OLD.to_string()),
            ("a/2".to_string(), OLD.to_string())
        ]
    );
    assert_eq!(
        revert.excluded,
        [Exclusion {
            device_id: "b/2".into(),
            code: ErrorCode::NoFirmware,
            reason: "the image it ran before (version 0.9.0) is not in the catalog: upload it and update the device by hand (`otactl device update`)".into(),
        }]
    );
}

#[test]
fn an_image_uploaded_later_is_found_by_version_and_a_deleted_one_is_not() {
    let mut log = finished_fleet();
    log.event(
        T0 + 4 * S,
        &streams::firmware("fw-09"),
        fixture::esp_firmware("fw-09", "0.9.0"),
    );
    log.event(
        T0 + 4 * S,
        &streams::firmware(OLD),
        FirmwareDeleted {
            reason: "gone".into(),
        },
    );
    let r = &log.state.rollouts[RO];
    let revert = revert(r, &log.state, RollbackScope::Failed);
    assert_eq!(
        revert.firmware.get("b/2").map(String::as_str),
        Some("fw-09")
    );
    assert!(!revert.firmware.contains_key("a/1"));
    assert_eq!(revert.excluded.len(), 1);
    assert!(
        revert.excluded[0].reason.contains("version 1.0.0"),
        "{:?}",
        revert.excluded
    );
}

#[test]
fn images_match_by_version_and_fit() {
    let old = fixture::esp_firmware(OLD, "1.0.0");
    let mut other_chip = fixture::esp_firmware("fw-c3", "1.0.0");
    if let Some(e) = other_chip.esp.as_mut() {
        e.chip = "esp32c3".into();
    }
    let device = fixture::esp_device("1.0.0").facts;
    let catalog: Vec<&FirmwareRegistered> = vec![&other_chip, &old];
    assert_eq!(
        image_of(catalog.iter().copied(), &device, &device.current).map(|f| f.id.as_str()),
        Some(OLD)
    );
    let zigbee = fixture::zigbee_firmware("fw-z");
    let bulb = fixture::zigbee_device("z2m", false).facts;
    let v2 = VersionInfo {
        version: "whatever".into(),
        file_version: Some(2),
        ..Default::default()
    };
    assert!(
        image_of([&zigbee], &bulb, &v2).is_some(),
        "file version decides"
    );
    assert!(image_of([&zigbee], &bulb, &bulb.current).is_none());
}

#[test]
fn the_linked_rollout_reverts_with_the_same_limits_and_downgrades_allowed() {
    let log = finished_fleet();
    let r = &log.state.rollouts[RO];
    let rb = rollback(r, &log.state, ask(RollbackScope::Failed)).expect("rollback");
    assert_eq!(rb.id, "ro-1-rollback");
    assert_eq!(rb.marker.rollback_id, rb.id);
    assert!(!rb.marker.automatic);
    let [
        DomainEvent::RolloutCreated(created),
        DomainEvent::RolloutStarted(started),
    ] = rb.events.as_slice()
    else {
        panic!("{:?}", rb.events);
    };
    let spec = &created.spec;
    assert!(spec.allow_downgrade);
    assert_eq!(spec.concurrency, r.spec.concurrency);
    assert_eq!(spec.preconditions, r.spec.preconditions);
    assert_eq!(spec.rollback, RollbackScope::None);
    assert_eq!(spec.firmware_id, OLD);
    assert_eq!(spec.firmware_for("a/1"), OLD);
    assert_eq!(started.stages.len(), 1);
    assert_eq!(started.stages[0].device_ids, ["a/1"]);
    assert_eq!(started.exclusions.len(), 1);
    assert_eq!(started.exclusions[0].device_id, "b/2");
    // One append for both streams.
    let changes = rb.changes(RO);
    assert_eq!(changes.len(), 2);
}

#[test]
fn approval_keeps_the_rollback_a_draft() {
    let log = finished_fleet();
    let r = &log.state.rollouts[RO];
    let mut a = ask(RollbackScope::Failed);
    a.approval = crate::rollout::approval::required(true, false);
    let rb = rollback(r, &log.state, a).expect("rollback");
    assert_eq!(
        rb.events
            .iter()
            .map(DomainEvent::type_name)
            .collect::<Vec<_>>(),
        ["RolloutCreated", "RolloutApprovalRequired"]
    );
}

#[test]
fn refusals_say_why() {
    let mut log = finished_fleet();
    let rb = {
        let r = &log.state.rollouts[RO];
        assert_eq!(may_roll_back(r), Ok(()));
        rollback(r, &log.state, ask(RollbackScope::Failed)).expect("rollback")
    };
    let seen = log.versions.clone();
    log.commit(T0 + 5 * S, &rb.changes(RO), &seen)
        .expect("one append");
    let r = &log.state.rollouts[RO];
    assert_eq!(
        r.rolled_back_by.as_ref().map(|l| l.rollout_id.as_str()),
        Some("ro-1-rollback")
    );
    let e = rollback(r, &log.state, ask(RollbackScope::All)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rollout ro-1 was already rolled back by ro-1-rollback: a rollout is rolled back at most once"
    );
    let linked = &log.state.rollouts["ro-1-rollback"];
    let e = rollback(linked, &log.state, ask(RollbackScope::All)).unwrap_err();
    assert!(matches!(e, RollbackError::IsRollback { .. }), "{e}");
    // A second creation of the same linked rollout hits the existing stream.
    let seen = log.versions.clone();
    assert!(log.commit(T0 + 6 * S, &rb.changes(RO), &seen).is_err());

    let mut log = fleet();
    let r = &log.state.rollouts[RO];
    assert_eq!(
        may_roll_back(r).unwrap_err().to_string(),
        "rollout ro-1 is running: pause or abort it first (`otactl rollout abort ro-1`), then roll it back"
    );
    ended(&mut log, "a/2", true);
    let r = &log.state.rollouts[RO];
    assert_eq!(
        rollback(r, &log.state, ask(RollbackScope::Failed))
            .unwrap_err()
            .to_string(),
        "rollout ro-1 has no failed device to roll back (--devices all also reverts the devices it updated)"
    );
    assert_eq!(
        rollback(r, &log.state, ask(RollbackScope::None)).unwrap_err(),
        RollbackError::NoScope
    );
}

#[test]
fn names_round_trip() {
    for s in RollbackScope::ALL {
        assert_eq!(RollbackScope::from_name(s.name()), Some(s));
    }
    assert_eq!(RollbackScope::from_name("some"), None);
}

#[test]
fn a_rollback_without_any_image_targets_nothing_rather_than_the_fleet() {
    let mut log = finished_fleet();
    log.event(
        T0 + 4 * S,
        &streams::firmware(OLD),
        FirmwareDeleted {
            reason: "gone".into(),
        },
    );
    let r = &log.state.rollouts[RO];
    let rb = rollback(r, &log.state, ask(RollbackScope::Failed)).expect("rollback");
    let DomainEvent::RolloutStarted(started) = &rb.events[1] else {
        panic!("{:?}", rb.events);
    };
    assert!(started.stages.iter().all(|s| s.device_ids.is_empty()));
    let excluded: Vec<&str> = started
        .exclusions
        .iter()
        .map(|e| e.device_id.as_str())
        .collect();
    assert_eq!(excluded, ["a/1", "b/2"]);
}

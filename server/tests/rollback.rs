//! Rollback (issue 15 item 5) end to end over gRPC with a fake site and paused time: the
//! automatic rollback a failing canary triggers, `RolloutService.Rollback` by hand, and exactly
//! one linked rollout across a restart.

use ota_domain::events::DomainEvent;
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::site::*;

/// A canary of `canary` devices that stops at its first failure, then the rest; one device at a
/// time is not needed, no retries; `rollback` as given.
fn canary_spec(firmware_id: &str, canary: u32, rollback: pb::RollbackScope) -> pb::RolloutSpec {
    let mut s = spec(
        firmware_id,
        vec![
            pb::Stage {
                failure_threshold: threshold(1),
                ..stage("canary", count(canary))
            },
            stage("rest", percent(100.0)),
        ],
    );
    s.retry = Some(pb::RetryPolicy {
        max_attempts: 1,
        ..Default::default()
    });
    s.rollback = rollback as i32;
    s
}

/// otad with `fw-old` (1.0.0, what the devices run) and a new image (2.0.0) in the catalog;
/// the new image's id.
async fn catalog(otad: &TestOtad) -> (String, String) {
    let old = otad.upload_esp("1.0.0").await;
    let new = otad.upload_esp("2.0.0").await;
    (old, new)
}

/// n0 fails its update after 60 s, but is left running a broken "2.0.0-broken" meanwhile (the
/// site reports it while the transfer runs); later updates of it succeed.
async fn break_n0_during_its_transfer(otad: &TestOtad, site: &FakeSite, rollout: &str) {
    otad.until("n0 transferring", secs(1), hours(1), |s| {
        let t = s.rollouts.get(rollout)?.tasks_by_device.get("home/n0")?;
        (s.tasks.get(t)?.phase.name() == "updating").then_some(())
    })
    .await;
    site.add_device(dev(
        esphome("n0", "2.0.0-broken"),
        Behavior::Succeed,
        secs(30),
    ));
}

fn failing_n0() -> Dev {
    dev(
        esphome("n0", "1.0.0"),
        Behavior::Fail(pb::ErrorCode::DeviceReportedFailure as i32),
        secs(60),
    )
}

/// A site of the failing n0 and `others`, and the rollout of `firmware` with a canary of
/// `canary` devices and `rollback`, once n0's failure paused it (n0 broke during its transfer).
async fn failed_canary(
    otad: &TestOtad,
    firmware: &str,
    canary: u32,
    rollback: pb::RollbackScope,
    others: Vec<Dev>,
) -> (FakeSite, pb::Rollout) {
    let mut devices = vec![failing_n0()];
    devices.extend(others);
    let site = FakeSite::connect(otad, "home", 0, devices).await;
    let r = otad.create(canary_spec(firmware, canary, rollback)).await;
    break_n0_during_its_transfer(otad, &site, &r.id).await;
    otad.until_rollout(&r.id, "paused", hours(1)).await;
    (site, r)
}

fn linked_id(r: &pb::Rollout) -> String {
    r.rolled_back_by
        .as_ref()
        .map(|l| l.rollout_id.clone())
        .unwrap_or_else(|| panic!("{} was not rolled back: {r:?}", r.id))
}

fn current_version(otad: &TestOtad, device: &str) -> String {
    otad.app().core.read().devices[device]
        .facts
        .current
        .version
        .clone()
}

#[tokio::test(start_paused = true)]
async fn a_failed_canary_with_rollback_failed_restores_the_previous_image_on_that_device() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let (old, new) = catalog(&otad).await;
    let (site, r) = failed_canary(
        &otad,
        &new,
        1,
        pb::RollbackScope::Failed,
        vec![dev(esphome("n1", "1.0.0"), Behavior::Succeed, secs(10))],
    )
    .await;

    let stopped = otad.rollout(&r.id).await;
    let link = stopped.rolled_back_by.clone().expect("rolled back");
    assert!(link.automatic);
    assert_eq!(link.scope, pb::RollbackScope::Failed as i32);
    assert_eq!(
        link.reason,
        format!(
            "rollout {} stopped: stage canary: 1 failure(s) ≥ threshold 1 (1 failed, 0 timed out, of 1 devices)",
            r.id
        )
    );
    let linked = linked_id(&stopped);
    otad.until_rollout(&linked, "completed", hours(1)).await;
    let rb = otad.rollout(&linked).await;
    let of = rb.rollback_of.clone().expect("the link shows both ways");
    assert_eq!(
        (of.rollout_id.as_str(), of.automatic),
        (r.id.as_str(), true)
    );
    assert_eq!(
        rb.revert_targets,
        [pb::RevertTarget {
            device_id: "home/n0".into(),
            firmware_id: old.clone(),
        }]
    );
    let spec = rb.spec.expect("spec");
    assert!(spec.allow_downgrade);
    assert_eq!(rb.totals.expect("totals").succeeded, 1);
    // n0 got its old image back; n1 (still to do in the paused rollout) was not touched.
    assert_eq!(current_version(&otad, "home/n0"), "1.0.0");
    assert_eq!(site.log().transfers_of("n0").len(), 2);
    assert!(site.log().transfers_of("n1").is_empty());
}

#[tokio::test(start_paused = true)]
async fn rollback_all_also_reverts_succeeded_devices_and_lists_a_missing_image() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let (old, new) = catalog(&otad).await;
    let (site, r) = failed_canary(
        &otad,
        &new,
        3,
        pb::RollbackScope::All,
        vec![
            dev(esphome("n1", "1.0.0"), Behavior::Succeed, secs(10)),
            // Nothing in the catalog installs 0.9.0.
            dev(esphome("n2", "0.9.0"), Behavior::Succeed, secs(10)),
            dev(esphome("n3", "1.0.0"), Behavior::Succeed, secs(10)),
        ],
    )
    .await;
    let linked = linked_id(&otad.rollout(&r.id).await);
    otad.until_rollout(&linked, "completed", hours(1)).await;
    let rb = otad.rollout(&linked).await;
    let targets: Vec<(&str, &str)> = rb
        .revert_targets
        .iter()
        .map(|t| (t.device_id.as_str(), t.firmware_id.as_str()))
        .collect();
    assert_eq!(
        targets,
        [("home/n0", old.as_str()), ("home/n1", old.as_str())]
    );
    assert_eq!(
        rb.exclusions,
        [pb::Exclusion {
            device_id: "home/n2".into(),
            code: pb::ErrorCode::NoFirmware as i32,
            reason: "the image it ran before (version 0.9.0) is not in the catalog: upload it and update the device by hand (`otactl device update`)".into(),
        }]
    );
    for (device, version) in [
        ("home/n0", "1.0.0"),
        ("home/n1", "1.0.0"),
        ("home/n2", "2.0.0"),
    ] {
        assert_eq!(current_version(&otad, device), version, "{device}");
    }
    assert!(
        site.log().transfers_of("n3").is_empty(),
        "n3 was never updated"
    );
}

#[tokio::test(start_paused = true)]
async fn rollback_by_hand_refuses_drafts_and_running_rollouts_and_happens_once() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let (old, new) = catalog(&otad).await;
    let _site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(esphome("n0", "1.0.0"), Behavior::Succeed, secs(10)),
            dev(esphome("n1", "1.0.0"), Behavior::Hang, secs(10)),
        ],
    )
    .await;
    let ask = |id: &str, scope: pb::RollbackScope| pb::RollbackRolloutRequest {
        id: id.into(),
        scope: scope as i32,
        start: false,
        reason: "vendor recalled 2.0.0".into(),
    };
    let s = spec(&new, vec![stage("all", percent(100.0))]);
    let draft = otad
        .rollouts()
        .create(pb::CreateRolloutRequest {
            spec: Some(s.clone()),
            start: false,
        })
        .await
        .unwrap()
        .into_inner();
    let before = otad.recorded().len();
    let e = otad
        .rollouts()
        .rollback(ask(&draft.id, pb::RollbackScope::All))
        .await
        .unwrap_err();
    assert_eq!(otad.recorded().len(), before, "refusals store nothing");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!(
            "rollout {} is a draft: it changed no device, there is nothing to roll back",
            draft.id
        )
    );
    let running = otad.create(s).await;
    otad.until("n0 updated", secs(1), hours(1), |st| {
        let t = st
            .rollouts
            .get(&running.id)?
            .tasks_by_device
            .get("home/n0")?;
        (st.tasks.get(t)?.phase.name() == "succeeded").then_some(())
    })
    .await;
    let e = otad
        .rollouts()
        .rollback(ask(&running.id, pb::RollbackScope::All))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!(
            "rollout {0} is running: pause or abort it first (`otactl rollout abort {0}`), then roll it back",
            running.id
        )
    );

    otad.rollouts()
        .abort(action(&running.id, "recalled"))
        .await
        .unwrap();
    // Nothing failed: "failed" has nothing to do, and says what else to try.
    let e = otad
        .rollouts()
        .rollback(ask(&running.id, pb::RollbackScope::None))
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        format!(
            "rollout {} has no failed device to roll back (--devices all also reverts the devices it updated)",
            running.id
        )
    );
    let rb = otad
        .rollouts()
        .rollback(ask(&running.id, pb::RollbackScope::All))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rb.state,
        pb::RolloutState::Draft as i32,
        "no --start: a draft"
    );
    assert_eq!(rb.revert_targets.len(), 1);
    assert_eq!(rb.revert_targets[0].firmware_id, old);
    let of = rb.rollback_of.expect("rollback_of");
    assert!(!of.automatic);
    assert_eq!(of.reason, "vendor recalled 2.0.0 (rolled back by local)");
    let again = otad
        .rollouts()
        .rollback(ask(&running.id, pb::RollbackScope::All))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        again.message(),
        format!(
            "rollout {} was already rolled back by {}: a rollout is rolled back at most once",
            running.id, rb.id
        )
    );
    otad.rollouts().start(action(&rb.id, "")).await.unwrap();
    otad.until_rollout(&rb.id, "completed", hours(1)).await;
    assert_eq!(current_version(&otad, "home/n0"), "1.0.0");
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_the_trigger_leaves_exactly_one_linked_rollout() {
    let otad = TestOtad::sled_at(MONDAY).await;
    let (_, new) = catalog(&otad).await;
    let (site, r) = failed_canary(
        &otad,
        &new,
        1,
        pb::RollbackScope::Failed,
        vec![dev(esphome("n1", "1.0.0"), Behavior::Succeed, secs(10))],
    )
    .await;
    site.disconnect();
    let otad = otad.restart().await;
    site.reconnect(&otad).await;
    // Passes of the restarted rollout loop look at the stopped rollout again.
    tokio::time::sleep(secs(120)).await;
    let linked: Vec<(String, String)> = otad
        .recorded()
        .into_iter()
        .filter_map(|(stream, _, e)| match e {
            DomainEvent::RolloutRolledBack(b) => Some((stream, b.rollback_id)),
            _ => None,
        })
        .collect();
    assert_eq!(linked.len(), 1, "{linked:?}");
    let rollbacks: Vec<String> = otad
        .app()
        .core
        .read()
        .rollouts
        .values()
        .filter(|x| x.spec.reverts.is_some())
        .map(|x| x.id.clone())
        .collect();
    assert_eq!(rollbacks, [linked[0].1.clone()]);
    assert_eq!(linked[0].0, format!("rollout/{}", r.id));
}

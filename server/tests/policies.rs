//! Rollout policies past stages and thresholds, end to end over gRPC with fake sites: abort
//! criteria over the devices that finished; the rate (with its ramp) at which a rollout starts
//! devices; per-site canaries; success only when the device stays healthy for its health window;
//! plans and watches that estimate with the transfer times learned from past updates.
use std::time::Duration;

use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::site::*;

fn criterion(
    on: pb::abort_criterion::On,
    percent: f64,
    min_finished: u32,
    action: pb::abort_criterion::Action,
) -> pb::AbortCriterion {
    pb::AbortCriterion {
        on: on as i32,
        percent,
        min_finished,
        action: action as i32,
    }
}

/// Site `home` with ESPHome devices n0..n{count} on 1.0.0, each behaving as `behavior(i)` says
/// and taking 30 s.
async fn esp_site(otad: &TestOtad, count: usize, behavior: impl Fn(usize) -> Behavior) -> FakeSite {
    let devices = (0..count)
        .map(|i| dev(esphome(&format!("n{i}"), "1.0.0"), behavior(i), secs(30)))
        .collect();
    FakeSite::connect(otad, "home", 0, devices).await
}

/// `RolloutService.Create`, as a draft or started.
async fn create(
    otad: &TestOtad,
    spec: pb::RolloutSpec,
    start: bool,
) -> Result<pb::Rollout, tonic::Status> {
    otad.rollouts()
        .create(pb::CreateRolloutRequest {
            spec: Some(spec),
            start,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// One stage whose own threshold never trips, no failure budget, one device at a time and no
/// retries: only the abort criteria can stop it.
fn one_at_a_time(firmware_id: &str, criteria: Vec<pb::AbortCriterion>) -> pb::RolloutSpec {
    let mut s = spec(
        firmware_id,
        vec![pb::Stage {
            failure_threshold: threshold(100),
            ..stage("all", percent(100.0))
        }],
    );
    s.failure_budget = Some(pb::FailureBudget {
        budget: Some(pb::failure_budget::Budget::Off(true)),
    });
    s.concurrency = Some(pb::ConcurrencyLimits {
        global: 1,
        per_site: 1,
        per_zigbee_network: 1,
        per_esphome_site: 1,
    });
    s.retry = Some(pb::RetryPolicy {
        max_attempts: 1,
        ..Default::default()
    });
    s.abort_criteria = criteria;
    s
}

#[tokio::test(start_paused = true)]
async fn rejections_among_the_finished_devices_abort_the_rollout_before_the_rest_is_tried() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = esp_site(&otad, 8, |_| {
        Behavior::Fail(pb::ErrorCode::DeviceReportedFailure as i32)
    })
    .await;
    let r = otad
        .create(one_at_a_time(
            &fw,
            vec![criterion(
                pb::abort_criterion::On::Rejected,
                50.0,
                3,
                pb::abort_criterion::Action::Abort,
            )],
        ))
        .await;
    otad.until_rollout(&r.id, "aborted", hours(1)).await;
    let aborted = otad.rollout(&r.id).await;
    assert_eq!(
        aborted.state_reason,
        "abort criterion 1 (rejected ≥ 50% of ≥ 3 finished → abort): 3 of 3 finished devices rejected the image (100%)"
    );
    assert_eq!(
        site.log().transfers.len(),
        3,
        "the rollout stopped after the third finished device"
    );
    let totals = aborted.totals.expect("totals");
    assert_eq!((totals.failed, totals.cancelled), (3, 5));
}

#[tokio::test(start_paused = true)]
async fn a_pausing_criterion_waits_for_min_finished_and_resume_accepts_the_failures() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    // One device at a time, dispatched in task-id order: n4, n3, n2, n1, n0 (the log printed by
    // a failing run shows it). n4 fails.
    let site = esp_site(&otad, 5, |i| {
        if i == 4 {
            Behavior::Fail(pb::ErrorCode::SendFailed as i32)
        } else {
            Behavior::Succeed
        }
    })
    .await;
    let r = otad
        .create(one_at_a_time(
            &fw,
            vec![criterion(
                pb::abort_criterion::On::Any,
                50.0,
                2,
                pb::abort_criterion::Action::Pause,
            )],
        ))
        .await;
    // 1 of 1 finished failed (100 %) does not trip: fewer than 2 finished. 1 of 2 does.
    otad.until_rollout(&r.id, "paused", hours(1)).await;
    let paused = otad.rollout(&r.id).await;
    assert_eq!(
        paused.state_reason,
        "abort criterion 1 (any ≥ 50% of ≥ 2 finished → pause): 1 of 2 finished devices failed or timed out (50%); resume to accept them and go on"
    );
    let tried: Vec<String> = site
        .log()
        .transfers
        .iter()
        .map(|t| t.local_id.clone())
        .collect();
    assert_eq!(tried, ["n4", "n3"]);

    // Resuming accepts the failure: the rest runs and the rollout completes.
    otad.rollouts()
        .resume(pb::RolloutActionRequest {
            id: r.id.clone(),
            reason: "one flaky unit".into(),
        })
        .await
        .unwrap();
    otad.until_rollout(&r.id, "completed", hours(1)).await;
    let done = otad.rollout(&r.id).await;
    let totals = done.totals.expect("totals");
    assert_eq!((totals.succeeded, totals.failed), (4, 1));
    assert_eq!(site.log().transfers.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn criteria_are_stored_shown_planned_and_checked() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let criteria = vec![
        criterion(
            pb::abort_criterion::On::Failed,
            20.0,
            10,
            pb::abort_criterion::Action::Pause,
        ),
        criterion(
            pb::abort_criterion::On::TimedOut,
            5.5,
            1,
            pb::abort_criterion::Action::Abort,
        ),
    ];
    let s = one_at_a_time(&fw, criteria.clone());
    let plan = otad.plan(s.clone()).await;
    assert_eq!(
        plan.policies,
        [
            "abort criterion 1: failed ≥ 20% of ≥ 10 finished → pause",
            "abort criterion 2: timed_out ≥ 5.5% of ≥ 1 finished → abort",
            "health window: ESPHome 2 min, Zigbee 10 min; devices without an API end unconfirmed"
        ]
    );
    let created = create(&otad, s.clone(), false).await.unwrap();
    assert_eq!(
        otad.rollout(&created.id).await.spec.unwrap().abort_criteria,
        criteria
    );

    // Refused specs name the criterion and store nothing.
    let before = otad.recorded().len();
    for (bad, message) in [
        (
            criterion(
                pb::abort_criterion::On::Failed,
                0.0,
                1,
                pb::abort_criterion::Action::Pause,
            ),
            "spec.abort_criteria[0].percent is 0 %: a share of the finished devices must be above 0 and at most 100",
        ),
        (
            criterion(
                pb::abort_criterion::On::Unspecified,
                10.0,
                1,
                pb::abort_criterion::Action::Pause,
            ),
            "spec.abort_criteria[0].on is required",
        ),
        (
            pb::AbortCriterion {
                action: 9,
                ..criterion(
                    pb::abort_criterion::On::Any,
                    10.0,
                    1,
                    pb::abort_criterion::Action::Pause,
                )
            },
            "spec.abort_criteria[0].action 9 is unknown: 1 pause, 2 abort, 3 rollback",
        ),
    ] {
        let mut s = s.clone();
        s.abort_criteria = vec![bad];
        let e = create(&otad, s, false).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), message);
    }
    let mut s = s.clone();
    s.abort_criteria = vec![criteria[0]; 11];
    let e = create(&otad, s, false).await.unwrap_err();
    assert_eq!(
        e.message(),
        "spec.abort_criteria has 11 criteria: at most 10"
    );
    assert_eq!(otad.recorded().len(), before, "refused specs store nothing");
}

// === rate ===

/// One stage over `count` ESPHome devices (5 s each) that the concurrency never limits, at
/// `rate`.
async fn rated(count: usize, rate: pb::RolloutRate) -> (TestOtad, FakeSite, String) {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let devices = (0..count)
        .map(|i| {
            dev(
                esphome(&format!("n{i:02}"), "1.0.0"),
                Behavior::Succeed,
                secs(5),
            )
        })
        .collect();
    let site = FakeSite::connect(&otad, "home", 0, devices).await;
    let mut s = spec(&fw, vec![stage("all", percent(100.0))]);
    s.concurrency = Some(pb::ConcurrencyLimits {
        global: 100,
        per_site: 100,
        per_zigbee_network: 1,
        per_esphome_site: 100,
    });
    s.rate = Some(rate);
    let id = otad.create(s).await.id;
    (otad, site, id)
}

/// How many devices started in each minute since the first start, from the log.
fn starts_per_minute(otad: &TestOtad, id: &str, count: usize) -> Vec<usize> {
    let mut starts: Vec<i64> = (0..count)
        .filter_map(|i| otad.task_of(id, &format!("home/n{i:02}"))?.started_at_ms)
        .map(|at| at.as_i64())
        .collect();
    starts.sort_unstable();
    let first = starts.first().copied().unwrap_or_default();
    let minutes = starts.last().map_or(0, |last| (last - first) / 60_000 + 1);
    (0..minutes)
        .map(|m| {
            starts
                .iter()
                .filter(|s| (**s - first) / 60_000 == m)
                .count()
        })
        .collect()
}

fn flat(max_per_minute: u32) -> pb::RolloutRate {
    pb::RolloutRate {
        max_per_minute,
        ramp: None,
    }
}

#[tokio::test(start_paused = true)]
async fn twenty_devices_at_6_per_minute_start_as_the_rate_allows() {
    let (otad, site, id) = rated(20, flat(6)).await;
    otad.until_rollout(&id, "completed", hours(1)).await;
    assert_eq!(starts_per_minute(&otad, &id, 20), [6, 6, 6, 2]);
    assert_eq!(site.log().transfers.len(), 20);
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_rollout_keeps_the_rate() {
    let (mut otad, site, id) = rated(20, flat(6)).await;
    otad.until(
        "the first minute's devices",
        Duration::from_millis(100),
        secs(30),
        |_| (site.log().transfers.len() == 6).then_some(()),
    )
    .await;
    // otad restarts 10 s into the minute: the six starts are in the log, so the restarted
    // dispatcher waits for the rest of the minute instead of starting the other 14.
    tokio::time::sleep(secs(10)).await;
    site.disconnect();
    otad = otad.restart().await;
    site.reconnect(&otad).await;
    otad.until_rollout(&id, "completed", hours(1)).await;
    assert_eq!(starts_per_minute(&otad, &id, 20), [6, 6, 6, 2]);
}

#[tokio::test(start_paused = true)]
async fn the_ramp_speeds_the_rollout_up_as_devices_succeed() {
    let (otad, _site, id) = rated(
        20,
        pb::RolloutRate {
            max_per_minute: 30,
            ramp: Some(pb::RateRamp {
                start_per_minute: 2,
                factor: 2.0,
                after: Some(pb::rate_ramp::After::AfterSuccesses(4)),
            }),
        },
    )
    .await;
    otad.until_rollout(&id, "completed", hours(1)).await;
    // 2, 2 (4 succeeded: 4/min, two more at once), 4 + … : far less than the 10 minutes a flat
    // 2/min would take.
    let per_minute = starts_per_minute(&otad, &id, 20);
    assert_eq!(per_minute[0], 2, "{per_minute:?}");
    assert_eq!(per_minute[1], 4, "{per_minute:?}");
    assert!(per_minute.len() <= 4, "{per_minute:?}");
    assert_eq!(per_minute.iter().sum::<usize>(), 20);
}

#[tokio::test(start_paused = true)]
async fn a_rate_is_stored_shown_planned_and_checked() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let _site = esp_site(&otad, 12, |_| Behavior::Succeed).await;
    let mut s = spec(&fw, vec![stage("all", percent(100.0))]);
    let rate = pb::RolloutRate {
        max_per_minute: 3,
        ramp: Some(pb::RateRamp {
            start_per_minute: 1,
            factor: 3.0,
            after: Some(pb::rate_ramp::After::AfterPercent(25.0)),
        }),
    };
    s.rate = Some(rate);
    let paced = otad.plan(s.clone()).await;
    assert_eq!(
        paced.policies,
        [
            "rate: at most 3/min, ramp from 1/min ×3 every 25% of the targets succeeded",
            "health window: ESPHome 2 min, Zigbee 10 min; devices without an API end unconfirmed"
        ]
    );
    let mut unpaced = s.clone();
    unpaced.rate = None;
    let unpaced = otad.plan(unpaced).await;
    assert!(
        paced.estimated_duration_s > unpaced.estimated_duration_s,
        "{} vs {}",
        paced.estimated_duration_s,
        unpaced.estimated_duration_s
    );
    let created = create(&otad, s.clone(), false).await.unwrap();
    assert_eq!(
        otad.rollout(&created.id).await.spec.unwrap().rate,
        Some(rate)
    );

    // Refused specs name the field and store nothing.
    let before = otad.recorded().len();
    for (bad, message) in [
        (flat(0), "spec.rate.max_per_minute must be at least 1"),
        (
            pb::RolloutRate {
                ramp: Some(pb::RateRamp {
                    factor: 1.0,
                    ..rate.ramp.unwrap()
                }),
                ..rate
            },
            "spec.rate.ramp.factor is 1: the factor must be above 1 and at most 5",
        ),
    ] {
        let mut s = s.clone();
        s.rate = Some(bad);
        let e = create(&otad, s, false).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), message);
    }
    assert_eq!(otad.recorded().len(), before, "refused specs store nothing");
}

// === per-site canaries ===

/// Sites a, b and c, each with zigbee2mqtt networks zb1 and zb2 of three bulbs on file version 1
/// (`zb1-0` ..), updating in 30 s. In site a, `zb1-0` has a weak link (40).
async fn zigbee_sites(otad: &TestOtad) -> Vec<FakeSite> {
    let mut sites = Vec::new();
    for site in ["a", "b", "c"] {
        let mut devices = Vec::new();
        for net in ["zb1", "zb2"] {
            for i in 0..3 {
                let mut report = zigbee(&format!("{net}-{i}"), net, 1);
                if site == "a" && net == "zb1" && i == 0 {
                    report.signal = Some(pb::Signal {
                        kind: pb::SignalKind::Linkquality as i32,
                        value: 40,
                    });
                }
                devices.push(dev(report, Behavior::Succeed, secs(30)));
            }
        }
        sites.push(FakeSite::connect(otad, site, 0, devices).await);
    }
    sites
}

/// Two canaries per site and network, then everyone.
fn per_site_canaries(firmware_id: &str) -> pb::RolloutSpec {
    let mut s = spec(
        firmware_id,
        vec![
            pb::Stage {
                name: "canary".into(),
                ..Default::default()
            },
            stage("everyone", percent(100.0)),
        ],
    );
    s.canary_per_site = 2;
    s
}

#[tokio::test(start_paused = true)]
async fn per_site_canaries_are_planned_started_and_updated_first() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(2).await;
    let sites = zigbee_sites(&otad).await;
    let s = per_site_canaries(&fw);
    let plan = otad.plan(s.clone()).await;
    let canary = &plan.stages[0];
    let groups: Vec<(String, String, Vec<String>, u32)> = canary
        .canaries
        .iter()
        .map(|g| {
            (
                g.site_id.clone(),
                g.network.clone(),
                g.device_ids.clone(),
                g.available,
            )
        })
        .collect();
    assert_eq!(groups.len(), 6, "3 sites × 2 networks");
    assert_eq!(
        groups[0],
        (
            "a".to_string(),
            "zb1".to_string(),
            vec!["a/zb1-1".to_string(), "a/zb1-2".to_string()],
            3
        ),
        "the weak link is not a canary"
    );
    assert!(groups.iter().all(|g| g.2.len() == 2 && g.3 == 3));
    assert_eq!(canary.device_ids.len(), 12);
    assert_eq!(plan.stages[1].device_ids.len(), 6);
    assert!(plan.stages[1].canaries.is_empty());
    assert_eq!(
        plan.policies,
        [
            "canaries: stage canary takes 2 device(s) from every site and zigbee2mqtt network",
            "health window: ESPHome 2 min, Zigbee 10 min; devices without an API end unconfirmed"
        ]
    );

    // The started rollout's first stage is the plan's.
    let r = otad.create(s).await;
    let started = otad.rollout(&r.id).await;
    assert_eq!(started.stages[0].device_ids, canary.device_ids);
    let shown = started.spec.expect("spec");
    assert_eq!(shown.canary_per_site, 2);
    assert_eq!(shown.stages[0].size, None, "the canaries fill it");

    // Every canary is updated before any other device.
    otad.until_rollout(&r.id, "completed", hours(2)).await;
    let mut started_at: Vec<(i64, String)> = Vec::new();
    for site in &sites {
        for t in &site.log().transfers {
            started_at.push((t.started_ms, format!("{}/{}", site.id, t.local_id)));
        }
    }
    assert_eq!(started_at.len(), 18);
    let last_canary = started_at
        .iter()
        .filter(|(_, id)| canary.device_ids.contains(id))
        .map(|(at, _)| *at)
        .max();
    let first_other = started_at
        .iter()
        .filter(|(_, id)| !canary.device_ids.contains(id))
        .map(|(at, _)| *at)
        .min();
    assert!(last_canary < first_other, "{started_at:?}");
}

#[tokio::test(start_paused = true)]
async fn per_site_canaries_with_a_sized_first_stage_are_refused() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(2).await;
    let before = otad.recorded().len();
    let mut sized = per_site_canaries(&fw);
    sized.stages[0].size = Some(count(5));
    let e = create(&otad, sized, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "spec.stages[0] (canary) has a size, but canary_per_site = 2 fills the first stage (2 \
         device(s) from every site and zigbee2mqtt network): leave its size unset, or set \
         canary_per_site to 0"
    );
    let mut too_many = per_site_canaries(&fw);
    too_many.canary_per_site = 1001;
    let e = create(&otad, too_many, false).await.unwrap_err();
    assert_eq!(e.message(), "spec.canary_per_site is 1001: at most 1000");
    let mut unsized_later = per_site_canaries(&fw);
    unsized_later.stages[1].size = None;
    let e = create(&otad, unsized_later, false).await.unwrap_err();
    assert_eq!(
        e.message(),
        "spec.stages[1] (everyone) needs a size: count or cumulative_percent"
    );
    assert_eq!(otad.recorded().len(), before, "refused specs store nothing");
}

// === health-gated success (issue 15 item 4) ===

/// The task of `device` in rollout `r` as the API shows it (the device's current task).
async fn task_json(otad: &TestOtad, r: &str, device: &str) -> pb::Task {
    let t = otad.task_of(r, device).expect("a task");
    let shown = otad
        .devices()
        .get(pb::GetDeviceRequest {
            id: device.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .current_task
        .expect("a current task");
    assert_eq!(shown.id, t.created.task_id);
    shown
}

#[tokio::test(start_paused = true)]
async fn success_waits_for_the_health_window_and_counts_only_healthy_devices() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = esp_site(&otad, 3, |i| match i {
        0 => Behavior::Verified(pb::TaskHealth::Healthy),
        1 => Behavior::Verified(pb::TaskHealth::Unconfirmed),
        _ => Behavior::Unhealthy("the device rolled back to 1.0.0".into()),
    })
    .await;
    let mut s = one_at_a_time(&fw, vec![]);
    s.concurrency = None;
    s.stages[0].success_threshold = Some(pb::Threshold {
        value: Some(pb::threshold::Value::Percent(100.0)),
    });
    // The spec leaves `health` unset: the default windows apply (2 min for ESPHome).
    let r = otad.create(s).await;
    let verifying = otad
        .until("n0 verifying", secs(1), hours(1), |st| {
            let t = st
                .tasks
                .values()
                .find(|t| t.created.device_id == "home/n0")?;
            t.verifying_until_ms
        })
        .await;
    let shown = task_json(&otad, &r.id, "home/n0").await;
    assert_eq!(shown.verifying_until_ms, verifying.as_i64());
    assert_eq!(shown.status, pb::UpgradeStatus::Downloaded as i32);
    let running = otad.rollout(&r.id).await;
    assert_eq!(running.state, pb::RolloutState::Running as i32);
    assert!(running.totals.unwrap().verifying >= 1);
    assert!(
        site.log()
            .transfers
            .iter()
            .all(|t| t.health_window_s == 120),
        "every command carries the ESPHome window"
    );
    assert!(
        (verifying.as_i64() - otad.now_ms()) > 100_000,
        "the window runs 2 min from the device's report"
    );

    otad.until_rollout(&r.id, "paused", hours(1)).await;
    let paused = otad.rollout(&r.id).await;
    let totals = paused.totals.unwrap();
    assert_eq!(
        (
            totals.succeeded,
            totals.unconfirmed,
            totals.failed,
            totals.verifying
        ),
        (1, 1, 1, 0)
    );
    assert!(
        paused.state_reason.contains("only 1 succeeded, 3 needed")
            && paused.state_reason.contains("1 unconfirmed not counted"),
        "{}",
        paused.state_reason
    );
    let healthy = task_json(&otad, &r.id, "home/n0").await;
    assert_eq!(healthy.health, pb::TaskHealth::Healthy as i32);
    assert!(
        healthy.finished_at_ms >= verifying.as_i64(),
        "not before the window ended"
    );
    assert_eq!(
        task_json(&otad, &r.id, "home/n1").await.health,
        pb::TaskHealth::Unconfirmed as i32
    );
    let rolled_back = task_json(&otad, &r.id, "home/n2").await.error.unwrap();
    assert_eq!(
        (rolled_back.code, rolled_back.message.as_str()),
        (5022, "the device rolled back to 1.0.0")
    );
    assert_eq!(
        site.log().transfers_of("n2").len(),
        1,
        "5022 is never retried"
    );
}

/// otad restarts while a device is in its health window: the window is in the log, so the
/// restarted otad shows it and takes the site's verdict, which the site re-sends until otad
/// acknowledged it; no device is updated twice.
#[tokio::test(start_paused = true)]
async fn a_restart_in_a_health_window_keeps_it_and_takes_the_verdict() {
    let mut otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = esp_site(&otad, 2, |_| Behavior::Verified(pb::TaskHealth::Healthy)).await;
    let mut s = one_at_a_time(&fw, vec![]);
    s.concurrency = None;
    let r = otad.create(s).await;
    let until = otad
        .until("n0 verifying", secs(1), hours(1), |st| {
            st.tasks
                .values()
                .find(|t| t.created.device_id == "home/n0")?
                .verifying_until_ms
        })
        .await;
    site.disconnect();
    otad = otad.restart().await;
    let task = otad.task_of(&r.id, "home/n0").expect("the task survives");
    assert_eq!(task.verifying_until_ms, Some(until), "the window survives");
    site.reconnect(&otad).await;
    otad.until_rollout(&r.id, "completed", hours(1)).await;
    for device in ["home/n0", "home/n1"] {
        assert_eq!(
            task_json(&otad, &r.id, device).await.health,
            pb::TaskHealth::Healthy as i32,
            "{device}"
        );
    }
    assert_eq!(site.log().transfers.len(), 2, "no device updated twice");
}

#[tokio::test(start_paused = true)]
async fn health_policies_are_stored_shown_planned_and_bounded() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut s = one_at_a_time(&fw, vec![]);
    let policy = pb::HealthPolicy {
        esphome_window_s: 90,
        zigbee_window_s: 0,
        accept_reachability: true,
    };
    s.health = Some(policy);
    let plan = otad.plan(s.clone()).await;
    assert_eq!(
        plan.policies,
        ["health window: ESPHome 90 s, Zigbee off; devices without an API succeed when reachable"]
    );
    let created = create(&otad, s.clone(), false).await.unwrap();
    assert_eq!(
        otad.rollout(&created.id).await.spec.unwrap().health,
        Some(policy)
    );
    let before = otad.recorded().len();
    s.health = Some(pb::HealthPolicy {
        esphome_window_s: 86_401,
        ..policy
    });
    let e = create(&otad, s, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "spec.health.esphome_window_s is 86401: at most 86400 (24 h)"
    );
    assert_eq!(otad.recorded().len(), before, "refused specs store nothing");
}

// === learned ETA ===

#[tokio::test(start_paused = true)]
async fn the_plan_estimates_with_the_transfer_times_of_past_updates() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    // Four esp32dev devices whose transfers take 30 s; all four at once (4 per site).
    let _site = esp_site(&otad, 4, |_| Behavior::Succeed).await;
    let mut s = spec(&fw, vec![stage("all", percent(100.0))]);
    // No health window: the estimate is the transfers alone.
    s.health = Some(pb::HealthPolicy::default());
    let before = otad.plan(s.clone()).await;
    assert_eq!(
        before.stages[0].estimated_s, 60,
        "the typical ESPHome minute"
    );
    assert_eq!(
        before.notes,
        [
            "model esp32dev over esphome: no past update in the log, assumed 60 s (the typical esphome transfer)"
        ]
    );
    assert_eq!(before.makespan_s, Some(60));
    assert!(before.zigbee_airtime.is_empty());

    let id = otad.create(s.clone()).await.id;
    let mut watch = otad
        .rollouts()
        .watch(pb::WatchRolloutRequest {
            id: id.clone(),
            include_tasks: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first message");
    let left = first
        .remaining_s
        .expect("a running rollout has a remaining time");
    assert!(
        (1..=60).contains(&left),
        "{left} s left of the typical minute"
    );
    otad.until_rollout(&id, "completed", hours(1)).await;

    let fw3 = otad.upload_esp("3.0.0").await;
    let after = otad
        .plan(pb::RolloutSpec {
            firmware_id: fw3.clone(),
            ..s.clone()
        })
        .await;
    let learned = after.stages[0].estimated_s;
    assert!(
        (30..=32).contains(&learned),
        "the 30 s transfers, not the typical 60 s: {learned}"
    );
    assert_eq!(
        after.notes,
        [format!(
            "model esp32dev over esphome: {learned} s, the median of 4 past update(s)"
        )]
    );
    assert_eq!(after.makespan_s, Some(after.estimated_duration_s));
}

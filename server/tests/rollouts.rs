//! Staged rollouts end to end: otad in-process, fake site agents over real gRPC with simulated
//! devices that take (paused) time.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use ota_domain::events::DomainEvent;
use ota_domain::projection::TaskPhase;
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::site::*;
use tonic::Code;

const RUNNING: i32 = pb::RolloutState::Running as i32;
const PAUSED: i32 = pb::RolloutState::Paused as i32;
const COMPLETED: i32 = pb::RolloutState::Completed as i32;
const ABORTED: i32 = pb::RolloutState::Aborted as i32;

fn esp_fleet(prefix: &str, n: usize, behavior: Behavior, duration: Duration) -> Vec<Dev> {
    (0..n)
        .map(|i| {
            dev(
                esphome(&format!("{prefix}{i:02}"), "1.0.0"),
                behavior.clone(),
                duration,
            )
        })
        .collect()
}

/// A rollout action the rollout's state does not allow: refused with exactly `message`.
#[track_caller]
fn assert_refused(e: &tonic::Status, message: &str) {
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(e.message(), message);
}

#[tokio::test(start_paused = true)]
async fn canary_soaks_then_waves_follow_and_watch_streams_until_completion() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        esp_fleet("node-", 10, Behavior::Succeed, secs(30)),
    )
    .await;
    let r = otad
        .create(spec(
            &fw,
            vec![
                pb::Stage {
                    soak_s: 120,
                    ..stage("canary", count(1))
                },
                stage("wave", percent(50.0)),
                stage("rest", percent(100.0)),
            ],
        ))
        .await;
    assert_eq!(r.state, RUNNING);
    let sizes: Vec<usize> = r.stages.iter().map(|s| s.device_ids.len()).collect();
    assert_eq!(sizes, [1, 4, 5]);

    let mut watch = otad
        .rollouts()
        .watch(pb::WatchRolloutRequest {
            id: r.id.clone(),
            include_tasks: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut streamed_tasks = HashSet::new();
    let mut last = None;
    let mut messages = 0;
    let mut saw_soaking = false;
    while let Some(m) = tokio::time::timeout(mins(120), watch.next()).await.unwrap() {
        let m = m.unwrap();
        messages += 1;
        streamed_tasks.extend(m.tasks.iter().map(|t| t.id.clone()));
        let rollout = m.rollout.unwrap();
        saw_soaking |= rollout.stages[0].state == pb::StageState::Soaking as i32;
        last = Some(rollout);
    }
    let last = last.unwrap();
    assert_eq!(last.state, COMPLETED, "the watch ends at completion");
    assert!(saw_soaking && messages > 5);
    assert_eq!(streamed_tasks.len(), 10);
    assert_eq!(
        last.state_reason,
        "10 devices: 10 updated, 0 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
    assert!(
        last.stages
            .iter()
            .all(|s| s.state == pb::StageState::Succeeded as i32)
    );
    assert_eq!(last.totals.unwrap().succeeded, 10);

    // Every device got exactly one transfer.
    let log = site.log();
    assert_eq!(log.transfers.len(), 10);
    let locals: HashSet<&str> = log.transfers.iter().map(|t| t.local_id.as_str()).collect();
    assert_eq!(locals.len(), 10);

    // The canary soaked 2 minutes, and no later device was touched before it succeeded.
    let events = otad.recorded();
    let at = |pred: &dyn Fn(&DomainEvent) -> bool| {
        events
            .iter()
            .find(|(_, _, e)| pred(e))
            .map(|(_, at, _)| *at)
            .unwrap()
    };
    let soaking = at(&|e| matches!(e, DomainEvent::StageSoaking(s) if s.index == 0));
    let succeeded = at(&|e| matches!(e, DomainEvent::StageSucceeded(s) if s.index == 0));
    assert!(succeeded - soaking >= 120_000, "{}", succeeded - soaking);
    for (_, at, e) in &events {
        if let DomainEvent::TaskCreated(t) = e
            && t.stage > 0
        {
            assert!(*at >= succeeded);
        }
    }
    let canary = &last.stages[0].device_ids[0];
    for t in &log.transfers {
        if format!("home/{}", t.local_id) != *canary {
            assert!(t.started_ms >= succeeded);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failure_threshold_pauses_with_reason_and_resume_continues() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut devices = esp_fleet("n", 4, Behavior::Succeed, secs(10));
    devices[0].behavior = Behavior::Fail(pb::ErrorCode::DeviceReportedFailure as i32);
    let site = FakeSite::connect(&otad, "home", 0, devices).await;
    let r = otad
        .create(spec(
            &fw,
            vec![
                pb::Stage {
                    failure_threshold: threshold(1),
                    ..stage("canary", count(2))
                },
                stage("rest", percent(100.0)),
            ],
        ))
        .await;
    assert_eq!(r.stages[0].device_ids, ["home/n00", "home/n01"]);
    otad.until_rollout(&r.id, "paused", mins(10)).await;

    let paused = otad.rollout(&r.id).await;
    assert_eq!(paused.state, PAUSED);
    assert_eq!(
        paused.state_reason,
        "stage canary: 1 failure(s) ≥ threshold 1 (1 failed, 0 timed out, of 2 devices)"
    );
    assert_eq!(paused.stages[0].state, pb::StageState::Failed as i32);
    assert_eq!(paused.stages[1].state, pb::StageState::Pending as i32);
    assert_eq!(paused.stages[1].counts.unwrap().total, 0);
    let failed = otad.task_of(&r.id, "home/n00").unwrap();
    assert_eq!(failed.phase, TaskPhase::Failed);
    assert_eq!(failed.error.unwrap().code.code(), 5018);
    // 5018 is not transient: no retry.
    assert_eq!(site.log().transfers_of("n00").len(), 1);

    // Nothing moves while paused.
    tokio::time::sleep(mins(30)).await;
    assert_eq!(site.log().transfers.len(), 2);

    let e = otad.rollouts().pause(action(&r.id, "")).await.unwrap_err();
    assert_refused(
        &e,
        &format!("rollout {} is paused: it cannot be paused again", r.id),
    );

    let resumed = otad
        .rollouts()
        .resume(action(&r.id, "n00 is a known bad unit"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state, RUNNING);
    assert_eq!(
        resumed.state_reason,
        "n00 is a known bad unit (resumed by local)"
    );
    otad.until_rollout(&r.id, "completed", mins(10)).await;
    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.state_reason,
        "4 devices: 3 updated, 0 skipped, 1 failed, 0 timed out, 0 cancelled"
    );
    assert_eq!(site.log().transfers.len(), 4);

    let e = otad.rollouts().resume(action(&r.id, "")).await.unwrap_err();
    assert_refused(
        &e,
        &format!(
            "rollout {} is completed: it cannot be resumed (it is final)",
            r.id
        ),
    );
}

#[tokio::test(start_paused = true)]
async fn abort_cancels_queued_and_waiting_tasks_but_lets_transfers_finish() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(0x0200).await;
    let mut sleepy = zigbee("sleepy", "zb-b", 0x0100);
    sleepy.power_source = pb::PowerSource::Battery as i32;
    sleepy.battery_percent = Some(90);
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(zigbee("z1", "zb-a", 0x0100), Behavior::Succeed, mins(10)),
            dev(zigbee("z2", "zb-a", 0x0100), Behavior::Succeed, mins(10)),
            dev(sleepy, Behavior::Sleepy, mins(10)),
        ],
    )
    .await;
    let r = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    // One transfer per Zigbee network: one of zb-a runs, the other waits; the sleepy one waits
    // for its wake-up.
    let id = r.id.clone();
    otad.until("two at the site", secs(1), mins(5), |s| {
        let r = &s.rollouts[&id];
        let phases: Vec<TaskPhase> = r
            .tasks_by_device
            .values()
            .map(|t| s.tasks[t].phase)
            .collect();
        (phases.contains(&TaskPhase::Updating) && phases.contains(&TaskPhase::WaitingForWakeup))
            .then_some(())
    })
    .await;
    let running = ["home/z1", "home/z2"]
        .into_iter()
        .find(|d| otad.task_of(&id, d).unwrap().phase == TaskPhase::Updating)
        .unwrap();
    let queued = if running == "home/z1" {
        "home/z2"
    } else {
        "home/z1"
    };
    assert_eq!(otad.task_of(&id, queued).unwrap().phase, TaskPhase::Queued);

    let aborted = otad
        .rollouts()
        .abort(action(&id, "battery drain reported"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state, ABORTED);
    assert_eq!(
        aborted.state_reason,
        "battery drain reported (aborted by local)"
    );
    let sleepy_task = otad.task_of(&id, "home/sleepy").unwrap();
    assert_eq!(sleepy_task.phase, TaskPhase::Cancelled);
    assert_eq!(
        otad.task_of(&id, queued).unwrap().phase,
        TaskPhase::Cancelled
    );
    assert_eq!(
        otad.task_of(&id, running).unwrap().phase,
        TaskPhase::Updating
    );

    // The running transfer finishes and is reported; nothing else is sent.
    otad.until("the running transfer ends", secs(10), mins(30), |s| {
        let t = &s.tasks[&s.rollouts[&id].tasks_by_device[running]];
        (t.phase == TaskPhase::Succeeded).then_some(())
    })
    .await;
    tokio::time::sleep(mins(30)).await;
    {
        let log = site.log();
        assert_eq!(log.transfers.len(), 2, "{:?}", log.transfers);
        // Only the waiting-for-wake-up task got a cancel at the site.
        let cancelled: Vec<&str> = log.cancels.iter().map(|c| c.task_id.as_str()).collect();
        assert_eq!(cancelled, [sleepy_task.created.task_id.as_str()]);
    }
    let done = otad.rollout(&id).await;
    let totals = done.totals.unwrap();
    assert_eq!((totals.succeeded, totals.cancelled), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn stage_deadline_times_out_unfinished_devices_with_5016() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut devices = esp_fleet("n", 3, Behavior::Succeed, secs(30));
    devices[1].behavior = Behavior::Hang;
    let site = FakeSite::connect(&otad, "home", 0, devices).await;
    let r = otad
        .create(spec(
            &fw,
            vec![pb::Stage {
                deadline_s: Some(300),
                failure_threshold: threshold(2),
                ..stage("all", percent(100.0))
            }],
        ))
        .await;
    otad.until_rollout(&r.id, "completed", mins(30)).await;
    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.state_reason,
        "3 devices: 2 updated, 0 skipped, 0 failed, 1 timed out, 0 cancelled"
    );
    let stage = &done.stages[0];
    assert_eq!(stage.deadline_at_ms, stage.started_at_ms + 300_000);
    assert!(done.finished_at_ms >= stage.deadline_at_ms);
    let hung = otad.task_of(&r.id, "home/n01").unwrap();
    assert_eq!(hung.phase, TaskPhase::TimedOut);
    let error = hung.error.unwrap();
    assert_eq!(error.code.code(), 5016);
    assert!(
        error.message.contains("stage all deadline"),
        "{}",
        error.message
    );
    // A running transfer is not cancelled mid-way.
    assert!(site.log().cancels.is_empty());
}

#[tokio::test(start_paused = true)]
async fn batch_check_lists_devices_of_a_silent_site_with_5019_and_keeps_them() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let north = FakeSite::connect(
        &otad,
        "north",
        0,
        esp_fleet("n", 2, Behavior::Succeed, secs(20)),
    )
    .await;
    let south = FakeSite::connect(
        &otad,
        "south",
        0,
        esp_fleet("s", 2, Behavior::Succeed, secs(20)),
    )
    .await;
    south.ignore_checks();
    let mut s = spec(&fw, vec![stage("all", percent(100.0))]);
    s.skip_batch_check = false;
    s.batch_check_timeout_s = 30;
    let r = otad.create(s).await;
    otad.until_rollout(&r.id, "completed", mins(30)).await;

    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.batch_check_timed_out,
        ["south/s00".to_string(), "south/s01".to_string()]
    );
    assert_eq!(
        done.state_reason,
        "4 devices: 4 updated, 0 skipped, 0 failed, 0 timed out, 0 cancelled; 2 did not answer the batch check (5019)"
    );
    assert_eq!(
        (north.log().check_commands, south.log().check_commands),
        (1, 1)
    );
    let events = otad.recorded();
    let started = events
        .iter()
        .find_map(|(_, at, e)| matches!(e, DomainEvent::BatchCheckStarted(_)).then_some(*at))
        .unwrap();
    let completed = events
        .iter()
        .find_map(|(_, at, e)| matches!(e, DomainEvent::BatchCheckCompleted(_)).then_some(*at))
        .unwrap();
    assert!(completed - started >= 30_000);
    let no_answer: Vec<&str> = events
        .iter()
        .filter_map(|(stream, _, e)| match e {
            DomainEvent::DeviceChecked(c)
                if c.error.as_ref().map(|e| e.code.code()) == Some(5019) =>
            {
                Some(stream.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(no_answer, ["device/south/s00", "device/south/s01"]);
    // They stayed in their stage and were updated like the others.
    assert_eq!(south.log().transfers.len(), 2);
    assert_eq!(north.log().transfers.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limits_hold_at_the_sites() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let zfw = otad.upload_zigbee(0x0200).await;
    let efw = otad.upload_esp("2.0.0").await;
    let zig = |net: &str, i: usize| {
        dev(
            zigbee(&format!("{net}-{i}"), net, 0x0100),
            Behavior::Succeed,
            mins(20),
        )
    };
    let a = FakeSite::connect(
        &otad,
        "a",
        0,
        ["zb1", "zb2", "zb3"]
            .into_iter()
            .flat_map(|n| (0..3).map(move |i| (n, i)))
            .map(|(n, i)| zig(n, i))
            .collect(),
    )
    .await;
    let b = FakeSite::connect(&otad, "b", 0, (0..3).map(|i| zig("zb1", i)).collect()).await;
    let c = FakeSite::connect(&otad, "c", 0, esp_fleet("e", 6, Behavior::Succeed, mins(1))).await;

    let mut zs = spec(&zfw, vec![stage("all", percent(100.0))]);
    zs.concurrency = Some(pb::ConcurrencyLimits {
        global: 3,
        per_site: 2,
        per_zigbee_network: 0, // default: 1
        per_esphome_site: 0,
    });
    let mut es = spec(&efw, vec![stage("all", percent(100.0))]);
    es.concurrency = Some(pb::ConcurrencyLimits {
        per_esphome_site: 2,
        ..Default::default()
    });
    let zr = otad.create(zs).await;
    let er = otad.create(es).await;
    otad.until_rollout(&zr.id, "completed", Duration::from_secs(6 * 3600))
        .await;
    otad.until_rollout(&er.id, "completed", mins(10)).await;

    let la = a.log();
    assert_eq!(la.transfers.len(), 9);
    assert_eq!(la.max_in_flight, 2, "per site");
    for net in ["zb1", "zb2", "zb3"] {
        assert_eq!(
            la.max_by_network[&format!("1/{net}")],
            1,
            "per network {net}"
        );
    }
    drop(la);
    assert_eq!(b.log().max_in_flight, 1, "one network at b");
    assert_eq!(
        max_overlap(&[&a, &b]),
        3,
        "global limit of the Zigbee rollout"
    );
    let lc = c.log();
    assert_eq!(lc.transfers.len(), 6);
    assert_eq!(lc.max_esphome, 2, "ESPHome per site");
}

#[tokio::test(start_paused = true)]
async fn maintenance_window_in_site_local_time_gates_dispatch() {
    // 20:00 UTC on a Monday; the site is at UTC+1, so 21:00 local.
    let otad = TestOtad::in_memory_at(MONDAY + 20 * HOUR).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        60,
        esp_fleet("n", 3, Behavior::Succeed, mins(40)),
    )
    .await;
    let mut s = spec(&fw, vec![stage("all", percent(100.0))]);
    s.skip_batch_check = false;
    s.batch_check_timeout_s = 30;
    s.concurrency = Some(pb::ConcurrencyLimits {
        per_esphome_site: 1,
        ..Default::default()
    });
    s.device_timeout_s = 3600;
    s.maintenance_window = Some(pb::MaintenanceWindow {
        start: "22:00".into(),
        end: "23:00".into(),
        weekdays: vec![],
    });
    let r = otad.create(s).await;
    let plan_warning = otad.plan(r.spec.clone().unwrap()).await.warnings;
    assert!(
        plan_warning
            .iter()
            .any(|w| w.contains("maintenance window 22:00-23:00")),
        "{plan_warning:?}"
    );

    // Closed: nothing is checked or dispatched for the next 59 minutes.
    tokio::time::sleep(mins(59)).await;
    assert_eq!(site.log().check_commands, 0);
    assert!(site.log().transfers.is_empty());
    let waiting = otad.rollout(&r.id).await;
    assert_eq!(waiting.stages[0].state, pb::StageState::Pending as i32);

    // It opens at 22:00 local (21:00 UTC): batch check, then one device at a time. The second
    // starts at 21:40 and runs past the close; the third waits for the next evening.
    otad.until(
        "three transfers",
        mins(1),
        Duration::from_secs(30 * 3600),
        |_| (site.log().transfers.len() == 3).then_some(()),
    )
    .await;
    let opens = MONDAY + 21 * HOUR;
    let t: Vec<i64> = site.log().transfers.iter().map(|t| t.started_ms).collect();
    assert!(t[0] >= opens && t[0] < opens + 120_000, "{}", t[0] - opens);
    assert!(t[1] >= opens + 40 * 60_000 && t[1] < opens + 42 * 60_000);
    let tomorrow = opens + 24 * HOUR;
    assert!(
        t[2] >= tomorrow && t[2] < tomorrow + 120_000,
        "third transfer at {} h after the first opening",
        (t[2] - opens) as f64 / HOUR as f64
    );
    assert_eq!(site.log().check_commands, 1);
    otad.until_rollout(&r.id, "completed", mins(60)).await;
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_with_backoff_and_others_are_not() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(
                esphome("flaky", "1.0.0"),
                Behavior::FailFirst(pb::ErrorCode::ConnectFailed as i32, 1),
                secs(10),
            ),
            dev(
                esphome("broken", "1.0.0"),
                Behavior::Fail(pb::ErrorCode::ChecksumMismatch as i32),
                secs(10),
            ),
            dev(esphome("fine", "1.0.0"), Behavior::Succeed, secs(10)),
        ],
    )
    .await;
    let mut s = spec(
        &fw,
        vec![pb::Stage {
            failure_threshold: threshold(3),
            ..stage("all", percent(100.0))
        }],
    );
    s.retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        initial_backoff_s: 60,
        max_backoff_s: 600,
    });
    let r = otad.create(s).await;
    otad.until_rollout(&r.id, "completed", mins(30)).await;

    {
        let log = site.log();
        let flaky = log.transfers_of("flaky");
        assert_eq!(flaky.len(), 2);
        let gap = flaky[1].started_ms - flaky[0].started_ms;
        // 10 s transfer, then 60 s backoff shortened by at most a quarter of jitter.
        assert!((55_000..=72_000).contains(&gap), "{gap}");
        assert_eq!((flaky[0].attempt, flaky[1].attempt), (1, 2));
        assert_eq!(log.transfers_of("broken").len(), 1);
    }
    let t = otad.task_of(&r.id, "home/flaky").unwrap();
    assert_eq!((t.phase, t.attempt), (TaskPhase::Succeeded, 2));
    let t = otad.task_of(&r.id, "home/broken").unwrap();
    assert_eq!((t.phase, t.attempt), (TaskPhase::Failed, 1));
    assert_eq!(t.error.unwrap().code.code(), 5009);
    assert_eq!(
        otad.rollout(&r.id).await.state_reason,
        "3 devices: 2 updated, 0 skipped, 1 failed, 0 timed out, 0 cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn weak_signal_waits_for_confirmation() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut weak = esphome("weak", "1.0.0");
    weak.signal = Some(pb::Signal {
        kind: pb::SignalKind::RssiDbm as i32,
        value: -95,
    });
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(weak, Behavior::Succeed, secs(10)),
            dev(esphome("strong", "1.0.0"), Behavior::Succeed, secs(10)),
        ],
    )
    .await;
    let r = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    let id = r.id.clone();
    otad.until("the weak device waits", secs(1), mins(5), |_| {
        otad.task_of(&id, "home/weak")
            .filter(|t| t.awaiting_confirmation)
    })
    .await;
    tokio::time::sleep(mins(10)).await;
    assert!(site.log().transfers_of("weak").is_empty());
    let device = otad
        .devices()
        .get(pb::GetDeviceRequest {
            id: "home/weak".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = device.current_task.unwrap();
    assert_eq!(task.error.unwrap().code, 5005);
    assert!(task.awaiting_confirmation);
    assert_eq!(
        otad.rollout(&id).await.state,
        RUNNING,
        "the stage waits for the answer: {:?}",
        otad.rollout(&id).await.state_reason
    );

    otad.devices()
        .confirm_warning(pb::ConfirmWarningRequest {
            device_id: "home/weak".into(),
            proceed: true,
        })
        .await
        .unwrap();
    otad.until_rollout(&id, "completed", mins(10)).await;
    assert_eq!(site.log().transfers_of("weak").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn battery_below_70_percent_is_skipped_with_a_reminder() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(0x0200).await;
    let mut low = zigbee("remote", "zb", 0x0100);
    low.power_source = pb::PowerSource::Battery as i32;
    low.battery_percent = Some(40);
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(low, Behavior::Succeed, mins(1)),
            dev(zigbee("bulb", "zb", 0x0100), Behavior::Succeed, mins(1)),
        ],
    )
    .await;
    let r = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    otad.until_rollout(&r.id, "completed", mins(30)).await;
    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.state_reason,
        "2 devices: 1 updated, 1 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
    let task = otad
        .devices()
        .get(pb::GetDeviceRequest {
            id: "home/remote".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .current_task
        .unwrap();
    assert!(
        task.remind.contains("battery at 40 %") && task.remind.contains("70 %"),
        "{}",
        task.remind
    );
    assert!(site.log().transfers_of("remote").is_empty());
}

#[tokio::test(start_paused = true)]
async fn plan_lists_stages_exclusions_and_an_estimate_and_records_nothing() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut esp8266 = esphome("c-8266", "1.0.0");
    esp8266.chip = "esp8266".into();
    let mut no_ota = esphome("c-nota", "1.0.0");
    no_ota.supports_ota = false;
    let ok = |local: &str, v: &str| dev(esphome(local, v), Behavior::Succeed, secs(1));
    FakeSite::connect(
        &otad,
        "a",
        0,
        vec![
            ok("a1", "1.0.0"),
            ok("a2", "1.0.0"),
            ok("a3", "1.0.0"),
            ok("a-current", "2.0.0"),
        ],
    )
    .await;
    FakeSite::connect(
        &otad,
        "b",
        0,
        vec![ok("b1", "1.0.0"), ok("b-newer", "3.0.0")],
    )
    .await;
    let c = FakeSite::connect(
        &otad,
        "c",
        0,
        vec![
            ok("c1", "1.0.0"),
            ok("c-gone", "1.0.0"),
            dev(esp8266, Behavior::Succeed, secs(1)),
            dev(no_ota, Behavior::Succeed, secs(1)),
        ],
    )
    .await;
    c.remove_device("c-gone");
    otad.until("c-gone removed", secs(1), mins(1), |s| {
        s.devices["c/c-gone"].removed.then_some(())
    })
    .await;

    let mut s = spec(
        &fw,
        vec![stage("canary", count(3)), stage("rest", percent(100.0))],
    );
    s.skip_batch_check = false;
    s.selector = Some(pb::DeviceSelector {
        device_ids: [
            "a/a1",
            "a/a2",
            "a/a3",
            "a/a-current",
            "b/b1",
            "b/b-newer",
            "c/c1",
            "c/c-gone",
            "c/c-8266",
            "c/c-nota",
            "x/unknown",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let before = otad.app().core.store().last_seq();
    let plan = otad.plan(s.clone()).await;
    assert_eq!(
        otad.app().core.store().last_seq(),
        before,
        "a plan records nothing"
    );
    assert_eq!(plan.target_count, 5);
    assert_eq!(
        plan.stages[0].device_ids,
        ["a/a1", "b/b1", "c/c1"],
        "sites spread"
    );
    assert_eq!(plan.stages[1].device_ids, ["a/a2", "a/a3"]);
    let excluded: Vec<(&str, i32)> = plan
        .exclusions
        .iter()
        .map(|e| (e.device_id.as_str(), e.code))
        .collect();
    assert_eq!(
        excluded,
        [
            ("a/a-current", 5000),
            ("b/b-newer", 5013),
            ("c/c-8266", 5013),
            ("c/c-gone", 5012),
            ("c/c-nota", 5013),
            ("x/unknown", 5099),
        ]
    );
    let reasons: BTreeMap<&str, &str> = plan
        .exclusions
        .iter()
        .map(|e| (e.device_id.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(reasons["a/a-current"], "already on 2.0.0");
    assert!(reasons["b/b-newer"].contains("downgrade"));
    assert!(reasons["c/c-8266"].contains("esp8266"));
    assert!(reasons["c/c-nota"].contains("does not support OTA"));
    assert!(reasons["c/c-gone"].contains("no longer reports"));
    // ESPHome: 1 min per device; canary on three sites at once, the rest two at once on site a;
    // each stage then waits for its last device's 2 min health window (the default); plus the
    // 60 s batch check.
    assert_eq!(
        (plan.stages[0].estimated_s, plan.stages[1].estimated_s),
        (60 + 120, 60 + 120)
    );
    assert_eq!(plan.estimated_duration_s, 60 + 2 * 180);

    // Zigbee: 20 min per device, one per network.
    let zfw = otad.upload_zigbee(0x0200).await;
    FakeSite::connect(
        &otad,
        "z",
        0,
        (0..3)
            .map(|i| {
                dev(
                    zigbee(&format!("z{i}"), "zb", 0x0100),
                    Behavior::Succeed,
                    secs(1),
                )
            })
            .collect(),
    )
    .await;
    let mut zs = spec(&zfw, vec![stage("all", percent(100.0))]);
    zs.selector = Some(pb::DeviceSelector {
        site_ids: vec!["z".into()],
        ..Default::default()
    });
    let zplan = otad.plan(zs).await;
    // One stage, then the default 10 min Zigbee health window.
    assert_eq!(zplan.estimated_duration_s, 3 * 20 * 60 + 10 * 60);

    // A draft can be re-planned; a running rollout's plan is fixed.
    let draft = otad
        .rollouts()
        .create(pb::CreateRolloutRequest {
            spec: Some(s),
            start: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(draft.state, pb::RolloutState::Draft as i32);
    assert!(draft.stages.is_empty());
    let again = otad
        .rollouts()
        .plan(pb::PlanRolloutRequest {
            subject: Some(pb::plan_rollout_request::Subject::RolloutId(
                draft.id.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, plan);
    let started = otad
        .rollouts()
        .start(action(&draft.id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.stages[0].device_ids, plan.stages[0].device_ids);
    assert_eq!(started.exclusions, plan.exclusions);
    let e = otad
        .rollouts()
        .plan(pb::PlanRolloutRequest {
            subject: Some(pb::plan_rollout_request::Subject::RolloutId(
                draft.id.clone(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

/// On sled, in real time (sled commits on its own threads, which a paused clock would race):
/// what each restarted otad reads back is what the previous one made durable on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_mid_rollout_resume_without_duplicate_tasks_or_uploads() {
    let ms = Duration::from_millis;
    let mut otad = TestOtad::sled_at(MONDAY).await;
    let fw = otad.upload_now("node", "2.0.0", esp_image("2.0.0")).await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        esp_fleet("n", 6, Behavior::Succeed, ms(300)),
    )
    .await;
    let mut s = spec(
        &fw,
        vec![
            pb::Stage {
                soak_s: 2,
                ..stage("canary", count(2))
            },
            stage("rest", percent(100.0)),
        ],
    );
    s.concurrency = Some(pb::ConcurrencyLimits {
        per_esphome_site: 2,
        ..Default::default()
    });
    let r = otad.create(s).await;

    async fn restart(otad: TestOtad, site: &FakeSite) -> TestOtad {
        site.disconnect();
        let otad = otad.restart().await;
        site.reconnect(&otad).await;
        otad
    }
    // While the canary transfers run...
    otad.until("canary transfers under way", ms(5), secs(30), |_| {
        (site.log().transfers.len() == 2).then_some(())
    })
    .await;
    otad = restart(otad, &site).await;
    // ...while the canary soaks...
    let id = r.id.clone();
    otad.until("soaking", ms(5), secs(30), |s| {
        (s.rollouts[&id].stages[0].state == ota_domain::projection::StageState::Soaking)
            .then_some(())
    })
    .await;
    tokio::time::sleep(ms(500)).await;
    otad = restart(otad, &site).await;
    // ...and in the middle of the last stage.
    otad.until("last stage under way", ms(5), secs(30), |_| {
        (site.log().transfers.len() >= 4).then_some(())
    })
    .await;
    otad = restart(otad, &site).await;
    otad.until_rollout(&r.id, "completed", secs(60)).await;

    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.state_reason,
        "6 devices: 6 updated, 0 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
    let log = site.log();
    let mut per_device: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &log.transfers {
        *per_device.entry(t.local_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_device.len(), 6);
    assert!(per_device.values().all(|n| *n == 1), "{per_device:?}");
    drop(log);
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, e) in otad.recorded() {
        if let DomainEvent::TaskCreated(t) = e {
            *created.entry(t.device_id).or_default() += 1;
        }
    }
    assert_eq!(created.len(), 6);
    assert!(created.values().all(|n| *n == 1), "{created:?}");
    // Restarted otad resent the update commands of tasks at the site; the agent knew them.
    assert!(site.log().repeated_updates >= 2);
    // The soak continued from its recorded end instead of starting again after the restart.
    let events = otad.recorded();
    let at = |pred: &dyn Fn(&DomainEvent) -> bool| {
        events
            .iter()
            .find(|(_, _, e)| pred(e))
            .map(|(_, at, _)| *at)
            .unwrap()
    };
    let soaking = at(&|e| matches!(e, DomainEvent::StageSoaking(s) if s.index == 0));
    let succeeded = at(&|e| matches!(e, DomainEvent::StageSucceeded(s) if s.index == 0));
    assert!(
        (2_000..3_500).contains(&(succeeded - soaking)),
        "{}",
        succeeded - soaking
    );
}

#[tokio::test(start_paused = true)]
async fn auto_upgrade_applies_a_completed_rollouts_firmware_to_a_device_that_appears_later() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        esp_fleet("n", 2, Behavior::Succeed, secs(30)),
    )
    .await;
    let r = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    otad.until_rollout(&r.id, "completed", mins(10)).await;

    // Two devices appear later on the old version; only the one with the switch on follows.
    site.add_device(dev(esphome("late", "1.0.0"), Behavior::Succeed, secs(30)));
    site.add_device(dev(esphome("manual", "1.0.0"), Behavior::Succeed, secs(30)));
    otad.until("late devices known", secs(1), mins(1), |s| {
        (s.devices.contains_key("home/late") && s.devices.contains_key("home/manual")).then_some(())
    })
    .await;
    let setting = otad
        .devices()
        .set_auto_upgrade(pb::SetAutoUpgradeRequest {
            device_id: "home/late".into(),
            enabled: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(setting.enabled);
    otad.until("the auto task succeeds", secs(1), mins(10), |s| {
        let d = &s.devices["home/late"];
        let t = &s.tasks[d.current_task.as_ref()?];
        (t.phase == TaskPhase::Succeeded).then(|| t.clone())
    })
    .await;
    let app = otad.app();
    {
        let state = app.core.read();
        let t = &state.tasks[state.devices["home/late"].current_task.as_ref().unwrap()];
        assert!(t.created.auto);
        assert_eq!(t.created.rollout_id.as_deref(), Some(r.id.as_str()));
        assert_eq!(t.created.firmware_id, fw);
        assert!(state.devices["home/manual"].current_task.is_none());
        assert_eq!(state.devices["home/late"].facts.current.version, "2.0.0");
    }
    assert_eq!(site.log().transfers_of("late").len(), 1);
    assert!(site.log().transfers_of("manual").is_empty());
    // The completed rollout's own counts did not change.
    assert_eq!(otad.rollout(&r.id).await.totals.unwrap().total, 2);
}

#[tokio::test(start_paused = true)]
async fn auto_upgrade_support_is_the_same_when_read_and_when_set() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    // An ESP chip on a serial port whose firmware says nothing of OTA: the ROM bootloader
    // flashes it anyway. A Zigbee device without OTA support cannot be updated at all.
    let serial = pb::DeviceReport {
        transport: pb::Transport::Serial as i32,
        network: "serial".into(),
        supports_ota: false,
        ..esphome("serial-ttyUSB0", "1.0.0")
    };
    let bulb = pb::DeviceReport {
        supports_ota: false,
        ..zigbee("0x01", "zb", 1)
    };
    let _site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(serial, Behavior::Succeed, secs(30)),
            dev(bulb, Behavior::Succeed, secs(30)),
        ],
    )
    .await;
    let get = |id: &str| {
        let mut devices = otad.devices();
        let id = id.to_string();
        async move {
            devices
                .get_auto_upgrade(pb::GetAutoUpgradeRequest { device_id: id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let set = |id: &str| {
        let mut devices = otad.devices();
        let id = id.to_string();
        async move {
            devices
                .set_auto_upgrade(pb::SetAutoUpgradeRequest {
                    device_id: id,
                    enabled: true,
                })
                .await
        }
    };
    assert!(get("home/serial-ttyUSB0").await.supported);
    let on = set("home/serial-ttyUSB0").await.unwrap().into_inner();
    assert!(on.supported && on.enabled, "{on:?}");
    assert!(get("home/serial-ttyUSB0").await.enabled);

    assert!(!get("home/0x01").await.supported);
    let refused = set("home/0x01").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.message(), "home/0x01 does not support OTA updates");
    assert!(!get("home/0x01").await.enabled);
}

#[tokio::test(start_paused = true)]
async fn check_only_rollouts_install_nothing_and_the_api_refuses_bad_requests() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        esp_fleet("n", 3, Behavior::Succeed, secs(10)),
    )
    .await;

    let mut check = spec(&fw, vec![stage("all", percent(100.0))]);
    check.upgrade_type = pb::UpgradeType::Check as i32;
    let e = otad
        .rollouts()
        .create(pb::CreateRolloutRequest {
            spec: Some(check.clone()),
            start: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("skip_batch_check"), "{}", e.message());
    check.skip_batch_check = false;
    let r = otad.create(check).await;
    otad.until_rollout(&r.id, "completed", mins(10)).await;
    let done = otad.rollout(&r.id).await;
    assert!(
        done.state_reason
            .starts_with("check only, nothing installed: 3 checked: 3 can take the firmware"),
        "{}",
        done.state_reason
    );
    assert!(site.log().transfers.is_empty());
    assert_eq!(site.log().check_commands, 1);

    // Unknown firmware, unknown rollout, moves a draft cannot make.
    let e = otad
        .rollouts()
        .create(pb::CreateRolloutRequest {
            spec: Some(spec("fw-nope", vec![stage("all", percent(100.0))])),
            start: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = otad
        .rollouts()
        .get(pb::GetRolloutRequest {
            id: "ro-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let draft = otad
        .rollouts()
        .create(pb::CreateRolloutRequest {
            spec: Some(spec(&fw, vec![stage("all", percent(100.0))])),
            start: false,
        })
        .await
        .unwrap()
        .into_inner();
    let e = otad
        .rollouts()
        .pause(action(&draft.id, ""))
        .await
        .unwrap_err();
    assert_refused(
        &e,
        &format!(
            "rollout {} is draft: it cannot be paused: start it first",
            draft.id
        ),
    );
    let aborted = otad
        .rollouts()
        .abort(action(&draft.id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state, ABORTED);
    assert_eq!(aborted.state_reason, "aborted by local");

    let list = otad
        .rollouts()
        .list(pb::ListRolloutsRequest {
            page: None,
            state: ABORTED,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = list.rollouts.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [draft.id.as_str()]);
    let all = otad
        .rollouts()
        .list(pb::ListRolloutsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.rollouts.len(), 2);
    assert_eq!(all.rollouts[0].id, draft.id, "newest first");
}

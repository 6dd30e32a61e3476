//! Rollouts an operator can trust, end to end through otad with fake site agents over gRPC
//! (paused time): sleepy devices within their wake-up budget, late successes that count, probes
//! for a device that was away, checks that wait for a wake-up, one update per network across
//! rollouts and single updates, an abort that stops what the agent still prepares, switchable
//! gates, windows in the site's IANA zone, the rollout-wide failure budget, and command ids that
//! stay unique across restarts.

use std::time::Duration;

use ota_domain::events::DomainEvent;
use ota_domain::projection::TaskPhase;
use ota_proto::v1 as pb;
use ota_testkit::otad::*;
use ota_testkit::site::*;

const PAUSED: i32 = pb::RolloutState::Paused as i32;

fn sleepy(local: &str, network: &str) -> pb::DeviceReport {
    pb::DeviceReport {
        power_source: pb::PowerSource::Battery as i32,
        battery_percent: Some(90),
        ..zigbee(local, network, 1)
    }
}

fn single_task(otad: &TestOtad, device: &str) -> ota_domain::projection::TaskView {
    let app = otad.app();
    let state = app.core.read();
    let id = state.devices[device].current_task.clone().expect("a task");
    (*state.tasks[&id]).clone()
}

async fn update(otad: &TestOtad, device: &str, firmware: &str) -> pb::Task {
    otad.devices()
        .update(pb::UpdateDeviceRequest {
            device_id: device.into(),
            firmware_id: firmware.into(),
            upgrade_type: pb::UpgradeType::Forced as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_device_that_sleeps_six_hours_completes_a_rollout_with_default_settings() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(2).await;
    let _site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(zigbee("bulb", "zb", 1), Behavior::Succeed, mins(5)),
            dev(
                sleepy("remote", "zb"),
                Behavior::SleepsFor(hours(6)),
                mins(5),
            ),
        ],
    )
    .await;
    // Only stages: every other setting is the default (a day's stage deadline, 7 days to wake up,
    // the transfer budget from the start of the transfer, one update per network).
    let r = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    // While the remote sleeps, the bulb on the same network is not held up by it.
    otad.until("the bulb updated", secs(10), hours(1), |s| {
        let t = &s.rollouts[&r.id].tasks_by_device;
        t.get("home/bulb")
            .and_then(|id| s.tasks.get(id))
            .filter(|t| t.phase == TaskPhase::Succeeded)
            .map(|_| ())
    })
    .await;
    assert_eq!(
        otad.task_of(&r.id, "home/remote").unwrap().phase,
        TaskPhase::WaitingForWakeup
    );
    otad.until_rollout(&r.id, "completed", hours(8)).await;
    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.state_reason,
        "2 devices: 2 updated, 0 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
    let remote = otad.task_of(&r.id, "home/remote").unwrap();
    assert_eq!(remote.attempt, 1, "one attempt: sleeping is not a failure");
}

#[tokio::test(start_paused = true)]
async fn a_success_after_the_stage_deadline_counts_and_is_marked_late() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let _site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(esphome("a-fast", "1.0.0"), Behavior::Succeed, secs(30)),
            dev(esphome("b-slow", "1.0.0"), Behavior::Succeed, mins(8)),
            dev(esphome("c-later", "1.0.0"), Behavior::Succeed, mins(20)),
        ],
    )
    .await;
    let mut s = spec(
        &fw,
        vec![
            pb::Stage {
                deadline_s: Some(300),
                failure_threshold: threshold(2),
                ..stage("canary", count(2))
            },
            stage("rest", percent(100.0)),
        ],
    );
    s.device_timeout_s = 3600;
    let r = otad.create(s).await;
    // At the deadline (5 min) the slow transfer is still running: timed out...
    otad.until("the slow device timed out", secs(5), mins(7), |st| {
        let t = &st.rollouts[&r.id].tasks_by_device;
        t.get("home/b-slow")
            .and_then(|id| st.tasks.get(id))
            .filter(|t| t.phase == TaskPhase::TimedOut)
            .map(|_| ())
    })
    .await;
    // ...and at 8 min the device reports the new version: a success, late.
    otad.until_rollout(&r.id, "completed", hours(1)).await;
    let slow = otad.task_of(&r.id, "home/b-slow").unwrap();
    assert_eq!(slow.phase, TaskPhase::Succeeded);
    assert!(slow.late);
    let late_events = otad
        .recorded()
        .into_iter()
        .filter(|(_, _, e)| matches!(e, DomainEvent::TaskSucceeded(s) if s.late))
        .count();
    assert_eq!(late_events, 1);
    let done = otad.rollout(&r.id).await;
    assert_eq!(
        done.state_reason,
        "3 devices: 3 updated, 0 skipped, 0 failed, 0 timed out, 0 cancelled"
    );
    let task = otad
        .devices()
        .watch_task(pb::WatchTaskRequest {
            task_id: slow.created.task_id.clone(),
            device_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(task.late && task.status == pb::UpgradeStatus::Success as i32);
}

#[tokio::test(start_paused = true)]
async fn an_update_for_a_device_that_was_away_starts_right_after_a_probe_finds_it() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut away = esphome("plug", "1.0.0");
    away.reachable = false;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![dev(away, Behavior::Succeed, secs(10))],
    )
    .await;
    let started = otad.now_ms();
    let task = update(&otad, "home/plug", &fw).await;
    otad.until("held: offline", Duration::from_millis(100), secs(5), |s| {
        (s.tasks[&task.id].phase == TaskPhase::Held).then_some(())
    })
    .await;
    let held = single_task(&otad, "home/plug");
    assert_eq!(held.error.unwrap().code.code(), 5012);
    // The device comes back 10 s later; the agent would notice only at its next inventory
    // (5 minutes), but otad keeps asking it to look (2 s, 4 s, 8 s, ...).
    tokio::time::sleep(secs(10)).await;
    site.come_back_quietly("plug");
    otad.until(
        "transfer started",
        Duration::from_millis(100),
        mins(2),
        |_| (!site.log().transfers.is_empty()).then_some(()),
    )
    .await;
    let log = site.log();
    let probes: Vec<i64> = log
        .probes
        .iter()
        .map(|(at, _)| (at - started) / 1000)
        .collect();
    assert!(probes.len() >= 4, "{probes:?}");
    assert_eq!(&probes[..3], &[0, 2, 6], "{probes:?}");
    let answered = log
        .probes
        .iter()
        .map(|(at, _)| *at)
        .find(|at| *at >= started + 10_000)
        .expect("a probe after the device came back");
    let transfer = log.transfers[0].started_ms;
    assert!(
        transfer - answered <= 2_000,
        "the transfer started {} ms after the probe that found the device",
        transfer - answered
    );
    assert!(transfer - started < 30_000, "{}", transfer - started);
}

#[tokio::test(start_paused = true)]
async fn a_check_of_sleepy_devices_says_asleep_and_completes_when_they_wake() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(2).await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(zigbee("bulb", "zb", 1), Behavior::Succeed, secs(1)),
            dev(sleepy("remote", "zb"), Behavior::Succeed, secs(1)),
        ],
    )
    .await;
    site.answer_asleep("remote");
    let r = otad
        .devices()
        .batch_check(pb::BatchCheckRequest {
            selector: Some(pb::DeviceSelector::default()),
            firmware_id: fw.clone(),
            timeout_ms: 5_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.available, r.asleep, r.failed, r.timed_out), (1, 1, 0, 0));
    let remote = r
        .checks
        .iter()
        .find(|c| c.device_id == "home/remote")
        .unwrap();
    assert_eq!(remote.status, pb::UpgradeStatus::WaitingForWakeup as i32);
    assert!(remote.error.is_none());
    let listed = otad
        .devices()
        .get(pb::GetDeviceRequest {
            id: "home/remote".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        remote.reachable, listed.reachable,
        "reachable means the same in checks and in the device list"
    );
    // Hours later the remote wakes up: its agent answers the same check (journaled).
    tokio::time::sleep(hours(3)).await;
    site.wake_and_answer("remote");
    otad.until("the remote's answer", secs(1), mins(1), |s| {
        s.devices["home/remote"]
            .last_check
            .as_ref()
            .filter(|(c, _)| c.status == ota_domain::status::UpgradeStatus::Available)
            .map(|_| ())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn one_update_per_zigbee_network_across_rollouts_and_single_updates() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(2).await;
    let devices: Vec<Dev> = (0..6)
        .map(|i| {
            dev(
                zigbee(&format!("b{i}"), "zb", 1),
                Behavior::Succeed,
                mins(3),
            )
        })
        .collect();
    let site = FakeSite::connect(&otad, "home", 0, devices).await;
    let mut a = spec(&fw, vec![stage("all", percent(100.0))]);
    a.selector = Some(pb::DeviceSelector {
        device_ids: vec!["home/b0".into(), "home/b1".into()],
        ..Default::default()
    });
    let mut b = a.clone();
    b.selector = Some(pb::DeviceSelector {
        device_ids: vec!["home/b2".into(), "home/b3".into()],
        ..Default::default()
    });
    let ra = otad.create(a).await;
    let rb = otad.create(b).await;
    otad.until("a rollout's transfer", secs(1), mins(10), |_| {
        (!site.log().transfers.is_empty()).then_some(())
    })
    .await;
    let single = update(&otad, "home/b4", &fw).await;
    // The single update waits its turn and says behind which task.
    otad.until(
        "the single update says why it waits",
        secs(1),
        mins(10),
        |s| {
            let t = &s.tasks[&single.id];
            (t.phase == TaskPhase::Held && t.remind.contains("queued behind task")).then_some(())
        },
    )
    .await;
    let held = single_task(&otad, "home/b4");
    assert!(
        held.remind.contains("zigbee2mqtt network zb"),
        "{}",
        held.remind
    );
    otad.until_rollout(&ra.id, "completed", hours(2)).await;
    otad.until_rollout(&rb.id, "completed", hours(2)).await;
    otad.until("the single update", secs(1), hours(1), |s| {
        (s.tasks[&single.id].phase == TaskPhase::Succeeded).then_some(())
    })
    .await;
    let log = site.log();
    assert_eq!(log.transfers.len(), 5);
    assert_eq!(
        log.max_by_network.values().copied().max(),
        Some(1),
        "never two transfers on one zigbee2mqtt network: {:?}",
        log.max_by_network
    );
}

#[tokio::test(start_paused = true)]
async fn abort_stops_what_the_agent_is_still_preparing() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![
            dev(esphome("a", "1.0.0"), Behavior::HangPreparing, secs(1)),
            dev(esphome("b", "1.0.0"), Behavior::HangPreparing, secs(1)),
        ],
    )
    .await;
    let r = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    otad.until("both at the site", secs(1), mins(1), |s| {
        let n = s.rollouts[&r.id]
            .tasks_by_device
            .values()
            .filter(|id| s.tasks[*id].phase == TaskPhase::AgentPreparing)
            .count();
        (n == 2).then_some(())
    })
    .await;
    otad.rollouts()
        .abort(action(&r.id, "wrong image"))
        .await
        .unwrap();
    otad.until("cancels at the site", secs(1), mins(1), |_| {
        (site.log().cancels.len() == 2).then_some(())
    })
    .await;
    for d in ["home/a", "home/b"] {
        assert_eq!(otad.task_of(&r.id, d).unwrap().phase, TaskPhase::Cancelled);
    }
    // Nothing is dispatched any more.
    tokio::time::sleep(mins(30)).await;
    assert_eq!(site.log().transfers.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn gates_switched_off_let_a_low_battery_device_update() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_zigbee(2).await;
    let low = pb::DeviceReport {
        battery_percent: Some(20),
        ..sleepy("remote", "zb")
    };
    let _site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![dev(low, Behavior::SleepsFor(mins(1)), secs(10))],
    )
    .await;
    // With the default gate (70 %) the device is skipped with a reminder.
    let gated = otad
        .create(spec(&fw, vec![stage("all", percent(100.0))]))
        .await;
    otad.until_rollout(&gated.id, "completed", mins(30)).await;
    let t = otad.task_of(&gated.id, "home/remote").unwrap();
    assert_eq!(t.phase, TaskPhase::Skipped);
    assert!(t.remind.contains("battery at 20 %"), "{}", t.remind);
    // Switched off (0), it updates.
    let mut open = spec(&fw, vec![stage("all", percent(100.0))]);
    open.preconditions = Some(pb::Preconditions {
        min_battery_percent: Some(0),
        ..Default::default()
    });
    let r = otad.create(open).await;
    otad.until_rollout(&r.id, "completed", mins(30)).await;
    assert_eq!(
        otad.task_of(&r.id, "home/remote").unwrap().phase,
        TaskPhase::Succeeded
    );
}

#[tokio::test(start_paused = true)]
async fn the_window_follows_the_sites_iana_zone() {
    // Monday 00:00 UTC is Sunday 19:00 in New York (UTC-5 in January). The agent reports offset
    // 0 (its window would open at 22:00 UTC); the spec says the site is in New York, where
    // 22:00 is 03:00 UTC.
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let site = FakeSite::connect(
        &otad,
        "home",
        0,
        vec![dev(esphome("n", "1.0.0"), Behavior::Succeed, secs(30))],
    )
    .await;
    let mut s = spec(&fw, vec![stage("all", percent(100.0))]);
    s.maintenance_window = Some(pb::MaintenanceWindow {
        start: "22:00".into(),
        end: "23:00".into(),
        weekdays: vec![],
    });
    s.site_timezones
        .insert("home".into(), "America/New_York".into());
    let r = otad.create(s).await;
    otad.until_rollout(&r.id, "completed", hours(30)).await;
    let started = site.log().transfers[0].started_ms;
    let opens = MONDAY + 3 * HOUR;
    assert!(
        started >= opens && started < opens + 120_000,
        "started {:.2} h after Monday 00:00 UTC",
        (started - MONDAY) as f64 / HOUR as f64
    );
}

#[tokio::test(start_paused = true)]
async fn failures_spread_over_stages_pause_the_rollout_at_its_failure_budget() {
    let otad = TestOtad::in_memory_at(MONDAY).await;
    let fw = otad.upload_esp("2.0.0").await;
    let mut devices = Vec::new();
    for i in 0..6 {
        let behavior = if i == 0 || i == 3 {
            Behavior::Fail(pb::ErrorCode::ChecksumMismatch as i32)
        } else {
            Behavior::Succeed
        };
        devices.push(dev(esphome(&format!("n{i}"), "1.0.0"), behavior, secs(30)));
    }
    let _site = FakeSite::connect(&otad, "home", 0, devices).await;
    // Each stage tolerates 2 failures; the rollout as a whole only 2.
    let mut s = spec(
        &fw,
        vec![
            pb::Stage {
                failure_threshold: threshold(3),
                ..stage("first", count(3))
            },
            pb::Stage {
                failure_threshold: threshold(3),
                ..stage("rest", percent(100.0))
            },
        ],
    );
    s.failure_budget = Some(pb::FailureBudget {
        budget: Some(pb::failure_budget::Budget::Limit(pb::Threshold {
            value: Some(pb::threshold::Value::Count(2)),
        })),
    });
    let r = otad.create(s).await;
    otad.until_rollout(&r.id, "paused", hours(1)).await;
    let paused = otad.rollout(&r.id).await;
    assert_eq!(paused.state, PAUSED);
    assert!(
        paused
            .state_reason
            .starts_with("failure budget: 2 device(s)"),
        "{}",
        paused.state_reason
    );
    assert_eq!((paused.failure_budget, paused.failures), (2, 2));
}

/// Not paused: the sled store commits on its own threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_ids_stay_unique_across_restarts() {
    let mut otad = TestOtad::sled_at(MONDAY).await;
    let fw = otad.upload_now("node", "2.0.0", esp_image("2.0.0")).await;
    let devices: Vec<Dev> = (0..3)
        .map(|i| {
            dev(
                esphome(&format!("n{i}"), "1.0.0"),
                Behavior::Succeed,
                Duration::from_millis(50),
            )
        })
        .collect();
    let site = FakeSite::connect(&otad, "home", 0, devices).await;
    let mut seen: Vec<u64> = Vec::new();
    for i in 0..3 {
        let t = update(&otad, &format!("home/n{i}"), &fw).await;
        otad.until("done", Duration::from_millis(20), secs(60), |s| {
            s.tasks[&t.id].phase.is_terminal().then_some(())
        })
        .await;
        seen = site.log().command_ids.clone();
        site.disconnect();
        otad = otad.restart().await;
        site.reconnect(&otad).await;
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a command id was reused: {seen:?}"
    );
    assert!(seen.len() >= 3);
}

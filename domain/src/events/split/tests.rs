use super::*;
use crate::events::{RolloutCreated, streams};
use crate::fixture::{T0, spec, stage};
use crate::projection::{EventMeta, FleetState, RolloutView};
use crate::rollout::spec::StageSize;
use crate::status::ErrorCode;

/// The store's limit on one event's payload (`ota_server::store::MAX_PAYLOAD_BYTES`).
const STORE_EVENT_LIMIT: usize = 4 * 1024 * 1024;

const RO: &str = "ro-split";

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/node-{i:06}")).collect()
}

fn exclusions(n: usize) -> Vec<Exclusion> {
    (0..n)
        .map(|i| Exclusion {
            device_id: format!("site-x/node-{i:06}"),
            code: ErrorCode::AlreadyOnTarget,
            reason: "already on 2.0.0 (the rollout's target): nothing to update".into(),
        })
        .collect()
}

fn started(stages: &[(&str, usize)], excluded: usize) -> RolloutStarted {
    RolloutStarted {
        stages: stages
            .iter()
            .map(|(name, n)| PlannedStage {
                name: (*name).into(),
                device_ids: ids(name, *n),
            })
            .collect(),
        exclusions: exclusions(excluded),
    }
}

/// The rollout after its creation and `events`, appended in order.
fn fold(events: &[DomainEvent]) -> RolloutView {
    let mut state = FleetState::default();
    let created: DomainEvent = RolloutCreated {
        id: RO.into(),
        spec: spec(vec![stage("all", StageSize::CumulativePercent(100.0))]),
    }
    .into();
    for (i, e) in std::iter::once(&created).chain(events).enumerate() {
        let meta = EventMeta {
            seq: i as u64 + 1,
            recorded_at_ms: T0,
            actor: "test".into(),
        };
        state.apply(&meta, &streams::rollout(RO), e);
    }
    state.rollouts.remove(RO).expect("the rollout exists")
}

fn names(events: &[DomainEvent]) -> Vec<&'static str> {
    events.iter().map(DomainEvent::type_name).collect()
}

#[test]
fn lists_that_fit_stay_one_event_as_before() {
    let s = started(&[("canary", 3), ("rest", 40)], 2);
    assert_eq!(s.clone().into_events(), vec![s.into()]);
    let bc = BatchCheckStarted {
        check_id: "chk-1".into(),
        device_ids: ids("a", 10),
        deadline_at_ms: T0,
    };
    assert_eq!(bc.clone().into_events(), vec![bc.into()]);
    let done = BatchCheckCompleted {
        check_id: "chk-1".into(),
        timed_out: ids("a", 2),
        excluded: exclusions(3),
    };
    assert_eq!(done.clone().into_events(), vec![done.into()]);
    let gone = StageDevicesExcluded {
        index: 1,
        excluded: exclusions(3),
    };
    assert_eq!(gone.clone().into_events(), vec![gone.into()]);
}

#[test]
fn a_split_plan_folds_to_the_plan_of_one_event() {
    let whole = started(&[("canary", 3), ("wave", 17), ("rest", 30)], 11);
    let parts = whole.clone().into_events_within(120);
    assert!(parts.len() > 5, "{:?}", names(&parts));
    assert_eq!(parts[0].type_name(), "RolloutStarted");
    assert!(
        parts[1..]
            .iter()
            .all(|e| e.type_name() == "RolloutPlanContinued")
    );
    let one = fold(&[whole.into()]);
    let split = fold(&parts);
    assert_eq!(split.stages, one.stages);
    assert_eq!(split.exclusions, one.exclusions);
    assert_eq!(split.stages[2].device_ids.len(), 30);
}

#[test]
fn a_split_batch_check_folds_to_the_check_of_one_event() {
    let plan: DomainEvent = started(&[("canary", 5), ("rest", 40)], 0).into();
    let mut asked = ids("canary", 5);
    asked.extend(ids("rest", 40));
    let start = BatchCheckStarted {
        check_id: "chk-1".into(),
        device_ids: asked.clone(),
        deadline_at_ms: T0,
    };
    let start_parts = start.clone().into_events_within(100);
    assert!(start_parts.len() > 3);
    // The scheduler hands the whole list to the checks, however it is stored.
    let DomainEvent::BatchCheckStarted(head) = &start_parts[0] else {
        panic!("the start comes first: {:?}", names(&start_parts));
    };
    assert_eq!(head.clone().joined(&start_parts), start);

    let excluded: Vec<Exclusion> = asked[10..30]
        .iter()
        .map(|id| Exclusion {
            device_id: id.clone(),
            code: ErrorCode::PrevalidationFailed,
            reason: "batch check: no update for it".into(),
        })
        .collect();
    let done = BatchCheckCompleted {
        check_id: "chk-1".into(),
        timed_out: asked[30..37].to_vec(),
        excluded,
    };
    let done_parts = done.clone().into_events_within(100);
    assert_eq!(
        done_parts.last().map(DomainEvent::type_name),
        Some("BatchCheckCompleted")
    );
    assert!(done_parts.len() > 3);

    let one = fold(&[plan.clone(), start.into(), done.into()]);
    let mut all = vec![plan];
    all.extend(start_parts);
    all.extend(done_parts);
    let split = fold(&all);
    assert_eq!(split.batch_check, one.batch_check);
    assert_eq!(split.stages, one.stages);
    assert_eq!(split.exclusions, one.exclusions);
    assert_eq!(split.stages[1].device_ids.len(), 40 - 20);
    assert!(
        split
            .batch_check
            .as_ref()
            .is_some_and(|b| b.completed && b.timed_out.len() == 7)
    );
}

#[test]
fn split_stage_exclusions_fold_to_one_event() {
    let plan: DomainEvent = started(&[("canary", 2), ("site-x", 0)], 0).into();
    let gone = StageDevicesExcluded {
        index: 1,
        excluded: exclusions(25),
    };
    let parts = gone.clone().into_events_within(200);
    assert!(parts.len() > 3);
    assert!(
        parts
            .iter()
            .all(|e| e.type_name() == "StageDevicesExcluded")
    );
    let one = fold(&[plan.clone(), gone.into()]);
    let mut all = vec![plan];
    all.extend(parts);
    assert_eq!(fold(&all).exclusions, one.exclusions);
    assert_eq!(one.exclusions.len(), 25);
}

#[test]
fn a_plan_of_300_000_devices_fits_the_store_event_by_event() {
    let whole = started(
        &[("canary", 100), ("wave", 29_900), ("rest", 270_000)],
        60_000,
    );
    let one_event = DomainEvent::from(whole.clone()).encode().len();
    assert!(
        one_event > STORE_EVENT_LIMIT,
        "the unsplit plan is {one_event} bytes"
    );
    let parts = whole.into_events();
    let mut total = 0;
    for e in &parts {
        let bytes = e.encode().len();
        assert!(
            bytes <= LIST_BYTES_PER_EVENT + 64,
            "{} of {bytes} bytes",
            e.type_name()
        );
        total += bytes;
    }
    assert!(total >= one_event, "nothing is lost: {total} < {one_event}");
    let folded = fold(&parts);
    assert_eq!(
        folded
            .stages
            .iter()
            .map(|s| s.device_ids.len())
            .sum::<usize>(),
        300_000
    );
    assert_eq!(folded.exclusions.len(), 60_000);
}

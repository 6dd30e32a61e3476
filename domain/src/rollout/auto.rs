//! Auto-upgrade (the seeds' auto-upgrade switch): devices whose switch is on get the firmware of
//! completed rollouts when they appear or fall behind later.
//!
//! For each device with the switch on, not removed and without an unfinished task, the **source
//! rollout** is the most recently completed rollout (upgrade type notify or forced) whose
//! selector matches the device and whose firmware fits it. If the device runs an older version
//! than that firmware, an auto task is created:
//! - `TaskCreated { auto: true, rollout_id: Some(source) }`: the task names its source rollout,
//!   so it is traceable and the dispatcher applies that rollout's maintenance window, concurrency
//!   limits and preconditions (battery, signal) to it; it is not part of the rollout's stages or
//!   counts (the projection keeps it out of `tasks_by_device`);
//! - the source rollout's retry policy, per-device timeout and upgrade type; never a downgrade;
//! - its id is derived from the device and the firmware ([`auto_task_id`]), so a device gets at
//!   most one auto task per firmware, ever — an auto task that failed is not repeated by itself;
//! - devices whose update to that firmware failed or timed out before (in a rollout or as an
//!   auto task) are left alone: a person should look first;
//! - devices planned in a rollout that is still running or paused are left to that rollout;
//! - rollbacks and rolled-back rollouts are never sources.
//!
//! At most one task per device at a time: the same rule the rollouts and single-device updates
//! follow.

use std::collections::HashSet;

use crate::events::TaskCreated;
use crate::projection::{FleetState, RolloutState, RolloutView, TaskPhase};
use crate::rollout::scheduler::auto_task_id;
use crate::rollout::select;
use crate::rollout::spec::UpgradeType;
use crate::tasks::{compare_with_device, firmware_fits, target_version};

/// The auto tasks to create now, ordered by device id.
pub fn due(state: &FleetState) -> Vec<TaskCreated> {
    let candidates: Vec<&RolloutView> = {
        let mut c: Vec<&RolloutView> = state
            .rollouts
            .values()
            .filter(|r| r.state == RolloutState::Completed)
            .filter(|r| r.spec.upgrade_type != UpgradeType::Check)
            // A rollback installs old images, and a rolled-back rollout's devices were put back
            // on purpose: neither is a source.
            .filter(|r| r.spec.reverts.is_none() && r.rolled_back_by.is_none())
            .collect();
        // Most recently completed first.
        c.sort_by(|a, b| (b.finished_at_ms, &b.id).cmp(&(a.finished_at_ms, &a.id)));
        c
    };
    if candidates.is_empty() {
        return Vec::new();
    }
    if !state
        .devices
        .values()
        .map(Box::as_ref)
        .any(|d| d.auto_upgrade && !d.removed)
    {
        return Vec::new();
    }
    let in_active_rollouts: HashSet<&str> = state
        .rollouts
        .values()
        .filter(|r| matches!(r.state, RolloutState::Running | RolloutState::Paused))
        .flat_map(|r| r.stages.iter().flat_map(|s| s.device_ids.iter()))
        .map(String::as_str)
        .collect();
    let failed_before: HashSet<(&str, &str)> = state
        .tasks
        .values()
        .filter(|t| matches!(t.phase, TaskPhase::Failed | TaskPhase::TimedOut))
        .map(|t| (t.created.device_id.as_str(), t.created.firmware_id.as_str()))
        .collect();

    let mut out = Vec::new();
    for d in state.devices.values().map(Box::as_ref) {
        if !d.auto_upgrade || d.removed || in_active_rollouts.contains(d.id.as_str()) {
            continue;
        }
        if state.active_task_of(&d.id).is_some() {
            continue;
        }
        let source = candidates.iter().find_map(|r| {
            let fw = &state.firmware.get(&r.spec.firmware_id)?.registered;
            (select::matches(&r.spec.selector, d) && firmware_fits(fw, &d.facts).is_ok())
                .then_some((*r, fw))
        });
        let Some((r, fw)) = source else {
            continue;
        };
        if compare_with_device(fw, &d.facts) != Some(std::cmp::Ordering::Less) {
            continue;
        }
        if failed_before.contains(&(d.id.as_str(), fw.id.as_str())) {
            continue;
        }
        let task_id = auto_task_id(&d.id, &fw.id);
        if state.tasks.contains_key(&task_id) {
            continue;
        }
        out.push(TaskCreated {
            task_id,
            device_id: d.id.clone(),
            site_id: d.site_id.clone(),
            rollout_id: Some(r.id.clone()),
            stage: 0,
            firmware_id: fw.id.clone(),
            target: target_version(fw),
            upgrade_type: r.spec.upgrade_type,
            downgrade: false,
            max_attempts: r.spec.retry.max_attempts,
            initial_backoff_s: r.spec.retry.initial_backoff_s,
            max_backoff_s: r.spec.retry.max_backoff_s,
            timeout_s: r.spec.device_timeout_s,
            flash_offset: None,
            auto: true,
            wake_timeout_s: r.spec.wake_timeout_s,
            from: Some(d.facts.current.clone()),
            from_firmware_id: None,
        });
    }
    out
}

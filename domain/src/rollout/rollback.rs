//! Rollback (issue 15 item 5): a linked rollout that puts back, on the devices a rollout
//! changed, the firmware each of them ran before.
//!
//! - **What each device ran before** is recorded when its task is created (`TaskCreated.from`,
//!   and `from_firmware_id` when the catalog knew that image then; see [`before_update`]). A
//!   rollback gives each device its own previous image ([`previous_image`]): the recorded id
//!   while the catalog still has it, else a catalog image that fits the device and installs the
//!   recorded version. Devices of different models get different images, so the linked
//!   rollout's spec carries a per-device map ([`Revert`], in `RolloutSpec.reverts`), resolved
//!   once when the rollback is created and stored in its `RolloutCreated`.
//! - **Which devices**: [`RollbackScope::Failed`] reverts the devices whose task failed or timed
//!   out, [`RollbackScope::All`] also those that succeeded. Devices still being updated when the
//!   rollback is created, skipped and cancelled ones are left alone. A device whose previous
//!   image is not in the catalog (or was never recorded) is listed as an exclusion of the
//!   linked rollout with the reason, never dropped.
//! - **The linked rollout** ([`rollback_spec`]) has the rollout's gates and limits (concurrency,
//!   rate, preconditions, window, retries, timeouts, health gate), one stage `rollback` over
//!   all its devices, downgrades allowed, no batch check (its devices were just updated), no
//!   abort criteria, no per-site canaries and no rollback of its own. Its id is derived ([`rollback_id`]), so a second creation hits an
//!   existing stream.
//! - **At most once.** The rollout's `RolloutRolledBack` (who, why, automatic or not) and the
//!   linked rollout's `RolloutCreated` are one append ([`NewRollback::changes`]): a crash leaves
//!   both or neither, and a rollout with a `rolled_back_by` is never rolled back again.
//! - **Automatic**: when a rollout's stage threshold, failure budget or abort criterion stops it
//!   (pause or abort) and its spec says `rollback = "failed" | "all"` (or the criterion's action
//!   is `rollback`), `scheduler::reconcile` records the rollback with the stop. **By hand**:
//!   `RolloutService.Rollback` on a paused, aborted or completed rollout ([`may_roll_back`]).
//!
//! What this module does not do: roles, the four-eyes decision (the caller passes the
//! `RolloutApprovalRequired` event when approval is required) or I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decision::Change;
use crate::events::{
    DomainEvent, Exclusion, FirmwareRegistered, RolloutCreated, RolloutRolledBack, streams,
};
use crate::model::{DeviceFacts, VersionInfo};
use crate::projection::{FleetState, RolloutState, RolloutView, TaskPhase, TaskView};
use crate::rollout::plan;
use crate::rollout::spec::{
    FailureAction, FailureBudget, RolloutSpec, Selector, StageSize, StageSpec, UpgradeType,
};
use crate::status::ErrorCode;
use crate::tasks::{firmware_fits, target_version};

/// Which devices a rollback reverts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RollbackScope {
    /// No automatic rollback.
    #[default]
    None,
    /// The devices whose task failed or timed out.
    Failed,
    /// Every device the rollout updated or tried to: failed, timed out and succeeded.
    All,
}

impl RollbackScope {
    /// Every scope, in the order the CLI lists them.
    pub const ALL: [RollbackScope; 3] = [Self::None, Self::Failed, Self::All];

    /// The name in specs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Failed => "failed",
            Self::All => "all",
        }
    }

    /// From its name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a task in `phase` is reverted.
    pub fn takes(self, phase: TaskPhase) -> bool {
        match self {
            Self::None => false,
            Self::Failed => matches!(phase, TaskPhase::Failed | TaskPhase::TimedOut),
            Self::All => matches!(
                phase,
                TaskPhase::Failed | TaskPhase::TimedOut | TaskPhase::Succeeded
            ),
        }
    }
}

/// What a rollback reverts: stored in its spec (`RolloutSpec.reverts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revert {
    /// The rollout it reverts.
    pub rollout_id: String,
    /// Which of its devices.
    pub scope: RollbackScope,
    /// Device id → the firmware it gets back (its previous image).
    pub firmware: BTreeMap<String, String>,
    /// Devices of the scope that cannot be reverted, with why (no previous image in the catalog).
    pub excluded: Vec<Exclusion>,
}

/// The id of the rollout that rolls back `rollout_id`.
pub fn rollback_id(rollout_id: &str) -> String {
    format!("{rollout_id}-rollback")
}

/// What a task records about the device it updates: the version it runs now and the catalog's
/// image of that version, if there is one.
pub fn before_update(
    state: &FleetState,
    device: &DeviceFacts,
) -> (Option<VersionInfo>, Option<String>) {
    let current = &device.current;
    if current.version.is_empty() && current.file_version.is_none() {
        return (None, None);
    }
    let image = image_of(
        state.firmware.values().map(|f| &f.registered),
        device,
        current,
    );
    (Some(current.clone()), image.map(|f| f.id.clone()))
}

/// The catalog image that fits `device` and installs `version` (the smallest id when several
/// do), if any.
pub fn image_of<'a>(
    catalog: impl IntoIterator<Item = &'a FirmwareRegistered>,
    device: &DeviceFacts,
    version: &VersionInfo,
) -> Option<&'a FirmwareRegistered> {
    catalog
        .into_iter()
        .filter(|fw| firmware_fits(fw, device).is_ok())
        .filter(|fw| same_version(&target_version(fw), version))
        .min_by(|a, b| a.id.cmp(&b.id))
}

fn same_version(a: &VersionInfo, b: &VersionInfo) -> bool {
    match (a.file_version, b.file_version) {
        (Some(x), Some(y)) => x == y,
        _ => !a.version.is_empty() && a.version == b.version,
    }
}

/// The image `task`'s device ran before the task, or why none can be installed.
pub fn previous_image<'a>(
    state: &'a FleetState,
    task: &TaskView,
) -> Result<&'a FirmwareRegistered, String> {
    if let Some(fw) = task
        .created
        .from_firmware_id
        .as_ref()
        .and_then(|id| state.firmware.get(id))
    {
        return Ok(&fw.registered);
    }
    let Some(from) = task.created.from.as_ref().or(task.from.as_ref()) else {
        return Err(
            "the version it ran before this rollout was not recorded: update it by hand (`otactl device update`)"
                .into(),
        );
    };
    let device = state.devices.get(&task.created.device_id).map(Box::as_ref);
    let catalog = state.firmware.values().map(|f| &f.registered);
    match device.and_then(|d| image_of(catalog, &d.facts, from)) {
        Some(fw) => Ok(fw),
        None => Err(format!(
            "the image it ran before (version {}) is not in the catalog: upload it and update the device by hand (`otactl device update`)",
            shown(from)
        )),
    }
}

fn shown(v: &VersionInfo) -> String {
    match (v.version.is_empty(), v.file_version) {
        (true, Some(f)) => f.to_string(),
        _ => v.version.clone(),
    }
}

/// The tasks of `r` that `scope` reverts, by device id.
pub fn tasks_to_revert<'a>(
    r: &RolloutView,
    state: &'a FleetState,
    scope: RollbackScope,
) -> Vec<&'a TaskView> {
    let mut tasks: Vec<&TaskView> = r
        .tasks_by_device
        .values()
        .filter_map(|id| state.tasks.get(id).map(Box::as_ref))
        .filter(|t| scope.takes(t.phase))
        .collect();
    tasks.sort_by(|a, b| a.created.device_id.cmp(&b.created.device_id));
    tasks
}

/// The devices of `r` that `scope` reverts, each with its previous image or why it has none.
pub fn revert(r: &RolloutView, state: &FleetState, scope: RollbackScope) -> Revert {
    let mut firmware = BTreeMap::new();
    let mut excluded = Vec::new();
    for t in tasks_to_revert(r, state, scope) {
        let device_id = t.created.device_id.clone();
        match previous_image(state, t) {
            Ok(fw) => {
                firmware.insert(device_id, fw.id.clone());
            }
            Err(reason) => excluded.push(Exclusion {
                device_id,
                code: ErrorCode::NoFirmware,
                reason,
            }),
        }
    }
    Revert {
        rollout_id: r.id.clone(),
        scope,
        firmware,
        excluded,
    }
}

/// The spec of the rollout that applies `revert` to `r`'s devices; see the module docs.
pub fn rollback_spec(r: &RolloutView, revert: Revert) -> RolloutSpec {
    let spec = &r.spec;
    // The image most devices get names the rollout (ties: the smallest id); the map decides.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for fw in revert.firmware.values() {
        *counts.entry(fw.as_str()).or_default() += 1;
    }
    let firmware_id = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or_else(|| spec.firmware_id.clone(), |(id, _)| (*id).to_string());
    let deadline_s = if spec.stages.iter().any(|s| s.deadline_s == 0) {
        0
    } else {
        spec.stages.iter().map(|s| s.deadline_s).max().unwrap_or(0)
    };
    let name: String = format!("rollback of {}", spec.name)
        .chars()
        .take(200)
        .collect();
    RolloutSpec {
        name,
        firmware_id,
        selector: Selector {
            device_ids: revert.firmware.keys().cloned().collect(),
            ..Selector::default()
        },
        stages: vec![StageSpec {
            name: "rollback".into(),
            size: StageSize::CumulativePercent(100.0),
            success_threshold: None,
            failure_threshold: None,
            on_failure: FailureAction::Pause,
            deadline_s,
            soak_s: 0,
        }],
        concurrency: spec.concurrency,
        device_timeout_s: spec.device_timeout_s,
        retry: spec.retry,
        window: spec.window.clone(),
        upgrade_type: match spec.upgrade_type {
            UpgradeType::Check => UpgradeType::Notify,
            t => t,
        },
        allow_downgrade: true,
        preconditions: spec.preconditions,
        batch_check: false,
        batch_check_timeout_s: spec.batch_check_timeout_s,
        wake_timeout_s: spec.wake_timeout_s,
        on_asleep: spec.on_asleep,
        failure_budget: FailureBudget::Default,
        site_timezones: spec.site_timezones.clone(),
        abort_criteria: Vec::new(),
        rate: spec.rate,
        canary_per_site: 0,
        rollback: RollbackScope::None,
        reverts: Some(revert),
        health: spec.health,
    }
}

/// Why a rollout cannot be rolled back; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    /// A draft changed nothing.
    #[error("rollout {0} is a draft: it changed no device, there is nothing to roll back")]
    Draft(String),
    /// Still running.
    #[error(
        "rollout {0} is running: pause or abort it first (`otactl rollout abort {0}`), then roll it back"
    )]
    Running(String),
    /// Already rolled back.
    #[error("rollout {id} was already rolled back by {by}: a rollout is rolled back at most once")]
    Already {
        /// Rollout.
        id: String,
        /// The linked rollout.
        by: String,
    },
    /// A rollback itself.
    #[error(
        "rollout {id} is itself the rollback of {of}: update its devices with a new rollout instead"
    )]
    IsRollback {
        /// Rollout.
        id: String,
        /// What it reverts.
        of: String,
    },
    /// No scope.
    #[error("say which devices to roll back: failed or all")]
    NoScope,
    /// The scope selects no device.
    #[error("rollout {id} has no {what} device to roll back{hint}")]
    Nothing {
        /// Rollout.
        id: String,
        /// "failed" or "failed or updated".
        what: &'static str,
        /// What else to try.
        hint: &'static str,
    },
}

/// Whether an operator may roll `r` back now, as far as its state goes: only once it stopped
/// (paused, aborted or completed).
pub fn may_roll_back(r: &RolloutView) -> Result<(), RollbackError> {
    match r.state {
        RolloutState::Draft => Err(RollbackError::Draft(r.id.clone())),
        RolloutState::Running => Err(RollbackError::Running(r.id.clone())),
        RolloutState::Paused | RolloutState::Completed | RolloutState::Aborted => Ok(()),
    }
}

/// How a rollback is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// Which devices.
    pub scope: RollbackScope,
    /// By the rollout's own thresholds or criteria.
    pub automatic: bool,
    /// Why (recorded in `RolloutRolledBack`).
    pub reason: String,
    /// `RolloutApprovalRequired` when the linked rollout needs four eyes before it starts.
    pub approval: Option<DomainEvent>,
    /// Start it at once (ignored when approval is required).
    pub start: bool,
}

/// A rollback to record: the linked rollout's events and the rollout's `RolloutRolledBack`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRollback {
    /// The linked rollout's id.
    pub id: String,
    /// For the rolled-back rollout's stream.
    pub marker: RolloutRolledBack,
    /// For the linked rollout's new stream: created, maybe approval required, maybe started.
    pub events: Vec<DomainEvent>,
}

impl NewRollback {
    /// Both streams in one append: the rollout as the decision saw it, the linked one new.
    pub fn changes(&self, rollout_id: &str) -> Vec<Change> {
        vec![
            Change::unchanged(
                streams::rollout(rollout_id),
                vec![self.marker.clone().into()],
            ),
            Change::new_stream(streams::rollout(&self.id), self.events.clone()),
        ]
    }
}

/// The rollback of `r` asked for by `ask`, or why there is none. Does not look at `r`'s state
/// (the scheduler decides while the rollout still runs; operators go through [`may_roll_back`]).
pub fn rollback(
    r: &RolloutView,
    state: &FleetState,
    ask: Ask,
) -> Result<NewRollback, RollbackError> {
    if let Some(link) = &r.rolled_back_by {
        return Err(RollbackError::Already {
            id: r.id.clone(),
            by: link.rollout_id.clone(),
        });
    }
    if let Some(of) = &r.spec.reverts {
        return Err(RollbackError::IsRollback {
            id: r.id.clone(),
            of: of.rollout_id.clone(),
        });
    }
    if ask.scope == RollbackScope::None {
        return Err(RollbackError::NoScope);
    }
    let revert = revert(r, state, ask.scope);
    if revert.firmware.is_empty() && revert.excluded.is_empty() {
        return Err(RollbackError::Nothing {
            id: r.id.clone(),
            what: match ask.scope {
                RollbackScope::All => "failed or updated",
                _ => "failed",
            },
            hint: match ask.scope {
                RollbackScope::All => "",
                _ => " (--devices all also reverts the devices it updated)",
            },
        });
    }
    let id = rollback_id(&r.id);
    let spec = rollback_spec(r, revert);
    let mut events: Vec<DomainEvent> = vec![
        RolloutCreated {
            id: id.clone(),
            spec: spec.clone(),
        }
        .into(),
    ];
    let needs_approval = ask.approval.is_some();
    events.extend(ask.approval);
    if ask.start && !needs_approval {
        events.extend(plan::plan(&spec, state).started_events());
    }
    Ok(NewRollback {
        marker: RolloutRolledBack {
            rollback_id: id.clone(),
            scope: ask.scope,
            automatic: ask.automatic,
            reason: ask.reason,
        },
        id,
        events,
    })
}

#[cfg(test)]
mod tests;

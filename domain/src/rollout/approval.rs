//! Four eyes: a rollout that requires approval starts only after a second person approved it.
//!
//! The rules, as pure functions over the projection (the server records what they return):
//! - approval is required when otad's `require_approval` setting is on or the spec asks for it;
//!   it is recorded with the rollout (`RolloutApprovalRequired`), so changing the setting later
//!   does not change what an existing rollout needs;
//! - only a draft that waits for approval can be approved or denied, by an operator or admin
//!   who is not the one who created it (the same token name under another role is the same
//!   person), with a reason;
//! - approving twice, or approving after a denial, is refused; a denial ends the rollout;
//! - a rollout that waits for approval, or was denied, cannot start.
//!
//! What this module does not do: roles (the API checks that viewers can do neither) or I/O.

use crate::events::{DomainEvent, RolloutApprovalRequired, RolloutApproved, RolloutDenied};
use crate::model::Actor;
use crate::projection::{Approval, RolloutState, RolloutView};

/// Longest reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// Why an approval decision was refused; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// The rollout does not need approval.
    #[error("rollout {0} does not need approval: start it with `otactl rollout start {0}`")]
    NotRequired(String),
    /// Already decided.
    #[error("rollout {id} was already {verdict} by {by}")]
    AlreadyDecided {
        /// Rollout.
        id: String,
        /// "approved" or "denied".
        verdict: &'static str,
        /// Who decided.
        by: String,
    },
    /// Not a draft any more.
    #[error("rollout {id} is {state}: only a draft waiting for approval can be approved or denied")]
    NotDraft {
        /// Rollout.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The creator tried to approve their own rollout.
    #[error(
        "you created rollout {0}: another operator or admin must approve or deny it (four eyes)"
    )]
    OwnRollout(String),
    /// No reason given.
    #[error("give a reason (--reason): it is recorded with the decision")]
    NoReason,
}

/// Why a rollout cannot start yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartBlocked {
    /// Approval pending.
    #[error(
        "rollout {id} needs the approval of another operator first ({required_by}): `otactl rollout approve {id} --reason …`"
    )]
    AwaitingApproval {
        /// Rollout.
        id: String,
        /// What requires it.
        required_by: String,
    },
    /// Denied.
    #[error("rollout {id} was denied by {by}: {reason}")]
    Denied {
        /// Rollout.
        id: String,
        /// Who denied it.
        by: String,
        /// Why.
        reason: String,
    },
}

/// The event recording that a new rollout needs approval, if it does.
pub fn required(server_requires: bool, spec_requires: bool) -> Option<DomainEvent> {
    let required_by = if server_requires {
        "otad setting require_approval"
    } else if spec_requires {
        "the rollout's spec"
    } else {
        return None;
    };
    Some(
        RolloutApprovalRequired {
            required_by: required_by.into(),
        }
        .into(),
    )
}

/// Whether `r` may start as far as approval goes.
pub fn may_start(r: &RolloutView) -> Result<(), StartBlocked> {
    match &r.approval {
        Approval::NotRequired | Approval::Approved(_) => Ok(()),
        Approval::Pending { required_by } => Err(StartBlocked::AwaitingApproval {
            id: r.id.clone(),
            required_by: required_by.clone(),
        }),
        Approval::Denied(v) => Err(StartBlocked::Denied {
            id: r.id.clone(),
            by: v.by.clone(),
            reason: v.reason.clone(),
        }),
    }
}

/// The event for `actor`'s approval (`approve = true`) or denial of `r`, or why it is refused.
pub fn decide(
    r: &RolloutView,
    actor: &Actor,
    approve: bool,
    reason: &str,
) -> Result<DomainEvent, ApprovalError> {
    match &r.approval {
        Approval::NotRequired => return Err(ApprovalError::NotRequired(r.id.clone())),
        Approval::Approved(v) => {
            return Err(ApprovalError::AlreadyDecided {
                id: r.id.clone(),
                verdict: "approved",
                by: v.by.clone(),
            });
        }
        Approval::Denied(v) => {
            return Err(ApprovalError::AlreadyDecided {
                id: r.id.clone(),
                verdict: "denied",
                by: v.by.clone(),
            });
        }
        Approval::Pending { .. } => {}
    }
    if r.state != RolloutState::Draft {
        return Err(ApprovalError::NotDraft {
            id: r.id.clone(),
            state: r.state.name(),
        });
    }
    if Actor::from_label(&r.created_by).name == actor.name {
        return Err(ApprovalError::OwnRollout(r.id.clone()));
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApprovalError::NoReason);
    }
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    Ok(if approve {
        RolloutApproved { reason }.into()
    } else {
        RolloutDenied { reason }.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{EventMeta, FleetState};
    use crate::time::UnixMillis;

    fn draft(required: bool) -> (FleetState, u64) {
        let mut state = FleetState::default();
        let created: DomainEvent = crate::events::RolloutCreated {
            id: "ro-1".into(),
            spec: crate::fixture::spec(vec![]),
        }
        .into();
        let meta = |seq| EventMeta {
            seq,
            recorded_at_ms: UnixMillis::from_unix_ms(1_000 * seq as i64),
            actor: "alice (operator)".into(),
        };
        state.apply(&meta(1), "rollout/ro-1", &created);
        if let Some(e) = super::required(false, required) {
            state.apply(&meta(2), "rollout/ro-1", &e);
        }
        (state, 3)
    }

    fn apply(state: &mut FleetState, seq: u64, actor: &str, e: &DomainEvent) {
        let meta = EventMeta {
            seq,
            recorded_at_ms: UnixMillis::from_unix_ms(1_000 * seq as i64),
            actor: actor.into(),
        };
        state.apply(&meta, "rollout/ro-1", e);
    }

    #[test]
    fn a_second_person_approves_and_then_it_may_start() {
        let (mut state, seq) = draft(true);
        let r = &state.rollouts["ro-1"];
        assert!(matches!(
            may_start(r),
            Err(StartBlocked::AwaitingApproval { .. })
        ));
        assert_eq!(
            decide(r, &Actor::from_label("alice (operator)"), true, "ok"),
            Err(ApprovalError::OwnRollout("ro-1".into()))
        );
        assert_eq!(
            decide(r, &Actor::from_label("bob (operator)"), true, "  "),
            Err(ApprovalError::NoReason)
        );
        let e = decide(
            r,
            &Actor::from_label("bob (operator)"),
            true,
            "vendor notes read",
        )
        .unwrap();
        apply(&mut state, seq, "bob (operator)", &e);
        let r = &state.rollouts["ro-1"];
        assert_eq!(may_start(r), Ok(()));
        match &r.approval {
            Approval::Approved(v) => {
                assert_eq!(v.by, "bob (operator)");
                assert_eq!(v.reason, "vendor notes read");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(r, &Actor::from_label("carol (admin)"), false, "no"),
            Err(ApprovalError::AlreadyDecided {
                verdict: "approved",
                ..
            })
        ));
    }

    #[test]
    fn a_denial_ends_the_rollout() {
        let (mut state, seq) = draft(true);
        let e = decide(
            &state.rollouts["ro-1"],
            &Actor::from_label("bob (admin)"),
            false,
            "not this week",
        )
        .unwrap();
        apply(&mut state, seq, "bob (admin)", &e);
        let r = &state.rollouts["ro-1"];
        assert_eq!(r.state, RolloutState::Aborted);
        assert_eq!(r.state_reason, "denied by bob (admin): not this week");
        assert!(matches!(may_start(r), Err(StartBlocked::Denied { .. })));
        assert!(
            decide(
                r,
                &Actor::from_label("carol (admin)"),
                true,
                "changed my mind"
            )
            .is_err()
        );
    }

    #[test]
    fn without_the_requirement_nothing_changes() {
        let (state, _) = draft(false);
        let r = &state.rollouts["ro-1"];
        assert_eq!(may_start(r), Ok(()));
        assert_eq!(
            decide(r, &Actor::from_label("bob (operator)"), true, "x"),
            Err(ApprovalError::NotRequired("ro-1".into()))
        );
        assert!(required(false, false).is_none());
        assert!(required(true, false).is_some());
    }

    #[test]
    fn the_creator_under_another_role_is_still_the_creator() {
        let (state, _) = draft(true);
        assert_eq!(
            decide(
                &state.rollouts["ro-1"],
                &Actor::from_label("alice (admin)"),
                true,
                "ok"
            ),
            Err(ApprovalError::OwnRollout("ro-1".into()))
        );
    }

    #[test]
    fn long_reasons_are_cut() {
        let (state, _) = draft(true);
        let long = "x".repeat(10_000);
        let Ok(DomainEvent::RolloutApproved(e)) = decide(
            &state.rollouts["ro-1"],
            &Actor::from_label("bob (operator)"),
            true,
            &long,
        ) else {
            panic!("approval refused");
        };
        assert_eq!(e.reason.chars().count(), MAX_REASON_CHARS);
    }
}

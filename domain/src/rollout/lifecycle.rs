//! The rollout lifecycle: which moves are legal from which state.
//!
//! ```text
//!                start                     complete (scheduler: every stage succeeded and
//!     draft ─────────────► running ───────────────► completed   every task ended)
//!       │                   │   ▲
//!       │      pause        │   │ resume (continues where it stopped; a failed
//!       │ (operator, or a   ▼   │         stage is re-evaluated from its counts)
//!       │  failure threshold)  paused
//!       │                   │
//!       │ abort             │ abort (operator, or a failure threshold with on_failure = abort;
//!       └─────────► aborted ◄──┘        also from running)
//! ```
//!
//! `completed` and `aborted` are final. Every move is recorded as an event
//! (`RolloutStarted`, `RolloutPaused`, `RolloutResumed`, `RolloutCompleted`, `RolloutAborted`);
//! automatic pauses and aborts carry the reason with its numbers.

use crate::projection::RolloutState;

/// A move of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Draft → running (fixes the plan).
    Start,
    /// Running → paused.
    Pause,
    /// Paused → running.
    Resume,
    /// Draft, running or paused → aborted.
    Abort,
    /// Running → completed (only the scheduler does this).
    Complete,
}

impl Action {
    /// The verb, for messages ("it cannot be resumed").
    pub fn past_participle(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Pause => "paused",
            Self::Resume => "resumed",
            Self::Abort => "aborted",
            Self::Complete => "completed",
        }
    }
}

/// An illegal move, with a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IllegalTransition(pub String);

/// The state after `action`, or why the move is illegal.
pub fn transition(
    rollout_id: &str,
    from: RolloutState,
    action: Action,
) -> Result<RolloutState, IllegalTransition> {
    use Action::*;
    use RolloutState::*;
    let to = match (from, action) {
        (Draft, Start) => Running,
        (Running, Pause) => Paused,
        (Paused, Resume) => Running,
        (Draft | Running | Paused, Abort) => Aborted,
        (Running, Complete) => Completed,
        _ => {
            let hint = match (from, action) {
                (Completed | Aborted, _) => " (it is final)",
                (Draft, Pause | Resume) => ": start it first",
                (Running, Start) | (Paused, Start) => ": it was started already",
                (Running, Resume) => ": it is not paused",
                (Paused, Pause) => " again",
                _ => "",
            };
            return Err(IllegalTransition(format!(
                "rollout {rollout_id} is {}: it cannot be {}{hint}",
                from.name(),
                action.past_participle(),
            )));
        }
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use RolloutState::*;

    #[test]
    fn the_diagram() {
        let legal = [
            (Draft, Start, Running),
            (Running, Pause, Paused),
            (Paused, Resume, Running),
            (Draft, Abort, Aborted),
            (Running, Abort, Aborted),
            (Paused, Abort, Aborted),
            (Running, Complete, Completed),
        ];
        for from in [Draft, Running, Paused, Completed, Aborted] {
            for action in [Start, Pause, Resume, Abort, Complete] {
                let expected = legal
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                assert_eq!(
                    transition("ro-1", from, action).ok(),
                    expected,
                    "{from:?} --{action:?}-->"
                );
            }
        }
    }

    #[test]
    fn messages_say_why() {
        let e = transition("ro-x", Completed, Resume).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rollout ro-x is completed: it cannot be resumed (it is final)"
        );
        let e = transition("ro-x", Draft, Pause).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rollout ro-x is draft: it cannot be paused: start it first"
        );
        let e = transition("ro-x", Paused, Pause).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rollout ro-x is paused: it cannot be paused again"
        );
    }
}

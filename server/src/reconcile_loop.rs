//! The skeleton both of otad's level-triggered loops share (the task dispatcher and the rollout
//! loop), in the style of a kube controller: run a pass over the whole state, rest, then sleep
//! until something relevant was recorded, the pass's own next wake-up is due, someone pokes the
//! loop, or the safety tick passes; coalesce what arrived meanwhile into the next pass.
//!
//! The loop owns no state and makes no decisions: a pass re-reads the projection and decides
//! from it alone, so running it too often changes nothing and missing a wake-up only delays.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ota_domain::events::DomainEvent;
use ota_domain::time::UnixMillis;
use tokio::sync::Notify;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::app::App;
use crate::core::CoreError;

/// How often a pass runs even when nothing happened.
pub const SAFETY_TICK: Duration = Duration::from_secs(30);

/// After a pass, the loop rests this many times as long as the pass was busy deciding (under
/// the projection's read lock) before it looks at new events. A pass costs O(what it looks
/// at); on a large fleet reports arrive faster than passes end, and back-to-back passes would
/// take a whole core (and hold the read lock that reports wait for). Resting keeps a loop under
/// 1/(1 + factor) of a core; events that arrive meanwhile coalesce into the next pass. The time
/// a pass waits for its append to become durable is not work: resting for it too would make a
/// large stage wait for its own writes several times over. Cheap passes (small fleets, paused
/// time in tests) rest for next to nothing.
pub const PASS_REST_FACTOR: u32 = 4;

/// After a failed pass, the loop tries again this soon.
const RETRY_AFTER_FAILED_PASS: Duration = Duration::from_secs(1);

/// How a loop differs from the other.
#[derive(Debug, Clone, Copy)]
pub struct LoopSpec {
    /// For the log.
    pub name: &'static str,
    /// Events that may change what a pass decides.
    pub relevant: fn(&DomainEvent) -> bool,
    /// The shortest sleep between passes asked for by time.
    pub min_sleep: Duration,
}

/// What a pass tells the loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passed {
    /// The next time it wants to run, if any.
    pub next_due: Option<UnixMillis>,
    /// How long it was busy deciding (not waiting for its appends).
    pub busy: Duration,
}

/// Why the loop woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A relevant event was recorded, or someone poked the loop.
    Event,
    /// The pass's own wake-up time (or the safety tick) came.
    Timer,
}

/// Runs `pass` until `shutdown`. `pass` returns the next time it wants to run and how long it
/// was busy;
/// `after_wake` learns why the loop woke before each pass.
pub async fn run<P, F>(
    app: Arc<App>,
    spec: LoopSpec,
    poke: Arc<Notify>,
    shutdown: CancellationToken,
    mut pass: P,
    mut after_wake: impl FnMut(Woke),
) where
    P: FnMut() -> F,
    F: Future<Output = Result<Passed, CoreError>>,
{
    let mut applied = app.core.subscribe_applied();
    loop {
        let started = tokio::time::Instant::now();
        let (next_due, busy) = match pass().await {
            Ok(p) => (p.next_due, p.busy),
            Err(e) => {
                warn!(error = %e, loop_name = spec.name, "pass failed; retrying soon");
                (Some(app.now() + RETRY_AFTER_FAILED_PASS), started.elapsed())
            }
        };
        let rest = busy * PASS_REST_FACTOR;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(rest) => {}
        }
        let sleep_for = next_due
            .map(|at| at.since(app.now()))
            .unwrap_or(SAFETY_TICK)
            .clamp(spec.min_sleep, SAFETY_TICK);
        let relevant = spec.relevant;
        let event = async {
            loop {
                match applied.recv().await {
                    Ok(a) if relevant(&a.event) => return,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let woke = tokio::select! {
            () = shutdown.cancelled() => return,
            () = poke.notified() => Woke::Event,
            () = tokio::time::sleep(sleep_for) => Woke::Timer,
            () = event => Woke::Event,
        };
        // Coalesce a burst of events into one pass: the next pass reads a state that already
        // holds every event received so far (events are applied before they are announced).
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = applied.try_recv() {}
        after_wake(woke);
    }
}

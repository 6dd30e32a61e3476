//! The health window after an update (issue 15 item 4), as the agent runs it: a
//! [`HealthRun`] asks a transport to look at the device every few seconds
//! ([`Transport::look`], and [`Transport::last_look`] when the window ends, which may ask a
//! silent device) and feeds what it sees to `ota_domain::health::HealthWatch`, the pure
//! judgement, until it has a verdict: a success with its [`Health`], or a failure (5022: "the
//! device rolled back to 1.0.0", a reboot, safe mode, not seen).
//!
//! What it does not do: judge (the domain does), look at devices (the transports do), or talk to
//! otad (the core journals the window's start and its result, see `agent::health`).

use std::time::Duration;

use ota_domain::health::{Health, HealthWatch, Sample, Verdict};
use ota_domain::status::TaskError;
use ota_domain::time::UnixMillis;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::transport::{HealthLook, Transport};

/// What a window needs to know about the update.
#[derive(Debug, Clone)]
pub struct HealthJob {
    /// The device, by its `local_id`.
    pub device: String,
    /// How long it must stay healthy.
    pub window: Duration,
    /// A device the transport can only reach succeeds when reachable (else: unconfirmed).
    pub accept_reachability: bool,
    /// The versions that count as the target (human versions, Zigbee file versions).
    pub expected: Vec<String>,
    /// The versions the device ran before (seeing one again is a rollback).
    pub previous: Vec<String>,
}

/// Unix milliseconds that follow tokio's (pausable) clock from the moment a window began.
#[derive(Debug, Clone, Copy)]
struct Clock {
    unix: i64,
    at: Instant,
}

impl Clock {
    fn new() -> Self {
        let unix = crate::transport::unix_ms().unwrap_or_default();
        Self {
            unix,
            at: Instant::now(),
        }
    }

    fn of(&self, i: Instant) -> UnixMillis {
        let since = i.saturating_duration_since(self.at).as_millis() as i64;
        UnixMillis::from_unix_ms(self.unix.saturating_add(since))
    }

    fn now(&self) -> UnixMillis {
        self.of(Instant::now())
    }
}

/// The domain's sample for what a transport saw.
fn sample(look: HealthLook, clock: &Clock) -> Sample {
    match look {
        HealthLook::Api {
            version,
            uptime_s,
            safe_mode,
        } => Sample::Api {
            version,
            uptime_s,
            safe_mode,
        },
        HealthLook::Heard { last, version } => Sample::Seen {
            last_seen: last.map(|i| clock.of(i)),
            version,
        },
        HealthLook::Reachable(r) => Sample::Reachable(r),
        HealthLook::Silent => Sample::Silent,
    }
}

/// One device's health window, from now.
#[derive(Debug)]
pub struct HealthRun<'a> {
    transport: &'a dyn Transport,
    device: String,
    watch: HealthWatch,
    clock: Clock,
}

impl<'a> HealthRun<'a> {
    /// Starts the window of `job` on `transport` now.
    pub fn start(transport: &'a dyn Transport, job: HealthJob) -> Self {
        let clock = Clock::new();
        let watch = HealthWatch::new(
            transport.observation(&job.device),
            job.expected,
            job.previous,
            job.accept_reachability,
            clock.now(),
            job.window,
        );
        Self {
            transport,
            device: job.device,
            watch,
            clock,
        }
    }

    /// A verdict without looking (a device the site cannot ask, without reachability
    /// accepted, is unconfirmed at once).
    pub fn verdict_now(&self) -> Option<Result<Health, TaskError>> {
        self.watch.verdict(self.clock.now()).map(verdict)
    }

    /// When the window ends, Unix milliseconds.
    pub fn until_ms(&self) -> i64 {
        self.watch.until().as_i64()
    }

    /// Looks at the device every [`HealthWatch::interval`] until the verdict.
    pub async fn run(mut self) -> Result<Health, TaskError> {
        let interval = self.watch.interval();
        let end = self.clock.at + self.watch.until().since(self.clock.of(self.clock.at));
        loop {
            let look = if Instant::now() >= end {
                self.transport
                    .last_look(&self.device, self.clock.at, interval)
                    .await
            } else {
                self.transport.look(&self.device, interval).await
            };
            self.watch
                .observe(sample(look, &self.clock), self.clock.now());
            if let Some(v) = self.watch.verdict(self.clock.now()) {
                return verdict(v);
            }
            let next = (Instant::now() + interval).min(end);
            tokio::time::sleep_until(next.max(Instant::now())).await;
        }
    }
}

fn verdict(v: Verdict) -> Result<Health, TaskError> {
    match v {
        Verdict::Succeeded(h) => {
            info!(health = h.name(), "health window over");
            Ok(h)
        }
        Verdict::Failed(e) => {
            warn!(error = %e.message, "the device did not stay healthy");
            Err(e)
        }
    }
}

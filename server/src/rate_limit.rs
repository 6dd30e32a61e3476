//! Per-caller rate limits of the expensive RPCs: a token bucket per caller and RPC.
//!
//! A bucket holds a minute's worth of requests (`RateLimits`) and refills continuously; a
//! request that finds it empty is refused with the time until the next one fits. Callers are
//! authenticated before they reach a bucket, so the number of buckets is bounded by the
//! number of tokens and sites.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimits;
use crate::lock::MutexExt;

/// The RPCs that cost the server (or the sites) enough to be limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expensive {
    /// `FirmwareService.Upload`.
    Upload,
    /// `DeviceService.Check`.
    Check,
    /// `DeviceService.BatchCheck`.
    BatchCheck,
    /// `RolloutService.Plan`.
    Plan,
    /// `RolloutService.Create`.
    CreateRollout,
    /// `EventService.Tail`.
    Tail,
}

impl Expensive {
    /// The limited RPC a gRPC path names, if any.
    pub fn of_path(path: &str) -> Option<Self> {
        Some(match path {
            "/ota.v1.FirmwareService/Upload" => Self::Upload,
            "/ota.v1.DeviceService/Check" => Self::Check,
            "/ota.v1.DeviceService/BatchCheck" => Self::BatchCheck,
            "/ota.v1.RolloutService/Plan" => Self::Plan,
            "/ota.v1.RolloutService/Create" => Self::CreateRollout,
            "/ota.v1.EventService/Tail" => Self::Tail,
            _ => return None,
        })
    }

    fn per_minute(self, limits: &RateLimits) -> u32 {
        match self {
            Self::Upload => limits.upload,
            Self::Check => limits.check,
            Self::BatchCheck => limits.batch_check,
            Self::Plan => limits.plan,
            Self::CreateRollout => limits.create_rollout,
            Self::Tail => limits.tail,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets of every caller.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(String, Expensive), Bucket>>,
}

/// Buckets kept before full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request of `rpc` for `caller`; `Err` carries how long until one fits.
    pub fn take(&self, caller: &str, rpc: Expensive, now: Instant) -> Result<(), Duration> {
        let per_minute = rpc.per_minute(&self.limits);
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.locked();
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < capacity
            });
        }
        let bucket = buckets.entry((caller.to_string(), rpc)).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minutes_worth_then_a_steady_trickle_per_caller() {
        let limiter = RateLimiter::new(RateLimits {
            batch_check: 3,
            ..RateLimits::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("alice", Expensive::BatchCheck, t0).is_ok());
        }
        let wait = limiter
            .take("alice", Expensive::BatchCheck, t0)
            .unwrap_err();
        assert_eq!(wait.as_secs_f64().round(), 20.0);
        // Others are not affected, nor are other RPCs.
        assert!(limiter.take("bob", Expensive::BatchCheck, t0).is_ok());
        assert!(limiter.take("alice", Expensive::Check, t0).is_ok());
        // One more fits after a third of a minute.
        let later = t0 + Duration::from_secs(20);
        assert!(limiter.take("alice", Expensive::BatchCheck, later).is_ok());
        assert!(limiter.take("alice", Expensive::BatchCheck, later).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(RateLimits {
            upload: 0,
            ..RateLimits::default()
        });
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.take("ci", Expensive::Upload, t0).is_ok());
        }
        assert_eq!(
            Expensive::of_path("/ota.v1.RolloutService/Create"),
            Some(Expensive::CreateRollout)
        );
        assert_eq!(Expensive::of_path("/ota.v1.RolloutService/Get"), None);
    }
}

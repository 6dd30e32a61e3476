//! Cheap, lock-free counters the stores keep for metrics: a log2-bucketed latency
//! histogram and the [`StoreStats`] snapshot returned by `EventStore::stats`.
//!
//! Recording is a handful of relaxed atomic adds, so it can sit on the append path. It
//! does not export anything itself; the server maps snapshots onto its metrics registry.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Number of histogram buckets: bucket 0 holds 0 µs, bucket `i >= 1` holds
/// `[2^(i-1), 2^i)` µs, and the last bucket everything above (~34 s).
const BUCKETS: usize = 36;

/// A latency histogram with power-of-two microsecond buckets.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    count: AtomicU64,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
        self.max_micros.fetch_max(micros, Relaxed);
        self.buckets[bucket_of(micros)].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            count: self.count.load(Relaxed),
            sum_micros: self.sum_micros.load(Relaxed),
            max_micros: self.max_micros.load(Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    // 0 -> 0, 1 -> 1, 2..=3 -> 2, 4..=7 -> 3, ...
    let bits = (u64::BITS - micros.leading_zeros()) as usize;
    bits.min(BUCKETS - 1)
}

/// A point-in-time copy of a latency histogram. Counts are cumulative since open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Number of samples.
    pub count: u64,
    /// Sum of all samples, in microseconds.
    pub sum_micros: u64,
    /// Largest sample, in microseconds.
    pub max_micros: u64,
    /// Sample counts per bucket; see [`LatencySnapshot::bucket_upper_micros`].
    pub buckets: Vec<u64>,
}

impl LatencySnapshot {
    /// Exclusive upper bound, in microseconds, of bucket `i` (`u64::MAX` for the last).
    pub fn bucket_upper_micros(i: usize) -> u64 {
        if i + 1 >= BUCKETS {
            u64::MAX
        } else {
            1u64 << i
        }
    }

    /// Mean sample in microseconds (0 without samples).
    pub fn mean_micros(&self) -> u64 {
        self.sum_micros.checked_div(self.count).unwrap_or(0)
    }

    /// An upper bound for the `q` quantile (`0.0..=1.0`), in microseconds: the upper
    /// bound of the bucket holding it, capped at the largest sample. 0 without samples.
    pub fn quantile_upper_micros(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::bucket_upper_micros(i).min(self.max_micros);
            }
        }
        self.max_micros
    }
}

/// Figures a store reports for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable events in the log (equals the last durable seq).
    pub events: u64,
    /// Events accepted but not yet durable (waiting for the next flush).
    pub pending_events: u64,
    /// Size of the store on disk in bytes (0 for the in-memory store).
    pub disk_bytes: u64,
    /// Latency of successful appends, from the call to durability.
    pub append_latency: LatencySnapshot,
    /// Latency of the group-commit flushes (empty for the in-memory store).
    pub flush_latency: LatencySnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_of(1023), 10);
        assert_eq!(bucket_of(1024), 11);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        // Every value lies below its bucket's upper bound.
        for v in [0u64, 1, 2, 3, 4, 5, 100, 1_000_000] {
            assert!(
                v < LatencySnapshot::bucket_upper_micros(bucket_of(v)),
                "{v}"
            );
        }
    }

    #[test]
    fn snapshot_quantiles() {
        let h = LatencyHistogram::default();
        for micros in [10u64, 10, 10, 10, 10, 10, 10, 10, 10, 5000] {
            h.record(Duration::from_micros(micros));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10);
        assert_eq!(s.max_micros, 5000);
        assert_eq!(s.mean_micros(), 509);
        assert_eq!(s.quantile_upper_micros(0.5), 16);
        assert_eq!(s.quantile_upper_micros(0.9), 16);
        assert_eq!(s.quantile_upper_micros(1.0), 5000);
        assert_eq!(LatencySnapshot::default().quantile_upper_micros(0.99), 0);
    }
}

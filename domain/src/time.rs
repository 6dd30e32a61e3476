//! [`UnixMillis`]: an instant, in milliseconds since the Unix epoch (UTC).
//!
//! What this module does: give instants a type of their own, so an instant and a duration can no
//! longer be mixed up (durations stay [`Duration`], or `_ms`/`_s` integers where a stored or wire
//! field is a duration). It serializes exactly as the raw `i64` it wraps (`serde(transparent)`),
//! so stored events, snapshots and golden files are byte-for-byte what they were with `i64`.
//! What it does not do: read the clock (callers pass `now`) or format dates.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z. Arithmetic saturates instead of overflowing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(i64);

impl UnixMillis {
    /// The Unix epoch.
    pub const EPOCH: UnixMillis = UnixMillis(0);
    /// The earliest representable instant (an "never happened" start for comparisons).
    pub const MIN: UnixMillis = UnixMillis(i64::MIN);

    /// The instant `ms` milliseconds after the epoch (the protobuf and storage edge).
    pub const fn from_unix_ms(ms: i64) -> UnixMillis {
        UnixMillis(ms)
    }

    /// Milliseconds since the epoch (the protobuf and storage edge).
    pub const fn as_i64(self) -> i64 {
        self.0
    }

    /// This instant plus `d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_add(duration_ms(d)))
    }

    /// This instant minus `d`, saturating at the start of time.
    pub fn saturating_sub(self, d: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_sub(duration_ms(d)))
    }

    /// This instant plus `s` seconds (spec fields are whole seconds).
    pub fn plus_secs(self, s: u64) -> UnixMillis {
        self.saturating_add(Duration::from_secs(s))
    }

    /// This instant plus `ms` milliseconds.
    pub fn plus_ms(self, ms: u64) -> UnixMillis {
        self.saturating_add(Duration::from_millis(ms))
    }

    /// Time elapsed from `earlier` to this instant; zero if `earlier` is not earlier.
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(u64::try_from(self.millis_since(earlier)).unwrap_or(0))
    }

    /// Signed milliseconds from `earlier` to this instant (negative if `earlier` is later).
    pub fn millis_since(self, earlier: UnixMillis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// `d` in whole milliseconds, saturating at `i64::MAX`.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Add<Duration> for UnixMillis {
    type Output = UnixMillis;
    fn add(self, d: Duration) -> UnixMillis {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for UnixMillis {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Duration> for UnixMillis {
    type Output = UnixMillis;
    fn sub(self, d: Duration) -> UnixMillis {
        self.saturating_sub(d)
    }
}

/// The raw number of milliseconds, as it is stored and sent.
impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_raw_i64() {
        let t = UnixMillis::from_unix_ms(1_767_571_200_123);
        assert_eq!(
            postcard::to_allocvec(&t).unwrap(),
            postcard::to_allocvec(&1_767_571_200_123_i64).unwrap()
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), "1767571200123");
        assert_eq!(
            serde_json::from_str::<UnixMillis>("-5").unwrap().as_i64(),
            -5
        );
        assert_eq!(t.to_string(), "1767571200123");
    }

    #[test]
    fn arithmetic_saturates_and_since_never_goes_negative() {
        let t = UnixMillis::from_unix_ms(10_000);
        assert_eq!((t + Duration::from_secs(2)).as_i64(), 12_000);
        assert_eq!((t - Duration::from_millis(500)).as_i64(), 9_500);
        assert_eq!(t.plus_secs(1).as_i64(), 11_000);
        assert_eq!(t.plus_ms(7).as_i64(), 10_007);
        assert_eq!(
            UnixMillis::from_unix_ms(i64::MAX - 1) + Duration::MAX,
            UnixMillis::from_unix_ms(i64::MAX)
        );
        assert_eq!(UnixMillis::MIN - Duration::from_secs(1), UnixMillis::MIN);
        assert_eq!(t.plus_secs(3).since(t), Duration::from_secs(3));
        assert_eq!(t.since(t.plus_secs(3)), Duration::ZERO);
        assert_eq!(t.millis_since(t.plus_secs(3)), -3_000);
    }
}

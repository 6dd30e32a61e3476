//! zigbee-herdsman's OTA progress arithmetic (`OtaSession`), for the simulator and for tests.
//!
//! What it does: the first estimate (`ceil(size/baseSize) / blocksPerSec`), the 2-decimal
//! percentage, the remaining seconds from the observed byte rate, and the "at most every 30 s"
//! throttle. All times are passed in as milliseconds since the session started.
//! What it does not do: read a clock or send anything.

/// Default `ota.default_maximum_data_size` (bytes per block).
pub const DEFAULT_BASE_SIZE: u32 = 50;
/// Default `ota.image_block_response_delay` in ms.
pub const DEFAULT_RESPONSE_DELAY_MS: u64 = 250;
/// Default `ota.image_block_request_timeout` in ms.
pub const DEFAULT_BLOCK_REQUEST_TIMEOUT_MS: u64 = 150_000;
/// How long zigbee2mqtt waits for a queryNextImageRequest after the image notify.
pub const QUERY_NEXT_IMAGE_TIMEOUT_MS: u64 = 60_000;
/// How long herdsman waits for the device announce after the upgrade end.
pub const DEVICE_ANNOUNCE_WAIT_MS: u64 = 120_000;
/// Minimum spacing of progress reports.
pub const PROGRESS_INTERVAL_MS: u64 = 30_000;

/// The estimate reported at session start, in seconds (before `Math.round`).
///
/// `blocksPerSec = round(1000/responseDelay*100)/100`, or 20 when the delay is 0.
pub fn first_estimate_s(total_size: u32, base_size: u32, response_delay_ms: u64) -> f64 {
    let blocks = f64::from(total_size.div_ceil(base_size.max(1)));
    let per_sec = if response_delay_ms == 0 {
        20.0
    } else {
        (1000.0 / response_delay_ms as f64 * 100.0).round() / 100.0
    };
    blocks / per_sec
}

/// `round(offset/total*10000)/100`: percent with 2 decimals.
pub fn percent(offset: u32, total: u32) -> f64 {
    if total == 0 {
        return 100.0;
    }
    (f64::from(offset) / f64::from(total) * 10_000.0).round() / 100.0
}

/// `round((total-offset)/bytesPerSecond)` with `bytesPerSecond = offset / elapsed`; `None`
/// while nothing was transferred (herdsman skips the report then).
pub fn remaining_s(offset: u32, total: u32, elapsed_ms: u64) -> Option<f64> {
    if offset == 0 || elapsed_ms == 0 {
        return None;
    }
    let bytes_per_sec = f64::from(offset) / (elapsed_ms as f64 / 1000.0);
    Some((f64::from(total.saturating_sub(offset)) / bytes_per_sec).round())
}

/// Decides whether a block response may carry a progress report: at most once every
/// [`PROGRESS_INTERVAL_MS`], counted from the session start report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressThrottle {
    last_ms: u64,
    interval_ms: u64,
}

impl ProgressThrottle {
    /// A throttle whose first report (the estimate) happened at `start_ms`.
    pub fn new(start_ms: u64, interval_ms: u64) -> Self {
        Self {
            last_ms: start_ms,
            interval_ms,
        }
    }

    /// When the next report is allowed.
    pub fn next_due_ms(&self) -> u64 {
        self.last_ms + self.interval_ms
    }

    /// Call at each block response; true (and the report is recorded) when a report is due
    /// and something was transferred.
    pub fn poll(&mut self, now_ms: u64, offset: u32) -> bool {
        if offset == 0 || now_ms < self.next_due_ms() {
            return false;
        }
        self.last_ms = now_ms;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_of_the_reference_ikea_image() {
        let e = first_estimate_s(227_500, DEFAULT_BASE_SIZE, DEFAULT_RESPONSE_DELAY_MS);
        assert_eq!(e, 1137.5);
        assert_eq!(e.round(), 1138.0);
        assert_eq!(first_estimate_s(1000, 50, 0), 1.0);
        assert_eq!(first_estimate_s(1000, 50, 300), 20.0 / 3.33);
    }

    #[test]
    fn percent_and_remaining() {
        assert_eq!(percent(0, 227_500), 0.0);
        assert_eq!(percent(95_937, 227_500), 42.17);
        assert_eq!(percent(227_500, 227_500), 100.0);
        assert_eq!(remaining_s(0, 100, 1000), None);
        // 6000 B in 30 s = 200 B/s; 221500 left = 1107.5 s.
        assert_eq!(remaining_s(6000, 227_500, 30_000), Some(1108.0));
    }

    #[test]
    fn throttle_allows_one_report_per_interval() {
        let mut t = ProgressThrottle::new(0, PROGRESS_INTERVAL_MS);
        assert!(!t.poll(250, 50));
        assert!(!t.poll(29_750, 5950));
        assert!(t.poll(30_000, 6000));
        assert!(!t.poll(30_250, 6050));
        assert_eq!(t.next_due_ms(), 60_000);
        assert!(!t.poll(90_000, 0));
    }
}

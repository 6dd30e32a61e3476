//! Maintenance windows in a site's local time.
//!
//! A window is a daily span `start..end` (minutes after local midnight, end exclusive) on some
//! weekdays (0 Sunday .. 6 Saturday; none listed: every day). A window whose end is before its
//! start crosses midnight (22:00–05:00), and it belongs to the day it **opens** on: with
//! `weekdays = [1]` (Monday), 22:00–05:00 is open from Monday 22:00 to Tuesday 05:00.
//!
//! **Local time is the site's reported UTC offset.** otad has no time-zone database: agents
//! send their IANA zone and their current UTC offset in every hello (`AgentHello.timezone`,
//! `utc_offset_minutes`), and the server uses the offset of the last hello. A daylight-saving
//! change therefore takes effect when the agent next reconnects. A site that never said hello
//! is taken to be on UTC.
//!
//! Pure functions of `now` (Unix ms); nothing here reads a clock.

use crate::rollout::spec::MaintenanceWindow;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// The local day number (days since 1970-01-01 local), minute of the day and weekday (0 Sunday).
fn local(now_ms: i64, utc_offset_minutes: i32) -> (i64, u16, u8) {
    let local_ms = now_ms + i64::from(utc_offset_minutes) * MINUTE_MS;
    let day = local_ms.div_euclid(DAY_MS);
    let minute = (local_ms.rem_euclid(DAY_MS) / MINUTE_MS) as u16;
    // 1970-01-01 was a Thursday (4).
    let weekday = (day + 4).rem_euclid(7) as u8;
    (day, minute, weekday)
}

fn opens_on(w: &MaintenanceWindow, weekday: u8) -> bool {
    w.weekdays.is_empty() || w.weekdays.contains(&weekday)
}

/// Whether dispatching may happen now at a site with this UTC offset.
pub fn is_open(w: &MaintenanceWindow, utc_offset_minutes: i32, now_ms: i64) -> bool {
    let (_, minute, weekday) = local(now_ms, utc_offset_minutes);
    let (start, end) = (w.start_minute, w.end_minute);
    if start < end {
        opens_on(w, weekday) && (start..end).contains(&minute)
    } else if start > end {
        let yesterday = (weekday + 6) % 7;
        (minute >= start && opens_on(w, weekday)) || (minute < end && opens_on(w, yesterday))
    } else {
        // Validation refuses equal start and end; treat it as never open.
        false
    }
}

/// The next moment after `now_ms` at which the window opens or closes, within the next eight
/// days; `None` if it never changes (no weekday can open it).
pub fn next_change(w: &MaintenanceWindow, utc_offset_minutes: i32, now_ms: i64) -> Option<i64> {
    let open_now = is_open(w, utc_offset_minutes, now_ms);
    let offset_ms = i64::from(utc_offset_minutes) * MINUTE_MS;
    let (today, _, _) = local(now_ms, utc_offset_minutes);
    let mut candidates: Vec<i64> = Vec::new();
    for day in today - 1..=today + 8 {
        for minute in [w.start_minute, w.end_minute] {
            let at = day * DAY_MS + i64::from(minute) * MINUTE_MS - offset_ms;
            if at > now_ms {
                candidates.push(at);
            }
        }
    }
    candidates.sort_unstable();
    candidates
        .into_iter()
        .find(|at| is_open(w, utc_offset_minutes, *at) != open_now)
}

/// `now_ms` if the window is open, else when it next opens (`None`: never).
pub fn next_open(w: &MaintenanceWindow, utc_offset_minutes: i32, now_ms: i64) -> Option<i64> {
    if is_open(w, utc_offset_minutes, now_ms) {
        Some(now_ms)
    } else {
        next_change(w, utc_offset_minutes, now_ms)
    }
}

/// Minutes the window is open per week (for estimates and warnings).
pub fn open_minutes_per_week(w: &MaintenanceWindow) -> u32 {
    let per_day = if w.start_minute < w.end_minute {
        u32::from(w.end_minute - w.start_minute)
    } else if w.start_minute > w.end_minute {
        24 * 60 - u32::from(w.start_minute) + u32::from(w.end_minute)
    } else {
        0
    };
    let days = if w.weekdays.is_empty() {
        7
    } else {
        let mut d = w.weekdays.clone();
        d.sort_unstable();
        d.dedup();
        d.len() as u32
    };
    per_day * days
}

/// `"22:00-05:00"` (plus the weekdays when restricted), for messages.
pub fn describe(w: &MaintenanceWindow) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
    let mut s = format!("{}-{}", hm(w.start_minute), hm(w.end_minute));
    if !w.weekdays.is_empty() {
        let days: Vec<&str> = w
            .weekdays
            .iter()
            .filter_map(|d| DAYS.get(usize::from(*d)).copied())
            .collect();
        s.push_str(&format!(" on {}", days.join(",")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-05 00:00 UTC, a Monday.
    const MONDAY: i64 = 1_767_571_200_000;
    const H: i64 = 3_600_000;

    fn window(start: &str, end: &str, weekdays: &[u8]) -> MaintenanceWindow {
        let m = |s: &str| {
            let (h, m) = s.split_once(':').unwrap();
            h.parse::<u16>().unwrap() * 60 + m.parse::<u16>().unwrap()
        };
        MaintenanceWindow {
            start_minute: m(start),
            end_minute: m(end),
            weekdays: weekdays.to_vec(),
        }
    }

    #[test]
    fn monday_is_monday() {
        assert_eq!(local(MONDAY, 0), (20_458, 0, 1));
        // One minute before midnight UTC is Sunday 23:59.
        assert_eq!(local(MONDAY - MINUTE_MS, 0).2, 0);
        // At UTC midnight it is already 01:00 Monday at +60 and still Sunday 19:00 at -300.
        assert_eq!(local(MONDAY, 60).1, 60);
        assert_eq!(local(MONDAY, -300).2, 0);
    }

    #[test]
    fn same_day_window() {
        let w = window("02:00", "04:30", &[]);
        assert!(!is_open(&w, 0, MONDAY + H));
        assert!(is_open(&w, 0, MONDAY + 2 * H));
        assert!(is_open(&w, 0, MONDAY + 4 * H + 29 * MINUTE_MS));
        assert!(!is_open(&w, 0, MONDAY + 4 * H + 30 * MINUTE_MS));
        // In a site one hour ahead, 02:00 local is 01:00 UTC.
        assert!(is_open(&w, 60, MONDAY + H));
        assert_eq!(next_change(&w, 0, MONDAY), Some(MONDAY + 2 * H));
        assert_eq!(
            next_change(&w, 0, MONDAY + 3 * H),
            Some(MONDAY + 4 * H + 30 * MINUTE_MS)
        );
        assert_eq!(next_open(&w, 60, MONDAY), Some(MONDAY + H));
        assert_eq!(next_open(&w, 0, MONDAY + 3 * H), Some(MONDAY + 3 * H));
    }

    #[test]
    fn window_across_midnight_belongs_to_the_day_it_opens() {
        // Mondays only, 22:00 to 05:00.
        let w = window("22:00", "05:00", &[1]);
        // Monday 02:00: that is Sunday night's window, which is not open.
        assert!(!is_open(&w, 0, MONDAY + 2 * H));
        assert!(is_open(&w, 0, MONDAY + 22 * H));
        // Tuesday 04:59 is still Monday night.
        assert!(is_open(&w, 0, MONDAY + 28 * H + 59 * MINUTE_MS));
        assert!(!is_open(&w, 0, MONDAY + 29 * H));
        // Tuesday 22:00 does not open.
        assert!(!is_open(&w, 0, MONDAY + 46 * H));
        assert_eq!(next_open(&w, 0, MONDAY), Some(MONDAY + 22 * H));
        assert_eq!(next_change(&w, 0, MONDAY + 23 * H), Some(MONDAY + 29 * H));
        // After it closed, it opens again next Monday.
        assert_eq!(
            next_open(&w, 0, MONDAY + 30 * H),
            Some(MONDAY + 7 * 24 * H + 22 * H)
        );
        assert_eq!(open_minutes_per_week(&w), 7 * 60);
        assert_eq!(describe(&w), "22:00-05:00 on Mon");
    }

    #[test]
    fn negative_offsets_and_far_weekdays() {
        // Saturdays 10:00-12:00 in New York (-05:00).
        let w = window("10:00", "12:00", &[6]);
        let saturday_10_local = MONDAY + 5 * 24 * H + 10 * H + 5 * H;
        assert!(!is_open(&w, -300, saturday_10_local - MINUTE_MS));
        assert!(is_open(&w, -300, saturday_10_local));
        assert_eq!(next_open(&w, -300, MONDAY), Some(saturday_10_local));
        assert!(open_minutes_per_week(&w) == 120);
    }
}

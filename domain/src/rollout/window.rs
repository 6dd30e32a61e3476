//! Maintenance windows in a site's local time.
//!
//! A window is a daily span `start..end` (minutes after local midnight, end exclusive) on some
//! weekdays (0 Sunday .. 6 Saturday; none listed: every day). A window whose end is before its
//! start crosses midnight (22:00–05:00), and it belongs to the day it **opens** on: with
//! `weekdays = [1]` (Monday), 22:00–05:00 is open from Monday 22:00 to Tuesday 05:00.
//!
//! **Local time is the site's IANA zone** ([`SiteZone`], resolved by [`site_zone`]): the zone the
//! rollout spec names for the site, else the zone the site's agent reports in its hello
//! (`AgentHello.timezone`), looked up in the time-zone database compiled into otad (`chrono-tz`),
//! so daylight-saving changes apply at the moment they happen. A site whose agent reported no
//! known zone uses the UTC offset it reported (a DST change then applies at its next hello); a
//! site that never said hello is on UTC.
//!
//! Pure functions of `now` ([`UnixMillis`]); nothing here reads a clock.

use chrono::{Offset, TimeZone};

use crate::projection::FleetState;
use crate::rollout::spec::{MaintenanceWindow, RolloutSpec};
use crate::time::UnixMillis;

/// How a site tells local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteZone {
    /// An IANA zone: the offset follows daylight saving.
    Iana(chrono_tz::Tz),
    /// A fixed UTC offset in minutes.
    Offset(i32),
}

impl From<i32> for SiteZone {
    fn from(minutes: i32) -> Self {
        Self::Offset(minutes)
    }
}

impl SiteZone {
    /// The UTC offset in minutes in effect at `utc`.
    pub fn offset_minutes_at(self, utc: UnixMillis) -> i32 {
        match self {
            Self::Offset(m) => m,
            Self::Iana(tz) => chrono::DateTime::from_timestamp_millis(utc.as_i64())
                .map(|t| {
                    tz.offset_from_utc_datetime(&t.naive_utc())
                        .fix()
                        .local_minus_utc()
                        / 60
                })
                .unwrap_or(0),
        }
    }
}

/// Parses an IANA zone name ("Europe/Berlin"); `None` for anything the database does not know.
pub fn parse_zone(name: &str) -> Option<chrono_tz::Tz> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    name.parse::<chrono_tz::Tz>().ok()
}

/// The zone of a site for a rollout: the spec's `site_timezones` entry, else the zone its agent
/// reported, else the offset its agent reported, else UTC.
pub fn site_zone(state: &FleetState, spec: Option<&RolloutSpec>, site_id: &str) -> SiteZone {
    if let Some(tz) = spec
        .and_then(|s| s.site_timezones.get(site_id))
        .and_then(|z| parse_zone(z))
    {
        return SiteZone::Iana(tz);
    }
    match state.sites.get(site_id) {
        Some(site) => match parse_zone(&site.timezone) {
            Some(tz) => SiteZone::Iana(tz),
            None => SiteZone::Offset(site.utc_offset_minutes),
        },
        None => SiteZone::Offset(0),
    }
}

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// The local day number (days since 1970-01-01 local), minute of the day and weekday (0 Sunday).
fn local(now: UnixMillis, utc_offset_minutes: i32) -> (i64, u16, u8) {
    let local_ms = now.as_i64() + i64::from(utc_offset_minutes) * MINUTE_MS;
    let day = local_ms.div_euclid(DAY_MS);
    let minute = (local_ms.rem_euclid(DAY_MS) / MINUTE_MS) as u16;
    // 1970-01-01 was a Thursday (4).
    let weekday = (day + 4).rem_euclid(7) as u8;
    (day, minute, weekday)
}

fn opens_on(w: &MaintenanceWindow, weekday: u8) -> bool {
    w.weekdays.is_empty() || w.weekdays.contains(&weekday)
}

/// Whether dispatching may happen now at a site in this zone.
pub fn is_open(w: &MaintenanceWindow, zone: impl Into<SiteZone>, now: UnixMillis) -> bool {
    let offset = zone.into().offset_minutes_at(now);
    is_open_at_offset(w, offset, now)
}

fn is_open_at_offset(w: &MaintenanceWindow, utc_offset_minutes: i32, now: UnixMillis) -> bool {
    let (_, minute, weekday) = local(now, utc_offset_minutes);
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

/// The next moment after `now` at which the window opens or closes, within the next eight
/// days; `None` if it never changes (no weekday can open it). In an IANA zone the candidate
/// instants use the offset in effect around them, so a boundary on a daylight-saving day is right
/// (a boundary inside the skipped hour of a spring-forward night falls on the first instant
/// after it).
pub fn next_change(
    w: &MaintenanceWindow,
    zone: impl Into<SiteZone>,
    now: UnixMillis,
) -> Option<UnixMillis> {
    let zone = zone.into();
    let open_now = is_open(w, zone, now);
    let offset_now = zone.offset_minutes_at(now);
    let (today, _, _) = local(now, offset_now);
    let mut candidates: Vec<UnixMillis> = Vec::new();
    for day in today - 1..=today + 8 {
        for minute in [w.start_minute, w.end_minute] {
            // Local wall-clock milliseconds of the boundary, then the UTC instant for an offset.
            let local_ms = day * DAY_MS + i64::from(minute) * MINUTE_MS;
            let utc =
                |offset: i32| UnixMillis::from_unix_ms(local_ms - i64::from(offset) * MINUTE_MS);
            let guess = utc(offset_now);
            let offset = zone.offset_minutes_at(guess);
            let mut at = utc(offset);
            if zone.offset_minutes_at(at) != offset {
                // The local time does not exist that day (clocks jumped over it).
                at = at.max(guess);
            }
            if at > now {
                candidates.push(at);
            }
        }
    }
    candidates.sort_unstable();
    candidates
        .into_iter()
        .find(|at| is_open(w, zone, *at) != open_now)
}

/// `now` if the window is open, else when it next opens (`None`: never).
pub fn next_open(
    w: &MaintenanceWindow,
    zone: impl Into<SiteZone>,
    now: UnixMillis,
) -> Option<UnixMillis> {
    let zone = zone.into();
    if is_open(w, zone, now) {
        Some(now)
    } else {
        next_change(w, zone, now)
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
    use std::time::Duration;

    /// 2026-01-05 00:00 UTC, a Monday.
    const MONDAY: UnixMillis = UnixMillis::from_unix_ms(1_767_571_200_000);
    const H: Duration = Duration::from_secs(3_600);
    const MINUTE: Duration = Duration::from_secs(60);

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
        assert_eq!(local(MONDAY - MINUTE, 0).2, 0);
        // At UTC midnight it is already 01:00 Monday at +60 and still Sunday 19:00 at -300.
        assert_eq!(local(MONDAY, 60).1, 60);
        assert_eq!(local(MONDAY, -300).2, 0);
    }

    #[test]
    fn same_day_window() {
        let w = window("02:00", "04:30", &[]);
        assert!(!is_open(&w, 0, MONDAY + H));
        assert!(is_open(&w, 0, MONDAY + 2 * H));
        assert!(is_open(&w, 0, MONDAY + 4 * H + 29 * MINUTE));
        assert!(!is_open(&w, 0, MONDAY + 4 * H + 30 * MINUTE));
        // In a site one hour ahead, 02:00 local is 01:00 UTC.
        assert!(is_open(&w, 60, MONDAY + H));
        assert_eq!(next_change(&w, 0, MONDAY), Some(MONDAY + 2 * H));
        assert_eq!(
            next_change(&w, 0, MONDAY + 3 * H),
            Some(MONDAY + 4 * H + 30 * MINUTE)
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
        assert!(is_open(&w, 0, MONDAY + 28 * H + 59 * MINUTE));
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
        assert!(!is_open(&w, -300, saturday_10_local - MINUTE));
        assert!(is_open(&w, -300, saturday_10_local));
        assert_eq!(next_open(&w, -300, MONDAY), Some(saturday_10_local));
        assert!(open_minutes_per_week(&w) == 120);
    }

    #[test]
    fn daylight_saving_applies_when_it_happens() {
        // Europe/Berlin switches to summer time on 2026-03-29 at 02:00 local (01:00 UTC).
        let berlin = SiteZone::Iana(parse_zone("Europe/Berlin").unwrap());
        let w = window("03:00", "04:00", &[]);
        // 2026-03-28 00:00 UTC (Saturday).
        let saturday = UnixMillis::from_unix_ms(1_774_656_000_000);
        // Saturday (winter time, +01:00): 03:00 local is 02:00 UTC.
        assert!(is_open(&w, berlin, saturday + 2 * H));
        assert!(!is_open(&w, berlin, saturday + H));
        // Sunday (summer time, +02:00): 03:00 local is 01:00 UTC, no reconnect needed.
        let sunday = saturday + 24 * H;
        assert!(is_open(&w, berlin, sunday + H));
        assert!(!is_open(&w, berlin, sunday + 2 * H));
        assert_eq!(next_open(&w, berlin, saturday + 5 * H), Some(sunday + H));
        // A fixed offset keeps the winter offset and is an hour off after the change.
        assert!(!is_open(&w, 60, sunday + H));
    }

    #[test]
    fn a_boundary_in_the_skipped_hour_falls_after_it() {
        let berlin = SiteZone::Iana(parse_zone("Europe/Berlin").unwrap());
        // 02:30 local does not exist on 2026-03-29.
        let w = window("02:30", "05:00", &[]);
        let saturday = UnixMillis::from_unix_ms(1_774_656_000_000);
        let sunday = saturday + 24 * H;
        let opens = next_open(&w, berlin, saturday + 12 * H).unwrap();
        assert!(opens >= sunday + H, "{opens}");
        assert!(opens <= sunday + H + 30 * MINUTE, "{opens}");
        assert!(is_open(&w, berlin, opens));
    }

    #[test]
    fn unknown_zone_names_are_refused() {
        assert!(parse_zone("../../etc/passwd").is_none());
        assert!(parse_zone("").is_none());
        assert!(parse_zone("Mars/Olympus").is_none());
        assert_eq!(
            parse_zone("America/New_York").map(|z| z.name()),
            Some("America/New_York")
        );
    }
}

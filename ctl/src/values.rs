//! Parsers for single values given on the command line or in a spec file: durations, counts or
//! percentages, labels, numbers in decimal or hex, wave lists, maintenance windows, statuses.
//!
//! Each returns a `String` error that says what was expected, so clap can show it next to the
//! flag name and the spec parser next to the field name.

use std::time::Duration;

use crate::vocab;

/// A count of devices or a percentage (0–100) of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// A number of devices.
    Count(u32),
    /// A percentage of the devices.
    Percent(f64),
}

/// Parses a duration: humantime ("30s", "10m", "1h 30m", "30d") or plain seconds ("90").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("expected a duration such as \"30s\", \"10m\" or \"1h\"".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{e}; expected a duration such as \"30s\", \"10m\" or \"1h\""))
}

/// A duration, or "none" (also "off") for none at all: `Duration::ZERO`.
pub fn parse_duration_or_none(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "none" | "off" => Ok(Duration::ZERO),
        t => parse_duration(t).map_err(|e| format!("{e}, or \"none\"")),
    }
}

/// A limit that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// No limit.
    Off,
    /// This threshold.
    At(Threshold),
}

/// A threshold, or "none" (also "off") for no limit at all.
pub fn parse_threshold_or_none(s: &str) -> Result<Limit, String> {
    match s.trim() {
        "none" | "off" => Ok(Limit::Off),
        t => parse_threshold(t)
            .map(Limit::At)
            .map_err(|e| format!("{e}, or \"none\"")),
    }
}

/// One `--abort ON:P%[:MIN_FINISHED[:ACTION]]` flag, checked as far as its shape goes (the
/// names are checked with the spec, like the file's `[[abort]]` tables).
#[derive(Debug, Clone, PartialEq)]
pub struct AbortRule {
    /// failed | timed_out | rejected | any.
    pub on: String,
    /// Share of the finished devices.
    pub percent: f64,
    /// Finished devices needed before it is evaluated.
    pub min_finished: Option<u32>,
    /// pause | abort.
    pub action: Option<String>,
}

/// Parses `failed:20%:10:pause` (the `%` is optional; MIN_FINISHED and ACTION may be left
/// out).
pub fn parse_abort_rule(s: &str) -> Result<AbortRule, String> {
    let usage = "expected ON:PERCENT[:MIN_FINISHED[:ACTION]], like failed:20%:10:pause";
    let parts: Vec<&str> = s.trim().split(':').map(str::trim).collect();
    if parts.len() < 2 || parts.len() > 4 || parts[0].is_empty() {
        return Err(usage.to_string());
    }
    let percent: f64 = parts[1]
        .strip_suffix('%')
        .unwrap_or(parts[1])
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a percentage; {usage}", parts[1]))?;
    let min_finished = match parts.get(2) {
        None | Some(&"") => None,
        Some(n) => Some(
            n.parse::<u32>()
                .map_err(|_| format!("{n:?} is not a count of devices; {usage}"))?,
        ),
    };
    Ok(AbortRule {
        on: parts[0].to_string(),
        percent,
        min_finished,
        action: parts.get(3).map(|a| a.to_string()),
    })
}

/// Whole seconds of a duration, for the API's `u32` second fields.
pub fn duration_secs(d: Duration) -> Result<u32, String> {
    u32::try_from(d.as_secs()).map_err(|_| format!("{} is too long", fmt_secs(d.as_secs())))
}

/// Whole milliseconds of a duration, for the API's `u32` millisecond fields.
pub fn duration_ms(d: Duration) -> Result<u32, String> {
    u32::try_from(d.as_millis()).map_err(|_| format!("{} is too long", fmt_secs(d.as_secs())))
}

/// Formats seconds like humantime does ("1h 30m").
pub fn fmt_secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Parses a threshold: a count ("2") or a percentage ("10%", 0–100).
pub fn parse_threshold(s: &str) -> Result<Threshold, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("\"{t}\" is not a percentage; expected e.g. \"10%\""))?;
        if !(0.0..=100.0).contains(&v) || v.is_nan() {
            return Err(format!("{v}% is outside 0-100%"));
        }
        return Ok(Threshold::Percent(v));
    }
    t.parse::<u32>().map(Threshold::Count).map_err(|_| {
        format!("\"{t}\" is neither a count nor a percentage; expected e.g. \"2\" or \"10%\"")
    })
}

/// Parses a label given as `key=value`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("\"{s}\" is not key=value"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("\"{s}\" has an empty key; expected key=value"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses an unsigned number in decimal or `0x` hex.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse::<u32>(),
    };
    parsed.map_err(|_| format!("\"{t}\" is not a number (decimal or 0x hex, up to 32 bits)"))
}

/// A list of cumulative percentages (one flag value, so clap does not treat it as many).
#[derive(Debug, Clone, PartialEq)]
pub struct Percents(pub Vec<f64>);

/// Parses a list of cumulative percentages ("5,25,100"): each in (0, 100], strictly increasing.
pub fn parse_percent_list(s: &str) -> Result<Percents, String> {
    let mut out: Vec<f64> = Vec::new();
    for part in s.split(',') {
        let p = part.trim().trim_end_matches('%');
        let v: f64 = p
            .parse()
            .map_err(|_| format!("\"{}\" is not a percentage", part.trim()))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!("{v} is outside 1-100"));
        }
        if let Some(&last) = out.last()
            && v <= last
        {
            return Err(format!(
                "percentages must increase (cumulative share of all targets): {v} after {last}"
            ));
        }
        out.push(v);
    }
    Ok(Percents(out))
}

/// Checks a time of day "HH:MM" (24 h).
pub fn check_hhmm(s: &str) -> Result<(), String> {
    let bad = || format!("\"{s}\" is not a time of day; expected HH:MM (24 h), e.g. \"22:00\"");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(())
}

/// Parses a maintenance window "HH:MM-HH:MM" into its start and end.
pub fn parse_window(s: &str) -> Result<(String, String), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("\"{s}\" is not a window; expected HH:MM-HH:MM, e.g. 22:00-05:00")
    })?;
    let (a, b) = (a.trim(), b.trim());
    check_hhmm(a)?;
    check_hhmm(b)?;
    Ok((a.to_string(), b.to_string()))
}

/// Parses a weekday: 0 (Sunday) .. 6 (Saturday), or an English name or its first three letters.
pub fn parse_weekday(s: &str) -> Result<u32, String> {
    const DAYS: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let t = s.trim().to_ascii_lowercase();
    if let Ok(n) = t.parse::<u32>() {
        return if n <= 6 {
            Ok(n)
        } else {
            Err(format!("{n} is not a weekday; expected 0 (Sunday) .. 6"))
        };
    }
    DAYS.iter()
        .position(|d| t.len() >= 3 && d.starts_with(&t))
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| format!("\"{s}\" is not a weekday; expected sun..sat or 0..6"))
}

/// Parses an update status by name ("updating") or Tuya number ("2").
pub fn parse_status(s: &str) -> Result<i32, String> {
    vocab::parse_status(s).ok_or_else(|| {
        format!(
            "\"{s}\" is not a status; expected one of {} (or its number)",
            vocab::STATUS_NAMES.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("").is_err());
        let err = parse_duration("soon").unwrap_err();
        assert!(err.contains("expected a duration"), "{err}");
        assert_eq!(duration_secs(Duration::from_secs(7)), Ok(7));
        assert!(duration_secs(Duration::from_secs(u64::from(u32::MAX) + 1)).is_err());
        assert_eq!(duration_ms(Duration::from_secs(2)), Ok(2000));
        assert_eq!(fmt_secs(5400), "1h 30m");
    }

    #[test]
    fn thresholds() {
        assert_eq!(parse_threshold("2"), Ok(Threshold::Count(2)));
        assert_eq!(parse_threshold("10%"), Ok(Threshold::Percent(10.0)));
        assert_eq!(parse_threshold(" 12.5 % "), Ok(Threshold::Percent(12.5)));
        assert_eq!(parse_threshold("0%"), Ok(Threshold::Percent(0.0)));
        assert!(parse_threshold("101%").is_err());
        assert!(parse_threshold("-1").is_err());
        assert!(parse_threshold("x%").is_err());
        assert!(parse_threshold("2.5").is_err());
    }

    #[test]
    fn labels_and_numbers() {
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("a="), Ok(("a".into(), String::new())));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
        assert_eq!(parse_u32("0x100B"), Ok(0x100B));
        assert_eq!(parse_u32("4107"), Ok(4107));
        assert!(parse_u32("0xZZ").is_err());
        assert!(parse_u32("-1").is_err());
    }

    #[test]
    fn percent_lists() {
        assert_eq!(
            parse_percent_list("5,25,100"),
            Ok(Percents(vec![5.0, 25.0, 100.0]))
        );
        assert_eq!(
            parse_percent_list("10%, 100%"),
            Ok(Percents(vec![10.0, 100.0]))
        );
        assert!(parse_percent_list("25,5").is_err());
        assert!(parse_percent_list("0,100").is_err());
        assert!(parse_percent_list("50,150").is_err());
        assert!(parse_percent_list("a").is_err());
    }

    #[test]
    fn windows_and_weekdays() {
        assert_eq!(
            parse_window("22:00-05:00"),
            Ok(("22:00".into(), "05:00".into()))
        );
        assert!(parse_window("22:00").is_err());
        assert!(parse_window("24:00-05:00").is_err());
        assert!(parse_window("2:00-05:00").is_err());
        assert_eq!(parse_weekday("sun"), Ok(0));
        assert_eq!(parse_weekday("Saturday"), Ok(6));
        assert_eq!(parse_weekday("3"), Ok(3));
        assert!(parse_weekday("7").is_err());
        assert!(parse_weekday("mo").is_err());
        assert!(parse_weekday("funday").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_status("updating"), Ok(2));
        assert_eq!(parse_status("waiting-for-wakeup"), Ok(5));
        assert_eq!(parse_status("13"), Ok(13));
        assert!(parse_status("8").is_err());
        assert!(
            parse_status("busy")
                .unwrap_err()
                .contains("agent-preparing")
        );
    }
}

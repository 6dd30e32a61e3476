//! `[rate]` of a spec file (and `--max-per-minute`): how many devices a rollout starts per
//! minute, with an optional exponential ramp. Checked with otad's bounds, so a mistake is
//! reported before anything is sent.

use ota_proto::v1 as pb;
use serde::Deserialize;

use super::{PercentValue, Problems};

/// `[rate]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Most devices started per minute.
    pub max_per_minute: Option<i64>,
    /// `ramp = { start = 2, factor = 2.0, after_successes = 5 }`.
    pub ramp: Option<RawRamp>,
}

/// `[rate.ramp]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRamp {
    /// Starting rate per minute.
    pub start: Option<i64>,
    /// Multiplier per step.
    pub factor: Option<f64>,
    /// A step every this many more successes.
    pub after_successes: Option<i64>,
    /// A step every this share of the targets succeeded.
    pub after_percent: Option<PercentValue>,
}

/// otad's bounds (`server/src/api/bounds.rs`).
const MAX_PER_MINUTE: i64 = 10_000;
const MAX_FACTOR: f64 = 5.0;
const MAX_AFTER_SUCCESSES: i64 = 1_000_000;

pub(super) fn rate(p: &mut Problems, raw: &RawRate) -> pb::RolloutRate {
    let max = match raw.max_per_minute {
        None => {
            p.add(
                "rate.max_per_minute",
                "is required: the most devices started per minute",
            );
            0
        }
        Some(n) => p.u32_in("rate.max_per_minute", Some(n), 1, MAX_PER_MINUTE),
    };
    pb::RolloutRate {
        max_per_minute: max,
        ramp: raw.ramp.as_ref().map(|r| ramp(p, r, max)),
    }
}

fn ramp(p: &mut Problems, raw: &RawRamp, max: u32) -> pb::RateRamp {
    let start = match raw.start {
        None => {
            p.add(
                "rate.ramp.start",
                "is required: the rate per minute to begin with",
            );
            0
        }
        // Up to the maximum (or otad's bound when the maximum is itself wrong).
        Some(n) => {
            let bound = if max == 0 {
                MAX_PER_MINUTE
            } else {
                i64::from(max)
            };
            p.u32_in("rate.ramp.start", Some(n), 1, bound)
        }
    };
    let factor = match raw.factor {
        None => {
            p.add("rate.ramp.factor", "is required: above 1 and at most 5");
            0.0
        }
        Some(f) if !(f > 1.0 && f <= MAX_FACTOR) => {
            p.add(
                "rate.ramp.factor",
                format!("{f} is not above 1 and at most 5"),
            );
            f
        }
        Some(f) => f,
    };
    let after = match (&raw.after_successes, &raw.after_percent) {
        (Some(n), None) => Some(pb::rate_ramp::After::AfterSuccesses(p.u32_in(
            "rate.ramp.after_successes",
            Some(*n),
            1,
            MAX_AFTER_SUCCESSES,
        ))),
        (None, Some(v)) => Some(pb::rate_ramp::After::AfterPercent(after_percent(p, v))),
        _ => {
            p.add(
                "rate.ramp",
                "needs exactly one of after_successes and after_percent",
            );
            None
        }
    };
    pb::RateRamp {
        start_per_minute: start,
        factor,
        after,
    }
}

fn after_percent(p: &mut Problems, v: &PercentValue) -> f64 {
    let field = "rate.ramp.after_percent";
    let n = match v {
        PercentValue::Number(n) => *n,
        PercentValue::Text(t) => match t.trim().trim_end_matches('%').trim().parse() {
            Ok(n) => n,
            Err(_) => {
                p.add(field, format!("{t:?} is not a percentage"));
                return 0.0;
            }
        },
    };
    if !(n > 0.0 && n <= 100.0) {
        p.add(field, format!("{n} is not above 0 and at most 100"));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::parse_toml;
    use super::*;

    fn spec(rate: &str) -> Result<pb::RolloutSpec, Vec<(String, String)>> {
        let text =
            format!("name = \"n\"\nfirmware = \"fw-1\"\n[[stages]]\npercent = 100\n{rate}\n");
        parse_toml(&text, "t.toml").map_err(|e| e.problems)
    }

    #[test]
    fn a_rate_with_a_ramp_maps_onto_the_api() {
        let s = spec(
            "[rate]\nmax_per_minute = 30\nramp = { start = 2, factor = 2.0, after_successes = 5 }",
        )
        .unwrap();
        assert_eq!(
            s.rate,
            Some(pb::RolloutRate {
                max_per_minute: 30,
                ramp: Some(pb::RateRamp {
                    start_per_minute: 2,
                    factor: 2.0,
                    after: Some(pb::rate_ramp::After::AfterSuccesses(5)),
                }),
            })
        );
        let s = spec("[rate]\nmax_per_minute = 6\n[rate.ramp]\nstart = 1\nfactor = 1.5\nafter_percent = \"10%\"")
            .unwrap();
        let ramp = s.rate.unwrap().ramp.unwrap();
        assert_eq!(ramp.after, Some(pb::rate_ramp::After::AfterPercent(10.0)));
        assert_eq!(spec("").unwrap().rate, None);
    }

    #[test]
    fn rate_errors_name_the_field() {
        let e = spec("[rate]\nramp = { start = 0, factor = 6.0 }").unwrap_err();
        let fields: Vec<String> = e.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert_eq!(
            fields,
            [
                "rate.max_per_minute: is required: the most devices started per minute",
                "rate.ramp.start: 0 is outside 1-10000",
                "rate.ramp.factor: 6 is not above 1 and at most 5",
                "rate.ramp: needs exactly one of after_successes and after_percent",
            ]
        );
        let e = spec(
            "[rate]\nmax_per_minute = 20000\nramp = { start = 2, factor = 2.0, after_percent = 0, after_successes = 1 }",
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                (
                    "rate.max_per_minute".to_string(),
                    "20000 is outside 1-10000".to_string()
                ),
                (
                    "rate.ramp".to_string(),
                    "needs exactly one of after_successes and after_percent".to_string()
                ),
            ]
        );
    }
}

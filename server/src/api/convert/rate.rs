//! The rollout rate (`RolloutSpec.rate`) between the wire and the domain: bounds and meaning
//! checked here, the rule itself in `ota_domain::rollout::rate`.

use ota_domain::rollout::rate::{Ramp, RampAfter, Rate};
use ota_proto::v1 as pb;

use super::{SpecError, SpecProblem, SpecResult, at_most};
use crate::api::bounds::{MAX_RAMP_AFTER_SUCCESSES, MAX_RAMP_FACTOR, MAX_RATE_PER_MINUTE};

/// `spec.rate`: a maximum of 1 ..= 10,000 per minute and an optional ramp that starts at 1 ..=
/// the maximum, multiplies by a factor in (1, 5] after N successes or P % of the targets.
pub(super) fn rate_from_pb(r: Option<&pb::RolloutRate>) -> SpecResult<Option<Rate>> {
    let Some(r) = r else {
        return Ok(None);
    };
    let max = r.max_per_minute;
    if max == 0 {
        return Err(SpecError::new(
            "spec.rate.max_per_minute",
            SpecProblem::Zero,
        ));
    }
    at_most("spec.rate.max_per_minute", max, MAX_RATE_PER_MINUTE, "")?;
    let ramp = r
        .ramp
        .as_ref()
        .map(|ramp| ramp_from_pb(ramp, max))
        .transpose()?;
    Ok(Some(Rate {
        max_per_minute: max,
        ramp,
    }))
}

fn ramp_from_pb(r: &pb::RateRamp, max: u32) -> SpecResult<Ramp> {
    if r.start_per_minute == 0 {
        return Err(SpecError::new(
            "spec.rate.ramp.start_per_minute",
            SpecProblem::Zero,
        ));
    }
    if r.start_per_minute > max {
        return Err(SpecError::new(
            "spec.rate.ramp.start_per_minute",
            SpecProblem::OutOfRange {
                value: r.start_per_minute.to_string(),
                allowed: "a ramp starts at or below max_per_minute",
            },
        ));
    }
    if !(r.factor > 1.0 && r.factor <= MAX_RAMP_FACTOR) {
        return Err(SpecError::new(
            "spec.rate.ramp.factor",
            SpecProblem::OutOfRange {
                value: r.factor.to_string(),
                allowed: "the factor must be above 1 and at most 5",
            },
        ));
    }
    let after = match r.after {
        None => {
            return Err(SpecError::new(
                "spec.rate.ramp.after_successes or after_percent",
                SpecProblem::Required,
            ));
        }
        Some(pb::rate_ramp::After::AfterSuccesses(0)) => {
            return Err(SpecError::new(
                "spec.rate.ramp.after_successes",
                SpecProblem::Zero,
            ));
        }
        Some(pb::rate_ramp::After::AfterSuccesses(n)) => {
            at_most(
                "spec.rate.ramp.after_successes",
                n,
                MAX_RAMP_AFTER_SUCCESSES,
                "",
            )?;
            RampAfter::Successes(n)
        }
        Some(pb::rate_ramp::After::AfterPercent(p)) if p > 0.0 && p <= 100.0 => {
            RampAfter::Percent(p)
        }
        Some(pb::rate_ramp::After::AfterPercent(p)) => {
            return Err(SpecError::new(
                "spec.rate.ramp.after_percent",
                SpecProblem::OutOfRange {
                    value: format!("{p} %"),
                    allowed: "a share of the targets must be above 0 and at most 100",
                },
            ));
        }
    };
    Ok(Ramp {
        start_per_minute: r.start_per_minute,
        factor: r.factor,
        after,
    })
}

/// The domain's rate on the wire.
pub(super) fn rate_to_pb(r: &Rate) -> pb::RolloutRate {
    pb::RolloutRate {
        max_per_minute: r.max_per_minute,
        ramp: r.ramp.map(|ramp| pb::RateRamp {
            start_per_minute: ramp.start_per_minute,
            factor: ramp.factor,
            after: Some(match ramp.after {
                RampAfter::Successes(n) => pb::rate_ramp::After::AfterSuccesses(n),
                RampAfter::Percent(p) => pb::rate_ramp::After::AfterPercent(p),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(start: u32, factor: f64, after: Option<pb::rate_ramp::After>) -> pb::RolloutRate {
        pb::RolloutRate {
            max_per_minute: 30,
            ramp: Some(pb::RateRamp {
                start_per_minute: start,
                factor,
                after,
            }),
        }
    }

    fn refusal(r: pb::RolloutRate) -> String {
        rate_from_pb(Some(&r)).unwrap_err().to_string()
    }

    #[test]
    fn a_rate_round_trips() {
        use pb::rate_ramp::After;
        for r in [
            ramp(2, 2.0, Some(After::AfterSuccesses(5))),
            ramp(30, 5.0, Some(After::AfterPercent(12.5))),
            pb::RolloutRate {
                max_per_minute: 10_000,
                ramp: None,
            },
        ] {
            let domain = rate_from_pb(Some(&r)).unwrap().unwrap();
            assert_eq!(rate_to_pb(&domain), r);
        }
        assert_eq!(rate_from_pb(None).unwrap(), None);
    }

    #[test]
    fn rates_out_of_bounds_are_refused_with_the_field() {
        use pb::rate_ramp::After;
        let flat = |max| pb::RolloutRate {
            max_per_minute: max,
            ramp: None,
        };
        let cases = [
            (flat(0), "spec.rate.max_per_minute must be at least 1"),
            (
                flat(10_001),
                "spec.rate.max_per_minute is 10001: at most 10000",
            ),
            (
                ramp(0, 2.0, Some(After::AfterSuccesses(5))),
                "spec.rate.ramp.start_per_minute must be at least 1",
            ),
            (
                ramp(31, 2.0, Some(After::AfterSuccesses(5))),
                "spec.rate.ramp.start_per_minute is 31: a ramp starts at or below max_per_minute",
            ),
            (
                ramp(2, 1.0, Some(After::AfterSuccesses(5))),
                "spec.rate.ramp.factor is 1: the factor must be above 1 and at most 5",
            ),
            (
                ramp(2, 5.5, Some(After::AfterSuccesses(5))),
                "spec.rate.ramp.factor is 5.5: the factor must be above 1 and at most 5",
            ),
            (
                ramp(2, f64::NAN, Some(After::AfterSuccesses(5))),
                "spec.rate.ramp.factor is NaN: the factor must be above 1 and at most 5",
            ),
            (
                ramp(2, 2.0, None),
                "spec.rate.ramp.after_successes or after_percent is required",
            ),
            (
                ramp(2, 2.0, Some(After::AfterSuccesses(0))),
                "spec.rate.ramp.after_successes must be at least 1",
            ),
            (
                ramp(2, 2.0, Some(After::AfterSuccesses(1_000_001))),
                "spec.rate.ramp.after_successes is 1000001: at most 1000000",
            ),
            (
                ramp(2, 2.0, Some(After::AfterPercent(0.0))),
                "spec.rate.ramp.after_percent is 0 %: a share of the targets must be above 0 and at most 100",
            ),
        ];
        for (r, message) in cases {
            assert_eq!(refusal(r), message);
        }
    }
}

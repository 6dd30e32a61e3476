//! From `ota-domain` values to their wire form, for what otad and the agent both send: the
//! transport, power source and signal of a device, a task error, a success's health.
//!
//! Only conversions *out of* the domain live here; they cannot fail. Conversions *into* the
//! domain validate what a peer sent and belong to the side that receives it (otad's
//! `api::convert`). Behind the `domain` feature, so otactl builds without `ota-domain`.

use ota_domain::health::Health;
use ota_domain::model::{PowerSource, Signal, Transport};
use ota_domain::status::TaskError;

use crate::v1 as pb;

impl From<Transport> for pb::Transport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Zigbee2Mqtt => Self::Zigbee2mqtt,
            Transport::Esphome => Self::Esphome,
            Transport::Serial => Self::Serial,
        }
    }
}

impl From<PowerSource> for pb::PowerSource {
    fn from(p: PowerSource) -> Self {
        match p {
            PowerSource::Unknown => Self::Unknown,
            PowerSource::Mains => Self::Mains,
            PowerSource::Battery => Self::Battery,
        }
    }
}

impl From<Signal> for pb::Signal {
    fn from(s: Signal) -> Self {
        match s {
            Signal::LinkQuality(v) => Self {
                kind: pb::SignalKind::Linkquality as i32,
                value: i32::from(v),
            },
            Signal::RssiDbm(v) => Self {
                kind: pb::SignalKind::RssiDbm as i32,
                value: i32::from(v),
            },
        }
    }
}

impl From<Health> for pb::TaskHealth {
    fn from(h: Health) -> Self {
        match h {
            Health::NotChecked => Self::NotChecked,
            Health::Healthy => Self::Healthy,
            Health::Reachable => Self::Reachable,
            Health::Unconfirmed => Self::Unconfirmed,
        }
    }
}

impl From<&TaskError> for pb::TaskError {
    /// The Tuya error number and the message.
    fn from(e: &TaskError) -> Self {
        Self {
            code: e.code.code() as i32,
            message: e.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_domain::status::ErrorCode;

    #[test]
    fn values_keep_their_wire_numbers() {
        assert_eq!(pb::Transport::from(Transport::Serial) as i32, 3);
        assert_eq!(
            pb::PowerSource::from(PowerSource::Battery),
            pb::PowerSource::Battery
        );
        assert_eq!(
            pb::Signal::from(Signal::RssiDbm(-70)),
            pb::Signal {
                kind: pb::SignalKind::RssiDbm as i32,
                value: -70,
            }
        );
        assert_eq!(
            pb::TaskHealth::from(Health::Unconfirmed),
            pb::TaskHealth::Unconfirmed
        );
        let e = pb::TaskError::from(&TaskError::new(ErrorCode::Unhealthy, "rolled back"));
        assert_eq!((e.code, e.message.as_str()), (5022, "rolled back"));
    }
}

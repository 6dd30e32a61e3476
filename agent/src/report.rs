//! Transport facts into wire reports. The only place in the agent's core that builds
//! `ota.v1` device and version messages; the domain values in them (transport, power source,
//! signal, task error, health) go through `ota_proto::domain`, as otad's do.

use ota_domain::status::TaskError;
use ota_proto::v1 as pb;

use crate::transport::{DeviceReport, TransportKind, VersionInfo};

/// The wire transport of a kind.
pub fn transport(kind: TransportKind) -> i32 {
    pb::Transport::from(kind) as i32
}

/// A device report on the wire.
pub fn device(kind: TransportKind, d: &DeviceReport, tags: &[String]) -> pb::DeviceReport {
    pb::DeviceReport {
        local_id: d.local_id.clone(),
        transport: transport(kind),
        network: d.network.clone(),
        name: d.name.clone(),
        model: d.model.clone(),
        vendor: d.vendor.clone(),
        manufacturer_code: d.manufacturer_code.map(u32::from),
        image_type: d.image_type.map(u32::from),
        chip: d.chip.clone().unwrap_or_default(),
        platform: d.platform.clone().unwrap_or_default(),
        current: Some(pb::VersionInfo {
            version: d
                .current_version
                .clone()
                .or_else(|| d.file_version.map(|v| v.to_string()))
                .unwrap_or_default(),
            file_version: d.file_version,
            software_build_id: d.software_build_id.clone().unwrap_or_default(),
            date_code: d.date_code.clone().unwrap_or_default(),
        }),
        power_source: pb::PowerSource::from(d.power_source) as i32,
        battery_percent: d.battery_percent.map(u32::from),
        signal: d.signal.map(pb::Signal::from),
        reachable: d.reachable,
        supports_ota: d.supports_ota,
        hardware_version: d.hardware_version.map(u32::from),
        z2m_state: match d.z2m_state.as_deref() {
            Some("idle") => pb::Z2mUpdateState::Idle as i32,
            Some("available") => pb::Z2mUpdateState::Available as i32,
            Some("updating") => pb::Z2mUpdateState::Updating as i32,
            Some("scheduled") => pb::Z2mUpdateState::Scheduled as i32,
            _ => pb::Z2mUpdateState::Unspecified as i32,
        },
        last_seen_ms: d.last_seen_ms.unwrap_or_default(),
        tags: tags.to_vec(),
    }
}

/// A version on the wire.
pub fn version(v: &VersionInfo) -> pb::VersionInfo {
    pb::VersionInfo {
        version: v
            .version
            .clone()
            .or_else(|| v.file_version.map(|f| f.to_string()))
            .unwrap_or_default(),
        file_version: v.file_version,
        software_build_id: v.software_build_id.clone().unwrap_or_default(),
        date_code: v.date_code.clone().unwrap_or_default(),
    }
}

/// An error on the wire.
pub fn error(e: &TaskError) -> pb::TaskError {
    pb::TaskError::from(e)
}

/// A success's health on the wire.
pub fn health(h: ota_domain::health::Health) -> i32 {
    pb::TaskHealth::from(h) as i32
}

//! What the simulated devices run, kept in `<data dir>/simulators.json` so that a restarted
//! quickstart finds its devices on the versions they were updated to, as real devices would be.
//!
//! What it does: load the file (missing or unreadable: every device starts on its first
//! version), take a snapshot of the running simulators, and write it atomically (temporary file,
//! fsync, rename) when it changed.
//! What it does not do: keep anything else of a simulator (uploads received, boots, faults).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name under the data directory.
pub(crate) const FILE: &str = "simulators.json";

/// The versions the simulated devices run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SimState {
    /// ESPHome devices by node name.
    #[serde(default)]
    pub esphome: BTreeMap<String, EspState>,
    /// Zigbee devices by IEEE address.
    #[serde(default)]
    pub zigbee: BTreeMap<String, ZigbeeState>,
}

/// What an ESPHome device runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EspState {
    /// Project version.
    pub version: String,
    /// Project name.
    pub project: String,
}

/// What a Zigbee device runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ZigbeeState {
    /// Installed OTA file version.
    pub file_version: u32,
    /// genBasic swBuildId.
    pub software_build_id: Option<String>,
}

impl SimState {
    /// Reads the file in `dir`; a missing file is an empty state, a damaged one is reported and
    /// ignored (the devices then start on their first versions).
    pub fn load(dir: &Path) -> SimState {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring the simulators' saved versions");
                SimState::default()
            }),
            Err(_) => SimState::default(),
        }
    }

    /// Writes the state to `dir` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(FILE);
        let tmp: PathBuf = dir.join(format!("{FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SimState::load(dir.path()), SimState::default());
        let mut s = SimState::default();
        s.esphome.insert(
            "kitchen-plug".into(),
            EspState {
                version: "1.1.0".into(),
                project: "acme.smart-plug".into(),
            },
        );
        s.zigbee.insert(
            "0x000b57fffe3a1c00".into(),
            ZigbeeState {
                file_version: 7,
                software_build_id: None,
            },
        );
        s.save(dir.path()).unwrap();
        assert_eq!(SimState::load(dir.path()), s);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(SimState::load(dir.path()), SimState::default());
    }
}

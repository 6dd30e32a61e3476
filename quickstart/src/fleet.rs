//! The simulated site: which devices exist, what they run, and how their simulators and the
//! agent's configuration are built from that.
//!
//! What it does: names every device deterministically from its index (so a restart finds the
//! same devices, never new ones), describes the Zigbee models (one per manufacturer code,
//! because zigbee2mqtt does not publish a device's OTA image type and firmware is matched by
//! manufacturer code) and the ESPHome kinds (an ESP32 multisensor, an ESP8266 smart plug with
//! an OTA password, an ESP32 multisensor whose API and OTA are Noise-encrypted), and renders the
//! agent's TOML configuration for them.
//!
//! What it does not do: start anything (see the crate root) or talk to otad.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use ota_sim::esphome::Platform;
use ota_sim::esphome_node::NodeConfig;
use ota_sim::z2m::SimDevice;

use crate::state::SimState;

/// The OTA password of the ESPHome devices that have one. A demonstration value for simulated
/// devices on loopback; it appears only in the agent's configuration.
pub(crate) const DEMO_OTA_PASSWORD: &str = "quickstart-ota-password";

/// The Noise key (`api: encryption: key:`) of the encrypted ESPHome devices; demonstration only.
pub(crate) const DEMO_NOISE_KEY: [u8; 32] = *b"ota-quickstart-demo-noise-key-32";

/// The zigbee2mqtt network name at the site.
pub(crate) const ZIGBEE_NETWORK: &str = "zigbee";

/// A Zigbee device model with the firmware it runs and the newer sample firmware for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZigbeeModel {
    /// Suffix of friendly names ("bulb").
    pub kind: &'static str,
    /// genBasic modelId.
    pub model_id: &'static str,
    /// genBasic manufacturerName.
    pub manufacturer: &'static str,
    /// zigbee2mqtt's definition model (what the site reports as the model).
    pub model: &'static str,
    /// zigbee2mqtt's definition vendor.
    pub vendor: &'static str,
    /// Manufacturer code of its OTA images.
    pub manufacturer_code: u16,
    /// OTA image type.
    pub image_type: u16,
    /// The OTA file version it runs at first start, and the matching swBuildId.
    pub installed: (u32, &'static str),
    /// The sample firmware: catalog name, human version, file version.
    pub firmware: (&'static str, &'static str, u32),
    /// First 10 hex digits of its IEEE addresses (the vendor's OUI and more).
    pub ieee_prefix: &'static str,
    /// Battery powered and asleep most of the time.
    pub sleepy: bool,
}

/// Mains-powered routers, one model per manufacturer code.
pub(crate) const MAINS_MODELS: [ZigbeeModel; 3] = [
    ZigbeeModel {
        kind: "bulb",
        model_id: "TRADFRI bulb E27 CWS opal 600lm",
        manufacturer: "IKEA of Sweden",
        model: "LED1624G9",
        vendor: "IKEA",
        manufacturer_code: 0x117C,
        image_type: 0x2803,
        installed: (0x2309_3620, "2.3.093"),
        firmware: ("ikea-led1624g9", "2.3.095", 0x2309_5631),
        ieee_prefix: "000b57fffe",
        sleepy: false,
    },
    ZigbeeModel {
        kind: "hue-bulb",
        model_id: "LCA001",
        manufacturer: "Signify Netherlands B.V.",
        model: "9290022166",
        vendor: "Philips",
        manufacturer_code: 0x100B,
        image_type: 0x0117,
        installed: (0x0100_1D00, "1.93.11"),
        firmware: ("hue-lca001", "1.104.2", 0x0100_2400),
        ieee_prefix: "0017880109",
        sleepy: false,
    },
    ZigbeeModel {
        kind: "plug",
        model_id: "PLUG OUTDOOR EU T",
        manufacturer: "LEDVANCE",
        model: "AC26940",
        vendor: "LEDVANCE",
        manufacturer_code: 0x1189,
        image_type: 0x00C5,
        installed: (0x0031_2310, "V1.3.10"),
        firmware: ("ledvance-ac26940", "1.3.12", 0x0031_2312),
        ieee_prefix: "f0d1b80000",
        sleepy: false,
    },
];

/// Battery end devices that sleep between wake-ups, one model per manufacturer code.
pub(crate) const SLEEPY_MODELS: [ZigbeeModel; 2] = [
    ZigbeeModel {
        kind: "thermostat",
        model_id: "eTRV0100",
        manufacturer: "Danfoss",
        model: "014G2461",
        vendor: "Danfoss",
        manufacturer_code: 0x1246,
        image_type: 0x0001,
        installed: (0x0108_0000, "01.08.0008"),
        firmware: ("danfoss-014g2461", "01.09.0000", 0x0109_0000),
        ieee_prefix: "0014d2ff00",
        sleepy: true,
    },
    ZigbeeModel {
        kind: "sensor",
        model_id: "SNZB-02P",
        manufacturer: "SONOFF",
        model: "SNZB-02P",
        vendor: "SONOFF",
        manufacturer_code: 0x1286,
        image_type: 0x2206,
        installed: (0x0000_1001, "1.0.1"),
        firmware: ("sonoff-snzb-02p", "1.0.4", 0x0000_1004),
        ieee_prefix: "00124b002a",
        sleepy: true,
    },
];

/// How an ESPHome device is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EspAuth {
    /// Nothing (an open LAN device).
    None,
    /// An OTA password.
    Password,
    /// `api: encryption: key:` and `ota: encryption:`.
    Noise,
}

/// An ESPHome device kind with the project it runs and the sample firmware for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EspKind {
    /// Suffix of node names.
    pub kind: &'static str,
    /// Platform.
    pub platform: Platform,
    /// The board (what the API reports as the model).
    pub board: &'static str,
    /// `esphome: project: name:`.
    pub project: &'static str,
    /// The sample firmware: catalog name and project version.
    pub firmware: (&'static str, &'static str),
}

/// The ESP32 multisensor.
pub(crate) const MULTISENSOR: EspKind = EspKind {
    kind: "multisensor",
    platform: Platform::Esp32,
    board: "esp32dev",
    project: "acme.multisensor",
    firmware: ("multisensor-esp32", "1.1.0"),
};

/// The ESP8266 smart plug.
pub(crate) const SMART_PLUG: EspKind = EspKind {
    kind: "plug",
    platform: Platform::Esp8266,
    board: "esp01_1m",
    project: "acme.smart-plug",
    firmware: ("smart-plug-esp8266", "1.1.0"),
};

/// The project version every ESPHome device runs at first start.
pub(crate) const ESP_INSTALLED_VERSION: &str = "1.0.0";

const ROOMS: [&str; 8] = [
    "living-room",
    "kitchen",
    "office",
    "porch",
    "bedroom",
    "garage",
    "attic",
    "garden",
];

/// A room for device `i`, unique per kind: `kitchen`, …, then `kitchen-2`.
fn room(i: usize) -> String {
    match i / ROOMS.len() {
        0 => ROOMS[i % ROOMS.len()].to_string(),
        n => format!("{}-{}", ROOMS[i % ROOMS.len()], n + 1),
    }
}

/// One planned ESPHome device.
#[derive(Debug, Clone)]
pub(crate) struct EspDevice {
    /// Node name, the device's local id.
    pub name: String,
    /// What it is.
    pub kind: EspKind,
    /// How it is protected.
    pub auth: EspAuth,
}

/// One planned Zigbee device.
#[derive(Debug, Clone)]
pub(crate) struct ZigbeeDevice {
    /// IEEE address, the device's local id.
    pub ieee: String,
    /// zigbee2mqtt friendly name.
    pub friendly_name: String,
    /// What it is.
    pub model: ZigbeeModel,
}

/// The ESPHome devices: a multisensor, a smart plug with an OTA password, an encrypted
/// multisensor, a multisensor, and again.
pub(crate) fn esphome_devices(n: usize) -> Vec<EspDevice> {
    (0..n)
        .map(|i| {
            let (kind, auth) = match i % 4 {
                0 => (MULTISENSOR, EspAuth::None),
                1 => (SMART_PLUG, EspAuth::Password),
                2 => (MULTISENSOR, EspAuth::Noise),
                _ => (MULTISENSOR, EspAuth::None),
            };
            EspDevice {
                name: format!("{}-{}", room(i), kind.kind),
                kind,
                auth,
            }
        })
        .collect()
}

/// `mains` routers cycling through [`MAINS_MODELS`], then `sleepy` end devices cycling through
/// [`SLEEPY_MODELS`].
pub(crate) fn zigbee_devices(mains: usize, sleepy: usize) -> Vec<ZigbeeDevice> {
    let mut out = Vec::new();
    for (models, count, room_offset) in [
        (&MAINS_MODELS[..], mains, 0),
        (&SLEEPY_MODELS[..], sleepy, 3),
    ] {
        for i in 0..count {
            let model = models[i % models.len()];
            let serial = 0x3a_1c00 + (i as u32) * 0x1_0101 + room_offset * 0x77;
            out.push(ZigbeeDevice {
                ieee: format!("0x{}{:06x}", model.ieee_prefix, serial & 0xFF_FFFF),
                friendly_name: format!("{}-{}", room(i + room_offset as usize), model.kind),
                model,
            });
        }
    }
    out
}

/// The simulator of an ESPHome device, on loopback ports, running what `state` says it ran
/// when the quickstart last stopped.
pub(crate) fn esphome_node(d: &EspDevice, state: &SimState, reboot: Duration) -> NodeConfig {
    let mut c = NodeConfig::new(d.name.clone(), d.kind.platform);
    match d.auth {
        EspAuth::None => {}
        EspAuth::Password => c.ota.password = Some(DEMO_OTA_PASSWORD.into()),
        EspAuth::Noise => c = c.encrypted(DEMO_NOISE_KEY, true),
    }
    let (version, project) = state
        .esphome
        .get(&d.name)
        .map(|s| (s.version.clone(), s.project.clone()))
        .unwrap_or_else(|| (ESP_INSTALLED_VERSION.into(), d.kind.project.into()));
    c.ota.version = version;
    c.ota.project_name = project;
    c.ota.reboot_time = reboot;
    c.api.board = d.kind.board.into();
    c.api.friendly_name = d.name.replace('-', " ");
    c
}

/// The zigbee2mqtt simulator's device, with what `state` says it ran when the quickstart last
/// stopped.
pub(crate) fn zigbee_sim_device(d: &ZigbeeDevice, state: &SimState, wake: Duration) -> SimDevice {
    let m = d.model;
    let base = if m.sleepy {
        SimDevice::sleepy_end_device(&d.ieee, &d.friendly_name, Some(wake))
    } else {
        SimDevice::mains_router(&d.ieee, &d.friendly_name)
    };
    let (file_version, sw) = match state.zigbee.get(&d.ieee) {
        Some(s) => (s.file_version, s.software_build_id.clone()),
        None => (m.installed.0, Some(m.installed.1.to_string())),
    };
    SimDevice {
        model_id: m.model_id.into(),
        manufacturer: m.manufacturer.into(),
        model: m.model.into(),
        vendor: m.vendor.into(),
        software_build_id: sw,
        announce_after: Some(Duration::from_secs(1)),
        ..base
            .with_image_ids(m.manufacturer_code, m.image_type)
            .with_file_version(file_version)
    }
}

/// The agent's configuration file for this site, as an operator would write it.
pub(crate) fn agent_toml(
    site: &str,
    server: &str,
    agent_dir: &std::path::Path,
    esphome: &[(EspDevice, u16, u16)],
    broker: (&str, u16),
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Generated by ota-quickstart at every start: the simulated devices listen on new\n\
         # loopback ports each time. The passwords and keys are the simulators' demo values.\n\
         site_id = {site:?}\nserver = {server:?}\ndata_dir = {:?}\ntimezone = \"UTC\"\n\
         utc_offset_minutes = 0\n\n[reconnect]\nmin = \"200ms\"\nmax = \"5s\"\n",
        agent_dir.display().to_string()
    );
    let _ = writeln!(
        t,
        "[[zigbee2mqtt]]\nnetwork = {ZIGBEE_NETWORK:?}\nhost = {:?}\nport = {}\n\
         [zigbee2mqtt.image_endpoint]\nbind = \"127.0.0.1:0\"\n\
         [zigbee2mqtt.timeouts]\nrequest = \"10s\"\ncompletion_grace = \"3s\"\nreconnect_delay = \"500ms\"\n",
        broker.0, broker.1
    );
    let _ = writeln!(
        t,
        "[esphome]\nconnect_timeout = \"5s\"\nhandshake_timeout = \"5s\"\ndata_timeout = \"10s\"\n\
         reboot_timeout = \"30s\"\nreboot_poll = \"200ms\"\nreboot_settle = \"5s\"\n\
         retry_delay = \"1s\"\ninventory_interval = \"30s\"\n"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for (d, ota_port, api_port) in esphome {
        let _ = writeln!(
            t,
            "[[esphome.device]]\nname = {:?}\nhost = \"127.0.0.1\"\nplatform = {:?}\nchip = {:?}\n\
             port = {ota_port}\napi_port = {api_port}\ntags = [{:?}]",
            d.name,
            d.kind.platform.name(),
            d.kind.platform.name(),
            d.kind.kind,
        );
        match d.auth {
            EspAuth::None => {}
            EspAuth::Password => {
                let _ = writeln!(t, "password = {DEMO_OTA_PASSWORD:?}");
            }
            EspAuth::Noise => {
                let _ = writeln!(t, "api_key = {:?}", b64.encode(DEMO_NOISE_KEY));
            }
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stable() {
        let z = zigbee_devices(12, 9);
        let mut ieees: Vec<_> = z.iter().map(|d| d.ieee.clone()).collect();
        let mut names: Vec<_> = z.iter().map(|d| d.friendly_name.clone()).collect();
        ieees.sort();
        ieees.dedup();
        names.sort();
        names.dedup();
        assert_eq!((ieees.len(), names.len()), (21, 21));
        assert!(z.iter().all(|d| d.ieee.len() == 18), "{z:?}");
        assert_eq!(zigbee_devices(12, 9)[5].ieee, z[5].ieee);
        let e = esphome_devices(20);
        let mut names: Vec<_> = e.iter().map(|d| d.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 20);
    }

    #[test]
    fn models_have_distinct_manufacturer_codes() {
        let mut codes: Vec<u16> = MAINS_MODELS
            .iter()
            .chain(SLEEPY_MODELS.iter())
            .map(|m| m.manufacturer_code)
            .collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), MAINS_MODELS.len() + SLEEPY_MODELS.len());
        for m in MAINS_MODELS.iter().chain(SLEEPY_MODELS.iter()) {
            assert!(
                m.firmware.2 > m.installed.0,
                "{}: the sample must be newer",
                m.model
            );
        }
    }

    #[test]
    fn the_agent_configuration_parses() {
        let devices: Vec<_> = esphome_devices(4)
            .into_iter()
            .map(|d| (d, 3232, 6053))
            .collect();
        let text = agent_toml(
            "home",
            "http://127.0.0.1:7600",
            std::path::Path::new("/tmp/agent"),
            &devices,
            ("127.0.0.1", 1883),
        );
        let c = ota_agent::config::AgentConfig::parse(&text).unwrap();
        assert_eq!(c.esphome.as_ref().unwrap().devices.len(), 4);
        assert_eq!(c.zigbee2mqtt.len(), 1);
        assert!(!format!("{c:?}").contains(DEMO_OTA_PASSWORD));
    }
}

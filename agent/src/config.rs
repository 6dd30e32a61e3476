//! The agent's configuration file (TOML).
//!
//! ```toml
//! site_id = "home"                      # this site; must match its certificate when TLS is on
//! server = "https://otad.example:7600"  # where otad listens (http:// only for development)
//! data_dir = "/var/lib/ota-agent"       # journal and agent id
//! # timezone = "Europe/Berlin"          # default: the system's zone
//! # utc_offset_minutes = 60             # default: the system's current offset
//! # metrics_listen = "127.0.0.1:9601"   # Prometheus /metrics (see crate::metrics); default: none
//!
//! [reconnect]                           # exponential backoff with full jitter
//! min = "500ms"
//! max = "30s"
//!
//! [tls]                                 # required with https://; see crate::tls
//! ca = "ca.pem"
//! cert = "site.pem"
//! key = "site.key"
//!
//! [trust]                               # signed firmware; see crate::trust
//! [trust.key_files]
//! release = "release.pub"
//!
//! [tags]                                # labels per device local id, for rollout selectors
//! "0x000b57fffec6a5b2" = ["hall", "floor-1"]
//!
//! [[zigbee2mqtt]]                       # one per zigbee2mqtt instance; see transport::zigbee
//! network = "ground-floor"
//! host = "127.0.0.1"
//!
//! [esphome]                             # see transport::esphome
//! [[esphome.device]]
//! name = "kitchen-plug"
//! host = "192.168.1.40"
//! platform = "esp32"
//!
//! [serial]                              # see transport::serial::config
//! [[serial.port]]
//! name = "bench-esp32"
//! port = "/dev/ttyUSB0"
//! chip = "esp32"
//!
//! [telemetry]                           # logs and traces; see ota_telemetry::traces
//! otlp_endpoint = "http://127.0.0.1:4317"  # default: OTEL_EXPORTER_OTLP_ENDPOINT, else no export
//! service_name = "ota-agent"            # default: OTEL_SERVICE_NAME, else "ota-agent"
//! sample_ratio = 1.0                    # new traces only; commands from otad follow its decision
//! log_format = "text"                   # or "json"
//! [telemetry.resource_attributes]       # ota.site.id is always added
//! "deployment.environment" = "prod"
//! ```
//!
//! Loading parses and validates everything and reports every problem at once; it opens no
//! sockets (it reads the trusted key files). Relative paths in `[tls]` and `[trust]` are
//! relative to the config file's directory. Secrets stay in this file or in files it names;
//! they never go to the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::tls::TlsConfig;
use crate::transport::esphome::EsphomeConfig;
use crate::transport::serial::SerialConfig;
use crate::transport::zigbee::ZigbeeConfig;
use crate::trust::{TrustConfig, TrustPolicy};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This site's id.
    pub site_id: String,
    /// otad's URL (`http://` or `https://`).
    pub server: String,
    /// Journal and agent id directory.
    pub data_dir: PathBuf,
    /// IANA zone; default: the system's.
    #[serde(default)]
    pub timezone: Option<String>,
    /// UTC offset in minutes; default: the system's current offset.
    #[serde(default)]
    pub utc_offset_minutes: Option<i32>,
    /// Prometheus scrape endpoint (`GET /metrics`), if any.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: Reconnect,
    /// Tags per device local id.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    /// Serial ports (`[serial]`, see `transport::serial::config`).
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// ESPHome devices (`[esphome]` with `[[esphome.device]]`, see `transport::esphome`).
    #[serde(default)]
    pub esphome: Option<EsphomeConfig>,
    /// zigbee2mqtt networks (`[[zigbee2mqtt]]`, one per zigbee2mqtt instance, see
    /// `transport::zigbee::config`).
    #[serde(default, alias = "zigbee")]
    pub zigbee2mqtt: Vec<ZigbeeConfig>,
    /// Client certificate and server CA (with an `https://` server).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Trusted firmware signing keys and the site's policy.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Logs and traces (`[telemetry]`).
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// Directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[telemetry]`: logs and traces. Set values win over the standard `OTEL_*` variables, which
/// fill the rest (see `ota_telemetry::traces`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name`; default `OTEL_SERVICE_NAME`, else `ota-agent`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of new traces to sample (0.0–1.0); work for otad's commands follows otad's decision.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// Log output: `text` or `json`.
    #[serde(default)]
    pub log_format: ota_telemetry::traces::LogFormat,
    /// Extra resource attributes; `ota.site.id` is always the site's id.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
}

/// The agent's default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "ota-agent";

/// Reconnect backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    /// First delay.
    #[serde(default = "default_min", with = "humantime_serde_compat")]
    pub min: Duration,
    /// Longest delay.
    #[serde(default = "default_max", with = "humantime_serde_compat")]
    pub max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            min: default_min(),
            max: default_max(),
        }
    }
}

fn default_min() -> Duration {
    Duration::from_millis(500)
}

fn default_max() -> Duration {
    Duration::from_secs(30)
}

/// Durations as humantime strings ("500ms", "30s").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like \"30s\": {e}"))
        })
    }
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid agent configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl AgentConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::parse_in(&text, base).map_err(|mut e| {
            for line in &mut e.0 {
                *line = format!("{}: {line}", path.display());
            }
            e
        })
    }

    /// Parses and validates TOML text (relative paths: from the current directory).
    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        Self::parse_in(text, Path::new("."))
    }

    /// Parses and validates TOML text; relative paths are resolved against `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        cfg.base_dir = base.to_path_buf();
        let mut errors = Vec::new();
        let site_ok = !cfg.site_id.is_empty()
            && cfg.site_id.len() <= 64
            && cfg
                .site_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !cfg.site_id.starts_with('.');
        if !site_ok {
            errors.push(format!(
                "site_id {:?} is not valid: 1-64 letters, digits, '-', '_' or '.'",
                cfg.site_id
            ));
        }
        if !(cfg.server.starts_with("http://") || cfg.server.starts_with("https://")) {
            errors.push(format!(
                "server {:?} must be a URL starting with http:// or https://",
                cfg.server
            ));
        }
        match (cfg.server.starts_with("https://"), &cfg.tls) {
            (true, None) => errors.push(
                "server is https:// but [tls] is missing: agents authenticate with a client certificate (cert, key; `otactl pki issue-site <site_id>`)".into(),
            ),
            (false, Some(_)) if cfg.server.starts_with("http://") => errors.push(
                "[tls] is set but server is http://: use https:// (plaintext only against a development otad)".into(),
            ),
            _ => {}
        }
        if let Err(e) = cfg.trust.resolve(base) {
            errors.extend(e);
        }
        if cfg.reconnect.min.is_zero() || cfg.reconnect.max < cfg.reconnect.min {
            errors.push("reconnect: min must be > 0 and max >= min".into());
        }
        if let Some(off) = cfg.utc_offset_minutes
            && !(-14 * 60..=14 * 60).contains(&off)
        {
            errors.push(format!("utc_offset_minutes {off} is outside -840..=840"));
        }
        if let Some(zone) = &cfg.timezone
            && !looks_like_iana_zone(zone)
        {
            errors.push(format!(
                "timezone {zone:?} is not an IANA zone name (like \"Europe/Berlin\" or \"UTC\"); \
                 otad opens maintenance windows in this zone"
            ));
        }
        if let Some(serial) = &cfg.serial
            && let Err(e) = serial.validate()
        {
            errors.push(format!("serial: {e}"));
        }
        if let Some(esphome) = &cfg.esphome
            && let Err(e) = esphome.validate()
        {
            errors.push(format!("esphome: {e}"));
        }
        if let Err(e) = cfg
            .tracing_config()
            .resolve_with(DEFAULT_SERVICE_NAME, |_| None)
        {
            errors.extend(e.into_iter().map(|e| format!("telemetry: {e}")));
        }
        let mut networks = std::collections::HashSet::new();
        for z in &cfg.zigbee2mqtt {
            if z.network.is_empty() || !networks.insert(z.network.as_str()) {
                errors.push(format!(
                    "zigbee2mqtt: network names must be unique and non-empty ({:?})",
                    z.network
                ));
            }
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// The `[telemetry]` section as tracing configuration, with `ota.site.id` in the resource.
    pub fn tracing_config(&self) -> ota_telemetry::traces::TracingConfig {
        let t = &self.telemetry;
        let mut resource_attributes = t.resource_attributes.clone();
        resource_attributes.insert("ota.site.id".into(), self.site_id.clone());
        ota_telemetry::traces::TracingConfig {
            log_format: t.log_format,
            service_name: t.service_name.clone(),
            otlp_endpoint: t.otlp_endpoint.clone(),
            sample_ratio: t.sample_ratio,
            resource_attributes,
        }
    }

    /// The site's firmware trust policy (keys read again from their files).
    pub fn trust_policy(&self) -> Result<TrustPolicy, ConfigError> {
        self.trust.resolve(&self.base_dir).map_err(ConfigError)
    }

    /// The site's IANA zone name, reported in the hello (otad opens maintenance windows in it):
    /// configured, or the system's (`iana-time-zone`), or "UTC".
    pub fn timezone(&self) -> String {
        self.timezone
            .clone()
            .or_else(|| iana_time_zone::get_timezone().ok())
            .unwrap_or_else(|| "UTC".into())
    }

    /// The site's UTC offset now, in minutes.
    pub fn utc_offset_minutes(&self) -> i32 {
        self.utc_offset_minutes.unwrap_or_else(|| {
            use chrono::Offset;
            chrono::Local::now().offset().fix().local_minus_utc() / 60
        })
    }
}

/// Whether `zone` has the shape of an IANA zone name (`Europe/Berlin`, `UTC`,
/// `America/Argentina/Buenos_Aires`, `Etc/GMT+2`); the zone database itself is otad's.
fn looks_like_iana_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 64
        && zone.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c))
        })
        && zone.starts_with(|c: char| c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezones_are_iana_names() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+2",
            "America/Port-au-Prince",
        ] {
            assert!(looks_like_iana_zone(ok), "{ok}");
        }
        for bad in [
            "",
            "+01:00",
            "europe/berlin",
            "Europe//Berlin",
            "Europe/../x",
            "CET 1",
        ] {
            assert!(!looks_like_iana_zone(bad), "{bad}");
        }
        let c = AgentConfig::parse(
            "site_id = \"home\"\nserver = \"http://127.0.0.1:7600\"\ndata_dir = \"/tmp/x\"\ntimezone = \"+01:00\"\n",
        );
        assert!(format!("{:?}", c.unwrap_err()).contains("IANA"));
        let c = AgentConfig::parse(
            "site_id = \"home\"\nserver = \"http://127.0.0.1:7600\"\ndata_dir = \"/tmp/x\"\ntimezone = \"Europe/Berlin\"\n",
        )
        .unwrap();
        assert_eq!(c.timezone(), "Europe/Berlin");
    }

    #[test]
    fn minimal_config() {
        let c = AgentConfig::parse(
            "site_id = \"home\"\nserver = \"http://127.0.0.1:7600\"\ndata_dir = \"/tmp/x\"\n",
        )
        .unwrap();
        assert_eq!(c.reconnect.min, Duration::from_millis(500));
        assert!(c.serial.is_none());
        assert!(!c.timezone().is_empty());
    }

    #[test]
    fn every_transport_section_parses() {
        let c = AgentConfig::parse(
            r#"
site_id = "home"
server = "http://127.0.0.1:7600"
data_dir = "/tmp/x"

[[zigbee2mqtt]]
network = "ground-floor"
host = "127.0.0.1"
password = "mqtt-secret"

[esphome]
[[esphome.device]]
name = "kitchen-plug"
host = "192.168.1.40"
platform = "esp32"
password = "ota-secret"
tags = ["kitchen"]

[serial]
[[serial.port]]
name = "bench"
port = "/dev/ttyUSB0"
chip = "esp32"
"#,
        )
        .unwrap();
        assert_eq!(c.zigbee2mqtt.len(), 1);
        assert_eq!(c.esphome.as_ref().unwrap().devices.len(), 1);
        assert_eq!(c.serial.as_ref().unwrap().ports.len(), 1);
        let dump = format!("{c:?}");
        assert!(
            !dump.contains("mqtt-secret") && !dump.contains("ota-secret"),
            "{dump}"
        );
        let dup = AgentConfig::parse(
            "site_id=\"a\"\nserver=\"http://x\"\ndata_dir=\"/t\"\n[[zigbee2mqtt]]\nnetwork=\"n\"\nhost=\"h\"\n[[zigbee2mqtt]]\nnetwork=\"n\"\nhost=\"h\"\n",
        )
        .unwrap_err();
        assert!(dup.to_string().contains("unique"), "{dup}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = AgentConfig::parse(
            "site_id = \"../x\"\nserver = \"otad:7600\"\ndata_dir = \"/tmp/x\"\nutc_offset_minutes = 2000\n[reconnect]\nmin = \"5s\"\nmax = \"1s\"\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn https_needs_a_client_certificate_and_http_none() {
        let e =
            AgentConfig::parse("site_id=\"a\"\nserver=\"https://otad:7600\"\ndata_dir=\"/t\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("[tls] is missing"), "{e}");
        let e = AgentConfig::parse(
            "site_id=\"a\"\nserver=\"http://otad:7600\"\ndata_dir=\"/t\"\n[tls]\ncert=\"c.pem\"\nkey=\"k.pem\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("use https://"), "{e}");
        let ok = AgentConfig::parse_in(
            "site_id=\"a\"\nserver=\"https://otad:7600\"\ndata_dir=\"/t\"\n[tls]\nca=\"ca.pem\"\ncert=\"c.pem\"\nkey=\"k.pem\"\n",
            Path::new("/etc/ota-agent"),
        )
        .unwrap();
        assert_eq!(ok.base_dir, PathBuf::from("/etc/ota-agent"));
        assert!(!ok.trust_policy().unwrap().require_signed());
    }

    #[test]
    fn trust_keys_make_signatures_required() {
        use base64::Engine as _;
        let public = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes();
        let c = AgentConfig::parse(&format!(
            "site_id=\"a\"\nserver=\"http://x\"\ndata_dir=\"/t\"\n[trust.keys]\nrelease = \"{}\"\n",
            base64::engine::general_purpose::STANDARD.encode(public)
        ))
        .unwrap();
        let p = c.trust_policy().unwrap();
        assert!(p.require_signed());
        assert_eq!(p.key_ids(), ["release"]);
        let e = AgentConfig::parse(
            "site_id=\"a\"\nserver=\"http://x\"\ndata_dir=\"/t\"\n[trust]\nrequire_signed = true\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least one key"), "{e}");
    }

    #[test]
    fn telemetry_section() {
        let base = "site_id=\"home\"\nserver=\"http://x\"\ndata_dir=\"/t\"\n";
        let c = AgentConfig::parse(base).unwrap();
        assert_eq!(c.telemetry, TelemetrySection::default());
        let r = c
            .tracing_config()
            .resolve_with(DEFAULT_SERVICE_NAME, |_| None)
            .unwrap();
        assert_eq!(r.service_name, "ota-agent");
        assert_eq!(r.endpoint, None);
        assert_eq!(r.resource_attributes["ota.site.id"], "home");

        let c = AgentConfig::parse(&format!(
            "{base}[telemetry]\notlp_endpoint = \"http://collector:4317\"\nsample_ratio = 0.2\nlog_format = \"json\"\n[telemetry.resource_attributes]\nregion = \"eu\"\n\"ota.site.id\" = \"spoofed\"\n"
        ))
        .unwrap();
        // The environment does not override what the file sets.
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4317".to_string()),
            "OTEL_SERVICE_NAME" => Some("agent-from-env".to_string()),
            _ => None,
        };
        let r = c
            .tracing_config()
            .resolve_with(DEFAULT_SERVICE_NAME, env)
            .unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(r.service_name, "agent-from-env");
        assert_eq!(r.log_format, ota_telemetry::traces::LogFormat::Json);
        assert_eq!(r.resource_attributes["region"], "eu");
        assert_eq!(r.resource_attributes["ota.site.id"], "home");
        assert!(r.sampler.parent_based);

        let e = AgentConfig::parse(&format!(
            "{base}[telemetry]\nsample_ratio = 3.0\notlp_endpoint = \"collector:4317\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.0.iter().all(|l| l.starts_with("telemetry: ")), "{e}");
        assert!(AgentConfig::parse(&format!("{base}[telemetry]\nendpoint = \"x\"\n")).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        assert!(
            AgentConfig::parse("site_id=\"a\"\nserver=\"http://x\"\ndata_dir=\"/t\"\nsurver=1\n")
                .is_err()
        );
        let e = AgentConfig::parse(
            "site_id=\"a\"\nserver=\"http://x\"\ndata_dir=\"/t\"\n[reconnect]\nmin=\"soon\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }
}

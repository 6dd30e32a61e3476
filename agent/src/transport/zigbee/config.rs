//! Configuration of one zigbee2mqtt network (one zigbee2mqtt instance behind one MQTT broker).
//!
//! What it does: the serde shape of the agent's `[[zigbee]]` entries, with zigbee2mqtt's and
//! the transport's defaults, durations written like `30s` or `2m` (or plain seconds), and the
//! derived MQTT client id.
//! What it does not do: read files or open connections (the transport does, at start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::secret::Secret;

/// One zigbee2mqtt network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZigbeeConfig {
    /// The network's name at this site (also the transport's instance name).
    pub network: String,
    /// MQTT broker host.
    pub host: String,
    /// MQTT broker port (1883, or 8883 with TLS).
    #[serde(default = "default_port")]
    pub port: u16,
    /// zigbee2mqtt's `mqtt.base_topic`.
    #[serde(default = "default_base_topic")]
    pub base_topic: String,
    /// MQTT client id; default `ota-agent-<network>-<random>`. Only letters, digits, `-` and
    /// `_` are kept (some brokers refuse `/`, `+`, `#`, `$`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT username.
    #[serde(default)]
    pub username: Option<String>,
    /// MQTT password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// MQTT password read from this file at start (instead of `password`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// MQTT over TLS.
    #[serde(default)]
    pub tls: Option<MqttTls>,
    /// The HTTP endpoint zigbee2mqtt downloads images from (`url` requests). Without it, every
    /// image goes as `hex` inside the MQTT request.
    #[serde(default)]
    pub image_endpoint: Option<ImageEndpoint>,
    /// Images smaller than this many bytes go as `hex` in the request instead of by URL.
    #[serde(default = "default_hex_threshold")]
    pub hex_threshold: usize,
    /// Updates running at once on this network (zigbee2mqtt's advice: one).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_updates: usize,
    /// Schedule updates of sleepy devices (end devices on battery) for their next wake-up
    /// instead of updating now. A job may also ask for a schedule itself.
    #[serde(default = "default_true")]
    pub schedule_sleepy: bool,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: ZigbeeTimeouts,
}

/// MQTT over TLS (rustls).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that require one.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// The image endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEndpoint {
    /// Address to listen on (port 0: any free port).
    pub bind: SocketAddr,
    /// Base URL zigbee2mqtt uses to reach it (e.g. `http://10.0.0.5:8089`); default
    /// `http://<bound address>`.
    #[serde(default)]
    pub advertised_base_url: Option<String>,
}

/// How long to wait for what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZigbeeTimeouts {
    /// For the answer to a schedule, unschedule, abort or verification check.
    #[serde(deserialize_with = "duration")]
    pub request: Duration,
    /// After the state shows the target version, how long to wait for the update response
    /// (which carries the software build ids) before completing from the state alone.
    #[serde(deserialize_with = "duration")]
    pub completion_grace: Duration,
    /// MQTT keep-alive (at least one second).
    #[serde(deserialize_with = "duration")]
    pub keep_alive: Duration,
    /// Pause between reconnection attempts to the broker.
    #[serde(deserialize_with = "duration")]
    pub reconnect_delay: Duration,
}

impl Default for ZigbeeTimeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(30),
            completion_grace: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            reconnect_delay: Duration::from_secs(2),
        }
    }
}

impl ZigbeeConfig {
    /// A configuration with every default, for `network` on `host:port`.
    pub fn new(network: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            network: network.into(),
            host: host.into(),
            port,
            base_topic: default_base_topic(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            image_endpoint: None,
            hex_threshold: default_hex_threshold(),
            max_concurrent_updates: default_max_concurrent(),
            schedule_sleepy: true,
            timeouts: ZigbeeTimeouts::default(),
        }
    }

    /// The MQTT client id to use; `random` makes the default unique per process.
    pub fn client_id_or(&self, random: &str) -> String {
        let raw = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("ota-agent-{}-{random}", self.network));
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }
}

fn default_port() -> u16 {
    1883
}

fn default_base_topic() -> String {
    ota_devproto::z2m::DEFAULT_BASE_TOPIC.to_string()
}

fn default_hex_threshold() -> usize {
    64 * 1024
}

fn default_max_concurrent() -> usize {
    1
}

fn default_true() -> bool {
    true
}

/// A duration as `"30s"`, `"2m"`, `"1h 30m"` (humantime) or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let c: ZigbeeConfig = toml::from_str(
            r#"
            network = "barn"
            host = "mqtt.local"
            password = "pw"
            [image_endpoint]
            bind = "0.0.0.0:8089"
            advertised_base_url = "http://10.0.0.5:8089"
            [timeouts]
            request = "45s"
            reconnect_delay = 1
            "#,
        )
        .unwrap();
        assert_eq!((c.port, c.base_topic.as_str()), (1883, "zigbee2mqtt"));
        assert_eq!(c.max_concurrent_updates, 1);
        assert!(c.schedule_sleepy);
        assert_eq!(c.timeouts.request, Duration::from_secs(45));
        assert_eq!(c.timeouts.reconnect_delay, Duration::from_secs(1));
        assert_eq!(c.timeouts.completion_grace, Duration::from_secs(10));
        assert_eq!(format!("{:?}", c.password), "Some(<redacted>)");
        assert_eq!(c.client_id_or("ab12"), "ota-agent-barn-ab12");
        let mut c2 = c.clone();
        c2.client_id = Some("agent/barn#1".into());
        assert_eq!(c2.client_id_or("x"), "agent-barn-1");
        assert!(toml::from_str::<ZigbeeConfig>("network = 'x'\nhost = 'h'\nbogus = 1").is_err());
    }
}

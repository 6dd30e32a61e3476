//! Builds a site's transports from the configuration and runs their background loops
//! (inventory probing, bridge connections) until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentOptions;
use crate::config::AgentConfig;
use crate::transport::Transport;
use crate::transport::esphome::EsphomeTransport;
use crate::transport::serial::SerialTransport;
use crate::transport::zigbee::ZigbeeTransport;

/// How often serial ports are looked at.
const SERIAL_PROBE: Duration = Duration::from_secs(30);

/// The transports of a site and their background tasks.
#[derive(Debug)]
pub struct Site {
    /// Every transport instance.
    pub transports: Vec<Arc<dyn Transport>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Site {
    /// Builds the transports named in the configuration and starts their loops.
    pub async fn start(config: &AgentConfig, cancel: CancellationToken) -> anyhow::Result<Site> {
        let mut transports: Vec<Arc<dyn Transport>> = Vec::new();
        let mut tasks = Vec::new();
        if let Some(serial) = &config.serial {
            let t = Arc::new(SerialTransport::new(serial.clone())?);
            let bg = t.clone();
            let c = cancel.clone();
            tasks.push(tokio::spawn(async move {
                bg.run_inventory(SERIAL_PROBE, c).await
            }));
            transports.push(t);
        }
        if let Some(esphome) = &config.esphome {
            let every = esphome.inventory_interval;
            let t = Arc::new(EsphomeTransport::new_in(
                esphome.clone(),
                Some(config.base_dir.as_path()),
            )?);
            let bg = t.clone();
            let c = cancel.clone();
            tasks.push(tokio::spawn(
                async move { bg.run_inventory(every, c).await },
            ));
            transports.push(t);
        }
        for z in &config.zigbee2mqtt {
            // Connects in the background (and keeps reconnecting); fails only on configuration.
            let t = Arc::new(ZigbeeTransport::start(z.clone()).await?);
            transports.push(t);
        }
        Ok(Site { transports, tasks })
    }

    /// Tags from the configuration: `[tags]` plus those on ESPHome device entries.
    pub fn tags(config: &AgentConfig) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut tags = config.tags.clone();
        if let Some(esphome) = &config.esphome {
            for (device, t) in esphome.tags() {
                tags.entry(device).or_default().extend(t);
            }
        }
        tags
    }

    /// The agent's options from the configuration; `progress_interval` is the binary's choice.
    pub fn agent_options(config: &AgentConfig, progress_interval: Duration) -> AgentOptions {
        AgentOptions {
            site_id: config.site_id.clone(),
            data_dir: config.data_dir.clone(),
            timezone: config.timezone(),
            utc_offset_minutes: config.utc_offset_minutes(),
            reconnect_min: config.reconnect.min,
            reconnect_max: config.reconnect.max,
            tags: Self::tags(config),
            progress_interval,
        }
    }

    /// Waits for the background loops to end (after the cancel token fired).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

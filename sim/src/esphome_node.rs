//! A whole simulated ESPHome node: one [`DeviceModel`] behind its native OTA port
//! ([`EsphomeSim`]), its native API port ([`EsphomeApiSim`]) and, when configured, its
//! web_server with `/update` ([`EsphomeWebSim`]). Every port follows the device's power: an OTA
//! upload through either path reboots the device, all three ports go away for the reboot time and
//! come back on the same port numbers, and the API then reports the version the device runs.
//!
//! What it does not do: anything the three listeners do not (see their modules), or mDNS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use ota_devproto::esphome::NoiseKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::esphome::model::{DeviceModel, Power};
use crate::esphome::{Encryption, EsphomeConfig, EsphomeSim, Platform, listener};
use crate::esphome_api::{ApiConfig, EsphomeApiSim};
use crate::esphome_web::{EsphomeWebSim, WebConfig};

/// How the node is built.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The device and its native OTA port.
    pub ota: EsphomeConfig,
    /// The native API port.
    pub api: ApiConfig,
    /// The web_server (`None`: no web_server, like most devices).
    pub web: Option<WebConfig>,
}

impl NodeConfig {
    /// An ESPHome 2026.10 node without password, encryption or web_server, every port on
    /// `127.0.0.1:0`.
    pub fn new(name: impl Into<String>, platform: Platform) -> Self {
        Self {
            ota: EsphomeConfig::new(name, platform),
            api: ApiConfig::new(platform),
            web: None,
        }
    }

    /// Encrypts the API with `key` and offers (or, `required`, demands) it for OTA too, as
    /// `api: encryption: key:` (plus `ota: encryption:`) does.
    pub fn encrypted(mut self, key: [u8; 32], required: bool) -> Self {
        let k = NoiseKey::new(key);
        self.api.noise_key = Some(k.clone());
        self.ota.encryption = Some(if required {
            Encryption::Required(k)
        } else {
            Encryption::Offered(k)
        });
        self
    }
}

/// A running node. Dropping it stops every port.
#[derive(Debug)]
pub struct EsphomeNode {
    /// The native OTA port and the device model.
    pub ota: EsphomeSim,
    /// The native API port.
    pub api: EsphomeApiSim,
    /// The web_server, when configured.
    pub web: Option<EsphomeWebSim>,
}

impl EsphomeNode {
    /// Binds every port and starts serving. Must be called inside a tokio runtime.
    pub fn start(config: NodeConfig) -> io::Result<Self> {
        let ota = EsphomeSim::start(config.ota)?;
        let mut api_config = config.api;
        let web = match config.web {
            Some(w) => Some(EsphomeWebSim::start(ota.device().clone(), w)?),
            None => None,
        };
        if let Some(w) = &web
            && api_config.webserver_port == 0
        {
            api_config.webserver_port = w.addr().port();
        }
        let api = EsphomeApiSim::start(ota.device().clone(), api_config)?;
        Ok(Self { ota, api, web })
    }

    /// The device: version, power, faults, uploads.
    pub fn device(&self) -> &DeviceModel {
        self.ota.device()
    }

    /// The native OTA address.
    pub fn ota_addr(&self) -> SocketAddr {
        self.ota.ota_addr()
    }

    /// The native API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.addr()
    }

    /// The web_server address, when configured.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(EsphomeWebSim::addr)
    }
}

/// Serves `listener` while `model` is up and `enabled` is true, many connections at a time (as
/// ESPHome's API and web server do). When the device goes down every open connection is cut
/// (its task aborted, the socket closed) and the port is closed; when it is back the port is
/// bound again at the same address. Runs until the task is aborted.
pub(crate) fn serve_many_while_up<H, F>(
    model: DeviceModel,
    listener: TcpListener,
    mut enabled: watch::Receiver<bool>,
    what: &'static str,
    mut handler: H,
) -> JoinHandle<()>
where
    H: FnMut(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let Ok(addr) = listener.local_addr() else {
            tracing::warn!(what, "esphome sim: listener has no address");
            return;
        };
        let mut listener = Some(listener);
        let mut power = model.watch_power();
        let mut conns = JoinSet::new();
        loop {
            let up = *power.borrow_and_update() == Power::Up && *enabled.borrow_and_update();
            if !up {
                listener = None;
                conns.abort_all();
                tokio::select! {
                    r = power.changed() => if r.is_err() { return },
                    r = enabled.changed() => if r.is_err() { return },
                }
                continue;
            }
            let Some(l) = listener::kept_or_rebound(listener.take(), addr, what).await else {
                return;
            };
            tokio::select! {
                accepted = l.accept() => {
                    match accepted {
                        Ok((stream, peer)) => {
                            tracing::debug!(what, %peer, "esphome sim: connection");
                            conns.spawn(handler(stream, peer));
                        }
                        Err(e) => tracing::debug!(what, error = %e, "esphome sim: accept failed"),
                    }
                    listener = Some(l);
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => listener = Some(l),
                r = power.changed() => {
                    if r.is_err() {
                        return;
                    }
                    listener = Some(l);
                }
                r = enabled.changed() => {
                    if r.is_err() {
                        return;
                    }
                    listener = Some(l);
                }
            }
        }
    })
}

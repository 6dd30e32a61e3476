//! The tokio driver of the native API client (`ota_devproto::esphome_api`): connect, hello,
//! `DeviceInfo` (and, for an update's health window, the `uptime` sensor's first state),
//! disconnect, within one deadline. Also the plain "does the OTA port answer" probe.
//!
//! What it does not do: keep connections open, follow state changes, or decide what an answer
//! means for an update (that is the transport).

use std::io;
use std::time::Duration;

use ota_devproto::esphome::NoiseKey;
use ota_devproto::esphome_api::{
    ApiError, Client, ClientConfig, ClientEvent, DeviceInfoResponse, Message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};

/// Why a probe got no device info.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection could not be made.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("no TCP answer from {addr} within {after:?}")]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The API exchange failed.
    #[error("native API of {addr}: {source}")]
    Api {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: ApiError,
    },
}

impl ProbeError {
    /// A configuration problem (wrong or missing key) rather than a device that is away.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Api {
                source: ApiError::WrongKey
                    | ApiError::EncryptionRequired
                    | ApiError::DevicePlaintextOnly,
                ..
            }
        )
    }
}

/// Opens a TCP connection within `limit`.
pub async fn connect(host: &str, port: u16, limit: Duration) -> Result<TcpStream, ProbeError> {
    let addr = format!("{host}:{port}");
    match timeout(limit, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ProbeError::Connect { addr, source }),
        Err(_) => Err(ProbeError::ConnectTimeout { addr, after: limit }),
    }
}

/// Whether something accepts TCP connections on `host:port` within `limit` (the connection is
/// closed at once; an ESPHome OTA port simply sees a client leave).
pub async fn port_answers(host: &str, port: u16, limit: Duration) -> bool {
    connect(host, port, limit).await.is_ok()
}

/// Asks the device who it is and what it runs: connect within `connect_limit`, then hello,
/// `DeviceInfo` and disconnect within `exchange_limit`.
pub async fn device_info(
    host: &str,
    port: u16,
    key: Option<&NoiseKey>,
    connect_limit: Duration,
    exchange_limit: Duration,
) -> Result<DeviceInfoResponse, ProbeError> {
    let limits = (connect_limit, exchange_limit);
    exchange(host, port, key, limits, false)
        .await
        .map(|(info, _)| info)
}

/// As [`device_info`], and the device's uptime in seconds from its `uptime` sensor
/// (`ListEntities`, then `SubscribeStates` until the sensor's first state); `None` when the
/// firmware has no such sensor or it has no value yet.
pub async fn device_info_and_uptime(
    host: &str,
    port: u16,
    key: Option<&NoiseKey>,
    connect_limit: Duration,
    exchange_limit: Duration,
) -> Result<(DeviceInfoResponse, Option<u64>), ProbeError> {
    exchange(host, port, key, (connect_limit, exchange_limit), true).await
}

/// What one exchange found so far.
#[derive(Default)]
struct Found {
    info: Option<DeviceInfoResponse>,
    uptime_key: Option<u32>,
    uptime: Option<u64>,
    /// Everything asked for is here: the disconnect request is out.
    done: bool,
}

impl Found {
    /// Takes one message; returns the next request, if any. `done` once there is none.
    fn take(&mut self, m: Message, want_uptime: bool) -> Option<Message> {
        match m {
            Message::DeviceInfoResponse(i) => {
                self.info = Some(*i);
                if want_uptime {
                    return Some(Message::ListEntitiesRequest);
                }
                self.done = true;
            }
            Message::ListEntitiesSensorResponse(s) if s.is_uptime() => {
                self.uptime_key = Some(s.key);
            }
            Message::ListEntitiesDoneResponse if self.info.is_some() => match self.uptime_key {
                Some(_) => return Some(Message::SubscribeStatesRequest),
                None => self.done = true,
            },
            Message::SensorStateResponse(st) if Some(st.key) == self.uptime_key => {
                self.uptime = (!st.missing_state && st.state.is_finite() && st.state >= 0.0)
                    .then_some(st.state as u64);
                self.done = true;
            }
            _ => {}
        }
        None
    }
}

async fn exchange(
    host: &str,
    port: u16,
    key: Option<&NoiseKey>,
    (connect_limit, exchange_limit): (Duration, Duration),
    want_uptime: bool,
) -> Result<(DeviceInfoResponse, Option<u64>), ProbeError> {
    let addr = format!("{host}:{port}");
    let mut stream = connect(host, port, connect_limit).await?;
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + exchange_limit;
    let api = |source| ProbeError::Api {
        addr: addr.clone(),
        source,
    };
    let mut client = Client::new(
        ClientConfig {
            client_info: concat!("ota-agent ", env!("CARGO_PKG_VERSION")).into(),
            noise_key: key.cloned(),
        },
        rand::random(),
    );
    let mut found = Found::default();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(ev) = client.poll_event() {
            let next = match ev {
                ClientEvent::Connected(_) => Some(Message::DeviceInfoRequest),
                ClientEvent::Message(m) if !found.done => found.take(m, want_uptime),
                _ => None,
            };
            if let Some(next) = next {
                client.send(&next).map_err(api)?;
            } else if found.done && client.is_ready() {
                client.disconnect();
            }
        }
        while let Some(bytes) = client.poll_transmit() {
            // A device that went away mid-exchange shows up on the next read.
            if stream.write_all(&bytes).await.is_err() {
                break;
            }
        }
        if found.done
            && !client.is_ready()
            && let Some(i) = found.info.take()
        {
            // The disconnect request is out; its answer does not matter.
            let _ = stream.shutdown().await;
            return Ok((i, found.uptime));
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => client.handle_eof().map_err(api)?,
                Ok(n) => client.handle_input(&buf[..n]).map_err(api)?,
            },
            () = sleep_until(deadline) => client.handle_timeout().map_err(api)?,
        }
    }
}

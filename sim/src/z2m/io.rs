//! The simulator's real I/O: its MQTT connection (rumqttc) and HTTP GETs of image URLs.
//!
//! What it does: connect to the broker as zigbee2mqtt does (last will `bridge/state` offline,
//! retained), subscribe to the OTA request topics after every (re)connect, forward requests to
//! the bridge logic, publish what the logic hands over in order, disconnect on request; fetch
//! `http://` URLs (and local paths) for the images of update and schedule requests.
//! Everything here runs on the I/O runtime handed to the simulator, which must run on real time:
//! the bridge logic may run on a paused clock, and network waits must not be overtaken by it.
//!
//! What it does not do: interpret messages (see `bridge`), speak TLS to image servers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use ota_devproto::z2m::Topics;
use ota_devproto::z2m::devices::bridge_state_payload;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing as MqttOutgoing, Packet, QoS};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::z2m::config::Z2mSimConfig;

/// What the connection tells the bridge logic.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Subscribed after a (re)connect of link `generation`.
    Connected { generation: u64 },
    /// A message on a subscribed topic.
    Message {
        generation: u64,
        topic: String,
        payload: Bytes,
    },
}

/// What the bridge logic asks of the connection.
#[derive(Debug)]
pub(crate) enum LinkCmd {
    /// Publish (QoS 0, like zigbee2mqtt's default).
    Publish {
        topic: String,
        payload: String,
        retain: bool,
    },
    /// Disconnect cleanly, then report.
    Stop(oneshot::Sender<()>),
}

/// A running MQTT connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub tx: mpsc::UnboundedSender<LinkCmd>,
}

/// Largest MQTT packet either way: hex-encoded images are big.
pub(crate) const MAX_PACKET: usize = 64 * 1024 * 1024;

/// Connects link `generation` on `io`.
pub(crate) fn connect(
    io: &Handle,
    cfg: &Z2mSimConfig,
    topics: &Topics,
    generation: u64,
    incoming: mpsc::UnboundedSender<Incoming>,
) -> Link {
    let mut opts = MqttOptions::new(
        format!("{}-{generation}", cfg.client_id),
        cfg.broker_host.clone(),
        cfg.broker_port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_clean_session(true);
    if let Some((u, p)) = &cfg.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    opts.set_last_will(LastWill::new(
        topics.bridge_state(),
        bridge_state_payload(false),
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    let (tx, mut rx) = mpsc::unbounded_channel::<LinkCmd>();
    let filter = topics.request_filter();
    let sub_client = client.clone();
    let (disconnected_tx, mut disconnected_rx) = mpsc::unbounded_channel::<()>();
    let poller: JoinHandle<()> = io.spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = sub_client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = incoming.send(Incoming::Connected { generation });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = incoming.send(Incoming::Message {
                        generation,
                        topic: p.topic,
                        payload: p.payload,
                    });
                }
                Ok(Event::Outgoing(MqttOutgoing::Disconnect)) => {
                    let _ = disconnected_tx.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "zigbee2mqtt simulator: MQTT connection error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    io.spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                LinkCmd::Publish {
                    topic,
                    payload,
                    retain,
                } => {
                    if client
                        .publish(topic, QoS::AtMostOnce, retain, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                LinkCmd::Stop(done) => {
                    if client.disconnect().await.is_ok() {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), disconnected_rx.recv())
                                .await;
                    }
                    poller.abort();
                    let _ = done.send(());
                    return;
                }
            }
        }
        poller.abort();
    });
    Link { tx }
}

/// Fetches `url` on `io`: `http://` by GET, anything else as a local file (zigbee2mqtt reads
/// non-http URLs from disk). Errors use herdsman's wording where it has one.
pub(crate) async fn fetch(io: &Handle, url: String) -> Result<Vec<u8>, String> {
    match io.spawn(fetch_inner(url)).await {
        Ok(r) => r,
        Err(e) => Err(e.to_string()),
    }
}

async fn fetch_inner(url: String) -> Result<Vec<u8>, String> {
    if url.starts_with("https://") {
        return Err(format!("{url}: https is not supported by the simulator"));
    }
    if !url.starts_with("http://") {
        return tokio::fs::read(&url).await.map_err(|e| e.to_string());
    }
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url}: {e}"))?;
    let host = uri.host().ok_or("URL without host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or(host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("connect to {authority} timed out"))?
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "Invalid response from {url} status={}",
            resp.status().as_u16()
        ));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(body.to_vec())
}

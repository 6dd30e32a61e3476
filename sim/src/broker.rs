//! An embedded MQTT broker for tests and the quickstart: rumqttd 0.20 in-process on loopback.
//!
//! What it does: start rumqttd's router and one MQTT 3.1.1 listener on `127.0.0.1` (an
//! OS-assigned free port or a given one), wait until it accepts connections, and hand back its
//! address and a handle that stops it (closing every client connection) or restarts it on the
//! same port. Optional username/password authentication. Retained messages and QoS 1 work (see
//! the tests in `sim/tests/z2m_broker.rs`).
//!
//! What it does not do: persist anything. A restart is a fresh broker: retained messages and
//! sessions are gone, like a mosquitto without persistence. rumqttd has no way to stop its
//! router thread, so each start leaves one idle thread behind until the process exits; the
//! listener and all connections do stop. rumqttd picks its own port only through its config, so
//! an OS-assigned port is found by binding port 0 first and handing that port to rumqttd; another
//! process could take it in between (then start fails, and callers may retry).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::oneshot;

/// How to start the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Largest accepted payload in bytes (hex-encoded OTA images can be large).
    pub max_payload_size: usize,
    /// When set, clients must log in with this username and password.
    pub credentials: Option<(String, String)>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            port: 0,
            max_payload_size: 16 * 1024 * 1024,
            credentials: None,
        }
    }
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free port, or the thread could not be spawned.
    #[error("broker I/O: {0}")]
    Io(#[from] std::io::Error),
    /// rumqttd's listener failed.
    #[error("rumqttd: {0}")]
    Server(String),
    /// The listener did not accept connections in time.
    #[error("rumqttd did not start listening on {0}")]
    NotListening(SocketAddr),
}

/// A running embedded broker. Dropping it stops it.
#[derive(Debug)]
pub struct EmbeddedBroker {
    config: BrokerConfig,
    addr: SocketAddr,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts a broker on a free loopback port. Blocks for the few milliseconds rumqttd needs.
    pub fn start() -> Result<Self, BrokerError> {
        Self::start_with(BrokerConfig::default())
    }

    /// Starts a broker as configured. Blocks until it accepts connections.
    pub fn start_with(config: BrokerConfig) -> Result<Self, BrokerError> {
        let port = match config.port {
            0 => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port(),
            p => p,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let running = spawn(&config, addr)?;
        Ok(Self {
            config,
            addr,
            running: Some(running),
        })
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener's host, `127.0.0.1`.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the listener and closes every client connection. Idempotent.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }

    /// Stops the broker (if running) and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop();
        self.start_again()
    }

    /// Starts a fresh broker on the same port after [`EmbeddedBroker::stop`]; a no-op when
    /// running.
    pub fn start_again(&mut self) -> Result<(), BrokerError> {
        if self.running.is_none() {
            // The old port may linger in TIME_WAIT; rumqttd binds with SO_REUSEADDR (tokio's
            // default on Unix), so retrying briefly is enough.
            let mut last = None;
            for _ in 0..50 {
                match spawn(&self.config, self.addr) {
                    Ok(r) => {
                        self.running = Some(r);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err(last.unwrap_or(BrokerError::NotListening(self.addr)));
        }
        Ok(())
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(config: &BrokerConfig, addr: SocketAddr) -> Result<Running, BrokerError> {
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 1000,
            max_segment_size: config.max_payload_size.max(1024 * 1024) * 2,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
    );
    let router_tx = router.spawn();
    let settings = ServerSettings {
        name: format!("embedded-{}", addr.port()),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: config.max_payload_size,
            max_inflight_count: 200,
            auth: config
                .credentials
                .clone()
                .map(|(user, pass)| HashMap::from([(user, pass)])),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut server = Server::new(settings, router_tx, V4);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (err_tx, err_rx) = std_mpsc::channel::<String>();
    let thread = std::thread::Builder::new()
        .name(format!("mqtt-broker-{}", addr.port()))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = err_tx.send(e.to_string());
                    return;
                }
            };
            rt.block_on(async {
                tokio::select! {
                    r = server.start(LinkType::Remote) => {
                        let msg = match r {
                            Ok(()) => "listener ended".to_string(),
                            Err(e) => e.to_string(),
                        };
                        let _ = err_tx.send(msg);
                    }
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime drops every connection task, closing their sockets.
            drop(rt);
        })?;
    // Wait until the listener accepts (or reports why it cannot).
    for _ in 0..500 {
        if let Ok(msg) = err_rx.try_recv() {
            let _ = thread.join();
            return Err(BrokerError::Server(msg));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(Running {
                stop: stop_tx,
                thread,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = stop_tx.send(());
    let _ = thread.join();
    Err(BrokerError::NotListening(addr))
}

//! A TCP port of the simulated device that exists only while the device is up: bound while
//! [`Power::Up`], closed (connections refused) while it reboots or is down, rebound on the same
//! port when it comes back. One client at a time, like ESPHome's `listen(1)` listeners.
//!
//! What it does not do: speak a protocol; the handler does. Any listener of the device (native
//! OTA now; the native API and web_server later) can be served this way.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::model::{DeviceModel, Power};

/// Binds `addr` (port 0 picks a free port) with address reuse, so the port can be bound again
/// after a simulated reboot.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1)
}

/// Serves `listener` with `handler` while `model` is up, one connection at a time, and closes
/// the port whenever the device goes down. Runs until the task is aborted.
pub fn serve_while_up<H, F>(
    model: DeviceModel,
    listener: TcpListener,
    mut handler: H,
) -> JoinHandle<()>
where
    H: FnMut(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "esphome sim: listener has no address");
                return;
            }
        };
        let mut listener = Some(listener);
        let mut power = model.watch_power();
        loop {
            if *power.borrow_and_update() != Power::Up {
                listener = None;
                if power.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let Some(l) = kept_or_rebound(listener.take(), addr, "port").await else {
                return;
            };
            tokio::select! {
                accepted = l.accept() => {
                    match accepted {
                        Ok((stream, peer)) => {
                            handler(stream, peer).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "esphome sim: accept failed"),
                    }
                    listener = Some(l);
                }
                changed = power.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Keep the port only if the device is still up.
                    if *power.borrow() == Power::Up {
                        listener = Some(l);
                    }
                }
            }
        }
    })
}

/// The listener kept from the last turn, or (after a power cycle dropped it) a new one on the
/// same address; `None`, logged, when the address cannot be bound again.
pub(crate) async fn kept_or_rebound(
    kept: Option<TcpListener>,
    addr: SocketAddr,
    what: &str,
) -> Option<TcpListener> {
    if kept.is_some() {
        return kept;
    }
    match rebind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(what, %addr, error = %e, "esphome sim: cannot rebind");
            None
        }
    }
}

async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| io::Error::other("rebind failed")))
}

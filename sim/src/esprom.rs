//! An ESP ROM bootloader on a pseudo-terminal.
//!
//! What it does: opens a pty pair (`openpty`), puts the slave in raw mode, and runs the
//! simulated ROM of `ota_devproto::serial::rom` behind the master in a tokio task. Clients open
//! [`EspRomSim::path`] (`/dev/pts/N`) like a USB serial port: esptool (`--no-stub`), the
//! agent's serial transport, or anything else that speaks the ROM protocol. The simulator holds
//! the slave open itself, so clients may open and close the port any number of times. Tests read
//! the flash, the counters and the events of the ROM at any time, and reset the chip into its
//! bootloader again after it "ran" its application. The unplug fault closes the pty: the client
//! sees its port go away mid-write.
//!
//! What it does not do: see DTR/RTS (a pty has no modem lines; reset sequences cannot be
//! observed here), pace bytes at the baud rate, or run esptool's flasher stub.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

use crate::sync::LockExt;

pub use ota_devproto::serial::rom::{
    BlockFault, Faults, RomConfig, RomCounters, RomDevice, RomEvent,
};

/// Shared between the simulator task and its handle.
#[derive(Debug)]
struct Shared {
    rom: RomDevice,
    events: Vec<RomEvent>,
    /// Bytes received from the client.
    rx_bytes: u64,
    /// Bytes sent to the client.
    tx_bytes: u64,
    /// How long the answer to a FLASH_BEGIN (the erase) is held back.
    erase_time: std::time::Duration,
}

/// A running simulated ROM bootloader. Dropping it stops the simulator and closes the pty.
#[derive(Debug)]
pub struct EspRomSim {
    path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    closed: watch::Receiver<bool>,
}

impl EspRomSim {
    /// Starts a simulated ROM with `cfg` on a new pseudo-terminal. Must be called inside a tokio
    /// runtime.
    pub fn start(cfg: RomConfig) -> io::Result<EspRomSim> {
        // A raw pty pair; the slave end is held open here so clients can come and go.
        let (master, slave) = SerialStream::pair().map_err(io::Error::from)?;
        let path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| io::Error::other("the pty slave has no name"))?;
        let shared = Arc::new(Mutex::new(Shared {
            rom: RomDevice::new(cfg),
            events: Vec::new(),
            rx_bytes: 0,
            tx_bytes: 0,
            erase_time: std::time::Duration::ZERO,
        }));
        let (stop, stop_rx) = watch::channel(false);
        let (closed_tx, closed) = watch::channel(false);
        let task = tokio::spawn(run(master, slave, shared.clone(), stop_rx, closed_tx));
        tracing::debug!(path = %path.display(), "esprom simulator listening");
        Ok(EspRomSim {
            path,
            shared,
            stop,
            task: Some(task),
            closed,
        })
    }

    /// The port to hand to the client: the pty slave, e.g. `/dev/pts/3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.locked()
    }

    /// Makes every erase (the answer to FLASH_BEGIN) take `time`, as a real chip's erase of
    /// a large region does; without it the simulated erase is instant.
    pub fn set_erase_time(&self, time: std::time::Duration) {
        self.lock().erase_time = time;
    }

    /// A copy of the whole flash.
    pub fn flash(&self) -> Vec<u8> {
        self.lock().rom.flash().to_vec()
    }

    /// A copy of `len` bytes of flash at `offset`.
    pub fn flash_range(&self, offset: usize, len: usize) -> Vec<u8> {
        let g = self.lock();
        let flash = g.rom.flash();
        let end = (offset + len).min(flash.len());
        flash[offset.min(end)..end].to_vec()
    }

    /// Overwrites flash at `offset` (to preload an "old" firmware).
    pub fn write_flash(&self, offset: usize, data: &[u8]) {
        let mut g = self.lock();
        g.rom.flash_mut()[offset..offset + data.len()].copy_from_slice(data);
    }

    /// What the ROM has counted so far.
    pub fn counters(&self) -> RomCounters {
        self.lock().rom.counters().clone()
    }

    /// Events of the ROM so far (baud changes, application started, unplugged).
    pub fn events(&self) -> Vec<RomEvent> {
        self.lock().events.clone()
    }

    /// Bytes received from and sent to the client so far.
    pub fn traffic(&self) -> (u64, u64) {
        let g = self.lock();
        (g.rx_bytes, g.tx_bytes)
    }

    /// Whether FLASH_END started the (simulated) application.
    pub fn is_running_app(&self) -> bool {
        self.lock().rom.is_running_app()
    }

    /// A reset with IO0 held low: back in the ROM bootloader, flash kept.
    pub fn reset_into_bootloader(&self) {
        self.lock().rom.reset_into_bootloader();
    }

    /// Waits until the pty is closed (the unplug fault fired, or the simulator stopped).
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the pty is closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Stops the simulator and closes the pty.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EspRomSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    mut master: SerialStream,
    slave: SerialStream,
    shared: Arc<Mutex<Shared>>,
    mut stop: watch::Receiver<bool>,
    closed: watch::Sender<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            r = master.read(&mut buf) => r,
            _ = stop.changed() => break,
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "esprom: read from the pty master failed");
                break;
            }
        };
        let mut out = Vec::new();
        let mut unplug = false;
        let mut hold = std::time::Duration::ZERO;
        {
            let mut g = shared.locked();
            g.rx_bytes += n as u64;
            let begins = g.rom.counters().begins;
            g.rom.handle_input(&buf[..n]);
            if g.rom.counters().begins > begins {
                hold = g.erase_time;
            }
            while let Some(frame) = g.rom.poll_transmit() {
                out.extend_from_slice(&frame);
            }
            while let Some(ev) = g.rom.poll_event() {
                tracing::debug!(event = ?ev, "esprom");
                unplug |= ev == RomEvent::Unplugged;
                g.events.push(ev);
            }
            g.tx_bytes += out.len() as u64;
        }
        if unplug {
            tracing::debug!("esprom: unplugged, closing the pty");
            break;
        }
        if !hold.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(hold) => {}
                _ = stop.changed() => break,
            }
        }
        let written = tokio::select! {
            r = master.write_all(&out) => r,
            _ = stop.changed() => break,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "esprom: write to the pty master failed");
            break;
        }
    }
    drop(master);
    drop(slave);
    let _ = closed.send(true);
}

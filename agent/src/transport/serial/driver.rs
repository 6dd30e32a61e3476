//! The tokio driver of the flasher: one serial port, one run of the state machine.
//!
//! What it does: opens the port with `tokio-serial` at 115200 baud, plays reset sequences on
//! DTR/RTS (on a port without modem lines, such as a pseudo-terminal, the first failing line
//! change is logged as a warning and the sequence skipped, as esptool does), shuttles bytes
//! between the port and [`Flasher`], sleeps until its timeouts, changes the port's baud rate when
//! asked, and passes every event to the caller. A run can be cancelled while nothing has been
//! erased yet. With a hook ([`run_with`]) the flasher holds the last data block until the hook
//! returns (the transport's point of no return).
//!
//! What it does not do: decide anything about the protocol (that is `ota_devproto::serial`) or
//! about images and progress reports (that is the transport in `super`).

use std::io;
use std::path::Path;
use std::time::Duration;

use ota_devproto::serial::reset::{Line, ResetStep};
use ota_devproto::serial::{Event, FlashError, Flasher, FlasherConfig, Job, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::transport::BeforeLastBlock;

/// The baud rate the ROM bootloader is reached at.
pub const ROM_BAUD: u32 = 115_200;

/// Why a run did not finish with an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The port could not be opened.
    #[error("could not open {port}: {source}")]
    Open {
        /// The port.
        port: String,
        /// Why.
        #[source]
        source: tokio_serial::Error,
    },
    /// Reading or writing the port failed, or it reached end of file (unplugged).
    #[error("the serial port failed: {0}")]
    Port(#[source] io::Error),
    /// The flasher reported a failure.
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// Cancelled before anything was erased.
    #[error("cancelled before anything was written")]
    Cancelled,
    /// The hook before the last data block refused; the block was not sent.
    #[error("stopped before the last data block: {0}")]
    NotCommitted(String),
}

impl DriveError {
    /// Whether the run got past connecting: a port failure then means the device went away
    /// mid-operation rather than never answering.
    pub fn is_port(&self) -> bool {
        matches!(self, DriveError::Port(_))
    }
}

/// Opens `path` for the ROM bootloader: 115200 8N1, no flow control.
pub fn open_port(path: &Path) -> Result<SerialStream, DriveError> {
    tokio_serial::new(path.to_string_lossy(), ROM_BAUD)
        .timeout(Duration::from_millis(100))
        .open_native_async()
        .map_err(|source| DriveError::Open {
            port: path.display().to_string(),
            source,
        })
}

/// Plays `steps` on the port's DTR and RTS lines. Returns `false` (after a warning) when the
/// port has no modem lines; the rest of the sequence is then skipped.
pub async fn play_reset(port: &mut SerialStream, steps: &[ResetStep], what: &str) -> bool {
    for step in steps {
        for change in &step.changes {
            let result = match change.line {
                Line::Dtr => port.write_data_terminal_ready(change.asserted),
                Line::Rts => port.write_request_to_send(change.asserted),
            };
            if let Err(e) = result {
                tracing::warn!(
                    error = %e,
                    "the chip was NOT reset ({what}): this port cannot set DTR/RTS; \
                     use reset = \"no-reset\" and put the chip in its bootloader by hand"
                );
                return false;
            }
        }
        if !step.wait.is_zero() {
            sleep(step.wait).await;
        }
    }
    true
}

/// Runs `job` on an open port. `reset_steps(attempt)` gives the bootloader reset for each
/// connect attempt; `on_event` sees every event but [`Event::Finished`]. `cancel` stops the run
/// only while [`Flasher::can_stop_safely`].
pub async fn run(
    port: &mut SerialStream,
    cfg: FlasherConfig,
    job: Job,
    reset_steps: impl Fn(u32) -> Vec<ResetStep>,
    on_event: impl FnMut(&Event),
    cancel: &CancellationToken,
) -> Result<Outcome, DriveError> {
    run_with(port, cfg, job, reset_steps, on_event, cancel, None).await
}

/// [`run`] with a hook awaited right before the last data block of a write goes out
/// (`cfg.hold_last_block` is set for it).
pub async fn run_with(
    port: &mut SerialStream,
    mut cfg: FlasherConfig,
    job: Job,
    reset_steps: impl Fn(u32) -> Vec<ResetStep>,
    mut on_event: impl FnMut(&Event),
    cancel: &CancellationToken,
    before_last: Option<BeforeLastBlock<'_>>,
) -> Result<Outcome, DriveError> {
    cfg.hold_last_block = before_last.is_some();
    let mut before_last = before_last;
    let start = Instant::now();
    let now = move || start.elapsed();
    let mut flasher = Flasher::new(cfg, job);
    let mut buf = vec![0u8; 16 * 1024];
    let mut warned_reset = false;
    loop {
        while let Some(bytes) = flasher.poll_transmit() {
            port.write_all(&bytes).await.map_err(DriveError::Port)?;
        }
        let mut acted = false;
        while let Some(event) = flasher.poll_event() {
            acted = true;
            match &event {
                Event::ResetRequested { attempt } => {
                    let steps = reset_steps(*attempt);
                    if !warned_reset && !steps.is_empty() {
                        warned_reset = !play_reset(port, &steps, "entering the bootloader").await;
                    }
                    // Whatever the boot log said is of no interest.
                    let _ = port.clear(tokio_serial::ClearBuffer::Input);
                    flasher.reset_done(now());
                }
                Event::SetBaud(baud) => {
                    port.set_baud_rate(*baud)
                        .map_err(|e| DriveError::Port(io::Error::other(e)))?;
                    flasher.baud_changed(now());
                }
                Event::LastBlock => {
                    if let Some(hook) = before_last.take() {
                        hook().await.map_err(DriveError::NotCommitted)?;
                    }
                    flasher.release_last_block(now());
                }
                Event::Finished(result) => return result.clone().map_err(DriveError::Flash),
                _ => {}
            }
            on_event(&event);
        }
        if acted {
            continue;
        }
        let deadline = flasher.poll_timeout().map(|t| start + t);
        let can_cancel = flasher.can_stop_safely();
        tokio::select! {
            read = port.read(&mut buf) => match read {
                Ok(0) => {
                    return Err(DriveError::Port(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of file (the device went away)",
                    )));
                }
                Ok(n) => flasher.handle_input(&buf[..n], now()),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(DriveError::Port(e)),
            },
            () = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() => {
                flasher.handle_timeout(now());
            }
            () = cancel.cancelled(), if can_cancel => return Err(DriveError::Cancelled),
        }
    }
}

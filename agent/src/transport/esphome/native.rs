//! The tokio driver of ESPHome's native OTA uploader (`ota_devproto::esphome::Client`): one
//! connection attempt, with ESPHome's per-phase timeouts and socket options.
//!
//! What it does: connect within the connect timeout; TCP_NODELAY on for the handshake, off for
//! the data blocks and on again for the final reads (as espota2 does); the handshake (up to
//! authentication) within the handshake timeout in total; in the data phase every read and write
//! within the data timeout; a device error byte that arrives while a block is being written
//! still counts; cancellation only until the first image byte is handed to the socket; every
//! event of the machine to the caller.
//! What it does not do: retry, map errors to the status model, or wait for the reboot (that is
//! the transport in `super`).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use ota_devproto::esphome::{Client, ClientConfig, ClientError, ClientState, Event, Negotiated};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

/// The three timeouts of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From connect to the end of authentication.
    pub handshake: Duration,
    /// Longest silence per read or write once authenticated.
    pub data: Duration,
}

/// Why an attempt did not end with the device's `0x45`.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The TCP connection could not be made.
    #[error("could not connect: {0}")]
    Connect(#[source] io::Error),
    /// Connecting took longer than the connect timeout.
    #[error("no TCP answer within {0:?}")]
    ConnectTimeout(Duration),
    /// The upload failed (device error, closed connection, timeout, policy).
    #[error(transparent)]
    Ota(#[from] ClientError),
    /// Cancelled before any image byte was sent.
    #[error("cancelled before any image byte was sent")]
    Cancelled,
}

impl AttemptError {
    /// Network trouble before the last image byte: a fresh connection may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::ConnectTimeout(_) => true,
            Self::Ota(e) => e.is_retryable(),
            Self::Cancelled => false,
        }
    }

    /// The connection failed after the last image byte without the device's verdict.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, Self::Ota(e) if e.may_have_committed())
    }
}

/// What a successful attempt agreed and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// What was negotiated.
    pub negotiated: Option<Negotiated>,
    /// Image bytes on the wire (after compression).
    pub wire_bytes: u64,
}

/// Whether the machine is still in the handshake (before the device's `41`).
pub fn in_handshake(state: ClientState) -> bool {
    matches!(
        state,
        ClientState::AwaitVersion
            | ClientState::AwaitFeatureAck
            | ClientState::AwaitFeatureFlags
            | ClientState::NoiseHandshake
            | ClientState::AwaitAuthRequest
            | ClientState::AwaitNonce
            | ClientState::AwaitAuthResult
    )
}

/// Runs one upload of `image` to `host:port`. `on_event` sees every event of the machine (a
/// block's `Progress` once it is written). `cancel` ends the attempt only until the first image
/// block goes to the socket; from then on it is ignored.
pub async fn upload(
    host: &str,
    port: u16,
    config: ClientConfig,
    image: Bytes,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    mut on_event: impl FnMut(&Event),
) -> Result<Uploaded, AttemptError> {
    let mut client = Client::new(config, image, rand::random())?;
    let connect = TcpStream::connect((host, port));
    let mut stream = tokio::select! {
        r = timeout(timeouts.connect, connect) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(AttemptError::Connect(e)),
            Err(_) => return Err(AttemptError::ConnectTimeout(timeouts.connect)),
        },
        () = cancel.cancelled() => return Err(AttemptError::Cancelled),
    };
    // Control fields are tiny: never wait for a delayed ACK.
    let _ = stream.set_nodelay(true);
    let handshake_deadline = Instant::now() + timeouts.handshake;
    let mut negotiated = None;
    let mut data_started = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(bytes) = client.poll_transmit() {
            let state = client.state();
            let is_data = matches!(
                state,
                ClientState::Uploading | ClientState::AwaitChunkAck | ClientState::AwaitReceiveOk
            );
            if !data_started && is_data {
                data_started = true;
                // Blocks are big: let the kernel coalesce them (espota2 does the same).
                let _ = stream.set_nodelay(false);
            }
            let limit = if in_handshake(state) {
                handshake_deadline.saturating_duration_since(Instant::now())
            } else {
                timeouts.data
            };
            let write = timeout(limit, stream.write_all(&bytes));
            let written = if data_started {
                write.await
            } else {
                tokio::select! {
                    r = write => r,
                    () = cancel.cancelled() => return Err(AttemptError::Cancelled),
                }
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) if client.state() == ClientState::Done => {
                    // ESPHome's uploader treats a failure to send the final 00 as success.
                    break;
                }
                Ok(Err(_)) => {
                    // The device went away; an error byte it sent before still counts.
                    while let Ok(Ok(n @ 1..)) =
                        timeout(Duration::from_secs(1), stream.read(&mut buf)).await
                    {
                        client.handle_input(&buf[..n])?;
                    }
                    client.handle_eof()?;
                }
                Err(_) => client.handle_timeout()?,
            }
        }
        while let Some(ev) = client.poll_event() {
            if let Event::Negotiated(n) = &ev {
                negotiated = Some(*n);
            }
            on_event(&ev);
        }
        let state = client.state();
        match state {
            ClientState::Done => break,
            ClientState::Uploading => continue,
            ClientState::AwaitReceiveOk if data_started => {
                // The last block is out: small answers follow, read them at once.
                let _ = stream.set_nodelay(true);
            }
            _ => {}
        }
        let deadline = if in_handshake(state) {
            handshake_deadline
        } else {
            Instant::now() + timeouts.data
        };
        let read = async {
            tokio::select! {
                biased;
                r = stream.read(&mut buf) => Some(r),
                () = sleep_until(deadline) => None,
            }
        };
        let got = if data_started {
            read.await
        } else {
            tokio::select! {
                r = read => r,
                () = cancel.cancelled() => return Err(AttemptError::Cancelled),
            }
        };
        match got {
            Some(Ok(0)) | Some(Err(_)) => client.handle_eof()?,
            Some(Ok(n)) => client.handle_input(&buf[..n])?,
            None => client.handle_timeout()?,
        }
    }
    let _ = stream.shutdown().await;
    Ok(Uploaded {
        negotiated,
        wire_bytes: client.progress().total,
    })
}

//! The tokio driver of ESPHome's native OTA uploader (`ota_devproto::esphome::Client`): one
//! connection attempt, with ESPHome's per-phase timeouts and socket options.
//!
//! What it does: connect within the connect timeout; TCP_NODELAY on for the handshake, off for
//! the data blocks and on again for the final reads (as espota2 does); the handshake (up to
//! authentication) within the handshake timeout in total; in the data phase every read and write
//! within the data timeout; a device error byte that arrives while a block is being written
//! still counts; cancellation only until the first image byte is handed to the socket; a hook
//! awaited right before the last image block goes to the socket (the point of no return: the
//! device verifies and commits the image without any further word from us); every event of the
//! machine to the caller.
//! What it does not do: retry, map errors to the status model, or wait for the reboot (that is
//! the transport in `super`).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use ota_devproto::esphome::{Client, ClientConfig, ClientError, ClientState, Event, Negotiated};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// The hook before the last image block refused; the block was not sent.
    #[error("stopped before the last image block: {0}")]
    NotCommitted(String),
}

impl AttemptError {
    /// Network trouble before the last image byte: a fresh connection may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::ConnectTimeout(_) => true,
            Self::Ota(e) => e.is_retryable(),
            Self::Cancelled | Self::NotCommitted(_) => false,
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

/// A byte stream to a device. TCP can switch Nagle's algorithm; an in-memory pipe (tests)
/// ignores it.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send {
    /// Sets TCP_NODELAY where there is such a thing.
    fn set_nodelay(&self, _on: bool) {}
}

impl Link for TcpStream {
    fn set_nodelay(&self, on: bool) {
        let _ = TcpStream::set_nodelay(self, on);
    }
}

impl Link for tokio::io::DuplexStream {}

pub use crate::transport::BeforeLastBlock;

fn no_hook<'a>() -> BeforeLastBlock<'a> {
    Box::new(|| Box::pin(async { Ok(()) }))
}

/// Runs one upload of `image` to `host:port`: connects within the connect timeout, then
/// [`run`]. `on_event` sees every event of the machine (a block's `Progress` once it is
/// written). `cancel` ends the attempt only until the first image block goes to the socket;
/// from then on it is ignored.
pub async fn upload(
    host: &str,
    port: u16,
    config: ClientConfig,
    image: Bytes,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    on_event: impl FnMut(&Event),
) -> Result<Uploaded, AttemptError> {
    upload_with(
        host,
        port,
        config,
        image,
        timeouts,
        cancel,
        on_event,
        no_hook(),
    )
    .await
}

/// [`upload`] with a hook awaited right before the last image block is written.
#[allow(clippy::too_many_arguments)]
pub async fn upload_with(
    host: &str,
    port: u16,
    config: ClientConfig,
    image: Bytes,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    on_event: impl FnMut(&Event),
    before_last: BeforeLastBlock<'_>,
) -> Result<Uploaded, AttemptError> {
    let client = Client::new(config, image, rand::random())?;
    let connect = TcpStream::connect((host, port));
    let stream = tokio::select! {
        r = timeout(timeouts.connect, connect) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(AttemptError::Connect(e)),
            Err(_) => return Err(AttemptError::ConnectTimeout(timeouts.connect)),
        },
        () = cancel.cancelled() => return Err(AttemptError::Cancelled),
    };
    run_with(stream, client, timeouts, cancel, on_event, before_last).await
}

/// Drives `client` over a connected `stream` to its end: the handshake (up to authentication)
/// within `timeouts.handshake` from now, every read and write of the data phase within
/// `timeouts.data`.
pub async fn run<S: Link>(
    stream: S,
    client: Client,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    on_event: impl FnMut(&Event),
) -> Result<Uploaded, AttemptError> {
    run_with(stream, client, timeouts, cancel, on_event, no_hook()).await
}

/// [`run`] with a hook awaited right before the last image block is written.
pub async fn run_with<S: Link>(
    mut stream: S,
    mut client: Client,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    mut on_event: impl FnMut(&Event),
    before_last: BeforeLastBlock<'_>,
) -> Result<Uploaded, AttemptError> {
    let mut before_last = Some(before_last);
    // Control fields are tiny: never wait for a delayed ACK.
    stream.set_nodelay(true);
    let handshake_deadline = Instant::now() + timeouts.handshake;
    let mut negotiated = None;
    let mut data_started = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(bytes) = client.poll_transmit() {
            // The machine just handed out the last image block: it is not written yet.
            if client.may_have_committed()
                && let Some(hook) = before_last.take()
            {
                hook().await.map_err(AttemptError::NotCommitted)?;
            }
            let state = client.state();
            let is_data = matches!(
                state,
                ClientState::Uploading | ClientState::AwaitChunkAck | ClientState::AwaitReceiveOk
            );
            if !data_started && is_data {
                data_started = true;
                // Blocks are big: let the kernel coalesce them (espota2 does the same).
                stream.set_nodelay(false);
            }
            let limit = if in_handshake(state) {
                handshake_deadline.saturating_duration_since(Instant::now())
            } else {
                timeouts.data
            };
            let write = timeout(limit, stream.write_all(&bytes));
            let written = cancellable(write, cancel, !data_started).await?;
            match written {
                Ok(Ok(())) => {}
                // ESPHome's uploader treats a failure to send the final 00 as success.
                Ok(Err(_)) if client.state() == ClientState::Done => break,
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
                stream.set_nodelay(true);
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
        let got = cancellable(read, cancel, !data_started).await?;
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

/// `work`, given up on a cancel while `may_cancel` (before the first data block went out; after
/// it the upload runs to its end).
async fn cancellable<T>(
    work: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
    may_cancel: bool,
) -> Result<T, AttemptError> {
    if !may_cancel {
        return Ok(work.await);
    }
    tokio::select! {
        r = work => Ok(r),
        () = cancel.cancelled() => Err(AttemptError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    //! The driver's timing on an in-memory pipe with tokio's clock paused: no sockets, so
    //! virtual time is exact.

    use ota_devproto::esphome::{AcceptAll, Device, DeviceConfig, DeviceState, Password};
    use tokio::io::DuplexStream;

    use super::*;

    const ESPHOME: Timeouts = Timeouts {
        connect: Duration::from_secs(20),
        handshake: Duration::from_secs(20),
        data: Duration::from_secs(160),
    };

    /// 100 kB that do not compress, so the upload spans many blocks.
    fn image() -> Bytes {
        let mut x = 0x2545_F491_u32;
        Bytes::from(
            (0..100_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x >> 24) as u8
                })
                .collect::<Vec<_>>(),
        )
    }

    fn client(password: Option<&str>) -> Client {
        Client::new(
            ClientConfig {
                password: password.map(Password::new),
                ..ClientConfig::default()
            },
            image(),
            [1; 32],
        )
        .unwrap()
    }

    /// The error of an upload with the ESPHome timeouts, never cancelled, that must fail.
    async fn failing(ours: DuplexStream, client: Client) -> AttemptError {
        run(ours, client, ESPHOME, &CancellationToken::new(), |_| {})
            .await
            .unwrap_err()
    }

    /// A device on the other end of the pipe that answers until `mute` says so, then only reads.
    fn device(mut end: DuplexStream, config: DeviceConfig, mute: fn(DeviceState, usize) -> bool) {
        tokio::spawn(async move {
            let mut dev = Device::new(config, AcceptAll, [2; 32]);
            let mut buf = vec![0u8; 16 * 1024];
            let mut muted = false;
            loop {
                while let Some(b) = dev.poll_transmit() {
                    if !muted && end.write_all(&b).await.is_err() {
                        return;
                    }
                }
                muted |= mute(dev.state(), dev.received());
                if dev.is_closed() {
                    return;
                }
                match end.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) if !muted => dev.handle_input(&buf[..n]),
                    Ok(_) => {}
                }
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_upload_over_the_pipe() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        device(theirs, DeviceConfig::default(), |_, _| false);
        let mut events = Vec::new();
        let up = run(
            ours,
            client(None),
            ESPHOME,
            &CancellationToken::new(),
            |e| events.push(e.clone()),
        )
        .await
        .expect("uploads");
        assert!(
            up.negotiated
                .is_some_and(|n| n.compression == ota_devproto::esphome::Compression::Deflate)
        );
        assert!(events.contains(&Event::LastChunkSent) && events.contains(&Event::Completed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_device_times_out_after_exactly_the_handshake_timeout() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        device(theirs, DeviceConfig::default(), |_, _| true);
        let t0 = Instant::now();
        let err = failing(ours, client(None)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        assert!(
            matches!(
                &err,
                AttemptError::Ota(ClientError::Timeout {
                    waiting: ClientState::AwaitVersion,
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn the_handshake_timeout_counts_from_connect_not_per_read() {
        // The device answers every handshake step, slowly: 3 steps of 8 s exceed 20 s in total.
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut dev = Device::new(
                DeviceConfig {
                    password: Some(Password::new("pw")),
                    ..DeviceConfig::default()
                },
                AcceptAll,
                [2; 32],
            );
            let mut buf = vec![0u8; 4096];
            while let Ok(n @ 1..) = theirs.read(&mut buf).await {
                dev.handle_input(&buf[..n]);
                while let Some(b) = dev.poll_transmit() {
                    tokio::time::sleep(Duration::from_secs(8)).await;
                    if theirs.write_all(&b).await.is_err() {
                        return;
                    }
                }
            }
        });
        let t0 = Instant::now();
        let err = failing(ours, client(Some("pw"))).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        assert!(
            matches!(&err, AttemptError::Ota(ClientError::Timeout { .. })),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_stalling_in_the_data_phase_times_out_after_the_data_timeout() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        device(theirs, DeviceConfig::default(), |s, received| {
            s.in_data_phase() && received >= 20_000
        });
        let stall_seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = stall_seen.clone();
        let t = Timeouts {
            data: Duration::from_secs(30),
            ..ESPHOME
        };
        let err = run(ours, client(None), t, &CancellationToken::new(), move |e| {
            if let Event::Progress(p) = e
                && p.acked > 0
            {
                *seen.lock().unwrap() = Some(Instant::now());
            }
        })
        .await
        .unwrap_err();
        let last_ack = stall_seen
            .lock()
            .unwrap()
            .expect("some blocks were acknowledged");
        assert_eq!(last_ack.elapsed(), Duration::from_secs(30));
        let AttemptError::Ota(e @ ClientError::Timeout { waiting, .. }) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*waiting, ClientState::AwaitChunkAck);
        assert!(e.is_retryable() && !e.may_have_committed());
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_handshake_but_not_the_data() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        device(theirs, DeviceConfig::default(), |_, _| true);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.cancel();
        });
        let t0 = Instant::now();
        let err = run(ours, client(None), ESPHOME, &cancel, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, AttemptError::Cancelled));
        assert_eq!(t0.elapsed(), Duration::from_secs(3));

        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        device(theirs, DeviceConfig::default(), |_, _| false);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let up = run(ours, client(None), ESPHOME, &cancel, move |e| {
            if matches!(e, Event::Phase(ota_devproto::esphome::Phase::Uploading)) {
                c.cancel();
            }
        })
        .await;
        assert!(up.is_ok(), "{up:?}");
        assert!(cancel.is_cancelled());
    }
}

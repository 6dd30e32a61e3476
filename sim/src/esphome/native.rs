//! The native OTA listener of the simulated device: a thin tokio driver around
//! `ota_devproto::esphome::Device`, with a storage backend that behaves like the platform's
//! OTA backend (space limits, the ESP32's first-byte check, image validation at `end()`) and
//! the injected connection faults.
//!
//! What it does: per connection, feed reads to the machine, write what it yields, apply the
//! device's timeouts (20 s from accept for the handshake, 105 s without data after), record
//! every upload on the [`DeviceModel`], and install a committed image (the model reboots).
//! What it does not do: accept more than one client at a time (the listener serialises them).

use bytes::Bytes;
use ota_devproto::esphome::{
    Backend, Device, DeviceConfig, DeviceEvent, ErrorCode, OtaType, ReceivedImage, wire,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until};

use super::Platform;
use super::model::{DeviceModel, Fault, ReceivedUpload, UploadOutcome};

/// Storage of the simulated device: the platform's OTA backend plus injected faults.
#[derive(Debug)]
pub(super) struct SimBackend {
    pub platform: Platform,
    pub max_image_size: usize,
    pub validate: bool,
    pub faults: Vec<Fault>,
}

impl SimBackend {
    fn has(&self, f: impl Fn(&Fault) -> bool) -> bool {
        self.faults.iter().any(f)
    }
}

impl Backend for SimBackend {
    fn begin(&mut self, size: usize, ota_type: OtaType) -> Result<(), ErrorCode> {
        if self.has(|f| *f == Fault::InvalidBootstrapping) {
            return Err(ErrorCode::InvalidBootstrapping);
        }
        if ota_type == OtaType::App && size > self.max_image_size {
            return Err(self.platform.not_enough_space());
        }
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), ErrorCode> {
        // esp_ota_write refuses an image whose first byte is not 0xE9.
        if self.validate
            && offset == 0
            && self.platform == Platform::Esp32
            && data.first().is_some_and(|&b| b != 0xE9)
        {
            return Err(ErrorCode::Magic);
        }
        let end = offset + data.len();
        if self.has(|f| matches!(f, Fault::FlashWriteError { at } if (offset..end).contains(at))) {
            return Err(ErrorCode::WritingFlash);
        }
        Ok(())
    }

    fn end(&mut self, image: &ReceivedImage) -> Result<(), ErrorCode> {
        if self.has(|f| *f == Fault::Md5MismatchAtEnd) {
            return Err(ErrorCode::Md5Mismatch);
        }
        if self.validate && image.ota_type == OtaType::App {
            let Some(boot) = image.boot_image() else {
                return Err(ErrorCode::UpdateEnd);
            };
            let ok = match self.platform {
                // esp_ota_end verifies the whole image.
                Platform::Esp32 => ota_firmware::esp::parse_image(&boot, None).is_ok(),
                // The ESP8266 backend checks the 0xE9 header (of the inflated image).
                Platform::Esp8266 => boot.first() == Some(&0xE9),
                Platform::Rp2040 | Platform::Bk72xx => true,
            };
            if !ok {
                return Err(ErrorCode::UpdateEnd);
            }
        }
        Ok(())
    }
}

/// Serves one native OTA connection to its end.
pub(super) async fn serve_connection(
    mut stream: TcpStream,
    model: DeviceModel,
    config: DeviceConfig,
    max_image_size: usize,
    validate: bool,
) {
    let _ = stream.set_nodelay(true);
    let faults = model.take_connection_faults();
    let drop_after = faults.iter().find_map(|f| match f {
        Fault::DropAfter { bytes } => Some(*bytes),
        _ => None,
    });
    let stall_after = faults.iter().find_map(|f| match f {
        Fault::Stall { after } => Some(*after),
        _ => None,
    });
    let slow = faults.iter().find_map(|f| match f {
        Fault::Slow { per_response } => Some(*per_response),
        _ => None,
    });
    let backend = SimBackend {
        platform: model.platform(),
        max_image_size,
        validate,
        faults,
    };
    let mut device = Device::new(config, backend, rand::random());
    let accepted = Instant::now();
    let mut last_data = accepted;
    let mut read_total = 0usize;
    let mut received: Option<ReceivedImage> = None;
    let mut installed: Option<Bytes> = None;
    let mut buf = vec![0u8; 16 * 1024];
    'conn: loop {
        // Outcomes are recorded before the answer goes out, so a client that has the answer
        // sees the record.
        while let Some(ev) = device.poll_event() {
            match ev {
                DeviceEvent::UpdateStarted { .. } => model.record_attempt(),
                DeviceEvent::ImageReceived(img) => received = Some(img),
                DeviceEvent::Committed => {
                    if let Some(img) = &received {
                        installed = Some(record(&model, img, UploadOutcome::Committed));
                    }
                }
                DeviceEvent::Failed(code) => {
                    tracing::debug!(?code, "esphome sim: error sent");
                    model.record_error(code);
                    if let Some(img) = received.take() {
                        record(&model, &img, UploadOutcome::Failed(code));
                    }
                }
                DeviceEvent::Aborted(why) => tracing::debug!(why, "esphome sim: closed"),
                _ => {}
            }
        }
        while let Some(bytes) = device.poll_transmit() {
            if let Some(delay) = slow {
                sleep(delay).await;
            }
            if stream.write_all(&bytes).await.is_err() {
                break 'conn;
            }
        }
        if device.is_closed() {
            break;
        }
        let deadline = if device.state().in_data_phase() {
            last_data + wire::DEVICE_DATA_TIMEOUT
        } else {
            accepted + wire::DEVICE_HANDSHAKE_TIMEOUT
        };
        tokio::select! {
            biased;
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => device.handle_eof(),
                Ok(n) => {
                    let mut n = n;
                    if let Some(limit) = drop_after
                        && read_total + n >= limit
                    {
                        device.handle_input(&buf[..limit - read_total]);
                        tracing::debug!(limit, "esphome sim: dropping the connection (fault)");
                        return;
                    }
                    if let Some(limit) = stall_after
                        && read_total + n >= limit
                    {
                        n = limit - read_total;
                        device.handle_input(&buf[..n]);
                        stall(&mut stream).await;
                        return;
                    }
                    read_total += n;
                    last_data = Instant::now();
                    device.handle_input(&buf[..n]);
                }
            },
            () = sleep_until(deadline) => device.handle_timeout(),
        }
    }
    let _ = stream.shutdown().await;
    if installed.is_none() {
        // Let the error byte reach the client before the socket goes: a close with unread
        // data would reset the connection and could discard it.
        linger(&mut stream).await;
    }
    drop(stream);
    if let Some(image) = installed {
        // The device closed the socket; it logs, waits ~110 ms and reboots.
        model.install(&image);
    }
}

/// Records an upload that arrived in full; returns the image as it boots.
fn record(model: &DeviceModel, img: &ReceivedImage, outcome: UploadOutcome) -> Bytes {
    let image = img.boot_image().unwrap_or_else(|| img.stored.clone());
    model.record_upload(ReceivedUpload {
        via: "native",
        image: image.clone(),
        compression: img.compression,
        md5_ok: img.md5_ok(),
        outcome,
    });
    image
}

/// Reads and discards until the client closes, for at most 2 s.
async fn linger(stream: &mut TcpStream) {
    discard_until_closed(stream, std::time::Duration::from_secs(2)).await;
}

/// Reads and discards until the client closes, for at most `limit`.
async fn discard_until_closed(stream: &mut TcpStream, limit: std::time::Duration) {
    let deadline = Instant::now() + limit;
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            biased;
            r = stream.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return },
            () = sleep_until(deadline) => return,
        }
    }
}

/// A stalled (wedged) device: answers nothing more and never times out by itself; the
/// connection ends when the client leaves (what it still sends is discarded), or after an hour.
async fn stall(stream: &mut TcpStream) {
    discard_until_closed(stream, std::time::Duration::from_secs(3600)).await;
}

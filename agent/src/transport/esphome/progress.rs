//! Progress of an ESPHome update in the status model: 100 while asking, connecting,
//! negotiating and authenticating; 2 with percent and remaining seconds (estimated from the
//! transfer rate since the first image byte) while the image goes out, at most one report per
//! percent or per second; 6 once the device has the image and while it reboots.
//!
//! What it does not do: decide anything; it only words and rate-limits what the transport and
//! the uploader machine report.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_devproto::esphome::{Compression, Event, Phase};
use ota_domain::status::UpgradeStatus;
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::{ProgressSink, TransferProgress};
use crate::sync::LockExt;

/// Where an update is, for the message of a task timeout, and when the transfer started (the
/// transfer budget runs from then).
#[derive(Debug)]
pub(super) struct Stage {
    stage: AtomicU8,
    sending_since: watch::Sender<Option<Instant>>,
}

impl Default for Stage {
    fn default() -> Self {
        Self {
            stage: AtomicU8::new(Self::PREPARING),
            sending_since: watch::Sender::new(None),
        }
    }
}

impl Stage {
    pub(super) const PREPARING: u8 = 0;
    pub(super) const SENDING: u8 = 1;
    pub(super) const REBOOTING: u8 = 2;

    pub(super) fn set(&self, s: u8) {
        self.stage.store(s, Ordering::Relaxed);
        if s == Self::SENDING {
            self.sending_since.send_if_modified(|since| {
                since.is_none() && {
                    *since = Some(Instant::now());
                    true
                }
            });
        }
    }

    #[cfg(test)]
    pub(super) fn get(&self) -> u8 {
        self.stage.load(Ordering::Relaxed)
    }

    /// When the first image byte went out (of the first connection that got that far).
    pub(super) fn sending_since(&self) -> watch::Receiver<Option<Instant>> {
        self.sending_since.subscribe()
    }
}

/// Progress in the status model: 100, then 2 with percent and remaining seconds (at most one
/// report per percent or per second), then 6.
#[derive(Debug, Clone)]
pub(super) struct Reporter(Arc<Mutex<ReporterState>>);

#[derive(Debug)]
struct ReporterState {
    sink: ProgressSink,
    done: u64,
    total: u64,
    acked_mode: bool,
    started: Option<Instant>,
    last_percent: Option<u32>,
    last_sent: Option<Instant>,
    stage: Arc<Stage>,
}

impl Reporter {
    pub(super) fn new(sink: ProgressSink, total: u64, stage: Arc<Stage>) -> Self {
        Self(Arc::new(Mutex::new(ReporterState {
            sink,
            done: 0,
            total,
            acked_mode: false,
            started: None,
            last_percent: None,
            last_sent: None,
            stage,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut ReporterState) -> T) -> T {
        f(&mut self.0.locked())
    }

    pub(super) fn send(
        &self,
        status: UpgradeStatus,
        percent: Option<f32>,
        remaining: Option<u32>,
        detail: String,
    ) {
        self.with(|s| {
            let _ = s.sink.send(TransferProgress {
                status,
                percent,
                remaining_s: remaining,
                bytes_sent: s.done,
                bytes_total: s.total,
                detail,
            });
        });
    }

    pub(super) fn preparing(&self, detail: String) {
        self.send(UpgradeStatus::AgentPreparing, None, None, detail);
    }

    pub(super) fn rebooting(&self, detail: String) {
        self.with(|s| s.stage.set(Stage::REBOOTING));
        self.send(UpgradeStatus::Downloaded, Some(100.0), Some(0), detail);
    }

    pub(super) fn start_sending(&self, detail: String) {
        self.with(|s| {
            s.stage.set(Stage::SENDING);
            s.started = Some(Instant::now());
            s.done = 0;
            s.last_percent = Some(0);
            s.last_sent = Some(Instant::now());
        });
        self.send(UpgradeStatus::Updating, Some(0.0), None, detail);
    }

    /// `done` of `total` bytes are through; reports when a new percent is reached, a second
    /// passed, or all is done.
    pub(super) fn bytes(&self, done: u64, total: u64) {
        let report = self.with(|s| {
            s.done = done;
            s.total = total;
            let percent = (done as f64 * 100.0 / total.max(1) as f64).min(100.0) as f32;
            let whole = percent as u32;
            let now = Instant::now();
            let due = s.last_percent != Some(whole)
                || s.last_sent
                    .is_none_or(|t| now - t >= Duration::from_secs(1))
                || done == total;
            if !due || (done == total && s.last_percent == Some(100)) {
                return None;
            }
            s.last_percent = Some(whole);
            s.last_sent = Some(now);
            let remaining = s.started.and_then(|t0| {
                let secs = (now - t0).as_secs_f64();
                (done > 0 && secs > 0.0).then(|| {
                    let rate = done as f64 / secs;
                    (total.saturating_sub(done) as f64 / rate).ceil() as u32
                })
            });
            Some((percent, remaining))
        });
        if let Some((percent, remaining)) = report {
            self.send(
                UpgradeStatus::Updating,
                Some(percent),
                remaining,
                format!("sending the firmware ({done} of {total} bytes)"),
            );
        }
    }

    pub(super) fn ota_event(&self, ev: &Event) {
        match ev {
            Event::Negotiated(n) => {
                self.with(|s| {
                    s.total = n.wire_size;
                    s.acked_mode = n.version.has_chunk_acks();
                });
                self.preparing(format!(
                    "OTA version {}, {}{}, {} bytes on the wire",
                    n.version.byte(),
                    match n.compression {
                        Compression::None => "uncompressed",
                        Compression::Gzip => "gzip",
                        Compression::Deflate => "deflate",
                    },
                    if n.encrypted { ", encrypted" } else { "" },
                    n.wire_size
                ));
            }
            Event::Phase(Phase::Authenticating) => {
                self.preparing("authenticating with the OTA password".into());
            }
            Event::Phase(Phase::Preparing) => {
                self.preparing("the device prepares its flash".into());
            }
            Event::Phase(Phase::Uploading) => self.start_sending("sending the firmware".into()),
            Event::Progress(p) => {
                let acked = self.with(|s| s.acked_mode);
                let done = if acked { p.acked } else { p.sent };
                if p.sent > 0 {
                    self.bytes(done, p.total);
                }
            }
            Event::Phase(Phase::Finishing) => self.send(
                UpgradeStatus::Updating,
                Some(100.0),
                Some(0),
                "all bytes sent; the device checks the image".into(),
            ),
            Event::Completed => self.rebooting(
                "the device verified and committed the image (0x44, 0x45); it reboots now".into(),
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use ota_devproto::esphome::{Negotiated, OtaVersion, Progress};
    use tokio::sync::mpsc;

    use super::*;

    fn drain(rx: &mut mpsc::UnboundedReceiver<TransferProgress>) -> Vec<TransferProgress> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_native_upload_reads_100_then_2_then_6_with_rate_and_remaining_time() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stage = Arc::new(Stage::default());
        let r = Reporter::new(tx, 0, stage.clone());
        r.preparing("connecting".into());
        r.ota_event(&Event::Negotiated(Negotiated {
            version: OtaVersion::V2,
            extended: true,
            server_flags: 0x0C,
            compression: Compression::Deflate,
            encrypted: true,
            wire_size: 100_000,
            image_size: 200_000,
        }));
        r.ota_event(&Event::Phase(Phase::Authenticating));
        assert_eq!(stage.get(), Stage::PREPARING);
        r.ota_event(&Event::Phase(Phase::Uploading));
        assert_eq!(stage.get(), Stage::SENDING);
        // 10 kB/s; blocks are sent ahead of their acks: progress follows the acks.
        for i in 1..=10u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            r.ota_event(&Event::Progress(Progress {
                sent: (i * 10_000 + 8192).min(100_000),
                acked: i * 10_000,
                total: 100_000,
            }));
        }
        r.ota_event(&Event::Phase(Phase::Finishing));
        r.ota_event(&Event::Completed);
        assert_eq!(stage.get(), Stage::REBOOTING);
        let seen = drain(&mut rx);
        let statuses: Vec<u32> = seen.iter().map(|p| p.status.code()).collect();
        assert_eq!(statuses[..3], [100, 100, 100]);
        assert!(
            seen[1]
                .detail
                .contains("OTA version 2, deflate, encrypted, 100000 bytes")
        );
        assert_eq!(*statuses.last().unwrap(), 6);
        let updating: Vec<_> = seen.iter().filter(|p| p.status.code() == 2).collect();
        assert_eq!(updating[0].percent, Some(0.0));
        assert_eq!(updating[3].percent, Some(30.0));
        assert_eq!(updating[3].bytes_sent, 30_000);
        assert_eq!(updating[3].remaining_s, Some(7), "70 kB left at 10 kB/s");
        assert_eq!(updating[10].percent, Some(100.0));
        assert_eq!(updating[10].remaining_s, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_one_report_per_percent_or_second() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let r = Reporter::new(tx, 1_000_000, Arc::new(Stage::default()));
        r.start_sending("sending".into());
        for done in (1_000..=1_000_000).step_by(1_000) {
            r.bytes(done, 1_000_000);
        }
        let seen = drain(&mut rx);
        // The start, then one per whole percent; the last one exactly once.
        assert_eq!(seen.len(), 101);
        assert_eq!(seen.last().unwrap().percent, Some(100.0));
        r.bytes(1_000_000, 1_000_000);
        assert!(drain(&mut rx).is_empty());
        // Slow progress within one percent is still reported once a second.
        r.start_sending("again".into());
        r.bytes(10, 1_000_000);
        tokio::time::advance(Duration::from_millis(1500)).await;
        r.bytes(20, 1_000_000);
        assert_eq!(drain(&mut rx).len(), 2, "the start and the 1-second report");
    }
}

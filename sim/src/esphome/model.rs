//! The simulated ESPHome device itself, shared by every listener (native OTA today; the native
//! API on 6053 and the web_server `/update` endpoint later): identity, running version, power
//! (up, rebooting, down), reboots into a newly installed image, injected faults and the record
//! of every upload.
//!
//! What it does: keep the state behind a mutex and publish power changes on a `watch` channel,
//! so every listener can close its port while the device is down and reopen it when it is back;
//! run the reboot timer (tokio time, pausable in tests); decide at reboot whether the device
//! comes back on the new image, rolls back, or stays down; and what a new image does once up
//! (a reboot loop, or a reset into the previous image before it was marked valid); keep the
//! uptime of the running image for the API's `uptime` sensor.
//! What it does not do: speak any protocol (listeners do) or validate images (the native OTA
//! listener's backend does, as the device's OTA backend would).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use ota_devproto::esphome::{Compression, ErrorCode};
use tokio::sync::watch;

use super::Platform;
use crate::sync::LockExt;

/// Whether the device answers on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Power {
    /// Running: listeners accept connections.
    Up,
    /// Rebooting: ports are closed until the reboot time has passed.
    Rebooting,
    /// Off (or crashed and not coming back): ports are closed until [`DeviceModel::power_on`].
    Down,
}

/// A misbehaviour to inject. Connection faults apply to native OTA connections, reboot faults
/// to the next reboot after an install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `end()` reports an MD5 mismatch (`0x8B`) although the image arrived intact.
    Md5MismatchAtEnd,
    /// The flash write covering this image offset fails (`0x83`).
    FlashWriteError {
        /// Offset in the (inflated) image.
        at: usize,
    },
    /// `begin()` fails with `0x85`: an ESP8266 still in serial bootloader mode.
    InvalidBootstrapping,
    /// The device drops the connection once it has read this many bytes from the client.
    DropAfter {
        /// Bytes read on the connection, from the magic on.
        bytes: usize,
    },
    /// The device stops answering once it has read this many bytes and never times out by
    /// itself (a wedged device): the client's timeout must fire.
    Stall {
        /// Bytes read on the connection before the stall.
        after: usize,
    },
    /// Every response the device sends is delayed by this long.
    Slow {
        /// Delay before each write.
        per_response: Duration,
    },
    /// After the next install the device does not come back (until [`DeviceModel::power_on`]).
    StaysDownAfterReboot,
    /// After the next install the device comes back on the version it ran before (the
    /// bootloader rolled back).
    RollbackAfterReboot,
    /// After the next install the device boots the new image and reboots every `after` of
    /// uptime (a crash or watchdog reset: a reboot loop), until [`DeviceModel::clear_faults`].
    RebootLoop {
        /// Uptime before each reboot.
        after: Duration,
    },
    /// After the next install the device boots the new image, answers on it for `after`, then
    /// resets before the image was marked valid, and the bootloader boots the previous image
    /// (ESP-IDF's app rollback): it comes back on the version it ran before.
    FallBackAfter {
        /// Uptime on the new image before the reset.
        after: Duration,
    },
}

impl Fault {
    fn is_reboot_fault(&self) -> bool {
        matches!(
            self,
            Self::StaysDownAfterReboot
                | Self::RollbackAfterReboot
                | Self::RebootLoop { .. }
                | Self::FallBackAfter { .. }
        )
    }
}

/// What a booted image does by itself (from a reboot fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterBoot {
    /// Reboots after this uptime, every boot.
    Loop(Duration),
    /// Resets after this uptime into the previous image, once.
    FallBack(Duration),
}

/// How an upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Verified and committed; the device rebooted into it.
    Committed,
    /// Refused with this error byte after all bytes arrived.
    Failed(ErrorCode),
}

/// An upload that arrived in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedUpload {
    /// Which listener took it (`"native"`, `"web_server"`).
    pub via: &'static str,
    /// The image as it boots (gunzipped for gzip uploads, inflated for deflate).
    pub image: Bytes,
    /// How it travelled.
    pub compression: Compression,
    /// Whether the announced MD5 matched what was stored.
    pub md5_ok: bool,
    /// The outcome.
    pub outcome: UploadOutcome,
}

/// What tests see of the device at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Node name.
    pub name: String,
    /// Platform.
    pub platform: Platform,
    /// Power state.
    pub power: Power,
    /// Version of the running firmware.
    pub version: String,
    /// Project name of the running firmware.
    pub project_name: String,
    /// Boots since the simulator started (the first boot counts).
    pub boots: u32,
    /// Connections that reached the data phase of an update (`begin()` was called).
    pub attempts: u32,
    /// Uploads that were committed.
    pub uploads: u32,
    /// Every upload that arrived in full, committed or not, oldest first.
    pub received: Vec<ReceivedUpload>,
    /// The last error byte any listener sent.
    pub last_error: Option<ErrorCode>,
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    once: bool,
}

#[derive(Debug)]
struct State {
    snapshot: Snapshot,
    faults: Vec<Armed>,
    reboot_time: Duration,
    /// Bumped on every power transition, so a stale reboot timer does nothing.
    epoch: u64,
    /// Version and project name of an installed image the device has not booted yet.
    pending: Option<(String, Option<String>)>,
    /// Version and project name the device ran before its last install.
    previous: Option<(String, Option<String>)>,
    /// When the running image booted (tokio time).
    booted_at: tokio::time::Instant,
    /// What the running image does by itself.
    after_boot: Option<AfterBoot>,
}

/// A handle on the simulated device; clones share it.
#[derive(Debug, Clone)]
pub struct DeviceModel {
    state: Arc<Mutex<State>>,
    power: Arc<watch::Sender<Power>>,
}

/// Version and project name of an image: from the ESP-IDF application description at file
/// offset 0x20 (`version` at +16, `project_name` at +48), else `md5:<first 12 hex digits>`.
pub fn image_identity(image: &[u8]) -> (String, Option<String>) {
    if let Ok(parsed) = ota_firmware::esp::parse_image(image, None)
        && let Some(app) = parsed.app
    {
        return (app.version, Some(app.project_name));
    }
    // Images the parser refuses (no checksum, validation off) may still carry a description.
    let field = |at: usize| {
        let raw = image.get(0x20 + at..0x20 + at + 32)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        std::str::from_utf8(&raw[..end]).ok().map(str::to_owned)
    };
    let magic = image
        .get(0x20..0x24)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    if magic == Some(0xABCD_5432)
        && let Some(version) = field(16)
    {
        return (version, field(48));
    }
    let md5 = hex::encode(Md5::digest(image));
    (format!("md5:{}", &md5[..12]), None)
}

impl DeviceModel {
    /// A device that is up and runs `version` of `project_name`; after an install it is down
    /// for `reboot_time`.
    pub fn new(
        name: impl Into<String>,
        platform: Platform,
        version: impl Into<String>,
        project_name: impl Into<String>,
        reboot_time: Duration,
    ) -> Self {
        let snapshot = Snapshot {
            name: name.into(),
            platform,
            power: Power::Up,
            version: version.into(),
            project_name: project_name.into(),
            boots: 1,
            attempts: 0,
            uploads: 0,
            received: Vec::new(),
            last_error: None,
        };
        let (power, _) = watch::channel(Power::Up);
        Self {
            state: Arc::new(Mutex::new(State {
                snapshot,
                faults: Vec::new(),
                reboot_time,
                epoch: 0,
                pending: None,
                previous: None,
                booted_at: tokio::time::Instant::now(),
                after_boot: None,
            })),
            power: Arc::new(power),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Everything tests may want to look at.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.lock().snapshot.platform
    }

    /// Version of the running firmware.
    pub fn current_version(&self) -> String {
        self.lock().snapshot.version.clone()
    }

    /// Project name of the running firmware.
    pub fn project_name(&self) -> String {
        self.lock().snapshot.project_name.clone()
    }

    /// How long the running image has been up (0 while down), as its `uptime` sensor says.
    pub fn uptime(&self) -> Duration {
        let st = self.lock();
        if st.snapshot.power == Power::Up {
            st.booted_at.elapsed()
        } else {
            Duration::ZERO
        }
    }

    /// The power state.
    pub fn power(&self) -> Power {
        *self.power.borrow()
    }

    /// Whether listeners should accept connections.
    pub fn is_up(&self) -> bool {
        self.power() == Power::Up
    }

    /// Power changes, for listeners.
    pub fn watch_power(&self) -> watch::Receiver<Power> {
        self.power.subscribe()
    }

    /// Waits until the power state is `want`.
    pub async fn wait_for(&self, want: Power) {
        let mut rx = self.watch_power();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|p| *p == want).await;
    }

    /// How long a reboot takes.
    pub fn set_reboot_time(&self, reboot_time: Duration) {
        self.lock().reboot_time = reboot_time;
    }

    /// Arms a fault until [`DeviceModel::clear_faults`].
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(Armed { fault, once: false });
    }

    /// Arms a fault for one occurrence: the next native OTA connection (connection faults) or
    /// the next reboot after an install (reboot faults).
    pub fn inject_once(&self, fault: Fault) {
        self.lock().faults.push(Armed { fault, once: true });
    }

    /// Disarms every fault (a reboot loop stops).
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.faults.clear();
        st.after_boot = None;
    }

    /// The connection faults for a new connection; one-shot ones are used up.
    pub fn take_connection_faults(&self) -> Vec<Fault> {
        let mut st = self.lock();
        let faults = st
            .faults
            .iter()
            .filter(|a| !a.fault.is_reboot_fault())
            .map(|a| a.fault.clone())
            .collect();
        st.faults.retain(|a| a.fault.is_reboot_fault() || !a.once);
        faults
    }

    fn take_reboot_fault(st: &mut State) -> Option<Fault> {
        let i = st.faults.iter().position(|a| a.fault.is_reboot_fault())?;
        let fault = st.faults[i].fault.clone();
        if st.faults[i].once {
            st.faults.remove(i);
        }
        Some(fault)
    }

    /// A listener reached the data phase of an update.
    pub fn record_attempt(&self) {
        self.lock().snapshot.attempts += 1;
    }

    /// A listener sent an error byte.
    pub fn record_error(&self, code: ErrorCode) {
        self.lock().snapshot.last_error = Some(code);
    }

    /// A listener received an upload in full.
    pub fn record_upload(&self, upload: ReceivedUpload) {
        let mut st = self.lock();
        match upload.outcome {
            UploadOutcome::Committed => st.snapshot.uploads += 1,
            UploadOutcome::Failed(code) => st.snapshot.last_error = Some(code),
        }
        st.snapshot.received.push(upload);
    }

    fn set_power(&self, st: &mut State, power: Power) {
        st.epoch += 1;
        st.snapshot.power = power;
        self.power.send_replace(power);
    }

    /// The device committed `image` (as it boots): it goes down now and, after the reboot
    /// time, comes back running it; unless a reboot fault says otherwise. Needs a tokio runtime.
    pub fn install(&self, image: &[u8]) {
        let (version, project) = image_identity(image);
        tracing::info!(%version, "esphome sim: installed, rebooting");
        self.reboot_into(Some((version, project)));
    }

    /// Reboots without a new image.
    pub fn reboot(&self) {
        self.reboot_into(None);
    }

    fn reboot_into(&self, next: Option<(String, Option<String>)>) {
        let (epoch, delay) = {
            let mut st = self.lock();
            if next.is_some() {
                st.pending = next;
            }
            self.set_power(&mut st, Power::Rebooting);
            (st.epoch, st.reboot_time)
        };
        let model = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut st = model.lock();
            if st.epoch != epoch {
                return;
            }
            let fault = if st.pending.is_some() {
                Self::take_reboot_fault(&mut st)
            } else {
                None
            };
            match fault {
                Some(Fault::StaysDownAfterReboot) => {
                    tracing::info!("esphome sim: stays down after reboot (fault)");
                    model.set_power(&mut st, Power::Down);
                }
                Some(Fault::RollbackAfterReboot) => {
                    tracing::info!("esphome sim: rolled back to the previous version (fault)");
                    st.pending = None;
                    model.boot(&mut st);
                }
                Some(Fault::RebootLoop { after }) => {
                    st.after_boot = Some(AfterBoot::Loop(after));
                    model.boot(&mut st);
                }
                Some(Fault::FallBackAfter { after }) => {
                    st.after_boot = Some(AfterBoot::FallBack(after));
                    model.boot(&mut st);
                }
                _ => model.boot(&mut st),
            }
        });
    }

    /// Comes up, on the pending image if there is one.
    fn boot(&self, st: &mut State) {
        if let Some((version, project)) = st.pending.take() {
            let before = (
                std::mem::replace(&mut st.snapshot.version, version),
                Some(st.snapshot.project_name.clone()),
            );
            st.previous = Some(before);
            if let Some(p) = project {
                st.snapshot.project_name = p;
            }
        }
        st.snapshot.boots += 1;
        st.booted_at = tokio::time::Instant::now();
        self.set_power(st, Power::Up);
        if let Some(after_boot) = st.after_boot {
            self.schedule(st.epoch, after_boot);
        }
    }

    /// What the booted image does by itself, unless the device changed power meanwhile.
    fn schedule(&self, epoch: u64, after_boot: AfterBoot) {
        let model = self.clone();
        tokio::spawn(async move {
            let (AfterBoot::Loop(after) | AfterBoot::FallBack(after)) = after_boot;
            tokio::time::sleep(after).await;
            let previous = {
                let mut st = model.lock();
                if st.epoch != epoch || st.after_boot != Some(after_boot) {
                    return;
                }
                match after_boot {
                    AfterBoot::Loop(_) => None,
                    AfterBoot::FallBack(_) => {
                        st.after_boot = None;
                        st.previous.clone()
                    }
                }
            };
            match previous {
                Some(image) => {
                    tracing::info!(version = %image.0, "esphome sim: reset before the image was marked valid; falling back (fault)");
                    model.reboot_into(Some(image));
                }
                None => {
                    tracing::info!("esphome sim: crashed, rebooting (reboot loop fault)");
                    model.reboot();
                }
            }
        });
    }

    /// Turns the device off now (ports close).
    pub fn power_off(&self) {
        let mut st = self.lock();
        self.set_power(&mut st, Power::Down);
    }

    /// Turns the device on now: it boots the installed image if it never booted it (a device
    /// that stayed down, or one switched on in the middle of a reboot), else what it ran.
    pub fn power_on(&self) {
        let mut st = self.lock();
        if st.snapshot.power != Power::Up {
            self.boot(&mut st);
        }
    }
}
